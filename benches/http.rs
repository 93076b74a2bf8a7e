//! What the http sink costs, measured on the real binary over loopback:
//!
//! - CPU per `/metrics` scrape in the agent (one keep-alive scraper, back to back, plain
//!   and gzip), with a 60 s interval so no tick is in the figure;
//! - the encoding per snapshot: the agent's CPU per tick at 100 snapshots/s with `--sinks
//!   http` next to `--sinks tcp`, no client;
//! - 100 scrapers at 1 Hz and 100 SSE clients at 10 snapshots/s, next to 100 TCP subscribers:
//!   CPU per tick and p99 delivery (snapshot timestamp to receipt) of each;
//! - idle RSS with `--sinks tcp,http` next to `--sinks tcp`.
//!
//! Run with `cargo bench --bench http` (part of `make bench`). Prints numbers, asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::Agent;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        per_scrape().await;
        encoding();
        crowd().await;
        idle_rss();
    });
}

/// User plus system CPU of process `pid`, from `/proc/<pid>/schedstat` (nanoseconds).
fn cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    Duration::from_nanos(stat.split(' ').next().unwrap().parse().unwrap())
}

fn http_address(agent: &Agent) -> SocketAddr {
    let line = agent.wait_log("http sink serving http://");
    let after = line.split("http://").nth(1).unwrap();
    after.split('/').next().unwrap().parse().unwrap()
}

/// Sends `GET path` on a kept-alive connection and reads the whole response.
async fn get(stream: &mut BufReader<TcpStream>, request: &[u8]) {
    stream.get_mut().write_all(request).await.unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
}

async fn per_scrape() {
    let agent = Agent::start(&["--sinks", "http", "--http-port", "0", "--interval", "60"]);
    let addr = http_address(&agent);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (what, request) in [
        ("plain", &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        (
            "gzip",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
        ),
    ] {
        let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let n = 20_000;
        let before = cpu(agent.pid());
        for _ in 0..n {
            get(&mut stream, request).await;
        }
        let per = (cpu(agent.pid()) - before) / n;
        println!(
            "/metrics {what}: {:.1} µs agent CPU per scrape",
            per.as_secs_f64() * 1e6
        );
    }
}

fn cpu_per_tick(sinks: &str) -> Duration {
    let agent = Agent::start(&[
        "--sinks",
        sinks,
        "--port",
        "0",
        "--http-port",
        "0",
        "--interval",
        "0.01",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu(agent.pid());
    std::thread::sleep(Duration::from_secs(10));
    (cpu(agent.pid()) - before) / 1000
}

fn encoding() {
    let tcp = cpu_per_tick("tcp");
    let http = cpu_per_tick("http");
    println!(
        "per tick at 100/s, no client: tcp {:.0} µs, http {:.0} µs (the http sink's encoding: {:.0} µs)",
        tcp.as_secs_f64() * 1e6,
        http.as_secs_f64() * 1e6,
        (http.as_secs_f64() - tcp.as_secs_f64()) * 1e6
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Milliseconds since the epoch of the `"timestamp"` in a snapshot line.
fn stamp_ms(line: &str) -> Option<i64> {
    let at = line.find("\"timestamp\":\"")? + 13;
    let s = line.get(at..at + 24)?;
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (h, m, sec, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    let today = now_ms() / 86_400_000 * 86_400_000;
    Some(today + ((h * 60 + m) * 60 + sec) * 1000 + ms)
}

/// Reads lines from `stream` for as long as the run lasts, recording each snapshot's delay.
async fn follow(stream: TcpStream, delays: Arc<Mutex<Vec<i64>>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(at) = stamp_ms(&line) {
            delays.lock().unwrap().push(now_ms() - at);
        }
    }
}

fn p99(delays: &Mutex<Vec<i64>>) -> (usize, i64) {
    let mut all = delays.lock().unwrap().clone();
    all.sort_unstable();
    let p = all.get(all.len() * 99 / 100).copied().unwrap_or(-1);
    (all.len(), p)
}

async fn crowd() {
    let run = Duration::from_secs(10);
    for with_http in [false, true] {
        let sinks = if with_http { "tcp,http" } else { "tcp" };
        let agent = Agent::start(&[
            "--sinks",
            sinks,
            "--port",
            "0",
            "--http-port",
            "0",
            "--interval",
            "0.1",
        ]);
        let tcp = agent.address();
        let tcp_delays = Arc::new(Mutex::new(Vec::new()));
        let sse_delays = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let stream = TcpStream::connect(tcp).await.unwrap();
            tasks.push(tokio::spawn(follow(stream, tcp_delays.clone())));
        }
        if with_http {
            let http = http_address(&agent);
            for _ in 0..100 {
                let mut stream = TcpStream::connect(http).await.unwrap();
                stream
                    .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                tasks.push(tokio::spawn(follow(stream, sse_delays.clone())));
            }
            for i in 0..100u64 {
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(i * 10)).await;
                    let mut stream = BufReader::new(TcpStream::connect(http).await.unwrap());
                    let mut every = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        every.tick().await;
                        let request =
                            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n";
                        get(&mut stream, request).await;
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        tcp_delays.lock().unwrap().clear();
        sse_delays.lock().unwrap().clear();
        let before = cpu(agent.pid());
        tokio::time::sleep(run).await;
        let per_tick = (cpu(agent.pid()) - before) / 100;
        let (tcp_n, tcp_p99) = p99(&tcp_delays);
        print!(
            "{sinks}: 100 TCP subscribers{} at 10/s: {:.0} µs CPU per tick; TCP p99 {tcp_p99} ms ({tcp_n} lines)",
            if with_http { ", 100 SSE clients, 100 scrapers at 1 Hz" } else { "" },
            per_tick.as_secs_f64() * 1e6
        );
        if with_http {
            let (sse_n, sse_p99) = p99(&sse_delays);
            print!("; SSE p99 {sse_p99} ms ({sse_n} events)");
        }
        println!();
        for task in tasks {
            task.abort();
        }
    }
}

fn idle_rss() {
    for sinks in ["tcp", "tcp,http"] {
        let agent = Agent::start(&[
            "--sinks",
            sinks,
            "--port",
            "0",
            "--http-port",
            "0",
            "--interval",
            "60",
        ]);
        std::thread::sleep(Duration::from_secs(3));
        println!("idle RSS --sinks {sinks}: {} KiB", agent.rss_kib());
    }
}
