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

mod agent;
mod cpu;
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
