//! Pocketses: a small, fast host-metrics agent.
//!
//! Every interval the [`pipeline`] asks each configured [`Source`](plugin::Source) for a
//! [`Section`](model::Section), encodes the sections under one shared timestamp into one
//! snapshot ([`encode`]) and hands the same bytes to every [`Sink`](plugin::Sink).
//! Sources live in `sources/`, sinks in `sinks/`, one file each; they register themselves
//! with `inventory`, so nothing in `src/` names a particular plugin.

pub mod cli;
pub mod config;
pub mod encode;
pub mod hostfs;
pub mod limits;
pub mod logging;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod quote;
pub mod schedule;
pub mod settings;
pub mod snapd;
pub mod stats;
#[cfg(feature = "watch")]
pub mod watch;

#[path = "../sources/mod.rs"]
pub mod sources;

#[path = "../sinks/mod.rs"]
pub mod sinks;
