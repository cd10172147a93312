//! Producer throughput against an in-process broker.
//!
//! ```sh
//! cargo run --release -p ferry-client --example produce_throughput -- [records] [value_bytes] [partitions] [acks] [always|never]
//! ```
//!
//! The client runs on a current-thread runtime, the broker on its own
//! thread and runtime (as `EmbeddedBroker` does).

use std::time::Instant;

use ferry_broker::{BrokerConfig, EmbeddedBroker, FlushPolicy};
use ferry_client::{Acks, Client, Producer, ProducerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args.get(1).map_or(Ok(2_000_000), |s| s.parse())?;
    let value_bytes: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let partitions: u32 = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let acks: Acks = args.get(4).map_or(Ok(Acks::All), |s| s.parse())?;
    let flush = match args.get(5).map_or("always", String::as_str) {
        "always" => FlushPolicy::Always,
        "never" => FlushPolicy::Never,
        other => return Err(format!("unknown flush policy {other:?}").into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let broker = EmbeddedBroker::start(BrokerConfig::ephemeral().with_flush(flush)).await?;
        let client = Client::connect(&broker.addr_string()).await?;
        client.create_topic("bench", partitions).await?;
        let producer = Producer::new(
            client,
            ProducerConfig {
                acks,
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
        println!(
            "flush={flush:?} acks={acks} partitions={partitions} records={records} value_bytes={value_bytes}: \
             {:.0} records/s, {:.1} MB/s of values, {secs:.2} s",
            records as f64 / secs,
            (records as f64 * value_bytes as f64) / secs / 1e6,
        );
        producer.close().await?;
        broker.shutdown().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
