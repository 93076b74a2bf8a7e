//! `stdout`: one line per snapshot, ending in LF.
//!
//! Lines are written by a thread of the sink's own from a small bounded queue, so a reader
//! that stops reading blocks only that thread: this sink drops snapshots (and says so at a
//! limited rate) until it reads again, and nothing else waits. That thread is never waited
//! for longer than [`CLOSE_GRACE`], so a stuck write cannot hold up SIGTERM. A reader that has
//! gone for good (EPIPE; Rust ignores SIGPIPE) finishes the sink, as `head` finishes `yes`.

use std::io::{self, Write};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::warn;

use crate::encode::Frame;
use crate::logging::RateLimit;
use crate::plugin::{Sink, SinkPlugin};
use crate::settings::{Declared, PluginConfig};

inventory::submit! {
    SinkPlugin {
        name: "stdout",
        aliases: &[],
        description: "one JSON line per snapshot on standard output",
        on_by_default: None,
        settings: Declared::NONE,
        preflight: |_config| Ok(()),
        build: |_config| Box::pin(async { Ok(Box::new(StdoutSink::new()) as Box<dyn Sink>) }),
    }
}

/// Snapshots waiting for the writer: enough to ride out a slow terminal, few enough that a
/// reader coming back from a stall gets recent ones.
const QUEUE: usize = 4;
/// How long closing waits for queued lines to be written.
const CLOSE_GRACE: Duration = Duration::from_millis(200);

struct StdoutSink {
    /// `None` once closed, which lets the writer finish.
    queue: Option<SyncSender<Bytes>>,
    /// The writer's end: why, if stdout has gone for good. `None` once seen.
    ended: Option<oneshot::Receiver<Option<String>>>,
}

impl StdoutSink {
    fn new() -> Self {
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        let (end, ended) = oneshot::channel();
        let writer = thread::Builder::new().name("stdout".into()).spawn(move || {
            let _ = end.send(write_lines(lines));
        });
        if let Err(e) = writer {
            // The writer's end went with it, so the sink finishes at once.
            warn!(sink = "stdout", "cannot start the writer thread: {e}");
        }
        StdoutSink {
            queue: Some(queue),
            ended: Some(ended),
        }
    }
}

/// Writes each queued snapshot as one line until the queue closes (`None`) or stdout has
/// gone for good (why).
fn write_lines(lines: mpsc::Receiver<Bytes>) -> Option<String> {
    let mut line = Vec::new();
    let mut failures = RateLimit::default();
    for json in lines {
        line.clear();
        line.extend_from_slice(&json);
        line.push(b'\n');
        // One write per line, so a reader never sees half a snapshot from us.
        let mut out = io::stdout().lock();
        match out.write_all(&line).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                return Some(format!("stdout was closed by its reader ({e})"));
            }
            Err(e) => {
                if let Some(held_back) = failures.allow(Instant::now()) {
                    warn!(sink = "stdout", held_back, "write failed: {e}");
                }
            }
        }
    }
    None
}

#[async_trait]
impl Sink for StdoutSink {
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        match queue.try_send(frame.json.clone()) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                anyhow::bail!("stdout is not being read (a stalled pipe?); snapshot dropped")
            }
            // The writer has ended; `finished` says why.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    async fn reconfigure(&mut self, _config: &PluginConfig) -> anyhow::Result<bool> {
        Ok(true) // nothing to configure
    }

    async fn finished(&mut self) -> String {
        let Some(ended) = &mut self.ended else {
            return std::future::pending().await;
        };
        let why = ended.await;
        self.ended = None;
        why.ok()
            .flatten()
            .unwrap_or_else(|| "the stdout writer stopped".into())
    }

    async fn close(&mut self) {
        self.queue = None;
        if let Some(ended) = self.ended.take() {
            if tokio::time::timeout(CLOSE_GRACE, ended).await.is_err() {
                warn!(
                    sink = "stdout",
                    "its reader is stalled; the last snapshots stay unwritten"
                );
            }
        }
    }
}
