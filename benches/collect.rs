//! `make bench`: CPU cost of one collection, in-process, against the floor of just reading
//! the three /proc files. The whole agent per tick, its RSS and start-up: benches/tick.rs.
//! Prints numbers; asserts nothing (timing belongs here, not in tests).

use std::io::Read;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

use pocketses::config::{Config, Origin};
use pocketses::model::Format;
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
    let mut config = Config::default();
    config
        .set("sources", &sources.join(","), Origin::Flag)
        .unwrap();
    config
        .set("format", &format.to_string(), Origin::Flag)
        .unwrap();
    config.set("interval", "1", Origin::Flag).unwrap();
    let mut c = Collection::new(&config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    per_call(|| {
        std::hint::black_box(runtime.block_on(c.collect()));
    })
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
    // disk and filesystem (issue 11), in process CPU time: filesystem's statvfs calls run on
    // blocking threads, which the thread clock above would not see.
    let floor_disk = per_call_in(ClockId::CLOCK_PROCESS_CPUTIME_ID, || {
        read_file(&mut buf_for_floors(), "/proc/diskstats")
    });
    let disk = source_in(ClockId::CLOCK_PROCESS_CPUTIME_ID, "disk");
    println!(
        "  floor: read /proc/diskstats                          {:8.1} µs",
        us(floor_disk)
    );
    println!(
        "    disk     alone (raw, process CPU)                   {:8.1} µs  = {:.2}x floor",
        us(disk),
        disk.as_secs_f64() / floor_disk.as_secs_f64()
    );
    let mounts = kept_mounts();
    let floor_fs = per_call_in(ClockId::CLOCK_PROCESS_CPUTIME_ID, || {
        read_file(&mut buf_for_floors(), "/proc/1/mountinfo");
        for mount in &mounts {
            std::hint::black_box(nix::sys::statvfs::statvfs(mount.as_str()).unwrap());
        }
    });
    let fs = source_in(ClockId::CLOCK_PROCESS_CPUTIME_ID, "filesystem");
    println!(
        "  floor: read /proc/1/mountinfo, statvfs {} mounts inline {:7.1} µs",
        mounts.len(),
        us(floor_fs)
    );
    println!(
        "    filesystem alone (raw, process CPU)                 {:8.1} µs  = {:.2}x floor",
        us(fs),
        fs.as_secs_f64() / floor_fs.as_secs_f64()
    );
}

/// As [`per_call`], on `clock`.
fn per_call_in(clock: ClockId, mut f: impl FnMut()) -> Duration {
    let now = || -> Duration { clock_gettime(clock).unwrap().into() };
    let rounds = ROUNDS / 4;
    (0..3)
        .map(|_| {
            let start = now();
            for _ in 0..rounds {
                f();
            }
            (now() - start) / rounds
        })
        .min()
        .unwrap()
}

fn buf_for_floors() -> String {
    String::with_capacity(64 << 10)
}

fn read_file(buf: &mut String, path: &str) {
    buf.clear();
    std::fs::File::open(path)
        .unwrap()
        .read_to_string(buf)
        .unwrap();
}

/// One source collected and encoded (raw), on `clock`.
fn source_in(clock: ClockId, source: &str) -> Duration {
    let mut config = Config::default();
    config.set("sources", source, Origin::Flag).unwrap();
    config.set("format", "raw", Origin::Flag).unwrap();
    config.set("interval", "1", Origin::Flag).unwrap();
    let mut c = Collection::new(&config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    per_call_in(clock, || {
        std::hint::black_box(runtime.block_on(c.collect()));
    })
}

/// The mount points the filesystem source keeps here, as its last snapshot lists them.
fn kept_mounts() -> Vec<String> {
    let mut config = Config::default();
    config.set("sources", "filesystem", Origin::Flag).unwrap();
    config.set("format", "raw", Origin::Flag).unwrap();
    let mut c = Collection::new(&config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let frame = runtime.block_on(c.collect());
    let snapshot: serde_json::Value = serde_json::from_slice(frame.json.as_ref()).unwrap();
    snapshot["filesystem"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}
