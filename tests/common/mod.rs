//! Running the real `ferry` binary from the root tests.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// The `ferry` binary under test.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Runs `ferry ARGS --broker ADDR`, feeding `stdin` if given.
pub fn ferry(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(FERRY)
        .args(args)
        .args(["--broker", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(s) = stdin {
        // A command that fails before reading its input (a bad flag, a dead
        // broker) closes the pipe first; its exit status is what counts.
        match input.write_all(s.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.expect("write stdin"),
        }
    }
    drop(input);
    child.wait_with_output().expect("wait for ferry")
}

/// Asserts the command succeeded, showing its stderr if not.
pub fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The JSON objects among the output's lines.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Runs `ferry consume TOPIC --from earliest --idle-timeout 1500 EXTRA`
/// against `addr`, requires success, and returns its record lines.
pub fn consume_from_earliest(addr: &str, topic: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "consume",
        topic,
        "--from",
        "earliest",
        "--idle-timeout",
        "1500",
    ];
    args.extend_from_slice(extra);
    json_lines(&ok(&ferry(addr, &args, None)).stdout)
}

/// Runs `ferry topic create NAME --partitions N` against `addr` and
/// requires success.
pub fn create_topic(addr: &str, name: &str, partitions: u32) {
    ok(&ferry(
        addr,
        &[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ],
        None,
    ));
}

/// A Python interpreter with `tests/python/requirements.txt` installed:
/// `FERRY_TEST_PYTHON` if set, else a virtual environment under Cargo's
/// target tmp dir, made (with pip, from PyPI) on first use and again when
/// the requirements change.
pub fn python_with_requirements() -> std::path::PathBuf {
    if let Ok(python) = std::env::var("FERRY_TEST_PYTHON") {
        return python.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let requirements = root.join("tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).expect("read requirements.txt");
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferry-python");
    let python = venv.join("bin/python3");
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("run python3 -m venv");
    assert!(made.success(), "python3 -m venv {} failed", venv.display());
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .expect("run pip");
    assert!(
        installed.success(),
        "pip install -r {} failed",
        requirements.display()
    );
    std::fs::write(&stamp, wanted).expect("write the requirements stamp");
    python
}
