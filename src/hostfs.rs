//! Reading `/proc` and `/sys` from a root directory (`--host-root`), so sources run unchanged
//! against a live host (`/`), a host's root mounted into a container, or a captured fixture
//! tree.
//!
//! Sources read these files inline on the async runtime, which is fine only because each
//! read is cheap and cannot wait: a file under the root that is not a regular file (a FIFO
//! nobody writes, a socket, a device) is refused rather than read, and no file is read past
//! [`MAX_FILE`].

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::PROC_SUPER_MAGIC;

/// The most read from one file. `/proc/net/dev` is about 130 bytes per interface: a host
/// with tens of thousands of interfaces stays well below this; anything larger is refused
/// whole rather than parsed cut.
pub const MAX_FILE: u64 = 8 << 20;

#[derive(Clone, Debug)]
pub struct HostFs {
    root: PathBuf,
}

impl Default for HostFs {
    fn default() -> Self {
        HostFs::new("/")
    }
}

impl HostFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostFs { root: root.into() }
    }

    /// `path` (absolute, as on a live host) under this root.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Reads a whole file into `buf`, reusing its allocation across ticks. Bytes that are
    /// not UTF-8 become U+FFFD: Linux allows any bytes in an interface name, and one such
    /// name must not cost the whole file.
    pub fn read_into(&self, path: impl AsRef<Path>, buf: &mut String) -> io::Result<()> {
        let mut bytes = std::mem::take(buf).into_bytes();
        bytes.clear();
        let read = self.read_bounded(path.as_ref(), &mut bytes);
        *buf = lossy(bytes);
        read
    }

    /// A small file's contents, trimmed (and lossy as in [`read_into`](Self::read_into));
    /// `None` when missing or unreadable.
    pub fn read_trimmed(&self, path: impl AsRef<Path>) -> Option<String> {
        let mut bytes = Vec::new();
        self.read_bounded(path.as_ref(), &mut bytes).ok()?;
        Some(lossy(bytes).trim().to_string())
    }

    /// A file to read again every tick, the cheap way where it can be: see [`KeptFile`].
    pub fn kept(&self, path: impl AsRef<Path>) -> KeptFile {
        KeptFile {
            full: self.path(path),
            open: None,
        }
    }

    /// Appends the file at `path` to `out`: a regular file only, at most [`MAX_FILE`] bytes.
    fn read_bounded(&self, path: &Path, out: &mut Vec<u8>) -> io::Result<()> {
        let full = self.path(path);
        let file = open_regular(&full)?;
        read_to_end_bounded(&file, &full, out)
    }
}

/// Opens `full` for reading if it is a regular file. O_NONBLOCK makes opening a FIFO return
/// at once (a blocking open waits for a writer); the type check then refuses it before any
/// read could wait.
fn open_regular(full: &Path) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(full)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            full.display()
        )));
    }
    Ok(file)
}

/// Appends `file` from offset 0 to `out` with `pread`, so a descriptor kept open reads the
/// whole file each time; at most [`MAX_FILE`] bytes, else nothing and an error.
fn read_to_end_bounded(file: &File, full: &Path, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        let filled = out.len();
        out.resize(out.capacity(), 0);
        let read = file.read_at(&mut out[filled..], (filled - start) as u64);
        let n = *read.as_ref().unwrap_or(&0);
        out.truncate(filled + n);
        read?;
        if n == 0 {
            return Ok(());
        }
        if (out.len() - start) as u64 > MAX_FILE {
            out.truncate(start);
            return Err(io::Error::other(format!(
                "{} is larger than {} MiB",
                full.display(),
                MAX_FILE >> 20
            )));
        }
    }
}

/// A file read again every tick. On procfs its descriptor is kept open and read with `pread`
/// from offset 0, which has the kernel generate the file anew: the tick bench's floors show
/// what that saves (the default sources' three files, opened each tick: 82 µs for the whole
/// loop; kept open: 53 µs). Anywhere else, a fixture tree under `--host-root` whose files a
/// test may replace, it is opened each time, like any other read.
pub struct KeptFile {
    full: PathBuf,
    /// The open descriptor, on procfs only; dropped after an error, reopened next time.
    open: Option<File>,
}

impl KeptFile {
    /// The whole file into `buf` (lossy UTF-8, as [`HostFs::read_into`]).
    pub fn read_into(&mut self, buf: &mut String) -> io::Result<()> {
        let mut bytes = std::mem::take(buf).into_bytes();
        bytes.clear();
        let read = self.read(&mut bytes);
        *buf = lossy(bytes);
        read
    }

    fn read(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let (file, kept) = match self.open.take() {
            Some(file) => (file, true),
            None => {
                let file = open_regular(&self.full)?;
                let procfs = on_procfs(&file);
                (file, procfs)
            }
        };
        let read = read_to_end_bounded(&file, &self.full, out);
        if read.is_ok() && kept {
            self.open = Some(file);
        }
        read
    }
}

fn on_procfs(file: &File) -> bool {
    nix::sys::statfs::fstatfs(file).is_ok_and(|fs| fs.filesystem_type() == PROC_SUPER_MAGIC)
}

/// `bytes` as text, without a copy when they are valid UTF-8.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_a_directory_is_refused_without_waiting_and_large_files_are_bounded() {
        let root = std::env::temp_dir().join(format!("pocketses-hostfs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        nix::unistd::mkfifo(&root.join("proc/meminfo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(root.join("proc/big"), vec![b'x'; MAX_FILE as usize + 1]).unwrap();
        std::fs::write(root.join("proc/stat"), "cpu 1\n").unwrap();
        let host = HostFs::new(&root);
        let mut buf = String::new();
        for refused in ["/proc/meminfo", "/proc", "/proc/big"] {
            assert!(host.read_into(refused, &mut buf).is_err(), "{refused}");
            assert!(host.read_trimmed(refused).is_none(), "{refused}");
        }
        host.read_into("/proc/stat", &mut buf).unwrap();
        assert_eq!(buf, "cpu 1\n");
        for refused in ["/proc/meminfo", "/proc", "/proc/big"] {
            assert!(host.kept(refused).read_into(&mut buf).is_err(), "{refused}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_kept_file_reads_what_is_there_now() {
        // procfs: the descriptor stays open, and each read is the kernel's fresh text.
        let mut live = HostFs::default().kept("/proc/uptime");
        let (mut first, mut again) = (String::new(), String::new());
        live.read_into(&mut first).unwrap();
        assert!(live.open.is_some());
        std::thread::sleep(std::time::Duration::from_millis(30));
        live.read_into(&mut again).unwrap();
        let seconds = |text: &str| -> f64 { text.split(' ').next().unwrap().parse().unwrap() };
        assert!(seconds(&again) > seconds(&first), "{first} then {again}");

        // Elsewhere it is opened each time, so a file replaced by a test is read anew.
        let root = std::env::temp_dir().join(format!("pocketses-kept-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), "one").unwrap();
        let mut file = HostFs::new(&root).kept("/f");
        let mut buf = String::new();
        file.read_into(&mut buf).unwrap();
        assert!(file.open.is_none());
        std::fs::write(root.join("f.new"), "two, longer").unwrap();
        std::fs::rename(root.join("f.new"), root.join("f")).unwrap();
        file.read_into(&mut buf).unwrap();
        assert_eq!(buf, "two, longer");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
