//! The standard exactly-once system test, after Kafka's transactional
//! message copier: `ferry copy` copies a source topic to a 3-partition
//! topic while `kill -9` hits the copiers and the broker at random moments:
//! one copier over 2 partitions, and three copiers in one group over 6
//! partitions (a killed copier's partitions move to the others after its
//! session timeout, and move again when it comes back). The output under
//! read_committed must hold every input record exactly once, in order per
//! source partition, and a read_committed consumer watching the output the
//! whole time must never see an aborted record. The history checker judges
//! the run as exactly-once.
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

/// Session timeout of the copiers: a killed one's partitions move on
/// after it.
const SESSION_TIMEOUT_MS: &str = "1000";
/// Broker flags: sessions as short as the copiers', and no initial
/// rebalance delay, so that rejoining after a broker restart is quick.
const BROKER_FLAGS: [&str; 4] = [
    "--group-min-session-timeout-ms",
    "500",
    "--group-initial-rebalance-delay-ms",
    "0",
];

/// Copier number `n` of the group, with its own transactional id.
fn copier(addr: &str, n: usize, idle_timeout_ms: u64) -> Child {
    let transactional_id = format!("copier-{n}");
    Command::new(FERRY)
        .args(["copy", "src", "dst", "--group", "copier"])
        .args(["--transactional-id", &transactional_id])
        .args(["--session-timeout-ms", SESSION_TIMEOUT_MS])
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

async fn create_topics(addr: &str, src_partitions: u32) {
    let client = Client::connect(addr).await.unwrap();
    client.create_topic("src", src_partitions).await.unwrap();
    client.create_topic("dst", DST_PARTITIONS).await.unwrap();
}

/// Feeds the source topic a little at a time, so the copier always has
/// work while it and the broker are being killed. The idempotent producer
/// rides through broker restarts.
async fn produce_input(addr: String, history: History, src_partitions: u32, per_partition: usize) {
    let client = Client::connect(&addr).await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default())
        .await
        .unwrap();
    let process = history.process();
    let mut pending = Vec::new();
    for i in 0..per_partition {
        for p in 0..src_partitions {
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

/// One run: `copiers` copiers in one group over `src_partitions`
/// partitions of input, `kills` random `kill -9`s of a copier or the
/// broker.
fn run(src_partitions: u32, copiers: usize, per_partition: usize, kills: usize) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut broker =
        BrokerProcess::start_with_args(FERRY, dir.path().join("data"), "127.0.0.1:0", BROKER_FLAGS)
            .unwrap();
    let addr = broker.addr().to_string();
    let history = History::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_topics(&addr, src_partitions));
    let feeder = rt.spawn(produce_input(
        addr.clone(),
        history.clone(),
        src_partitions,
        per_partition,
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = rt.spawn(watch(addr.clone(), history.clone(), stop.clone(), false));
    let mut running: Vec<Option<Child>> = (0..copiers)
        .map(|n| Some(copier(&addr, n, 600_000)))
        .collect();
    let (mut copier_kills, mut broker_kills) = (0, 0);
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..700)));
        if rng.random_bool(0.5) {
            let n = rng.random_range(0..copiers);
            if let Some(mut child) = running[n].take() {
                kill9(&mut child);
                copier_kills += 1;
            }
        } else {
            broker = broker.kill9_and_restart().unwrap();
            broker_kills += 1;
        }
        // Copiers killed earlier come back (with several, one stays dead
        // until the next kill now and then, so its partitions move to the
        // others), as do copiers that gave up while the broker was down.
        for (n, slot) in running.iter_mut().enumerate() {
            if slot
                .as_mut()
                .is_some_and(|child| child.try_wait().unwrap().is_some())
            {
                *slot = None;
            }
            if slot.is_none() && (copiers == 1 || rng.random_bool(0.5)) {
                *slot = Some(copier(&addr, n, 600_000));
            }
        }
    }
    eprintln!("kill -9: copiers {copier_kills} times, broker {broker_kills} times");
    rt.block_on(feeder).unwrap();
    for slot in &mut running {
        if let Some(mut child) = slot.take() {
            kill9(&mut child);
        }
    }
    // Every copier comes back (settling its own open transaction) and runs
    // until the group is idle.
    let last: Vec<Child> = (0..copiers).map(|n| copier(&addr, n, 3_000)).collect();
    for child in last {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the final copier run must finish cleanly"
        );
    }
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
    run(2, 1, 2_000, 4);
}

#[test]
fn three_copiers_in_a_group_copy_exactly_once_while_they_and_the_broker_are_killed() {
    run(6, 3, 1_000, 6);
}

#[test]
#[ignore = "full-size copier system test: 20,000 records, ten kills"]
fn the_copier_copies_20000_records_exactly_once_under_repeated_kills() {
    run(2, 1, 10_000, 10);
}

#[test]
#[ignore = "full-size group copier system test: 30,000 records, twenty kills"]
fn three_copiers_copy_30000_records_exactly_once_under_repeated_kills() {
    run(6, 3, 5_000, 20);
}
