//! Moving a group's committed offsets by hand (`ferry group
//! reset-offsets`, the admin API's `reset-offsets`): where to, and the
//! offsets that follows from the partitions' logs. Offsets move only while
//! the group has no members; the commit itself is a simple commit, fenced
//! like any other.

/// Where a reset moves the committed offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// Each partition's log start.
    Earliest,
    /// Each partition's end, as consumers see it.
    Latest,
    /// This offset, which must lie within each chosen partition's log.
    Offset(u64),
}

impl ResetTo {
    /// `earliest`, `latest`, or a whole number.
    pub fn parse(s: &str) -> Result<ResetTo, String> {
        match s {
            "earliest" => Ok(ResetTo::Earliest),
            "latest" => Ok(ResetTo::Latest),
            _ => s.parse().map(ResetTo::Offset).map_err(|_| {
                format!("--to must be earliest, latest or an offset (a whole number), not {s:?}")
            }),
        }
    }
}

/// One partition's log, as a reset sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionLog {
    /// The partition.
    pub partition: u32,
    /// Its first offset.
    pub log_start: u64,
    /// Its end.
    pub log_end: u64,
}

/// The offsets a reset commits: one per chosen partition of `topic`
/// (`only`, or all of `logs`), each within its partition's log. Refuses
/// the whole reset if a partition is missing or an offset out of range.
pub fn reset_targets(
    topic: &str,
    logs: &[PartitionLog],
    only: Option<u32>,
    to: ResetTo,
) -> Result<Vec<(String, u32, u64)>, String> {
    if let Some(p) = only
        && !logs.iter().any(|l| l.partition == p)
    {
        return Err(format!(
            "topic {topic} has no partition {p} (it has {})",
            logs.len()
        ));
    }
    logs.iter()
        .filter(|l| only.is_none_or(|p| p == l.partition))
        .map(|l| {
            let offset = match to {
                ResetTo::Earliest => l.log_start,
                ResetTo::Latest => l.log_end,
                ResetTo::Offset(o) => {
                    if o < l.log_start || o > l.log_end {
                        return Err(format!(
                            "offset {o} is outside partition {} of {topic}: its log holds {}..{}",
                            l.partition, l.log_start, l.log_end
                        ));
                    }
                    o
                }
            };
            Ok((topic.to_string(), l.partition, offset))
        })
        .collect()
}

/// Why a reset of `group` is refused while it has members.
pub fn non_empty(group: &str, members: usize) -> String {
    format!("group {group} has {members} member(s): offsets can be reset only while it has none")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(ranges: &[(u64, u64)]) -> Vec<PartitionLog> {
        ranges
            .iter()
            .enumerate()
            .map(|(i, &(log_start, log_end))| PartitionLog {
                partition: i as u32,
                log_start,
                log_end,
            })
            .collect()
    }

    #[test]
    fn to_takes_earliest_latest_or_a_whole_number() {
        assert_eq!(ResetTo::parse("earliest").unwrap(), ResetTo::Earliest);
        assert_eq!(ResetTo::parse("latest").unwrap(), ResetTo::Latest);
        assert_eq!(ResetTo::parse("42").unwrap(), ResetTo::Offset(42));
        for bad in ["", "-1", "soon", "1.5", "Earliest"] {
            let e = ResetTo::parse(bad).unwrap_err();
            assert!(e.starts_with("--to must be"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn reset_targets_follow_each_partitions_log() {
        let l = logs(&[(0, 10), (4, 6)]);
        let all = |to| reset_targets("t", &l, None, to).unwrap();
        assert_eq!(
            all(ResetTo::Earliest),
            vec![("t".into(), 0, 0), ("t".into(), 1, 4)]
        );
        assert_eq!(
            all(ResetTo::Latest),
            vec![("t".into(), 0, 10), ("t".into(), 1, 6)]
        );
        assert_eq!(
            reset_targets("t", &l, Some(0), ResetTo::Offset(3)).unwrap(),
            vec![("t".into(), 0, 3)]
        );
    }

    #[test]
    fn a_reset_outside_a_log_or_to_a_missing_partition_is_refused() {
        let l = logs(&[(0, 10), (4, 6)]);
        let e = reset_targets("t", &l, None, ResetTo::Offset(3)).unwrap_err();
        assert!(e.contains("partition 1 of t"), "{e}");
        assert!(reset_targets("t", &l, Some(0), ResetTo::Offset(11)).is_err());
        let e = reset_targets("t", &l, Some(2), ResetTo::Latest).unwrap_err();
        assert!(e.contains("no partition 2"), "{e}");
    }
}
