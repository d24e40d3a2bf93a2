//! Open-loop pacing (`--rate`): when each request was *meant* to go out.
//!
//! Request `k` of a producer is due at `start + k * interval`, computed from
//! `k` each time (no accumulated rounding). A producer that falls behind
//! (the broker stalled, the pipeline was full) sends the overdue requests at
//! once, but each one's latency is still measured from its due time: a stall
//! shows up as the latency every request that should have gone out during
//! it would have seen, instead of as one slow request (coordinated omission).

/// The due times of one producer's requests, in nanoseconds of the run clock.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start_ns: u64,
    /// The interval is `interval_num / interval_den` nanoseconds.
    interval_num: u128,
    interval_den: u128,
}

impl Schedule {
    /// A producer offering `rate` messages/s in requests of `batch` messages,
    /// starting at `start_ns`. `rate` must be positive.
    pub fn new(start_ns: u64, rate_msgs_per_s: f64, batch: usize) -> Schedule {
        // Millionths of a message per second keep fractional rates exact enough.
        let den = (rate_msgs_per_s * 1e6).round().max(1.0) as u128;
        Schedule { start_ns, interval_num: batch as u128 * 1_000_000_000 * 1_000_000, interval_den: den }
    }

    /// When request `k` (0-based) is due.
    pub fn due_ns(&self, k: u64) -> u64 {
        let offset = u128::from(k) * self.interval_num / self.interval_den;
        self.start_ns.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// How many requests are due by `now_ns` (requests `0..n`).
    pub fn due_by(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = u128::from(now_ns - self.start_ns);
        // Request k is due when k * num / den <= elapsed, i.e. k <= elapsed * den / num.
        let last = (elapsed * self.interval_den + self.interval_den - 1) / self.interval_num;
        let mut n = u64::try_from(last).unwrap_or(u64::MAX - 1) + 1;
        // Integer division in due_ns rounds down; step to the exact boundary.
        while n > 0 && self.due_ns(n - 1) > now_ns {
            n -= 1;
        }
        while self.due_ns(n) <= now_ns {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_evenly_spaced_without_drift() {
        // 1,000 msgs/s in batches of 10: one request every 10 ms.
        let s = Schedule::new(5_000, 1_000.0, 10);
        assert_eq!(s.due_ns(0), 5_000);
        assert_eq!(s.due_ns(1), 5_000 + 10_000_000);
        assert_eq!(s.due_ns(1_000_000), 5_000 + 10_000_000 * 1_000_000);
        // A rate that does not divide a second: 3 msgs/s, batch 1 -> 333,333,333.33 ns.
        let s = Schedule::new(0, 3.0, 1);
        assert_eq!(s.due_ns(3), 1_000_000_000);
        assert_eq!(s.due_ns(3_000), 1_000_000_000_000);
    }

    #[test]
    fn due_by_counts_requests_whose_time_has_come() {
        let s = Schedule::new(1_000, 1_000.0, 1); // one per ms
        assert_eq!(s.due_by(0), 0);
        assert_eq!(s.due_by(999), 0);
        assert_eq!(s.due_by(1_000), 1);
        assert_eq!(s.due_by(1_000 + 999_999), 1);
        assert_eq!(s.due_by(1_000 + 1_000_000), 2);
        let s = Schedule::new(0, 3.0, 1);
        for now in [0, 1, 333_333_333, 333_333_334, 999_999_999, 1_000_000_000, 7_777_777_777] {
            let n = s.due_by(now);
            assert!(s.due_ns(n - 1) <= now && s.due_ns(n) > now, "now {now}: n {n}");
        }
    }

    #[test]
    fn a_stall_does_not_move_later_due_times() {
        // The coordinated-omission property: a producer stalled for 50 ms
        // owes every request that fell due meanwhile, each timed from its
        // own due time, and the schedule after the stall is unchanged.
        let s = Schedule::new(0, 10_000.0, 1); // one per 100 µs
        let stall_end = 50_000_000;
        let owed = s.due_by(stall_end);
        assert_eq!(owed, 501);
        let latencies: Vec<u64> = (0..owed).map(|k| stall_end - s.due_ns(k)).collect();
        assert_eq!(latencies[0], 50_000_000);
        assert_eq!(latencies[500], 0);
        assert_eq!(s.due_ns(501), 50_100_000);
    }
}
