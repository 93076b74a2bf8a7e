//! Any value for any setting: `Config::set` never panics, a rejection names the key and the
//! value, and an accepted value reads back the same from `--check`'s output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pocketses::config::{Config, Origin};

// The input is `key=value`: a key by name, so that seeds keep their setting whatever
// settings the registry holds (an index into the list moved with every new plugin).
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((key, value)) = text.split_once('=') else {
        return;
    };
    let mut config = Config::default();
    match config.set(key, value, Origin::Flag) {
        Ok(()) => assert_eq!(pocketses_fuzz::reapply_described(&config), config),
        Err(e) => assert_eq!((e.key.as_str(), e.value.as_str()), (key, value)),
    }
});
