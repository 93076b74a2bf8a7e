//! The collection schedule: deadlines on a fixed grid (`first + k × interval`), so the
//! schedule never drifts, and a deadline that has already passed is skipped and counted,
//! never run late in a burst.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Ticker {
    next: Instant,
    interval: Duration,
    skipped: u64,
}

impl Ticker {
    pub fn new(first: Instant, interval: Duration) -> Self {
        Ticker {
            next: first,
            interval,
            skipped: 0,
        }
    }

    /// When the next collection is due.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Deadlines skipped since start because collection ran late.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Moves past the deadline that just ran, `now` being when that run finished. Returns
    /// how many later deadlines were already past and therefore skipped.
    pub fn advance(&mut self, now: Instant) -> u64 {
        self.next += self.interval;
        if now <= self.next {
            return 0;
        }
        let behind = now - self.next;
        let missed = (behind.as_nanos() / self.interval.as_nanos()) as u64 + 1;
        self.next += self.interval * missed as u32;
        self.skipped += missed;
        missed
    }

    /// Switches to a new interval from the last deadline that ran, keeping the grid aligned
    /// to it; a deadline already past is taken at once.
    pub fn set_interval(&mut self, interval: Duration, now: Instant) {
        let last = self.next.checked_sub(self.interval).unwrap_or(self.next);
        self.interval = interval;
        self.next = (last + interval).max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn deadlines_stay_on_the_grid_over_thousands_of_ticks() {
        let t0 = Instant::now();
        let interval = 10 * MS;
        let mut ticker = Ticker::new(t0, interval);
        for k in 0..100_000u32 {
            assert_eq!(ticker.deadline(), t0 + interval * k);
            // Each run wakes a little late and works a little; neither accumulates.
            let finished = ticker.deadline() + Duration::from_micros(700 + u64::from(k % 7) * 100);
            assert_eq!(ticker.advance(finished), 0);
        }
        assert_eq!(ticker.skipped(), 0);
    }

    #[test]
    fn a_late_run_skips_past_deadlines_instead_of_bursting() {
        let t0 = Instant::now();
        let mut ticker = Ticker::new(t0, 10 * MS);
        // The run due at 0 finished at 35 ms: deadlines 10, 20 and 30 are past.
        assert_eq!(ticker.advance(t0 + 35 * MS), 3);
        assert_eq!(ticker.deadline(), t0 + 40 * MS);
        assert_eq!(ticker.skipped(), 3);
        // Back on time afterwards, on the same grid.
        assert_eq!(ticker.advance(t0 + 41 * MS), 0);
        assert_eq!(ticker.deadline(), t0 + 50 * MS);
    }

    #[test]
    fn a_run_finishing_exactly_at_the_next_deadline_is_not_late() {
        let t0 = Instant::now();
        let mut ticker = Ticker::new(t0, 10 * MS);
        assert_eq!(ticker.advance(t0 + 10 * MS), 0);
        assert_eq!(ticker.deadline(), t0 + 10 * MS);
    }

    #[test]
    fn a_new_interval_counts_from_the_last_run() {
        let t0 = Instant::now();
        let mut ticker = Ticker::new(t0, 60_000 * MS);
        ticker.advance(t0 + MS);
        ticker.set_interval(1000 * MS, t0 + 5 * MS);
        assert_eq!(ticker.deadline(), t0 + 1000 * MS);
        ticker.set_interval(1 * MS, t0 + 5 * MS);
        assert_eq!(ticker.deadline(), t0 + 5 * MS);
    }
}
