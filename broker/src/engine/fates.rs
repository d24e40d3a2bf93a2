//! What happened to messages that left their queue, for QueryMessage: a
//! bounded, in-memory record of recent removals other than plain deletes
//! (deletes are the hot path and are reported as "gone" instead).

use std::collections::{HashMap, VecDeque};

use cmq_protocol::MessageState;

/// Removals remembered per shard; older ones are forgotten first.
pub const FATES_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fate {
    pub uid: u32,
    pub state: MessageState,
    pub time_ms: u64,
}

#[derive(Debug, Default)]
pub struct Fates {
    map: HashMap<u64, Fate>,
    order: VecDeque<u64>,
}

impl Fates {
    pub fn record(&mut self, msg_id: u64, fate: Fate) {
        if self.map.insert(msg_id, fate).is_none() {
            self.order.push_back(msg_id);
        }
        while self.order.len() > FATES_MAX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, msg_id: u64) -> Option<&Fate> {
        self.map.get(&msg_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first() {
        let mut f = Fates::default();
        let fate = Fate { uid: 1, state: MessageState::Expired, time_ms: 1 };
        for id in 0..(FATES_MAX as u64 + 10) {
            f.record(id, fate);
        }
        assert!(f.get(0).is_none());
        assert!(f.get(9).is_none());
        assert_eq!(f.get(10), Some(&fate));
        assert_eq!(f.map.len(), FATES_MAX);
    }
}
