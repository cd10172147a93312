//! `ferry copy`: the exactly-once copier.

use std::process::ExitCode;
use std::time::Duration;

use ferry_client::partitioner::partition_for_key;
use ferry_client::{
    CommitMode, Consumer, ConsumerConfig, ConsumerRecord, ExactlyOnce, ExactlyOnceConfig,
    IsolationLevel, Output, StartFrom, TransactionalConfig, TransactionalProducer,
};
use serde_json::json;

use super::membership::MemberArgs;
use super::{BrokerAddr, CliError};

/// Copy SRC to DST exactly once: each transaction writes a batch of
/// records to DST and commits the group's SRC offsets with them, so a
/// restart resumes where the last commit left off. Copiers with the same
/// --group (and each its own --transactional-id) split SRC's partitions
/// between them; a copier that lost its partitions cannot commit them. Keys are kept; a record
/// goes to the DST partition its key hashes to, or, without a key, to its
/// SRC partition modulo DST's partition count. Prints
/// {"copied":N,"transactions":M} at the end.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Topic to read (read-committed).
    src: String,
    /// Topic to write.
    dst: String,
    /// Consumer group to join; its SRC offsets commit with each
    /// transaction, and the copy resumes from them.
    #[arg(long)]
    group: String,
    /// Transactional id. A new copier with the same id fences the old one.
    #[arg(long)]
    transactional_id: String,
    /// Commit after this many records (checked after each fetch).
    #[arg(long, default_value_t = 1000)]
    txn_records: u64,
    /// Commit this many milliseconds after a transaction's first record at
    /// the latest.
    #[arg(long, default_value_t = 100)]
    txn_ms: u64,
    /// Exit 0 after this many milliseconds without new input, counted from
    /// the moment the copier holds its assignment (default: run until
    /// killed).
    #[arg(long)]
    idle_timeout: Option<u64>,
    #[command(flatten)]
    member: MemberArgs,
    #[command(flatten)]
    broker: BrokerAddr,
}

pub async fn run(args: CopyArgs) -> Result<ExitCode, CliError> {
    if args.txn_records == 0 || args.txn_ms == 0 {
        return Err("--txn-records and --txn-ms must be at least 1".into());
    }
    let client = args.broker.connect().await?;
    let dst_partitions = client.describe_topic(&args.dst).await?.partitions.len() as u32;
    if dst_partitions == 0 {
        return Err(format!("topic {} has no partitions", args.dst).into());
    }
    // The producer first: starting it settles the transaction an earlier
    // copier left open, so the committed offsets read next are final.
    let producer = TransactionalProducer::new(
        client.clone(),
        TransactionalConfig::new(args.transactional_id.clone()),
    )
    .await?;
    let config = args.member.apply(ConsumerConfig {
        group: Some(args.group.clone()),
        commit_mode: CommitMode::None,
        isolation: IsolationLevel::ReadCommitted,
        start_from: StartFrom::Committed,
        ..ConsumerConfig::default()
    })?;
    let mut consumer = Consumer::new(client, config).await?;
    consumer.subscribe(&args.src).await?;
    let config = ExactlyOnceConfig {
        max_records: args.txn_records,
        max_interval: Duration::from_millis(args.txn_ms),
        ..ExactlyOnceConfig::new(args.group.clone())
    };
    let mut eos = ExactlyOnce::new(consumer, producer, config)?;
    let dst = args.dst.clone();
    let idle = args.idle_timeout.map(Duration::from_millis);
    let outcome = tokio::select! {
        totals = eos.run(|record, out| out.push(copy_of(record, &dst, dst_partitions)), idle) => {
            Some(totals)
        }
        () = super::terminated() => None,
    };
    let (consumer, producer) = eos.into_parts();
    // An interrupted transaction aborts; then the copier leaves the group
    // so that the others take its partitions at once.
    let closed = producer.close().await;
    let left = consumer.close().await;
    let totals = match outcome {
        Some(totals) => totals?,
        None => {
            closed?;
            left?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    closed?;
    left?;
    println!(
        "{}",
        json!({ "copied": totals.records, "transactions": totals.transactions })
    );
    Ok(ExitCode::SUCCESS)
}

/// The copy of `record` in `dst`, which has `partitions` partitions.
fn copy_of(record: &ConsumerRecord, dst: &str, partitions: u32) -> Output {
    let partition = match &record.key {
        Some(key) => partition_for_key(key, partitions),
        None => record.partition % partitions,
    };
    Output::to_partition(dst, partition, record.key.clone(), record.value.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn record(partition: u32, key: Option<&'static [u8]>) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("src"),
            partition,
            offset: 0,
            timestamp: 0,
            key: key.map(Bytes::from_static),
            value: Some(Bytes::from_static(b"v")),
            headers: Vec::new(),
        }
    }

    #[test]
    fn keyed_records_go_where_their_key_hashes() {
        for key in [&b"a"[..], b"user-17", b""] {
            let out = copy_of(&record(1, Some(key)), "dst", 3);
            assert_eq!(out.partition, Some(partition_for_key(key, 3)));
            assert_eq!(out.key.as_deref(), Some(key));
            assert_eq!(out.topic, "dst");
        }
    }

    #[test]
    fn keyless_records_keep_their_partition_modulo_the_destination() {
        assert_eq!(copy_of(&record(0, None), "dst", 3).partition, Some(0));
        assert_eq!(copy_of(&record(4, None), "dst", 3).partition, Some(1));
        assert_eq!(copy_of(&record(1, None), "dst", 1).partition, Some(0));
        assert_eq!(copy_of(&record(1, None), "dst", 3).key, None);
    }
}
