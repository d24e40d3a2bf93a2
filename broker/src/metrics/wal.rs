//! What one write-ahead log did since it was opened: records and bytes
//! appended, fdatasyncs, how long each took and how many records each
//! covered (group commit). Kept by the WAL on the shard's thread (plain
//! fields, no atomics) and copied out when the shard is asked for metrics.

use std::time::Instant;

use super::histogram::Histogram;

/// An fdatasync slower than this is logged (rate-limited).
pub const SLOW_SYNC_MS: u64 = 100;

/// At most one slow-fdatasync line per this many milliseconds.
const SLOW_LOG_INTERVAL_MS: u128 = 1000;

#[derive(Clone, Debug, Default)]
pub struct WalStats {
    /// Records appended (engine and consensus records).
    pub records: u64,
    /// Bytes appended, record headers included.
    pub bytes: u64,
    /// fdatasyncs completed.
    pub syncs: u64,
    /// Duration of each fdatasync (µs), from its start until the shard saw
    /// it complete.
    pub sync_us: Histogram,
    /// Records each fdatasync made durable (group-commit size).
    pub sync_records: Histogram,
    /// The running fdatasync: when it started, records it covers.
    running: Option<(Instant, u64)>,
    /// Records covered by fdatasyncs started so far.
    records_synced: u64,
    slow_logged_at: Option<Instant>,
    slow_not_logged: u64,
}

impl WalStats {
    #[inline]
    pub fn appended(&mut self, record_bytes: u64) {
        self.records += 1;
        self.bytes += record_bytes;
    }

    /// An fdatasync started; it covers every record appended so far.
    pub fn sync_started(&mut self) {
        let covers = self.records - self.records_synced;
        self.records_synced = self.records;
        self.running = Some((Instant::now(), covers));
    }

    /// The running fdatasync completed successfully. Logs it, rate-limited,
    /// if it was slow; `dir` names the log.
    pub fn sync_finished(&mut self, dir: &std::path::Path) {
        let Some((started, covers)) = self.running.take() else { return };
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        self.syncs += 1;
        self.sync_us.record(took.as_micros() as u64);
        self.sync_records.record(covers);
        if took.as_millis() < u128::from(SLOW_SYNC_MS) {
            return;
        }
        if self.slow_logged_at.is_some_and(|t| now.duration_since(t).as_millis() < SLOW_LOG_INTERVAL_MS) {
            self.slow_not_logged += 1;
            return;
        }
        self.slow_logged_at = Some(now);
        log::warn!(
            target: "cmq::wal",
            "slow fdatasync in {}: {:.1} ms for {covers} records (over {SLOW_SYNC_MS} ms; {} more not logged)",
            dir.display(),
            took.as_secs_f64() * 1e3,
            std::mem::take(&mut self.slow_not_logged)
        );
    }

    /// The running fdatasync failed (not timed): its records are left for
    /// the next one to cover.
    pub fn sync_failed(&mut self) {
        if let Some((_, covers)) = self.running.take() {
            self.records_synced -= covers;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sync_counts_the_records_appended_before_it_started() {
        let mut s = WalStats::default();
        s.appended(100);
        s.appended(50);
        s.sync_started();
        s.appended(10);
        s.sync_finished(std::path::Path::new("x"));
        s.sync_started();
        s.sync_failed();
        s.sync_started();
        s.sync_finished(std::path::Path::new("x"));
        assert_eq!((s.records, s.bytes, s.syncs), (3, 160, 2));
        assert_eq!(s.sync_records.sum(), 3, "2 by the first, 1 (the failed one's) by the last");
        assert_eq!(s.sync_us.count(), 2);
    }
}
