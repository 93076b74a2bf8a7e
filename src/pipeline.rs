//! The running pipeline: sinks started and ready first, then one task that ticks on a fixed
//! schedule, collects every source concurrently under the tick's deadline, encodes the
//! snapshot once and broadcasts the bytes.
//!
//! Everything runs on the async runtime: a tick is one timer wakeup, with no thread to hand
//! over to. Each source's call owns the source and hands it back with its section. A call
//! that answers when first polled (the inline `/proc` reads) is done at once; one that waits
//! goes on as a task of its own, concurrently with the others. A call that misses the
//! deadline ([`collection_deadline`]) leaves that source out of the snapshot while the others
//! are published on time, and the source is not called again until that call has returned,
//! so a stuck source costs one task (or one blocking thread), never a pile of them. Each sink runs in its own task behind a bounded
//! broadcast queue: a sink that falls behind loses its own oldest snapshots and delays no one.
//!
//! A panic in a source's collection or in its section's encoding leaves that section out of
//! the snapshot; anything else that ends the ticking task ends the pipeline with an error
//! ([`Pipeline::ended`]), as does the last sink finishing for good.
//!
//! The pipeline records what really runs: the configuration each sink runs with and what the
//! collector collects. A reload that could not apply everything leaves the rest on its old
//! settings, and the next reload tries again wherever they differ from the wanted ones.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{self, catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::encode::{Encoder, Format, Frame};
use crate::hostfs::HostFs;
use crate::logging::RateLimit;
use crate::model::Section;
use crate::plugin::{self, SinkPlugin, Source, SourceContext, SourcePlugin, Unavailable};
use crate::schedule::Ticker;
use crate::settings::{Declared, PluginConfig};
use crate::stats::{self, SourceStats};
use serde_json::{Map, Value};

/// Snapshots a sink may have queued before it starts losing the oldest.
const SINK_QUEUE: usize = 16;
/// How long CPU utilization is measured for the first snapshot (shorter if the interval is).
const WARM_UP: Duration = Duration::from_millis(200);
/// How long shutdown waits for sinks to flush and close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(800);
/// The longest any tick waits for its sources.
const MAX_DEADLINE: Duration = Duration::from_secs(1);

/// The delay before the first snapshot of a run with this interval.
pub fn warm_up(interval: Duration) -> Duration {
    interval.min(WARM_UP)
}

/// How long a tick waits for its sources: half the interval, at most a second. Half, not
/// all of it: a tick that waited the whole interval would publish at the next tick's time,
/// which the schedule would then skip as late; the other half is for encoding and sending.
/// A second at most, so a stuck source delays a snapshot of a slow schedule by no more than
/// that and the others are still published close to their timestamp.
pub fn collection_deadline(interval: Duration) -> Duration {
    (interval / 2).min(MAX_DEADLINE)
}

/// The configured sources, collected together into one snapshot per call.
pub struct Collection {
    slots: Vec<Slot>,
    format: Format,
    deadline: Duration,
    encoder: Encoder,
    seq: u64,
}

/// One configured source and where it is: ready, or out on a call.
struct Slot {
    name: &'static str,
    build: BuildSource,
    /// What it was built with, to build it again after its task was lost.
    context: SourceContext,
    state: SlotState,
    failures: RateLimit,
    /// Ticks this source was left out of because an earlier call had not returned.
    skipped: u64,
    /// It said it is [`Unavailable`] and that was logged; cleared when it answers again.
    unavailable_told: bool,
    stats: &'static SourceStats,
}

enum SlotState {
    Ready(Box<dyn Source>),
    /// A call that missed its tick's deadline, still out.
    Collecting(JoinHandle<Collected>),
    /// The call's task ended without handing the source back (or a call is under way in
    /// this tick); built again before next use.
    Lost,
}

type BuildSource = fn(&SourceContext) -> anyhow::Result<Box<dyn Source>>;

/// A call's section, or why there is none (`Err`: it panicked).
type CallResult = Result<anyhow::Result<Box<dyn Section>>, String>;

/// What a call hands back: the source, and its result.
type Collected = (Box<dyn Source>, CallResult);

/// How this tick's call of a source began.
enum Call {
    /// It answered when first polled: no task was needed.
    Answered(CallResult),
    /// It is out on a task of its own, waited for until the tick's deadline.
    Out(JoinHandle<Collected>),
    /// It was not called, for this reason.
    NotCalled(String),
}

/// Why a source is missing from a snapshot, or its section.
enum Outcome {
    Section(Box<dyn Section>),
    LeftOut(String),
    /// The source said it is [`Unavailable`], for this reason.
    Unavailable(String),
}

impl Collection {
    /// Builds the sources `config` names, each with its settings, reading the host under its
    /// host root; each tick waits [`collection_deadline`] of its interval for them.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Collection {
            slots: Slot::build_all(&config.sources, config)?,
            format: config.format,
            deadline: collection_deadline(config.interval),
            encoder: Encoder::default(),
            seq: 0,
        })
    }

    /// Switches to `names`, `format` and `interval`, taking the sources in `fresh` from
    /// there and keeping the state (baselines, totals, a call still out) of the others.
    fn switch(&mut self, apply: Apply) {
        let Apply {
            sources: names,
            mut fresh,
            format,
            interval,
        } = apply;
        let mut old = std::mem::take(&mut self.slots);
        let take = |list: &mut Vec<Slot>, name: &str| {
            let i = list.iter().position(|s| s.name == name)?;
            Some(list.remove(i))
        };
        for &name in &names {
            if let Some(slot) = take(&mut fresh, name).or_else(|| take(&mut old, name)) {
                self.slots.push(slot);
            }
        }
        self.format = format;
        self.deadline = collection_deadline(interval);
    }

    /// Collects every source concurrently at one shared timestamp and encodes the snapshot
    /// once the last has answered or the deadline has passed. A source whose call fails,
    /// panics or misses the deadline, whose earlier call is still out, or whose section
    /// panics or fails while encoding, is left out of this snapshot and logged at a limited
    /// rate.
    pub async fn collect(&mut self) -> Frame {
        let timestamp = SystemTime::now();
        let deadline = tokio::time::Instant::now() + self.deadline;
        let calls: Vec<Call> = self.slots.iter_mut().map(Slot::start).collect();
        let mut json = self.encoder.begin(timestamp, self.format);
        let mut sections = Vec::with_capacity(self.slots.len());
        for (slot, call) in self.slots.iter_mut().zip(calls) {
            let left_out = match slot.finish(call, deadline).await {
                Outcome::Unavailable(why) => {
                    if !std::mem::replace(&mut slot.unavailable_told, true) {
                        warn!(source = slot.name, "left out of snapshots: {why}");
                    }
                    continue;
                }
                Outcome::Section(section) => {
                    slot.unavailable_told = false;
                    match contain(|| json.section(slot.name, section.as_ref())) {
                        Ok(Ok(())) => {
                            sections.push((slot.name, section));
                            continue;
                        }
                        Ok(Err(e)) => format!("encoding failed: {e}"),
                        Err(panic) => format!("encoding panicked: {panic}"),
                    }
                }
                Outcome::LeftOut(why) => why,
            };
            if let Some(held_back) = slot.failures.allow(Instant::now()) {
                warn!(
                    source = slot.name,
                    held_back, "left out of the snapshot: {left_out}"
                );
            }
        }
        let frame = Frame {
            seq: self.seq,
            timestamp,
            json: json.finish(),
            sections: sections.into(),
        };
        self.seq += 1;
        frame
    }
}

impl Slot {
    /// The sources `names` as `config` sets them up.
    fn build_all(names: &[&'static str], config: &Config) -> anyhow::Result<Vec<Slot>> {
        let host = HostFs::new(&config.host_root);
        names
            .iter()
            .map(|&name| {
                let plugin = plugin::find::<SourcePlugin>(name)
                    .with_context(|| format!("no source is registered as {name:?}"))?;
                let context = SourceContext {
                    host: host.clone(),
                    settings: config.plugin_config(&plugin.settings),
                };
                Slot::new(name, plugin.build, context).with_context(|| format!("source {name}"))
            })
            .collect()
    }

    fn new(name: &'static str, build: BuildSource, context: SourceContext) -> anyhow::Result<Slot> {
        let source = build(&context)?;
        Ok(Slot {
            name,
            build,
            context,
            state: SlotState::Ready(source),
            failures: RateLimit::default(),
            skipped: 0,
            unavailable_told: false,
            stats: stats::source(name),
        })
    }

    /// Starts this tick's call unless an earlier one is still out. A call that returned since
    /// the last tick hands its source back first (its late section is dropped), so the
    /// source is called again at once.
    fn start(&mut self) -> Call {
        if let SlotState::Collecting(task) = &mut self.state {
            // Not awaited, only looked at: the task is waited for, with a real waker, only
            // in the tick that started it.
            let Poll::Ready(done) = Pin::new(task).poll(&mut Context::from_waker(Waker::noop()))
            else {
                self.skipped += 1;
                return Call::NotCalled(format!(
                    "an earlier call has not returned yet ({} ticks skipped so far)",
                    self.skipped
                ));
            };
            self.state = match done {
                Ok((source, _late)) => SlotState::Ready(source),
                Err(_) => SlotState::Lost,
            };
        }
        let source = match std::mem::replace(&mut self.state, SlotState::Lost) {
            SlotState::Ready(source) => source,
            SlotState::Lost => match (self.build)(&self.context) {
                Ok(source) => source,
                Err(e) => return Call::NotCalled(format!("it could not be built again: {e:#}")),
            },
            SlotState::Collecting(_) => unreachable!("handled above"),
        };
        let stats = self.stats;
        let mut call: Pin<Box<dyn Future<Output = Collected> + Send>> = Box::pin(async move {
            let mut source = source;
            // Timed inside the call, so a call that outlives its tick is counted in full.
            let began = Instant::now();
            let result = Contained(source.collect()).await;
            stats.record(began.elapsed());
            (source, result)
        });
        // Polled once here: a source that does not wait (the inline /proc reads) answers at
        // once and costs no task. The waker is a no-op because a call still pending moves to
        // a task of its own, whose polls bring their own waker.
        match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready((source, result)) => {
                self.state = SlotState::Ready(source);
                Call::Answered(result)
            }
            Poll::Pending => Call::Out(tokio::spawn(call)),
        }
    }

    /// This tick's answer, waiting for a call out on a task until `deadline`.
    async fn finish(&mut self, call: Call, deadline: tokio::time::Instant) -> Outcome {
        let result = match call {
            Call::Answered(result) => result,
            Call::NotCalled(why) => return Outcome::LeftOut(why),
            Call::Out(mut task) => match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok((source, result))) => {
                    self.state = SlotState::Ready(source);
                    result
                }
                Ok(Err(e)) => {
                    return Outcome::LeftOut(format!(
                        "its task ended ({}); it is built again",
                        task_end(e)
                    ))
                }
                Err(_) => {
                    self.state = SlotState::Collecting(task);
                    return Outcome::LeftOut(
                        "no answer by the tick's deadline; not called again until it answers"
                            .into(),
                    );
                }
            },
        };
        match result {
            Ok(Ok(section)) => Outcome::Section(section),
            Ok(Err(e)) => match e.downcast::<Unavailable>() {
                Ok(Unavailable(why)) => Outcome::Unavailable(why),
                Err(e) => Outcome::LeftOut(format!("collection failed: {e:#}")),
            },
            Err(panic) => Outcome::LeftOut(format!("collection panicked: {panic}")),
        }
    }
}

/// What ended a task that did not return.
fn task_end(e: JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
        Err(e) => e.to_string(),
    }
}

thread_local! {
    /// Whether the code running on this thread now is contained (see [`contain`]).
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    /// The last contained panic on this thread, as the panic hook saw it (message and
    /// location).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into an error that says what panicked and where.
///
/// While `f` runs the panic hook stays quiet and only records the panic, so the caller's
/// rate-limited warning is all the log shows: a plugin that panics every tick would
/// otherwise print a panic message 100 times a second.
fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    quiet_contained_panics();
    let was = CONTAINED.replace(true);
    let result = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.set(was);
    result.map_err(|payload| {
        LAST_PANIC
            .with(|last| last.borrow_mut().take())
            .unwrap_or_else(|| panic_message(payload.as_ref()).to_string())
    })
}

/// A future each of whose polls is [`contain`]ed: a source that panics hands back an error,
/// and the source itself with it, so it keeps its state for the next call.
struct Contained<F>(F);

impl<F: Future + Unpin> Future for Contained<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match contain(|| Pin::new(&mut self.0).poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Installs, once, the panic hook described at [`contain`]; panics elsewhere go to the hook
/// that was there before.
fn quiet_contained_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CONTAINED.get() {
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

/// What the collector runs: the settings of a configuration that concern collection.
#[derive(Clone, Debug, PartialEq)]
struct Collecting {
    sources: Vec<&'static str>,
    /// Each source's own settings, in the order of `sources`.
    settings: Vec<Map<String, Value>>,
    format: Format,
    interval: Duration,
    host_root: PathBuf,
}

impl Collecting {
    fn of(config: &Config) -> Collecting {
        let settings = (config.sources.iter())
            .map(|&name| match plugin::find::<SourcePlugin>(name) {
                Some(plugin) => config.plugin_config(&plugin.settings).values,
                None => Map::new(),
            })
            .collect();
        Collecting {
            sources: config.sources.clone(),
            settings,
            format: config.format,
            interval: config.interval,
            host_root: config.host_root.clone(),
        }
    }

    /// The settings `name` runs with, if it is collected.
    fn settings_of(&self, name: &str) -> Option<&Map<String, Value>> {
        let i = self.sources.iter().position(|&s| s == name)?;
        self.settings.get(i)
    }
}

/// A reload's change to the collection, sent to the ticking task.
struct Apply {
    sources: Vec<&'static str>,
    fresh: Vec<Slot>,
    format: Format,
    interval: Duration,
}

/// The ticking task: waits for each deadline (or a change), collects and broadcasts. It
/// returns once the pipeline drops its end of `changes`.
async fn run_collector(
    mut collection: Collection,
    mut ticker: Ticker,
    frames: broadcast::Sender<Frame>,
    mut changes: mpsc::UnboundedReceiver<Apply>,
) {
    let mut late = RateLimit::default();
    loop {
        tokio::select! {
            biased;
            change = changes.recv() => {
                let Some(apply) = change else { return };
                let interval = apply.interval;
                collection.switch(apply);
                ticker.set_interval(interval, Instant::now());
                continue;
            }
            () = tokio::time::sleep_until(ticker.deadline().into()) => {}
        }
        // No receivers is fine: a sink may be restarting during a reload.
        let _ = frames.send(collection.collect().await);
        let skipped = ticker.advance(Instant::now());
        if skipped > 0 {
            stats::set_ticks_skipped(ticker.skipped());
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
        let counters = stats::sink(name);
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
                                counters.dropped(1);
                                if let Some(held_back) = failures.allow(Instant::now()) {
                                    warn!(sink = name, held_back, "publish failed: {e:#}");
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(lost)) => {
                            counters.dropped(lost);
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
    /// Changes for the ticking task; dropping it stops that task.
    collector: mpsc::UnboundedSender<Apply>,
    /// The ticking task; `None` once its end has been seen.
    collector_task: Option<JoinHandle<()>>,
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
        let collection = Collection::new(&config)?;
        let ticker = Ticker::new(Instant::now() + warm_up(config.interval), config.interval);
        let (collector, changes) = mpsc::unbounded_channel();
        let frames = starter.frames.clone();
        let collector_task = tokio::spawn(run_collector(collection, ticker, frames, changes));
        Ok(Pipeline {
            starter,
            sinks,
            finished,
            collecting: Collecting::of(&config),
            collector,
            collector_task: Some(collector_task),
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
            // A new host root makes every source new: the state of the others is another
            // tree's. So do new settings of a source.
            let new_root = wanted.host_root != self.collecting.host_root;
            let added: Vec<_> = (wanted.sources.iter())
                .filter(|&&name| {
                    new_root || self.collecting.settings_of(name) != wanted.settings_of(name)
                })
                .copied()
                .collect();
            match Slot::build_all(&added, &config) {
                Ok(fresh) => {
                    let _ = self.collector.send(Apply {
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
    /// (stdout's reader has gone, say), an error if the ticking task has died. Each
    /// finished sink is removed meanwhile, so a reload starts it again.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                exit = collector_ended(&mut self.collector_task) => {
                    let why = exit.err().map_or_else(|| "it stopped unasked".into(), task_end);
                    anyhow::bail!("the collector task died, no more snapshots: {why}");
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
    /// a sink still busy then is abandoned.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        if let Some(task) = self.collector_task {
            // Cancels at its next await: a tick in progress is dropped, calls out stay out.
            task.abort();
        }
        drop(self.starter);
        for sink in self.sinks {
            sink.stop(deadline).await;
        }
    }
}

/// How the ticking task ended, once it has; never if that has already been seen.
async fn collector_ended(task: &mut Option<JoinHandle<()>>) -> Result<(), JoinError> {
    let Some(handle) = task else {
        return std::future::pending().await;
    };
    let ended = handle.await;
    *task = None;
    ended
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;

    /// Fails every other call, panicking on the first, so both kinds of failure are seen.
    struct Flaky(u32);

    #[async_trait]
    impl Source for Flaky {
        async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
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

    /// The default configuration with these settings.
    fn config(settings: &[(&str, &str)]) -> Config {
        let mut config = Config::default();
        for (key, value) in settings {
            config.set(key, value, crate::config::Origin::Flag).unwrap();
        }
        config
    }

    /// What a test's own source is built with: `/`, and no settings.
    fn bare() -> SourceContext {
        SourceContext {
            host: HostFs::default(),
            settings: Config::default().plugin_config(&Declared::NONE),
        }
    }

    /// A collection of `names` (reading `/`) at `interval`, in raw, with `first` in front.
    fn collection(names: &str, interval: &str, first: Slot) -> Collection {
        let config = config(&[
            ("sources", names),
            ("interval", interval),
            ("format", "raw"),
        ]);
        let mut c = Collection::new(&config).unwrap();
        c.slots.insert(0, first);
        c
    }

    fn keys(frame: &Frame) -> Vec<String> {
        let json: serde_json::Value = serde_json::from_slice(&frame.json).unwrap();
        json.as_object().unwrap().keys().cloned().collect()
    }

    #[tokio::test]
    async fn a_failing_source_is_left_out_and_the_others_still_publish() {
        let flaky = Slot::new("flaky", |_| Ok(Box::new(Flaky(0))), bare()).unwrap();
        let mut collection = collection("test-echo", "60", flaky);
        let mut frames = Vec::new();
        for _ in 0..3 {
            let frame = collection.collect().await;
            frames.push(serde_json::from_slice::<serde_json::Value>(&frame.json).unwrap());
        }
        // Panic, error, success: the echo is there every time, flaky only when it worked.
        assert!(frames.iter().all(|f| f["test-echo"] == "hello"));
        assert_eq!(
            frames
                .iter()
                .map(|f| f.get("flaky").is_some())
                .collect::<Vec<_>>(),
            [false, false, true]
        );
        // The panic did not cost the source its state.
        assert_eq!(frames[2]["flaky"], 3);
        assert_eq!(collection.seq, 3);
    }

    /// A source whose sections panic when encoded.
    struct ViewPanics;

    #[async_trait]
    impl Source for ViewPanics {
        async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
            Ok(Box::new(ViewPanics))
        }
    }

    impl Section for ViewPanics {
        fn view(&self, _: Format) -> Box<dyn erased_serde::Serialize + '_> {
            panic!("no view")
        }
    }

    #[tokio::test]
    async fn a_section_that_panics_while_encoding_is_left_out() {
        let panics = Slot::new("panics", |_| Ok(Box::new(ViewPanics)), bare());
        let mut collection = collection("test-echo", "60", panics.unwrap());
        for seq in 0..2 {
            let frame = collection.collect().await;
            assert_eq!(frame.seq, seq);
            assert_eq!(keys(&frame), ["timestamp", "test-echo"]);
        }
    }

    static CALLS: AtomicU32 = AtomicU32::new(0);

    /// Its first call takes 300 ms, later ones answer at once with how many calls began.
    struct SlowFirst;

    #[async_trait]
    impl Source for SlowFirst {
        async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
            let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
            if call == 1 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(Box::new(Count(call)))
        }
    }

    #[tokio::test]
    async fn a_late_source_misses_its_snapshots_without_delaying_them_or_piling_up() {
        let slow = Slot::new("slow", |_| Ok(Box::new(SlowFirst)), bare()).unwrap();
        // 40 ms between ticks: 20 ms for the sources.
        let mut collection = collection("test-echo", "0.04", slow);
        let mut spans = Vec::new();
        let mut frames = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            frames.push(collection.collect().await);
            spans.push(start.elapsed());
        }
        // Late, then still out (not called again): left out, the echo published at once.
        assert!(frames.iter().all(|f| keys(f) == ["timestamp", "test-echo"]));
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        assert!(spans[0] >= Duration::from_millis(20), "{spans:?}");
        assert!(
            spans[1..].iter().all(|s| *s < Duration::from_millis(20)),
            "{spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        // The first call has returned: its late section is dropped and the source called again.
        let frame: serde_json::Value =
            serde_json::from_slice(&collection.collect().await.json).unwrap();
        assert_eq!(frame["slow"], 2);
        assert_eq!(collection.slots[0].skipped, 4);
    }

    #[tokio::test]
    async fn switching_keeps_the_state_of_sources_that_stay() {
        let interval = Duration::from_secs(60);
        let config = config(&[("sources", "test-counter")]);
        let mut collection = Collection::new(&config).unwrap();
        collection.collect().await;
        collection.switch(Apply {
            sources: vec!["test-echo", "test-counter"],
            fresh: Slot::build_all(&["test-echo"], &config).unwrap(),
            format: Format::Raw,
            interval,
        });
        let frame = collection.collect().await;
        assert_eq!(keys(&frame), ["timestamp", "test-echo", "test-counter"]);
        let frame: serde_json::Value = serde_json::from_slice(&frame.json).unwrap();
        // The counter kept its state: this is its second call, not the first of a new one.
        assert_eq!(frame["test-echo"], "hello");
        assert_eq!(frame["test-counter"], 2);
    }
}
