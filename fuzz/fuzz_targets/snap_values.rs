//! Any JSON document as the snap configuration: applying it never panics, and whatever it
//! set reads back the same when written as a snap document again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pocketses::config::Config;
use pocketses::snapd::values;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(document)) = serde_json::from_slice(data) else {
        return;
    };
    let mut config = Config::default();
    let _ = values::apply(&mut config, &document);
    assert_eq!(pocketses_fuzz::reapply_as_snap(&config), config);
});
