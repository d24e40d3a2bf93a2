//! The broker-wide budget for connection buffers, and the counters of every
//! refusal a connection limit or deadline makes.
//!
//! What a connection's buffers hold (the capacity of its read buffer and of
//! its output buffer) is charged here. Growing a read buffer for a frame
//! larger than one read chunk asks first and waits (the connection stops
//! being read) when the budget is used up; everything else is charged as it
//! happens and, while the broker is over budget, makes the shards refuse
//! such growth and shed connections that hold unsent output they do not read.
//!
//! Shards share one atomic counter but touch it only in steps of
//! [`BUDGET_GRANT_BYTES`]: each keeps a local grant and charges against it,
//! so the counter is written about once per MiB of buffer change, not on
//! every read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards take budget from the broker-wide counter in steps of this many
/// bytes and return it once they hold more than two steps unused.
pub const BUDGET_GRANT_BYTES: usize = 1024 * 1024;

/// One shard's part of the budget.
pub struct Budget {
    limit: usize,
    /// Bytes this shard's connections hold.
    used: usize,
    /// Bytes of the broker-wide counter this shard holds (`>= used`, up to
    /// two steps more).
    granted: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget { limit, used: 0, granted: 0 }
    }

    /// Bytes this shard's connections hold.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Whether the whole broker holds more than its budget.
    pub fn is_over(&self, total: &AtomicUsize) -> bool {
        total.load(Ordering::Relaxed) > self.limit
    }

    /// Records that a connection's buffers went from `old` to `new` bytes.
    /// Never refused: this is memory already allocated (or freed).
    pub fn adjust(&mut self, total: &AtomicUsize, old: usize, new: usize) {
        self.used = self.used + new - old;
        if self.used > self.granted {
            let step = (self.used - self.granted).next_multiple_of(BUDGET_GRANT_BYTES);
            total.fetch_add(step, Ordering::Relaxed);
            self.granted += step;
        } else if self.granted - self.used > 2 * BUDGET_GRANT_BYTES {
            let keep = self.used.next_multiple_of(BUDGET_GRANT_BYTES) + BUDGET_GRANT_BYTES;
            total.fetch_sub(self.granted - keep, Ordering::Relaxed);
            self.granted = keep;
        }
    }

    /// Charges `n` more bytes if the broker stays within its budget.
    pub fn try_take(&mut self, total: &AtomicUsize, n: usize) -> bool {
        if self.used + n <= self.granted {
            self.used += n;
            return true;
        }
        let step = (self.used + n - self.granted).next_multiple_of(BUDGET_GRANT_BYTES);
        let mut cur = total.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(step) > self.limit {
                return false;
            }
            match total.compare_exchange_weak(cur, cur + step, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.granted += step;
        self.used += n;
        true
    }
}

/// Why the broker refused, paused or closed a connection: one counter per
/// cause, per shard. Written only by the shard that owns them (relaxed
/// stores, no contention); read from anywhere, for metrics.
#[derive(Default)]
#[repr(align(64))]
pub struct ConnCounters {
    /// Frames refused before the handshake (or Handshake frames) for being
    /// larger than `HANDSHAKE_FRAME_BYTES_MAX`.
    pub handshake_frames_too_large: AtomicU64,
    /// Connections closed for not completing the handshake in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed because a request frame did not arrive whole in time.
    pub frame_timeouts: AtomicU64,
    /// Connections closed for being idle.
    pub idle_timeouts: AtomicU64,
    /// Connections closed as slow consumers: unsent output over the
    /// per-connection bound, making no progress in time, or shed to bring
    /// the broker back under its buffer budget.
    pub slow_consumer_closes: AtomicU64,
    /// Connections refused at accept because `--max-connections` were open.
    pub connections_refused: AtomicU64,
    /// TLS connections refused at accept because the buffer budget had no
    /// room for their TLS session (`TLS_SESSION_BYTES_MAX`).
    pub tls_budget_refusals: AtomicU64,
    /// Reads put off because the buffer budget was used up (the connection
    /// waits until memory frees).
    pub budget_read_waits: AtomicU64,
    /// Bytes this shard's connection buffers hold now (a gauge).
    pub buffer_bytes: AtomicU64,
}

impl ConnCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// Logs at most one line per second for one kind of event, saying how many
/// were not logged in between, so a flood of bad connections cannot flood
/// the log.
#[derive(Default)]
pub struct LogLimiter {
    next_ms: u64,
    suppressed: u64,
}

/// Shortest time between two log lines of one kind.
pub const LOG_INTERVAL_MS: u64 = 1000;

impl LogLimiter {
    /// `Some(events not logged since the last line)` if a line may be logged now.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms {
            self.suppressed += 1;
            return None;
        }
        self.next_ms = now_ms + LOG_INTERVAL_MS;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = BUDGET_GRANT_BYTES;

    #[test]
    fn takes_are_refused_past_the_limit_across_shards_and_succeed_after_release() {
        let total = AtomicUsize::new(0);
        let (mut a, mut b) = (Budget::new(10 * MIB), Budget::new(10 * MIB));
        assert!(a.try_take(&total, 6 * MIB));
        assert!(!b.try_take(&total, 5 * MIB), "6 + 5 MiB is over 10 MiB");
        assert!(b.try_take(&total, 4 * MIB));
        assert!(!a.try_take(&total, 1));
        assert_eq!(total.load(Ordering::Relaxed), 10 * MIB);
        // `a` frees what it took: the counter gets it back, less one step of slack.
        a.adjust(&total, 6 * MIB, 0);
        assert!(total.load(Ordering::Relaxed) <= 4 * MIB + MIB);
        assert!(b.try_take(&total, 4 * MIB));
    }

    #[test]
    fn small_changes_stay_local_and_forced_charges_can_exceed_the_limit() {
        let total = AtomicUsize::new(0);
        let mut a = Budget::new(4 * MIB);
        a.adjust(&total, 0, 1000);
        assert_eq!(total.load(Ordering::Relaxed), MIB);
        for _ in 0..100 {
            a.adjust(&total, 1000, 64 * 1024);
            a.adjust(&total, 64 * 1024, 1000);
        }
        assert_eq!(total.load(Ordering::Relaxed), MIB, "no traffic on the shared counter");
        a.adjust(&total, 1000, 6 * MIB);
        assert!(a.is_over(&total));
        assert!(!a.try_take(&total, 1 + 2 * MIB));
        a.adjust(&total, 6 * MIB, 0);
        assert!(!a.is_over(&total));
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn log_limiter_allows_one_line_per_interval_and_counts_the_rest() {
        let mut l = LogLimiter::default();
        assert_eq!(l.allow(5_000), Some(0));
        assert_eq!(l.allow(5_001), None);
        assert_eq!(l.allow(5_999), None);
        assert_eq!(l.allow(6_000), Some(2));
    }
}
