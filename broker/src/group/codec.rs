//! The group metadata record of the offsets log (docs/format.md,
//! "Offsets log records"): what a restart needs so it never reuses a
//! generation, and what DescribeGroup shows.
//!
//! ```text
//! u8 version (0) | i32 generation | str protocol_type | str protocol_name | str leader
//! | u32 n_members (≤ MAX_GROUP_MEMBERS)
//!   per member: str member_id | str instance_id | str client_id | str host
//!               | u32 session_timeout_ms | u32 rebalance_timeout_ms
//!               | u32 len | metadata (≤ MAX_MEMBER_METADATA_BYTES, the chosen protocol's)
//!               | u32 len | assignment (≤ MAX_ASSIGNMENT_BYTES)
//! ```
//!
//! `str` is `u16 len | UTF-8`; integers are little-endian.

use super::state::{
    Group, MAX_ASSIGNMENT_BYTES, MAX_GROUP_MEMBERS, MAX_MEMBER_METADATA_BYTES, Member,
};
use crate::codec::{Reader, put_str};

const VERSION: u8 = 0;

/// A member as persisted: what [`decode`] gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMember {
    pub member_id: String,
    pub instance_id: String,
    pub client_id: String,
    pub host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// A group as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredGroup {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub members: Vec<StoredMember>,
}

fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&(b.len() as u32).to_le_bytes());
    v.extend_from_slice(b);
}

/// The record value of `g`.
pub(crate) fn encode(g: &Group) -> Vec<u8> {
    let mut v = vec![VERSION];
    v.extend_from_slice(&g.generation.to_le_bytes());
    put_str(&mut v, &g.protocol_type);
    put_str(&mut v, &g.protocol_name);
    put_str(&mut v, &g.leader);
    v.extend_from_slice(&(g.members.len() as u32).to_le_bytes());
    for m in &g.members {
        encode_member(&mut v, m, &g.protocol_name);
    }
    v
}

fn encode_member(v: &mut Vec<u8>, m: &Member, protocol: &str) {
    put_str(v, &m.member_id);
    put_str(v, &m.instance_id);
    put_str(v, &m.client_id);
    put_str(v, &m.host);
    v.extend_from_slice(&m.session_timeout_ms.to_le_bytes());
    v.extend_from_slice(&m.rebalance_timeout_ms.to_le_bytes());
    put_bytes(v, m.metadata(protocol));
    put_bytes(v, &m.assignment);
}

fn bytes(r: &mut Reader<'_>, max: usize) -> Option<Vec<u8>> {
    let len = r.u32()? as usize;
    if len > max {
        return None;
    }
    Some(r.take(len)?.to_vec())
}

/// Decodes a record value; `None` if it is malformed or breaks a limit.
pub(crate) fn decode(value: &[u8]) -> Option<StoredGroup> {
    let mut r = Reader::new(value);
    if r.u8()? != VERSION {
        return None;
    }
    let generation = r.i32()?;
    let protocol_type = r.str()?;
    let protocol_name = r.str()?;
    let leader = r.str()?;
    let n = r.u32()? as usize;
    if n > MAX_GROUP_MEMBERS {
        return None;
    }
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        members.push(StoredMember {
            member_id: r.str()?,
            instance_id: r.str()?,
            client_id: r.str()?,
            host: r.str()?,
            session_timeout_ms: r.u32()?,
            rebalance_timeout_ms: r.u32()?,
            metadata: bytes(&mut r, MAX_MEMBER_METADATA_BYTES)?,
            assignment: bytes(&mut r, MAX_ASSIGNMENT_BYTES)?,
        });
    }
    r.is_done().then_some(StoredGroup {
        generation,
        protocol_type,
        protocol_name,
        leader,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_record_round_trips_and_truncations_or_oversized_lengths_are_refused() {
        let mut g = Group::new("g");
        g.generation = 7;
        g.protocol_type = "consumer".into();
        g.protocol_name = "range".into();
        g.leader = "m1".into();
        g.members.push(Member {
            member_id: "m1".into(),
            instance_id: "i1".into(),
            client_id: "c".into(),
            host: "127.0.0.1".into(),
            session_timeout_ms: 100,
            rebalance_timeout_ms: 200,
            protocols: vec![("rr".into(), vec![9]), ("range".into(), vec![1, 2])],
            assignment: vec![3, 4, 5],
            joined: false,
            synced: false,
            expires_ms: 0,
        });
        let v = encode(&g);
        let d = decode(&v).expect("decodes");
        assert_eq!(d.generation, 7);
        assert_eq!(d.leader, "m1");
        assert_eq!(d.members[0].metadata, vec![1, 2], "the chosen protocol's");
        assert_eq!(d.members[0].assignment, vec![3, 4, 5]);
        for cut in 0..v.len() {
            assert_eq!(decode(&v[..cut]), None, "truncated at {cut}");
        }
        let mut long = v.clone();
        long.push(0);
        assert_eq!(decode(&long), None, "trailing bytes");
        let mut huge = encode(&Group::new("g"));
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&(MAX_GROUP_MEMBERS as u32 + 1).to_le_bytes());
        assert_eq!(decode(&huge), None, "too many members");
    }
}
