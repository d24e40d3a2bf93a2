//! A hasher for ids this process mints itself (request ids, delivery ids):
//! the client's in-flight table and the load generator's bookkeeping share it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes sequential ids: one multiply by the golden-ratio constant spreads
/// them over the whole word (hashbrown groups by the top bits) at a fraction
/// of SipHash's cost. Only for ids that are ours, not attacker-chosen: it
/// offers no protection against collisions crafted on purpose.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

/// Fibonacci hashing's multiplier: 2^64 divided by the golden ratio, odd.
const GOLDEN_RATIO_64: u64 = 0x9E37_79B9_7F4A_7C15;

// `#[inline]`: called from other crates (the load generator) on every
// lookup of a hot map; it was a local type there before it moved here.
impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    /// Only reached by keys that are not a single `u64`; kept correct (every
    /// byte mixed in) so that such keys still hash usefully.
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(GOLDEN_RATIO_64);
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(GOLDEN_RATIO_64);
    }
}

/// A map keyed by ids this process mints, hashed with [`IdHasher`].
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// An empty [`IdMap`] with room for `capacity` entries.
pub fn id_map<V>(capacity: usize) -> IdMap<V> {
    HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_top_bits() {
        let top = |v: u64| {
            let mut h = IdHasher::default();
            h.write_u64(v);
            h.finish() >> 57
        };
        let buckets: std::collections::HashSet<u64> = (1..=256).map(top).collect();
        assert!(buckets.len() > 100, "256 sequential ids fell into {} of 128 top-bit groups", buckets.len());
    }

    #[test]
    fn byte_keys_mix_every_byte() {
        let hash = |bytes: &[u8]| {
            let mut h = IdHasher::default();
            h.write(bytes);
            h.finish()
        };
        assert_ne!(hash(b"ab"), hash(b"ba"));
        assert_ne!(hash(b"a"), hash(b"b"));
        let mut map = id_map::<&str>(4);
        map.insert(7, "seven");
        assert_eq!(map.get(&7), Some(&"seven"));
    }
}
