//! A throwaway PostgreSQL server for tests and the lab: `initdb` in a
//! temporary directory, `postgres` on a free loopback port, stopped by its
//! pid and deleted when dropped.
//!
//! The server binaries are looked up in `FERRY_POSTGRES_BIN` (a directory),
//! then Debian's `/usr/lib/postgresql/<version>/bin` (the highest version),
//! then `PATH`. [`TempPostgres::start`] answers `Ok(None)` when there is
//! none, so that a caller can skip and say so.
//!
//! PostgreSQL refuses to run as root. Run as root, the server runs as the
//! `postgres` user that Debian's package creates, and the directory is
//! handed to it.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The line the server logs once it accepts connections.
const READY_LINE: &str = "database system is ready to accept connections";
/// The superuser `initdb` creates (trust authentication, loopback only).
pub const POSTGRES_USER: &str = "ferry";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// Running a server binary, or preparing its directory, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        source: std::io::Error,
    },
    /// `initdb` or `postgres` failed; its output says why.
    #[error("{what} failed: {output}")]
    Failed {
        /// The command.
        what: String,
        /// Its output.
        output: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PostgresError {
    let what = what.into();
    move |source| PostgresError::Io { what, source }
}

/// Settings of a throwaway server.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Whether commits are flushed to disk (`fsync`, `synchronous_commit`).
    /// Off is faster and fine for tests that crash clients, not the server;
    /// the lab keeps it on, as a real deployment would.
    pub durable: bool,
    /// `max_connections`.
    pub max_connections: u32,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            durable: false,
            max_connections: 100,
        }
    }
}

/// A running throwaway server; stopped and deleted on drop.
pub struct TempPostgres {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    // Dropped last: the server's data directory.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempPostgres")
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish()
    }
}

/// The directory holding `initdb` and `postgres`, if any.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRY_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("postgres").is_file().then_some((version, bin))
                })
                .max_by_key(|(version, _)| *version)
                .map(|(_, bin)| bin)
        });
    debian.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    })
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn free_port() -> Result<u16, PostgresError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

impl TempPostgres {
    /// Starts a server, or `Ok(None)` if no server binary is installed.
    pub fn start(options: &PostgresOptions) -> Result<Option<TempPostgres>, PostgresError> {
        let Some(bin) = find_bin_dir() else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("ferry-postgres-")
            .tempdir()
            .map_err(io("creating the data directory"))?;
        let run_as = if rustix::process::geteuid().is_root() {
            let ids = postgres_ids().ok_or_else(|| PostgresError::Failed {
                what: "running PostgreSQL as root".into(),
                output: "PostgreSQL refuses root, and there is no `postgres` user to run it as"
                    .into(),
            })?;
            std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1))
                .map_err(io("handing the data directory to the postgres user"))?;
            Some(ids)
        } else {
            None
        };
        let command = |name: &str| {
            let mut c = Command::new(bin.join(name));
            if let Some((uid, gid)) = run_as {
                c.uid(uid).gid(gid);
            }
            c.current_dir(dir.path());
            c
        };
        let data = dir.path().join("data");
        let out = command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                POSTGRES_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .args(["--locale=C"])
            .output()
            .map_err(io(format!("running {}", bin.join("initdb").display())))?;
        if !out.status.success() {
            return Err(PostgresError::Failed {
                what: "initdb".into(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        let port = free_port()?;
        let log = dir.path().join("postgres.log");
        let log_file = std::fs::File::create(&log).map_err(io("creating the server log"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))
                .map_err(io("handing the log to the postgres user"))?;
        }
        let durable = if options.durable { "on" } else { "off" };
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", &format!("fsync={durable}")])
            .args(["-c", &format!("synchronous_commit={durable}")])
            .args(["-c", &format!("full_page_writes={durable}")])
            .args([
                "-c",
                &format!("max_connections={}", options.max_connections),
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(io("opening the server log"))?)
            .stderr(log_file)
            .spawn()
            .map_err(io(format!("running {}", bin.join("postgres").display())))?;
        let mut server = TempPostgres {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(Some(server))
    }

    fn wait_ready(&mut self) -> Result<(), PostgresError> {
        let started = Instant::now();
        loop {
            let log = self.log_text();
            if log.contains(READY_LINE) {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > STARTUP_TIMEOUT {
                return Err(PostgresError::Failed {
                    what: match exited {
                        Some(status) => format!("postgres (exited with {status})"),
                        None => format!("postgres (not ready after {STARTUP_TIMEOUT:?})"),
                    },
                    output: log,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connection string for the `postgres` database, as
    /// `tokio-postgres` and `psql` take it.
    pub fn url(&self) -> String {
        format!(
            "postgres://{POSTGRES_USER}@{}:{}/postgres",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT) by pid, then SIGKILL if it lingers.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let started = Instant::now();
        while started.elapsed() < SHUTDOWN_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throwaway_server_accepts_connections_and_is_gone_after_drop() {
        let Some(server) = TempPostgres::start(&PostgresOptions::default()).unwrap() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI installs PostgreSQL, yet no server binary was found"
            );
            eprintln!("skipped: no PostgreSQL server binary");
            return;
        };
        let addr = server.addr();
        std::net::TcpStream::connect(addr).unwrap();
        let data = server._dir.path().to_owned();
        drop(server);
        assert!(std::net::TcpStream::connect(addr).is_err());
        assert!(!data.exists());
    }
}
