//! The SQLite sinks: [`UniqueSink`] (one row per event id) and
//! [`UpsertSink`] (one row per key, at its highest version).
//!
//! Each [`Sink::write`] is one SQLite transaction: the whole batch applies
//! or none of it does. A database opened by path is put in WAL mode; the
//! synchronous setting stays SQLite's default (`FULL`), so a committed
//! write survives a power cut. Pass your own [`Connection`] to choose
//! otherwise.

use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{Event, Sink, SinkError, Versioned, Written, count_absorbed};

/// Opens (creating) a database file in WAL mode.
fn open(path: &Path) -> Result<Connection, SinkError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(conn)
}

/// Refuses table names that would need quoting, so they can go into SQL.
fn check_table(table: &str) -> Result<(), SinkError> {
    let mut chars = table.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SinkError::Sqlite(rusqlite::Error::InvalidParameterName(
            format!("table name {table:?}: use letters, digits and '_'"),
        )))
    }
}

fn count_rows(conn: &Connection, table: &str) -> Result<u64, SinkError> {
    let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    Ok(n as u64)
}

/// An effect applied with the first insert of an event, in the same SQLite
/// transaction.
type OnInsert = Box<dyn FnMut(&Transaction<'_>, &Event) -> rusqlite::Result<()> + Send>;

/// One row per event id: `INSERT ... ON CONFLICT(event_id) DO NOTHING`.
/// A repeat is silently ignored and counted as absorbed.
///
/// The table is `{table}(event_id TEXT PRIMARY KEY, payload BLOB)`.
/// [`on_insert`](UniqueSink::on_insert) adds an effect (reserve stock,
/// charge a card) that runs only when the event's row was new, in the same
/// SQLite transaction: the effect happens once per event id, with no window.
///
/// ```
/// use ferry_client::sink::{Event, Sink, UniqueSink};
///
/// # async fn demo() -> Result<(), ferry_client::sink::SinkError> {
/// let mut views = UniqueSink::in_memory("views")?;
/// let batch = [Event::new("v-1", "home"), Event::new("v-2", "cart")];
/// views.write(&batch).await?;
/// let again = views.write(&batch[..1]).await?; // redelivered
/// assert_eq!((again.applied, again.absorbed), (0, 1));
/// assert_eq!(views.rows()?, 2);
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub struct UniqueSink {
    conn: Connection,
    insert: String,
    table: String,
    on_insert: Option<OnInsert>,
    absorbed: u64,
}

impl std::fmt::Debug for UniqueSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UniqueSink")
            .field("table", &self.table)
            .field("absorbed", &self.absorbed)
            .finish()
    }
}

impl UniqueSink {
    /// Opens (creating) the database at `path` and the table in it.
    pub fn open(path: impl AsRef<Path>, table: &str) -> Result<UniqueSink, SinkError> {
        UniqueSink::with_connection(open(path.as_ref())?, table)
    }

    /// A sink on a fresh in-memory database.
    pub fn in_memory(table: &str) -> Result<UniqueSink, SinkError> {
        UniqueSink::with_connection(Connection::open_in_memory()?, table)
    }

    /// A sink on `conn`, creating the table if needed.
    pub fn with_connection(conn: Connection, table: &str) -> Result<UniqueSink, SinkError> {
        check_table(table)?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (event_id TEXT PRIMARY KEY, payload BLOB)"
        ))?;
        Ok(UniqueSink {
            conn,
            insert: format!(
                "INSERT INTO {table} (event_id, payload) VALUES (?1, ?2) \
                 ON CONFLICT(event_id) DO NOTHING"
            ),
            table: table.to_owned(),
            on_insert: None,
            absorbed: 0,
        })
    }

    /// Runs `effect` for each event whose row is new, inside the batch's
    /// SQLite transaction; an error rolls the whole batch back.
    pub fn on_insert<F>(mut self, effect: F) -> UniqueSink
    where
        F: FnMut(&Transaction<'_>, &Event) -> rusqlite::Result<()> + Send + 'static,
    {
        self.on_insert = Some(Box::new(effect));
        self
    }

    /// The connection, for queries.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Rows in the table.
    pub fn rows(&self) -> Result<u64, SinkError> {
        count_rows(&self.conn, &self.table)
    }

    /// Repeats ignored so far.
    pub fn absorbed(&self) -> u64 {
        self.absorbed
    }

    fn write_batch(&mut self, items: &[Event]) -> Result<Written, SinkError> {
        let tx = self.conn.transaction()?;
        let mut written = Written::default();
        {
            let mut insert = tx.prepare_cached(&self.insert)?;
            for event in items {
                if insert.execute(params![event.event_id, &event.payload[..]])? == 1 {
                    written.applied += 1;
                    if let Some(effect) = self.on_insert.as_mut() {
                        effect(&tx, event)?;
                    }
                } else {
                    written.absorbed += 1;
                }
            }
        }
        tx.commit()?;
        self.absorbed += written.absorbed;
        count_absorbed("unique", written.absorbed);
        Ok(written)
    }
}

impl Sink for UniqueSink {
    type Item = Event;

    fn write(
        &mut self,
        items: &[Event],
    ) -> impl Future<Output = Result<Written, SinkError>> + Send {
        std::future::ready(self.write_batch(items))
    }
}

/// One row per key at its highest version, last write wins:
/// `INSERT ... ON CONFLICT(key) DO UPDATE SET ... WHERE excluded.version >
/// version`. A late event (lower version) or a repeat (equal version)
/// changes nothing and counts as absorbed, so a row never regresses.
///
/// The table is `{table}(key TEXT PRIMARY KEY, version INTEGER NOT NULL,
/// value BLOB)`.
///
/// ```
/// use ferry_client::sink::{Sink, UpsertSink, Versioned};
///
/// # async fn demo() -> Result<(), ferry_client::sink::SinkError> {
/// let mut trips = UpsertSink::in_memory("trips")?;
/// trips.write(&[Versioned::new("trip-7", 1_000, "pickup"), Versioned::new("trip-7", 2_000, "dropoff")]).await?;
/// let late = trips.write(&[Versioned::new("trip-7", 1_000, "pickup")]).await?; // redelivered
/// assert_eq!(late.absorbed, 1);
/// assert_eq!(trips.get("trip-7")?, Some((2_000, "dropoff".into())));
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub struct UpsertSink {
    conn: Connection,
    upsert: String,
    table: String,
    absorbed: u64,
}

impl std::fmt::Debug for UpsertSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpsertSink")
            .field("table", &self.table)
            .field("absorbed", &self.absorbed)
            .finish()
    }
}

impl UpsertSink {
    /// Opens (creating) the database at `path` and the table in it.
    pub fn open(path: impl AsRef<Path>, table: &str) -> Result<UpsertSink, SinkError> {
        UpsertSink::with_connection(open(path.as_ref())?, table)
    }

    /// A sink on a fresh in-memory database.
    pub fn in_memory(table: &str) -> Result<UpsertSink, SinkError> {
        UpsertSink::with_connection(Connection::open_in_memory()?, table)
    }

    /// A sink on `conn`, creating the table if needed.
    pub fn with_connection(conn: Connection, table: &str) -> Result<UpsertSink, SinkError> {
        check_table(table)?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} \
             (key TEXT PRIMARY KEY, version INTEGER NOT NULL, value BLOB)"
        ))?;
        Ok(UpsertSink {
            conn,
            upsert: format!(
                "INSERT INTO {table} (key, version, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(key) DO UPDATE SET version = excluded.version, value = excluded.value \
                 WHERE excluded.version > {table}.version"
            ),
            table: table.to_owned(),
            absorbed: 0,
        })
    }

    /// The connection, for queries.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Rows in the table.
    pub fn rows(&self) -> Result<u64, SinkError> {
        count_rows(&self.conn, &self.table)
    }

    /// The version and value stored for `key`.
    pub fn get(&self, key: &str) -> Result<Option<(i64, Bytes)>, SinkError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT version, value FROM {} WHERE key = ?1", self.table),
                [key],
                |r| Ok((r.get::<_, i64>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?))),
            )
            .optional()?)
    }

    /// Late or repeated changes ignored so far.
    pub fn absorbed(&self) -> u64 {
        self.absorbed
    }

    fn write_batch(&mut self, items: &[Versioned]) -> Result<Written, SinkError> {
        let tx = self.conn.transaction()?;
        let mut written = Written::default();
        {
            let mut upsert = tx.prepare_cached(&self.upsert)?;
            for change in items {
                if upsert.execute(params![change.key, change.version, &change.value[..]])? == 1 {
                    written.applied += 1;
                } else {
                    written.absorbed += 1;
                }
            }
        }
        tx.commit()?;
        self.absorbed += written.absorbed;
        count_absorbed("upsert", written.absorbed);
        Ok(written)
    }
}

impl Sink for UpsertSink {
    type Item = Versioned;

    fn write(
        &mut self,
        items: &[Versioned],
    ) -> impl Future<Output = Result<Written, SinkError>> + Send {
        std::future::ready(self.write_batch(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unique_sink_ignores_and_counts_repeats_across_batches_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.db");
        let mut sink = UniqueSink::open(&path, "events").unwrap();
        let w = sink
            .write(&[
                Event::new("a", "1"),
                Event::new("b", "2"),
                Event::new("a", "1"),
            ])
            .await
            .unwrap();
        assert_eq!((w.applied, w.absorbed), (2, 1));
        drop(sink);
        // The ids outlive the process: a repeat after a restart is absorbed.
        let mut sink = UniqueSink::open(&path, "events").unwrap();
        let w = sink
            .write(&[Event::new("b", "2"), Event::new("c", "3")])
            .await
            .unwrap();
        assert_eq!((w.applied, w.absorbed), (1, 1));
        assert_eq!(sink.rows().unwrap(), 3);
        assert_eq!(sink.absorbed(), 1);
    }

    #[tokio::test]
    async fn the_insert_effect_runs_once_per_event_and_rolls_back_with_the_batch() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER); INSERT INTO stock VALUES ('x', 10);")
            .unwrap();
        let mut sink = UniqueSink::with_connection(conn, "orders")
            .unwrap()
            .on_insert(|tx, event| {
                if &event.payload[..] == b"boom" {
                    return Err(rusqlite::Error::InvalidQuery);
                }
                tx.execute("UPDATE stock SET qty = qty - 1 WHERE sku = 'x'", [])?;
                Ok(())
            });
        let qty = |s: &UniqueSink| -> i64 {
            s.connection()
                .query_row("SELECT qty FROM stock", [], |r| r.get(0))
                .unwrap()
        };
        sink.write(&[Event::new("o1", "ok"), Event::new("o1", "ok")])
            .await
            .unwrap();
        assert_eq!(qty(&sink), 9);
        // A failing effect rolls back its whole batch, "o2" included...
        let err = sink
            .write(&[Event::new("o2", "ok"), Event::new("o3", "boom")])
            .await;
        assert!(matches!(err, Err(SinkError::Sqlite(_))), "{err:?}");
        assert_eq!((qty(&sink), sink.rows().unwrap()), (9, 1));
        // ...so its retry applies it rather than absorbing it.
        let w = sink.write(&[Event::new("o2", "ok")]).await.unwrap();
        assert_eq!((w.applied, w.absorbed), (1, 0));
        assert_eq!(qty(&sink), 8);
    }

    #[tokio::test]
    async fn upserts_never_regress_a_row_on_late_or_repeated_changes() {
        let mut sink = UpsertSink::in_memory("trips").unwrap();
        let w = sink
            .write(&[
                Versioned::new("t1", 10, "a"),
                Versioned::new("t1", 30, "c"),
                Versioned::new("t1", 20, "b"), // late
                Versioned::new("t2", 5, "x"),
                Versioned::new("t2", 5, "x"), // repeat
            ])
            .await
            .unwrap();
        assert_eq!((w.applied, w.absorbed), (3, 2));
        assert_eq!(sink.get("t1").unwrap(), Some((30, Bytes::from("c"))));
        assert_eq!(sink.get("t2").unwrap(), Some((5, Bytes::from("x"))));
        // A replay of everything from the start changes nothing.
        let w = sink
            .write(&[Versioned::new("t1", 10, "a"), Versioned::new("t2", 5, "x")])
            .await
            .unwrap();
        assert_eq!((w.applied, w.absorbed), (0, 2));
        let w = sink.write(&[Versioned::new("t2", 6, "y")]).await.unwrap();
        assert_eq!(w.applied, 1);
        assert_eq!(sink.get("t2").unwrap(), Some((6, Bytes::from("y"))));
        assert_eq!(sink.get("t3").unwrap(), None);
        assert_eq!(sink.rows().unwrap(), 2);
        assert_eq!(sink.absorbed(), 4);
    }

    #[test]
    fn table_names_that_need_quoting_are_refused() {
        assert!(UniqueSink::in_memory("ok_name1").is_ok());
        for bad in ["", "1abc", "a b", "x; DROP TABLE y"] {
            assert!(UniqueSink::in_memory(bad).is_err(), "{bad:?}");
            assert!(UpsertSink::in_memory(bad).is_err(), "{bad:?}");
        }
    }
}
