//! The transaction log's record value: one encoded [`TxnMeta`] (layout in
//! docs/format.md, "The transaction log").

use std::collections::BTreeSet;

use crate::codec::{Reader, put_str};

use super::state::{MAX_PARTITIONS_PER_TXN, TxnMeta, TxnState};

/// Version 1 adds the `keep_epoch` flag after the partitions and groups;
/// version 0 records (without it) decode with the flag off.
const META_VERSION: u8 = 1;
const META_VERSION_0: u8 = 0;

fn state_code(s: TxnState) -> u8 {
    match s {
        TxnState::Empty => 0,
        TxnState::Ongoing => 1,
        TxnState::PrepareCommit => 2,
        TxnState::PrepareAbort => 3,
        TxnState::CompleteCommit => 4,
        TxnState::CompleteAbort => 5,
    }
}

fn state_from_code(c: u8) -> Option<TxnState> {
    Some(match c {
        0 => TxnState::Empty,
        1 => TxnState::Ongoing,
        2 => TxnState::PrepareCommit,
        3 => TxnState::PrepareAbort,
        4 => TxnState::CompleteCommit,
        5 => TxnState::CompleteAbort,
        _ => return None,
    })
}

/// Encodes `meta` (its transactional id is the record key, not part of
/// the value).
pub(crate) fn encode(meta: &TxnMeta) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.push(META_VERSION);
    v.extend_from_slice(&meta.producer_id.to_le_bytes());
    v.extend_from_slice(&meta.epoch.to_le_bytes());
    v.push(state_code(meta.state));
    v.extend_from_slice(&meta.timeout_ms.to_le_bytes());
    v.extend_from_slice(&meta.started_ms.to_le_bytes());
    v.extend_from_slice(&meta.updated_ms.to_le_bytes());
    v.extend_from_slice(&(meta.partitions.len() as u32).to_le_bytes());
    for (topic, p) in &meta.partitions {
        put_str(&mut v, topic);
        v.extend_from_slice(&p.to_le_bytes());
    }
    v.extend_from_slice(&(meta.groups.len() as u32).to_le_bytes());
    for g in &meta.groups {
        put_str(&mut v, g);
    }
    v.push(u8::from(meta.keep_epoch));
    v
}

/// Decodes a value written by [`encode`]; `None` if it is truncated,
/// overlong or of an unknown version.
pub(crate) fn decode(transactional_id: &str, b: &[u8]) -> Option<TxnMeta> {
    let mut r = Reader::new(b);
    let version = r.u8()?;
    if version != META_VERSION && version != META_VERSION_0 {
        return None;
    }
    let producer_id = r.i64()?;
    let epoch = r.i16()?;
    let state = state_from_code(r.u8()?)?;
    let timeout_ms = r.u32()?;
    let started_ms = r.i64()?;
    let updated_ms = r.i64()?;
    let n = r.u32()? as usize;
    if n > MAX_PARTITIONS_PER_TXN {
        return None;
    }
    let mut partitions = BTreeSet::new();
    for _ in 0..n {
        let topic = r.str()?;
        let p = r.u32()?;
        partitions.insert((topic, p));
    }
    let n = r.u32()? as usize;
    if n > MAX_PARTITIONS_PER_TXN {
        return None;
    }
    let mut groups = BTreeSet::new();
    for _ in 0..n {
        groups.insert(r.str()?);
    }
    let keep_epoch = match version {
        META_VERSION_0 => false,
        _ => match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        },
    };
    r.is_done().then(|| TxnMeta {
        transactional_id: transactional_id.to_string(),
        producer_id,
        epoch,
        state,
        partitions,
        groups,
        timeout_ms,
        started_ms,
        updated_ms,
        keep_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_metadata_round_trips_and_rejects_truncation() {
        let meta = TxnMeta {
            transactional_id: "copier".into(),
            producer_id: 17,
            epoch: 3,
            state: TxnState::PrepareCommit,
            partitions: [("a".to_string(), 0), ("b".to_string(), 2)]
                .into_iter()
                .collect(),
            groups: ["g".to_string()].into_iter().collect(),
            timeout_ms: 60_000,
            started_ms: 5,
            updated_ms: 9,
            keep_epoch: true,
        };
        let enc = encode(&meta);
        assert_eq!(decode("copier", &enc), Some(meta.clone()));
        for len in 0..enc.len() {
            assert!(decode("copier", &enc[..len]).is_none());
        }
        // A version 0 record (no flag) reads with the flag off.
        let mut v0 = enc[..enc.len() - 1].to_vec();
        v0[0] = META_VERSION_0;
        assert_eq!(
            decode("copier", &v0),
            Some(TxnMeta {
                keep_epoch: false,
                ..meta
            })
        );
    }
}
