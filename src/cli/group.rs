//! `ferry group list|describe|delete|reset-offsets`.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Subcommand;
use ferry_client::{Client, ClientError, GroupDescription, GroupSummary, TopicDescription};
use ferry_proto::ErrorCode;
use serde_json::json;

use super::{BrokerAddr, CliError};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Print every consumer group as a JSON line: {"group","state","members"}.
    /// Groups that have only committed offsets show as empty.
    List,
    /// Describe a group as one JSON object: its state, generation,
    /// protocol, members with their assignments, and per committed
    /// partition the committed offset, the log end and the lag.
    Describe {
        /// Group name.
        group: String,
    },
    /// Delete a group and all its committed offsets. Refused while it has
    /// members.
    Delete {
        /// Group name.
        group: String,
    },
    /// Set a group's committed offsets of one topic (every partition, or
    /// one). Refused while the group has members. Prints one JSON line per
    /// partition: {"topic","partition","offset"}.
    ResetOffsets {
        /// Group name.
        group: String,
        /// The topic whose offsets to set.
        #[arg(long)]
        topic: String,
        /// earliest (the log start), latest (the log end) or an offset
        /// between the two.
        // Hyphen values too, so "-1" gets the clear --to error below.
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
    },
}

/// Where `reset-offsets --to` moves the committed offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
}

impl ResetTo {
    fn parse(s: &str) -> Result<ResetTo, CliError> {
        match s {
            "earliest" => Ok(ResetTo::Earliest),
            "latest" => Ok(ResetTo::Latest),
            _ => s.parse().map(ResetTo::Offset).map_err(|_| {
                format!("--to must be earliest, latest or an offset (a whole number), not {s:?}")
                    .into()
            }),
        }
    }
}

pub async fn run(command: GroupCommand, broker: BrokerAddr) -> Result<ExitCode, CliError> {
    // Check what needs no broker before connecting.
    let reset_to = match &command {
        GroupCommand::ResetOffsets { to, .. } => Some(ResetTo::parse(to)?),
        _ => None,
    };
    let client = broker.connect().await?;
    match command {
        GroupCommand::List => {
            for g in client.list_groups().await? {
                println!("{}", summary_json(&g));
            }
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group).await?;
            let offsets = group_offsets(&client, &group).await?;
            println!("{}", describe_json(&d, &offsets));
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await?;
            println!("deleted group {group}");
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            ..
        } => {
            let to = reset_to.expect("parsed above");
            reset_offsets(&client, &group, &topic, partition, to).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_json(g: &GroupSummary) -> serde_json::Value {
    json!({ "group": g.group, "state": g.state, "members": g.members })
}

/// A committed offset of the group and where its partition's log ends.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CommittedOffset {
    topic: String,
    partition: u32,
    committed: u64,
    /// The partition's high watermark; `None` if the partition is gone.
    log_end: Option<u64>,
}

/// Every committed offset of `group`, by topic and partition, for the
/// topics that exist now.
async fn group_offsets(client: &Client, group: &str) -> Result<Vec<CommittedOffset>, CliError> {
    let mut topics: Vec<String> = client
        .list_topics()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    topics.sort();
    let mut out = Vec::new();
    for topic in topics {
        // A topic deleted since the listing has nothing to show.
        let committed = match skip_deleted(client.fetch_offsets(group, &topic).await)? {
            Some(c) if !c.is_empty() => c,
            _ => continue,
        };
        let log_ends: HashMap<u32, u64> = skip_deleted(client.describe_topic(&topic).await)?
            .map(|d| {
                d.partitions
                    .iter()
                    .map(|p| (p.partition, p.high_watermark))
                    .collect()
            })
            .unwrap_or_default();
        let mut partitions: Vec<_> = committed.into_iter().collect();
        partitions.sort();
        out.extend(
            partitions
                .into_iter()
                .map(|(partition, committed)| CommittedOffset {
                    topic: topic.clone(),
                    partition,
                    committed,
                    log_end: log_ends.get(&partition).copied(),
                }),
        );
    }
    Ok(out)
}

/// `Ok(None)` for a topic that does not exist (any more).
fn skip_deleted<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == ErrorCode::UnknownTopicOrPartition => Ok(None),
        Err(e) => Err(e),
    }
}

fn describe_json(d: &GroupDescription, offsets: &[CommittedOffset]) -> serde_json::Value {
    let members: Vec<_> = d
        .members
        .iter()
        .map(|m| {
            let assignment: Vec<_> = m
                .assignment
                .iter()
                .map(|(topic, partitions)| json!({ "topic": topic, "partitions": partitions }))
                .collect();
            json!({
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "host": m.host,
                "assignment": assignment,
                "assignment_undecodable": m.assignment_undecodable,
            })
        })
        .collect();
    let offsets: Vec<_> = offsets
        .iter()
        .map(|o| {
            json!({
                "topic": o.topic,
                "partition": o.partition,
                "committed": o.committed,
                "log_end": o.log_end,
                // Never negative: a commit past the log end counts as caught up.
                "lag": o.log_end.map(|end| end.saturating_sub(o.committed)),
            })
        })
        .collect();
    json!({
        "group": d.group,
        "state": d.state,
        "generation": d.generation,
        "protocol": d.protocol,
        "members": members,
        "offsets": offsets,
    })
}

/// The offsets `reset-offsets` commits: one per chosen partition of
/// `topic`, each within its partition's log. Refuses the whole reset if
/// any offset is out of range.
fn reset_targets(
    topic: &TopicDescription,
    partition: Option<u32>,
    to: ResetTo,
) -> Result<Vec<(String, u32, u64)>, CliError> {
    if let Some(p) = partition
        && !topic.partitions.iter().any(|info| info.partition == p)
    {
        return Err(format!(
            "topic {} has no partition {p} (it has {})",
            topic.name,
            topic.partitions.len()
        )
        .into());
    }
    topic
        .partitions
        .iter()
        .filter(|info| partition.is_none_or(|p| p == info.partition))
        .map(|info| {
            let offset = match to {
                ResetTo::Earliest => info.log_start_offset,
                ResetTo::Latest => info.high_watermark,
                ResetTo::Offset(o) => {
                    if o < info.log_start_offset || o > info.high_watermark {
                        return Err(format!(
                            "offset {o} is outside partition {} of {}: its log holds {}..{}",
                            info.partition, topic.name, info.log_start_offset, info.high_watermark
                        )
                        .into());
                    }
                    o
                }
            };
            Ok((topic.name.clone(), info.partition, offset))
        })
        .collect()
}

async fn reset_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    partition: Option<u32>,
    to: ResetTo,
) -> Result<(), CliError> {
    // A friendlier refusal than the broker's unknown_member_id; the broker
    // still refuses a commit if a member joins in between.
    match client.describe_group(group).await {
        Ok(d) if !d.members.is_empty() => {
            return Err(non_empty(group, d.members.len()).into());
        }
        Ok(_) => {}
        Err(e) if e.code() == ErrorCode::GroupIdNotFound => {}
        Err(e) => return Err(e.into()),
    }
    let d = client.describe_topic(topic).await?;
    let offsets = reset_targets(&d, partition, to)?;
    match client.commit_offsets(group, &offsets).await {
        Ok(()) => {}
        Err(e) if e.code() == ErrorCode::UnknownMemberId => {
            return Err(format!("{}: {e}", non_empty(group, 1)).into());
        }
        Err(e) => return Err(e.into()),
    }
    for (topic, partition, offset) in &offsets {
        println!(
            "{}",
            json!({ "topic": topic, "partition": partition, "offset": offset })
        );
    }
    Ok(())
}

fn non_empty(group: &str, members: usize) -> String {
    format!("group {group} has {members} member(s): offsets can be reset only while it has none")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::{GroupMember, PartitionInfo};

    fn topic(logs: &[(u64, u64)]) -> TopicDescription {
        TopicDescription {
            name: "t".into(),
            partitions: logs
                .iter()
                .enumerate()
                .map(|(i, &(start, end))| PartitionInfo {
                    partition: i as u32,
                    log_start_offset: start,
                    high_watermark: end,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn to_takes_earliest_latest_or_a_whole_number() {
        assert_eq!(ResetTo::parse("earliest").unwrap(), ResetTo::Earliest);
        assert_eq!(ResetTo::parse("latest").unwrap(), ResetTo::Latest);
        assert_eq!(ResetTo::parse("42").unwrap(), ResetTo::Offset(42));
        for bad in ["", "-1", "soon", "1.5", "Earliest"] {
            let e = ResetTo::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--to must be"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn reset_targets_follow_each_partitions_log() {
        let t = topic(&[(0, 10), (4, 6)]);
        let all = |to| reset_targets(&t, None, to).unwrap();
        assert_eq!(
            all(ResetTo::Earliest),
            vec![("t".into(), 0, 0), ("t".into(), 1, 4)]
        );
        assert_eq!(
            all(ResetTo::Latest),
            vec![("t".into(), 0, 10), ("t".into(), 1, 6)]
        );
        assert_eq!(
            reset_targets(&t, Some(0), ResetTo::Offset(3)).unwrap(),
            vec![("t".into(), 0, 3)]
        );
    }

    #[test]
    fn a_reset_outside_a_log_or_to_a_missing_partition_is_refused() {
        let t = topic(&[(0, 10), (4, 6)]);
        let e = reset_targets(&t, None, ResetTo::Offset(3)).unwrap_err();
        assert!(e.to_string().contains("partition 1 of t"), "{e}");
        assert!(reset_targets(&t, Some(0), ResetTo::Offset(11)).is_err());
        let e = reset_targets(&t, Some(2), ResetTo::Latest).unwrap_err();
        assert!(e.to_string().contains("no partition 2"), "{e}");
    }

    #[test]
    fn lag_is_the_distance_to_the_log_end_and_never_negative() {
        let d = GroupDescription {
            group: "g".into(),
            state: "empty".into(),
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: vec![],
        };
        let offsets = [
            CommittedOffset {
                topic: "t".into(),
                partition: 0,
                committed: 3,
                log_end: Some(10),
            },
            CommittedOffset {
                topic: "t".into(),
                partition: 1,
                committed: 12,
                log_end: Some(10),
            },
        ];
        assert_eq!(
            describe_json(&d, &offsets).to_string(),
            r#"{"generation":0,"group":"g","members":[],"offsets":[{"committed":3,"lag":7,"log_end":10,"partition":0,"topic":"t"},{"committed":12,"lag":0,"log_end":10,"partition":1,"topic":"t"}],"protocol":"","state":"empty"}"#
        );
    }

    #[test]
    fn a_member_shows_its_assignment_by_topic() {
        let d = GroupDescription {
            group: "g".into(),
            state: "stable".into(),
            generation: 2,
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            leader: "m-1".into(),
            members: vec![GroupMember {
                member_id: "m-1".into(),
                instance_id: None,
                client_id: "c".into(),
                host: "127.0.0.1".into(),
                assignment: vec![("t".into(), vec![0, 1])],
                assignment_undecodable: false,
            }],
        };
        let v = describe_json(&d, &[]);
        assert_eq!(
            v["members"].to_string(),
            r#"[{"assignment":[{"partitions":[0,1],"topic":"t"}],"assignment_undecodable":false,"host":"127.0.0.1","instance_id":null,"member_id":"m-1"}]"#
        );
    }
}
