//! Logging to stderr with a `RUST_LOG`-style filter, and rate limiting for warnings that a
//! broken host could otherwise repeat every tick.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Installs the stderr logger. `RUST_LOG` takes `level` or `target=level` directives
/// (e.g. `debug` or `warn,pocketses=debug`); the default is `info`. `Targets` parses these
/// without pulling a regex engine into a binary whose size is most of its memory.
pub fn init() {
    // The fmt subscriber has its own maximum level (INFO unless told otherwise), which a
    // layered filter can only lower: let it pass everything and leave the choice to `filter`.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .finish()
        .with(filter)
        .try_init();
}

/// Lets one event through per `every`, counting the ones it held back.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when an event may be logged now, `n` being how many were held back since
    /// the last one; `None` when this one should be dropped.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_event_through_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(Duration::from_secs(10));
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(limit.allow(t0 + Duration::from_secs(11)), None);
    }
}
