//! `make soak` (second part): a crowd of subscribers that never read, at 100 raw snapshots/s,
//! started again and again, looking for a hang (issue 9, item 4: "no snapshot at all in 2 of
//! 16 runs, once SIGTERM ignored for 10 s"). Each run: start the agent, connect CROWD
//! (default 3000) subscribers that never read, then check that a reader gets a snapshot,
//! that one still does after the stalled crowd has been dropped (the write timeout, 5 s),
//! and that SIGTERM ends the agent within 1 s. CROWD_RUNS (default 16) runs; prints each run
//! and exits 1 if any run broke a promise. Traffic stays on 127.0.0.1.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::Agent;

/// How long a reader may wait for its first line, and the agent for its exit, before the run
/// counts as hung: far beyond the promises (1 s), far below "10 s".
const HUNG: Duration = Duration::from_secs(5);
/// Longer than the publisher's write timeout, so the stalled crowd is dropped during a run.
const HOLD: Duration = Duration::from_secs(7);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first line a new subscriber gets and how long it took; `None` if none came within
/// [`HUNG`].
fn first_line(addr: SocketAddr) -> Option<(String, Duration)> {
    let asked = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, HUNG).ok()?;
    let mut line = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    while !line.contains(&b'\n') {
        let left = HUNG.checked_sub(asked.elapsed()).filter(|d| !d.is_zero())?;
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => line.extend_from_slice(&chunk[..n]),
        }
    }
    Some((String::from_utf8_lossy(&line).into_owned(), asked.elapsed()))
}

fn main() {
    let (crowd, runs) = (env_or("CROWD", 3000), env_or("CROWD_RUNS", 16));
    // The crowd and the agent each hold one descriptor per subscriber.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("reading the open-files limit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("raising the open-files limit");
    let max_clients = (crowd + 100).to_string();
    let mut broken = 0;
    for run in 1..=runs {
        let agent = Agent::start(&[
            "--port",
            "0",
            "--interval",
            "0.01",
            "--format",
            "raw",
            "--max-clients",
            &max_clients,
        ]);
        let addr = agent.address();
        let connected = Instant::now();
        let silent: Vec<TcpStream> = (0..crowd)
            .map_while(|_| TcpStream::connect(addr).ok())
            .collect();
        let connected = connected.elapsed();
        let first = first_line(addr);
        std::thread::sleep(HOLD);
        let later = first_line(addr);
        let asked = Instant::now();
        agent.signal(Signal::SIGTERM);
        let mut agent = agent;
        let exited = loop {
            if !agent.is_running() {
                break Some(asked.elapsed());
            }
            if asked.elapsed() > HUNG {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let snapshot = |got: &Option<(String, Duration)>| match got {
            Some((line, took)) if line.starts_with("{\"timestamp\"") => Some(*took),
            _ => None,
        };
        let ok = silent.len() == crowd
            && snapshot(&first).is_some()
            && snapshot(&later).is_some()
            && exited.is_some_and(|t| t < Duration::from_secs(1));
        broken += usize::from(!ok);
        println!(
            "run {run}/{runs}: {} silent subscribers in {connected:.2?}; first line after {:?}, \
             after the crowd stalled {:?}; SIGTERM to exit {:?}{}",
            silent.len(),
            snapshot(&first),
            snapshot(&later),
            exited,
            if ok { "" } else { "  <- BROKEN" }
        );
    }
    println!("{broken} of {runs} runs broke a promise");
    if broken > 0 {
        std::process::exit(1);
    }
}
