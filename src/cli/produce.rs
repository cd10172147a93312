//! `ferry produce`: one record per line of standard input.

use std::process::ExitCode;
use std::time::Duration;

use ferry_client::{Acks, Client, Producer, ProducerConfig};

use super::lines::{spawn_stdin_reader, split_line};
use super::{BrokerAddr, CliError};

/// Deliveries awaited behind the sender before it waits (bounds memory).
const MAX_PENDING_DELIVERIES: usize = 1 << 20;

/// Produce one record per stdin line. Prints {"sent":N,"acked":N,"failed":N}
/// and exits 0 only if every record was acknowledged (or, with
/// --acks none, sent).
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Write every record to this partition instead of hashing keys.
    #[arg(long)]
    partition: Option<u32>,
    /// Split each line at the first SEP into key and value (no SEP: null key).
    #[arg(long)]
    key_separator: Option<String>,
    /// none, leader, or all (durable under the broker's fsync policy).
    #[arg(long, default_value = "all")]
    acks: Acks,
    /// Idempotent producer: retries never duplicate or reorder records
    /// within a partition. The default with --acks all; needs --acks all.
    #[arg(long, overrides_with = "no_idempotent")]
    idempotent: bool,
    /// Plain at-least-once producer: a retry may store a record twice.
    /// Implied by --acks none and --acks leader.
    #[arg(long, overrides_with = "idempotent")]
    no_idempotent: bool,
    /// Give up on a record this many seconds after it was batched.
    #[arg(long, default_value_t = 120)]
    delivery_timeout: u64,
    /// Wait up to this long to fill a batch.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Batch size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Produce in transactions under this transactional id: read-committed
    /// consumers see a transaction's records only once it commits, and
    /// "acked" counts records of committed transactions. Needs --acks all.
    #[arg(long)]
    transactional_id: Option<String>,
    /// With --transactional-id: commit after every N lines, and at EOF.
    #[arg(long, default_value_t = 1000, requires = "transactional_id")]
    txn_records: u64,
    #[command(flatten)]
    broker: BrokerAddr,
}

pub async fn run(args: ProduceArgs) -> Result<ExitCode, CliError> {
    if args.key_separator.as_deref() == Some("") {
        return Err("--key-separator must not be empty".into());
    }
    let idempotent = idempotence(args.acks, args.idempotent, args.no_idempotent)?;
    if let Some(transactional_id) = args.transactional_id {
        if !idempotent {
            return Err("--transactional-id needs --acks all and idempotence".into());
        }
        return super::txn::produce(super::txn::TxnProduce {
            broker: args.broker.broker,
            topic: args.topic,
            partition: args.partition,
            key_separator: args.key_separator,
            transactional_id,
            txn_records: args.txn_records,
            producer: ProducerConfig {
                linger: Duration::from_millis(args.linger_ms),
                batch_bytes: args.batch_bytes,
                delivery_timeout: Duration::from_secs(args.delivery_timeout),
                ..ProducerConfig::default()
            },
        })
        .await;
    }
    let client = Client::connect(&args.broker.broker).await?;
    let config = ProducerConfig {
        acks: args.acks,
        idempotent,
        linger: Duration::from_millis(args.linger_ms),
        batch_bytes: args.batch_bytes,
        delivery_timeout: Duration::from_secs(args.delivery_timeout),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await?;

    let (mut line_rx, reader) = spawn_stdin_reader();

    // Deliveries are awaited in order on a separate task, so sending never
    // waits for acknowledgements except through the producer's own
    // backpressure.
    let (dtx, mut drx) = tokio::sync::mpsc::channel(MAX_PENDING_DELIVERIES);
    let counter = tokio::spawn(async move {
        let (mut acked, mut failed, mut first_error) = (0u64, 0u64, None::<String>);
        while let Some(d) = drx.recv().await {
            let d: ferry_client::Delivery = d;
            match d.wait().await {
                Ok(_) => acked += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        (acked, failed, first_error)
    });

    let sep = args.key_separator.as_deref().map(str::as_bytes);
    let mut sent = 0u64;
    let mut send_failed = 0u64;
    let mut send_error = None;
    while let Some(chunk) = line_rx.recv().await {
        for line in &chunk {
            let (key, value) = split_line(line, sep);
            let r = match args.partition {
                Some(p) => producer.send_to(&args.topic, p, key, Some(value)).await,
                None => producer.send(&args.topic, key, Some(value)).await,
            };
            match r {
                Ok(d) => {
                    sent += 1;
                    if dtx.send(d).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // A definite error before sending (unknown topic, bad
                    // partition) fails every later record the same way.
                    send_failed += 1;
                    send_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        if send_error.is_some() && sent == 0 {
            break;
        }
    }
    drop(line_rx);
    let flushed = producer.close().await;
    drop(dtx);
    let (acked, failed, first_error) = counter.await?;
    let _ = reader.join();
    let failed = failed + send_failed;
    println!(
        "{}",
        serde_json::json!({ "sent": sent, "acked": acked, "failed": failed })
    );
    if let Some(e) = send_error.or(first_error) {
        eprintln!("error: {e}");
    } else if let Err(e) = flushed {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed == 0 && acked == sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Whether to produce idempotently: the explicit flag if one was given
/// (the later one wins), otherwise exactly when `acks` is `all`.
fn idempotence(acks: Acks, idempotent: bool, no_idempotent: bool) -> Result<bool, CliError> {
    if idempotent && acks != Acks::All {
        return Err(format!(
            "--idempotent needs --acks all (got --acks {acks}); use --no-idempotent for --acks {acks}"
        )
        .into());
    }
    Ok(!no_idempotent && acks == Acks::All)
}

#[cfg(test)]
mod tests {
    use super::{Acks, idempotence};

    #[test]
    fn idempotence_is_the_default_only_with_acks_all() {
        assert!(idempotence(Acks::All, false, false).unwrap());
        assert!(idempotence(Acks::All, true, false).unwrap());
        assert!(!idempotence(Acks::All, false, true).unwrap());
        for acks in [Acks::None, Acks::Leader] {
            assert!(!idempotence(acks, false, false).unwrap());
            assert!(!idempotence(acks, false, true).unwrap());
            let err = idempotence(acks, true, false).unwrap_err().to_string();
            assert!(err.contains("--idempotent needs --acks all"), "{err}");
        }
    }
}
