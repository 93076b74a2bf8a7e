//! `memory` (alias `mem`): virtual memory and swap from `/proc/meminfo`.

use serde::Serialize;

use crate::encode::humanize::{ser_bytes, ser_percent};
use crate::encode::Format;
use crate::hostfs::HostFs;
use crate::model::Section;
use crate::plugin::{Source, SourcePlugin};

inventory::submit! {
    SourcePlugin {
        name: "memory",
        aliases: &["mem"],
        description: "virtual memory (total, available, used) and swap",
        build: |ctx| Ok(Box::new(Memory { host: ctx.host.clone(), buf: String::new() })),
    }
}

/// The `/proc/meminfo` fields the section uses, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    /// `MemAvailable`, or on kernels before 3.14 the estimate free + buffers + cached +
    /// reclaimable slab.
    pub available: u64,
    pub buffers: u64,
    pub cached: u64,
    /// 0 where the host has no swap lines.
    pub swap_total: u64,
    pub swap_free: u64,
}

/// Parses `/proc/meminfo`; `None` without a `MemTotal` line.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let (mut total, mut available, mut reclaimable) = (None, None, 0);
    let mut m = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        match key {
            "MemTotal" => total = Some(bytes),
            "MemFree" => m.free = bytes,
            "MemAvailable" => available = Some(bytes),
            "Buffers" => m.buffers = bytes,
            "Cached" => m.cached = bytes,
            "SReclaimable" => reclaimable = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            _ => {}
        }
    }
    m.total = total?;
    let estimate = m.free + m.buffers + m.cached + reclaimable;
    m.available = available.unwrap_or(estimate).min(m.total);
    m.swap_free = m.swap_free.min(m.swap_total);
    Some(m)
}

fn percent_of(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

struct Memory {
    host: HostFs,
    buf: String,
}

impl Source for Memory {
    fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        self.host.read_into("/proc/meminfo", &mut self.buf)?;
        let info = parse_meminfo(&self.buf)
            .ok_or_else(|| anyhow::anyhow!("/proc/meminfo has no MemTotal line"))?;
        Ok(Box::new(MemorySection(info)))
    }
}

pub struct MemorySection(pub MemInfo);

impl Section for MemorySection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        let m = &self.0;
        let used = m.total - m.available;
        let swap_used = m.swap_total - m.swap_free;
        match format {
            Format::Seed => Box::new(SeedMemory {
                r#virtual: SeedUsage {
                    total: m.total,
                    used: percent_of(used, m.total),
                    available: m.available,
                },
                swap: SeedUsage {
                    total: m.swap_total,
                    used: percent_of(swap_used, m.swap_total),
                    available: m.swap_free,
                },
            }),
            Format::Raw => Box::new(RawMemory {
                total_bytes: m.total,
                available_bytes: m.available,
                used_bytes: used,
                used_percent: percent_of(used, m.total),
                free_bytes: m.free,
                buffers_bytes: m.buffers,
                cached_bytes: m.cached,
                swap_total_bytes: m.swap_total,
                swap_free_bytes: m.swap_free,
                swap_used_bytes: swap_used,
                swap_used_percent: percent_of(swap_used, m.swap_total),
            }),
        }
    }
}

#[derive(Serialize)]
struct SeedMemory {
    r#virtual: SeedUsage,
    swap: SeedUsage,
}

#[derive(Serialize)]
struct SeedUsage {
    #[serde(serialize_with = "ser_bytes")]
    total: u64,
    #[serde(serialize_with = "ser_percent")]
    used: f64,
    #[serde(serialize_with = "ser_bytes")]
    available: u64,
}

#[derive(Serialize)]
struct RawMemory {
    total_bytes: u64,
    available_bytes: u64,
    used_bytes: u64,
    used_percent: f64,
    free_bytes: u64,
    buffers_bytes: u64,
    cached_bytes: u64,
    swap_total_bytes: u64,
    swap_free_bytes: u64,
    swap_used_bytes: u64,
    swap_used_percent: f64,
}
