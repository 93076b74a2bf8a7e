//! `make soak`: runs the real agent at 100 snapshots/s for SOAK_SECONDS (default 600) with
//! a few hundred subscribers connecting and leaving at random, a flooder, a stalled reader and
//! file rotation every few seconds, and reports the agent's RSS and open descriptors over
//! time. Both must stay flat. Traffic stays on 127.0.0.1; everything stops by itself.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CHURNERS: usize = 300;

/// xorshift64: enough randomness for connect/leave timing without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(port: u16) -> Option<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).await.ok()
}

/// Connects, reads for a random while, leaves; again and again until `end`.
async fn churn(port: u16, seed: u64, end: Instant, lines: Arc<AtomicU64>) {
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 16 << 10];
    while Instant::now() < end {
        if let Some(mut s) = connect(port).await {
            let stay = tokio::time::sleep(rng.millis(200, 5000));
            tokio::pin!(stay);
            loop {
                tokio::select! {
                    _ = &mut stay => break,
                    n = s.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => { lines.fetch_add(buf[..n].iter().filter(|&&b| b == b'\n').count() as u64, Ordering::Relaxed); }
                    },
                }
            }
        }
        tokio::time::sleep(rng.millis(10, 1000)).await;
    }
}

/// Sends garbage without newlines as fast as the agent takes it.
async fn flood(port: u16, end: Instant) -> u64 {
    let junk = vec![0xA5u8; 64 << 10];
    let mut sent = 0u64;
    while Instant::now() < end {
        let Some(mut s) = connect(port).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while Instant::now() < end {
            match tokio::time::timeout(Duration::from_secs(1), s.write_all(&junk)).await {
                Ok(Ok(())) => sent += junk.len() as u64,
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    }
    sent
}

/// Connects with a tiny receive buffer and never reads, a minute at a time: the agent must
/// drop it after its write timeout without anyone else noticing.
async fn stall(port: u16, end: Instant) -> u32 {
    let mut connections = 0;
    while Instant::now() < end {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stalled = socket.connect(([127, 0, 0, 1], port).into()).await;
        connections += u32::from(stalled.is_ok());
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(60)).min(end).into()).await;
    }
    connections
}

fn main() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let dir = std::env::temp_dir().join(format!("pocketses-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let file = dir.join("soak.jsonl");
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_pocketses"))
            .args([
                "--no-snap",
                "--sinks",
                "tcp,file",
                "--interval",
                "0.01",
                "--max-clients",
                "2000",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--file-max-size",
                "256K",
                "--file-max-files",
                "3",
            ])
            .arg("--file-path")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pocketses"),
    );
    let pid = agent.0.id();
    std::thread::sleep(Duration::from_secs(1));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let lines = Arc::new(AtomicU64::new(0));
    let (flooded, stalls) = runtime.block_on(async {
        for i in 0..CHURNERS {
            tokio::spawn(churn(
                port,
                0x9E37_79B9_7F4A_7C15 ^ i as u64,
                end,
                lines.clone(),
            ));
        }
        let flooder = tokio::spawn(flood(port, end));
        let staller = tokio::spawn(stall(port, end));
        println!(
            "{:>6}  {:>9}  {:>8}  {:>12}",
            "second", "RSS MiB", "open fds", "lines/s recv"
        );
        let mut samples = Vec::new();
        let mut last_lines = 0;
        let every = Duration::from_secs((seconds / 20).max(5));
        while Instant::now() < end {
            tokio::time::sleep(every).await;
            let (rss, fds) = (status_kib(pid, "VmRSS:"), open_fds(pid));
            let total = lines.load(Ordering::Relaxed);
            println!(
                "{:>6}  {:>9.2}  {:>8}  {:>12.0}",
                start.elapsed().as_secs(),
                rss as f64 / 1024.0,
                fds,
                (total - last_lines) as f64 / every.as_secs_f64()
            );
            last_lines = total;
            samples.push((rss, fds));
        }
        let flooded = flooder.await.unwrap_or(0);
        let stalls = staller.await.unwrap_or(0);
        report(&samples);
        (flooded, stalls)
    });
    let rotated = (1..=3)
        .filter(|i| dir.join(format!("soak.jsonl.{i}")).exists())
        .count();
    println!(
        "flooder sent {:.1} MiB that nobody saw; the stalled reader connected {stalls} time(s)",
        flooded as f64 / (1 << 20) as f64
    );
    println!(
        "rotated files present: {rotated} of 3; agent still running: {}",
        std::fs::metadata(format!("/proc/{pid}")).is_ok()
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Compares the first and the last third of the run.
fn report(samples: &[(u64, usize)]) {
    if samples.len() < 3 {
        return;
    }
    let third = samples.len() / 3;
    let max = |s: &[(u64, usize)]| {
        (
            s.iter().map(|x| x.0).max().unwrap(),
            s.iter().map(|x| x.1).max().unwrap(),
        )
    };
    let (early, late) = (
        max(&samples[..third]),
        max(&samples[samples.len() - third..]),
    );
    println!(
        "peak RSS first third {:.2} MiB, last third {:.2} MiB; peak fds first third {}, last third {}",
        early.0 as f64 / 1024.0,
        late.0 as f64 / 1024.0,
        early.1,
        late.1
    );
}
