//! A fingerprint of a shard's replicated state, to check that replicas
//! which applied the same entries hold the same state.
//!
//! It covers what the log determines and nothing local: queues (name,
//! attributes, counters) and every message's id, times, dequeue count,
//! body length and whether it is live, deleted-but-rewindable or half;
//! every queue's and topic's dedup keys (owner, key, id and time, in the shard's order); the outbox. Not covered: log positions (each replica's own), and states
//! that follow from the clock alone (ready vs. in flight vs. delayed are
//! all "live" with their `visible_at_ms`), so replicas compare equal
//! whatever their clocks say.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use super::ShardEngine;
use crate::engine::message_index::MsgState;

impl ShardEngine {
    pub fn digest(&self) -> u64 {
        let mut h = SipHasher13::new_with_keys(0, 0);
        let mut names: Vec<(&String, &u32)> = self.by_name.iter().collect();
        names.sort();
        for (name, uid) in names {
            let Some(q) = self.queues.get(uid) else { continue };
            h.write(name.as_bytes());
            h.write(format!("{:?}", q.attrs).as_bytes());
            h.write_u64(q.next_seq());
            h.write_u64(q.create_seq);
            for (seq, e) in q.iter() {
                let state = match e.state {
                    MsgState::Ready | MsgState::Delayed | MsgState::InFlight => 0u8,
                    other => other as u8,
                };
                h.write_u64(seq);
                h.write_u64(e.msg_id);
                h.write_u64(e.enqueue_ms);
                h.write_u64(e.visible_at_ms);
                h.write_u32(e.body_len);
                h.write_u32(e.dequeue_count);
                h.write_u32(e.first_dequeue_rel);
                h.write_u8(state);
                h.write_u8(e.flags);
            }
        }
        for (e, seen) in self.dedup_order.entries(&self.dedup_windows()) {
            h.write_u8(e.owner as u8);
            h.write_u32(e.uid);
            h.write_u128(e.key());
            h.write_u64(seen.msg_id);
            h.write_u64(seen.time_ms);
        }
        for id in self.exchange.outbox.ids() {
            h.write_u64(id);
        }
        h.write_u64(self.counters.next_msg_counter);
        h.finish()
    }
}
