//! `file`: appends each snapshot as one JSON line (LF) to `file.path`, rotated by size.
//!
//! Each line goes out in one `write(2)` on an `O_APPEND` descriptor, so readers never see
//! half a line from us. Rotation renames `x.jsonl` → `x.jsonl.1` → … → `x.jsonl.N` and starts
//! a fresh `x.jsonl`, which `tail -F` follows. Every tick the open file is compared with what
//! the path names now (one `lstat`), so a file removed or moved by someone else is recreated.
//!
//! `file.path` must name a regular file. The agent often runs as root, so a symbolic link
//! planted there is never followed (rotation renames links, never writes through them), and
//! a FIFO or device is never opened for writing. Such a path is refused at start; when one
//! appears mid-run, this sink drops its snapshots until the path is a regular file or absent.
//!
//! Writes, rotation and opens run on a thread of their own behind a small queue: a disk or
//! network filesystem that stalls costs this sink its snapshots, and never delays the
//! runtime that serves subscribers and signals, nor the exit (which waits for no thread).

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use bytes::Bytes;
use nix::libc;
use nix::unistd::{access, AccessFlags};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::encode::Frame;
use crate::logging::RateLimit;
use crate::plugin::{Sink, SinkPlugin};
use crate::settings::{Declared, DefaultValue, Kind, PluginConfig, Setting};

inventory::submit! {
    SinkPlugin {
        name: "file",
        aliases: &[],
        description: "appends JSON lines to file.path, rotated at file.max-size into .1 ... .N",
        on_by_default: None,
        settings: Declared::typed::<Settings>(&[
            Setting {
                key: "file.path",
                kind: Kind::Path,
                default: DefaultValue::Computed(default_path),
                help: "JSON-lines file of the file sink ($SNAP_COMMON/pocketses.jsonl in a snap)",
            },
            Setting {
                key: "file.max-size",
                kind: Kind::Size { min: 1 << 10, max: 1 << 40 },
                default: DefaultValue::Text("10M"),
                help: "Size at which the file is rotated: bytes, or K/M/G/T (1024-based)",
            },
            Setting {
                key: "file.max-files",
                kind: Kind::Whole { min: 1, max: 1000 },
                default: DefaultValue::Text("5"),
                help: "Rotated files kept (.1 to .N)",
            },
        ]),
        preflight: |config| {
            let settings: Settings = config.settings()?;
            check_path(&settings.path).map_err(|e| format!("file.path: {e}"))
        },
        build: |config| {
            let settings = Settings::of(config);
            Box::pin(async move { Ok(Box::new(FileSink::start(settings?).await?) as Box<dyn Sink>) })
        },
    }
}

/// `$SNAP_COMMON/pocketses.jsonl` under a snap (a path fit for a setting), else
/// `pocketses.jsonl` in the working directory.
fn default_path() -> String {
    let common = std::env::var("SNAP_COMMON").ok();
    match common.filter(|c| !c.is_empty() && !c.contains(char::is_control)) {
        Some(common) => format!("{}/pocketses.jsonl", common.trim_end_matches('/')),
        None => "pocketses.jsonl".into(),
    }
}

/// Snapshots queued for the writer thread; while it is stuck, later ones are dropped. At
/// 100 snapshots per second this rides out 80 ms of a slow disk.
const QUEUE: usize = 8;
/// How long start-up and reload wait for the writer thread to open a file. A local open
/// takes microseconds, and a reload holds up signal handling while it waits.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// How long closing waits for the writer to write what is queued and sync; the pipeline
/// gives all sinks 800 ms together.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How a symbolic link at `file.path` is refused.
const SYMLINK: &str = "is a symbolic link; refusing to follow it";

/// The settings of this sink (`file.path`, `file.max-size`, `file.max-files`). Empty until
/// the writer thread has opened its first path.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Settings {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
}

impl Settings {
    fn of(config: &PluginConfig) -> anyhow::Result<Settings> {
        config.settings().map_err(anyhow::Error::msg)
    }
}

/// What the writer thread is asked to do.
enum Job {
    Append(Bytes),
    /// Adopt these settings and say whether that worked.
    Configure(Settings, oneshot::Sender<anyhow::Result<()>>),
}

/// The runtime's side of the sink: hands jobs to the writer thread, never waits on its I/O.
struct FileSink {
    /// The path the writer has adopted, for messages.
    path: PathBuf,
    /// `None` once closed: the writer then finishes the queue, syncs and ends.
    jobs: Option<SyncSender<Job>>,
    /// Resolves (with an error) when the writer thread has ended.
    finished: oneshot::Receiver<()>,
}

impl FileSink {
    /// Starts a writer thread and has it open `settings.path`: ready when this returns.
    async fn start(settings: Settings) -> anyhow::Result<FileSink> {
        let mut sink = FileSink::spawn(Writer::default())?;
        sink.configure(settings).await?;
        Ok(sink)
    }

    fn spawn(writer: Writer) -> anyhow::Result<FileSink> {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let (done, finished) = oneshot::channel::<()>();
        let path = writer.settings.path.clone();
        std::thread::Builder::new()
            .name("file-sink".into())
            .spawn(move || {
                let _done = done; // dropped as the thread ends
                writer.run(queue);
            })
            .context("starting the file sink's writer thread")?;
        Ok(FileSink {
            path,
            jobs: Some(jobs),
            finished,
        })
    }

    fn send(&self, job: Job) -> anyhow::Result<()> {
        let jobs = self.jobs.as_ref().context("the file sink is closed")?;
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => anyhow!(
                "{} is not keeping up: earlier snapshots are still being written (stuck disk or network filesystem?)",
                self.path.display()
            ),
            TrySendError::Disconnected(_) => anyhow!("the file sink's writer thread has stopped"),
        })
    }

    /// Has the writer adopt `settings`, waiting at most [`ANSWER_TIMEOUT`] for its answer.
    async fn configure(&mut self, settings: Settings) -> anyhow::Result<()> {
        let path = settings.path.clone();
        let (reply, mut answer) = oneshot::channel();
        self.send(Job::Configure(settings, reply))?;
        let result = match tokio::time::timeout(ANSWER_TIMEOUT, &mut answer).await {
            Ok(answer) => {
                answer.unwrap_or_else(|_| bail!("the file sink's writer thread has stopped"))
            }
            Err(_) => {
                // Closed first, so that the writer cannot adopt settings we report as failed.
                answer.close();
                answer.try_recv().unwrap_or_else(|_| {
                    bail!(
                        "opening {} took more than {ANSWER_TIMEOUT:?} (stuck disk or network filesystem?)",
                        path.display()
                    )
                })
            }
        };
        if result.is_ok() {
            self.path = path;
        }
        result
    }
}

#[async_trait]
impl Sink for FileSink {
    /// Queues the snapshot for the writer; when the queue is full it is dropped, and the
    /// error says so (the pipeline logs it, rate-limited).
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.send(Job::Append(frame.json.clone()))
    }

    async fn reconfigure(&mut self, config: &PluginConfig) -> anyhow::Result<bool> {
        self.configure(Settings::of(config)?).await?;
        Ok(true)
    }

    /// Waits a while for the writer to write what is queued and sync the file. A writer
    /// stuck in the kernel is left behind: the process exits without it.
    async fn close(&mut self) {
        self.jobs = None;
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut self.finished)
            .await
            .is_err()
        {
            warn!(
                "the file sink's writer is stuck writing {} (disk or network filesystem?); left behind",
                self.path.display()
            );
        }
    }
}

/// The writer thread's state.
#[derive(Default)]
struct Writer {
    settings: Settings,
    /// `None` while the path cannot be opened or is refused; retried on the next snapshot.
    file: Option<Appender>,
    line: Vec<u8>,
    failures: RateLimit,
}

impl Writer {
    /// Serves jobs until the sink lets go of the queue, then syncs the file.
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Append(json) => {
                    if let Err(e) = self.append(&json) {
                        // Accepted from the pipeline but not written: dropped here.
                        crate::stats::sink("file").dropped(1);
                        if let Some(held_back) = self.failures.allow(Instant::now()) {
                            warn!(sink = "file", held_back, "publish failed: {e:#}");
                        }
                    }
                }
                Job::Configure(settings, reply) => self.configure(settings, reply),
            }
        }
        if let Some(f) = &self.file {
            let _ = f.file.sync_data();
        }
    }

    /// Size limits apply from the next line; a new path is checked and opened before the old
    /// file is let go. Nothing changes if the sink stopped waiting for the answer.
    fn configure(&mut self, settings: Settings, reply: oneshot::Sender<anyhow::Result<()>>) {
        let opened = if settings.path == self.settings.path {
            None
        } else {
            let path = &settings.path;
            match (check_path(path).map_err(anyhow::Error::msg)).and_then(|()| Appender::open(path))
            {
                Ok(file) => Some(file),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        };
        if reply.send(Ok(())).is_err() {
            return;
        }
        if let Some(file) = opened {
            info!(
                "file sink appending to {} (missing directories are created)",
                settings.path.display()
            );
            self.file = Some(file);
        }
        self.settings = settings;
    }

    /// Appends one snapshot as a line, rotating first if the line would pass the size limit.
    fn append(&mut self, json: &[u8]) -> anyhow::Result<()> {
        self.line.clear();
        self.line.extend_from_slice(json);
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        let size = self.current()?.size;
        // A line longer than the limit still gets a file of its own.
        if size > 0 && size + len > self.settings.max_size {
            self.rotate()?;
        }
        let line = std::mem::take(&mut self.line);
        let result = self.current().and_then(|f| Ok(f.append(&line)?));
        self.line = line;
        result.with_context(|| format!("writing {}", self.settings.path.display()))
    }

    /// The open file, reopened if someone removed, moved or replaced it.
    fn current(&mut self) -> anyhow::Result<&mut Appender> {
        let path = &self.settings.path;
        if !self.file.as_ref().is_some_and(|f| f.is_at(path)) {
            if self.file.take().is_some() {
                info!("{} was removed or moved; recreating it", path.display());
            }
            self.file = Some(Appender::open(path)?);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    /// `x` → `x.1` → … → `x.N`, the oldest overwritten, then a fresh `x`. Renaming moves a
    /// link planted at any of these names, never what it points to.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let path = &self.settings.path;
        let numbered = |n: u32| {
            let mut name = path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..self.settings.max_files).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("rotating {}", numbered(n).display()))
                }
                _ => {}
            }
        }
        std::fs::rename(path, numbered(1))
            .with_context(|| format!("rotating {}", path.display()))?;
        self.file = None;
        Ok(())
    }
}

/// The open file, with its size and identity when opened.
struct Appender {
    file: File,
    size: u64,
    dev: u64,
    ino: u64,
    /// The file ended in half a line (a crash or power loss mid-write): it gets its newline
    /// before our first line, so that line starts whole.
    unterminated: bool,
}

impl Appender {
    /// Opens `path` for appending, creating it and its missing directories; anything but a
    /// regular file is refused.
    fn open(path: &Path) -> anyhow::Result<Appender> {
        // lstat first: a FIFO or a device is refused without ever being opened.
        match std::fs::symlink_metadata(path) {
            Ok(meta) => refuse_unless_regular(path, meta.file_type())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating the directory of {}", path.display()))?;
                }
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
        }
        // O_NOFOLLOW guards the last component only: the directories above are the
        // administrator's choice. O_NONBLOCK (no effect on a regular file) lets a FIFO swapped
        // in since the lstat open without waiting, to be refused below. std adds O_CLOEXEC.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => anyhow!("{} {SYMLINK}", path.display()),
                _ => anyhow::Error::new(e).context(format!("opening {}", path.display())),
            })?;
        // fstat of what was opened closes the race with a swap after the lstat.
        let meta = file
            .metadata()
            .with_context(|| format!("inspecting {}", path.display()))?;
        refuse_unless_regular(path, meta.file_type())?;
        let mut last = [b'\n'];
        if meta.len() > 0 {
            file.read_exact_at(&mut last, meta.len() - 1)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        Ok(Appender {
            file,
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            unterminated: last[0] != b'\n',
        })
    }

    /// Whether `path` still names this file (not removed, renamed or replaced, by a link
    /// either: `lstat` does not follow one).
    fn is_at(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == (self.dev, self.ino))
    }

    /// Appends `line` (ending the file's half line first, if it has one).
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.unterminated {
            self.write_whole(b"\n")?;
            self.unterminated = false;
        }
        self.write_whole(line)
    }

    /// Writes `line` whole or not at all: a short write (disk full) is cut back off.
    fn write_whole(&mut self, line: &[u8]) -> io::Result<()> {
        let result = match self.file.write(line) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(n) => {
                let end = self.file.metadata()?.len();
                self.file.set_len(end - n as u64)?;
                Err(io::Error::other(format!(
                    "disk full? only {n} of {} bytes written (cut off again)",
                    line.len()
                )))
            }
            Err(e) => Err(e),
        };
        if result.is_ok() {
            self.size += line.len() as u64;
        }
        result
    }
}

/// What is wrong with a path of this kind for the file sink, if anything.
fn kind_problem(kind: FileType) -> Option<&'static str> {
    Some(if kind.is_file() {
        return None;
    } else if kind.is_symlink() {
        SYMLINK
    } else if kind.is_fifo() {
        "is a FIFO, not a regular file"
    } else if kind.is_socket() {
        "is a socket, not a regular file"
    } else if kind.is_char_device() {
        "is a character device, not a regular file"
    } else if kind.is_block_device() {
        "is a block device, not a regular file"
    } else if kind.is_dir() {
        "is a directory, not a regular file"
    } else {
        "is not a regular file"
    })
}

fn refuse_unless_regular(path: &Path, kind: FileType) -> anyhow::Result<()> {
    match kind_problem(kind) {
        Some(problem) => bail!("{} {problem}", path.display()),
        None => Ok(()),
    }
}

/// Checks `path` without side effects: it is absent or a writable regular file, and its
/// directory is writable (rotation renames in it) or, if missing, can be created in the
/// nearest existing one.
fn check_path(path: &Path) -> Result<(), String> {
    let missing = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if let Some(problem) = kind_problem(meta.file_type()) {
                return Err(format!("{} {problem}", path.display()));
            }
            access(path, AccessFlags::W_OK)
                .map_err(|e| format!("{} is not writable ({})", path.display(), e.desc()))?;
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    }
    let dir = or_dot(path.parent().unwrap_or(Path::new(".")));
    let mut ancestors = dir.ancestors().map(or_dot);
    let (existing, meta) = loop {
        let Some(ancestor) = ancestors.next() else {
            return Err(format!("no directory of {} exists", path.display()));
        };
        match std::fs::metadata(ancestor) {
            Ok(meta) => break (ancestor, meta),
            Err(e) if missing(&e) => {}
            Err(e) => return Err(format!("cannot inspect {}: {e}", ancestor.display())),
        }
    };
    let created = if existing == dir {
        String::new()
    } else {
        format!(", so {} cannot be created", dir.display())
    };
    if !meta.is_dir() {
        return Err(format!(
            "{} is not a directory{created}",
            existing.display()
        ));
    }
    access(existing, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        format!(
            "directory {} is not writable ({}){created}",
            existing.display(),
            e.desc()
        )
    })
}

/// `p`, or `.` for the empty parent of a bare file name.
fn or_dot(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::time::SystemTime;

    use nix::sys::stat::Mode;

    /// A scratch directory for one test, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("pocketses-file-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn only_a_regular_file_is_opened() {
        let dir = Scratch::new("kinds");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "victim\n").unwrap();
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let fifo = dir.0.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let socket = dir.0.join("socket");
        let _listener = UnixListener::bind(&socket).unwrap();
        for (path, problem) in [
            (link.as_path(), "is a symbolic link; refusing to follow it"),
            (&fifo, "is a FIFO, not a regular file"),
            (&socket, "is a socket, not a regular file"),
            (
                Path::new("/dev/null"),
                "is a character device, not a regular file",
            ),
            (&dir.0, "is a directory, not a regular file"),
        ] {
            let wanted = format!("{} {problem}", path.display());
            assert_eq!(check_path(path), Err(wanted.clone()));
            let opened = Appender::open(path).err().map(|e| format!("{e:#}"));
            assert_eq!(opened, Some(wanted));
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
        let fresh = dir.0.join("new/dirs/x.jsonl");
        assert_eq!(check_path(&fresh), Ok(()));
        assert!(!dir.0.join("new").exists(), "checking created something");
        assert_eq!(Appender::open(&fresh).unwrap().size, 0);
    }

    #[test]
    fn a_stuck_write_drops_this_sinks_snapshots_and_never_blocks_the_caller() {
        let dir = Scratch::new("stuck");
        // A FIFO that nobody reads stands for a stuck disk: our own descriptor to it (opened
        // read-write, so it needs no reader) blocks once the pipe's 64 KiB are full.
        let path = dir.0.join("stuck");
        nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let meta = file.metadata().unwrap();
        let writer = Writer {
            settings: Settings {
                path: path.clone(),
                max_size: 1 << 40,
                max_files: 1,
            },
            file: Some(Appender {
                file,
                size: 0,
                dev: meta.dev(),
                ino: meta.ino(),
                unterminated: false,
            }),
            ..Writer::default()
        };
        let json = Bytes::from(vec![b'x'; 16 << 10]);
        let frame = Frame {
            seq: 0,
            timestamp: SystemTime::now(),
            json: json.clone(),
            sections: Default::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut sink = FileSink::spawn(writer).unwrap();
            let mut dropped = 0;
            for _ in 0..100 {
                if let Err(e) = sink.publish(&frame).await {
                    assert!(format!("{e}").contains("is not keeping up"), "{e}");
                    dropped += 1;
                }
            }
            // Three lines fit in the pipe, the fourth blocks, the queue holds the next ones.
            assert!(dropped >= 100 - 4 - QUEUE, "only {dropped} dropped");
            sink.close().await;
            let still_running = Err(oneshot::error::TryRecvError::Empty);
            assert_eq!(
                sink.finished.try_recv(),
                still_running,
                "the stuck writer ended"
            );

            // The disk comes back: the writer left behind writes what was queued, and ends.
            let mut reader = File::open(&path).unwrap();
            let drained = std::thread::spawn(move || {
                let mut all = Vec::new();
                reader.read_to_end(&mut all).unwrap();
                all
            });
            // The reader sees the end once the writer has ended.
            let written = drained.join().unwrap();
            assert_eq!(written.len(), (100 - dropped) * (json.len() + 1));
        });
    }
}
