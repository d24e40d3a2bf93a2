//! Every limit a client can run into, as a named constant.
//!
//! The broker checks each one while decoding a frame, before it allocates
//! anything sized by the client. Relations between limits are compile-time
//! assertions so that changing one cannot silently break another.

/// Messages per batch request (BatchSendMessage, BatchReceiveMessage,
/// BatchDeleteMessage). 16, as CMQ.
pub const BATCH_MSGS_MAX: usize = 16;

/// Largest message body any queue may be configured for (CMQ `maxMsgSize` upper bound).
pub const MSG_BYTES_MAX: u32 = 1024 * 1024;

/// Smallest value a queue's `maxMsgSize` may be set to (CMQ lower bound).
pub const MSG_BYTES_LIMIT_MIN: u32 = 1024;

/// Bytes of framing, names and per-message overhead we allow on top of the
/// bodies in the largest legal request (a full batch of maximum-size bodies).
pub const FRAME_OVERHEAD_BYTES_MAX: u32 = 64 * 1024;

/// Largest frame (header included) either side may send. A larger length
/// prefix is refused before any buffer is grown for it.
pub const FRAME_BYTES_MAX: u32 = BATCH_MSGS_MAX as u32 * MSG_BYTES_MAX + FRAME_OVERHEAD_BYTES_MAX;

/// Longest idempotency key a send or publish may carry (bytes). A client's
/// default key is 16 random bytes; 64 leaves room for a UUID in text or a
/// hash of the sender's own message id. The broker keeps a 128-bit digest
/// of each key, whatever its length (`IDEMPOTENCY_KEYS_PER_SHARD_MAX` of
/// them per shard). A longer key is refused with INVALID_PARAMETER. The
/// key's length travels in a u8.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 64;

/// Queue, topic and subscription names: 1..=64 characters (CMQ).
pub const NAME_CHARS_MAX: usize = 64;

/// Any other string in a frame (error messages, client names, prefixes).
pub const STRING_BYTES_MAX: usize = 4096;

/// Items in one page of a list response (ListQueues `limit`).
pub const LIST_PAGE_MAX: u32 = 1000;

/// Tags one published message may carry (CMQ: 5).
pub const TOPIC_TAGS_MAX: usize = 5;

/// Filter tags or binding keys one subscription may have (CMQ: 5).
pub const TOPIC_FILTERS_MAX: usize = 5;

/// Longest subscription endpoint (a URL).
pub const URL_BYTES_MAX: usize = 2048;

/// Messages one PeekMessages answer may carry.
pub const PEEK_MSGS_MAX: usize = 100;

/// Default page size of list requests when the client asks for 0 items.
pub const LIST_PAGE_DEFAULT: u32 = 20;

/// Longest a receive may long-poll, in seconds (CMQ `pollingWaitSeconds` upper bound).
pub const POLLING_WAIT_SECONDS_MAX: u32 = 30;

/// Opaque authentication payload carried by the handshake.
pub const AUTH_PAYLOAD_BYTES_MAX: usize = 4096;

/// Largest frame (header included) a connection may send before its
/// handshake completes, and the largest Handshake frame at any time. A
/// connection that has not proved it speaks the protocol gets no more buffer
/// than this: a larger length prefix is refused with FRAME_TOO_LARGE and the
/// connection closed. Sized for the largest legal Handshake (every string and
/// the authentication payload at their limits: 12,319 bytes), which leaves
/// room for a challenge-response payload (a key id, two 32-byte nonces, a
/// timestamp and a 32-byte MAC are about 150 bytes).
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = 16 * 1024;

/// The largest Handshake frame the field limits allow: header, two u16
/// versions, two strings and the auth payload at their limits, and a
/// present `option<u16>` shard hint.
pub const HANDSHAKE_ENCODED_BYTES_MAX: usize =
    16 + 2 + 2 + (2 + STRING_BYTES_MAX) + (2 + STRING_BYTES_MAX) + (4 + AUTH_PAYLOAD_BYTES_MAX) + 3;
// ---- peer protocol (cluster nodes talking to each other, `peer.rs`) ----

/// Largest peer frame (length prefix included). A Raft append carrying one
/// entry made from the largest client batch (`FRAME_BYTES_MAX`), several such
/// entries, or a snapshot chunk must fit; 64 MiB leaves room for a turn's
/// worth of them. A larger length prefix is refused before any buffer grows.
pub const PEER_FRAME_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Largest frame accepted before a peer has authenticated (Hello, Challenge,
/// Proof, Refuse): a stranger can make a node buffer at most this much.
pub const PEER_HANDSHAKE_FRAME_BYTES_MAX: u32 = 1024;

/// Longest client address a node advertises in its Hello or Challenge
/// (`host:port`; a DNS name may be long, but not longer than this).
pub const PEER_ADDR_BYTES_MAX: usize = 256;

/// Longest reason text in a Refuse frame.
pub const PEER_REFUSE_MESSAGE_BYTES_MAX: usize = 512;

const _: () = assert!(FRAME_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX <= u8::MAX as usize);
// A full batch's keys fit in the framing overhead allowed beside the bodies.
const _: () = assert!(BATCH_MSGS_MAX * (1 + IDEMPOTENCY_KEY_BYTES_MAX) + 2 < FRAME_OVERHEAD_BYTES_MAX as usize / 4);
// Every legal handshake passes the pre-handshake limit, which is far below a request's.
const _: () = assert!(HANDSHAKE_ENCODED_BYTES_MAX <= HANDSHAKE_FRAME_BYTES_MAX as usize);
const _: () = assert!(HANDSHAKE_FRAME_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(MSG_BYTES_LIMIT_MIN <= MSG_BYTES_MAX);
const _: () = assert!(LIST_PAGE_DEFAULT <= LIST_PAGE_MAX);
// A full peek page with bodies must fit in a frame only if bodies are small;
// the broker stops a page early when its bodies would not fit.
const _: () = assert!(PEEK_MSGS_MAX * 256 < FRAME_BYTES_MAX as usize);
// A full-size list page of maximum-length names must fit in one frame.
const _: () = assert!((LIST_PAGE_MAX as usize) * (NAME_CHARS_MAX + 16) < FRAME_BYTES_MAX as usize);

/// Shards a broker may run (`cmqd --shards`); shard ids fit in a u16 with room.
pub const SHARDS_MAX: usize = 256;

/// Nodes in one cluster (a Raft group larger than a handful only costs
/// latency; CMQ runs three replicas).
pub const CLUSTER_NODES_MAX: usize = 16;
// A Raft append carrying the largest client batch as one entry fits in one peer frame.
const _: () = assert!(PEER_FRAME_BYTES_MAX >= 2 * FRAME_BYTES_MAX);
// The largest Hello (fixed fields, an address of PEER_ADDR_BYTES_MAX, a nonce) and
// the largest Refuse fit in a handshake frame (5 header bytes + payload).
const _: () = assert!(5 + 2 + 8 + 2 + 2 + 2 + PEER_ADDR_BYTES_MAX + 32 <= PEER_HANDSHAKE_FRAME_BYTES_MAX as usize);
const _: () = assert!(5 + 8 + 2 + PEER_ADDR_BYTES_MAX + 32 + 32 <= PEER_HANDSHAKE_FRAME_BYTES_MAX as usize);
const _: () = assert!(5 + 2 + 2 + PEER_REFUSE_MESSAGE_BYTES_MAX <= PEER_HANDSHAKE_FRAME_BYTES_MAX as usize);
const _: () = assert!(PEER_HANDSHAKE_FRAME_BYTES_MAX <= PEER_FRAME_BYTES_MAX);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Handshake, Request};

    /// The pre-handshake limit is computed from the field limits: a handshake
    /// with every field at its limit encodes to exactly that size, which fits.
    #[test]
    fn largest_legal_handshake_fits_the_pre_handshake_limit() {
        let hs = Handshake {
            client: "c".repeat(STRING_BYTES_MAX),
            auth_method: "m".repeat(STRING_BYTES_MAX),
            auth_payload: bytes::Bytes::from(vec![7u8; AUTH_PAYLOAD_BYTES_MAX]),
            shard_hint: Some(u16::MAX),
            ..Handshake::new("x")
        };
        let mut out = Vec::new();
        Request::Handshake(hs).encode_frame(1, &mut out);
        assert_eq!(out.len(), HANDSHAKE_ENCODED_BYTES_MAX);
        assert!(out.len() <= HANDSHAKE_FRAME_BYTES_MAX as usize);
    }
}
