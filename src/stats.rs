//! The pipeline's counters about itself, process-wide: time spent collecting each source,
//! ticks skipped, snapshots each sink dropped, subscribers connected. The pipeline and the
//! sinks update them; a source (the agent's own) reads them with [`sources`] and [`sinks`].
//!
//! Each source or sink name gets one set of atomics, leaked once and kept for the life of the
//! process (names are the registry's `&'static str`, so there are only ever as many sets as
//! plugins). Whoever updates one looks it up once, when it starts, and from then on touches
//! only its atomics: the hot path never takes the registry's lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// One source's collections since the agent started.
#[derive(Debug, Default)]
pub struct SourceStats {
    calls: AtomicU64,
    nanos: AtomicU64,
    last_nanos: AtomicU64,
}

impl SourceStats {
    /// Counts one call of `collect` that took `took` (wall time, until it returned).
    pub fn record(&self, took: Duration) {
        let nanos = took.as_nanos().min(u64::MAX.into()) as u64;
        self.calls.fetch_add(1, Relaxed);
        self.nanos.fetch_add(nanos, Relaxed);
        self.last_nanos.store(nanos, Relaxed);
    }

    /// Calls that have returned.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    /// Time spent in all calls that have returned.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Relaxed))
    }

    /// How long the latest call that returned took.
    pub fn last(&self) -> Duration {
        Duration::from_nanos(self.last_nanos.load(Relaxed))
    }
}

/// One sink's losses since the agent started, and its subscribers if it has any.
#[derive(Debug, Default)]
pub struct SinkStats {
    dropped: AtomicU64,
    subscribers: AtomicU64,
    has_subscribers: AtomicBool,
}

impl SinkStats {
    /// Counts `n` snapshots this sink did not deliver.
    pub fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Marks this sink as one that has subscribers, so that it reports their count, 0 too.
    pub fn counts_subscribers(&self) {
        self.has_subscribers.store(true, Relaxed);
    }

    /// One subscriber more (`true`) or less.
    pub fn subscriber(&self, joined: bool) {
        if joined {
            self.subscribers.fetch_add(1, Relaxed);
        } else {
            self.subscribers.fetch_sub(1, Relaxed);
        }
    }

    /// Subscribers connected now; `None` for a sink that has none to count.
    pub fn subscribers(&self) -> Option<u64> {
        (self.has_subscribers.load(Relaxed)).then(|| self.subscribers.load(Relaxed))
    }
}

type Registry<T> = Mutex<Vec<(&'static str, &'static T)>>;

static SOURCES: Registry<SourceStats> = Mutex::new(Vec::new());
static SINKS: Registry<SinkStats> = Mutex::new(Vec::new());
static TICKS_SKIPPED: AtomicU64 = AtomicU64::new(0);

fn entry<T: Default>(registry: &'static Registry<T>, name: &'static str) -> &'static T {
    let mut all = registry.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, stats)) = all.iter().find(|(n, _)| *n == name) {
        return stats;
    }
    let stats: &'static T = Box::leak(Box::default());
    all.push((name, stats));
    stats
}

/// The counters of the source called `name`, made on first use.
pub fn source(name: &'static str) -> &'static SourceStats {
    entry(&SOURCES, name)
}

/// The counters of the sink called `name`, made on first use.
pub fn sink(name: &'static str) -> &'static SinkStats {
    entry(&SINKS, name)
}

/// Every source that has been set up since the agent started, in that order.
pub fn sources() -> Vec<(&'static str, &'static SourceStats)> {
    SOURCES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Every sink that has been started since the agent started, in that order.
pub fn sinks() -> Vec<(&'static str, &'static SinkStats)> {
    SINKS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Records the schedule's count of ticks skipped because collection ran late.
pub fn set_ticks_skipped(total: u64) {
    TICKS_SKIPPED.store(total, Relaxed);
}

/// Ticks skipped since the agent started.
pub fn ticks_skipped() -> u64 {
    TICKS_SKIPPED.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_of_counters_per_name() {
        let a = source("stats-test-a");
        a.record(Duration::from_millis(3));
        a.record(Duration::from_millis(1));
        assert!(std::ptr::eq(a, source("stats-test-a")));
        assert_eq!(
            (a.calls(), a.total(), a.last()),
            (2, Duration::from_millis(4), Duration::from_millis(1))
        );
        let listed = sources().into_iter().find(|(n, _)| *n == "stats-test-a");
        assert!(listed.is_some_and(|(_, s)| std::ptr::eq(s, a)));

        let s = sink("stats-test-sink");
        assert_eq!(s.subscribers(), None);
        s.counts_subscribers();
        assert_eq!(s.subscribers(), Some(0));
        s.dropped(3);
        s.subscriber(true);
        s.subscriber(true);
        s.subscriber(false);
        assert_eq!((s.dropped_total(), s.subscribers()), (3, Some(1)));
    }
}
