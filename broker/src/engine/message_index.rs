//! A queue's messages by sequence number, in at most ~48 bytes each.
//!
//! Sequence numbers are dense per queue, so the common case is a ring of
//! fixed-size entries indexed by `seq - base`: O(1) lookup, no hashing, no
//! per-message allocation. Messages are removed mostly from the front (FIFO
//! consumption, retention), which the ring handles by popping. A few
//! long-lived "stragglers" (a message delayed for hours, a lease extended all
//! day) would otherwise pin an ever-growing run of removed slots behind them,
//! so when the ring is mostly holes its front stragglers move to a small
//! ordered `overflow` map and the holes are released.

use std::collections::{BTreeMap, VecDeque};

/// Where a message is in its life. Stored in one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgState {
    /// A hole: the slot's message is gone for good.
    Removed = 0,
    /// Receivable now.
    Ready = 1,
    /// Sent with a delay; receivable at `visible_at_ms`.
    Delayed = 2,
    /// Received; returns to Ready at `visible_at_ms` unless deleted first.
    InFlight = 3,
    /// Deleted by a consumer but kept for the queue's rewindSeconds.
    Deleted = 4,
    /// A transaction message not yet committed; `visible_at_ms` is its next check.
    Half = 5,
}

impl MsgState {
    pub fn from_u8(v: u8) -> Option<MsgState> {
        Some(match v {
            1 => MsgState::Ready,
            2 => MsgState::Delayed,
            3 => MsgState::InFlight,
            4 => MsgState::Deleted,
            5 => MsgState::Half,
            _ => return None,
        })
    }
}

/// `Entry::flags`: the log holds a `MessageOrigin` right after the body.
pub const FLAG_ORIGIN: u8 = 1;
/// `Entry::flags`: the log holds the producer group (str16) right after the body.
pub const FLAG_GROUP: u8 = 2;

/// One message's scheduling state. The body and its metadata stay in the
/// write-ahead log; `body_pos`/`body_len` locate the body there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub msg_id: u64,
    pub body_pos: u64,
    pub enqueue_ms: u64,
    /// Delayed: when it becomes ready. InFlight: when its lease ends.
    pub visible_at_ms: u64,
    pub body_len: u32,
    /// Milliseconds from enqueue to first delivery, plus one; 0 = never delivered.
    /// Relative so it fits 32 bits: retention caps a message's life at 15 days.
    pub first_dequeue_rel: u32,
    /// Received this many times; for a half message, how many checks were sent.
    pub dequeue_count: u32,
    pub state: MsgState,
    /// FLAG_* bits: what the log stores after the body.
    pub flags: u8,
}

impl Entry {
    pub const REMOVED: Entry = Entry {
        msg_id: 0,
        body_pos: 0,
        enqueue_ms: 0,
        visible_at_ms: 0,
        body_len: 0,
        first_dequeue_rel: 0,
        dequeue_count: 0,
        state: MsgState::Removed,
        flags: 0,
    };

    pub fn first_dequeue_ms(&self) -> u64 {
        match self.first_dequeue_rel {
            0 => 0,
            rel => self.enqueue_ms + u64::from(rel - 1),
        }
    }

    pub fn set_first_dequeue(&mut self, now_ms: u64) {
        if self.first_dequeue_rel == 0 {
            let rel = now_ms.saturating_sub(self.enqueue_ms).min(u64::from(u32::MAX - 1));
            self.first_dequeue_rel = rel as u32 + 1;
        }
    }
}

// The per-message memory budget (docs/BENCHMARKS.md) depends on this.
const _: () = assert!(std::mem::size_of::<Entry>() <= 48);

/// The ring is only compacted once it is at least this long, so small queues
/// never pay for it.
const STRAGGLER_RING_MIN: usize = 4096;

/// Log positions are counted in buckets of `1 << pos_bucket_shift()` bytes
/// to know which parts of the log still hold live bodies (segments are much
/// larger). Tests use tiny buckets so that compaction can be checked on
/// tiny logs.
#[cfg(not(test))]
pub const POS_BUCKET_SHIFT: u32 = 20;
#[cfg(test)]
pub const POS_BUCKET_SHIFT: u32 = 3;

static BUCKET_SHIFT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(POS_BUCKET_SHIFT);

fn pos_bucket_shift() -> u32 {
    BUCKET_SHIFT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Smaller buckets for the simulator, whose log segments are a few KiB (so
/// that its logs are released). Process-wide: call it before any queue
/// exists, always with the same value (cmqd never calls it).
pub fn set_pos_bucket_shift(shift: u32) {
    BUCKET_SHIFT.store(shift, std::sync::atomic::Ordering::Relaxed);
}

/// Log bytes a message costs besides its body (record header and fields),
/// for compaction's estimate of live data.
const RECORD_OVERHEAD_BYTES: u64 = 64;

#[derive(Debug, Default)]
pub struct MessageIndex {
    /// Sequence number of `ring[0]`.
    base: u64,
    ring: VecDeque<Entry>,
    /// Removed slots inside the ring.
    holes: usize,
    /// Live messages with `seq < base`, moved out of the ring.
    overflow: BTreeMap<u64, Entry>,
    /// Live messages (count, approximate bytes) per log-position bucket:
    /// the log below the first bucket holds nothing this queue needs.
    pos_buckets: BTreeMap<u64, (u32, u64)>,
}

impl MessageIndex {
    pub fn new(first_seq: u64) -> MessageIndex {
        MessageIndex { base: first_seq, ..Default::default() }
    }

    /// Live (not removed) messages.
    pub fn len(&self) -> usize {
        self.ring.len() - self.holes + self.overflow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One past the highest sequence number the ring covers.
    pub fn end(&self) -> u64 {
        self.base + self.ring.len() as u64
    }

    /// The lowest sequence number the ring covers (overflow entries are below it).
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn get(&self, seq: u64) -> Option<&Entry> {
        let e = if seq < self.base { self.overflow.get(&seq)? } else { self.ring.get((seq - self.base) as usize)? };
        (e.state != MsgState::Removed).then_some(e)
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let e = if seq < self.base {
            self.overflow.get_mut(&seq)?
        } else {
            self.ring.get_mut((seq - self.base) as usize)?
        };
        (e.state != MsgState::Removed).then_some(e)
    }

    /// Inserts or replaces the message at `seq`. Appending at `end()` is the
    /// fast path; replay after compaction may insert anywhere.
    pub fn insert(&mut self, seq: u64, entry: Entry) {
        debug_assert!(entry.state != MsgState::Removed);
        if let Some(old) = self.get(seq).copied() {
            self.uncount(&old);
        }
        self.count(&entry);
        if seq < self.base {
            if self.ring.is_empty() && self.overflow.range(seq..).next().is_none() {
                // Nothing to keep dense and nothing in the way: restart the ring here.
                self.base = seq;
            } else {
                self.overflow.insert(seq, entry);
                return;
            }
        }
        let idx = (seq - self.base) as usize;
        if idx >= self.ring.len() {
            let gap = idx - self.ring.len();
            self.holes += gap;
            // Holes keep the id of the slot before them so that message ids
            // stay non-decreasing along the ring (see `find_msg_id`).
            let prev_id = self.ring.back().map_or(0, |e| e.msg_id);
            self.ring.resize(idx, Entry { msg_id: prev_id, ..Entry::REMOVED });
            self.ring.push_back(entry);
        } else {
            if self.ring[idx].state == MsgState::Removed {
                self.holes -= 1;
            }
            self.ring[idx] = entry;
        }
    }

    /// Removes the message at `seq`, returning it.
    pub fn remove(&mut self, seq: u64) -> Option<Entry> {
        let old = if seq < self.base {
            self.overflow.remove(&seq)?
        } else {
            let slot = self.ring.get_mut((seq - self.base) as usize)?;
            if slot.state == MsgState::Removed {
                return None;
            }
            let old = std::mem::replace(slot, Entry { msg_id: slot.msg_id, ..Entry::REMOVED });
            self.holes += 1;
            self.trim();
            old
        };
        self.uncount(&old);
        Some(old)
    }

    fn count(&mut self, e: &Entry) {
        let b = self.pos_buckets.entry(e.body_pos >> pos_bucket_shift()).or_insert((0, 0));
        b.0 += 1;
        b.1 += u64::from(e.body_len) + RECORD_OVERHEAD_BYTES;
    }

    fn uncount(&mut self, e: &Entry) {
        let bucket = e.body_pos >> pos_bucket_shift();
        if let Some(b) = self.pos_buckets.get_mut(&bucket) {
            b.0 -= 1;
            b.1 -= u64::from(e.body_len) + RECORD_OVERHEAD_BYTES;
            if b.0 == 0 {
                self.pos_buckets.remove(&bucket);
            }
        }
    }

    /// Approximate log bytes of live messages whose bodies lie below `pos`.
    pub fn live_bytes_below(&self, pos: u64) -> u64 {
        self.pos_buckets.range(..pos >> pos_bucket_shift()).map(|(_, b)| b.1).sum()
    }

    /// A log position at or below every live body of this queue (None if
    /// the queue is empty): the log before it can be released as far as
    /// this queue is concerned.
    pub fn min_live_pos(&self) -> Option<u64> {
        self.pos_buckets.keys().next().map(|b| b << pos_bucket_shift())
    }

    /// The sequence number of the live message with this (local) id.
    /// Message ids grow with sequence numbers along the ring (holes keep an
    /// id too), so this is a binary search; the few overflow entries are scanned.
    pub fn find_msg_id(&self, msg_id: u64) -> Option<u64> {
        if let Some((seq, _)) = self.overflow.iter().find(|(_, e)| e.msg_id == msg_id) {
            return Some(*seq);
        }
        let i = self.ring.partition_point(|e| e.msg_id < msg_id);
        let e = self.ring.get(i)?;
        (e.msg_id == msg_id && e.state != MsgState::Removed).then_some(self.base + i as u64)
    }

    /// Live messages whose body lies below `pos`, in sequence order.
    pub fn below(&self, pos: u64) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        self.iter_from(0).filter(move |(_, e)| e.body_pos < pos)
    }

    /// The oldest live message (lowest seq), if any.
    pub fn first(&self) -> Option<(u64, &Entry)> {
        if let Some((seq, e)) = self.overflow.iter().next() {
            return Some((*seq, e));
        }
        self.ring.iter().enumerate().find(|(_, e)| e.state != MsgState::Removed).map(|(i, e)| (self.base + i as u64, e))
    }

    /// Live messages in sequence order, starting at `from`.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        let over = self.overflow.range(from..).map(|(s, e)| (*s, e));
        let skip = from.saturating_sub(self.base) as usize;
        let ring = self
            .ring
            .iter()
            .enumerate()
            .skip(skip)
            .filter(|(_, e)| e.state != MsgState::Removed)
            .map(move |(i, e)| (self.base + i as u64, e));
        over.chain(ring)
    }

    /// Drops removed slots from the front, and when the ring is mostly holes
    /// moves front stragglers to the overflow map so the holes can go.
    fn trim(&mut self) {
        self.pop_front_holes();
        if self.ring.len() >= STRAGGLER_RING_MIN && self.holes * 2 > self.ring.len() {
            while self.holes * 4 > self.ring.len() {
                let Some(front) = self.ring.pop_front() else {
                    break;
                };
                if front.state == MsgState::Removed {
                    self.holes -= 1;
                } else {
                    self.overflow.insert(self.base, front);
                }
                self.base += 1;
                self.pop_front_holes();
            }
        }
    }

    fn pop_front_holes(&mut self) {
        while self.ring.front().is_some_and(|e| e.state == MsgState::Removed) {
            self.ring.pop_front();
            self.holes -= 1;
            self.base += 1;
        }
        if self.ring.is_empty() {
            debug_assert_eq!(self.holes, 0);
        }
    }

    /// Approximate heap bytes held, for the memory-per-message figure.
    pub fn heap_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<Entry>()
            + self.overflow.len() * (std::mem::size_of::<Entry>() + 8 + 16)
            + self.pos_buckets.len() * 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: u64) -> Entry {
        Entry { msg_id: id, body_pos: id << 17, state: MsgState::Ready, ..Entry::REMOVED }
    }

    #[test]
    fn message_ids_are_found_by_binary_search() {
        let mut idx = MessageIndex::new(0);
        for seq in 0..10_000u64 {
            idx.insert(seq, Entry { msg_id: 1000 + seq * 3, ..entry(seq) });
        }
        for seq in (0..10_000).step_by(2) {
            idx.remove(seq);
        }
        idx.insert(20_000, Entry { msg_id: 1_000_000, ..entry(20_000) });
        assert_eq!(idx.find_msg_id(1000 + 3), Some(1));
        assert_eq!(idx.find_msg_id(1000), None, "removed");
        assert_eq!(idx.find_msg_id(1001), None, "never existed");
        assert_eq!(idx.find_msg_id(1_000_000), Some(20_000), "after a gap");
        assert_eq!(idx.find_msg_id(1000 + 3 * 9_999), Some(9_999));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Remove(u16),
        Insert(u16),
        SetState(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Push),
            4 => any::<u16>().prop_map(Op::Remove),
            1 => any::<u16>().prop_map(Op::Insert),
            1 => any::<u16>().prop_map(Op::SetState),
        ]
    }

    proptest! {
        /// The index behaves exactly like an ordered map of live entries.
        #[test]
        fn matches_a_btreemap(ops in proptest::collection::vec(op(), 0..3000)) {
            let mut idx = MessageIndex::new(100);
            let mut model = BTreeMap::new();
            let mut next = 100u64;
            for op in ops {
                match op {
                    Op::Push => {
                        idx.insert(next, entry(next));
                        model.insert(next, entry(next));
                        next += 1;
                    }
                    Op::Remove(k) => {
                        let seq = 100 + u64::from(k) % (next - 99);
                        prop_assert_eq!(idx.remove(seq), model.remove(&seq));
                    }
                    Op::Insert(k) => {
                        let seq = 100 + u64::from(k) % (next - 99);
                        idx.insert(seq, entry(seq * 7));
                        model.insert(seq, entry(seq * 7));
                        next = next.max(seq + 1);
                    }
                    Op::SetState(k) => {
                        let seq = 100 + u64::from(k) % (next - 99);
                        if let Some(e) = idx.get_mut(seq) { e.state = MsgState::InFlight; }
                        if let Some(e) = model.get_mut(&seq) { e.state = MsgState::InFlight; }
                    }
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            let got: Vec<_> = idx.iter_from(0).map(|(s, e)| (s, *e)).collect();
            let want: Vec<_> = model.iter().map(|(s, e)| (*s, *e)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(idx.first().map(|(s, _)| s), model.keys().next().copied());
            let min_pos = model.values().map(|e| (e.body_pos >> POS_BUCKET_SHIFT) << POS_BUCKET_SHIFT).min();
            prop_assert_eq!(idx.min_live_pos(), min_pos);
            for seq in 90..next + 5 {
                prop_assert_eq!(idx.get(seq), model.get(&seq));
            }
        }
    }

    #[test]
    fn stragglers_do_not_pin_holes() {
        let mut idx = MessageIndex::new(0);
        idx.insert(0, entry(0));
        for seq in 1..100_000 {
            idx.insert(seq, entry(seq));
            idx.remove(seq);
        }
        // One live message at the front, ~100k removed behind it.
        assert_eq!(idx.len(), 1);
        assert!(idx.ring.len() < STRAGGLER_RING_MIN * 2, "ring kept {} slots", idx.ring.len());
        assert!(idx.get(0).is_some());
        assert_eq!(idx.remove(0).map(|e| e.msg_id), Some(0));
        assert!(idx.is_empty());
    }

    #[test]
    fn first_dequeue_is_relative_and_set_once() {
        let mut e = Entry { enqueue_ms: 1_000, ..entry(1) };
        assert_eq!(e.first_dequeue_ms(), 0);
        e.set_first_dequeue(1_000);
        assert_eq!(e.first_dequeue_ms(), 1_000);
        e.set_first_dequeue(5_000);
        assert_eq!(e.first_dequeue_ms(), 1_000);
    }
}
