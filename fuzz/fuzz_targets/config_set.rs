//! Any value for any setting: `Config::set` never panics, a rejection names the key and the
//! value, and an accepted value reads back the same from `--check`'s output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pocketses::config::{Config, Origin, KEYS};

fuzz_target!(|data: &[u8]| {
    let Some((&index, value)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    let key = KEYS[usize::from(index) % KEYS.len()].0;
    let mut config = Config::default();
    match config.set(key, value, Origin::Flag) {
        Ok(()) => assert_eq!(pocketses_fuzz::reapply_described(&config), config),
        Err(e) => assert_eq!((e.key.as_str(), e.value.as_str()), (key, value)),
    }
});
