//! The idempotent producer end to end.
//!
//! - Lost acknowledgements: a [`FaultProxy`] between producer and broker
//!   drops produce responses after the broker applied the batch, so the
//!   producer resends what was in flight. With idempotence every record is
//!   stored once, at the offset its delivery reported; without it, the
//!   same run stores duplicates.
//! - `kill -9`: the real broker process is killed and restarted three times
//!   while `ferry produce --idempotent` runs; consuming afterwards yields
//!   every input line exactly once, in input order per partition.
//!
//! Each test prints its seed; `FERRY_SEED=<seed>` repeats it.

mod common;

use common::{FERRY, consume_from_earliest, ferry, json_lines};
use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::{
    Client, CommitMode, Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, Producer,
    ProducerConfig, StartFrom,
};
use ferry_testkit::{BrokerProcess, Fault, FaultKind, FaultPlan, FaultProxy, Targets};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Reads `topic` from the start until nothing new arrives for 1.5 s.
async fn read_all(client: &Client, topic: &str) -> Vec<ConsumerRecord> {
    let config = ConsumerConfig {
        group: None,
        commit_mode: CommitMode::None,
        isolation: IsolationLevel::ReadUncommitted,
        start_from: StartFrom::Earliest,
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config).await.unwrap();
    consumer.assign_topic(topic).await.unwrap();
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    while last_new.elapsed() < Duration::from_millis(1500) {
        let batch = consumer.poll(Duration::from_millis(200)).await.unwrap();
        if !batch.is_empty() {
            last_new = Instant::now();
        }
        out.extend(batch);
    }
    out
}

/// What one run through the lossy proxy stored.
struct LossyRun {
    /// Per record `i`: (partition, offset) its delivery reported.
    acked: Vec<(u32, u64)>,
    /// Per record `i`: every (partition, offset) it is stored at.
    stored: Vec<Vec<(u32, u64)>>,
    lost_acks: u64,
}

/// Sends `n` records (value `i`, key `i % 7`) through a proxy that drops
/// produce responses after the broker applied them.
async fn produce_through_lost_acks(idempotent: bool, seed: u64, n: usize) -> LossyRun {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let direct = Client::connect(&broker.addr_string()).await.unwrap();
    direct.create_topic("t", 2).await.unwrap();
    let plan = FaultPlan::new(seed).with_probability(Targets::PRODUCE, Fault::DropResponse, 0.05);
    let proxy = FaultProxy::start(&broker.addr_string(), plan)
        .await
        .unwrap();
    let client = Client::connect(&proxy.addr_string()).await.unwrap();
    let config = ProducerConfig {
        idempotent,
        linger: Duration::from_millis(1),
        batch_bytes: 512,
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        delivery_timeout: Duration::from_secs(30),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await.unwrap();
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n {
        let key = (i % 7).to_string();
        let value = format!("{i:08}");
        deliveries.push(
            producer
                .send("t", Some(key.as_bytes()), Some(value.as_bytes()))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    let mut acked = Vec::with_capacity(n);
    for (i, d) in deliveries.into_iter().enumerate() {
        let meta = d
            .wait()
            .await
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
        acked.push((meta.partition, meta.offset.unwrap()));
    }
    producer.close().await.unwrap();
    let lost_acks = proxy.stats().total(FaultKind::DropResponse);
    let mut stored = vec![Vec::new(); n];
    for r in read_all(&direct, "t").await {
        let i: usize = std::str::from_utf8(r.value.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        stored[i].push((r.partition, r.offset));
    }
    proxy.shutdown().await;
    broker.shutdown().await.unwrap();
    LossyRun {
        acked,
        stored,
        lost_acks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acks_with_idempotence_leave_one_copy_at_the_original_offset() {
    let seed = ferry_testkit::seed();
    let n = 4000;
    let run = produce_through_lost_acks(true, seed, n).await;
    assert!(
        run.lost_acks > 0,
        "the proxy dropped no response (seed {seed})"
    );
    for i in 0..n {
        assert_eq!(
            run.stored[i],
            vec![run.acked[i]],
            "record {i}: stored once, where its delivery said (seed {seed}, {} lost acks)",
            run.lost_acks
        );
    }
    // Per partition, the records sit in send order.
    let mut by_partition: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
    for (i, &(p, offset)) in run.acked.iter().enumerate() {
        by_partition.entry(p).or_default().push((offset, i));
    }
    for (p, mut rows) in by_partition {
        rows.sort_unstable();
        assert!(
            rows.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {p} keeps send order (seed {seed})"
        );
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            (0..rows.len() as u64).collect::<Vec<_>>(),
            "partition {p}: dense offsets, no duplicate in between (seed {seed})"
        );
    }
    eprintln!("{} lost acks, no duplicates", run.lost_acks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_lost_acks_without_idempotence_store_duplicates() {
    let seed = ferry_testkit::seed();
    let n = 4000;
    let run = produce_through_lost_acks(false, seed, n).await;
    assert!(
        run.lost_acks > 0,
        "the proxy dropped no response (seed {seed})"
    );
    let duplicated = run.stored.iter().filter(|s| s.len() > 1).count();
    let missing = run.stored.iter().filter(|s| s.is_empty()).count();
    assert_eq!(missing, 0, "at-least-once loses nothing (seed {seed})");
    for i in 0..n {
        assert!(
            run.stored[i].contains(&run.acked[i]),
            "record {i}: its acked offset holds it (seed {seed})"
        );
    }
    assert!(
        duplicated > 0,
        "{} lost acks and no duplicate (seed {seed})",
        run.lost_acks
    );
    eprintln!(
        "{} lost acks, {duplicated} records stored twice or more",
        run.lost_acks
    );
}

/// Runs `ferry produce --idempotent` over `n` lines fed at a steady pace
/// for about `feed` while the broker is `kill -9`ed and restarted `kills`
/// times at random moments, then checks the topic holds every line once,
/// in input order per partition.
fn kill9_during_produce(n: usize, kills: usize, feed: Duration) {
    let seed = ferry_testkit::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = BrokerProcess::start(FERRY, &data, "127.0.0.1:0").unwrap();
    let addr = broker.addr().to_string();
    let created = ferry(&addr, &["topic", "create", "t", "--partitions", "3"], None);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    let mut producer = Command::new(FERRY)
        .args([
            "produce",
            "t",
            "--idempotent",
            "--key-separator",
            ":",
            "--linger-ms",
            "2",
            "--batch-bytes",
            "8192",
            "--broker",
            &addr,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    // Small chunks every 2 ms keep batches in flight almost all the time,
    // so the kills land with acks outstanding.
    let chunks = (feed.as_millis() / 2).max(1) as usize;
    let per_chunk = n.div_ceil(chunks);
    let pause = feed / chunks as u32;
    let feeder = std::thread::spawn(move || {
        let mut i = 0;
        while i < n {
            let end = (i + per_chunk).min(n);
            let text: String = (i..end).map(|j| format!("k{}:{j}\n", j % 13)).collect();
            stdin.write_all(text.as_bytes()).unwrap();
            i = end;
            std::thread::sleep(pause);
        }
    });

    // Kill at random moments spread over the feeding time.
    let started = Instant::now();
    let slot = feed / kills as u32;
    for k in 0..kills {
        let at = slot * k as u32 + slot.mul_f64(rng.random_range(0.2..0.9));
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        broker = broker.kill9_and_restart().unwrap();
        eprintln!("kill -9 #{} at {:?}", k + 1, started.elapsed());
    }
    feeder.join().unwrap();
    let out = producer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = json_lines(&out.stdout).pop().unwrap_or_default();
    assert_eq!(
        summary,
        serde_json::json!({ "sent": n, "acked": n, "failed": 0 }),
        "seed {seed}; stderr: {stderr}"
    );
    assert!(out.status.success(), "seed {seed}; stderr: {stderr}");

    let rows = consume_from_earliest(&addr, "t", &[]);
    let mut seen = vec![0u32; n];
    let mut by_partition: HashMap<u64, Vec<(u64, usize)>> = HashMap::new();
    for r in &rows {
        let i: usize = r["value"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["key"], format!("k{}", i % 13));
        seen[i] += 1;
        by_partition
            .entry(r["partition"].as_u64().unwrap())
            .or_default()
            .push((r["offset"].as_u64().unwrap(), i));
    }
    let missing: Vec<_> = (0..n).filter(|&i| seen[i] == 0).collect();
    let duplicated: Vec<_> = (0..n).filter(|&i| seen[i] > 1).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "seed {seed}: {} missing (first {:?}), {} duplicated (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)]
    );
    for (p, mut list) in by_partition {
        list.sort_unstable();
        assert!(
            list.windows(2).all(|w| w[0].1 < w[1].1),
            "seed {seed}: partition {p} keeps input order"
        );
    }
    drop(broker);
}

#[test]
fn kill_9_three_times_during_an_idempotent_produce_keeps_every_line_once_and_in_order() {
    kill9_during_produce(20_000, 3, Duration::from_secs(4));
}

#[test]
#[ignore = "about a minute; the full-size run of the test above"]
fn kill_9_three_times_during_100k_idempotent_records_keeps_every_line_once_and_in_order() {
    kill9_during_produce(100_000, 3, Duration::from_secs(12));
}
