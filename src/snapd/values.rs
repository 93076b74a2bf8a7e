//! The snap configuration document turned into settings: every value goes through
//! [`Config::set`] with [`Origin::Snap`], so snap values get the one validation flags get.
//!
//! `snap set` stores what it can parse as JSON (`port=8888` is a number, `sources=cpu,net` a
//! string, `sources='["cpu"]'` an array) and nests dotted keys (`file.max-size=1M` comes
//! back as `{"file":{"max-size":"1M"}}`), so values are accepted in each of those shapes.

use serde_json::{Map, Value};

use crate::config::{self, Config, ConfigError, Origin};

/// The top-level snap keys that hold settings (`a` holds `a.b`, `a.c`), in the order
/// `snapctl get -d` is asked for them.
pub fn top_level_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = Vec::new();
    for key in config::settings().map(|s| s.key) {
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
    let group = config::settings().any(|s| s.key.starts_with(&format!("{key}.")));
    let setting = config::setting(&key);
    let text = match value {
        Value::Object(children) if group => {
            for (child, value) in children {
                apply_at(config, format!("{key}.{child}"), value, errors);
            }
            return;
        }
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        // `snap set pocketses mqtt.tls=true` stores a JSON boolean.
        Value::Bool(b) => Ok(b.to_string()),
        Value::Array(items) if setting.is_some_and(|s| s.is_list()) => items
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
    let allowed = match config::setting(key) {
        Some(setting) if setting.is_list() => format!(
            "expected a comma-separated string or a JSON array of strings: {}",
            setting.allowed()
        ),
        Some(setting) => format!(
            "expected a string, a number or a boolean: {}",
            setting.allowed()
        ),
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
    use crate::settings::{Kind, Setting};
    use proptest::prelude::*;
    use serde_json::json;

    // These tests name no plugin's setting: they take the settings from the registry.

    fn apply_json(document: Value) -> Result<Config, Vec<String>> {
        let mut config = Config::default();
        let errors = apply(&mut config, document.as_object().unwrap());
        match errors.is_empty() {
            true => Ok(config),
            false => Err(errors.iter().map(ToString::to_string).collect()),
        }
    }

    /// `value` stored under `key` the way `snap set` nests a dotted key.
    fn put(document: &mut Value, key: &str, value: Value) {
        match key.split_once('.') {
            Some((group, child)) => document[group][child] = value,
            None => document[key] = value,
        }
    }

    #[test]
    fn snapctl_is_asked_for_each_top_level_key_once() {
        let tops = top_level_keys();
        for setting in config::settings() {
            let top = setting.key.split('.').next().unwrap();
            assert_eq!(tops.iter().filter(|&&t| t == top).count(), 1, "{top}");
        }
        assert_eq!(&tops[..4], ["sources", "sinks", "interval", "format"]);
    }

    #[test]
    fn values_are_taken_in_every_shape_snap_set_stores() {
        let c =
            apply_json(json!({"sources": [SourcePlugin::all()[0].name], "interval": 2.5})).unwrap();
        assert_eq!(
            (c.sources, c.interval.as_millis()),
            (vec![SourcePlugin::all()[0].name], 2500)
        );
        assert_eq!(
            apply_json(json!({"interval": "2.5"}))
                .unwrap()
                .interval
                .as_millis(),
            2500
        );
        // Every default, as strings, numbers and nested groups, reads back as the defaults.
        let mut document = json!({});
        for setting in config::settings() {
            let text = setting.default.text();
            let value = serde_json::from_str::<serde_json::Number>(&text)
                .map_or_else(|_| json!(text), Value::from);
            put(&mut document, setting.key, value);
        }
        assert_eq!(apply_json(document).unwrap(), Config::default());
        assert_eq!(apply_json(json!({})).unwrap(), Config::default());
    }

    #[test]
    fn wrong_shapes_and_unknown_keys_name_key_value_and_what_is_allowed() {
        let errors = apply_json(json!({
            "interval": [true], "format": null, "sources": [1, 2], "sinks": {"a": 1},
            "intreval": 60, "host-root": {"x": 1}
        }))
        .unwrap_err();
        let all = errors.join("\n");
        for expected in [
            r#"interval: invalid value "[true]" (from snap configuration): expected a string, a number or a boolean: seconds"#,
            r#"format: invalid value "null""#,
            r#"sources: invalid value "[1,2]" (from snap configuration): expected a comma-separated string or a JSON array of strings"#,
            r#"sinks: invalid value "{\"a\":1}""#,
            r#"intreval: invalid value "60" (from snap configuration): unknown setting; known settings: sources, sinks"#,
            r#"host-root: invalid value "{\"x\":1}""#,
        ] {
            assert!(all.contains(expected), "missing {expected}\nin:\n{all}");
        }
        assert_eq!(errors.len(), 6, "{all}");
        // Under a group that holds settings, an unknown child is named with its group.
        let Some(group) = config::settings().find_map(|s| s.key.split_once('.')) else {
            return;
        };
        let e = apply_json(json!({ group.0: {"nosuch": "1"} })).unwrap_err();
        assert!(
            e[0].starts_with(&format!("{}.nosuch: invalid value \"1\"", group.0)),
            "{e:?}"
        );
    }

    /// A valid value of `setting`, as text a flag would give.
    fn valid_text(setting: &Setting) -> BoxedStrategy<String> {
        // Every registered plugin, so the test follows sinks and sources as they are added.
        fn list<P: Plugin>() -> BoxedStrategy<String> {
            Just(P::all().iter().map(|p| p.name()).collect::<Vec<_>>())
                .prop_shuffle()
                .prop_flat_map(|v| (1..=v.len()).prop_map(move |n| v[..n].join(",")))
                .boxed()
        }
        match setting.kind {
            Kind::Port => any::<u16>().prop_map(|p| p.to_string()).boxed(),
            Kind::Address => prop_oneof![Just("127.0.0.1"), Just("::1"), Just("0.0.0.0")]
                .prop_map(String::from)
                .boxed(),
            Kind::Whole { min, max } => (min..=max).prop_map(|n| n.to_string()).boxed(),
            Kind::Size { min, max } => (1u64..=1024, prop_oneof![Just(10), Just(20), Just(30)])
                .prop_filter_map("in range", move |(n, shift)| {
                    let unit = match shift {
                        10 => "K",
                        20 => "M",
                        _ => "G",
                    };
                    ((min..=max).contains(&(n << shift))).then(|| format!("{n}{unit}"))
                })
                .boxed(),
            Kind::Seconds { min, max } => ((min * 1000.0) as u64..=(max * 1000.0) as u64)
                .prop_map(|ms| (ms as f64 / 1000.0).to_string())
                .boxed(),
            Kind::Path | Kind::Directory => "/[a-z]{1,8}/[a-z.]{1,8}".boxed(),
            Kind::Text | Kind::Secret => "[a-z]([a-z ]{0,8}[a-z])?".boxed(),
            Kind::Choice(names) => proptest::sample::select(names)
                .prop_map(String::from)
                .boxed(),
            Kind::Names { what: "source", .. } => list::<SourcePlugin>(),
            Kind::Names { .. } => list::<SinkPlugin>(),
        }
    }

    /// One valid value per setting.
    fn valid_settings() -> impl Strategy<Value = Vec<(&'static str, String)>> {
        config::settings()
            .map(|s| valid_text(s).prop_map(move |text| (s.key, text)))
            .collect::<Vec<_>>()
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
            as_json in proptest::collection::vec(any::<bool>(), 32),
        ) {
            let mut expected = Config::default();
            for (key, value) in &settings {
                expected.set(key, value, Origin::Flag).unwrap();
            }
            let mut document = json!({});
            for ((key, value), as_json) in settings.into_iter().zip(as_json.into_iter().cycle()) {
                let is_list = config::setting(key).unwrap().is_list();
                let stored = match (value.parse::<f64>(), is_list) {
                    (_, true) if as_json => json!(value.split(',').collect::<Vec<_>>()),
                    (Ok(n), false) if as_json => serde_json::from_str(&value).unwrap_or(json!(n)),
                    _ => json!(value),
                };
                put(&mut document, key, stored);
            }
            prop_assert_eq!(apply_json(document), Ok(expected));
        }
    }
}
