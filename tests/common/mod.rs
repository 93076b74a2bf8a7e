//! Helpers shared by the integration tests: the real agent binary as a child process, plain
//! TCP subscribers, scratch directories and polling with generous deadlines.

#![allow(dead_code)] // each test binary uses its own part of these helpers

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

/// How long any wait in a test may take before it fails: generous, as the machine is shared.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, failing the test with `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Says why a test cannot run here, for a test to `return` after. Under `CI=true` it fails
/// the test instead: .ci/run installs every prerequisite, so a skip there hides a broken test.
pub fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "under CI=true every test must run: {why}"
    );
    eprintln!("skipped: {why}");
}

/// Serializes the tests that run the agent at 100 snapshots per second, so that on a small
/// machine they do not starve each other into skipped ticks.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pocketses-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines a child wrote to one of its pipes, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    pub fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The first line at or after `*cursor` that passes `check`, moving the cursor past it.
    pub fn next_where(&self, cursor: &Cell<usize>, check: impl Fn(&str) -> bool) -> Option<String> {
        let lines = self.0.lock().unwrap();
        let start = cursor.get().min(lines.len());
        let found = lines[start..].iter().position(|l| check(l))?;
        cursor.set(start + found + 1);
        Some(lines[start + found].clone())
    }

    pub fn find(&self, needle: &str) -> Option<String> {
        (self.0.lock().unwrap().iter())
            .find(|l| l.contains(needle))
            .cloned()
    }
}

/// The real binary with a clean snap environment; callers add what their test needs.
pub fn pocketses() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pocketses"));
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
        command.env_remove(var);
    }
    command
}

/// Runs `command` to completion, killing it (and failing) if it outlives [`PATIENCE`].
pub fn run(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(PATIENCE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{command:?} did not finish within {PATIENCE:?}");
        }
    }
}

/// The real `pocketses` binary, killed on drop.
pub struct Agent {
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    /// How far [`Agent::snapshot_where`] and [`Agent::next_log`] have read.
    stdout_read: Cell<usize>,
    stderr_read: Cell<usize>,
}

impl Agent {
    /// Starts the agent with `args`, no snap configuration and info logs.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_with(args, |_| {})
    }

    /// Starts the agent after `setup` has adjusted the command (limits, environment).
    pub fn start_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Agent {
        let mut command = Agent::command(args);
        setup(&mut command);
        Agent::spawn(&mut command)
    }

    /// What [`Agent::start`] runs: the agent with `args`, no snap configuration, info logs.
    pub fn command(args: &[&str]) -> Command {
        let mut command = pocketses();
        command.arg("--no-snap").args(args).env("RUST_LOG", "info");
        command
    }

    /// Starts `command` as it is, collecting its stdout and stderr lines.
    pub fn spawn(command: &mut Command) -> Agent {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pocketses");
        Agent::from_child(child)
    }

    /// Watches an agent already started, collecting the lines of the pipes it was given that
    /// the caller has not taken (a test may take stdout to read it, or not, itself).
    pub fn from_child(mut child: Child) -> Agent {
        let stdout = child.stdout.take().map(Lines::collect).unwrap_or_default();
        let stderr = child.stderr.take().map(Lines::collect).unwrap_or_default();
        Agent {
            child,
            stdout,
            stderr,
            stdout_read: Cell::new(0),
            stderr_read: Cell::new(0),
        }
    }

    /// Starts the agent with its open-files limit (soft and hard) lowered to `limit`.
    pub fn start_with_fd_limit(args: &[&str], limit: u64) -> Agent {
        Agent::start_with(args, |command| {
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(io::Error::from)
                });
            }
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The address the TCP publisher reports listening on.
    pub fn address(&self) -> SocketAddr {
        let line = self.wait_log("listening on");
        let after = line.split("listening on ").nth(1).unwrap();
        after.split(';').next().unwrap().parse().unwrap()
    }

    /// The first log line containing `needle`, waiting for it.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.stderr.find(needle) {
                return line;
            }
            let log = self.stderr.snapshot();
            assert!(!self.exited(), "agent exited; its log: {log:#?}");
            assert!(
                Instant::now() < deadline,
                "no log line {needle:?}; the log: {log:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next stdout snapshot (after those already read this way) that passes `check`.
    pub fn snapshot_where(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let line = wait_for(what, || {
            self.stdout.next_where(&self.stdout_read, |line| {
                serde_json::from_str(line).is_ok_and(|v| check(&v))
            })
        });
        serde_json::from_str(&line).unwrap()
    }

    /// The next log line (after those already read this way) containing `needle`.
    pub fn next_log(&self, needle: &str) -> String {
        wait_for(needle, || {
            self.stderr
                .next_where(&self.stderr_read, |line| line.contains(needle))
        })
    }

    /// Whether the child has exited (a zombie not yet reaped); `&self`, unlike `try_wait`.
    fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the agent to exit (at most [`PATIENCE`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_for("the agent to exit", || self.child.try_wait().unwrap())
    }

    /// Sends SIGTERM and waits for the exit, which must be 0 and come within a second, as
    /// the agent promises whatever a sink or source is stuck on; returns how long it took.
    pub fn stop_within_a_second(&mut self) -> Duration {
        let asked = Instant::now();
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait_exit();
        let took = asked.elapsed();
        eprintln!("exited {took:?} after SIGTERM");
        assert_eq!(status.code(), Some(0));
        assert!(took < Duration::from_secs(1), "exit took {took:?}");
        took
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain TCP subscriber reading CRLF lines.
pub struct Subscriber {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Subscriber {
    pub fn connect(addr: SocketAddr) -> Subscriber {
        Subscriber::from(TcpStream::connect(addr).expect("connecting to the publisher"))
    }

    pub fn from(stream: TcpStream) -> Subscriber {
        Subscriber {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The next line with its terminator; `None` at EOF or reset. Fails the test after
    /// [`PATIENCE`] without one.
    pub fn line(&mut self) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(String::from_utf8(line).expect("lines are UTF-8"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for a line");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading from the publisher: {e}"),
            }
        }
    }

    /// The next line, which must be a snapshot, without its CRLF.
    pub fn snapshot(&mut self) -> String {
        let line = self.line().expect("the publisher closed the connection");
        let json = line
            .strip_suffix("\r\n")
            .unwrap_or_else(|| panic!("line not ending in CRLF: {line:?}"));
        timestamp(json);
        json.to_string()
    }

    /// Reads until EOF or reset; the number of bytes read.
    pub fn drain_to_eof(&mut self) -> usize {
        let mut total = self.buf.len();
        while let Some(line) = self.line() {
            total += line.len();
        }
        total + std::mem::take(&mut self.buf).len()
    }
}

/// The `timestamp` of a snapshot line; panics if the line is not a snapshot.
pub fn timestamp(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line.trim_end())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    value["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp: {line:?}"))
        .to_string()
}

/// The lines of a file, each checked to be a whole snapshot; the file must end in LF.
pub fn snapshot_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a partial line",
        path.display()
    );
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    for line in &lines {
        timestamp(line);
    }
    lines
}

/// Where `part` occurs as a contiguous run in `whole`.
pub fn position_of_run(whole: &[String], part: &[String]) -> Option<usize> {
    let first = whole.iter().position(|l| Some(l) == part.first())?;
    (whole.get(first..first + part.len()) == Some(part)).then_some(first)
}

/// Every line of `file` and its rotated copies, oldest first: `.N`, ..., `.1`, then `file`;
/// each checked to be a whole snapshot.
pub fn rotated_lines(file: &Path, max_files: u32) -> Vec<String> {
    let mut all = Vec::new();
    for n in (1..=max_files).rev() {
        all.extend(snapshot_lines(Path::new(&format!(
            "{}.{n}",
            file.display()
        ))));
    }
    all.extend(snapshot_lines(file));
    all
}

/// A connected socket that has asked for the smallest receive buffer, so the agent's writes
/// to it block as soon as it stops reading.
pub fn tiny_window_connection(addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected")
    };
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    socket::setsockopt(&fd, sockopt::RcvBuf, &1024).unwrap();
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
    TcpStream::from(fd)
}

/// The flags for an agent writing `file` through `sinks` every `interval` seconds (the TCP
/// publisher, if among them, on a free port), then `more`.
pub fn file_args<'a>(
    file: &'a Path,
    sinks: &'a str,
    interval: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["--sinks", sinks, "--port", "0", "--interval", interval];
    args.extend(["--file-path", file.to_str().unwrap()]);
    args.extend_from_slice(more);
    args
}

/// An agent started with [`file_args`].
pub fn agent_writing(file: &Path, sinks: &str, interval: &str, more: &[&str]) -> Agent {
    Agent::start(&file_args(file, sinks, interval, more))
}
