//! File-system steps every crash-safe file in Ferry relies on: replacing a
//! file atomically, and making a directory entry durable.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary file [`atomic_write`] writes `path` to before the rename:
/// `path` with `.tmp` appended (`NAME.index` → `NAME.index.tmp`).
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Replaces the file at `path` with `bytes` atomically: write
/// [`tmp_path`]`(path)`, fdatasync it, rename it over `path`, fsync the
/// directory. A crash leaves the old file or the new one, never a mix,
/// plus at worst a stray temporary file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write_mode(path, bytes, 0o666)
}

/// [`atomic_write`] with the permission bits of the new file (before the
/// umask): `0o600` for a file only its owner may read.
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = tmp_path(path);
    // A temporary file left by an earlier attempt would keep its own
    // permission bits; the mode applies only to a file this call creates.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(parent_dir(path))
}

/// fsync of a directory, so that creations, renames and unlinks in it are
/// durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        atomic_write(&path, b"first version").unwrap();
        atomic_write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!tmp_path(&path).exists());
        assert_eq!(tmp_path(&path), dir.path().join("state.tmp"));
    }

    #[test]
    fn an_atomic_write_into_a_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("state");
        assert!(atomic_write(&path, b"x").is_err());
        assert!(!path.exists());
    }
}
