//! The sources as the real binary reports them from this host's /proc and /sys: the `raw`
//! figures that must agree with each other, unknown values, IPv6 addresses, and interface
//! names that are not UTF-8.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use common::{heavy, pocketses, run, wait_for, Agent, Scratch, Subscriber};

/// `--once` with `args`: the snapshot, after checking that the agent succeeded quietly.
fn once(command: &mut Command, args: &[&str]) -> Value {
    let out = run(command.args(["--no-snap", "--once"]).args(args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("one snapshot")
}

#[test]
fn raw_utilization_agrees_with_the_mode_shares_in_every_snapshot() {
    let _heavy = heavy();
    // 100 snapshots a second: short spans, where per-CPU and all-CPU ticks disagree most.
    let agent = Agent::start(&[
        "--sinks",
        "stdout",
        "--sources",
        "cpu",
        "--format",
        "raw",
        "--interval",
        "0.01",
    ]);
    for _ in 0..100 {
        let s = agent.snapshot_where("a cpu snapshot", |s| s.get("cpu").is_some());
        let cpu = &s["cpu"];
        let mode = |m: &str| cpu["mode_percent"][m].as_f64().unwrap();
        let utilization = cpu["utilization_percent"].as_f64().unwrap();
        let shares: f64 = [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ]
        .into_iter()
        .map(mode)
        .sum();
        if shares == 0.0 {
            // No tick in this span: every share and the utilization read 0.
            assert_eq!(utilization, 0.0, "{cpu}");
            continue;
        }
        assert!(
            (100.0 - mode("idle") - mode("iowait") - utilization).abs() < 1e-6,
            "{cpu}"
        );
    }
}

#[test]
fn raw_frequency_is_null_where_unknown_and_seed_keeps_zero() {
    let cpufreq = Path::new("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq").exists();
    let raw = once(&mut pocketses(), &["--sources", "cpu", "--format", "raw"]);
    let seed = once(&mut pocketses(), &["--sources", "cpu"]);
    for (raw_key, seed_key) in [("frequency_max_mhz", "max"), ("frequency_min_mhz", "min")] {
        let (raw_value, seed_value) = (&raw["cpu"][raw_key], &seed["cpu"]["frequency"][seed_key]);
        match cpufreq {
            true => assert!(raw_value.as_f64().is_some_and(|v| v > 0.0), "{raw}"),
            false => {
                assert_eq!(raw_value, &Value::Null, "{raw}");
                assert_eq!(seed_value, &json!(0.0), "{seed}");
            }
        }
    }
}

/// `/proc/net/if_inet6` as interface → compressed addresses, read here independently.
fn ipv6_addresses() -> Value {
    let text = std::fs::read("/proc/net/if_inet6").unwrap_or_default();
    let mut out = serde_json::Map::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bits = u128::from_str_radix(fields[0], 16).unwrap();
        let address = std::net::Ipv6Addr::from(bits).to_string();
        let entry = out.entry(fields[5]).or_insert(json!([]));
        entry.as_array_mut().unwrap().push(json!(address));
    }
    Value::Object(out)
}

#[test]
fn raw_lists_ipv6_addresses_and_seed_stays_ipv4() {
    let raw = once(&mut pocketses(), &["--sources", "net", "--format", "raw"]);
    let mut listed = raw["network"]["addresses_v6"].clone();
    // Order within the file is the kernel's hash order: compare sorted.
    let mut expected = ipv6_addresses();
    for addresses in [&mut listed, &mut expected] {
        for list in addresses.as_object_mut().expect("an object").values_mut() {
            list.as_array_mut()
                .unwrap()
                .sort_by_key(ToString::to_string);
        }
    }
    assert_eq!(listed, expected, "{raw}");

    let seed = once(&mut pocketses(), &["--sources", "net"]);
    let network = seed["network"].as_object().unwrap();
    assert_eq!(network.keys().collect::<Vec<_>>(), ["traffic", "addresses"]);
    for address in network["addresses"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|a| a.as_array().unwrap())
    {
        let text = address.as_str().unwrap();
        assert!(text.parse::<std::net::Ipv4Addr>().is_ok(), "{seed}");
    }
}

/// Why a private network namespace with a veth pair cannot be made here, if it cannot.
fn no_network_namespace() -> Option<String> {
    let made = Command::new("unshare")
        .args([
            "-n", "ip", "link", "add", "name", "t0", "type", "veth", "peer", "name", "t1",
        ])
        .output();
    match made {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Some(format!("unshare or ip: {e}")),
    }
}

#[test]
fn an_interface_name_that_is_not_utf8_keeps_the_network_section() {
    if let Some(why) = no_network_namespace() {
        common::skip(&format!(
            "needs root, unshare and ip to make a veth pair: {why}"
        ));
        return;
    }
    // In a network namespace of its own, so the host's interfaces are untouched.
    let script = r#"ip link add name "$1" type veth peer name v1 && ip link set lo up &&
        ip addr add 10.9.9.9/24 dev "$1" && ip -6 addr add fd00::9/64 dev "$1" &&
        shift && exec "$0" "$@""#;
    let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
    let snapshot = once(
        Command::new("unshare")
            .args(["-n", "sh", "-c", script, env!("CARGO_BIN_EXE_pocketses")])
            .arg(name),
        &["--format", "raw", "--sources", "net"],
    );
    let network = &snapshot["network"];
    let shown = "bad\u{fffd}name";
    assert!(
        network["interfaces"][shown]["tx_bytes"].is_u64(),
        "{snapshot}"
    );
    assert!(network["interfaces"]["v1"].is_object(), "{snapshot}");
    assert_eq!(
        network["addresses"][shown],
        json!(["10.9.9.9"]),
        "{snapshot}"
    );
    assert_eq!(
        network["addresses_v6"][shown],
        json!(["fd00::9"]),
        "{snapshot}"
    );
}

#[test]
fn under_host_root_every_figure_comes_from_the_tree() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/node_exporter");
    let s = once(&mut pocketses(), &["--format", "raw", "--host-root", root]);
    // proc/meminfo: MemTotal 3742148 kB, SwapTotal 4194300 kB.
    assert_eq!(s["memory"]["total_bytes"], 3_742_148u64 * 1024, "{s}");
    assert_eq!(s["memory"]["swap_total_bytes"], 4_194_300u64 * 1024, "{s}");
    // proc/stat: cpu0 to cpu7; sys: cpu0's scaling_max_freq 3700000 kHz among the others.
    assert_eq!(s["cpu"]["count"], 8, "{s}");
    assert_eq!(s["cpu"]["per_cpu"][7]["id"], 7, "{s}");
    // proc/net/dev: eth0's counters, and an interface this host does not have.
    let eth0 = &s["network"]["interfaces"]["eth0"];
    assert_eq!(eth0["rx_bytes"], 68_210_035_552u64, "{s}");
    assert_eq!(eth0["tx_packets"], 43_451_486u64, "{s}");
    assert!(s["network"]["interfaces"].get("lxcbr0").is_some(), "{s}");
}

/// `cat path`'s output: the file as a standard tool shows it.
fn cat(path: &str) -> String {
    let out = run(Command::new("cat").arg(path));
    assert!(out.status.success(), "cat {path}");
    String::from_utf8(out.stdout).unwrap()
}

/// A command's output, trimmed.
fn tool(program: &str, args: &[&str]) -> String {
    let out = run(Command::new(program).args(args));
    assert!(out.status.success(), "{program} {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The numbers of `line` after `key=` or as whitespace-separated fields, for comparisons.
fn numbers(text: &str) -> Vec<f64> {
    text.split(|c: char| c.is_ascii_whitespace() || c == '=' || c == '/' || c == ',')
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn load_pressure_and_host_match_the_standard_tools_on_this_host() {
    let psi = Path::new("/proc/pressure/cpu").exists();
    let pressure =
        || ["cpu", "memory", "io"].map(|r| psi.then(|| cat(&format!("/proc/pressure/{r}"))));
    let pressure_before = pressure();
    let before = (
        cat("/proc/loadavg"),
        cat("/proc/uptime"),
        tool("uptime", &[]),
    );
    let s = once(
        &mut pocketses(),
        &["--format", "raw", "--sources", "load,pressure,host"],
    );
    let after = (
        cat("/proc/loadavg"),
        cat("/proc/uptime"),
        tool("uptime", &[]),
    );
    let pressure_after = pressure();
    let load = &s["load"];
    // The kernel updates the averages every 5 s: the agent saw what cat saw before or after,
    // and what uptime(1) prints with two decimals.
    let ours = [&load["load1"], &load["load5"], &load["load15"]].map(|v| v.as_f64().unwrap());
    let seen = |loadavg: &str| numbers(loadavg)[..3].to_vec();
    assert!(
        ours[..] == seen(&before.0)[..] || ours[..] == seen(&after.0)[..],
        "{s} vs {before:?} {after:?}"
    );
    let from_uptime = |line: &str| numbers(line.rsplit("average:").next().unwrap());
    assert!(
        ours[..] == from_uptime(&before.2)[..] || ours[..] == from_uptime(&after.2)[..],
        "{s} vs {before:?} {after:?}"
    );
    let up = load["uptime_seconds"].as_f64().unwrap();
    assert!(
        numbers(&before.1)[0] <= up && up <= numbers(&after.1)[0],
        "{s}"
    );
    let btime = cat("/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("btime ").map(|t| t.parse::<u64>().unwrap()))
        .unwrap();
    assert_eq!(load["boot_time_seconds"], btime, "{s}");
    assert_eq!(s["host"]["boot_time_seconds"], btime, "{s}");
    assert!(load["threads"].as_u64().unwrap() >= load["procs_running"].as_u64().unwrap());

    let host = &s["host"];
    assert_eq!(host["hostname"], tool("hostname", &[]), "{s}");
    assert_eq!(host["kernel"], tool("uname", &["-r"]), "{s}");
    assert_eq!(host["architecture"], tool("uname", &["-m"]), "{s}");
    // os-release as a shell sources it, which is what it is written for.
    let pretty = tool("sh", &["-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]);
    assert_eq!(host["os_pretty_name"], pretty, "{s}");

    if !psi {
        assert!(s.get("pressure").is_none(), "{s}");
        return;
    }
    // Stall totals only grow: each lies between what cat printed before and after.
    for (r, resource) in ["cpu", "memory", "io"].into_iter().enumerate() {
        let (first, last) = (pressure_before[r].as_deref(), pressure_after[r].as_deref());
        let (first, last, agent) = (first.unwrap(), last.unwrap(), &s["pressure"][resource]);
        for (i, line) in ["some", "full"].into_iter().enumerate() {
            let Some(ours) = agent[line]["total_seconds"].as_f64() else {
                continue;
            };
            let total = |text: &str| numbers(text.lines().nth(i).unwrap())[3] / 1e6;
            assert!(
                total(first) <= ours && ours <= total(last),
                "{resource} {line}: {ours} not within {first:?} {last:?}"
            );
        }
    }
}

#[test]
fn under_host_root_load_pressure_and_host_come_from_the_tree() {
    let tree = |case: &str| format!("{}/tests/fixtures/{case}", env!("CARGO_MANIFEST_DIR"));
    let raw = |case: &str, source: &str| {
        let root = tree(case);
        once(
            &mut pocketses(),
            &["--format", "raw", "--sources", source, "--host-root", &root],
        )
    };
    let s = raw("load/vm", "load");
    assert_eq!(s["load"]["load1"], 2.47, "{s}");
    assert_eq!(s["load"]["threads"], 131, "{s}");
    let s = raw("pressure/vm", "psi");
    assert_eq!(s["pressure"]["cpu"]["some"]["avg10_percent"], 21.56, "{s}");
    // The snap's view: the host's os-release under snapd's hostfs, not the base snap's.
    let s = raw("host/snap", "host");
    assert_eq!(s["host"]["os_id"], "fedora", "{s}");
    let s = raw("host/vm", "host");
    assert_eq!(s["host"]["kernel"], "6.18.44-fc-v669", "{s}");
    assert_eq!(s["host"]["cpu_model"], "Intel(R) Xeon(R) Processor", "{s}");
}

#[test]
fn a_kernel_without_psi_is_told_once_and_the_section_is_absent() {
    let scratch = common::Scratch::new();
    let proc = scratch.path("proc");
    std::fs::create_dir_all(&proc).unwrap();
    std::fs::write(proc.join("loadavg"), "0.10 0.20 0.30 1/10 5\n").unwrap();
    let root = scratch.dir().to_str().unwrap();
    let agent = Agent::start(&[
        "--sinks",
        "stdout",
        "--sources",
        "pressure,load",
        "--interval",
        "0.1",
        "--host-root",
        root,
    ]);
    // Longer than the 10 s between repeats of an ordinary failure's warning.
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(10_500) {
        let s = agent.snapshot_where("a load snapshot", |s| s.get("load").is_some());
        assert!(s.get("pressure").is_none(), "{s}");
    }
    let told: Vec<_> = (agent.stderr.snapshot().into_iter())
        .filter(|l| l.contains("left out"))
        .collect();
    assert_eq!(told.len(), 1, "{told:#?}");
    assert!(
        told[0].contains("no pressure stall information") && told[0].contains("CONFIG_PSI"),
        "{told:#?}"
    );
}

/// The agent with `args` run once under `--host-root` `tests/fixtures/temperature/<case>`:
/// its snapshot and its log.
fn temperature_once(case: &str) -> (Value, String) {
    let root = format!(
        "{}/tests/fixtures/temperature/{case}",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run(pocketses().args([
        "--no-snap",
        "--once",
        "--sources",
        "temp",
        "--format",
        "raw",
        "--host-root",
        &root,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (
        serde_json::from_slice(&out.stdout).expect("one snapshot"),
        stderr,
    )
}

#[test]
fn temperature_reads_hwmon_chips_under_host_root_and_skips_a_failed_sensor() {
    let (s, log) = temperature_once("hwmon");
    let sensors = s["temperature"].as_array().expect("a list");
    let listed: Vec<String> = (sensors.iter())
        .map(|t| format!("{} {} {}", t["device"], t["sensor"], t["celsius"]))
        .collect();
    assert_eq!(
        listed,
        [
            r#""hwmon0" "temp1" 27.8"#,
            r#""hwmon1" "temp1" 45.0"#,
            r#""hwmon1" "temp2" 43.0"#,
            r#""hwmon1" "temp10" 41.0"#,
            r#""hwmon2" "temp1" 38.85"#,
            r#""hwmon2" "temp2" -4.5"#,
        ],
        "{s}"
    );
    assert_eq!(
        sensors[1],
        json!({"device": "hwmon1", "chip": "coretemp", "sensor": "temp1", "label": "Package id 0",
               "celsius": 45.0, "high_celsius": 80.0, "critical_celsius": 100.0})
    );
    // The sensor that cannot be read is named in one warning; the others are published.
    assert!(
        log.contains("sensors left out") && log.contains("hwmon1/temp3_input"),
        "{log}"
    );
}

#[test]
fn temperature_falls_back_to_thermal_zones_and_no_sensors_is_an_empty_list() {
    let (s, log) = temperature_once("thermal");
    assert_eq!(
        s["temperature"],
        json!([
            {"device": "thermal_zone0", "chip": "acpitz", "sensor": "temp", "label": "",
             "celsius": 27.8, "high_celsius": 90.0, "critical_celsius": 105.0},
            {"device": "thermal_zone1", "chip": "x86_pkg_temp", "sensor": "temp", "label": "",
             "celsius": 52.0, "critical_celsius": 100.0},
        ]),
        "{log}"
    );
    let (s, log) = temperature_once("none");
    assert_eq!(s["temperature"], json!([]), "{log}");
    assert!(log.is_empty(), "{log}");
}

/// The readable `temp*_input` files of `/sys/class/hwmon` on this host, else its readable
/// thermal zones: what the source should list here, counted independently.
fn live_sensor_count() -> usize {
    let readable = |class: &str, wanted: fn(&str) -> bool| {
        let devices = std::fs::read_dir(class).into_iter().flatten().flatten();
        (devices.flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten()))
            .filter(|f| wanted(&f.file_name().to_string_lossy()))
            .filter(|f| std::fs::read_to_string(f.path()).is_ok())
            .count()
    };
    match readable("/sys/class/hwmon", |n| {
        n.starts_with("temp") && n.ends_with("_input")
    }) {
        0 => readable("/sys/class/thermal", |n| n == "temp"),
        n => n,
    }
}

#[test]
fn temperature_on_this_host_lists_every_readable_sensor() {
    let s = once(&mut pocketses(), &["--sources", "temp", "--format", "raw"]);
    let sensors = s["temperature"]
        .as_array()
        .expect("a list, empty without sensors");
    assert_eq!(sensors.len(), live_sensor_count(), "{s}");
    let seed = once(&mut pocketses(), &["--sources", "temp"]);
    assert_eq!(
        seed["temperature"].as_array().map(Vec::len),
        Some(sensors.len())
    );
}

/// `Threads` and `VmRSS` (KiB) of process `pid`, and its open descriptors.
fn process_figures(pid: i32) -> (u64, u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (field("Threads:"), field("VmRSS:"), fds)
}

#[test]
fn agent_reports_its_own_rss_descriptors_and_the_subscribers_connected() {
    let agent = Agent::start(&[
        "--sources",
        "cpu,agent",
        "--format",
        "raw",
        "--interval",
        "0.1",
        "--port",
        "0",
        "--sinks",
        "tcp,stdout",
    ]);
    // Before anyone subscribes, stdout shows the tcp sink with none.
    agent.snapshot_where("a tcp sink with 0 subscribers", |s| {
        s["agent"]["sinks"]["tcp"]["subscribers"] == 0
    });
    let mut first = Subscriber::connect(agent.address());
    let section = |sub: &mut Subscriber| -> Value {
        let s: Value = serde_json::from_str(&sub.snapshot()).unwrap();
        s["agent"].clone()
    };
    let with_subscribers = |sub: &mut Subscriber, n: u64| -> Value {
        wait_for(&format!("{n} subscribers in the agent section"), || {
            let a = section(sub);
            (a["sinks"]["tcp"]["subscribers"] == n).then_some(a)
        })
    };
    let a = with_subscribers(&mut first, 1);
    let (threads, rss_kib, fds) = process_figures(agent.pid());
    // The agent idles between snapshots: what it saw of itself is what /proc shows now,
    // within what one tick allocates.
    let rss = a["rss_bytes"].as_u64().unwrap();
    let status_rss = rss_kib * 1024;
    assert!(
        rss.abs_diff(status_rss) <= (status_rss / 4).max(2 << 20),
        "{a} vs VmRSS {rss_kib} KiB"
    );
    assert!(
        a["threads"].as_u64().unwrap().abs_diff(threads) <= 2,
        "{a} vs {threads} threads"
    );
    assert!(
        a["open_fds"].as_u64().unwrap().abs_diff(fds as u64) <= 2,
        "{a} vs {fds} fds"
    );
    assert!(a["cpu_seconds_total"].as_f64().unwrap() >= 0.0, "{a}");
    let cpu = &a["sources"]["cpu"];
    assert!(cpu["collections_total"].as_u64() > Some(0), "{a}");
    assert!(cpu["last_collect_seconds"].as_f64() > Some(0.0), "{a}");
    assert_eq!(a["sinks"]["tcp"]["dropped_snapshots_total"], 0, "{a}");
    // A second subscriber is counted, and no longer once it has gone.
    let second = Subscriber::connect(agent.address());
    with_subscribers(&mut first, 2);
    drop(second);
    with_subscribers(&mut first, 1);
}

#[test]
fn agent_counts_the_snapshots_a_sink_drops() {
    let _heavy = heavy();
    // Nobody reads the agent's stdout: once the pipe is full the stdout sink drops.
    let mut child = Agent::command(&[
        "--sources",
        "agent",
        "--sinks",
        "stdout,tcp",
        "--format",
        "raw",
        "--interval",
        "0.01",
        "--port",
        "0",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take();
    let mut agent = Agent::from_child(child);
    let mut sub = Subscriber::connect(agent.address());
    let dropped = wait_for("stdout's dropped snapshots in the agent section", || {
        let s: Value = serde_json::from_str(&sub.snapshot()).unwrap();
        let n = s["agent"]["sinks"]["stdout"]["dropped_snapshots_total"].as_u64()?;
        (n > 0).then_some(n)
    });
    assert!(dropped > 0);
    assert!(agent.is_running());
    drop(stdout);
}

#[test]
fn temperature_denied_is_left_out_naming_the_interface_not_an_empty_list() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let class = scratch.path("sys/class/hwmon");
    std::fs::create_dir_all(class.join("hwmon0")).unwrap();
    std::fs::write(class.join("hwmon0/temp1_input"), "41000\n").unwrap();
    let chmod = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(scratch.dir(), 0o755);
    chmod(&class, 0o000);
    // Root reads past file modes: the agent runs as nobody, denied as an unconnected
    // interface denies it in the snap.
    let mut command = pocketses();
    if nix::unistd::geteuid().is_root() {
        if Command::new("setpriv").arg("--version").output().is_err() {
            chmod(&class, 0o755);
            return common::skip("as root, needs setpriv to run the agent as nobody");
        }
        command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        command.arg(env!("CARGO_BIN_EXE_pocketses"));
    }
    let out = run(command
        .args(["--no-snap", "--once", "--sources", "temp", "--host-root"])
        .arg(scratch.dir()));
    chmod(&class, 0o755);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s.get("temperature").is_none(), "{s}");
    assert!(
        stderr.contains("Permission denied")
            && stderr.contains("snap connect pocketses:hardware-observe"),
        "{stderr}"
    );
}

/// `df -B1 --output=target,size,avail,used` as mount point → (size, avail, used).
fn df() -> std::collections::HashMap<String, [u64; 3]> {
    let out = run(Command::new("df").args(["-B1", "--output=target,size,avail,used"]));
    let text = String::from_utf8_lossy(&out.stdout);
    (text.lines().skip(1))
        .filter_map(|line| {
            // The mount point may hold spaces: the numbers are the last three fields.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (target, numbers) = fields.split_at(fields.len().checked_sub(3)?);
            let n = |i: usize| numbers[i].parse().ok();
            Some((target.join(" "), [n(0)?, n(1)?, n(2)?]))
        })
        .collect()
}

/// The counters of `/proc/diskstats`, by device: reads, sectors read, writes, sectors written.
fn diskstats() -> std::collections::HashMap<String, [u64; 4]> {
    let text = std::fs::read_to_string("/proc/diskstats").unwrap();
    (text.lines())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            (f[2].to_string(), [n(3), n(5), n(7), n(9)])
        })
        .collect()
}

#[test]
fn disk_and_filesystem_agree_with_proc_diskstats_and_df() {
    let before = diskstats();
    let s = once(
        &mut pocketses(),
        &["--format", "raw", "--sources", "disk,fs"],
    );
    let after = diskstats();
    let disks = s["disk"].as_object().expect("a disk section");
    for (name, device) in disks {
        let keys = [
            "reads_completed",
            "read_bytes",
            "writes_completed",
            "written_bytes",
        ];
        for (i, key) in keys.into_iter().enumerate() {
            let sectors = if key.ends_with("bytes") { 512 } else { 1 };
            let value = device[key].as_u64().unwrap();
            assert!(
                before[name][i] * sectors <= value && value <= after[name][i] * sectors,
                "{name} {key}: {value} not between /proc/diskstats before and after: {s}"
            );
        }
    }
    // Every whole disk is there; no loop or RAM device and no partition (which the kernel
    // marks in sysfs) of the disks node_exporter's filter names.
    for name in before.keys() {
        let virtual_device = ["loop", "ram", "zram", "fd"]
            .iter()
            .any(|p| name.starts_with(p));
        let partition = Path::new(&format!("/sys/class/block/{name}/partition")).exists()
            && ["sd", "hd", "vd", "xvd", "nvme"]
                .iter()
                .any(|p| name.starts_with(p));
        let expected = !(virtual_device || partition);
        assert_eq!(disks.contains_key(name), expected, "{name}: {s}");
    }

    let df = df();
    let mounts = s["filesystem"].as_object().expect("a filesystem section");
    assert!(mounts.contains_key("/"), "{s}");
    for (point, mount) in mounts {
        let [size, avail, used] = df[point];
        assert_eq!(mount["size_bytes"], size, "{point}: df says {size}: {s}");
        // Space changes between the two reads (other tests write files): within 1% of size.
        let slack = size / 100 + (1 << 20);
        for (key, theirs) in [("available_bytes", avail), ("used_bytes", used)] {
            let ours = mount[key].as_u64().unwrap();
            assert!(
                ours.abs_diff(theirs) <= slack,
                "{point} {key}: {ours} vs df {theirs}"
            );
        }
    }
    // What df shows that we leave out is what node_exporter's default filters leave out.
    for point in df.keys().filter(|p| !mounts.contains_key(*p)) {
        let pseudo = [
            "/dev",
            "/proc",
            "/sys",
            "/run/credentials/",
            "/snap/",
            "/var/lib/docker/",
        ]
        .iter()
        .any(|prefix| point.starts_with(prefix));
        assert!(
            pseudo,
            "df lists {point}, the filesystem section does not: {s}"
        );
    }
}

#[test]
fn under_host_root_disk_and_filesystem_read_the_tree() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let disk = once(
        &mut pocketses(),
        &[
            "--format",
            "raw",
            "--sources",
            "disk",
            "--host-root",
            &format!("{fixtures}/disk/awkward"),
        ],
    );
    let names: Vec<&String> = disk["disk"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["sda", "nvme0n1", "dm-0"], "{disk}");
    assert_eq!(disk["disk"]["nvme0n1"]["io_in_progress"], 3, "{disk}");
    let all = once(
        &mut pocketses(),
        &[
            "--format",
            "raw",
            "--sources",
            "disk",
            "--host-root",
            &format!("{fixtures}/disk/awkward"),
            "--disk-exclude",
            "",
        ],
    );
    assert_eq!(all["disk"].as_object().unwrap().len(), 5, "{all}");

    let root = format!("{fixtures}/filesystem/awkward");
    let fs = once(&mut pocketses(), &["--sources", "fs", "--host-root", &root]);
    let points: Vec<&String> = fs["filesystem"].as_object().unwrap().keys().collect();
    assert_eq!(
        points,
        [
            "/",
            "/mnt/with space",
            "/mnt/tab\there",
            "/data",
            "/srv/back\\slash"
        ],
        "{fs}"
    );
    assert_eq!(fs["filesystem"]["/data"]["type"], "nfs4", "{fs}");
    let everything = once(
        &mut pocketses(),
        &[
            "--sources",
            "fs",
            "--host-root",
            &root,
            "--filesystem-skip-types",
            "",
            "--filesystem-skip-mounts",
            "/mnt/*",
        ],
    );
    let points: Vec<&String> = everything["filesystem"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        points,
        [
            "/",
            "/proc",
            "/snap/core24/1055",
            "/data",
            "/srv/back\\slash"
        ],
        "{everything}"
    );
}

/// Threads and open descriptors of process `pid`.
fn threads_and_fds(pid: i32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (threads.trim().parse().unwrap(), fds)
}

/// Why a FUSE mount that never answers cannot be made here, if it cannot.
fn no_hanging_mount() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("exec 3<>/dev/fuse && mount -i -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 probe /mnt")
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Some(format!("unshare: {e}")),
    }
}

/// Runs the agent (`--interval 0.4`, filesystem and disk) in mount and PID namespaces of its
/// own with a FUSE mount whose server never answers and a tmpfs mounted after it, for
/// `snapshots` snapshots: the hung mount is stale in each, the others are reported, the
/// schedule holds, threads and descriptors stay flat, and SIGTERM still ends it.
fn hung_mount_run(snapshots: usize) {
    if let Some(why) = no_hanging_mount() {
        common::skip(&format!(
            "needs root, unshare and /dev/fuse to hang a mount: {why}"
        ));
        return;
    }
    let scratch = common::Scratch::new();
    let mount_point = scratch.path("hung");
    std::fs::create_dir(&mount_point).unwrap();
    std::fs::create_dir(scratch.path("hung-after")).unwrap();
    // The agent itself holds the FUSE device (fd 3) and never reads it: the kernel's INIT
    // goes unanswered, so every statvfs on the mount waits, as on a dead NFS server. In a
    // PID namespace the agent is PID 1, so /proc/1/mountinfo is its own namespace's.
    let script = r#"exec 3<>/dev/fuse && mount -i -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 pocketses-hang "$1" &&
        mount -t tmpfs pocketses-after "$1-after" && shift && exec "$0" "$@""#;
    let mut command = Command::new("unshare");
    command
        .args([
            "-m",
            "--propagation",
            "private",
            "--fork",
            "--pid",
            "--mount-proc",
            "--kill-child",
        ])
        .args(["sh", "-c", script, env!("CARGO_BIN_EXE_pocketses")])
        .arg(&mount_point)
        .args([
            "--no-snap",
            "--sinks",
            "stdout",
            "--format",
            "raw",
            "--sources",
            "filesystem,disk",
            "--interval",
            "0.4",
        ])
        .env("RUST_LOG", "info");
    let mut agent = Agent::spawn(&mut command);
    let hung = mount_point.to_str().unwrap().to_string();
    let mut at = Vec::new();
    let mut counts = Vec::new();
    let mut mounts = 0;
    let pid = wait_for_child(agent.pid());
    for i in 0..snapshots {
        let s = agent.snapshot_where("a filesystem snapshot", |s| s.get("filesystem").is_some());
        let fs = &s["filesystem"];
        assert_eq!(fs[&hung]["stale"], true, "{s}");
        // A mount after the hung one in the table is measured all the same.
        assert!(fs[format!("{hung}-after")]["size_bytes"].is_u64(), "{s}");
        assert!(fs["/"]["size_bytes"].as_u64().is_some_and(|n| n > 0), "{s}");
        assert!(s["disk"].is_object(), "{s}");
        mounts = fs.as_object().unwrap().len();
        at.push(common::timestamp(&s.to_string()));
        if i == 5 || i == snapshots - 1 {
            counts.push(threads_and_fds(pid));
        }
    }
    let log = agent.stderr.snapshot();
    assert!(
        !log.iter()
            .any(|l| l.contains("skipped") || l.contains("left out")),
        "{log:#?}"
    );
    // Flat: one blocking thread stays stuck in the hung call, and none is added per tick.
    // Descriptors are equal; threads may differ by the mounts of one tick: on a loaded
    // machine a slow tick gives each mount a blocking thread, which tokio retires after 10 s.
    let (start, end) = (counts[0], counts[1]);
    assert_eq!(
        start.1, end.1,
        "descriptors after 5 and {snapshots} snapshots"
    );
    assert!(
        end.0 <= start.0 + mounts,
        "threads after 5 and {snapshots} snapshots: {start:?} then {end:?}"
    );
    let started = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(agent.wait_exit().success());
    eprintln!(
        "{} snapshots: threads, fds {:?}; exit {:?} after SIGTERM; first {} last {}",
        snapshots,
        counts,
        started.elapsed(),
        at[0],
        at[at.len() - 1]
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

/// The agent's PID (as this test sees it) under the `unshare --fork` with PID `parent`.
fn wait_for_child(parent: i32) -> i32 {
    common::wait_for("the agent under unshare", || {
        let children =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
        let pid: i32 = children.split_whitespace().next()?.parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        exe.ends_with("pocketses").then_some(pid)
    })
}

#[test]
fn a_hung_mount_is_stale_and_never_stalls_the_snapshot() {
    hung_mount_run(20);
}

/// The 10-minute version: `cargo test --test sources -- --ignored hung_mount_soak` (1500
/// snapshots at 0.4 s; `POCKETSES_SOAK_SNAPSHOTS` sets another count).
#[test]
#[ignore]
fn hung_mount_soak() {
    let n = std::env::var("POCKETSES_SOAK_SNAPSHOTS").map_or(1500, |n| n.parse().unwrap());
    hung_mount_run(n);
}

#[test]
fn a_denied_read_names_the_interface_to_connect_once() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        common::skip("needs root to run the agent as another user");
        return;
    }
    // As a confined snap without its interfaces sees them: the files are there, and denied.
    let scratch = common::Scratch::new();
    std::fs::create_dir_all(scratch.path("proc/1")).unwrap();
    for file in ["proc/diskstats", "proc/1/mountinfo"] {
        std::fs::write(scratch.path(file), "").unwrap();
        std::fs::set_permissions(scratch.path(file), std::fs::Permissions::from_mode(0o000))
            .unwrap();
    }
    let root = scratch.dir().to_str().unwrap();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_pocketses"))
        .args([
            "--no-snap",
            "--sinks",
            "stdout",
            "--sources",
            "disk,fs",
            "--interval",
            "0.05",
        ])
        .args(["--host-root", root])
        .env("RUST_LOG", "info");
    let agent = Agent::spawn(&mut command);
    for _ in 0..10 {
        let s = agent.snapshot_where("a snapshot", |s| s.get("timestamp").is_some());
        assert!(
            s.get("disk").is_none() && s.get("filesystem").is_none(),
            "{s}"
        );
    }
    let log = agent.stderr.snapshot();
    for hint in [
        "connect pocketses:system-observe",
        "connect pocketses:mount-observe",
    ] {
        let times = log.iter().filter(|l| l.contains(hint)).count();
        assert_eq!(times, 1, "{hint}: {log:#?}");
    }
}
