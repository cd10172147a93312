//! The data dir itself: the lock that keeps a second broker out, and the
//! format marker that keeps a broker from reading files of a format it
//! does not write.

use std::path::Path;

use crate::error::BrokerError;

/// The data dir's format: 2 since record batches are Kafka's RecordBatch
/// v2. A data dir of another format is refused, never recovered: recovery
/// would read its first batch as the end of the log and zero the rest.
pub const DATA_FORMAT: u32 = 2;
/// The marker's file name.
const FORMAT_FILE: &str = "format";
/// What the marker holds, before the number.
const FORMAT_PREFIX: &str = "ferry-data-format ";
/// Entries only a broker writes: a dir holding one but no marker was
/// written by a Ferry from before the marker (batch format 1).
const BROKER_ENTRIES: [&str; 4] = ["topics", "__offsets", "__transactions", "producer_ids"];
/// Longest marker file read.
const MAX_FORMAT_FILE_BYTES: u64 = 64;

/// Takes an exclusive lock on the data dir, so two brokers never share it.
pub(crate) fn lock(dir: &Path) -> Result<std::fs::File, BrokerError> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BrokerError::Io {
            op: "open lock file",
            path: path.display().to_string(),
            source,
        })?;
    file.try_lock().map_err(|e| {
        BrokerError::Config(format!(
            "data dir {} is in use by another broker ({e})",
            dir.display()
        ))
    })?;
    Ok(file)
}

/// Checks the format marker, writing it in a new data dir.
pub(crate) fn check_format(dir: &Path) -> Result<(), BrokerError> {
    let path = dir.join(FORMAT_FILE);
    let refuse = |found: &str| {
        BrokerError::Config(format!(
            "data dir {} holds {found}; this broker reads and writes format {DATA_FORMAT} \
             (Kafka's RecordBatch v2) and leaves it untouched: start on a new --data-dir",
            dir.display()
        ))
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.len() > MAX_FORMAT_FILE_BYTES {
                return Err(refuse("an unreadable format marker"));
            }
            let text = std::fs::read_to_string(&path).map_err(|source| BrokerError::Io {
                op: "read data dir format",
                path: path.display().to_string(),
                source,
            })?;
            let version = text
                .trim()
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| refuse("an unreadable format marker"))?;
            if version != DATA_FORMAT {
                return Err(refuse(&format!("data format {version}")));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if BROKER_ENTRIES.iter().any(|e| dir.join(e).exists()) {
                return Err(refuse("data of an earlier Ferry (record batch format 1)"));
            }
            ferry_storage::fsutil::atomic_write(
                &path,
                format!("{FORMAT_PREFIX}{DATA_FORMAT}\n").as_bytes(),
            )
            .map_err(|source| BrokerError::Io {
                op: "write data dir format",
                path: path.display().to_string(),
                source,
            })
        }
        Err(source) => Err(BrokerError::Io {
            op: "read data dir format",
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_gets_the_marker_and_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        check_format(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap();
        assert_eq!(text, "ferry-data-format 2\n");
        check_format(dir.path()).unwrap();
    }

    #[test]
    fn an_older_or_foreign_dir_is_refused_and_left_alone() {
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir(old.path().join("topics")).unwrap();
        let e = check_format(old.path()).unwrap_err().to_string();
        assert!(e.contains("record batch format 1"), "{e}");
        assert!(!old.path().join(FORMAT_FILE).exists());

        for (text, says) in [
            ("ferry-data-format 3\n", "data format 3"),
            ("something else", "unreadable"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(FORMAT_FILE), text).unwrap();
            let e = check_format(dir.path()).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
