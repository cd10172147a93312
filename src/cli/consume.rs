//! `ferry consume`: records as JSON lines.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferry_client::{
    CommitMode, Consumer, ConsumerConfig, ConsumerEvent, ConsumerRecord, IsolationLevel, StartFrom,
};

use super::membership::MemberArgs;
use super::{BrokerAddr, CliError};

/// Print records as {"partition":P,"offset":O,"key":K,"value":V,"timestamp":T}
/// lines. Exits after --max-records, after --idle-timeout with no new
/// records, or with --exit-at-end once caught up. With --group (and no
/// --partition) it joins the group and reads only the partitions the group
/// assigns it, and leaves the group when it exits (SIGINT and SIGTERM
/// included).
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Consumer group: join it and read the partitions it assigns (with
    /// --partition: only commit its offsets).
    #[arg(long)]
    group: Option<String>,
    /// Where to start: earliest, latest, committed (the group's committed
    /// offset, else earliest), or a time, as milliseconds since the epoch
    /// or RFC 3339 (2026-12-04T10:00:00Z): the first record at or after it. A group member resumes from the group's committed
    /// offsets wherever there are some; this says where the partitions
    /// without start.
    #[arg(long, default_value = "committed")]
    from: StartFrom,
    /// none; before (commit, then print: at-most-once); after (print, then
    /// commit: at-least-once). Default: after with --group, else none.
    #[arg(long)]
    commit: Option<CommitMode>,
    /// read-committed or read-uncommitted.
    #[arg(long, default_value = "read-committed")]
    isolation: IsolationLevel,
    /// Stop after printing this many records.
    #[arg(long)]
    max_records: Option<u64>,
    /// Stop after this many milliseconds without a new record, counted
    /// from the moment the consumer holds its assignment.
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Exit 0 once every partition read has reached its end (its last
    /// stable offset under read-committed, its high watermark under
    /// read-uncommitted) as of the moment it got there.
    #[arg(long)]
    exit_at_end: bool,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<u32>,
    #[command(flatten)]
    member: MemberArgs,
    #[command(flatten)]
    broker: BrokerAddr,
}

pub async fn run(args: ConsumeArgs) -> Result<ExitCode, CliError> {
    let commit_mode = args.commit.unwrap_or(if args.group.is_some() {
        CommitMode::After
    } else {
        CommitMode::None
    });
    if commit_mode != CommitMode::None && args.group.is_none() {
        return Err("--commit before/after needs --group".into());
    }
    let config = args.member.apply(ConsumerConfig {
        group: args.group.clone(),
        commit_mode,
        isolation: args.isolation,
        start_from: args.from,
        ..ConsumerConfig::default()
    })?;
    let client = args.broker.connect().await?;
    let mut consumer = Consumer::new(client, config).await?;
    match args.partition {
        Some(p) => consumer.assign(&[(args.topic.clone(), p)]).await?,
        None => consumer.subscribe(&args.topic).await?,
    }
    let outcome = tokio::select! {
        outcome = consume(&mut consumer, &args, commit_mode) => outcome,
        () = super::terminated() => Ok(()),
    };
    // Leave the group whatever ended the run, so the others take over at
    // once.
    let left = consumer.close().await;
    outcome?;
    left?;
    Ok(ExitCode::SUCCESS)
}

async fn consume(
    consumer: &mut Consumer,
    args: &ConsumeArgs,
    commit_mode: CommitMode,
) -> Result<(), CliError> {
    let idle = args.idle_timeout.map(Duration::from_millis);
    let max = args.max_records.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let stdout = std::io::stdout();
    while printed < max {
        if args.exit_at_end && consumer.at_end() {
            break;
        }
        // Joining or rebalancing is not idleness.
        if !consumer.joined() {
            last_record = Instant::now();
        }
        let wait = match idle {
            Some(idle) => {
                let left = idle.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    break;
                }
                left.min(Duration::from_millis(500))
            }
            None => Duration::from_millis(500),
        };
        let mut records = Vec::new();
        for event in consumer.poll_events(wait).await? {
            match event {
                ConsumerEvent::Record(r) => records.push(r),
                ConsumerEvent::Assigned { .. }
                | ConsumerEvent::Revoked { .. }
                | ConsumerEvent::Lost { .. } => last_record = Instant::now(),
                ConsumerEvent::PartitionEof { .. } => {}
            }
        }
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        let take = (max - printed).min(records.len() as u64) as usize;
        {
            let mut out = std::io::BufWriter::new(stdout.lock());
            for r in &records[..take] {
                writeln!(out, "{}", to_json(r))?;
            }
            out.flush()?;
        }
        printed += take as u64;
        if take < records.len() {
            // Rewind each partition to its first unprinted record, so a
            // commit covers exactly what was printed.
            for r in &records[take..] {
                if consumer
                    .position(&r.topic, r.partition)
                    .is_some_and(|pos| pos > r.offset)
                {
                    consumer.seek(&r.topic, r.partition, r.offset);
                }
            }
        }
        if commit_mode == CommitMode::After {
            consumer.commit().await?;
        }
    }
    Ok(())
}

fn text(b: &Option<bytes::Bytes>) -> serde_json::Value {
    match b {
        None => serde_json::Value::Null,
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
    }
}

/// One record as a JSON object; `headers` only when the record has any,
/// as a list (a key may appear twice).
fn to_json(r: &ConsumerRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "partition": r.partition,
        "offset": r.offset,
        "key": text(&r.key),
        "value": text(&r.value),
        "timestamp": r.timestamp,
    });
    if !r.headers.is_empty() {
        v["headers"] = r
            .headers
            .iter()
            .map(|(key, value)| {
                serde_json::json!({
                    "key": String::from_utf8_lossy(key),
                    "value": text(value),
                })
            })
            .collect();
    }
    v
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn record(headers: Vec<(Bytes, Option<Bytes>)>) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("t"),
            partition: 1,
            offset: 7,
            timestamp: 1000,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers,
        }
    }

    #[test]
    fn headers_print_as_a_list_only_when_there_are_some() {
        let plain = to_json(&record(Vec::new()));
        assert!(plain.get("headers").is_none());
        let h = |k: &'static [u8], v: Option<&'static [u8]>| {
            (Bytes::from_static(k), v.map(Bytes::from_static))
        };
        let with = to_json(&record(vec![
            h(b"a", Some(b"1")),
            h(b"a", None),
            h(b"b", Some(b"")),
        ]));
        assert_eq!(
            with["headers"],
            serde_json::json!([
                {"key": "a", "value": "1"},
                {"key": "a", "value": null},
                {"key": "b", "value": ""},
            ])
        );
        assert_eq!(with["value"], "v");
    }
}
