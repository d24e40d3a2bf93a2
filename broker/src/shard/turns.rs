//! How long a shard's loop turns take: the time from `poll` returning to the
//! end of the turn (waiting in `poll` is not counted). Every turn is
//! recorded in a histogram (a few nanoseconds: one `Instant` and one
//! counter increment); turns longer than [`SLOW_TURN_MS`] are logged, at
//! most once per [`SLOW_TURN_LOG_EVERY_MS`] with the number not logged;
//! the summary (turn count, p50, p99, p99.9, max) is logged when the shard
//! stops.
//!
//! A long turn delays every connection of the shard, so no single turn may
//! do work that grows with what the broker holds (docs/ARCHITECTURE.md,
//! "One loop turn": the per-turn bounds).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A turn longer than this is logged as slow (requests waited that long).
pub const SLOW_TURN_MS: u64 = 100;

/// Slow turns are logged at most this often.
pub const SLOW_TURN_LOG_EVERY_MS: u64 = 10_000;

/// Longest turn the histogram tells apart (longer ones count as this).
const TURN_US_MAX: u64 = 60_000_000;

/// Significant decimal digits the histogram keeps (1% precision; about
/// 30 KiB per shard).
const TURN_SIGNIFICANT_DIGITS: u8 = 2;

pub struct TurnTimes {
    hist: Histogram<u64>,
    /// Slow turns since the last slow-turn log line, and the longest of them.
    slow_unlogged: u64,
    slow_worst_us: u64,
    next_slow_log: Instant,
}

impl Default for TurnTimes {
    fn default() -> TurnTimes {
        TurnTimes {
            hist: Histogram::new_with_bounds(1, TURN_US_MAX, TURN_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
            slow_unlogged: 0,
            slow_worst_us: 0,
            next_slow_log: Instant::now(),
        }
    }
}

impl TurnTimes {
    /// Records one turn of shard `shard` that started (poll returned) at `from`.
    pub fn record(&mut self, shard: u16, from: Instant) {
        let now = Instant::now();
        let us = u64::try_from(now.duration_since(from).as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us.min(TURN_US_MAX));
        if us > SLOW_TURN_MS * 1000 {
            self.slow(shard, us, now);
        }
    }

    fn slow(&mut self, shard: u16, us: u64, now: Instant) {
        self.slow_unlogged += 1;
        self.slow_worst_us = self.slow_worst_us.max(us);
        if now >= self.next_slow_log {
            log::warn!(
                "shard {shard}: {} loop turn(s) over {SLOW_TURN_MS} ms (longest {} ms): requests waited that long",
                self.slow_unlogged,
                self.slow_worst_us / 1000
            );
            self.slow_unlogged = 0;
            self.slow_worst_us = 0;
            self.next_slow_log = now + Duration::from_millis(SLOW_TURN_LOG_EVERY_MS);
        }
    }

    /// Turns recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The turn duration at quantile `q` (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    /// One line: turn count and the busy time per turn at p50, p99, p99.9 and max.
    pub fn summary(&self) -> String {
        format!(
            "{} loop turns; busy time per turn p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            self.count(),
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
            self.hist.max()
        )
    }
}

/// Testing only (`--fault-panic-after-turns N`): shard 0 panics at the end
/// of its Nth turn, as a bug would; cmqd must then exit (see `main.rs`).
pub fn fault_panic(shard: u16, turn: u64, panic_at: u64) {
    if shard == 0 && panic_at != 0 && turn == panic_at {
        panic!("shard 0: fault injected by --fault-panic-after-turns {panic_at}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_turns_and_summarises() {
        let mut t = TurnTimes::default();
        let start = Instant::now();
        for _ in 0..10 {
            t.record(0, start);
        }
        assert_eq!(t.count(), 10);
        assert!(t.quantile_us(0.99) >= 1);
        let s = t.summary();
        assert!(s.starts_with("10 loop turns; busy time per turn p50 "), "{s}");
    }

    #[test]
    fn slow_turns_are_counted_until_logged() {
        let mut t = TurnTimes::default();
        let now = Instant::now();
        t.slow(0, 200_000, now);
        assert_eq!(t.slow_unlogged, 0, "the first slow turn is logged at once");
        t.slow(0, 300_000, now);
        t.slow(0, 150_000, now);
        assert_eq!((t.slow_unlogged, t.slow_worst_us), (2, 300_000), "later ones wait for the next log line");
    }
}
