//! Idempotent sinks: where a consumer's results land so that a record
//! delivered twice takes effect once.
//!
//! At-least-once delivery repeats records: a consumer that crashes after
//! writing its results but before committing its offsets reads them again,
//! and a producer retry after a lost ack can store a record twice (unless
//! the producer is idempotent). A sink that recognises what it has already
//! applied makes the repeat harmless. Each sink here does so by a different
//! key, with a different guarantee:
//!
//! | sink | recognises a repeat by | guarantee | window |
//! |---|---|---|---|
//! | [`DedupCache`] | event id, in memory | a repeat within the TTL is dropped | a repeat older than the TTL, evicted for space, or after the cache itself restarted, gets through |
//! | [`UniqueSink`] (feature `sqlite`) | event id, a `UNIQUE` key in SQLite | each event id applied once, forever | none while the database lives |
//! | [`UpsertSink`] (feature `sqlite`) | key and version | a row only moves to a higher version: late and repeated events never regress it | none; equal versions count as repeats |
//! | [`TransactionalSink`] | the broker's transaction | the output records and the consumer offsets commit together: exactly once | none inside Ferry; effects outside the broker are not covered |
//!
//! Every sink implements [`Sink`]: it takes a batch of items and says how
//! many it applied and how many it absorbed as repeats ([`Written`]).
//! Absorbed repeats are also counted in the `ferry_sink_absorbed_total`
//! counter of the [`metrics`] crate, labelled `sink`.
//!
//! The write must come before the offset commit: a crash between the two
//! repeats the batch, and that repeat is what these sinks absorb. Commit
//! first and a crash loses the batch instead, which no sink can repair.
//!
//! ```
//! use ferry_client::sink::{DedupCache, Event, Sink};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), ferry_client::sink::SinkError> {
//! // A Vec is a sink that keeps everything: put the cache in front of it.
//! let mut sink = DedupCache::new(Vec::new(), Duration::from_secs(60), 100_000);
//! let batch = [Event::new("e-1", "a"), Event::new("e-2", "b")];
//! sink.write(&batch).await?;
//! let again = sink.write(&batch).await?; // redelivered after a crash
//! assert_eq!((again.applied, again.absorbed), (0, 2));
//! assert_eq!(sink.inner().len(), 2);
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
//! ```

pub mod db;
mod dedup;
#[cfg(feature = "sqlite")]
mod sqlite;
mod transactional;

use std::future::Future;

use bytes::Bytes;

pub use dedup::{DEDUP_EVICTIONS_METRIC, DedupCache, DedupStats};
#[cfg(feature = "sqlite")]
pub use rusqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::{UniqueSink, UpsertSink};
pub use transactional::TransactionalSink;

use crate::error::ClientError;

/// Counter of repeats a sink absorbed, labelled `sink` (`dedup`, `unique`,
/// `upsert`).
pub const ABSORBED_METRIC: &str = "ferry_sink_absorbed_total";

/// Where a consumer writes its results.
///
/// `write` applies a batch and reports what it did. A sink that fails
/// must not have absorbed anything it did not apply: the caller retries
/// the batch (or crashes and gets it redelivered), and a repeat of an item
/// that never took effect must take effect then.
pub trait Sink {
    /// What the sink stores.
    type Item;

    /// Applies `items` in order.
    fn write(
        &mut self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Written, SinkError>> + Send;
}

/// What one [`Sink::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Items that took effect.
    pub applied: u64,
    /// Items recognised as repeats (or, for [`UpsertSink`], as older than
    /// the stored row) and dropped.
    pub absorbed: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.applied += other.applied;
        self.absorbed += other.absorbed;
    }
}

/// Why a sink write failed. Nothing of the failed batch counts as seen: a
/// retry applies it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The broker or the client failed (the transactional sink).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A database sink's commit found a newer generation's claim on a
    /// partition: this consumer lost it in a rebalance. Nothing was
    /// written; the consumer rejoins on its next poll.
    #[error(
        "fenced: group {group} generation {generation}, but {topic}/{partition} is claimed by generation {stored}"
    )]
    Fenced {
        /// The group.
        group: String,
        /// The partition's topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The committing member's generation.
        generation: i32,
        /// The generation that holds the partition.
        stored: i32,
    },
    /// An observer crashed the commit at this point (tests).
    #[error("crashed at {0:?}")]
    Crashed(db::DbPoint),
    /// A bad argument (a name too long, a batch size out of range).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// PostgreSQL failed; the batch's transaction rolled back.
    #[cfg(feature = "postgres")]
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// SQLite failed; the batch's SQLite transaction rolled back.
    #[cfg(feature = "sqlite")]
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// An event with a unique id, for [`DedupCache`] and [`UniqueSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unique per event: a repeat carries the same id.
    pub event_id: String,
    /// The event's data.
    pub payload: Bytes,
}

impl Event {
    /// An event.
    pub fn new(event_id: impl Into<String>, payload: impl Into<Bytes>) -> Event {
        Event {
            event_id: event_id.into(),
            payload: payload.into(),
        }
    }
}

/// Items that carry an event id, as [`DedupCache`] needs.
pub trait EventId {
    /// The id: equal for an event and its repeats, distinct otherwise.
    fn event_id(&self) -> &str;
}

impl EventId for Event {
    fn event_id(&self) -> &str {
        &self.event_id
    }
}

impl EventId for String {
    fn event_id(&self) -> &str {
        self
    }
}

/// A state change of one key, for [`UpsertSink`]: the row of `key` takes
/// `value` only if `version` is higher than the stored one (last write
/// wins, by version rather than by arrival).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The row.
    pub key: String,
    /// Orders the changes of one key, e.g. an event timestamp.
    pub version: i64,
    /// The row's new value.
    pub value: Bytes,
}

impl Versioned {
    /// A change of `key` to `value` at `version`.
    pub fn new(key: impl Into<String>, version: i64, value: impl Into<Bytes>) -> Versioned {
        Versioned {
            key: key.into(),
            version,
            value: value.into(),
        }
    }
}

/// A `Vec` keeps every item it is given, repeats included: the sink of no
/// idempotence, for tests and as the inner sink of a [`DedupCache`].
impl<T: Clone + Send + Sync> Sink for Vec<T> {
    type Item = T;

    fn write(&mut self, items: &[T]) -> impl Future<Output = Result<Written, SinkError>> + Send {
        self.extend_from_slice(items);
        std::future::ready(Ok(Written {
            applied: items.len() as u64,
            absorbed: 0,
        }))
    }
}

pub(crate) fn count_absorbed(sink: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(ABSORBED_METRIC, "sink" => sink).increment(n);
    }
}

/// The server's own message, when the error is one; tokio-postgres's
/// display says only "db error".
#[cfg(feature = "postgres")]
fn postgres_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
