//! Request latency on the owning shard: from the start of the loop turn in
//! which the shard produced an answer until the log let that answer out
//! (written for async data, fdatasync'd for sync data, committed in a
//! group). That is the part of a request's life the broker controls; the
//! network and a client's own queueing are not in it.
//!
//! Answers are not timed one by one: every answer of one kind produced in
//! one turn shares one pending sample (its need the largest of theirs), so
//! the cost per request is a comparison and an addition. Samples wait in
//! FIFOs ordered by need, one for answers that wait for an fdatasync and
//! one for those that do not, so an async send is not timed behind a sync
//! one.

use std::collections::VecDeque;
use std::time::Instant;

use super::histogram::Histogram;

/// Kinds of request timed, and their label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Send = 0,
    Receive = 1,
    Delete = 2,
}

pub const KINDS: usize = 3;
pub const KIND_LABELS: [&str; KINDS] = ["send", "receive", "delete"];

impl Kind {
    /// The kind an opcode is timed as, if any.
    pub fn of(op: u16) -> Option<Kind> {
        use cmq_protocol::Opcode as O;
        match O::from_u16(op)? {
            O::SendMessage | O::BatchSendMessage | O::SendTransactionMessage | O::PublishMessage => Some(Kind::Send),
            O::BatchPublishMessage => Some(Kind::Send),
            O::ReceiveMessage | O::BatchReceiveMessage => Some(Kind::Receive),
            O::DeleteMessage | O::BatchDeleteMessage => Some(Kind::Delete),
            _ => None,
        }
    }
}

/// Pending samples per FIFO. Past it new samples are not taken (the log has
/// stopped letting output out; the stall shows in the fsync and turn
/// metrics instead), so a stalled log cannot grow this without bound.
pub const PENDING_SAMPLES_MAX: usize = 4096;

/// What an answer waits for (the shard's `Need`): comparable, and
/// combinable into the need of several answers.
pub trait Need: Copy {
    fn max(self, other: Self) -> Self;
}

struct Pending<N> {
    need: N,
    turn: u64,
    started: Instant,
    answers: u64,
}

/// One shard's latency samples and histograms (microseconds).
pub struct Latency<N> {
    /// Index `2 * kind + waits_for_sync`.
    pending: [VecDeque<Pending<N>>; 2 * KINDS],
    hist: [Histogram; KINDS],
    /// Answers not timed because their FIFO was full.
    pub untimed: u64,
}

impl<N: Need> Default for Latency<N> {
    fn default() -> Self {
        Latency { pending: Default::default(), hist: Default::default(), untimed: 0 }
    }
}

impl<N: Need> Latency<N> {
    /// An answer of `kind` produced in turn `turn` (started at `started`)
    /// goes out once `need` is met.
    #[inline]
    pub fn answered(&mut self, kind: Kind, waits_for_sync: bool, need: N, turn: u64, started: Instant) {
        let q = &mut self.pending[2 * kind as usize + usize::from(waits_for_sync)];
        if let Some(back) = q.back_mut().filter(|b| b.turn == turn) {
            back.need = back.need.max(need);
            back.answers += 1;
            return;
        }
        if q.len() >= PENDING_SAMPLES_MAX {
            self.untimed += 1;
            return;
        }
        // Needs are cumulative, so only each FIFO's front is ever compared.
        let need = q.back().map_or(need, |b| b.need.max(need));
        q.push_back(Pending { need, turn, started, answers: 1 });
    }

    /// Whether any sample waits (so the caller can skip reading the clock).
    pub fn is_waiting(&self) -> bool {
        self.pending.iter().any(|q| !q.is_empty())
    }

    /// Times the samples whose need `met` says is met, at `now`.
    pub fn release(&mut self, now: Instant, met: impl Fn(N) -> bool) {
        for (i, q) in self.pending.iter_mut().enumerate() {
            while let Some(front) = q.front().filter(|f| met(f.need)) {
                let us = now.saturating_duration_since(front.started).as_micros() as u64;
                self.hist[i / 2].record_n(us, front.answers);
                q.pop_front();
            }
        }
    }

    pub fn histogram(&self, kind: usize) -> &Histogram {
        &self.hist[kind]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    impl Need for u64 {
        fn max(self, other: u64) -> u64 {
            std::cmp::max(self, other)
        }
    }

    #[test]
    fn answers_of_a_turn_share_a_sample_timed_when_released() {
        let t0 = Instant::now();
        let mut l: Latency<u64> = Latency::default();
        l.answered(Kind::Send, true, 10, 1, t0);
        l.answered(Kind::Send, true, 20, 1, t0);
        l.answered(Kind::Send, true, 15, 2, t0 + Duration::from_millis(1));
        l.answered(Kind::Send, false, 5, 2, t0 + Duration::from_millis(1));
        // The async send is out at once; the sync ones wait for 20.
        l.release(t0 + Duration::from_millis(2), |n| n <= 5);
        assert_eq!(l.histogram(0).count(), 1);
        assert_eq!(l.histogram(0).quantile(1.0), 1024, "about 1 ms");
        l.release(t0 + Duration::from_millis(5), |n| n <= 19);
        assert_eq!(l.histogram(0).count(), 1, "turn 1's sample needs 20; turn 2's waits behind it");
        l.release(t0 + Duration::from_millis(5), |n| n <= 20);
        assert_eq!(l.histogram(0).count(), 4);
        assert!(!l.is_waiting());
    }

    #[test]
    fn a_full_fifo_stops_sampling_instead_of_growing() {
        let t0 = Instant::now();
        let mut l: Latency<u64> = Latency::default();
        for turn in 0..PENDING_SAMPLES_MAX as u64 + 10 {
            l.answered(Kind::Delete, false, 1, turn, t0);
        }
        assert_eq!(l.untimed, 10);
        l.release(t0, |_| true);
        assert_eq!(l.histogram(Kind::Delete as usize).count(), PENDING_SAMPLES_MAX as u64);
    }

    #[test]
    fn opcodes_map_to_kinds() {
        use cmq_protocol::Opcode as O;
        assert_eq!(Kind::of(O::BatchSendMessage as u16), Some(Kind::Send));
        assert_eq!(Kind::of(O::ReceiveMessage as u16), Some(Kind::Receive));
        assert_eq!(Kind::of(O::BatchDeleteMessage as u16), Some(Kind::Delete));
        assert_eq!(Kind::of(O::ListQueues as u16), None);
        assert_eq!(Kind::of(0xffff), None);
    }
}
