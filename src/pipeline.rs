//! The running pipeline: sinks started and ready first, then a collector thread that ticks
//! on a fixed schedule, builds one snapshot, encodes it once and broadcasts the bytes.
//!
//! Collection runs on its own OS thread, so reading `/proc` never blocks the async runtime
//! that serves sinks and subscribers. Each sink runs in its own task behind a bounded
//! broadcast queue: a sink that falls behind loses its own oldest snapshots and delays no one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::encode::{encode, Format, Frame};
use crate::hostfs::HostFs;
use crate::logging::RateLimit;
use crate::model::Snapshot;
use crate::plugin::{self, SinkPlugin, Source, SourceContext, SourcePlugin};
use crate::schedule::Ticker;

/// Snapshots a sink may have queued before it starts losing the oldest.
const SINK_QUEUE: usize = 16;
/// How long CPU utilization is measured for the first snapshot (shorter if the interval is).
const WARM_UP: Duration = Duration::from_millis(200);
/// How long shutdown waits for sinks to flush and close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(800);

/// The delay before the first snapshot of a run with this interval.
pub fn warm_up(interval: Duration) -> Duration {
    interval.min(WARM_UP)
}

/// The configured sources, collected together into one snapshot per call.
pub struct Collection {
    sources: Vec<NamedSource>,
    format: Format,
    seq: u64,
}

struct NamedSource {
    name: &'static str,
    source: Box<dyn Source>,
    failures: RateLimit,
}

impl Collection {
    /// Builds `names` (canonical source names) reading the host from `host`.
    pub fn new(names: &[&'static str], format: Format, host: &HostFs) -> anyhow::Result<Self> {
        Ok(Collection {
            sources: NamedSource::build_all(names, host)?,
            format,
            seq: 0,
        })
    }

    /// Switches to `names` and `format`, keeping the state (baselines, totals) of sources
    /// that stay and taking the others from `fresh`.
    fn switch(&mut self, names: &[&'static str], mut fresh: Vec<NamedSource>, format: Format) {
        let mut old = std::mem::take(&mut self.sources);
        let take = |list: &mut Vec<NamedSource>, name: &str| {
            let i = list.iter().position(|s| s.name == name)?;
            Some(list.remove(i))
        };
        for &name in names {
            if let Some(source) = take(&mut old, name).or_else(|| take(&mut fresh, name)) {
                self.sources.push(source);
            }
        }
        self.format = format;
    }

    /// Collects every source at one shared timestamp and encodes the snapshot. A source that
    /// fails (or panics) is left out of this snapshot and logged at a limited rate.
    pub fn collect(&mut self) -> Frame {
        let timestamp = SystemTime::now();
        let mut sections = Vec::with_capacity(self.sources.len());
        for s in &mut self.sources {
            let result = catch_unwind(AssertUnwindSafe(|| s.source.collect()))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the source panicked")));
            match result {
                Ok(section) => sections.push((s.name, section)),
                Err(e) => {
                    if let Some(held_back) = s.failures.allow(Instant::now()) {
                        warn!(source = s.name, held_back, "collection failed: {e:#}");
                    }
                }
            }
        }
        let json = encode(
            &Snapshot {
                timestamp,
                sections,
            },
            self.format,
        );
        let frame = Frame {
            seq: self.seq,
            timestamp,
            json,
        };
        self.seq += 1;
        frame
    }
}

impl NamedSource {
    fn build_all(names: &[&'static str], host: &HostFs) -> anyhow::Result<Vec<NamedSource>> {
        let ctx = SourceContext { host: host.clone() };
        names
            .iter()
            .map(|&name| {
                let plugin = plugin::find::<SourcePlugin>(name)
                    .with_context(|| format!("no source is registered as {name:?}"))?;
                let source = (plugin.build)(&ctx).with_context(|| format!("source {name}"))?;
                Ok(NamedSource {
                    name,
                    source,
                    failures: RateLimit::default(),
                })
            })
            .collect()
    }
}

/// What the collector thread can be told.
enum Control {
    Stop,
    Apply {
        sources: Vec<&'static str>,
        fresh: Vec<NamedSource>,
        format: Format,
        interval: Duration,
    },
}

/// The collector thread: waits for each deadline (or a control message), collects and
/// broadcasts.
fn run_collector(
    mut collection: Collection,
    mut ticker: Ticker,
    frames: broadcast::Sender<Frame>,
    control: mpsc::Receiver<Control>,
) {
    let mut late = RateLimit::default();
    loop {
        let wait = ticker.deadline().saturating_duration_since(Instant::now());
        match control.recv_timeout(wait) {
            Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Control::Apply {
                sources,
                fresh,
                format,
                interval,
            }) => {
                collection.switch(&sources, fresh, format);
                ticker.set_interval(interval, Instant::now());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() < ticker.deadline() {
            continue;
        }
        // No receivers is fine: a sink may be restarting during a reload.
        let _ = frames.send(collection.collect());
        let skipped = ticker.advance(Instant::now());
        if skipped > 0 {
            if let Some(held_back) = late.allow(Instant::now()) {
                warn!(
                    skipped,
                    total = ticker.skipped(),
                    held_back,
                    "collection ran late; skipped ticks rather than bursting"
                );
            }
        }
    }
}

/// A sink running in its own task.
struct RunningSink {
    name: &'static str,
    commands: tokio::sync::mpsc::Sender<SinkCommand>,
    task: tokio::task::JoinHandle<()>,
}

struct SinkCommand {
    config: Arc<Config>,
    reply: oneshot::Sender<anyhow::Result<bool>>,
}

impl RunningSink {
    /// Builds the sink (it is ready when this returns) and starts feeding it.
    async fn start(
        name: &'static str,
        config: &Arc<Config>,
        frames: &broadcast::Sender<Frame>,
    ) -> anyhow::Result<RunningSink> {
        let plugin = plugin::find::<SinkPlugin>(name)
            .with_context(|| format!("no sink is registered as {name:?}"))?;
        let mut sink = (plugin.build)(config.clone())
            .await
            .with_context(|| format!("sink {name}"))?;
        let mut rx = frames.subscribe();
        let (commands, mut command_rx) = tokio::sync::mpsc::channel::<SinkCommand>(1);
        let task = tokio::spawn(async move {
            let (mut failures, mut lagging) = (RateLimit::default(), RateLimit::default());
            loop {
                tokio::select! {
                    biased;
                    command = command_rx.recv() => match command {
                        Some(SinkCommand { config, reply }) => {
                            let _ = reply.send(sink.reconfigure(&config).await);
                        }
                        None => break,
                    },
                    frame = rx.recv() => match frame {
                        Ok(frame) => {
                            if let Err(e) = sink.publish(&frame).await {
                                if let Some(held_back) = failures.allow(Instant::now()) {
                                    warn!(sink = name, held_back, "publish failed: {e:#}");
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(lost)) => {
                            if let Some(held_back) = lagging.allow(Instant::now()) {
                                warn!(sink = name, lost, held_back, "sink fell behind; dropped its oldest snapshots");
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            sink.close().await;
            debug!(sink = name, "closed");
        });
        Ok(RunningSink {
            name,
            commands,
            task,
        })
    }

    /// `Ok(true)` when the sink adopted `config` in place.
    async fn reconfigure(&self, config: &Arc<Config>) -> anyhow::Result<bool> {
        let (reply, answer) = oneshot::channel();
        let command = SinkCommand {
            config: config.clone(),
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| anyhow::anyhow!("sink {} has stopped", self.name))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("sink {} has stopped", self.name))?
    }

    /// Closes the sink, waiting at most until `deadline`.
    async fn stop(self, deadline: tokio::time::Instant) {
        drop(self.commands);
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            warn!(sink = self.name, "did not close in time; abandoned");
            task.abort();
        }
    }
}

/// A running pipeline; see the module documentation.
pub struct Pipeline {
    config: Arc<Config>,
    frames: broadcast::Sender<Frame>,
    collector: mpsc::Sender<Control>,
    collector_thread: thread::JoinHandle<()>,
    sinks: Vec<RunningSink>,
}

impl Pipeline {
    /// Starts every sink and waits until each is ready, then starts collecting: the first
    /// snapshot follows after [`warm_up`].
    pub async fn start(config: Arc<Config>) -> anyhow::Result<Pipeline> {
        let (frames, _) = broadcast::channel(SINK_QUEUE);
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for &name in &config.sinks {
            sinks.push(RunningSink::start(name, &config, &frames).await?);
        }
        let collection = Collection::new(&config.sources, config.format, &HostFs::default())?;
        let ticker = Ticker::new(Instant::now() + warm_up(config.interval), config.interval);
        let (collector, control) = mpsc::channel();
        let thread_frames = frames.clone();
        let collector_thread = thread::Builder::new()
            .name("collector".into())
            .spawn(move || run_collector(collection, ticker, thread_frames, control))
            .context("starting the collector thread")?;
        Ok(Pipeline {
            config,
            frames,
            collector,
            collector_thread,
            sinks,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Applies a new (already validated) configuration. Sinks that stay adopt it in place
    /// where they can (a TCP publisher keeps its subscribers); others are rebuilt, the new
    /// one started before the old one closes. A sink that cannot take the new settings keeps
    /// running on the old ones, and the error says so.
    pub async fn reload(&mut self, config: Arc<Config>) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut old = std::mem::take(&mut self.sinks);
        let deadline = || tokio::time::Instant::now() + CLOSE_TIMEOUT;
        for &name in &config.sinks {
            let Some(running) = old
                .iter()
                .position(|s| s.name == name)
                .map(|i| old.remove(i))
            else {
                match RunningSink::start(name, &config, &self.frames).await {
                    Ok(new) => self.sinks.push(new),
                    Err(e) => problems.push(format!("{e:#}")),
                }
                continue;
            };
            match running.reconfigure(&config).await {
                Ok(true) => self.sinks.push(running),
                Ok(false) => match RunningSink::start(name, &config, &self.frames).await {
                    Ok(new) => {
                        running.stop(deadline()).await;
                        self.sinks.push(new);
                    }
                    Err(e) => {
                        problems.push(format!("{e:#} (the old {name} sink keeps running)"));
                        self.sinks.push(running);
                    }
                },
                Err(e) => {
                    problems.push(format!("sink {name}: {e:#} (it keeps its old settings)"));
                    self.sinks.push(running);
                }
            }
        }
        for removed in old {
            removed.stop(deadline()).await;
        }

        let added: Vec<_> = (config.sources.iter())
            .filter(|name| !self.config.sources.contains(name))
            .copied()
            .collect();
        self.config = match NamedSource::build_all(&added, &HostFs::default()) {
            Ok(fresh) => {
                let _ = self.collector.send(Control::Apply {
                    sources: config.sources.clone(),
                    fresh,
                    format: config.format,
                    interval: config.interval,
                });
                config
            }
            Err(e) => {
                problems.push(format!("{e:#} (collection unchanged)"));
                // Remember what the collector still runs, so the next reload diffs from it.
                Arc::new(Config {
                    sources: self.config.sources.clone(),
                    interval: self.config.interval,
                    format: self.config.format,
                    ..(*config).clone()
                })
            }
        };
        if problems.is_empty() {
            info!("configuration reloaded");
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }

    /// Stops collecting, lets every sink flush and close, and returns within about a second.
    pub async fn shutdown(self) {
        let _ = self.collector.send(Control::Stop);
        let _ = tokio::task::spawn_blocking(move || self.collector_thread.join()).await;
        drop(self.frames);
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        for sink in self.sinks {
            sink.stop(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Section;

    /// Fails every other call, panicking on the first, so both kinds of failure are seen.
    struct Flaky(u32);

    impl Source for Flaky {
        fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
            self.0 += 1;
            match self.0 % 3 {
                1 => panic!("boom"),
                2 => anyhow::bail!("unreadable"),
                _ => Ok(Box::new(Count(self.0))),
            }
        }
    }

    struct Count(u32);

    impl Section for Count {
        fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
            Box::new(self.0)
        }
    }

    #[test]
    fn a_failing_source_is_left_out_and_the_others_still_publish() {
        let mut collection = Collection::new(&["memory"], Format::Raw, &HostFs::default()).unwrap();
        collection.sources.insert(
            0,
            NamedSource {
                name: "flaky",
                source: Box::new(Flaky(0)),
                failures: RateLimit::default(),
            },
        );
        let frames: Vec<serde_json::Value> = (0..3)
            .map(|_| serde_json::from_slice(&collection.collect().json).unwrap())
            .collect();
        // Panic, error, success: memory is there every time, flaky only when it worked.
        assert!(frames
            .iter()
            .all(|f| f["memory"]["total_bytes"].as_u64() > Some(0)));
        assert_eq!(
            frames
                .iter()
                .map(|f| f.get("flaky").is_some())
                .collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(frames[2]["flaky"], 3);
        assert_eq!(collection.seq, 3);
    }

    #[test]
    fn switching_keeps_the_state_of_sources_that_stay() {
        let mut collection =
            Collection::new(&["network"], Format::Seed, &HostFs::default()).unwrap();
        collection.collect();
        let fresh = NamedSource::build_all(&["memory"], &HostFs::default()).unwrap();
        collection.switch(&["memory", "network"], fresh, Format::Raw);
        let frame: serde_json::Value = serde_json::from_slice(&collection.collect().json).unwrap();
        let names: Vec<&str> = frame
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names, ["timestamp", "memory", "network"]);
        // Raw format now, and network kept its previous sample: rates need one.
        assert!(frame["memory"]["total_bytes"].is_u64());
        assert!(frame["network"]["interfaces"]["lo"]["rx_bytes_per_second"].is_f64());
    }
}
