//! Deadlines of one queue's delayed and in-flight messages.
//!
//! Most deadlines arrive in order (every receive on a queue uses the same
//! visibility timeout), so they go into a FIFO at O(1); only out-of-order
//! ones (per-message delays, visibility changes) pay for a heap. Entries are
//! never removed early: a stale entry is recognised when it fires because the
//! message's `visible_at_ms` no longer matches.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

#[derive(Debug, Default)]
pub struct Timers {
    fifo: VecDeque<(u64, u64)>,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Timers {
    pub fn push(&mut self, deadline_ms: u64, seq: u64) {
        match self.fifo.back() {
            Some(&(last, _)) if deadline_ms < last => self.heap.push(Reverse((deadline_ms, seq))),
            _ => self.fifo.push_back((deadline_ms, seq)),
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        let a = self.fifo.front().map(|e| e.0);
        let b = self.heap.peek().map(|e| e.0 .0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Pops the earliest entry if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        let fifo_first = match (self.fifo.front(), self.heap.peek()) {
            (Some(f), Some(h)) => f.0 <= h.0 .0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if fifo_first {
            if self.fifo.front()?.0 <= now_ms {
                return self.fifo.pop_front();
            }
        } else if self.heap.peek()?.0 .0 <= now_ms {
            return self.heap.pop().map(|r| r.0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pops_in_deadline_order(deadlines in proptest::collection::vec(0u64..1000, 0..200), now in 0u64..1200) {
            let mut t = Timers::default();
            for (i, d) in deadlines.iter().enumerate() {
                t.push(*d, i as u64);
            }
            let mut popped = Vec::new();
            while let Some((d, _)) = t.pop_due(now) {
                popped.push(d);
            }
            let mut want: Vec<u64> = deadlines.iter().copied().filter(|d| *d <= now).collect();
            want.sort();
            prop_assert_eq!(popped, want);
            prop_assert!(t.next_deadline().is_none_or(|d| d > now));
        }
    }
}
