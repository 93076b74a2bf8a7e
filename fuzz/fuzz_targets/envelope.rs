//! Any status and body from snapd: decoding never panics, and any JSON value sent as a sync
//! result (or printed by snapctl) comes back whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pocketses::snapd::envelope::{decode, object, snapctl_stdout};
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    if let Ok(result) = decode(u16::from_le_bytes(*status), body) {
        let _ = object(result.clone(), "the result");
        let _ = snapctl_stdout(result);
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let envelope = json!({"type": "sync", "status-code": 200, "status": "OK", "result": value});
    let decoded = decode(200, envelope.to_string().as_bytes());
    assert_eq!(decoded.ok().as_ref(), Some(&value));
    if let Value::Object(map) = &value {
        let printed = json!({"stdout": value.to_string(), "stderr": ""});
        assert_eq!(snapctl_stdout(printed).ok().as_ref(), Some(map));
    }
});
