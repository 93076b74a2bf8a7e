//! Fault injection against the real binary: subscribers that reset mid-write, storms of
//! SIGHUP, SIGTERM in the middle of rotation, the file's directory removed, kill -9 and a
//! restart after a torn line. Each test says what a user would see if it broke.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{ChildStdout, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::{
    agent_writing, file_args, heavy, position_of_run, rotated_lines, snapshot_lines, timestamp,
    tiny_window_connection, wait_for, Agent, Scratch, Subscriber,
};

/// A connection with a tiny receive window that never reads, so the agent's writes to it
/// block, and that resets (SO_LINGER 0) when dropped.
fn stalled_resetter(addr: SocketAddr) -> TcpStream {
    let stream = tiny_window_connection(addr);
    let reset = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &reset).unwrap();
    stream
}

/// Reads `n` snapshots and checks they are one unbroken run of the file's lines.
fn assert_unbroken(sub: &mut Subscriber, n: usize, file: &Path) {
    let seen: Vec<String> = (0..n).map(|_| sub.snapshot()).collect();
    let written = wait_for("the file to hold what the subscriber saw", || {
        let lines = snapshot_lines(file);
        lines.contains(seen.last().unwrap()).then_some(lines)
    });
    assert!(
        position_of_run(&written, &seen).is_some(),
        "the subscriber's {n} lines are not one unbroken run of the file's"
    );
}

#[test]
fn subscribers_resetting_mid_write_cost_the_others_nothing() {
    let _heavy = heavy();
    let dir = Scratch::new();
    let file = dir.path("p.jsonl");
    let mut agent = agent_writing(&file, "tcp,file", "0.01", &["--file-max-size", "1G"]);
    let addr = agent.address();
    let mut steady = Subscriber::connect(addr);
    steady.snapshot();
    for _ in 0..20 {
        let resetter = stalled_resetter(addr);
        // Long enough at 100 snapshots/s for the agent to be stuck writing to it.
        std::thread::sleep(Duration::from_millis(100));
        drop(resetter);
    }
    assert_unbroken(&mut steady, 100, &file);
    assert!(agent.is_running());
    let mut late = Subscriber::connect(addr);
    late.snapshot();
}

#[test]
fn a_storm_of_sighups_keeps_everyone_connected_and_every_line_whole() {
    let _heavy = heavy();
    let dir = Scratch::new();
    let file = dir.path("p.jsonl");
    let mut agent = agent_writing(&file, "tcp,file", "0.01", &["--file-max-size", "1G"]);
    let mut steady = Subscriber::connect(agent.address());
    steady.snapshot();
    for _ in 0..100 {
        agent.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(5));
    }
    agent.wait_log("reload: configuration unchanged");
    assert_unbroken(&mut steady, 100, &file);
    assert!(agent.is_running());
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit().code(), Some(0));
}

#[test]
fn sigterm_in_the_middle_of_rotation_leaves_whole_lines_and_a_clean_restart() {
    let _heavy = heavy();
    let dir = Scratch::new();
    let file = dir.path("p.jsonl");
    // About three lines a file: at 100 snapshots/s something is always rotating.
    let args = ["--file-max-size", "2K", "--file-max-files", "9"];
    for round in 0..5u64 {
        let mut agent = agent_writing(&file, "file", "0.01", &args);
        agent.wait_log("pocketses started");
        std::thread::sleep(Duration::from_millis(150 + 70 * round));
        agent.signal(Signal::SIGTERM);
        assert_eq!(agent.wait_exit().code(), Some(0), "round {round}");
        let stamps: Vec<String> = rotated_lines(&file, 9)
            .iter()
            .map(|l| timestamp(l))
            .collect();
        assert!(stamps.len() > 3, "round {round}: {stamps:?}");
        assert!(
            stamps.windows(2).all(|w| w[0] < w[1]),
            "round {round}: timestamps out of order or duplicated across the files: {stamps:?}"
        );
    }
}

#[test]
fn a_removed_directory_is_recreated_and_writing_goes_on() {
    let dir = Scratch::new();
    let file = dir.path("logs/p.jsonl");
    let agent = agent_writing(&file, "file", "0.05", &[]);
    wait_for("the first line", || {
        (!snapshot_lines(&file).is_empty()).then_some(())
    });
    std::fs::remove_dir_all(dir.path("logs")).unwrap();
    agent.wait_log("was removed or moved; recreating it");
    let lines = wait_for("lines in the recreated file", || {
        let lines = snapshot_lines(&file);
        (lines.len() >= 3).then_some(lines)
    });
    assert!(lines.iter().all(|l| !l.is_empty()));
}

#[test]
fn after_kill_9_and_a_torn_line_the_next_start_continues_cleanly() {
    let dir = Scratch::new();
    let file = dir.path("p.jsonl");
    let args = file_args(&file, "file", "0.02", &[]);
    let killed = Agent::start(&args);
    let before = wait_for("a few lines", || {
        let lines = snapshot_lines(&file);
        (lines.len() >= 5).then_some(lines)
    });
    killed.signal(Signal::SIGKILL);
    drop(killed);
    // kill -9 cannot split our single write; a crash or power loss can. Simulate that.
    let written = snapshot_lines(&file);
    assert!(written.len() >= before.len());
    let torn = r#"{"timestamp":"2026-11-26T12:00:00.000Z","cpu":{"cou"#;
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(torn);
    std::fs::write(&file, &text).unwrap();

    let _restarted = Agent::start(&args);
    let after = wait_for("lines after the torn one", || {
        let text = std::fs::read_to_string(&file).unwrap();
        let tail = text.split_once(torn)?.1.to_string();
        (tail.lines().count() >= 3 && tail.ends_with('\n')).then_some(tail)
    });
    let after: Vec<&str> = after.lines().collect();
    assert_eq!(
        after[0], "",
        "the torn line must be ended before the next line starts"
    );
    let last_before = timestamp(written.last().unwrap());
    for line in &after[1..] {
        assert!(
            timestamp(line) > last_before,
            "a restarted line is not newer: {line}"
        );
    }
}

#[test]
fn a_half_closed_subscriber_keeps_receiving() {
    let agent = Agent::start(&["--sinks", "tcp", "--port", "0", "--interval", "0.05"]);
    let mut sub = Subscriber::connect(agent.address());
    // Done talking, still listening: what `nc -N` or a script closing stdin does.
    sub.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let stamps: Vec<String> = (0..5).map(|_| timestamp(&sub.snapshot())).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

#[test]
fn a_subscriber_that_closes_entirely_is_let_go() {
    let mut agent = Agent::start(&[
        "--sinks",
        "tcp",
        "--port",
        "0",
        "--interval",
        "0.05",
        "--max-clients",
        "1",
    ]);
    let addr = agent.address();
    let mut first = Subscriber::connect(addr);
    first.snapshot();
    drop(first);
    // Its place is freed once a write to it fails, within a tick or two.
    let mut next = wait_for("the only place to be free again", || {
        let mut sub = Subscriber::connect(addr);
        let line = sub.line()?;
        (!line.contains("too many subscribers")).then_some(sub)
    });
    next.snapshot();
    assert!(agent.is_running());
}

/// What a victim file of the symlink tests holds, to be found unchanged.
const VICTIM: &[u8] = b"root:x:0:0:not to be appended to\n";

/// Puts a FIFO at `path`, replacing what is there at once (no moment without a file, in
/// which the agent could recreate it first).
fn swap_in_fifo(path: &Path) {
    let fresh = path.with_extension("fifo-being-made");
    nix::unistd::mkfifo(&fresh, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

/// Puts a symbolic link to `target` at `path`, replacing what is there at once.
fn swap_in_symlink(target: &Path, path: &Path) {
    let fresh = path.with_extension("link-being-made");
    std::os::unix::fs::symlink(target, &fresh).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

#[test]
fn a_fifo_or_a_symlink_at_the_file_path_is_refused_at_start() {
    let dir = Scratch::new();
    let victim = dir.path("victim");
    std::fs::write(&victim, VICTIM).unwrap();
    let fifo = dir.path("fifo.jsonl");
    swap_in_fifo(&fifo);
    let link = dir.path("link.jsonl");
    swap_in_symlink(&victim, &link);
    for (path, problem) in [
        (&fifo, "is a FIFO, not a regular file"),
        (&link, "is a symbolic link; refusing to follow it"),
    ] {
        let args = file_args(path, "tcp,file", "0.01", &[]);
        let out = common::run(common::pocketses().arg("--no-snap").args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let wanted = format!("{} {problem}", path.display());
        assert!(stderr.contains(&wanted), "{wanted:?} not in {stderr}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), VICTIM);
}

#[test]
fn a_fifo_swapped_in_for_the_file_costs_only_the_file_sink() {
    let _heavy = heavy();
    let dir = Scratch::new();
    let file = dir.path("p.jsonl");
    let mut agent = agent_writing(&file, "tcp,file", "0.01", &["--file-max-size", "1G"]);
    let mut sub = Subscriber::connect(agent.address());
    wait_for("the first line", || {
        (!snapshot_lines(&file).is_empty()).then_some(())
    });
    swap_in_fifo(&file);
    // Nobody reads the FIFO: written to, it would be full within 64 KiB of lines.
    let mut received = 0;
    while received < 128 << 10 {
        received += sub.snapshot().len();
    }
    agent.wait_log("is a FIFO, not a regular file");
    Subscriber::connect(agent.address()).snapshot();
    agent.stop_within_a_second();
}

#[test]
fn a_symlink_swapped_in_for_the_file_is_never_written_through() {
    let _heavy = heavy();
    let dir = Scratch::new();
    let file = dir.path("p.jsonl");
    let victim = dir.path("victim");
    std::fs::write(&victim, VICTIM).unwrap();
    // About five lines a file: the run below would rotate many times.
    let mut agent = agent_writing(&file, "tcp,file", "0.01", &["--file-max-size", "2K"]);
    let mut sub = Subscriber::connect(agent.address());
    wait_for("the first line", || {
        (!snapshot_lines(&file).is_empty()).then_some(())
    });
    swap_in_symlink(&victim, &file);
    for _ in 0..100 {
        sub.snapshot();
    }
    assert_eq!(std::fs::read(&victim).unwrap(), VICTIM, "written through");
    agent.wait_log("is a symbolic link; refusing to follow it");
    assert!(agent.is_running());

    std::fs::remove_file(&file).unwrap();
    wait_for("lines in a fresh regular file", || {
        let fresh = std::fs::symlink_metadata(&file).ok()?.is_file();
        (fresh && snapshot_lines(&file).len() >= 3).then_some(())
    });
    assert_eq!(std::fs::read(&victim).unwrap(), VICTIM);
}

/// The agent with `args`, and its stdout pipe, which the test reads (or not) itself.
fn agent_and_its_stdout(args: &[&str]) -> (Agent, ChildStdout) {
    let mut child = Agent::command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pocketses");
    let stdout = child.stdout.take().unwrap();
    (Agent::from_child(child), stdout)
}

#[test]
fn sigterm_stops_the_agent_while_nobody_reads_its_stdout() {
    let _heavy = heavy();
    let (mut agent, _unread) = agent_and_its_stdout(&[
        "--sinks",
        "tcp,stdout",
        "--port",
        "0",
        "--interval",
        "0.01",
        "--format",
        "raw",
    ]);
    // 200 raw snapshots of at least 1 KiB each overfill the 64 KiB pipe: its writer is stuck.
    let mut sub = Subscriber::connect(agent.address());
    for _ in 0..200 {
        sub.snapshot();
    }
    agent.stop_within_a_second();
}

#[test]
fn when_stdout_is_the_only_sink_and_its_reader_goes_the_agent_exits_0() {
    let (mut agent, stdout) = agent_and_its_stdout(&["--sinks", "stdout", "--interval", "0.01"]);
    // What `pocketses --sinks stdout | head -2` does.
    let mut reader = BufReader::new(stdout);
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        timestamp(&line);
    }
    drop(reader);
    let closed = Instant::now();
    assert_eq!(agent.wait_exit().code(), Some(0));
    println!(
        "exited {:?} after its reader closed stdout",
        closed.elapsed()
    );
    agent.wait_log("stdout was closed by its reader");
}

#[test]
fn a_closed_stdout_is_dropped_once_and_the_other_sinks_go_on() {
    let (mut agent, stdout) =
        agent_and_its_stdout(&["--sinks", "tcp,stdout", "--port", "0", "--interval", "0.01"]);
    let mut sub = Subscriber::connect(agent.address());
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    // The reader is gone now.
    agent.wait_log("stdout was closed by its reader");
    let stamps: Vec<String> = (0..50).map(|_| timestamp(&sub.snapshot())).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    assert!(agent.is_running());
    let about_stdout: Vec<String> = (agent.stderr.snapshot().into_iter())
        .filter(|l| l.contains("stdout") && !l.contains("pocketses started"))
        .collect();
    assert_eq!(about_stdout.len(), 1, "{about_stdout:#?}");
}

#[test]
fn a_section_that_panics_while_encoding_is_left_out_and_the_rest_published() {
    let agent = Agent::start(&[
        "--sinks",
        "stdout",
        "--sources",
        "cpu,test-view-panics,memory",
        "--interval",
        "0.01",
    ]);
    for _ in 0..50 {
        let snapshot = agent.snapshot_where("a snapshot", |_| true);
        let keys: Vec<&str> = snapshot
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["timestamp", "cpu", "memory"]);
    }
    // One warning (rate-limited) that names the source and where it panicked; the panic
    // hook's own message, once per tick, stays out of the log.
    let log = agent.stderr.snapshot();
    let warnings: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert_eq!(warnings.len(), 1, "{log:#?}");
    for part in [
        "test-view-panics",
        "encoding panicked",
        "sources/testing.rs",
    ] {
        assert!(
            warnings[0].contains(part),
            "{part:?} not in {}",
            warnings[0]
        );
    }
}

#[test]
fn a_dead_collector_stops_the_agent_with_exit_1() {
    let mut agent = Agent::start(&[
        "--sinks",
        "stdout",
        "--sources",
        "cpu,test-drop-panics",
        "--interval",
        "0.05",
    ]);
    assert_eq!(agent.wait_exit().code(), Some(1));
    let line = agent.wait_log("the collector task died");
    assert!(
        line.contains("test-drop-panics panics when dropped"),
        "{line}"
    );
}

/// A subscriber admitted (its first line a snapshot) at `addr`, trying again while the
/// agent refuses with "too many subscribers".
fn admitted(addr: SocketAddr) -> Subscriber {
    wait_for("a place for a real subscriber", || {
        let mut sub = Subscriber::connect(addr);
        let line = sub.line()?;
        (!line.contains("too many subscribers")).then(|| {
            timestamp(&line);
            sub
        })
    })
}

/// Connects and closes at once, as a port scanner or a health probe does.
fn probe(addr: SocketAddr) {
    drop(TcpStream::connect(addr).unwrap());
}

#[test]
fn a_connect_and_close_probe_frees_its_place_before_the_next_tick() {
    let agent = Agent::start(&[
        "--sinks",
        "tcp,stdout",
        "--port",
        "0",
        "--interval",
        "60",
        "--max-clients",
        "1",
    ]);
    let addr = agent.address();
    agent.snapshot_where("the first snapshot", |_| true);
    probe(addr);
    // Held until the next tick (60 s), the only place would refuse everyone until then.
    admitted(addr);
}

#[test]
fn after_a_storm_of_connect_and_close_a_subscriber_is_admitted_before_the_next_tick() {
    let agent = Agent::start(&["--sinks", "tcp,stdout", "--port", "0", "--interval", "60"]);
    let addr = agent.address();
    agent.snapshot_where("the first snapshot", |_| true);
    // More probes than the 1024 places, as fast as they come.
    for _ in 0..1200 {
        probe(addr);
    }
    admitted(addr);
}

/// The cheap version of `benches/crowd.rs` (issue 9, item 4: no snapshot and SIGTERM ignored
/// with 3,000 silent subscribers): one run with 500, bounded in descriptors and time.
#[test]
fn a_silent_crowd_delays_neither_snapshots_nor_sigterm() {
    let _heavy = heavy();
    let mut agent = Agent::start(&[
        "--port",
        "0",
        "--interval",
        "0.01",
        "--format",
        "raw",
        "--max-clients",
        "1000",
    ]);
    let addr = agent.address();
    let silent: Vec<TcpStream> = (0..500).map(|_| tiny_window_connection(addr)).collect();
    Subscriber::connect(addr).snapshot();
    // Their writes stalled, the whole crowd is dropped at the same moment.
    agent.wait_log("disconnected a subscriber that stopped reading");
    let mut reader = Subscriber::connect(addr);
    let stamps: Vec<String> = (0..5).map(|_| timestamp(&reader.snapshot())).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");

    let asked = std::time::Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit();
    let took = asked.elapsed();
    eprintln!("exited {took:?} after SIGTERM");
    assert!(status.success(), "{status}");
    // The promise is 1 s; the slack is for a loaded machine, a hang takes far longer.
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    drop(silent);
}

/// Milliseconds between the timestamps of consecutive snapshots.
fn gaps_ms(snapshots: &[serde_json::Value]) -> Vec<i64> {
    // `2026-11-30T10:00:00.123Z`: the time of day is enough for a run of seconds.
    let ms = |s: &serde_json::Value| {
        let time = s["timestamp"].as_str().unwrap()[11..23].to_string();
        let n = |range: std::ops::Range<usize>| time[range].parse::<i64>().unwrap();
        ((n(0..2) * 60 + n(3..5)) * 60 + n(6..8)) * 1000 + n(9..12)
    };
    (snapshots.windows(2))
        .map(|w| (ms(&w[1]) - ms(&w[0])).rem_euclid(86_400_000))
        .collect()
}

#[test]
fn a_fifo_under_host_root_costs_only_memory_and_sigterm_still_stops_the_agent() {
    let _heavy = heavy();
    let scratch = Scratch::new();
    let root = scratch.path("root");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/node_exporter");
    let copied = std::process::Command::new("cp")
        .arg("-R")
        .arg(fixture)
        .arg(&root)
        .status()
        .unwrap();
    assert!(copied.success());
    // Nobody ever writes to it: an agent that opened or read it would wait forever.
    std::fs::remove_file(root.join("proc/meminfo")).unwrap();
    nix::unistd::mkfifo(&root.join("proc/meminfo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut agent = Agent::start(&[
        "--sinks",
        "stdout",
        "--interval",
        "0.1",
        "--host-root",
        root.to_str().unwrap(),
    ]);
    let snapshots: Vec<_> = (0..20)
        .map(|_| agent.snapshot_where("a snapshot", |_| true))
        .collect();
    for s in &snapshots {
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["timestamp", "cpu", "network"], "{s}");
        assert_eq!(s["cpu"]["count"], 8, "from the tree: {s}");
    }
    // On the 100 ms grid: a tick may be skipped on a loaded machine, never delayed much.
    let gaps = gaps_ms(&snapshots);
    assert!(gaps.iter().all(|g| (50..=350).contains(g)), "{gaps:?}");
    let line = agent.wait_log("left out of the snapshot");
    assert!(
        line.contains("memory") && line.contains("not a regular file"),
        "{line}"
    );
    agent.stop_within_a_second();
}

#[test]
fn a_source_stuck_past_the_deadline_is_left_out_and_never_called_twice_at_once() {
    let _heavy = heavy();
    // test-slow: odd calls answer at once, even ones block for 500 ms; its section is the
    // number of calls made so far.
    let mut agent = Agent::start(&[
        "--sinks",
        "stdout",
        "--sources",
        "cpu,test-slow",
        "--interval",
        "0.1",
    ]);
    let snapshots: Vec<_> = (0..40)
        .map(|_| agent.snapshot_where("a snapshot", |_| true))
        .collect();
    assert!(snapshots.iter().all(|s| s.get("cpu").is_some()));
    let gaps = gaps_ms(&snapshots);
    assert!(gaps.iter().all(|g| (50..=350).contains(g)), "{gaps:?}");
    let published: Vec<(usize, u64)> = (snapshots.iter().enumerate())
        .filter_map(|(i, s)| Some((i, s.get("test-slow")?.as_u64()?)))
        .collect();
    assert!(published.len() >= 3, "{published:?}");
    for pair in published.windows(2) {
        let ((i, calls), (j, next)) = (pair[0], pair[1]);
        // One blocked call in between, never repeated while out, and missing from the
        // snapshots of the ticks it was out for (about five of them).
        assert_eq!(next, calls + 2, "{published:?}");
        assert!(j - i >= 3, "{published:?}");
    }
    let line = agent.wait_log("no answer by the tick's deadline");
    assert!(line.contains("test-slow"), "{line}");
    // Right after a call blocked: the blocking thread does not hold the exit back.
    agent.snapshot_where("test-slow's answer", |s| s.get("test-slow").is_some());
    agent.snapshot_where("the next snapshot", |_| true);
    agent.stop_within_a_second();
}
