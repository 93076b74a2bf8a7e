//! The snapshot model: what one tick of collection produced, and the two ways a section
//! describes itself: a JSON view per [`Format`], and typed [`Sample`]s for outputs that are
//! not our JSON (Prometheus text, MQTT), so those need no code per source.
//!
//! Nothing here knows an encoding: `encode` depends on this module, never the reverse.

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// How snapshots are rendered as JSON. See `docs/FORMAT.md` for the field lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The original tool's field names and value styles (humanized sizes, percent strings).
    Seed,
    /// Plain numbers in fixed units under unit-suffixed names, plus counters and rates.
    Raw,
}

impl Format {
    pub const NAMES: &'static str = "seed, raw";

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "seed" => Some(Format::Seed),
            "raw" => Some(Format::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Seed => "seed",
            Format::Raw => "raw",
        })
    }
}

/// One source's share of a snapshot. Values are plain numbers in fixed units; how they are
/// shown (humanized for `seed`, unit-suffixed for `raw`) is chosen per encoding by
/// [`Section::view`], so every encoding sees exact figures.
pub trait Section: Send + Sync {
    /// The serializable shape of this section in `format`.
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_>;

    /// Appends this section's samples to `out`: the samples of one family next to each
    /// other, each (family, label values) once. A value the section does not know (a CPU
    /// frequency the host does not expose) has no sample. Called only when a sink asks for
    /// samples, never for the JSON of a tick. None by default.
    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        let _ = out;
    }
}

/// Counter or gauge, in Prometheus' sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows, except when its source restarts (a reboot, a driver reload); consumers
    /// take its rate. Its family name ends in `_total`.
    Counter,
    /// A value that can go up and down.
    Gauge,
}

impl Kind {
    /// `counter` or `gauge`, as Prometheus' `# TYPE` line writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A family's unit: always a base unit, so outputs never convert. The family name carries it
/// as a suffix (before `_total`), as Prometheus' naming rules ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    /// A share from 0 to 1 (not a percent).
    Ratio,
    Hertz,
    /// Degrees Celsius (temperatures; Prometheus' base unit for them).
    Celsius,
    /// A count of things (CPUs, packets, errors): no suffix.
    None,
}

impl Unit {
    /// The name suffix: `seconds`, `bytes`, `ratio`, `hertz`, `celsius`, or empty.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Seconds => "seconds",
            Unit::Bytes => "bytes",
            Unit::Ratio => "ratio",
            Unit::Hertz => "hertz",
            Unit::Celsius => "celsius",
            Unit::None => "",
        }
    }
}

/// What every sample of one metric shares, declared once as a `static` beside the section
/// that produces it.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// snake_case, without the `pocketses_` prefix an output may add, e.g.
    /// `network_receive_bytes_total`.
    pub name: &'static str,
    /// One sentence for Prometheus' `# HELP`.
    pub help: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// The label names, in order; every sample of the family has exactly these.
    pub labels: &'static [&'static str],
    /// node_exporter's name for the same series (same labels, same unit), for outputs that
    /// offer node_exporter's names; `None` where node_exporter has no such family.
    pub node_name: Option<&'static str>,
}

impl Family {
    /// A gauge without labels or a node_exporter name; [`labels`](Self::labels) and
    /// [`node`](Self::node) add them, so each source declares its families in one shape.
    pub const fn gauge(name: &'static str, help: &'static str, unit: Unit) -> Family {
        Family {
            name,
            help,
            kind: Kind::Gauge,
            unit,
            labels: &[],
            node_name: None,
        }
    }

    /// A counter, as [`gauge`](Self::gauge).
    pub const fn counter(name: &'static str, help: &'static str, unit: Unit) -> Family {
        Family {
            kind: Kind::Counter,
            ..Family::gauge(name, help, unit)
        }
    }

    pub const fn labels(self, labels: &'static [&'static str]) -> Family {
        Family { labels, ..self }
    }

    pub const fn node(self, node_name: &'static str) -> Family {
        Family {
            node_name: Some(node_name),
            ..self
        }
    }
}

/// The most labels a family may have.
pub const MAX_LABELS: usize = 4;

/// One value of a family. Label values borrow from the section where they can (interface
/// names) and own where they must (CPU ids).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub family: &'static Family,
    /// The first `family.labels.len()` are this sample's label values.
    label_values: [Cow<'a, str>; MAX_LABELS],
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// A sample of `family` with its label values in the family's order.
    ///
    /// Panics if their number is not the family's: a mistake in the section's code.
    pub fn new<const N: usize>(
        family: &'static Family,
        labels: [Cow<'a, str>; N],
        value: f64,
    ) -> Sample<'a> {
        const { assert!(N <= MAX_LABELS) };
        assert_eq!(N, family.labels.len(), "label values of {}", family.name);
        let mut label_values: [Cow<'a, str>; MAX_LABELS] = Default::default();
        for (slot, v) in label_values.iter_mut().zip(labels) {
            *slot = v;
        }
        Sample {
            family,
            label_values,
            value,
        }
    }

    /// (name, value) of each label, in the family's order.
    pub fn labels(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        (self.family.labels.iter().copied()).zip(self.label_values.iter().map(|v| &**v))
    }
}

/// Formats `t` as RFC 3339 in UTC with millisecond precision, e.g.
/// `2026-11-26T12:00:00.000Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn format_names_round_trip() {
        for f in [Format::Seed, Format::Raw] {
            assert_eq!(Format::parse(&f.to_string()), Some(f));
        }
        assert_eq!(Format::parse("json"), None);
    }

    static MODES: Family = Family {
        name: "test_seconds_total",
        help: "Time per core and mode.",
        kind: Kind::Counter,
        unit: Unit::Seconds,
        labels: &["core", "mode"],
        node_name: None,
    };

    #[test]
    fn a_sample_pairs_its_values_with_the_family_label_names() {
        let name = String::from("user");
        let sample = Sample::new(
            &MODES,
            [Cow::Owned(3.to_string()), Cow::Borrowed(&name)],
            1.5,
        );
        assert_eq!(
            sample.labels().collect::<Vec<_>>(),
            [("core", "3"), ("mode", "user")]
        );
        assert_eq!(sample.value, 1.5);
    }

    #[test]
    #[should_panic(expected = "label values of test_seconds_total")]
    fn a_sample_with_the_wrong_number_of_labels_is_a_bug() {
        Sample::new(&MODES, [Cow::Borrowed("0")], 1.0);
    }

    fn at(secs: u64, millis: u64) -> String {
        rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
    }

    #[test]
    fn rfc3339_golden_values() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_795_694_400, 999), "2026-11-26T12:00:00.999Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }
}
