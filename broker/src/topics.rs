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

use ferry_storage::{FlushPolicy, Log, LogConfig};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::config::{MAX_PARTITIONS_PER_TOPIC, MAX_TOPICS};
use crate::error::{BrokerError, check_name};

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
}

impl Partition {
    /// The offset below which consumers may read.
    ///
    /// Under `always`, consumers never see a record that is not durable, so
    /// a crash cannot take back a record someone has already read. Under the
    /// other policies durability is not promised, and the limit is the log
    /// end.
    pub fn visible_offset(&self) -> u64 {
        match self.flush {
            FlushPolicy::Always => self.log.durable_offset(),
            _ => self.log.next_offset(),
        }
    }

    /// The flush policy of the log.
    pub fn flush_policy(&self) -> FlushPolicy {
        self.flush
    }
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    /// Topic name.
    pub name: Arc<str>,
    /// Partitions, indexed by number.
    pub partitions: Vec<Arc<Partition>>,
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    name: String,
    partitions: u32,
    created_ms: i64,
}

/// All topics of a broker.
#[derive(Debug)]
pub struct Topics {
    root: PathBuf,
    log_config: LogConfig,
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
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BrokerError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync directory", dir))
}

impl Topics {
    /// Opens every topic under `root`, recovering each partition log.
    pub fn open(root: &Path, log_config: LogConfig) -> Result<Topics, BrokerError> {
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
            let topic = Self::open_topic(&path, &log_config)?;
            map.insert(topic.name.to_string(), Arc::new(topic));
        }
        Ok(Topics {
            root: root.to_path_buf(),
            log_config,
            map: RwLock::new(map),
            admin: Mutex::new(()),
        })
    }

    fn open_topic(dir: &Path, log_config: &LogConfig) -> Result<Topic, BrokerError> {
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
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for id in 0..meta.partitions {
            let log = Log::open(dir.join(id.to_string()), log_config.clone())?;
            partitions.push(Arc::new(Partition {
                topic: name.clone(),
                id,
                log,
                flush: log_config.flush,
            }));
        }
        tracing::info!(topic = %name, partitions = meta.partitions, "opened topic");
        Ok(Topic {
            name,
            partitions,
            dir: dir.to_path_buf(),
        })
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create(&self, name: &str, partitions: u32) -> Result<(), BrokerError> {
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
        let topic = Self::open_topic(&dir, &self.log_config)?;
        self.map.write().insert(name.to_string(), Arc::new(topic));
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
                if let Err(e) = p.log.close() {
                    tracing::error!(topic = %topic.name, partition = p.id, error = %e, "closing partition log failed");
                }
            }
        }
    }
}
