//! Physical baselines: what this machine does with no broker in the way.
//!
//! Each is time-bounded (about [`BaselineConfig::each`] long) so the whole
//! set costs a couple of seconds and can run before every benchmark:
//!
//! - sequential `write(2)` of 1 MiB chunks to a new file in the data dir
//!   (page cache bandwidth: the ceiling for `fsync never`);
//! - `write`+`fdatasync` per 4 KiB append (latency of one durable write)
//!   and per 256 KiB append (durable bandwidth: the ceiling for
//!   `fsync always`);
//! - loopback TCP between two tokio tasks, each on its own current-thread
//!   runtime and thread as the client and the embedded broker are, over
//!   127.0.0.1 with `TCP_NODELAY` (the ceiling for anything over the
//!   network).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Latency, MB, latency_histogram, record_us};

/// Chunk of the sequential `write(2)` baseline.
pub const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// Most bytes the `write(2)` baseline writes, so a fast disk cannot fill
/// the data dir's file system.
pub const MAX_WRITE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Append of the `write`+`fdatasync` latency baseline.
pub const SMALL_SYNC_CHUNK_BYTES: usize = 4 * 1024;
/// Append of the `write`+`fdatasync` bandwidth baseline: the producer's
/// default batch size.
pub const BULK_SYNC_CHUNK_BYTES: usize = 256 * 1024;
/// Most `write`+`fdatasync` rounds one measurement makes.
pub const MAX_SYNC_OPS: u64 = 100_000;
/// Writes and reads of the loopback TCP baseline.
pub const TCP_CHUNK_BYTES: usize = 256 * 1024;

/// Where and how long to measure.
#[derive(Clone, Debug)]
pub struct BaselineConfig {
    /// Directory for the disk baselines; their files are removed after.
    pub dir: PathBuf,
    /// Time for each of the four measurements.
    pub each: Duration,
}

/// Bytes moved per second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub chunk_bytes: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_sec: f64,
}

impl Throughput {
    fn new(chunk_bytes: usize, bytes: u64, elapsed: Duration) -> Throughput {
        let seconds = elapsed.as_secs_f64();
        Throughput {
            chunk_bytes,
            bytes,
            seconds,
            mb_per_sec: bytes as f64 / MB / seconds.max(1e-9),
        }
    }
}

/// Rounds of `write` + `fdatasync`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub chunk_bytes: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    /// Of one `write` + `fdatasync` round.
    pub latency: Latency,
}

/// All baselines of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The directory the disk baselines wrote to.
    pub dir: String,
    pub write: Throughput,
    pub fdatasync_4k: Synced,
    pub fdatasync_bulk: Synced,
    pub loopback_tcp: Throughput,
}

impl Baseline {
    /// Runs the four measurements one after another.
    pub fn measure(config: &BaselineConfig) -> std::io::Result<Baseline> {
        Ok(Baseline {
            dir: config.dir.display().to_string(),
            write: write_throughput(&config.dir, config.each)?,
            fdatasync_4k: write_fdatasync(&config.dir, SMALL_SYNC_CHUNK_BYTES, config.each)?,
            fdatasync_bulk: write_fdatasync(&config.dir, BULK_SYNC_CHUNK_BYTES, config.each)?,
            loopback_tcp: loopback_tcp(config.each)?,
        })
    }

    /// Reads the JSON that `ferry bench baseline --json` prints.
    pub fn from_json(text: &str) -> Result<Baseline, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wrapped {
            baseline: Baseline,
        }
        serde_json::from_str::<Wrapped>(text)
            .map(|w| w.baseline)
            .or_else(|_| serde_json::from_str(text))
    }

    /// One line per measurement.
    pub fn human(&self) -> String {
        format!(
            "write(2) {:.0} MB/s ({} KiB chunks)\n\
             write+fdatasync {} KiB: {:.0} ops/s, {:.1} MB/s, {}\n\
             write+fdatasync {} KiB: {:.0} ops/s, {:.1} MB/s, {}\n\
             loopback TCP {:.0} MB/s ({} KiB chunks)",
            self.write.mb_per_sec,
            self.write.chunk_bytes / 1024,
            self.fdatasync_4k.chunk_bytes / 1024,
            self.fdatasync_4k.ops_per_sec,
            self.fdatasync_4k.mb_per_sec,
            self.fdatasync_4k.latency.human(),
            self.fdatasync_bulk.chunk_bytes / 1024,
            self.fdatasync_bulk.ops_per_sec,
            self.fdatasync_bulk.mb_per_sec,
            self.fdatasync_bulk.latency.human(),
            self.loopback_tcp.mb_per_sec,
            self.loopback_tcp.chunk_bytes / 1024,
        )
    }
}

/// A file in `dir` removed when dropped.
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn create(dir: &Path, what: &str) -> std::io::Result<(ScratchFile, File)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("ferry-baseline-{what}-{}.bin", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        Ok((ScratchFile(path), file))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sequential `write(2)` of [`WRITE_CHUNK_BYTES`] chunks to a new file for
/// about `duration` (at most [`MAX_WRITE_BYTES`]), without syncing.
pub fn write_throughput(dir: &Path, duration: Duration) -> std::io::Result<Throughput> {
    let (_scratch, mut file) = ScratchFile::create(dir, "write")?;
    let chunk = vec![0x5a_u8; WRITE_CHUNK_BYTES];
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration && bytes < MAX_WRITE_BYTES {
        file.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    Ok(Throughput::new(WRITE_CHUNK_BYTES, bytes, start.elapsed()))
}

/// Appends of `chunk_bytes` each followed by `fdatasync`, for about
/// `duration` (at least one round, at most [`MAX_SYNC_OPS`]).
pub fn write_fdatasync(
    dir: &Path,
    chunk_bytes: usize,
    duration: Duration,
) -> std::io::Result<Synced> {
    let (_scratch, mut file) = ScratchFile::create(dir, "fdatasync")?;
    let chunk = vec![0xa5_u8; chunk_bytes];
    let mut h = latency_histogram();
    let mut ops = 0u64;
    let start = Instant::now();
    loop {
        let t = Instant::now();
        file.write_all(&chunk)?;
        file.sync_data()?;
        record_us(&mut h, t.elapsed().as_micros() as u64);
        ops += 1;
        if start.elapsed() >= duration || ops >= MAX_SYNC_OPS {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Synced {
        chunk_bytes,
        ops,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        mb_per_sec: (ops * chunk_bytes as u64) as f64 / MB / seconds,
        latency: Latency::from_histogram("write_fdatasync", &h),
    })
}

/// `count` sequential `write(2)`s of `chunk` to a new file, without
/// syncing: the storage benches' baseline for appending the same bytes.
pub fn write_count(dir: &Path, chunk: &[u8], count: usize) -> std::io::Result<Duration> {
    let (_scratch, mut file) = ScratchFile::create(dir, "write-count")?;
    let start = Instant::now();
    for _ in 0..count {
        file.write_all(chunk)?;
    }
    Ok(start.elapsed())
}

/// [`write_count`], then one `fdatasync`: the same bytes written and made
/// durable, as a cleaner's rewrite is.
pub fn write_count_synced(dir: &Path, chunk: &[u8], count: usize) -> std::io::Result<Duration> {
    let (_scratch, mut file) = ScratchFile::create(dir, "write-count-synced")?;
    let start = Instant::now();
    for _ in 0..count {
        file.write_all(chunk)?;
    }
    file.sync_data()?;
    Ok(start.elapsed())
}

/// `count` appends of `chunk`, each followed by `fdatasync`, on one
/// thread: the storage benches' baseline for group commit.
pub fn write_fdatasync_count(dir: &Path, chunk: &[u8], count: usize) -> std::io::Result<Duration> {
    let (_scratch, mut file) = ScratchFile::create(dir, "fdatasync-count")?;
    let start = Instant::now();
    for _ in 0..count {
        file.write_all(chunk)?;
        file.sync_data()?;
    }
    Ok(start.elapsed())
}

/// One tokio task streams [`TCP_CHUNK_BYTES`] writes to another over
/// 127.0.0.1 for about `duration`; the throughput is what the reader saw,
/// from its first byte to end of stream.
pub fn loopback_tcp(duration: Duration) -> std::io::Result<Throughput> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));

    let reader = std::thread::Builder::new()
        .name("ferry-baseline-tcp-reader".into())
        .spawn(move || -> std::io::Result<(u64, Duration)> {
            current_thread()?.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let (mut socket, _) = listener.accept().await?;
                socket.set_nodelay(true)?;
                let mut buf = vec![0u8; TCP_CHUNK_BYTES];
                let mut bytes = 0u64;
                let n = socket.read(&mut buf).await?;
                let start = Instant::now();
                bytes += n as u64;
                loop {
                    match socket.read(&mut buf).await? {
                        0 => break,
                        n => bytes += n as u64,
                    }
                }
                Ok((bytes, start.elapsed()))
            })
        })?;

    let writer_stop = stop.clone();
    let writer = std::thread::Builder::new()
        .name("ferry-baseline-tcp-writer".into())
        .spawn(move || -> std::io::Result<()> {
            current_thread()?.block_on(async move {
                let mut socket = tokio::net::TcpStream::connect(addr).await?;
                socket.set_nodelay(true)?;
                let chunk = vec![0x5a_u8; TCP_CHUNK_BYTES];
                while !writer_stop.load(Ordering::Relaxed) {
                    socket.write_all(&chunk).await?;
                }
                socket.shutdown().await
            })
        })?;

    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let written = writer
        .join()
        .map_err(|_| std::io::Error::other("loopback TCP writer panicked"));
    let (bytes, elapsed) = reader
        .join()
        .map_err(|_| std::io::Error::other("loopback TCP reader panicked"))??;
    written??;
    Ok(Throughput::new(TCP_CHUNK_BYTES, bytes, elapsed))
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_tcp_moves_bytes() {
        let t = loopback_tcp(Duration::from_millis(100)).unwrap();
        assert!(t.bytes > 0, "{t:?}");
        assert!(t.mb_per_sec > 0.0 && t.mb_per_sec.is_finite(), "{t:?}");
    }

    #[test]
    fn disk_baselines_write_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_throughput(dir.path(), Duration::from_millis(50)).unwrap();
        assert!(w.bytes >= WRITE_CHUNK_BYTES as u64 && w.mb_per_sec > 0.0);
        let s = write_fdatasync(dir.path(), 4096, Duration::from_millis(20)).unwrap();
        assert!(s.ops >= 1 && s.ops_per_sec > 0.0);
        assert_eq!(s.latency.samples, s.ops);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn baseline_json_round_trips_bare_or_wrapped() {
        let b = Baseline {
            dir: "/d".into(),
            loopback_tcp: Throughput::new(1, 2_000_000, Duration::from_secs(1)),
            ..Baseline::default()
        };
        let bare = serde_json::to_string(&b).unwrap();
        assert_eq!(Baseline::from_json(&bare).unwrap(), b);
        let wrapped = serde_json::json!({ "bench": "baseline", "baseline": b }).to_string();
        assert_eq!(Baseline::from_json(&wrapped).unwrap(), b);
        assert_eq!(b.loopback_tcp.mb_per_sec, 2.0);
    }
}
