//! Where the records that hold a replica's hard state (term, vote, commit)
//! and configuration lie in its log. A restart reads the last of each; a
//! release must never take the last durable one (a lost vote could be cast
//! twice in one term, a lost configuration brings back removed voters:
//! the simulator found a restarted leader counting a removed node again,
//! seed 1 once it changed membership). When they hold the oldest segment
//! they are written again at the head (`Replica::rewrite_state_records`),
//! and the old ones may go once the copies are durable.

use std::collections::VecDeque;

/// One kind of record: the last durable one, and newer ones written but
/// not yet durable `(position, end)`.
#[derive(Debug, Clone)]
struct Kept {
    durable: u64,
    written: VecDeque<(u64, u64)>,
}

impl Kept {
    fn new(durable: Option<u64>) -> Kept {
        Kept { durable: durable.unwrap_or(u64::MAX), written: VecDeque::new() }
    }

    fn durable_to(&mut self, durable_end: u64) {
        while let Some(&(pos, end)) = self.written.front() {
            if end > durable_end {
                break;
            }
            self.durable = pos;
            self.written.pop_front();
        }
    }
}

/// The hard-state and configuration records a release must keep.
#[derive(Debug, Clone)]
pub struct StateRecords {
    hard_state: Kept,
    conf: Kept,
}

impl Default for StateRecords {
    fn default() -> Self {
        StateRecords::found(None, None)
    }
}

impl StateRecords {
    /// The last of each found in the log at start-up (durable: recovery
    /// fdatasyncs what it finds; a snapshot record counts as configuration).
    pub fn found(hard_state: Option<u64>, conf: Option<u64>) -> StateRecords {
        StateRecords { hard_state: Kept::new(hard_state), conf: Kept::new(conf) }
    }

    pub fn wrote_hard_state(&mut self, pos: u64, end: u64) {
        self.hard_state.written.push_back((pos, end));
    }

    pub fn wrote_conf(&mut self, pos: u64, end: u64) {
        self.conf.written.push_back((pos, end));
    }

    /// The log is durable below `durable_end`.
    pub fn durable_to(&mut self, durable_end: u64) {
        self.hard_state.durable_to(durable_end);
        self.conf.durable_to(durable_end);
    }

    /// The log must be kept from here (`u64::MAX`: no such record yet).
    pub fn floor(&self) -> u64 {
        self.hard_state.durable.min(self.conf.durable)
    }

    /// Copies written and not yet durable: no need to write more.
    pub fn rewrite_pending(&self) -> bool {
        !self.hard_state.written.is_empty() || !self.conf.written.is_empty()
    }
}

/// The commit index a restart replays to: the one the last durable
/// hard-state (or snapshot) record holds. raft-rs's commit index runs
/// ahead of it: a commit-only hard state is written without an fdatasync
/// of its own, and a power loss may take it back, so a restarted replica
/// applies only up to here and learns the rest from the leader again.
/// Whatever a release or a catalog relies on must be applied by that
/// replay: a segment released because an entry after it superseded its
/// records (a compaction's relocation, a delete) would otherwise leave the
/// restarted engine without the message until that entry is applied again
/// (the simulator found two replicas that differed after the same 186
/// entries: seed 1796449737090), and entries released above it would make
/// the restart's commit index fall before the log's first entry.
#[derive(Debug, Clone)]
pub struct DurableCommit {
    durable: u64,
    /// Records written and not yet durable: `(end, commit)`.
    written: VecDeque<(u64, u64)>,
}

impl DurableCommit {
    /// At start-up: the commit index the log's records hold (recovery
    /// fdatasyncs what it finds).
    pub fn found(commit: u64) -> DurableCommit {
        DurableCommit { durable: commit, written: VecDeque::new() }
    }

    /// A record holding commit index `commit` was written, ending at `end`.
    pub fn wrote(&mut self, end: u64, commit: u64) {
        self.written.push_back((end, commit));
    }

    /// The log is durable below `durable_end`.
    pub fn durable_to(&mut self, durable_end: u64) {
        while let Some(&(end, commit)) = self.written.front() {
            if end > durable_end {
                break;
            }
            self.durable = self.durable.max(commit);
            self.written.pop_front();
        }
    }

    pub fn index(&self) -> u64 {
        self.durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durable_commit_follows_the_records_that_are_durable() {
        let mut c = DurableCommit::found(7);
        c.wrote(100, 9);
        c.wrote(200, 12);
        assert_eq!(c.index(), 7, "nothing durable yet");
        c.durable_to(150);
        assert_eq!(c.index(), 9);
        c.durable_to(200);
        assert_eq!(c.index(), 12);
    }

    #[test]
    fn the_last_durable_record_of_each_kind_is_kept() {
        let mut s = StateRecords::found(Some(100), Some(40));
        assert_eq!(s.floor(), 40);
        s.wrote_conf(500, 520);
        s.wrote_hard_state(520, 540);
        assert!(s.rewrite_pending());
        s.durable_to(530);
        assert_eq!(s.floor(), 100, "the new configuration is durable, the new hard state not yet");
        s.durable_to(540);
        assert_eq!(s.floor(), 500);
        assert!(!s.rewrite_pending());
        assert_eq!(StateRecords::default().floor(), u64::MAX);
    }
}
