//! The sinks the lab writes to: stock reservations in SQLite, with or without an idempotent guard, or in PostgreSQL; and what each sink saw.

use super::*;

/// Where an at-least-once cell applies its deliveries.
pub(super) enum AloSink {
    /// Orders, plain: every delivery inserts a reservation and takes stock.
    OrdersPlain(Connection),
    /// Orders into a [`UniqueSink`] whose insert takes the stock.
    Orders(UniqueSink),
    Views(UniqueSink),
    Trips(UpsertSink),
    /// Orders in the cell's PostgreSQL database, plain.
    OrdersPg(tokio_postgres::Client),
}

pub(super) fn orders_db(path: &std::path::Path) -> Result<Connection, SinkError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("CREATE TABLE stock (sku INTEGER PRIMARY KEY, qty INTEGER NOT NULL)")?;
    {
        let mut insert = conn.prepare("INSERT INTO stock (sku, qty) VALUES (?1, ?2)")?;
        for s in 0..SKUS {
            insert.execute(params![s as i64, STOCK])?;
        }
    }
    Ok(conn)
}

/// Reservations without a unique key, as an application without an
/// idempotent sink writes them.
pub(super) fn plain_reservations(conn: Connection) -> Result<Connection, SinkError> {
    conn.execute_batch("CREATE TABLE reservations (event_id TEXT NOT NULL, payload BLOB)")?;
    Ok(conn)
}

fn take_stock(tx: &rusqlite::Transaction<'_>, order: &Event) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE stock SET qty = qty - 1 WHERE sku = ?1",
        params![std::str::from_utf8(&order.payload).unwrap_or("0")],
    )?;
    Ok(())
}

pub(super) fn order_event(v: Value) -> Event {
    Event::new(v.to_string(), sku(v).to_string())
}

impl AloSink {
    pub(super) fn open(
        scenario: Scenario,
        mode: LabMode,
        path: &std::path::Path,
    ) -> Result<AloSink, SinkError> {
        Ok(match (scenario, mode) {
            (Scenario::Orders, LabMode::AtLeastOnce) => {
                AloSink::OrdersPlain(plain_reservations(orders_db(path)?)?)
            }
            (Scenario::Orders, _) => AloSink::Orders(
                UniqueSink::with_connection(orders_db(path)?, "reservations")?
                    .on_insert(take_stock),
            ),
            (Scenario::Views, _) => AloSink::Views(UniqueSink::open(path, "views")?),
            (Scenario::Trips, _) => AloSink::Trips(UpsertSink::open(path, "trips")?),
        })
    }

    pub(super) async fn apply(
        &mut self,
        values: &[Value],
        records: u64,
    ) -> Result<Written, SinkError> {
        match self {
            AloSink::OrdersPlain(conn) => {
                let events: Vec<Event> = values.iter().map(|v| order_event(*v)).collect();
                insert_plain(conn, &events)
            }
            AloSink::Orders(sink) => {
                let events: Vec<Event> = values.iter().map(|v| order_event(*v)).collect();
                sink.write(&events).await
            }
            AloSink::Views(sink) => {
                let events: Vec<Event> = values
                    .iter()
                    .map(|v| Event::new(v.to_string(), format!("page-{}", v % 20)))
                    .collect();
                sink.write(&events).await
            }
            AloSink::OrdersPg(db) => pg::reserve_in_transaction(db, values).await,
            AloSink::Trips(sink) => {
                let changes: Vec<Versioned> = values
                    .iter()
                    .map(|v| {
                        Versioned::new(trip(*v, records).to_string(), *v as i64, format!("at-{v}"))
                    })
                    .collect();
                sink.write(&changes).await
            }
        }
    }

    /// [`apply`](Self::apply), retried until it succeeds: the commit
    /// follows it whatever happens. Returns the repeats absorbed.
    pub(super) async fn apply_until_done(&mut self, values: &[Value], records: u64) -> u64 {
        loop {
            match self.apply(values, records).await {
                Ok(w) => return w.absorbed,
                Err(e) => {
                    tracing::warn!(%e, "sink write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// What the sink holds at the end.
    pub(super) async fn state(&self, scenario: Scenario) -> Result<SinkState, LabError> {
        let conn = match self {
            AloSink::OrdersPg(db) => return SinkState::read_pg(db).await,
            AloSink::OrdersPlain(conn) => conn,
            AloSink::Orders(s) | AloSink::Views(s) => s.connection(),
            AloSink::Trips(s) => s.connection(),
        };
        Ok(SinkState::read(scenario, conn)?)
    }
}

/// Inserts each order as a reservation and takes its stock, repeats
/// included: the double charge an at-least-once consumer without an
/// idempotent sink makes.
pub(super) fn insert_plain(conn: &mut Connection, orders: &[Event]) -> Result<Written, SinkError> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO reservations (event_id, payload) VALUES (?1, ?2)")?;
        for order in orders {
            insert.execute(params![order.event_id, &order.payload[..]])?;
            take_stock(&tx, order)?;
        }
    }
    tx.commit()?;
    Ok(Written {
        applied: orders.len() as u64,
        absorbed: 0,
    })
}

/// What the sink holds at the end.
pub(super) struct SinkState {
    pub(super) rows: u64,
    /// Effects beyond one per event.
    pub(super) duplicates: u64,
    /// Event ids with an effect (orders, views), or trip → version.
    pub(super) present: HashMap<u64, i64>,
    /// Acknowledged events without their output event (the outbox mode's
    /// fulfilment topic).
    pub(super) missing_outputs: u64,
}

impl SinkState {
    pub(super) fn read(scenario: Scenario, conn: &Connection) -> Result<SinkState, SinkError> {
        let (table, key, version) = match scenario {
            Scenario::Orders => ("reservations", "event_id", "0"),
            Scenario::Views => ("views", "event_id", "0"),
            Scenario::Trips => ("trips", "key", "version"),
        };
        let rows: i64 =
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        let mut present = HashMap::new();
        let mut stmt = conn.prepare(&format!(
            "SELECT CAST({key} AS INTEGER), MAX({version}) FROM {table} GROUP BY {key}"
        ))?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
            let (k, v) = row?;
            present.insert(k as u64, v);
        }
        if scenario == Scenario::Orders {
            let taken: i64 = conn.query_row(
                "SELECT ?1 * COUNT(*) - SUM(qty) FROM stock",
                params![STOCK],
                |r| r.get(0),
            )?;
            return Ok(SinkState::of_orders(rows as u64, present, taken));
        }
        Ok(SinkState {
            rows: rows as u64,
            duplicates: (rows as u64).saturating_sub(present.len() as u64),
            present,
            missing_outputs: 0,
        })
    }

    /// The orders' state: `rows` reservations, of the orders in
    /// `present`, and `taken` units of stock; every unit taken beyond one
    /// per order reserved is a duplicate.
    pub(super) fn of_orders(rows: u64, present: HashMap<u64, i64>, taken: i64) -> SinkState {
        SinkState {
            rows,
            duplicates: (taken.max(0) as u64).saturating_sub(present.len() as u64),
            present,
            missing_outputs: 0,
        }
    }

    /// Acknowledged events without their effect: orders and views missing
    /// their row; trips whose row is older than their latest acknowledged
    /// update.
    pub(super) fn lost(&self, scenario: Scenario, acked: &HashSet<Value>, records: u64) -> u64 {
        match scenario {
            Scenario::Orders | Scenario::Views => acked
                .iter()
                .filter(|v| !self.present.contains_key(v))
                .count() as u64,
            Scenario::Trips => {
                let mut latest: HashMap<u64, Value> = HashMap::new();
                for v in acked {
                    let e = latest.entry(trip(*v, records)).or_default();
                    *e = (*e).max(*v);
                }
                latest
                    .iter()
                    .filter(|(t, v)| self.present.get(t).is_none_or(|have| *have < **v as i64))
                    .count() as u64
            }
        }
    }
}
