//! Pocketses: a small, fast host-metrics agent.
//!
//! Every interval the [`pipeline`] asks each configured [`Source`](plugin::Source) for a
//! [`Section`](model::Section), encodes the sections under one shared timestamp into one
//! snapshot ([`encode`]) and hands the same bytes to every [`Sink`](plugin::Sink).
//! Sources live in `sources/`, sinks in `sinks/`, one file each, with their settings; they
//! register themselves with `inventory`, and the framework learns them, their settings and
//! the defaults from the registry, so nothing in the framework names a particular plugin.
//! (`watch`, the terminal view, is a client of the wire format and knows its sections.)

pub mod cli;
pub mod config;
pub mod encode;
pub mod hostfs;
pub mod limits;
pub mod logging;
pub mod model;
pub mod net;
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
