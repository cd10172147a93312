//! The transactional producer, read_committed consumers and the
//! exactly-once loop against a real broker running in this process.

mod common;

use common::broker;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferry_broker::EmbeddedBroker;
use ferry_client::partitioner::partition_for_key;
use ferry_client::{
    Client, ClientError, CommitMode, Consumer, ConsumerConfig, ConsumerRecord, Control,
    EosObserver, EosPoint, ExactlyOnce, ExactlyOnceConfig, IsolationLevel, Output, Producer,
    ProducerConfig, StartFrom, Step, Totals, TransactionalConfig, TransactionalProducer,
    TxnOutcome, list_transactions,
};
use ferry_proto::ErrorCode;

fn txn_config(id: &str) -> TransactionalConfig {
    TransactionalConfig {
        producer: ProducerConfig {
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
        ..TransactionalConfig::new(id)
    }
}

async fn transactional(client: &Client, id: &str) -> TransactionalProducer {
    TransactionalProducer::new(client.clone(), txn_config(id))
        .await
        .expect("InitProducerId succeeds")
}

/// Every value in `topic` under `isolation`, read until `idle` passes with
/// nothing new.
async fn values(client: &Client, topic: &str, isolation: IsolationLevel) -> Vec<String> {
    records(client, topic, isolation)
        .await
        .iter()
        .map(value)
        .collect()
}

async fn records(client: &Client, topic: &str, isolation: IsolationLevel) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            isolation,
            start_from: StartFrom::Earliest,
            max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    consumer.assign_topic(topic).await.unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_millis(400) {
        let got = consumer.poll(Duration::from_millis(50)).await.unwrap();
        if !got.is_empty() {
            last = Instant::now();
            out.extend(got);
        }
    }
    out
}

fn value(r: &ConsumerRecord) -> String {
    String::from_utf8(r.value.as_ref().expect("a value").to_vec()).unwrap()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn send_values(p: &mut TransactionalProducer, topic: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let key = format!("k{i}");
        p.send(
            topic,
            Some(key.as_bytes()),
            Some(format!("{prefix}{i}").as_bytes()),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn committed_transactions_are_visible_to_read_committed_and_aborted_ones_never() {
    let (_broker, client) = broker().await;
    client.create_topic("t", 2).await.unwrap();
    let mut p = transactional(&client, "vis").await;
    let (_, epoch0) = p.producer_id();

    p.begin().unwrap();
    send_values(&mut p, "t", "c", 10).await;
    p.commit().await.unwrap();
    assert_eq!(
        p.producer_id().1,
        epoch0 + 1,
        "the epoch moves on after a commit"
    );

    p.begin().unwrap();
    send_values(&mut p, "t", "a", 10).await;
    p.abort().await.unwrap();
    assert_eq!(p.producer_id().1, epoch0 + 2);

    p.begin().unwrap();
    send_values(&mut p, "t", "d", 5).await;
    // Stored, but not committed: read_committed does not see it yet.
    let d = p.send_to("t", 1, None, Some(b"d-extra")).await.unwrap();
    d.wait().await.unwrap();
    let committed_only = sorted((0..10).map(|i| format!("c{i}")).collect());
    assert_eq!(
        sorted(values(&client, "t", IsolationLevel::ReadCommitted).await),
        committed_only,
        "an open transaction is invisible"
    );
    p.commit().await.unwrap();

    let mut want: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    want.extend((0..5).map(|i| format!("d{i}")));
    want.push("d-extra".into());
    assert_eq!(
        sorted(values(&client, "t", IsolationLevel::ReadCommitted).await),
        sorted(want.clone())
    );
    want.extend((0..10).map(|i| format!("a{i}")));
    assert_eq!(
        sorted(values(&client, "t", IsolationLevel::ReadUncommitted).await),
        sorted(want),
        "read_uncommitted sees aborted records too, never markers"
    );
    p.close().await.unwrap();
}

#[tokio::test]
async fn many_transactions_in_a_row_restart_sequences_under_each_new_epoch() {
    let (_broker, client) = broker().await;
    client.create_topic("seq", 3).await.unwrap();
    let mut p = transactional(&client, "seq").await;
    let mut want = Vec::new();
    for t in 0..20 {
        p.begin().unwrap();
        for i in 0..25 {
            let v = format!("t{t}-{i}");
            // Keyless records stick to one partition; keyed ones spread.
            let key = (i % 2 == 0).then(|| format!("k{i}"));
            p.send("seq", key.as_deref().map(str::as_bytes), Some(v.as_bytes()))
                .await
                .unwrap();
            want.push(v);
        }
        if t % 5 == 4 {
            p.abort().await.unwrap();
            want.truncate(want.len() - 25);
        } else {
            p.commit().await.unwrap();
        }
    }
    let got = records(&client, "seq", IsolationLevel::ReadCommitted).await;
    assert_eq!(
        sorted(got.iter().map(value).collect()),
        sorted(want),
        "every committed record once, no aborted one"
    );
    // Within a partition, committed records keep their send order.
    let mut by_partition: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for r in &got {
        let v = value(r);
        let (t, i) = v[1..].split_once('-').unwrap();
        by_partition
            .entry(r.partition)
            .or_default()
            .push((t.parse().unwrap(), i.parse().unwrap()));
    }
    for (partition, seen) in by_partition {
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of order: {seen:?}"
        );
    }
}

#[tokio::test]
async fn offsets_commit_with_their_transaction_and_vanish_with_an_abort() {
    let (_broker, client) = broker().await;
    client.create_topic("in", 2).await.unwrap();
    client.create_topic("out", 1).await.unwrap();
    let mut p = transactional(&client, "offsets").await;

    p.begin().unwrap();
    p.send("out", None, Some(b"x")).await.unwrap();
    p.send_offsets("g", &[("in".into(), 0, 5), ("in".into(), 1, 7)])
        .await
        .unwrap();
    p.commit().await.unwrap();
    let committed = client.fetch_offsets("g", "in").await.unwrap();
    assert_eq!(committed, HashMap::from([(0, 5), (1, 7)]));

    p.begin().unwrap();
    p.send("out", None, Some(b"y")).await.unwrap();
    p.send_offsets("g", &[("in".into(), 0, 9)]).await.unwrap();
    p.abort().await.unwrap();
    assert_eq!(
        client.fetch_offsets("g", "in").await.unwrap(),
        HashMap::from([(0, 5), (1, 7)]),
        "an aborted transaction's offsets never become the group's"
    );

    // Offsets alone, without records, also commit.
    p.begin().unwrap();
    p.send_offsets("g", &[("in".into(), 1, 8)]).await.unwrap();
    p.commit().await.unwrap();
    assert_eq!(
        client.fetch_offsets("g", "in").await.unwrap(),
        HashMap::from([(0, 5), (1, 8)])
    );
}

#[tokio::test]
async fn a_second_producer_with_the_same_id_fences_the_first() {
    let (_broker, client) = broker().await;
    client.create_topic("z", 2).await.unwrap();
    let mut zombie = transactional(&client, "shared-id").await;
    zombie.begin().unwrap();
    let d = zombie
        .send_to("z", 0, None, Some(b"zombie-1"))
        .await
        .unwrap();
    d.wait().await.unwrap();

    // The newer instance fences the zombie and aborts its open transaction.
    let mut fresh = transactional(&client, "shared-id").await;
    assert_eq!(fresh.producer_id().0, zombie.producer_id().0);
    assert!(fresh.producer_id().1 > zombie.producer_id().1);

    // A send to a partition the zombie has registered is refused by the
    // partition; one to a new partition by the coordinator.
    let _ = zombie.send_to("z", 0, None, Some(b"zombie-2")).await;
    let _ = zombie.send_to("z", 1, None, Some(b"zombie-3")).await;
    let err = zombie.commit().await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch
        ),
        "{err}"
    );
    assert!(zombie.is_fatal());
    for later in [
        zombie.begin().unwrap_err(),
        zombie.abort().await.unwrap_err(),
    ] {
        assert_eq!(later.code(), err.code(), "poisoned with the same error");
    }

    fresh.begin().unwrap();
    fresh.send_to("z", 0, None, Some(b"fresh")).await.unwrap();
    fresh.commit().await.unwrap();
    assert_eq!(
        values(&client, "z", IsolationLevel::ReadCommitted).await,
        vec!["fresh"],
        "nothing of the zombie ever becomes visible"
    );
}

#[tokio::test]
async fn a_failed_send_makes_the_commit_fail_and_abort_recovers() {
    let (_broker, client) = broker().await;
    client.create_topic("f", 1).await.unwrap();
    let mut p = transactional(&client, "fail").await;
    p.begin().unwrap();
    p.send("f", None, Some(b"lost")).await.unwrap();
    let err = p.send("no-such-topic", None, Some(b"x")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTopicOrPartition);
    assert_eq!(p.commit().await.unwrap_err().code(), err.code());
    p.abort().await.unwrap();
    p.begin().unwrap();
    p.send("f", None, Some(b"kept")).await.unwrap();
    p.commit().await.unwrap();
    assert_eq!(
        values(&client, "f", IsolationLevel::ReadCommitted).await,
        vec!["kept"]
    );
}

#[tokio::test]
async fn an_open_transaction_is_listed_and_gone_once_committed() {
    let (_broker, client) = broker().await;
    client.create_topic("l", 1).await.unwrap();
    let mut p = transactional(&client, "listed").await;
    p.begin().unwrap();
    p.send("l", None, Some(b"v")).await.unwrap();
    let open = list_transactions(&client).await.unwrap();
    let mine = open
        .iter()
        .find(|t| t.transactional_id == "listed")
        .expect("listed");
    assert_eq!(mine.state, "Ongoing");
    assert_eq!(mine.partitions.len(), 1);
    p.commit().await.unwrap();
    let after = list_transactions(&client).await.unwrap();
    assert!(
        after
            .iter()
            .all(|t| t.transactional_id != "listed" || t.state != "Ongoing"),
        "{after:?}"
    );
}

/// Fills `src` (2 partitions) with `n` records per partition: keyed
/// `p{P}-{i}` values, every third one without a key.
async fn fill_source(client: &Client, src: &str, n: usize) -> Vec<String> {
    // Small batches, so that the copier's small fetches split the input
    // into many transactions.
    let config = ProducerConfig {
        batch_bytes: 1024,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let mut all = Vec::new();
    let mut deliveries = Vec::new();
    for i in 0..n {
        for p in 0..2u32 {
            let v = format!("p{p}-{i}");
            let key = format!("key{}", i % 17);
            let key = (i % 3 != 0).then_some(key.as_bytes());
            deliveries.push(
                producer
                    .send_to(src, p, key, Some(v.as_bytes()))
                    .await
                    .unwrap(),
            );
            all.push(v);
        }
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.wait().await.unwrap();
    }
    producer.close().await.unwrap();
    all
}

async fn copier(client: &Client, src: &str) -> ExactlyOnce {
    let producer = transactional(client, "copier").await;
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            group: Some("copy".into()),
            commit_mode: CommitMode::None,
            isolation: IsolationLevel::ReadCommitted,
            start_from: StartFrom::Committed,
            // Small fetches, so a transaction holds a few hundred records.
            partition_max_bytes: 4096,
            max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    consumer.assign_topic(src).await.unwrap();
    ExactlyOnce::new(
        consumer,
        producer,
        ExactlyOnceConfig {
            max_records: 200,
            max_interval: Duration::from_millis(50),
            ..ExactlyOnceConfig::new("copy")
        },
    )
    .unwrap()
}

fn copy_process(dst: &'static str, n: u32) -> impl FnMut(&ConsumerRecord, &mut Vec<Output>) {
    move |r, out| {
        let p = match &r.key {
            Some(k) => partition_for_key(k, n),
            None => r.partition % n,
        };
        out.push(Output::to_partition(dst, p, r.key.clone(), r.value.clone()));
    }
}

/// Checks `dst` holds every value of `all` exactly once, and that within
/// each destination partition the records of each source partition keep
/// their source order.
async fn check_copy(client: &Client, dst: &str, all: &[String]) {
    let got = records(client, dst, IsolationLevel::ReadCommitted).await;
    let values: Vec<String> = got.iter().map(value).collect();
    assert_eq!(
        values.len(),
        all.len(),
        "exactly as many records as the input"
    );
    assert_eq!(sorted(values), sorted(all.to_vec()), "each record once");
    let mut last: HashMap<(u32, String), usize> = HashMap::new();
    for r in &got {
        let v = value(r);
        let (src, i) = v.split_once('-').unwrap();
        let i: usize = i.parse().unwrap();
        if let Some(prev) = last.insert((r.partition, src.to_string()), i) {
            assert!(
                prev < i,
                "{src} out of order in {dst}/{}: {prev} then {i}",
                r.partition
            );
        }
    }
}

#[tokio::test]
async fn the_exactly_once_loop_copies_every_record_once_across_a_restart() {
    let (_broker, client) = broker().await;
    client.create_topic("src", 2).await.unwrap();
    client.create_topic("dst", 3).await.unwrap();
    let all = fill_source(&client, "src", 1500).await;

    // A first copier commits a few transactions, then dies in the middle of
    // one: its last records are written but never committed.
    let mut first = copier(&client, "src").await;
    let mut process = copy_process("dst", 3);
    let mut committed = 0;
    for _ in 0..100 {
        if committed == 5 {
            break;
        }
        if let Step::Committed { .. } = first.step(&mut process).await.unwrap() {
            committed += 1;
        }
    }
    assert_eq!(committed, 5, "the first copier commits");
    let (mut consumer, mut producer) = first.into_parts();
    producer.begin().unwrap();
    for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
        let mut out = Vec::new();
        process(&r, &mut out);
        for o in out {
            producer
                .send_to(
                    &o.topic,
                    o.partition.unwrap(),
                    o.key.as_deref(),
                    o.value.as_deref(),
                )
                .await
                .unwrap();
        }
    }
    // Dropped without commit or abort, as a crash would leave it.
    drop(producer);
    drop(consumer);

    let mut second = copier(&client, "src").await;
    let totals = second
        .run(copy_process("dst", 3), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(totals.transactions > 0 && totals.aborted == 0, "{totals:?}");
    check_copy(&client, "dst", &all).await;
    let offsets = client.fetch_offsets("copy", "src").await.unwrap();
    assert_eq!(offsets, HashMap::from([(0, 1500), (1, 1500)]));
}

#[tokio::test]
async fn a_fenced_copier_stops_and_its_successor_finishes_the_copy() {
    let (_broker, client) = broker().await;
    client.create_topic("src", 2).await.unwrap();
    client.create_topic("dst", 3).await.unwrap();
    let all = fill_source(&client, "src", 500).await;

    let mut zombie = copier(&client, "src").await;
    let mut process = copy_process("dst", 3);
    let mut committed = false;
    for _ in 0..100 {
        if let Step::Committed { .. } = zombie.step(&mut process).await.unwrap() {
            committed = true;
            break;
        }
    }
    assert!(committed, "the first copier commits");
    let mut successor = copier(&client, "src").await;
    let mut outcome = None;
    for _ in 0..100 {
        match zombie.step(&mut process).await {
            Err(e) => {
                outcome = Some(e);
                break;
            }
            Ok(Step::Committed { .. }) => panic!("a fenced copier committed"),
            Ok(_) => {}
        }
    }
    let err = outcome.expect("the fenced copier stops");
    assert!(
        matches!(
            err.code(),
            ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch
        ),
        "{err}"
    );
    successor
        .run(copy_process("dst", 3), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    check_copy(&client, "dst", &all).await;
}

/// Records what an [`EosObserver`] sees, and crashes at one point of one
/// transaction.
#[derive(Default)]
struct Watcher {
    events: Vec<String>,
    crash: Option<(EosPoint, usize)>,
    transactions: usize,
}

impl EosObserver for Watcher {
    fn polled(&mut self, records: &[ConsumerRecord]) {
        self.events.push(format!("polled {}", records.len()));
    }

    fn sent(&mut self, output: &Output) {
        self.events.push(format!("sent {}", output.topic));
    }

    fn at(&mut self, point: EosPoint) -> Control {
        self.events.push(format!("at {point}"));
        match self.crash {
            Some((p, txn)) if p == point && txn == self.transactions => Control::Crash,
            _ => Control::Continue,
        }
    }

    fn committing(&mut self, offsets: &[(String, u32, u64)]) {
        self.events.push(format!("committing {offsets:?}"));
    }

    fn ended(&mut self, outcome: TxnOutcome<'_>) {
        self.events.push(match outcome {
            TxnOutcome::Committed => "committed".into(),
            TxnOutcome::Aborted(e) => format!("aborted {}", e.code()),
            TxnOutcome::Unknown(e) => format!("unknown {}", e.code()),
            TxnOutcome::Crashed(p) => format!("crashed {p}"),
        });
        self.transactions += 1;
    }
}

/// A copier of `src` into `dst`, one poll per transaction, watched.
async fn watched(client: &Client, crash: Option<(EosPoint, usize)>) -> ExactlyOnce<Watcher> {
    let watcher = Watcher {
        crash,
        ..Watcher::default()
    };
    watched_by(client, watcher).await
}

/// A copier of `src` into `dst`, one poll per transaction, watched by
/// `observer`.
async fn watched_by<O: EosObserver>(client: &Client, observer: O) -> ExactlyOnce<O> {
    let (consumer, producer) = copier(client, "src").await.into_parts();
    let config = ExactlyOnceConfig {
        max_records: 1,
        max_interval: Duration::from_millis(200),
        ..ExactlyOnceConfig::new("copy")
    };
    ExactlyOnce::with_observer(consumer, producer, config, observer).unwrap()
}

/// A broker with a filled `src` of 2 partitions and an empty `dst` of 1;
/// the values in `src`.
async fn small_copy() -> (EmbeddedBroker, Client, Vec<String>) {
    let (broker, client) = broker().await;
    client.create_topic("src", 2).await.unwrap();
    client.create_topic("dst", 1).await.unwrap();
    let all = fill_source(&client, "src", 3).await;
    (broker, client, all)
}

/// One copier step, which the observer crashes at `point`.
async fn step_crashing_at<O: EosObserver>(eos: &mut ExactlyOnce<O>, point: EosPoint) {
    let step = eos.step(copy_process("dst", 1)).await.unwrap();
    assert!(matches!(step, Step::Crashed(p) if p == point), "{step:?}");
}

/// What the observer of a copier that ran to the end saw: a commit per
/// transaction, each of the `all` outputs sent once, and no crash.
fn assert_each_output_sent_once(events: &[String], totals: &Totals, all: &[String]) {
    assert!(totals.transactions > 0, "{totals:?}");
    assert_eq!(
        events.iter().filter(|e| *e == "committed").count() as u64,
        totals.transactions
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("sent")).count(),
        all.len()
    );
    assert!(!events.iter().any(|e| e.starts_with("crashed")));
}

#[tokio::test]
async fn the_observer_sees_each_step_and_a_crash_it_asks_for_leaves_nothing_visible() {
    let (_broker, client, all) = small_copy().await;

    // The first instance crashes before its first commit.
    let mut first = watched(&client, Some((EosPoint::BeforeCommit, 0))).await;
    step_crashing_at(&mut first, EosPoint::BeforeCommit).await;
    let events = first.observer().events.clone();
    let n: usize = events[0].strip_prefix("polled ").unwrap().parse().unwrap();
    assert!(n > 0);
    assert_eq!(events[1], "at after-poll");
    assert!(
        events[2..2 + n].iter().all(|e| e == "sent dst"),
        "{events:?}"
    );
    assert_eq!(events[2 + n], "at after-sends");
    assert!(
        events[3 + n].starts_with("committing [(\"src\", "),
        "{events:?}"
    );
    assert_eq!(
        events[4 + n..],
        ["at before-commit", "crashed before-commit"]
    );
    drop(first);

    // Its successor fences it and copies everything, each record once.
    let mut second = watched(&client, None).await;
    let totals = second
        .run(copy_process("dst", 1), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    assert_each_output_sent_once(&second.observer().events, &totals, &all);
    check_copy(&client, "dst", &all).await;
}

#[tokio::test]
async fn a_stalled_step_resumed_after_its_successor_fenced_it_cannot_commit() {
    let (_broker, client, all) = small_copy().await;

    // The zombie stalls with its outputs sent and its transaction open.
    let mut zombie = watched(&client, Some((EosPoint::AfterSends, 0))).await;
    step_crashing_at(&mut zombie, EosPoint::AfterSends).await;
    let stalled = zombie.observer().events.len();
    assert_eq!(zombie.observer().events[stalled - 1], "crashed after-sends");

    // A successor starts (its producer fences the zombie's) with an
    // observer lent to it, which outlives it.
    let mut watcher = Watcher::default();
    let mut successor = watched_by(&client, &mut watcher).await;

    // The zombie wakes up and goes on from where it stalled: its commit
    // fails, fenced.
    let err = zombie.resume().await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch
        ),
        "{err}"
    );
    let events = &zombie.observer().events[stalled..];
    assert!(
        events[0].starts_with("committing [(\"src\", "),
        "{events:?}"
    );
    assert!(events[1].starts_with("unknown "), "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    // Nothing is left to resume.
    let again = zombie.resume().await.unwrap_err();
    assert!(matches!(again, ClientError::InvalidArgument(_)), "{again}");
    drop(zombie);

    let totals = successor
        .run(copy_process("dst", 1), Some(Duration::from_millis(500)))
        .await
        .unwrap();
    drop(successor);
    assert_each_output_sent_once(&watcher.events, &totals, &all);
    check_copy(&client, "dst", &all).await;
}
