//! Reading `/proc` and `/sys` from a root directory, so sources run unchanged against a
//! live host (`/`) or a captured fixture tree.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

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
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Reads a whole file into `buf`, reusing its allocation across ticks. Bytes that are
    /// not UTF-8 become U+FFFD: Linux allows any bytes in an interface name, and one such
    /// name must not cost the whole file.
    pub fn read_into(&self, path: &str, buf: &mut String) -> io::Result<()> {
        let mut bytes = std::mem::take(buf).into_bytes();
        bytes.clear();
        let read = std::fs::File::open(self.path(path)).and_then(|mut f| f.read_to_end(&mut bytes));
        *buf = lossy(bytes);
        read.map(drop)
    }

    /// A small file's contents, trimmed (and lossy as in [`read_into`](Self::read_into));
    /// `None` when missing or unreadable.
    pub fn read_trimmed(&self, path: impl AsRef<Path>) -> Option<String> {
        let full = self
            .root
            .join(path.as_ref().strip_prefix("/").unwrap_or(path.as_ref()));
        let text = lossy(std::fs::read(full).ok()?);
        Some(text.trim().to_string())
    }
}

/// `bytes` as text, without a copy when they are valid UTF-8.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}
