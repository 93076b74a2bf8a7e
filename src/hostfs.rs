//! Reading `/proc` and `/sys` from a root directory (`--host-root`), so sources run unchanged
//! against a live host (`/`), a host's root mounted into a container, or a captured fixture
//! tree.
//!
//! Sources read these files inline on the async runtime, which is fine only because each
//! read is cheap and cannot wait: a file under the root that is not a regular file (a FIFO
//! nobody writes, a socket, a device) is refused rather than read, and no file is read past
//! [`MAX_FILE`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

    /// Appends the file at `path` to `out`: a regular file only, at most [`MAX_FILE`] bytes.
    /// O_NONBLOCK makes opening a FIFO return at once (a blocking open waits for a writer);
    /// the type check then refuses it before any read could wait.
    fn read_bounded(&self, path: &Path, out: &mut Vec<u8>) -> io::Result<()> {
        let full = self.path(path);
        let file = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&full)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                full.display()
            )));
        }
        file.take(MAX_FILE + 1).read_to_end(out)?;
        if out.len() as u64 > MAX_FILE {
            out.clear();
            return Err(io::Error::other(format!(
                "{} is larger than {} MiB",
                full.display(),
                MAX_FILE >> 20
            )));
        }
        Ok(())
    }
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
        std::fs::remove_dir_all(&root).unwrap();
    }
}
