//! `agent`: the agent itself, so a fleet can see that it stays small. Its own memory, CPU,
//! descriptors and threads from `/proc/self` (always this process's, never under
//! `--host-root`), and the pipeline's counters from [`crate::stats`]: time spent collecting
//! each source, ticks skipped, snapshots each sink dropped, subscribers connected.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;

use crate::encode::humanize::{one_decimal, ser_bytes, ser_one_decimal};
use crate::hostfs::HostFs;
use crate::model::{Family, Format, Sample, Section, Unit};
use crate::plugin::{Source, SourcePlugin};
use crate::settings::Declared;
use crate::stats;

inventory::submit! {
    SourcePlugin {
        name: "agent",
        aliases: &[],
        description: "the agent itself: RSS, CPU, descriptors, threads, time per source, skipped ticks, dropped snapshots, subscribers",
        on_by_default: None,
        settings: Declared::NONE,
        build: |_| Ok(Box::new(Agent::new())),
    }
}

/// What `/proc/self/stat` says of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SelfStat {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub threads: u64,
    pub rss_bytes: u64,
}

/// Parses a `/proc/PID/stat` line; `None` if it is cut short. Fields are counted after the
/// last `)`, as the command name in parentheses may hold spaces and parentheses itself.
pub fn parse_self_stat(text: &str, ticks_per_second: f64, page_size: u64) -> Option<SelfStat> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest[0] is field 3 (state): utime is field 14, stime 15, num_threads 20, rss 24.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(22).collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(SelfStat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks_per_second,
        threads: field(20)?,
        rss_bytes: field(24)?.saturating_mul(page_size),
    })
}

struct Agent {
    proc_self: HostFs,
    buf: String,
    ticks_per_second: f64,
    page_size: u64,
    previous: Option<(Instant, f64)>,
}

impl Agent {
    fn new() -> Agent {
        use nix::unistd::{sysconf, SysconfVar};
        let conf = |var, default| match sysconf(var) {
            Ok(Some(n)) if n > 0 => n as u64,
            _ => default,
        };
        Agent {
            // The agent's own files: `/`, whatever `--host-root` says.
            proc_self: HostFs::default(),
            buf: String::new(),
            ticks_per_second: conf(SysconfVar::CLK_TCK, 100) as f64,
            page_size: conf(SysconfVar::PAGE_SIZE, 4096),
            previous: None,
        }
    }
}

/// Descriptors open now; `None` if `/proc/self/fd` cannot be listed (out of descriptors).
fn open_fds() -> Option<u64> {
    let listing = std::fs::read_dir("/proc/self/fd").ok()?;
    // The listing's own descriptor is among the entries; it is not the agent's.
    Some((listing.count() as u64).saturating_sub(1))
}

#[async_trait]
impl Source for Agent {
    async fn collect(&mut self) -> anyhow::Result<Box<dyn Section>> {
        let now = Instant::now();
        self.proc_self.read_into("/proc/self/stat", &mut self.buf)?;
        let process = parse_self_stat(&self.buf, self.ticks_per_second, self.page_size)
            .ok_or_else(|| anyhow::anyhow!("/proc/self/stat is cut short"))?;
        let cpu_percent = self.previous.map(|(then, cpu)| {
            let secs = now.duration_since(then).as_secs_f64();
            // Never negative: CPU time only grows within one process.
            match secs > 0.0 {
                true => (process.cpu_seconds - cpu).max(0.0) * 100.0 / secs,
                false => 0.0,
            }
        });
        self.previous = Some((now, process.cpu_seconds));
        Ok(Box::new(AgentSection {
            process,
            open_fds: open_fds(),
            cpu_percent,
            ticks_skipped: stats::ticks_skipped(),
            sources: (stats::sources().into_iter())
                .map(|(name, s)| {
                    let figures = SourceFigures {
                        collections: s.calls(),
                        seconds: s.total().as_secs_f64(),
                        last_seconds: s.last().as_secs_f64(),
                    };
                    (name, figures)
                })
                .collect(),
            sinks: (stats::sinks().into_iter())
                .map(|(name, s)| (name, (s.dropped_total(), s.subscribers())))
                .collect(),
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceFigures {
    pub collections: u64,
    pub seconds: f64,
    pub last_seconds: f64,
}

/// How a per-source family's value is taken from the figures.
type Figure = fn(&SourceFigures) -> f64;

#[derive(Debug)]
pub struct AgentSection {
    pub process: SelfStat,
    pub open_fds: Option<u64>,
    /// CPU time over wall time since the previous snapshot, in percent of one CPU.
    pub cpu_percent: Option<f64>,
    pub ticks_skipped: u64,
    pub sources: Vec<(&'static str, SourceFigures)>,
    /// Per sink: snapshots dropped, subscribers connected where it has them.
    pub sinks: Vec<(&'static str, (u64, Option<u64>))>,
}

impl Section for AgentSection {
    fn view(&self, format: Format) -> Box<dyn erased_serde::Serialize + '_> {
        let p = &self.process;
        match format {
            Format::Seed => Box::new(SeedAgent {
                rss: p.rss_bytes,
                cpu_seconds: p.cpu_seconds,
                open_fds: self.open_fds,
                threads: p.threads,
                skipped: self.ticks_skipped,
                collect_ms: (self.sources.iter())
                    .map(|(name, f)| (*name, one_decimal(f.last_seconds * 1e3)))
                    .collect(),
                sinks: (self.sinks.iter())
                    .map(|&(name, (dropped, subscribers))| {
                        let sink = SeedSink {
                            dropped,
                            subscribers,
                        };
                        (name, sink)
                    })
                    .collect(),
            }),
            Format::Raw => Box::new(RawAgent {
                rss_bytes: p.rss_bytes,
                cpu_seconds_total: p.cpu_seconds,
                cpu_percent: self.cpu_percent,
                open_fds: self.open_fds,
                threads: p.threads,
                ticks_skipped_total: self.ticks_skipped,
                sources: (self.sources.iter())
                    .map(|(name, f)| {
                        let source = RawSource {
                            collections_total: f.collections,
                            collect_seconds_total: f.seconds,
                            last_collect_seconds: f.last_seconds,
                        };
                        (*name, source)
                    })
                    .collect(),
                sinks: (self.sinks.iter())
                    .map(|&(name, (dropped, subscribers))| {
                        let sink = RawSink {
                            dropped_snapshots_total: dropped,
                            subscribers,
                        };
                        (name, sink)
                    })
                    .collect(),
            }),
        }
    }

    fn samples<'a>(&'a self, out: &mut Vec<Sample<'a>>) {
        let p = &self.process;
        out.push(Sample::new(&RSS, [], p.rss_bytes as f64));
        out.push(Sample::new(&CPU, [], p.cpu_seconds));
        if let Some(fds) = self.open_fds {
            out.push(Sample::new(&FDS, [], fds as f64));
        }
        out.push(Sample::new(&THREADS, [], p.threads as f64));
        out.push(Sample::new(&SKIPPED, [], self.ticks_skipped as f64));
        let per_source: [(&'static Family, Figure); 3] = [
            (&COLLECTIONS, |f| f.collections as f64),
            (&COLLECT_SECONDS, |f| f.seconds),
            (&LAST_COLLECT, |f| f.last_seconds),
        ];
        for (family, value) in per_source {
            for (name, figures) in &self.sources {
                out.push(Sample::new(family, [Cow::Borrowed(*name)], value(figures)));
            }
        }
        for (name, (dropped, _)) in &self.sinks {
            out.push(Sample::new(
                &DROPPED,
                [Cow::Borrowed(*name)],
                *dropped as f64,
            ));
        }
        for (name, (_, subscribers)) in &self.sinks {
            if let Some(n) = subscribers {
                out.push(Sample::new(&SUBSCRIBERS, [Cow::Borrowed(*name)], *n as f64));
            }
        }
    }
}

static RSS: Family = Family::gauge(
    "agent_resident_memory_bytes",
    "The agent's resident memory (RSS).",
    Unit::Bytes,
);
static CPU: Family = Family::counter(
    "agent_cpu_seconds_total",
    "CPU time the agent has used, user plus system.",
    Unit::Seconds,
);
static FDS: Family = Family::gauge(
    "agent_open_fds",
    "File descriptors the agent has open.",
    Unit::None,
);
static THREADS: Family = Family::gauge("agent_threads", "The agent's threads.", Unit::None);
static SKIPPED: Family = Family::counter(
    "agent_ticks_skipped_total",
    "Snapshots skipped because collection ran late.",
    Unit::None,
);
static COLLECTIONS: Family = Family::counter(
    "agent_source_collections_total",
    "Calls of each source that have returned.",
    Unit::None,
)
.labels(&["source"]);
static COLLECT_SECONDS: Family = Family::counter(
    "agent_source_collect_seconds_total",
    "Wall time spent in each source's calls.",
    Unit::Seconds,
)
.labels(&["source"]);
static LAST_COLLECT: Family = Family::gauge(
    "agent_source_last_collect_seconds",
    "Wall time of each source's latest call.",
    Unit::Seconds,
)
.labels(&["source"]);
static DROPPED: Family = Family::counter(
    "agent_sink_dropped_snapshots_total",
    "Snapshots each sink did not deliver (fell behind, or its output failed).",
    Unit::None,
)
.labels(&["sink"]);
static SUBSCRIBERS: Family = Family::gauge(
    "agent_sink_subscribers",
    "Subscribers connected to each sink that has them.",
    Unit::None,
)
.labels(&["sink"]);

#[derive(Serialize)]
struct SeedAgent {
    #[serde(serialize_with = "ser_bytes")]
    rss: u64,
    #[serde(serialize_with = "ser_one_decimal")]
    cpu_seconds: f64,
    open_fds: Option<u64>,
    threads: u64,
    skipped: u64,
    collect_ms: BTreeMap<&'static str, f64>,
    sinks: BTreeMap<&'static str, SeedSink>,
}

#[derive(Serialize)]
struct SeedSink {
    dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribers: Option<u64>,
}

#[derive(Serialize)]
struct RawAgent {
    rss_bytes: u64,
    cpu_seconds_total: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_percent: Option<f64>,
    open_fds: Option<u64>,
    threads: u64,
    ticks_skipped_total: u64,
    sources: BTreeMap<&'static str, RawSource>,
    sinks: BTreeMap<&'static str, RawSink>,
}

#[derive(Serialize)]
struct RawSource {
    collections_total: u64,
    collect_seconds_total: f64,
    last_collect_seconds: f64,
}

#[derive(Serialize)]
struct RawSink {
    dropped_snapshots_total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribers: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::collect_now;

    /// A real line, with a command name that holds `) (` and spaces.
    const STAT: &str =
        "4242 (poc) (ket ses) S 1 4242 4242 0 -1 4194560 1306 0 0 0 250 75 0 0 20 0 3 0 \
        1234567 12345678 2500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let s = parse_self_stat(STAT, 100.0, 4096).unwrap();
        assert_eq!(
            s,
            SelfStat {
                cpu_seconds: 3.25,
                threads: 3,
                rss_bytes: 2500 * 4096,
            }
        );
        // Cut before the rss field: no figures rather than wrong ones.
        assert_eq!(
            parse_self_stat(&STAT[..STAT.find("12345678").unwrap()], 100.0, 4096),
            None
        );
        assert_eq!(parse_self_stat("", 100.0, 4096), None);
    }

    #[test]
    fn this_process_as_seen_by_the_source() {
        let mut agent = Agent::new();
        let first = collect_now(&mut agent).unwrap();
        let raw = serde_json::to_value(first.view(Format::Raw)).unwrap();
        assert!(raw["rss_bytes"].as_u64() > Some(1 << 20), "{raw}");
        assert!(raw["threads"].as_u64() >= Some(1), "{raw}");
        assert!(raw["open_fds"].as_u64() >= Some(3), "{raw}");
        // A rate needs a previous snapshot.
        assert!(raw.get("cpu_percent").is_none(), "{raw}");
        let second = collect_now(&mut agent).unwrap();
        let raw = serde_json::to_value(second.view(Format::Raw)).unwrap();
        assert!(raw["cpu_percent"].as_f64() >= Some(0.0), "{raw}");
        let seed = serde_json::to_value(second.view(Format::Seed)).unwrap();
        assert!(
            seed["rss"].as_str().is_some_and(|s| s.ends_with('M')),
            "{seed}"
        );
    }

    #[test]
    fn pipeline_counters_appear_by_name() {
        stats::source("agent-test-source").record(std::time::Duration::from_micros(1500));
        let sink = stats::sink("agent-test-sink");
        sink.dropped(2);
        sink.counts_subscribers();
        sink.subscriber(true);
        let section = collect_now(&mut Agent::new()).unwrap();
        let raw = serde_json::to_value(section.view(Format::Raw)).unwrap();
        let source = &raw["sources"]["agent-test-source"];
        assert_eq!(source["collections_total"], 1, "{raw}");
        assert_eq!(source["last_collect_seconds"], 0.0015, "{raw}");
        assert_eq!(
            raw["sinks"]["agent-test-sink"],
            serde_json::json!({"dropped_snapshots_total": 2, "subscribers": 1})
        );
        let seed = serde_json::to_value(section.view(Format::Seed)).unwrap();
        assert_eq!(seed["collect_ms"]["agent-test-source"], 1.5, "{seed}");
        let mut samples = Vec::new();
        section.samples(&mut samples);
        let subscribers = samples.iter().find(|s| {
            s.family.name == "agent_sink_subscribers"
                && s.labels().any(|(_, v)| v == "agent-test-sink")
        });
        assert_eq!(subscribers.map(|s| s.value), Some(1.0));
    }
}
