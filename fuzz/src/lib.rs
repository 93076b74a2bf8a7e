//! What the fuzz targets share: a configuration read back the two ways a user can write it.

use pocketses::config::{Config, Origin};
use pocketses::snapd::values;
use serde_json::{Map, Value};

/// `config` as `--check` prints it: its `key=value` lines.
fn described(config: &Config) -> Vec<(String, String)> {
    let text = config.describe();
    let pairs = text.lines().map(|line| match line.split_once('=') {
        Some((key, value)) => (key.to_string(), value.to_string()),
        None => panic!("describe() printed a line without '=': {line:?}\nin:\n{text}"),
    });
    pairs.collect()
}

/// Each line `--check` prints for `config`, given again as a flag on top of the defaults.
pub fn reapply_described(config: &Config) -> Config {
    let mut again = Config::default();
    for (key, value) in described(config) {
        if let Err(e) = again.set(&key, &value, Origin::Flag) {
            panic!("describe() printed a value set() rejects: {e}");
        }
    }
    again
}

/// `config` written as `snap set` stores string values (dotted keys nested), applied on top
/// of the defaults.
pub fn reapply_as_snap(config: &Config) -> Config {
    let mut document = Map::new();
    for (key, value) in described(config) {
        let value = Value::from(value);
        match key.split_once('.') {
            Some((group, child)) => {
                let group = document.entry(group).or_insert_with(|| Map::new().into());
                group.as_object_mut().unwrap().insert(child.into(), value);
            }
            None => {
                document.insert(key, value);
            }
        }
    }
    let mut again = Config::default();
    let errors = values::apply(&mut again, &document);
    assert!(errors.is_empty(), "{errors:?}\nfor {document:?}");
    again
}
