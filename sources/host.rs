//! `host`: hostname, OS, kernel, architecture, CPU model and boot time. Read once when the
//! source is built (at start, and when a reload builds it again); every tick hands out the
//! same section, which costs an `Arc` clone.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::load::{parse_stat_tasks, ser_opt_time};
use crate::hostfs::HostFs;
use crate::model::{Family, Format, Kind, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::Declared;

inventory::submit! {
    SourcePlugin {
        name: "host",
        aliases: &[],
        description: "hostname, OS name and version, kernel, architecture, CPU model, boot time (read once)",
        on_by_default: None,
        settings: Declared::NONE,
        build: |ctx| Ok(Box::new(Host(Arc::new(HostInfo::read(&ctx.host))))),
    }
}

/// Where the OS is described, in order of preference, each under the host root. Inside the
/// snap `/etc/os-release` is the base snap's (core24): the host's own is under snapd's
/// `hostfs` (readable with `system-observe`). os-release(5): `/usr/lib/os-release` is the
/// fallback when `/etc/os-release` is missing.
const OS_RELEASE: [&str; 4] = [
    "/var/lib/snapd/hostfs/etc/os-release",
    "/var/lib/snapd/hostfs/usr/lib/os-release",
    "/etc/os-release",
    "/usr/lib/os-release",
];

/// The fields of os-release(5) this section reports; each `None` where the file lacks it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    pub name: Option<String>,
    pub version: Option<String>,
    pub version_id: Option<String>,
    pub id: Option<String>,
    pub pretty_name: Option<String>,
}

/// Parses os-release(5): `KEY=value` lines, the value bare or in single or double quotes,
/// backslash escapes inside double quotes; comments and other lines are skipped.
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let slot = match key {
            "NAME" => &mut os.name,
            "VERSION" => &mut os.version,
            "VERSION_ID" => &mut os.version_id,
            "ID" => &mut os.id,
            "PRETTY_NAME" => &mut os.pretty_name,
            _ => continue,
        };
        *slot = Some(unquote(value)).filter(|v| !v.is_empty());
    }
    os
}

fn unquote(value: &str) -> String {
    let quoted = |q: char| value.strip_prefix(q)?.strip_suffix(q);
    if let Some(inner) = quoted('\'') {
        return inner.to_string();
    }
    let Some(inner) = quoted('"') else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The CPU model of `/proc/cpuinfo`'s first processor: `model name` (x86, and ARM since
/// Linux 3.8), `Processor` (older ARM), `cpu model` (MIPS) or `cpu` (POWER).
pub fn parse_cpu_model(text: &str) -> Option<String> {
    const KEYS: [&str; 4] = ["model name", "Processor", "cpu model", "cpu"];
    let mut best: Option<(usize, &str)> = None;
    // The first block only: a blank line ends it.
    for line in text.lines().take_while(|l| !l.trim().is_empty()) {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some(rank) = KEYS.iter().position(|k| *k == key) {
            if !value.is_empty() && best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, value));
            }
        }
    }
    best.map(|(_, v)| v.to_string())
}

/// What the section reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    pub os: OsRelease,
    pub kernel: String,
    pub architecture: String,
    pub cpu_model: Option<String>,
    /// Seconds since the Unix epoch.
    pub boot_time: Option<u64>,
}

impl HostInfo {
    /// Reads the host under `host`'s root. The hostname and kernel release fall back to the
    /// agent's own `uname` where `/proc/sys/kernel` is not readable; the architecture is
    /// always the agent's (no file under the root says it).
    pub fn read(host: &HostFs) -> HostInfo {
        let uname = nix::sys::utsname::uname().ok();
        let own = |field: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            (uname.as_ref().map(field))
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let kernel_file = |path: &str| host.read_trimmed(path).filter(|s| !s.is_empty());
        let mut buf = String::new();
        HostInfo {
            hostname: kernel_file("/proc/sys/kernel/hostname")
                .unwrap_or_else(|| own(|u| u.nodename())),
            os: read_os_release(host),
            kernel: kernel_file("/proc/sys/kernel/osrelease")
                .unwrap_or_else(|| own(|u| u.release())),
            architecture: own(|u| u.machine()),
            cpu_model: (host.read_into("/proc/cpuinfo", &mut buf).ok())
                .and_then(|()| parse_cpu_model(&buf)),
            boot_time: (host.read_into("/proc/stat", &mut buf).ok())
                .and_then(|()| parse_stat_tasks(&buf).boot_time),
        }
    }
}

/// The first os-release of [`OS_RELEASE`] that exists. A denied one stops the search: past
/// snapd's hostfs lies the base snap's file, which would name the wrong OS.
fn read_os_release(host: &HostFs) -> OsRelease {
    let mut buf = String::new();
    for path in OS_RELEASE {
        match host.read_into(path, &mut buf) {
            Ok(()) => return parse_os_release(&buf),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                tracing::warn!(
                    source = "host",
                    "{path}: {e}: no OS name or version; under the snap, connect the system-observe interface: sudo snap connect pocketses:system-observe"
                );
                break;
            }
            Err(_) => {}
        }
    }
    OsRelease::default()
}

struct Host(Arc<HostInfo>);

#[async_trait]
impl Source for Host {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        Ok(Box::new(HostSection(Arc::clone(&self.0))))
    }
}

pub struct HostSection(pub Arc<HostInfo>);

impl Section for HostSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        let h = &*self.0;
        match format {
            Format::Seed => Box::new(SeedHost {
                hostname: &h.hostname,
                os: &h.os,
                kernel: &h.kernel,
                architecture: &h.architecture,
                cpu_model: h.cpu_model.as_deref(),
                boot_time: h.boot_time,
            }),
            Format::Raw => Box::new(RawHost {
                hostname: &h.hostname,
                os_name: h.os.name.as_deref(),
                os_version: h.os.version.as_deref(),
                os_version_id: h.os.version_id.as_deref(),
                os_id: h.os.id.as_deref(),
                os_pretty_name: h.os.pretty_name.as_deref(),
                kernel: &h.kernel,
                architecture: &h.architecture,
                cpu_model: h.cpu_model.as_deref(),
                boot_time_seconds: h.boot_time,
            }),
        }
    }

    /// Two info families (value 1, the facts as labels, as node_exporter's `node_uname_info`
    /// and `node_os_info` do) and the boot time. An unknown fact is an empty label.
    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        let h = &*self.0;
        let label = |v: &'a Option<String>| Cow::Borrowed(v.as_deref().unwrap_or(""));
        out.push(Sample::new(
            &INFO,
            [
                Cow::Borrowed(h.hostname.as_str()),
                Cow::Borrowed(h.kernel.as_str()),
                Cow::Borrowed(h.architecture.as_str()),
                label(&h.cpu_model),
            ],
            1.0,
        ));
        out.push(Sample::new(
            &OS_INFO,
            [
                label(&h.os.id),
                label(&h.os.name),
                label(&h.os.version_id),
                label(&h.os.pretty_name),
            ],
            1.0,
        ));
        if let Some(t) = h.boot_time {
            out.push(Sample::new(&BOOT_TIME, [] as [Cow<str>; 0], t as f64));
        }
    }
}

// No node_exporter names: its info families carry other label sets, and its boot time is
// the `load` section's.
static INFO: Family = Family {
    name: "host_info",
    help: "Always 1; the host's name, kernel release, architecture and CPU model as labels.",
    kind: Kind::Gauge,
    unit: Unit::None,
    labels: &["hostname", "kernel", "architecture", "cpu_model"],
    node_name: None,
};
static OS_INFO: Family = Family {
    name: "host_os_info",
    help: "Always 1; the host's os-release ID, NAME, VERSION_ID and PRETTY_NAME as labels.",
    kind: Kind::Gauge,
    unit: Unit::None,
    labels: &["id", "name", "version_id", "pretty_name"],
    node_name: None,
};
static BOOT_TIME: Family = Family {
    name: "host_boot_time_seconds",
    help: "Boot time, seconds since the Unix epoch (btime), as read at start.",
    kind: Kind::Gauge,
    unit: Unit::Seconds,
    labels: &[],
    node_name: None,
};

#[derive(Serialize)]
struct SeedHost<'a> {
    hostname: &'a str,
    #[serde(serialize_with = "ser_os")]
    os: &'a OsRelease,
    kernel: &'a str,
    architecture: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_model: Option<&'a str>,
    #[serde(
        serialize_with = "ser_opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    boot_time: Option<u64>,
}

/// os-release's fields that the file has.
fn ser_os<S: serde::Serializer>(os: &&OsRelease, s: S) -> Result<S::Ok, S::Error> {
    let fields = [
        ("name", &os.name),
        ("version", &os.version),
        ("version_id", &os.version_id),
        ("id", &os.id),
        ("pretty_name", &os.pretty_name),
    ];
    s.collect_map(
        fields
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?))),
    )
}

#[derive(Serialize)]
struct RawHost<'a> {
    hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_version_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_pretty_name: Option<&'a str>,
    kernel: &'a str,
    architecture: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_time_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn read(case: &str) -> HostInfo {
        HostInfo::read(&HostFs::new(format!("{FIXTURES}/{case}")))
    }

    #[test]
    fn a_capture_of_this_vm_in_both_views() {
        let section = HostSection(Arc::new(read("host/vm")));
        let seed = serde_json::to_value(section.view(Format::Seed)).unwrap();
        let raw = serde_json::to_value(section.view(Format::Raw)).unwrap();
        let arch = std::env::consts::ARCH;
        assert_eq!(
            seed,
            json!({
                "hostname": "vm",
                "os": {"name": "Debian GNU/Linux", "version": "12 (bookworm)", "version_id": "12",
                       "id": "debian", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
                "kernel": "6.18.44-fc-v669",
                "architecture": arch,
                "cpu_model": "Intel(R) Xeon(R) Processor",
                "boot_time": "2026-11-30T10:08:22.000Z",
            })
        );
        assert_eq!(raw["os_pretty_name"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(raw["boot_time_seconds"], 1_796_033_302u64);
    }

    #[test]
    fn in_the_snap_the_hosts_os_release_wins_over_the_base_snaps() {
        let h = read("host/snap");
        assert_eq!(h.os.id.as_deref(), Some("fedora"), "{h:?}");
        assert_eq!(h.os.version.as_deref(), Some("41 (Workstation Edition)"));
    }

    #[test]
    fn without_files_the_agents_own_uname_answers_and_the_os_is_unknown() {
        let h = read("host/empty");
        let own = nix::sys::utsname::uname().unwrap();
        assert_eq!(h.hostname, own.nodename().to_string_lossy());
        assert_eq!(h.kernel, own.release().to_string_lossy());
        assert_eq!(h.os, OsRelease::default());
        assert_eq!((h.cpu_model, h.boot_time), (None, None));
        let seed =
            serde_json::to_value(HostSection(Arc::new(read("host/empty"))).view(Format::Seed))
                .unwrap();
        assert_eq!(seed["os"], json!({}));
    }

    #[test]
    fn os_release_quoting_and_cpu_models_of_other_architectures() {
        let os = parse_os_release(
            "# comment\nNAME='Single Quoted'\nVERSION=\"say \\\"hi\\\" \\\\ \\$x\"\nID=bare\nVERSION_ID=\nPRETTY_NAME=\"unterminated\n",
        );
        assert_eq!(os.name.as_deref(), Some("Single Quoted"));
        assert_eq!(os.version.as_deref(), Some(r#"say "hi" \ $x"#));
        assert_eq!(os.id.as_deref(), Some("bare"));
        assert_eq!(os.version_id, None);
        assert_eq!(os.pretty_name.as_deref(), Some("\"unterminated"));
        let arm = read("gopsutil/cpuinfo_arm_1037");
        assert_eq!(
            arm.cpu_model.as_deref(),
            Some("ARMv7 Processor rev 4 (v7l)")
        );
        assert_eq!(
            parse_cpu_model("processor\t: 0\ncpu\t\t: POWER9, altivec supported\n"),
            Some("POWER9, altivec supported".into())
        );
        assert_eq!(
            parse_cpu_model("processor : 0\n\nmodel name : second\n"),
            None
        );
    }

    #[test]
    fn samples_carry_the_facts_as_labels() {
        let section = HostSection(Arc::new(read("host/vm")));
        let mut out = Vec::new();
        section.samples(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[1].labels().collect::<Vec<_>>(),
            [
                ("id", "debian"),
                ("name", "Debian GNU/Linux"),
                ("version_id", "12"),
                ("pretty_name", "Debian GNU/Linux 12 (bookworm)")
            ]
        );
        assert_eq!(out[2].value, 1_796_033_302.0);
    }
}
