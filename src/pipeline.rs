//! The running pipeline: sinks started and ready first, then a collector thread that ticks
//! on a fixed schedule, builds one snapshot, encodes it once and broadcasts the bytes.
//!
//! Collection runs on its own OS thread, so reading `/proc` never blocks the async runtime
//! that serves sinks and subscribers. Each sink runs in its own task behind a bounded
//! broadcast queue: a sink that falls behind loses its own oldest snapshots and delays no one.
//!
//! A panic in a source's collection or in its section's encoding leaves that section out of
//! the snapshot; anything else that ends the collector thread ends the pipeline with an error
//! ([`Pipeline::ended`]), as does the last sink finishing for good.
//!
//! The pipeline records what really runs: the configuration each sink runs with and what the
//! collector collects. A reload that could not apply everything leaves the rest on its old
//! settings, and the next reload tries again wherever they differ from the wanted ones.

use std::cell::RefCell;
use std::panic::{self, catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::encode::{Encoder, Format, Frame};
use crate::hostfs::HostFs;
use crate::logging::RateLimit;
use crate::plugin::{self, SinkPlugin, Source, SourceContext, SourcePlugin};
use crate::schedule::Ticker;
use crate::settings::{Declared, PluginConfig};

/// Snapshots a sink may have queued before it starts losing the oldest.
const SINK_QUEUE: usize = 16;
/// How long CPU utilization is measured for the first snapshot (shorter if the interval is).
const WARM_UP: Duration = Duration::from_millis(200);
/// How long shutdown waits for the collector to stop and sinks to flush and close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(800);
/// The collector thread's name, which the panic hook recognises it by.
const COLLECTOR: &str = "collector";

/// The delay before the first snapshot of a run with this interval.
pub fn warm_up(interval: Duration) -> Duration {
    interval.min(WARM_UP)
}

/// The configured sources, collected together into one snapshot per call.
pub struct Collection {
    sources: Vec<NamedSource>,
    format: Format,
    encoder: Encoder,
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
            encoder: Encoder::default(),
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

    /// Collects every source at one shared timestamp and encodes the snapshot. A source whose
    /// collection fails or panics, or whose section panics or fails while encoding, is left
    /// out of this snapshot and logged at a limited rate.
    pub fn collect(&mut self) -> Frame {
        let timestamp = SystemTime::now();
        let mut json = self.encoder.begin(timestamp, self.format);
        for s in &mut self.sources {
            let left_out = match contain(|| s.source.collect()) {
                Ok(Ok(section)) => match contain(|| json.section(s.name, section.as_ref())) {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => format!("encoding failed: {e}"),
                    Err(panic) => format!("encoding panicked: {panic}"),
                },
                Ok(Err(e)) => format!("collection failed: {e:#}"),
                Err(panic) => format!("collection panicked: {panic}"),
            };
            if let Some(held_back) = s.failures.allow(Instant::now()) {
                warn!(
                    source = s.name,
                    held_back, "left out of the snapshot: {left_out}"
                );
            }
        }
        let frame = Frame {
            seq: self.seq,
            timestamp,
            json: json.finish(),
        };
        self.seq += 1;
        frame
    }
}

thread_local! {
    /// The last panic on this thread, as the panic hook saw it (message and location).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into an error that says what panicked and where.
///
/// On the collector thread the panic hook stays quiet and only records the panic, so the
/// caller's rate-limited warning is all the log shows: a plugin that panics every tick would
/// otherwise print a panic message 100 times a second.
fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        LAST_PANIC
            .with(|last| last.borrow_mut().take())
            .unwrap_or_else(|| panic_message(payload.as_ref()).to_string())
    })
}

/// Installs, once, the panic hook described at [`contain`]; other threads' panics go to the
/// hook that was there before.
fn quiet_collector_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if thread::current().name() != Some(COLLECTOR) {
                return previous(info);
            }
            let message = panic_message(info.payload());
            let described = match info.location() {
                Some(at) => format!("{message} (at {at})"),
                None => message.to_string(),
            };
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(described));
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    (payload.downcast_ref::<&str>().copied())
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
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

/// What the collector runs: the settings of a configuration that concern collection.
#[derive(Clone, Debug, PartialEq)]
struct Collecting {
    sources: Vec<&'static str>,
    format: Format,
    interval: Duration,
}

impl Collecting {
    fn of(config: &Config) -> Collecting {
        Collecting {
            sources: config.sources.clone(),
            format: config.format,
            interval: config.interval,
        }
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

/// How the collector thread ended: `Err` with the panic that ended it.
type CollectorExit = oneshot::Receiver<Result<(), String>>;

/// A sink running in its own task, with the settings it really runs with.
struct RunningSink {
    name: &'static str,
    /// Tells this sink apart from a later one of the same name, when it reports finishing.
    id: u64,
    /// The sink's declared settings, to take its part of a new configuration.
    settings: &'static Declared,
    /// Its part of the configuration it runs with: a reload that changes only other
    /// plugins' settings leaves it alone.
    config: PluginConfig,
    commands: tokio::sync::mpsc::Sender<SinkCommand>,
    task: tokio::task::JoinHandle<()>,
}

struct SinkCommand {
    config: PluginConfig,
    reply: oneshot::Sender<anyhow::Result<bool>>,
}

/// Starts sinks: feeds each the broadcast snapshots and hears which finish for good.
struct SinkStarter {
    frames: broadcast::Sender<Frame>,
    finished: tokio::sync::mpsc::UnboundedSender<u64>,
    next_id: u64,
}

impl SinkStarter {
    /// Builds the sink (it is ready when this returns) and starts feeding it.
    async fn start(&mut self, name: &'static str, config: &Config) -> anyhow::Result<RunningSink> {
        let plugin = plugin::find::<SinkPlugin>(name)
            .with_context(|| format!("no sink is registered as {name:?}"))?;
        let given = config.plugin_config(&plugin.settings);
        let mut sink = (plugin.build)(&given)
            .await
            .with_context(|| format!("sink {name}"))?;
        let id = self.next_id;
        self.next_id += 1;
        let finished = self.finished.clone();
        let mut rx = self.frames.subscribe();
        let (commands, mut command_rx) = tokio::sync::mpsc::channel::<SinkCommand>(1);
        let task = tokio::spawn(async move {
            let (mut failures, mut lagging) = (RateLimit::default(), RateLimit::default());
            let gone = loop {
                tokio::select! {
                    biased;
                    command = command_rx.recv() => match command {
                        Some(SinkCommand { config, reply }) => {
                            let _ = reply.send(sink.reconfigure(&config).await);
                        }
                        None => break false,
                    },
                    why = sink.finished() => {
                        info!(sink = name, "{why}; no more snapshots go to this sink");
                        break true;
                    }
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
                        Err(broadcast::error::RecvError::Closed) => break false,
                    },
                }
            };
            sink.close().await;
            debug!(sink = name, "closed");
            if gone {
                let _ = finished.send(id);
            }
        });
        Ok(RunningSink {
            name,
            id,
            settings: &plugin.settings,
            config: given,
            commands,
            task,
        })
    }
}

impl RunningSink {
    /// `Ok(true)` when the sink adopted `config` in place.
    async fn reconfigure(&self, config: PluginConfig) -> anyhow::Result<bool> {
        let (reply, answer) = oneshot::channel();
        let command = SinkCommand { config, reply };
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
    starter: SinkStarter,
    sinks: Vec<RunningSink>,
    /// Ids of sinks that finished for good, from their tasks.
    finished: tokio::sync::mpsc::UnboundedReceiver<u64>,
    collecting: Collecting,
    collector: mpsc::Sender<Control>,
    /// `None` once the collector thread's end has been seen.
    collector_exit: Option<CollectorExit>,
}

impl Pipeline {
    /// Starts every sink and waits until each is ready, then starts collecting: the first
    /// snapshot follows after [`warm_up`].
    pub async fn start(config: Arc<Config>) -> anyhow::Result<Pipeline> {
        let (frames, _) = broadcast::channel(SINK_QUEUE);
        let (finished_tx, finished) = tokio::sync::mpsc::unbounded_channel();
        let mut starter = SinkStarter {
            frames,
            finished: finished_tx,
            next_id: 0,
        };
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for &name in &config.sinks {
            sinks.push(starter.start(name, &config).await?);
        }
        let collection = Collection::new(&config.sources, config.format, &HostFs::default())?;
        let ticker = Ticker::new(Instant::now() + warm_up(config.interval), config.interval);
        let (collector, control) = mpsc::channel();
        let (exit, collector_exit) = oneshot::channel();
        let frames = starter.frames.clone();
        quiet_collector_panics();
        thread::Builder::new()
            .name(COLLECTOR.into())
            .spawn(move || {
                let _ = exit.send(contain(|| {
                    run_collector(collection, ticker, frames, control)
                }));
            })
            .context("starting the collector thread")?;
        Ok(Pipeline {
            starter,
            sinks,
            finished,
            collecting: Collecting::of(&config),
            collector,
            collector_exit: Some(collector_exit),
        })
    }

    /// Whether everything runs with `config` already: every sink it names, with exactly
    /// these settings, no other sink, and the collection it asks for.
    pub fn runs(&self, config: &Config) -> bool {
        self.collecting == Collecting::of(config)
            && self.sinks.len() == config.sinks.len()
            && (config.sinks.iter()).all(|&name| {
                (self.sinks.iter())
                    .any(|s| s.name == name && s.config == config.plugin_config(s.settings))
            })
    }

    /// Applies a new (already validated) configuration wherever it differs from what runs.
    /// Sinks adopt it in place where they can (a TCP publisher keeps its subscribers);
    /// others are rebuilt, the new one started before the old one closes. A sink that cannot
    /// take the new settings keeps running on its old ones, and the error says so; so does
    /// the collection when a new source cannot be built.
    pub async fn reload(&mut self, config: Arc<Config>) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut old = std::mem::take(&mut self.sinks);
        let deadline = || tokio::time::Instant::now() + CLOSE_TIMEOUT;
        for &name in &config.sinks {
            let Some(mut running) = old
                .iter()
                .position(|s| s.name == name)
                .map(|i| old.remove(i))
            else {
                match self.starter.start(name, &config).await {
                    Ok(new) => self.sinks.push(new),
                    Err(e) => problems.push(format!("{e:#}")),
                }
                continue;
            };
            let wanted = config.plugin_config(running.settings);
            if running.config == wanted {
                self.sinks.push(running);
                continue;
            }
            match running.reconfigure(wanted.clone()).await {
                Ok(true) => {
                    running.config = wanted;
                    self.sinks.push(running);
                }
                Ok(false) => match self.starter.start(name, &config).await {
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

        let wanted = Collecting::of(&config);
        if wanted != self.collecting {
            let added: Vec<_> = (wanted.sources.iter())
                .filter(|name| !self.collecting.sources.contains(name))
                .copied()
                .collect();
            match NamedSource::build_all(&added, &HostFs::default()) {
                Ok(fresh) => {
                    let _ = self.collector.send(Control::Apply {
                        sources: wanted.sources.clone(),
                        fresh,
                        format: wanted.format,
                        interval: wanted.interval,
                    });
                    self.collecting = wanted;
                }
                Err(e) => problems.push(format!("{e:#} (collection unchanged)")),
            }
        }
        if problems.is_empty() {
            info!("configuration reloaded");
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }

    /// Resolves when the pipeline cannot go on: `Ok` once every sink has finished for good
    /// (stdout's reader has gone, say), an error if the collector thread has died. Each
    /// finished sink is removed meanwhile, so a reload starts it again.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                exit = collector_ended(&mut self.collector_exit) => {
                    let why = exit.err().unwrap_or_else(|| "it stopped unasked".into());
                    anyhow::bail!("the collector thread died, no more snapshots: {why}");
                }
                Some(id) = self.finished.recv() => {
                    self.sinks.retain(|s| s.id != id);
                    if self.sinks.is_empty() {
                        info!("every sink has finished");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Stops collecting, lets every sink flush and close, and returns within about a second:
    /// a collector or sink still busy then is abandoned.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        let _ = self.collector.send(Control::Stop);
        if let Some(exit) = self.collector_exit {
            if tokio::time::timeout_at(deadline, exit).await.is_err() {
                warn!("the collector did not stop in time; abandoned");
            }
        }
        drop(self.starter);
        for sink in self.sinks {
            sink.stop(deadline).await;
        }
    }
}

/// How the collector thread ended, once it has; never if that has already been seen.
async fn collector_ended(exit: &mut Option<CollectorExit>) -> Result<(), String> {
    let Some(receiver) = exit else {
        return std::future::pending().await;
    };
    let ended = receiver
        .await
        .unwrap_or_else(|_| Err("it ended without a word".into()));
    *exit = None;
    ended
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

    /// A source whose sections panic when encoded.
    struct ViewPanics;

    impl Source for ViewPanics {
        fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
            Ok(Box::new(ViewPanics))
        }
    }

    impl Section for ViewPanics {
        fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
            panic!("no view")
        }
    }

    #[test]
    fn a_section_that_panics_while_encoding_is_left_out() {
        let mut collection =
            Collection::new(&["memory"], Format::Seed, &HostFs::default()).unwrap();
        collection.sources.insert(
            0,
            NamedSource {
                name: "panics",
                source: Box::new(ViewPanics),
                failures: RateLimit::default(),
            },
        );
        for seq in 0..2 {
            let frame = collection.collect();
            assert_eq!(frame.seq, seq);
            let json: serde_json::Value = serde_json::from_slice(&frame.json).unwrap();
            let names: Vec<&str> = json
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(names, ["timestamp", "memory"]);
        }
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
