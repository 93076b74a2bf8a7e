//! `filesystem` (alias `fs`): space and inodes per mount point, from the mount table and
//! `statvfs`.
//!
//! Whose mounts: those of the host's init, `/proc/1/mountinfo` under `--host-root`, and each
//! `statvfs` goes through `/proc/1/root/<mount point>`, which resolves in init's mount
//! namespace from any namespace we run in (a snap's, a container's with the host's PID
//! namespace). Where `/proc/1/root` cannot be entered (not root, or a fixture tree), the
//! mount point is looked up under the host root instead.
//!
//! `statvfs` can hang for as long as a network or FUSE server does not answer, so the calls
//! run on blocking threads, under a deadline shorter than the tick's. A mount whose call
//! misses it is reported as stale; while that call is out the mount is not asked again (no
//! pile of stuck threads), and every other mount is still reported.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::statvfs::{statvfs, Statvfs};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::matches_any;
use crate::encode::humanize::SeedUsage;
use crate::hostfs::HostFs;
use crate::model::{Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::{Declared, DefaultValue, Kind as SettingKind, Setting};

/// node_exporter's default `--collector.filesystem.fs-types-exclude`: pseudo filesystems,
/// and squashfs/erofs images (every installed snap is one).
const DEFAULT_EXCLUDE_TYPES: &str = "autofs,binfmt_misc,bpf,cgroup,cgroup2,configfs,debugfs,devpts,devtmpfs,fusectl,hugetlbfs,iso9660,mqueue,nsfs,overlay,proc,procfs,pstore,rpc_pipefs,securityfs,selinuxfs,squashfs,erofs,sysfs,tracefs";

/// node_exporter's default `--collector.filesystem.mount-points-exclude`,
/// `^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`,
/// as globs.
const DEFAULT_EXCLUDE_MOUNT_POINTS: &str = "/dev,/dev/*,/proc,/proc/*,/sys,/sys/*,/run/credentials/*,/var/lib/docker/*,/var/lib/containers/storage/*";

inventory::submit! {
    SourcePlugin {
        name: "filesystem",
        aliases: &["fs"],
        description: "per mount point: device, type, size, free and available bytes, inodes, read-only",
        on_by_default: None,
        settings: Declared::typed::<FsSettings>(&[
            Setting {
                key: "filesystem.skip-types",
                kind: SettingKind::Text,
                default: DefaultValue::Text(DEFAULT_EXCLUDE_TYPES),
                help: "Filesystem types left out: comma-separated globs (* ? [a-z]); empty keeps all",
            },
            Setting {
                key: "filesystem.skip-mounts",
                kind: SettingKind::Text,
                default: DefaultValue::Text(DEFAULT_EXCLUDE_MOUNT_POINTS),
                help: "Mount points left out: comma-separated globs (* ? [a-z]); empty keeps all",
            },
        ]),
        build: |ctx| {
            let settings = ctx.settings.settings::<FsSettings>().map_err(anyhow::Error::msg)?;
            Ok(Box::new(Filesystem::new(ctx.host.clone(), settings, ctx.settings.interval)))
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FsSettings {
    skip_types: String,
    skip_mounts: String,
}

/// One line of a mountinfo file, the fields this section shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
    pub read_only: bool,
}

/// Parses a mountinfo file (proc(5)): `id parent major:minor root mount-point options
/// [optional fields...] - type source super-options`. Octal escapes (`\040` for a space)
/// are decoded. A mount point mounted over keeps its place and takes the later line, which
/// is the mount `statvfs` sees. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(mount_point), Some(options)) = (fields.nth(4), fields.next()) else {
            continue;
        };
        let mut rest = fields.skip_while(|&f| f != "-").skip(1);
        let (Some(fs_type), Some(device)) = (rest.next(), rest.next()) else {
            continue;
        };
        let super_options = rest.next().unwrap_or("");
        let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
        let mount = Mount {
            mount_point: unescape(mount_point),
            device: unescape(device),
            fs_type: unescape(fs_type),
            read_only: ro(options) || ro(super_options),
        };
        match index.get(&mount.mount_point) {
            Some(&i) => mounts[i] = mount,
            None => {
                index.insert(mount.mount_point.clone(), mounts.len());
                mounts.push(mount);
            }
        }
    }
    mounts
}

/// Decodes the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one mount's `statvfs` gave this tick.
enum Usage {
    Known(Figures),
    /// The call did not answer by the deadline, or an earlier one is still out.
    Stale,
    /// The call failed (`ENOTCONN` of a FUSE server that died, `EACCES`, ...).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Figures {
    size: u64,
    free: u64,
    available: u64,
    inodes: u64,
    inodes_free: u64,
}

impl Figures {
    // The casts are for 32-bit targets (armhf is one of the snap's), where libc's block
    // counts may be 32-bit.
    #[allow(clippy::unnecessary_cast)]
    fn of(s: &Statvfs) -> Figures {
        let unit = s.fragment_size() as u64;
        Figures {
            size: s.blocks() as u64 * unit,
            free: s.blocks_free() as u64 * unit,
            available: s.blocks_available() as u64 * unit,
            inodes: s.files() as u64,
            inodes_free: s.files_free() as u64,
        }
    }

    fn used(&self) -> u64 {
        self.size.saturating_sub(self.free)
    }

    /// df's Use%: used over what users could have (used + available), as psutil; 0 where
    /// both are 0 (an empty pseudo filesystem).
    fn used_percent(&self) -> f64 {
        share(self.used(), self.used() + self.available)
    }

    fn inodes_used_percent(&self) -> f64 {
        share(self.inodes.saturating_sub(self.inodes_free), self.inodes)
    }
}

fn share(part: u64, whole: u64) -> f64 {
    match whole {
        0 => 0.0,
        _ => part as f64 * 100.0 / whole as f64,
    }
}

/// Each mount's `statvfs` answer this tick, by position, filled in as the calls return.
type Answers = Arc<Mutex<Vec<Option<nix::Result<Figures>>>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A blocking thread measuring some mounts in turn.
struct Measuring {
    handle: JoinHandle<()>,
    /// The position of the mount being measured (or last measured).
    current: Arc<AtomicUsize>,
    /// Set to make it stop before its next mount.
    stop: Arc<AtomicBool>,
}

impl Measuring {
    fn start(paths: &Arc<Vec<PathBuf>>, which: Vec<usize>, answers: &Answers) -> Measuring {
        let current = Arc::new(AtomicUsize::new(usize::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (paths, answers) = (Arc::clone(paths), Arc::clone(answers));
        let (at, stopped) = (Arc::clone(&current), Arc::clone(&stop));
        let handle = tokio::task::spawn_blocking(move || {
            for i in which {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                at.store(i, Ordering::SeqCst);
                let answer = statvfs(&paths[i]).map(|s| Figures::of(&s));
                lock(&answers)[i] = Some(answer);
            }
        });
        Measuring {
            handle,
            current,
            stop,
        }
    }
}

struct Filesystem {
    host: HostFs,
    settings: FsSettings,
    buf: String,
    /// How long a tick waits for `statvfs`: less than the pipeline's deadline for the whole
    /// source (half the interval, at most 1 s), so the section itself is never late.
    deadline: Duration,
    /// Calls that missed their deadline, by mount point, until they return.
    stuck: HashMap<String, JoinHandle<()>>,
    /// Whether the hint for a denied mount table has been logged: once per run is enough.
    denied_logged: bool,
}

impl Filesystem {
    fn new(host: HostFs, settings: FsSettings, interval: Duration) -> Self {
        Filesystem {
            host,
            settings,
            buf: String::new(),
            deadline: (interval / 4).min(Duration::from_millis(500)),
            stuck: HashMap::new(),
            denied_logged: false,
        }
    }

    /// Where mount points are looked up: init's root where we may enter it, else the host
    /// root (see the module docs).
    fn base(&self) -> PathBuf {
        let init_root = self.host.path("/proc/1/root");
        match std::fs::metadata(&init_root) {
            Ok(_) => init_root,
            Err(_) => self.host.path("/"),
        }
    }
}

#[async_trait]
impl Source for Filesystem {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        if let Err(e) = self.host.read_into("/proc/1/mountinfo", &mut self.buf) {
            if e.kind() == io::ErrorKind::PermissionDenied && !self.denied_logged {
                self.denied_logged = true;
                tracing::warn!(
                    "filesystem: the mount table is denied; in the snap, connect mount-observe \
                     and system-observe: sudo snap connect pocketses:mount-observe"
                );
            }
            return Err(e.into());
        }
        let mounts: Vec<Mount> = parse_mountinfo(&self.buf)
            .into_iter()
            .filter(|m| {
                !matches_any(&self.settings.skip_types, &m.fs_type)
                    && !matches_any(&self.settings.skip_mounts, &m.mount_point)
            })
            .collect();
        self.stuck.retain(|_, call| !call.is_finished());
        let base = self.base();
        let paths: Arc<Vec<PathBuf>> = Arc::new(
            (mounts.iter())
                .map(|m| base.join(m.mount_point.trim_start_matches('/')))
                .collect(),
        );
        let todo: Vec<usize> = (0..mounts.len())
            .filter(|&i| !self.stuck.contains_key(&mounts[i].mount_point))
            .collect();
        let answers: Answers = Arc::new(Mutex::new(mounts.iter().map(|_| None).collect()));
        let start = tokio::time::Instant::now();
        let deadline = start + self.deadline;
        // One thread measures every mount in turn: one hand-off per tick. A thread per mount
        // cost 57 µs of CPU a collection here against 49 µs (2 mounts; the floor, reading
        // mountinfo and calling statvfs inline, 18 µs: benches/collect). If it has not
        // finished by half the deadline, the mount it is on stays with it, and each mount
        // not yet answered gets a thread of its own for the rest: a hung mount delays the
        // others by half the deadline once, and hides none of them.
        let mut batch = Measuring::start(&paths, todo.clone(), &answers);
        let half = start + self.deadline / 2;
        if tokio::time::timeout_at(half, &mut batch.handle)
            .await
            .is_err()
        {
            batch.stop.store(true, Ordering::SeqCst);
            let current = batch.current.load(Ordering::SeqCst);
            let pending: Vec<usize> = {
                let answered = lock(&answers);
                (todo.iter().copied())
                    .filter(|&i| i != current && answered[i].is_none())
                    .collect()
            };
            let singles: Vec<(usize, Measuring)> = (pending.into_iter())
                .map(|i| (i, Measuring::start(&paths, vec![i], &answers)))
                .collect();
            for (i, mut single) in singles {
                if tokio::time::timeout_at(deadline, &mut single.handle)
                    .await
                    .is_err()
                {
                    self.stuck
                        .insert(mounts[i].mount_point.clone(), single.handle);
                }
            }
            if !batch.handle.is_finished() && lock(&answers)[current].is_none() {
                self.stuck
                    .insert(mounts[current].mount_point.clone(), batch.handle);
            }
        }
        let mut answered = lock(&answers);
        let shown = (mounts.into_iter().enumerate())
            .map(|(i, mount)| {
                let usage = match answered[i].take() {
                    Some(Ok(figures)) => Usage::Known(figures),
                    Some(Err(errno)) => Usage::Failed(errno.desc().to_string()),
                    // Not answered in time, or an earlier call is still out.
                    None => Usage::Stale,
                };
                (mount, usage)
            })
            .collect();
        Ok(Box::new(FsSection { mounts: shown }))
    }
}

struct FsSection {
    mounts: Vec<(Mount, Usage)>,
}

impl Section for FsSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        Box::new(Mounts(&self.mounts, format))
    }

    /// node_exporter's families. A mount without figures has only `readonly` and
    /// `device_error` (1), as node_exporter reports a failed statfs.
    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        let labels = |m: &'a Mount| {
            [
                Cow::Borrowed(m.device.as_str()),
                Cow::Borrowed(m.fs_type.as_str()),
                Cow::Borrowed(m.mount_point.as_str()),
            ]
        };
        for (family, value) in &SIZES {
            for (mount, usage) in &self.mounts {
                if let Usage::Known(f) = usage {
                    out.push(Sample::new(family, labels(mount), value(f) as f64));
                }
            }
        }
        for (mount, _) in &self.mounts {
            out.push(Sample::new(
                &READONLY,
                labels(mount),
                f64::from(u8::from(mount.read_only)),
            ));
        }
        for (mount, usage) in &self.mounts {
            let error = !matches!(usage, Usage::Known(_));
            out.push(Sample::new(
                &DEVICE_ERROR,
                labels(mount),
                f64::from(u8::from(error)),
            ));
        }
    }
}

/// Mounts as a JSON object by mount point, in the mount table's order.
struct Mounts<'a>(&'a [(Mount, Usage)], Format);

impl Serialize for Mounts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (m, usage) in self.0 {
            let (stale, error, figures) = match usage {
                Usage::Known(f) => (false, None, Some(f)),
                Usage::Stale => (true, None, None),
                Usage::Failed(why) => (false, Some(why.as_str()), None),
            };
            match self.1 {
                Format::Seed => map.serialize_entry(
                    &m.mount_point,
                    &SeedMount {
                        device: &m.device,
                        r#type: &m.fs_type,
                        stale,
                        error,
                        usage: figures.map(|f| SeedUsage {
                            total: f.size,
                            used: f.used_percent(),
                            available: f.available,
                        }),
                    },
                )?,
                Format::Raw => map.serialize_entry(
                    &m.mount_point,
                    &RawMount {
                        device: &m.device,
                        r#type: &m.fs_type,
                        read_only: m.read_only,
                        stale,
                        error,
                        usage: figures.map(|f| RawUsage {
                            size_bytes: f.size,
                            free_bytes: f.free,
                            available_bytes: f.available,
                            used_bytes: f.used(),
                            used_percent: f.used_percent(),
                            inodes: f.inodes,
                            inodes_free: f.inodes_free,
                            inodes_used_percent: f.inodes_used_percent(),
                        }),
                    },
                )?,
            }
        }
        map.end()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
struct SeedMount<'a> {
    device: &'a str,
    r#type: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten)]
    usage: Option<SeedUsage>,
}

#[derive(Serialize)]
struct RawMount<'a> {
    device: &'a str,
    r#type: &'a str,
    read_only: bool,
    #[serde(skip_serializing_if = "is_false")]
    stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten)]
    usage: Option<RawUsage>,
}

#[derive(Serialize)]
struct RawUsage {
    size_bytes: u64,
    free_bytes: u64,
    available_bytes: u64,
    used_bytes: u64,
    used_percent: f64,
    inodes: u64,
    inodes_free: u64,
    inodes_used_percent: f64,
}

const LABELS: &[&str] = &["device", "fstype", "mountpoint"];

type SizeFamily = (Family, fn(&Figures) -> u64);

static SIZES: [SizeFamily; 5] = [
    (
        Family::gauge("filesystem_size_bytes", "Filesystem size.", Unit::Bytes)
            .labels(LABELS)
            .node("node_filesystem_size_bytes"),
        |f| f.size,
    ),
    (
        Family::gauge(
            "filesystem_free_bytes",
            "Free space, including what is reserved for root.",
            Unit::Bytes,
        )
        .labels(LABELS)
        .node("node_filesystem_free_bytes"),
        |f| f.free,
    ),
    (
        Family::gauge(
            "filesystem_avail_bytes",
            "Space available to unprivileged users.",
            Unit::Bytes,
        )
        .labels(LABELS)
        .node("node_filesystem_avail_bytes"),
        |f| f.available,
    ),
    (
        Family::gauge("filesystem_files", "Inodes in the filesystem.", Unit::None)
            .labels(LABELS)
            .node("node_filesystem_files"),
        |f| f.inodes,
    ),
    (
        Family::gauge("filesystem_files_free", "Free inodes.", Unit::None)
            .labels(LABELS)
            .node("node_filesystem_files_free"),
        |f| f.inodes_free,
    ),
];

static READONLY: Family =
    Family::gauge("filesystem_readonly", "1 if mounted read-only.", Unit::None)
        .labels(LABELS)
        .node("node_filesystem_readonly");

static DEVICE_ERROR: Family = Family::gauge(
    "filesystem_device_error",
    "1 if statvfs failed or did not answer in time this snapshot.",
    Unit::None,
)
.labels(LABELS)
.node("node_filesystem_device_error");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::collect_now;
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/filesystem");

    fn defaults() -> FsSettings {
        FsSettings {
            skip_types: DEFAULT_EXCLUDE_TYPES.into(),
            skip_mounts: DEFAULT_EXCLUDE_MOUNT_POINTS.into(),
        }
    }

    #[test]
    fn escapes_overmounts_and_malformed_lines() {
        let text = std::fs::read_to_string(format!("{FIXTURES}/awkward/proc/1/mountinfo")).unwrap();
        let mounts = parse_mountinfo(&text);
        let points: Vec<&str> = mounts.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(
            points,
            [
                "/",
                "/proc",
                "/snap/core24/1055",
                "/mnt/with space",
                "/mnt/tab\there",
                "/data",
                "/srv/back\\slash"
            ],
        );
        // /data was mounted twice: the later mount, the one on top, is shown.
        let data = &mounts[5];
        assert_eq!(
            (data.device.as_str(), data.fs_type.as_str()),
            ("server:/export", "nfs4")
        );
        assert!(mounts[2].read_only && !mounts[0].read_only);
    }

    #[test]
    fn under_a_fixture_root_pseudo_and_snap_mounts_are_skipped_and_figures_come_from_statvfs() {
        let root = format!("{FIXTURES}/awkward");
        let mut fs = Filesystem::new(HostFs::new(&root), defaults(), Duration::from_secs(60));
        let section = collect_now(&mut fs).unwrap();
        let raw = serde_json::to_value(section.view(Format::Raw)).unwrap();
        let keys: Vec<&String> = raw.as_object().unwrap().keys().collect();
        // proc and the squashfs of a snap are left out by the default filters.
        assert_eq!(
            keys,
            [
                "/",
                "/mnt/with space",
                "/mnt/tab\there",
                "/data",
                "/srv/back\\slash"
            ],
            "{raw}"
        );
        // The tree holds directories for some mount points: their statvfs is the tree's own
        // filesystem. The others do not exist there: ENOENT, a failed call, not a stall.
        let here = statvfs(root.as_str()).map(|s| Figures::of(&s)).unwrap();
        assert_eq!(raw["/"]["size_bytes"], here.size, "{raw}");
        assert_eq!(raw["/data"]["error"], "No such file or directory", "{raw}");
        assert!(raw["/data"].get("size_bytes").is_none());
        let seed = serde_json::to_value(section.view(Format::Seed)).unwrap();
        assert_eq!(seed["/"]["type"], "ext4");
        assert!(
            seed["/"]["total"]
                .as_str()
                .unwrap()
                .ends_with(['K', 'M', 'G', 'T']),
            "{seed}"
        );
        assert!(seed["/"]["used"].as_str().unwrap().ends_with('%'), "{seed}");
    }

    #[test]
    fn figures_follow_df() {
        let f = Figures {
            size: 1000,
            free: 300,
            available: 200,
            inodes: 10,
            inodes_free: 4,
        };
        assert_eq!(f.used(), 700);
        assert_eq!(format!("{:.1}", f.used_percent()), "77.8"); // 700 / (700 + 200)
        assert_eq!(f.inodes_used_percent(), 60.0);
        let empty = Figures {
            size: 0,
            free: 0,
            available: 0,
            inodes: 0,
            inodes_free: 0,
        };
        assert_eq!(
            (empty.used_percent(), empty.inodes_used_percent()),
            (0.0, 0.0)
        );
    }

    #[test]
    fn a_stale_mount_keeps_its_name_and_has_no_figures() {
        let mount = Mount {
            mount_point: "/mnt/nfs".into(),
            device: "server:/x".into(),
            fs_type: "nfs4".into(),
            read_only: false,
        };
        let section = FsSection {
            mounts: vec![(mount, Usage::Stale)],
        };
        let raw = serde_json::to_value(section.view(Format::Raw)).unwrap();
        assert_eq!(
            raw,
            json!({"/mnt/nfs": {"device": "server:/x", "type": "nfs4", "read_only": false, "stale": true}})
        );
        let mut samples = Vec::new();
        section.samples(&mut samples);
        let names: Vec<(&str, f64)> = samples.iter().map(|s| (s.family.name, s.value)).collect();
        assert_eq!(
            names,
            [
                ("filesystem_readonly", 0.0),
                ("filesystem_device_error", 1.0)
            ]
        );
    }
}
