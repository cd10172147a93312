//! `ferry group list|describe|delete|reset-offsets`.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Subcommand;
use ferry_broker::{PartitionLog, ResetTo, non_empty, reset_targets};
use ferry_client::{Client, ClientError, GroupDescription, GroupSummary};
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
    let logs: Vec<PartitionLog> = d
        .partitions
        .iter()
        .map(|p| PartitionLog {
            partition: p.partition,
            log_start: p.log_start_offset,
            log_end: p.high_watermark,
        })
        .collect();
    let offsets = reset_targets(&d.name, &logs, partition, to)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::GroupMember;

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
