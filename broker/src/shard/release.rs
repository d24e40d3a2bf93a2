//! When output may leave the broker.
//!
//! A response (or a message to another shard) may go out only once the log
//! records it depends on are as safe as their queues demand: written to the
//! OS for async data, fdatasync'd for sync data. That dependency is a
//! [`Need`]: two log positions, compared with the log's [`Progress`]
//! (`written_end`, `durable_end`), which only grow. Output waits in a
//! [`HoldQueue`] per connection (and one for messages to peers), in the
//! order it was produced, because a connection is one ordered byte stream:
//! an item goes out when its own need and every earlier item's are met.
//!
//! Needs are per response, not per loop turn, so an async send is answered
//! as soon as its record is written even when a sync send of the same turn
//! still waits for its fdatasync, and a receive of a message that is long
//! durable does not wait for someone else's fdatasync.
//!
//! In a cluster the same two positions mean more (see
//! docs/ARCHITECTURE.md ("Replication")): "written" is written on a majority of the group
//! (in the current term), "durable" is committed (fdatasync'd on a
//! majority). A third need, `read`, makes output that changed nothing (a
//! read) wait for a ReadIndex round proving this replica still leads.

use std::collections::VecDeque;

/// How far the log is safe, as output compares it with its needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Alone: written to the OS. In a group: written on a majority.
    pub written_end: u64,
    /// Alone: covered by a completed fdatasync. In a group: committed.
    pub durable_end: u64,
    /// ReadIndex rounds confirmed up to here (alone: all of them).
    pub read_confirmed: u64,
}

impl Progress {
    /// A single node's progress: what its own log reports.
    pub fn solo(p: crate::storage::Progress) -> Progress {
        Progress { written_end: p.written_end.0, durable_end: p.durable_end.0, read_confirmed: u64::MAX }
    }
}

/// Log positions that must be written, and durable, before output may go out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    /// Every byte below this must be written to the OS.
    pub written: u64,
    /// Every byte below this must be covered by a completed fdatasync.
    pub durable: u64,
    /// ReadIndex round that must be confirmed (0: none).
    pub read: u64,
}

impl Need {
    /// Depends on nothing (output computed from durable state elsewhere).
    pub const NONE: Need = Need { written: 0, durable: 0, read: 0 };

    pub fn max(self, other: Need) -> Need {
        Need {
            written: self.written.max(other.written),
            durable: self.durable.max(other.durable),
            read: self.read.max(other.read),
        }
    }

    /// Whether meeting `self` also meets `other`.
    pub fn covers(self, other: Need) -> bool {
        self.written >= other.written && self.durable >= other.durable && self.read >= other.read
    }

    pub fn is_met(self, p: Progress) -> bool {
        p.written_end >= self.written && p.durable_end >= self.durable && p.read_confirmed >= self.read
    }
}

/// Items released in order, each once its need and all earlier needs are
/// met. Needs are stored cumulatively (each the max of its own and the one
/// before), so only the front is ever compared with the log's progress.
#[derive(Debug)]
pub struct HoldQueue<T> {
    items: VecDeque<(Need, T)>,
}

impl<T> Default for HoldQueue<T> {
    fn default() -> Self {
        HoldQueue { items: VecDeque::new() }
    }
}

impl<T> HoldQueue<T> {
    pub fn push(&mut self, need: Need, item: T) {
        let need = self.items.back().map_or(need, |(n, _)| n.max(need));
        self.items.push_back((need, item));
    }

    /// The last item, if releasing it needs no more than `need` adds: then
    /// new output can join it instead of becoming an item of its own.
    pub fn back_covering(&mut self, need: Need) -> Option<&mut T> {
        self.items.back_mut().filter(|(n, _)| n.covers(need)).map(|(_, t)| t)
    }

    pub fn back(&self) -> Option<&T> {
        self.items.back().map(|(_, t)| t)
    }

    /// The front item, if its need is met by `p`.
    pub fn pop_met(&mut self, p: Progress) -> Option<T> {
        if self.items.front().is_some_and(|(n, _)| n.is_met(p)) {
            return self.items.pop_front().map(|(_, t)| t);
        }
        None
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut().map(|(_, t)| t)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(written: u64, durable: u64) -> Progress {
        Progress { written_end: written, durable_end: durable, read_confirmed: u64::MAX }
    }

    fn need(written: u64, durable: u64) -> Need {
        Need { written, durable, read: 0 }
    }

    #[test]
    fn a_read_waits_for_its_round() {
        let n = Need { read: 3, ..need(10, 0) };
        assert!(!n.is_met(Progress { read_confirmed: 2, ..progress(10, 10) }));
        assert!(n.is_met(Progress { read_confirmed: 3, ..progress(10, 10) }));
        assert!(!n.covers(need(10, 0).max(Need { read: 4, ..Need::NONE })));
    }

    #[test]
    fn a_need_is_met_by_both_ends() {
        assert!(need(10, 0).is_met(progress(10, 0)));
        assert!(!need(10, 0).is_met(progress(9, 9)));
        assert!(!need(10, 5).is_met(progress(10, 4)));
        assert!(Need::NONE.is_met(Progress::default()));
    }

    #[test]
    fn items_leave_in_order_once_every_earlier_need_is_met() {
        let mut q = HoldQueue::default();
        q.push(need(100, 100), "sync send");
        q.push(need(120, 0), "async send");
        q.push(Need::NONE, "remote reply");
        // The async send is written, but the sync send before it is not durable.
        assert_eq!(q.pop_met(progress(120, 0)), None);
        assert_eq!(q.pop_met(progress(120, 100)), Some("sync send"));
        assert_eq!(q.pop_met(progress(120, 100)), Some("async send"));
        assert_eq!(q.pop_met(progress(120, 100)), Some("remote reply"));
        assert!(q.is_empty());
    }

    #[test]
    fn later_output_joins_an_item_whose_need_covers_it() {
        let mut q = HoldQueue::default();
        q.push(need(100, 100), 1usize);
        *q.back_covering(need(90, 0)).expect("covered") = 2;
        assert!(q.back_covering(need(110, 0)).is_none(), "needs more than the back item");
        q.push(need(110, 0), 3);
        assert_eq!(q.pop_met(progress(110, 99)), None, "cumulative: waits for the item before");
        assert_eq!(q.pop_met(progress(110, 100)), Some(2));
        assert_eq!(q.pop_met(progress(110, 100)), Some(3));
    }
}
