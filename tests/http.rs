//! The `http` sink against real clients: promtool, a Prometheus server, curl, and raw
//! sockets that misbehave.

mod common;
// Only the snapd stand-in of it, for settings changed on reload.
#[allow(dead_code)]
mod snapd_support;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{skip, tiny_window_connection, wait_for, Agent, Scratch, Subscriber, PATIENCE};

/// How long the sink waits for a request head (`HEADER_TIMEOUT` in sinks/http.rs).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// An agent with only the http sink on a free port, then `more`.
fn agent(interval: &str, more: &[&str]) -> (Agent, SocketAddr) {
    let mut args = vec![
        "--sinks",
        "http",
        "--http-port",
        "0",
        "--interval",
        interval,
    ];
    args.extend_from_slice(more);
    let agent = Agent::start(&args);
    let addr = http_address(&agent);
    (agent, addr)
}

/// The address the http sink reports serving on.
fn http_address(agent: &Agent) -> SocketAddr {
    let line = agent.wait_log("http sink serving http://");
    let after = line.split("http://").nth(1).unwrap();
    after.split('/').next().unwrap().parse().unwrap()
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    try_request(addr, method, path, extra).unwrap()
}

/// [`request`], or the error of a connection reset (refused beyond the limit) or closed.
fn try_request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> io::Result<Reply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(parse_reply(&raw))
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, "")
}

/// `/metrics` once a snapshot exists.
fn metrics(addr: SocketAddr) -> String {
    wait_for("a snapshot on /metrics", || {
        let reply = try_request(addr, "GET", "/metrics", "").ok()?;
        (reply.status == 200).then(|| reply.text())
    })
}

/// A program of Debian's `prometheus` (or `chromium`) package, or a skip.
fn tool(name: &str) -> Option<&str> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(&format!(
            "{name} is not installed (Debian package prometheus)"
        ));
    }
    found.then_some(name)
}

/// promtool's findings on `text` (its stdout and stderr lines), and whether it passed.
fn promtool(text: &str) -> (bool, Vec<String>) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = [out.stdout, out.stderr]
        .iter()
        .flat_map(|o| {
            String::from_utf8_lossy(o)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    (out.status.success(), findings)
}

/// The families of a /metrics text (from `# TYPE`), and its series keys (name and labels),
/// checking the exposition rules promtool does not: HELP and TYPE once per family, right
/// before its samples, each series once, no sample timestamps.
fn families_and_series(text: &str) -> (Vec<String>, Vec<String>) {
    let mut families = Vec::new();
    let mut series = Vec::new();
    let mut helped = HashSet::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap();
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            let name = kind.split(' ').next().unwrap().to_string();
            assert!(helped.contains(&name), "TYPE without HELP: {line}");
            assert!(!families.contains(&name), "TYPE twice: {line}");
            families.push(name);
        } else {
            let (key, value) = line.rsplit_once(' ').unwrap();
            assert!(
                !key.ends_with('}') || key.contains('{'),
                "malformed series {line:?}"
            );
            // A timestamp would leave a space after the labels, or after the bare name.
            let after_labels = key.rsplit_once('}').map_or(key, |(_, rest)| rest);
            assert!(!after_labels.contains(' '), "a sample timestamp: {line:?}");
            assert!(value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN");
            let name = key.split('{').next().unwrap();
            assert_eq!(
                Some(&name.to_string()),
                families.last(),
                "{name} outside its family"
            );
            series.push(key.to_string());
        }
    }
    (families, series)
}

#[test]
fn metrics_pass_promtool_in_both_name_modes_without_duplicate_series() {
    let Some(_) = tool("promtool") else { return };
    // Every source, so that every family this host can give is checked and documented.
    let sources = "cpu,memory,network,load,pressure,host,temperature,agent,disk,filesystem";
    for (names, allowed) in [("pocketses", None), ("node", Some("camelCase"))] {
        let (_agent, addr) = agent("0.2", &["--http-names", names, "--sources", sources]);
        let text = metrics(addr);
        let (passed, findings) = promtool(&text);
        match allowed {
            None => assert!(
                passed && findings.is_empty(),
                "{names}: {findings:#?}\n{text}"
            ),
            Some(allowed) => assert!(
                findings.iter().all(|f| f.contains(allowed)),
                "{names}: {findings:#?}\n{text}"
            ),
        }
        let (families, series) = families_and_series(&text);
        let unique: HashSet<_> = series.iter().collect();
        assert_eq!(unique.len(), series.len(), "duplicate series in {text}");
        assert!(families
            .iter()
            .any(|f| f == "pocketses_last_snapshot_timestamp_seconds"));
        if names == "node" {
            assert!(text.contains("\nnode_memory_MemTotal_bytes "), "{text}");
            assert!(
                text.contains("\nnode_network_receive_bytes_total{device=\"lo\"} "),
                "{text}"
            );
        } else {
            assert!(
                families.iter().all(|f| f.starts_with("pocketses_")),
                "{families:?}"
            );
        }
        for family in families {
            assert!(
                documented().contains(&family),
                "{family} ({names} names) is not in docs/FORMAT.md's /metrics table"
            );
        }
    }
}

/// The family names of the `/metrics` table in docs/FORMAT.md, in either mode.
fn documented() -> HashSet<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    let table = doc
        .split("<!-- metrics-table -->")
        .nth(1)
        .expect("docs/FORMAT.md has a /metrics table between <!-- metrics-table --> marks");
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            l.split('|')
                .skip(1)
                .take(2)
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .filter_map(|cell| {
            cell.strip_prefix('`')?
                .strip_suffix('`')
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn metrics_gzipped_when_asked_are_the_same_bytes() {
    let (_agent, addr) = agent("60", &[]);
    let plain = metrics(addr);
    let reply = request(addr, "GET", "/metrics", "Accept-Encoding: gzip\r\n");
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&reply.body[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain);
    let refused = request(addr, "GET", "/metrics", "Accept-Encoding: gzip;q=0\r\n");
    assert_eq!(refused.header("content-encoding"), None);
    assert_eq!(refused.text(), plain);
}

#[test]
fn snapshot_is_the_tcp_line_without_crlf() {
    let agent = Agent::start(&[
        "--sinks",
        "tcp,http",
        "--port",
        "0",
        "--http-port",
        "0",
        "--interval",
        "60",
    ]);
    let http = http_address(&agent);
    let mut subscriber = Subscriber::connect(agent.address());
    let line = subscriber.line().unwrap();
    let reply = get(http, "/snapshot");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.text(), line.trim_end_matches("\r\n"));
    assert!(!reply.body.ends_with(b"\n"));
}

#[test]
fn only_get_and_head_known_paths_and_health() {
    let (_agent, addr) = agent("0.2", &[]);
    metrics(addr);
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let reply = request(addr, method, "/metrics", "Content-Length: 0\r\n");
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method}");
    }
    assert_eq!(get(addr, "/nope").status, 404);
    assert_eq!(get(addr, "/metrics/").status, 404);
    let head = request(addr, "HEAD", "/snapshot", "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let healthz = get(addr, "/healthz");
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok\n"));
    for page in ["/", "/app.js", "/style.css"] {
        let reply = get(addr, page);
        assert_eq!(reply.status, 200, "{page}");
        assert!(!reply.body.is_empty(), "{page}");
    }
}

#[test]
fn healthz_fails_when_snapshots_stop() {
    let (agent, addr) = agent("0.2", &[]);
    metrics(addr);
    // A stopped agent collects nothing: its latest snapshot grows old (1 s: three intervals
    // but at least a second). The request waits in the socket and is answered on SIGCONT,
    // when the tick that is due races it, so a few tries are allowed to see the 503.
    let stale = (0..5).any(|_| {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        agent.signal(nix::sys::signal::Signal::SIGSTOP);
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        agent.signal(nix::sys::signal::Signal::SIGCONT);
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let reply = parse_reply(&raw);
        assert!(matches!(reply.status, 200 | 503), "{}", reply.text());
        reply.status == 503 && reply.text() == "stale: no recent snapshot\n"
    });
    assert!(stale, "/healthz never said stale");
    wait_for("healthy again", || {
        (get(addr, "/healthz").status == 200).then_some(())
    });
}

#[test]
fn curl_n_events_gets_consecutive_snapshots() {
    let found = Command::new("curl").arg("--version").output().is_ok();
    if !found {
        return skip("curl is not installed");
    }
    let agent = Agent::start(&[
        "--sinks",
        "tcp,http",
        "--port",
        "0",
        "--http-port",
        "0",
        "--interval",
        "0.2",
    ]);
    let http = http_address(&agent);
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "20"])
        .arg(format!("http://{http}/events"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(curl.stdout.take().unwrap());
    let mut stamps = Vec::new();
    while stamps.len() < 4 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(!line.is_empty(), "the event stream ended");
        if let Some(json) = line.strip_prefix("data: ") {
            let snapshot: serde_json::Value = serde_json::from_str(json).unwrap();
            stamps.push(snapshot["timestamp"].as_str().unwrap().to_string());
        } else {
            assert_eq!(line, "\n", "only data lines and blank lines");
        }
    }
    let _ = curl.kill();
    let _ = curl.wait();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

/// An HTTP/1.1 `GET /metrics` on `stream`, keeping the connection open, answered within
/// PATIENCE; the reply and how long it took.
fn scrape_on(stream: &mut TcpStream) -> (Reply, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0; 64 << 10];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed during a scrape");
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let reply = parse_reply(&raw);
            let length: usize = reply.header("content-length").unwrap().parse().unwrap();
            if raw.len() >= end + 4 + length {
                return (reply, started.elapsed());
            }
        }
    }
}

/// Reads until the agent closes `stream`; whether it did before PATIENCE or 512 KiB (what a
/// dropped client has left in the buffers is far less).
fn closed_by_agent(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0; 64 << 10];
    let mut got = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) if got > 512 << 10 => return false,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// The sockets process `pid` has open.
fn sockets(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter(|fd| {
            let target = std::fs::read_link(fd.as_ref().unwrap().path());
            target.is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

#[test]
fn hostile_clients_do_not_delay_a_scrape() {
    let _heavy = common::heavy();
    let (agent, addr) = agent("0.05", &["--http-max-connections", "1100"]);
    agent.wait_log("pocketses started");
    // The listener and the runtime's own, before any client.
    let baseline = sockets(agent.pid());
    metrics(addr);
    // 1,000 connections that send nothing.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Slowloris: heads that never end, one byte a while.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    // Event streams that never read, on the smallest window.
    let stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = tiny_window_connection(addr);
            s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // A header over the limit is refused, not buffered.
    let huge = request(
        addr,
        "GET",
        "/metrics",
        &format!("X-Big: {}\r\n", "a".repeat(16 << 10)),
    );
    assert_eq!(huge.status, 431);

    let mut scraper = TcpStream::connect(addr).unwrap();
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(2);
    while Instant::now() < until {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        let (reply, took) = scrape_on(&mut scraper);
        assert_eq!(reply.status, 200);
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("slowest scrape among hostile clients: {slowest:?}");
    // Blocked behind any of them, a scrape would wait for the header timeout (5 s) at least.
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    // The kept-alive scraper was never idle long enough to be closed; the slow heads and
    // the idle connections were (and so was the scraper once left alone).
    for mut s in slow.into_iter().chain(idle.into_iter().take(10)) {
        assert!(
            closed_by_agent(&mut s),
            "a slow or idle client kept its connection"
        );
    }
    assert!(
        closed_by_agent(&mut scraper),
        "an idle kept-alive connection stayed open"
    );
    // The stalled event streams were dropped too (their buffers fill within about 3 s at 20
    // snapshots a second, then a write waits out the 5 s stall timeout): the agent holds no
    // connection any more. Seen from the agent, as reading a tiny window resumes slowly.
    wait_for("the agent to drop every hostile connection", || {
        (sockets(agent.pid()) == baseline).then_some(())
    });
    drop(stalled);
    assert_eq!(get(addr, "/healthz").status, 200);
    drop(agent);
}

#[test]
fn connections_beyond_the_limit_are_refused_and_the_others_served() {
    let (_agent, addr) = agent("0.2", &["--http-max-connections", "4"]);
    metrics(addr);
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The held ones are served first (the accept order), so the limit is reached.
    for s in &mut held {
        let (reply, _) = scrape_on(s);
        assert_eq!(reply.status, 200);
    }
    // Refused at once, before it could send a request (which the close would reset).
    let mut refused = TcpStream::connect(addr).unwrap();
    refused.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut raw = Vec::new();
    refused.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_reply(&raw).status, 503);
    for s in &mut held {
        let (reply, _) = scrape_on(s);
        assert_eq!(reply.status, 200);
    }
    drop(held);
    wait_for("a place again", || {
        (get(addr, "/metrics").status == 200).then_some(())
    });
}

/// A free port on 127.0.0.1 (free when asked: the caller binds it soon after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server of our own, killed on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PromQL query's single value, once Prometheus has one.
fn query(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={promql}");
    let reply = get(prometheus, &path);
    let answer: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
    let value = &answer["data"]["result"][0]["value"][1];
    value.as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_the_values_of_the_snapshot() {
    let Some(server) = tool("prometheus") else {
        return;
    };
    // A long interval: the snapshot Prometheus scraped is the one /snapshot serves.
    let (_agent, addr) = agent("60", &["--format", "raw"]);
    let scratch = Scratch::new();
    let config = scratch.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pocketses\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(server)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.path("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = Prometheus(child);
    let total = wait_for("Prometheus to have scraped the agent", || {
        TcpStream::connect(web).ok()?;
        query(web, "pocketses_memory_total_bytes")
    });
    let scraped_at = query(web, "pocketses_last_snapshot_timestamp_seconds").unwrap();
    assert_eq!(query(web, "up").unwrap(), 1.0);
    let snapshot: serde_json::Value = serde_json::from_slice(&get(addr, "/snapshot").body).unwrap();
    assert_eq!(total, snapshot["memory"]["total_bytes"].as_f64().unwrap());
    // The same snapshot: its timestamp, compared by second and millisecond of the minute.
    let stamp = snapshot["timestamp"].as_str().unwrap();
    let of_minute =
        stamp[17..19].parse::<i64>().unwrap() * 1000 + stamp[20..23].parse::<i64>().unwrap();
    assert_eq!(
        (scraped_at * 1000.0).round() as i64 % 60_000,
        of_minute,
        "{scraped_at} vs {stamp}"
    );
    let targets = get(web, "/api/v1/targets");
    let targets: serde_json::Value = serde_json::from_slice(&targets.body).unwrap();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");
}

/// Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// fd 3 in, fd 4 out, NUL-separated JSON), so the test sees console errors and can read the
/// page's DOM while its event stream stays open. Killed on drop.
struct Chromium {
    child: Child,
    to: std::fs::File,
    from: std::sync::mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    session: String,
    /// Protocol events seen so far (console calls, exceptions, log entries).
    events: Vec<serde_json::Value>,
    _profile: Scratch,
}

impl Chromium {
    /// A headless browser with one blank page, console and log reporting on; `None` (a
    /// skip) without chromium.
    fn start(width: u32, height: u32) -> Option<Chromium> {
        let found = Command::new("chromium").arg("--version").output().is_ok();
        if !found {
            skip("chromium is not installed (Debian package chromium)");
            return None;
        }
        use nix::fcntl::OFlag;
        use std::os::unix::process::CommandExt;
        let (child_in, to) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (from, child_out) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let profile = Scratch::new();
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--hide-scrollbars",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.dir().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: dup2 is async-signal-safe; the two descriptors stay open in the parent
        // until spawn returns.
        unsafe {
            let (child_in, child_out) = (
                child_in.try_clone().unwrap(),
                child_out.try_clone().unwrap(),
            );
            command.pre_exec(move || {
                std::mem::forget(nix::unistd::dup2_raw(&child_in, 3)?);
                std::mem::forget(nix::unistd::dup2_raw(&child_out, 4)?);
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop((child_in, child_out));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut reader = io::BufReader::new(std::fs::File::from(from));
        std::thread::spawn(move || loop {
            let mut message = Vec::new();
            match io::BufRead::read_until(&mut reader, 0, &mut message) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    message.pop();
                    if tx.send(serde_json::from_slice(&message).unwrap()).is_err() {
                        return;
                    }
                }
            }
        });
        let mut browser = Chromium {
            child,
            to: std::fs::File::from(to),
            from: rx,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            _profile: profile,
        };
        let targets = browser.call("Target.getTargets", serde_json::json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["targetId"]
            .clone();
        let attached = browser.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": page, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Runtime", "Log", "Page"] {
            browser.call(&format!("{domain}.enable"), serde_json::json!({}));
        }
        Some(browser)
    }

    /// Sends a command (to the page once attached) and waits for its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let answer = self.from.recv_timeout(PATIENCE).expect("chromium answers");
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
            self.events.push(answer);
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    /// The page's text of the element with `id`.
    fn text(&mut self, id: &str) -> String {
        let value = self.eval(&format!("document.getElementById('{id}').textContent"));
        value.as_str().unwrap_or_default().to_string()
    }

    /// Console errors, uncaught exceptions and error log entries so far.
    fn errors(&mut self) -> Vec<String> {
        self.eval("0");
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
                    || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
            })
            .map(|e| e.to_string())
            .collect()
    }

    /// A PNG of the page as a 1100×430 desktop window shows it.
    fn screenshot(&mut self, path: &std::path::Path) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": 1100, "height": 430, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        std::fs::write(path, base64(shot["data"].as_str().unwrap())).unwrap();
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 with padding, as the DevTools protocol sends binary data.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
            let bytes = n.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

#[test]
fn the_page_shows_the_snapshot_updates_and_says_when_the_agent_is_gone() {
    let Some(mut browser) = Chromium::start(1100, 430) else {
        return;
    };
    let mut agent = Agent::start(&[
        "--sinks",
        "tcp,http",
        "--port",
        "0",
        "--http-port",
        "0",
        "--interval",
        "0.5",
    ]);
    let http = http_address(&agent);
    // Every snapshot the agent sends, to find the one the page shows.
    let mut subscriber = Subscriber::connect(agent.address());
    let lines = common::Lines::default();
    let collected = lines.clone();
    std::thread::spawn(move || {
        while let Some(line) = subscriber.line() {
            collected.push(line);
        }
    });
    browser.call(
        "Page.navigate",
        serde_json::json!({"url": format!("http://{http}/")}),
    );
    let first = wait_for("the page's first update", || {
        let updates: u64 = browser.text("updates").parse().ok()?;
        (updates >= 1).then(|| browser.text("timestamp"))
    });
    wait_for("the page to update again", || {
        let updates: u64 = browser.text("updates").parse().ok()?;
        (updates >= 3 && browser.text("timestamp") != first).then_some(())
    });
    assert_eq!(browser.text("status"), "live");
    // The numbers on the page are those of the snapshot it shows.
    let (shown, values) = wait_for("a consistent reading of the page", || {
        let values = browser.eval(
            "[...['timestamp','cpu-overall','mem-used','mem-total','swap-total','net-rx','net-tx']]\
             .map(id => document.getElementById(id).textContent)",
        );
        let values: Vec<String> = serde_json::from_value(values).ok()?;
        let line = lines.find(&format!("\"timestamp\":\"{}\"", values[0]))?;
        Some((
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
            values,
        ))
    });
    let expected = [
        shown["timestamp"].as_str().unwrap().to_string(),
        format!(
            "{:.1}",
            shown["cpu"]["utilization"]["overall"].as_f64().unwrap()
        ),
        shown["memory"]["virtual"]["used"]
            .as_str()
            .unwrap()
            .trim_end_matches('%')
            .to_string(),
        shown["memory"]["virtual"]["total"]
            .as_str()
            .unwrap()
            .to_string(),
        shown["memory"]["swap"]["total"]
            .as_str()
            .unwrap()
            .to_string(),
        shown["network"]["traffic"]["recv"]
            .as_str()
            .unwrap()
            .to_string(),
        shown["network"]["traffic"]["sent"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    assert_eq!(values, expected);
    // Rates need two snapshots and /metrics: they are shown by now.
    wait_for("network rates", || {
        browser.text("net-rx-rate").ends_with("/s").then_some(())
    });
    let errors = browser.errors();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    // Readable on a phone: nothing wider than a 360 px screen.
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": true}),
    );
    let width = wait_for("the phone-width layout", || {
        let width = browser
            .eval("document.documentElement.scrollWidth")
            .as_u64()?;
        (width <= 360).then_some(width)
    });
    assert!(width <= 360);
    browser.call(
        "Emulation.clearDeviceMetricsOverride",
        serde_json::json!({}),
    );
    if let Ok(path) = std::env::var("POCKETSES_SCREENSHOT") {
        // Some history in the charts first.
        std::thread::sleep(Duration::from_secs(6));
        browser.screenshot(std::path::Path::new(&path));
    }
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit();
    wait_for("the page to say it is disconnected", || {
        let banner = browser.eval("document.getElementById('banner').hidden");
        (browser.text("status") == "disconnected" && banner == false).then_some(())
    });
}

#[test]
fn a_reload_keeps_the_event_streams_and_the_address() {
    let (agent, addr) = agent("0.2", &[]);
    let mut events = TcpStream::connect(addr).unwrap();
    events.set_read_timeout(Some(PATIENCE)).unwrap();
    events
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = io::BufReader::new(events);
    let mut next_event = || loop {
        let mut line = String::new();
        io::BufRead::read_line(&mut reader, &mut line).unwrap();
        assert!(!line.is_empty(), "the event stream ended");
        if let Some(json) = line.strip_prefix("data: ") {
            return json.to_string();
        }
    };
    next_event();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_log("reload");
    let before = next_event();
    let after = next_event();
    assert_ne!(before, after);
    assert!(!metrics(addr).is_empty());
    assert_eq!(
        agent
            .stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains("http sink serving"))
            .count(),
        1
    );
}

/// Settings changed through snap configuration and SIGHUP are adopted in place: new names at
/// once (the latest snapshot encoded again), a new address listened on, the old one closed.
#[test]
fn a_reload_adopts_new_names_at_once_and_moves_to_a_new_address() {
    let dir = Scratch::new();
    let cookie = "TESTCOOKIE";
    let fake = snapd_support::fake::FakeSnapd::start(
        dir.dir(),
        serde_json::json!({"http": {"names": "pocketses"}}),
        cookie,
    );
    let mut command = Agent::command(&["--sinks", "http", "--http-port", "0", "--interval", "60"]);
    command
        .arg("--snap")
        .env("POCKETSES_SNAP_SOCKET", &fake.snap_socket)
        .env("POCKETSES_SNAPD_SOCKET", &fake.snapd_socket)
        .env("SNAP_COOKIE", cookie)
        .env("SNAP_INSTANCE_NAME", "pocketses");
    let agent = Agent::spawn(&mut command);
    let addr = http_address(&agent);
    assert!(metrics(addr).contains("\npocketses_memory_total_bytes "));
    let mut kept = TcpStream::connect(addr).unwrap();
    scrape_on(&mut kept);

    fake.set_config(serde_json::json!({"http": {"names": "node"}}));
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.next_log("configuration reloaded");
    // Within the 60 s interval: the snapshot already taken, under its new names.
    let (reply, _) = scrape_on(&mut kept);
    assert!(String::from_utf8(reply.body)
        .unwrap()
        .contains("\nnode_memory_MemTotal_bytes "));

    fake.set_config(serde_json::json!({"http": {"names": "node", "bind": "127.0.0.2"}}));
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let line = agent.next_log("http sink serving http://127.0.0.2:");
    let moved: SocketAddr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(metrics(moved).contains("\nnode_memory_MemTotal_bytes "));
    assert!(
        closed_by_agent(&mut kept),
        "a connection to the old address stayed open"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "the old address still accepts"
    );
}
