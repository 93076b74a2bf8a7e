//! Metric sources, one file each. Each registers itself with `inventory::submit!`.
//!
//! The `/proc` parsers are our own, each a few lines over a reused buffer, rather than
//! `procfs`: procfs-core 0.18 rejects real captures in `tests/fixtures` (a `/proc/net/dev`
//! whose counters touch the colon, meminfo without the Buffers or Swap lines) and its
//! `/proc/stat` parser drops CPU ids, which offline CPUs make matter. They also stop
//! parsing where the section's data ends (the long `intr` line of `/proc/stat` is never
//! split), which keeps a collection near the cost of the reads themselves.
//!
//! `load` and `pressure` parse their few lines themselves too, through [`HostFs`] (so
//! `--host-root` and its bounds apply): procfs' `LoadAverage` and `*Pressure` would add a
//! dependency for a dozen lines each, and its PSI parser panics on a last line without a
//! newline. `host` reads os-release and `/proc/sys/kernel/{hostname,osrelease}` itself
//! rather than through sysinfo, which hard-codes `/` (so ignores `--host-root` and, in the
//! snap, reports the base snap's `/etc/os-release`), and which measured (release profile,
//! sysinfo 0.37.2, `system` feature only) +60 KB of binary (306,952 → 367,480 bytes for a
//! program printing the same facts) and 20 µs per read against 11 µs for the files.
//!
//! `temperature` reads one small sysfs file per value through [`HostFs`] (no crate reads
//! hwmon under another root; sysinfo's `Components` hard-codes `/sys`). `agent` reads its
//! three figures from one `/proc/self/stat` line by field position (1.5× the floor of reading
//! the file and listing `/proc/self/fd`: benches/collect.rs), rather than taking `procfs` on
//! as a dependency for four numbers.
//!
//! [`HostFs`]: crate::hostfs::HostFs

//! `disk` parses `/proc/diskstats` itself too (procfs is not a dependency, and the parser is
//! a dozen lines); `filesystem` parses mountinfo itself (escapes, overmounts) and calls
//! `statvfs` through nix, each on a blocking thread: sysinfo's `Disks` reads `/proc/mounts`
//! of its own namespace only and calls `statvfs` inline, where a hung mount would stall
//! the runtime.

mod agent;
mod cpu;
mod disk;
mod filesystem;
mod host;
mod load;
mod memory;
mod network;
mod pressure;
mod temperature;
#[cfg(feature = "test-plugins")]
mod testing;

pub use cpu::{parse_stat, CpuTimes};
pub use host::{parse_cpu_model, parse_os_release, HostInfo, OsRelease};
pub use load::{parse_loadavg, parse_stat_tasks, parse_uptime, LoadAvg, StatTasks};
pub use memory::{parse_meminfo, MemInfo};
pub use network::{parse_net_dev, IfCounters};
pub use pressure::{parse_pressure, ResourcePressure, Stall};

/// Whether `name` matches one of the comma-separated shell-style `patterns` (`*`, `?`,
/// `[a-z]`, `[!0-9]`), as the `disk` and `filesystem` exclusion settings take them. Globs and
/// not regular expressions: node_exporter's default filters translate to a handful of
/// globs, and the regex crate (features std and perf) added 711 KiB to the 2.2 MiB release
/// binary when measured here.
pub fn matches_any(patterns: &str, name: &str) -> bool {
    (patterns.split(','))
        .map(str::trim)
        .any(|p| !p.is_empty() && glob(p.as_bytes(), name.as_bytes()))
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some((b'[', rest)) => match (rest.iter().position(|&c| c == b']'), name.first()) {
            (Some(end), Some(&c)) => {
                let (negated, set) = match rest[..end].split_first() {
                    Some((b'!' | b'^', set)) => (true, set),
                    _ => (false, &rest[..end]),
                };
                let mut found = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == b'-' {
                        found |= (set[i]..=set[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        found |= set[i] == c;
                        i += 1;
                    }
                }
                found != negated && glob(&rest[end + 1..], &name[1..])
            }
            _ => false,
        },
        Some((&c, rest)) => name.first() == Some(&c) && glob(rest, &name[1..]),
    }
}

/// A counter's increase since `then`. Backwards means it wrapped or restarted: a value
/// that fits in 32 bits and was past half of that range wrapped at 2^32 (the kernel's
/// `unsigned long` on 32-bit hosts); anything else restarted from zero, so its increase is
/// its value. Never negative, never beyond 2^32 from a wrap.
pub fn increase(now: u64, then: u64) -> u64 {
    const HALF: u64 = 1 << 31;
    if now >= then {
        now - then
    } else if (HALF..=u64::from(u32::MAX)).contains(&then) && now < HALF {
        now + (1 << 32) - then
    } else {
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_node_exporters_default_device_filter() {
        let exclude = "ram[0-9]*,zram[0-9]*,loop[0-9]*,fd[0-9]*,[hsv]d[a-z][0-9]*,xvd[a-z][0-9]*,nvme[0-9]*n[0-9]*p[0-9]*";
        for skipped in [
            "ram0",
            "zram12",
            "loop7",
            "fd0",
            "sda1",
            "vdb12",
            "xvda3",
            "nvme0n1p2",
        ] {
            assert!(matches_any(exclude, skipped), "{skipped}");
        }
        for kept in [
            "sda", "vda", "xvdb", "nvme0n1", "dm-0", "md127", "mmcblk0", "sr0",
        ] {
            assert!(!matches_any(exclude, kept), "{kept}");
        }
        assert!(matches_any(" /dev , /dev/*", "/dev/shm"));
        assert!(!matches_any("/dev,/dev/*", "/devices"));
        assert!(matches_any("[!a]?", "bc") && !matches_any("[!a]?", "ac"));
        assert!(!matches_any("", "anything") && !matches_any("[ab", "a"));
    }

    #[test]
    fn a_counter_that_goes_backwards_wraps_at_32_bits_or_restarts() {
        assert_eq!(increase(15, 10), 5);
        assert_eq!(increase(5, u64::from(u32::MAX) - 4), 10); // wrapped
        assert_eq!(increase(7, 1000), 7); // restarted (disk replaced, counters reset)
        assert_eq!(increase(3, u64::MAX), 3); // a 64-bit counter never wraps in practice
    }
}
