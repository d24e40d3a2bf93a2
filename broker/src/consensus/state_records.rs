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

#[cfg(test)]
mod tests {
    use super::*;

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
