//! Which loop turns' responses may leave the broker.
//!
//! A response is released only once every log record written before it is
//! as durable as its queue's flush policy demands. Responses are grouped by
//! the loop turn that produced them; a turn's records go out in the next
//! write batch the log accepts, and batches complete in order, so releasing
//! "every turn up to T" is all the bookkeeping needed. A turn that wrote no
//! records still waits for the batches before it: its answers may reflect
//! state that is not yet durable (a receive of a message sent a turn ago).

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct TurnTracker {
    /// Turns not yet released, oldest first, with the batch that covers them
    /// (None: their records are not submitted yet).
    waiting: VecDeque<(u64, Option<u64>)>,
}

impl TurnTracker {
    /// Records the end of `turn`. `wrote` says whether the turn appended
    /// records. Returns a turn that can be released right away, if any.
    pub fn end_turn(&mut self, turn: u64, wrote: bool) -> Option<u64> {
        match self.waiting.back() {
            _ if wrote => self.waiting.push_back((turn, None)),
            Some(&(_, batch)) => self.waiting.push_back((turn, batch)),
            None => return Some(turn),
        }
        None
    }

    /// Every turn whose records are unsubmitted is covered by `batch`.
    pub fn submitted(&mut self, batch: u64) {
        for (_, b) in self.waiting.iter_mut().rev() {
            if b.is_some() {
                break;
            }
            *b = Some(batch);
        }
    }

    /// `batch` (and so every earlier one) is durable. Returns the last turn
    /// that may now be released.
    pub fn completed(&mut self, batch: u64) -> Option<u64> {
        let mut released = None;
        while let Some(&(turn, Some(b))) = self.waiting.front() {
            if b > batch {
                break;
            }
            self.waiting.pop_front();
            released = Some(turn);
        }
        released
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_turns_release_at_once_when_nothing_is_pending() {
        let mut t = TurnTracker::default();
        assert_eq!(t.end_turn(1, false), Some(1));
        assert!(t.is_idle());
    }

    #[test]
    fn turns_release_in_order_with_their_batch() {
        let mut t = TurnTracker::default();
        assert_eq!(t.end_turn(1, true), None);
        t.submitted(10);
        assert_eq!(t.end_turn(2, false), None, "read-only turn waits for batch 10");
        assert_eq!(t.end_turn(3, true), None);
        assert_eq!(t.completed(10), Some(2));
        t.submitted(11);
        assert_eq!(t.end_turn(4, false), None);
        assert_eq!(t.completed(11), Some(4));
        assert!(t.is_idle());
    }

    #[test]
    fn a_batch_covers_every_unsubmitted_turn() {
        let mut t = TurnTracker::default();
        t.end_turn(1, true);
        t.submitted(1);
        t.end_turn(2, true);
        t.end_turn(3, true);
        t.submitted(2);
        assert_eq!(t.completed(1), Some(1));
        assert_eq!(t.completed(2), Some(3));
    }
}
