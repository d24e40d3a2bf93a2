//! Idempotency keys for sends and publishes.
//!
//! Every send, batch send, publish and batch publish of this client carries
//! a key per message (protocol version 3), so [`crate::Client::call`] may
//! repeat it after a lost answer or a leader change: the broker stores a
//! key's message once within its dedup window (5 minutes, at most 1,048,576
//! keys per shard; see `broker/src/engine/dedup.rs`) and answers a
//! repeat with the first message's id.
//!
//! A key is 16 bytes drawn from a pseudo-random sequence: SipHash, keyed by
//! the standard library's per-process random `RandomState`, of a per-thread
//! counter. Keys of one thread never repeat; keys of different threads and
//! processes collide with probability about n²/2¹²⁹. No syscall per key: a
//! pipelined producer makes a million of them a second.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;

use crate::ops::IdempotencyKey;

struct KeySource {
    state: RandomState,
    next: u64,
}

impl KeySource {
    fn half(&self, lane: u8) -> u64 {
        let mut h = self.state.build_hasher();
        h.write_u64(self.next);
        h.write_u8(lane);
        h.finish()
    }

    fn next(&mut self) -> u128 {
        let key = (u128::from(self.half(0)) << 64) | u128::from(self.half(1));
        self.next += 1;
        key
    }
}

thread_local! {
    static SOURCE: RefCell<KeySource> = RefCell::new(KeySource { state: RandomState::new(), next: 0 });
}

impl IdempotencyKey {
    /// A fresh key, different from every other this thread made.
    pub fn random() -> IdempotencyKey {
        IdempotencyKey(SOURCE.with(|s| s.borrow_mut().next()))
    }

    /// The key's 16 bytes as sent on the wire.
    pub fn to_bytes(self) -> Bytes {
        Bytes::copy_from_slice(&self.0.to_le_bytes())
    }
}

/// `n` fresh keys, one per message of a batch (slices of one buffer: one
/// allocation per batch, not per key).
pub fn random_keys(n: usize) -> Vec<Bytes> {
    let mut buf = Vec::with_capacity(16 * n);
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        for _ in 0..n {
            buf.extend_from_slice(&s.next().to_le_bytes());
        }
    });
    let buf = Bytes::from(buf);
    (0..n).map(|i| buf.slice(16 * i..16 * (i + 1))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sixteen_distinct_bytes() {
        let keys = random_keys(10_000);
        assert!(keys.iter().all(|k| k.len() == 16));
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        let other = std::thread::spawn(|| random_keys(100)).join().expect("thread");
        assert!(other.iter().all(|k| !distinct.contains(k)), "another thread's keys differ");
    }
}
