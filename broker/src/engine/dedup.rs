//! Idempotent sends: the recent idempotency keys of a shard's queues and topics.
//!
//! A send or publish may carry a key the client chose (protocol version 3).
//! The first message stored under a key is remembered here with its id and
//! enqueue time; a later send with the same key, while the entry lasts, is
//! answered with that id and stores nothing. So a client that lost the
//! answer to a send (its connection died, the leader changed) can repeat it
//! and the message is stored once.
//!
//! Each queue and topic has a [`DedupWindow`] (its keys, for lookups); the
//! shard has one [`DedupOrder`]: every key of every window in the order its
//! record was applied. An entry lasts [`DEDUP_WINDOW_MS`] after its message
//! was stored, and the shard keeps at most
//! [`IDEMPOTENCY_KEYS_PER_SHARD_MAX`] keys in all: a new key evicts the
//! shard's oldest past that count, whichever queue holds it. So memory is
//! bounded per shard however many queues there are, and a busy queue may
//! use what quiet ones leave. Both bounds are decided by the times carried
//! in the log records (the stored entry's time and the new record's time),
//! never by a clock read while applying, and the order is the apply order
//! (a `VecDeque`, never a hash map's order), so every replica that applies
//! the same records holds the same keys, and so does a node that replays
//! its log after a crash; a catalog stores the keys in that order.
//! Lookups never change a window: a leader answering a duplicate logs
//! nothing, and its followers hold the same state.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use bytes::Bytes;
use siphasher::sip128::{Hasher128, SipHasher13};

/// How long after a message was stored its key still deduplicates: 5
/// minutes, as SQS FIFO queues' deduplication interval. A client retries
/// a lost send within its retry deadline (10 s by default), far inside.
pub const DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Keys remembered per shard, over all its queues and topics. Under
/// sustained keyed load the window covers the shard's last this-many keyed
/// messages when that is shorter than `DEDUP_WINDOW_MS`: 10 s at 100,000
/// keyed messages/s on one shard, 17 minutes at 1,000/s. Memory: about 90
/// bytes per key (a map entry in its queue's window, an entry in the
/// shard's order), so at most about 90 MiB per shard; the catalog stores
/// each key in 37 bytes.
pub const IDEMPOTENCY_KEYS_PER_SHARD_MAX: usize = 1 << 20;

/// Entries of the order whose key has left its window (its queue was
/// deleted, or the key was stored again later) that may accumulate before
/// the order is swept: at least this many, and at least as many as there
/// are live keys, so a sweep (one pass over the order) costs O(1) per
/// entry it removes and the order holds at most twice the live keys.
const STALE_ENTRIES_SLACK: usize = 1024;

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

/// Whose window a key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DedupOwner {
    Queue = 1,
    Topic = 2,
}

fn expired(time_ms: u64, now_ms: u64) -> bool {
    time_ms.saturating_add(DEDUP_WINDOW_MS) <= now_ms
}

/// The keys of one queue or topic. Which of them go, and when, is the
/// shard's [`DedupOrder`]'s business.
#[derive(Debug, Clone, Default)]
pub struct DedupWindow {
    by_key: HashMap<KeyDigest, Seen, DigestState>,
}

impl DedupWindow {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The id stored under the key with digest `key`, if its entry is
    /// still within the window at `now_ms`.
    pub fn lookup(&self, key: KeyDigest, now_ms: u64) -> Option<u64> {
        self.by_key.get(&key).filter(|s| !expired(s.time_ms, now_ms)).map(|s| s.msg_id)
    }

    /// The entry held for `key`, expired or not.
    pub fn get(&self, key: KeyDigest) -> Option<Seen> {
        self.by_key.get(&key).copied()
    }
}

/// One key in the shard's order: whose window holds it, and the entry it
/// was stored with (the key is only 8-byte aligned, so an entry is 40
/// bytes). The order holds the whole entry so that walking it (catalogs,
/// the replica digest) reads it front to back and never probes the
/// windows' maps, whose misses cost about as much as the rest of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderEntry {
    pub owner: DedupOwner,
    pub uid: u32,
    key: [u64; 2],
    pub time_ms: u64,
    pub msg_id: u64,
}

impl OrderEntry {
    fn new(owner: DedupOwner, uid: u32, key: KeyDigest, seen: Seen) -> OrderEntry {
        OrderEntry { owner, uid, key: [key as u64, (key >> 64) as u64], time_ms: seen.time_ms, msg_id: seen.msg_id }
    }

    pub fn key(&self) -> KeyDigest {
        u128::from(self.key[0]) | (u128::from(self.key[1]) << 64)
    }

    fn seen(&self) -> Seen {
        Seen { msg_id: self.msg_id, time_ms: self.time_ms }
    }

    /// What names this entry among the order's: a key is stored again
    /// only after its entry expired, so with a later time.
    fn id(&self) -> EntryId {
        (self.owner, self.uid, self.key(), self.time_ms)
    }
}

/// An order entry's identity: (owner, uid, key, time).
type EntryId = (DedupOwner, u32, KeyDigest, u64);

/// Where the order finds the windows: the shard's queues and topics.
pub trait Windows {
    fn window(&self, owner: DedupOwner, uid: u32) -> Option<&DedupWindow>;
}

/// [`Windows`] that the order may change.
pub trait WindowsMut: Windows {
    fn window_mut(&mut self, owner: DedupOwner, uid: u32) -> Option<&mut DedupWindow>;
}

/// Every key of a shard's windows, in the order their records were
/// applied. An entry is *live* while its window still holds its key with
/// its time; the others (stale) are skipped and swept, so what the order
/// decides depends only on the live entries, which a catalog carries.
///
/// An entry goes stale in two ways only: its window is dropped (its queue
/// or topic was deleted; uids are never reused), or its key is stored
/// again (after it expired, so with a later time): `superseded` then holds
/// the old entry's identity until the entry leaves the order. So liveness
/// is decided without probing a window's map: normally `superseded` is
/// empty and an entry is live exactly while its window exists.
#[derive(Debug, Clone)]
pub struct DedupOrder {
    order: VecDeque<OrderEntry>,
    /// Live entries: the keys held by all the shard's windows together.
    live: usize,
    /// [`IDEMPOTENCY_KEYS_PER_SHARD_MAX`]; smaller only in the simulator
    /// and tests that drive a whole engine to the limit.
    cap: usize,
    /// Entries still in the order whose key was stored again since; only
    /// looked up (never iterated), so its order reaches nothing.
    superseded: HashSet<EntryId>,
}

impl Default for DedupOrder {
    fn default() -> DedupOrder {
        DedupOrder { order: VecDeque::new(), live: 0, cap: IDEMPOTENCY_KEYS_PER_SHARD_MAX, superseded: HashSet::new() }
    }
}

impl DedupOrder {
    /// An order that keeps at most `cap` keys: for the simulator and tests
    /// that drive a whole engine past the limit (the limit itself is
    /// tested here at its real value). cmqd always uses
    /// [`IDEMPOTENCY_KEYS_PER_SHARD_MAX`]: every replica must use the same.
    pub fn with_cap(cap: usize) -> DedupOrder {
        DedupOrder { cap, ..DedupOrder::default() }
    }

    /// The most keys this order keeps.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Keys held by the shard's windows.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether `e`, about to leave the order, is stale: forgets it as
    /// superseded if it was.
    fn leaves_stale(superseded: &mut HashSet<EntryId>, windows: &impl Windows, e: &OrderEntry) -> bool {
        let superseded = !superseded.is_empty() && superseded.remove(&e.id());
        superseded || windows.window(e.owner, e.uid).is_none()
    }

    /// Remembers that `msg_id` was stored under `key` in `owner`'s window
    /// at `time_ms` (the record's time), first dropping entries that
    /// expired by then from the front and the oldest beyond the count
    /// limit. A key its window still holds (expired, not yet dropped) gets
    /// the new message, and its place at the back.
    pub fn insert(&mut self, windows: &mut impl WindowsMut, owner: DedupOwner, uid: u32, key: KeyDigest, seen: Seen) {
        self.make_room(windows, seen.time_ms);
        let Some(window) = windows.window_mut(owner, uid) else { return };
        match window.by_key.insert(key, seen) {
            None => self.live += 1,
            // Stored again after it expired, so always with a later time
            // (an equal one would leave both entries live, as the maps
            // alone used to decide).
            Some(old) if old.time_ms != seen.time_ms => {
                self.superseded.insert((owner, uid, key, old.time_ms));
            }
            Some(_) => {}
        }
        self.order.push_back(OrderEntry::new(owner, uid, key, seen));
        self.sweep_if_stale(windows);
    }

    /// Drops stale entries from the front, then live ones that expired by
    /// `now_ms` or leave room for one more key under the limit.
    fn make_room(&mut self, windows: &mut impl WindowsMut, now_ms: u64) {
        while let Some(front) = self.order.front().copied() {
            if !Self::leaves_stale(&mut self.superseded, windows, &front) {
                if !expired(front.time_ms, now_ms) && self.live < self.cap {
                    break;
                }
                if let Some(w) = windows.window_mut(front.owner, front.uid) {
                    w.by_key.remove(&front.key());
                }
                self.live -= 1;
            }
            self.order.pop_front();
        }
    }

    fn sweep_if_stale(&mut self, windows: &impl Windows) {
        let stale = self.order.len() - self.live;
        if stale > self.live.max(STALE_ENTRIES_SLACK) {
            let superseded = &mut self.superseded;
            self.order.retain(|e| !Self::leaves_stale(superseded, windows, e));
        }
    }

    /// A window holding `keys` keys is gone (its queue or topic was
    /// deleted); its entries in the order are stale from now on.
    pub fn window_dropped(&mut self, keys: usize) {
        self.live -= keys.min(self.live);
    }

    /// Every live entry with what its window holds, oldest first (for the
    /// catalog and the replica digest). Reads the order only: a live
    /// entry's window holds exactly what the entry says.
    pub fn entries<'w>(&'w self, windows: &'w impl Windows) -> impl Iterator<Item = (OrderEntry, Seen)> + 'w {
        // Entries come in runs of the same window: ask for it once a run.
        let mut last: Option<(DedupOwner, u32, bool)> = None;
        self.order.iter().filter_map(move |e| {
            let exists = match last {
                Some((owner, uid, exists)) if owner == e.owner && uid == e.uid => exists,
                _ => {
                    let exists = windows.window(e.owner, e.uid).is_some();
                    last = Some((e.owner, e.uid, exists));
                    exists
                }
            };
            let live = exists && (self.superseded.is_empty() || !self.superseded.contains(&e.id()));
            live.then(|| (*e, e.seen()))
        })
    }

    /// Puts back an entry read from a catalog, after the ones restored
    /// before it, evicting nothing: the catalog holds the keys as they were.
    pub fn restore(&mut self, windows: &mut impl WindowsMut, owner: DedupOwner, uid: u32, key: KeyDigest, seen: Seen) {
        if self.live >= self.cap {
            return;
        }
        let Some(window) = windows.window_mut(owner, uid) else { return };
        if window.by_key.contains_key(&key) {
            return;
        }
        window.by_key.insert(key, seen);
        self.live += 1;
        self.order.push_back(OrderEntry::new(owner, uid, key, seen));
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
/// `owner`'s window (empty keys: none).
pub fn remember(
    order: &mut DedupOrder,
    windows: &mut impl WindowsMut,
    (owner, uid): (DedupOwner, u32),
    keys: &[Bytes],
    first_msg_id: u64,
    time_ms: u64,
) {
    for (i, key) in keys.iter().enumerate().filter(|(_, k)| !k.is_empty()) {
        order.insert(windows, owner, uid, digest(key), Seen { msg_id: first_msg_id + i as u64, time_ms });
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

    /// Two queues' windows and a topic's, as the engine's maps hold them.
    #[derive(Default)]
    struct Shard {
        windows: std::collections::BTreeMap<(DedupOwner, u32), DedupWindow>,
        order: DedupOrder,
    }

    const Q1: (DedupOwner, u32) = (DedupOwner::Queue, 1);
    const Q2: (DedupOwner, u32) = (DedupOwner::Queue, 2);
    const T1: (DedupOwner, u32) = (DedupOwner::Topic, 1);

    struct Ws<'a>(&'a mut std::collections::BTreeMap<(DedupOwner, u32), DedupWindow>);

    impl Windows for Ws<'_> {
        fn window(&self, owner: DedupOwner, uid: u32) -> Option<&DedupWindow> {
            self.0.get(&(owner, uid))
        }
    }

    impl WindowsMut for Ws<'_> {
        fn window_mut(&mut self, owner: DedupOwner, uid: u32) -> Option<&mut DedupWindow> {
            self.0.get_mut(&(owner, uid))
        }
    }

    impl Shard {
        fn new() -> Shard {
            let mut s = Shard::default();
            for w in [Q1, Q2, T1] {
                s.windows.insert(w, DedupWindow::default());
            }
            s
        }
        fn insert(&mut self, (owner, uid): (DedupOwner, u32), key: KeyDigest, msg_id: u64, time_ms: u64) {
            self.order.insert(&mut Ws(&mut self.windows), owner, uid, key, Seen { msg_id, time_ms });
        }
        fn lookup(&self, w: (DedupOwner, u32), key: KeyDigest, now_ms: u64) -> Option<u64> {
            self.windows[&w].lookup(key, now_ms)
        }
        fn entries(&mut self) -> Vec<(DedupOwner, u32, KeyDigest, u64, u64)> {
            let ws = Ws(&mut self.windows);
            self.order.entries(&ws).map(|(e, s)| (e.owner, e.uid, e.key(), s.msg_id, s.time_ms)).collect()
        }
        fn keys(&mut self) -> Vec<KeyDigest> {
            self.entries().into_iter().map(|e| e.2).collect()
        }
        fn drop_window(&mut self, w: (DedupOwner, u32)) {
            let gone = self.windows.remove(&w).expect("a window");
            self.order.window_dropped(gone.len());
        }
        /// The live count agrees with the windows, and the order holds at
        /// most the documented share of stale entries.
        fn check(&self) {
            assert_eq!(self.order.len(), self.windows.values().map(DedupWindow::len).sum::<usize>());
            assert!(self.order.order.len() <= 2 * self.order.len() + STALE_ENTRIES_SLACK + 1);
            assert!(self.order.superseded.len() <= self.order.order.len() - self.order.len());
        }
    }

    #[test]
    fn a_key_deduplicates_until_the_window_ends() {
        let mut s = Shard::new();
        s.insert(Q1, k("k"), 7, 1000);
        assert_eq!(s.lookup(Q1, k("k"), 1000), Some(7));
        assert_eq!(s.lookup(Q1, k("k"), 1000 + DEDUP_WINDOW_MS - 1), Some(7));
        assert_eq!(s.lookup(Q1, k("k"), 1000 + DEDUP_WINDOW_MS), None, "the window is half-open");
        assert_eq!(s.lookup(Q1, k("other"), 1000), None);
        assert_eq!(s.lookup(Q2, k("k"), 1000), None, "another queue's window");
    }

    #[test]
    fn expired_entries_leave_when_a_later_record_arrives_in_any_window() {
        let mut s = Shard::new();
        s.insert(Q1, k("a"), 1, 0);
        s.insert(T1, k("b"), 2, 10);
        s.insert(Q2, k("c"), 3, DEDUP_WINDOW_MS);
        // "a" expired exactly at the new record's time; "b" has 10 ms left.
        assert_eq!(s.keys(), [k("b"), k("c")]);
        assert!(s.windows[&Q1].is_empty());
        s.check();
    }

    #[test]
    fn the_shards_oldest_key_is_evicted_at_the_count_limit_whichever_window_holds_it() {
        let mut s = Shard::new();
        s.insert(Q2, k("cold"), 1, 5);
        for i in 1..IDEMPOTENCY_KEYS_PER_SHARD_MAX as u64 {
            s.insert(Q1, key(i), i, 5);
        }
        assert_eq!(s.order.len(), IDEMPOTENCY_KEYS_PER_SHARD_MAX);
        assert_eq!(s.lookup(Q2, k("cold"), 5), Some(1), "at the limit nothing is evicted yet");
        s.insert(T1, key(u64::MAX), 99, 5);
        assert_eq!(s.order.len(), IDEMPOTENCY_KEYS_PER_SHARD_MAX);
        assert_eq!(s.lookup(Q2, k("cold"), 5), None, "one past the limit evicts the shard's oldest");
        assert_eq!(s.lookup(Q1, key(1), 5), Some(1));
        assert_eq!(s.lookup(T1, key(u64::MAX), 5), Some(99));
        s.check();
    }

    #[test]
    fn a_reused_expired_key_moves_to_the_back() {
        let mut s = Shard::new();
        s.insert(Q1, k("a"), 1, 0);
        s.insert(Q1, k("b"), 2, 1);
        s.insert(Q1, k("a"), 3, DEDUP_WINDOW_MS + 5);
        assert_eq!(s.lookup(Q1, k("a"), DEDUP_WINDOW_MS + 5), Some(3));
        assert_eq!(s.order.len(), 1, "b expired too");
        assert_eq!(s.entries(), [(Q1.0, Q1.1, k("a"), 3, DEDUP_WINDOW_MS + 5)]);
        assert!(s.order.superseded.is_empty(), "the old entry left the order, and the set");
        s.check();
    }

    #[test]
    fn a_key_held_past_its_window_behind_a_younger_one_gets_its_new_place() {
        // Record times need not grow (a new leader's clock may be behind):
        // "a" expires while "b", younger, blocks the front.
        let mut s = Shard::new();
        s.insert(Q1, k("b"), 1, DEDUP_WINDOW_MS);
        s.insert(Q1, k("a"), 2, 0);
        s.insert(Q1, k("a"), 3, DEDUP_WINDOW_MS + 1);
        assert_eq!(
            s.entries(),
            [(Q1.0, Q1.1, k("b"), 1, DEDUP_WINDOW_MS), (Q1.0, Q1.1, k("a"), 3, DEDUP_WINDOW_MS + 1)]
        );
        // The old "a" is still in the order behind "b", known as superseded;
        // it goes, and is forgotten, once it reaches the front.
        assert_eq!(s.order.superseded.len(), 1);
        s.insert(Q1, k("c"), 4, 2 * DEDUP_WINDOW_MS);
        assert!(s.order.superseded.is_empty());
        assert_eq!(
            s.entries(),
            [(Q1.0, Q1.1, k("a"), 3, DEDUP_WINDOW_MS + 1), (Q1.0, Q1.1, k("c"), 4, 2 * DEDUP_WINDOW_MS)]
        );
        s.check();
    }

    #[test]
    fn superseded_entries_are_swept_with_the_others() {
        // Every key stored again, three times, while its old entries cannot
        // leave (a younger one blocks the front): the stale entries are
        // swept once they outnumber the live ones, and the set follows.
        let mut s = Shard::new();
        s.insert(Q1, k("young"), 0, 4 * DEDUP_WINDOW_MS - 1);
        let n = STALE_ENTRIES_SLACK as u64 + 10;
        for round in 0..4 {
            for i in 0..n {
                s.insert(Q1, key(i), round * n + i, round * DEDUP_WINDOW_MS + i);
                s.check();
            }
        }
        assert!(s.order.superseded.len() < 2 * n as usize, "swept: {}", s.order.superseded.len());
        let entries = s.entries();
        assert_eq!(entries.len() as u64, n + 1);
        assert!(entries[1..].iter().all(|e| e.3 >= 3 * n), "only the last round's entries are live");
        assert_eq!(s.lookup(Q1, key(5), 3 * DEDUP_WINDOW_MS + 5), Some(3 * n + 5));
    }

    #[test]
    fn a_deleted_window_frees_its_share_and_its_entries_are_swept() {
        let mut s = Shard::new();
        for i in 0..3 * STALE_ENTRIES_SLACK as u64 {
            s.insert(Q2, key(i), i, 5);
        }
        s.insert(Q1, k("kept"), 1, 5);
        s.drop_window(Q2);
        assert_eq!(s.order.len(), 1);
        for i in 0..(STALE_ENTRIES_SLACK as u64 + 2) {
            s.insert(Q1, key(1_000_000 + i), i, 6);
            s.check();
        }
        assert!(s.order.order.len() < 3 * STALE_ENTRIES_SLACK, "swept: {}", s.order.order.len());
        assert_eq!(s.lookup(Q1, k("kept"), 6), Some(1));
        assert_eq!(s.keys()[0], k("kept"), "sweeping keeps the order");
    }

    #[test]
    fn restore_rebuilds_the_same_order() {
        let mut s = Shard::new();
        for i in 0..300u64 {
            let w = [Q1, Q2, T1][(i % 3) as usize];
            s.insert(w, key(i % 40), i, (i % 7) * 50_000 + i * 1_000);
        }
        s.drop_window(T1);
        let mut back = Shard::new();
        back.drop_window(T1);
        for (owner, uid, d, msg_id, time_ms) in s.entries() {
            back.order.restore(&mut Ws(&mut back.windows), owner, uid, d, Seen { msg_id, time_ms });
        }
        assert_eq!(s.entries(), back.entries());
        // And both evolve alike.
        for (i, w) in [Q1, Q2, Q1].into_iter().enumerate() {
            s.insert(w, k("new"), i as u64, 400_000);
            back.insert(w, k("new"), i as u64, 400_000);
        }
        assert_eq!(s.entries(), back.entries());
        s.check();
        back.check();
    }

    #[test]
    fn a_batch_stores_each_new_key_once() {
        let mut s = Shard::new();
        s.insert(Q1, k("old"), 500, 0);
        let w = &s.windows[&Q1];
        let keys: Vec<Bytes> = ["a", "old", "", "a", "b", ""].iter().map(|s| Bytes::from(s.as_bytes())).collect();
        let fates = plan(w, &keys, keys.len(), 1);
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
        assert!(plan(w, &[], 2, 1).is_empty());
        assert!(plan(w, &[Bytes::new(), Bytes::new()], 2, 1).is_empty());
        assert_eq!(answer(&[], 3, 7), [7, 8, 9]);
    }
}
