//! A real snapd (Debian's package) run API-only in a private network namespace, with the
//! pocketses configuration and a snap cookie seeded into its state (`shared/snapd.md` §4.2).
//! It owns `/run/snapd.socket` and `/run/snapd-snap.socket`, so only one may run at a time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fake::raw_exchange;
use crate::common::PATIENCE;

pub const SNAPD: &str = "/usr/lib/snapd/snapd";
pub const SNAPCTL: &str = "/usr/bin/snapctl";
pub const SNAPD_SOCKET: &str = "/run/snapd.socket";
pub const SNAP_SOCKET: &str = "/run/snapd-snap.socket";
const STATE: &str = "/var/lib/snapd/state.json";

/// Why a real snapd cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    // /proc/self belongs to the effective uid.
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if euid != 0 {
        return Some("needs root (snapd and its sockets under /run)".into());
    }
    [SNAPD, SNAPCTL, "/usr/bin/unshare"]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| format!("{p} is missing (apt-get install snapd)"))
}

/// A running snapd; SIGKILLed and reaped when dropped, even when a test fails.
pub struct RealSnapd {
    child: Child,
}

impl RealSnapd {
    /// Starts snapd with `config` stored for pocketses and `cookie` mapped to it.
    pub fn start_seeded(config: Value, cookie: &str) -> RealSnapd {
        if !Path::new(STATE).exists() {
            // The first start creates the state file.
            drop(RealSnapd::start());
        }
        let mut state: Value =
            serde_json::from_str(&std::fs::read_to_string(STATE).unwrap()).unwrap();
        let data = state["data"].as_object_mut().expect("state.json has data");
        data.entry("config")
            .or_insert_with(|| serde_json::json!({}))["pocketses"] = config;
        data.entry("snap-cookies")
            .or_insert_with(|| serde_json::json!({}))[cookie] = "pocketses".into();
        std::fs::write(STATE, state.to_string()).unwrap();
        RealSnapd::start()
    }

    fn start() -> RealSnapd {
        // unshare execs snapd, so the child is snapd itself; without a network its store
        // calls fail locally.
        let child = Command::new("unshare")
            .args(["-n", SNAPD])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start snapd");
        let snapd = RealSnapd { child };
        let deadline = Instant::now() + PATIENCE;
        while !answers() {
            assert!(
                Instant::now() < deadline,
                "snapd did not answer within {PATIENCE:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
        snapd
    }
}

fn answers() -> bool {
    raw_exchange(
        Path::new(SNAPD_SOCKET),
        "GET /v2/system-info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
}

impl Drop for RealSnapd {
    fn drop(&mut self) {
        // SIGTERM takes ~30 s (store retries); SIGKILL is safe and stale sockets are removed
        // by the next start.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `snapctl <args>` as a snap with `cookie` would run it; returns (success, stdout, stderr).
pub fn snapctl(cookie: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(SNAPCTL)
        .args(args)
        .env("SNAP_COOKIE", cookie)
        .output()
        .expect("run snapctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
