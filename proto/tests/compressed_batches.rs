//! Compressed record batches: the bytes real Kafka clients write, Ferry's
//! own round trip through every codec, and hostile input — decompression
//! bombs, truncated and corrupted blobs.

use ferry_proto::batch::compression::{self, XERIAL_MAGIC};
use ferry_proto::batch::{
    BatchBuilder, BatchError, Compression, DecodedBatch, HEADER_LEN, LENGTH_OVERHEAD,
    MAX_DECOMPRESSED_BATCH_BYTES, ProducerStamp, Record, ValidBatch, check_framing, compute_crc,
    layout,
};
use proptest::prelude::*;

const CODECS: [Compression; 4] = [
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// One record as the fixture script writes it: timestamp, key, value,
/// headers.
type Owned = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(Vec<u8>, Option<Vec<u8>>)>,
);

/// `records()` of `scripts/gen-compressed-fixtures.py`, in Rust.
fn script_records() -> Vec<Owned> {
    (0..300i64)
        .map(|i| {
            let key = (i % 7 != 3).then(|| format!("key-{i}").into_bytes());
            let value = (i % 11 != 5).then(|| {
                format!("value-{i}-")
                    .repeat((i % 50 + 1) as usize)
                    .into_bytes()
            });
            let mut headers = vec![(b"h".to_vec(), Some(i.to_string().into_bytes()))];
            if i % 5 == 0 {
                headers.push((b"null".to_vec(), None));
            }
            (1_700_000_000_000 + (i * 37) % 1000, key, value, headers)
        })
        .collect()
}

fn owned(first_timestamp: i64, r: &Record<'_>) -> Owned {
    (
        first_timestamp + r.timestamp_delta,
        r.key.map(<[u8]>::to_vec),
        r.value.map(<[u8]>::to_vec),
        r.headers()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect(),
    )
}

/// The records of a batch, decoded through [`DecodedBatch`].
fn decode(bytes: &[u8]) -> Result<Vec<Owned>, BatchError> {
    let decoded = DecodedBatch::exact(bytes)?;
    let first = decoded.header().first_timestamp;
    let records = decoded.records();
    records
        .iter()
        .map(|r| r.map(|r| owned(first, &r)))
        .collect()
}

fn build(records: &[Owned], codec: Compression) -> bytes::Bytes {
    let mut b = BatchBuilder::new(records[0].0).producer(ProducerStamp {
        producer_id: 42,
        producer_epoch: 1,
        base_sequence: 100,
    });
    for (ts, k, v, h) in records {
        let headers: Vec<(&[u8], Option<&[u8]>)> =
            h.iter().map(|(k, v)| (&k[..], v.as_deref())).collect();
        b.push(*ts, k.as_deref(), v.as_deref(), &headers);
    }
    b.finish_compressed(codec)
}

/// A batch of `count` records whose bytes after the header are `blob`,
/// flagged with `codec`, with a correct CRC: only the decompressor and
/// the record decoder stand between it and acceptance.
fn batch_with_blob(codec: Compression, blob: &[u8], count: u32) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN];
    buf.extend_from_slice(blob);
    let len = (buf.len() - LENGTH_OVERHEAD) as u32;
    buf[layout::BATCH_LEN..layout::BATCH_LEN + 4].copy_from_slice(&len.to_be_bytes());
    buf[layout::MAGIC] = 2;
    buf[layout::ATTRIBUTES..layout::ATTRIBUTES + 2]
        .copy_from_slice(&u16::from(codec.id()).to_be_bytes());
    buf[layout::LAST_OFFSET_DELTA..layout::LAST_OFFSET_DELTA + 4]
        .copy_from_slice(&(count - 1).to_be_bytes());
    buf[layout::RECORD_COUNT..layout::RECORD_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    fix_crc(&mut buf);
    buf
}

/// `original`'s header over `blob`, with length and CRC made to fit.
fn rewrap(original: &[u8], blob: &[u8]) -> Vec<u8> {
    let mut buf = original[..HEADER_LEN].to_vec();
    buf.extend_from_slice(blob);
    let len = (buf.len() - LENGTH_OVERHEAD) as u32;
    buf[layout::BATCH_LEN..layout::BATCH_LEN + 4].copy_from_slice(&len.to_be_bytes());
    fix_crc(&mut buf);
    buf
}

fn fix_crc(buf: &mut [u8]) {
    let crc = compute_crc(buf);
    buf[layout::CRC..layout::CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

const FIXTURES: [(&str, &[u8], Compression); 5] = [
    (
        "gzip",
        include_bytes!("fixtures/kafka-python-gzip.bin"),
        Compression::Gzip,
    ),
    (
        "snappy (xerial)",
        include_bytes!("fixtures/kafka-python-snappy.bin"),
        Compression::Snappy,
    ),
    (
        "snappy (raw)",
        include_bytes!("fixtures/kafka-python-snappy-raw.bin"),
        Compression::Snappy,
    ),
    (
        "lz4",
        include_bytes!("fixtures/kafka-python-lz4.bin"),
        Compression::Lz4,
    ),
    (
        "zstd",
        include_bytes!("fixtures/kafka-python-zstd.bin"),
        Compression::Zstd,
    ),
];

#[test]
fn batches_kafka_python_compressed_decode_to_the_records_it_wrote() {
    let expected = script_records();
    for (name, bytes, codec) in FIXTURES {
        let batch = ValidBatch::exact(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(batch.compression(), codec, "{name}");
        let h = batch.header();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 1, 100),
            "{name}"
        );
        assert_eq!((h.record_count, h.last_offset_delta), (300, 299), "{name}");
        assert_eq!(decode(bytes).unwrap(), expected, "{name}");
        // The batch's bytes are the ones sent, still compressed.
        assert_eq!(batch.bytes(), bytes, "{name}");
    }
}

#[test]
fn the_snappy_fixtures_cover_both_framings() {
    assert_eq!(&FIXTURES[1].1[HEADER_LEN..HEADER_LEN + 8], XERIAL_MAGIC);
    assert_ne!(&FIXTURES[2].1[HEADER_LEN..HEADER_LEN + 8], XERIAL_MAGIC);
}

#[test]
fn ferry_compresses_and_decodes_the_script_records_with_every_codec() {
    let records = script_records();
    let plain = build(&records, Compression::None);
    for codec in CODECS {
        let bytes = build(&records, codec);
        let batch = ValidBatch::exact(&bytes).unwrap();
        assert_eq!(batch.compression(), codec);
        assert!(
            bytes.len() < plain.len() / 4,
            "{codec}: {} bytes of {}",
            bytes.len(),
            plain.len()
        );
        assert_eq!(decode(&bytes).unwrap(), records, "{codec}");
        // The header is the uncompressed batch's but for the codec bits
        // (and so the CRC and length).
        assert_eq!(
            bytes[layout::LAST_OFFSET_DELTA..HEADER_LEN],
            plain[layout::LAST_OFFSET_DELTA..HEADER_LEN]
        );
    }
}

#[test]
fn records_that_do_not_fit_compressed_stay_uncompressed() {
    // Pseudo-random values barely compress; a batch at the size limit
    // would grow past it, so the builder keeps it uncompressed.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut value = vec![0u8; 1 << 20];
    for b in &mut value {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut b = BatchBuilder::new(0);
    for _ in 0..15 {
        b.push(0, None, Some(&value), &[]);
    }
    let limit = ferry_proto::batch::MAX_BATCH_BYTES;
    let padding = limit - b.size() - 16;
    b.push(0, None, Some(&value[..padding - 8]), &[]);
    assert!(b.size() <= limit && b.size() > limit - 64);
    let bytes = b.finish_compressed(Compression::Snappy);
    let batch = ValidBatch::exact(&bytes).unwrap();
    assert_eq!(batch.compression(), Compression::None);
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB each: a few bytes per
/// block that expand 32768×.
fn zstd_rle_bomb(blocks: usize) -> Vec<u8> {
    const BLOCK: u32 = 128 * 1024;
    // Magic; frame header descriptor 0 (window descriptor follows, no
    // content size, no checksum); window 2^(10+7) = 128 KiB.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (BLOCK << 3) | (1 << 1) | last;
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(b'x');
    }
    frame
}

#[test]
fn a_tiny_blob_that_decompresses_past_the_cap_is_refused() {
    let blocks = MAX_DECOMPRESSED_BATCH_BYTES / (128 * 1024) + 1;
    let bomb = zstd_rle_bomb(blocks);
    assert!(bomb.len() < 4096, "{} bytes", bomb.len());
    let batch = batch_with_blob(Compression::Zstd, &bomb, 1);
    assert_eq!(
        ValidBatch::exact(&batch).unwrap_err(),
        BatchError::DecompressedTooLarge {
            codec: Compression::Zstd,
            max: MAX_DECOMPRESSED_BATCH_BYTES
        }
    );
    // Recovery's check never decompresses: the framing is fine.
    assert!(check_framing(&batch).is_ok());
}

#[test]
fn a_raw_snappy_block_declaring_more_than_the_cap_is_refused_before_allocating() {
    // The varint length prefix alone: 2^32 - 1 bytes.
    let blob = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
    let batch = batch_with_blob(Compression::Snappy, &blob, 1);
    assert!(matches!(
        ValidBatch::exact(&batch),
        Err(BatchError::DecompressedTooLarge { .. } | BatchError::Decompress { .. })
    ));
    let mut xerial = XERIAL_MAGIC.to_vec();
    xerial.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 6]);
    xerial.extend_from_slice(&blob);
    assert!(compression::decompress(Compression::Snappy, &xerial, 1 << 20).is_err());
}

#[test]
fn every_codec_stops_at_the_cap_and_accepts_output_exactly_at_it() {
    let data = vec![b'a'; 256 * 1024 + 1];
    for codec in CODECS {
        let mut blob = Vec::new();
        compression::compress(codec, &data, &mut blob).unwrap();
        assert!(blob.len() < data.len() / 16, "{codec}: {}", blob.len());
        assert_eq!(
            compression::decompress(codec, &blob, data.len() - 1),
            Err(BatchError::DecompressedTooLarge {
                codec,
                max: data.len() - 1
            }),
            "{codec}"
        );
        assert_eq!(
            compression::decompress(codec, &blob, data.len()).unwrap(),
            data,
            "{codec}"
        );
    }
}

#[test]
fn every_truncation_of_a_compressed_blob_is_an_error() {
    let records = script_records();
    for codec in CODECS {
        let bytes = build(&records[..40], codec);
        let blob = &bytes[HEADER_LEN..];
        for len in 0..blob.len() {
            let batch = rewrap(&bytes, &blob[..len]);
            // lz4_flex reads the end of input as the end of the frame, so
            // a cut inside the final 4-byte end mark leaves every record
            // intact; those must then be exactly the records written.
            let end_mark_cut = codec == Compression::Lz4 && len >= blob.len() - 4;
            match decode(&batch) {
                Err(_) => {}
                Ok(got) if end_mark_cut => assert!(got == records[..40], "{codec}: {len}"),
                Ok(_) => panic!("{codec}: truncation to {len} of {} accepted", blob.len()),
            }
        }
    }
}

#[test]
fn a_corrupt_blob_is_a_clean_error() {
    for codec in CODECS {
        let batch = batch_with_blob(codec, b"certainly not compressed data", 1);
        match ValidBatch::exact(&batch) {
            Err(BatchError::Decompress { codec: c, .. }) => assert_eq!(c, codec),
            // Raw snappy reads the first byte as a length; what follows
            // then fails as a record.
            Err(_) => {}
            Ok(_) => panic!("{codec}: garbage accepted"),
        }
    }
}

#[test]
fn the_codec_names_parse_as_kafka_spells_them() {
    for codec in Compression::ALL {
        assert_eq!(codec.name().parse::<Compression>().unwrap(), codec);
        assert_eq!(Compression::from_id(codec.id()), Some(codec));
    }
    assert_eq!("LZ4".parse::<Compression>().unwrap(), Compression::Lz4);
    assert!("brotli".parse::<Compression>().is_err());
    assert_eq!(Compression::from_id(5), None);
}

fn arb_records() -> impl Strategy<Value = Vec<Owned>> {
    let bytes = || proptest::collection::vec(prop_oneof![Just(b'a'), any::<u8>()], 0..300);
    proptest::collection::vec(
        (
            0i64..100_000,
            proptest::option::of(bytes()),
            proptest::option::of(bytes()),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..8),
                    proptest::option::of(bytes()),
                ),
                0..3,
            ),
        ),
        1..40,
    )
}

fn arb_codec() -> impl Strategy<Value = Compression> {
    proptest::sample::select(CODECS.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn random_records_round_trip_through_every_codec(records in arb_records(), codec in arb_codec()) {
        let bytes = build(&records, codec);
        prop_assert_eq!(decode(&bytes).unwrap(), records);
    }

    #[test]
    fn flipped_bytes_in_a_compressed_blob_never_panic(
        codec in arb_codec(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let bytes = build(&script_records()[..20], codec);
        let mut blob = bytes[HEADER_LEN..].to_vec();
        for (at, mask) in flips {
            let at = at.index(blob.len());
            blob[at] ^= mask;
        }
        let _ = decode(&rewrap(&bytes, &blob));
    }

    #[test]
    fn random_bytes_never_panic_a_decompressor(
        codec in arb_codec(),
        framed in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        // Behind each codec's magic, so the decoders get past it.
        let mut blob = match (codec, framed) {
            (Compression::Snappy, true) => XERIAL_MAGIC.to_vec(),
            (Compression::Lz4, true) => vec![0x04, 0x22, 0x4d, 0x18],
            (Compression::Zstd, true) => vec![0x28, 0xb5, 0x2f, 0xfd],
            (Compression::Gzip, true) => vec![0x1f, 0x8b, 0x08, 0x00],
            _ => Vec::new(),
        };
        blob.extend_from_slice(&data);
        let _ = compression::decompress(codec, &blob, 1 << 20);
    }
}
