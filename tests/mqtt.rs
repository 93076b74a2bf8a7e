//! The mqtt sink against a real Mosquitto (Debian's `mosquitto` and `mosquitto-clients`),
//! started by each test on 127.0.0.1 with its own port and configuration file in a scratch
//! directory, never the system's service. Messages are read with `mosquitto_sub`.

mod common;
// Of the snapd stand-in only the configuration it serves.
#[allow(dead_code)]
mod snapd_support;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use common::{heavy, pocketses, run, skip, wait_for, Agent, Scratch, Subscriber};
use snapd_support::fake::FakeSnapd;

/// A tool by name, on `PATH` or where Debian puts it (`mosquitto` is in `/usr/sbin`, which
/// a user's `PATH` may lack).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    (std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into()]))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Every tool a test needs, or `None` after saying which is missing (a failure under CI).
fn tools(names: &[&str]) -> Option<Vec<PathBuf>> {
    let found: Vec<_> = names.iter().map(|n| tool(n)).collect();
    match names.iter().zip(&found).find(|(_, f)| f.is_none()) {
        Some((missing, _)) => {
            skip(&format!(
                "{missing} is not installed (apt-get install mosquitto mosquitto-clients openssl)"
            ));
            None
        }
        None => Some(found.into_iter().flatten().collect()),
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto of our own; its log is its stderr. Killed on drop.
struct Broker {
    port: u16,
    conf: PathBuf,
    process: Option<Agent>,
    /// `mosquitto_sub`, and the options it needs for this broker (TLS, credentials).
    sub: PathBuf,
    sub_args: Vec<String>,
}

impl Broker {
    /// Starts a broker listening on 127.0.0.1 with `extra` configuration lines.
    fn start(dir: &Scratch, extra: &str) -> Option<Broker> {
        let [mosquitto, sub] =
            <[PathBuf; 2]>::try_from(tools(&["mosquitto", "mosquitto_sub"])?).unwrap();
        let port = free_port();
        let conf = dir.path("mosquitto.conf");
        // `user root`: as root, Mosquitto would otherwise become `mosquitto`, which cannot
        // read the scratch files; as anyone else it is ignored.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nuser root\npersistence false\nlog_dest stderr\nlog_type all\n{extra}\n"
            ),
        )
        .unwrap();
        let mut broker = Broker {
            port,
            conf,
            process: None,
            sub,
            sub_args: Vec::new(),
        };
        broker.run(&mosquitto);
        Some(broker)
    }

    fn run(&mut self, mosquitto: &Path) {
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.process = Some(Agent::from_child(child));
        let port = self.port;
        wait_for("mosquitto to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    fn restart(&mut self) {
        self.run(&tool("mosquitto").unwrap());
    }

    fn stop(&mut self) {
        let mut process = self.process.take().unwrap();
        process.signal(Signal::SIGTERM);
        process.wait_exit();
    }

    /// The broker's log lines so far.
    fn log(&self) -> Vec<String> {
        self.process.as_ref().unwrap().stderr.snapshot()
    }

    fn sub_command(&self, topic: &str) -> Command {
        let mut command = Command::new(&self.sub);
        command
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-v",
                "-t",
                topic,
            ])
            .args(&self.sub_args);
        command
    }

    /// A subscriber that prints `topic payload` lines (`(null)` for an empty payload)
    /// until dropped.
    fn subscribe(&self, topic: &str) -> Agent {
        Agent::spawn(&mut self.sub_command(topic))
    }

    /// The retained messages under `topic`, by topic.
    fn retained(&self, topic: &str) -> BTreeMap<String, String> {
        let out = run(self.sub_command(topic).args(["--retained-only", "-W", "1"]));
        (String::from_utf8_lossy(&out.stdout).lines())
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect()
    }

    /// Waits until the retained messages under `topic` pass `check`.
    fn retained_where(
        &self,
        what: &str,
        topic: &str,
        check: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        wait_for(what, || Some(self.retained(topic)).filter(|r| check(r)))
    }
}

/// Flags that point the agent's mqtt sink at `broker` under `pocketses-test/<name>`.
fn mqtt_flags(broker: &Broker, name: &str) -> Vec<String> {
    [
        "--mqtt-port",
        &broker.port.to_string(),
        "--mqtt-topic",
        &format!("pocketses-test/{name}"),
        "--mqtt-client-id",
        &format!("pocketses-test-{name}"),
    ]
    .map(String::from)
    .into()
}

fn start_agent(broker: &Broker, name: &str, more: &[&str]) -> Agent {
    let flags = mqtt_flags(broker, name);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    if !more.contains(&"--sinks") {
        args.extend(["--sinks", "mqtt"]);
    }
    args.extend(more);
    Agent::start(&args)
}

#[test]
fn retained_snapshot_and_online_status_then_offline_after_sigterm_and_by_the_will_after_sigkill() {
    let dir = Scratch::new();
    let Some(broker) = Broker::start(&dir, "allow_anonymous true") else {
        return;
    };
    let topic = "pocketses-test/presence/#";
    let status = "pocketses-test/presence/status";
    let snapshot = "pocketses-test/presence/snapshot";

    let mut agent = start_agent(&broker, "presence", &["--interval", "0.2"]);
    // A subscriber that comes later gets both at once: they are retained.
    let retained = broker.retained_where("a retained snapshot and status", topic, |r| {
        r.contains_key(snapshot) && r.contains_key(status)
    });
    assert_eq!(retained[status], "online");
    let json: Value = serde_json::from_str(&retained[snapshot]).unwrap();
    assert!(
        json["timestamp"].is_string() && json["cpu"]["count"].is_u64(),
        "{json}"
    );
    assert_eq!(
        agent
            .stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains("connected to"))
            .count(),
        1
    );

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().success());
    broker.retained_where("offline after SIGTERM", topic, |r| {
        r.get(status).is_some_and(|s| s == "offline")
    });

    // Killed, it cannot say goodbye: the broker publishes the Last Will.
    let agent = start_agent(&broker, "presence", &["--interval", "0.2"]);
    broker.retained_where("online again", topic, |r| {
        r.get(status).is_some_and(|s| s == "online")
    });
    agent.signal(Signal::SIGKILL);
    broker.retained_where("offline by the will after SIGKILL", topic, |r| {
        r.get(status).is_some_and(|s| s == "offline")
    });
}

/// `2026-11-30T11:12:05.894Z` of a snapshot line (`topic payload`).
fn timestamp_of(line: &str) -> String {
    let payload = line.split_once(' ').map_or(line, |(_, p)| p);
    let json: Value = serde_json::from_str(payload).unwrap();
    json["timestamp"].as_str().unwrap().to_string()
}

#[test]
fn broker_outage_costs_no_memory_nor_subscribers_and_publishing_resumes_with_the_latest() {
    const OUTAGE: Duration = Duration::from_secs(4);
    let _heavy = heavy();
    let dir = Scratch::new();
    let Some(mut broker) = Broker::start(&dir, "allow_anonymous true") else {
        return;
    };
    let agent = start_agent(
        &broker,
        "outage",
        &["--sinks", "tcp,mqtt", "--port", "0", "--interval", "0.01"],
    );
    // A TCP subscriber, reading every line and noting the longest wait between two.
    let mut tcp = Subscriber::connect(agent.address());
    let (done, longest_gap) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Duration::ZERO)),
    );
    let reader = {
        let (done, longest_gap) = (done.clone(), longest_gap.clone());
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while !done.load(Ordering::Relaxed) {
                tcp.line().expect("the TCP subscriber was disconnected");
                let mut gap = longest_gap.lock().unwrap();
                *gap = (*gap).max(last.elapsed());
                last = Instant::now();
            }
        })
    };
    let sub = broker.subscribe("pocketses-test/outage/snapshot");
    wait_for("snapshots at the subscriber", || {
        (sub.stdout.len() > 100).then_some(())
    });
    let rss_before = agent.rss_kib();
    *longest_gap.lock().unwrap() = Duration::ZERO;

    broker.stop();
    let stopped = Instant::now();
    let mut rss_max = rss_before;
    while stopped.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_millis(200));
        rss_max = rss_max.max(agent.rss_kib());
    }
    let gap_in_outage = *longest_gap.lock().unwrap();

    broker.restart();
    let back = Instant::now();
    let back_at = pocketses::model::rfc3339_millis(SystemTime::now() - Duration::from_millis(100));
    let sub = broker.subscribe("pocketses-test/outage/snapshot");
    let first = wait_for("a snapshot after the broker's return", || {
        sub.stdout.snapshot().first().cloned()
    });
    let resumed = back.elapsed();
    // Every snapshot the returned broker gets was taken after its return: no backlog.
    wait_for("more snapshots", || (sub.stdout.len() > 20).then_some(()));
    let stale: Vec<String> = (sub.stdout.snapshot().iter())
        .map(|l| timestamp_of(l))
        .filter(|t| *t < back_at)
        .collect();
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    eprintln!(
        "outage {OUTAGE:?}: RSS {rss_before} KiB before, at most {rss_max} KiB during; \
         longest TCP gap {gap_in_outage:?}; first snapshot {resumed:?} after the broker's return"
    );
    assert!(
        stale.is_empty(),
        "stale snapshots after the return: {stale:?} (back at {back_at})"
    );
    assert!(timestamp_of(&first) >= back_at, "{first:.80}");
    // The contract is about 2 s; the slack is for a loaded 2-core machine.
    assert!(
        resumed < Duration::from_secs(5),
        "publishing resumed after {resumed:?}"
    );
    assert!(
        rss_max < rss_before + 2048,
        "RSS {rss_before} KiB → {rss_max} KiB"
    );
    assert!(
        gap_in_outage < Duration::from_secs(1),
        "TCP subscriber waited {gap_in_outage:?}"
    );
    // One log line per change of state: lost, refused while down, connected again.
    let log = agent.stderr.snapshot();
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("lost 127.0.0.1"), 1, "{log:#?}");
    assert!(count("cannot connect to") <= 1, "{log:#?}");
    assert_eq!(count("connected to 127.0.0.1"), 2, "{log:#?}");
}

#[test]
fn bad_credentials_are_logged_with_the_brokers_reason_and_retried_with_backoff() {
    const SECRET: &str = "Wr0ng-s3cret";
    let dir = Scratch::new();
    let Some(passwd) = tools(&["mosquitto_passwd"]) else {
        return;
    };
    let passwords = dir.path("passwords");
    let made = run(Command::new(&passwd[0])
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["agent", "right-one"]));
    assert!(made.status.success(), "{made:?}");
    let conf = format!(
        "allow_anonymous false\npassword_file {}",
        passwords.display()
    );
    let Some(broker) = Broker::start(&dir, &conf) else {
        return;
    };

    let check = run(pocketses().args([
        "--no-snap",
        "--check",
        "--mqtt-username",
        "agent",
        "--mqtt-password",
        SECRET,
    ]));
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        shown.contains("mqtt.password=***") && !shown.contains(SECRET),
        "{shown}"
    );

    let agent = start_agent(
        &broker,
        "auth",
        &[
            "--mqtt-username",
            "agent",
            "--mqtt-password",
            SECRET,
            "--interval",
            "0.1",
        ],
    );
    let refused = agent.wait_log("refused by the broker");
    assert!(
        refused.contains("not authorized") || refused.contains("bad user name"),
        "{refused}"
    );
    assert!(refused.contains("return code"), "{refused}");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let attempts = (broker.log().iter())
        // Mosquitto names a refused client `<unknown>`; only the agent connects here.
        .filter(|l| l.contains("disconnected, not authorised"))
        .count();
    let log = agent.stderr.snapshot();
    eprintln!("{attempts} refused attempts in {:?}", start.elapsed());
    // Backoff from 0.1 s doubling to 2 s: about 7 in these 5 s; a tight loop makes thousands.
    assert!(
        (3..=15).contains(&attempts),
        "{attempts} attempts; {log:#?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.contains("refused")).count(),
        1,
        "{log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains(SECRET)), "{log:#?}");
    drop(agent);

    let agent = start_agent(
        &broker,
        "auth",
        &[
            "--mqtt-username",
            "agent",
            "--mqtt-password",
            "right-one",
            "--interval",
            "0.1",
        ],
    );
    agent.wait_log("connected to");
}

#[test]
fn tls_with_a_test_ca() {
    let dir = Scratch::new();
    let Some(openssl) = tools(&["openssl"]) else {
        return;
    };
    let openssl = |args: &[&str]| {
        let out = run(Command::new(&openssl[0]).current_dir(dir.dir()).args(args));
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=pocketses test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.path("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let (ca, cert, key) = (
        dir.path("ca.pem"),
        dir.path("server.pem"),
        dir.path("server.key"),
    );
    let conf = format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}",
        ca.display(),
        cert.display(),
        key.display()
    );
    let Some(mut broker) = Broker::start(&dir, &conf) else {
        return;
    };
    // The subscriber checks the CA; the agent's check of the name is what is under test.
    broker.sub_args = ["--cafile", ca.to_str().unwrap(), "--insecure"]
        .map(String::from)
        .into();

    let ca_flag = ca.to_str().unwrap();
    let agent = start_agent(
        &broker,
        "tls",
        &[
            "--mqtt-tls",
            "true",
            "--mqtt-ca-file",
            ca_flag,
            "--interval",
            "0.2",
        ],
    );
    agent.wait_log("connected to");
    broker.retained_where("a snapshot over TLS", "pocketses-test/tls/#", |r| {
        r.get("pocketses-test/tls/status")
            .is_some_and(|s| s == "online")
            && r.contains_key("pocketses-test/tls/snapshot")
    });
    drop(agent);

    // Without the test CA (the system's roots), the broker's certificate is refused.
    let agent = start_agent(
        &broker,
        "tls-untrusted",
        &["--mqtt-tls", "true", "--interval", "0.2"],
    );
    let line = agent.wait_log("cannot connect");
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert!(agent.stderr.find("connected to").is_none());
}

/// A snapshot many times rumqttc's default packet limit (10 KiB, which drops the
/// connection) is published whole. `--host-root` is declared but does not reach the sources
/// yet, so the sink is built in-process from the registry and given a 256 KiB frame shaped
/// like `raw`'s network section of a host with 1000 interfaces.
#[test]
fn a_large_snapshot_is_published_whole() {
    use pocketses::config::{Config, Origin};
    use pocketses::encode::Frame;
    use pocketses::plugin::{find, SinkPlugin};

    let dir = Scratch::new();
    let Some(broker) = Broker::start(&dir, "allow_anonymous true") else {
        return;
    };
    let interfaces: serde_json::Map<String, Value> = (0..1000)
        .map(|i| {
            let counters = json!({"rx_bytes": 1_000_000_000u64 + i, "rx_packets": i, "rx_errors": 0, "rx_dropped": 0, "tx_bytes": 2_000_000_000u64 + i, "tx_packets": i, "tx_errors": 0, "tx_dropped": 0, "rx_bytes_per_second": 1234.5, "tx_bytes_per_second": 2345.5});
            (format!("veth{i:05}"), counters)
        })
        .collect();
    let json =
        json!({"timestamp": "2026-11-30T12:00:00.000Z", "network": {"interfaces": interfaces}})
            .to_string();
    assert!(json.len() > 200 << 10, "{}", json.len());

    let mut config = Config::default();
    for (key, value) in [
        ("mqtt.port", broker.port.to_string()),
        ("mqtt.topic", "pocketses-test/large".into()),
    ] {
        config.set(key, &value, Origin::Flag).unwrap();
    }
    let plugin = find::<SinkPlugin>("mqtt").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sub = broker.subscribe("pocketses-test/large/snapshot");
    runtime.block_on(async {
        let mut sink = (plugin.build)(&config.plugin_config(&plugin.settings))
            .await
            .unwrap();
        let frame = Frame {
            seq: 0,
            timestamp: SystemTime::now(),
            json: json.clone().into(),
            sections: Default::default(),
        };
        let deadline = Instant::now() + common::PATIENCE;
        // Published again until it arrives: the sink connects in the background.
        while sub.stdout.len() == 0 && Instant::now() < deadline {
            sink.publish(&frame).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sink.close().await;
    });
    let got = wait_for("the large snapshot", || {
        sub.stdout.snapshot().first().cloned()
    });
    assert_eq!(got.split_once(' ').unwrap().1, json);
}

/// The `value_template`s rendered by Jinja2 (which Home Assistant's templates are) against
/// `snapshot`; `None` without python3 and its jinja2.
fn render(templates: &[String], snapshot: &Value) -> Option<Vec<String>> {
    const SCRIPT: &str = "import json, sys, jinja2\n\
        given = json.load(sys.stdin)\n\
        env = jinja2.Environment(extensions=['jinja2.ext.do'])\n\
        print(json.dumps([env.from_string(t).render(value_json=given['snapshot']).strip() for t in given['templates']]))\n";
    let python = tool("python3")?;
    let probe = Command::new(&python)
        .args(["-c", "import jinja2"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({"templates": templates, "snapshot": snapshot}).to_string();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn discovery_configs_are_valid_unique_and_their_templates_read_the_published_snapshot() {
    let dir = Scratch::new();
    let Some(broker) = Broker::start(&dir, "allow_anonymous true") else {
        return;
    };
    let mut unique_ids = Vec::new();
    for (format, objects) in [
        (
            "seed",
            &["cpu", "load1", "memory_used", "root_used", "swap_used"][..],
        ),
        (
            "raw",
            &[
                "cpu",
                "load1",
                "memory_used",
                "network_receive",
                "network_transmit",
                "root_used",
                "swap_used",
            ],
        ),
    ] {
        let name = format!("discovery-{format}");
        let _agent = start_agent(
            &broker,
            &name,
            &[
                "--format",
                format,
                "--sources",
                "cpu,memory,network,load,filesystem",
                "--interval",
                "0.2",
                "--mqtt-discovery",
                "homeassistant",
            ],
        );
        let node = format!("pocketses-test-{name}");
        let configs = broker.retained_where(
            "discovery configs",
            &format!("homeassistant/sensor/{node}/#"),
            |r| r.len() == objects.len(),
        );
        let found: Vec<&str> = configs
            .keys()
            .map(|t| t.split('/').nth(3).unwrap())
            .collect();
        assert_eq!(found, objects);
        // A snapshot with rates: the second one on.
        let snapshot_topic = format!("pocketses-test/{name}/snapshot");
        let snapshot: Value = wait_for("a snapshot with rates", || {
            let retained = broker.retained(&snapshot_topic);
            let json: Value = serde_json::from_str(retained.get(&snapshot_topic)?).ok()?;
            let rates = json
                .pointer("/network/interfaces/lo/rx_bytes_per_second")
                .is_some();
            (format == "seed" || rates).then_some(json)
        });
        let mut templates = Vec::new();
        for (topic, payload) in &configs {
            let config: Value =
                serde_json::from_str(payload).unwrap_or_else(|e| panic!("{topic}: {e}: {payload}"));
            assert_eq!(config["state_topic"], snapshot_topic.as_str());
            assert_eq!(
                config["availability_topic"],
                format!("pocketses-test/{name}/status")
            );
            assert!(config["device"]["identifiers"][0].is_string(), "{config}");
            // A unit where the value has one; a load average has none, and no key then.
            let unitless = topic.contains("/load1/");
            assert_eq!(
                config["unit_of_measurement"].is_string(),
                !unitless,
                "{config}"
            );
            unique_ids.push(config["unique_id"].as_str().unwrap().to_string());
            templates.push(config["value_template"].as_str().unwrap().to_string());
        }
        let Some(values) = render(&templates, &snapshot) else {
            skip("python3 with jinja2 is not installed (pip install jinja2, as .ci/run does)");
            continue;
        };
        for ((topic, _), value) in configs.iter().zip(&values) {
            let number: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{topic} renders {value:?}"));
            assert!(
                number.is_finite() && number >= 0.0,
                "{topic} renders {value:?}"
            );
        }
        // Each template reads the very figure the snapshot shows.
        let rendered = |object: &str| -> f64 {
            let i = objects.iter().position(|o| *o == object).unwrap();
            values[i].parse().unwrap()
        };
        let percent = |v: &Value| -> f64 {
            v.as_str().map_or_else(
                || v.as_f64().unwrap(),
                |s| s.trim_end_matches('%').parse().unwrap(),
            )
        };
        if format == "seed" {
            let used = &snapshot["memory"]["virtual"]["used"];
            assert_eq!(rendered("memory_used"), percent(used));
            assert_eq!(rendered("load1"), snapshot["load"]["average"]["1min"]);
            assert_eq!(
                rendered("root_used"),
                percent(&snapshot["filesystem"]["/"]["used"])
            );
        } else {
            assert_eq!(rendered("load1"), snapshot["load"]["load1"]);
            let root = percent(&snapshot["filesystem"]["/"]["used_percent"]);
            assert!((rendered("root_used") - root).abs() <= 0.05, "{root}");
        }
    }
    let count = unique_ids.len();
    unique_ids.sort();
    unique_ids.dedup();
    assert_eq!(unique_ids.len(), count, "{unique_ids:?}");
}

#[test]
fn a_sensor_whose_source_is_disabled_on_reload_is_removed_from_home_assistant() {
    const COOKIE: &str = "MQTTCOOKIE";
    let dir = Scratch::new();
    let Some(broker) = Broker::start(&dir, "allow_anonymous true") else {
        return;
    };
    let fake = FakeSnapd::start(dir.dir(), json!({"sources": "cpu,memory"}), COOKIE);
    let flags = mqtt_flags(&broker, "reload");
    let agent = Agent::spawn(
        pocketses()
            .env("POCKETSES_SNAP_SOCKET", &fake.snap_socket)
            .env("POCKETSES_SNAPD_SOCKET", &fake.snapd_socket)
            .env("SNAP_COOKIE", COOKIE)
            .env("SNAP_INSTANCE_NAME", "pocketses")
            .env("RUST_LOG", "info")
            .args([
                "--sinks",
                "mqtt",
                "--interval",
                "0.2",
                "--mqtt-discovery",
                "homeassistant",
            ])
            .args(&flags),
    );
    let configs = "homeassistant/sensor/pocketses-test-reload/#";
    broker.retained_where("cpu and memory sensors", configs, |r| r.len() == 3);
    let live = broker.subscribe(configs);
    wait_for("the live subscriber", || {
        (live.stdout.len() == 3).then_some(())
    });

    fake.set_config(json!({"sources": "cpu"}));
    agent.signal(Signal::SIGHUP);
    let left = broker.retained_where("only the cpu sensor", configs, |r| r.len() == 1);
    assert!(left.keys().all(|t| t.ends_with("/cpu/config")), "{left:?}");
    // Removed with an empty retained config, which Home Assistant reads as a removal.
    wait_for("two removals", || {
        let lines = live.stdout.snapshot();
        let removed = lines
            .iter()
            .filter(|l| l.ends_with("_used/config (null)"))
            .count();
        (removed == 2).then_some(())
    });
}

/// A broker that stops answering mid-run (frozen with SIGSTOP) holds up neither the TCP
/// subscribers nor SIGTERM: the agent exits within its second, `offline` or not.
#[test]
fn a_frozen_broker_delays_neither_subscribers_nor_the_exit() {
    let dir = Scratch::new();
    let Some(broker) = Broker::start(&dir, "allow_anonymous true") else {
        return;
    };
    let mut agent = start_agent(
        &broker,
        "frozen",
        &["--sinks", "tcp,mqtt", "--port", "0", "--interval", "0.01"],
    );
    agent.wait_log("connected to");
    let mut tcp = Subscriber::connect(agent.address());
    let frozen = broker.process.as_ref().unwrap();
    frozen.signal(Signal::SIGSTOP);
    // A second of snapshots into a broker that reads nothing, while the subscriber reads on.
    let start = Instant::now();
    let mut lines = 0;
    while start.elapsed() < Duration::from_secs(1) {
        tcp.line().expect("a snapshot");
        lines += 1;
    }
    agent.signal(Signal::SIGTERM);
    let stopping = Instant::now();
    let status = agent.wait_exit();
    let took = stopping.elapsed();
    frozen.signal(Signal::SIGCONT);
    eprintln!("{lines} lines in the frozen second; exit {took:?} after SIGTERM");
    assert!(status.success());
    assert!(lines > 10, "{lines} lines in a second at 100 Hz");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
}
