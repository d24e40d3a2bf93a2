//! The message body the load generator sends.
//!
//! ```text
//! offset size field
//!  0     4   magic    b"CMLG"
//!  4     4   nonce    u32 LE: random per run, so leftovers of other runs on a reused queue are told apart
//!  8     8   id       u64 LE: producer index << ID_SEQ_BITS | per-producer counter
//! 16     8   sent_ns  u64 LE: nanoseconds since the run's clock origin (the intended send time with --rate)
//! 24     …   padding  up to --size bytes
//! ```
//!
//! A body is written straight into a reused arena buffer (see `BodyArena`), so
//! producing one costs a 24-byte write and a refcount, not an allocation.

use bytes::{BufMut, Bytes, BytesMut};

pub const MAGIC: [u8; 4] = *b"CMLG";

/// Bytes of header every body starts with; `--size` may not be smaller.
pub const HEADER_BYTES: usize = 24;

/// Bits of a message id that hold the per-producer counter: 2^40 messages
/// per producer is far beyond any run, and leaves 24 bits of producer index.
pub const ID_SEQ_BITS: u32 = 40;

/// Producers a run may have: the producer index must fit above the counter.
pub const PRODUCERS_MAX: u32 = 1 << (64 - ID_SEQ_BITS);

const _: () = assert!(HEADER_BYTES == 4 + 4 + 8 + 8);

/// A message id: which producer sent it, and its counter there.
pub fn message_id(producer: u32, seq: u64) -> u64 {
    (u64::from(producer) << ID_SEQ_BITS) | seq
}

pub fn split_id(id: u64) -> (u32, u64) {
    ((id >> ID_SEQ_BITS) as u32, id & ((1 << ID_SEQ_BITS) - 1))
}

/// What a received body says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub nonce: u32,
    pub id: u64,
    pub sent_ns: u64,
}

/// Parses a body's header; `None` for anything this run did not write in
/// this format (too short, wrong magic). Never panics on any input.
pub fn parse(body: &[u8]) -> Option<Header> {
    let head: &[u8; HEADER_BYTES] = body.get(..HEADER_BYTES)?.try_into().ok()?;
    if head[0..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
    Some(Header { nonce: u32_at(4), id: u64_at(8), sent_ns: u64_at(16) })
}

/// Bytes of arena a producer keeps: a full batch of the largest bodies would
/// need more, and then the arena simply grows once.
const ARENA_BYTES_MIN: usize = 64 * 1024;

/// A reusable buffer bodies are carved from. Every body is a `Bytes` view of
/// it; once the views are dropped (the request was encoded), `reserve`
/// reclaims the whole buffer instead of allocating.
pub struct BodyArena {
    buf: BytesMut,
    size: usize,
    nonce: u32,
    padding: Vec<u8>,
}

impl BodyArena {
    /// `size` must be at least `HEADER_BYTES` (checked when parsing options).
    pub fn new(size: usize, nonce: u32) -> BodyArena {
        let size = size.max(HEADER_BYTES);
        BodyArena {
            buf: BytesMut::with_capacity(ARENA_BYTES_MIN.max(size * cmq_protocol::limits::BATCH_MSGS_MAX)),
            size,
            nonce,
            padding: vec![b'.'; size - HEADER_BYTES],
        }
    }

    /// Makes room for `count` bodies. Call before a batch, after the
    /// previous batch's bodies were dropped, so the buffer is reclaimed.
    pub fn prepare(&mut self, count: usize) {
        self.buf.reserve(self.size * count);
    }

    /// One body with this id and send time.
    pub fn body(&mut self, id: u64, sent_ns: u64) -> Bytes {
        if self.buf.capacity() - self.buf.len() < self.size {
            self.buf.reserve(self.size);
        }
        self.buf.put_slice(&MAGIC);
        self.buf.put_u32_le(self.nonce);
        self.buf.put_u64_le(id);
        self.buf.put_u64_le(sent_ns);
        self.buf.put_slice(&self.padding);
        self.buf.split_to(self.size).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_and_has_the_requested_size() {
        let mut arena = BodyArena::new(64, 7);
        let b = arena.body(message_id(3, 99), 123_456);
        assert_eq!(b.len(), 64);
        assert_eq!(parse(&b), Some(Header { nonce: 7, id: message_id(3, 99), sent_ns: 123_456 }));
        assert_eq!(split_id(message_id(3, 99)), (3, 99));
    }

    #[test]
    fn foreign_or_short_bodies_are_not_ours() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"hello world, this is not a loadgen body"), None);
        let mut arena = BodyArena::new(24, 1);
        let b = arena.body(1, 2);
        for cut in 0..b.len() {
            assert_eq!(parse(&b[..cut]), None);
        }
    }

    #[test]
    fn arena_is_reused_once_bodies_are_dropped() {
        let mut arena = BodyArena::new(64, 1);
        arena.prepare(16);
        let base = arena.body(0, 0).as_ptr() as usize;
        // Far more bodies than the arena holds: every one must still come
        // from the first buffer, reclaimed each time it runs out.
        for batch in 0..10_000u64 {
            arena.prepare(16);
            let bodies: Vec<Bytes> = (0..16).map(|i| arena.body(batch * 16 + i, 0)).collect();
            for b in &bodies {
                let p = b.as_ptr() as usize;
                assert!(p >= base && p + 64 <= base + ARENA_BYTES_MIN, "batch {batch}: body outside the arena");
            }
        }
    }
}
