//! The real binary's command line: one-shot output checked against this host's /proc,
//! streaming to stdout, signals, exit codes and error messages.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Output;

use nix::sys::signal::Signal;
use serde_json::Value;

use common::{pocketses, wait_for, Agent, Scratch, Subscriber};

fn run(args: &[&str]) -> Output {
    common::run(pocketses().args(args))
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn proc_meminfo_kb(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn once_prints_one_seed_snapshot_that_matches_this_host() {
    let v = stdout_json(&run(&["--once"]));
    assert_eq!(keys(&v), ["timestamp", "cpu", "memory", "network"]);
    let ts = v["timestamp"].as_str().unwrap();
    assert_eq!(
        (ts.len(), &ts[10..11], &ts[19..20], &ts[23..]),
        (24, "T", ".", "Z"),
        "{ts}"
    );

    let online = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(v["cpu"]["count"], online);
    let per_cpu = v["cpu"]["utilization"]["per_cpu"].as_array().unwrap();
    assert_eq!(per_cpu.len(), online);
    assert!(per_cpu
        .iter()
        .all(|p| (0.0..=100.0).contains(&p.as_f64().unwrap())));

    let total = pocketses::encode::humanize::bytes(proc_meminfo_kb("MemTotal:") * 1024);
    assert_eq!(v["memory"]["virtual"]["total"], total.as_str());
    assert!(v["memory"]["virtual"]["used"]
        .as_str()
        .unwrap()
        .ends_with('%'));
    assert_eq!(v["network"]["addresses"]["lo"][0], "127.0.0.1");
}

#[test]
fn once_in_raw_format_gives_exact_numbers() {
    let v = stdout_json(&run(&["--once", "--format", "raw", "--sources", "mem,cpu"]));
    assert_eq!(keys(&v), ["timestamp", "memory", "cpu"]);
    let total = v["memory"]["total_bytes"].as_u64().unwrap();
    assert_eq!(total, proc_meminfo_kb("MemTotal:") * 1024);
    for mode in [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ] {
        assert!(v["cpu"]["seconds_total"][mode].is_f64(), "{mode}");
        assert!(v["cpu"]["mode_percent"][mode].is_f64(), "{mode}");
    }
}

#[test]
fn streams_snapshots_to_stdout_until_sigterm() {
    let mut agent = Agent::start(&[
        "--sinks",
        "stdout",
        "--interval",
        "0.05",
        "--sources",
        "memory",
    ]);
    let lines = wait_for("six snapshots on stdout", || {
        let lines = agent.stdout.snapshot();
        (lines.len() >= 6).then_some(lines)
    });
    let stamps: Vec<String> = lines
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("each line is JSON");
            assert_eq!(keys(&v), ["timestamp", "memory"]);
            v["timestamp"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit().code(), Some(0));
}

#[test]
fn sigint_also_stops_cleanly() {
    let mut agent = Agent::start(&["--sinks", "stdout", "--interval", "0.05"]);
    wait_for("a snapshot", || (agent.stdout.len() > 0).then_some(()));
    agent.signal(Signal::SIGINT);
    assert_eq!(agent.wait_exit().code(), Some(0));
}

#[test]
fn bad_values_exit_2_and_name_key_value_and_what_is_allowed() {
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--port", "abc"], &["port", "\"abc\"", "0 to 65535"]),
        (
            &["--sources", "cpu,bogus"],
            &[
                "sources",
                "\"bogus\"",
                "valid sources: ",
                "cpu, ",
                "memory (mem)",
                "network (net)",
            ],
        ),
        (
            &["--sinks", "kafka"],
            &["sinks", "\"kafka\"", "valid sinks: "],
        ),
        (
            &["--interval", "0"],
            &["interval", "\"0\"", "0.01 to 86400"],
        ),
        (&["--format", "xml"], &["format", "\"xml\"", "seed, raw"]),
        (
            &["--file-max-size", "10X"],
            &["file.max-size", "\"10X\"", "K, M, G or T"],
        ),
    ];
    for (args, needles) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle:?} not in {stderr}"
            );
        }
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let out = run(&["--check", "--port", "abc", "--interval", "-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("port") && stderr.contains("interval"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn check_prints_the_effective_configuration() {
    let out = run(&[
        "--check",
        "--port",
        "9000",
        "--sources",
        "net",
        "--interval",
        "2.5",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "port=9000",
        "sources=network",
        "interval=2.5",
        "sinks=tcp",
        "format=seed",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} not in {stdout}");
    }
}

#[test]
fn list_describes_every_plugin_with_its_settings_and_defaults() {
    let out = run(&["--list"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "cpu ",
        "memory (mem)",
        "network (net)",
        "stdout ",
        "tcp (tcp-lines)",
    ] {
        assert!(stdout.contains(name), "{name} not in {stdout}");
    }
    // Each plugin's settings follow its line, as `key=default`.
    let after = |plugin: &str| -> Vec<String> {
        let lines: Vec<&str> = stdout.lines().collect();
        let at = (lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some(plugin)))
        .unwrap_or_else(|| panic!("{plugin} not in {stdout}"));
        (lines[at + 1..].iter())
            .take_while(|l| l.starts_with("    "))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        after("tcp"),
        ["port=8888", "bind=127.0.0.1", "max-clients=1024"]
    );
    assert_eq!(
        after("file"),
        [
            "file.path=pocketses.jsonl",
            "file.max-size=10M",
            "file.max-files=5"
        ]
    );
    assert!(after("stdout").is_empty(), "{stdout}");
}

#[test]
fn check_shows_every_default_as_the_spec_gives_it() {
    let out = run(&["--no-snap", "--check"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "sources=cpu,memory,network",
        "sinks=tcp",
        "interval=60",
        "format=seed",
        "host-root=/",
        "port=8888",
        "bind=127.0.0.1",
        "max-clients=1024",
        "file.path=pocketses.jsonl",
        "file.max-size=10485760",
        "file.max-files=5",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} not in {stdout}");
    }
}

// The test-only sink `test-settings` (sinks/testing_settings.rs) declares `test.greeting`
// and `test.count` in its own file and nowhere else: each of the next tests finds them in
// one of the places the framework builds from the declarations.

#[test]
fn a_plugins_settings_appear_in_help_with_default_and_description() {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let line = |flag: &str| {
        (help.lines())
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"))
            .to_string()
    };
    let greeting = line("--test-greeting <TEXT>");
    assert!(
        greeting.contains("What the test sink says [default: hello]"),
        "{greeting}"
    );
    let count = line("--test-count <N>");
    assert!(
        count.contains("How many times the test sink says it [default: 3]"),
        "{count}"
    );
}

#[test]
fn a_plugins_settings_appear_in_list_under_it() {
    let out = run(&["--list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let at = (lines
        .iter()
        .position(|l| l.trim_start().starts_with("test-settings ")))
    .unwrap_or_else(|| panic!("test-settings not in {stdout}"));
    assert!(
        lines[at + 1].contains("test.greeting=hello")
            && lines[at + 1].contains("What the test sink says"),
        "{stdout}"
    );
    assert!(lines[at + 2].contains("test.count=3"), "{stdout}");
}

#[test]
fn a_plugins_settings_are_checked_and_shown_by_check() {
    let out = run(&[
        "--no-snap",
        "--check",
        "--test-greeting",
        " hej då ",
        "--test-count",
        "9",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["test.greeting=hej då", "test.count=9"] {
        assert!(stdout.lines().any(|l| l == line), "{line} not in {stdout}");
    }
    let out = run(&[
        "--no-snap",
        "--check",
        "--test-count",
        "10",
        "--test-greeting",
        "a\nb",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "test.count: invalid value \"10\" (from the command line): a whole number from 1 to 9",
        "test.greeting: invalid value \"a\\nb\" (from the command line): text without control characters such as line breaks",
    ] {
        assert!(stderr.contains(expected), "{expected} not in {stderr}");
    }
    let out = run(&["--no-snap", "--check", "--test.count", "1"]);
    assert_eq!(out.status.code(), Some(2), "only the flag form is a flag");
}

#[test]
fn a_plugin_gets_its_settings_typed() {
    let agent = Agent::start(&[
        "--sinks",
        "test-settings",
        "--interval",
        "0.05",
        "--test-greeting",
        "hi",
        "--test-count",
        "2",
    ]);
    agent.wait_log("test-settings says \"hi hi\" at seq=");
}

#[test]
fn help_and_version_work_anywhere() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--sources",
        "--sinks",
        "--port",
        "--bind",
        "--interval",
        "--format",
        "--max-clients",
        "--file-path",
        "--file-max-size",
        "--file-max-files",
        "--once",
        "--list",
        "--check",
        "--snap",
        "--no-snap",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
    let version = run(&["-V"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        concat!("pocketses ", env!("CARGO_PKG_VERSION"))
    );
}

/// The agent's log after one subscriber got a snapshot and SIGTERM stopped the agent, with
/// `RUST_LOG` set to `rust_log` (unset for `None`).
fn log_around_one_subscriber(rust_log: Option<&str>) -> Vec<String> {
    let mut agent = Agent::start_with(&["--port", "0", "--interval", "0.1"], |command| {
        match rust_log {
            Some(directives) => command.env("RUST_LOG", directives),
            None => command.env_remove("RUST_LOG"),
        };
    });
    Subscriber::connect(agent.address()).snapshot();
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().success());
    // Everything logged before "stopping" has been read once that line has.
    agent.next_log("stopping");
    agent.stderr.snapshot()
}

#[test]
fn rust_log_debug_shows_subscribers_and_the_default_does_not() {
    let logged = |log: &[String], needle: &str| log.iter().any(|l| l.contains(needle));
    let debug = log_around_one_subscriber(Some("debug"));
    assert!(
        logged(&debug, "subscriber connected"),
        "RUST_LOG=debug showed no debug line: {debug:#?}"
    );
    let default = log_around_one_subscriber(None);
    assert!(
        logged(&default, "pocketses started") && !logged(&default, "subscriber connected"),
        "the default level is info: {default:#?}"
    );
}

#[test]
fn negative_and_infinite_numbers_get_the_settings_own_message() {
    for (flag, key, value) in [
        ("--interval", "interval", "-inf"),
        ("--interval", "interval", "-1"),
        ("--interval", "interval", "-0.5"),
        ("--port", "port", "-1"),
        ("--max-clients", "max-clients", "-1"),
        ("--file-max-size", "file.max-size", "-5K"),
        ("--file-max-files", "file.max-files", "-1"),
    ] {
        let out = run(&["--no-snap", "--check", flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        let expected = format!("{key}: invalid value \"{value}\" (from the command line): ");
        let allowed = stderr.split(&expected).nth(1).unwrap_or("").trim();
        assert!(
            !allowed.is_empty(),
            "{flag} {value}: want {expected:?} and what is allowed, got {stderr}"
        );
    }
}

#[test]
fn help_names_every_size_suffix_and_what_once_does_with_sinks() {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let line = |flag: &str| {
        help.lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from --help"))
            .to_string()
    };
    assert!(line("--file-max-size").contains("K/M/G/T"), "{help}");
    assert!(line("--once").contains("whatever the sinks"), "{help}");
}

#[test]
fn once_warns_that_it_ignores_sinks() {
    let warning = "--sinks tcp,file is ignored";
    let out = run(&["--no-snap", "--once", "--sinks", "tcp,file"]);
    stdout_json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(warning),
        "no warning about --sinks: {stderr}"
    );
    let out = run(&["--no-snap", "--once"]);
    stdout_json(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("--sinks"));
}

/// `--check` with `args`: (exit code, stderr).
fn check(args: &[&str], setup: impl FnOnce(&mut std::process::Command)) -> (i32, String) {
    let mut command = pocketses();
    command.args(["--check", "--no-snap"]).args(args);
    setup(&mut command);
    let out = common::run(&mut command);
    let code = out.status.code().expect("an exit code");
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_refuses_a_file_path_the_file_sink_could_not_use() {
    let dir = Scratch::new();
    let fifo = dir.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = dir.path("link");
    std::os::unix::fs::symlink(dir.path("target"), &link).unwrap();
    let plain = dir.path("plain");
    std::fs::write(&plain, "").unwrap();
    let read_only = dir.path("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let text = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cases = [
        (
            text(dir.dir()),
            format!("{} is a directory, not a regular file", text(dir.dir())),
        ),
        (
            text(&fifo),
            format!("{} is a FIFO, not a regular file", text(&fifo)),
        ),
        (
            text(&link),
            format!("{} is a symbolic link; refusing to follow it", text(&link)),
        ),
        (
            text(&plain.join("sub/x.jsonl")),
            format!(
                "{} is not a directory, so {} cannot be created",
                text(&plain),
                text(&plain.join("sub"))
            ),
        ),
        (
            text(&read_only.join("x.jsonl")),
            format!("directory {} is not writable", text(&read_only)),
        ),
    ];
    for (path, wanted) in cases {
        let (code, stderr) = check(
            &["--sinks", "tcp,file", "--port", "0", "--file-path", &path],
            |command| {
                // Root may write anywhere: the read-only directory is checked as nobody.
                if nix::unistd::geteuid().is_root() {
                    command.uid(65534).gid(65534);
                }
            },
        );
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(
            stderr.contains(&format!("file.path: {wanted}")),
            "{wanted:?} not in {stderr}"
        );
        // Only the sinks that are enabled are checked.
        let (code, stderr) = check(
            &["--sinks", "tcp", "--port", "0", "--file-path", &path],
            |_| {},
        );
        assert_eq!(code, 0, "{path}: {stderr}");
    }
    assert!(
        !dir.path("target").exists() && !plain.join("sub").exists(),
        "--check created something"
    );
}

#[test]
fn check_refuses_an_address_this_host_lacks_but_not_a_port_in_use() {
    // 192.0.2.0/24 is TEST-NET-1, documentation only: no host has it.
    let (code, stderr) = check(&["--bind", "192.0.2.1"], |_| {});
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bind: this host has no address 192.0.2.1"),
        "{stderr}"
    );
    // The configure hook runs --check while the daemon holds the port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let (code, stderr) = check(&["--bind", "127.0.0.1", "--port", &port], |_| {});
    assert_eq!(code, 0, "{stderr}");
    // The http sink's address is checked the same way (src/net.rs).
    let (code, stderr) = check(&["--sinks", "http", "--http-bind", "192.0.2.1"], |_| {});
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("http.bind: this host has no address 192.0.2.1"),
        "{stderr}"
    );
}

#[test]
fn an_empty_file_path_is_called_empty() {
    let (code, stderr) = check(&["--file-path", ""], |_| {});
    assert_eq!(code, 2);
    assert!(stderr.contains("file.path: invalid value \"\""), "{stderr}");
    assert!(stderr.contains("the path is empty"), "{stderr}");
    assert!(!stderr.contains("control characters"), "{stderr}");
}

#[test]
fn the_file_sink_says_that_it_creates_missing_directories() {
    let dir = Scratch::new();
    let file = dir.path("new/dirs/x.jsonl");
    let agent = Agent::start(&[
        "--sinks",
        "file",
        "--interval",
        "0.05",
        "--file-path",
        file.to_str().unwrap(),
    ]);
    let line = agent.wait_log("file sink appending to");
    assert!(
        line.contains(&format!(
            "{} (missing directories are created)",
            file.display()
        )),
        "{line}"
    );
    wait_for("the file", || file.exists().then_some(()));
}

#[test]
fn a_source_gets_its_settings_typed() {
    let out = run(&[
        "--no-snap",
        "--once",
        "--sources",
        "cpu,test-echo",
        "--test-echo-text",
        "hi there",
    ]);
    let snapshot = stdout_json(&out);
    assert_eq!(snapshot["test-echo"], "hi there", "{snapshot}");
    assert!(snapshot["cpu"]["count"].as_u64() > Some(0));
}
