//! Receipt handles: which delivery of which message a consumer holds.
//!
//! ```text
//! bits 127..64  seq            the message's sequence number in its queue
//! bits  63..32  dequeue_count  which delivery this handle is for
//! bits  31..0   tag            SipHash-1-3(broker secret; queue uid, seq, dequeue_count)
//! ```
//! A later delivery increments dequeue_count, so earlier handles stop
//! matching; the keyed tag makes handles unforgeable (a client cannot delete
//! a message it never received by guessing) and ties them to one queue
//! incarnation (the uid changes when a queue is deleted and recreated).
//! Nothing per delivery is stored: the tag is recomputed to verify.

use std::hash::Hasher;

use cmq_protocol::ReceiptHandle;
use siphasher::sip::SipHasher13;

#[derive(Clone)]
pub struct ReceiptKeys {
    secret: [u8; 16],
}

impl ReceiptKeys {
    pub fn new(secret: [u8; 16]) -> ReceiptKeys {
        ReceiptKeys { secret }
    }

    fn tag(&self, uid: u32, seq: u64, dequeue_count: u32) -> u32 {
        let mut h = SipHasher13::new_with_key(&self.secret);
        h.write_u32(uid);
        h.write_u64(seq);
        h.write_u32(dequeue_count);
        h.finish() as u32
    }

    pub fn issue(&self, uid: u32, seq: u64, dequeue_count: u32) -> ReceiptHandle {
        let tag = self.tag(uid, seq, dequeue_count);
        ReceiptHandle((u128::from(seq) << 64) | (u128::from(dequeue_count) << 32) | u128::from(tag))
    }

    /// 128 bits for a subscription's push-signing key: SipHash of the broker
    /// secret over (domain, topic uid, subscription id, creation time), twice.
    pub fn derive_secret(&self, topic_uid: u32, sid: u32, time_ms: u64) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = SipHasher13::new_with_key(&self.secret);
            h.write(b"cmq push secret");
            h.write_u32(topic_uid);
            h.write_u32(sid);
            h.write_u64(time_ms);
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    }

    /// The (seq, dequeue_count) a handle names, if it was issued for this queue.
    pub fn open(&self, uid: u32, handle: ReceiptHandle) -> Option<(u64, u32)> {
        let seq = (handle.0 >> 64) as u64;
        let dequeue_count = (handle.0 >> 32) as u32;
        let tag = handle.0 as u32;
        (self.tag(uid, seq, dequeue_count) == tag).then_some((seq, dequeue_count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_handles_open_and_forgeries_do_not() {
        let keys = ReceiptKeys::new([7; 16]);
        let h = keys.issue(3, 42, 2);
        assert_eq!(keys.open(3, h), Some((42, 2)));
        assert_eq!(keys.open(4, h), None, "another queue");
        assert_eq!(keys.open(3, ReceiptHandle(h.0 ^ 1)), None, "tampered tag");
        assert_eq!(keys.open(3, ReceiptHandle(h.0 + (1 << 32))), None, "other delivery");
        assert_eq!(ReceiptKeys::new([8; 16]).open(3, h), None, "other broker");
    }
}
