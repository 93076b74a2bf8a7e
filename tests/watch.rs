//! `pocketses watch`: the view drawn on ratatui's TestBackend from recorded and hand-made
//! snapshots of both formats, the subscription against a real socket, and the whole thing
//! in tmux against a running agent.

#![cfg(feature = "watch")]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{wait_for, Agent, PATIENCE};
use pocketses::watch::client::{self, Client, Event};
use pocketses::watch::model::Model;
use pocketses::watch::view;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::json;

const SEED: &str = include_str!("fixtures/golden/seed.jsonl");
const RAW: &str = include_str!("fixtures/golden/raw.jsonl");

/// The model after `lines`, connected.
fn model(lines: &[&str]) -> Model {
    let mut model = Model::new("127.0.0.1:8888");
    model.connected();
    for line in lines {
        model.line(line);
    }
    model
}

/// The text of the view at `width`×`height`, one string per row.
fn screen(model: &Model, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| view::draw(frame, model)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect())
        .collect()
}

#[track_caller]
fn assert_shows(rows: &[String], needles: &[&str]) {
    let text = rows.join("\n");
    for needle in needles {
        assert!(
            text.contains(needle),
            "no {needle:?} on the screen:\n{text}"
        );
    }
}

fn snapshot(sections: serde_json::Value) -> String {
    let mut object = json!({"timestamp": "2026-11-26T12:00:00.000Z"});
    object
        .as_object_mut()
        .unwrap()
        .extend(sections.as_object().unwrap().clone());
    object.to_string()
}

/// A `raw` network section with `n` interfaces moving bytes at known rates.
fn raw_network(n: usize) -> serde_json::Value {
    let interfaces: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            let name = format!("eth{i}");
            let counters = json!({
                "rx_bytes": (i as u64 + 1) << 20, "tx_bytes": 2048,
                "rx_bytes_per_second": 1280.0, "tx_bytes_per_second": 10_000.0,
            });
            (name, counters)
        })
        .collect();
    json!({"sent_bytes_total": 1u64 << 30, "recv_bytes_total": 3u64 << 30,
           "interfaces": interfaces, "addresses": {"eth0": ["192.0.2.7"]}})
}

fn raw_cpu(n: u64, busy: f64) -> serde_json::Value {
    let per_cpu: Vec<_> = (0..n)
        .map(|id| json!({"id": id, "utilization_percent": busy}))
        .collect();
    json!({"count": n, "utilization_percent": busy, "per_cpu": per_cpu,
           "frequency_current_mhz": null})
}

#[test]
fn seed_golden_at_80x24() {
    let lines: Vec<&str> = SEED.lines().collect();
    let rows = screen(&model(&lines), 80, 24);
    assert_shows(
        &rows,
        &[
            "connected",
            "2026-11-26T12:00:01.042Z",
            "CPU: 16 online, 854 MHz",
            "overall 0.0%",
            "history: 2 snapshots",
            " 15 ",
            "2.9% used of 14.9G, 14.5G available",
            "0.0% used of 0.0B, 0.0B available",
            "received 90.7G, sent 33.9G",
            "--format raw",
        ],
    );
    // The masked addresses are no object: no interface rows, and nothing else breaks.
    assert!(!rows.join("\n").contains("<masked>"));
}

#[test]
fn raw_golden_at_80x24() {
    let first = RAW.lines().next().unwrap();
    let rows = screen(&model(&[first]), 80, 24);
    assert_shows(
        &rows,
        &[
            "CPU: 16 online, 854 MHz",
            "overall 1.2%",
            "3.2",
            "67.3% used of 3.6G, 1.2G available",
            "24.8% used of 4.0G, 3.0G available",
            "received 90.7G, sent 33.9G",
            "receive/s",
            "eth0",
            "63.5G",
        ],
    );
    // First snapshot: no rates yet, shown as a dash, never as zero.
    let eth0 = rows.iter().find(|r| r.starts_with("eth0")).unwrap();
    assert!(eth0.contains('–'), "{eth0}");
}

#[test]
fn raw_rates_and_addresses() {
    let line = snapshot(json!({"cpu": raw_cpu(4, 50.0), "network": raw_network(2)}));
    let rows = screen(&model(&[&line]), 80, 24);
    assert_shows(
        &rows,
        &["1.2K/s", "9.8K/s", "1.0M", "2.0K", "192.0.2.7", "eth1"],
    );
    assert_shows(&rows, &["overall 50.0%", "CPU: 4 online "]);
}

#[test]
fn many_cpus_fit_80x24_as_one_column_each() {
    let line = snapshot(json!({"cpu": raw_cpu(128, 99.0), "network": raw_network(3)}));
    let small = screen(&model(&[&line]), 80, 24);
    assert_shows(&small, &["CPU: 128 online", "████", "eth2"]);
    // With room, each CPU gets its numbered bar.
    let large = screen(&model(&[&line]), 200, 60);
    assert_shows(&large, &["127 ", "99.0", "eth2"]);
}

#[test]
fn many_interfaces_are_cut_with_a_count() {
    let line = snapshot(json!({"cpu": raw_cpu(8, 5.0), "network": raw_network(40)}));
    let rows = screen(&model(&[&line]), 80, 24);
    assert_shows(&rows, &["eth0", "more interfaces"]);
    assert!(rows.iter().all(|r| !r.starts_with("eth9 ")));
}

#[test]
fn unknown_sections_show_as_key_values() {
    let line = snapshot(json!({
        "cpu": raw_cpu(2, 1.0),
        "load": {"load1": 0.5, "uptime_seconds": 12345, "tasks": {"running": 3}},
        "temperature": {"sensors": [{"name": "coretemp", "celsius": 48.5}]},
        "filesystem": {"/": {"used_bytes": 1073741824u64, "used_percent": 42.25}},
    }));
    let rows = screen(&model(&[&line]), 80, 24);
    assert_shows(
        &rows,
        &[
            " load ",
            "load1",
            "0.50",
            "uptime_seconds",
            "12345",
            "tasks.running",
            "3",
        ],
    );
    assert_shows(
        &rows,
        &[" temperature ", "sensors[0].celsius", "48.50", "coretemp"],
    );
    assert_shows(&rows, &[" filesystem ", "/.used_bytes", "1.0G", "42.2%"]);
}

#[test]
fn disconnected_keeps_the_last_snapshot_and_says_so() {
    let lines: Vec<&str> = SEED.lines().collect();
    let mut model = model(&lines);
    model.disconnected("Connection refused (os error 111)");
    let rows = screen(&model, 80, 24);
    assert_shows(
        &rows,
        &[
            "disconnected, retrying",
            "Connection refused",
            "CPU: 16 online",
        ],
    );

    let mut never = Model::new("[::1]:8888");
    never.disconnected("Connection refused (os error 111)");
    assert_shows(
        &screen(&never, 80, 24),
        &["disconnected, retrying", "[::1]:8888"],
    );
    assert_shows(
        &screen(&Model::new("[::1]:8888"), 80, 24),
        &["connecting to [::1]:8888"],
    );
}

#[test]
fn a_full_publisher_says_why() {
    let rows = screen(
        &model(&[r#"{"error":"too many subscribers","max_clients":1}"#]),
        80,
        24,
    );
    assert_shows(&rows, &["publisher: too many subscribers"]);
}

#[test]
fn wide_terminals_get_two_columns() {
    let line = RAW.lines().next().unwrap();
    let rows = screen(&model(&[line]), 160, 40);
    let title_row = rows.iter().find(|r| r.contains(" CPU: ")).unwrap();
    assert!(title_row.contains(" Network: "), "{title_row}");
    let narrow = screen(&model(&[line]), 80, 24);
    assert!(narrow
        .iter()
        .all(|r| !(r.contains(" CPU: ") && r.contains(" Network: "))));
}

#[test]
fn tiny_terminals_do_not_panic() {
    let lines: Vec<&str> = RAW.lines().collect();
    let model = model(&lines);
    for (w, h) in [(1, 1), (10, 3), (40, 10), (79, 23), (80, 24), (300, 100)] {
        screen(&model, w, h);
    }
}

#[test]
fn addresses_get_the_default_port() {
    assert_eq!(client::with_port("127.0.0.1"), "127.0.0.1:8888");
    assert_eq!(client::with_port("::1"), "[::1]:8888");
    assert_eq!(client::with_port("[::1]:9000"), "[::1]:9000");
    assert_eq!(client::with_port("localhost"), "localhost:8888");
    assert_eq!(client::with_port("example.com:1"), "example.com:1");
}

/// The subscription reads lines, never writes, reconnects after the publisher hangs up,
/// and ends when dropped.
#[test]
fn subscription_reads_only_and_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (events, news) = mpsc::channel();
    let client = Client::start(&listener.local_addr().unwrap().to_string(), events);
    let next = || {
        news.recv_timeout(PATIENCE)
            .expect("an event from the subscription")
    };

    let (mut publisher, _) = listener.accept().unwrap();
    assert!(matches!(next(), Event::Connected));
    publisher.write_all(b"{\"timestamp\":\"a\"}\r\n").unwrap();
    assert!(matches!(next(), Event::Line(l) if l == r#"{"timestamp":"a"}"#));
    publisher
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let read = publisher.read(&mut buf);
    assert!(read.is_err(), "the subscriber sent something: {read:?}");

    drop(publisher);
    assert!(matches!(next(), Event::Disconnected(_)));
    let (mut publisher, _) = listener.accept().unwrap();
    assert!(matches!(next(), Event::Connected));
    publisher.write_all(b"{\"timestamp\":\"b\"}\r\n").unwrap();
    assert!(matches!(next(), Event::Line(l) if l.contains("\"b\"")));

    drop(client);
    publisher.set_read_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(publisher.read(&mut buf).unwrap(), 0, "closed on drop");
}

/// `pocketses watch ADDR`, as a shell command for tmux.
fn watch_command(addr: &str) -> String {
    format!("{} watch {addr}", env!("CARGO_BIN_EXE_pocketses"))
}

/// A tmux server of our own, with one session running `command`; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let socket = format!("pocketses-watch-{}-{}", std::process::id(), rand_suffix());
        let tmux = Tmux { socket };
        // The shell stays after the view exits, so the screen shows how it ended.
        let shell = format!("{command}; echo \"watch exited $?\"; sleep 600");
        tmux.run(&["new-session", "-d", "-x", "100", "-y", "30", &shell]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap();
        assert!(output.status.success(), "tmux {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p"])
    }

    /// Waits until the screen shows `needle`, and returns that screen.
    fn wait_for(&self, needle: &str) -> String {
        let mut last = String::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(&format!("{needle:?} in tmux"), || {
                last = self.screen();
                last.contains(needle).then(|| last.clone())
            })
        }));
        found.unwrap_or_else(|_| panic!("no {needle:?} on the screen:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn tmux_missing() -> bool {
    let found = Command::new("tmux").arg("-V").output();
    if found.is_err() {
        common::skip("tmux is not installed (apt install tmux)");
    }
    found.is_err()
}

/// The snapshot time in the title row, which changes with every snapshot.
fn shown_time(screen: &str) -> Option<String> {
    let title = screen.lines().next()?;
    let word = title
        .split_whitespace()
        .find(|w| w.ends_with('Z') && w.contains('T'))?;
    Some(word.to_string())
}

#[test]
fn tmux_live_view_follows_the_agent_and_its_absence() {
    if tmux_missing() {
        return;
    }
    let agent = Agent::start(&["--port", "0", "--interval", "0.2", "--format", "raw"]);
    let addr = agent.address();
    let tmux = Tmux::start(&watch_command(&addr.to_string()));

    let screen = tmux.wait_for("receive/s");
    assert!(
        screen.contains(" CPU: ") && screen.contains("mem "),
        "{screen}"
    );
    let first = wait_for("a snapshot time", || shown_time(&tmux.screen()));
    wait_for("the next snapshot on screen", || {
        shown_time(&tmux.screen()).filter(|t| *t != first)
    });
    // Rates come from the second snapshot on.
    tmux.wait_for("B/s");

    drop(agent);
    tmux.wait_for("disconnected, retrying");

    let port = addr.port().to_string();
    let _again = Agent::start(&["--port", &port, "--interval", "0.2"]);
    wait_for("the view to reconnect", || {
        let screen = tmux.screen();
        (!screen.contains("disconnected") && screen.contains(" connected")).then_some(())
    });

    tmux.run(&["send-keys", "q"]);
    let end = tmux.wait_for("watch exited 0");
    assert!(
        !end.contains("q quits"),
        "the view is still on screen:\n{end}"
    );
}

#[test]
fn tmux_ctrl_c_quits_while_disconnected() {
    if tmux_missing() {
        return;
    }
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmux = Tmux::start(&watch_command(&format!("127.0.0.1:{port}")));
    tmux.wait_for("disconnected, retrying");
    tmux.run(&["send-keys", "C-c"]);
    let end = tmux.wait_for("watch exited 0");
    assert!(
        !end.contains("disconnected"),
        "the view is still on screen:\n{end}"
    );
}
