//! Allocation of producer ids that stay unique across restarts.
//!
//! Ids are handed out from blocks of [`ID_BLOCK`]. Before the first id of a
//! block is handed out, the end of the block is written durably to
//! `<data_dir>/producer_ids` (temporary file, fsync, rename). After a crash
//! the broker resumes from the persisted end, skipping whatever was left of
//! the block, so no id is ever handed out twice.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::BrokerError;

/// Ids reserved per durable write.
pub const ID_BLOCK: i64 = 1000;

#[derive(Debug)]
struct Cursor {
    next: i64,
    reserved_until: i64,
}

/// Hands out producer ids.
#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    cursor: Mutex<Cursor>,
}

fn encode(v: i64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&v.to_le_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(buf: &[u8]) -> Option<i64> {
    let buf: &[u8; 12] = buf.try_into().ok()?;
    let crc = u32::from_le_bytes(buf[8..].try_into().ok()?);
    (crc32fast::hash(&buf[..8]) == crc)
        .then(|| i64::from_le_bytes(buf[..8].try_into().unwrap_or_default()))
}

impl ProducerIds {
    /// Opens the allocator under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<ProducerIds, BrokerError> {
        let path = data_dir.join("producer_ids");
        let start = match std::fs::read(&path) {
            Ok(buf) => decode(&buf).ok_or_else(|| {
                BrokerError::Config(format!(
                    "corrupt producer id file {}: refusing to start, since reusing producer ids could \
                     let retries of different producers collide",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(BrokerError::Io {
                    op: "read",
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Ok(ProducerIds {
            path,
            cursor: Mutex::new(Cursor {
                next: start,
                reserved_until: start,
            }),
        })
    }

    /// A producer id never handed out before, by this or an earlier run.
    pub fn allocate(&self) -> Result<i64, BrokerError> {
        let mut c = self.cursor.lock();
        if c.next == c.reserved_until {
            let until = c.reserved_until + ID_BLOCK;
            persist(&self.path, until)?;
            c.reserved_until = until;
        }
        let id = c.next;
        c.next += 1;
        Ok(id)
    }
}

fn persist(path: &Path, until: i64) -> Result<(), BrokerError> {
    ferry_storage::fsutil::atomic_write(path, &encode(until)).map_err(|source| BrokerError::Io {
        op: "replace",
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_reopens_even_mid_block() {
        let dir = tempfile::tempdir().unwrap();
        let a = ProducerIds::open(dir.path()).unwrap();
        let first: Vec<_> = (0..3).map(|_| a.allocate().unwrap()).collect();
        drop(a);
        let b = ProducerIds::open(dir.path()).unwrap();
        let second = b.allocate().unwrap();
        assert!(first.iter().all(|&f| f < second), "{first:?} then {second}");
    }

    #[test]
    fn a_corrupt_id_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("producer_ids"), b"garbage").unwrap();
        assert!(ProducerIds::open(dir.path()).is_err());
    }
}
