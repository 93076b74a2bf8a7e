//! How a setting is declared, parsed and handed to its plugin.
//!
//! A plugin declares its settings ([`Setting`]) in its own file, in its registration
//! record; the framework ([`crate::config`], [`crate::cli`], [`crate::snapd::values`]) builds
//! the flags, the validation, `--check` and `--list` from those declarations. Each value is
//! parsed once, by its [`Kind`], into a normalized JSON value; a plugin receives its own
//! values as its own typed struct through [`PluginConfig::settings`].
//!
//! This module knows neither the registry nor the configuration: plugins and the
//! framework both depend on it, never the other way.

use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::encode::Format;

/// One setting: its key (as in `snap set`; the flag is the key with `.` as `-`), what it
/// takes, its default and a line for `--help` and `--list`.
#[derive(Debug)]
pub struct Setting {
    /// `port`, `file.max-size`: a plugin's new keys start with its prefix (`http.port`).
    pub key: &'static str,
    pub kind: Kind,
    pub default: DefaultValue,
    /// One line for `--help` and `--list`, without the default (which is shown beside it).
    pub help: &'static str,
}

/// What a setting takes. Each kind has one parser, shared by every setting of that kind,
/// and says what it allows in the words an error shows.
#[derive(Debug)]
pub enum Kind {
    /// A TCP or UDP port, 0 to 65535.
    Port,
    /// An IPv4 or IPv6 address, optionally in brackets (`[::1]`).
    Address,
    /// A whole number in `min..=max`.
    Whole { min: u64, max: u64 },
    /// Bytes, or a number with a K, M, G or T suffix, in `min..=max` bytes.
    Size { min: u64, max: u64 },
    /// Seconds, fractions allowed, in `min..=max`.
    Seconds { min: f64, max: f64 },
    /// A non-empty file path without control characters.
    Path,
    /// A non-empty directory path without control characters.
    Directory,
    /// Any text without control characters.
    Text,
    /// Text without control characters that is never shown: `--check` prints `***`.
    Secret,
    /// One of these names.
    Choice(&'static [&'static str]),
    /// A comma-separated list of names (`what` is the singular, e.g. `source`), checked and
    /// normalized by `check`, whose error is the whole explanation. Snap values may give it
    /// as a JSON array of strings.
    Names {
        what: &'static str,
        check: fn(&str) -> Result<String, String>,
    },
}

/// A setting's default: a fixed text, or one computed at start (a path under
/// `$SNAP_COMMON`, the plugins enabled by default). Either is parsed like any value.
#[derive(Debug)]
pub enum DefaultValue {
    Text(&'static str),
    Computed(fn() -> String),
}

impl DefaultValue {
    pub fn text(&self) -> String {
        match self {
            DefaultValue::Text(text) => text.to_string(),
            DefaultValue::Computed(compute) => compute(),
        }
    }
}

/// Control characters would split `--check`'s `key=value` lines (fuzz/config_set seed
/// file-path-newline: a path with a line break read back as two settings).
const NO_CONTROL: &str = "without control characters such as line breaks";

impl Setting {
    /// The command-line flag, without dashes: `file.max-size` → `file-max-size`.
    pub fn flag(&self) -> String {
        self.key.replace('.', "-")
    }

    /// The name a struct field gets: the key after its plugin's prefix (`max-size`).
    pub fn field(&self) -> &'static str {
        self.key
            .split_once('.')
            .map_or(self.key, |(_, field)| field)
    }

    /// What the setting allows, as an error shows it.
    pub fn allowed(&self) -> String {
        match self.kind {
            Kind::Port => "a TCP port from 0 to 65535 (0 picks a free port)".into(),
            Kind::Address => "an IPv4 or IPv6 address, e.g. 127.0.0.1, 0.0.0.0 or ::1".into(),
            Kind::Whole { min, max } => format!("a whole number from {min} to {max}"),
            Kind::Size { min, max } => format!(
                "a size from {} to {}: bytes, or a number with a K, M, G or T suffix (1024-based)",
                size_text(min),
                size_text(max)
            ),
            Kind::Seconds { min, max } => format!("seconds, a number from {min} to {max}"),
            Kind::Path => format!("a file path {NO_CONTROL}"),
            Kind::Directory => format!("a directory path {NO_CONTROL}"),
            Kind::Text | Kind::Secret => format!("text {NO_CONTROL}"),
            Kind::Choice(names) => format!("one of: {}", names.join(", ")),
            Kind::Names { what, .. } => format!("comma-separated {what} names"),
        }
    }

    /// The placeholder `--help` shows for the value.
    pub fn value_name(&self) -> &'static str {
        match self.kind {
            Kind::Port => "PORT",
            Kind::Address => "ADDR",
            Kind::Whole { .. } => "N",
            Kind::Size { .. } => "SIZE",
            Kind::Seconds { .. } => "SECONDS",
            Kind::Path => "PATH",
            Kind::Directory => "DIR",
            Kind::Text => "TEXT",
            Kind::Secret => "SECRET",
            Kind::Choice(_) => "NAME",
            Kind::Names { .. } => "LIST",
        }
    }

    /// Whether a value may start with `-`: numbers may, so that `--port -1` gets the
    /// setting's own message rather than clap's.
    pub fn numeric(&self) -> bool {
        matches!(
            self.kind,
            Kind::Port | Kind::Whole { .. } | Kind::Size { .. } | Kind::Seconds { .. }
        )
    }

    pub fn is_list(&self) -> bool {
        matches!(self.kind, Kind::Names { .. })
    }

    /// `text` (already trimmed) parsed and normalized, or what is allowed.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let allowed = || self.allowed();
        match self.kind {
            Kind::Port => text.parse::<u16>().map(Value::from).map_err(|_| allowed()),
            Kind::Address => {
                let unbracketed = text.trim_start_matches('[').trim_end_matches(']');
                (unbracketed.parse::<IpAddr>())
                    .map(|ip| Value::from(ip.to_string()))
                    .map_err(|_| allowed())
            }
            Kind::Whole { min, max } => (text.parse::<u64>().ok())
                .filter(|n| (min..=max).contains(n))
                .map(Value::from)
                .ok_or_else(allowed),
            Kind::Size { min, max } => (parse_size(text))
                .filter(|n| (min..=max).contains(n))
                .map(Value::from)
                .ok_or_else(allowed),
            Kind::Seconds { min, max } => (text.parse::<f64>().ok())
                .filter(|secs| (min..=max).contains(secs))
                .map(Value::from)
                .ok_or_else(allowed),
            Kind::Path | Kind::Directory if text.is_empty() => Err(format!(
                "the path is empty; give a {}",
                match self.kind {
                    Kind::Directory => "directory",
                    _ => "file path",
                }
            )),
            Kind::Path | Kind::Directory | Kind::Text | Kind::Secret
                if text.contains(char::is_control) =>
            {
                Err(allowed())
            }
            Kind::Path | Kind::Directory | Kind::Text | Kind::Secret => Ok(Value::from(text)),
            Kind::Choice(names) => (names.iter())
                .find(|&&name| name == text)
                .map(|&name| Value::from(name))
                .ok_or_else(allowed),
            Kind::Names { check, .. } => check(text).map(Value::from),
        }
    }

    /// A value as `--check` prints it: a secret as `***` (empty when unset), anything else
    /// as [`Setting::show`].
    pub fn shown(&self, value: &Value) -> String {
        match self.kind {
            Kind::Secret if value.as_str().is_some_and(|s| !s.is_empty()) => "***".into(),
            _ => Setting::show(value),
        }
    }

    /// A parsed value as `--check` prints it; [`Setting::parse`] reads it back the same.
    pub fn show(value: &Value) -> String {
        match value {
            Value::String(text) => text.clone(),
            // A float that is whole prints without `.0`, like the text it came from.
            Value::Number(n) => match n.as_u64() {
                Some(whole) => whole.to_string(),
                None => n.as_f64().unwrap_or(f64::NAN).to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// `1K`, `1T`: the largest binary unit that divides `bytes`.
fn size_text(bytes: u64) -> String {
    let units = [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')];
    match units.iter().find(|&&(shift, _)| bytes % (1 << shift) == 0) {
        Some(&(shift, unit)) if bytes > 0 => format!("{}{unit}", bytes >> shift),
        _ => bytes.to_string(),
    }
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

/// What a plugin declares in its registration record: its settings, and how they become
/// its typed struct (checked against the declarations by a unit test of the registry).
pub struct Declared {
    pub keys: &'static [Setting],
    /// Builds the plugin's struct from validated values, to say whether it can.
    pub check: fn(&PluginConfig) -> Result<(), String>,
}

impl Declared {
    /// A plugin without settings.
    pub const NONE: Declared = Declared::typed::<NoSettings>(&[]);

    /// `keys`, read by the plugin as a `T` (field names: the keys without their prefix).
    pub const fn typed<T: DeserializeOwned>(keys: &'static [Setting]) -> Declared {
        Declared {
            keys,
            check: |config| config.settings::<T>().map(drop),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

/// What a plugin is given: its own validated settings, and the core values plugins need.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// The plugin's settings by field name (the key without its prefix).
    pub values: Map<String, Value>,
    pub interval: Duration,
    pub format: Format,
    /// The sources whose sections the snapshots carry, in order (canonical names).
    pub sources: Vec<&'static str>,
}

impl PluginConfig {
    /// The plugin's settings as its own struct. An error means that the struct and the
    /// declarations disagree: a bug the registry's unit test finds.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, String> {
        T::deserialize(&Value::Object(self.values.clone()))
            .map_err(|e| format!("the settings do not match their declarations: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(kind: Kind) -> Setting {
        Setting {
            key: "x.y",
            kind,
            default: DefaultValue::Text(""),
            help: "",
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("2048"), Some(2048));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("99999999999999G"), None);
        assert_eq!(size_text(1 << 10), "1K");
        assert_eq!(size_text(1 << 40), "1T");
        assert_eq!(size_text(1000), "1000");
    }

    #[test]
    fn each_kind_normalizes_what_it_accepts() {
        let parse = |kind, text| setting(kind).parse(text);
        assert_eq!(parse(Kind::Address, "[::1]"), Ok(Value::from("::1")));
        assert_eq!(parse(Kind::Port, "80"), Ok(Value::from(80)));
        let size = Kind::Size {
            min: 1 << 10,
            max: 1 << 40,
        };
        assert_eq!(parse(size, "1M"), Ok(Value::from(1 << 20)));
        let secs = parse(Kind::Seconds { min: 0.5, max: 9.0 }, "2.5").unwrap();
        assert_eq!(Setting::show(&secs), "2.5");
        let secs = parse(Kind::Seconds { min: 0.5, max: 9.0 }, "2").unwrap();
        assert_eq!(Setting::show(&secs), "2");
        assert!(parse(Kind::Text, "a\nb").is_err());
        assert_eq!(parse(Kind::Text, ""), Ok(Value::from("")));
        assert!(parse(Kind::Path, "")
            .unwrap_err()
            .contains("the path is empty"));
        assert!(parse(Kind::Choice(&["a", "b"]), "c").unwrap_err() == "one of: a, b");
        let secret = setting(Kind::Secret);
        assert_eq!(secret.shown(&secret.parse("hunter2").unwrap()), "***");
        assert_eq!(secret.shown(&secret.parse("").unwrap()), "");
    }

    #[test]
    fn each_kind_rejects_what_it_does_not_allow_in_its_own_words() {
        let size = || Kind::Size {
            min: 1 << 10,
            max: 1 << 40,
        };
        for (kind, bad) in [
            (Kind::Port, "abc"),
            (Kind::Port, "65536"),
            (Kind::Port, "-1"),
            (Kind::Address, "localhost:80"),
            (Kind::Whole { min: 1, max: 1000 }, "0"),
            (Kind::Whole { min: 1, max: 1000 }, "1001"),
            (size(), "10X"),
            (size(), "100"),
            (
                Kind::Seconds {
                    min: 0.01,
                    max: 9.0,
                },
                "nan",
            ),
            (
                Kind::Seconds {
                    min: 0.01,
                    max: 9.0,
                },
                "-inf",
            ),
            // Found by fuzz/config_set (seed file-path-newline): `--check` printed the path
            // over two lines, the second looking like a setting of its own.
            (Kind::Path, "1\niB"),
            (Kind::Path, "log\nkey=1"),
            (Kind::Path, "a\rb"),
            (Kind::Directory, "tab\there"),
        ] {
            let s = setting(kind);
            assert_eq!(s.parse(bad), Err(s.allowed()), "{bad:?}");
        }
        assert_eq!(
            setting(Kind::Path).parse("/var/log/pocketses café.jsonl"),
            Ok(Value::from("/var/log/pocketses café.jsonl"))
        );
        assert_eq!(
            setting(size()).allowed(),
            "a size from 1K to 1T: bytes, or a number with a K, M, G or T suffix (1024-based)"
        );
        assert_eq!(
            setting(Kind::Whole { min: 1, max: 1000 }).allowed(),
            "a whole number from 1 to 1000"
        );
    }

    #[test]
    fn flags_and_fields_come_from_the_key() {
        let s = setting(Kind::Text);
        assert_eq!((s.flag().as_str(), s.field()), ("x-y", "y"));
    }
}
