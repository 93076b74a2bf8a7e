//! `temperature` (alias `temp`): every temperature sensor the kernel exposes, as psutil's
//! `sensors_temperatures` finds them: `/sys/class/hwmon/hwmon*/temp*_input` with the chip's
//! `name` and each sensor's `_label`, `_max` (high) and `_crit` (critical); on a host whose
//! hwmon chips have no temperature input, `/sys/class/thermal/thermal_zone*` (`type`, `temp`
//! and the `high`/`critical` trip points) instead. A host without sensors (most VMs) gives an
//! empty list.
//!
//! Sensor reads go to the hardware (an I2C or SMBus transfer on some chips) and can take
//! milliseconds or fail (EIO, ENODATA): the scan runs off the runtime, a sensor whose read
//! fails is left out with a rate-limited warning, and the others are still published.

use std::borrow::Cow;
use std::io;
use std::path::Path;
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;
use tracing::warn;

use crate::encode::humanize::one_decimal;
use crate::hostfs::HostFs;
use crate::logging::RateLimit;
use crate::model::{Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin, Unavailable};
use crate::settings::Declared;

inventory::submit! {
    SourcePlugin {
        name: "temperature",
        aliases: &["temp"],
        description: "temperature sensors (hwmon, else thermal zones): chip, label, °C, high and critical",
        on_by_default: None,
        settings: Declared::NONE,
        build: |ctx| Ok(Box::new(Temperature { host: ctx.host.clone(), failures: RateLimit::default() })),
    }
}

/// The most entries read from one directory: a real chip has tens, a real host a few
/// hundred sensors at most.
const MAX_ENTRIES: usize = 4096;

/// One sensor's reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensor {
    /// Where it was found: `hwmon3`, `thermal_zone0`.
    pub device: String,
    /// The hwmon chip's `name` (`coretemp`, `nvme`), or the thermal zone's `type`.
    pub chip: String,
    /// `temp1`, ...; `temp` for a thermal zone.
    pub sensor: String,
    /// `temp1_label` (`Package id 0`, `Composite`); empty where the chip gives none.
    pub label: String,
    pub celsius: f64,
    pub high: Option<f64>,
    pub critical: Option<f64>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub sensors: Vec<Sensor>,
    /// `path: error` of each sensor left out.
    pub failed: Vec<String>,
    /// A read was refused with EACCES (the snap's `hardware-observe` not connected).
    pub denied: bool,
}

/// Reads every sensor under `host`'s root.
pub fn scan(host: &HostFs) -> Scan {
    let mut scan = Scan::default();
    let root = std::fs::canonicalize(host.path("/")).unwrap_or_else(|_| host.path("/"));
    let found_hwmon = scan_class(host, &root, "/sys/class/hwmon", "hwmon", &mut scan, hwmon);
    if !found_hwmon {
        scan_class(
            host,
            &root,
            "/sys/class/thermal",
            "thermal_zone",
            &mut scan,
            thermal,
        );
    }
    scan
}

/// Whether either class lists a device (or cannot be listed: the scan says why).
fn has_devices(host: &HostFs) -> bool {
    [
        ("/sys/class/hwmon", "hwmon"),
        ("/sys/class/thermal", "thermal_zone"),
    ]
    .iter()
    .any(|(class, prefix)| numbered(host, class, prefix, "").map_or(true, |d| !d.is_empty()))
}

/// Reads each `prefix*` device of `class` with `read`; whether any had a sensor to read.
fn scan_class(
    host: &HostFs,
    root: &Path,
    class: &str,
    prefix: &str,
    scan: &mut Scan,
    read: fn(&HostFs, &str, &str, &mut Scan) -> bool,
) -> bool {
    let devices = match numbered(host, class, prefix, "") {
        Ok(devices) => devices,
        Err(e) => {
            scan.denied |= e.kind() == io::ErrorKind::PermissionDenied;
            scan.failed.push(format!("{class}: {e}"));
            return false;
        }
    };
    let mut any = false;
    for (_, device) in devices {
        let dir = format!("{class}/{device}");
        // These are the kernel's symlinks into /sys/devices; under --host-root one that
        // leads out of the tree is not followed.
        match std::fs::canonicalize(host.path(&dir)) {
            Ok(real) if real.starts_with(root) => {}
            Ok(real) => {
                scan.failed.push(format!(
                    "{dir}: leads out of the host root to {}",
                    real.display()
                ));
                continue;
            }
            Err(e) => {
                scan.failed.push(format!("{dir}: {e}"));
                continue;
            }
        }
        any |= read(host, &dir, &device, scan);
    }
    any
}

/// The sensors of one hwmon chip; whether it has any temperature input.
fn hwmon(host: &HostFs, dir: &str, device: &str, scan: &mut Scan) -> bool {
    let inputs = match numbered(host, dir, "temp", "_input") {
        Ok(inputs) => inputs,
        Err(e) => {
            scan.denied |= e.kind() == io::ErrorKind::PermissionDenied;
            scan.failed.push(format!("{dir}: {e}"));
            return false;
        }
    };
    let chip = host.read_trimmed(format!("{dir}/name")).unwrap_or_default();
    for (n, _) in &inputs {
        let base = format!("{dir}/temp{n}");
        let Some(celsius) = reading(host, &format!("{base}_input"), scan) else {
            continue;
        };
        scan.sensors.push(Sensor {
            device: device.to_string(),
            chip: chip.clone(),
            sensor: format!("temp{n}"),
            label: host
                .read_trimmed(format!("{base}_label"))
                .unwrap_or_default(),
            celsius,
            high: threshold(host, &format!("{base}_max")),
            critical: threshold(host, &format!("{base}_crit")),
        });
    }
    !inputs.is_empty()
}

/// One thermal zone; whether it has a temperature to read.
fn thermal(host: &HostFs, dir: &str, device: &str, scan: &mut Scan) -> bool {
    let Some(celsius) = reading(host, &format!("{dir}/temp"), scan) else {
        return true;
    };
    let (mut high, mut critical) = (None, None);
    for (n, _) in numbered(host, dir, "trip_point_", "_type").unwrap_or_default() {
        let kind = host.read_trimmed(format!("{dir}/trip_point_{n}_type"));
        let slot = match kind.as_deref() {
            Some("high") => &mut high,
            Some("critical") => &mut critical,
            _ => continue,
        };
        *slot = threshold(host, &format!("{dir}/trip_point_{n}_temp"));
    }
    scan.sensors.push(Sensor {
        device: device.to_string(),
        chip: host.read_trimmed(format!("{dir}/type")).unwrap_or_default(),
        sensor: "temp".into(),
        label: String::new(),
        celsius,
        high,
        critical,
    });
    true
}

/// A temperature in millidegrees Celsius, read from `path`; a failure is recorded.
fn reading(host: &HostFs, path: &str, scan: &mut Scan) -> Option<f64> {
    let mut text = String::new();
    let read = host.read_into(path, &mut text).and_then(|()| {
        (text.trim().parse::<i64>()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{:?} is not a number", text.trim()),
            )
        })
    });
    match read {
        Ok(millis) => Some(millis as f64 / 1000.0),
        Err(e) => {
            scan.denied |= e.kind() == io::ErrorKind::PermissionDenied;
            scan.failed.push(format!("{path}: {e}"));
            None
        }
    }
}

/// A threshold in millidegrees; `None` where the file is missing, unreadable or not a number.
fn threshold(host: &HostFs, path: &str) -> Option<f64> {
    let millis: i64 = host.read_trimmed(path)?.parse().ok()?;
    Some(millis as f64 / 1000.0)
}

/// The entries of `dir` named `{prefix}{n}{suffix}`, by `n`: `hwmon10` after `hwmon9`.
fn numbered(
    host: &HostFs,
    dir: &str,
    prefix: &str,
    suffix: &str,
) -> io::Result<Vec<(u64, String)>> {
    let listing = match std::fs::read_dir(host.path(dir)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        listing => listing?,
    };
    let mut found: Vec<(u64, String)> = (listing.take(MAX_ENTRIES))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let n = name
                .strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse()
                .ok()?;
            Some((n, name))
        })
        .collect();
    found.sort();
    Ok(found)
}

struct Temperature {
    host: HostFs,
    failures: RateLimit,
}

#[async_trait]
impl Source for Temperature {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        // Listing the classes touches no hardware. Without a device in either (most VMs)
        // there is nothing to wait for, and no blocking thread to hand to (4 µs a call
        // instead of 26: benches/collect.rs).
        if !has_devices(&self.host) {
            return Ok(Box::new(TemperatureSection(Vec::new())));
        }
        let host = self.host.clone();
        let scan = tokio::task::spawn_blocking(move || scan(&host)).await?;
        if scan.denied && scan.sensors.is_empty() {
            let why = format!(
                "reading the sensors was denied ({}); in the snap, connect its interface: \
                 snap connect pocketses:hardware-observe",
                scan.failed.first().map_or("", String::as_str)
            );
            return Err(Unavailable(why).into());
        }
        if let Some(first) = scan.failed.first() {
            if let Some(held_back) = self.failures.allow(Instant::now()) {
                warn!(
                    source = "temperature",
                    failed = scan.failed.len(),
                    held_back,
                    "sensors left out of this snapshot: {first}"
                );
            }
        }
        Ok(Box::new(TemperatureSection(scan.sensors)))
    }
}

/// How a family's value is taken from a sensor; `None`: no sample.
type Reading = fn(&Sensor) -> Option<f64>;

pub struct TemperatureSection(pub Vec<Sensor>);

impl Section for TemperatureSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        match format {
            Format::Seed => Box::new(
                (self.0.iter())
                    .map(|s| SeedSensor {
                        chip: &s.chip,
                        label: &s.label,
                        current: one_decimal(s.celsius),
                        high: s.high.map(one_decimal),
                        critical: s.critical.map(one_decimal),
                    })
                    .collect::<Vec<_>>(),
            ),
            Format::Raw => Box::new(
                (self.0.iter())
                    .map(|s| RawSensor {
                        device: &s.device,
                        chip: &s.chip,
                        sensor: &s.sensor,
                        label: &s.label,
                        celsius: s.celsius,
                        high_celsius: s.high,
                        critical_celsius: s.critical,
                    })
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        let values: [(&'static Family, Reading); 3] = [
            (&CURRENT, |s| Some(s.celsius)),
            (&HIGH, |s| s.high),
            (&CRITICAL, |s| s.critical),
        ];
        for (family, value) in values {
            for s in &self.0 {
                if let Some(v) = value(s) {
                    let labels = [&s.device, &s.chip, &s.sensor, &s.label]
                        .map(|l| Cow::Borrowed(l.as_str()));
                    out.push(Sample::new(family, labels, v));
                }
            }
        }
    }
}

const LABELS: &[&str] = &["device", "chip", "sensor", "label"];

static CURRENT: Family = Family::gauge(
    "temperature_celsius",
    "Temperature of each sensor.",
    Unit::Celsius,
)
.labels(LABELS);
static HIGH: Family = Family::gauge(
    "temperature_high_celsius",
    "High threshold of each sensor that gives one (hwmon max, or a high trip point).",
    Unit::Celsius,
)
.labels(LABELS);
static CRITICAL: Family = Family::gauge(
    "temperature_critical_celsius",
    "Critical threshold of each sensor that gives one (hwmon crit, or a critical trip point).",
    Unit::Celsius,
)
.labels(LABELS);

/// psutil's `shwtemp(label, current, high, critical)` with the chip it is listed under.
#[derive(Serialize)]
struct SeedSensor<'a> {
    chip: &'a str,
    label: &'a str,
    current: f64,
    high: Option<f64>,
    critical: Option<f64>,
}

#[derive(Serialize)]
struct RawSensor<'a> {
    device: &'a str,
    chip: &'a str,
    sensor: &'a str,
    label: &'a str,
    celsius: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    high_celsius: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    critical_celsius: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/temperature")
    }

    fn sensor(
        device: &str,
        chip: &str,
        sensor: &str,
        label: &str,
        c: f64,
        high: Option<f64>,
        crit: Option<f64>,
    ) -> Sensor {
        Sensor {
            device: device.into(),
            chip: chip.into(),
            sensor: sensor.into(),
            label: label.into(),
            celsius: c,
            high,
            critical: crit,
        }
    }

    fn scan_case(case: &str) -> Scan {
        scan(&HostFs::new(fixtures().join(case)))
    }

    #[test]
    fn hwmon_chips_in_order_with_labels_thresholds_and_a_failed_read_left_out() {
        let found = scan_case("hwmon");
        assert_eq!(
            found.sensors,
            [
                sensor("hwmon0", "acpitz", "temp1", "", 27.8, None, Some(105.0)),
                sensor(
                    "hwmon1",
                    "coretemp",
                    "temp1",
                    "Package id 0",
                    45.0,
                    Some(80.0),
                    Some(100.0)
                ),
                sensor(
                    "hwmon1",
                    "coretemp",
                    "temp2",
                    "Core 0",
                    43.0,
                    Some(80.0),
                    Some(100.0)
                ),
                sensor(
                    "hwmon1",
                    "coretemp",
                    "temp10",
                    "Core 8",
                    41.0,
                    Some(80.0),
                    Some(100.0)
                ),
                sensor(
                    "hwmon2",
                    "nvme",
                    "temp1",
                    "Composite",
                    38.85,
                    Some(84.85),
                    Some(84.85)
                ),
                sensor("hwmon2", "nvme", "temp2", "Sensor 1", -4.5, None, None),
            ]
        );
        // temp3 of coretemp cannot be read; hwmon3 (fans only) has no sensor; hwmon9 leads
        // out of the tree. The thermal zones are not read: hwmon has sensors.
        assert_eq!(found.failed.len(), 2, "{:?}", found.failed);
        assert!(
            found.failed[0].contains("hwmon1/temp3_input"),
            "{:?}",
            found.failed
        );
        assert!(
            found.failed[1].contains("hwmon9: leads out of the host root"),
            "{:?}",
            found.failed
        );
        assert!(!found.denied);
    }

    #[test]
    fn without_hwmon_sensors_thermal_zones_are_read_as_psutil_does() {
        let found = scan_case("thermal");
        assert_eq!(
            found.sensors,
            [
                sensor(
                    "thermal_zone0",
                    "acpitz",
                    "temp",
                    "",
                    27.8,
                    Some(90.0),
                    Some(105.0)
                ),
                sensor(
                    "thermal_zone1",
                    "x86_pkg_temp",
                    "temp",
                    "",
                    52.0,
                    None,
                    Some(100.0)
                ),
            ]
        );
        assert!(found.failed.is_empty(), "{:?}", found.failed);
    }

    #[test]
    fn no_sensors_is_an_empty_list() {
        let found = scan_case("none");
        assert!(found.sensors.is_empty() && found.failed.is_empty());
        let section = TemperatureSection(found.sensors);
        for format in [Format::Seed, Format::Raw] {
            assert_eq!(serde_json::to_string(&section.view(format)).unwrap(), "[]");
        }
    }

    #[test]
    fn views_and_samples() {
        let section = TemperatureSection(vec![sensor(
            "hwmon2",
            "nvme",
            "temp1",
            "Composite",
            38.85,
            Some(84.85),
            None,
        )]);
        assert_eq!(
            serde_json::to_string(&section.view(Format::Seed)).unwrap(),
            r#"[{"chip":"nvme","label":"Composite","current":38.9,"high":84.8,"critical":null}]"#
        );
        assert_eq!(
            serde_json::to_string(&section.view(Format::Raw)).unwrap(),
            r#"[{"device":"hwmon2","chip":"nvme","sensor":"temp1","label":"Composite","celsius":38.85,"high_celsius":84.85}]"#
        );
        let mut samples = Vec::new();
        section.samples(&mut samples);
        let names: Vec<_> = samples.iter().map(|s| (s.family.name, s.value)).collect();
        assert_eq!(
            names,
            [
                ("temperature_celsius", 38.85),
                ("temperature_high_celsius", 84.85)
            ]
        );
    }
}
