//! [`Consumer`]: long-polling fetches, positions and offset commits.
//!
//! # Delivery guarantees
//!
//! - [`CommitMode::Before`] commits the new positions *before* `poll`
//!   returns the records: a crash while processing loses them, never
//!   repeats them (at-most-once).
//! - [`CommitMode::After`]: the application calls [`Consumer::commit`]
//!   after processing: a crash before the commit repeats the records,
//!   never loses them (at-least-once).
//! - [`CommitMode::None`]: nothing is committed.
//!
//! A committed offset is the next offset to read (the position), as in
//! Kafka.
//!
//! # Isolation
//!
//! - [`IsolationLevel::ReadCommitted`] (the default): fetches stop at the
//!   last stable offset, so records of open transactions are not returned
//!   yet, and records of aborted transactions are dropped here, using the
//!   aborted-transaction ranges the broker sends with each fetch.
//! - [`IsolationLevel::ReadUncommitted`]: everything up to the high
//!   watermark, aborted records included.
//!
//! Under both, control batches (transaction markers) are never returned,
//! but positions move past them.
//!
//! # Groups
//!
//! With a [`ConsumerConfig::group`], [`Consumer::subscribe`] makes the
//! consumer a member of the group: the coordinator and the group's leader
//! split the subscribed topics' partitions between the members, and move
//! them when a member joins, leaves, stops heartbeating for its session
//! timeout or stops polling for its maximum poll interval. Heartbeats run
//! on a task of their own, so a slow handler does not cost the membership.
//! Everything that changes the assignment happens inside `poll`:
//!
//! - a poll that takes part in a rebalance returns no records; its
//!   [`poll_events`](Consumer::poll_events) report what changed, as
//!   [`ConsumerEvent::Assigned`], [`ConsumerEvent::Revoked`] and
//!   [`ConsumerEvent::Lost`] (the rebalance callbacks);
//! - revoked partitions are not handed to their next owner before the next
//!   `poll`: an application that stores offsets itself stores the
//!   positions the `Revoked` event carries first. Under
//!   [`CommitMode::After`] the consumer commits them itself before it
//!   revokes, since calling `poll` says the records it returned before were
//!   processed;
//! - lost partitions (the member was dropped from the group) may have a new
//!   owner already; nothing of them can be committed any more;
//! - every commit carries the member's generation and id, and the
//!   coordinator refuses it once they are stale, so a consumer that lost
//!   its partitions cannot commit over their new owner.
//!
//! [`Consumer::assign`] and [`Consumer::assign_topic`] are the manual mode:
//! no membership, and commits that the coordinator only accepts while the
//! group has no members. [`Consumer::close`] leaves the group, so that the
//! others take its partitions at once; a consumer dropped without it is
//! noticed after its session timeout, as a crashed one would be.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::ErrorCode;
use ferry_proto::batch::DecodedBatchIter;
use ferry_proto::v1;

use crate::client::{Client, OffsetSpec};
use crate::error::{ClientError, check};
use crate::group::{DEFAULT_ASSIGNORS, assignors};

mod decode;
mod membership;
mod rebalance;

use decode::{AbortedFilter, decode_into};
pub use membership::GroupMetadata;
use membership::{Membership, Phase};
use rebalance::GroupState;

/// Extra time a fetch RPC gets beyond its long-poll wait before the client
/// gives up on it.
const FETCH_GRACE: Duration = Duration::from_secs(30);

/// When the consumer commits offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Never.
    None,
    /// Before `poll` returns the records (at-most-once).
    Before,
    /// When the application calls [`Consumer::commit`] (at-least-once).
    After,
}

/// Which records a fetch may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsolationLevel {
    /// Everything up to the high watermark.
    ReadUncommitted,
    /// Only up to the last stable offset; no records of open or aborted
    /// transactions.
    ReadCommitted,
}

/// Where a newly assigned partition starts.
///
/// For a partition the group assigned to a subscribed member, the group's
/// committed offset always wins (partitions moving between members resume
/// where the last owner committed, as Kafka's `auto.offset.reset` works);
/// `Earliest`, `Latest` and `Timestamp` then only say where a partition
/// with no committed offset starts. For a manual assignment they apply as
/// they say.
///
/// Parsed from `earliest`, `latest`, `committed`, a number of milliseconds
/// since the Unix epoch, or an RFC 3339 time (`2026-12-04T10:00:00Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The log start offset.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    /// The group's committed offset, or the earliest offset when the group
    /// committed none for the partition (or there is no group).
    Committed,
    /// The first record at or after this many milliseconds since the
    /// Unix epoch (Kafka's `offsetsForTimes`), or the high
    /// watermark if there is none. A position that later falls out of the
    /// log resets to the earliest offset.
    Timestamp(i64),
}

impl FromStr for StartFrom {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<StartFrom, ClientError> {
        match s {
            "earliest" => return Ok(StartFrom::Earliest),
            "latest" => return Ok(StartFrom::Latest),
            "committed" => return Ok(StartFrom::Committed),
            _ => {}
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(StartFrom::Timestamp).map_err(|_| {
                ClientError::InvalidArgument(format!("timestamp {s:?} is out of range"))
            });
        }
        let time = humantime::parse_rfc3339_weak(s).map_err(|_| {
            ClientError::InvalidArgument(format!(
                "unknown start position {s:?}: expected earliest, latest, committed, \
                 milliseconds since the epoch, or an RFC 3339 time such as 2026-12-04T10:00:00Z"
            ))
        })?;
        let ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!("time {s:?} is before the Unix epoch"))
            })?;
        Ok(StartFrom::Timestamp(ms))
    }
}

impl std::fmt::Display for StartFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::Latest => f.write_str("latest"),
            StartFrom::Committed => f.write_str("committed"),
            StartFrom::Timestamp(ms) => write!(f, "{ms}"),
        }
    }
}

macro_rules! string_enum {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl FromStr for $ty {
            type Err = ClientError;

            fn from_str(s: &str) -> Result<$ty, ClientError> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(ClientError::InvalidArgument(format!(
                        concat!("unknown ", $what, " {:?}: expected one of ", string_enum!(@list $($name),+)),
                        other
                    ))),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $name,)+
                })
            }
        }
    };
    (@list $first:literal $(, $rest:literal)*) => {
        concat!($first $(, ", ", $rest)*)
    };
}

string_enum!(CommitMode, "commit mode", None => "none", Before => "before", After => "after");
string_enum!(
    IsolationLevel,
    "isolation level",
    ReadUncommitted => "read-uncommitted",
    ReadCommitted => "read-committed",
);

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Consumer group whose offsets are committed and read. Required by
    /// `CommitMode::Before` and `After`.
    pub group: Option<String>,
    /// When to commit. Default [`CommitMode::None`].
    pub commit_mode: CommitMode,
    /// Default [`IsolationLevel::ReadCommitted`].
    pub isolation: IsolationLevel,
    /// Default [`StartFrom::Committed`].
    pub start_from: StartFrom,
    /// Cap on one fetch response. Default 8 MiB.
    pub fetch_max_bytes: u32,
    /// Cap per partition in one fetch. Default 1 MiB.
    pub partition_max_bytes: u32,
    /// Longest long-poll wait of one fetch. Default 500 ms.
    pub max_wait: Duration,
    /// Group membership: the assignors offered, most preferred first, by
    /// name (Kafka's `partition.assignment.strategy`). Default
    /// [`DEFAULT_ASSIGNORS`].
    pub assignors: Vec<String>,
    /// Static membership (KIP-345, Kafka's `group.instance.id`): a member
    /// that comes back with the same id within its session timeout keeps
    /// its partitions with no rebalance. Default `None` (dynamic).
    pub group_instance_id: Option<String>,
    /// How long the coordinator keeps a member that stopped heartbeating.
    /// Default 10 s; the broker bounds it.
    pub session_timeout: Duration,
    /// Pause between heartbeats; below the session timeout. Default 3 s.
    pub heartbeat_interval: Duration,
    /// Longest the application may go between polls before the consumer
    /// leaves the group; also how long a rebalance waits for the members
    /// to join again. Default 5 min.
    pub max_poll_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig {
            group: None,
            commit_mode: CommitMode::None,
            isolation: IsolationLevel::ReadCommitted,
            start_from: StartFrom::Committed,
            fetch_max_bytes: 8 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(500),
            assignors: DEFAULT_ASSIGNORS.iter().map(|&a| a.to_owned()).collect(),
            group_instance_id: None,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            max_poll_interval: Duration::from_secs(300),
        }
    }
}

/// One record as read from the broker. Key, value and headers are
/// zero-copy slices of the fetch response.
#[derive(Clone, Debug)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, as the producer stamped it.
    pub timestamp: i64,
    /// Key, or `None` for a null key.
    pub key: Option<Bytes>,
    /// Value, or `None` for a null value.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

struct Assignment {
    topic: Arc<str>,
    partition: u32,
    position: u64,
    /// The partition's end as of the last fetch that answered for it: its
    /// last stable offset under read_committed, its high watermark under
    /// read_uncommitted. `None` until a fetch answered.
    end: Option<u64>,
    /// A [`ConsumerEvent::PartitionEof`] was handed out for the current
    /// stretch at the end; cleared when the partition has more to read.
    eof_reported: bool,
}

impl Assignment {
    fn at_end(&self) -> bool {
        self.end.is_some_and(|end| self.position >= end)
    }
}

/// What [`Consumer::poll_events`] hands out.
#[derive(Clone, Debug)]
pub enum ConsumerEvent {
    /// A record, as [`Consumer::poll`] returns it.
    Record(ConsumerRecord),
    /// The consumer's position in a partition reached the partition's end
    /// (its last stable offset under read_committed, its high watermark
    /// under read_uncommitted) as of the fetch that answered: there is
    /// nothing more to read there right now. Reported once each time the
    /// partition is caught up, after the records that got it there (as
    /// librdkafka's `enable.partition.eof` does).
    PartitionEof {
        topic: Arc<str>,
        partition: u32,
        /// The position, which equals the end it reached.
        offset: u64,
    },
    /// The group gave these partitions to this consumer; their positions
    /// are resolved (from the committed offsets, under
    /// [`StartFrom::Committed`]) and the next poll fetches them.
    Assigned {
        /// (topic, partition), in order.
        partitions: Vec<(String, u32)>,
    },
    /// These partitions were taken away in a rebalance, with the positions
    /// they had (committed first under [`CommitMode::After`]). They go to
    /// their next owner only after the next poll.
    Revoked {
        /// (topic, partition, position), in order.
        partitions: Vec<(String, u32, u64)>,
    },
    /// The consumer was dropped from the group (its session expired, its
    /// generation went stale, or it stopped polling for too long), and
    /// with it these partitions, which may have another owner already.
    /// The next poll joins again.
    Lost {
        /// (topic, partition), in order.
        partitions: Vec<(String, u32)>,
    },
}

/// Reads records from assigned partitions.
///
/// ```no_run
/// use std::time::Duration;
/// use ferry_client::{Client, CommitMode, Consumer, ConsumerConfig};
///
/// # async fn demo() -> Result<(), ferry_client::ClientError> {
/// let client = Client::connect("127.0.0.1:7400").await?;
/// let config = ConsumerConfig {
///     group: Some("billing".into()),
///     commit_mode: CommitMode::After,
///     ..ConsumerConfig::default()
/// };
/// let mut consumer = Consumer::new(client, config).await?;
/// consumer.subscribe("orders").await?;
/// loop {
///     let records = consumer.poll(Duration::from_secs(1)).await?;
///     for r in &records {
///         println!("{}/{}@{}: {:?}", r.topic, r.partition, r.offset, r.value);
///     }
///     if !records.is_empty() {
///         consumer.commit().await?; // at-least-once: after processing
///     }
/// }
/// # }
/// ```
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    assignments: Vec<Assignment>,
    group: Option<GroupState>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("addr", &self.client.addr())
            .field("config", &self.config)
            .field(
                "positions",
                &self
                    .assignments
                    .iter()
                    .map(|a| (&*a.topic, a.partition, a.position))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Consumer {
    /// Creates a consumer with no assignment. Committing modes need a group.
    pub async fn new(client: Client, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        if config.commit_mode != CommitMode::None && config.group.is_none() {
            return Err(ClientError::InvalidArgument(format!(
                "commit mode {} needs a consumer group",
                config.commit_mode
            )));
        }
        if config.group.as_deref() == Some("") {
            return Err(ClientError::InvalidArgument(
                "the consumer group name is empty".into(),
            ));
        }
        if config.group_instance_id.as_deref() == Some("") {
            return Err(ClientError::InvalidArgument(
                "the group instance id is empty".into(),
            ));
        }
        if config.heartbeat_interval.is_zero()
            || config.heartbeat_interval >= config.session_timeout
        {
            return Err(ClientError::InvalidArgument(format!(
                "the heartbeat interval ({} ms) must be positive and below the session timeout ({} ms)",
                config.heartbeat_interval.as_millis(),
                config.session_timeout.as_millis()
            )));
        }
        if config.assignors.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a group consumer needs at least one assignor".into(),
            ));
        }
        assignors(&config.assignors).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok(Consumer {
            client,
            config,
            assignments: Vec::new(),
            group: None,
        })
    }

    /// Subscribes to `topic`. With a group, the consumer joins it (on the
    /// next poll) and reads the partitions the group assigns it (see the
    /// module docs); without one, it reads every partition of the topic,
    /// as [`assign_topic`](Self::assign_topic) does. Fails with
    /// `UnknownTopicOrPartition` if the topic does not exist, and with
    /// `InvalidArgument` after a manual assignment.
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), ClientError> {
        let Some(group) = self.config.group.clone() else {
            return self.assign_topic(topic).await;
        };
        if !self.assignments.is_empty() && self.group.is_none() {
            return Err(ClientError::InvalidArgument(
                "subscribe after a manual assignment: use one or the other".into(),
            ));
        }
        let description = self.client.describe_topic(topic).await?;
        if description.partitions.is_empty() {
            return Err(ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {topic} has no partitions"),
            ));
        }
        let state = match &mut self.group {
            Some(state) => state,
            None => {
                let settings = membership::Settings {
                    group,
                    instance_id: self.config.group_instance_id.clone(),
                    session_timeout: self.config.session_timeout,
                    heartbeat_interval: self.config.heartbeat_interval,
                    max_poll_interval: self.config.max_poll_interval,
                };
                let offered = assignors(&self.config.assignors)
                    .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
                self.group.insert(GroupState {
                    membership: Membership::new(self.client.clone(), settings, offered),
                    topics: Vec::new(),
                    owned: BTreeSet::new(),
                    protocol: None,
                    rebalances: 0,
                })
            }
        };
        if !state.topics.iter().any(|t| t == topic) {
            state.topics.push(topic.to_owned());
            state.membership.request_rejoin();
        }
        Ok(())
    }

    /// Adds every partition of `topic` to the assignment by hand (no group
    /// membership). Fails with `UnknownTopicOrPartition` if the topic does
    /// not exist.
    pub async fn assign_topic(&mut self, topic: &str) -> Result<(), ClientError> {
        let description = self.client.describe_topic(topic).await?;
        let partitions: Vec<(String, u32)> = description
            .partitions
            .iter()
            .map(|p| (topic.to_owned(), p.partition))
            .collect();
        if partitions.is_empty() {
            return Err(ClientError::broker(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {topic} has no partitions"),
            ));
        }
        self.assign(&partitions).await
    }

    /// Adds partitions to the assignment by hand (no group membership),
    /// each starting where [`ConsumerConfig::start_from`] says. A partition
    /// assigned already has its position resolved again. Fails with
    /// `InvalidArgument` on a subscribed group member.
    pub async fn assign(&mut self, partitions: &[(String, u32)]) -> Result<(), ClientError> {
        if self.group.is_some() {
            return Err(ClientError::InvalidArgument(
                "assign on a subscribed group member: use one or the other".into(),
            ));
        }
        self.resolve_and_seek(partitions, false).await
    }

    /// Seeks each partition to where [`ConsumerConfig::start_from`] says.
    /// `member`: the group assigned them, so the group's committed offset
    /// wins wherever there is one, read only once no open transaction
    /// holds offsets for them (as a new owner must).
    async fn resolve_and_seek(
        &mut self,
        partitions: &[(String, u32)],
        member: bool,
    ) -> Result<(), ClientError> {
        let mut committed: HashMap<&str, HashMap<u32, u64>> = HashMap::new();
        let mut resolved = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            // A group member always resumes where the group left off; a
            // manual assignment reads the committed offset only when told.
            let use_committed = member || self.config.start_from == StartFrom::Committed;
            let offsets = match (&self.config.group, committed.get(topic.as_str())) {
                (Some(_), Some(offsets)) if use_committed => Some(offsets),
                (Some(group), None) if use_committed => {
                    let offsets = if member {
                        self.stable_offsets(group, topic).await?
                    } else {
                        self.client.fetch_offsets(group, topic).await?
                    };
                    Some(&*committed.entry(topic).or_insert(offsets))
                }
                _ => None,
            };
            let position = match (
                offsets.and_then(|o| o.get(partition)),
                self.config.start_from,
            ) {
                (Some(offset), _) => *offset,
                (None, StartFrom::Latest) => {
                    self.client
                        .list_offsets(topic, *partition, OffsetSpec::Latest)
                        .await?
                }
                (None, StartFrom::Timestamp(ms)) => {
                    self.client
                        .list_offsets(topic, *partition, OffsetSpec::Timestamp(ms))
                        .await?
                }
                (None, _) => self.earliest(topic, *partition).await?,
            };
            resolved.push((topic, *partition, position));
        }
        for (topic, partition, position) in resolved {
            self.seek(topic, partition, position);
        }
        Ok(())
    }

    async fn earliest(&self, topic: &str, partition: u32) -> Result<u64, ClientError> {
        self.client
            .list_offsets(topic, partition, OffsetSpec::Earliest)
            .await
    }

    fn find(&self, topic: &str, partition: u32) -> Option<usize> {
        self.assignments
            .iter()
            .position(|a| a.partition == partition && &*a.topic == topic)
    }

    /// Sets the next offset to read from a partition, adding the partition
    /// to the assignment if it is not there yet.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) {
        match self.find(topic, partition) {
            Some(i) => self.assignments[i].position = offset,
            None => self.assignments.push(Assignment {
                topic: Arc::from(topic),
                partition,
                position: offset,
                end: None,
                eof_reported: false,
            }),
        }
    }

    /// Whether every assigned partition has been read to its end (its last
    /// stable offset under read_committed, its high watermark under
    /// read_uncommitted) as of the last fetch that answered for it. False
    /// with no assignment, and for a partition no fetch has answered for
    /// yet. Records appended since the last poll are not known here: this
    /// says "caught up as of the moment it got there".
    pub fn at_end(&self) -> bool {
        !self.assignments.is_empty() && self.assignments.iter().all(Assignment::at_end)
    }

    /// Like [`Consumer::poll`], and also reports each partition that the
    /// poll left caught up, as [`ConsumerEvent::PartitionEof`] after its
    /// records: the way to tell "at the end" from "nothing arrived yet".
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use ferry_client::{Consumer, ConsumerEvent};
    /// # async fn demo(mut consumer: Consumer) -> Result<(), ferry_client::ClientError> {
    /// // Read everything there is now, then stop.
    /// while !consumer.at_end() {
    ///     for event in consumer.poll_events(Duration::from_millis(500)).await? {
    ///         match event {
    ///             ConsumerEvent::Record(r) => println!("{}@{}", r.partition, r.offset),
    ///             ConsumerEvent::PartitionEof { partition, offset, .. } => {
    ///                 println!("partition {partition} caught up at {offset}")
    ///             }
    ///             other => println!("rebalance: {other:?}"),
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn poll_events(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ConsumerEvent>, ClientError> {
        if let Some(events) = self.rebalance().await? {
            return Ok(events);
        }
        let before: Vec<u64> = self.assignments.iter().map(|a| a.position).collect();
        let records = self.fetch(timeout).await?;
        let mut events: Vec<ConsumerEvent> =
            records.into_iter().map(ConsumerEvent::Record).collect();
        for (a, before) in self.assignments.iter_mut().zip(before) {
            // Records read in this poll start a new stretch, even when the
            // same poll reached the end again.
            if !a.at_end() || a.position != before {
                a.eof_reported = false;
            }
            if a.at_end() && !a.eof_reported {
                a.eof_reported = true;
                events.push(ConsumerEvent::PartitionEof {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset: a.position,
                });
            }
        }
        Ok(events)
    }

    /// The consumer's settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The next offset `poll` reads from a partition, if it is assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.find(topic, partition)
            .map(|i| self.assignments[i].position)
    }

    /// The assigned partitions and their positions.
    pub fn positions(&self) -> Vec<(String, u32, u64)> {
        self.assignments
            .iter()
            .map(|a| (a.topic.to_string(), a.partition, a.position))
            .collect()
    }

    /// Fetches once from every assigned partition, waiting up to
    /// `min(timeout, max_wait)` for data, and returns the records at or
    /// after each position, advancing the positions. Returns an empty list
    /// if nothing arrived in time.
    ///
    /// Every batch's CRC is checked; a corrupt batch fails the poll with
    /// `CorruptMessage` and is never skipped. Control batches are skipped.
    /// A partition whose position fell out of the log is reset (to the
    /// latest offset under `StartFrom::Latest`, else the earliest) with a
    /// warning.
    ///
    /// A group member's poll first takes part in any rebalance the group
    /// is in; such a poll returns no records (its
    /// [`poll_events`](Self::poll_events) says what changed).
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.rebalance().await?.is_some() {
            return Ok(Vec::new());
        }
        self.fetch(timeout).await
    }

    /// A poll that leaves any rebalance for a later one: for a caller that
    /// holds an open transaction over the current assignment, which it
    /// commits first ([`rebalance_pending`](Self::rebalance_pending)).
    pub(crate) async fn poll_deferring_rebalance(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ConsumerRecord>, ClientError> {
        if let Some(g) = &self.group {
            g.membership.touch();
        }
        self.fetch(timeout).await
    }

    /// Whether the group wants this member to take part in a rebalance
    /// (or has dropped it): the next [`poll`](Self::poll) will. False
    /// without a group.
    pub fn rebalance_pending(&self) -> bool {
        self.group
            .as_ref()
            .is_some_and(|g| g.membership.phase() != Phase::Stable)
    }

    /// How many polls took part in a rebalance of the group (0 without a
    /// group): a caller that times idleness restarts its clock when this
    /// changes, so that joining never counts as idle.
    pub fn rebalances(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.rebalances)
    }

    /// Whether the consumer holds its assignment: a group member that has
    /// joined and is not rebalancing, or any consumer without a group.
    pub fn joined(&self) -> bool {
        !self.rebalance_pending()
    }

    /// The member's generation and ids, for commits made elsewhere (a
    /// transactional producer's offsets: KIP-447). `None` without a
    /// subscribed group.
    pub fn group_metadata(&self) -> Option<GroupMetadata> {
        self.group.as_ref().map(|g| g.membership.metadata())
    }

    /// Takes note of an error that a commit made with
    /// [`group_metadata`](Self::group_metadata) got, so that a stale
    /// member joins again on the next poll.
    pub fn note_commit_error(&self, error: &ClientError) {
        if let Some(g) = &self.group {
            g.membership.note_commit_error(error);
        }
    }

    /// Leaves the group (if subscribed to one), so that the other members
    /// take its partitions at once. Commits nothing: commit first under
    /// [`CommitMode::After`].
    pub async fn close(mut self) -> Result<(), ClientError> {
        match self.group.take() {
            Some(g) => g.membership.leave().await,
            None => Ok(()),
        }
    }

    async fn fetch(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let wait = timeout.min(self.config.max_wait);
        if self.assignments.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let request = v1::FetchRequest {
            partitions: self
                .assignments
                .iter()
                .map(|a| v1::FetchPartition {
                    topic: a.topic.to_string(),
                    partition: a.partition,
                    offset: a.position,
                    max_bytes: self.config.partition_max_bytes,
                })
                .collect(),
            max_wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
            min_bytes: 1,
            max_bytes: self.config.fetch_max_bytes,
            isolation: match self.config.isolation {
                IsolationLevel::ReadUncommitted => v1::IsolationLevel::ReadUncommitted,
                IsolationLevel::ReadCommitted => v1::IsolationLevel::ReadCommitted,
            } as i32,
        };
        let limit = wait + FETCH_GRACE;
        let response = tokio::time::timeout(limit, self.client.raw().fetch(request))
            .await
            .map_err(|_| ClientError::Timeout {
                what: "fetch",
                after_ms: limit.as_millis() as u64,
            })??
            .into_inner();
        check(response.error_code, &response.error_message)?;

        let before: Vec<u64> = self.assignments.iter().map(|a| a.position).collect();
        let mut records = Vec::new();
        let mut out_of_range = Vec::new();
        for result in response.partitions {
            let Some(i) = self.find(&result.topic, result.partition) else {
                continue;
            };
            let code = ErrorCode::from_u32(result.error_code);
            match code {
                ErrorCode::None => {}
                ErrorCode::OffsetOutOfRange => {
                    out_of_range.push(i);
                    continue;
                }
                c if c.is_retriable() => {
                    tracing::debug!(
                        topic = %result.topic,
                        partition = result.partition,
                        code = %c,
                        message = %result.error_message,
                        "fetch failed for a partition; retrying on the next poll"
                    );
                    continue;
                }
                c => return Err(ClientError::broker(c, result.error_message)),
            }
            let (mut filter, end) = match self.config.isolation {
                IsolationLevel::ReadCommitted => (
                    AbortedFilter::new(
                        result
                            .aborted_transactions
                            .iter()
                            .map(|a| (a.producer_id, a.first_offset)),
                    ),
                    result.last_stable_offset,
                ),
                IsolationLevel::ReadUncommitted => (AbortedFilter::none(), result.high_watermark),
            };
            let a = &mut self.assignments[i];
            a.end = Some(end);
            decode_into(
                &a.topic,
                a.partition,
                &mut a.position,
                &result.records,
                &mut filter,
                &mut records,
            )?;
        }
        for i in out_of_range {
            self.reset(i).await?;
        }
        if self.config.commit_mode == CommitMode::Before {
            let changed: Vec<(String, u32, u64)> = self
                .assignments
                .iter()
                .zip(&before)
                .filter(|(a, b)| a.position != **b)
                .map(|(a, _)| (a.topic.to_string(), a.partition, a.position))
                .collect();
            if !changed.is_empty()
                && let Err(e) = self.commit_list(&changed).await
            {
                // Hand out nothing that was not committed: the next poll
                // reads these records again and retries the commit.
                for (a, b) in self.assignments.iter_mut().zip(before) {
                    a.position = b;
                }
                return Err(e);
            }
        }
        Ok(records)
    }

    async fn reset(&mut self, i: usize) -> Result<(), ClientError> {
        let (spec, name) = match self.config.start_from {
            StartFrom::Latest => (OffsetSpec::Latest, "latest"),
            _ => (OffsetSpec::Earliest, "earliest"),
        };
        let a = &self.assignments[i];
        let offset = self
            .client
            .list_offsets(&a.topic, a.partition, spec)
            .await?;
        tracing::warn!(
            topic = %a.topic,
            partition = a.partition,
            position = a.position,
            reset_to = offset,
            "position is out of range; resetting to the {name} offset"
        );
        self.assignments[i].position = offset;
        Ok(())
    }

    /// Commits the current position of every assigned partition for the
    /// group.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let offsets: Vec<(String, u32, u64)> = self.positions();
        if offsets.is_empty() {
            return Ok(());
        }
        self.commit_list(&offsets).await
    }

    /// Commits `offsets` for the group: as the member, with its generation,
    /// when subscribed; as a simple commit otherwise.
    async fn commit_list(&self, offsets: &[(String, u32, u64)]) -> Result<(), ClientError> {
        let group = self.config.group.as_deref().ok_or_else(|| {
            ClientError::InvalidArgument("committing offsets needs a consumer group".into())
        })?;
        match &self.group {
            Some(g) => {
                let result = self
                    .client
                    .commit_member_offsets(&g.membership.metadata(), offsets)
                    .await;
                if let Err(e) = &result {
                    g.membership.note_commit_error(e);
                }
                result
            }
            None => self.client.commit_offsets(group, offsets).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_their_display_names() {
        for m in [CommitMode::None, CommitMode::Before, CommitMode::After] {
            assert_eq!(m.to_string().parse::<CommitMode>().unwrap(), m);
        }
        for l in [
            IsolationLevel::ReadUncommitted,
            IsolationLevel::ReadCommitted,
        ] {
            assert_eq!(l.to_string().parse::<IsolationLevel>().unwrap(), l);
        }
        for s in [
            StartFrom::Earliest,
            StartFrom::Latest,
            StartFrom::Committed,
            StartFrom::Timestamp(1_764_842_400_000),
        ] {
            assert_eq!(s.to_string().parse::<StartFrom>().unwrap(), s);
        }
        assert_eq!(
            "2025-12-04T10:00:00Z".parse::<StartFrom>().unwrap(),
            StartFrom::Timestamp(1_764_842_400_000)
        );
        assert_eq!(
            "1970-01-01T00:00:02.5Z".parse::<StartFrom>().unwrap(),
            StartFrom::Timestamp(2500)
        );
        for bad in [
            "",
            "yesterday",
            "99999999999999999999",
            "2025-13-01T00:00:00Z",
        ] {
            assert!(bad.parse::<StartFrom>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_enum_names_say_what_is_allowed() {
        let e = "sometimes".parse::<CommitMode>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: unknown commit mode \"sometimes\": expected one of none, before, after"
        );
        assert!("read_committed".parse::<IsolationLevel>().is_err());
        assert!("first".parse::<StartFrom>().is_err());
    }

    #[tokio::test]
    async fn committing_modes_need_a_group() {
        let client = Client::connect_lazy("127.0.0.1:1").unwrap();
        for mode in [CommitMode::Before, CommitMode::After] {
            let config = ConsumerConfig {
                commit_mode: mode,
                ..ConsumerConfig::default()
            };
            assert!(matches!(
                Consumer::new(client.clone(), config).await,
                Err(ClientError::InvalidArgument(_))
            ));
        }
        assert!(
            Consumer::new(client, ConsumerConfig::default())
                .await
                .is_ok()
        );
    }
}
