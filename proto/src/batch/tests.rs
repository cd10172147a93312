//! The batch codec's tests: round trips, the bytes kafka-python writes,
//! patching and restamping, and hostile input.

use super::*;
use proptest::prelude::*;

fn sample() -> Bytes {
    let mut b = BatchBuilder::new(1000).producer(ProducerStamp {
        producer_id: 7,
        producer_epoch: 2,
        base_sequence: 40,
    });
    b.push(1000, Some(b"k1"), Some(b"v1"), &[(b"h", Some(b"x"))]);
    b.push(1005, None, Some(b"v2"), &[]);
    b.push(999, Some(b""), None, &[(b"a", None), (b"b", Some(b""))]);
    b.finish()
}

#[test]
fn a_built_batch_decodes_to_the_same_records() {
    let bytes = sample();
    let batch = ValidBatch::exact(&bytes).unwrap();
    let h = batch.header();
    assert_eq!(h.record_count, 3);
    assert_eq!(h.last_offset_delta, 2);
    assert_eq!(h.max_timestamp, 1005);
    assert_eq!(h.producer_id, 7);
    assert_eq!(h.last_sequence(), 42);
    let records = batch.records().unwrap();
    let records: Vec<_> = records.iter().map(Result::unwrap).collect();
    assert_eq!(records[0].key, Some(&b"k1"[..]));
    assert_eq!(records[1].key, None);
    assert_eq!(records[1].timestamp_delta, 5);
    assert_eq!(records[2].value, None);
    let headers: Vec<_> = records[2].headers().collect();
    assert_eq!(
        headers,
        vec![(&b"a"[..], None), (&b"b"[..], Some(&b""[..]))]
    );
}

/// The batch `sample` describes, as kafka-python 3.0 (an independent
/// implementation of RecordBatch v2) encodes it; only the partition
/// leader epoch differs (it writes 0, Ferry's builder -1 as the Java
/// client does).
const KAFKA_PYTHON_SAMPLE: &str = "0000000000000000000000560000000002db9ee0ee0010000000020000018bcfe568000000018bcfe568050000000000000007000200000028000000031c000000046b31047631020268027810000a02010476320018000104000104026101026200";

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_bytes_are_kafkas_record_batch_v2() {
    let theirs = from_hex(KAFKA_PYTHON_SAMPLE);
    let batch = ValidBatch::exact(&theirs).unwrap();
    let h = batch.header();
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (7, 2, 40)
    );
    assert!(h.is_transactional() && !h.is_control());
    assert_eq!(h.first_timestamp, 1_700_000_000_000);
    assert_eq!(h.max_timestamp, 1_700_000_000_005);
    let records = batch.records().unwrap();
    let records: Vec<_> = records.iter().map(Result::unwrap).collect();
    assert_eq!(
        records[0].headers().collect::<Vec<_>>(),
        vec![(&b"h"[..], Some(&b"x"[..]))]
    );
    assert_eq!(records[2].timestamp_delta, -1);

    let mut b = BatchBuilder::new(1_700_000_000_000)
        .producer(ProducerStamp {
            producer_id: 7,
            producer_epoch: 2,
            base_sequence: 40,
        })
        .transactional(true);
    b.push(
        1_700_000_000_000,
        Some(b"k1"),
        Some(b"v1"),
        &[(b"h", Some(b"x"))],
    );
    b.push(1_700_000_000_005, None, Some(b"v2"), &[]);
    b.push(
        1_699_999_999_999,
        Some(b""),
        None,
        &[(b"a", None), (b"b", Some(b""))],
    );
    let mut ours = b.finish().to_vec();
    ours[layout::LEADER_EPOCH..layout::MAGIC].copy_from_slice(&0i32.to_be_bytes());
    assert_eq!(ours, theirs);
}

#[test]
fn patching_the_base_offset_keeps_the_crc_valid() {
    let mut bytes = sample().to_vec();
    patch_base_offset(&mut bytes, 123_456);
    let batch = ValidBatch::exact(&bytes).unwrap();
    assert_eq!(batch.header().base_offset, 123_456);
    assert_eq!(batch.header().last_offset(), 123_458);
    assert_eq!(batch.header().leader_epoch, LEADER_EPOCH);
    assert_eq!(
        ValidBatch::exact(&sample()).unwrap().header().leader_epoch,
        -1
    );
}

#[test]
fn restamping_rewrites_the_stamp_keeps_the_records_and_stays_valid() {
    let original = sample();
    let stamp = ProducerStamp {
        producer_id: 9,
        producer_epoch: 3,
        base_sequence: i32::MAX,
    };
    let bytes = restamp(&original, stamp);
    let batch = ValidBatch::exact(&bytes).unwrap();
    let h = batch.header();
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (9, 3, i32::MAX)
    );
    assert_eq!(h.last_sequence(), 1, "three records wrap past i32::MAX");
    assert_eq!(bytes.len(), original.len());
    assert_eq!(bytes[HEADER_LEN..], original[HEADER_LEN..]);
    let old = ValidBatch::exact(&original).unwrap();
    assert!(
        batch
            .records()
            .unwrap()
            .iter()
            .eq(old.records().unwrap().iter())
    );
    // Restamping back gives the original bytes exactly.
    let back = restamp(
        &bytes,
        ProducerStamp {
            producer_id: 7,
            producer_epoch: 2,
            base_sequence: 40,
        },
    );
    assert_eq!(back, original);
}

#[test]
fn record_size_predicts_the_encoded_size() {
    let mut b = BatchBuilder::new(0);
    let before = b.size();
    let predicted = BatchBuilder::record_size(0, 3, Some(b"key"), Some(&[1; 300]), &[(b"h", None)]);
    b.push(3, Some(b"key"), Some(&[1; 300]), &[(b"h", None)]);
    assert_eq!(b.size() - before, predicted);
}

#[test]
fn every_flipped_bit_outside_the_patched_fields_is_detected() {
    let bytes = sample();
    // The leader epoch is outside the CRC, as the base offset is: the
    // broker patches it (see the patching test).
    let covered = (layout::BATCH_LEN..bytes.len())
        .filter(|b| !(layout::LEADER_EPOCH..layout::MAGIC).contains(b));
    for byte in covered {
        for bit in 0..8 {
            let mut bad = bytes.to_vec();
            bad[byte] ^= 1 << bit;
            assert!(
                ValidBatch::exact(&bad).is_err(),
                "flip at {byte}:{bit} went unnoticed"
            );
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = sample();
    for len in 0..bytes.len() {
        assert!(
            ValidBatch::new(&bytes[..len]).is_err(),
            "truncation to {len} accepted"
        );
    }
}

#[test]
fn a_length_beyond_the_limit_is_rejected_before_use() {
    let mut bytes = sample().to_vec();
    for len in [i32::MAX, -1, i32::MIN] {
        bytes[layout::BATCH_LEN..layout::BATCH_LEN + 4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            BatchHeader::decode(&bytes),
            Err(BatchError::BadLength { .. })
        ));
    }
}

#[test]
fn unknown_codecs_attributes_and_compressed_control_batches_are_rejected() {
    let compressed_control = CONTROL_BIT | u16::from(Compression::Gzip.id());
    for attributes in [5u16, 7, 1 << 6, 1 << 15, compressed_control] {
        let mut bytes = sample().to_vec();
        bytes[layout::ATTRIBUTES..layout::ATTRIBUTES + 2]
            .copy_from_slice(&attributes.to_be_bytes());
        assert_eq!(
            BatchHeader::decode(&bytes),
            Err(BatchError::BadAttributes(attributes))
        );
    }
}

#[test]
fn record_iter_refuses_a_compressed_batch_instead_of_misreading_it() {
    let mut b = BatchBuilder::new(0);
    b.push(0, None, Some(b"v"), &[]);
    let bytes = b.finish_compressed(Compression::Lz4);
    let batch = ValidBatch::exact(&bytes).unwrap();
    let mut iter = RecordIter::new(batch.header(), &bytes);
    assert_eq!(
        iter.next(),
        Some(Err(BatchError::CompressedRecords(Compression::Lz4)))
    );
    assert_eq!(iter.next(), None);
}

#[test]
fn batch_iter_walks_concatenated_batches() {
    let mut joined = sample().to_vec();
    joined.extend_from_slice(&sample());
    let batches: Vec<_> = BatchIter::new(&joined).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 2);
}

proptest! {
    #[test]
    fn hostile_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ValidBatch::new(&data);
        let _ = BatchIter::new(&data).count();
    }

    #[test]
    fn hostile_records_behind_a_valid_crc_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        count in 1u32..50,
        last in 0u32..60,
    ) {
        // A well-formed header with a correct CRC over random record bytes:
        // the record decoder is the only line of defence here.
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(&body);
        let len = (buf.len() - LENGTH_OVERHEAD) as u32;
        write(&mut buf, layout::BATCH_LEN, &len.to_be_bytes());
        buf[layout::MAGIC] = MAGIC;
        write(&mut buf, layout::LAST_OFFSET_DELTA, &last.to_be_bytes());
        write(&mut buf, layout::RECORD_COUNT, &count.to_be_bytes());
        let crc = compute_crc(&buf);
        write(&mut buf, layout::CRC, &crc.to_be_bytes());
        let _ = ValidBatch::new(&buf);
    }

    #[test]
    fn random_records_round_trip(
        records in proptest::collection::vec(
            (any::<i32>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))),
            1..30)
    ) {
        let mut b = BatchBuilder::new(0);
        for (ts, k, v) in &records {
            b.push(i64::from(*ts), k.as_deref(), v.as_deref(), &[]);
        }
        let bytes = b.finish();
        let batch = ValidBatch::exact(&bytes).unwrap();
        let decoded = batch.records().unwrap();
        let decoded: Vec<_> = decoded.iter().map(Result::unwrap).collect();
        prop_assert_eq!(decoded.len(), records.len());
        for (d, (ts, k, v)) in decoded.iter().zip(&records) {
            prop_assert_eq!(d.timestamp_delta, i64::from(*ts));
            prop_assert_eq!(d.key, k.as_deref());
            prop_assert_eq!(d.value, v.as_deref());
        }
    }
}

#[test]
fn a_rewritten_batch_keeps_its_span_stamp_offsets_and_codec_with_gaps() {
    let stamp = ProducerStamp {
        producer_id: 7,
        producer_epoch: 3,
        base_sequence: 40,
    };
    let mut b = BatchBuilder::new(1000).producer(stamp).transactional(true);
    for i in 0..4u8 {
        b.push(1000 + i64::from(i), Some(&[b'k', i]), Some(&[i; 30]), &[]);
    }
    let original = b.finish_compressed(Compression::Gzip);
    let v = ValidBatch::exact(&original).unwrap();
    let h = *v.header();
    let records = v.records().unwrap();
    let kept: Vec<_> = records
        .iter()
        .map(Result::unwrap)
        .filter(|r| r.offset_delta == 1)
        .collect();
    let mut r = BatchBuilder::rewriting(&h, 256);
    for rec in &kept {
        r.push_at(
            rec.offset_delta,
            h.first_timestamp + rec.timestamp_delta,
            rec.key,
            rec.value,
            &[],
        );
    }
    let rewritten = r.finish_compressed(Compression::Gzip);
    let w = ValidBatch::exact(&rewritten).unwrap();
    let wh = *w.header();
    assert_eq!(w.compression(), Compression::Gzip);
    assert_eq!(wh.last_offset_delta, 3, "the span is kept");
    assert_eq!(wh.record_count, 1);
    assert_eq!(wh.last_sequence(), h.last_sequence());
    assert_eq!(
        (wh.producer_id, wh.producer_epoch, wh.base_sequence),
        (7, 3, 40)
    );
    assert!(wh.is_transactional());
    assert_eq!(wh.first_timestamp, h.first_timestamp);
    assert_eq!(wh.max_timestamp, 1001);
    let w_records = w.records().unwrap();
    let left: Vec<_> = w_records.iter().map(Result::unwrap).collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].offset_delta, 1);
    assert_eq!(left[0].timestamp_delta, 1);
    assert_eq!(left[0].key, Some(&[b'k', 1][..]));
}

#[test]
fn the_max_timestamp_is_the_largest_records_even_below_the_first_timestamp() {
    // A producer's accumulator starts a batch at its clock; records with
    // their own, older timestamps must not leave the clock as the maximum.
    let mut b = BatchBuilder::new(9_000);
    b.push(1_000, None, Some(b"a"), &[]);
    b.push(2_000, None, Some(b"b"), &[]);
    let bytes = b.finish();
    let batch = ValidBatch::exact(&bytes).unwrap();
    assert_eq!(batch.header().max_timestamp, 2_000);
    let first = batch.header().first_timestamp;
    let records = batch.records().unwrap();
    let stamps: Vec<i64> = records
        .iter()
        .map(|r| first + r.unwrap().timestamp_delta)
        .collect();
    assert_eq!(stamps, [1_000, 2_000]);
    for codec in [Compression::Lz4, Compression::Zstd] {
        let mut b = BatchBuilder::new(9_000);
        b.push(1_500, None, Some(b"c"), &[]);
        let bytes = b.finish_compressed(codec);
        assert_eq!(
            ValidBatch::exact(&bytes).unwrap().header().max_timestamp,
            1_500
        );
    }
}
