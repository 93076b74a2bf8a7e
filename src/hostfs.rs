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

    /// Reads a whole file into `buf`, reusing its allocation across ticks.
    pub fn read_into(&self, path: &str, buf: &mut String) -> io::Result<()> {
        buf.clear();
        std::fs::File::open(self.path(path))?.read_to_string(buf)?;
        Ok(())
    }

    /// A small file's contents, trimmed; `None` when missing or unreadable.
    pub fn read_trimmed(&self, path: impl AsRef<Path>) -> Option<String> {
        let full = self
            .root
            .join(path.as_ref().strip_prefix("/").unwrap_or(path.as_ref()));
        std::fs::read_to_string(full)
            .ok()
            .map(|s| s.trim().to_string())
    }
}
