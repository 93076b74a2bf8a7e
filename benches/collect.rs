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
    println!("Sources of issue 11, each next to the floor of reading its own files:");
    for (source, files) in [
        ("load", &["/proc/loadavg", "/proc/uptime", "/proc/stat"][..]),
        (
            "pressure",
            &[
                "/proc/pressure/cpu",
                "/proc/pressure/memory",
                "/proc/pressure/io",
            ][..],
        ),
    ] {
        let floor = floor_of(files);
        let seed = collection(&[source], Format::Seed);
        let raw = collection(&[source], Format::Raw);
        println!(
            "  {source:<8} floor {:6.1} µs   seed {:6.1} µs = {:.2}x   raw {:6.1} µs = {:.2}x",
            us(floor),
            us(seed),
            seed.as_secs_f64() / floor.as_secs_f64(),
            us(raw),
            raw.as_secs_f64() / floor.as_secs_f64()
        );
    }
    // host reads its files once, when built: a tick only encodes what it read then.
    let host = pocketses::hostfs::HostFs::default();
    let read_once = per_call(|| {
        std::hint::black_box(pocketses::sources::HostInfo::read(&host));
    });
    println!(
        "  host     read at start {:6.1} µs (floor of its files {:6.1} µs)   per tick seed {:6.1} µs, raw {:6.1} µs",
        us(read_once),
        us(floor_of(&[
            "/etc/os-release",
            "/proc/sys/kernel/hostname",
            "/proc/sys/kernel/osrelease",
            "/proc/cpuinfo",
            "/proc/stat"
        ])),
        us(collection(&["host"], Format::Seed)),
        us(collection(&["host"], Format::Raw))
    );
}

/// Reading `paths` once each, the least any source of them can cost.
fn floor_of(paths: &[&str]) -> Duration {
    let mut buf = String::with_capacity(64 << 10);
    per_call(|| {
        for path in paths {
            buf.clear();
            if let Ok(mut file) = std::fs::File::open(path) {
                let _ = file.read_to_string(&mut buf);
            }
        }
    })
}
