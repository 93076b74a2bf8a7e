//! `stdout`: one line per snapshot, ending in LF.

use async_trait::async_trait;
use tokio::io::{AsyncWriteExt, Stdout};

use crate::encode::Frame;
use crate::plugin::{Sink, SinkPlugin};

inventory::submit! {
    SinkPlugin {
        name: "stdout",
        aliases: &[],
        description: "one JSON line per snapshot on standard output",
        preflight: |_config| Ok(()),
        build: |_config| Box::pin(async { Ok(Box::new(StdoutSink::new()) as Box<dyn Sink>) }),
    }
}

struct StdoutSink {
    out: Stdout,
    line: Vec<u8>,
}

impl StdoutSink {
    fn new() -> Self {
        StdoutSink {
            out: tokio::io::stdout(),
            line: Vec::new(),
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        // One write per line, so a reader never sees half a snapshot from us.
        self.line.clear();
        self.line.extend_from_slice(&frame.json);
        self.line.push(b'\n');
        self.out.write_all(&self.line).await?;
        self.out.flush().await?;
        Ok(())
    }

    async fn reconfigure(&mut self, _config: &crate::config::Config) -> anyhow::Result<bool> {
        Ok(true) // nothing to configure
    }

    async fn close(&mut self) {
        let _ = self.out.flush().await;
    }
}
