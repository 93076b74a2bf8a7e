//! `load`: load averages, uptime, boot time and task counts from `/proc/loadavg`,
//! `/proc/uptime` and `/proc/stat`.

use std::borrow::Cow;
use std::io;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Serialize, Serializer};

use crate::encode::humanize::ser_one_decimal;
use crate::hostfs::HostFs;
use crate::model::{rfc3339_millis, Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::Declared;

inventory::submit! {
    SourcePlugin {
        name: "load",
        aliases: &[],
        description: "load averages 1/5/15 min, uptime, boot time, running and blocked tasks",
        on_by_default: None,
        settings: Declared::NONE,
        build: |ctx| Ok(Box::new(Load { host: ctx.host.clone(), buf: String::new(), stat_denial_told: false })),
    }
}

/// What `/proc/loadavg` holds: `1.94 1.91 1.81 2/102 14745`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadAvg {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    /// Threads that exist (the number after the slash); `None` in a file cut short.
    pub threads: Option<u64>,
}

/// Parses `/proc/loadavg`; `None` without its three averages.
pub fn parse_loadavg(text: &str) -> Option<LoadAvg> {
    let mut fields = text.split_ascii_whitespace();
    let mut average = || fields.next()?.parse::<f64>().ok().filter(|x| x.is_finite());
    let (load1, load5, load15) = (average()?, average()?, average()?);
    let threads = fields
        .next()
        .and_then(|tasks| tasks.split_once('/')?.1.parse().ok());
    Some(LoadAvg {
        load1,
        load5,
        load15,
        threads,
    })
}

/// Seconds since boot, the first number of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    let seconds: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds)
}

/// The lines of `/proc/stat` this section uses; each `None` where the file lacks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatTasks {
    /// Boot time, seconds since the Unix epoch (`btime`).
    pub boot_time: Option<u64>,
    pub running: Option<u64>,
    pub blocked: Option<u64>,
}

/// Finds `btime`, `procs_running` and `procs_blocked` in `/proc/stat`.
pub fn parse_stat_tasks(text: &str) -> StatTasks {
    let mut t = StatTasks::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let slot = match key {
            "btime" => &mut t.boot_time,
            "procs_running" => &mut t.running,
            "procs_blocked" => &mut t.blocked,
            _ => continue,
        };
        *slot = value.trim().parse().ok();
    }
    t
}

struct Load {
    host: HostFs,
    buf: String,
    /// A denied `/proc/stat` (the snap without `system-observe`) was logged.
    stat_denial_told: bool,
}

#[async_trait]
impl Source for Load {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        // loadavg and uptime are open to every snap; /proc/stat needs system-observe.
        self.host.read_into("/proc/loadavg", &mut self.buf)?;
        let load = parse_loadavg(&self.buf)
            .ok_or_else(|| anyhow::anyhow!("/proc/loadavg has no three load averages"))?;
        let uptime = (self.host.read_into("/proc/uptime", &mut self.buf).ok())
            .and_then(|()| parse_uptime(&self.buf));
        let tasks = match self.host.read_into("/proc/stat", &mut self.buf) {
            Ok(()) => parse_stat_tasks(&self.buf),
            Err(e) => {
                if e.kind() == io::ErrorKind::PermissionDenied
                    && !std::mem::replace(&mut self.stat_denial_told, true)
                {
                    tracing::warn!(
                        source = "load",
                        "/proc/stat denied: no boot time or task counts until the system-observe interface is connected (sudo snap connect pocketses:system-observe)"
                    );
                }
                StatTasks::default()
            }
        };
        Ok(Box::new(LoadSection {
            load,
            uptime,
            tasks,
        }))
    }
}

pub struct LoadSection {
    pub load: LoadAvg,
    pub uptime: Option<f64>,
    pub tasks: StatTasks,
}

impl Section for LoadSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        let LoadSection {
            load,
            uptime,
            tasks,
        } = self;
        match format {
            Format::Seed => Box::new(SeedLoad {
                average: SeedAverage {
                    one: load.load1,
                    five: load.load5,
                    fifteen: load.load15,
                },
                tasks: SeedTasks {
                    running: tasks.running,
                    blocked: tasks.blocked,
                    total: load.threads,
                },
                uptime: *uptime,
                boot_time: tasks.boot_time,
            }),
            Format::Raw => Box::new(RawLoad {
                load1: load.load1,
                load5: load.load5,
                load15: load.load15,
                procs_running: tasks.running,
                procs_blocked: tasks.blocked,
                threads: load.threads,
                uptime_seconds: *uptime,
                boot_time_seconds: tasks.boot_time,
            }),
        }
    }

    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        let LoadSection {
            load,
            uptime,
            tasks,
        } = self;
        let as_f64 = |v: Option<u64>| v.map(|n| n as f64);
        for (family, value) in [
            (&LOAD1, Some(load.load1)),
            (&LOAD5, Some(load.load5)),
            (&LOAD15, Some(load.load15)),
            (&RUNNING, as_f64(tasks.running)),
            (&BLOCKED, as_f64(tasks.blocked)),
            (&THREADS, as_f64(load.threads)),
            (&UPTIME, *uptime),
            (&BOOT_TIME, as_f64(tasks.boot_time)),
        ] {
            if let Some(value) = value {
                out.push(Sample::new(family, [] as [Cow<str>; 0], value));
            }
        }
    }
}

static LOAD1: Family = Family::gauge(
    "load1",
    "Load average over 1 minute: runnable and uninterruptible tasks, exponentially averaged.",
    Unit::None,
)
.node("node_load1");
static LOAD5: Family =
    Family::gauge("load5", "Load average over 5 minutes.", Unit::None).node("node_load5");
static LOAD15: Family =
    Family::gauge("load15", "Load average over 15 minutes.", Unit::None).node("node_load15");
static RUNNING: Family = Family::gauge(
    "load_procs_running",
    "Tasks running or ready to run (procs_running).",
    Unit::None,
)
.node("node_procs_running");
static BLOCKED: Family = Family::gauge(
    "load_procs_blocked",
    "Tasks blocked waiting for I/O (procs_blocked).",
    Unit::None,
)
.node("node_procs_blocked");
static THREADS: Family = Family::gauge(
    "load_threads",
    "Threads that exist on the host (the total of /proc/loadavg).",
    Unit::None,
);
static UPTIME: Family = Family::gauge(
    "load_uptime_seconds",
    "Seconds since boot (/proc/uptime).",
    Unit::Seconds,
);
static BOOT_TIME: Family = Family::gauge(
    "load_boot_time_seconds",
    "Boot time, seconds since the Unix epoch (btime).",
    Unit::Seconds,
)
.node("node_boot_time_seconds");

#[derive(Serialize)]
struct SeedLoad {
    average: SeedAverage,
    tasks: SeedTasks,
    #[serde(
        serialize_with = "ser_opt_one_decimal",
        skip_serializing_if = "Option::is_none"
    )]
    uptime: Option<f64>,
    #[serde(
        serialize_with = "ser_opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    boot_time: Option<u64>,
}

#[derive(Serialize)]
struct SeedAverage {
    #[serde(rename = "1min", serialize_with = "ser_one_decimal")]
    one: f64,
    #[serde(rename = "5min", serialize_with = "ser_one_decimal")]
    five: f64,
    #[serde(rename = "15min", serialize_with = "ser_one_decimal")]
    fifteen: f64,
}

#[derive(Serialize)]
struct SeedTasks {
    #[serde(skip_serializing_if = "Option::is_none")]
    running: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
}

fn ser_opt_one_decimal<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    ser_one_decimal(&x.unwrap_or_default(), s)
}

/// Seconds since the epoch as RFC 3339, as the snapshot's own timestamp is written.
pub(crate) fn ser_opt_time<S: Serializer>(t: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_millis(
        UNIX_EPOCH + Duration::from_secs(t.unwrap_or_default()),
    ))
}

#[derive(Serialize)]
struct RawLoad {
    load1: f64,
    load5: f64,
    load15: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    procs_running: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    procs_blocked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_time_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::collect_now;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/load");

    fn collect(case: &str) -> anyhow::Result<serde_json::Value> {
        let mut source = Load {
            host: HostFs::new(format!("{FIXTURES}/{case}")),
            buf: String::new(),
            stat_denial_told: false,
        };
        let section = collect_now(&mut source)?;
        let seed = serde_json::to_value(section.view(Format::Seed))?;
        let raw = serde_json::to_value(section.view(Format::Raw))?;
        Ok(serde_json::json!({"seed": seed, "raw": raw}))
    }

    #[test]
    fn a_capture_of_this_vm_in_both_views() {
        let v = collect("vm").unwrap();
        assert_eq!(
            v["seed"],
            serde_json::json!({
                "average": {"1min": 2.5, "5min": 2.1, "15min": 1.9},
                "tasks": {"running": 1, "blocked": 0, "total": 131},
                "uptime": 4593.1,
                "boot_time": "2026-11-30T10:08:22.000Z",
            })
        );
        assert_eq!(
            v["raw"],
            serde_json::json!({
                "load1": 2.47, "load5": 2.14, "load15": 1.90,
                "procs_running": 1, "procs_blocked": 0, "threads": 131,
                "uptime_seconds": 4593.05, "boot_time_seconds": 1_796_033_302u64,
            })
        );
    }

    #[test]
    fn cut_short_files_lose_only_what_they_lack() {
        // loadavg without its task counts, uptime empty, stat cut before btime.
        let v = collect("truncated").unwrap();
        assert_eq!(
            v["raw"],
            serde_json::json!({"load1": 0.5, "load5": 0.25, "load15": 0.0})
        );
        assert_eq!(
            v["seed"],
            serde_json::json!({"average": {"1min": 0.5, "5min": 0.2, "15min": 0.0}, "tasks": {}})
        );
    }

    #[test]
    fn without_three_averages_the_section_is_left_out() {
        let e = collect("no-averages").unwrap_err();
        assert!(e.to_string().contains("three load averages"), "{e}");
        assert!(collect("missing").is_err());
        assert_eq!(parse_loadavg("1.0 nan 2.0 1/2 3"), None);
        assert_eq!(parse_uptime("-1 0"), None);
    }

    #[test]
    fn samples_use_node_exporter_names_where_it_has_them() {
        let section = LoadSection {
            load: parse_loadavg("0.1 0.2 0.3 1/50 7").unwrap(),
            uptime: None,
            tasks: parse_stat_tasks("procs_running 3\nprocs_blocked 1\n"),
        };
        let mut out = Vec::new();
        section.samples(&mut out);
        let names: Vec<_> = out.iter().map(|s| (s.family.name, s.value)).collect();
        assert_eq!(
            names,
            [
                ("load1", 0.1),
                ("load5", 0.2),
                ("load15", 0.3),
                ("load_procs_running", 3.0),
                ("load_procs_blocked", 1.0),
                ("load_threads", 50.0)
            ]
        );
        assert_eq!(LOAD1.node_name, Some("node_load1"));
    }
}
