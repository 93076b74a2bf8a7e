//! `make bench`, the agent as a whole process: CPU per tick at 100 snapshots/s with the
//! default sources and no subscribers, next to the floor of the simplest possible agent
//! measured the same way in the same run; resident memory next to that floor's; start-up
//! time and binary size. Prints numbers; asserts nothing.
//!
//! All the processes run side by side, so load from elsewhere on the machine falls on each
//! alike. CPU is each child's process CPU clock (`clock_getcpuclockid`): every thread, exited
//! ones included, in nanoseconds. utime+stime in /proc/PID/stat is the same sum in 10 ms
//! clock ticks, too coarse: a 3 s window of a 100 µs/tick process is 3 of them.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::time::{clock_gettime, clock_nanosleep, ClockId, ClockNanosleepFlags};
use nix::unistd::Pid;

const INTERVAL: Duration = Duration::from_millis(10);
const WARM_UP: Duration = Duration::from_secs(1);
/// Several windows rather than one long one, to show the spread.
const WINDOWS: usize = 10;
const WINDOW: Duration = Duration::from_secs(3);
const PROC_FILES: [&str; 3] = ["/proc/stat", "/proc/meminfo", "/proc/net/dev"];
/// About one seed snapshot of the default sources on a small host.
const LINE: usize = 400;

fn main() {
    let mut args = std::env::args().skip_while(|a| a != "--floor-loop");
    if let Some(variant) = args.nth(1) {
        floor_loop(&variant);
    }
    per_tick();
    start_up();
}

/// The simplest possible agent: on a fixed 10 ms grid, read the three files and write a
/// line. `open` opens each file every tick, as the agent does; `pread` keeps them open and
/// reads again from offset 0, which regenerates a /proc file.
fn floor_loop(variant: &str) -> ! {
    // Gone with the bench even if the bench dies without killing it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).unwrap();
    let kept_open = match variant {
        "open" => None,
        "pread" => Some(PROC_FILES.map(|path| File::open(path).unwrap())),
        _ => panic!("--floor-loop open|pread, not {variant:?}"),
    };
    let mut buf = vec![0; 1 << 20];
    let mut line = [b'x'; LINE];
    line[LINE - 1] = b'\n';
    let mut null = File::options().write(true).open("/dev/null").unwrap();
    let mut deadline = clock_gettime(ClockId::CLOCK_MONOTONIC).unwrap();
    loop {
        deadline = deadline + INTERVAL.into();
        // A late tick is not skipped: the next deadline has passed and the sleep returns at
        // once, so the count of ticks is exactly the elapsed time over the interval.
        let abs = ClockNanosleepFlags::TIMER_ABSTIME;
        clock_nanosleep(ClockId::CLOCK_MONOTONIC, abs, &deadline).unwrap();
        match &kept_open {
            None => {
                for path in PROC_FILES {
                    let mut file = File::open(path).unwrap();
                    read_whole(&mut buf, |b, _| file.read(b));
                }
            }
            Some(files) => {
                for file in files {
                    read_whole(&mut buf, |b, at| file.read_at(b, at));
                }
            }
        }
        null.write_all(&line).unwrap();
    }
}

/// Reads until end of file through `read(buf, offset)`.
fn read_whole(buf: &mut [u8], mut read: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>) {
    let mut len = 0;
    loop {
        assert!(
            len < buf.len(),
            "a /proc file larger than the floor's buffer"
        );
        match read(&mut buf[len..], len as u64).unwrap() {
            0 => return,
            n => len += n,
        }
    }
}

/// A child process measured from outside, killed on drop.
struct Process {
    label: &'static str,
    child: Child,
    clock: ClockId,
    /// The agent's log, read to its end once the agent is gone.
    log: Option<JoinHandle<Vec<String>>>,
}

impl Process {
    fn floor(label: &'static str, variant: &str) -> Process {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--floor-loop", variant])
            .stdout(Stdio::null());
        Process::spawn(label, &mut command)
    }

    fn agent(label: &'static str, args: &[&str], stdout: Stdio) -> Process {
        let mut command = common::pocketses();
        command.arg("--no-snap").args(args);
        command.stdout(stdout).stderr(Stdio::piped());
        let mut process = Process::spawn(label, &mut command);
        let log = BufReader::new(process.child.stderr.take().unwrap());
        process.log = Some(std::thread::spawn(|| {
            log.lines().map_while(Result::ok).collect()
        }));
        process
    }

    fn spawn(label: &'static str, command: &mut Command) -> Process {
        let child = command.stdin(Stdio::null()).spawn().unwrap();
        let clock = ClockId::pid_cpu_clock_id(Pid::from_raw(child.id() as i32)).unwrap();
        Process {
            label,
            child,
            clock,
            log: None,
        }
    }

    fn cpu(&self) -> Duration {
        clock_gettime(self.clock).unwrap().into()
    }

    /// Resident memory and its anonymous part (the process's own, not mapped files), MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = |key: &str| -> f64 {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        (kib("VmRSS:") / 1024.0, kib("RssAnon:") / 1024.0)
    }

    /// Stops the process; for an agent, its warnings (a skipped tick would show here).
    fn stop(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let log = self
            .log
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        log.into_iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn per_tick() {
    let at_100_hz = |label, args: &[&str]| {
        let args = [&["--interval", "0.01"], args].concat();
        Process::agent(label, &args, Stdio::null())
    };
    let tcp = ["--sinks", "tcp", "--port", "0"];
    let processes = [
        Process::floor("floor: open, read the 3 files, 400 B to /dev/null", "open"),
        Process::floor("floor: the same, files kept open, pread at 0", "pread"),
        at_100_hz("agent, tcp sink, no subscribers, seed", &tcp),
        at_100_hz(
            "agent, tcp sink, no subscribers, raw",
            &[&tcp[..], &["--format", "raw"]].concat(),
        ),
        at_100_hz(
            "agent, stdout sink to /dev/null, seed",
            &["--sinks", "stdout"],
        ),
    ];
    // The default configuration (tcp sink, a snapshot a minute), idle.
    let idle = Process::agent(
        "agent, default configuration, idle",
        &["--port", "0"],
        Stdio::null(),
    );
    let load_before = load_average();
    std::thread::sleep(WARM_UP);

    // µs per tick of each process, per window.
    let mut samples = vec![Vec::new(); processes.len()];
    let mut before: Vec<Duration> = processes.iter().map(Process::cpu).collect();
    let mut start = Instant::now();
    for _ in 0..WINDOWS {
        std::thread::sleep(WINDOW);
        let after: Vec<Duration> = processes.iter().map(Process::cpu).collect();
        let end = Instant::now();
        let ticks = (end - start).as_secs_f64() / INTERVAL.as_secs_f64();
        for (i, sample) in samples.iter_mut().enumerate() {
            sample.push((after[i] - before[i]).as_secs_f64() * 1e6 / ticks);
        }
        (before, start) = (after, end);
    }
    let rss: Vec<(f64, f64)> = processes.iter().map(Process::rss_mib).collect();
    let idle_rss = idle.rss_mib();
    let load_after = load_average();

    // Ratios window by window: the processes shared each window's load.
    let ratio = |i: usize, floor: usize| {
        let per_window = samples[i].iter().zip(&samples[floor]).map(|(a, f)| a / f);
        spread(per_window.collect()).0
    };
    println!(
        "Whole process at 100 snapshots/s, side by side: CPU per tick, median (min-max) of \
         {WINDOWS} windows of {}s after {}s warm-up; ratios: median of the windows' ratios",
        WINDOW.as_secs(),
        WARM_UP.as_secs()
    );
    println!("  load average before: {load_before}, after: {load_after}");
    println!(
        "  {:<52} {:>22} {:>7} {:>9} {:>15}",
        "", "µs/tick", "÷floor", "÷pread", "RSS MiB (anon)"
    );
    for (i, process) in processes.iter().enumerate() {
        let (median, min, max) = spread(samples[i].clone());
        println!(
            "  {:<52} {:>22} {:>6.2}x {:>8.2}x {:>8.2} ({:.2})",
            process.label,
            format!("{median:.1} ({min:.1}-{max:.1})"),
            ratio(i, 0),
            ratio(i, 1),
            rss[i].0,
            rss[i].1
        );
    }
    println!(
        "Idle RSS, default configuration (tcp sink, interval 60 s): {:.2} MiB (anon {:.2}); \
         floor loop: {:.2} MiB (anon {:.2})",
        idle_rss.0, idle_rss.1, rss[0].0, rss[0].1
    );
    // Ticks are counted from the clock, so a skipped tick makes that agent's figure low.
    for process in processes.into_iter().chain([idle]) {
        let label = process.label;
        for warning in process.stop() {
            println!("  {label} warned: {warning}");
        }
    }
}

/// Median, min and max.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Spawn to first snapshot with the stdout sink, then the RSS after idling a while.
fn start_up() {
    let start = Instant::now();
    let args = ["--sinks", "stdout", "--interval", "60"];
    let mut agent = Process::agent("agent, stdout sink, idle", &args, Stdio::piped());
    let mut first = String::new();
    BufReader::new(agent.child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let to_first = start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (rss, anon) = agent.rss_mib();
    agent.stop();
    println!("agent (release build, stdout sink, interval 60 s):");
    println!(
        "  start to first snapshot: {:.1} ms (includes the {} ms CPU warm-up)",
        to_first.as_secs_f64() * 1e3,
        pocketses::pipeline::warm_up(Duration::from_secs(60)).as_millis()
    );
    println!("  idle RSS: {rss:.2} MiB (anon {anon:.2})");
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_pocketses"))
        .unwrap()
        .len();
    println!(
        "  binary size (stripped release profile): {:.2} MiB",
        size as f64 / (1 << 20) as f64
    );
}
