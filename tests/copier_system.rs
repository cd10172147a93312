//! The standard exactly-once system test, after Kafka's transactional
//! message copier: `ferry copy` copies a 2-partition topic to a 3-partition
//! topic while `kill -9` hits the copier and the broker at random moments.
//! The output under read_committed must hold every input record exactly
//! once, in order per source partition, and a read_committed consumer
//! watching the output the whole time must never see an aborted record.
//! The history checker judges the run as exactly-once.
//!
//! `FERRY_SEED` replays the kill schedule; the seed in use is printed.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_client::partitioner::partition_for_key;
use ferry_client::{
    Client, Consumer, ConsumerConfig, IsolationLevel, Producer, ProducerConfig, StartFrom,
};
use ferry_testkit::{
    BrokerProcess, CheckOptions, DeliveryMode, History, Mop, OpKind, Read, Tp, ValueGen, check,
    seed,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const DST_PARTITIONS: u32 = 3;

fn copier(addr: &str, idle_timeout_ms: u64) -> Child {
    Command::new(FERRY)
        .args([
            "copy",
            "src",
            "dst",
            "--group",
            "copier",
            "--transactional-id",
            "copier",
        ])
        // Long transactions, so kills land inside them and leave aborted
        // records behind for read_committed readers to skip.
        .args(["--txn-records", "1000", "--txn-ms", "300"])
        .args([
            "--idle-timeout",
            &idle_timeout_ms.to_string(),
            "--broker",
            addr,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry copy")
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Input value `i` of source partition `p`: unique, and ordered within the
/// partition.
fn value_of(p: u32, i: usize) -> u64 {
    u64::from(p) * 1_000_000_000 + i as u64
}

async fn create_topics(addr: &str) {
    let client = Client::connect(addr).await.unwrap();
    client.create_topic("src", 2).await.unwrap();
    client.create_topic("dst", DST_PARTITIONS).await.unwrap();
}

/// Feeds the source topic a little at a time, so the copier always has
/// work while it and the broker are being killed. The idempotent producer
/// rides through broker restarts.
async fn produce_input(addr: String, history: History, per_partition: usize) {
    let client = Client::connect(&addr).await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default())
        .await
        .unwrap();
    let process = history.process();
    let mut pending = Vec::new();
    for i in 0..per_partition {
        for p in 0..2u32 {
            let value = value_of(p, i);
            let key = format!("k{}", i % 17);
            // The copier is one logical writer of `dst`: the send is
            // recorded where the copy must land, offset unknown.
            let tp = Tp::new("dst", partition_for_key(key.as_bytes(), DST_PARTITIONS));
            let mops = vec![Mop::Send {
                tp,
                value,
                offset: None,
            }];
            let inv = history.invoke(process, OpKind::Send, None, mops.clone());
            let delivery = producer
                .send_to(
                    "src",
                    p,
                    Some(key.as_bytes()),
                    Some(&ValueGen::encode(value)),
                )
                .await
                .unwrap();
            pending.push((inv, mops, delivery));
        }
        // The first half arrives at once (a backlog for the copier), the
        // rest a little at a time while the kills happen.
        if i > per_partition / 2 && i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    producer.flush().await.unwrap();
    for (inv, mops, delivery) in pending {
        match delivery.wait().await {
            Ok(_) => inv.ok(mops),
            Err(e) => inv.info(mops, e),
        }
    }
    producer.close().await.unwrap();
}

/// Polls `dst` under read_committed and records every poll in `history`.
async fn watch(addr: String, history: History, stop: Arc<AtomicBool>, drain_to_end: bool) {
    let process = history.process();
    let client = Client::connect_lazy(&addr).unwrap();
    let config = ConsumerConfig {
        isolation: IsolationLevel::ReadCommitted,
        start_from: StartFrom::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config).await.unwrap();
    let parts: Vec<(String, u32)> = (0..DST_PARTITIONS)
        .map(|p| ("dst".to_string(), p))
        .collect();
    consumer.assign(&parts).await.unwrap();
    let mut idle_since = Instant::now();
    loop {
        if stop.load(Ordering::Acquire)
            && (!drain_to_end || idle_since.elapsed() > Duration::from_millis(1500))
        {
            return;
        }
        let inv = history.invoke(
            process,
            OpKind::Poll,
            None,
            vec![Mop::Poll { reads: vec![] }],
        );
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => {
                if !records.is_empty() {
                    idle_since = Instant::now();
                }
                let reads = records
                    .iter()
                    .map(|r| Read {
                        tp: Tp::new("dst", r.partition),
                        offset: r.offset,
                        value: ValueGen::decode(r.value.as_deref().unwrap_or_default())
                            .expect("a copied value"),
                    })
                    .collect();
                inv.ok(vec![Mop::Poll { reads }]);
            }
            Err(e) => {
                inv.fail(vec![Mop::Poll { reads: vec![] }], &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn run(per_partition: usize, kills: usize) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(FERRY, dir.path().join("data"), "127.0.0.1:0").unwrap();
    let addr = broker.addr().to_string();
    let history = History::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topics(&addr));
    let feeder = rt.spawn(produce_input(addr.clone(), history.clone(), per_partition));

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = rt.spawn(watch(addr.clone(), history.clone(), stop.clone(), false));
    let mut copy = copier(&addr, 600_000);
    let (mut copier_kills, mut broker_kills) = (0, 0);
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..700)));
        if rng.random_bool(0.5) {
            kill9(&mut copy);
            copier_kills += 1;
        } else {
            broker = broker.kill9_and_restart().unwrap();
            broker_kills += 1;
        }
        // A copier that gave up while the broker was down is restarted too.
        if copy.try_wait().unwrap().is_some() {
            copy = copier(&addr, 600_000);
        }
    }
    eprintln!("kill -9: copier {copier_kills} times, broker {broker_kills} times");
    rt.block_on(feeder).unwrap();
    kill9(&mut copy);
    let out = copier(&addr, 3_000).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the final copier run must finish cleanly"
    );
    stop.store(true, Ordering::Release);
    rt.block_on(watcher).unwrap();
    // A final complete drain, for lost writes.
    rt.block_on(watch(addr.clone(), history.clone(), stop, true));

    let ops = history.ops();
    let report = check(
        &ops,
        &CheckOptions {
            drained: true,
            group: None,
        },
    );
    let verdict = report.verdict(DeliveryMode::ExactlyOnce);
    eprintln!("checker: {:?}", report.counts());
    assert!(
        verdict.is_valid(),
        "seed {seed}: exactly-once violated: {verdict:?}"
    );

    // Order per source partition within every destination partition.
    let mut last: std::collections::HashMap<(u64, u32, u64), u64> = Default::default();
    for op in ops.iter().filter(|o| o.kind == OpKind::Poll) {
        for m in &op.mops {
            if let Mop::Poll { reads } = m {
                for r in reads {
                    let src = r.value / 1_000_000_000;
                    if let Some(prev) = last.insert((op.process, r.tp.partition, src), r.value) {
                        assert!(
                            prev < r.value,
                            "seed {seed}: source partition {src} out of order in dst/{}: {prev} then {}",
                            r.tp.partition,
                            r.value
                        );
                    }
                }
            }
        }
    }
    let _ = broker.sigterm();
}

#[test]
fn the_copier_copies_exactly_once_while_it_and_the_broker_are_killed_at_random() {
    run(2_000, 4);
}

#[test]
#[ignore = "full-size copier system test: 20,000 records, ten kills"]
fn the_copier_copies_20000_records_exactly_once_under_repeated_kills() {
    run(10_000, 10);
}
