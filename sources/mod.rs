//! Metric sources, one file each. Each registers itself with `inventory::submit!`.
//!
//! The `/proc` parsers are our own, each a few lines over a reused buffer, rather than
//! `procfs`: procfs-core 0.18 rejects real captures in `tests/fixtures` (a `/proc/net/dev`
//! whose counters touch the colon, meminfo without the Buffers or Swap lines) and its
//! `/proc/stat` parser drops CPU ids, which offline CPUs make matter. They also stop
//! parsing where the section's data ends (the long `intr` line of `/proc/stat` is never
//! split), which keeps a collection near the cost of the reads themselves.
//!
//! `temperature` reads one small sysfs file per value through `HostFs` (no crate reads hwmon
//! under another root; sysinfo's `Components` hard-codes `/sys`). `agent` reads its three
//! figures from one `/proc/self/stat` line by field position (see the figures in
//! benches/collect.rs), rather than taking `procfs` on as a dependency for four numbers.

mod agent;
mod cpu;
mod memory;
mod network;
mod temperature;
#[cfg(feature = "test-plugins")]
mod testing;

pub use cpu::{parse_stat, CpuTimes};
pub use memory::{parse_meminfo, MemInfo};
pub use network::{parse_net_dev, IfCounters};
