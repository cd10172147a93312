//! Broker crash control: a real `kill -9` of a `ferry broker` subprocess,
//! an in-process crash of an [`EmbeddedBroker`], and torn tails.
//!
//! # Torn tails
//!
//! A crash can leave the end of a segment file in any state the page cache
//! and the disk happened to reach: the last batches partly written, or
//! bytes that were never a batch. [`tear_tails`] fakes that on a stopped
//! broker's data directory, for the last segment of every log below it:
//!
//! - [`TailDamage::Garbage`] writes random bytes just past the last valid
//!   batch (segment files are preallocated and zero there);
//! - [`TailDamage::Truncate`] zeroes everything from a random byte of the
//!   *non-durable* tail on, cutting a batch in the middle, as a write that
//!   never reached the disk would;
//! - [`TailDamage::TruncateAndGarbage`] does both, garbage at the cut.
//!
//! Only bytes past the durable data are touched. Where the data is durable
//! comes from [`DurableFloors`] (log directory → durable offset); a log
//! without a floor is assumed durable to its last valid batch, so it only
//! gets garbage. Recovery must then cut the damage off and keep every
//! record below the floor. The layout it relies on is storage's: a log is a
//! directory of `{base_offset:020}.log` segment files holding back-to-back
//! record batches (docs/format.md), zero past the end of the data.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read as _, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use ferry_broker::{BrokerError, BrokerState, EmbeddedBroker};
use ferry_proto::batch::{HEADER_LEN, check_framing};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Most garbage bytes written at one tail.
pub const MAX_GARBAGE_BYTES: usize = 512;

/// A `ferry broker` subprocess.
///
/// ```no_run
/// # fn demo() -> std::io::Result<()> {
/// use ferry_testkit::BrokerProcess;
/// let dir = std::path::Path::new("/tmp/ferry-data");
/// let broker = BrokerProcess::start("target/debug/ferry", dir, "127.0.0.1:0")?;
/// println!("broker at {}", broker.addr());
/// let broker = broker.kill9_and_restart()?; // same port, recovery runs
/// broker.sigterm()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    addr: String,
    kafka_addr: Option<String>,
    http_addr: Option<String>,
    bin: PathBuf,
    data_dir: PathBuf,
    extra_args: Vec<OsString>,
}

impl BrokerProcess {
    /// Runs `bin broker --data-dir DATA_DIR --listen LISTEN` and waits until
    /// it prints the address it serves on. In an integration test, `bin` is
    /// `env!("CARGO_BIN_EXE_ferry")`.
    pub fn start(
        bin: impl AsRef<Path>,
        data_dir: impl AsRef<Path>,
        listen: &str,
    ) -> std::io::Result<BrokerProcess> {
        Self::start_with_args(bin, data_dir, listen, Vec::<OsString>::new())
    }

    /// Like [`BrokerProcess::start`], with more `ferry broker` flags.
    pub fn start_with_args(
        bin: impl AsRef<Path>,
        data_dir: impl AsRef<Path>,
        listen: &str,
        extra_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> std::io::Result<BrokerProcess> {
        let bin = bin.as_ref().to_path_buf();
        let data_dir = data_dir.as_ref().to_path_buf();
        let extra_args: Vec<OsString> = extra_args.into_iter().map(Into::into).collect();
        // The Kafka listener takes a free port too, unless the caller
        // chose one (or `off`): tests run brokers side by side.
        let kafka_default: &[&str] = if extra_args.iter().any(|a| a == "--kafka-listen") {
            &[]
        } else {
            &["--kafka-listen", "127.0.0.1:0"]
        };
        // So does the HTTP listener (console, admin API, metrics).
        let http_default: &[&str] = if extra_args
            .iter()
            .any(|a| a == "--http-listen" || a == "--metrics-listen")
        {
            &[]
        } else {
            &["--http-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(&bin)
            .args(["broker", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", listen])
            .args(kafka_default)
            .args(http_default)
            .args(&extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut stdout = BufReader::new(stdout);
        stdout.read_line(&mut line)?;
        let addr = line.trim().rsplit(' ').next().unwrap_or("").to_string();
        let kafka_off = extra_args
            .windows(2)
            .any(|w| w[0] == "--kafka-listen" && w[1] == "off");
        let kafka_addr = if addr.contains(':') && !kafka_off {
            let mut kafka_line = String::new();
            stdout.read_line(&mut kafka_line)?;
            kafka_line
                .trim()
                .strip_prefix("ferry broker serving Kafka clients on ")
                .map(str::to_string)
        } else {
            None
        };
        let http_off = extra_args
            .windows(2)
            .any(|w| (w[0] == "--http-listen" || w[0] == "--metrics-listen") && w[1] == "off");
        let http_addr = if addr.contains(':') && !http_off {
            let mut http_line = String::new();
            stdout.read_line(&mut http_line)?;
            http_line
                .trim()
                .strip_prefix("ferry broker serving the console on http://")
                .map(|a| a.trim_end_matches('/').to_string())
        } else {
            None
        };
        if !addr.contains(':') {
            let _ = child.kill();
            let status = child.wait()?;
            return Err(std::io::Error::other(format!(
                "ferry broker did not start ({status}); first line {line:?}"
            )));
        }
        Ok(BrokerProcess {
            child,
            addr,
            kafka_addr,
            http_addr,
            bin,
            data_dir,
            extra_args,
        })
    }

    /// The address it serves on, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Kafka listener's address, `host:port`, unless it is off.
    pub fn kafka_addr(&self) -> Option<&str> {
        self.kafka_addr.as_deref()
    }

    /// The HTTP listener's address, `host:port`, unless it is off.
    pub fn http_addr(&self) -> Option<&str> {
        self.http_addr.as_deref()
    }

    /// The flags for a restart: the same ones, with the Kafka listener on
    /// the port it had, so Kafka clients find it again.
    fn restart_args(&mut self) -> Vec<OsString> {
        let mut args = std::mem::take(&mut self.extra_args);
        if let Some(k) = &self.kafka_addr {
            if let Some(i) = args.iter().position(|a| a == "--kafka-listen") {
                args.drain(i..(i + 2).min(args.len()));
            }
            args.extend(["--kafka-listen".into(), k.into()]);
        }
        args
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILL: no flush, no checkpoint, no goodbye. Waits for the process
    /// to be gone.
    pub fn kill9(mut self) -> std::io::Result<()> {
        self.kill_now()
    }

    fn kill_now(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// `kill -9`, then a new broker on the same data dir, port and flags.
    pub fn kill9_and_restart(mut self) -> std::io::Result<BrokerProcess> {
        self.kill_now()?;
        let args = self.restart_args();
        Self::start_with_args(&self.bin, &self.data_dir, &self.addr, args)
    }

    /// `kill -9`, [`tear_tails`] on the data dir, then a new broker on the
    /// same data dir, port and flags.
    pub fn kill9_tear_and_restart(
        mut self,
        damage: TailDamage,
        floors: &DurableFloors,
        seed: u64,
    ) -> std::io::Result<(BrokerProcess, TearReport)> {
        self.kill_now()?;
        let report = tear_tails(&self.data_dir, damage, floors, seed)?;
        let args = self.restart_args();
        let broker = Self::start_with_args(&self.bin, &self.data_dir, &self.addr, args)?;
        Ok((broker, report))
    }

    /// SIGTERM (graceful shutdown), and the exit status.
    pub fn sigterm(mut self) -> std::io::Result<ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to do to each log's tail; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailDamage {
    /// Random bytes right after the last valid batch.
    Garbage,
    /// The non-durable tail zeroed from a random byte on.
    Truncate,
    /// Truncate, then garbage at the cut.
    TruncateAndGarbage,
}

/// Per log directory, the offset below which every record is durable and
/// must survive.
pub type DurableFloors = HashMap<PathBuf, u64>;

/// What [`tear_tails`] did to one log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornLog {
    /// The log directory.
    pub dir: PathBuf,
    /// The damaged segment file.
    pub segment: PathBuf,
    /// Byte position after the last valid batch, before the damage.
    pub valid_end: u64,
    /// The offset after the last valid batch, before the damage.
    pub next_offset: u64,
    /// Byte position from which bytes were zeroed (`valid_end` if none).
    pub cut_at: u64,
    /// The offset after the last batch wholly before the cut: recovery
    /// must reopen the log with exactly this next offset.
    pub surviving_next_offset: u64,
    /// Garbage bytes written at the cut.
    pub garbage_bytes: usize,
}

/// What [`tear_tails`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TearReport {
    /// One entry per log that was damaged.
    pub logs: Vec<TornLog>,
}

impl TearReport {
    /// Records cut off across all logs (not counting garbage).
    pub fn records_cut(&self) -> u64 {
        self.logs
            .iter()
            .map(|l| l.next_offset - l.surviving_next_offset)
            .sum()
    }

    /// Bytes zeroed across all logs.
    pub fn bytes_zeroed(&self) -> u64 {
        self.logs.iter().map(|l| l.valid_end - l.cut_at).sum()
    }
}

/// The durable offset of every topic partition of a running broker,
/// keyed by log directory (for [`tear_tails`]). The internal offsets log
/// is not included: it gets only garbage.
pub fn durable_floors(state: &BrokerState) -> DurableFloors {
    state.durable_floors().into_iter().collect()
}

/// Crashes an in-process broker (no flush, no checkpoint), damages the
/// tail of every log past its durable data, and starts it again on the
/// same data dir and port, so recovery has to deal with the damage.
///
/// The durable floors are read after the crash, when no acknowledgement
/// can be sent any more, so nothing the broker acknowledged is ever cut.
pub async fn crash_and_tear(
    broker: EmbeddedBroker,
    damage: TailDamage,
    seed: u64,
) -> Result<(EmbeddedBroker, TearReport), BrokerError> {
    let state: Arc<BrokerState> = broker.state().clone();
    let (config, tmp) = broker.crash().await?;
    let floors = durable_floors(&state);
    // The state holds the data-dir lock and the logs; the restart needs
    // both back.
    drop(state);
    let dir = config.data_dir.clone();
    let report = tokio::task::spawn_blocking(move || tear_tails(&dir, damage, &floors, seed))
        .await
        .map_err(|e| BrokerError::Config(format!("tear tails: {e}")))?
        .map_err(|source| BrokerError::Io {
            op: "tear tails",
            path: config.data_dir.display().to_string(),
            source,
        })?;
    let broker = EmbeddedBroker::start_with(config, tmp).await?;
    Ok((broker, report))
}

/// Damages the last segment of every log under `data_dir` (see the
/// [module docs](self)). The broker must not be running.
pub fn tear_tails(
    data_dir: &Path,
    damage: TailDamage,
    floors: &DurableFloors,
    seed: u64,
) -> std::io::Result<TearReport> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dirs = Vec::new();
    log_dirs(data_dir, &mut dirs)?;
    dirs.sort();
    let mut report = TearReport::default();
    for (dir, base_offset, segment) in dirs {
        let floor = floors.get(&dir).copied();
        if let Some(torn) = tear_one(&dir, &segment, base_offset, floor, damage, &mut rng)? {
            report.logs.push(torn);
        }
    }
    Ok(report)
}

/// Every directory below `dir` holding segment files, with its last
/// segment's base offset and path. Hidden directories (deleted topics,
/// unfinished creations) are skipped.
fn log_dirs(dir: &Path, out: &mut Vec<(PathBuf, u64, PathBuf)>) -> std::io::Result<()> {
    let mut last: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            if !name.starts_with('.') {
                log_dirs(&path, out)?;
            }
            continue;
        }
        let Some(base) = name
            .strip_suffix(".log")
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if last.as_ref().is_none_or(|(b, _)| base > *b) {
            last = Some((base, path));
        }
    }
    if let Some((base, path)) = last {
        out.push((dir.to_path_buf(), base, path));
    }
    Ok(())
}

fn tear_one(
    dir: &Path,
    segment: &Path,
    base_offset: u64,
    floor: Option<u64>,
    damage: TailDamage,
    rng: &mut StdRng,
) -> std::io::Result<Option<TornLog>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let ends = batch_ends(&bytes, base_offset);
    let (valid_end, next_offset) = ends[ends.len() - 1];
    // The first batch end at or past the floor: bytes before it stay.
    let keep = match floor {
        None => valid_end,
        Some(f) => ends
            .iter()
            .find(|(_, n)| *n >= f)
            .map_or(valid_end, |(p, _)| *p),
    };
    let truncate = matches!(
        damage,
        TailDamage::Truncate | TailDamage::TruncateAndGarbage
    );
    let cut_at = if truncate && keep < valid_end {
        rng.random_range(keep..valid_end)
    } else {
        valid_end
    };
    let surviving_next_offset = ends
        .iter()
        .take_while(|(p, _)| *p <= cut_at)
        .last()
        .map_or(base_offset, |(_, n)| *n);
    if cut_at < valid_end {
        file.seek(SeekFrom::Start(cut_at))?;
        file.write_all(&vec![0u8; (valid_end - cut_at) as usize])?;
    }
    let garbage_bytes = if matches!(damage, TailDamage::Garbage | TailDamage::TruncateAndGarbage) {
        let room = (bytes.len() as u64).saturating_sub(cut_at) as usize;
        write_garbage(&mut file, cut_at, room, rng)?
    } else {
        0
    };
    if cut_at == valid_end && garbage_bytes == 0 {
        return Ok(None);
    }
    file.sync_all()?;
    Ok(Some(TornLog {
        dir: dir.to_path_buf(),
        segment: segment.to_path_buf(),
        valid_end,
        next_offset,
        cut_at,
        surviving_next_offset,
        garbage_bytes,
    }))
}

/// The batch ends of a segment's bytes (byte position, next offset), from
/// the start, as recovery would find them: up to the first zeroed header,
/// bad frame or offset gap.
fn batch_ends(bytes: &[u8], base_offset: u64) -> Vec<(u64, u64)> {
    let mut ends = vec![(0u64, base_offset)];
    let mut pos = 0usize;
    let mut next = base_offset;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() >= HEADER_LEN && rest[..HEADER_LEN].iter().all(|b| *b == 0) {
            break;
        }
        let Ok(header) = check_framing(rest) else {
            break;
        };
        if header.base_offset != next {
            break;
        }
        pos += header.batch_len as usize;
        next = header.next_offset();
        ends.push((pos as u64, next));
    }
    ends
}

/// Writes 1 to [`MAX_GARBAGE_BYTES`] random bytes (at most `room`) at
/// `at`; returns how many.
fn write_garbage(
    file: &mut std::fs::File,
    at: u64,
    room: usize,
    rng: &mut StdRng,
) -> std::io::Result<usize> {
    let n = rng.random_range(1..=MAX_GARBAGE_BYTES).min(room);
    if n > 0 {
        let mut garbage = vec![0u8; n];
        rng.fill(&mut garbage[..]);
        // A zero first byte could read as "no batch here"; make it
        // unmistakably garbage.
        garbage[0] |= 0x80;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&garbage)?;
    }
    Ok(n)
}
