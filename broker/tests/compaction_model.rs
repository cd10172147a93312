//! Model test of log compaction on the broker: random keyed produce with
//! repeated keys and tombstones (some past `delete.retention.ms`, some
//! not), transactions that commit or abort (and some left open across a
//! cleaning), forced cleanings, and graceful or crash restarts. After
//! every step a `read_committed` consumer, reading the whole partition as
//! a Kafka consumer does, must see:
//!
//! - folded into a table, exactly the model's latest value per key below
//!   the last stable offset;
//! - no record of an aborted or open transaction, and below the end of the
//!   last cleaning none of an aborted one even at read_uncommitted;
//! - every record at the offset it was first given;
//! - every tombstone still within its retention that is its key's latest;
//! - below the end of the last cleaning, at most one record per key, and
//!   no tombstone past its retention.
//!
//! `FERRY_SEED` replays a run; the seed in use is printed.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_proto::batch::{BatchBuilder, BatchIter, ProducerStamp};
use ferry_proto::control::{ControlType, marker_type};
use ferry_proto::v1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::Client;

const TOPIC: &str = "table";
const KEYS: u32 = 12;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A record as the model knows it.
#[derive(Clone, Debug)]
struct MRecord {
    id: u64,
    key: String,
    /// `None` for a tombstone.
    value: Option<String>,
    timestamp: i64,
    offset: u64,
    /// Whether its transaction (if any) committed; `None` while open.
    committed: Option<bool>,
}

/// A record as the consumer read it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    id: u64,
    key: String,
    value: Option<String>,
    offset: u64,
}

struct Producer {
    pid: i64,
    epoch: i16,
    seq: i32,
    transactional: bool,
    open: bool,
}

fn batch(p: &Producer, records: &[(String, Option<String>, i64, u64)]) -> bytes::Bytes {
    let mut b = BatchBuilder::new(records[0].2)
        .producer(ProducerStamp {
            producer_id: p.pid,
            producer_epoch: p.epoch,
            base_sequence: p.seq,
        })
        .transactional(p.transactional);
    for (key, value, ts, id) in records {
        let id = id.to_string();
        b.push(
            *ts,
            Some(key.as_bytes()),
            value.as_ref().map(|v| v.as_bytes()),
            &[(b"id".as_slice(), Some(id.as_bytes()))],
        );
    }
    b.finish()
}

async fn init(client: &Client, tid: &str) -> Producer {
    let r = client
        .raw()
        .init_producer_id(v1::InitProducerIdRequest {
            transactional_id: tid.into(),
            transaction_timeout_ms: 600_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    Producer {
        pid: r.producer_id,
        epoch: r.producer_epoch as i16,
        seq: 0,
        transactional: !tid.is_empty(),
        open: false,
    }
}

/// A broker whose cleaner runs only when a test asks, with the topic
/// `TOPIC` of one partition created with `configs`.
async fn start_with_table(configs: &[(&str, &str)]) -> (EmbeddedBroker, Client) {
    let mut config = BrokerConfig::ephemeral();
    config.cleaner.interval = std::time::Duration::from_secs(3600);
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let r = client
        .raw()
        .create_topic(v1::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 1,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    (broker, client)
}

async fn produce(client: &Client, bytes: bytes::Bytes) -> v1::ProduceResponse {
    client
        .raw()
        .produce(v1::ProduceRequest {
            correlation_id: 0,
            topic: TOPIC.into(),
            partition: 0,
            acks: v1::Acks::All as i32,
            batch: bytes,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Reads the whole partition at read_committed as a Kafka consumer does:
/// batches of a producer named in the aborted list are skipped from the
/// listed first offset until that producer's abort marker. Returns the
/// records and the last stable offset.
async fn consume(client: &Client, committed: bool) -> (Vec<Seen>, u64) {
    let mut out = Vec::new();
    let mut next = 0u64;
    let mut lso;
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut pending: Vec<(i64, u64)> = Vec::new();
    loop {
        let r = client
            .raw()
            .fetch(v1::FetchRequest {
                partitions: vec![v1::FetchPartition {
                    topic: TOPIC.into(),
                    partition: 0,
                    offset: next,
                    max_bytes: 64 << 10,
                }],
                isolation: if committed {
                    v1::IsolationLevel::ReadCommitted as i32
                } else {
                    v1::IsolationLevel::ReadUncommitted as i32
                },
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let p = &r.partitions[0];
        assert_eq!(p.error_code, 0, "{}", p.error_message);
        lso = p.last_stable_offset;
        for a in &p.aborted_transactions {
            if !pending.contains(&(a.producer_id, a.first_offset)) {
                pending.push((a.producer_id, a.first_offset));
            }
        }
        pending.sort_by_key(|a| a.1);
        let mut any = false;
        for b in BatchIter::new(&p.records) {
            let b = b.unwrap();
            let h = *b.header();
            if h.next_offset() <= next {
                continue;
            }
            any = true;
            pending.retain(|&(pid, first)| {
                if first <= h.last_offset() {
                    aborting.insert(pid);
                    false
                } else {
                    true
                }
            });
            if let Some(kind) = marker_type(&b) {
                if kind == ControlType::Abort {
                    aborting.remove(&h.producer_id);
                }
                next = h.next_offset();
                continue;
            }
            if !(h.is_transactional() && aborting.contains(&h.producer_id)) {
                for rec in b.records().unwrap().iter() {
                    let rec = rec.unwrap();
                    let offset = h.base_offset + u64::from(rec.offset_delta);
                    if offset < next {
                        continue;
                    }
                    let (_, id) = rec.headers().next().expect("every record has an id");
                    out.push(Seen {
                        id: std::str::from_utf8(id.unwrap()).unwrap().parse().unwrap(),
                        key: String::from_utf8(rec.key.unwrap().to_vec()).unwrap(),
                        value: rec.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                        offset,
                    });
                }
            }
            next = h.next_offset();
        }
        let end = if committed { lso } else { p.high_watermark };
        if !any || next >= end {
            break;
        }
    }
    (out, lso)
}

/// The latest value per key of `records`, folded as a table: a tombstone
/// deletes its key.
fn fold<'a>(records: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    for (k, v) in records {
        match v {
            Some(v) => table.insert(k.to_string(), v.to_string()),
            None => table.remove(k),
        };
    }
    table
}

struct Run {
    client: Client,
    model: Vec<MRecord>,
    next_id: u64,
    /// End of the last cleaning, and the tombstone horizon it used.
    cleaned: Option<(u64, i64)>,
}

impl Run {
    fn check(&self, seen: &[Seen], lso: u64, step: &str) {
        let by_id: HashMap<u64, &MRecord> = self.model.iter().map(|r| (r.id, r)).collect();
        let mut last_offset = None;
        for s in seen {
            let m = by_id
                .get(&s.id)
                .unwrap_or_else(|| panic!("{step}: unknown record {s:?}"));
            assert_eq!(m.committed, Some(true), "{step}: {s:?} is not committed");
            assert_eq!(s.offset, m.offset, "{step}: {s:?} moved");
            assert_eq!(
                (&s.key, &s.value),
                (&m.key, &m.value),
                "{step}: {s:?} changed"
            );
            assert!(
                last_offset < Some(s.offset),
                "{step}: out of order at {s:?}"
            );
            last_offset = Some(s.offset);
        }
        let visible: Vec<&MRecord> = self
            .model
            .iter()
            .filter(|r| r.offset < lso && r.committed == Some(true))
            .collect();
        let expected = fold(visible.iter().map(|r| (r.key.as_str(), r.value.as_deref())));
        let got = fold(seen.iter().map(|s| (s.key.as_str(), s.value.as_deref())));
        assert_eq!(got, expected, "{step}: the table differs");
        // The latest record per key, and whether the consumer saw it when
        // it is a tombstone still within its retention.
        let mut latest: HashMap<&str, &MRecord> = HashMap::new();
        for r in &visible {
            latest.insert(&r.key, r);
        }
        let seen_ids: HashSet<u64> = seen.iter().map(|s| s.id).collect();
        let now = ferry_proto::now_ms();
        for r in latest.values() {
            if r.value.is_none() && r.timestamp > now {
                assert!(
                    seen_ids.contains(&r.id),
                    "{step}: tombstone {r:?} vanished within its retention"
                );
            }
        }
        if let Some((end, horizon)) = self.cleaned {
            let mut keys = HashSet::new();
            for s in seen.iter().filter(|s| s.offset < end) {
                assert!(
                    keys.insert(&s.key),
                    "{step}: key {} twice below the cleaned end {end}",
                    s.key
                );
                let m = by_id[&s.id];
                assert!(
                    !(m.value.is_none() && m.timestamp < horizon),
                    "{step}: expired tombstone {m:?} survived cleaning"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_consumers_view_after_cleaning_is_the_latest_value_per_key() {
    let seed: u64 = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FERRY_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let (mut broker, client) = start_with_table(&[
        ("cleanup.policy", "compact"),
        ("segment.bytes", "4096"),
        ("delete.retention.ms", "0"),
    ])
    .await;
    let mut run = Run {
        client,
        model: Vec::new(),
        next_id: 0,
        cleaned: None,
    };
    let mut plain = init(&run.client, "").await;
    let mut txn = init(&run.client, "compaction-model").await;

    let mut removed = 0;
    for step in 0..300 {
        let roll = rng.random_range(0..100);
        let label;
        if roll < 55 || (roll < 75 && !txn.open) {
            // A batch, idempotent or in the transaction.
            let in_txn = (35..55).contains(&roll);
            let p = if in_txn { &mut txn } else { &mut plain };
            if in_txn && !p.open {
                let r = run
                    .client
                    .raw()
                    .add_partitions_to_txn(v1::AddPartitionsToTxnRequest {
                        transactional_id: "compaction-model".into(),
                        producer_id: p.pid,
                        producer_epoch: i32::from(p.epoch),
                        partitions: vec![v1::TopicPartition {
                            topic: TOPIC.into(),
                            partition: 0,
                        }],
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.error_code, 0, "{}", r.error_message);
                p.open = true;
            }
            let now = ferry_proto::now_ms();
            let n = rng.random_range(1..=6);
            let records: Vec<(String, Option<String>, i64, u64)> = (0..n)
                .map(|_| {
                    run.next_id += 1;
                    let key = format!("k{}", rng.random_range(0..KEYS));
                    let (value, ts) = match rng.random_range(0..10) {
                        // A tombstone past its retention, and one within it.
                        0 => (None, now - DAY_MS),
                        1 => (None, now + DAY_MS),
                        _ => (Some(format!("v{}-{}", run.next_id, "x".repeat(40))), now),
                    };
                    (key, value, ts, run.next_id)
                })
                .collect();
            let r = produce(&run.client, batch(p, &records)).await;
            assert_eq!(r.error_code, 0, "step {step}: {}", r.error_message);
            p.seq += n as i32;
            for (i, (key, value, ts, id)) in records.into_iter().enumerate() {
                run.model.push(MRecord {
                    id,
                    key,
                    value,
                    timestamp: ts,
                    offset: r.base_offset + i as u64,
                    committed: if in_txn { None } else { Some(true) },
                });
            }
            label = if in_txn { "txn produce" } else { "produce" };
        } else if roll < 75 {
            let commit = rng.random_bool(0.6);
            let r = run
                .client
                .raw()
                .end_txn(v1::EndTxnRequest {
                    transactional_id: "compaction-model".into(),
                    producer_id: txn.pid,
                    producer_epoch: i32::from(txn.epoch),
                    commit,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.error_code, 0, "{}", r.error_message);
            txn.epoch = r.producer_epoch as i16;
            txn.seq = 0;
            txn.open = false;
            for m in run.model.iter_mut().filter(|m| m.committed.is_none()) {
                m.committed = Some(commit);
            }
            label = if commit { "commit" } else { "abort" };
        } else if roll < 95 {
            let state = broker.state().clone();
            let before = ferry_proto::now_ms();
            let reports =
                tokio::task::spawn_blocking(move || ferry_broker::cleaner::clean_all(&state, true))
                    .await
                    .unwrap();
            if let Some(r) = reports.first() {
                run.cleaned = Some((r.outcome.end, before));
                removed += r.outcome.records_removed;
            }
            label = "clean";
        } else {
            broker = if rng.random_bool(0.5) {
                broker.crash_and_restart().await.unwrap()
            } else {
                broker.restart().await.unwrap()
            };
            run.client = Client::connect(&broker.addr_string()).await.unwrap();
            label = "restart";
        }
        let (seen, lso) = consume(&run.client, true).await;
        run.check(&seen, lso, &format!("step {step} ({label})"));
        if let Some((end, _)) = run.cleaned {
            // Cleaning removed the aborted records, for every reader.
            let (all, _) = consume(&run.client, false).await;
            for s in all.iter().filter(|s| s.offset < end) {
                let m = run.model.iter().find(|m| m.id == s.id).unwrap();
                assert_ne!(
                    m.committed,
                    Some(false),
                    "step {step} ({label}): aborted {s:?} left below the cleaned end {end}"
                );
            }
        }
    }
    assert!(
        removed > 0,
        "no cleaning removed anything: the run tested nothing"
    );
}

/// Every file named `name` under `dir`.
fn find(dir: &std::path::Path, name: &str, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            find(&path, name, out);
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn a_producers_dedup_window_outlives_the_batches_cleaning_removed() {
    let (broker, client) =
        start_with_table(&[("cleanup.policy", "compact"), ("segment.bytes", "4096")]).await;
    let now = ferry_proto::now_ms();
    let value = || Some("v".repeat(200));
    // Producer A writes key "a" three times; B then overwrites it and
    // fills segments, so that all of A's batches are sealed and stale.
    let mut a = init(&client, "").await;
    let mut last = None;
    for id in 0..3 {
        let bytes = batch(&a, &[("a".into(), value(), now, id)]);
        let r = produce(&client, bytes.clone()).await;
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        a.seq += 1;
        last = Some((bytes, r.base_offset));
    }
    let mut b = init(&client, "").await;
    for id in 10..60 {
        let r = produce(&client, batch(&b, &[("a".into(), value(), now, id)])).await;
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        b.seq += 1;
    }
    let state = broker.state().clone();
    let reports =
        tokio::task::spawn_blocking(move || ferry_broker::cleaner::clean_all(&state, true))
            .await
            .unwrap();
    assert!(
        reports.iter().any(|r| r.outcome.records_removed >= 3),
        "{reports:?}"
    );
    let (seen, _) = consume(&client, false).await;
    assert!(
        seen.iter().all(|s| s.id >= 10),
        "A's records are gone: {seen:?}"
    );

    // A crash, and a start that cannot use the latest producer snapshot
    // (as when the log recovers to less than it): A's last batch, retried,
    // is still known.
    let (config, tmp) = broker.crash().await.unwrap();
    let mut snapshots = Vec::new();
    find(&config.data_dir, "0.producers", &mut snapshots);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    std::fs::remove_file(&snapshots[0]).unwrap();
    let broker = EmbeddedBroker::start_with(config, tmp).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    let (bytes, offset) = last.unwrap();
    let r = produce(&client, bytes).await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(
        r.base_offset, offset,
        "the retry is a duplicate, not a new append"
    );
    let (after, _) = consume(&client, false).await;
    assert_eq!(after, seen, "nothing was appended");
}

#[tokio::test]
async fn a_produced_batch_with_gaps_is_refused_only_cleaning_makes_them() {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic(TOPIC, 1).await;
    let mut b = BatchBuilder::new(1);
    b.push(1, Some(b"k"), Some(b"v"), &[]);
    b.push(1, Some(b"k"), Some(b"w"), &[]);
    let whole = b.finish();
    let header = *ferry_proto::batch::ValidBatch::exact(&whole)
        .unwrap()
        .header();
    let mut gapped = BatchBuilder::rewriting(&header, 64);
    gapped.push_at(1, 1, Some(b"k"), Some(b"w"), &[]);
    let r = produce(&client, gapped.finish()).await;
    assert_eq!(
        ferry_proto::ErrorCode::from_u32(r.error_code),
        ferry_proto::ErrorCode::InvalidRequest,
        "{}",
        r.error_message
    );
    assert_eq!(client.high_watermark(TOPIC, 0).await, 0);
    let r = produce(&client, whole).await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
}

#[tokio::test]
async fn retention_deletes_old_segments_of_delete_topics_and_leaves_compact_only_ones() {
    let mut config = BrokerConfig::ephemeral();
    config.log.retention_bytes = Some(4096);
    config.cleaner.interval = std::time::Duration::from_secs(3600);
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let state = broker.state().clone();
    let small = ("segment.bytes", "4096");
    for (name, policy) in [
        ("deleted", "delete"),
        ("compacted", "compact"),
        ("both", "compact,delete"),
    ] {
        let c = ferry_broker::TopicConfig::from_pairs([("cleanup.policy", policy), small]).unwrap();
        state.create_topic_with_config(name, 1, c).unwrap();
        for i in 0..200u32 {
            let mut b = BatchBuilder::new(1);
            b.push(1, Some(format!("k{i}").as_bytes()), Some(&[7u8; 100]), &[]);
            state.append(name, 0, &b.finish()).unwrap();
        }
    }
    let s = state.clone();
    tokio::task::spawn_blocking(move || s.apply_retention())
        .await
        .unwrap();
    let start = |name: &str| {
        state.topic(name).unwrap().partitions[0]
            .log
            .log_start_offset()
    };
    assert!(
        start("deleted") > 0,
        "retention deletes a delete topic's segments"
    );
    assert!(start("both") > 0, "and a compact,delete topic's");
    assert_eq!(
        start("compacted"),
        0,
        "a compact topic loses records only to cleaning"
    );
}

#[tokio::test]
async fn a_record_without_a_key_is_refused_by_a_compacted_topic_and_nothing_is_appended() {
    let (broker, client) = start_with_table(&[("cleanup.policy", "compact")]).await;
    let mut b = BatchBuilder::new(1);
    b.push(1, Some(b"k"), Some(b"v"), &[]);
    b.push(1, None, Some(b"no key"), &[]);
    let r = produce(&client, b.finish()).await;
    assert_eq!(
        ferry_proto::ErrorCode::from_u32(r.error_code),
        ferry_proto::ErrorCode::InvalidRecord,
        "{}",
        r.error_message
    );
    assert!(
        r.error_message.contains("needs a key"),
        "{}",
        r.error_message
    );
    assert_eq!(client.high_watermark(TOPIC, 0).await, 0);
    let mut b = BatchBuilder::new(1);
    b.push(1, Some(b"k"), Some(b"v"), &[]);
    let r = produce(&client, b.finish()).await;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    // A topic that is not compacted takes records without keys.
    broker.state().create_topic("plain", 1).unwrap();
    let mut b = BatchBuilder::new(1);
    b.push(1, None, Some(b"no key"), &[]);
    broker.state().append("plain", 0, &b.finish()).unwrap();
}

#[tokio::test]
async fn a_cleaning_asked_to_stop_ends_before_touching_the_log() {
    let (broker, client) =
        start_with_table(&[("cleanup.policy", "compact"), ("segment.bytes", "4096")]).await;
    let mut p = init(&client, "").await;
    for id in 0..60 {
        let bytes = batch(&p, &[("k".into(), Some("v".repeat(200)), 1, id)]);
        assert_eq!(produce(&client, bytes).await.error_code, 0);
        p.seq += 1;
    }
    let (before, _) = consume(&client, false).await;
    let state = broker.state().clone();
    let topic = state.topic(TOPIC).unwrap();
    let settings = state.config().cleaner;
    let now = ferry_proto::now_ms();
    let stopped = ferry_broker::cleaner::clean_partition(
        &topic.partitions[0],
        &topic.config,
        &settings,
        now,
        true,
        &|| true,
    );
    assert!(
        matches!(stopped, Err(ferry_broker::BrokerError::ShuttingDown)),
        "{stopped:?}"
    );
    assert_eq!(consume(&client, false).await.0, before);
    let done = ferry_broker::cleaner::clean_partition(
        &topic.partitions[0],
        &topic.config,
        &settings,
        now,
        true,
        &|| false,
    )
    .unwrap()
    .expect("something to clean");
    assert!(done.records_removed > 0);
    assert!(consume(&client, false).await.0.len() < before.len());
}
