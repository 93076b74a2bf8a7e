//! `disk`: per block device I/O counters from `/proc/diskstats`, and per-second rates.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::time::Instant;

use async_trait::async_trait;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::{increase, matches_any};
use crate::encode::humanize::{ser_bytes, ser_percent};
use crate::hostfs::HostFs;
use crate::model::{Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::{Declared, DefaultValue, Kind as SettingKind, Setting};

/// node_exporter's default `--collector.diskstats.device-exclude`,
/// `^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`, as globs: partitions, RAM disks,
/// loop devices and floppies.
const DEFAULT_EXCLUDE: &str =
    "ram[0-9]*,zram[0-9]*,loop[0-9]*,fd[0-9]*,[hsv]d[a-z][0-9]*,xvd[a-z][0-9]*,nvme[0-9]*n[0-9]*p[0-9]*";

inventory::submit! {
    SourcePlugin {
        name: "disk",
        aliases: &[],
        description: "per block device: reads and writes, bytes, time spent, I/O in progress, per-second rates",
        on_by_default: None,
        settings: Declared::typed::<DiskSettings>(&[Setting {
            key: "disk.exclude",
            kind: SettingKind::Text,
            default: DefaultValue::Text(DEFAULT_EXCLUDE),
            help: "Devices left out: comma-separated globs (* ? [a-z]) on the name in /proc/diskstats; empty keeps all",
        }]),
        build: |ctx| {
            let settings = ctx.settings.settings::<DiskSettings>().map_err(anyhow::Error::msg)?;
            Ok(Box::new(Disk::new(ctx.host.clone(), settings.exclude)))
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskSettings {
    exclude: String,
}

/// One device's line of `/proc/diskstats`, times in milliseconds as the kernel counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub reads: u64,
    pub reads_merged: u64,
    pub sectors_read: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub writes_merged: u64,
    pub sectors_written: u64,
    pub write_ms: u64,
    pub in_progress: u64,
    pub io_ms: u64,
    pub weighted_io_ms: u64,
}

/// The kernel's sectors in `/proc/diskstats` are always 512 bytes, whatever the device's.
const SECTOR: u64 = 512;

/// Parses `/proc/diskstats`: `major minor name` then at least 11 counters (kernels since 4.18
/// add discard and, since 5.5, flush counters, which are not kept). Lines with fewer fields
/// (partitions of 2.6 kernels had 4) or that do not parse are skipped. Our own parser:
/// procfs is not a dependency, and this is all of it.
pub fn parse_diskstats(text: &str) -> Vec<(String, DiskCounters)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace().skip(2);
            let name = fields.next()?;
            let mut n = [0u64; 11];
            for slot in &mut n {
                *slot = fields.next()?.parse().ok()?;
            }
            let [reads, reads_merged, sectors_read, read_ms, writes, writes_merged, sectors_written, write_ms, in_progress, io_ms, weighted_io_ms] =
                n;
            let counters = DiskCounters {
                reads,
                reads_merged,
                sectors_read,
                read_ms,
                writes,
                writes_merged,
                sectors_written,
                write_ms,
                in_progress,
                io_ms,
                weighted_io_ms,
            };
            Some((name.to_string(), counters))
        })
        .collect()
}

/// Per-second rates over the span since the previous snapshot.
#[derive(Clone, Copy, Debug, Serialize)]
struct Rates {
    reads_per_second: f64,
    writes_per_second: f64,
    read_bytes_per_second: f64,
    written_bytes_per_second: f64,
    /// Share of the span with I/O in flight, as iostat's `%util`.
    busy_percent: f64,
}

impl Rates {
    fn between(now: &DiskCounters, then: &DiskCounters, secs: f64) -> Rates {
        let r = |now: u64, then: u64| increase(now, then) as f64 / secs;
        Rates {
            reads_per_second: r(now.reads, then.reads),
            writes_per_second: r(now.writes, then.writes),
            read_bytes_per_second: r(now.sectors_read, then.sectors_read) * SECTOR as f64,
            written_bytes_per_second: r(now.sectors_written, then.sectors_written) * SECTOR as f64,
            busy_percent: (r(now.io_ms, then.io_ms) / 10.0).clamp(0.0, 100.0),
        }
    }
}

struct Disk {
    host: HostFs,
    exclude: String,
    buf: String,
    previous: Option<(Instant, HashMap<String, DiskCounters>)>,
    /// Whether the hint for a denied read has been logged: once per run is enough.
    denied_logged: bool,
}

impl Disk {
    fn new(host: HostFs, exclude: String) -> Self {
        Disk {
            host,
            exclude,
            buf: String::new(),
            previous: None,
            denied_logged: false,
        }
    }
}

#[async_trait]
impl Source for Disk {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        if let Err(e) = self.host.read_into("/proc/diskstats", &mut self.buf) {
            if e.kind() == io::ErrorKind::PermissionDenied && !self.denied_logged {
                self.denied_logged = true;
                tracing::warn!(
                    "disk: /proc/diskstats is denied; in the snap, connect system-observe: \
                     sudo snap connect pocketses:system-observe"
                );
            }
            return Err(e.into());
        }
        let now = Instant::now();
        let devices: Vec<(String, DiskCounters)> = parse_diskstats(&self.buf)
            .into_iter()
            .filter(|(name, _)| !matches_any(&self.exclude, name))
            .collect();
        let shown = devices
            .iter()
            .map(|(name, c)| {
                let rates = self.previous.as_ref().and_then(|(then, earlier)| {
                    let secs = now.duration_since(*then).as_secs_f64().max(1e-9);
                    // A device new since the last snapshot has no rate yet.
                    Some(Rates::between(c, earlier.get(name)?, secs))
                });
                (name.clone(), *c, rates)
            })
            .collect();
        self.previous = Some((now, devices.into_iter().collect()));
        Ok(Box::new(DiskSection { devices: shown }))
    }
}

struct DiskSection {
    devices: Vec<(String, DiskCounters, Option<Rates>)>,
}

impl Section for DiskSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        Box::new(Devices(&self.devices, format))
    }

    /// The counters, with node_exporter's families; rates are the consumer's `rate()`.
    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        for (family, value) in &FAMILIES {
            for (name, counters, _) in &self.devices {
                let labels = [Cow::Borrowed(name.as_str())];
                out.push(Sample::new(family, labels, value(counters)));
            }
        }
    }
}

/// Devices as a JSON object by name, in the kernel's order.
struct Devices<'a>(&'a [(String, DiskCounters, Option<Rates>)], Format);

impl Serialize for Devices<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, c, rates) in self.0 {
            match self.1 {
                Format::Seed => map.serialize_entry(
                    name,
                    &SeedDevice {
                        read: c.sectors_read * SECTOR,
                        written: c.sectors_written * SECTOR,
                        reads: c.reads,
                        writes: c.writes,
                        busy: rates.map(|r| r.busy_percent),
                    },
                )?,
                Format::Raw => map.serialize_entry(
                    name,
                    &RawDevice {
                        reads_completed: c.reads,
                        reads_merged: c.reads_merged,
                        read_bytes: c.sectors_read * SECTOR,
                        read_time_seconds: c.read_ms as f64 / 1000.0,
                        writes_completed: c.writes,
                        writes_merged: c.writes_merged,
                        written_bytes: c.sectors_written * SECTOR,
                        write_time_seconds: c.write_ms as f64 / 1000.0,
                        io_in_progress: c.in_progress,
                        io_time_seconds: c.io_ms as f64 / 1000.0,
                        io_time_weighted_seconds: c.weighted_io_ms as f64 / 1000.0,
                        rates: rates.as_ref(),
                    },
                )?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct SeedDevice {
    #[serde(serialize_with = "ser_bytes")]
    read: u64,
    #[serde(serialize_with = "ser_bytes")]
    written: u64,
    reads: u64,
    writes: u64,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_some_percent"
    )]
    busy: Option<f64>,
}

fn ser_some_percent<S: Serializer>(p: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    ser_percent(&p.unwrap_or_default(), s)
}

#[derive(Serialize)]
struct RawDevice<'a> {
    reads_completed: u64,
    reads_merged: u64,
    read_bytes: u64,
    read_time_seconds: f64,
    writes_completed: u64,
    writes_merged: u64,
    written_bytes: u64,
    write_time_seconds: f64,
    io_in_progress: u64,
    io_time_seconds: f64,
    io_time_weighted_seconds: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    rates: Option<&'a Rates>,
}

type DiskFamily = (Family, fn(&DiskCounters) -> f64);

static FAMILIES: [DiskFamily; 11] = [
    (
        Family::counter(
            "disk_reads_completed_total",
            "Reads completed by the device.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_disk_reads_completed_total"),
        |c| c.reads as f64,
    ),
    (
        Family::counter(
            "disk_reads_merged_total",
            "Adjacent reads merged into one.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_disk_reads_merged_total"),
        |c| c.reads_merged as f64,
    ),
    (
        Family::counter(
            "disk_read_bytes_total",
            "Bytes read from the device.",
            Unit::Bytes,
        )
        .labels(&["device"])
        .node("node_disk_read_bytes_total"),
        |c| (c.sectors_read * SECTOR) as f64,
    ),
    (
        Family::counter(
            "disk_read_time_seconds_total",
            "Time spent on reads, summed over requests.",
            Unit::Seconds,
        )
        .labels(&["device"])
        .node("node_disk_read_time_seconds_total"),
        |c| c.read_ms as f64 / 1000.0,
    ),
    (
        Family::counter(
            "disk_writes_completed_total",
            "Writes completed by the device.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_disk_writes_completed_total"),
        |c| c.writes as f64,
    ),
    (
        Family::counter(
            "disk_writes_merged_total",
            "Adjacent writes merged into one.",
            Unit::None,
        )
        .labels(&["device"])
        .node("node_disk_writes_merged_total"),
        |c| c.writes_merged as f64,
    ),
    (
        Family::counter(
            "disk_written_bytes_total",
            "Bytes written to the device.",
            Unit::Bytes,
        )
        .labels(&["device"])
        .node("node_disk_written_bytes_total"),
        |c| (c.sectors_written * SECTOR) as f64,
    ),
    (
        Family::counter(
            "disk_write_time_seconds_total",
            "Time spent on writes, summed over requests.",
            Unit::Seconds,
        )
        .labels(&["device"])
        .node("node_disk_write_time_seconds_total"),
        |c| c.write_ms as f64 / 1000.0,
    ),
    (
        Family::gauge("disk_io_now", "I/O requests in flight.", Unit::None)
            .labels(&["device"])
            .node("node_disk_io_now"),
        |c| c.in_progress as f64,
    ),
    (
        Family::counter(
            "disk_io_time_seconds_total",
            "Time with I/O in flight.",
            Unit::Seconds,
        )
        .labels(&["device"])
        .node("node_disk_io_time_seconds_total"),
        |c| c.io_ms as f64 / 1000.0,
    ),
    (
        Family::counter(
            "disk_io_time_weighted_seconds_total",
            "Time with I/O in flight, weighted by the requests in flight.",
            Unit::Seconds,
        )
        .labels(&["device"])
        .node("node_disk_io_time_weighted_seconds_total"),
        |c| c.weighted_io_ms as f64 / 1000.0,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::collect_now;
    use serde_json::Value;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/disk");

    fn raw(section: &dyn Section) -> Value {
        serde_json::to_value(section.view(Format::Raw)).unwrap()
    }

    /// Collects once from each of `texts` in turn, as successive ticks of one source.
    fn run(texts: &[&str]) -> Vec<Value> {
        let root = std::env::temp_dir().join(format!(
            "pocketses-disk-{}-{}",
            std::process::id(),
            texts.len()
        ));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        let mut disk = Disk::new(HostFs::new(&root), DEFAULT_EXCLUDE.into());
        let out = texts
            .iter()
            .map(|text| {
                std::fs::write(root.join("proc/diskstats"), text).unwrap();
                raw(collect_now(&mut disk).unwrap().as_ref())
            })
            .collect();
        std::fs::remove_dir_all(&root).unwrap();
        out
    }

    #[test]
    fn this_hosts_capture_keeps_whole_disks_and_converts_units() {
        let text = std::fs::read_to_string(format!("{FIXTURES}/this-host/proc/diskstats")).unwrap();
        let s = &run(&[&text])[0];
        // loop0..7 and zram0 are left out by the default filter; vda stays.
        assert_eq!(
            s.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["vda"],
            "{s}"
        );
        let vda = &s["vda"];
        assert_eq!(vda["reads_completed"], 1_154_189);
        assert_eq!(vda["read_bytes"], 52_171_802u64 * 512);
        assert_eq!(vda["write_time_seconds"], 1373.671);
        assert!(
            vda.get("reads_per_second").is_none(),
            "no rate on the first snapshot"
        );
    }

    #[test]
    fn old_kernel_lines_partitions_and_garbage_are_handled() {
        let text = std::fs::read_to_string(format!("{FIXTURES}/awkward/proc/diskstats")).unwrap();
        let parsed = parse_diskstats(&text);
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
        // A 2.6 partition line (4 counters) and a truncated line are skipped; an 11-counter
        // line (before 4.18) and a 20-counter one (6.x) both parse.
        assert_eq!(names, ["sda", "sda1", "nvme0n1", "nvme0n1p1", "dm-0"]);
    }

    fn line(name: &str, reads: u64, sectors: u64, io_ms: u64) -> String {
        format!("   8 0 {name} {reads} 0 {sectors} 0 0 0 0 0 0 {io_ms} 0\n")
    }

    #[test]
    fn wraps_and_resets_never_give_negative_or_huge_rates_and_a_disk_may_vanish() {
        let near_wrap = u64::from(u32::MAX) - 99;
        let snaps = run(&[
            &(line("sda", near_wrap, 1000, 10) + &line("sdb", 5, 5, 5)),
            // sda's 32-bit counter wrapped; sdb disappeared.
            &line("sda", 100, 2000, 20),
            // sda was replaced: its counters restarted; sdb is back, as new.
            &(line("sda", 3, 10, 1) + &line("sdb", 1, 1, 1)),
        ]);
        assert!(snaps[1].get("sdb").is_none(), "{}", snaps[1]);
        for s in &snaps[1..] {
            let sda = &s["sda"];
            for key in ["reads_per_second", "read_bytes_per_second", "busy_percent"] {
                let rate = sda[key].as_f64().unwrap();
                assert!(rate.is_finite() && rate >= 0.0, "{key} {s}");
            }
            assert!(sda["busy_percent"].as_f64().unwrap() <= 100.0);
        }
        assert!(
            snaps[2]["sdb"].get("reads_per_second").is_none(),
            "{}",
            snaps[2]
        );
        // The wrap counted 200 reads, not 4 billion backwards.
        assert!(snaps[1]["sda"]["reads_per_second"].as_f64().unwrap() < 200.0 / 1e-6);
    }

    #[test]
    fn seed_humanizes_bytes_and_shows_busy_from_the_second_snapshot() {
        let root = std::env::temp_dir().join(format!("pocketses-disk-seed-{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/diskstats"), line("sda", 1, 2048, 0)).unwrap();
        let mut disk = Disk::new(HostFs::new(&root), String::new());
        let first = collect_now(&mut disk).unwrap();
        let seed = serde_json::to_value(first.view(Format::Seed)).unwrap();
        assert_eq!(
            seed["sda"],
            serde_json::json!({"read": "1.0M", "written": "0.0B", "reads": 1, "writes": 0})
        );
        let second = collect_now(&mut disk).unwrap();
        let seed = serde_json::to_value(second.view(Format::Seed)).unwrap();
        assert_eq!(seed["sda"]["busy"], "0.0%");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
