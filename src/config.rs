//! The one configuration type, its defaults, and the single validation that start-up,
//! `--check` and reload share.
//!
//! Settings arrive as text from layers, later winning: built-in defaults < snap
//! configuration < command-line flags. Each value goes through [`Config::set`], which
//! parses it and, when it is wrong, says which key, which value and what is allowed.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::encode::Format;
use crate::plugin::{self, Plugin, SinkPlugin, SourcePlugin};
use crate::quote;

/// The smallest collection interval: 100 snapshots per second.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The largest collection interval (one day).
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// Where a value came from, so an error can point at the right place to fix it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Snap,
    Flag,
}

/// A rejected setting: names the key, the value and what is allowed. Shown bounded and on
/// one line (see [`quote`]): the key as it is when it is a plain name, else quoted like the
/// value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: invalid value {}{}: {allowed}", quote::name(key), quote::quoted(value), origin_text(*.origin))]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub allowed: String,
    pub origin: Option<Origin>,
}

/// How many rejected settings are shown one by one; the rest are counted.
pub const MAX_SHOWN_ERRORS: usize = 20;

/// One line per rejected setting, at most [`MAX_SHOWN_ERRORS`] of them and a count of the
/// rest: an answer from snapd of 1 MiB can hold 90,000 unknown keys, which made 17 MB of
/// messages.
pub fn error_lines(errors: &[ConfigError]) -> Vec<String> {
    let mut lines: Vec<String> = (errors.iter().take(MAX_SHOWN_ERRORS))
        .map(ToString::to_string)
        .collect();
    if let Some(more) = errors
        .len()
        .checked_sub(MAX_SHOWN_ERRORS)
        .filter(|&n| n > 0)
    {
        lines.push(format!("… and {more} more invalid settings"));
    }
    lines
}

fn origin_text(origin: Option<Origin>) -> &'static str {
    match origin {
        Some(Origin::Snap) => " (from snap configuration)",
        Some(Origin::Flag) => " (from the command line)",
        None => "",
    }
}

/// Every setting, resolved and valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Canonical source names, in the order their sections appear in a snapshot.
    pub sources: Vec<&'static str>,
    /// Canonical sink names.
    pub sinks: Vec<&'static str>,
    pub port: u16,
    pub bind: IpAddr,
    pub interval: Duration,
    pub format: Format,
    pub max_clients: usize,
    pub file_path: PathBuf,
    pub file_max_size: u64,
    pub file_max_files: u32,
    /// Where sources read `/proc` and `/sys` from.
    pub host_root: PathBuf,
}

/// Every settable key, with what it accepts (for errors and `--help`-style listings).
pub const KEYS: &[(&str, &str)] = &[
    ("sources", "comma-separated source names"),
    ("sinks", "comma-separated sink names"),
    ("port", "a TCP port from 0 to 65535 (0 picks a free port)"),
    (
        "bind",
        "an IPv4 or IPv6 address, e.g. 127.0.0.1, 0.0.0.0 or ::1",
    ),
    (
        "interval",
        "seconds between snapshots, a number from 0.01 to 86400",
    ),
    ("format", "one of: seed, raw"),
    ("max-clients", "a whole number from 1 to 1000000"),
    (
        "file.path",
        "a file path without control characters such as line breaks",
    ),
    (
        "file.max-size",
        "a size from 1K to 1T: bytes, or a number with a K, M, G or T suffix (1024-based)",
    ),
    ("file.max-files", "a whole number from 1 to 1000"),
    (
        "host-root",
        "an existing directory whose proc and sys are read, e.g. / or /host",
    ),
];

/// The keys that hold lists of names.
pub const LIST_KEYS: &[&str] = &["sources", "sinks"];

impl Default for Config {
    fn default() -> Self {
        let file_path = match std::env::var_os("SNAP_COMMON") {
            Some(common) => PathBuf::from(common).join("pocketses.jsonl"),
            None => PathBuf::from("pocketses.jsonl"),
        };
        Config {
            // Defaults from the SPEC; resolved through the registry so aliases and typos in
            // this table would show up in tests rather than at run time.
            sources: vec!["cpu", "memory", "network"],
            sinks: vec!["tcp"],
            port: 8888,
            bind: IpAddr::from([127, 0, 0, 1]),
            interval: Duration::from_secs(60),
            format: Format::Seed,
            max_clients: 1024,
            file_path,
            file_max_size: 10 << 20,
            file_max_files: 5,
            host_root: PathBuf::from("/"),
        }
    }
}

impl Config {
    /// Parses `value` for `key` and stores it, or says what is wrong.
    pub fn set(&mut self, key: &str, value: &str, origin: Origin) -> Result<(), ConfigError> {
        let allowed = |why: String| ConfigError {
            key: key.to_string(),
            value: value.to_string(),
            allowed: why,
            origin: Some(origin),
        };
        let describe = || describe(key).unwrap_or("").to_string();
        let v = value.trim();
        match key {
            "sources" => self.sources = names::<SourcePlugin>(v).map_err(allowed)?,
            "sinks" => self.sinks = names::<SinkPlugin>(v).map_err(allowed)?,
            "port" => self.port = v.parse().map_err(|_| allowed(describe()))?,
            "bind" => {
                let unbracketed = v.trim_start_matches('[').trim_end_matches(']');
                self.bind = unbracketed.parse().map_err(|_| allowed(describe()))?
            }
            "interval" => self.interval = parse_interval(v).ok_or_else(|| allowed(describe()))?,
            "format" => self.format = Format::parse(v).ok_or_else(|| allowed(describe()))?,
            "max-clients" => {
                self.max_clients =
                    parse_in_range(v, 1, 1_000_000).ok_or_else(|| allowed(describe()))? as usize
            }
            "file.path" if v.is_empty() => {
                return Err(allowed("the path is empty; give a file path".into()))
            }
            // A line break would split the path across `--check`'s `key=value` lines.
            "file.path" if v.contains(char::is_control) => return Err(allowed(describe())),
            "file.path" => self.file_path = PathBuf::from(v),
            "file.max-size" => {
                self.file_max_size = parse_size(v)
                    .filter(|n| (1 << 10..=1 << 40).contains(n))
                    .ok_or_else(|| allowed(describe()))?
            }
            "file.max-files" => {
                self.file_max_files =
                    parse_in_range(v, 1, 1000).ok_or_else(|| allowed(describe()))? as u32
            }
            "host-root" if v.contains(char::is_control) || !Path::new(v).is_dir() => {
                return Err(allowed(describe()))
            }
            "host-root" => self.host_root = PathBuf::from(v),
            _ => {
                return Err(ConfigError {
                    key: key.to_string(),
                    value: value.to_string(),
                    allowed: unknown_key(),
                    origin: Some(origin),
                })
            }
        }
        Ok(())
    }

    /// The settings as `key=value` lines, as `--check` shows them.
    pub fn describe(&self) -> String {
        format!(
            "sources={}\nsinks={}\nport={}\nbind={}\ninterval={}\nformat={}\nmax-clients={}\nfile.path={}\nfile.max-size={}\nfile.max-files={}\nhost-root={}\n",
            self.sources.join(","),
            self.sinks.join(","),
            self.port,
            self.bind,
            self.interval.as_secs_f64(),
            self.format,
            self.max_clients,
            self.file_path.display(),
            self.file_max_size,
            self.file_max_files,
            self.host_root.display(),
        )
    }
}

/// What is allowed in place of a key that is not a setting.
pub fn unknown_key() -> String {
    let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    format!("unknown setting; known settings: {}", known.join(", "))
}

/// What `key` accepts, if it is a known key.
pub fn describe(key: &str) -> Option<&'static str> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, d)| *d)
}

/// A comma-separated list of plugin names or aliases, resolved to canonical names.
fn names<P: Plugin>(list: &str) -> Result<Vec<&'static str>, String> {
    let mut out: Vec<&'static str> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let plugin = plugin::find::<P>(name).ok_or_else(|| {
            // The message shows the whole value already: name the bad part only when there
            // are others, so a huge value is not printed twice.
            let which = match name == list.trim() {
                true => String::new(),
                false => format!(" {}", quote::quoted(name)),
            };
            format!(
                "unknown {}{which}; valid {}s: {}",
                P::KIND,
                P::KIND,
                plugin::valid_names::<P>()
            )
        })?;
        if out.contains(&plugin.name()) {
            return Err(format!("{} {:?} is listed twice", P::KIND, plugin.name()));
        }
        out.push(plugin.name());
    }
    if out.is_empty() {
        return Err(format!(
            "at least one {} is needed; valid {}s: {}",
            P::KIND,
            P::KIND,
            plugin::valid_names::<P>()
        ));
    }
    Ok(out)
}

/// Seconds as a decimal number within [`MIN_INTERVAL`, `MAX_INTERVAL`].
pub fn parse_interval(s: &str) -> Option<Duration> {
    let secs: f64 = s.parse().ok()?;
    let range = MIN_INTERVAL.as_secs_f64()..=MAX_INTERVAL.as_secs_f64();
    range.contains(&secs).then(|| Duration::from_secs_f64(secs))
}

/// Bytes, or a number with a `K`, `M`, `G` or `T` suffix (1024-based, case-insensitive, an
/// optional trailing `B` or `iB`).
pub fn parse_size(s: &str) -> Option<u64> {
    let upper = s.to_ascii_uppercase();
    let t = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match t.as_bytes().last()? {
        b'K' => (&t[..t.len() - 1], 10),
        b'M' => (&t[..t.len() - 1], 20),
        b'G' => (&t[..t.len() - 1], 30),
        b'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1 << shift)
}

fn parse_in_range(s: &str, min: u64, max: u64) -> Option<u64> {
    s.parse().ok().filter(|n| (min..=max).contains(n))
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Snap => "snap configuration",
            Origin::Flag => "command line",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(key: &str, value: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.set(key, value, Origin::Flag).map(|()| config)
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::default();
        assert_eq!(c.sources, ["cpu", "memory", "network"]);
        assert_eq!(c.sinks, ["tcp"]);
        assert_eq!((c.port, c.bind.to_string()), (8888, "127.0.0.1".into()));
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!((c.format, c.max_clients), (Format::Seed, 1024));
        assert_eq!((c.file_max_size, c.file_max_files), (10 << 20, 5));
    }

    #[test]
    fn aliases_resolve_to_canonical_names_in_the_given_order() {
        assert_eq!(
            set("sources", "net, mem,cpu").unwrap().sources,
            ["network", "memory", "cpu"]
        );
    }

    #[test]
    fn unknown_names_are_rejected_with_the_valid_ones_listed() {
        let e = set("sources", "cpu,bogus").unwrap_err().to_string();
        assert!(e.contains("sources: invalid value \"cpu,bogus\""), "{e}");
        assert!(e.contains("unknown source \"bogus\""), "{e}");
        assert!(e.contains("cpu, memory (mem), network (net)"), "{e}");
        let e = set("sources", "mem,memory").unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        assert!(set("sinks", " , ")
            .unwrap_err()
            .to_string()
            .contains("at least one sink"));
    }

    #[test]
    fn numbers_are_checked_against_their_ranges() {
        assert_eq!(set("port", "9000").unwrap().port, 9000);
        for (key, bad) in [
            ("port", "abc"),
            ("port", "65536"),
            ("port", "-1"),
            ("interval", "0"),
            ("interval", "0.001"),
            ("interval", "nan"),
            ("interval", "inf"),
            ("interval", "100000"),
            ("max-clients", "0"),
            ("file.max-files", "1001"),
            ("file.max-size", "10X"),
            ("file.max-size", "100"),
            ("format", "xml"),
            ("bind", "localhost:80"),
        ] {
            let e = set(key, bad).unwrap_err();
            assert_eq!((e.key.as_str(), e.value.as_str()), (key, bad));
            assert_eq!(e.allowed, describe(key).unwrap(), "{key}={bad}");
        }
    }

    #[test]
    fn intervals_accept_fractions_down_to_ten_milliseconds() {
        assert_eq!(set("interval", "0.01").unwrap().interval, MIN_INTERVAL);
        assert_eq!(
            set("interval", "2.5").unwrap().interval,
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("2048"), Some(2048));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }

    #[test]
    fn bind_takes_ipv4_and_ipv6() {
        assert_eq!(set("bind", "::1").unwrap().bind.to_string(), "::1");
        assert_eq!(set("bind", "[::1]").unwrap().bind.to_string(), "::1");
        assert_eq!(set("bind", "0.0.0.0").unwrap().bind.to_string(), "0.0.0.0");
    }

    #[test]
    fn file_paths_that_are_empty_or_have_line_breaks_are_rejected() {
        // Found by fuzz/config_set (seed file-path-newline): `--check` printed the path over
        // two lines, the second looking like a setting of its own.
        for bad in ["1\niB", "log\nport=1", "a\rb", "tab\there"] {
            let e = set("file.path", bad).unwrap_err();
            assert_eq!(e.allowed, describe("file.path").unwrap(), "{bad:?}");
        }
        for empty in ["", "  "] {
            let e = set("file.path", empty).unwrap_err();
            assert!(e.allowed.contains("the path is empty"), "{e}");
        }
        let c = set("file.path", " /var/log/pocketses café.jsonl ").unwrap();
        assert_eq!(c.file_path, PathBuf::from("/var/log/pocketses café.jsonl"));
    }

    #[test]
    fn unknown_keys_list_the_known_ones() {
        let e = set("colour", "blue").unwrap_err().to_string();
        assert!(e.contains("known settings: sources, sinks, port"), "{e}");
    }

    #[test]
    fn messages_show_outside_text_bounded_on_one_line_and_once() {
        let error = |key: &str, value: &str| ConfigError {
            key: key.into(),
            value: value.into(),
            allowed: "why".into(),
            origin: Some(Origin::Snap),
        };
        assert_eq!(
            error("a\nb", "x\ny").to_string(),
            r#""a\nb": invalid value "x\ny" (from snap configuration): why"#
        );
        let long = "v".repeat(10_000);
        let e = error(&long, &long).to_string();
        assert!(e.len() < 500 && !e.contains('\n'), "{e}");
        // A lone unknown name is the value itself, so it is not repeated.
        let e = set("sinks", &long).unwrap_err().to_string();
        assert_eq!(e.matches("\"vvv").count(), 1, "{e}");
        assert!(e.contains("unknown sink; valid sinks:"), "{e}");
    }

    /// `--check`'s `key=value` lines given again as flags on top of the defaults.
    fn reapply(described: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for line in described.lines() {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            config.set(key, value, Origin::Flag)?;
        }
        Ok(config)
    }

    /// Text a user might give a setting: pieces of every valid form, and any characters.
    fn value_text() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(any::<char>(), 0..16).prop_map(String::from_iter),
            "[ ]?[+-]?[0-9]{0,6}([.][0-9]{0,3})?(e-?[0-9])?([kKmMgGtT]i?[bB]?)?[ ]?",
            "\\[?[0-9a-f:.]{1,20}\\]?",
            "((cpu|mem|net|tcp|file|stdout|seed|raw|x) ?,?){1,3}",
            "[a-z0-9/.= \t\r\n]{1,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Whatever the key and the text: no panic, a rejection names both, and an accepted
        /// value reads back the same from `--check`'s output.
        #[test]
        fn any_text_is_checked_and_accepted_values_read_back(
            key in prop_oneof![
                4 => proptest::sample::select(KEYS.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()),
                1 => "[a-z.-]{0,12}",
            ],
            value in value_text(),
        ) {
            match set(&key, &value) {
                Ok(config) => prop_assert_eq!(reapply(&config.describe()), Ok(config)),
                Err(e) => prop_assert_eq!((e.key, e.value), (key, value)),
            }
        }
    }
}
