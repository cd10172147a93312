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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::ErrorCode;
use ferry_proto::batch::{BatchHeader, BatchIter};
use ferry_proto::control::{ControlType, marker_type};
use ferry_proto::v1;

use crate::client::{Client, OffsetSpec};
use crate::error::{ClientError, check};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The log start offset.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    /// The group's committed offset, or the earliest offset when the group
    /// committed none for the partition (or there is no group).
    Committed,
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
string_enum!(
    StartFrom,
    "start position",
    Earliest => "earliest",
    Latest => "latest",
    Committed => "committed",
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
        Ok(Consumer {
            client,
            config,
            assignments: Vec::new(),
        })
    }

    /// Adds every partition of `topic` to the assignment. Fails with
    /// `UnknownTopicOrPartition` if the topic does not exist.
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), ClientError> {
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

    /// Adds partitions to the assignment, each starting where
    /// [`ConsumerConfig::start_from`] says. A partition assigned already
    /// has its position resolved again.
    pub async fn assign(&mut self, partitions: &[(String, u32)]) -> Result<(), ClientError> {
        let mut committed: HashMap<&str, HashMap<u32, u64>> = HashMap::new();
        let mut resolved = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            let position = match self.config.start_from {
                StartFrom::Earliest => self.earliest(topic, *partition).await?,
                StartFrom::Latest => {
                    self.client
                        .list_offsets(topic, *partition, OffsetSpec::Latest)
                        .await?
                }
                StartFrom::Committed => {
                    let offsets = match (&self.config.group, committed.get(topic.as_str())) {
                        (None, _) => None,
                        (Some(_), Some(offsets)) => Some(offsets),
                        (Some(group), None) => {
                            let offsets = self.client.fetch_offsets(group, topic).await?;
                            Some(&*committed.entry(topic).or_insert(offsets))
                        }
                    };
                    match offsets.and_then(|o| o.get(partition)) {
                        Some(offset) => *offset,
                        None => self.earliest(topic, *partition).await?,
                    }
                }
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
        let before: Vec<u64> = self.assignments.iter().map(|a| a.position).collect();
        let records = self.poll(timeout).await?;
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
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
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
                    AbortedFilter::new(&result.aborted_transactions),
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

    async fn commit_list(&self, offsets: &[(String, u32, u64)]) -> Result<(), ClientError> {
        let group = self.config.group.as_deref().ok_or_else(|| {
            ClientError::InvalidArgument("committing offsets needs a consumer group".into())
        })?;
        self.client.commit_offsets(group, offsets).await
    }
}

/// Drops the batches of aborted transactions from one partition's fetched
/// data under `read_committed`.
///
/// The broker sends, with each `read_committed` fetch, the aborted
/// transactions overlapping the returned records as (producer id, first
/// offset) pairs. A transactional batch of producer `P` is dropped when an
/// aborted transaction of `P` started at or before the batch's last offset
/// and `P`'s ABORT marker has not been seen since: a producer has at most
/// one open transaction per partition, so the marker ends the span. Batches
/// of other producers, non-transactional batches, and `P`'s batches of
/// later (committed) transactions pass.
///
/// The filter walks batches in offset order, as [`decode_into`] does.
#[derive(Debug, Default)]
pub(crate) struct AbortedFilter {
    /// Aborted transactions not reached yet, sorted by first offset,
    /// latest first so the next one pops off the end.
    upcoming: Vec<(u64, i64)>,
    /// Producers inside an aborted transaction at the current batch.
    active: HashSet<i64>,
}

impl AbortedFilter {
    /// A filter for the aborted transactions of one fetch result.
    pub(crate) fn new(aborted: &[v1::AbortedTransaction]) -> AbortedFilter {
        let mut upcoming: Vec<(u64, i64)> = aborted
            .iter()
            .map(|a| (a.first_offset, a.producer_id))
            .collect();
        upcoming.sort_unstable_by(|a, b| b.cmp(a));
        AbortedFilter {
            upcoming,
            active: HashSet::new(),
        }
    }

    /// A filter that drops nothing (`read_uncommitted`).
    pub(crate) fn none() -> AbortedFilter {
        AbortedFilter::default()
    }

    /// Whether the records of the batch with this header are returned to
    /// the application. Must be called for every batch in offset order,
    /// control batches included; `marker` is the batch's marker type if it
    /// is a control batch. Control batches are never returned.
    pub(crate) fn keep(&mut self, header: &BatchHeader, marker: Option<ControlType>) -> bool {
        while let Some(&(first, pid)) = self.upcoming.last() {
            if first > header.last_offset() {
                break;
            }
            self.active.insert(pid);
            self.upcoming.pop();
        }
        if header.is_control() {
            if marker == Some(ControlType::Abort) {
                self.active.remove(&header.producer_id);
            }
            return false;
        }
        !(header.is_transactional() && self.active.contains(&header.producer_id))
    }
}

/// Appends the records of `data` (concatenated batches of one partition)
/// at or after `*position` that `filter` keeps to `out`, and moves
/// `*position` past every batch read, control and dropped batches
/// included.
fn decode_into(
    topic: &Arc<str>,
    partition: u32,
    position: &mut u64,
    data: &Bytes,
    filter: &mut AbortedFilter,
    out: &mut Vec<ConsumerRecord>,
) -> Result<(), ClientError> {
    for batch in BatchIter::new(data) {
        let batch = batch.map_err(|e| {
            ClientError::broker(
                ErrorCode::CorruptMessage,
                format!("{topic}/{partition} near offset {position}: {e}"),
            )
        })?;
        let header = *batch.header();
        let marker = if header.is_control() {
            marker_type(&batch)
        } else {
            None
        };
        // Every batch goes through the filter, including those below the
        // position, so it sees each ABORT marker.
        let keep = filter.keep(&header, marker);
        if header.next_offset() <= *position {
            continue;
        }
        if keep {
            for record in batch.records() {
                // Validated by BatchIter already.
                let record = record
                    .map_err(|e| ClientError::broker(ErrorCode::CorruptMessage, e.to_string()))?;
                let offset = header.base_offset + u64::from(record.offset_delta);
                if offset < *position {
                    continue;
                }
                out.push(ConsumerRecord {
                    topic: topic.clone(),
                    partition,
                    offset,
                    timestamp: header.first_timestamp.wrapping_add(record.timestamp_delta),
                    key: record.key.map(|k| data.slice_ref(k)),
                    value: record.value.map(|v| data.slice_ref(v)),
                    headers: record
                        .headers()
                        .map(|(k, v)| (data.slice_ref(k), v.map(|v| data.slice_ref(v))))
                        .collect(),
                });
            }
        }
        *position = header.next_offset();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::batch::{BatchBuilder, ProducerStamp, patch_base_offset};
    use ferry_proto::control::marker_batch;

    fn batch(base: u64, values: &[&[u8]]) -> Vec<u8> {
        let mut b = BatchBuilder::new(1000);
        for (i, v) in values.iter().enumerate() {
            b.push(1000 + i as i64, Some(b"k"), Some(v), &[(b"h", None)]);
        }
        let mut bytes = b.finish().to_vec();
        patch_base_offset(&mut bytes, base);
        bytes
    }

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
        for s in [StartFrom::Earliest, StartFrom::Latest, StartFrom::Committed] {
            assert_eq!(s.to_string().parse::<StartFrom>().unwrap(), s);
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

    #[test]
    fn records_below_the_position_are_skipped_and_the_position_advances() {
        let mut data = batch(10, &[b"a", b"b", b"c"]);
        data.extend(batch(13, &[b"d"]));
        let data = Bytes::from(data);
        let topic: Arc<str> = Arc::from("t");
        let mut position = 11;
        let mut out = Vec::new();
        decode_into(
            &topic,
            2,
            &mut position,
            &data,
            &mut AbortedFilter::none(),
            &mut out,
        )
        .unwrap();
        let offsets: Vec<u64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![11, 12, 13]);
        assert_eq!(position, 14);
        assert_eq!(out[0].value.as_deref(), Some(&b"b"[..]));
        assert_eq!(out[0].timestamp, 1001);
        assert_eq!(out[0].headers, vec![(Bytes::from_static(b"h"), None)]);
    }

    #[test]
    fn control_batches_are_skipped_but_move_the_position() {
        let mut b = BatchBuilder::new(0).control(true);
        b.push(0, None, Some(b"marker"), &[]);
        let mut data = b.finish().to_vec();
        patch_base_offset(&mut data, 5);
        let data = Bytes::from(data);
        let mut position = 5;
        let mut out = Vec::new();
        decode_into(
            &Arc::from("t"),
            0,
            &mut position,
            &data,
            &mut AbortedFilter::none(),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        assert_eq!(position, 6);
    }

    #[test]
    fn a_corrupt_batch_is_an_error_not_a_gap() {
        let mut data = batch(0, &[b"a", b"b"]);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let mut position = 0;
        let mut out = Vec::new();
        let err = decode_into(
            &Arc::from("t"),
            0,
            &mut position,
            &Bytes::from(data),
            &mut AbortedFilter::none(),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err.code(), ErrorCode::CorruptMessage);
        assert_eq!(position, 0);
    }

    /// A transactional batch of `pid` at `base` holding `values`.
    fn txn_batch(pid: i64, base: u64, values: &[&str]) -> Vec<u8> {
        let mut b = BatchBuilder::new(1000)
            .producer(ProducerStamp {
                producer_id: pid,
                producer_epoch: 0,
                base_sequence: 0,
            })
            .transactional(true);
        for v in values {
            b.push(1000, None, Some(v.as_bytes()), &[]);
        }
        let mut bytes = b.finish().to_vec();
        patch_base_offset(&mut bytes, base);
        bytes
    }

    /// The marker ending `pid`'s transaction, at `offset`.
    fn marker(pid: i64, offset: u64, kind: ControlType) -> Vec<u8> {
        let mut bytes = marker_batch(pid, 0, kind, 1000).to_vec();
        patch_base_offset(&mut bytes, offset);
        bytes
    }

    fn aborted(list: &[(i64, u64)]) -> Vec<v1::AbortedTransaction> {
        list.iter()
            .map(|&(producer_id, first_offset)| v1::AbortedTransaction {
                producer_id,
                first_offset,
            })
            .collect()
    }

    /// Decodes `parts` from `position` under a filter for `aborted_list`
    /// (or read-uncommitted when `None`); returns the values and the new
    /// position.
    fn read_values(
        parts: &[Vec<u8>],
        position: u64,
        aborted_list: Option<&[(i64, u64)]>,
    ) -> (Vec<String>, u64) {
        let data = Bytes::from(parts.concat());
        let mut filter = match aborted_list {
            Some(list) => AbortedFilter::new(&aborted(list)),
            None => AbortedFilter::none(),
        };
        let mut position = position;
        let mut out = Vec::new();
        decode_into(
            &Arc::from("t"),
            0,
            &mut position,
            &data,
            &mut filter,
            &mut out,
        )
        .unwrap();
        let values = out
            .iter()
            .map(|r| String::from_utf8(r.value.as_ref().unwrap().to_vec()).unwrap())
            .collect();
        (values, position)
    }

    /// Producer 1 aborts a transaction, producer 2 commits one interleaved
    /// with it, then producer 1 commits a second transaction:
    ///
    /// ```text
    /// 0 p1 a1,a2 | 2 p2 c1 | 4 p1 a3 | 5 plain x | 6 ABORT p1 | 7 COMMIT p2 | 8 p1 d1 | 9 COMMIT p1
    /// ```
    fn interleaved() -> Vec<Vec<u8>> {
        vec![
            txn_batch(1, 0, &["a1", "a2"]),
            txn_batch(2, 2, &["c1", "c2"]),
            txn_batch(1, 4, &["a3"]),
            batch(5, &[b"x"]),
            marker(1, 6, ControlType::Abort),
            marker(2, 7, ControlType::Commit),
            txn_batch(1, 8, &["d1"]),
            marker(1, 9, ControlType::Commit),
        ]
    }

    #[test]
    fn read_committed_drops_the_aborted_transaction_up_to_its_abort_marker() {
        let (values, position) = read_values(&interleaved(), 0, Some(&[(1, 0)]));
        assert_eq!(values, vec!["c1", "c2", "x", "d1"]);
        assert_eq!(
            position, 10,
            "the position moves past markers and dropped batches"
        );
    }

    #[test]
    fn read_uncommitted_returns_aborted_records_but_never_markers() {
        let (values, position) = read_values(&interleaved(), 0, None);
        assert_eq!(values, vec!["a1", "a2", "c1", "c2", "a3", "x", "d1"]);
        assert_eq!(position, 10);
    }

    #[test]
    fn an_aborted_transaction_only_drops_batches_from_its_first_offset_on() {
        // Producer 1 committed offsets 0-1, then aborted the one from 3.
        let parts = vec![
            txn_batch(1, 0, &["ok1", "ok2"]),
            marker(1, 2, ControlType::Commit),
            txn_batch(1, 3, &["bad"]),
            marker(1, 4, ControlType::Abort),
        ];
        let (values, position) = read_values(&parts, 0, Some(&[(1, 3)]));
        assert_eq!(values, vec!["ok1", "ok2"]);
        assert_eq!(position, 5);
    }

    #[test]
    fn a_fetch_that_ends_inside_an_aborted_transaction_drops_its_tail() {
        // The broker cut the response before the marker; the next fetch
        // starts later and lists the same aborted transaction again.
        let parts = interleaved();
        let (values, position) = read_values(&parts[..3], 0, Some(&[(1, 0)]));
        assert_eq!(values, vec!["c1", "c2"]);
        assert_eq!(position, 5);
        let (values, position) = read_values(&parts[3..], position, Some(&[(1, 0)]));
        assert_eq!(values, vec!["x", "d1"]);
        assert_eq!(position, 10);
    }

    #[test]
    fn two_aborted_transactions_of_one_producer_are_each_dropped() {
        let parts = vec![
            txn_batch(1, 0, &["a"]),
            marker(1, 1, ControlType::Abort),
            txn_batch(1, 2, &["b"]),
            marker(1, 3, ControlType::Commit),
            txn_batch(1, 4, &["c"]),
            marker(1, 5, ControlType::Abort),
            txn_batch(1, 6, &["d"]),
        ];
        let (values, _) = read_values(&parts, 0, Some(&[(1, 4), (1, 0)]));
        assert_eq!(values, vec!["b", "d"]);
    }

    #[test]
    fn non_transactional_batches_of_an_aborting_producer_id_pass() {
        let mut plain = BatchBuilder::new(0).producer(ProducerStamp {
            producer_id: 1,
            producer_epoch: 0,
            base_sequence: 0,
        });
        plain.push(0, None, Some(b"idempotent"), &[]);
        let mut plain = plain.finish().to_vec();
        patch_base_offset(&mut plain, 1);
        let parts = vec![
            txn_batch(1, 0, &["aborted"]),
            plain,
            marker(1, 2, ControlType::Abort),
        ];
        let (values, _) = read_values(&parts, 0, Some(&[(1, 0)]));
        assert_eq!(values, vec!["idempotent"]);
    }

    #[test]
    fn a_position_inside_the_data_still_sees_earlier_abort_markers() {
        // The response starts before the position: the ABORT marker below
        // the position must still end producer 1's aborted span.
        let (values, position) = read_values(&interleaved(), 8, Some(&[(1, 0)]));
        assert_eq!(values, vec!["d1"]);
        assert_eq!(position, 10);
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
