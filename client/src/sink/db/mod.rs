//! Database sinks that own the consumer's offsets: the application's rows
//! and the next offset of each partition commit in one database
//! transaction, fenced by the group generation.
//!
//! Broker transactions ([`ExactlyOnce`](crate::ExactlyOnce)) make
//! topic-to-topic processing exactly-once, but a row written to a
//! database sits outside them: a crash between the database commit and
//! the offset commit repeats the row. Here the position lives in the
//! database instead, in the table `ferry_offsets`, so the row and the
//! position are one commit: either both happened or neither did, and a
//! restarted consumer reads on from exactly where the rows end.
//!
//! # The protocol
//!
//! `ferry_offsets(group_id, topic, partition, next_offset, generation)`
//! holds, per partition, the next offset to read and the group generation
//! of the member that last owned it.
//!
//! 1. **Claim.** When a [`DbConsumer`] joins a new generation, it writes
//!    that generation into the row of every partition it holds (creating
//!    the row, with no offset yet, if there is none), in one transaction
//!    that locks the rows, and seeks each partition to the stored offset.
//!    A partition whose row holds a *higher* generation is not claimed:
//!    the consumer is stale, and rejoins.
//! 2. **Commit.** Each batch is one transaction: lock the rows of the
//!    batch's partitions and check that none holds a higher generation
//!    than the consumer's; run the application's writes; store each
//!    partition's next offset with the generation; commit. A higher
//!    generation fails the commit with [`SinkError::Fenced`] before the
//!    application writes anything, and rolls everything back.
//!
//! The row lock orders a stale member's commit and the new owner's claim:
//! the commit lands before the claim (and the claim reads its offset: no
//! repeat) or after it (and is fenced: no double write). A crash at any
//! point leaves the database at a batch boundary; the next owner reads on
//! from it.
//!
//! The generation is the group coordinator's, which the broker keeps
//! across restarts and only raises; a consumer of a group deleted and made
//! again would start from a lower generation and be fenced by the rows of
//! the old one, so delete those rows with the group.
//!
//! Two backends: [`PgOffsets`] (feature `postgres`, on tokio-postgres)
//! and [`SqliteOffsets`] (feature `sqlite`). The [`outbox`] publishes
//! output events written in the same transaction.

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub mod outbox;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use ferry_proto::ErrorCode;

use super::SinkError;
use crate::consumer::{Consumer, ConsumerRecord};
use crate::error::ClientError;

#[cfg(feature = "postgres")]
pub use postgres::PgOffsets;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteOffsets;
#[cfg(feature = "postgres")]
pub use tokio_postgres;

/// The longest group, topic or transactional name the tables take.
pub const MAX_DB_NAME_BYTES: usize = 249;

/// Who commits: the group and the member's generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The consumer group.
    pub group: String,
    /// The generation the member holds.
    pub generation: i32,
}

/// One batch's commit: the fence and the next offset of each partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommit {
    /// Who commits.
    pub fence: Fence,
    /// (topic, partition, next offset), in order.
    pub offsets: Vec<(String, u32, u64)>,
}

impl OffsetCommit {
    /// The commit of `records`: one past the last offset of each partition.
    pub fn of(fence: Fence, records: &[ConsumerRecord]) -> OffsetCommit {
        let mut next: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for r in records {
            let e = next.entry((r.topic.to_string(), r.partition)).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        OffsetCommit {
            fence,
            offsets: next.into_iter().map(|((t, p), o)| (t, p, o)).collect(),
        }
    }
}

/// The fencing decision of one row: `Ok` if a member of `generation` may
/// write a row that holds `stored`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn check_fence(
    fence: &Fence,
    topic: &str,
    partition: u32,
    stored: Option<i32>,
) -> Result<(), SinkError> {
    match stored {
        Some(stored) if stored > fence.generation => Err(SinkError::Fenced {
            group: fence.group.clone(),
            topic: topic.to_owned(),
            partition,
            generation: fence.generation,
            stored,
        }),
        _ => Ok(()),
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn check_names(fence: &Fence, topics: &[&str]) -> Result<(), SinkError> {
    for name in std::iter::once(fence.group.as_str()).chain(topics.iter().copied()) {
        if name.is_empty() || name.len() > MAX_DB_NAME_BYTES {
            return Err(SinkError::Invalid(format!(
                "name {name:?}: 1 to {MAX_DB_NAME_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// Where a [`DbConsumer`] keeps its offsets: a backend's claim.
pub trait OffsetStore {
    /// Claims `partitions` for `fence`'s generation (see the
    /// [module docs](self)) and returns each one's stored next offset
    /// (`None`: nothing committed yet).
    fn claim(
        &mut self,
        fence: &Fence,
        partitions: &[(String, u32)],
    ) -> impl Future<Output = Result<Vec<Option<u64>>, SinkError>> + Send;
}

/// Where a commit of a [`DbConsumer`] stands, for an observer that
/// crashes it there (the tests' failpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbPoint {
    /// The writes and offsets are in the open database transaction, not
    /// committed.
    BeforeDbCommit,
    /// The database committed; the application has not heard.
    AfterDbCommit,
}

/// A group consumer whose offsets live in a database: seeks to the
/// stored positions on every new generation, and commits each batch with
/// its rows through the backend (`commit` on [`PgOffsets`] and
/// [`SqliteOffsets`]).
///
/// It never commits offsets to the broker: give it a consumer with
/// `CommitMode::None` and a group, subscribed to its topics.
pub struct DbConsumer<S> {
    consumer: Consumer,
    store: S,
    /// The generation whose claim holds (`-1`: none yet).
    claimed: i32,
    group: String,
}

impl<S: std::fmt::Debug> std::fmt::Debug for DbConsumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConsumer")
            .field("group", &self.group)
            .field("claimed", &self.claimed)
            .field("store", &self.store)
            .finish()
    }
}

impl<S: OffsetStore> DbConsumer<S> {
    /// Wraps a subscribed group consumer (`poll` refuses one whose
    /// partitions were assigned by hand: they have no generation).
    pub fn new(consumer: Consumer, store: S) -> Result<DbConsumer<S>, SinkError> {
        let Some(group) = consumer.config().group.clone() else {
            return Err(SinkError::Invalid(
                "a database sink fences by the group generation: the consumer needs a group".into(),
            ));
        };
        if consumer.config().commit_mode != crate::CommitMode::None {
            return Err(SinkError::Invalid(
                "the database owns the offsets: use CommitMode::None".into(),
            ));
        }
        Ok(DbConsumer {
            consumer,
            store,
            claimed: -1,
            group,
        })
    }

    /// Polls the consumer. A poll that joined a new generation claims the
    /// partitions and seeks them to the stored offsets, and returns no
    /// records; so does a poll that finds a rebalance pending. Records
    /// such a poll fetched are read again (from the stored offset, or,
    /// for a partition with none yet, from where they began), never
    /// skipped.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, SinkError> {
        let records = self.consumer.poll(timeout).await?;
        let Some(meta) = self.consumer.group_metadata() else {
            // Assigned by hand: no generation to fence with, so no claim.
            return Err(SinkError::Invalid(
                "a database sink needs a subscribed consumer: assigned partitions have no generation to fence with"
                    .into(),
            ));
        };
        if meta.generation == self.claimed && self.consumer.joined() {
            return Ok(records);
        }
        // Whatever this poll fetched is not handed out: read it again.
        self.seek_back(&records);
        if !self.consumer.joined() || meta.generation < 0 {
            return Ok(Vec::new());
        }
        let partitions: Vec<(String, u32)> = self
            .consumer
            .positions()
            .into_iter()
            .map(|(t, p, _)| (t, p))
            .collect();
        let fence = Fence {
            group: self.group.clone(),
            generation: meta.generation,
        };
        match self.store.claim(&fence, &partitions).await {
            Ok(stored) => {
                for ((topic, partition), offset) in partitions.iter().zip(stored) {
                    if let Some(offset) = offset {
                        self.consumer.seek(topic, *partition, offset);
                    }
                }
                self.claimed = meta.generation;
                tracing::debug!(group = %self.group, generation = meta.generation, partitions = partitions.len(), "claimed");
                Ok(Vec::new())
            }
            Err(e) => {
                self.stale(&e);
                Err(e)
            }
        }
    }

    /// The fence of the current claim.
    pub fn fence(&self) -> Fence {
        Fence {
            group: self.group.clone(),
            generation: self.claimed,
        }
    }

    /// The consumer.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The backend.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Leaves the group.
    pub async fn close(self) -> Result<(), ClientError> {
        self.consumer.close().await
    }

    /// After a failed commit of `records`: nothing of them applied, so
    /// each partition goes back to the batch's first offset; a fenced
    /// member also rejoins on its next poll.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    fn rewind(&mut self, records: &[ConsumerRecord], error: &SinkError) {
        self.seek_back(records);
        self.stale(error);
    }

    /// Seeks each partition of `records` back to their first offset, so
    /// the next poll reads them again.
    fn seek_back(&mut self, records: &[ConsumerRecord]) {
        let mut first: BTreeMap<(&str, u32), u64> = BTreeMap::new();
        for r in records {
            let e = first.entry((&r.topic, r.partition)).or_insert(r.offset);
            *e = (*e).min(r.offset);
        }
        for ((topic, partition), offset) in first {
            self.consumer.seek(topic, partition, offset);
        }
    }

    fn stale(&mut self, error: &SinkError) {
        if let SinkError::Fenced { .. } = error {
            self.claimed = -1;
            self.consumer.note_commit_error(&ClientError::Broker {
                code: ErrorCode::IllegalGeneration,
                message: error.to_string(),
            });
        }
    }
}

/// An observer of [`DbConsumer`] commits: `true` at a point crashes the
/// commit there ([`SinkError::Crashed`]), as a process dying would.
pub trait DbObserver: Send {
    /// Called at each point of a commit.
    fn at(&mut self, point: DbPoint) -> bool;
}

impl DbObserver for () {
    fn at(&mut self, _: DbPoint) -> bool {
        false
    }
}

impl<F: FnMut(DbPoint) -> bool + Send> DbObserver for F {
    fn at(&mut self, point: DbPoint) -> bool {
        self(point)
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn crashed(point: DbPoint) -> SinkError {
    SinkError::Crashed(point)
}
