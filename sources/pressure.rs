//! `pressure` (alias `psi`): pressure stall information for cpu, memory and io from
//! `/proc/pressure/*`: the share of time some (or all) runnable tasks waited for the resource,
//! averaged over 10, 60 and 300 seconds, and the total time stalled.

use std::borrow::Cow;
use std::io;
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;

use crate::encode::humanize::ser_one_decimal;
use crate::hostfs::HostFs;
use crate::model::{Family, Format, Kind, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin, Unavailable};
use crate::settings::Declared;

inventory::submit! {
    SourcePlugin {
        name: "pressure",
        aliases: &["psi"],
        description: "pressure stall information (cpu, memory, io): some/full averages and total stall time",
        on_by_default: None,
        settings: Declared::NONE,
        build: |ctx| Ok(Box::new(Pressure { host: ctx.host.clone(), buf: String::new(), previous: None })),
    }
}

/// The resources, in snapshot order.
pub const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// Their files, in the same order.
const FILES: [&str; 3] = [
    "/proc/pressure/cpu",
    "/proc/pressure/memory",
    "/proc/pressure/io",
];

/// One line of a pressure file: `some avg10=6.35 avg60=13.63 avg300=17.94 total=917933282`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stall {
    /// Percent of wall time stalled, averaged over 10, 60 and 300 seconds.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time in microseconds since boot (a counter).
    pub total_us: u64,
}

/// One resource's file: `some` always (where PSI exists), `full` for memory and io, and for
/// cpu since Linux 5.13.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourcePressure {
    pub some: Option<Stall>,
    pub full: Option<Stall>,
}

/// Parses a pressure file. A line that is not whole (a file cut short, a field missing or
/// not a number) is left out rather than read as zeroes; a last line without its newline
/// is read like any other.
pub fn parse_pressure(text: &str) -> ResourcePressure {
    let mut p = ResourcePressure::default();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut p.some,
            Some("full") => &mut p.full,
            _ => continue,
        };
        *slot = parse_stall(fields);
    }
    p
}

fn parse_stall<'a>(fields: impl Iterator<Item = &'a str>) -> Option<Stall> {
    let (mut avg10, mut avg60, mut avg300, mut total_us) = (None, None, None, None);
    for field in fields {
        let (key, value) = field.split_once('=')?;
        let percent = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
        };
        match key {
            "avg10" => avg10 = percent(),
            "avg60" => avg60 = percent(),
            "avg300" => avg300 = percent(),
            "total" => total_us = value.parse().ok(),
            _ => {}
        }
    }
    Some(Stall {
        avg10: avg10?,
        avg60: avg60?,
        avg300: avg300?,
        total_us: total_us?,
    })
}

struct Pressure {
    host: HostFs,
    buf: String,
    /// The totals of the previous snapshot, for the stall rates.
    previous: Option<(Instant, [ResourcePressure; 3])>,
}

impl Pressure {
    /// Reads every resource's file; `Unavailable` when none can be read for want of PSI or
    /// for a denial, so that the section is absent rather than empty.
    fn read(&mut self) -> anyhow::Result<[Option<ResourcePressure>; 3]> {
        let mut out = [None; 3];
        let mut first_error = None;
        for (slot, path) in out.iter_mut().zip(FILES) {
            match self.host.read_into(path, &mut self.buf) {
                Ok(()) => *slot = Some(parse_pressure(&self.buf)),
                Err(e) => {
                    first_error.get_or_insert((path, e));
                }
            }
        }
        match first_error {
            Some((path, e)) if out.iter().all(Option::is_none) => Err(unavailable(path, e)),
            _ => Ok(out),
        }
    }
}

/// Why no pressure file could be read, as the message a user acts on.
fn unavailable(path: &str, e: io::Error) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Unavailable(format!(
            "{path}: {e}; under the snap, connect the system-observe interface: sudo snap connect pocketses:system-observe"
        ))
        .into(),
        // ENOENT: a kernel before 4.20 or built without CONFIG_PSI; EOPNOTSUPP: booted
        // with psi=0.
        io::ErrorKind::NotFound | io::ErrorKind::Unsupported => Unavailable(format!(
            "this kernel has no pressure stall information ({path}: {e}); it needs Linux 4.20 or later built with CONFIG_PSI and booted without psi=0"
        ))
        .into(),
        _ => anyhow::Error::new(e).context(path.to_string()),
    }
}

#[async_trait]
impl Source for Pressure {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        let read = self.read()?;
        let now = Instant::now();
        let resources = std::array::from_fn(|i| {
            let p = read[i]?;
            let earlier = self.previous.as_ref().map(|(then, prev)| (*then, prev[i]));
            let rate = |now_stall: Option<Stall>, then_stall: Option<Stall>, then: Instant| {
                let (n, t) = (now_stall?, then_stall?);
                // A total that went backwards was reset: all of it is new.
                let increase = n.total_us.checked_sub(t.total_us).unwrap_or(n.total_us);
                let secs = now.duration_since(then).as_secs_f64().max(1e-9);
                // Stalled at most all of the time: a reset mid-span cannot claim more.
                Some((increase as f64 / 1e6 / secs * 100.0).min(100.0))
            };
            let rates =
                earlier.map(|(then, e)| [rate(p.some, e.some, then), rate(p.full, e.full, then)]);
            Some((p, rates.unwrap_or_default()))
        });
        self.previous = Some((now, read.map(Option::unwrap_or_default)));
        Ok(Box::new(PressureSection { resources }))
    }
}

/// Each resource with the stall rate (percent of the time since the previous snapshot) of
/// its `some` and `full` lines; `None` where the resource's file was not readable.
pub struct PressureSection {
    pub resources: [Option<(ResourcePressure, [Option<f64>; 2])>; 3],
}

impl PressureSection {
    fn each(&self) -> impl Iterator<Item = (&'static str, &ResourcePressure, [Option<f64>; 2])> {
        (RESOURCES.iter().zip(&self.resources))
            .filter_map(|(name, r)| r.as_ref().map(|(p, rates)| (*name, p, *rates)))
    }
}

impl Section for PressureSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        match format {
            Format::Seed => Box::new(Keyed(
                self.each()
                    .map(|(name, p, _)| {
                        let seed = |s: Option<Stall>| {
                            s.map(|s| SeedStall {
                                avg10: s.avg10,
                                avg60: s.avg60,
                                avg300: s.avg300,
                                total: s.total_us as f64 / 1e6,
                            })
                        };
                        (name, Pair(seed(p.some), seed(p.full)))
                    })
                    .collect(),
            )),
            Format::Raw => Box::new(Keyed(
                self.each()
                    .map(|(name, p, [some_rate, full_rate])| {
                        let raw = |s: Option<Stall>, rate: Option<f64>| {
                            s.map(|s| RawStall {
                                avg10_percent: s.avg10,
                                avg60_percent: s.avg60,
                                avg300_percent: s.avg300,
                                total_seconds: s.total_us as f64 / 1e6,
                                stalled_percent: rate,
                            })
                        };
                        (name, Pair(raw(p.some, some_rate), raw(p.full, full_rate)))
                    })
                    .collect(),
            )),
        }
    }

    /// The stall totals as counters (node_exporter's families), and the kernel's averages
    /// as ratios labelled by resource, line and window.
    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        for (name, p, _) in self.each() {
            for (family, stall) in [(&SOME[index(name)], p.some), (&FULL[index(name)], p.full)] {
                if let Some(s) = stall {
                    out.push(Sample::new(
                        family,
                        [] as [Cow<str>; 0],
                        s.total_us as f64 / 1e6,
                    ));
                }
            }
        }
        for (name, p, _) in self.each() {
            for (kind, stall) in [("some", p.some), ("full", p.full)] {
                let Some(s) = stall else { continue };
                for (window, avg) in [("10s", s.avg10), ("60s", s.avg60), ("300s", s.avg300)] {
                    out.push(Sample::new(
                        &AVERAGE,
                        [
                            Cow::Borrowed(name),
                            Cow::Borrowed(kind),
                            Cow::Borrowed(window),
                        ],
                        avg / 100.0,
                    ));
                }
            }
        }
    }
}

fn index(resource: &str) -> usize {
    RESOURCES.iter().position(|r| *r == resource).unwrap_or(0)
}

/// Time some tasks stalled, per resource in [`RESOURCES`] order.
static SOME: [Family; 3] = [
    Family::counter(
        "pressure_cpu_waiting_seconds_total",
        "Time some runnable tasks waited for a CPU (PSI cpu some).",
        Unit::Seconds,
    )
    .node("node_pressure_cpu_waiting_seconds_total"),
    Family::counter(
        "pressure_memory_waiting_seconds_total",
        "Time some tasks stalled on memory (PSI memory some).",
        Unit::Seconds,
    )
    .node("node_pressure_memory_waiting_seconds_total"),
    Family::counter(
        "pressure_io_waiting_seconds_total",
        "Time some tasks stalled on I/O (PSI io some).",
        Unit::Seconds,
    )
    .node("node_pressure_io_waiting_seconds_total"),
];

/// Time all non-idle tasks stalled at once, per resource.
static FULL: [Family; 3] = [
    Family::counter(
        "pressure_cpu_stalled_seconds_total",
        "Time all non-idle tasks waited for a CPU at once (PSI cpu full, Linux 5.13+).",
        Unit::Seconds,
    )
    .node("node_pressure_cpu_stalled_seconds_total"),
    Family::counter(
        "pressure_memory_stalled_seconds_total",
        "Time all non-idle tasks stalled on memory at once (PSI memory full).",
        Unit::Seconds,
    )
    .node("node_pressure_memory_stalled_seconds_total"),
    Family::counter(
        "pressure_io_stalled_seconds_total",
        "Time all non-idle tasks stalled on I/O at once (PSI io full).",
        Unit::Seconds,
    )
    .node("node_pressure_io_stalled_seconds_total"),
];

static AVERAGE: Family = Family {
    name: "pressure_average_ratio",
    help: "The kernel's running average of the share of time stalled, per resource, line (some, full) and window.",
    kind: Kind::Gauge,
    unit: Unit::Ratio,
    labels: &["resource", "line", "window"],
    node_name: None,
};

/// Resources as keys in their order.
struct Keyed<T>(Vec<(&'static str, T)>);

impl<T: Serialize> Serialize for Keyed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A resource's `some` and `full`, each left out where the file lacks it.
struct Pair<T>(Option<T>, Option<T>);

impl<T: Serialize> Serialize for Pair<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let lines = [("some", &self.0), ("full", &self.1)];
        s.collect_map(
            lines
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.as_ref()?))),
        )
    }
}

#[derive(Serialize)]
struct SeedStall {
    #[serde(serialize_with = "ser_one_decimal")]
    avg10: f64,
    #[serde(serialize_with = "ser_one_decimal")]
    avg60: f64,
    #[serde(serialize_with = "ser_one_decimal")]
    avg300: f64,
    /// Seconds.
    #[serde(serialize_with = "ser_one_decimal")]
    total: f64,
}

#[derive(Serialize)]
struct RawStall {
    avg10_percent: f64,
    avg60_percent: f64,
    avg300_percent: f64,
    total_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stalled_percent: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::collect_now;
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pressure");

    fn source(case: &str) -> Pressure {
        Pressure {
            host: HostFs::new(format!("{FIXTURES}/{case}")),
            buf: String::new(),
            previous: None,
        }
    }

    fn views(section: &dyn Section) -> (serde_json::Value, serde_json::Value) {
        (
            serde_json::to_value(section.view(Format::Seed)).unwrap(),
            serde_json::to_value(section.view(Format::Raw)).unwrap(),
        )
    }

    #[test]
    fn a_capture_of_this_vm_in_both_views() {
        let section = collect_now(&mut source("vm")).unwrap();
        let (seed, raw) = views(section.as_ref());
        let keys: Vec<_> = seed.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["cpu", "memory", "io"]);
        assert_eq!(
            seed["cpu"]["some"],
            json!({"avg10": 21.6, "avg60": 36.2, "avg300": 25.4, "total": 959.4})
        );
        assert_eq!(
            raw["io"]["full"],
            json!({"avg10_percent": 0.63, "avg60_percent": 1.30, "avg300_percent": 1.94, "total_seconds": 41.520867})
        );
    }

    #[test]
    fn old_kernels_cut_files_and_a_last_line_without_newline() {
        // cpu: no full line (before 5.13), some without a newline at the end (what makes
        // procfs 0.18 panic); memory: its full line cut short; io: not a PSI file at all.
        let section = collect_now(&mut source("awkward")).unwrap();
        let (seed, raw) = views(section.as_ref());
        assert_eq!(
            seed,
            json!({
                "cpu": {"some": {"avg10": 1.0, "avg60": 0.5, "avg300": 0.1, "total": 2.0}},
                "memory": {"some": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0.0}},
                "io": {},
            })
        );
        assert!(raw["cpu"].get("full").is_none(), "{raw}");
    }

    #[test]
    fn one_file_missing_costs_only_its_resource() {
        let section = collect_now(&mut source("no-io")).unwrap();
        let (seed, _) = views(section.as_ref());
        assert!(seed.get("io").is_none(), "{seed}");
        assert!(seed["memory"]["full"].is_object(), "{seed}");
    }

    #[test]
    fn a_kernel_without_psi_is_unavailable_not_an_empty_section() {
        let e = collect_now(&mut source("no-psi")).err().unwrap();
        let why = e.downcast::<Unavailable>().expect("Unavailable").0;
        assert!(why.contains("no pressure stall information"), "{why}");
        assert!(why.contains("CONFIG_PSI"), "{why}");
    }

    #[test]
    fn stall_rates_come_from_the_second_snapshot_and_a_reset_is_never_negative() {
        let dir = std::env::temp_dir().join(format!("pocketses-psi-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("proc/pressure")).unwrap();
        let write = |total: u64| {
            for r in RESOURCES {
                std::fs::write(
                    dir.join("proc/pressure").join(r),
                    format!("some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n"),
                )
                .unwrap();
            }
        };
        let mut source = Pressure {
            host: HostFs::new(&dir),
            buf: String::new(),
            previous: None,
        };
        write(5_000_000_000);
        let (_, first) = views(collect_now(&mut source).unwrap().as_ref());
        assert!(first["cpu"]["some"].get("stalled_percent").is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(10);
        let (_, second) = views(collect_now(&mut source).unwrap().as_ref());
        let rate = second["cpu"]["some"]["stalled_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&rate), "{second}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn samples_are_node_exporters_counters_and_the_averages() {
        let p = parse_pressure(
            "some avg10=5.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        let section = PressureSection {
            resources: [Some((p, [None, None])), None, Some((p, [None, None]))],
        };
        let mut out = Vec::new();
        section.samples(&mut out);
        let counters: Vec<_> = (out.iter())
            .filter(|s| s.family.kind == Kind::Counter)
            .map(|s| (s.family.node_name.unwrap(), s.value))
            .collect();
        assert_eq!(
            counters,
            [
                ("node_pressure_cpu_waiting_seconds_total", 1.5),
                ("node_pressure_cpu_stalled_seconds_total", 0.0),
                ("node_pressure_io_waiting_seconds_total", 1.5),
                ("node_pressure_io_stalled_seconds_total", 0.0),
            ]
        );
        let first_average = out.iter().find(|s| s.family == &AVERAGE).unwrap();
        assert_eq!(
            first_average.labels().collect::<Vec<_>>(),
            [("resource", "cpu"), ("line", "some"), ("window", "10s")]
        );
        assert_eq!(first_average.value, 0.05);
    }
}
