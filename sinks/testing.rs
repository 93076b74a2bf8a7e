//! A test-only sink (feature `test-plugins`, which only `cargo test` turns on) that is slow
//! to become ready and logs the sequence number of every snapshot it receives, so a test
//! can see that collection waits for every sink.

use std::time::Duration;

use async_trait::async_trait;
use tracing::info;

use crate::encode::Frame;
use crate::plugin::{Sink, SinkPlugin};
use crate::settings::Declared;

/// How long the sink takes to become ready: many ticks at the shortest interval.
const START_UP: Duration = Duration::from_millis(300);

inventory::submit! {
    SinkPlugin {
        name: "test-slow-start",
        aliases: &[],
        description: "test only: ready after 300 ms, logs the seq of each snapshot",
        on_by_default: None,
        settings: Declared::NONE,
        preflight: |_| Ok(()),
        build: |_| Box::pin(async {
            tokio::time::sleep(START_UP).await;
            Ok(Box::new(SlowStart) as Box<dyn Sink>)
        }),
    }
}

struct SlowStart;

#[async_trait]
impl Sink for SlowStart {
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()> {
        info!("test-slow-start received seq={}", frame.seq);
        Ok(())
    }
}
