//! Topics and partitions: the registry of logs on disk.
//!
//! Layout under `<data_dir>/topics/`:
//!
//! ```text
//! <name>/meta.json          {"name": ..., "partitions": N, "created_ms": ...}
//! <name>/<partition>/       one ferry-storage log per partition
//! ```
//!
//! Creation is atomic: the topic is built in `.tmp-<name>-<nanos>/`, synced,
//! and renamed into place, so a crash leaves either no topic or a whole one.
//! Deletion renames the directory to `.deleted-<name>-<nanos>/` first, so a
//! crash mid-delete never leaves a half-deleted topic that looks alive.
//! Leftover `.tmp-*` and `.deleted-*` directories are removed on open.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::batch::ValidBatch;
use ferry_proto::control::{ControlType, marker_batch, marker_type};
use ferry_storage::{AppendInfo, FlushPolicy, Log, LogConfig};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::config::{MAX_PARTITIONS_PER_TOPIC, MAX_TOPICS, ProducerSettings};
use crate::error::BrokerError;
use crate::names::check_name;
use crate::producer_state::{AbortedTxn, ProducerTable, SeqCheck, check_sequence};
use crate::topic_config::TopicConfig;

/// One partition: an append-only log.
#[derive(Debug)]
pub struct Partition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub id: u32,
    /// The partition's log.
    pub log: Log,
    flush: FlushPolicy,
    producers: Mutex<ProducerTable>,
    snapshot_path: PathBuf,
    /// The producer state as of the end of the last cleaning
    /// (`crate::cleaner`): a start that cannot use `snapshot_path` replays
    /// from there, never over batches cleaning removed.
    cleaned_snapshot_path: PathBuf,
    /// Whether every record needs a key (a compacted topic).
    keys_required: bool,
    settings: ProducerSettings,
    /// Bytes of batches appended and fetched since the broker started, for
    /// the console's rates.
    produced_bytes: AtomicU64,
    fetched_bytes: AtomicU64,
}

impl Partition {
    fn open(
        topic: Arc<str>,
        id: u32,
        topic_dir: &Path,
        log_config: &LogConfig,
        topic_config: &TopicConfig,
        settings: ProducerSettings,
    ) -> Result<Partition, BrokerError> {
        let log = Log::open(topic_dir.join(id.to_string()), log_config.clone())?;
        let snapshot_path = topic_dir.join(format!("{id}.producers"));
        let cleaned_snapshot_path = topic_dir.join(format!("{id}.producers-cleaned"));
        let producers = load_producers(&log, &snapshot_path, &cleaned_snapshot_path)?;
        Ok(Partition {
            topic,
            id,
            log,
            flush: log_config.flush,
            producers: Mutex::new(producers),
            snapshot_path,
            cleaned_snapshot_path,
            keys_required: topic_config.cleanup_policy.compacts(),
            settings,
            produced_bytes: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        })
    }

    /// Counts `bytes` appended by a producer.
    pub fn count_produced(&self, bytes: usize) {
        self.produced_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `bytes` returned to a consumer.
    pub fn count_fetched(&self, bytes: usize) {
        self.fetched_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes appended by producers since the broker started.
    pub fn produced_bytes(&self) -> u64 {
        self.produced_bytes.load(Ordering::Relaxed)
    }

    /// Bytes returned to consumers since the broker started.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Ordering::Relaxed)
    }

    /// Appends a validated batch, applying the idempotent-producer checks
    /// when the batch carries a producer id. The request checks
    /// (`BrokerState::append`) have run before. A retry of a batch still in
    /// the producer's window is answered with the original offsets and
    /// appends nothing.
    pub(crate) fn append(&self, batch: ValidBatch<'_>) -> Result<AppendInfo, BrokerError> {
        let header = *batch.header();
        if header.producer_id < 0 {
            let info = self.log.append(batch)?;
            if info.rolled {
                self.snapshot_after_roll(&self.producers.lock());
            }
            return Ok(info);
        }
        debug_assert!(
            header.producer_epoch >= 0 && header.base_sequence >= 0,
            "the broker core checks the idempotent fields before appending"
        );
        let now = ferry_proto::now_ms();
        // Check, append and record under one lock: the window must never
        // see two appends of the same sequence.
        let mut table = self.producers.lock();
        let entry = table.get(header.producer_id);
        match check_sequence(
            entry,
            header.producer_epoch,
            header.base_sequence,
            header.last_sequence(),
        )? {
            SeqCheck::Duplicate(meta) => {
                metrics::counter!("ferry_duplicate_batches_total").increment(1);
                Ok(AppendInfo {
                    base_offset: meta.base_offset,
                    last_offset: meta.last_offset,
                    log_start_offset: self.log.log_start_offset(),
                    rolled: false,
                })
            }
            SeqCheck::Append => {
                if entry.is_none() && table.len() >= self.settings.max_per_partition {
                    table.expire(now, self.settings.expiry_ms);
                    if table.len() >= self.settings.max_per_partition {
                        return Err(BrokerError::ProducerQuota {
                            max: self.settings.max_per_partition,
                        });
                    }
                }
                let info = self.log.append(batch)?;
                let mut stored = header;
                stored.base_offset = info.base_offset;
                table.record(&stored, now);
                if header.is_transactional() {
                    table.note_transactional(header.producer_id, info.base_offset);
                }
                if info.rolled {
                    self.snapshot_after_roll(&table);
                }
                Ok(info)
            }
        }
    }

    /// Appends the marker ending `producer_id`'s transaction, and updates
    /// the open-transaction set and the aborted index under the same lock.
    pub(crate) fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<AppendInfo, BrokerError> {
        let kind = if commit {
            ControlType::Commit
        } else {
            ControlType::Abort
        };
        let bytes = marker_batch(producer_id, epoch, kind, ferry_proto::now_ms());
        let batch = ValidBatch::exact(&bytes)?;
        let mut table = self.producers.lock();
        let info = self.log.append(batch)?;
        table.end_transaction(producer_id, info.base_offset, commit);
        if info.rolled {
            self.snapshot_after_roll(&table);
        }
        Ok(info)
    }

    /// Whether `producer_id` has an open transaction in this partition.
    pub fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.producers
            .lock()
            .ongoing()
            .any(|(p, _)| p == producer_id)
    }

    /// Producers with an open transaction here, with its first offset.
    pub fn open_transactions(&self) -> Vec<(i64, u64)> {
        self.producers.lock().ongoing().collect()
    }

    /// The last stable offset: `read_committed` consumers read below it.
    /// It is the first offset of the oldest open transaction, or the
    /// visible watermark when none is open.
    pub fn last_stable_offset(&self) -> u64 {
        let visible = self.visible_offset();
        let lso = self
            .producers
            .lock()
            .first_unstable_offset()
            .map_or(visible, |first| first.min(visible));
        debug_assert!(lso <= visible, "the LSO never passes the high watermark");
        lso
    }

    /// Aborted transactions overlapping `[from, to)`.
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        self.producers.lock().aborted_between(from, to)
    }

    /// Forgets idle producers.
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        self.producers
            .lock()
            .expire(now_ms, self.settings.expiry_ms)
    }

    /// Every producer this partition tracks (DescribeProducers): id,
    /// epoch, its last batches, and its open transaction's first offset.
    pub fn producers(&self) -> Vec<(i64, crate::producer_state::ProducerEntry, Option<u64>)> {
        self.producers.lock().producers()
    }

    /// Number of producer ids tracked.
    pub fn producer_count(&self) -> usize {
        self.producers.lock().len()
    }

    /// Writes a producer-state snapshot at the current log end.
    ///
    /// Consistent because every batch that changes the table is appended
    /// and recorded under the table's lock, which the caller holds: all of
    /// them below the log end are in `table`. If the log later recovers to
    /// less than the snapshot's offset, the snapshot is ignored and the log
    /// replayed, so the snapshot needs no durability barrier of its own.
    fn write_snapshot(&self, table: &ProducerTable) -> Result<(), BrokerError> {
        table
            .write_snapshot(&self.snapshot_path, self.log.next_offset())
            .map_err(|source| BrokerError::Io {
                op: "write producer snapshot",
                path: self.snapshot_path.display().to_string(),
                source,
            })
    }

    /// Snapshots after a segment roll; a failure only costs a longer replay
    /// at the next open.
    fn snapshot_after_roll(&self, table: &ProducerTable) {
        if let Err(e) = self.write_snapshot(table) {
            tracing::warn!(topic = %self.topic, partition = self.id, error = %e, "producer snapshot at segment roll failed");
        }
    }

    /// Writes a producer-state snapshot at the current log end.
    pub fn snapshot_producers(&self) -> Result<(), BrokerError> {
        self.write_snapshot(&self.producers.lock())
    }

    /// Flushes and closes the log, then snapshots the producer state so the
    /// next open replays nothing.
    pub fn close(&self) -> Result<(), BrokerError> {
        self.log.close()?;
        self.snapshot_producers()
    }

    /// The offset below which consumers may read.
    ///
    /// Under `always` and `interval=MS`, consumers never see a record that
    /// is not durable, so a crash cannot take back a record someone has
    /// already read (under `interval` they wait at most one interval for
    /// it). Under `never` durability is not promised at all, and the limit
    /// is the log end.
    pub fn visible_offset(&self) -> u64 {
        match self.flush {
            FlushPolicy::Always | FlushPolicy::Interval(_) => {
                let durable = self.log.durable_offset();
                debug_assert!(
                    durable <= self.log.next_offset(),
                    "the durable offset never passes the log end"
                );
                durable
            }
            FlushPolicy::Never => self.log.next_offset(),
        }
    }

    /// The flush policy of the log.
    pub fn flush_policy(&self) -> FlushPolicy {
        self.flush
    }

    /// Where the cleaner keeps the producer state as of its last cleaning.
    pub(crate) fn cleaned_snapshot_path(&self) -> &Path {
        &self.cleaned_snapshot_path
    }

    /// Drops the aborted-index entries of the transactions whose markers
    /// the cleaner is about to remove, then snapshots, so that no start
    /// brings them back.
    pub(crate) fn forget_aborted(
        &self,
        markers: &std::collections::HashSet<(i64, u64)>,
    ) -> Result<(), BrokerError> {
        let mut table = self.producers.lock();
        table.forget_aborted(markers);
        self.write_snapshot(&table)
    }

    /// Whether every record needs a key (a compacted topic).
    pub fn keys_required(&self) -> bool {
        self.keys_required
    }

    /// The producer-state settings (expiry).
    pub(crate) fn producer_settings(&self) -> ProducerSettings {
        self.settings
    }
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    /// Topic name.
    pub name: Arc<str>,
    /// Partitions, indexed by number.
    pub partitions: Vec<Arc<Partition>>,
    /// The topic's settings.
    pub config: TopicConfig,
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    name: String,
    partitions: u32,
    created_ms: i64,
    /// Absent in topics created before topics had settings: the defaults.
    #[serde(default)]
    config: TopicConfig,
}

/// The log settings of a topic's partitions: the broker's, with the
/// topic's own `segment.bytes` if it has one.
fn topic_log_config(broker: &LogConfig, topic: &TopicConfig) -> LogConfig {
    let mut config = broker.clone();
    if let Some(bytes) = topic.segment_bytes {
        config.segment_bytes = bytes;
    }
    config
}

/// All topics of a broker.
#[derive(Debug)]
pub struct Topics {
    root: PathBuf,
    log_config: LogConfig,
    settings: ProducerSettings,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises create and delete, which touch the file system.
    admin: Mutex<()>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BrokerError {
    let path = path.display().to_string();
    move |source| BrokerError::Io { op, path, source }
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Makes a directory entry (a create, rename or delete) durable.
fn sync_dir(dir: &Path) -> Result<(), BrokerError> {
    ferry_storage::fsutil::sync_dir(dir).map_err(io_err("sync directory", dir))
}

impl Topics {
    /// Opens every topic under `root`, recovering each partition log.
    pub fn open(
        root: &Path,
        log_config: LogConfig,
        settings: ProducerSettings,
    ) -> Result<Topics, BrokerError> {
        fs::create_dir_all(root).map_err(io_err("create directory", root))?;
        let mut map = BTreeMap::new();
        let entries = fs::read_dir(root).map_err(io_err("read directory", root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", root))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.starts_with(".deleted-") {
                tracing::info!(path = %path.display(), "removing leftover of an interrupted topic create/delete");
                fs::remove_dir_all(&path).map_err(io_err("remove directory", &path))?;
                continue;
            }
            if !path.is_dir() {
                continue;
            }
            let topic = Self::open_topic(&path, &log_config, settings)?;
            map.insert(topic.name.to_string(), Arc::new(topic));
        }
        Ok(Topics {
            root: root.to_path_buf(),
            log_config,
            settings,
            map: RwLock::new(map),
            admin: Mutex::new(()),
        })
    }

    fn open_topic(
        dir: &Path,
        log_config: &LogConfig,
        settings: ProducerSettings,
    ) -> Result<Topic, BrokerError> {
        let meta_path = dir.join("meta.json");
        let text = fs::read_to_string(&meta_path).map_err(io_err("read", &meta_path))?;
        let meta: TopicMeta = serde_json::from_str(&text).map_err(|e| {
            BrokerError::Config(format!(
                "corrupt topic metadata {}: {e}",
                meta_path.display()
            ))
        })?;
        if meta.partitions == 0 || meta.partitions > MAX_PARTITIONS_PER_TOPIC {
            return Err(BrokerError::Config(format!(
                "corrupt topic metadata {}: partition count {}",
                meta_path.display(),
                meta.partitions
            )));
        }
        let name: Arc<str> = Arc::from(meta.name.as_str());
        let log_config = topic_log_config(log_config, &meta.config);
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for id in 0..meta.partitions {
            partitions.push(Arc::new(Partition::open(
                name.clone(),
                id,
                dir,
                &log_config,
                &meta.config,
                settings,
            )?));
        }
        tracing::info!(topic = %name, partitions = meta.partitions, "opened topic");
        Ok(Topic {
            name,
            partitions,
            config: meta.config,
            dir: dir.to_path_buf(),
        })
    }

    /// Creates a topic with `partitions` partitions and the default
    /// settings.
    pub fn create(&self, name: &str, partitions: u32) -> Result<(), BrokerError> {
        self.create_with_config(name, partitions, TopicConfig::default())
    }

    /// Creates a topic with `partitions` partitions and `config`.
    pub fn create_with_config(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), BrokerError> {
        check_name(name).map_err(|reason| BrokerError::InvalidTopic {
            name: name.to_string(),
            reason,
        })?;
        if partitions == 0 || partitions > MAX_PARTITIONS_PER_TOPIC {
            return Err(BrokerError::InvalidPartitions {
                count: partitions,
                max: MAX_PARTITIONS_PER_TOPIC,
            });
        }
        let _admin = self.admin.lock();
        if self.map.read().contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists(name.to_string()));
        }
        if self.map.read().len() >= MAX_TOPICS {
            return Err(BrokerError::TooManyTopics(MAX_TOPICS));
        }
        let tmp = self.root.join(format!(".tmp-{name}-{}", unique_suffix()));
        fs::create_dir_all(&tmp).map_err(io_err("create directory", &tmp))?;
        let meta = TopicMeta {
            name: name.to_string(),
            partitions,
            created_ms: ferry_proto::now_ms(),
            config,
        };
        let meta_path = tmp.join("meta.json");
        let text = serde_json::to_string_pretty(&meta).expect("topic metadata serialises");
        fs::write(&meta_path, text).map_err(io_err("write", &meta_path))?;
        fs::File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", &meta_path))?;
        sync_dir(&tmp)?;
        let dir = self.root.join(name);
        fs::rename(&tmp, &dir).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.root)?;
        let topic = match Self::open_topic(&dir, &self.log_config, self.settings) {
            Ok(t) => t,
            Err(e) => {
                // Nothing was published and nothing appended: take the
                // half-made topic away (its preallocated segments hold the
                // space it failed for), so a retry or a restart does not
                // find it.
                let _ = fs::remove_dir_all(&dir);
                let _ = sync_dir(&self.root);
                return Err(e);
            }
        };
        self.map.write().insert(name.to_string(), Arc::new(topic));
        Ok(())
    }

    /// Grows topic `name` to `total` partitions (Kafka's CreatePartitions);
    /// partitions are never removed.
    ///
    /// The new count is made durable first (`meta.json` written aside,
    /// synced and renamed over the old one), then the new partition logs
    /// are opened and the topic is published with them. A crash before the
    /// rename leaves the old count; after it, the next open creates the
    /// missing partition logs. No append reaches a new partition before
    /// its count is durable.
    pub fn add_partitions(&self, name: &str, total: u32) -> Result<(), BrokerError> {
        let _admin = self.admin.lock();
        let topic = self.get(name)?;
        let current = topic.partitions.len() as u32;
        if total <= current || total > MAX_PARTITIONS_PER_TOPIC {
            return Err(BrokerError::InvalidPartitions {
                count: total,
                max: MAX_PARTITIONS_PER_TOPIC,
            });
        }
        let meta_path = topic.dir.join("meta.json");
        let text = fs::read_to_string(&meta_path).map_err(io_err("read", &meta_path))?;
        let mut meta: TopicMeta = serde_json::from_str(&text).map_err(|e| {
            BrokerError::Config(format!(
                "corrupt topic metadata {}: {e}",
                meta_path.display()
            ))
        })?;
        meta.partitions = total;
        let aside = topic.dir.join("meta.json.new");
        let text = serde_json::to_string_pretty(&meta).expect("topic metadata serialises");
        fs::write(&aside, text).map_err(io_err("write", &aside))?;
        fs::File::open(&aside)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", &aside))?;
        fs::rename(&aside, &meta_path).map_err(io_err("rename", &aside))?;
        sync_dir(&topic.dir)?;
        let mut partitions = topic.partitions.clone();
        let log_config = topic_log_config(&self.log_config, &topic.config);
        for id in current..total {
            partitions.push(Arc::new(Partition::open(
                topic.name.clone(),
                id,
                &topic.dir,
                &log_config,
                &topic.config,
                self.settings,
            )?));
        }
        tracing::info!(topic = name, from = current, to = total, "added partitions");
        self.map.write().insert(
            name.to_string(),
            Arc::new(Topic {
                name: topic.name.clone(),
                partitions,
                config: topic.config,
                dir: topic.dir.clone(),
            }),
        );
        Ok(())
    }

    /// Deletes a topic and all its data.
    pub fn delete(&self, name: &str) -> Result<(), BrokerError> {
        let _admin = self.admin.lock();
        let topic = self
            .map
            .write()
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        for p in &topic.partitions {
            if let Err(e) = p.log.close() {
                tracing::warn!(topic = name, partition = p.id, error = %e, "closing a deleted partition failed");
            }
        }
        let grave = self
            .root
            .join(format!(".deleted-{name}-{}", unique_suffix()));
        fs::rename(&topic.dir, &grave).map_err(io_err("rename", &topic.dir))?;
        sync_dir(&self.root)?;
        fs::remove_dir_all(&grave).map_err(io_err("remove directory", &grave))?;
        Ok(())
    }

    /// The topic named `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.map
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    /// One partition of a topic.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        let unknown = || BrokerError::UnknownTopicOrPartition {
            topic: topic.to_string(),
            partition,
        };
        let map = self.map.read();
        let t = map.get(topic).ok_or_else(unknown)?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(unknown)
    }

    /// Every topic, by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.map.read().values().cloned().collect()
    }

    /// Flushes and closes every log.
    pub fn close_all(&self) {
        for topic in self.all() {
            for p in &topic.partitions {
                if let Err(e) = p.close() {
                    tracing::error!(topic = %topic.name, partition = p.id, error = %e, "closing partition log failed");
                }
            }
        }
    }
}

/// Rebuilds a partition's producer table (idempotence windows, open
/// transactions, aborted index): the snapshot, if it is valid and within
/// the log, plus a replay of every batch after it.
/// Reads a producer snapshot: its offset and table, if it is whole and
/// not ahead of the log's end `end`.
fn read_snapshot(path: &Path, end: u64) -> Option<(u64, ProducerTable)> {
    let buf = fs::read(path).ok()?;
    match ProducerTable::decode_snapshot(&buf) {
        Some((offset, table)) if offset <= end => Some((offset, table)),
        Some((offset, _)) => {
            tracing::warn!(path = %path.display(), offset, end, "producer snapshot is ahead of the log; not used");
            None
        }
        None => {
            tracing::warn!(path = %path.display(), "corrupt producer snapshot ignored");
            None
        }
    }
}

/// The producer table at the log's end: the newest usable snapshot, then
/// a replay of the log after it.
///
/// The snapshot at the last roll or close is used when it is usable and
/// not older than the cleaner's: below the cleaner's offset the log may
/// have lost batches to cleaning, whose producers' windows only a
/// snapshot still holds. Without either, the whole log is replayed.
fn load_producers(
    log: &Log,
    snapshot_path: &Path,
    cleaned_path: &Path,
) -> Result<ProducerTable, BrokerError> {
    let end = log.next_offset();
    let latest = read_snapshot(snapshot_path, end);
    let cleaned = read_snapshot(cleaned_path, end);
    let (from, mut table) = match (latest, cleaned) {
        (Some(l), Some(c)) if c.0 > l.0 => c,
        (Some(l), _) => l,
        (None, Some(c)) => c,
        (None, None) => (0, ProducerTable::default()),
    };
    crate::replay::replay(log, from, |batch| {
        let marker = marker_type(batch).map(|k| k == ControlType::Commit);
        table.replay(batch.header(), marker);
        Ok(())
    })?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_settings_survive_a_reopen_and_set_its_segment_size() {
        let dir = tempfile::tempdir().unwrap();
        let broker_log = LogConfig {
            segment_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let settings = ProducerSettings::default();
        let config =
            TopicConfig::from_pairs([("cleanup.policy", "compact"), ("segment.bytes", "65536")])
                .unwrap();
        {
            let topics = Topics::open(dir.path(), broker_log.clone(), settings).unwrap();
            topics.create_with_config("table", 1, config).unwrap();
            topics.create("plain", 1).unwrap();
            topics.add_partitions("table", 2).unwrap();
            assert_eq!(
                topics.get("table").unwrap().partitions[1]
                    .log
                    .segment_bytes(),
                65536
            );
            topics.close_all();
        }
        let topics = Topics::open(dir.path(), broker_log, settings).unwrap();
        let table = topics.get("table").unwrap();
        assert_eq!(table.config, config);
        for p in &table.partitions {
            assert_eq!(p.log.segment_bytes(), 65536);
        }
        let plain = topics.get("plain").unwrap();
        assert_eq!(plain.config, TopicConfig::default());
        assert_eq!(plain.partitions[0].log.segment_bytes(), 1 << 20);
        topics.close_all();
    }
}
