//! Snap configuration: the agent binary against a snapd stand-in that speaks snapd's wire
//! protocol, the stand-in's contract checked against a real snapd, the configure hook run
//! for real, and SIGHUP re-reading the configuration.

mod common;
mod snapd_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use common::{pocketses, run, wait_for, Agent, Scratch, Subscriber};
use snapd_support::fake::{raw_exchange, FakeSnapd, Mode, Recorded};
use snapd_support::real::{self, snapctl, RealSnapd};
use snapd_support::sections;

const COOKIE: &str = "TESTCOOKIE";

/// Values stored the way `snap set pocketses sources=cpu,net port=8888 interval=0.2
/// file.max-size=1M` stores them.
fn seeded() -> Value {
    json!({"sources": "cpu,net", "port": 8888, "interval": 0.2, "file": {"max-size": "1M"}})
}

/// The agent pointed at the stand-in's sockets.
fn against(fake: &FakeSnapd) -> Command {
    let mut cmd = pocketses();
    cmd.env("POCKETSES_SNAP_SOCKET", &fake.snap_socket)
        .env("POCKETSES_SNAPD_SOCKET", &fake.snapd_socket);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `--check --snap` output: (exit code, stdout, stderr).
fn check(cmd: &mut Command) -> (i32, String, String) {
    let out = run(cmd.args(["--check", "--snap"]));
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn assert_shows_seeded(stdout: &str) {
    for line in [
        "sources=cpu,network\n",
        "port=8888\n",
        "interval=0.2\n",
        "file.max-size=1048576\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

fn only_request(fake: &FakeSnapd) -> Recorded {
    let mut requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    requests.remove(0)
}

#[test]
fn check_reads_the_snapctl_route_with_the_cookie() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), seeded(), COOKIE);
    let (code, stdout, stderr) = check(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_shows_seeded(&stdout);

    let r = only_request(&fake);
    assert_eq!(
        (r.socket, r.method.as_str(), r.target.as_str()),
        ("snapd-snap.socket", "POST", "/v2/snapctl")
    );
    assert_eq!(r.header("host"), Some("localhost"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&r.body).unwrap();
    // `get -d` and every top-level key the registry declares: the core keys, then each
    // plugin's (a dotted key comes back nested under its first part).
    let mut args = vec!["get", "-d"];
    args.extend(pocketses::snapd::values::top_level_keys());
    assert_eq!(body, json!({"context-id": COOKIE, "args": args}));
    for key in [
        "sources",
        "sinks",
        "interval",
        "format",
        "file",
        "port",
        "bind",
        "max-clients",
        "mqtt",
        "http",
    ] {
        assert!(args.contains(&key), "{key} not asked for: {args:?}");
    }
}

#[test]
fn check_falls_back_to_the_conf_endpoint_without_a_cookie() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({}), COOKIE);
    fake.set_config_of("pocketses_two", seeded());
    let (code, stdout, stderr) = check(against(&fake).env("SNAP_INSTANCE_NAME", "pocketses_two"));
    assert_eq!(code, 0, "{stderr}");
    assert_shows_seeded(&stdout);

    let r = only_request(&fake);
    // The instance name, and no `keys`: one unset key would fail a keyed request.
    assert_eq!(
        (r.socket, r.method.as_str(), r.target.as_str()),
        ("snapd.socket", "GET", "/v2/snaps/pocketses_two/conf")
    );
    assert_eq!((r.header("host"), r.body.as_str()), (Some("localhost"), ""));
}

#[test]
fn flags_win_over_snap_values_which_win_over_defaults() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), seeded(), COOKIE);
    let (code, stdout, stderr) = check(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .args(["--port", "9100"]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("port=9100\n") && stdout.contains("sources=cpu,network\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("format=seed\n") && stdout.contains("max-clients=1024\n"),
        "{stdout}"
    );

    // Nothing set ({}), and snapd's warning and maintenance fields: defaults, no complaint.
    fake.set_config(json!({}));
    fake.set_mode(Mode::Warnings);
    let (code, stdout, stderr) = check(against(&fake).env("SNAP_COOKIE", COOKIE));
    let defaults = text(&run(pocketses().args(["--check", "--no-snap"])).stdout);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(stdout, defaults);

    // Lists as JSON arrays, numbers as strings, dotted keys nested.
    fake.set_mode(Mode::Normal);
    fake.set_config(
        json!({"sources": ["memory", "cpu"], "port": "9001", "file": {"max-files": 7}}),
    );
    let (code, stdout, stderr) = check(against(&fake).env("SNAP_COOKIE", COOKIE));
    assert_eq!(code, 0, "{stderr}");
    for line in ["sources=memory,cpu\n", "port=9001\n", "file.max-files=7\n"] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

/// The test-only sink's settings, declared in sinks/testing_settings.rs only, read from
/// snap values as `snap set pocketses test.greeting=hej test.count=7` nests them.
#[test]
fn a_plugins_settings_are_read_from_the_snap_configuration() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(
        dir.dir(),
        json!({"test": {"greeting": "hej", "count": 7}}),
        COOKIE,
    );
    let (code, stdout, stderr) = check(against(&fake).env("SNAP_COOKIE", COOKIE));
    assert_eq!(code, 0, "{stderr}");
    for line in ["test.greeting=hej\n", "test.count=7\n"] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let (code, stdout, stderr) = check(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .args(["--test-count", "2"]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("test.count=2\n"), "{stdout}");
}

/// A reload hands the test-only sink its new settings, typed, in place.
#[test]
fn a_reload_gives_a_plugin_its_new_settings() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({"test": {"greeting": "hej"}}), COOKIE);
    let agent = Agent::spawn(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .env("RUST_LOG", "info")
            .args(["--sinks", "test-settings", "--interval", "0.05"]),
    );
    agent.next_log("test-settings says \"hej hej hej\"");
    reload_with(
        &agent,
        &fake,
        json!({"test": {"greeting": "moi", "count": 1}}),
    );
    agent.next_log("configuration reloaded");
    agent.next_log("test-settings says \"moi\"");
}

#[test]
fn a_reload_gives_a_source_its_new_settings_and_keeps_the_others_state() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({"test-echo": {"text": "one"}}), COOKIE);
    let agent = Agent::spawn(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .env("RUST_LOG", "info")
            .args([
                "--sinks",
                "stdout",
                "--sources",
                "network,test-echo",
                "--format",
                "raw",
                "--interval",
                "0.05",
            ]),
    );
    agent.snapshot_where("the first text", |s| s["test-echo"] == "one");
    reload_with(&agent, &fake, json!({"test-echo": {"text": "two"}}));
    agent.next_log("configuration reloaded");
    // The very next snapshot has the new text, and network its rates: it was not rebuilt.
    let after = agent.snapshot_where("the new text", |s| s["test-echo"] == "two");
    assert!(after["network"]["interfaces"]["lo"]["rx_bytes_per_second"].is_f64());
}

#[test]
fn invalid_snap_values_are_rejected_naming_key_and_value() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({}), COOKIE);
    for (config, expected) in [
        (
            json!({"port": "abc"}),
            r#"port: invalid value "abc" (from snap configuration): a TCP port from 0 to 65535"#,
        ),
        (
            json!({"sources": "cpu,bogus"}),
            r#"sources: invalid value "cpu,bogus" (from snap configuration): unknown source "bogus"; valid sources: "#,
        ),
        (
            json!({"interval": 0}),
            r#"interval: invalid value "0" (from snap configuration): seconds, a number from 0.01 to 86400"#,
        ),
        (
            json!({"port": true}),
            r#"port: invalid value "true" (from snap configuration): a TCP port from 0 to 65535"#,
        ),
        (
            json!({"file": {"max-size": {"a": 1}}}),
            r#"file.max-size: invalid value "{\"a\":1}""#,
        ),
        // The test-only sink's settings, declared in its own file only.
        (
            json!({"test": {"count": 0}}),
            r#"test.count: invalid value "0" (from snap configuration): a whole number from 1 to 9"#,
        ),
        (
            json!({"test": {"greeting": ["a"]}}),
            r#"test.greeting: invalid value "[\"a\"]" (from snap configuration): expected a string, a number or a boolean: text without control characters"#,
        ),
        (
            json!({"test": {"colour": "blue"}}),
            r#"test.colour: invalid value "blue" (from snap configuration): unknown setting; known settings: sources, sinks"#,
        ),
        (
            json!({"colour": "blue"}),
            r#"colour: invalid value "blue" (from snap configuration): unknown setting; known settings: sources, sinks"#,
        ),
    ] {
        fake.set_config(config.clone());
        // The REST route sees every key, unknown ones too.
        let (code, stdout, stderr) = check(against(&fake).env("SNAP_INSTANCE_NAME", "pocketses"));
        assert_eq!((code, stdout.as_str()), (2, ""), "{config}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{config}: expected {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn snapd_failures_fail_check_and_leave_the_agent_on_defaults_and_flags() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), seeded(), COOKIE);
    let missing = dir.path("nothing-here.socket");
    // (what, mode, an environment override, what the error says)
    type Case<'a> = (&'a str, Mode, &'a [(&'a str, &'a Path)], &'a str);
    let cases: [Case; 8] = [
        (
            "no socket",
            Mode::Normal,
            &[("POCKETSES_SNAP_SOCKET", &missing)],
            "cannot talk to snapd at",
        ),
        (
            "401",
            Mode::Denied,
            &[],
            "snapd answered HTTP 401: access denied (login-required)",
        ),
        (
            "unknown cookie",
            Mode::Normal,
            &[("SNAP_COOKIE", Path::new("WRONG"))],
            "from outside of a snap",
        ),
        (
            "mute",
            Mode::Slow(Duration::from_secs(6)),
            &[],
            "did not answer within 3 s",
        ),
        ("closed", Mode::Close, &[], "cannot talk to snapd at"),
        (
            "non-JSON 500",
            Mode::NonJson500,
            &[],
            "HTTP 500 without a snapd envelope",
        ),
        (
            "async",
            Mode::Async,
            &[],
            "an async answer (change 7) where a sync one was expected",
        ),
        (
            "wrong socket",
            Mode::Normal,
            &[("POCKETSES_SNAP_SOCKET", &fake.snapd_socket)],
            "snapd answered HTTP 403",
        ),
    ];
    for (what, mode, env, expected) in cases {
        fake.set_mode(mode);
        let agent = || {
            let mut cmd = against(&fake);
            cmd.env("SNAP_COOKIE", COOKIE)
                .env("SNAP_INSTANCE_NAME", "pocketses");
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd
        };
        let (code, stdout, stderr) = check(&mut agent());
        assert_eq!((code, stdout.as_str()), (2, ""), "{what}: {stderr}");
        assert!(
            stderr.contains("cannot read the snap configuration") && stderr.contains(expected),
            "{what}: {stderr}"
        );

        // Running anyway: one log line saying why and what is used instead, then a snapshot
        // from the flags.
        let out = run(agent().args(["--once", "--sources", "memory"]));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(
            stderr.contains(expected)
                && stderr.contains("using the built-in defaults and command-line flags"),
            "{what}: {stderr}"
        );
        let snapshot: Value = serde_json::from_str(stdout.trim()).expect("one snapshot");
        assert_eq!(sections(&snapshot), ["memory"], "{what}");
    }
}

#[test]
fn help_version_and_list_never_ask_snapd() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), seeded(), COOKIE);
    fake.set_mode(Mode::Close);
    for arg in ["--help", "--version", "--list"] {
        let out = run(against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .args([arg, "--snap"]));
        assert!(out.status.success(), "{arg}: {}", text(&out.stderr));
        assert!(!out.stdout.is_empty(), "{arg}");
    }
    assert_eq!(fake.requests().len(), 0, "{:#?}", fake.requests());
}

#[test]
fn sighup_rereads_the_snap_configuration_and_refuses_a_bad_one() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({"sources": "cpu"}), COOKIE);
    let agent = Agent::spawn(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .args(["--sinks", "stdout", "--interval", "0.1"]),
    );
    agent.snapshot_where("a cpu snapshot", |s| sections(s) == ["cpu"]);

    fake.set_config(json!({"sources": "memory,net"}));
    agent.signal(Signal::SIGHUP);
    agent.snapshot_where("a memory+network snapshot", |s| {
        sections(s) == ["memory", "network"]
    });

    // An invalid value, then snapd gone mute: each reload is refused and output goes on.
    for (change, why) in [
        (
            Box::new(|| fake.set_config(json!({"sources": "cpu", "port": "abc"}))) as Box<dyn Fn()>,
            r#"port: invalid value "abc""#,
        ),
        (
            Box::new(|| fake.set_mode(Mode::Close)),
            "cannot read the snap configuration",
        ),
    ] {
        change();
        agent.signal(Signal::SIGHUP);
        let line = agent.next_log("reload refused");
        assert!(line.contains(why), "{line}");
        for _ in 0..3 {
            let s = agent.snapshot_where("a snapshot", |_| true);
            assert_eq!(sections(&s), ["memory", "network"]);
        }
    }

    // snapd restarts: while its sockets are gone a reload is refused, and the first reload
    // once it is back applies what it now holds.
    for socket in [&fake.snapd_socket, &fake.snap_socket] {
        std::fs::remove_file(socket).unwrap();
    }
    agent.signal(Signal::SIGHUP);
    let line = agent.next_log("reload refused");
    assert!(line.contains("cannot talk to snapd"), "{line}");
    let _restarted = FakeSnapd::start(dir.dir(), json!({"sources": "cpu"}), COOKIE);
    agent.signal(Signal::SIGHUP);
    agent.snapshot_where("a cpu snapshot once snapd is back", |s| {
        sections(s) == ["cpu"]
    });
}

/// The snapd behaviour the stand-in imitates; run against both, so the stand-in cannot drift
/// from the real thing unnoticed. Needs `seeded()` stored for pocketses and `COOKIE` known.
fn conf_contract(snapd_socket: &Path, snap_socket: &Path) {
    let exchange = |socket: &Path, request: &str| -> (u16, Value, String) {
        let answer = raw_exchange(socket, request).unwrap();
        let status: u16 = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
        let envelope = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, envelope, answer)
    };
    let get = |target: &str| {
        exchange(
            snapd_socket,
            &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        )
    };
    let snapctl_get = |socket: &Path, cookie: &str, keys: &[&str]| {
        let mut args = vec!["get", "-d"];
        args.extend_from_slice(keys);
        let body = json!({"context-id": cookie, "args": args}).to_string();
        exchange(
            socket,
            &format!(
                "POST /v2/snapctl HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };

    let (status, _, answer) = exchange(
        snapd_socket,
        "GET /v2/snaps/pocketses/conf HTTP/1.1\r\n\r\n",
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("text/plain") && answer.ends_with("missing required Host header"),
        "{answer}"
    );

    let (status, v, answer) = get("/v2/snaps/pocketses/conf");
    assert_eq!(
        (status, &v["type"], &v["status"], &v["status-code"]),
        (200, &json!("sync"), &json!("OK"), &json!(200)),
        "{answer}"
    );
    assert_eq!(v["result"], seeded());
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    assert_eq!(get("/v2/snaps/not-installed/conf").1["result"], json!({}));

    let (_, v, _) =
        get("/v2/snaps/pocketses/conf?keys=port,%20interval,,file.max-size&keys=sources");
    assert_eq!(
        v["result"],
        json!({"port": 8888, "interval": 0.2, "file.max-size": "1M"})
    );
    let (status, v, _) = get("/v2/snaps/pocketses/conf?keys=port,nosuch");
    assert_eq!(
        (status, &v["type"], &v["result"]["kind"]),
        (400, &json!("error"), &json!("option-not-found"))
    );
    assert_eq!(
        v["result"]["message"],
        json!(r#"snap "pocketses" has no "nosuch" configuration option"#)
    );
    let (status, v, _) = get("/v2/snaps/pocketses/conf?keys=port.x");
    assert_eq!(
        (status, &v["result"]["message"]),
        (
            500,
            &json!(r#"snap "pocketses" option "port" is not a map"#)
        )
    );
    let (status, v, _) = get("/v2/snaps/pocketses/conf?keys=Port");
    assert_eq!(
        (status, &v["result"]["message"]),
        (500, &json!(r#"invalid option name: "Port""#))
    );
    let (status, v, _) = get("/v2/no-such-thing");
    assert_eq!(
        (status, &v["result"]["message"]),
        (404, &json!("not found"))
    );
    let (status, v, _) = exchange(
        snapd_socket,
        "DELETE /v2/snaps/pocketses/conf HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(
        (status, &v["result"]["message"]),
        (405, &json!(r#"method "DELETE" not allowed"#))
    );

    let (status, v, answer) = snapctl_get(snap_socket, COOKIE, &["port", "nosuch", "file"]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        v["result"]["stdout"],
        json!("{\n\t\"file\": {\n\t\t\"max-size\": \"1M\"\n\t},\n\t\"port\": 8888\n}\n")
    );
    let (status, v, _) = snapctl_get(snap_socket, "WRONG", &["port"]);
    assert_eq!(status, 400);
    let message = v["result"]["message"].as_str().unwrap();
    assert!(
        message.ends_with(
            r#"cannot invoke snapctl operation commands (here "get") from outside of a snap"#
        ),
        "{message}"
    );
    let (status, v, _) = snapctl_get(snapd_socket, COOKIE, &["port"]);
    assert_eq!((status, &v["type"]), (403, &json!("error")));
}

#[test]
fn the_stand_in_keeps_snapds_contract() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), seeded(), COOKIE);
    conf_contract(&fake.snapd_socket, &fake.snap_socket);
}

/// `snapctl set sources=<sources>` through the cookie, then SIGHUP; returns once
/// `next_snapshot` (stdout lines, or a TCP subscriber's lines: any sink works) yields a
/// snapshot with exactly `expected` sections.
fn switch_sources_with_snapctl_and_sighup(
    agent: &Agent,
    sources: &str,
    expected: &[&str],
    mut next_snapshot: impl FnMut() -> Value,
) {
    let (ok, _, stderr) = snapctl(COOKIE, &["set", &format!("sources={sources}")]);
    assert!(ok, "snapctl set: {stderr}");
    agent.signal(Signal::SIGHUP);
    // Bounded: next_snapshot waits at most PATIENCE per snapshot and 0.1 s ticks.
    for _ in 0..1000 {
        if sections(&next_snapshot()) == expected {
            return;
        }
    }
    panic!("no snapshot with sections {expected:?} after SIGHUP");
}

/// The configure hook with `SNAP/bin/pocketses` being the built binary; (success, stderr).
fn run_configure_hook(snap: &Path) -> (bool, String) {
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("snap/hooks/configure");
    let out = run(Command::new(hook)
        .env("SNAP", snap)
        .env("SNAP_COOKIE", COOKIE)
        .env("SNAP_INSTANCE_NAME", "pocketses")
        .env_remove("POCKETSES_SNAP_SOCKET")
        .env_remove("POCKETSES_SNAPD_SOCKET"));
    (out.status.success(), text(&out.stderr))
}

/// One function for everything that needs the real snapd: it owns /run/snapd*.socket.
#[test]
fn real_snapd_contract_configure_hook_and_reload() {
    if let Some(why) = real::unavailable() {
        common::skip(&format!("the real snapd test: {why}"));
        return;
    }
    let _snapd = RealSnapd::start_seeded(seeded(), COOKIE);
    conf_contract(Path::new(real::SNAPD_SOCKET), Path::new(real::SNAP_SOCKET));

    // Both routes read the seeded values from the default sockets.
    let (code, stdout, stderr) = check(pocketses().env("SNAP_COOKIE", COOKIE));
    assert_eq!(code, 0, "{stderr}");
    assert_shows_seeded(&stdout);
    let (code, stdout, stderr) = check(pocketses().env("SNAP_INSTANCE_NAME", "pocketses"));
    assert_eq!(code, 0, "{stderr}");
    assert_shows_seeded(&stdout);

    // The configure hook: bad values fail it naming key and value; good ones pass.
    let dir = Scratch::new();
    std::fs::create_dir(dir.path("bin")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pocketses"), dir.path("bin/pocketses")).unwrap();
    for (bad, good, expected) in [
        ("port=abc", "port=8888", r#"port: invalid value "abc""#),
        (
            "sources=cpu,bogus",
            "sources=cpu,net",
            r#"sources: invalid value "cpu,bogus""#,
        ),
        (
            "interval=0",
            "interval=0.2",
            r#"interval: invalid value "0""#,
        ),
    ] {
        let (ok, _, stderr) = snapctl(COOKIE, &["set", bad]);
        assert!(ok, "snapctl set {bad}: {stderr}");
        let (ok, stderr) = run_configure_hook(dir.dir());
        assert!(!ok, "the hook accepted {bad}");
        assert!(stderr.contains(expected), "{bad}: {stderr}");
        assert!(snapctl(COOKIE, &["set", good]).0);
    }
    let (ok, stderr) = run_configure_hook(dir.dir());
    assert!(ok, "the hook refused a valid configuration: {stderr}");

    // snapctl set + SIGHUP reaches a running agent.
    let agent = Agent::spawn(pocketses().env("SNAP_COOKIE", COOKIE).args([
        "--snap",
        "--sinks",
        "stdout",
        "--interval",
        "0.1",
    ]));
    agent.snapshot_where("a cpu+network snapshot", |s| {
        sections(s) == ["cpu", "network"]
    });
    switch_sources_with_snapctl_and_sighup(&agent, "memory", &["memory"], || {
        agent.snapshot_where("a snapshot", |_| true)
    });
}

/// `--check --snap` on the REST route (which sees every key) against the stand-in.
fn check_conf_route(fake: &FakeSnapd) -> (i32, String, String) {
    check(against(fake).env("SNAP_INSTANCE_NAME", "pocketses"))
}

#[test]
fn an_answer_that_never_ends_is_refused_with_bounded_memory() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({}), COOKIE);
    fake.set_mode(Mode::Endless);
    let (code, _, stderr) = check_conf_route(&fake);
    assert_eq!(code, 2, "{stderr}");
    // Refused for its size, not after the 3 s timeout (when it had grown to 1.4 GB).
    assert!(
        stderr.contains("snapd's answer is larger than 1 MiB; refusing it"),
        "{stderr}"
    );
    // What the agent took in is what it can have held: the 1 MiB cap, plus what hyper and
    // the socket buffer between had read ahead. (The child's peak RSS cannot show this: a
    // spawned child's ru_maxrss counts the test process it was forked from.)
    let sent = wait_for("the stand-in to see the agent hang up", || {
        fake.endless_bytes_sent()
    });
    assert!(
        sent < 8 << 20,
        "the agent took {sent} bytes of an endless answer"
    );
}

#[test]
fn a_huge_snap_value_gives_a_short_message_showing_it_once() {
    let dir = Scratch::new();
    // Within the 1 MiB answer: refused as a value, not as an answer.
    let huge = format!("cpu,{}", "x".repeat(900_000));
    let fake = FakeSnapd::start(dir.dir(), json!({ "sources": huge }), COOKIE);
    let (code, _, stderr) = check_conf_route(&fake);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.len() < 1000, "{} bytes: {stderr:.300}", stderr.len());
    let expected = format!(
        r#"sources: invalid value "cpu,{}…" (from snap configuration): unknown source "{}…"; valid sources: "#,
        "x".repeat(196),
        "x".repeat(200)
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // A single unknown name is the whole value: it is shown once.
    fake.set_config(json!({ "sources": "y".repeat(900_000) }));
    let (code, _, stderr) = check_conf_route(&fake);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.matches(r#""yyy"#).count(), 1, "{stderr}");
    assert!(
        stderr.contains("…\" (from snap configuration): unknown source; valid sources: "),
        "{stderr}"
    );
}

#[test]
fn keys_from_snapd_are_quoted_when_not_plain_and_stay_on_one_line() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(
        dir.dir(),
        json!({"port=1\npocketses: configuration is valid": 1, "file": {"Max Size": "1M"}}),
        COOKIE,
    );
    let (code, stdout, stderr) = check_conf_route(&fake);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "one line per bad key:\n{stderr}");
    for expected in [
        r#"pocketses: "port=1\npocketses: configuration is valid": invalid value "1" (from snap configuration): unknown setting"#,
        r#"pocketses: "file.Max Size": invalid value "1M" (from snap configuration): unknown setting"#,
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected}\nin:\n{stderr}"
        );
    }

    // A long key is cut like a value; plain keys keep their unquoted form.
    let long = "k".repeat(5000);
    fake.set_config(json!({ long.clone(): 1, "port": "abc" }));
    let (_, _, stderr) = check_conf_route(&fake);
    assert!(stderr.len() < 1000, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "pocketses: \"{}…\": invalid value \"1\"",
            &long[..200]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"pocketses: port: invalid value "abc""#),
        "{stderr}"
    );
}

#[test]
fn a_document_of_many_bad_keys_gives_a_bounded_message() {
    let dir = Scratch::new();
    let keys: serde_json::Map<String, Value> =
        (0..50_000).map(|i| (format!("k{i}"), json!(1))).collect();
    let fake = FakeSnapd::start(dir.dir(), Value::Object(keys), COOKIE);
    let (code, _, stderr) = check_conf_route(&fake);
    assert_eq!(code, 2, "{stderr:.500}");
    assert_eq!(stderr.lines().count(), 21, "{stderr:.500}");
    assert!(
        stderr.ends_with("pocketses: … and 49980 more invalid settings\n"),
        "{stderr:.500}"
    );
}

#[test]
fn a_reload_refused_for_a_port_in_use_is_retried_once_the_port_is_free() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({"port": 0}), COOKIE);
    let agent = Agent::spawn(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .args(["--sinks", "tcp", "--interval", "0.1"]),
    );
    let old = agent.address();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let new = taken.local_addr().unwrap();

    fake.set_config(json!({"port": new.port()}));
    agent.signal(Signal::SIGHUP);
    let line = agent.next_log("reload");
    assert!(line.contains("Address already in use"), "{line}");
    assert!(line.contains("keeps its old settings"), "{line}");
    Subscriber::connect(old).snapshot();

    // The obstacle is gone: the next reload must try again, not find nothing to do.
    drop(taken);
    agent.signal(Signal::SIGHUP);
    let line = agent.next_log("reload");
    assert!(line.contains("configuration reloaded"), "{line}");
    Subscriber::connect(new).snapshot();
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// `snap set pocketses bind=…` then the configure hook's reload.
fn reload_with(agent: &Agent, fake: &FakeSnapd, config: Value) {
    fake.set_config(config);
    agent.signal(Signal::SIGHUP);
}

#[test]
fn changing_only_bind_on_the_same_port_moves_the_listener() {
    use common::Subscriber;
    use std::net::{SocketAddr, TcpStream};

    let dir = Scratch::new();
    let port = free_port();
    let narrow = json!({"bind": "127.0.0.1", "port": port, "interval": 0.1});
    let wide = json!({"bind": "0.0.0.0", "port": port, "interval": 0.1});
    let fake = FakeSnapd::start(dir.dir(), narrow.clone(), COOKIE);
    let agent = Agent::spawn(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .env("RUST_LOG", "info"),
    );
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Another loopback address: only a wildcard listener answers on it.
    let other: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    agent.wait_log(&format!("listening on {local}"));
    Subscriber::connect(local).snapshot();
    assert!(
        TcpStream::connect(other).is_err(),
        "127.0.0.1 only, at first"
    );

    reload_with(&agent, &fake, wide.clone());
    agent.wait_log(&format!("listening on 0.0.0.0:{port};"));
    agent.next_log("configuration reloaded");
    let mut remote = Subscriber::connect(other);
    remote.snapshot();

    // Narrowing cuts the subscribers the new address would not admit.
    reload_with(&agent, &fake, narrow);
    agent.next_log("configuration reloaded");
    remote.drain_to_eof();
    assert!(TcpStream::connect(other).is_err(), "127.0.0.1 only, again");
    let mut kept = Subscriber::connect(local);
    kept.snapshot();

    // Someone else holds the port on another address: the move fails, and the old listener
    // and its subscribers keep running.
    let blocker = std::net::TcpListener::bind(other).unwrap();
    reload_with(&agent, &fake, wide);
    let line = agent.next_log(&format!("listening on 0.0.0.0:{port}: "));
    assert!(line.contains("keeps its old settings"), "{line}");
    kept.snapshot();
    Subscriber::connect(local).snapshot();
    drop(blocker);
}

#[test]
fn a_reload_to_another_host_root_reads_every_source_from_there() {
    let dir = Scratch::new();
    let fake = FakeSnapd::start(dir.dir(), json!({"sources": "memory,cpu"}), COOKIE);
    let agent = Agent::spawn(
        against(&fake)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .args(["--sinks", "stdout", "--interval", "0.1", "--format", "raw"]),
    );
    agent.snapshot_where("a snapshot of this host", |s| {
        sections(s) == ["memory", "cpu"]
    });
    // node_exporter's tree: MemTotal 3742148 kB, eight CPUs.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/node_exporter");
    fake.set_config(json!({"sources": "memory,cpu", "host-root": root}));
    agent.signal(Signal::SIGHUP);
    let s = agent.snapshot_where("a snapshot of the tree", |s| {
        s["memory"]["total_bytes"] == 3_742_148u64 * 1024
    });
    assert_eq!(s["cpu"]["count"], 8, "{s}");
}
