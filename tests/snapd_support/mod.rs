//! Helpers for `tests/snapd.rs`: the snapd stand-in, a real snapd, and the agent binary.

pub mod fake;
pub mod real;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Generous bound for anything a test waits for; reaching it is a failure, not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The real binary with a clean snap environment (the caller adds what the test needs).
pub fn pocketses() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pocketses"));
    for var in [
        "SNAP",
        "SNAP_COOKIE",
        "SNAP_CONTEXT",
        "SNAP_INSTANCE_NAME",
        "SNAP_COMMON",
        "POCKETSES_SNAP_SOCKET",
        "POCKETSES_SNAPD_SOCKET",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Runs `cmd` to completion, killing it (and failing) if it outlives [`PATIENCE`].
pub fn run(cmd: &mut Command) -> Output {
    let child = spawn_piped(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(PATIENCE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("{cmd:?} did not finish within {PATIENCE:?}");
        }
    }
}

/// A running agent whose stdout and stderr lines arrive on channels.
pub struct Agent {
    child: Child,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
}

impl Agent {
    pub fn spawn(cmd: &mut Command) -> Agent {
        let mut child = spawn_piped(cmd);
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Agent {
            child,
            stdout,
            stderr,
        }
    }

    pub fn sighup(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGHUP).unwrap();
    }

    /// The first stdout snapshot that passes `check`, skipping older ones.
    pub fn snapshot_where(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let line = wait_for(&self.stdout, what, |line| {
            serde_json::from_str(line).is_ok_and(|v| check(&v))
        });
        serde_json::from_str(&line).unwrap()
    }

    /// The next stderr line containing `text`.
    pub fn log_line(&self, text: &str) -> String {
        wait_for(&self.stderr, text, |line| line.contains(text))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line that passes `check`, within [`PATIENCE`].
pub fn wait_for(rx: &Receiver<String>, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if check(&line) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no line with {what} within {PATIENCE:?} ({e})"),
        }
    }
}

/// The section names of a snapshot, in order, without the timestamp.
pub fn sections(snapshot: &serde_json::Value) -> Vec<String> {
    snapshot
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "timestamp").cloned().collect())
        .unwrap_or_default()
}

/// A directory of its own for one test, removed afterwards.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("pocketses-snapd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
