//! Consumer groups from the client's side: `Consumer::subscribe` joins the
//! group, the group splits the partitions, moves them when a member joins,
//! leaves, dies or stops polling, and fences the commits of a member that
//! lost them (plain commits and, KIP-447, a copier's transaction).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::broker;
use ferry_client::{
    Client, CommitMode, Consumer, ConsumerConfig, ConsumerEvent, Control, EosObserver, EosPoint,
    ExactlyOnce, ExactlyOnceConfig, Output, Producer, ProducerConfig, Step, TransactionalConfig,
    TransactionalProducer,
};
use ferry_proto::ErrorCode;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(30);

fn config(group: &str, session_ms: u64) -> ConsumerConfig {
    ConsumerConfig {
        group: Some(group.to_owned()),
        session_timeout: Duration::from_millis(session_ms),
        heartbeat_interval: Duration::from_millis(session_ms / 5),
        max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    }
}

/// What a member's poll loop saw.
#[derive(Debug, Default)]
struct Seen {
    owned: BTreeSet<u32>,
    records: BTreeMap<u32, u64>,
    assigned: Vec<Vec<u32>>,
    revoked: Vec<Vec<u32>>,
    lost: Vec<Vec<u32>>,
}

/// A consumer polling on its own task until told to stop.
struct Member {
    seen: Arc<Mutex<Seen>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Consumer>,
}

impl Member {
    async fn start(client: &Client, topic: &str, config: ConsumerConfig) -> Member {
        let mut consumer = Consumer::new(client.clone(), config).await.unwrap();
        consumer.subscribe(topic).await.unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, mut stopped) = oneshot::channel();
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while stopped.try_recv().is_err() {
                let events = match consumer.poll_events(Duration::from_millis(50)).await {
                    Ok(events) => events,
                    Err(e) if e.is_retriable() => continue,
                    Err(e) => panic!("poll failed: {e}"),
                };
                let mut seen = log.lock();
                for event in events {
                    match event {
                        ConsumerEvent::Record(r) => {
                            *seen.records.entry(r.partition).or_default() += 1
                        }
                        ConsumerEvent::Assigned { partitions } => {
                            let ps: Vec<u32> = partitions.iter().map(|p| p.1).collect();
                            seen.owned.extend(&ps);
                            seen.assigned.push(ps);
                        }
                        ConsumerEvent::Revoked { partitions } => {
                            let ps: Vec<u32> = partitions.iter().map(|p| p.1).collect();
                            for p in &ps {
                                seen.owned.remove(p);
                            }
                            seen.revoked.push(ps);
                        }
                        ConsumerEvent::Lost { partitions } => {
                            let ps: Vec<u32> = partitions.iter().map(|p| p.1).collect();
                            for p in &ps {
                                seen.owned.remove(p);
                            }
                            seen.lost.push(ps);
                        }
                        ConsumerEvent::PartitionEof { .. } => {}
                    }
                }
                if let Ok(()) | Err(oneshot::error::TryRecvError::Closed) = stopped.try_recv() {
                    break;
                }
            }
            consumer
        });
        Member { seen, stop, task }
    }

    fn owned(&self) -> BTreeSet<u32> {
        self.seen.lock().owned.clone()
    }

    /// Stops polling and hands the consumer back.
    async fn stop(self) -> Consumer {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Waits until `done` holds, or fails naming `what`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the members own every partition of `0..n` between them, each
/// exactly once.
fn split(members: &[&Member], n: u32) -> bool {
    let mut all = Vec::new();
    for m in members {
        all.extend(m.owned());
    }
    all.sort_unstable();
    all == (0..n).collect::<Vec<_>>()
}

#[tokio::test]
async fn members_split_the_partitions_and_a_leaving_member_hands_them_over() {
    let (broker, client) = broker().await;
    client.create_topic("orders", 6).await.unwrap();
    let a = Member::start(&client, "orders", config("billing", 30_000)).await;
    until("a owns all six", || a.owned().len() == 6).await;
    let b = Member::start(&client, "orders", config("billing", 30_000)).await;
    until("a and b split six partitions", || {
        split(&[&a, &b], 6) && a.owned().len() == 3
    })
    .await;

    // Every record is read, each by the member that owns its partition.
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for p in 0..6 {
        for _ in 0..10 {
            producer
                .send_to("orders", p, None, Some(b"x"))
                .await
                .unwrap();
        }
    }
    producer.flush().await.unwrap();
    until("both read every record", || {
        let (sa, sb) = (a.seen.lock(), b.seen.lock());
        (0..6).all(|p| {
            sa.records.get(&p).copied().unwrap_or(0) + sb.records.get(&p).copied().unwrap_or(0)
                == 10
        })
    })
    .await;
    for p in a.owned() {
        assert!(
            !b.seen.lock().records.contains_key(&p),
            "b read a's partition {p}"
        );
    }

    // A member that leaves (LeaveGroup) gives its partitions up at once,
    // long before its 30 s session would time out.
    let started = Instant::now();
    b.stop().await.close().await.unwrap();
    until("a owns all six again", || a.owned().len() == 6).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let description = client.describe_group("billing").await.unwrap();
    assert_eq!(description.members.len(), 1);
    a.stop().await.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dead_member_loses_its_partitions_after_its_session_timeout() {
    let (broker, client) = broker().await;
    client.create_topic("events", 4).await.unwrap();
    let a = Member::start(&client, "events", config("g", 1_000)).await;
    let b = Member::start(&client, "events", config("g", 1_000)).await;
    until("a and b split four", || {
        split(&[&a, &b], 4) && a.owned().len() == 2
    })
    .await;
    // Dropped without leaving, as a crashed process: its heartbeats stop.
    drop(b.stop().await);
    until("a owns all four", || a.owned().len() == 4).await;
    a.stop().await.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_member_paused_past_its_session_timeout_cannot_commit() {
    let (broker, client) = broker().await;
    client.create_topic("t", 2).await.unwrap();
    let committing = ConsumerConfig {
        commit_mode: CommitMode::After,
        ..config("fenced", 600)
    };
    let a = Member::start(&client, "t", committing.clone()).await;
    until("a owns both", || a.owned().len() == 2).await;
    let paused = a.stop().await;
    let stale = paused.group_metadata().unwrap();
    assert!(stale.generation > 0 && !stale.member_id.is_empty());
    // The paused member's heartbeats stop with it.
    drop(paused);
    let b = Member::start(&client, "t", committing).await;
    until("b owns both", || b.owned().len() == 2).await;

    let err = client
        .commit_member_offsets(&stale, &[("t".to_owned(), 0, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration
        ),
        "{err}"
    );
    // A simple commit (no member) is refused too while the group has one.
    let err = client
        .commit_offsets("fenced", &[("t".to_owned(), 0, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownMemberId);
    assert!(
        client
            .fetch_offsets("fenced", "t")
            .await
            .unwrap()
            .is_empty()
    );

    // The live member's commit goes through.
    let mut live = b.stop().await;
    live.commit().await.unwrap();
    live.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_member_that_stops_polling_leaves_and_rejoins_when_it_polls_again() {
    let (broker, client) = broker().await;
    client.create_topic("slow", 2).await.unwrap();
    let mut slow = Consumer::new(
        client.clone(),
        ConsumerConfig {
            commit_mode: CommitMode::After,
            max_poll_interval: Duration::from_millis(500),
            ..config("slow", 10_000)
        },
    )
    .await
    .unwrap();
    slow.subscribe("slow").await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while slow.positions().len() < 2 {
        assert!(Instant::now() < deadline);
        slow.poll(Duration::from_millis(50)).await.unwrap();
    }
    let before = slow.group_metadata().unwrap();
    // The handler takes longer than the maximum poll interval: the
    // heartbeat task leaves the group, and a commit is refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let deadline = Instant::now() + PATIENCE;
    while !client
        .describe_group("slow")
        .await
        .unwrap()
        .members
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the idle member never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = slow.commit().await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration
        ),
        "{err}"
    );
    assert!(slow.rebalance_pending());
    // The next poll reports the partitions lost; the one after joins again.
    let events = slow.poll_events(Duration::from_millis(50)).await.unwrap();
    assert!(
        matches!(&events[..], [ConsumerEvent::Lost { partitions }] if partitions.len() == 2),
        "{events:?}"
    );
    let events = slow.poll_events(Duration::from_millis(50)).await.unwrap();
    assert!(
        matches!(&events[..], [ConsumerEvent::Assigned { partitions }] if partitions.len() == 2),
        "{events:?}"
    );
    let after = slow.group_metadata().unwrap();
    assert!(after.generation > before.generation);
    slow.commit().await.unwrap();
    slow.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_static_member_that_comes_back_in_time_keeps_its_partitions_without_a_rebalance() {
    let (broker, client) = broker().await;
    client.create_topic("static", 4).await.unwrap();
    let stat = |id: &str| ConsumerConfig {
        group_instance_id: Some(id.to_owned()),
        ..config("statics", 5_000)
    };
    let a = Member::start(&client, "static", stat("a")).await;
    let b = Member::start(&client, "static", stat("b")).await;
    until("a and b split four", || {
        split(&[&a, &b], 4) && a.owned().len() == 2
    })
    .await;
    let a_owned = a.owned();
    let b_generation = {
        let consumer = b.stop().await;
        let g = consumer.group_metadata().unwrap().generation;
        // b goes on polling; it must see no rebalance.
        drop(consumer);
        g
    };
    let b = Member::start(&client, "static", stat("b")).await;
    until("b is back", || b.owned().len() == 2).await;
    // a restarts as a new process with the same instance id.
    drop(a.stop().await);
    let a2 = Member::start(&client, "static", stat("a")).await;
    until("a is back", || a2.owned().len() == 2).await;
    assert_eq!(a2.owned(), a_owned, "a static member keeps its partitions");
    assert!(b.seen.lock().revoked.is_empty());
    let b_consumer = b.stop().await;
    assert_eq!(
        b_consumer.group_metadata().unwrap().generation,
        b_generation,
        "no rebalance"
    );
    b_consumer.close().await.unwrap();
    a2.stop().await.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// A static member the coordinator no longer knows (an admin removed its
/// instance, as Kafka's `removeMembersFromConsumerGroup` does, or its
/// session expired) is refused as an unknown member; it must join again as
/// new under its instance id, not repeat the stale member id until it
/// gives up.
#[tokio::test]
async fn a_static_member_joins_again_after_the_coordinator_dropped_it() {
    let (broker, client) = broker().await;
    client.create_topic("static-removed", 2).await.unwrap();
    let stat = ConsumerConfig {
        group_instance_id: Some("s".to_owned()),
        ..config("static-removed", 2_000)
    };
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    let a = Member::start(&client, "static-removed", stat).await;
    until("a owns both", || a.owned().len() == 2).await;
    let removed = client
        .raw()
        .leave_group(ferry_proto::v1::LeaveGroupRequest {
            group: "static-removed".into(),
            members: vec![ferry_proto::v1::LeavingMember {
                member_id: String::new(),
                group_instance_id: "s".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.error_code, 0, "{removed:?}");
    until("a lost its partitions", || !a.seen.lock().lost.is_empty()).await;
    for p in 0..2 {
        producer
            .send_to("static-removed", p, None, Some(b"after"))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    until("a joined again and reads both partitions", || {
        let seen = a.seen.lock();
        (0..2).all(|p| seen.records.get(&p).copied().unwrap_or(0) > 0)
    })
    .await;
    a.stop().await.close().await.unwrap();
    producer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn cooperative_members_only_revoke_the_partitions_that_move() {
    let (broker, client) = broker().await;
    client.create_topic("coop", 6).await.unwrap();
    let coop = || ConsumerConfig {
        assignors: vec!["cooperative-sticky".to_owned()],
        ..config("coop", 30_000)
    };
    let a = Member::start(&client, "coop", coop()).await;
    until("a owns six", || a.owned().len() == 6).await;
    let b = Member::start(&client, "coop", coop()).await;
    until("a and b split six", || {
        split(&[&a, &b], 6) && a.owned().len() == 3
    })
    .await;
    let c = Member::start(&client, "coop", coop()).await;
    until("three members, two each", || {
        split(&[&a, &b, &c], 6) && a.owned().len() == 2 && b.owned().len() == 2
    })
    .await;
    // Every revocation gave up only what went to someone else: a member
    // never revoked everything it held at once (eager would).
    {
        let seen = a.seen.lock();
        assert_eq!(seen.assigned[0].len(), 6);
        let revoked: usize = seen.revoked.iter().map(Vec::len).sum();
        assert_eq!(revoked, 4, "a gave up 3 to b, then 1 to c: {seen:?}");
    }
    for m in [a, b, c] {
        m.stop().await.close().await.unwrap();
    }
    broker.shutdown().await.unwrap();
}

/// Crashes (stalls) the step after its sends, once.
#[derive(Default)]
struct StallAfterSends {
    armed: bool,
}

impl EosObserver for StallAfterSends {
    fn at(&mut self, point: EosPoint) -> Control {
        if self.armed && point == EosPoint::AfterSends {
            self.armed = false;
            return Control::Crash;
        }
        Control::Continue
    }
}

async fn copier<O: EosObserver>(
    client: &Client,
    id: &str,
    observer: O,
    max_poll: Duration,
) -> ExactlyOnce<O> {
    let producer = TransactionalProducer::new(client.clone(), TransactionalConfig::new(id))
        .await
        .unwrap();
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            max_poll_interval: max_poll,
            ..config("copy", 10_000)
        },
    )
    .await
    .unwrap();
    consumer.subscribe("src").await.unwrap();
    ExactlyOnce::with_observer(consumer, producer, ExactlyOnceConfig::new("copy"), observer)
        .unwrap()
}

fn copy(record: &ferry_client::ConsumerRecord, out: &mut Vec<Output>) {
    out.push(Output::to_partition(
        "dst",
        record.partition,
        record.key.clone(),
        record.value.clone(),
    ));
}

#[tokio::test]
async fn a_copier_that_lost_its_partitions_cannot_commit_them_in_its_transaction() {
    let (broker, client) = broker().await;
    client.create_topic("src", 2).await.unwrap();
    client.create_topic("dst", 2).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..20u32 {
        let v = i.to_string();
        producer
            .send_to("src", i % 2, None, Some(v.as_bytes()))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();

    // The zombie copies everything, then stalls before committing for
    // longer than its maximum poll interval: it leaves the group.
    let mut zombie = copier(
        &client,
        "copier-zombie",
        StallAfterSends { armed: true },
        Duration::from_millis(500),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match zombie.step(copy).await.unwrap() {
            Step::Crashed(EosPoint::AfterSends) => break,
            Step::Idle => assert!(Instant::now() < deadline, "the zombie never read"),
            other => panic!("unexpected step {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Its successor (another transactional id: the producer epoch does
    // not fence the zombie, only the group does) takes both partitions
    // and copies them.
    let mut successor = copier(&client, "copier-successor", (), Duration::from_secs(30)).await;
    let mut copied = 0;
    let deadline = Instant::now() + PATIENCE;
    while copied < 20 {
        assert!(Instant::now() < deadline, "the successor copied {copied}");
        if let Step::Committed { records, .. } = successor.step(copy).await.unwrap() {
            copied += records;
        }
    }

    // The zombie wakes and commits: the group refuses its offsets, and its
    // transaction, outputs included, aborts.
    match zombie.resume().await.unwrap() {
        Step::Aborted(e) => assert!(
            matches!(
                e.code(),
                ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration
            ),
            "{e}"
        ),
        other => panic!("the zombie's transaction must abort, got {other:?}"),
    }

    // Each record is in dst exactly once.
    let mut reader = Consumer::new(client.clone(), ConsumerConfig::default())
        .await
        .unwrap();
    reader.assign_topic("dst").await.unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !reader.at_end() || values.len() < 20 {
        assert!(Instant::now() < deadline, "dst holds {values:?}");
        for r in reader.poll(Duration::from_millis(100)).await.unwrap() {
            values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    values.sort_by_key(|v| v.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(values, expected);
    let (consumer, producer) = successor.into_parts();
    producer.close().await.unwrap();
    consumer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

/// What the loop reported of the group's rebalances.
#[derive(Default)]
struct Rebalances {
    events: Vec<ConsumerEvent>,
    in_txn: bool,
    during_txn: usize,
}

impl Rebalances {
    fn assigned(&self) -> usize {
        self.events
            .iter()
            .filter_map(|e| match e {
                ConsumerEvent::Assigned { partitions } => Some(partitions.len()),
                _ => None,
            })
            .sum()
    }

    fn revoked(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, ConsumerEvent::Revoked { .. }))
    }
}

impl EosObserver for Rebalances {
    fn polled(&mut self, _: &[ferry_client::ConsumerRecord]) {
        self.in_txn = true;
    }

    fn ended(&mut self, _: ferry_client::TxnOutcome<'_>) {
        self.in_txn = false;
    }

    fn rebalanced(&mut self, events: &[ConsumerEvent]) {
        if self.in_txn {
            self.during_txn += 1;
        }
        self.events.extend_from_slice(events);
    }
}

#[tokio::test]
async fn the_copier_loop_tells_its_observer_of_each_rebalance_between_transactions() {
    let (broker, client) = broker().await;
    client.create_topic("src", 2).await.unwrap();
    client.create_topic("dst", 2).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..20u32 {
        producer
            .send_to("src", i % 2, None, Some(b"x"))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();

    let max_poll = Duration::from_secs(30);
    let mut a = copier(&client, "rebalances-a", Rebalances::default(), max_poll).await;
    let deadline = Instant::now() + PATIENCE;
    while a.observer().assigned() < 2 {
        assert!(Instant::now() < deadline, "a was never assigned both");
        a.step(copy).await.unwrap();
    }
    // A second member joins: a gives its partitions up (eager) and gets
    // one back, and hears of each change. Each polls on its own, as
    // separate processes would: a join waits for every member's.
    let mut b = copier(&client, "rebalances-b", Rebalances::default(), max_poll).await;
    let deadline = Instant::now() + PATIENCE;
    let a_loop = async {
        while !(a.observer().revoked() && a.observer().assigned() == 3) {
            assert!(Instant::now() < deadline, "a: {:?}", a.observer().events);
            a.step(copy).await.unwrap();
        }
    };
    let b_loop = async {
        while b.observer().assigned() != 1 {
            assert!(Instant::now() < deadline, "b: {:?}", b.observer().events);
            b.step(copy).await.unwrap();
        }
    };
    tokio::join!(a_loop, b_loop);
    assert_eq!(
        a.observer().during_txn,
        0,
        "a rebalance inside a transaction"
    );
    assert_eq!(
        b.observer().during_txn,
        0,
        "a rebalance inside a transaction"
    );
    for c in [a.into_parts(), b.into_parts()] {
        c.1.close().await.unwrap();
        c.0.close().await.unwrap();
    }
    broker.shutdown().await.unwrap();
}
