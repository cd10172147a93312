//! The database sinks (`ferry_client::sink::db`): offsets in the
//! database's own transaction, fenced by the group generation, and the
//! outbox relay. Against a real PostgreSQL (a throwaway server started
//! here, from Debian's package) and SQLite.
//!
//! Every effect row is a plain `INSERT` with no unique key, so a repeat
//! would show as a second row: only the commit protocol keeps it out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_broker::{BrokerConfig, EmbeddedBroker};
use ferry_client::sink::SinkError;
use ferry_client::sink::db::outbox::{OutboxRelay, RelayConfig, RelayStep};
use ferry_client::sink::db::{DbConsumer, DbPoint, PgOffsets, SqliteOffsets, postgres};
use ferry_client::{
    Client, CommitMode, Consumer, ConsumerConfig, IsolationLevel, Producer, ProducerConfig,
    StartFrom,
};
use ferry_testkit::{PostgresOptions, TempPostgres};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;

fn postgres_server() -> Option<TempPostgres> {
    let server = TempPostgres::start(&PostgresOptions::default()).unwrap();
    if server.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs PostgreSQL, yet no server binary was found"
        );
        eprintln!("skipped: no PostgreSQL server binary (install Debian's postgresql)");
    }
    server
}

async fn broker_with_orders(n: u64) -> (EmbeddedBroker, Client) {
    let broker = EmbeddedBroker::start(BrokerConfig::ephemeral())
        .await
        .unwrap();
    let client = Client::connect(&broker.addr_string()).await.unwrap();
    client.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default())
        .await
        .unwrap();
    for v in 0..n {
        let value = v.to_string();
        // One batch per record, so that polls return a few at a time.
        producer
            .send_to(TOPIC, (v % 2) as u32, None, Some(value.as_bytes()))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    (broker, client)
}

fn consumer_config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group: Some(group.into()),
        commit_mode: CommitMode::None,
        isolation: IsolationLevel::ReadCommitted,
        start_from: StartFrom::Committed,
        partition_max_bytes: 256,
        max_wait: Duration::from_millis(50),
        session_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(100),
        ..ConsumerConfig::default()
    }
}

async fn subscribed(client: &Client, config: ConsumerConfig) -> Consumer {
    let mut c = Consumer::new(client.clone(), config).await.unwrap();
    c.subscribe(TOPIC).await.unwrap();
    c
}

fn value(r: &ferry_client::ConsumerRecord) -> i64 {
    std::str::from_utf8(r.value.as_deref().unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

/// A crash schedule: the first commit crashes before the database
/// commit, the second after it, later ones at seeded points or not at all.
struct Crashes {
    rng: StdRng,
    commits: u64,
    crashed: BTreeMap<&'static str, u64>,
}

impl Crashes {
    fn new(seed: u64) -> Crashes {
        Crashes {
            rng: StdRng::seed_from_u64(seed),
            commits: 0,
            crashed: BTreeMap::new(),
        }
    }

    /// The point this commit crashes at, if any.
    fn pick(&mut self) -> Option<DbPoint> {
        self.commits += 1;
        match self.commits {
            1 => return Some(DbPoint::BeforeDbCommit),
            2 => return Some(DbPoint::AfterDbCommit),
            _ => {}
        }
        match self.rng.random_range(0..4) {
            0 => Some(DbPoint::BeforeDbCommit),
            1 => Some(DbPoint::AfterDbCommit),
            _ => None,
        }
    }

    fn note(&mut self, e: &SinkError) -> bool {
        match e {
            SinkError::Crashed(DbPoint::BeforeDbCommit) => {
                *self.crashed.entry("before db commit").or_default() += 1;
                true
            }
            SinkError::Crashed(DbPoint::AfterDbCommit) => {
                *self.crashed.entry("after db commit").or_default() += 1;
                true
            }
            _ => false,
        }
    }
}

/// Consumes every order into PostgreSQL, crashing at seeded points of
/// the commit; each crash drops the process (its consumer and its
/// database connection) and a new one takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_and_offsets_survive_a_crash_at_every_commit_point() {
    let Some(pg) = postgres_server() else { return };
    let seed = ferry_testkit::seed();
    let n = 120;
    let (_broker, client) = broker_with_orders(n).await;
    // Stores opened at once on a fresh database (a consumer and its relay
    // starting together) all create or find the tables.
    let url = pg.url();
    let (setup, b, c) = tokio::join!(
        PgOffsets::connect(&url),
        PgOffsets::connect(&url),
        PgOffsets::connect(&url)
    );
    let (setup, _, _) = (setup.unwrap(), b.unwrap(), c.unwrap());
    setup
        .client()
        .batch_execute("CREATE TABLE applied (v BIGINT NOT NULL)")
        .await
        .unwrap();
    drop(setup);
    let mut crashes = Crashes::new(seed);
    let deadline = Instant::now() + Duration::from_secs(60);
    'process: while Instant::now() < deadline {
        let store = PgOffsets::connect(&pg.url()).await.unwrap();
        let mut db =
            DbConsumer::new(subscribed(&client, consumer_config("g")).await, store).unwrap();
        let mut idle = 0;
        while idle < 10 && Instant::now() < deadline {
            let records = db.poll(Duration::from_millis(100)).await.unwrap();
            if records.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            let crash = crashes.pick();
            let values: Vec<i64> = records.iter().map(value).collect();
            let result = db
                .commit(&records, &mut |p| Some(p) == crash, async |tx| {
                    for v in &values {
                        tx.execute("INSERT INTO applied (v) VALUES ($1)", &[v])
                            .await?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = result {
                assert!(crashes.note(&e), "unexpected failure: {e}");
                // The process dies: its connection closes (rolling back an
                // open transaction) and its consumer leaves.
                let _ = db.close().await;
                continue 'process;
            }
        }
        let _ = db.close().await;
        break;
    }
    let check = PgOffsets::connect(&pg.url()).await.unwrap();
    let rows = check
        .client()
        .query("SELECT v, COUNT(*) FROM applied GROUP BY v ORDER BY v", &[])
        .await
        .unwrap();
    let counts: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    eprintln!("seed {seed}: crashes {:?}", crashes.crashed);
    assert_eq!(counts.len() as u64, n, "seed {seed}: lost rows");
    assert!(
        counts.iter().all(|(_, c)| *c == 1),
        "seed {seed}: duplicated rows {:?}",
        counts.iter().filter(|(_, c)| *c > 1).collect::<Vec<_>>()
    );
    assert!(
        crashes.crashed.len() == 2,
        "seed {seed}: both crash points fired: {:?}",
        crashes.crashed
    );
    for p in 0..PARTITIONS {
        assert_eq!(check.offset("g", TOPIC, p).await.unwrap(), Some(n / 2));
    }
    // The broker holds no offsets for the group: the database owns them.
    assert!(client.fetch_offsets("g", TOPIC).await.unwrap().is_empty());
}

/// The same, on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_and_offsets_survive_a_crash_at_every_commit_point() {
    let seed = ferry_testkit::seed();
    let n = 120;
    let (_broker, client) = broker_with_orders(n).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    let open = || {
        let conn = rusqlite_conn(&path);
        SqliteOffsets::new(conn).unwrap()
    };
    open()
        .connection()
        .execute_batch("CREATE TABLE applied (v INTEGER NOT NULL)")
        .unwrap();
    let mut crashes = Crashes::new(seed);
    let deadline = Instant::now() + Duration::from_secs(60);
    'process: while Instant::now() < deadline {
        let mut db =
            DbConsumer::new(subscribed(&client, consumer_config("g")).await, open()).unwrap();
        let mut idle = 0;
        while idle < 10 && Instant::now() < deadline {
            let records = db.poll(Duration::from_millis(100)).await.unwrap();
            if records.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            let crash = crashes.pick();
            let values: Vec<i64> = records.iter().map(value).collect();
            let result = db.commit(&records, &mut |p| Some(p) == crash, |tx| {
                for v in &values {
                    tx.execute("INSERT INTO applied (v) VALUES (?1)", [v])?;
                }
                Ok(())
            });
            if let Err(e) = result {
                assert!(crashes.note(&e), "unexpected failure: {e}");
                let _ = db.close().await;
                continue 'process;
            }
        }
        let _ = db.close().await;
        break;
    }
    let store = open();
    let conn = store.connection();
    let (rows, distinct): (i64, i64) = conn
        .query_row("SELECT COUNT(*), COUNT(DISTINCT v) FROM applied", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    eprintln!("seed {seed}: crashes {:?}", crashes.crashed);
    assert_eq!((rows, distinct), (n as i64, n as i64), "seed {seed}");
    assert_eq!(
        crashes.crashed.len(),
        2,
        "seed {seed}: {:?}",
        crashes.crashed
    );
    for p in 0..PARTITIONS {
        assert_eq!(store.offset("g", TOPIC, p).unwrap(), Some(n / 2));
    }
}

fn rusqlite_conn(path: &std::path::Path) -> ferry_client::sink::rusqlite::Connection {
    ferry_client::sink::rusqlite::Connection::open(path).unwrap()
}

/// A consumer that lost its partitions in a rebalance (it stopped
/// polling, and the group moved on without it) tries to commit a batch it
/// read before: fenced, nothing written. The new owner then reads on
/// from the stored offsets; every order lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_with_the_old_generation_cannot_commit() {
    let Some(pg) = postgres_server() else { return };
    let n = 40;
    let (_broker, client) = broker_with_orders(n).await;
    // Stores opened at once on a fresh database (a consumer and its relay
    // starting together) all create or find the tables.
    let url = pg.url();
    let (setup, b, c) = tokio::join!(
        PgOffsets::connect(&url),
        PgOffsets::connect(&url),
        PgOffsets::connect(&url)
    );
    let (setup, _, _) = (setup.unwrap(), b.unwrap(), c.unwrap());
    setup
        .client()
        .batch_execute("CREATE TABLE applied (v BIGINT NOT NULL)")
        .await
        .unwrap();
    let insert = async |db: &mut DbConsumer<PgOffsets>,
                        records: &[ferry_client::ConsumerRecord]| {
        let values: Vec<i64> = records.iter().map(value).collect();
        db.commit(records, &mut |_| false, async |tx| {
            for v in &values {
                tx.execute("INSERT INTO applied (v) VALUES ($1)", &[v])
                    .await?;
            }
            Ok(())
        })
        .await
    };
    // The zombie-to-be: a short poll interval, so the group drops it.
    let zombie_config = ConsumerConfig {
        max_poll_interval: Duration::from_secs(1),
        ..consumer_config("g")
    };
    let mut zombie = DbConsumer::new(
        subscribed(&client, zombie_config).await,
        PgOffsets::connect(&pg.url()).await.unwrap(),
    )
    .unwrap();
    let mut batch = Vec::new();
    while batch.is_empty() {
        batch = zombie.poll(Duration::from_millis(100)).await.unwrap();
    }
    let old = zombie.fence();
    // Commit one batch, then read another and stall with it.
    insert(&mut zombie, &batch).await.unwrap();
    let mut stale = Vec::new();
    while stale.is_empty() {
        stale = zombie.poll(Duration::from_millis(100)).await.unwrap();
    }
    let mut owner = DbConsumer::new(
        subscribed(&client, consumer_config("g")).await,
        PgOffsets::connect(&pg.url()).await.unwrap(),
    )
    .unwrap();
    // The owner joins; the zombie misses the rebalance and is dropped.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut owned = Vec::new();
    while owner.fence().generation <= old.generation || owned.len() < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "the owner never took both partitions"
        );
        let records = owner.poll(Duration::from_millis(100)).await.unwrap();
        assert!(records.is_empty() || owner.fence().generation > old.generation);
        if !records.is_empty() {
            insert(&mut owner, &records).await.unwrap();
        }
        owned = owner.consumer().positions();
    }
    let before: i64 = setup
        .client()
        .query_one("SELECT COUNT(*) FROM applied", &[])
        .await
        .unwrap()
        .get(0);
    let fenced = insert(&mut zombie, &stale).await;
    assert!(
        matches!(fenced, Err(SinkError::Fenced { generation, stored, .. }) if generation == old.generation && stored > generation),
        "{fenced:?}"
    );
    let after: i64 = setup
        .client()
        .query_one("SELECT COUNT(*) FROM applied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after, "the fenced commit wrote nothing");
    drop(zombie);
    // The owner drains the rest; every order lands once.
    let mut idle = 0;
    while idle < 10 {
        let records = owner.poll(Duration::from_millis(100)).await.unwrap();
        if records.is_empty() {
            idle += 1;
        } else {
            idle = 0;
            insert(&mut owner, &records).await.unwrap();
        }
    }
    let rows = setup
        .client()
        .query("SELECT v FROM applied GROUP BY v HAVING COUNT(*) = 1", &[])
        .await
        .unwrap();
    let total: i64 = setup
        .client()
        .query_one("SELECT COUNT(*) FROM applied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((rows.len() as u64, total as u64), (n, n));
}

/// Orders write a stock row and an outbox event in one transaction; a
/// relay publishes the outbox and is killed at random while publishing.
/// Every outbox row appears in the topic exactly once under
/// read_committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_relay_killed_at_random_publishes_each_row_once() {
    let Some(pg) = postgres_server() else { return };
    let seed = ferry_testkit::seed();
    let n = 150;
    let (_broker, client) = broker_with_orders(n).await;
    client
        .create_topic("fulfilments", PARTITIONS)
        .await
        .unwrap();
    // Fill the outbox through the database sink.
    let mut db = DbConsumer::new(
        subscribed(&client, consumer_config("g")).await,
        PgOffsets::connect(&pg.url()).await.unwrap(),
    )
    .unwrap();
    let mut idle = 0;
    while idle < 10 {
        let records = db.poll(Duration::from_millis(100)).await.unwrap();
        if records.is_empty() {
            idle += 1;
            continue;
        }
        idle = 0;
        let events: Vec<(u32, String)> = records
            .iter()
            .map(|r| (r.partition, format!("fulfil-{}", value(r))))
            .collect();
        db.commit(&records, &mut |_| false, async |tx| {
            for (p, e) in &events {
                postgres::enqueue(tx, "fulfilments", Some(*p), None, Some(e.as_bytes())).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }
    db.close().await.unwrap();
    // Relays with small batches, each killed (its task aborted
    // mid-publish) after a seeded time.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the relays never finished"
        );
        let url = pg.url();
        let relay_client = client.clone();
        let run = tokio::spawn(async move {
            let store = PgOffsets::connect(&url).await?;
            let mut config = RelayConfig::new("relay", "fulfilments");
            config.batch = 7;
            let mut relay = OutboxRelay::new(relay_client, store, config).await?;
            loop {
                if relay.step().await? == RelayStep::Idle {
                    return Ok::<_, SinkError>(relay.position());
                }
            }
        });
        let kill_after = Duration::from_millis(rng.random_range(5..120));
        tokio::time::sleep(kill_after).await;
        if run.is_finished() {
            let position = run.await.unwrap().unwrap();
            eprintln!("seed {seed}: relay finished at id {position} after {kills} kills");
            break;
        }
        run.abort();
        let _ = run.await;
        kills += 1;
    }
    assert!(kills > 0, "seed {seed}: no relay was killed mid-publish");
    // Count by value, read_committed.
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            isolation: IsolationLevel::ReadCommitted,
            start_from: StartFrom::Earliest,
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    consumer.assign_topic("fulfilments").await.unwrap();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut idle = 0;
    while idle < 5 {
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        if records.is_empty() {
            idle += 1;
        }
        for r in records {
            let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            *seen.entry(v).or_default() += 1;
        }
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dupes.is_empty(), "seed {seed}: duplicated {dupes:?}");
    assert_eq!(seen.len() as u64, n, "seed {seed}: lost events");
    let left: i64 = PgOffsets::connect(&pg.url())
        .await
        .unwrap()
        .client()
        .query_one("SELECT COUNT(*) FROM ferry_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "published rows are deleted from the outbox");
}
