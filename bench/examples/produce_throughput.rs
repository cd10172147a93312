//! Producer throughput against an in-process broker.
//!
//! ```sh
//! cargo run --release -p ferry-bench --example produce_throughput -- \
//!     [records] [value_bytes] [partitions] [acks|compare] [always|never] [rounds]
//! ```
//!
//! With `acks` = `none`, `leader` or `all` it measures one plain
//! (non-idempotent) run; `idempotent` measures one idempotent run
//! (`acks=all`). With `compare` it measures plain `acks=all` and idempotent
//! `acks=all` in the same process, alternating which goes first, for
//! `rounds` rounds (default 5), each on a fresh broker, and prints the ratio
//! idempotent ÷ plain per round, their median, and the ratio of the best
//! run of each (overhead is a ratio measured in the same run).
//!
//! The client runs on a current-thread runtime, the broker on its own
//! thread and runtime (as `EmbeddedBroker` does).

use std::time::Instant;

use ferry_broker::{BrokerConfig, EmbeddedBroker, FlushPolicy};
use ferry_client::{Acks, Client, Producer, ProducerConfig};

type BoxError = Box<dyn std::error::Error>;

/// One run: records per second.
async fn run(
    records: u64,
    value_bytes: usize,
    partitions: u32,
    flush: FlushPolicy,
    acks: Acks,
    idempotent: bool,
) -> Result<f64, BoxError> {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral().with_flush(flush)).await?;
    let client = Client::connect(&broker.addr_string()).await?;
    client.create_topic("bench", partitions).await?;
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks,
            idempotent,
            ..ProducerConfig::default()
        },
    )
    .await?;
    let value = vec![b'x'; value_bytes];
    let started = Instant::now();
    let mut last = None;
    for _ in 0..records {
        last = Some(producer.send("bench", None, Some(&value)).await?);
    }
    producer.flush().await?;
    if let Some(d) = last {
        d.wait().await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = records as f64 / secs;
    println!(
        "flush={flush:?} acks={acks} idempotent={idempotent} partitions={partitions} \
         records={records} value_bytes={value_bytes}: {rate:.0} records/s, {:.1} MB/s of values, \
         {secs:.2} s",
        (records as f64 * value_bytes as f64) / secs / 1e6,
    );
    producer.close().await?;
    broker.shutdown().await?;
    Ok(rate)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args.get(1).map_or(Ok(2_000_000), |s| s.parse())?;
    let value_bytes: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let partitions: u32 = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let mode = args.get(4).map_or("all", String::as_str).to_owned();
    let flush = match args.get(5).map_or("always", String::as_str) {
        "always" => FlushPolicy::Always,
        "never" => FlushPolicy::Never,
        other => return Err(format!("unknown flush policy {other:?}").into()),
    };
    let rounds: usize = args.get(6).map_or(Ok(5), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match mode.as_str() {
            "compare" => {
                let mut ratios = Vec::new();
                let (mut best_plain, mut best_idem) = (0f64, 0f64);
                for round in 0..rounds {
                    let (plain, idem) = if round % 2 == 0 {
                        let p =
                            run(records, value_bytes, partitions, flush, Acks::All, false).await?;
                        let i =
                            run(records, value_bytes, partitions, flush, Acks::All, true).await?;
                        (p, i)
                    } else {
                        let i =
                            run(records, value_bytes, partitions, flush, Acks::All, true).await?;
                        let p =
                            run(records, value_bytes, partitions, flush, Acks::All, false).await?;
                        (p, i)
                    };
                    best_plain = best_plain.max(plain);
                    best_idem = best_idem.max(idem);
                    println!("round {round}: idempotent / plain = {:.3}", idem / plain);
                    ratios.push(idem / plain);
                }
                ratios.sort_by(f64::total_cmp);
                println!(
                    "flush={flush:?} value_bytes={value_bytes}: median idempotent / plain acks=all \
                     = {:.3} over {rounds} rounds (min {:.3}, max {:.3})",
                    ratios[ratios.len() / 2],
                    ratios[0],
                    ratios[ratios.len() - 1],
                );
                // On a shared machine the fastest run of each is the least
                // disturbed one.
                println!(
                    "flush={flush:?} value_bytes={value_bytes}: best idempotent / best plain = \
                     {:.3} ({best_idem:.0} / {best_plain:.0} records/s)",
                    best_idem / best_plain,
                );
            }
            "idempotent" => {
                run(records, value_bytes, partitions, flush, Acks::All, true).await?;
            }
            acks => {
                let acks: Acks = acks.parse()?;
                run(records, value_bytes, partitions, flush, acks, false).await?;
            }
        }
        Ok::<_, BoxError>(())
    })
}
