//! The fault-injection kit against a real broker: lost acks through the
//! proxy, every fault kind firing, consumer crashes before the commit, and
//! torn tails. Each test prints its seed; `FERRY_SEED=<seed>` repeats it.

use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::{
    Acks, Client, ClientError, CommitMode, ConsumerConfig, Producer, ProducerConfig, StartFrom,
};
use ferry_proto::v1;
use ferry_storage::FlushPolicy;
use ferry_testkit::{
    AnomalyKind, BrokerProcess, CheckOptions, ConsumerStep, CrashPoint, CrashSchedule,
    CrashingConsumer, DeliveryMode, DurableFloors, Fault, FaultKind, FaultPlan, FaultProxy,
    History, RecordingProducer, RpcKind, TailDamage, Targets, ValueGen,
};

/// A plain (not idempotent) producer that retries quickly, with small
/// batches so a run has many.
fn retrying(acks: Acks) -> ProducerConfig {
    ProducerConfig {
        acks,
        idempotent: false,
        linger: Duration::from_millis(1),
        batch_bytes: 256,
        delivery_timeout: Duration::from_secs(30),
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        ..ProducerConfig::default()
    }
}

async fn produce(
    client: &Client,
    history: &History,
    topic: &str,
    n: usize,
    acks: Acks,
) -> RecordingProducer {
    produce_with(client, history, topic, n, retrying(acks)).await
}

async fn produce_with(
    client: &Client,
    history: &History,
    topic: &str,
    n: usize,
    config: ProducerConfig,
) -> RecordingProducer {
    let producer = Producer::new(client.clone(), config).await.unwrap();
    let producer = RecordingProducer::new(producer, history.clone());
    for i in 0..n {
        producer
            .send(topic, Some((i % 2) as u32))
            .await
            .expect("send");
    }
    producer.flush().await.unwrap();
    producer
}

/// Sends 1500 records through a proxy that loses produce acks after the
/// broker applied them, drains the topic around the proxy, and returns the
/// checker's report with the number of lost acks injected.
async fn produce_through_lost_acks(config: ProducerConfig) -> (ferry_testkit::Report, u64) {
    let seed = ferry_testkit::seed();
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let direct = Client::connect(&broker.addr_string()).await.unwrap();
    direct.create_topic("t", 2).await.unwrap();
    // The 2nd streamed request always loses its ack, so even an unlucky
    // seed has one; then 15% at random.
    let plan = FaultPlan::new(seed)
        .at(RpcKind::ProduceStream, 2, Fault::DropResponse)
        .with_probability(Targets::PRODUCE, Fault::DropResponse, 0.15);
    let proxy = FaultProxy::start(&broker.addr_string(), plan)
        .await
        .unwrap();
    let client = Client::connect(&proxy.addr_string()).await.unwrap();

    let history = History::new();
    let n = 1500;
    produce_with(&client, &history, "t", n, config)
        .await
        .close()
        .await
        .unwrap();
    let stats = proxy.stats();
    let lost_acks = stats.on(Targets::PRODUCE, FaultKind::DropResponse);
    ferry_testkit::drain(&direct, "t", &history, Duration::from_millis(500))
        .await
        .unwrap();
    let report = ferry_testkit::check(&history.ops(), &CheckOptions::drained());
    eprintln!(
        "seed {seed}: {lost_acks} lost acks injected over {} produce requests; {:?}",
        stats.requests_of(Targets::PRODUCE),
        report.stats
    );
    assert!(lost_acks >= 1, "the faults fired");
    assert_eq!(report.stats.acked, n, "every send is acked in the end");
    (report, lost_acks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_through_lost_acks_loses_nothing_and_the_checker_counts_duplicates() {
    let (report, _) = produce_through_lost_acks(retrying(Acks::All)).await;
    let verdict = report.verdict(DeliveryMode::AtLeastOnce);
    eprintln!("{verdict}");
    assert!(verdict.is_valid(), "{verdict}");
    assert_eq!(report.count(AnomalyKind::LostWrite), 0);
    assert!(
        report.count(AnomalyKind::Duplicate) > 0,
        "a lost ack makes the retry write the batch again: {verdict}"
    );
    assert!(!report.verdict(DeliveryMode::Idempotent).is_valid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_through_lost_acks_writes_each_record_once() {
    let config = ProducerConfig {
        idempotent: true,
        ..retrying(Acks::All)
    };
    let (report, _) = produce_through_lost_acks(config).await;
    let verdict = report.verdict(DeliveryMode::Idempotent);
    eprintln!("{verdict}");
    assert!(verdict.is_valid(), "{verdict}");
    assert_eq!(report.count(AnomalyKind::Duplicate), 0);
}

fn one_record_batch(value: &[u8]) -> bytes::Bytes {
    let now = ferry_proto::now_ms();
    let mut b = ferry_proto::batch::BatchBuilder::new(now);
    b.push(now, None, Some(value), &[]);
    b.finish()
}

fn produce_request(value: &[u8]) -> v1::ProduceRequest {
    v1::ProduceRequest {
        correlation_id: 1,
        topic: "t".into(),
        partition: 0,
        acks: v1::Acks::All as i32,
        batch: one_record_batch(value),
    }
}

async fn high_watermark(client: &Client, topic: &str) -> u64 {
    client.describe_topic(topic).await.unwrap().partitions[0].high_watermark
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scripted_fault_fires_and_is_counted() {
    let seed = ferry_testkit::seed();
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let direct = Client::connect(&broker.addr_string()).await.unwrap();
    let delay = Duration::from_millis(300);
    let plan = FaultPlan::new(seed)
        .at(RpcKind::CreateTopic, 1, Fault::DropRequest)
        .at(RpcKind::CreateTopic, 2, Fault::DropResponse)
        .at(RpcKind::Produce, 1, Fault::Duplicate)
        .at(RpcKind::ListTopics, 1, Fault::Delay(delay))
        .at(RpcKind::Fetch, 1, Fault::Disconnect);
    let proxy = FaultProxy::start(&broker.addr_string(), plan)
        .await
        .unwrap();
    let client = Client::connect(&proxy.addr_string()).await.unwrap();

    // Dropped request: the call fails and the broker never saw it.
    let e = client.create_topic("t", 1).await.unwrap_err();
    assert!(matches!(e, ClientError::Transport(_)), "{e}");
    assert!(direct.list_topics().await.unwrap().is_empty());
    // Dropped response: the call fails, but the topic exists.
    let e = client.create_topic("t", 1).await.unwrap_err();
    assert!(e.is_retriable(), "{e}");
    assert_eq!(direct.list_topics().await.unwrap().len(), 1);

    // Duplicated request: one answer, two copies in the log.
    let r = client
        .raw()
        .produce(produce_request(b"once"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(high_watermark(&direct, "t").await, 2);

    // Delay.
    let started = Instant::now();
    client.list_topics().await.unwrap();
    assert!(started.elapsed() >= delay);

    // Disconnect: the call fails, the connection is cut, and the client
    // reconnects for the next call.
    let before = proxy.connections_accepted();
    let fetch = v1::FetchRequest {
        partitions: vec![v1::FetchPartition {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        }],
        ..Default::default()
    };
    assert!(client.raw().fetch(fetch.clone()).await.is_err());
    let mut reconnected = false;
    for _ in 0..50 {
        if client.raw().fetch(fetch.clone()).await.is_ok() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reconnected, "the client reconnects through the proxy");
    assert!(proxy.connections_accepted() > before);

    let stats = proxy.stats();
    for (kind, fault) in [
        (RpcKind::CreateTopic, FaultKind::DropRequest),
        (RpcKind::CreateTopic, FaultKind::DropResponse),
        (RpcKind::Produce, FaultKind::Duplicate),
        (RpcKind::ListTopics, FaultKind::Delay),
        (RpcKind::Fetch, FaultKind::Disconnect),
    ] {
        assert_eq!(stats.on(kind, fault), 1, "{kind:?} {fault:?}: {stats:?}");
    }
    assert_eq!(stats.all_faults(), 5);
    assert_eq!(proxy.injected().len(), 5);

    // Streamed produce: the proxy counts per message, and a dropped request
    // breaks the stream; the producer resends and the record lands once.
    proxy.set_plan(FaultPlan::new(seed).at(RpcKind::ProduceStream, 1, Fault::DropRequest));
    let producer = Producer::new(client.clone(), retrying(Acks::All))
        .await
        .unwrap();
    let d = producer
        .send_to("t", 0, None, Some(b"streamed"))
        .await
        .unwrap();
    producer.flush().await.unwrap();
    assert_eq!(d.wait().await.unwrap().offset, Some(2));
    assert_eq!(
        proxy
            .stats()
            .on(RpcKind::ProduceStream, FaultKind::DropRequest),
        1
    );
    assert_eq!(high_watermark(&direct, "t").await, 3);
}

/// A broker with topic "t" (2 partitions) holding `n` acknowledged
/// records, recorded in a new history.
async fn broker_with_records(config: BrokerConfig, n: usize) -> (EmbeddedBroker, Client, History) {
    let broker = EmbeddedBroker::start(config).await.unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic("t", 2).await.unwrap();
    let history = History::new();
    produce(&client, &history, "t", n, Acks::All)
        .await
        .close()
        .await
        .unwrap();
    (broker, client, history)
}

/// Runs a crashing consumer in `group` until the topic is consumed (three
/// idle polls in a row).
async fn consume_with_crashes(
    client: &Client,
    history: &History,
    group: &str,
    commit_mode: CommitMode,
    schedule: CrashSchedule,
) -> Vec<(u64, u64, CrashPoint)> {
    let config = ConsumerConfig {
        group: Some(group.into()),
        commit_mode,
        start_from: StartFrom::Committed,
        partition_max_bytes: 1,
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer =
        CrashingConsumer::new(client.clone(), config, "t", history.clone(), schedule)
            .await
            .unwrap();
    let mut idle = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while idle < 3 {
        assert!(Instant::now() < deadline, "the group never caught up");
        match consumer
            .step(Duration::from_millis(100), |_, _| async {})
            .await
            .unwrap()
        {
            ConsumerStep::Idle => idle += 1,
            ConsumerStep::Delivered(_) | ConsumerStep::Crashed(_) => idle = 0,
        }
    }
    consumer.crashes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_crash_before_commit_redelivers_after_and_loses_before() {
    let seed = ferry_testkit::seed();
    let (_broker, client, history) = broker_with_records(BrokerConfig::ephemeral(), 400).await;

    // Crash points are scripted (steps 2 and 4) plus seeded at random.
    let after = CrashSchedule::random(seed, 0.1, &[CrashPoint::BeforeCommit])
        .at(2, CrashPoint::BeforeCommit)
        .at(4, CrashPoint::AfterSinkWrite);
    let crashes = consume_with_crashes(&client, &history, "after", CommitMode::After, after).await;
    let before = CrashSchedule::random(seed, 0.1, &[CrashPoint::AfterPoll])
        .at(2, CrashPoint::AfterPoll)
        .at(4, CrashPoint::AfterProcess);
    let crashes_before =
        consume_with_crashes(&client, &history, "before", CommitMode::Before, before).await;
    assert!(crashes.len() >= 2 && crashes_before.len() >= 2);

    let ops = history.ops();
    let judge = |group: &str, mode: DeliveryMode| {
        let report = ferry_testkit::check(
            &ops,
            &CheckOptions {
                drained: true,
                group: Some(group.into()),
            },
        );
        let verdict = report.verdict(mode);
        eprintln!("seed {seed}, group {group}: {verdict}");
        (report, verdict)
    };

    let (report, verdict) = judge("after", DeliveryMode::AtLeastOnce);
    assert!(verdict.is_valid(), "{verdict}");
    assert_eq!(report.count(AnomalyKind::LostWrite), 0);
    assert!(
        report.count(AnomalyKind::DuplicateDelivery) > 0,
        "commit-after redelivers what a crash left uncommitted"
    );

    let (report, verdict) = judge("before", DeliveryMode::AtMostOnce);
    assert!(verdict.is_valid(), "{verdict}");
    assert_eq!(
        report.count(AnomalyKind::DuplicateDelivery),
        0,
        "commit-before never redelivers"
    );
    assert!(
        report.count(AnomalyKind::LostWrite) > 0,
        "commit-before loses what a crash left unprocessed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_off_by_recovery_and_nothing_durable_is_lost() {
    let seed = ferry_testkit::seed();
    // Under `Never`, only a graceful stop (or a roll) makes data durable:
    // the first half of the records is durable, the second half is not.
    let (broker, client, history) = broker_with_records(
        BrokerConfig::ephemeral().with_flush(FlushPolicy::Never),
        300,
    )
    .await;
    let broker = broker.restart().await.unwrap();

    // Acknowledged by the leader only, never flushed: fair game for the
    // torn tail, so these sends stay out of the history.
    let producer = Producer::new(client.clone(), retrying(Acks::Leader))
        .await
        .unwrap();
    for i in 0..300u32 {
        let v = ValueGen::encode(history.next_value());
        producer.send_to("t", i % 2, None, Some(&v)).await.unwrap();
    }
    producer.close().await.unwrap();

    let (broker, report) =
        ferry_testkit::crash_and_tear(broker, TailDamage::TruncateAndGarbage, seed)
            .await
            .unwrap();
    eprintln!(
        "seed {seed}: cut {} records ({} bytes) and wrote garbage into {} logs",
        report.records_cut(),
        report.bytes_zeroed(),
        report.logs.iter().filter(|l| l.garbage_bytes > 0).count()
    );
    assert!(report.records_cut() > 0, "{report:?}");
    // Recovery keeps exactly the batches wholly before each cut.
    for topic in broker.state().topics() {
        for p in &topic.partitions {
            let torn = report
                .logs
                .iter()
                .find(|l| l.dir == p.log.dir())
                .expect("every partition log was damaged");
            assert_eq!(p.log.next_offset(), torn.surviving_next_offset, "{torn:?}");
        }
    }

    // The log takes appends after the cut, and a drain sees every durable
    // record exactly once.
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    append_then_drain_exactly_once(&client, &history, seed, 350).await;
}

/// Appends 50 more records to "t" after a recovery, drains it, and requires
/// `acked` acknowledged sends, each read exactly once.
async fn append_then_drain_exactly_once(
    client: &Client,
    history: &History,
    seed: u64,
    acked: usize,
) {
    produce(client, history, "t", 50, Acks::All)
        .await
        .close()
        .await
        .unwrap();
    ferry_testkit::drain(client, "t", history, Duration::from_millis(500))
        .await
        .unwrap();
    let report = ferry_testkit::check(&history.ops(), &CheckOptions::drained());
    let verdict = report.verdict(DeliveryMode::ExactlyOnce);
    eprintln!("seed {seed}: {verdict}");
    assert!(verdict.is_valid(), "{verdict}");
    assert_eq!(report.stats.acked, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_with_garbage_past_the_tail_keeps_every_acked_record_once() {
    let seed = ferry_testkit::seed();
    let dir = tempfile::tempdir().unwrap();
    let broker =
        BrokerProcess::start(env!("CARGO_BIN_EXE_ferry"), dir.path(), "127.0.0.1:0").unwrap();
    let client = Client::connect(broker.addr()).await.unwrap();
    client.create_topic("t", 2).await.unwrap();
    let history = History::new();
    produce(&client, &history, "t", 300, Acks::All)
        .await
        .close()
        .await
        .unwrap();

    // No floors: every valid batch counts as durable, so only garbage.
    let (broker, report) = broker
        .kill9_tear_and_restart(TailDamage::Garbage, &DurableFloors::new(), seed)
        .unwrap();
    assert!(
        report.logs.iter().any(|l| l.garbage_bytes > 0),
        "{report:?}"
    );
    assert_eq!(report.records_cut(), 0);

    let client = Client::connect(broker.addr()).await.unwrap();
    append_then_drain_exactly_once(&client, &history, seed, 350).await;
    assert!(broker.sigterm().unwrap().success());
}
