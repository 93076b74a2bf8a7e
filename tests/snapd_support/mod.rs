//! Helpers for `tests/snapd.rs`: the snapd stand-in and a real snapd. The agent and
//! process helpers are shared with the other tests in `tests/common`.

pub mod fake;
pub mod real;

/// The section names of a snapshot, in order, without the timestamp.
pub fn sections(snapshot: &serde_json::Value) -> Vec<String> {
    snapshot
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "timestamp").cloned().collect())
        .unwrap_or_default()
}
