//! Decoding one partition's fetched batches into records: the position,
//! control batches, CRC checks, and the aborted-transaction filter of
//! `read_committed` ([`AbortedFilter`], shared with the broker's record
//! browser).

use super::*;
pub(crate) use ferry_proto::control::AbortedFilter;

/// Appends the records of `data` (concatenated batches of one partition)
/// at or after `*position` that `filter` keeps to `out`, and moves
/// `*position` past every batch read, control and dropped batches
/// included.
pub(super) fn decode_into(
    topic: &Arc<str>,
    partition: u32,
    position: &mut u64,
    data: &Bytes,
    filter: &mut AbortedFilter,
    out: &mut Vec<ConsumerRecord>,
) -> Result<(), ClientError> {
    for decoded in DecodedBatchIter::new(data) {
        let decoded = decoded.map_err(|e| {
            ClientError::broker(
                ErrorCode::CorruptMessage,
                format!("{topic}/{partition} near offset {position}: {e}"),
            )
        })?;
        let batch = decoded.batch();
        let header = *batch.header();
        // Every batch goes through the filter, including those below the
        // position, so it sees each ABORT marker.
        let keep = filter.keep_batch(batch);
        if header.next_offset() <= *position {
            continue;
        }
        if keep {
            // Keys and values are slices of the fetched data, or of the
            // decompressed records of a compressed batch: no copies.
            let records = decoded.records();
            let backing = records.decompressed().unwrap_or(data);
            for record in records.iter() {
                // Validated by DecodedBatchIter already.
                let record = record
                    .map_err(|e| ClientError::broker(ErrorCode::CorruptMessage, e.to_string()))?;
                let offset = header.base_offset + u64::from(record.offset_delta);
                if offset < *position {
                    continue;
                }
                out.push(ConsumerRecord {
                    topic: topic.clone(),
                    partition,
                    offset,
                    timestamp: header.record_timestamp(record.timestamp_delta),
                    key: record.key.map(|k| backing.slice_ref(k)),
                    value: record.value.map(|v| backing.slice_ref(v)),
                    headers: record
                        .headers()
                        .map(|(k, v)| (backing.slice_ref(k), v.map(|v| backing.slice_ref(v))))
                        .collect(),
                });
            }
        }
        *position = header.next_offset();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::batch::{BatchBuilder, ProducerStamp, patch_base_offset};
    use ferry_proto::control::{ControlType, marker_batch};

    fn batch(base: u64, values: &[&[u8]]) -> Vec<u8> {
        let mut b = BatchBuilder::new(1000);
        for (i, v) in values.iter().enumerate() {
            b.push(1000 + i as i64, Some(b"k"), Some(v), &[(b"h", None)]);
        }
        let mut bytes = b.finish().to_vec();
        patch_base_offset(&mut bytes, base);
        bytes
    }

    #[test]
    fn records_below_the_position_are_skipped_and_the_position_advances() {
        let mut data = batch(10, &[b"a", b"b", b"c"]);
        data.extend(batch(13, &[b"d"]));
        let data = Bytes::from(data);
        let topic: Arc<str> = Arc::from("t");
        let mut position = 11;
        let mut out = Vec::new();
        decode_into(
            &topic,
            2,
            &mut position,
            &data,
            &mut AbortedFilter::none(),
            &mut out,
        )
        .unwrap();
        let offsets: Vec<u64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![11, 12, 13]);
        assert_eq!(position, 14);
        assert_eq!(out[0].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(out[0].timestamp, 1001);
        assert_eq!(out[0].headers, vec![(Bytes::from_static(b"h"), None)]);
    }

    #[test]
    fn control_batches_are_skipped_but_move_the_position() {
        let mut b = BatchBuilder::new(0).control(true);
        b.push(0, None, Some(b"marker"), &[]);
        let mut data = b.finish().to_vec();
        patch_base_offset(&mut data, 5);
        let data = Bytes::from(data);
        let mut position = 5;
        let mut out = Vec::new();
        decode_into(
            &Arc::from("t"),
            0,
            &mut position,
            &data,
            &mut AbortedFilter::none(),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        assert_eq!(position, 6);
    }

    #[test]
    fn a_corrupt_batch_is_an_error_not_a_gap() {
        let mut data = batch(0, &[b"a", b"b"]);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let mut position = 0;
        let mut out = Vec::new();
        let err = decode_into(
            &Arc::from("t"),
            0,
            &mut position,
            &Bytes::from(data),
            &mut AbortedFilter::none(),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::CorruptMessage);
        assert_eq!(position, 0);
    }

    /// A transactional batch of `pid` at `base` holding `values`.
    fn txn_batch(pid: i64, base: u64, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(1000)
            .producer(ProducerStamp {
                producer_id: pid,
                producer_epoch: 0,
                base_sequence: 0,
            })
            .transactional(true);
        for v in values {
            b.push(1000, None, Some(v.as_bytes()), &[]);
        }
        let mut bytes = b.finish().to_vec();
        patch_base_offset(&mut bytes, base);
        bytes
    }

    /// The marker ending `pid`'s transaction, at `offset`.
    fn marker(pid: i64, offset: u64, kind: ControlType) -> Vec<u8> {
        let mut bytes = marker_batch(pid, 0, kind, 1000).to_vec();
        patch_base_offset(&mut bytes, offset);
        bytes
    }

    /// Decodes `parts` from `position` under a filter for `aborted_list`
    /// (or read-uncommitted when `None`); returns the values and the new
    /// position.
    fn read_values(
        parts: &[Vec<u8>],
        position: u64,
        aborted_list: Option<&[(i64, u64)]>,
    ) -> (Vec<String>, u64) {
        let data = Bytes::from(parts.concat());
        let mut filter = match aborted_list {
            Some(list) => AbortedFilter::new(list.iter().copied()),
            None => AbortedFilter::none(),
        };
        let mut position = position;
        let mut out = Vec::new();
        decode_into(
            &Arc::from("t"),
            0,
            &mut position,
            &data,
            &mut filter,
            &mut out,
        )
        .unwrap();
        let values = out
            .iter()
            .map(|r| String::from_utf8(r.value.as_ref().unwrap().to_vec()).unwrap())
            .collect();
        (values, position)
    }

    /// Producer 1 aborts a transaction, producer 2 commits one interleaved
    /// with it, then producer 1 commits a second transaction:
    ///
    /// ```text
    /// 0 p1 a1,a2 | 2 p2 c1 | 4 p1 a3 | 5 plain x | 6 ABORT p1 | 7 COMMIT p2 | 8 p1 d1 | 9 COMMIT p1
    /// ```
    fn interleaved() -> Vec<Vec<u8>> {
        vec![
            txn_batch(1, 0, &["a1", "a2"]),
            txn_batch(2, 2, &["c1", "c2"]),
            txn_batch(1, 4, &["a3"]),
            batch(5, &[b"x"]),
            marker(1, 6, ControlType::Abort),
            marker(2, 7, ControlType::Commit),
            txn_batch(1, 8, &["d1"]),
            marker(1, 9, ControlType::Commit),
        ]
    }

    #[test]
    fn read_committed_drops_the_aborted_transaction_up_to_its_abort_marker() {
        let (values, position) = read_values(&interleaved(), 0, Some(&[(1, 0)]));
        assert_eq!(values, vec!["c1", "c2", "x", "d1"]);
        assert_eq!(
            position, 10,
            "the position moves past markers and dropped batches"
        );
    }

    #[test]
    fn read_uncommitted_returns_aborted_records_but_never_markers() {
        let (values, position) = read_values(&interleaved(), 0, None);
        assert_eq!(values, vec!["a1", "a2", "c1", "c2", "a3", "x", "d1"]);
        assert_eq!(position, 10);
    }

    #[test]
    fn an_aborted_transaction_only_drops_batches_from_its_first_offset_on() {
        // Producer 1 committed offsets 0-1, then aborted the one from 3.
        let parts = vec![
            txn_batch(1, 0, &["ok1", "ok2"]),
            marker(1, 2, ControlType::Commit),
            txn_batch(1, 3, &["bad"]),
            marker(1, 4, ControlType::Abort),
        ];
        let (values, position) = read_values(&parts, 0, Some(&[(1, 3)]));
        assert_eq!(values, vec!["ok1", "ok2"]);
        assert_eq!(position, 5);
    }

    #[test]
    fn a_fetch_that_ends_inside_an_aborted_transaction_drops_its_tail() {
        // The broker cut the response before the marker; the next fetch
        // starts later and lists the same aborted transaction again.
        let parts = interleaved();
        let (values, position) = read_values(&parts[..3], 0, Some(&[(1, 0)]));
        assert_eq!(values, vec!["c1", "c2"]);
        assert_eq!(position, 5);
        let (values, position) = read_values(&parts[3..], position, Some(&[(1, 0)]));
        assert_eq!(values, vec!["x", "d1"]);
        assert_eq!(position, 10);
    }

    #[test]
    fn two_aborted_transactions_of_one_producer_are_each_dropped() {
        let parts = vec![
            txn_batch(1, 0, &["a"]),
            marker(1, 1, ControlType::Abort),
            txn_batch(1, 2, &["b"]),
            marker(1, 3, ControlType::Commit),
            txn_batch(1, 4, &["c"]),
            marker(1, 5, ControlType::Abort),
            txn_batch(1, 6, &["d"]),
        ];
        let (values, _) = read_values(&parts, 0, Some(&[(1, 4), (1, 0)]));
        assert_eq!(values, vec!["b", "d"]);
    }

    #[test]
    fn non_transactional_batches_of_an_aborting_producer_id_pass() {
        let mut plain = BatchBuilder::new(0).producer(ProducerStamp {
            producer_id: 1,
            producer_epoch: 0,
            base_sequence: 0,
        });
        plain.push(0, None, Some(b"idempotent"), &[]);
        let mut plain = plain.finish().to_vec();
        patch_base_offset(&mut plain, 1);
        let parts = vec![
            txn_batch(1, 0, &["aborted"]),
            plain,
            marker(1, 2, ControlType::Abort),
        ];
        let (values, _) = read_values(&parts, 0, Some(&[(1, 0)]));
        assert_eq!(values, vec!["idempotent"]);
    }

    #[test]
    fn a_position_inside_the_data_still_sees_earlier_abort_markers() {
        // The response starts before the position: the ABORT marker below
        // the position must still end producer 1's aborted span.
        let (values, position) = read_values(&interleaved(), 8, Some(&[(1, 0)]));
        assert_eq!(values, vec!["d1"]);
        assert_eq!(position, 10);
    }
}
