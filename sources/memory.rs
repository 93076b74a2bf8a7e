//! `memory` (alias `mem`): virtual memory and swap from `/proc/meminfo`.

use async_trait::async_trait;
use serde::Serialize;

use crate::encode::humanize::SeedUsage;
use crate::hostfs::KeptFile;
use crate::model::{Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::Declared;

inventory::submit! {
    SourcePlugin {
        name: "memory",
        aliases: &["mem"],
        description: "virtual memory (total, available, used) and swap",
        on_by_default: Some(2),
        settings: Declared::NONE,
        build: |ctx| Ok(Box::new(Memory { meminfo: ctx.host.kept("/proc/meminfo"), buf: String::new() })),
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
    meminfo: KeptFile,
    buf: String,
}

#[async_trait]
impl Source for Memory {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        self.meminfo.read_into(&mut self.buf)?;
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

    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        let m = &self.0;
        let used = m.total - m.available;
        let swap_used = m.swap_total - m.swap_free;
        for (family, value) in [
            (&TOTAL, m.total as f64),
            (&AVAILABLE, m.available as f64),
            (&USED, used as f64),
            // The ratios are raw's percents over 100, so that the two outputs agree.
            (&USED_RATIO, percent_of(used, m.total) / 100.0),
            (&FREE, m.free as f64),
            (&BUFFERS, m.buffers as f64),
            (&CACHED, m.cached as f64),
            (&SWAP_TOTAL, m.swap_total as f64),
            (&SWAP_FREE, m.swap_free as f64),
            (&SWAP_USED, swap_used as f64),
            (
                &SWAP_USED_RATIO,
                percent_of(swap_used, m.swap_total) / 100.0,
            ),
        ] {
            out.push(Sample::new(family, [], value));
        }
    }
}

static TOTAL: Family = Family::gauge("memory_total_bytes", "Usable RAM (MemTotal).", Unit::Bytes)
    .node("node_memory_MemTotal_bytes");
static AVAILABLE: Family = Family::gauge("memory_available_bytes", "RAM available for new work without swapping (MemAvailable, or its estimate before Linux 3.14).", Unit::Bytes).node("node_memory_MemAvailable_bytes");
static USED: Family = Family::gauge(
    "memory_used_bytes",
    "RAM in use: total minus available.",
    Unit::Bytes,
);
static USED_RATIO: Family = Family::gauge(
    "memory_used_ratio",
    "Share of RAM in use: used over total.",
    Unit::Ratio,
);
static FREE: Family = Family::gauge(
    "memory_free_bytes",
    "RAM not used for anything (MemFree).",
    Unit::Bytes,
)
.node("node_memory_MemFree_bytes");
static BUFFERS: Family = Family::gauge(
    "memory_buffers_bytes",
    "RAM in block device buffers (Buffers).",
    Unit::Bytes,
)
.node("node_memory_Buffers_bytes");
static CACHED: Family = Family::gauge(
    "memory_cached_bytes",
    "RAM in the page cache (Cached).",
    Unit::Bytes,
)
.node("node_memory_Cached_bytes");
static SWAP_TOTAL: Family = Family::gauge(
    "memory_swap_total_bytes",
    "Swap space (SwapTotal), 0 without swap.",
    Unit::Bytes,
)
.node("node_memory_SwapTotal_bytes");
static SWAP_FREE: Family = Family::gauge(
    "memory_swap_free_bytes",
    "Unused swap space (SwapFree).",
    Unit::Bytes,
)
.node("node_memory_SwapFree_bytes");
static SWAP_USED: Family = Family::gauge(
    "memory_swap_used_bytes",
    "Swap space in use: total minus free.",
    Unit::Bytes,
);
static SWAP_USED_RATIO: Family = Family::gauge(
    "memory_swap_used_ratio",
    "Share of swap space in use, 0 without swap.",
    Unit::Ratio,
);

#[derive(Serialize)]
struct SeedMemory {
    r#virtual: SeedUsage,
    swap: SeedUsage,
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

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn meminfo(case: &str) -> Option<MemInfo> {
        parse_meminfo(&std::fs::read_to_string(format!("{FIXTURES}/{case}/proc/meminfo")).unwrap())
    }

    fn seed(m: MemInfo) -> String {
        serde_json::to_string(&MemorySection(m).view(Format::Seed)).unwrap()
    }

    #[test]
    fn without_mem_available_the_estimate_counts_caches_and_reclaimable_slab() {
        let m = meminfo("node_exporter").unwrap();
        assert_eq!(m.total, 3_742_148 * 1024);
        assert_eq!(m.available, (225_472 + 22_040 + 930_888 + 44_772) * 1024);
        assert_eq!(
            (m.swap_total, m.swap_free),
            (4_194_300 * 1024, 3_155_360 * 1024)
        );
        assert_eq!(
            seed(m),
            r#"{"virtual":{"total":"3.6G","used":"67.3%","available":"1.2G"},"swap":{"total":"4.0G","used":"24.8%","available":"3.0G"}}"#
        );
    }

    #[test]
    fn a_host_without_swap_reports_zero_percent() {
        let m = meminfo("prometheus_procfs").unwrap();
        assert_eq!(m.swap_total, 0);
        assert!(seed(m).contains(r#""swap":{"total":"0.0B","used":"0.0%","available":"0.0B"}"#));
    }

    #[test]
    fn partial_and_old_style_files_still_parse() {
        let four_lines = meminfo("gopsutil/meminfo_anonhugepages").unwrap();
        assert_eq!(four_lines.available, 127_880_216 * 1024);
        assert_eq!(four_lines.swap_total, 0);
        // 2.4-era files start with a "total: used: ..." table; its rows are skipped.
        let old = meminfo("gopsutil/meminfo_issue1002").unwrap();
        assert_eq!(old.total, 254_472 * 1024);
    }

    #[test]
    fn no_mem_total_is_an_error_not_zeroes() {
        assert_eq!(parse_meminfo("MemFree: 12 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
    }

    #[test]
    fn raw_view_keeps_exact_bytes() {
        let m = MemInfo {
            total: 1000,
            free: 100,
            available: 250,
            buffers: 10,
            cached: 20,
            swap_total: 0,
            swap_free: 0,
        };
        let v = serde_json::to_value(MemorySection(m).view(Format::Raw)).unwrap();
        assert_eq!(v["total_bytes"], 1000);
        assert_eq!(v["used_bytes"], 750);
        assert_eq!(v["used_percent"], 75.0);
        assert_eq!(v["swap_used_percent"], 0.0);
    }
}
