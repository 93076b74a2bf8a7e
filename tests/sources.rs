//! The sources as the real binary reports them from this host's /proc and /sys: the `raw`
//! figures that must agree with each other, unknown values, IPv6 addresses, and interface
//! names that are not UTF-8.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use common::{heavy, pocketses, run, Agent};

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
