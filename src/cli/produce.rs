//! `ferry produce`: one record per line of standard input.

use std::process::ExitCode;
use std::time::Duration;

use ferry_client::{Acks, Compression, Delivery, Producer, ProducerConfig, ProducerRecord};

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
    /// A header KEY=VALUE added to every record; repeat for more (a key
    /// may appear twice). Not with --transactional-id.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Stamp every record with this time (milliseconds since the Unix
    /// epoch) instead of the moment it is batched. Not with
    /// --transactional-id.
    #[arg(long, value_name = "MS")]
    timestamp: Option<i64>,
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
    /// Batch size in bytes (before compression).
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Compress each batch's records: none, gzip, snappy, lz4 or zstd.
    /// The broker stores batches as sent; consumers decompress.
    #[arg(long, default_value = "none")]
    compression: Compression,
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
    if let Some(transactional_id) = args.transactional_id.clone() {
        if !args.headers.is_empty() || args.timestamp.is_some() {
            return Err("--header and --timestamp do not combine with --transactional-id".into());
        }
        if !idempotent {
            return Err("--transactional-id needs --acks all and idempotence".into());
        }
        return produce_transactionally(args, transactional_id).await;
    }
    let client = args.broker.connect().await?;
    let config = ProducerConfig {
        acks: args.acks,
        idempotent,
        ..tuning(&args)
    };
    let producer = Producer::new(client, config).await?;

    let (line_rx, reader) = spawn_stdin_reader();
    // Deliveries are awaited in order on a separate task, so sending never
    // waits for acknowledgements except through the producer's own
    // backpressure.
    let (dtx, drx) = tokio::sync::mpsc::channel(MAX_PENDING_DELIVERIES);
    let counter = tokio::spawn(count_deliveries(drx));
    let sending = send_lines(&producer, &args, line_rx, dtx).await;
    let flushed = producer.close().await;
    let acks = counter.await?;
    let _ = reader.join();

    let failed = acks.failed + sending.failed;
    println!(
        "{}",
        serde_json::json!({ "sent": sending.sent, "acked": acks.acked, "failed": failed })
    );
    if let Some(e) = sending.first_error.or(acks.first_error) {
        eprintln!("error: {e}");
    } else if let Err(e) = flushed {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed == 0 && acks.acked == sending.sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The producer settings that plain and transactional produce share.
fn tuning(args: &ProduceArgs) -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(args.linger_ms),
        batch_bytes: args.batch_bytes,
        delivery_timeout: Duration::from_secs(args.delivery_timeout),
        compression: args.compression,
        ..ProducerConfig::default()
    }
}

async fn produce_transactionally(
    args: ProduceArgs,
    transactional_id: String,
) -> Result<ExitCode, CliError> {
    let producer = tuning(&args);
    super::txn::produce(super::txn::TxnProduce {
        broker: args.broker,
        topic: args.topic,
        partition: args.partition,
        key_separator: args.key_separator,
        transactional_id,
        txn_records: args.txn_records,
        producer,
    })
    .await
}

/// What the sending loop did.
struct Sending {
    /// Records handed to the producer.
    sent: u64,
    /// Records refused before they were sent.
    failed: u64,
    first_error: Option<String>,
}

/// What the acknowledgements said.
struct AckCount {
    acked: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Sends every stdin line and passes each delivery on to `deliveries`.
async fn send_lines(
    producer: &Producer,
    args: &ProduceArgs,
    mut lines: tokio::sync::mpsc::Receiver<Vec<Vec<u8>>>,
    deliveries: tokio::sync::mpsc::Sender<Delivery>,
) -> Sending {
    let sep = args.key_separator.as_deref().map(str::as_bytes);
    let headers: Vec<(&[u8], Option<&[u8]>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
        .collect();
    let mut out = Sending {
        sent: 0,
        failed: 0,
        first_error: None,
    };
    while let Some(chunk) = lines.recv().await {
        for line in &chunk {
            let (key, value) = split_line(line, sep);
            let mut record =
                ProducerRecord::new(&args.topic, key, Some(value)).with_headers(&headers);
            if let Some(p) = args.partition {
                record = record.to_partition(p);
            }
            if let Some(ts) = args.timestamp {
                record = record.with_timestamp(ts);
            }
            let r = producer.send_record(record).await;
            match r {
                Ok(d) => {
                    out.sent += 1;
                    if deliveries.send(d).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // A definite error before sending (unknown topic, bad
                    // partition) fails every later record the same way.
                    out.failed += 1;
                    out.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        if out.first_error.is_some() && out.sent == 0 {
            break;
        }
    }
    out
}

/// Awaits deliveries in order until the sender is dropped.
async fn count_deliveries(mut deliveries: tokio::sync::mpsc::Receiver<Delivery>) -> AckCount {
    let mut out = AckCount {
        acked: 0,
        failed: 0,
        first_error: None,
    };
    while let Some(d) = deliveries.recv().await {
        match d.wait().await {
            Ok(_) => out.acked += 1,
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE with a non-empty KEY")),
    }
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
