//! The plugin contract and the registry that `inventory` fills.
//!
//! A source or sink is one file under `sources/` or `sinks/` that implements [`Source`] or
//! [`Sink`] and registers a [`SourcePlugin`] or [`SinkPlugin`] beside the type with
//! `inventory::submit!`. The record also declares the plugin's settings and whether it is
//! enabled by default. The registry looks plugins up by name or alias; nothing else in the
//! framework knows which plugins exist.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::encode::Frame;
use crate::hostfs::HostFs;
use crate::model::Section;
use crate::settings::{Declared, PluginConfig};

/// A metric source, collected on the async runtime once per tick under the tick's deadline
/// (see [`crate::pipeline`]): a call that waits goes on as a task of its own and holds up no
/// other source. A call that misses the deadline leaves this source out of that snapshot, and
/// the source is not called again until that call has returned (the call owns the source).
///
/// Cheap reads of `/proc` and `/sys` through [`HostFs`] may stay inline (microseconds; HostFs
/// refuses anything that could wait, such as a FIFO). Anything that can really block (a
/// `statvfs` on a network mount, a sensor bus) must not run on the runtime: move what it
/// needs into `tokio::task::spawn_blocking` and await the handle, e.g.
/// `let stats = spawn_blocking(move || statvfs(&path)).await??;`. If the deadline passes,
/// the blocking thread finishes on its own and this source waits for it before its next call.
#[async_trait]
pub trait Source: Send {
    /// Reads the host once and returns this source's section of the snapshot.
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>>;
}

/// What a source returns from `collect` when the host lacks what it reads (a kernel without
/// pressure stall information) or denies it (a snap interface not connected). The pipeline
/// logs the reason once and leaves the source out of snapshots without further warnings
/// until it answers again: an absent section, not an empty one that reads as "nothing here".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A snapshot consumer. Each sink runs in its own task fed by a bounded queue, so a slow sink
/// loses its own oldest snapshots and never delays another sink or the collection.
#[async_trait]
pub trait Sink: Send {
    /// Delivers one encoded snapshot. An error means this snapshot was not delivered: the
    /// pipeline counts it as dropped ([`crate::stats`]), logs it (rate-limited), and the
    /// sink keeps receiving later snapshots.
    async fn publish(&mut self, frame: &Frame) -> anyhow::Result<()>;

    /// Adopts a reloaded configuration in place. `Ok(false)` asks the pipeline to build a
    /// fresh sink instead (the default); `Err` keeps this sink running unchanged.
    async fn reconfigure(&mut self, _config: &PluginConfig) -> anyhow::Result<bool> {
        Ok(false)
    }

    /// Resolves, with the reason, once this sink can never publish again (the reader of
    /// stdout has gone, say). The pipeline then closes and removes it, and stops when no
    /// sink is left. Never resolves by default.
    async fn finished(&mut self) -> String {
        std::future::pending().await
    }

    /// Flushes and releases everything; called once at shutdown or removal.
    async fn close(&mut self) {}
}

/// What builds a sink: a future that resolves once the sink is ready to publish (listener
/// bound, file open), so the pipeline can wait for readiness before the first collection.
pub type SinkFuture = Pin<Box<dyn Future<Output = anyhow::Result<Box<dyn Sink>>> + Send>>;

/// Where sources read the host from: `--host-root` (`/` on a live system, the host's root
/// mounted in a container, a fixture tree in tests).
#[derive(Clone, Debug)]
pub struct SourceContext {
    pub host: HostFs,
    /// This source's own settings (`settings::<T>()` gives them typed), and the interval and
    /// format they run with.
    pub settings: PluginConfig,
}

/// Registration record of a source.
pub struct SourcePlugin {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    /// `Some(n)`: collected when `sources` is not set, at place `n` of the snapshot.
    pub on_by_default: Option<u8>,
    pub settings: Declared,
    pub build: fn(&SourceContext) -> anyhow::Result<Box<dyn Source>>,
}

/// Registration record of a sink.
pub struct SinkPlugin {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    /// `Some(n)`: enabled when `sinks` is not set, listed at place `n`.
    pub on_by_default: Option<u8>,
    pub settings: Declared,
    /// Checks this sink's settings without side effects (no file created, no port held),
    /// for `--check`; `build` makes the same checks, so start refuses what `--check`
    /// refuses, in the same words. `Err` names the setting to fix.
    pub preflight: fn(&PluginConfig) -> Result<(), String>,
    pub build: fn(&PluginConfig) -> SinkFuture,
}

inventory::collect!(SourcePlugin);
inventory::collect!(SinkPlugin);

/// What the registry needs to know of either kind of plugin.
pub trait Plugin: Sized + Sync + 'static {
    /// `"source"` or `"sink"`, for messages.
    const KIND: &'static str;
    fn name(&self) -> &'static str;
    fn aliases(&self) -> &'static [&'static str];
    fn description(&self) -> &'static str;
    fn on_by_default(&self) -> Option<u8>;
    fn settings(&self) -> &Declared;
    fn all() -> Vec<&'static Self>;
}

macro_rules! impl_plugin {
    ($ty:ty, $kind:literal) => {
        impl Plugin for $ty {
            const KIND: &'static str = $kind;
            fn name(&self) -> &'static str {
                self.name
            }
            fn aliases(&self) -> &'static [&'static str] {
                self.aliases
            }
            fn description(&self) -> &'static str {
                self.description
            }
            fn on_by_default(&self) -> Option<u8> {
                self.on_by_default
            }
            fn settings(&self) -> &Declared {
                &self.settings
            }
            fn all() -> Vec<&'static Self> {
                let mut all: Vec<_> = inventory::iter::<$ty>.into_iter().collect();
                all.sort_by_key(|p| p.name);
                all
            }
        }
    };
}
impl_plugin!(SourcePlugin, "source");
impl_plugin!(SinkPlugin, "sink");

/// The plugin registered under `name` or one of its aliases.
pub fn find<P: Plugin>(name: &str) -> Option<&'static P> {
    P::all()
        .into_iter()
        .find(|p| p.name() == name || p.aliases().contains(&name))
}

/// `memory (mem)`: a plugin's name with its aliases.
pub fn display_name<P: Plugin>(p: &P) -> String {
    match p.aliases() {
        [] => p.name().to_string(),
        aliases => format!("{} ({})", p.name(), aliases.join(", ")),
    }
}

/// `cpu, memory (mem), network (net)`: the valid names, for error messages.
pub fn valid_names<P: Plugin>() -> String {
    P::all()
        .into_iter()
        .map(display_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `cpu,memory,network`: the plugins enabled by default, in their declared order.
pub fn default_names<P: Plugin>() -> String {
    let mut on: Vec<_> = (P::all().into_iter())
        .filter_map(|p| Some((p.on_by_default()?, p.name())))
        .collect();
    on.sort();
    on.iter()
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

/// One collection of `source` outside the pipeline, for unit tests.
#[cfg(test)]
pub(crate) fn collect_now(source: &mut dyn Source) -> anyhow::Result<Box<dyn Section>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(source.collect())
}
