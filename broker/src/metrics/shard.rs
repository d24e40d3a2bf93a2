//! The counters one shard keeps on its own thread: answers by operation and
//! result code, request latency, and its event loop's turns. Plain fields,
//! no atomics or locks: other threads see them only as a copy the shard
//! sends when asked (`snapshot.rs`).

use std::collections::BTreeMap;
use std::time::Instant;

use cmq_protocol::ErrorCode;

use super::histogram::Histogram;
use super::latency::{self, Kind, Latency};

/// Answers are counted in a table indexed by opcode: every opcode is below
/// this (a test checks), so counting an answer is one array increment.
pub const OPCODE_SLOTS: usize = 0x0800;

/// A loop turn longer than this is logged (rate-limited) with what it did.
pub const SLOW_TURN_MS: u64 = 10;

/// At most one slow-turn line per shard per this many milliseconds.
const SLOW_LOG_INTERVAL_MS: u128 = 1000;

/// The longest turn is reported over windows of this length: the gauge
/// shows the longest of the current and the previous window, so a scrape
/// every window length sees every stall.
pub const LONGEST_TURN_WINDOW_MS: u128 = 10_000;

pub struct ShardMetrics<N> {
    /// Successful answers by opcode.
    ok: Box<[u64]>,
    /// Error answers by (opcode, code): rarer, and codes are sparse.
    errors: BTreeMap<(u16, u16), u64>,
    pub latency: Latency<N>,
    turn: u64,
    turn_started: Instant,
    turn_answers: u64,
    /// Turn durations (µs).
    pub turns: Histogram,
    longest: (Instant, u64, u64),
    slow_logged_at: Option<Instant>,
    slow_not_logged: u64,
    /// HTTP push outcomes by `PUSH_RESULTS`.
    pub pushes: [u64; PUSH_RESULTS.len()],
    /// Pushes that waited in the outbox because the push pool was full.
    pub pushes_deferred: u64,
    /// The last push failure of each subscription (the console shows them).
    pub push_failures: super::push_failures::PushFailures,
}

/// Outcomes of an HTTP push: the endpoint answered 2xx; failed in a way a
/// retry may fix (non-2xx, timeout, refused); rejected (no retry can
/// succeed: given up at once).
pub const PUSH_RESULTS: [&str; 3] = ["delivered", "failed", "rejected"];

impl<N: latency::Need> Default for ShardMetrics<N> {
    fn default() -> Self {
        let now = Instant::now();
        ShardMetrics {
            ok: vec![0; OPCODE_SLOTS].into_boxed_slice(),
            errors: BTreeMap::new(),
            latency: Latency::default(),
            turn: 0,
            turn_started: now,
            turn_answers: 0,
            turns: Histogram::default(),
            longest: (now, 0, 0),
            slow_logged_at: None,
            slow_not_logged: 0,
            pushes: [0; PUSH_RESULTS.len()],
            pushes_deferred: 0,
            push_failures: Default::default(),
        }
    }
}

/// What a slow turn did, for its log line.
pub struct TurnReport {
    pub events: usize,
    pub connections: usize,
}

impl<N: latency::Need> ShardMetrics<N> {
    /// A loop turn starts (its poll returned).
    #[inline]
    pub fn begin_turn(&mut self, turn: u64) {
        self.turn = turn;
        self.turn_started = Instant::now();
        self.turn_answers = 0;
    }

    /// The turn ended: records its duration; returns how long it took if
    /// it was slow and may be logged now.
    pub fn end_turn(&mut self) -> Option<(f64, u64)> {
        let now = Instant::now();
        let us = now.saturating_duration_since(self.turn_started).as_micros() as u64;
        self.turns.record(us);
        let (window_start, prev, cur) = &mut self.longest;
        if now.saturating_duration_since(*window_start).as_millis() >= LONGEST_TURN_WINDOW_MS {
            *window_start = now;
            *prev = std::mem::take(cur);
        }
        *cur = (*cur).max(us);
        if us < SLOW_TURN_MS * 1000 {
            return None;
        }
        if self.slow_logged_at.is_some_and(|t| now.saturating_duration_since(t).as_millis() < SLOW_LOG_INTERVAL_MS) {
            self.slow_not_logged += 1;
            return None;
        }
        self.slow_logged_at = Some(now);
        Some((us as f64 / 1e3, std::mem::take(&mut self.slow_not_logged)))
    }

    /// Logs a slow turn (see `end_turn`) with what it did.
    pub fn log_slow_turn(&self, shard: u16, (ms, not_logged): (f64, u64), r: TurnReport) {
        log::warn!(
            target: "cmq::shard",
            "shard {shard}: slow loop turn: {ms:.1} ms (over {SLOW_TURN_MS} ms) handling {} readiness events \
             and producing {} answers, with {} connections open ({not_logged} more slow turns not logged)",
            r.events,
            self.turn_answers,
            r.connections
        );
    }

    /// The longest turn (µs) of the current and previous window.
    pub fn longest_turn_us(&self) -> u64 {
        self.longest.1.max(self.longest.2)
    }

    /// An answer to opcode `op` with `code` was produced this turn; it goes
    /// out once `need` is met (`waits_for_sync`: that needs an fdatasync
    /// not yet done).
    #[inline]
    pub fn answered(&mut self, op: u16, code: ErrorCode, need: N, waits_for_sync: bool) {
        self.turn_answers += 1;
        if code == ErrorCode(0) {
            if let Some(c) = self.ok.get_mut(usize::from(op)) {
                *c += 1;
            }
        } else {
            *self.errors.entry((op, code.0)).or_insert(0) += 1;
        }
        if let Some(kind) = Kind::of(op) {
            self.latency.answered(kind, waits_for_sync, need, self.turn, self.turn_started);
        }
    }

    /// Answers so far: (opcode, code, count), codes 0 for success, in
    /// opcode then code order.
    pub fn answers(&self) -> Vec<(u16, u16, u64)> {
        let ok = self.ok.iter().enumerate().filter(|(_, c)| **c > 0).map(|(op, c)| ((op as u16, 0u16), *c));
        let mut all: Vec<((u16, u16), u64)> = ok.chain(self.errors.iter().map(|(k, c)| (*k, *c))).collect();
        all.sort_unstable();
        all.into_iter().map(|((op, code), c)| (op, code, c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmq_protocol::Opcode;

    #[test]
    fn every_opcode_has_a_slot() {
        assert!(Opcode::ALL.iter().all(|op| (*op as usize) < OPCODE_SLOTS));
    }

    #[test]
    fn answers_are_counted_by_opcode_and_code() {
        let mut m: ShardMetrics<u64> = ShardMetrics::default();
        m.begin_turn(1);
        let send = Opcode::SendMessage as u16;
        m.answered(send, ErrorCode(0), 1, false);
        m.answered(send, ErrorCode(0), 1, false);
        m.answered(send, ErrorCode::QUEUE_NOT_FOUND, 1, false);
        m.answered(Opcode::Ping as u16, ErrorCode(0), 1, false);
        let ping = Opcode::Ping as u16;
        assert_eq!(m.answers(), vec![(ping, 0, 1), (send, 0, 2), (send, ErrorCode::QUEUE_NOT_FOUND.0, 1)]);
        m.latency.release(Instant::now(), |_| true);
        assert_eq!(m.latency.histogram(Kind::Send as usize).count(), 3, "one sample for the turn's 3 sends");
        assert!(m.end_turn().is_none(), "a fast turn is not logged");
        assert_eq!(m.turns.count(), 1);
    }

    #[test]
    fn slow_turns_are_reported_once_per_interval() {
        let mut m: ShardMetrics<u64> = ShardMetrics::default();
        m.begin_turn(1);
        m.turn_started -= std::time::Duration::from_millis(20);
        let (ms, skipped) = m.end_turn().expect("slow");
        assert!(ms >= 20.0 && skipped == 0);
        m.begin_turn(2);
        m.turn_started -= std::time::Duration::from_millis(20);
        assert!(m.end_turn().is_none(), "rate-limited");
        assert!(m.longest_turn_us() >= 20_000);
    }
}
