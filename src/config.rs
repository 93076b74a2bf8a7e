//! The one configuration type, its defaults, and the single validation that start-up,
//! `--check` and reload share.
//!
//! Settings arrive as text from layers, later winning: built-in defaults < snap
//! configuration < command-line flags. Each value goes through [`Config::set`], which
//! parses it by its declared kind and, when it is wrong, says which key, which value and
//! what is allowed. The settings are the core ones below and those each plugin declares in
//! its registration record ([`crate::settings`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::encode::Format;
use crate::plugin::{self, Plugin, SinkPlugin, SourcePlugin};
use crate::quote;
use crate::settings::{Declared, DefaultValue, Kind, PluginConfig, Setting};

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

/// Every setting, resolved and valid: the core ones typed, and every declared setting's
/// value (core and plugins') by key, from which each plugin gets its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Canonical source names, in the order their sections appear in a snapshot.
    pub sources: Vec<&'static str>,
    /// Canonical sink names.
    pub sinks: Vec<&'static str>,
    pub interval: Duration,
    pub format: Format,
    /// Where `/proc` and `/sys` are read from.
    pub host_root: PathBuf,
    values: BTreeMap<&'static str, Value>,
}

/// The framework's own settings; each plugin's are in its registration record.
const CORE: &[Setting] = &[
    Setting {
        key: "sources",
        kind: Kind::Names {
            what: "source",
            check: names::<SourcePlugin>,
        },
        default: DefaultValue::Computed(plugin::default_names::<SourcePlugin>),
        help: "Sources to collect, in snapshot order",
    },
    Setting {
        key: "sinks",
        kind: Kind::Names {
            what: "sink",
            check: names::<SinkPlugin>,
        },
        default: DefaultValue::Computed(plugin::default_names::<SinkPlugin>),
        help: "Sinks to publish to",
    },
    Setting {
        key: "interval",
        kind: Kind::Seconds {
            min: MIN_INTERVAL.as_secs_f64(),
            max: MAX_INTERVAL.as_secs_f64(),
        },
        default: DefaultValue::Text("60"),
        help: "Seconds between snapshots, fractions allowed, at least 0.01",
    },
    Setting {
        key: "format",
        kind: Kind::Choice(&["seed", "raw"]),
        default: DefaultValue::Text("seed"),
        help: "Message encoding: seed or raw",
    },
    Setting {
        key: "host-root",
        kind: Kind::Directory,
        default: DefaultValue::Text("/"),
        help: "Read /proc and /sys under DIR (for containers and tests); it does not change the network namespace used for interface addresses, nor the agent's own limits",
    },
];

/// Every setting: the core ones, then each source's and each sink's, by plugin name.
pub fn settings() -> impl Iterator<Item = &'static Setting> {
    fn of<P: Plugin>() -> impl Iterator<Item = &'static Setting> {
        P::all().into_iter().flat_map(|p| p.settings().keys)
    }
    CORE.iter()
        .chain(of::<SourcePlugin>())
        .chain(of::<SinkPlugin>())
}

/// The setting of `key`, if it is one.
pub fn setting(key: &str) -> Option<&'static Setting> {
    settings().find(|s| s.key == key)
}

impl Default for Config {
    fn default() -> Self {
        let mut config = Config {
            sources: Vec::new(),
            sinks: Vec::new(),
            interval: Duration::ZERO,
            format: Format::Seed,
            host_root: PathBuf::new(),
            values: BTreeMap::new(),
        };
        for setting in settings() {
            let text = setting.default.text();
            // A default that its own setting rejects is a bug of the declaration, which
            // the unit test `every_default_is_valid` finds.
            let value = (setting.parse(&text)).unwrap_or_else(|e| {
                panic!("the default {text:?} of {} is invalid: {e}", setting.key)
            });
            config.store(setting.key, value);
        }
        config
    }
}

impl Config {
    /// Parses `value` for `key` and stores it, or says what is wrong.
    pub fn set(&mut self, key: &str, value: &str, origin: Origin) -> Result<(), ConfigError> {
        let error = |allowed: String| ConfigError {
            key: key.to_string(),
            value: value.to_string(),
            allowed,
            origin: Some(origin),
        };
        let setting = setting(key).ok_or_else(|| error(unknown_key()))?;
        let parsed = setting.parse(value.trim()).map_err(error)?;
        self.store(setting.key, parsed);
        Ok(())
    }

    /// Stores a parsed value, and updates the typed field of a core setting.
    fn store(&mut self, key: &'static str, value: Value) {
        let text = value.as_str().unwrap_or_default();
        match key {
            "sources" => self.sources = resolve::<SourcePlugin>(text),
            "sinks" => self.sinks = resolve::<SinkPlugin>(text),
            "interval" => self.interval = Duration::from_secs_f64(value.as_f64().unwrap_or(0.0)),
            "format" => self.format = Format::parse(text).unwrap_or(Format::Seed),
            "host-root" => self.host_root = PathBuf::from(text),
            _ => {}
        }
        self.values.insert(key, value);
    }

    /// The settings as `key=value` lines, as `--check` shows them.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for setting in settings() {
            if let Some(value) = self.values.get(setting.key) {
                out.push_str(&format!("{}={}\n", setting.key, setting.shown(value)));
            }
        }
        out
    }

    /// What a plugin with these declared settings is given.
    pub fn plugin_config(&self, declared: &Declared) -> PluginConfig {
        let values = (declared.keys.iter())
            .filter_map(|s| Some((s.field().to_string(), self.values.get(s.key)?.clone())))
            .collect();
        PluginConfig {
            values,
            interval: self.interval,
            format: self.format,
            sources: self.sources.clone(),
        }
    }
}

/// What is allowed in place of a key that is not a setting.
pub fn unknown_key() -> String {
    let known: Vec<&str> = settings().map(|s| s.key).collect();
    format!("unknown setting; known settings: {}", known.join(", "))
}

/// Canonical names of a list [`names`] has checked.
fn resolve<P: Plugin>(list: &str) -> Vec<&'static str> {
    (list.split(','))
        .filter_map(|name| Some(plugin::find::<P>(name)?.name()))
        .collect()
}

/// A comma-separated list of plugin names or aliases, as canonical names.
fn names<P: Plugin>(list: &str) -> Result<String, String> {
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
    Ok(out.join(","))
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

    // These tests name no plugin: they take names and settings from the registry, so that
    // they hold for whatever plugins are compiled in.

    fn set(key: &str, value: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.set(key, value, Origin::Flag).map(|()| config)
    }

    #[test]
    fn every_default_is_valid_and_every_plugin_reads_its_settings() {
        let config = Config::default();
        assert_eq!(config.interval, Duration::from_secs(60));
        assert_eq!(
            (config.format, config.host_root.to_str()),
            (Format::Seed, Some("/"))
        );
        fn check<P: Plugin>(config: &Config) {
            for p in P::all() {
                let given = config.plugin_config(p.settings());
                assert_eq!((p.settings().check)(&given), Ok(()), "{}", p.name());
            }
        }
        check::<SourcePlugin>(&config);
        check::<SinkPlugin>(&config);
    }

    #[test]
    fn keys_and_flags_are_unique_and_leave_the_mode_flags_alone() {
        let mut flags: Vec<String> = ["once", "list", "check", "snap", "no-snap", "help"]
            .map(String::from)
            .into();
        for setting in settings() {
            let flag = setting.flag();
            assert!(!flags.contains(&flag), "--{flag} is declared twice");
            flags.push(flag);
            assert!(
                quote::name(setting.key) == setting.key,
                "{:?} is not a plain key",
                setting.key
            );
        }
    }

    #[test]
    fn default_lists_follow_each_plugins_place() {
        let config = Config::default();
        let on = |all: Vec<(Option<u8>, &'static str)>| {
            let mut on: Vec<_> = all.into_iter().filter(|(n, _)| n.is_some()).collect();
            on.sort();
            on.into_iter().map(|(_, name)| name).collect::<Vec<_>>()
        };
        let sources = SourcePlugin::all()
            .into_iter()
            .map(|p| (p.on_by_default, p.name));
        assert_eq!(config.sources, on(sources.collect()));
        let sinks = SinkPlugin::all()
            .into_iter()
            .map(|p| (p.on_by_default, p.name));
        assert_eq!(config.sinks, on(sinks.collect()));
        assert!(!config.sources.is_empty() && !config.sinks.is_empty());
    }

    #[test]
    fn aliases_resolve_to_canonical_names_in_the_given_order() {
        let all = SourcePlugin::all();
        let given: Vec<&str> = all
            .iter()
            .rev()
            .map(|p| *p.aliases.first().unwrap_or(&p.name))
            .collect();
        let expected: Vec<&str> = all.iter().rev().map(|p| p.name).collect();
        assert_eq!(set("sources", &given.join(", ")).unwrap().sources, expected);
    }

    #[test]
    fn unknown_names_are_rejected_with_the_valid_ones_listed() {
        let first = SourcePlugin::all()[0].name;
        let e = set("sources", &format!("{first},bogus"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("sources: invalid value \"{first},bogus\"")),
            "{e}"
        );
        assert!(e.contains("unknown source \"bogus\""), "{e}");
        assert!(e.contains(&plugin::valid_names::<SourcePlugin>()), "{e}");
        let e = set("sources", &format!("{first},{first}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
        assert!(set("sinks", " , ")
            .unwrap_err()
            .to_string()
            .contains("at least one sink"));
    }

    #[test]
    fn bad_values_name_the_key_the_value_and_what_the_kind_allows() {
        for (key, bad) in [
            ("interval", "0"),
            ("interval", "0.001"),
            ("interval", "nan"),
            ("interval", "inf"),
            ("interval", "100000"),
            ("format", "xml"),
            ("host-root", "a\nb"),
        ] {
            let e = set(key, bad).unwrap_err();
            assert_eq!((e.key.as_str(), e.value.as_str()), (key, bad));
            assert_eq!(e.allowed, setting(key).unwrap().allowed(), "{key}={bad}");
        }
        let e = set("host-root", " ").unwrap_err();
        assert!(e.allowed.contains("the path is empty"), "{e}");
    }

    #[test]
    fn the_format_choices_are_the_encoders_formats() {
        let Some(Kind::Choice(names)) = setting("format").map(|s| &s.kind) else {
            panic!("format is a choice");
        };
        assert!(names.iter().all(|name| Format::parse(name).is_some()));
        assert_eq!(names.join(", "), Format::NAMES);
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
    fn unknown_keys_list_the_known_ones() {
        let e = set("colour", "blue").unwrap_err().to_string();
        assert!(
            e.contains("known settings: sources, sinks, interval"),
            "{e}"
        );
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

    /// Every registered plugin name and alias, and the formats.
    fn words() -> Vec<&'static str> {
        fn of<P: Plugin>() -> impl Iterator<Item = &'static str> {
            P::all()
                .into_iter()
                .flat_map(|p| std::iter::once(p.name()).chain(p.aliases().iter().copied()))
        }
        of::<SourcePlugin>()
            .chain(of::<SinkPlugin>())
            .chain(["seed", "raw", "x"])
            .collect()
    }

    /// Text a user might give a setting: pieces of every valid form, and any characters.
    fn value_text() -> impl Strategy<Value = String> {
        let names = proptest::collection::vec((proptest::sample::select(words()), "[ ]?,?"), 1..4)
            .prop_map(|parts| {
                parts
                    .into_iter()
                    .map(|(w, sep)| format!("{w}{sep}"))
                    .collect()
            });
        prop_oneof![
            proptest::collection::vec(any::<char>(), 0..16).prop_map(String::from_iter),
            "[ ]?[+-]?[0-9]{0,6}([.][0-9]{0,3})?(e-?[0-9])?([kKmMgGtT]i?[bB]?)?[ ]?",
            "\\[?[0-9a-f:.]{1,20}\\]?",
            names,
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
                4 => proptest::sample::select(settings().map(|s| s.key.to_string()).collect::<Vec<_>>()),
                1 => "[a-z.-]{0,12}",
            ],
            value in value_text(),
        ) {
            let secret = setting(&key).is_some_and(|s| matches!(s.kind, Kind::Secret));
            match set(&key, &value) {
                // A secret reads back as `***`, which is the point.
                Ok(config) if secret => {
                    let shown = if value.trim().is_empty() { "" } else { "***" };
                    let line = format!("{key}={shown}");
                    prop_assert!(config.describe().lines().any(|l| l == line));
                }
                Ok(config) => prop_assert_eq!(reapply(&config.describe()), Ok(config)),
                Err(e) => prop_assert_eq!((e.key, e.value), (key, value)),
            }
        }
    }
}
