//! The peer protocol: what the nodes of a cluster send each other on their
//! peer links (`--peer-listen`). PROTOCOL.md's "Peer protocol" section
//! documents every byte; the golden-byte tests below pin them.
//!
//! ```text
//! offset size field
//!   0     4  length   u32 LE: bytes that follow this field (1 + payload)
//!   4     1  kind     PeerKind
//!   5     …  payload  depends on kind
//! ```
//!
//! A connection carries one direction of traffic: the node that dialled it
//! sends, the node that accepted it reads (only a Challenge or a Refuse ever
//! travels back). It opens with an authentication handshake in which each
//! side proves it holds the cluster key over a nonce the other side chose:
//!
//! ```text
//! dialer                                   acceptor
//!   Hello {version, node_id, shard, shard_count, client_addr, nonce_d} ─▶
//!   ◀─ Challenge {node_id, client_addr, nonce_a, mac_a}
//!   Proof {mac_d} ─▶   then data frames (Raft, WrittenAck, SnapshotChunk, Forward)
//! ```
//!
//! Either side may answer with Refuse {reason, message} and close instead.
//! The MACs are HMAC-SHA256 under the cluster key over [`auth_transcript`];
//! this crate has no I/O and no cryptography, so computing them is the
//! broker's job (`broker/src/cluster/auth.rs`).
//!
//! Decoding is two-phase, as in [`crate::frame`]: [`check`] says whether a
//! whole frame is buffered (refusing an oversized length from the prefix
//! alone, against a limit the caller picks: [`PEER_HANDSHAKE_FRAME_BYTES_MAX`]
//! before authentication, [`PEER_FRAME_BYTES_MAX`] after), then [`split`]
//! cuts it out without copying and [`PeerFrame::decode`] parses it. Data
//! payloads are opaque [`Bytes`] slices of the received buffer: their
//! contents are defined by the replication layer, not here.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::limits::{PEER_ADDR_BYTES_MAX, PEER_FRAME_BYTES_MAX, PEER_REFUSE_MESSAGE_BYTES_MAX};
use crate::wire::{Reader, Wire, Writer};

pub use crate::limits::PEER_HANDSHAKE_FRAME_BYTES_MAX;

/// The peer protocol version this build speaks. Both sides of a link must
/// speak the same one (a cluster is upgraded node by node only across
/// releases that keep it).
pub const PEER_PROTOCOL_VERSION: u16 = 1;

/// Size of the length prefix.
pub const PEER_LENGTH_PREFIX_BYTES: usize = 4;

/// Length prefix and kind byte.
pub const PEER_HEADER_BYTES: usize = 5;

/// Bytes of a handshake nonce (256 random bits from the OS CSPRNG).
pub const NONCE_BYTES: usize = 32;

/// Bytes of an HMAC-SHA256 tag.
pub const MAC_BYTES: usize = 32;

/// Payload bytes of a WrittenAck (term and index).
pub const WRITTEN_ACK_BYTES: usize = 16;

/// Domain-separation labels that open the MAC input (each ends in a NUL, so
/// neither is a prefix of the other and neither side's tag can be replayed
/// as the other's).
pub const ACCEPTOR_MAC_LABEL: &[u8] = b"cmq-peer-auth-v1 acceptor\0";
pub const DIALER_MAC_LABEL: &[u8] = b"cmq-peer-auth-v1 dialer\0";

/// What a frame is. Values below 0x10 are the handshake, 0x10 and up are data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PeerKind {
    Hello = 0x01,
    Challenge = 0x02,
    Proof = 0x03,
    Refuse = 0x04,
    /// An encoded raft-rs `Message`.
    Raft = 0x10,
    /// A follower has written (not yet fsync'd) the log up to an entry.
    WrittenAck = 0x11,
    /// A piece of a snapshot stream.
    SnapshotChunk = 0x12,
    /// A cross-shard message for a group whose leader is on the receiving node.
    Forward = 0x13,
    /// The sender's replica restarted after its machine did and abstains
    /// from elections (it may lack entries acknowledged as written); no
    /// payload. See `Replica::on_peer_abstaining`.
    Abstaining = 0x14,
}

impl PeerKind {
    pub const ALL: [PeerKind; 9] = [
        PeerKind::Hello,
        PeerKind::Challenge,
        PeerKind::Proof,
        PeerKind::Refuse,
        PeerKind::Raft,
        PeerKind::WrittenAck,
        PeerKind::SnapshotChunk,
        PeerKind::Forward,
        PeerKind::Abstaining,
    ];

    pub fn from_u8(v: u8) -> Option<PeerKind> {
        PeerKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

/// Why a byte stream cannot be framed. Fatal for the connection: once a
/// length prefix is untrustworthy the next frame cannot be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerFrameError {
    #[error("peer frame of {got} bytes exceeds the {limit}-byte limit")]
    TooLarge { got: u64, limit: u32 },
    #[error("peer frame length 0 leaves no room for its kind byte")]
    Empty,
}

/// Phase one: if `buf` starts with a whole frame of at most `limit` bytes,
/// its total length. `Ok(None)` means "incomplete, read more". An oversized
/// length is refused from the 4 prefix bytes alone.
pub fn check(buf: &[u8], limit: u32) -> Result<Option<usize>, PeerFrameError> {
    let Some(total) = pending_len(buf, limit)? else { return Ok(None) };
    Ok((buf.len() >= total).then_some(total))
}

/// The total length of the frame at the front of `buf` once its prefix is
/// buffered (whether or not the rest is): how much to read before parsing.
pub fn pending_len(buf: &[u8], limit: u32) -> Result<Option<usize>, PeerFrameError> {
    if buf.len() < PEER_LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let total = u64::from(len) + PEER_LENGTH_PREFIX_BYTES as u64;
    if total > u64::from(limit) {
        return Err(PeerFrameError::TooLarge { got: total, limit });
    }
    if len == 0 {
        return Err(PeerFrameError::Empty);
    }
    Ok(Some(total as usize))
}

/// Phase two: cut the frame `check` measured off the front of `buf`; returns
/// its kind byte and payload (sharing `buf`'s memory).
pub fn split(buf: &mut BytesMut, total: usize) -> (u8, Bytes) {
    let kind = buf[PEER_LENGTH_PREFIX_BYTES];
    let mut frame = buf.split_to(total);
    // Advancing (rather than slicing a frozen frame) costs one reference
    // count per frame instead of two: this runs for every replicated frame.
    frame.advance(PEER_HEADER_BYTES);
    (kind, frame.freeze())
}

/// Appends a frame header for a payload of `payload_bytes` (which the caller
/// appends next). The caller keeps frames within [`PEER_FRAME_BYTES_MAX`].
pub fn put_header(out: &mut Vec<u8>, kind: PeerKind, payload_bytes: usize) {
    out.extend_from_slice(&header(kind, payload_bytes));
}

/// The header of a frame with `payload_bytes` of payload, for callers that
/// assemble frames in their own buffers.
pub fn header(kind: PeerKind, payload_bytes: usize) -> [u8; PEER_HEADER_BYTES] {
    debug_assert!(payload_bytes + PEER_HEADER_BYTES <= PEER_FRAME_BYTES_MAX as usize);
    let [a, b, c, d] = (payload_bytes as u32 + 1).to_le_bytes();
    [a, b, c, d, kind as u8]
}

/// Appends a whole frame whose payload is the concatenation of `parts`
/// (an opaque data frame, without copying the parts anywhere else first).
pub fn put_frame(out: &mut Vec<u8>, kind: PeerKind, parts: &[&[u8]]) {
    put_header(out, kind, parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Total bytes on the wire of a frame with `payload_bytes` of payload.
pub fn frame_bytes(payload_bytes: usize) -> usize {
    PEER_HEADER_BYTES + payload_bytes
}

/// Nonces and MACs travel as raw fixed-size byte strings.
impl Wire for [u8; 32] {
    fn encode(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(self);
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        // Two little-endian u128 reads give back the 32 bytes in order.
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&r.u128(field)?.to_le_bytes());
        out[16..].copy_from_slice(&r.u128(field)?.to_le_bytes());
        Ok(out)
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    /// The dialer's first frame.
    pub struct Hello {
        /// [`PEER_PROTOCOL_VERSION`] of the dialer.
        pub version: u16,
        /// The dialer's node id (its Raft peer id).
        pub node_id: u64,
        /// The dialer's shard whose links this connection belongs to; the
        /// acceptor hands the connection to its own shard of that number.
        pub shard: u16,
        /// The dialer's `--shards`; a cluster's nodes must agree.
        pub shard_count: u16,
        /// Where the dialer serves clients (`host:port`).
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub client_addr: String = string(PEER_ADDR_BYTES_MAX),
        /// Random, fresh for every connection.
        pub nonce: [u8; 32],
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    /// The acceptor's answer to a Hello it accepts.
    pub struct Challenge {
        /// The acceptor's node id (the dialer checks it dialled the node it meant to).
        pub node_id: u64,
        /// Where the acceptor serves clients.
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub client_addr: String = string(PEER_ADDR_BYTES_MAX),
        /// Random, fresh for every connection.
        pub nonce: [u8; 32],
        /// HMAC(key, ACCEPTOR_MAC_LABEL ‖ transcript).
        pub mac: [u8; 32],
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    /// The dialer's answer to a Challenge whose MAC it verified.
    pub struct Proof {
        /// HMAC(key, DIALER_MAC_LABEL ‖ transcript).
        pub mac: [u8; 32],
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    /// Why a side ends the handshake (sent just before it closes).
    pub struct Refuse {
        /// A [`RefuseReason`] code.
        pub reason: u16,
        /// Human-readable detail for the other side's log (never secret).
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub message: String = string(PEER_REFUSE_MESSAGE_BYTES_MAX),
    }
}

/// Reason codes of a Refuse frame. A newtype, so a node can log codes a
/// newer peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefuseReason(pub u16);

impl RefuseReason {
    /// The peer protocol versions differ.
    pub const VERSION: RefuseReason = RefuseReason(1);
    /// The nodes run with different `--shards`.
    pub const SHARD_COUNT: RefuseReason = RefuseReason(2);
    /// The dialer's node id is not a member of the acceptor's cluster (or is the acceptor's own).
    pub const UNKNOWN_NODE: RefuseReason = RefuseReason(3);
    /// A MAC did not verify: the other side does not hold the cluster key.
    pub const AUTH_FAILED: RefuseReason = RefuseReason(4);
    /// The Hello names a shard the acceptor does not have.
    pub const BAD_SHARD: RefuseReason = RefuseReason(5);
    /// A frame was malformed, oversized or out of order.
    pub const MALFORMED: RefuseReason = RefuseReason(6);
    /// The acceptor answered with a node id other than the one the dialer meant to reach.
    pub const WRONG_NODE: RefuseReason = RefuseReason(7);
    /// The dialer spoke plaintext to a node that requires peer TLS.
    pub const TLS_REQUIRED: RefuseReason = RefuseReason(8);

    pub fn name(self) -> &'static str {
        match self {
            RefuseReason::VERSION => "VERSION",
            RefuseReason::SHARD_COUNT => "SHARD_COUNT",
            RefuseReason::UNKNOWN_NODE => "UNKNOWN_NODE",
            RefuseReason::AUTH_FAILED => "AUTH_FAILED",
            RefuseReason::BAD_SHARD => "BAD_SHARD",
            RefuseReason::MALFORMED => "MALFORMED",
            RefuseReason::WRONG_NODE => "WRONG_NODE",
            RefuseReason::TLS_REQUIRED => "TLS_REQUIRED",
            _ => "UNKNOWN",
        }
    }
}

impl Refuse {
    pub fn new(reason: RefuseReason, message: &str) -> Refuse {
        let mut end = message.len().min(PEER_REFUSE_MESSAGE_BYTES_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Refuse { reason: reason.0, message: message[..end].to_owned() }
    }
}

/// Frames of the authentication handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFrame {
    Hello(Hello),
    Challenge(Challenge),
    Proof(Proof),
    Refuse(Refuse),
}

/// Frames an authenticated link delivers. Opaque payloads are slices of the
/// received buffer, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataFrame {
    Raft(Bytes),
    WrittenAck { term: u64, index: u64 },
    SnapshotChunk(Bytes),
    Forward(Bytes),
    Abstaining,
}

/// Any peer frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFrame {
    Auth(AuthFrame),
    Data(DataFrame),
}

impl PeerFrame {
    /// Parses the payload of a frame of kind `kind` (from [`split`]).
    pub fn decode(kind: u8, payload: Bytes) -> Result<PeerFrame, DecodeError> {
        let kind = PeerKind::from_u8(kind).ok_or(DecodeError::Invalid("peer frame kind"))?;
        Ok(match kind {
            PeerKind::Hello => PeerFrame::Auth(AuthFrame::Hello(decode_whole(payload, "hello")?)),
            PeerKind::Challenge => PeerFrame::Auth(AuthFrame::Challenge(decode_whole(payload, "challenge")?)),
            PeerKind::Proof => PeerFrame::Auth(AuthFrame::Proof(decode_whole(payload, "proof")?)),
            PeerKind::Refuse => PeerFrame::Auth(AuthFrame::Refuse(decode_whole(payload, "refuse")?)),
            PeerKind::Raft => PeerFrame::Data(DataFrame::Raft(payload)),
            PeerKind::WrittenAck => {
                let mut r = Reader::new(payload);
                let (term, index) = (r.u64("term")?, r.u64("index")?);
                r.finish()?;
                PeerFrame::Data(DataFrame::WrittenAck { term, index })
            }
            PeerKind::SnapshotChunk => PeerFrame::Data(DataFrame::SnapshotChunk(payload)),
            PeerKind::Forward => PeerFrame::Data(DataFrame::Forward(payload)),
            PeerKind::Abstaining => {
                Reader::new(payload).finish()?;
                PeerFrame::Data(DataFrame::Abstaining)
            }
        })
    }

    /// Appends the whole frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PeerFrame::Auth(a) => a.encode(out),
            PeerFrame::Data(d) => d.encode(out),
        }
    }
}

impl AuthFrame {
    pub fn kind(&self) -> PeerKind {
        match self {
            AuthFrame::Hello(_) => PeerKind::Hello,
            AuthFrame::Challenge(_) => PeerKind::Challenge,
            AuthFrame::Proof(_) => PeerKind::Proof,
            AuthFrame::Refuse(_) => PeerKind::Refuse,
        }
    }

    /// Appends the whole frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put_header(out, self.kind(), 0);
        match self {
            AuthFrame::Hello(v) => v.encode(out),
            AuthFrame::Challenge(v) => v.encode(out),
            AuthFrame::Proof(v) => v.encode(out),
            AuthFrame::Refuse(v) => v.encode(out),
        }
        let len = (out.len() - start - PEER_LENGTH_PREFIX_BYTES) as u32;
        out[start..start + PEER_LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_le_bytes());
    }
}

impl DataFrame {
    pub fn kind(&self) -> PeerKind {
        match self {
            DataFrame::Raft(_) => PeerKind::Raft,
            DataFrame::WrittenAck { .. } => PeerKind::WrittenAck,
            DataFrame::SnapshotChunk(_) => PeerKind::SnapshotChunk,
            DataFrame::Forward(_) => PeerKind::Forward,
            DataFrame::Abstaining => PeerKind::Abstaining,
        }
    }

    /// Appends the whole frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            DataFrame::Raft(b) | DataFrame::SnapshotChunk(b) | DataFrame::Forward(b) => {
                put_frame(out, self.kind(), &[b])
            }
            DataFrame::WrittenAck { term, index } => put_written_ack(out, *term, *index),
            DataFrame::Abstaining => put_header(out, PeerKind::Abstaining, 0),
        }
    }
}

/// Appends a WrittenAck frame.
pub fn put_written_ack(out: &mut Vec<u8>, term: u64, index: u64) {
    put_header(out, PeerKind::WrittenAck, WRITTEN_ACK_BYTES);
    out.extend_from_slice(&written_ack_payload(term, index));
}

/// The payload of a WrittenAck.
pub fn written_ack_payload(term: u64, index: u64) -> [u8; WRITTEN_ACK_BYTES] {
    let mut p = [0u8; WRITTEN_ACK_BYTES];
    p[..8].copy_from_slice(&term.to_le_bytes());
    p[8..].copy_from_slice(&index.to_le_bytes());
    p
}

fn decode_whole<T: Wire>(payload: Bytes, field: &'static str) -> Result<T, DecodeError> {
    let mut r = Reader::new(payload);
    let v = T::decode(&mut r, field)?;
    r.finish()?;
    Ok(v)
}

/// The bytes both MACs cover, after their label: the Hello payload exactly
/// as encoded, then the Challenge payload up to (not including) its MAC.
/// It binds both node ids, both nonces, both client addresses, the shard,
/// the shard count and the version, so no field can be changed in transit
/// and no tag can be reused on another connection.
pub fn auth_transcript(
    hello: &Hello,
    acceptor_id: u64,
    acceptor_client_addr: &str,
    acceptor_nonce: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + hello.client_addr.len() + acceptor_client_addr.len());
    hello.encode(&mut out);
    out.put_u64(acceptor_id);
    out.put_str(acceptor_client_addr);
    out.extend_from_slice(acceptor_nonce);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hello() -> Hello {
        Hello {
            version: 1,
            node_id: 2,
            shard: 3,
            shard_count: 4,
            client_addr: "h:1".into(),
            nonce: std::array::from_fn(|i| i as u8),
        }
    }

    fn challenge() -> Challenge {
        Challenge {
            node_id: 5,
            client_addr: "a:2".into(),
            nonce: [0xaa; 32],
            mac: std::array::from_fn(|i| 0x80 + i as u8),
        }
    }

    fn one_of_each() -> Vec<PeerFrame> {
        vec![
            PeerFrame::Auth(AuthFrame::Hello(hello())),
            PeerFrame::Auth(AuthFrame::Challenge(challenge())),
            PeerFrame::Auth(AuthFrame::Proof(Proof { mac: [7; 32] })),
            PeerFrame::Auth(AuthFrame::Refuse(Refuse::new(RefuseReason::AUTH_FAILED, "no"))),
            PeerFrame::Data(DataFrame::Raft(Bytes::from_static(b"raft"))),
            PeerFrame::Data(DataFrame::WrittenAck { term: 9, index: 1 << 40 }),
            PeerFrame::Data(DataFrame::SnapshotChunk(Bytes::from_static(b"snap"))),
            PeerFrame::Data(DataFrame::Forward(Bytes::new())),
        ]
    }

    /// Encodes `f`, runs both decoding phases, and checks nothing is left.
    fn round_trip(f: &PeerFrame) -> PeerFrame {
        let mut out = Vec::new();
        f.encode(&mut out);
        let mut buf = BytesMut::from(&out[..]);
        let total = check(&buf, PEER_FRAME_BYTES_MAX).expect("valid").expect("complete");
        assert_eq!(total, out.len());
        let (kind, payload) = split(&mut buf, total);
        assert!(buf.is_empty());
        PeerFrame::decode(kind, payload).expect("decodes")
    }

    #[test]
    fn every_kind_round_trips() {
        for f in one_of_each() {
            assert_eq!(round_trip(&f), f);
        }
    }

    #[test]
    fn kinds_are_distinct_and_parse_back() {
        for k in PeerKind::ALL {
            assert_eq!(PeerKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(PeerKind::from_u8(0), None);
        assert_eq!(PeerKind::from_u8(0x15), None);
    }

    /// Every prefix of every frame is "incomplete", never an error or a frame;
    /// every cut payload fails to decode (opaque kinds excepted: any length is theirs).
    #[test]
    fn every_truncation_is_incomplete_or_an_error() {
        for f in one_of_each() {
            let mut out = Vec::new();
            f.encode(&mut out);
            for cut in 0..out.len() {
                assert_eq!(check(&out[..cut], PEER_FRAME_BYTES_MAX), Ok(None), "{f:?} cut {cut}");
            }
            let kind = out[PEER_LENGTH_PREFIX_BYTES];
            let payload = Bytes::copy_from_slice(&out[PEER_HEADER_BYTES..]);
            if matches!(f, PeerFrame::Data(DataFrame::Raft(_) | DataFrame::SnapshotChunk(_) | DataFrame::Forward(_))) {
                continue;
            }
            for cut in 0..payload.len() {
                assert!(PeerFrame::decode(kind, payload.slice(..cut)).is_err(), "{f:?} cut {cut}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for f in one_of_each() {
            let PeerFrame::Auth(_) = f else { continue };
            let mut out = Vec::new();
            f.encode(&mut out);
            out.push(0);
            let payload = Bytes::copy_from_slice(&out[PEER_HEADER_BYTES..]);
            assert_eq!(PeerFrame::decode(out[4], payload), Err(DecodeError::TrailingBytes(1)));
        }
        let long_ack = Bytes::from_static(&[0; 17]);
        assert_eq!(PeerFrame::decode(PeerKind::WrittenAck as u8, long_ack), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn limits_are_checked_from_the_prefix_alone() {
        let at_limit = (PEER_HANDSHAKE_FRAME_BYTES_MAX - 4).to_le_bytes();
        assert_eq!(check(&at_limit, PEER_HANDSHAKE_FRAME_BYTES_MAX), Ok(None));
        assert_eq!(
            pending_len(&at_limit, PEER_HANDSHAKE_FRAME_BYTES_MAX),
            Ok(Some(PEER_HANDSHAKE_FRAME_BYTES_MAX as usize))
        );
        let over = (PEER_HANDSHAKE_FRAME_BYTES_MAX - 3).to_le_bytes();
        assert_eq!(
            check(&over, PEER_HANDSHAKE_FRAME_BYTES_MAX),
            Err(PeerFrameError::TooLarge {
                got: u64::from(PEER_HANDSHAKE_FRAME_BYTES_MAX) + 1,
                limit: PEER_HANDSHAKE_FRAME_BYTES_MAX
            })
        );
        let max = (PEER_FRAME_BYTES_MAX - 4).to_le_bytes();
        assert_eq!(check(&max, PEER_FRAME_BYTES_MAX), Ok(None));
        assert!(check(&(PEER_FRAME_BYTES_MAX - 3).to_le_bytes(), PEER_FRAME_BYTES_MAX).is_err());
        assert!(check(&u32::MAX.to_le_bytes(), PEER_FRAME_BYTES_MAX).is_err());
        assert_eq!(check(&[0, 0, 0, 0], PEER_FRAME_BYTES_MAX), Err(PeerFrameError::Empty));
    }

    #[test]
    fn strings_over_their_limits_are_refused() {
        let mut h = hello();
        h.client_addr = "x".repeat(PEER_ADDR_BYTES_MAX + 1);
        let mut out = Vec::new();
        AuthFrame::Hello(h).encode(&mut out);
        let err = PeerFrame::decode(out[4], Bytes::copy_from_slice(&out[5..])).expect_err("address too long");
        assert_eq!(err, DecodeError::TooLong { field: "client_addr", got: PEER_ADDR_BYTES_MAX + 1, max: 256 });
        let r = Refuse::new(RefuseReason::MALFORMED, &"é".repeat(PEER_REFUSE_MESSAGE_BYTES_MAX));
        assert!(r.message.len() <= PEER_REFUSE_MESSAGE_BYTES_MAX && r.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert_eq!(PeerFrame::decode(0x7f, Bytes::new()), Err(DecodeError::Invalid("peer frame kind")));
    }

    #[test]
    fn golden_hello() {
        let mut out = Vec::new();
        AuthFrame::Hello(hello()).encode(&mut out);
        #[rustfmt::skip]
        let mut expected = vec![
            52, 0, 0, 0,              // length: kind + 51 payload bytes
            0x01,                     // Hello
            1, 0,                     // version
            2, 0, 0, 0, 0, 0, 0, 0,   // node_id
            3, 0,                     // shard
            4, 0,                     // shard_count
            3, 0, b'h', b':', b'1',   // client_addr
        ];
        expected.extend(0..32u8); // nonce
        assert_eq!(out, expected);
    }

    #[test]
    fn golden_challenge() {
        let mut out = Vec::new();
        AuthFrame::Challenge(challenge()).encode(&mut out);
        #[rustfmt::skip]
        let mut expected = vec![
            78, 0, 0, 0, 0x02,
            5, 0, 0, 0, 0, 0, 0, 0,   // node_id
            3, 0, b'a', b':', b'2',   // client_addr
        ];
        expected.extend([0xaa; 32]); // nonce
        expected.extend(0x80..0xa0u8); // mac
        assert_eq!(out, expected);
    }

    #[test]
    fn golden_proof_and_refuse() {
        let mut out = Vec::new();
        AuthFrame::Proof(Proof { mac: [7; 32] }).encode(&mut out);
        let mut expected = vec![33, 0, 0, 0, 0x03];
        expected.extend([7; 32]);
        assert_eq!(out, expected);
        out.clear();
        AuthFrame::Refuse(Refuse::new(RefuseReason::AUTH_FAILED, "no")).encode(&mut out);
        assert_eq!(out, [7, 0, 0, 0, 0x04, 4, 0, 2, 0, b'n', b'o']);
    }

    #[test]
    fn golden_data_frames() {
        let mut out = Vec::new();
        put_frame(&mut out, PeerKind::Raft, &[b"ab", b"", b"c"]);
        assert_eq!(out, [4, 0, 0, 0, 0x10, b'a', b'b', b'c']);
        assert_eq!(header(PeerKind::Forward, 0x0102), [3, 1, 0, 0, 0x13]);
        out.clear();
        put_written_ack(&mut out, 2, 0x0102);
        assert_eq!(out, [17, 0, 0, 0, 0x11, 2, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]);
        out.clear();
        DataFrame::SnapshotChunk(Bytes::from_static(b"s")).encode(&mut out);
        assert_eq!(out, [2, 0, 0, 0, 0x12, b's']);
        out.clear();
        DataFrame::Forward(Bytes::new()).encode(&mut out);
        assert_eq!(out, [1, 0, 0, 0, 0x13]);
    }

    #[test]
    fn golden_transcript() {
        let t = auth_transcript(&hello(), 5, "a:2", &[0xaa; 32]);
        let mut expected = Vec::new();
        hello().encode(&mut expected);
        expected.extend([5, 0, 0, 0, 0, 0, 0, 0, 3, 0, b'a', b':', b'2']);
        expected.extend([0xaa; 32]);
        assert_eq!(t, expected);
        assert_eq!(t.len(), 51 + 13 + 32);
    }

    #[test]
    fn payloads_are_zero_copy_slices() {
        let mut out = Vec::new();
        put_frame(&mut out, PeerKind::Forward, &[b"body"]);
        let mut buf = BytesMut::from(&out[..]);
        let base = buf.as_ptr();
        let (kind, payload) = split(&mut buf, out.len());
        let PeerFrame::Data(DataFrame::Forward(body)) = PeerFrame::decode(kind, payload).expect("decodes") else {
            panic!("not a Forward");
        };
        assert_eq!(body.as_ptr(), base.wrapping_add(PEER_HEADER_BYTES));
    }

    fn arb_frame() -> impl Strategy<Value = PeerFrame> {
        let bytes = || crate::testing::bytes(64);
        prop_oneof![
            any::<Hello>().prop_map(|v| PeerFrame::Auth(AuthFrame::Hello(v))),
            any::<Challenge>().prop_map(|v| PeerFrame::Auth(AuthFrame::Challenge(v))),
            any::<Proof>().prop_map(|v| PeerFrame::Auth(AuthFrame::Proof(v))),
            any::<Refuse>().prop_map(|v| PeerFrame::Auth(AuthFrame::Refuse(v))),
            bytes().prop_map(|b| PeerFrame::Data(DataFrame::Raft(b))),
            (any::<u64>(), any::<u64>())
                .prop_map(|(term, index)| PeerFrame::Data(DataFrame::WrittenAck { term, index })),
            bytes().prop_map(|b| PeerFrame::Data(DataFrame::SnapshotChunk(b))),
            bytes().prop_map(|b| PeerFrame::Data(DataFrame::Forward(b))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_frames_round_trip(f in arb_frame()) {
            prop_assert_eq!(round_trip(&f), f);
        }

        /// A stream of several frames splits back into the same frames.
        #[test]
        fn streams_split_into_their_frames(frames in proptest::collection::vec(arb_frame(), 0..8)) {
            let mut buf = BytesMut::new();
            for f in &frames {
                let mut out = Vec::new();
                f.encode(&mut out);
                buf.extend_from_slice(&out);
            }
            let mut back = Vec::new();
            while let Some(total) = check(&buf, PEER_FRAME_BYTES_MAX).expect("valid") {
                let (kind, payload) = split(&mut buf, total);
                back.push(PeerFrame::decode(kind, payload).expect("decodes"));
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(back, frames);
        }

        /// Arbitrary bytes through both phases never panic, under either limit.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), limit_small in any::<bool>()) {
            let limit = if limit_small { PEER_HANDSHAKE_FRAME_BYTES_MAX } else { PEER_FRAME_BYTES_MAX };
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(total)) = check(&buf, limit) {
                let (kind, payload) = split(&mut buf, total);
                let _ = PeerFrame::decode(kind, payload);
            }
        }

        /// Garbage behind every kind byte exercises every payload decoder.
        #[test]
        fn garbage_payloads_for_every_kind(data in proptest::collection::vec(any::<u8>(), 0..160)) {
            for kind in 0..=u8::MAX {
                let _ = PeerFrame::decode(kind, Bytes::from(data.clone()));
            }
        }
    }
}
