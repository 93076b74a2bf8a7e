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

/// CPU time on `clock`: this thread's, so other load on the machine does not count, or the
/// whole process's where a source hands work to a blocking thread.
fn cpu(clock: ClockId) -> Duration {
    clock_gettime(clock).unwrap().into()
}

/// Mean CPU time of this thread per call of `f`, best of three runs.
fn per_call(f: impl FnMut()) -> Duration {
    per_call_on(ClockId::CLOCK_THREAD_CPUTIME_ID, f)
}

/// Mean CPU time on `clock` per call of `f`, best of three runs.
fn per_call_on(clock: ClockId, mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = cpu(clock);
            for _ in 0..ROUNDS {
                f();
            }
            (cpu(clock) - start) / ROUNDS
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
    let format = format.to_string();
    let (mut c, runtime) = collection_of(&[
        ("sources", &sources.join(",")),
        ("format", &format),
        ("interval", "1"),
    ]);
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
    // disk and filesystem (issue 11), in process CPU time: filesystem's statvfs calls run on
    // blocking threads, which the thread clock above would not see.
    let floor_disk = per_call_on(ClockId::CLOCK_PROCESS_CPUTIME_ID, || {
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
    let floor_fs = per_call_on(ClockId::CLOCK_PROCESS_CPUTIME_ID, || {
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
    issue11::main();
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

/// temperature and agent next to the floor of just reading their files, and what the
/// pipeline's own counters (src/stats.rs) cost per tick.
mod issue11 {
    use super::*;
    use std::time::Instant;

    const TEMPERATURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/temperature/hwmon"
    );

    fn alone(source: &'static str, host_root: &str) -> Duration {
        let (mut c, runtime) = collection_of(&[
            ("sources", source),
            ("interval", "1"),
            ("host-root", host_root),
        ]);
        // The process's clock: temperature reads on a blocking thread.
        per_call_on(ClockId::CLOCK_PROCESS_CPUTIME_ID, || {
            std::hint::black_box(runtime.block_on(c.collect()));
        })
    }

    /// Listing the chips and zones under `root` and reading each sensor's files.
    fn temperature_floor(root: &str) -> Duration {
        let mut buf = String::new();
        let mut read = |path: &std::path::Path| {
            buf.clear();
            if let Ok(mut f) = std::fs::File::open(path) {
                let _ = f.read_to_string(&mut buf);
            }
        };
        let root = std::path::Path::new(root);
        let (hwmon, thermal) = (root.join("sys/class/hwmon"), root.join("sys/class/thermal"));
        per_call(|| {
            for chip in std::fs::read_dir(&hwmon).into_iter().flatten().flatten() {
                let dir = chip.path();
                read(&dir.join("name"));
                for file in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = file.file_name();
                    let name = name.to_string_lossy();
                    if let Some(base) = name.strip_suffix("_input") {
                        for suffix in ["_input", "_label", "_max", "_crit"] {
                            read(&dir.join(format!("{base}{suffix}")));
                        }
                    }
                }
            }
            // The source reads the zones only without hwmon sensors; the floor lists them.
            std::hint::black_box(std::fs::read_dir(&thermal).map(Iterator::count).ok());
        })
    }

    fn agent_floor() -> Duration {
        let mut buf = String::new();
        per_call(|| {
            buf.clear();
            std::fs::File::open("/proc/self/stat")
                .unwrap()
                .read_to_string(&mut buf)
                .unwrap();
            std::hint::black_box(std::fs::read_dir("/proc/self/fd").unwrap().count());
        })
    }

    /// What the pipeline's counters add to one tick of the default sources and one sink:
    /// a clock read before and after each source's call and its record, and a sink's drop
    /// counter looked at.
    fn counters_per_tick() -> Duration {
        let sources = ["cpu", "memory", "network"].map(pocketses::stats::source);
        let sink = pocketses::stats::sink("bench");
        per_call(|| {
            for stats in &sources {
                let began = Instant::now();
                stats.record(std::hint::black_box(began).elapsed());
            }
            std::hint::black_box(sink);
        })
    }

    pub fn main() {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let side_by_side = |what: &str, floor: Duration, source: Duration| {
            println!(
                "  {what:<52} floor {:7.1} µs  source {:7.1} µs  = {:.2}x floor",
                us(floor),
                us(source),
                source.as_secs_f64() / floor.as_secs_f64()
            );
        };
        println!(
            "temperature and agent (process CPU time), next to the floor of reading their files:"
        );
        side_by_side(
            "temperature (fixture: 4 chips, 6 sensors, 1 error)",
            temperature_floor(TEMPERATURE),
            alone("temperature", TEMPERATURE),
        );
        side_by_side(
            "temperature (this host: no sensors)",
            temperature_floor("/"),
            alone("temperature", "/"),
        );
        side_by_side("agent", agent_floor(), alone("agent", "/"));
        println!(
            "  the pipeline's counters, per tick of cpu,memory,network      {:7.3} µs",
            us(counters_per_tick())
        );
    }
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
    let (mut c, runtime) =
        collection_of(&[("sources", source), ("format", "raw"), ("interval", "1")]);
    per_call_on(clock, || {
        std::hint::black_box(runtime.block_on(c.collect()));
    })
}

/// The mount points the filesystem source keeps here, as its last snapshot lists them.
fn kept_mounts() -> Vec<String> {
    let (mut c, runtime) = collection_of(&[("sources", "filesystem"), ("format", "raw")]);
    let frame = runtime.block_on(c.collect());
    let snapshot: serde_json::Value = serde_json::from_slice(frame.json.as_ref()).unwrap();
    snapshot["filesystem"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// A collection with these settings on top of the defaults, and a runtime to collect on.
fn collection_of(settings: &[(&str, &str)]) -> (Collection, tokio::runtime::Runtime) {
    let mut config = Config::default();
    for (key, value) in settings {
        config.set(key, value, Origin::Flag).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (Collection::new(&config).unwrap(), runtime)
}
