//! The PostgreSQL modes of the orders scenario: a database per cell, the
//! reservations and stock written in one statement each per batch, the
//! consumer whose offsets live in the database (with or without the
//! outbox and its relay), and what the database and the fulfilment topic
//! hold at the end.

use ferry_client::sink::db::outbox::{OutboxRelay, RelayConfig, RelayStep};
use ferry_client::sink::db::postgres::enqueue_all;
use ferry_client::sink::db::tokio_postgres::{self, GenericClient, NoTls};
use ferry_client::sink::db::{DbConsumer, DbPoint, PgOffsets};
use ferry_client::{CommitMode, Consumer};
use ferry_testkit::{PostgresOptions, TempPostgres};

use super::*;

/// Connections the throwaway server takes: a cell holds at most a few
/// (consumer, relay, their replacements while the old ones close).
const MAX_CONNECTIONS: u32 = 40;

/// Rows per relay transaction: the consumer commits polls of a few
/// thousand orders, and the relay keeps up with them in batches as large.
const RELAY_BATCH: usize = 5_000;

/// Starts the lab's throwaway server, durable (fsync on, as a deployment
/// runs it); `Err` says why there is none.
pub(crate) async fn throwaway_postgres() -> Result<TempPostgres, String> {
    let options = PostgresOptions {
        durable: true,
        max_connections: MAX_CONNECTIONS,
    };
    match tokio::task::spawn_blocking(move || TempPostgres::start(&options)).await {
        Ok(Ok(Some(server))) => Ok(server),
        Ok(Ok(None)) => Err(
            "no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin, in FERRY_POSTGRES_BIN or on PATH"
                .into(),
        ),
        Ok(Err(e)) => Err(format!("the throwaway server did not start: {e}")),
        Err(e) => Err(format!("the throwaway server did not start: {e}")),
    }
}

/// A cell's own database on the lab's server, dropped at the end.
pub(super) struct CellDb {
    server: tokio_postgres::Config,
    cell: tokio_postgres::Config,
    name: String,
}

impl CellDb {
    /// Makes a database for the cell, with the stock of every SKU and an
    /// empty reservations table (no unique key: a repeat is charged).
    pub(super) async fn create(url: &str, names: &Names) -> Result<CellDb, LabError> {
        let server: tokio_postgres::Config = url.parse()?;
        // Unique per cell; PostgreSQL folds and truncates names at 63 bytes.
        let name = format!(
            "lab_{:x}",
            splitmix64(
                names
                    .group
                    .bytes()
                    .fold(0, |h, b| splitmix64(h ^ u64::from(b)))
            )
        );
        let admin = connect(&server).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut cell = server.clone();
        cell.dbname(&name);
        let db = connect(&cell).await?;
        db.batch_execute(&format!(
            "CREATE TABLE stock (sku BIGINT PRIMARY KEY, qty BIGINT NOT NULL);
             INSERT INTO stock SELECT s, {STOCK} FROM generate_series(0, {}) s;
             CREATE TABLE reservations (event_id TEXT NOT NULL, payload TEXT NOT NULL);",
            SKUS - 1
        ))
        .await?;
        Ok(CellDb { server, cell, name })
    }

    /// A new connection to the cell's database.
    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(&self.cell).await
    }

    /// Drops the database, closing what is still connected to it.
    pub(super) async fn drop_db(self) {
        match connect(&self.server).await {
            Ok(admin) => {
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                if let Err(e) = admin.batch_execute(&sql).await {
                    tracing::warn!(%e, db = %self.name, "dropping the cell's database failed");
                }
            }
            Err(e) => tracing::warn!(%e, "connecting to drop the cell's database failed"),
        }
    }
}

async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%e, "lab postgres connection ended");
        }
    });
    Ok(client)
}

/// Reserves one unit of stock per order, repeats included, in two
/// statements for the whole batch.
pub(super) async fn reserve(
    db: &impl GenericClient,
    orders: &[Value],
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<String> = orders.iter().map(|v| v.to_string()).collect();
    let skus: Vec<i64> = orders.iter().map(|v| sku(*v) as i64).collect();
    let payloads: Vec<String> = skus.iter().map(|s| s.to_string()).collect();
    db.execute(
        "INSERT INTO reservations (event_id, payload) SELECT * FROM UNNEST($1::text[], $2::text[])",
        &[&ids, &payloads],
    )
    .await?;
    db.execute(
        "UPDATE stock SET qty = stock.qty - c.n
         FROM (SELECT s AS sku, COUNT(*) AS n FROM UNNEST($1::bigint[]) s GROUP BY s) c
         WHERE stock.sku = c.sku",
        &[&skus],
    )
    .await?;
    Ok(())
}

/// The at-least-once baseline's write: one transaction per delivery,
/// committed before the consumer commits its offsets to the broker.
pub(super) async fn reserve_in_transaction(
    db: &mut tokio_postgres::Client,
    orders: &[Value],
) -> Result<Written, SinkError> {
    let tx = db.transaction().await?;
    reserve(&tx, orders).await?;
    tx.commit().await?;
    Ok(Written {
        applied: orders.len() as u64,
        absorbed: 0,
    })
}

impl SinkState {
    /// What the cell's database holds: as [`SinkState::read`] for the
    /// orders' SQLite tables.
    pub(super) async fn read_pg(db: &tokio_postgres::Client) -> Result<SinkState, LabError> {
        let rows: i64 = db
            .query_one("SELECT COUNT(*) FROM reservations", &[])
            .await?
            .get(0);
        let present = db
            .query(
                "SELECT CAST(event_id AS BIGINT) FROM reservations GROUP BY event_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, 0))
            .collect();
        let taken: i64 = db
            .query_one(
                "SELECT ($1 * COUNT(*) - SUM(qty))::BIGINT FROM stock",
                &[&STOCK],
            )
            .await?
            .get(0);
        Ok(SinkState::of_orders(rows as u64, present, taken))
    }
}

fn member_config(names: &Names) -> ConsumerConfig {
    ConsumerConfig {
        // The database owns the offsets; a restarted member comes back
        // under the same instance id and keeps its partitions.
        commit_mode: CommitMode::None,
        group_instance_id: Some(format!("{}-member", names.group)),
        ..consumer_config(&names.group, LabMode::ExactlyOncePg)
    }
}

/// A new member: a fresh connection and a fresh consumer, subscribed.
async fn member(
    client: &Client,
    names: &Names,
    db: &CellDb,
) -> Result<DbConsumer<PgOffsets>, LabError> {
    let store = PgOffsets::new(db.connect().await?).await?;
    let consumer = patiently(|| async {
        let mut c = Consumer::new(client.clone(), member_config(names)).await?;
        c.subscribe(&names.input).await?;
        Ok(c)
    })
    .await?;
    Ok(DbConsumer::new(consumer, store)?)
}

/// The fulfilment of each order, to the partition it came from, as the
/// outbox holds it: key the order id, value the encoded order.
fn fulfilments(reads: &[Read]) -> Vec<(Option<u32>, Vec<u8>, Vec<u8>)> {
    reads
        .iter()
        .map(|r| {
            (
                Some(r.tp.partition),
                r.value.to_string().into_bytes(),
                ValueGen::encode(r.value),
            )
        })
        .collect()
}

/// Consumes with the offsets in the cell's database (and, for
/// [`LabMode::OutboxRelay`], the fulfilments in its outbox, which a relay
/// publishes meanwhile). A crash on the schedule drops the member, its
/// connection and the relay, as a process dying would: alternately before
/// the database commit and after it, before the member hears.
pub(super) async fn consume_with_db_offsets(
    shared: Shared<'_>,
    mode: LabMode,
    db: &CellDb,
) -> Result<(Progress, Option<AloSink>), LabError> {
    let outbox = mode == LabMode::OutboxRelay;
    let (done, deaths) = (AtomicBool::new(false), AtomicU64::new(0));
    let consumed = consume_db(&shared, outbox, db, &deaths);
    let relayed = async {
        if outbox {
            relay(&shared, db, &done, &deaths).await
        } else {
            Ok(None)
        }
    };
    let (consumed, relayed) = tokio::join!(
        async {
            let r = consumed.await;
            done.store(true, Ordering::Release);
            r
        },
        relayed
    );
    let mut progress = consumed?;
    // The timed span ends with the last fulfilment published.
    if let Some(t) = relayed? {
        progress.last_first_delivery = progress.last_first_delivery.max(Some(t));
    }
    Ok((progress, Some(AloSink::OrdersPg(db.connect().await?))))
}

async fn consume_db(
    shared: &Shared<'_>,
    outbox: bool,
    db: &CellDb,
    deaths: &AtomicU64,
) -> Result<Progress, LabError> {
    let Shared {
        client,
        names,
        history,
        produced,
        applied,
        sent_at,
        config,
        ..
    } = *shared;
    let schedule = &shared.schedule;
    let mut progress = Progress::default();
    let mut process = history.process();
    let mut steps = 0;
    let mut member = member(client, names, db).await?;
    loop {
        let records = match member.poll(POLL).await {
            Ok(records) => records,
            Err(e) => {
                tracing::debug!(%e, "database member poll failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                if progress.finished(false, produced, config) {
                    break;
                }
                continue;
            }
        };
        if records.is_empty() {
            if progress.finished(true, produced, config) {
                break;
            }
            continue;
        }
        steps += 1;
        let reads = decode_reads(&records);
        history
            .invoke(
                process,
                OpKind::Poll,
                Some(&names.group),
                vec![Mop::Poll { reads: Vec::new() }],
            )
            .ok(vec![Mop::Poll {
                reads: reads.clone(),
            }]);
        let values: Vec<Value> = reads.iter().map(|r| r.value).collect();
        let crash_at = schedule.crashes(steps, CrashPoint::BeforeCommit).then_some(
            match progress.crashes % 2 {
                0 => DbPoint::BeforeDbCommit,
                _ => DbPoint::AfterDbCommit,
            },
        );
        let mut observer = |point: DbPoint| crash_at == Some(point);
        let events = if outbox {
            fulfilments(&reads)
        } else {
            Vec::new()
        };
        let result = member
            .commit(&records, &mut observer, async |tx| {
                reserve(tx, &values).await?;
                if !events.is_empty() {
                    let rows: Vec<_> = events
                        .iter()
                        .map(|(p, k, v)| (*p, Some(&k[..]), Some(&v[..])))
                        .collect();
                    enqueue_all(tx, &names.output, &rows).await?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => progress.effect(&values, sent_at),
            Err(SinkError::Crashed(point)) => {
                history.crashed(process, format!("{point:?}"));
                progress.crashes += 1;
                match point {
                    DbPoint::AfterDbCommit => progress.effect(&values, sent_at),
                    // Rolled back: the next member reads the batch again.
                    DbPoint::BeforeDbCommit => progress.absorbed += values.len() as u64,
                }
                drop(member);
                deaths.fetch_add(1, Ordering::AcqRel);
                process = history.process();
                member = self::member(client, names, db).await?;
            }
            Err(e) => {
                // Rolled back and rewound by the member: read again.
                tracing::debug!(%e, "database commit failed");
                progress.absorbed += values.len() as u64;
                process = history.process();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        applied.store(progress.delivered.len() as u64, Ordering::Release);
        if progress.finished(false, produced, config) {
            break;
        }
    }
    let _ = member.close().await;
    Ok(progress)
}

/// Publishes the outbox until the consumer is done and the outbox is
/// empty; starts a new relay whenever the consumer's process died (and
/// after a fatal error). Returns when it last published.
async fn relay(
    shared: &Shared<'_>,
    db: &CellDb,
    done: &AtomicBool,
    deaths: &AtomicU64,
) -> Result<Option<Instant>, LabError> {
    let (client, names) = (shared.client, shared.names);
    let mut last = None;
    let mut relay: Option<OutboxRelay<PgOffsets>> = None;
    let mut died = deaths.load(Ordering::Acquire);
    loop {
        let Some(r) = relay.as_mut() else {
            let config = RelayConfig {
                batch: RELAY_BATCH,
                ..RelayConfig::new(names.transactional_id.clone(), names.output.clone())
            };
            let store = PgOffsets::new(db.connect().await?).await?;
            match OutboxRelay::new(client.clone(), store, config).await {
                Ok(r) => relay = Some(r),
                Err(e) => {
                    tracing::debug!(%e, "outbox relay did not start");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        // Read before the step: an idle step after it saw the consumer
        // done has published everything.
        let finished = done.load(Ordering::Acquire);
        match r.step().await {
            Ok(RelayStep::Published(_)) => last = Some(Instant::now()),
            Ok(RelayStep::Idle) if finished => break,
            Ok(RelayStep::Idle) => {}
            Err(e) => {
                tracing::debug!(%e, "outbox relay step failed");
                if r.is_fatal() {
                    relay = None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let now = deaths.load(Ordering::Acquire);
        if now != died {
            // The process died: so did its relay, mid-batch or not.
            died = now;
            relay = None;
        }
    }
    if let Some(r) = relay {
        let _ = r.close().await;
    }
    Ok(last)
}

/// The fulfilment topic's damage, read committed: fulfilments published
/// more than once, and acknowledged orders without one.
pub(super) async fn fulfilment_damage(
    proxy: &FaultProxy,
    direct: &Client,
    names: &Names,
    acked: &HashSet<Value>,
) -> Result<(u64, u64), LabError> {
    let out = History::new();
    proxy.set_enabled(false);
    let reads =
        patiently(|| drain(direct, &names.output, &out, Duration::from_millis(300))).await?;
    let distinct: HashSet<Value> = reads.iter().map(|r| r.value).collect();
    let missing = acked.iter().filter(|v| !distinct.contains(v)).count() as u64;
    Ok(((reads.len() - distinct.len()) as u64, missing))
}
