//! The `seed` and `raw` JSON of the default sources, byte for byte, on a fixture tree: the
//! files under `tests/fixtures/golden/` were written by the code before sections described
//! their metrics as samples, and any later change to the bytes must be deliberate (see that
//! directory's README.md).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pocketses::config::Config;
use pocketses::encode::{Encoder, Format};
use pocketses::hostfs::HostFs;
use pocketses::model::{Family, Kind, Section, Unit};
use pocketses::plugin::{self, Source, SourceContext, SourcePlugin};

use common::Scratch;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SOURCES: [&str; 3] = ["cpu", "memory", "network"];

/// The first capture's time; the second is one second later.
fn at(capture: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_694_400_042) + Duration::from_secs(capture)
}

/// The one place that calls into a source, so a change of its signature is one change here.
fn collect(source: &mut dyn Source) -> Box<dyn Section> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (runtime.block_on(source.collect())).expect("the fixture tree is complete")
}

/// A host root that changes between captures: copies of fixture files, with node_exporter's
/// cpufreq tree linked in. Capture 0 is the sources' baseline; the test collects at 1 and 2.
struct Host {
    scratch: Scratch,
}

impl Host {
    fn new() -> Host {
        let scratch = Scratch::new();
        std::fs::create_dir_all(scratch.path("proc/net")).unwrap();
        std::os::unix::fs::symlink(format!("{FIXTURES}/node_exporter/sys"), scratch.path("sys"))
            .unwrap();
        let host = Host { scratch };
        host.put("proc/cpuinfo", "node_exporter/proc/cpuinfo");
        host.put("proc/net/if_inet6", "golden/if_inet6");
        host.capture(0);
        host
    }

    fn put(&self, to: &str, from: &str) {
        std::fs::copy(format!("{FIXTURES}/{from}"), self.scratch.path(to)).unwrap();
    }

    /// Capture 0: the first of Telegraf's two readings of a 16-CPU host, node_exporter's
    /// memory and interfaces. 1: the second reading. 2: no CPU time passed, memory without
    /// swap (prometheus_procfs), and interface counters that grew, one of them reset.
    fn capture(&self, n: u64) {
        let (stat, meminfo, dev) = match n {
            0 => (
                "telegraf/default/0",
                "node_exporter",
                "node_exporter/proc/net/dev",
            ),
            1 => (
                "telegraf/default/1",
                "node_exporter",
                "node_exporter/proc/net/dev",
            ),
            _ => (
                "telegraf/default/1",
                "prometheus_procfs",
                "golden/net_dev.1",
            ),
        };
        self.put("proc/stat", &format!("{stat}/proc/stat"));
        self.put("proc/meminfo", &format!("{meminfo}/proc/meminfo"));
        self.put("proc/net/dev", dev);
    }

    fn root(&self) -> HostFs {
        HostFs::new(self.scratch.dir())
    }
}

/// The sources built through the registry on `host`.
fn sources(host: &Host) -> Vec<(&'static str, Box<dyn Source>)> {
    let defaults = Config::default();
    SOURCES
        .into_iter()
        .map(|name| {
            let plugin = plugin::find::<SourcePlugin>(name).unwrap();
            let context = SourceContext {
                host: host.root(),
                settings: defaults.plugin_config(&plugin.settings),
            };
            (name, (plugin.build)(&context).unwrap())
        })
        .collect()
}

/// The sections of two consecutive collections of the fixture host.
type Sections = Vec<(&'static str, Box<dyn Section>)>;

fn collections() -> [Sections; 2] {
    let host = Host::new();
    let mut sources = sources(&host);
    [1, 2].map(|capture| {
        host.capture(capture);
        (sources.iter_mut())
            .map(|(name, source)| (*name, collect(source.as_mut())))
            .collect()
    })
}

/// The two snapshots as the agent would encode them, one line each, masked.
fn json_lines(collections: &[Sections; 2], format: Format) -> String {
    let mut encoder = Encoder::default();
    let mut out = String::new();
    for (at_capture, sections) in (0..).map(at).zip(collections) {
        let mut json = encoder.begin(at_capture, format);
        for (name, section) in sections {
            json.section(name, section.as_ref()).unwrap();
        }
        out += &mask(std::str::from_utf8(&json.finish()).unwrap(), masked);
        out.push('\n');
    }
    out
}

/// Replaces the value after each `"key":` that `masked` picks with `"<masked>"`. The value
/// ends where its object or number does (these values hold no nested objects).
fn mask(json: &str, masked: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(start) = rest.find('"') {
        let key_end = start + 1 + rest[start + 1..].find('"').unwrap();
        let key = &rest[start + 1..key_end];
        out.push_str(&rest[..=key_end]);
        rest = &rest[key_end + 1..];
        if !(rest.starts_with(':') && masked(key)) {
            continue;
        }
        let value_len = match rest[1..].starts_with('{') {
            true => rest.find('}').unwrap() + 1,
            false => rest.find([',', '}']).unwrap(),
        };
        out.push_str(":\"<masked>\"");
        rest = &rest[value_len..];
    }
    out.push_str(rest);
    out
}

/// What does not come from the fixture tree: the IPv4 addresses (an ioctl on this host's
/// network namespace) and the rates (bytes over the monotonic time between two captures).
fn masked(key: &str) -> bool {
    key == "addresses" || key.ends_with("_per_second")
}

fn golden(name: &str) -> PathBuf {
    Path::new(FIXTURES).join("golden").join(name)
}

/// Compares `actual` with the golden file, or writes the file under
/// `POCKETSES_BLESS_GOLDEN=1` (a deliberate change: review the diff).
fn check(name: &str, actual: &str) {
    let path = golden(name);
    if std::env::var_os("POCKETSES_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert!(
        expected == actual,
        "{name} differs from the golden file:\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

#[test]
fn seed_json_is_byte_for_byte_the_golden_one() {
    check("seed.jsonl", &json_lines(&collections(), Format::Seed));
}

#[test]
fn raw_json_is_byte_for_byte_the_golden_one() {
    let raw = json_lines(&collections(), Format::Raw);
    let (first, second) = raw.split_once('\n').unwrap();
    assert!(
        !first.contains("_per_second"),
        "no rates on the first snapshot: {first}"
    );
    assert!(second.contains("_per_second"), "{second}");
    check("raw.jsonl", &raw);
}

/// Every sample of the sections, after a `# family kind [unit] [(node name)]: help` line per
/// family, checking the rules the outputs rely on on the way.
fn samples_text(sections: &Sections, families: &mut Vec<&'static Family>) -> String {
    let mut samples = Vec::new();
    for (_, section) in sections {
        section.samples(&mut samples);
    }
    let mut out = String::new();
    let mut series = HashSet::new();
    let mut current: Option<&Family> = None;
    let mut seen: Vec<&Family> = Vec::new();
    for sample in &samples {
        let family = sample.family;
        let labels: Vec<String> = (sample.labels())
            .map(|(name, value)| format!("{name}={value:?}"))
            .collect();
        let labels = match labels.is_empty() {
            true => String::new(),
            false => format!("{{{}}}", labels.join(",")),
        };
        if !current.is_some_and(|c| std::ptr::eq(c, family)) {
            assert!(
                !seen.iter().any(|f| f.name == family.name),
                "the samples of {} are not next to each other",
                family.name
            );
            seen.push(family);
            check_family(family);
            if !families.iter().any(|f| std::ptr::eq(*f, family)) {
                families.push(family);
            }
            current = Some(family);
            let node = family
                .node_name
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let unit = match family.unit {
                Unit::None => String::new(),
                unit => format!(" {}", unit.as_str()),
            };
            let (name, kind, help) = (family.name, family.kind.as_str(), family.help);
            out += &format!("# {name} {kind}{unit}{node}: {help}\n");
        }
        assert!(
            series.insert(format!("{}{labels}", family.name)),
            "{}{labels} twice",
            family.name
        );
        assert!(sample.value.is_finite(), "{}{labels}", family.name);
        out += &format!("{}{labels} {}\n", family.name, sample.value);
    }
    out
}

/// Prometheus' naming rules (what `promtool check metrics` asks), so that an output can
/// use the names as they are.
fn check_family(family: &Family) {
    let snake = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let name = family.name;
    assert!(snake(name) && !name.starts_with("pocketses_"), "{name}");
    assert!(family.labels.iter().all(|l| snake(l)), "{name}");
    let stem = name.strip_suffix("_total");
    assert_eq!(stem.is_some(), family.kind == Kind::Counter, "{name}");
    let stem = stem.unwrap_or(name);
    match family.unit {
        Unit::None => assert!(
            ["seconds", "bytes", "ratio", "hertz", "percent"]
                .iter()
                .all(|u| !stem.ends_with(u)),
            "{name}"
        ),
        unit => assert!(stem.ends_with(&format!("_{}", unit.as_str())), "{name}"),
    }
    for reserved in ["_count", "_sum", "_bucket", "_info"] {
        assert!(!stem.ends_with(reserved), "{name}");
    }
    assert!(family.help.ends_with('.'), "{name}");
    assert!(
        family.node_name.is_none_or(|n| n.starts_with("node_")),
        "{name}"
    );
}

#[test]
fn samples_are_the_golden_ones_and_follow_the_naming_rules() {
    let mut families = Vec::new();
    let text: String = (collections().iter().enumerate())
        .map(|(i, sections)| format!("## snapshot {i}\n{}", samples_text(sections, &mut families)))
        .collect();
    for (i, family) in families.iter().enumerate() {
        assert!(
            !families[..i].iter().any(|f| f.name == family.name),
            "two families named {}",
            family.name
        );
    }
    check("samples.txt", &text);
}

#[test]
fn masking_hides_only_what_the_fixture_does_not_fix() {
    assert_eq!(
        mask(
            r#"{"a":1,"addresses":{"lo":["127.0.0.1"]},"addresses_v6":{"lo":["::1"]},"x_per_second":2.5}"#,
            masked
        ),
        r#"{"a":1,"addresses":"<masked>","addresses_v6":{"lo":["::1"]},"x_per_second":"<masked>"}"#
    );
}
