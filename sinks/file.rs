//! `file`: appends each snapshot as one JSON line (LF) to `file.path`, rotated by size.
//!
//! Each line goes out in one `write(2)` on an `O_APPEND` descriptor, so readers never see
//! half a line from us. Rotation renames `x.jsonl` → `x.jsonl.1` → … → `x.jsonl.N` and starts
//! a fresh `x.jsonl`, which `tail -F` follows. Every tick the open file is compared with what
//! the path names now (one `stat`), so a file removed or moved by someone else is recreated.
//! Appends to a local file take microseconds, so they run inline on the runtime.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use tracing::info;

use crate::config::Config;
use crate::encode::Frame;
use crate::plugin::{Sink, SinkPlugin};

inventory::submit! {
    SinkPlugin {
        name: "file",
        aliases: &[],
        description: "appends JSON lines to file.path, rotated at file.max-size into .1 ... .N",
        build: |config| Box::pin(async move {
            Ok(Box::new(FileSink::open(&config)?) as Box<dyn Sink>)
        }),
    }
}

struct FileSink {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    /// `None` after the file could not be reopened; retried on the next snapshot.
    file: Option<Appender>,
    line: Vec<u8>,
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
    /// Opens `path` for appending, creating it and its parent directory if missing.
    fn open(path: &Path) -> io::Result<Appender> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let meta = file.metadata()?;
        let mut last = [b'\n'];
        if meta.len() > 0 {
            file.read_exact_at(&mut last, meta.len() - 1)?;
        }
        Ok(Appender {
            file,
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            unterminated: last[0] != b'\n',
        })
    }

    /// Whether `path` still names this file (not removed, renamed or replaced).
    fn is_at(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == (self.dev, self.ino))
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

impl FileSink {
    fn open(config: &Config) -> anyhow::Result<FileSink> {
        let path = config.file_path.clone();
        let file = Appender::open(&path).with_context(|| format!("opening {}", path.display()))?;
        info!("file sink appending to {}", path.display());
        Ok(FileSink {
            path,
            max_size: config.file_max_size,
            max_files: config.file_max_files,
            file: Some(file),
            line: Vec::new(),
        })
    }

    /// The open file, reopened if someone removed or moved it.
    fn current(&mut self) -> anyhow::Result<&mut Appender> {
        if !self.file.as_ref().is_some_and(|f| f.is_at(&self.path)) {
            if self.file.take().is_some() {
                info!(
                    "{} was removed or moved; recreating it",
                    self.path.display()
                );
            }
            let file = Appender::open(&self.path)
                .with_context(|| format!("reopening {}", self.path.display()))?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    /// `x` → `x.1` → … → `x.N`, the oldest overwritten, then a fresh `x`.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..self.max_files).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("rotating {}", numbered(n).display()))
                }
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))
            .with_context(|| format!("rotating {}", self.path.display()))?;
        self.file = None;
        Ok(())
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.line.clear();
        self.line.extend_from_slice(&frame.json);
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        let size = self.current()?.size;
        // A line longer than the limit still gets a file of its own.
        if size > 0 && size + len > self.max_size {
            self.rotate()?;
        }
        let line = std::mem::take(&mut self.line);
        let result = self.current()?.append(&line);
        self.line = line;
        result.with_context(|| format!("writing {}", self.path.display()))
    }

    /// Size limits apply from the next line; a new path is opened before the old is let go.
    async fn reconfigure(&mut self, config: &Config) -> anyhow::Result<bool> {
        if config.file_path != self.path {
            let file = Appender::open(&config.file_path)
                .with_context(|| format!("opening {}", config.file_path.display()))?;
            info!("file sink appending to {}", config.file_path.display());
            self.path = config.file_path.clone();
            self.file = Some(file);
        }
        self.max_size = config.file_max_size;
        self.max_files = config.file_max_files;
        Ok(true)
    }

    async fn close(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.file.sync_data();
        }
    }
}
