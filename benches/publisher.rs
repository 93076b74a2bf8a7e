//! What publishing costs, measured on the real binary over loopback:
//!
//! - the floor: writing one snapshot-sized line to 1000 loopback sockets, in-process, at the
//!   agent's pace and with its socket options;
//! - the agent with 1000 subscribers at 10 snapshots/s: CPU per tick, delivery latency
//!   (snapshot timestamp to receipt), RSS, and the share of snapshots each subscriber got;
//! - the same with 10,000 subscribers;
//! - the file sink at 100 snapshots/s, against stdout to /dev/null.
//!
//! Run with `cargo bench --bench publisher` (or `make bench-publisher`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncBufReadExt, BufReader};

use common::{Agent, Scratch};

fn main() {
    raise_own_fd_limit();
    let size = snapshot_line_len();
    let floor = floor(1000, size);
    println!("floor: one {size}-byte line to 1000 loopback sockets, 10 times/s: {floor:.2} ms CPU");
    let one_k = subscribers(1000, Duration::from_secs(10));
    one_k.print(1000, Some(floor));
    no_subscribers();
    let ten_k = subscribers(10_000, Duration::from_secs(5));
    ten_k.print(10_000, None);
    file_sink();
}

/// The publisher's send buffer per subscriber (`SEND_BUFFER` in `sinks/tcp.rs`).
const SEND_BUFFER: usize = 32 << 10;

fn raise_own_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// CPU time of this thread, from the scheduler's nanosecond accounting.
fn thread_cpu() -> Duration {
    cpu_of("/proc/thread-self/schedstat")
}

fn cpu_of(schedstat: &str) -> Duration {
    let text = std::fs::read_to_string(schedstat).unwrap_or_default();
    let ns = text.split_whitespace().next().and_then(|n| n.parse().ok());
    Duration::from_nanos(ns.unwrap_or(0))
}

/// CPU time of every thread of process `pid`.
fn process_cpu(pid: i32) -> Duration {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| cpu_of(&format!("{}/schedstat", task.unwrap().path().display())))
        .sum()
}

/// Milliseconds since the epoch of a snapshot line's `"timestamp":"YYYY-MM-DDTHH:MM:SS.mmmZ"`.
fn timestamp_ms(line: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"timestamp\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let t = std::str::from_utf8(line.get(at..at + 24)?).ok()?;
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    Some(secs * 1000 + num(20..23)?)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Subscribers read on their own thread; each keeps the timestamps and latencies of the
/// snapshots stamped inside the measuring window.
struct Readers {
    window: Arc<(AtomicI64, AtomicI64)>,
    done: std::thread::JoinHandle<Vec<Vec<(i64, i64)>>>,
}

impl Readers {
    fn connect(addr: SocketAddr, n: usize) -> Readers {
        let window = Arc::new((AtomicI64::new(i64::MAX), AtomicI64::new(i64::MAX)));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let shared = window.clone();
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut tasks = Vec::with_capacity(n);
                for _ in 0..n {
                    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                    tasks.push(tokio::spawn(read_all(stream, shared.clone())));
                }
                ready_tx.send(()).unwrap();
                let mut all = Vec::with_capacity(n);
                for task in tasks {
                    all.push(task.await.unwrap());
                }
                all
            })
        });
        ready.recv().unwrap();
        Readers { window, done }
    }

    fn measure(&self, from: i64, to: i64) {
        self.window.1.store(to, Ordering::Relaxed);
        self.window.0.store(from, Ordering::Relaxed);
    }
}

async fn read_all(
    stream: tokio::net::TcpStream,
    window: Arc<(AtomicI64, AtomicI64)>,
) -> Vec<(i64, i64)> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(1024);
    let mut seen = Vec::new();
    while reader.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
        let received = now_ms();
        if let Some(ts) = timestamp_ms(&line) {
            let (from, to) = (
                window.0.load(Ordering::Relaxed),
                window.1.load(Ordering::Relaxed),
            );
            if (from..to).contains(&ts) {
                seen.push((ts, received - ts));
            }
        }
        line.clear();
    }
    seen
}

/// The length of a real snapshot line as the publisher sends it, CRLF included.
fn snapshot_line_len() -> usize {
    let agent = Agent::start(&["--port", "0"]);
    common::Subscriber::connect(agent.address())
        .snapshot()
        .len()
        + 2
}

/// The in-process floor: CPU to write a `size`-byte line to `n` loopback sockets set up as
/// the publisher sets up its subscribers. Rounds are as far apart as the agent's ticks: after
/// 100 ms idle the sockets' kernel state is out of cache, and each write costs more than in
/// back-to-back rounds.
fn floor(n: usize, size: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let (s, _) = listener.accept().unwrap();
                s.set_nodelay(true).unwrap();
                setsockopt(&s, sockopt::SndBuf, &SEND_BUFFER).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect::<Vec<TcpStream>>()
    });
    let readers = Readers::connect(addr, n);
    let mut sockets = acceptor.join().unwrap();
    let line = format!("{}\r\n", "x".repeat(size - 2));
    let rounds = 30;
    let mut cpu = Duration::ZERO;
    for _ in 0..rounds {
        let start = thread_cpu();
        for s in &mut sockets {
            // The readers keep up, so the line always fits: a short write would panic here.
            std::io::Write::write_all(s, line.as_bytes()).unwrap();
        }
        cpu += thread_cpu() - start;
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(sockets);
    let _ = readers.done.join();
    cpu.as_secs_f64() * 1000.0 / rounds as f64
}

struct Run {
    cpu_per_tick_ms: f64,
    p50_ms: i64,
    p99_ms: i64,
    rss_kib: u64,
    hwm_kib: u64,
    min_share: f64,
    mean_share: f64,
    ticks: usize,
}

impl Run {
    fn print(&self, n: usize, floor: Option<f64>) {
        println!(
            "{n} subscribers at 10/s: CPU {:.2} ms/tick{}, latency p50 {} ms p99 {} ms, RSS {:.1} MiB (peak {:.1}), snapshots received min {:.1}% mean {:.1}% of {}",
            self.cpu_per_tick_ms,
            floor.map_or(String::new(), |f| format!(" ({:.2}x floor)", self.cpu_per_tick_ms / f)),
            self.p50_ms,
            self.p99_ms,
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0,
            self.min_share * 100.0,
            self.mean_share * 100.0,
            self.ticks,
        );
    }
}

fn vm(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn subscribers(n: usize, length: Duration) -> Run {
    let max = n.to_string();
    let agent = Agent::start(&["--port", "0", "--interval", "0.1", "--max-clients", &max]);
    let readers = Readers::connect(agent.address(), n);
    std::thread::sleep(Duration::from_secs(1)); // settle after the connection burst
    let (from, cpu_before) = (now_ms(), process_cpu(agent.pid()));
    readers.measure(from, from + length.as_millis() as i64);
    std::thread::sleep(length);
    let cpu = process_cpu(agent.pid()) - cpu_before;
    let (rss_kib, hwm_kib) = (vm(agent.pid(), "VmRSS:"), vm(agent.pid(), "VmHWM:"));
    std::thread::sleep(Duration::from_millis(500)); // let the window's last lines arrive
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let seen = readers.done.join().unwrap();

    let mut stamps: Vec<i64> = seen.iter().flatten().map(|&(ts, _)| ts).collect();
    stamps.sort_unstable();
    stamps.dedup();
    let ticks = stamps.len().max(1);
    let mut latencies: Vec<i64> = seen.iter().flatten().map(|&(_, l)| l).collect();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(-1)
    };
    let shares: Vec<f64> = seen.iter().map(|s| s.len() as f64 / ticks as f64).collect();
    Run {
        cpu_per_tick_ms: cpu.as_secs_f64() * 1000.0 / ticks as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        rss_kib,
        hwm_kib,
        min_share: shares.iter().copied().fold(f64::INFINITY, f64::min),
        mean_share: shares.iter().sum::<f64>() / shares.len() as f64,
        ticks,
    }
}

/// Agent CPU per tick at 100 snapshots/s with the file sink, and with stdout to /dev/null
/// for comparison: the difference is what the file sink costs.
fn file_sink() {
    let dir = Scratch::new();
    let path = dir.path("bench.jsonl");
    let path = path.to_str().unwrap();
    let run = |sinks: &str| {
        cpu_per_tick(
            &["--sinks", sinks, "--interval", "0.01", "--file-path", path],
            100,
        )
    };
    let file = run("file");
    let stdout = run("stdout");
    println!(
        "file sink at 100/s: agent CPU {file:.3} ms/tick; with stdout to /dev/null instead: {stdout:.3} ms/tick"
    );
}

/// What the agent spends per tick besides writing to subscribers (collection, encoding,
/// timers): the part of the publisher's number that the floor does not include.
fn no_subscribers() {
    let cpu = cpu_per_tick(&["--port", "0", "--interval", "0.1"], 10);
    println!("no subscribers at 10/s: agent CPU {cpu:.3} ms/tick");
}

/// Agent CPU per tick over 5 s, after a second to settle, with stdout to /dev/null.
fn cpu_per_tick(args: &[&str], ticks_per_second: u32) -> f64 {
    let agent = Agent::start_with(args, |command| {
        command.stdout(Stdio::null());
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = process_cpu(agent.pid());
    std::thread::sleep(Duration::from_secs(5));
    let ticks = 5 * ticks_per_second;
    (process_cpu(agent.pid()) - before).as_secs_f64() * 1000.0 / f64::from(ticks)
}
