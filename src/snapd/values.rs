//! The snap configuration document turned into settings: every value goes through
//! [`Config::set`] with [`Origin::Snap`], so snap values get the one validation flags get.
//!
//! `snap set` stores what it can parse as JSON (`port=8888` is a number, `sources=cpu,net` a
//! string, `sources='["cpu"]'` an array) and nests dotted keys (`file.max-size=1M` comes
//! back as `{"file":{"max-size":"1M"}}`), so values are accepted in each of those shapes.

use serde_json::{Map, Value};

use crate::config::{self, Config, ConfigError, Origin, KEYS, LIST_KEYS};

/// The top-level snap keys that hold settings (`file` holds `file.path`, ...), in the order
/// `snapctl get -d` is asked for them.
pub fn top_level_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = Vec::new();
    for (key, _) in KEYS {
        let top = key.split('.').next().unwrap_or(key);
        if !keys.contains(&top) {
            keys.push(top);
        }
    }
    keys
}

/// Applies every setting in `document` to `config`; returns every rejected one. A key that
/// is not a setting is rejected too: under a snap it is most likely a typo of one.
pub fn apply(config: &mut Config, document: &Map<String, Value>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (key, value) in document {
        apply_at(config, key.clone(), value, &mut errors);
    }
    errors
}

fn apply_at(config: &mut Config, key: String, value: &Value, errors: &mut Vec<ConfigError>) {
    let group = KEYS.iter().any(|(k, _)| k.starts_with(&format!("{key}.")));
    let text = match value {
        Value::Object(children) if group => {
            for (child, value) in children {
                apply_at(config, format!("{key}.{child}"), value, errors);
            }
            return;
        }
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(items) if LIST_KEYS.contains(&key.as_str()) => items
            .iter()
            .map(|item| item.as_str().ok_or(()))
            .collect::<Result<Vec<_>, _>>()
            .map(|names| names.join(",")),
        _ => Err(()),
    };
    let result = match text {
        Ok(text) => config.set(&key, &text, Origin::Snap),
        Err(()) => Err(wrong_shape(&key, value)),
    };
    errors.extend(result.err());
}

/// A value of a JSON type the key cannot take (bool, null, object, array of non-strings).
fn wrong_shape(key: &str, value: &Value) -> ConfigError {
    let expected = if LIST_KEYS.contains(&key) {
        "a comma-separated string or a JSON array of strings"
    } else {
        "a string or a number"
    };
    let allowed = match config::describe(key) {
        Some(what) => format!("expected {expected}: {what}"),
        None => config::unknown_key(),
    };
    ConfigError {
        key: key.to_string(),
        value: value.to_string(),
        allowed,
        origin: Some(Origin::Snap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{Plugin, SinkPlugin, SourcePlugin};
    use proptest::prelude::*;
    use serde_json::json;

    fn apply_json(document: Value) -> Result<Config, Vec<String>> {
        let mut config = Config::default();
        let errors = apply(&mut config, document.as_object().unwrap());
        match errors.is_empty() {
            true => Ok(config),
            false => Err(errors.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn snapctl_is_asked_for_each_top_level_key_once() {
        assert_eq!(
            top_level_keys(),
            [
                "sources",
                "sinks",
                "port",
                "bind",
                "interval",
                "format",
                "max-clients",
                "file",
                "host-root"
            ]
        );
    }

    #[test]
    fn values_are_taken_in_every_shape_snap_set_stores() {
        let c = apply_json(json!({
            "sources": "cpu,net", "sinks": ["stdout"], "port": 9001, "interval": "2.5",
            "max-clients": "10", "file": {"max-size": "1M", "max-files": 3}
        }))
        .unwrap();
        assert_eq!(
            (c.sources, c.sinks),
            (vec!["cpu", "network"], vec!["stdout"])
        );
        assert_eq!(
            (c.port, c.interval.as_millis(), c.max_clients),
            (9001, 2500, 10)
        );
        assert_eq!((c.file_max_size, c.file_max_files), (1 << 20, 3));
        assert_eq!(apply_json(json!({})).unwrap(), Config::default());
    }

    #[test]
    fn wrong_shapes_and_unknown_keys_name_key_value_and_what_is_allowed() {
        let errors = apply_json(json!({
            "port": {"a": 1}, "interval": true, "format": null, "sources": [1, 2],
            "prot": 8888, "file": {"maxsize": "1M"}, "bind": "nowhere"
        }))
        .unwrap_err();
        let all = errors.join("\n");
        for expected in [
            r#"port: invalid value "{\"a\":1}" (from snap configuration): expected a string or a number: a TCP port"#,
            r#"interval: invalid value "true""#,
            r#"format: invalid value "null""#,
            r#"sources: invalid value "[1,2]" (from snap configuration): expected a comma-separated string or a JSON array of strings"#,
            r#"prot: invalid value "8888" (from snap configuration): unknown setting; known settings: sources, sinks"#,
            r#"file.maxsize: invalid value "1M""#,
            r#"bind: invalid value "nowhere""#,
        ] {
            assert!(all.contains(expected), "missing {expected}\nin:\n{all}");
        }
        assert_eq!(errors.len(), 7, "{all}");
    }

    /// One valid value per key, as text a flag would give.
    fn valid_settings() -> impl Strategy<Value = Vec<(&'static str, String)>> {
        // Every registered plugin, so the test follows sinks and sources as they are added.
        fn list<P: Plugin>() -> impl Strategy<Value = String> {
            Just(P::all().iter().map(|p| p.name()).collect::<Vec<_>>())
                .prop_shuffle()
                .prop_flat_map(|v| (1..=v.len()).prop_map(move |n| v[..n].join(",")))
        }
        (
            list::<SourcePlugin>(),
            list::<SinkPlugin>(),
            any::<u16>(),
            prop_oneof![Just("127.0.0.1"), Just("::1"), Just("0.0.0.0")],
            (10u64..=86_400_000).prop_map(|ms| (ms as f64 / 1000.0).to_string()),
            prop_oneof![Just("seed"), Just("raw")],
            1u32..=1_000_000,
            "/[a-z]{1,8}/[a-z.]{1,8}",
            (1u64..=1024, prop_oneof![Just("K"), Just("M"), Just("G")]),
            1u32..=1000,
        )
            .prop_map(
                |(src, snk, port, bind, int, fmt, mc, path, (n, unit), files)| {
                    vec![
                        ("sources", src),
                        ("sinks", snk),
                        ("port", port.to_string()),
                        ("bind", bind.to_string()),
                        ("interval", int),
                        ("format", fmt.to_string()),
                        ("max-clients", mc.to_string()),
                        ("file.path", path),
                        ("file.max-size", format!("{n}{unit}")),
                        ("file.max-files", files.to_string()),
                    ]
                },
            )
    }

    proptest! {
        #[test]
        fn any_document_is_applied_without_panic(document in super::super::envelope::tests::json_value()) {
            if let Value::Object(map) = document {
                let _ = apply(&mut Config::default(), &map);
            }
        }

        /// A valid configuration written as `snap set` would store it (numbers as JSON
        /// numbers or strings, lists as strings or arrays, dotted keys nested) reads back
        /// as the same configuration.
        #[test]
        fn every_valid_configuration_round_trips(
            settings in valid_settings(),
            as_json in any::<[bool; 10]>(),
        ) {
            let mut expected = Config::default();
            for (key, value) in &settings {
                expected.set(key, value, Origin::Flag).unwrap();
            }
            let mut document = json!({});
            for ((key, value), as_json) in settings.into_iter().zip(as_json) {
                let stored = match (value.parse::<f64>(), LIST_KEYS.contains(&key)) {
                    (_, true) if as_json => json!(value.split(',').collect::<Vec<_>>()),
                    (Ok(n), false) if as_json => serde_json::from_str(&value).unwrap_or(json!(n)),
                    _ => json!(value),
                };
                match key.split_once('.') {
                    Some((group, child)) => document[group][child] = stored,
                    None => document[key] = stored,
                }
            }
            prop_assert_eq!(apply_json(document), Ok(expected));
        }
    }
}
