//! Metric sources, one file each. Each registers itself with `inventory::submit!`.

mod cpu;
mod memory;
mod network;

pub use cpu::{parse_stat, CpuTimes};
pub use memory::{parse_meminfo, MemInfo};
pub use network::{parse_net_dev, IfCounters};
