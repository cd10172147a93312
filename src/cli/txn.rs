//! `ferry txn list|abort`, and the transactional mode of `ferry produce`.

use std::process::ExitCode;

use clap::Subcommand;
use ferry_client::{
    ProducerConfig, TransactionInfo, TransactionalConfig, TransactionalProducer, abort_transaction,
    list_transactions,
};
use serde_json::json;

use super::lines::{spawn_stdin_reader, split_line};
use super::{BrokerAddr, CliError};

#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// Print every transactional id the coordinator knows as a JSON line:
    /// {"transactional_id","producer_id","producer_epoch","state",
    /// "partitions","groups","started_ms","timeout_ms","hanging"}.
    List,
    /// Abort the open transaction of a transactional id. Its producer is
    /// fenced and must start again.
    Abort {
        /// The transactional id.
        id: String,
    },
}

pub async fn run(command: TxnCommand, broker: BrokerAddr) -> Result<ExitCode, CliError> {
    let client = broker.connect().await?;
    match command {
        TxnCommand::List => {
            for t in list_transactions(&client).await? {
                println!("{}", to_json(&t));
            }
        }
        TxnCommand::Abort { id } => {
            abort_transaction(&client, &id).await?;
            println!("aborted the open transaction of {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(t: &TransactionInfo) -> serde_json::Value {
    let partitions: Vec<_> = t
        .partitions
        .iter()
        .map(|p| json!({ "topic": p.topic, "partition": p.partition }))
        .collect();
    json!({
        "transactional_id": t.transactional_id,
        "producer_id": t.producer_id,
        "producer_epoch": t.producer_epoch,
        "state": t.state,
        "partitions": partitions,
        "groups": t.groups,
        "started_ms": t.started_ms,
        "timeout_ms": t.timeout_ms,
        "hanging": t.hanging,
    })
}

/// What `ferry produce --transactional-id` needs from its flags.
pub struct TxnProduce {
    pub broker: super::BrokerAddr,
    pub topic: String,
    pub partition: Option<u32>,
    pub key_separator: Option<String>,
    pub transactional_id: String,
    /// Lines per transaction.
    pub txn_records: u64,
    pub producer: ProducerConfig,
}

/// Produces stdin lines in transactions of `txn_records` lines, committing
/// each and the rest at EOF. Prints {"sent","acked","failed"}, where acked
/// counts records of committed transactions. On a failed transaction it
/// aborts it and sends nothing more: the aborted records and every later
/// line count as failed, and the exit is non-zero.
pub async fn produce(args: TxnProduce) -> Result<ExitCode, CliError> {
    if args.txn_records == 0 {
        return Err("--txn-records must be at least 1".into());
    }
    let client = args.broker.connect().await?;
    let config = TransactionalConfig {
        producer: args.producer,
        ..TransactionalConfig::new(args.transactional_id)
    };
    let mut producer = TransactionalProducer::new(client, config).await?;

    let (mut line_rx, reader) = spawn_stdin_reader();

    let sep = args.key_separator.as_deref().map(str::as_bytes);
    let (mut sent, mut acked, mut unsent) = (0u64, 0u64, 0u64);
    let mut in_txn = 0u64;
    let mut error: Option<String> = None;
    while let Some(chunk) = line_rx.recv().await {
        for line in &chunk {
            if error.is_some() {
                unsent += 1;
                continue;
            }
            if in_txn == 0
                && let Err(e) = producer.begin()
            {
                error = Some(e.to_string());
                unsent += 1;
                continue;
            }
            let (key, value) = split_line(line, sep);
            let r = match args.partition {
                Some(p) => producer.send_to(&args.topic, p, key, Some(value)).await,
                None => producer.send(&args.topic, key, Some(value)).await,
            };
            if let Err(e) = r {
                error = Some(e.to_string());
                unsent += 1;
                continue;
            }
            sent += 1;
            in_txn += 1;
            if in_txn == args.txn_records {
                if let Err(e) = producer.commit().await {
                    error = Some(e.to_string());
                    continue;
                }
                acked += in_txn;
                in_txn = 0;
            }
        }
    }
    if error.is_none() && in_txn > 0 {
        match producer.commit().await {
            Ok(()) => acked += in_txn,
            Err(e) => error = Some(e.to_string()),
        }
    }
    drop(line_rx);
    // Aborts what is still open (a failed transaction), then stops.
    if let Err(e) = producer.close().await {
        error.get_or_insert_with(|| e.to_string());
    }
    let _ = reader.join();
    println!(
        "{}",
        json!({ "sent": sent, "acked": acked, "failed": sent - acked + unsent })
    );
    match error {
        Some(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_lists_as_one_json_object() {
        let t = TransactionInfo {
            transactional_id: "copier".into(),
            producer_id: 7,
            producer_epoch: 3,
            state: "Ongoing".into(),
            partitions: vec![ferry_client::TopicPartition {
                topic: "out".into(),
                partition: 2,
            }],
            groups: vec!["g".into()],
            started_ms: 1000,
            timeout_ms: 60_000,
            hanging: false,
        };
        assert_eq!(
            to_json(&t).to_string(),
            r#"{"groups":["g"],"hanging":false,"partitions":[{"partition":2,"topic":"out"}],"producer_epoch":3,"producer_id":7,"started_ms":1000,"state":"Ongoing","timeout_ms":60000,"transactional_id":"copier"}"#
        );
    }
}
