//! Idempotent sends: the recent idempotency keys of one queue or topic.
//!
//! A send or publish may carry a key the client chose (protocol version 3).
//! The first message stored under a key is remembered here with its id and
//! enqueue time; a later send with the same key, while the entry lasts, is
//! answered with that id and stores nothing. So a client that lost the
//! answer to a send (its connection died, the leader changed) can repeat it
//! and the message is stored once.
//!
//! An entry lasts [`DEDUP_WINDOW_MS`] after its message was stored, and at
//! most [`IDEMPOTENCY_KEYS_PER_QUEUE_MAX`] keys are kept per queue or topic:
//! a new key evicts the oldest past that count. Both bounds are decided by
//! the times carried in the log records (the stored entry's time and the
//! new record's time), never by a clock read while applying, and entries
//! are kept in log order (a `VecDeque`, never a hash map's order), so every
//! replica that applies the same records holds the same window, and so does
//! a node that replays its log after a crash. Lookups never change the
//! window: a leader answering a duplicate logs nothing, and its followers
//! hold the same state.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use bytes::Bytes;
use siphasher::sip128::{Hasher128, SipHasher13};

/// How long after a message was stored its key still deduplicates: 5
/// minutes, as SQS FIFO queues' deduplication interval. A client retries
/// a lost send within its retry deadline (10 s by default), far inside.
pub const DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Keys remembered per queue (or topic). Under sustained keyed load the
/// window covers the last this-many messages when that is shorter than
/// `DEDUP_WINDOW_MS`: 65,536 keys are 0.65 s of one queue at 100,000
/// messages/s, 65 s at 1,000/s. Memory: about 64 bytes per key (4 MiB per
/// queue at the limit); the catalog stores each in 32 bytes.
pub const IDEMPOTENCY_KEYS_PER_QUEUE_MAX: usize = 65_536;

/// A key as the window holds it: its 128-bit SipHash-1-3 under fixed keys.
/// Fixed-size and inline, so the window allocates nothing per key and a
/// lookup touches no key bytes on the heap; the same on every replica (the
/// hash keys are constants), so it may go into the catalog. Two keys
/// collide with probability about 2⁻¹²⁸ per pair; finding a collision on
/// purpose takes about 2⁶⁴ work, and would only let a sender deduplicate
/// its own messages against a key it already knows.
pub type KeyDigest = u128;

/// The digest of a (non-empty) idempotency key.
pub fn digest(key: &[u8]) -> KeyDigest {
    let mut h = SipHasher13::new_with_keys(0x636d_715f_6964_656d, 0x6b65_795f_7631_0000);
    h.write(key);
    h.finish128().as_u128()
}

/// The hasher of a window's map. A digest is already uniform, so one
/// folded multiply (foldhash's core) spreads it, about ten times cheaper
/// than SipHash; the seeds, random per process, keep a sender who knows
/// the (fixed) digest function from aiming its keys at one bucket. Only
/// lookups use it: the map is never iterated, so its order reaches nothing.
#[derive(Debug, Clone, Copy)]
pub struct DigestState {
    seeds: (u64, u64),
}

impl Default for DigestState {
    fn default() -> DigestState {
        static SEEDS: OnceLock<(u64, u64)> = OnceLock::new();
        let seeds = *SEEDS.get_or_init(|| {
            let r = RandomState::new();
            (r.hash_one(0x5eed_u64), r.hash_one(0x5eed_0001_u64))
        });
        DigestState { seeds }
    }
}

impl BuildHasher for DigestState {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher { seeds: self.seeds, hash: 0 }
    }
}

pub struct DigestHasher {
    seeds: (u64, u64),
    hash: u64,
}

impl Hasher for DigestHasher {
    fn write_u128(&mut self, v: u128) {
        let full = u128::from(v as u64 ^ self.seeds.0) * u128::from((v >> 64) as u64 ^ self.seeds.1);
        self.hash ^= full as u64 ^ (full >> 64) as u64;
    }

    /// Not used by the window (digests hash through `write_u128`); correct
    /// for any input all the same.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(16) {
            let mut v = [0u8; 16];
            v[..chunk.len()].copy_from_slice(chunk);
            self.write_u128(u128::from_le_bytes(v).rotate_left(self.hash as u32 & 127));
        }
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// What a window remembers about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub msg_id: u64,
    pub time_ms: u64,
}

/// The keys of one queue or topic, oldest first.
#[derive(Debug, Clone, Default)]
pub struct DedupWindow {
    by_key: HashMap<KeyDigest, Seen, DigestState>,
    /// The same keys with their times, in the order their records were
    /// applied (the time here spares a map lookup when evicting).
    order: VecDeque<(KeyDigest, u64)>,
}

fn expired(time_ms: u64, now_ms: u64) -> bool {
    time_ms.saturating_add(DEDUP_WINDOW_MS) <= now_ms
}

impl DedupWindow {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The id stored under the key with digest `key`, if its entry is
    /// still within the window at `now_ms`.
    pub fn lookup(&self, key: KeyDigest, now_ms: u64) -> Option<u64> {
        self.by_key.get(&key).filter(|s| !expired(s.time_ms, now_ms)).map(|s| s.msg_id)
    }

    /// Remembers that `msg_id` was stored under `key` at `time_ms` (the
    /// record's time), first dropping entries that expired by then from
    /// the front and the oldest beyond the count limit. A key already
    /// present (an expired entry still held) moves to the back with its
    /// new message.
    pub fn insert(&mut self, key: KeyDigest, msg_id: u64, time_ms: u64) {
        while let Some(&(front, t)) = self.order.front() {
            if !expired(t, time_ms) && self.order.len() < IDEMPOTENCY_KEYS_PER_QUEUE_MAX {
                break;
            }
            self.order.pop_front();
            self.by_key.remove(&front);
        }
        // One probe of the map for the common case, a new key; a key still
        // held (rare: its entry expired but is not at the front) leaves its
        // old place in the order.
        if self.by_key.insert(key, Seen { msg_id, time_ms }).is_some() {
            if let Some(at) = self.order.iter().position(|(k, _)| *k == key) {
                self.order.remove(at);
            }
        }
        self.order.push_back((key, time_ms));
    }

    /// Every entry, oldest first (for the catalog).
    pub fn entries(&self) -> impl Iterator<Item = (KeyDigest, Seen)> + '_ {
        self.order.iter().filter_map(|(k, _)| self.by_key.get(k).map(|s| (*k, *s)))
    }

    /// Puts back an entry read from a catalog, after the ones restored
    /// before it, evicting nothing: the catalog holds a window as it was.
    pub fn restore(&mut self, key: KeyDigest, seen: Seen) {
        if self.by_key.contains_key(&key) || self.order.len() >= IDEMPOTENCY_KEYS_PER_QUEUE_MAX {
            return;
        }
        self.by_key.insert(key, seen);
        self.order.push_back((key, seen.time_ms));
    }
}

/// How each message of a batch is answered: stored now (the `n`-th of the
/// stored ones), or with an id the window or an earlier message of the same
/// batch already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFate {
    Store(usize),
    Known(u64),
    SameAs(usize),
}

/// Decides the fate of each message of a batch with `keys` (empty: none of
/// them has a key; else one per message, an empty key meaning none) against
/// `window` at `now_ms`. A key repeated inside the batch is stored once.
/// Without any key, nothing to decide: empty (and nothing allocated, so a
/// keyless send costs what it did before keys existed).
pub fn plan(window: &DedupWindow, keys: &[Bytes], count: usize, now_ms: u64) -> Vec<KeyFate> {
    if keys.iter().all(|k| k.is_empty()) {
        return Vec::new();
    }
    let digests: Vec<Option<KeyDigest>> = keys.iter().map(|k| (!k.is_empty()).then(|| digest(k))).collect();
    let mut fates = Vec::with_capacity(count);
    let mut stored = 0;
    for i in 0..count {
        let d = digests.get(i).copied().flatten();
        let fate = match d {
            Some(d) => match window.lookup(d, now_ms) {
                Some(id) => KeyFate::Known(id),
                None => match digests[..i].iter().position(|e| *e == Some(d)) {
                    Some(j) => KeyFate::SameAs(j),
                    None => {
                        stored += 1;
                        KeyFate::Store(stored - 1)
                    }
                },
            },
            None => {
                stored += 1;
                KeyFate::Store(stored - 1)
            }
        };
        fates.push(fate);
    }
    fates
}

/// The bodies to store and their keys (none when no stored one has a key).
pub fn fresh(fates: &[KeyFate], bodies: &[Bytes], keys: &[Bytes]) -> (Vec<Bytes>, Vec<Bytes>) {
    if fates.is_empty() {
        return (bodies.to_vec(), Vec::new());
    }
    let stored = fates.iter().enumerate().filter(|(_, f)| matches!(f, KeyFate::Store(_))).map(|(i, _)| i);
    let fresh: Vec<Bytes> = stored.clone().map(|i| bodies[i].clone()).collect();
    let fresh_keys: Vec<Bytes> = stored.filter_map(|i| keys.get(i).cloned()).collect();
    let keyed = fresh_keys.iter().any(|k| !k.is_empty());
    (fresh, if keyed { fresh_keys } else { Vec::new() })
}

/// The ids to answer the `count` messages with, given the fates (empty:
/// all stored) and the first id of the stored messages (consecutive from it).
pub fn answer(fates: &[KeyFate], count: usize, first_msg_id: u64) -> Vec<u64> {
    if fates.is_empty() {
        return (0..count as u64).map(|i| first_msg_id + i).collect();
    }
    let mut ids: Vec<u64> = Vec::with_capacity(fates.len());
    for f in fates {
        let id = match *f {
            KeyFate::Store(n) => first_msg_id + n as u64,
            KeyFate::Known(id) => id,
            KeyFate::SameAs(j) => ids[j],
        };
        ids.push(id);
    }
    ids
}

/// Puts the keys of a batch stored from `first_msg_id` at `time_ms` into
/// `window` (empty keys: none).
pub fn remember(window: &mut DedupWindow, keys: &[Bytes], first_msg_id: u64, time_ms: u64) {
    for (i, key) in keys.iter().enumerate().filter(|(_, k)| !k.is_empty()) {
        window.insert(digest(key), first_msg_id + i as u64, time_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> KeyDigest {
        digest(&i.to_le_bytes())
    }

    fn k(s: &str) -> KeyDigest {
        digest(s.as_bytes())
    }

    #[test]
    fn the_map_hasher_spreads_digests() {
        let st = DigestState::default();
        let buckets: std::collections::HashSet<u64> = (0..4096u64).map(|i| st.hash_one(key(i)) & 4095).collect();
        assert!(buckets.len() > 2000, "{} of 4096 buckets used", buckets.len());
    }

    #[test]
    fn digests_are_fixed_and_distinct() {
        assert_eq!(digest(b"k"), digest(b"k"), "the same on every replica and run");
        assert_ne!(digest(b"k"), digest(b"k\0"));
        assert_ne!(digest(b"a"), digest(b"b"));
    }

    #[test]
    fn a_key_deduplicates_until_the_window_ends() {
        let mut w = DedupWindow::default();
        w.insert(k("k"), 7, 1000);
        assert_eq!(w.lookup(k("k"), 1000), Some(7));
        assert_eq!(w.lookup(k("k"), 1000 + DEDUP_WINDOW_MS - 1), Some(7));
        assert_eq!(w.lookup(k("k"), 1000 + DEDUP_WINDOW_MS), None, "the window is half-open");
        assert_eq!(w.lookup(k("other"), 1000), None);
    }

    #[test]
    fn expired_entries_leave_when_a_later_record_arrives() {
        let mut w = DedupWindow::default();
        w.insert(k("a"), 1, 0);
        w.insert(k("b"), 2, 10);
        w.insert(k("c"), 3, DEDUP_WINDOW_MS);
        // "a" expired exactly at the new record's time; "b" has 10 ms left.
        assert_eq!(w.entries().map(|(d, _)| d).collect::<Vec<_>>(), [k("b"), k("c")]);
    }

    #[test]
    fn the_oldest_key_is_evicted_at_the_count_limit() {
        let mut w = DedupWindow::default();
        for i in 0..IDEMPOTENCY_KEYS_PER_QUEUE_MAX as u64 {
            w.insert(key(i), i, 5);
        }
        assert_eq!(w.len(), IDEMPOTENCY_KEYS_PER_QUEUE_MAX);
        assert_eq!(w.lookup(key(0), 5), Some(0), "at the limit nothing is evicted yet");
        w.insert(key(u64::MAX), 99, 5);
        assert_eq!(w.len(), IDEMPOTENCY_KEYS_PER_QUEUE_MAX);
        assert_eq!(w.lookup(key(0), 5), None, "one past the limit evicts the oldest");
        assert_eq!(w.lookup(key(1), 5), Some(1));
        assert_eq!(w.lookup(key(u64::MAX), 5), Some(99));
    }

    #[test]
    fn a_reused_expired_key_moves_to_the_back() {
        let mut w = DedupWindow::default();
        w.insert(k("a"), 1, 0);
        w.insert(k("b"), 2, 1);
        w.insert(k("a"), 3, DEDUP_WINDOW_MS + 5);
        assert_eq!(w.lookup(k("a"), DEDUP_WINDOW_MS + 5), Some(3));
        assert_eq!(w.len(), 1, "b expired too");
        let order: Vec<_> = w.entries().map(|(d, s)| (d, s.msg_id)).collect();
        assert_eq!(order, [(k("a"), 3)]);
    }

    #[test]
    fn restore_rebuilds_the_same_window() {
        let mut w = DedupWindow::default();
        for i in 0..100u64 {
            w.insert(key(i % 40), i, i * 10_000);
        }
        let mut back = DedupWindow::default();
        for (d, s) in w.entries() {
            back.restore(d, s);
        }
        assert_eq!(w.entries().collect::<Vec<_>>(), back.entries().collect::<Vec<_>>());
        // And both evolve alike.
        w.insert(k("new"), 1, 10_000_000);
        back.insert(k("new"), 1, 10_000_000);
        assert_eq!(w.entries().collect::<Vec<_>>(), back.entries().collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_stores_each_new_key_once() {
        let mut w = DedupWindow::default();
        w.insert(k("old"), 500, 0);
        let keys: Vec<Bytes> = ["a", "old", "", "a", "b", ""].iter().map(|s| Bytes::from(s.as_bytes())).collect();
        let fates = plan(&w, &keys, keys.len(), 1);
        assert_eq!(
            fates,
            [
                KeyFate::Store(0),
                KeyFate::Known(500),
                KeyFate::Store(1),
                KeyFate::SameAs(0),
                KeyFate::Store(2),
                KeyFate::Store(3)
            ]
        );
        assert_eq!(answer(&fates, fates.len(), 10), [10, 500, 11, 10, 12, 13]);
        // No keys at all (or only empty ones): everything is stored.
        assert!(plan(&w, &[], 2, 1).is_empty());
        assert!(plan(&w, &[Bytes::new(), Bytes::new()], 2, 1).is_empty());
        assert_eq!(answer(&[], 3, 7), [7, 8, 9]);
    }
}
