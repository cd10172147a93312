//! Rebalance time: how long a consumer group takes, after one member
//! leaves, until every partition is being consumed again by the members
//! that stay. Measured on an embedded broker while a producer keeps every
//! partition fed, against the round trip of one unary RPC measured in the
//! same run (the floor of any exchange in the group protocol).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_broker::{BrokerConfig, EmbeddedBroker, FlushPolicy};
use ferry_client::{
    Client, ClientError, Consumer, ConsumerConfig, ConsumerEvent, Producer, ProducerConfig,
};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest one round may take before the run fails.
const MAX_ROUND: Duration = Duration::from_secs(60);
/// Unary round trips timed for the baseline.
const RTT_SAMPLES: usize = 200;
/// Pause between the feeder's records to each partition.
const FEED_PAUSE: Duration = Duration::from_millis(2);

/// What to measure.
#[derive(Clone, Debug)]
pub struct RebalanceConfig {
    /// Members of the group before one leaves (at least 2).
    pub members: usize,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Rounds, each with a fresh topic and group.
    pub rounds: usize,
    /// The assignor every member offers.
    pub assignor: String,
    /// The members' session timeout (a member that leaves does not wait
    /// for it; it is reported to show that).
    pub session_timeout: Duration,
    /// The members' heartbeat interval: the members that stay learn of the
    /// rebalance from their next heartbeat, so it bounds the time.
    pub heartbeat_interval: Duration,
}

/// What was measured.
#[derive(Clone, Debug, Serialize)]
pub struct RebalanceReport {
    pub assignor: String,
    pub members: usize,
    pub partitions: u32,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Leave → every partition consumed again, per round, in ms.
    pub rounds_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Median round trip of one unary RPC, in ms.
    pub rpc_rtt_ms: f64,
    /// `median_ms / rpc_rtt_ms`.
    pub rebalance_per_rtt: f64,
}

/// Each partition's owner and when it last consumed, as the members see
/// it.
#[derive(Debug, Default)]
struct Board {
    owner: BTreeMap<u32, usize>,
    /// Partitions consumed at least once.
    consumed: BTreeSet<u32>,
    /// When the leaving member sent LeaveGroup.
    left_at: Option<Instant>,
    /// The first record each partition gave a staying member since then.
    resumed_at: BTreeMap<u32, Instant>,
}

/// Runs the rounds on an embedded broker with `flush = never`.
pub async fn measure(config: &RebalanceConfig) -> Result<RebalanceReport, ClientError> {
    if config.members < 2 || config.partitions == 0 || config.rounds == 0 {
        return Err(ClientError::InvalidArgument(
            "rebalance needs at least 2 members, 1 partition and 1 round".into(),
        ));
    }
    let dir = tempfile::tempdir()
        .map_err(|e| ClientError::InvalidArgument(format!("temporary data dir: {e}")))?;
    let broker = EmbeddedBroker::start(
        BrokerConfig::ephemeral()
            .with_data_dir(dir.path())
            .with_flush(FlushPolicy::Never),
    )
    .await
    .map_err(|e| ClientError::InvalidArgument(format!("embedded broker: {e}")))?;
    let client = Client::connect(&broker.addr_string()).await?;
    let rpc_rtt_ms = unary_rtt(&client).await?;
    let mut rounds_ms = Vec::with_capacity(config.rounds);
    for round in 0..config.rounds {
        rounds_ms.push(one_round(&client, config, round).await?);
    }
    let _ = broker.shutdown().await;
    let mut sorted = rounds_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted[sorted.len() / 2];
    Ok(RebalanceReport {
        assignor: config.assignor.clone(),
        members: config.members,
        partitions: config.partitions,
        session_timeout_ms: config.session_timeout.as_millis() as u64,
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        median_ms,
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        rounds_ms,
        rpc_rtt_ms,
        rebalance_per_rtt: median_ms / rpc_rtt_ms,
    })
}

async fn unary_rtt(client: &Client) -> Result<f64, ClientError> {
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for _ in 0..RTT_SAMPLES {
        let start = Instant::now();
        client.list_groups().await?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

async fn one_round(
    client: &Client,
    config: &RebalanceConfig,
    round: usize,
) -> Result<f64, ClientError> {
    let topic = format!("rebalance-{round}");
    client.create_topic(&topic, config.partitions).await?;
    let (stop_tx, stop) = watch::channel(false);
    let feeder = tokio::spawn(feed(
        client.clone(),
        topic.clone(),
        config.partitions,
        stop.clone(),
    ));
    let board = Arc::new(Mutex::new(Board::default()));
    let consumer_config = ConsumerConfig {
        group: Some(topic.clone()),
        assignors: vec![config.assignor.clone()],
        session_timeout: config.session_timeout,
        heartbeat_interval: config.heartbeat_interval,
        max_wait: Duration::from_millis(20),
        ..ConsumerConfig::default()
    };
    let mut members = Vec::with_capacity(config.members);
    let mut leaves = Vec::with_capacity(config.members);
    for id in 0..config.members {
        let mut consumer = Consumer::new(client.clone(), consumer_config.clone()).await?;
        consumer.subscribe(&topic).await?;
        let (leave_tx, leave) = watch::channel(false);
        members.push(tokio::spawn(member(
            id,
            consumer,
            Arc::clone(&board),
            leave,
        )));
        leaves.push(leave_tx);
    }
    let all: BTreeSet<u32> = (0..config.partitions).collect();
    let deadline = Instant::now() + MAX_ROUND;
    let formed = || {
        let b = board.lock();
        all.iter()
            .all(|p| b.owner.contains_key(p) && b.consumed.contains(p))
    };
    while !formed() {
        wait_or_fail(deadline, "the group to form").await?;
    }
    // The last member leaves; the clock runs from its LeaveGroup until
    // every partition has given one of the others a record.
    let _ = leaves[config.members - 1].send(true);
    let resumed = || {
        let b = board.lock();
        match b.left_at {
            Some(left) if all.iter().all(|p| b.resumed_at.contains_key(p)) => {
                b.resumed_at.values().max().map(|t| *t - left)
            }
            _ => None,
        }
    };
    let elapsed = loop {
        if let Some(elapsed) = resumed() {
            break elapsed;
        }
        wait_or_fail(deadline, "the group to rebalance").await?;
    };
    let _ = stop_tx.send(true);
    for leave in &leaves {
        let _ = leave.send(true);
    }
    for m in members {
        m.await
            .map_err(|e| ClientError::InvalidArgument(format!("member task: {e}")))??;
    }
    feeder
        .await
        .map_err(|e| ClientError::InvalidArgument(format!("feeder task: {e}")))??;
    client.delete_topic(&topic).await?;
    Ok(elapsed.as_secs_f64() * 1e3)
}

async fn wait_or_fail(deadline: Instant, what: &'static str) -> Result<(), ClientError> {
    if Instant::now() > deadline {
        return Err(ClientError::Timeout {
            what,
            after_ms: MAX_ROUND.as_millis() as u64,
        });
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}

/// Keeps every partition fed until told to stop.
async fn feed(
    client: Client,
    topic: String,
    partitions: u32,
    stop: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let producer = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        },
    )
    .await?;
    while !*stop.borrow() {
        for p in 0..partitions {
            producer.send_to(&topic, p, None, Some(b"tick")).await?;
        }
        tokio::time::sleep(FEED_PAUSE).await;
    }
    producer.close().await
}

/// One member: polls, and keeps the board up to date, until told to leave
/// (LeaveGroup).
async fn member(
    id: usize,
    mut consumer: Consumer,
    board: Arc<Mutex<Board>>,
    leave: watch::Receiver<bool>,
) -> Result<(), ClientError> {
    while !*leave.borrow() {
        let events = consumer.poll_events(Duration::from_millis(20)).await?;
        let now = Instant::now();
        let mut b = board.lock();
        for event in events {
            match event {
                ConsumerEvent::Record(r) => {
                    if b.owner.get(&r.partition) == Some(&id) {
                        b.consumed.insert(r.partition);
                        if b.left_at.is_some() && !b.resumed_at.contains_key(&r.partition) {
                            b.resumed_at.insert(r.partition, now);
                        }
                    }
                }
                ConsumerEvent::Assigned { partitions } => {
                    for (_, p) in partitions {
                        b.owner.insert(p, id);
                    }
                }
                ConsumerEvent::Revoked { partitions } => {
                    for (_, p, _) in partitions {
                        if b.owner.get(&p) == Some(&id) {
                            b.owner.remove(&p);
                        }
                    }
                }
                ConsumerEvent::Lost { partitions } => {
                    for (_, p) in partitions {
                        if b.owner.get(&p) == Some(&id) {
                            b.owner.remove(&p);
                        }
                    }
                }
                ConsumerEvent::PartitionEof { .. } => {}
            }
        }
    }
    {
        // Its partitions are nobody's until the others take them.
        let mut b = board.lock();
        b.owner.retain(|_, owner| *owner != id);
        b.left_at.get_or_insert_with(Instant::now);
    }
    consumer.close().await
}
