//! `make bench`: CPU cost of one collection against the floor of just reading the three
//! /proc files, plus the agent's idle RSS, start-to-first-snapshot time and binary size.
//! Prints numbers; asserts nothing (timing belongs here, not in tests).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};

use pocketses::encode::Format;
use pocketses::hostfs::HostFs;
use pocketses::pipeline::Collection;

const ROUNDS: u32 = 20_000;

/// CPU time of this thread, so other load on the machine does not count.
fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .unwrap()
        .into()
}

/// Mean CPU time per call of `f`, best of three runs.
fn per_call(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = thread_cpu();
            for _ in 0..ROUNDS {
                f();
            }
            (thread_cpu() - start) / ROUNDS
        })
        .min()
        .unwrap()
}

fn floor() -> Duration {
    let mut buf = String::with_capacity(64 << 10);
    per_call(|| {
        for path in ["/proc/stat", "/proc/meminfo", "/proc/net/dev"] {
            buf.clear();
            std::fs::File::open(path)
                .unwrap()
                .read_to_string(&mut buf)
                .unwrap();
        }
    })
}

fn collection(sources: &[&'static str], format: Format) -> Duration {
    let mut c = Collection::new(sources, format, &HostFs::default()).unwrap();
    per_call(|| {
        std::hint::black_box(c.collect());
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Starts the agent with the stdout sink, timing spawn to first line, then reads its RSS
/// after it has idled for a while.
fn agent_start_and_rss() -> (Duration, u64) {
    let bin = env!("CARGO_BIN_EXE_pocketses");
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(["--sinks", "stdout", "--interval", "60", "--no-snap"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let to_first = start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    (to_first, rss)
}

fn main() {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let floor = floor();
    let all = ["cpu", "memory", "network"];
    let seed = collection(&all, Format::Seed);
    let raw = collection(&all, Format::Raw);
    println!("CPU per call (thread CPU time, mean of {ROUNDS}, best of 3 runs):");
    println!(
        "  floor: read /proc/stat, /proc/meminfo, /proc/net/dev  {:8.1} µs",
        us(floor)
    );
    println!(
        "  collect + encode cpu,memory,network (seed)          {:8.1} µs  = {:.2}x floor",
        us(seed),
        seed.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  collect + encode cpu,memory,network (raw)           {:8.1} µs",
        us(raw)
    );
    for source in all {
        println!(
            "    {source:<8} alone (seed)                             {:8.1} µs",
            us(collection(&[source], Format::Seed))
        );
    }

    let (to_first, rss) = agent_start_and_rss();
    println!("agent (release build, stdout sink):");
    println!(
        "  start to first snapshot: {:.1} ms (includes the {} ms CPU warm-up)",
        to_first.as_secs_f64() * 1e3,
        pocketses::pipeline::warm_up(Duration::from_secs(60)).as_millis()
    );
    println!("  idle RSS: {:.2} MiB", rss as f64 / 1024.0);
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_pocketses"))
        .unwrap()
        .len();
    println!(
        "  binary size (stripped release profile): {:.2} MiB",
        size as f64 / (1 << 20) as f64
    );
}
