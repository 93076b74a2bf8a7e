//! `cargo bench --bench mqtt`: the mqtt sink against a local Mosquitto (started here on
//! 127.0.0.1 with a config in a scratch directory). Prints numbers; asserts nothing.
//!
//! 1. CPU per tick at 10 snapshots/s of three agents side by side (so load from elsewhere
//!    falls on each alike): `tcp` with one subscriber, `tcp,mqtt` with the same, `mqtt`
//!    alone; and the resident memory of each. CPU is each process's CPU clock.
//! 2. The broker stopped for `MQTT_OUTAGE_SECONDS` (default 30) under an agent at 100
//!    snapshots/s with a TCP subscriber: RSS each second, the TCP subscriber's longest wait,
//!    and how long after the broker's return the first snapshot reaches a subscriber.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;

use common::{Agent, Scratch, Subscriber};

const WINDOW: Duration = Duration::from_secs(3);
const WINDOWS: usize = 5;

struct Broker {
    port: u16,
    conf: std::path::PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Scratch) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"
            ),
        )
        .unwrap();
        let mut broker = Broker {
            port,
            conf,
            child: None,
        };
        broker.run();
        broker
    }

    fn run(&mut self) {
        let mosquitto = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
            .unwrap();
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let port = self.port;
        common::wait_for("mosquitto", || TcpStream::connect(("127.0.0.1", port)).ok());
    }

    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An agent with a TCP subscriber that reads every line, noting the longest wait.
struct Measured {
    label: &'static str,
    agent: Agent,
    clock: ClockId,
    longest_gap: Arc<Mutex<Duration>>,
    done: Arc<AtomicBool>,
}

impl Measured {
    fn start(label: &'static str, args: &[&str], subscriber: bool) -> Measured {
        let agent = Agent::start(args);
        let clock = ClockId::pid_cpu_clock_id(Pid::from_raw(agent.pid())).unwrap();
        let (done, longest_gap) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Duration::ZERO)),
        );
        if subscriber {
            let mut tcp = Subscriber::connect(agent.address());
            let (done, longest_gap) = (done.clone(), longest_gap.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !done.load(Ordering::Relaxed) && tcp.line().is_some() {
                    let mut gap = longest_gap.lock().unwrap();
                    *gap = (*gap).max(last.elapsed());
                    last = Instant::now();
                }
            });
        }
        Measured {
            label,
            agent,
            clock,
            longest_gap,
            done,
        }
    }

    fn cpu(&self) -> Duration {
        clock_gettime(self.clock).unwrap().into()
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = Scratch::new();
    let mut broker = Broker::start(&dir);
    let port = broker.port.to_string();
    per_tick(&port);
    outage(&mut broker, &port);
}

fn per_tick(port: &str) {
    let mqtt = [
        "--mqtt-port",
        port,
        "--mqtt-topic",
        "bench/cpu",
        "--mqtt-client-id",
    ];
    let agents = [
        Measured::start(
            "tcp, one subscriber",
            &["--interval", "0.1", "--sinks", "tcp", "--port", "0"],
            true,
        ),
        Measured::start(
            "tcp,mqtt, one TCP subscriber",
            &[
                &["--interval", "0.1", "--sinks", "tcp,mqtt", "--port", "0"],
                &mqtt[..],
                &["bench-a"],
            ]
            .concat(),
            true,
        ),
        Measured::start(
            "mqtt alone",
            &[
                &["--interval", "0.1", "--sinks", "mqtt"],
                &mqtt[..],
                &["bench-b"],
            ]
            .concat(),
            false,
        ),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let ticks = WINDOW.as_secs_f64() * 10.0;
    let mut per_tick: Vec<Vec<f64>> = vec![Vec::new(); agents.len()];
    for _ in 0..WINDOWS {
        let before: Vec<Duration> = agents.iter().map(Measured::cpu).collect();
        std::thread::sleep(WINDOW);
        for (i, a) in agents.iter().enumerate() {
            per_tick[i].push((a.cpu() - before[i]).as_secs_f64() * 1e6 / ticks);
        }
    }
    println!("CPU per tick at 10 snapshots/s (µs; median of {WINDOWS} windows of {WINDOW:?}, min..max) and RSS:");
    for (a, samples) in agents.iter().zip(&mut per_tick) {
        samples.sort_by(f64::total_cmp);
        println!(
            "  {:<32} {:>7.1} µs ({:.1}..{:.1})  RSS {} KiB",
            a.label,
            samples[samples.len() / 2],
            samples[0],
            samples[samples.len() - 1],
            a.agent.rss_kib()
        );
    }
}

fn outage(broker: &mut Broker, port: &str) {
    let seconds: u64 = std::env::var("MQTT_OUTAGE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let args = [
        "--interval",
        "0.01",
        "--sinks",
        "tcp,mqtt",
        "--port",
        "0",
        "--mqtt-port",
        port,
        "--mqtt-topic",
        "bench/outage",
        "--mqtt-client-id",
        "bench-outage",
    ];
    let measured = Measured::start("outage", &args, true);
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = measured.agent.rss_kib();
    *measured.longest_gap.lock().unwrap() = Duration::ZERO;
    broker.stop();
    let mut rss = Vec::new();
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(measured.agent.rss_kib());
    }
    let gap = *measured.longest_gap.lock().unwrap();
    broker.run();
    let back = Instant::now();
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-t",
            "bench/outage/snapshot",
            "-C",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sub.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let resumed = back.elapsed();
    let _ = sub.wait();
    println!("broker stopped {seconds} s under 100 snapshots/s (tcp,mqtt, one TCP subscriber):");
    println!(
        "  RSS {rss_before} KiB before; during: min {} max {} KiB; longest TCP wait {gap:?}",
        rss.iter().min().unwrap(),
        rss.iter().max().unwrap()
    );
    println!("  first snapshot at a subscriber {resumed:?} after the broker's return");
}
