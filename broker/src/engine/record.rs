//! Log records: every state change of the engine, in the form it is written
//! to the write-ahead log and replayed from it.
//!
//! The engine never changes state except by applying a record, and applying
//! is the same code live and at recovery, so the state rebuilt from the log is
//! the state that was acknowledged. Receive-side state is logged too
//! (`Received`, `VisibilityChanged`): a message's dequeueCount drives
//! dead-lettering and must not silently reset across a restart.
//!
//! Payload layouts (little-endian; `[T]` is a u16 count then the items;
//! `str` is a u16 length then UTF-8; `data` is `body_len u32, data_len u32`
//! then `data_len` bytes whose first `body_len` are the message body and the
//! rest its suffix: the producer group (str) of a half message, or the
//! `MessageOrigin` (protocol encoding) of a dead-lettered message):
//! ```text
//!  1 QueueCreated      uid u32, time_ms u64, create_seq u64, attrs (protocol QueueAttributes), name str
//!  2 QueueUpdated      uid u32, time_ms u64, attrs
//!  3 QueueDeleted      uid u32, time_ms u64
//!  4 Enqueued          uid u32, first_seq u64, first_msg_id u64, enqueue_ms u64,
//!                      visible_at_ms u64, count u16, count × (len u32, body), [keys]
//!  5 Received          uid u32, time_ms u64, visible_at_ms u64, [seq u64]
//!  6 Deleted           uid u32, [seq u64]
//!  7 VisibilityChanged uid u32, seq u64, visible_at_ms u64
//!  8 Relocated         uid u32, seq u64, msg_id u64, enqueue_ms u64, visible_at_ms u64,
//!                      dequeue_count u32, first_dequeue_rel u32, state u8, flags u8, data
//!  9 Rewound           uid u32, time_ms u64, start_ms u64
//! 10 Purged            uid u32, time_ms u64
//! 11 HalfEnqueued      uid u32, seq u64, msg_id u64, enqueue_ms u64, check_at_ms u64, data (body + group)
//! 12 TxChecked         uid u32, seq u64, count u32, next_ms u64
//! 13 TxEnded           uid u32, seq u64, commit u8, time_ms u64
//! 14 TransferOut       id u64, kind u8, redrive u64, src_uid u32, src_seq u64, dequeue_count u32,
//!                      time_ms u64, dst_queue str, data (body + origin)
//! 15 TransferIn        src_shard u16, id u64, uid u32, seq u64, msg_id u64, enqueue_ms u64,
//!                      dequeue_count u32, data (body + origin)
//! 16 TransferDone      [id u64]
//! 17 TransferReturned  id u64, uid u32, seq u64, msg_id u64, enqueue_ms u64
//! 18 RedriveStarted    id u64, uid u32, rate u32, end_seq u64, total u64, time_ms u64, to str
//! 19 RedriveEnded      id u64, state u8, time_ms u64
//! 20 TopicCreated      uid u32, time_ms u64, create_seq u64, max_msg_size u32, retention_s u32,
//!                      filter_type u8, name str
//! 21 TopicUpdated      uid u32, time_ms u64, max_msg_size u32
//! 22 TopicDeleted      uid u32, time_ms u64
//! 23 Subscribed        uid u32, sid u32, time_ms u64, name str, protocol u8, endpoint str,
//!                      strategy u8, format u8, [filter tag str], [binding key str],
//!                      dead_letter_queue str, secret 16 bytes
//! 24 SubscriptionUpdated uid u32, sid u32, time_ms u64, strategy u8, format u8,
//!                      [filter tag str], [binding key str]
//! 25 Unsubscribed      uid u32, sid u32, time_ms u64
//! 26 Published         uid u32, first_msg_id u64, first_transfer u64, time_ms u64, [tag str],
//!                      routing_key str, [target sid u32], count u16, count × (len u32, body), [keys]
//! 27 PushRetry         [id u64, attempt u32, next_ms u64]
//! 28 PushGaveUp        id u64, time_ms u64
//! 40 KeyPut            time_ms u64, name str, secret_id str, [secret_key str], policy str,
//!                      created_ms u64, modified_ms u64 (the key's whole state; shard 0 only)
//! 41 KeyDeleted        time_ms u64, name str
//! ```
//!
//! `[keys]` is the messages' idempotency keys (`engine/dedup.rs`): absent
//! (the payload ends after the last body) when none of them has one, else
//! `count u16` equal to the body count and `count × (len u8, key)`, a
//! length of 0 meaning that message has none. Records written before keys
//! existed read as keyless; bodies stay where they were.
//!
//! `Relocated` is written by compaction: a live message from an old segment
//! copied to the head with its whole current state, so the old segment can
//! be deleted. Applying it replaces whatever replay built for that message.
//! `TransferOut` is the single commit point of a move to another queue
//! (dead-lettering, redrive): it removes the message from its queue and puts
//! it in the shard's outbox; the destination logs `TransferIn` (deduplicated
//! by `(src_shard, id)`) and the source logs `TransferDone` once the
//! destination confirmed, or `TransferReturned` if the destination refused
//! for good, which puts the message back.

use bytes::Bytes;
use cmq_protocol::wire::{Reader, Wire, Writer};
use cmq_protocol::QueueAttributes;

/// Record type bytes, as stored in the log's record header.
pub mod rtype {
    pub const QUEUE_CREATED: u8 = 1;
    pub const QUEUE_UPDATED: u8 = 2;
    pub const QUEUE_DELETED: u8 = 3;
    pub const ENQUEUED: u8 = 4;
    pub const RECEIVED: u8 = 5;
    pub const DELETED: u8 = 6;
    pub const VISIBILITY_CHANGED: u8 = 7;
    pub const RELOCATED: u8 = 8;
    pub const REWOUND: u8 = 9;
    pub const PURGED: u8 = 10;
    pub const HALF_ENQUEUED: u8 = 11;
    pub const TX_CHECKED: u8 = 12;
    pub const TX_ENDED: u8 = 13;
    pub const TRANSFER_OUT: u8 = 14;
    pub const TRANSFER_IN: u8 = 15;
    pub const TRANSFER_DONE: u8 = 16;
    pub const TRANSFER_RETURNED: u8 = 17;
    pub const REDRIVE_STARTED: u8 = 18;
    pub const REDRIVE_ENDED: u8 = 19;
    pub const TOPIC_CREATED: u8 = 20;
    pub const TOPIC_UPDATED: u8 = 21;
    pub const TOPIC_DELETED: u8 = 22;
    pub const SUBSCRIBED: u8 = 23;
    pub const SUBSCRIPTION_UPDATED: u8 = 24;
    pub const UNSUBSCRIBED: u8 = 25;
    pub const PUBLISHED: u8 = 26;
    pub const PUSH_RETRY: u8 = 27;
    pub const PUSH_GAVE_UP: u8 = 28;
    // Authentication keys (shard 0): numbered apart from the rest so
    // records other work adds meanwhile do not collide.
    pub const KEY_PUT: u8 = 40;
    pub const KEY_DELETED: u8 = 41;
}

/// Where a body sits inside a payload (replay path): offset from the start
/// of the record payload, and the body's length. A suffix, if any, follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySpan {
    pub offset: u32,
    pub len: u32,
}

/// A body and what follows it in the log. Live records carry the bytes;
/// decoded records carry where they are.
pub trait BodyData {}
impl BodyData for Bytes {}
impl BodyData for BodySpan {}

/// A message's full state as carried by a `Relocated` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocatedEntry {
    pub msg_id: u64,
    pub enqueue_ms: u64,
    pub visible_at_ms: u64,
    pub dequeue_count: u32,
    pub first_dequeue_rel: u32,
    pub state: u8,
    pub flags: u8,
}

/// Why a message moves to another queue.
pub mod transfer_kind {
    pub const DEAD_LETTER: u8 = 1;
    pub const REDRIVE: u8 = 2;
    /// A published message on its way to a queue subscription.
    pub const PUBLISH: u8 = 3;
    /// A published message on its way to an HTTP subscription (never sent between shards).
    pub const PUSH: u8 = 4;
}

/// A subscription's definition as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionDef {
    pub name: String,
    pub protocol: u8,
    pub endpoint: String,
    pub strategy: u8,
    pub format: u8,
    pub filter_tags: Vec<String>,
    pub binding_keys: Vec<String>,
    pub dead_letter_queue: String,
    pub secret: [u8; 16],
}

/// A record. `B` is the body representation: `Bytes` when written live,
/// `BodySpan` when decoded from the log (bodies are never copied on replay).
/// For records with a suffix, live records carry it in `suffix`; decoded ones
/// find it right after the body span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<B> {
    QueueCreated {
        uid: u32,
        time_ms: u64,
        create_seq: u64,
        attrs: QueueAttributes,
        name: String,
    },
    QueueUpdated {
        uid: u32,
        time_ms: u64,
        attrs: QueueAttributes,
    },
    QueueDeleted {
        uid: u32,
        time_ms: u64,
    },
    Enqueued {
        uid: u32,
        first_seq: u64,
        first_msg_id: u64,
        enqueue_ms: u64,
        visible_at_ms: u64,
        bodies: Vec<B>,
        /// Empty, or one idempotency key per body (empty: none).
        keys: Vec<Bytes>,
    },
    Received {
        uid: u32,
        time_ms: u64,
        visible_at_ms: u64,
        seqs: Vec<u64>,
    },
    Deleted {
        uid: u32,
        seqs: Vec<u64>,
    },
    VisibilityChanged {
        uid: u32,
        seq: u64,
        visible_at_ms: u64,
    },
    Relocated {
        uid: u32,
        seq: u64,
        entry: RelocatedEntry,
        body: B,
        suffix: Bytes,
    },
    Rewound {
        uid: u32,
        time_ms: u64,
        start_ms: u64,
    },
    Purged {
        uid: u32,
        time_ms: u64,
    },
    HalfEnqueued {
        uid: u32,
        seq: u64,
        msg_id: u64,
        enqueue_ms: u64,
        check_at_ms: u64,
        body: B,
        suffix: Bytes,
    },
    TxChecked {
        uid: u32,
        seq: u64,
        count: u32,
        next_ms: u64,
    },
    TxEnded {
        uid: u32,
        seq: u64,
        commit: bool,
        time_ms: u64,
    },
    TransferOut {
        id: u64,
        kind: u8,
        redrive: u64,
        src_uid: u32,
        src_seq: u64,
        dequeue_count: u32,
        time_ms: u64,
        dst_queue: String,
        body: B,
        suffix: Bytes,
    },
    TransferIn {
        src_shard: u16,
        id: u64,
        uid: u32,
        seq: u64,
        msg_id: u64,
        enqueue_ms: u64,
        dequeue_count: u32,
        body: B,
        suffix: Bytes,
    },
    TransferDone {
        ids: Vec<u64>,
    },
    TransferReturned {
        id: u64,
        uid: u32,
        seq: u64,
        msg_id: u64,
        enqueue_ms: u64,
    },
    RedriveStarted {
        id: u64,
        uid: u32,
        rate: u32,
        end_seq: u64,
        total: u64,
        time_ms: u64,
        to: String,
    },
    RedriveEnded {
        id: u64,
        state: u8,
        time_ms: u64,
    },
    TopicCreated {
        uid: u32,
        time_ms: u64,
        create_seq: u64,
        max_msg_size: u32,
        retention_s: u32,
        filter_type: u8,
        name: String,
    },
    TopicUpdated {
        uid: u32,
        time_ms: u64,
        max_msg_size: u32,
    },
    TopicDeleted {
        uid: u32,
        time_ms: u64,
    },
    Subscribed {
        uid: u32,
        sid: u32,
        time_ms: u64,
        def: SubscriptionDef,
    },
    SubscriptionUpdated {
        uid: u32,
        sid: u32,
        time_ms: u64,
        strategy: u8,
        format: u8,
        filter_tags: Vec<String>,
        binding_keys: Vec<String>,
    },
    Unsubscribed {
        uid: u32,
        sid: u32,
        time_ms: u64,
    },
    Published {
        uid: u32,
        first_msg_id: u64,
        first_transfer: u64,
        time_ms: u64,
        tags: Vec<String>,
        routing_key: String,
        targets: Vec<u32>,
        bodies: Vec<B>,
        /// Empty, or one idempotency key per body (empty: none).
        keys: Vec<Bytes>,
    },
    PushRetry {
        entries: Vec<(u64, u32, u64)>,
    },
    PushGaveUp {
        id: u64,
        time_ms: u64,
    },
    KeyPut {
        time_ms: u64,
        key: crate::engine::keys::KeyDef,
    },
    KeyDeleted {
        time_ms: u64,
        name: String,
    },
}

/// Bytes before the first body's length prefix in an `Enqueued` payload.
const ENQUEUED_HEADER_BYTES: u32 = 4 + 8 + 8 + 8 + 8 + 2;

/// Most items a counted list of a record can hold: its count is a u16.
/// Encoding more is an error (never a truncated count: a record whose
/// count disagrees with its items cannot be read back).
pub const RECORD_ITEMS_MAX: usize = u16::MAX as usize;

/// Most ids (`TransferDone`) or entries (`PushRetry`) one record carries;
/// producers split longer lists into several records. 4096 ids are 32 KiB
/// (`PushRetry`: 80 KiB), far below the largest record.
pub const RECORD_IDS_MAX: usize = 4096;

const _: () = assert!(RECORD_IDS_MAX <= RECORD_ITEMS_MAX);
const _: () = assert!(2 + RECORD_IDS_MAX * 20 <= crate::storage::RECORD_PAYLOAD_MAX_BYTES as usize);
// A full batch's keys fit easily in the room a record has beside its bodies.
const _: () = assert!(
    2 + cmq_protocol::limits::BATCH_MSGS_MAX * (1 + cmq_protocol::limits::IDEMPOTENCY_KEY_BYTES_MAX)
        <= crate::storage::RECORD_OVERHEAD_MAX_BYTES as usize / 64
);

/// Why a logged payload could not be decoded. At recovery this is corruption
/// that the log's checksum did not catch, or a record from a newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record type {rtype}: {reason}")]
pub struct RecordError {
    pub rtype: u8,
    pub reason: String,
}

impl<B> Record<B> {
    pub fn rtype(&self) -> u8 {
        use rtype::*;
        match self {
            Record::QueueCreated { .. } => QUEUE_CREATED,
            Record::QueueUpdated { .. } => QUEUE_UPDATED,
            Record::QueueDeleted { .. } => QUEUE_DELETED,
            Record::Enqueued { .. } => ENQUEUED,
            Record::Received { .. } => RECEIVED,
            Record::Deleted { .. } => DELETED,
            Record::VisibilityChanged { .. } => VISIBILITY_CHANGED,
            Record::Relocated { .. } => RELOCATED,
            Record::Rewound { .. } => REWOUND,
            Record::Purged { .. } => PURGED,
            Record::HalfEnqueued { .. } => HALF_ENQUEUED,
            Record::TxChecked { .. } => TX_CHECKED,
            Record::TxEnded { .. } => TX_ENDED,
            Record::TransferOut { .. } => TRANSFER_OUT,
            Record::TransferIn { .. } => TRANSFER_IN,
            Record::TransferDone { .. } => TRANSFER_DONE,
            Record::TransferReturned { .. } => TRANSFER_RETURNED,
            Record::RedriveStarted { .. } => REDRIVE_STARTED,
            Record::RedriveEnded { .. } => REDRIVE_ENDED,
            Record::TopicCreated { .. } => TOPIC_CREATED,
            Record::TopicUpdated { .. } => TOPIC_UPDATED,
            Record::TopicDeleted { .. } => TOPIC_DELETED,
            Record::Subscribed { .. } => SUBSCRIBED,
            Record::SubscriptionUpdated { .. } => SUBSCRIPTION_UPDATED,
            Record::Unsubscribed { .. } => UNSUBSCRIBED,
            Record::Published { .. } => PUBLISHED,
            Record::PushRetry { .. } => PUSH_RETRY,
            Record::PushGaveUp { .. } => PUSH_GAVE_UP,
            Record::KeyPut { .. } => KEY_PUT,
            Record::KeyDeleted { .. } => KEY_DELETED,
        }
    }
}

/// Body spans of an `Enqueued` payload with these body lengths.
pub fn body_spans(lens: impl Iterator<Item = u32>) -> impl Iterator<Item = BodySpan> {
    let mut offset = ENQUEUED_HEADER_BYTES;
    lens.map(move |len| {
        let span = BodySpan { offset: offset + 4, len };
        offset += 4 + len;
        span
    })
}

impl Record<Bytes> {
    /// Encodes the record's payload as gathered parts: fixed fields go into
    /// `scratch`, bodies are referenced, not copied. Calls `emit` with the
    /// parts in order (the log copies them once, into its write buffer), and
    /// returns what `emit` returns and the offset of the (first) body in the
    /// payload. Every count and length is checked against its field's
    /// width: a record that cannot be encoded faithfully is an error, and
    /// `emit` is not called.
    pub fn encode<R>(&self, scratch: &mut Vec<u8>, emit: impl FnOnce(&[&[u8]]) -> R) -> Result<(R, u32), RecordError> {
        let rtype = self.rtype();
        let fail = |what: &str| RecordError { rtype, reason: format!("{what} does not fit its field") };
        scratch.clear();
        let w = scratch;
        let (body, suffix): (&Bytes, &Bytes) = match self {
            Record::Enqueued { uid, first_seq, first_msg_id, enqueue_ms, visible_at_ms, bodies, keys } => {
                w.put_u32(*uid);
                w.put_u64(*first_seq);
                w.put_u64(*first_msg_id);
                w.put_u64(*enqueue_ms);
                w.put_u64(*visible_at_ms);
                put_count(w, bodies.len()).map_err(|_| fail("body count"))?;
                let header_end = w.len();
                for body in bodies {
                    put_len32(w, body.len()).map_err(|_| fail("body length"))?;
                }
                let lens_end = w.len();
                put_keys(w, keys, bodies.len()).map_err(|_| fail("idempotency keys"))?;
                let (header, rest) = w.split_at(header_end);
                let (lens, key_bytes) = rest.split_at(lens_end - header_end);
                let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + 2 * bodies.len());
                parts.push(header);
                for (len, body) in lens.chunks_exact(4).zip(bodies) {
                    parts.push(len);
                    parts.push(body);
                }
                parts.push(key_bytes);
                return Ok((emit(&parts), ENQUEUED_HEADER_BYTES + 4));
            }
            Record::Published {
                uid,
                first_msg_id,
                first_transfer,
                time_ms,
                tags,
                routing_key,
                targets,
                bodies,
                keys,
            } => {
                w.put_u32(*uid);
                w.put_u64(*first_msg_id);
                w.put_u64(*first_transfer);
                w.put_u64(*time_ms);
                put_strs(w, tags).map_err(|_| fail("tags"))?;
                put_str(w, routing_key).map_err(|_| fail("routing key"))?;
                put_count(w, targets.len()).map_err(|_| fail("target count"))?;
                for t in targets {
                    w.put_u32(*t);
                }
                put_count(w, bodies.len()).map_err(|_| fail("body count"))?;
                let header_end = w.len();
                for body in bodies {
                    put_len32(w, body.len()).map_err(|_| fail("body length"))?;
                }
                let lens_end = w.len();
                put_keys(w, keys, bodies.len()).map_err(|_| fail("idempotency keys"))?;
                let first_body = u32::try_from(header_end + 4).map_err(|_| fail("header"))?;
                let (header, rest) = w.split_at(header_end);
                let (lens, key_bytes) = rest.split_at(lens_end - header_end);
                let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + 2 * bodies.len());
                parts.push(header);
                for (len, body) in lens.chunks_exact(4).zip(bodies) {
                    parts.push(len);
                    parts.push(body);
                }
                parts.push(key_bytes);
                return Ok((emit(&parts), first_body));
            }
            Record::Relocated { uid, seq, entry, body, suffix } => {
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_u64(entry.msg_id);
                w.put_u64(entry.enqueue_ms);
                w.put_u64(entry.visible_at_ms);
                w.put_u32(entry.dequeue_count);
                w.put_u32(entry.first_dequeue_rel);
                w.put_u8(entry.state);
                w.put_u8(entry.flags);
                (body, suffix)
            }
            Record::HalfEnqueued { uid, seq, msg_id, enqueue_ms, check_at_ms, body, suffix } => {
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_u64(*msg_id);
                w.put_u64(*enqueue_ms);
                w.put_u64(*check_at_ms);
                (body, suffix)
            }
            Record::TransferOut {
                id,
                kind,
                redrive,
                src_uid,
                src_seq,
                dequeue_count,
                time_ms,
                dst_queue,
                body,
                suffix,
            } => {
                w.put_u64(*id);
                w.put_u8(*kind);
                w.put_u64(*redrive);
                w.put_u32(*src_uid);
                w.put_u64(*src_seq);
                w.put_u32(*dequeue_count);
                w.put_u64(*time_ms);
                put_str(w, dst_queue).map_err(|_| fail("destination queue"))?;
                (body, suffix)
            }
            Record::TransferIn { src_shard, id, uid, seq, msg_id, enqueue_ms, dequeue_count, body, suffix } => {
                w.put_u16(*src_shard);
                w.put_u64(*id);
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_u64(*msg_id);
                w.put_u64(*enqueue_ms);
                w.put_u32(*dequeue_count);
                (body, suffix)
            }
            _ => {
                self.encode_fixed(w).map_err(fail)?;
                return Ok((emit(&[w.as_slice()]), 0));
            }
        };
        put_len32(w, body.len()).map_err(|_| fail("body length"))?;
        put_len32(w, body.len() + suffix.len()).map_err(|_| fail("data length"))?;
        let offset = u32::try_from(w.len()).map_err(|_| fail("header"))?;
        Ok((emit(&[w.as_slice(), body, suffix]), offset))
    }

    /// Records without bodies; the error names the field that did not fit.
    fn encode_fixed(&self, w: &mut Vec<u8>) -> Result<(), &'static str> {
        match self {
            Record::QueueCreated { uid, time_ms, create_seq, attrs, name } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                w.put_u64(*create_seq);
                attrs.encode(w);
                put_str(w, name).map_err(|_| "name")?;
            }
            Record::QueueUpdated { uid, time_ms, attrs } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                attrs.encode(w);
            }
            Record::QueueDeleted { uid, time_ms } | Record::Purged { uid, time_ms } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
            }
            Record::Received { uid, time_ms, visible_at_ms, seqs } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                w.put_u64(*visible_at_ms);
                put_u64s(w, seqs).map_err(|_| "sequence numbers")?;
            }
            Record::Deleted { uid, seqs } => {
                w.put_u32(*uid);
                put_u64s(w, seqs).map_err(|_| "sequence numbers")?;
            }
            Record::VisibilityChanged { uid, seq, visible_at_ms } => {
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_u64(*visible_at_ms);
            }
            Record::Rewound { uid, time_ms, start_ms } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                w.put_u64(*start_ms);
            }
            Record::TxChecked { uid, seq, count, next_ms } => {
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_u32(*count);
                w.put_u64(*next_ms);
            }
            Record::TxEnded { uid, seq, commit, time_ms } => {
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_bool(*commit);
                w.put_u64(*time_ms);
            }
            Record::TransferDone { ids } => put_u64s(w, ids).map_err(|_| "ids")?,
            Record::TransferReturned { id, uid, seq, msg_id, enqueue_ms } => {
                w.put_u64(*id);
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_u64(*msg_id);
                w.put_u64(*enqueue_ms);
            }
            Record::RedriveStarted { id, uid, rate, end_seq, total, time_ms, to } => {
                w.put_u64(*id);
                w.put_u32(*uid);
                w.put_u32(*rate);
                w.put_u64(*end_seq);
                w.put_u64(*total);
                w.put_u64(*time_ms);
                put_str(w, to).map_err(|_| "to")?;
            }
            Record::RedriveEnded { id, state, time_ms } => {
                w.put_u64(*id);
                w.put_u8(*state);
                w.put_u64(*time_ms);
            }
            Record::TopicCreated { uid, time_ms, create_seq, max_msg_size, retention_s, filter_type, name } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                w.put_u64(*create_seq);
                w.put_u32(*max_msg_size);
                w.put_u32(*retention_s);
                w.put_u8(*filter_type);
                put_str(w, name).map_err(|_| "name")?;
            }
            Record::TopicUpdated { uid, time_ms, max_msg_size } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                w.put_u32(*max_msg_size);
            }
            Record::TopicDeleted { uid, time_ms } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
            }
            Record::Subscribed { uid, sid, time_ms, def } => {
                w.put_u32(*uid);
                w.put_u32(*sid);
                w.put_u64(*time_ms);
                put_str(w, &def.name).map_err(|_| "name")?;
                w.put_u8(def.protocol);
                put_str(w, &def.endpoint).map_err(|_| "endpoint")?;
                w.put_u8(def.strategy);
                w.put_u8(def.format);
                put_strs(w, &def.filter_tags).map_err(|_| "filter tags")?;
                put_strs(w, &def.binding_keys).map_err(|_| "binding keys")?;
                put_str(w, &def.dead_letter_queue).map_err(|_| "dead-letter queue")?;
                w.extend_from_slice(&def.secret);
            }
            Record::SubscriptionUpdated { uid, sid, time_ms, strategy, format, filter_tags, binding_keys } => {
                w.put_u32(*uid);
                w.put_u32(*sid);
                w.put_u64(*time_ms);
                w.put_u8(*strategy);
                w.put_u8(*format);
                put_strs(w, filter_tags).map_err(|_| "filter tags")?;
                put_strs(w, binding_keys).map_err(|_| "binding keys")?;
            }
            Record::Unsubscribed { uid, sid, time_ms } => {
                w.put_u32(*uid);
                w.put_u32(*sid);
                w.put_u64(*time_ms);
            }
            Record::PushRetry { entries } => {
                put_count(w, entries.len()).map_err(|_| "entries")?;
                for (id, attempt, next) in entries {
                    w.put_u64(*id);
                    w.put_u32(*attempt);
                    w.put_u64(*next);
                }
            }
            Record::PushGaveUp { id, time_ms } => {
                w.put_u64(*id);
                w.put_u64(*time_ms);
            }
            Record::KeyPut { time_ms, key } => {
                w.put_u64(*time_ms);
                put_str(w, &key.name).map_err(|_| "name")?;
                put_str(w, &key.secret_id).map_err(|_| "secret id")?;
                put_strs(w, &key.secrets).map_err(|_| "secrets")?;
                put_str(w, &key.policy).map_err(|_| "policy")?;
                w.put_u64(key.created_ms);
                w.put_u64(key.modified_ms);
            }
            Record::KeyDeleted { time_ms, name } => {
                w.put_u64(*time_ms);
                put_str(w, name).map_err(|_| "name")?;
            }
            Record::Enqueued { .. }
            | Record::Published { .. }
            | Record::Relocated { .. }
            | Record::HalfEnqueued { .. }
            | Record::TransferOut { .. }
            | Record::TransferIn { .. } => unreachable!("records with bodies are encoded as gathered parts"),
        }
        Ok(())
    }
}

/// A field that does not fit its width (the caller names it).
struct TooLong;

/// A u16 item count.
fn put_count(w: &mut Vec<u8>, n: usize) -> Result<(), TooLong> {
    w.put_u16(u16::try_from(n).map_err(|_| TooLong)?);
    Ok(())
}

/// A u32 byte length.
fn put_len32(w: &mut Vec<u8>, n: usize) -> Result<(), TooLong> {
    w.put_u32(u32::try_from(n).map_err(|_| TooLong)?);
    Ok(())
}

/// A u16-length string, whole (the protocol's `put_str` would cut it).
fn put_str(w: &mut Vec<u8>, v: &str) -> Result<(), TooLong> {
    put_count(w, v.len())?;
    w.extend_from_slice(v.as_bytes());
    Ok(())
}

fn put_strs(w: &mut Vec<u8>, v: &[String]) -> Result<(), TooLong> {
    put_count(w, v.len())?;
    v.iter().try_for_each(|s| put_str(w, s))
}

/// A batch's idempotency keys: nothing when no message has one, else a
/// count equal to the body count and each key with a u8 length.
fn put_keys(w: &mut Vec<u8>, keys: &[Bytes], bodies: usize) -> Result<(), TooLong> {
    if keys.iter().all(|k| k.is_empty()) {
        return Ok(());
    }
    if keys.len() != bodies {
        return Err(TooLong);
    }
    put_count(w, keys.len())?;
    for k in keys {
        w.put_u8(u8::try_from(k.len()).map_err(|_| TooLong)?);
        w.extend_from_slice(k);
    }
    Ok(())
}

fn put_u64s(w: &mut Vec<u8>, v: &[u64]) -> Result<(), TooLong> {
    put_count(w, v.len())?;
    for s in v {
        w.put_u64(*s);
    }
    Ok(())
}

/// A cursor over a payload slice; every read is bounds-checked.
struct Cursor<'a> {
    p: &'a [u8],
    pos: usize,
}

type DecodeResult<T> = Result<T, &'static str>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> DecodeResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.p.len()).ok_or(what)?;
        let s = &self.p[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> DecodeResult<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> DecodeResult<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().map_err(|_| what)?))
    }
    fn u32(&mut self, what: &'static str) -> DecodeResult<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().map_err(|_| what)?))
    }
    fn u64(&mut self, what: &'static str) -> DecodeResult<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().map_err(|_| what)?))
    }
    fn bool(&mut self, what: &'static str) -> DecodeResult<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(what),
        }
    }
    fn str(&mut self, what: &'static str) -> DecodeResult<String> {
        let n = usize::from(self.u16(what)?);
        std::str::from_utf8(self.take(n, what)?).map(str::to_owned).map_err(|_| what)
    }
    fn strs(&mut self, what: &'static str) -> DecodeResult<Vec<String>> {
        let n = usize::from(self.u16(what)?);
        if n * 2 > self.p.len() - self.pos {
            return Err(what);
        }
        (0..n).map(|_| self.str(what)).collect()
    }
    fn u32s(&mut self, what: &'static str) -> DecodeResult<Vec<u32>> {
        let n = usize::from(self.u16(what)?);
        if n * 4 > self.p.len() - self.pos {
            return Err(what);
        }
        (0..n).map(|_| self.u32(what)).collect()
    }
    fn u64s(&mut self, what: &'static str) -> DecodeResult<Vec<u64>> {
        let n = usize::from(self.u16(what)?).min(RECORD_ITEMS_MAX);
        if n * 8 > self.p.len() - self.pos {
            return Err(what);
        }
        (0..n).map(|_| self.u64(what)).collect()
    }
    /// `body_len u32, data_len u32, data`: the body's span; the suffix follows it.
    fn data(&mut self, what: &'static str) -> DecodeResult<BodySpan> {
        let body_len = self.u32(what)?;
        let data_len = self.u32(what)?;
        if body_len > data_len {
            return Err(what);
        }
        let offset = u32::try_from(self.pos).map_err(|_| what)?;
        self.take(data_len as usize, what)?;
        Ok(BodySpan { offset, len: body_len })
    }
    /// The optional keys after a batch's bodies (see the module comment).
    fn keys(&mut self, bodies: usize) -> DecodeResult<Vec<Bytes>> {
        if self.pos == self.p.len() {
            return Ok(Vec::new());
        }
        if usize::from(self.u16("key count")?) != bodies || bodies == 0 {
            return Err("key count");
        }
        (0..bodies)
            .map(|_| {
                let n = usize::from(self.u8("key length")?);
                self.take(n, "key").map(Bytes::copy_from_slice)
            })
            .collect()
    }
    fn attrs(&mut self) -> DecodeResult<QueueAttributes> {
        let mut r = Reader::new(Bytes::copy_from_slice(&self.p[self.pos..]));
        let a = QueueAttributes::decode(&mut r, "attrs").map_err(|_| "attrs")?;
        self.pos = self.p.len() - r.remaining();
        Ok(a)
    }
    fn finish(&self) -> DecodeResult<()> {
        if self.pos == self.p.len() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}

impl Record<Bytes> {
    /// Whether `payload` (this record's encoding, first body at `offset`)
    /// decodes back to this record: every field equal, every body and
    /// suffix at its place. The engine checks each record it logs this way
    /// in debug and test builds, so an encoding that loses information
    /// fails where it is written, not at the next start.
    pub fn check_decodes_to(&self, payload: &[u8], offset: u32) -> Result<(), String> {
        let back = Record::decode(self.rtype(), payload).map_err(|e| e.to_string())?;
        let at = |s: &BodySpan| payload.get(s.offset as usize..s.offset as usize + s.len as usize);
        let same_bodies = |bodies: &[Bytes], spans: &[BodySpan]| {
            bodies.len() == spans.len() && bodies.iter().zip(spans).all(|(b, s)| at(s) == Some(&b[..]))
        };
        // Keys all empty are logged as none.
        let same_keys = |meant: &[Bytes], back: &[Bytes]| {
            if meant.iter().all(|k| k.is_empty()) {
                back.is_empty()
            } else {
                meant == back
            }
        };
        // A single body followed by its suffix, ending the payload.
        let same_data = |body: &Bytes, suffix: &Bytes, span: &BodySpan| {
            span.offset == offset
                && at(span) == Some(&body[..])
                && payload.get((span.offset + span.len) as usize..) == Some(&suffix[..])
        };
        let same = match (self, &back) {
            (
                Record::Enqueued { uid, first_seq, first_msg_id, enqueue_ms, visible_at_ms, bodies, keys },
                Record::Enqueued {
                    uid: u,
                    first_seq: q,
                    first_msg_id: m,
                    enqueue_ms: t,
                    visible_at_ms: v,
                    bodies: spans,
                    keys: k,
                },
            ) => {
                (uid, first_seq, first_msg_id, enqueue_ms, visible_at_ms) == (u, q, m, t, v)
                    && same_keys(keys, k)
                    && same_bodies(bodies, spans)
                    && spans.first().is_none_or(|s| s.offset == offset)
            }
            (
                Record::Published {
                    uid,
                    first_msg_id,
                    first_transfer,
                    time_ms,
                    tags,
                    routing_key,
                    targets,
                    bodies,
                    keys,
                },
                Record::Published {
                    uid: u,
                    first_msg_id: m,
                    first_transfer: f,
                    time_ms: t,
                    tags: g,
                    routing_key: k,
                    targets: x,
                    bodies: spans,
                    keys: y,
                },
            ) => {
                (uid, first_msg_id, first_transfer, time_ms, tags, routing_key, targets) == (u, m, f, t, g, k, x)
                    && same_keys(keys, y)
                    && same_bodies(bodies, spans)
                    && spans.first().is_none_or(|s| s.offset == offset)
            }
            (
                Record::Relocated { uid, seq, entry, body, suffix },
                Record::Relocated { uid: u, seq: q, entry: e, body: span, .. },
            ) => (uid, seq, entry) == (u, q, e) && same_data(body, suffix, span),
            (
                Record::HalfEnqueued { uid, seq, msg_id, enqueue_ms, check_at_ms, body, suffix },
                Record::HalfEnqueued { uid: u, seq: q, msg_id: m, enqueue_ms: t, check_at_ms: c, body: span, .. },
            ) => (uid, seq, msg_id, enqueue_ms, check_at_ms) == (u, q, m, t, c) && same_data(body, suffix, span),
            (
                Record::TransferOut {
                    id,
                    kind,
                    redrive,
                    src_uid,
                    src_seq,
                    dequeue_count,
                    time_ms,
                    dst_queue,
                    body,
                    suffix,
                },
                Record::TransferOut {
                    id: i,
                    kind: k,
                    redrive: r,
                    src_uid: su,
                    src_seq: sq,
                    dequeue_count: d,
                    time_ms: t,
                    dst_queue: q,
                    body: span,
                    ..
                },
            ) => {
                (id, kind, redrive, src_uid, src_seq, dequeue_count, time_ms, dst_queue) == (i, k, r, su, sq, d, t, q)
                    && same_data(body, suffix, span)
            }
            (
                Record::TransferIn { src_shard, id, uid, seq, msg_id, enqueue_ms, dequeue_count, body, suffix },
                Record::TransferIn {
                    src_shard: s,
                    id: i,
                    uid: u,
                    seq: q,
                    msg_id: m,
                    enqueue_ms: t,
                    dequeue_count: d,
                    body: span,
                    ..
                },
            ) => {
                (src_shard, id, uid, seq, msg_id, enqueue_ms, dequeue_count) == (s, i, u, q, m, t, d)
                    && same_data(body, suffix, span)
            }
            // Records without bodies print the same whatever their body type.
            _ => offset == 0 && format!("{self:?}") == format!("{back:?}"),
        };
        if same {
            Ok(())
        } else {
            Err(format!("record type {} decodes to a different record: {back:?}", self.rtype()))
        }
    }
}

impl Record<BodySpan> {
    /// Decodes a payload read back from the log (bodies stay where they are).
    pub fn decode(rtype: u8, payload: &[u8]) -> Result<Record<BodySpan>, RecordError> {
        let fail = |reason: &str| RecordError { rtype, reason: reason.to_owned() };
        if rtype == rtype::ENQUEUED {
            return decode_enqueued(payload).map_err(fail);
        }
        if rtype == rtype::PUBLISHED {
            return decode_published(payload).map_err(fail);
        }
        let mut c = Cursor { p: payload, pos: 0 };
        let rec = decode_with(rtype, &mut c).map_err(fail)?;
        c.finish().map_err(fail)?;
        Ok(rec)
    }
}

fn decode_with(rtype: u8, c: &mut Cursor<'_>) -> DecodeResult<Record<BodySpan>> {
    use rtype::*;
    let none = Bytes::new;
    Ok(match rtype {
        QUEUE_CREATED => {
            let uid = c.u32("uid")?;
            let time_ms = c.u64("time")?;
            let create_seq = c.u64("create_seq")?;
            let attrs = c.attrs()?;
            Record::QueueCreated { uid, time_ms, create_seq, attrs, name: c.str("name")? }
        }
        QUEUE_UPDATED => Record::QueueUpdated { uid: c.u32("uid")?, time_ms: c.u64("time")?, attrs: c.attrs()? },
        QUEUE_DELETED => Record::QueueDeleted { uid: c.u32("uid")?, time_ms: c.u64("time")? },
        RECEIVED => Record::Received {
            uid: c.u32("uid")?,
            time_ms: c.u64("time")?,
            visible_at_ms: c.u64("visible_at")?,
            seqs: c.u64s("seqs")?,
        },
        DELETED => Record::Deleted { uid: c.u32("uid")?, seqs: c.u64s("seqs")? },
        VISIBILITY_CHANGED => {
            Record::VisibilityChanged { uid: c.u32("uid")?, seq: c.u64("seq")?, visible_at_ms: c.u64("visible_at")? }
        }
        RELOCATED => Record::Relocated {
            uid: c.u32("uid")?,
            seq: c.u64("seq")?,
            entry: RelocatedEntry {
                msg_id: c.u64("msg_id")?,
                enqueue_ms: c.u64("enqueue")?,
                visible_at_ms: c.u64("visible_at")?,
                dequeue_count: c.u32("dequeue_count")?,
                first_dequeue_rel: c.u32("first_dequeue")?,
                state: c.u8("state")?,
                flags: c.u8("flags")?,
            },
            body: c.data("data")?,
            suffix: none(),
        },
        REWOUND => Record::Rewound { uid: c.u32("uid")?, time_ms: c.u64("time")?, start_ms: c.u64("start")? },
        PURGED => Record::Purged { uid: c.u32("uid")?, time_ms: c.u64("time")? },
        HALF_ENQUEUED => Record::HalfEnqueued {
            uid: c.u32("uid")?,
            seq: c.u64("seq")?,
            msg_id: c.u64("msg_id")?,
            enqueue_ms: c.u64("enqueue")?,
            check_at_ms: c.u64("check_at")?,
            body: c.data("data")?,
            suffix: none(),
        },
        TX_CHECKED => Record::TxChecked {
            uid: c.u32("uid")?,
            seq: c.u64("seq")?,
            count: c.u32("count")?,
            next_ms: c.u64("next")?,
        },
        TX_ENDED => Record::TxEnded {
            uid: c.u32("uid")?,
            seq: c.u64("seq")?,
            commit: c.bool("commit")?,
            time_ms: c.u64("time")?,
        },
        TRANSFER_OUT => Record::TransferOut {
            id: c.u64("id")?,
            kind: c.u8("kind")?,
            redrive: c.u64("redrive")?,
            src_uid: c.u32("src_uid")?,
            src_seq: c.u64("src_seq")?,
            dequeue_count: c.u32("dequeue_count")?,
            time_ms: c.u64("time")?,
            dst_queue: c.str("dst_queue")?,
            body: c.data("data")?,
            suffix: none(),
        },
        TRANSFER_IN => Record::TransferIn {
            src_shard: c.u16("src_shard")?,
            id: c.u64("id")?,
            uid: c.u32("uid")?,
            seq: c.u64("seq")?,
            msg_id: c.u64("msg_id")?,
            enqueue_ms: c.u64("enqueue")?,
            dequeue_count: c.u32("dequeue_count")?,
            body: c.data("data")?,
            suffix: none(),
        },
        TRANSFER_DONE => Record::TransferDone { ids: c.u64s("ids")? },
        TRANSFER_RETURNED => Record::TransferReturned {
            id: c.u64("id")?,
            uid: c.u32("uid")?,
            seq: c.u64("seq")?,
            msg_id: c.u64("msg_id")?,
            enqueue_ms: c.u64("enqueue")?,
        },
        REDRIVE_STARTED => Record::RedriveStarted {
            id: c.u64("id")?,
            uid: c.u32("uid")?,
            rate: c.u32("rate")?,
            end_seq: c.u64("end_seq")?,
            total: c.u64("total")?,
            time_ms: c.u64("time")?,
            to: c.str("to")?,
        },
        REDRIVE_ENDED => Record::RedriveEnded { id: c.u64("id")?, state: c.u8("state")?, time_ms: c.u64("time")? },
        TOPIC_CREATED => Record::TopicCreated {
            uid: c.u32("uid")?,
            time_ms: c.u64("time")?,
            create_seq: c.u64("create_seq")?,
            max_msg_size: c.u32("max_msg_size")?,
            retention_s: c.u32("retention")?,
            filter_type: c.u8("filter_type")?,
            name: c.str("name")?,
        },
        TOPIC_UPDATED => {
            Record::TopicUpdated { uid: c.u32("uid")?, time_ms: c.u64("time")?, max_msg_size: c.u32("max_msg_size")? }
        }
        TOPIC_DELETED => Record::TopicDeleted { uid: c.u32("uid")?, time_ms: c.u64("time")? },
        SUBSCRIBED => Record::Subscribed {
            uid: c.u32("uid")?,
            sid: c.u32("sid")?,
            time_ms: c.u64("time")?,
            def: SubscriptionDef {
                name: c.str("name")?,
                protocol: c.u8("protocol")?,
                endpoint: c.str("endpoint")?,
                strategy: c.u8("strategy")?,
                format: c.u8("format")?,
                filter_tags: c.strs("filter tags")?,
                binding_keys: c.strs("binding keys")?,
                dead_letter_queue: c.str("dead letter queue")?,
                secret: c.take(16, "secret")?.try_into().map_err(|_| "secret")?,
            },
        },
        SUBSCRIPTION_UPDATED => Record::SubscriptionUpdated {
            uid: c.u32("uid")?,
            sid: c.u32("sid")?,
            time_ms: c.u64("time")?,
            strategy: c.u8("strategy")?,
            format: c.u8("format")?,
            filter_tags: c.strs("filter tags")?,
            binding_keys: c.strs("binding keys")?,
        },
        UNSUBSCRIBED => Record::Unsubscribed { uid: c.u32("uid")?, sid: c.u32("sid")?, time_ms: c.u64("time")? },
        KEY_PUT => Record::KeyPut {
            time_ms: c.u64("time")?,
            key: crate::engine::keys::KeyDef {
                name: c.str("name")?,
                secret_id: c.str("secret id")?,
                secrets: c.strs("secrets")?,
                policy: c.str("policy")?,
                created_ms: c.u64("created")?,
                modified_ms: c.u64("modified")?,
            },
        },
        KEY_DELETED => Record::KeyDeleted { time_ms: c.u64("time")?, name: c.str("name")? },
        PUSH_RETRY => {
            let n = usize::from(c.u16("entries")?);
            if n * 20 > c.p.len() - c.pos {
                return Err("entries");
            }
            let entries = (0..n)
                .map(|_| Ok((c.u64("id")?, c.u32("attempt")?, c.u64("next")?)))
                .collect::<DecodeResult<Vec<_>>>()?;
            Record::PushRetry { entries }
        }
        PUSH_GAVE_UP => Record::PushGaveUp { id: c.u64("id")?, time_ms: c.u64("time")? },
        _ => return Err("unknown record type"),
    })
}

fn decode_published(p: &[u8]) -> DecodeResult<Record<BodySpan>> {
    let mut c = Cursor { p, pos: 0 };
    let uid = c.u32("uid")?;
    let first_msg_id = c.u64("first_msg_id")?;
    let first_transfer = c.u64("first_transfer")?;
    let time_ms = c.u64("time")?;
    let tags = c.strs("tags")?;
    let routing_key = c.str("routing key")?;
    let targets = c.u32s("targets")?;
    let count = usize::from(c.u16("count")?);
    let mut bodies = Vec::with_capacity(count.min(cmq_protocol::limits::BATCH_MSGS_MAX));
    for _ in 0..count {
        let len = c.u32("body length")?;
        let offset = u32::try_from(c.pos).map_err(|_| "body offset")?;
        c.take(len as usize, "body")?;
        bodies.push(BodySpan { offset, len });
    }
    let keys = c.keys(bodies.len())?;
    c.finish()?;
    Ok(Record::Published { uid, first_msg_id, first_transfer, time_ms, tags, routing_key, targets, bodies, keys })
}

fn decode_enqueued(p: &[u8]) -> DecodeResult<Record<BodySpan>> {
    let mut c = Cursor { p, pos: 0 };
    let uid = c.u32("uid")?;
    let first_seq = c.u64("first_seq")?;
    let first_msg_id = c.u64("first_msg_id")?;
    let enqueue_ms = c.u64("enqueue")?;
    let visible_at_ms = c.u64("visible_at")?;
    let count = usize::from(c.u16("count")?);
    let mut bodies = Vec::with_capacity(count.min(cmq_protocol::limits::BATCH_MSGS_MAX));
    for _ in 0..count {
        let len = c.u32("body length")?;
        let offset = u32::try_from(c.pos).map_err(|_| "body offset")?;
        c.take(len as usize, "body")?;
        bodies.push(BodySpan { offset, len });
    }
    let keys = c.keys(bodies.len())?;
    c.finish()?;
    Ok(Record::Enqueued { uid, first_seq, first_msg_id, enqueue_ms, visible_at_ms, bodies, keys })
}

#[cfg(test)]
mod golden_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use cmq_protocol::FlushPolicy;
    use proptest::prelude::*;

    fn flatten(rec: &Record<Bytes>) -> (u8, Vec<u8>, u32) {
        let mut scratch = Vec::new();
        let (payload, offset) = rec.encode(&mut scratch, |parts| parts.concat()).expect("encodes");
        (rec.rtype(), payload, offset)
    }

    #[test]
    fn counts_and_lengths_past_their_field_are_errors_not_truncations() {
        let mut scratch = Vec::new();
        let mut emitted = false;
        let ids = Record::TransferDone { ids: vec![7; RECORD_ITEMS_MAX + 1] };
        let e = ids.encode(&mut scratch, |_| emitted = true).expect_err("65,536 ids");
        assert!(!emitted, "nothing reaches the log");
        assert_eq!(e.rtype, rtype::TRANSFER_DONE);
        let at_limit = Record::TransferDone { ids: vec![7; RECORD_ITEMS_MAX] };
        let (payload, offset) = at_limit.encode(&mut scratch, |p| p.concat()).expect("65,535 ids");
        assert_eq!(at_limit.check_decodes_to(&payload, offset), Ok(()));
        let retries = Record::PushRetry { entries: vec![(1, 2, 3); RECORD_ITEMS_MAX + 1] };
        assert!(retries.encode(&mut scratch, |_| ()).is_err());
        let long = "q".repeat(usize::from(u16::MAX) + 1);
        let out = Record::TransferOut {
            id: 1,
            kind: transfer_kind::DEAD_LETTER,
            redrive: 0,
            src_uid: 1,
            src_seq: 1,
            dequeue_count: 0,
            time_ms: 0,
            dst_queue: long.clone(),
            body: Bytes::from_static(b"b"),
            suffix: Bytes::new(),
        };
        assert!(out.encode(&mut scratch, |_| ()).is_err(), "a string longer than its u16 length");
        let tags = Record::SubscriptionUpdated {
            uid: 1,
            sid: 1,
            time_ms: 0,
            strategy: 1,
            format: 1,
            filter_tags: vec![long],
            binding_keys: Vec::new(),
        };
        assert!(tags.encode(&mut scratch, |_| ()).is_err());
        let bodies = Record::Enqueued {
            uid: 1,
            first_seq: 1,
            first_msg_id: 1,
            enqueue_ms: 0,
            visible_at_ms: 0,
            bodies: vec![Bytes::new(); RECORD_ITEMS_MAX + 1],
            keys: Vec::new(),
        };
        assert!(bodies.encode(&mut scratch, |_| ()).is_err());
    }

    #[test]
    fn a_payload_of_another_record_does_not_check() {
        let a = Record::<Bytes>::TransferDone { ids: vec![1, 2] };
        let b = Record::<Bytes>::TransferDone { ids: vec![1, 3] };
        let (_, payload, offset) = flatten(&b);
        assert!(a.check_decodes_to(&payload, offset).is_err());
        assert_eq!(b.check_decodes_to(&payload, offset), Ok(()));
        let body = |b: &'static [u8]| Record::<Bytes>::HalfEnqueued {
            uid: 1,
            seq: 2,
            msg_id: 3,
            enqueue_ms: 4,
            check_at_ms: 5,
            body: Bytes::from_static(b),
            suffix: Bytes::from_static(b"group"),
        };
        let (_, payload, offset) = flatten(&body(b"one"));
        assert_eq!(body(b"one").check_decodes_to(&payload, offset), Ok(()));
        assert!(body(b"two").check_decodes_to(&payload, offset).is_err(), "same length, other bytes");
    }

    fn strs() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-z.*#]{0,12}", 0..5)
    }

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    /// Bodies and their keys: none, or one per body (some empty).
    fn keyed_bodies() -> impl Strategy<Value = (Vec<Bytes>, Vec<Bytes>)> {
        proptest::collection::vec((bytes(40), bytes(65)), 0..17).prop_flat_map(|pairs| {
            let (bodies, keys): (Vec<Bytes>, Vec<Bytes>) = pairs.into_iter().unzip();
            prop_oneof![Just((bodies.clone(), Vec::new())), Just((bodies, keys))]
        })
    }

    /// `rec` as it reads back with its keys dropped, when it has any.
    fn without_keys(rec: &Record<Bytes>) -> Option<Record<Bytes>> {
        let mut r = rec.clone();
        match &mut r {
            Record::Enqueued { keys, .. } | Record::Published { keys, .. } if keys.iter().any(|k| !k.is_empty()) => {
                keys.clear()
            }
            _ => return None,
        }
        Some(r)
    }

    fn records() -> impl Strategy<Value = Record<Bytes>> {
        let seqs = proptest::collection::vec(any::<u64>(), 0..20);
        let bodies = keyed_bodies();
        prop_oneof![
            (any::<u32>(), any::<u64>(), "[a-z][a-z0-9]{0,63}").prop_map(|(uid, t, name)| Record::QueueCreated {
                uid,
                time_ms: t,
                create_seq: t / 3,
                attrs: QueueAttributes::defaults(FlushPolicy::Async),
                name
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, t)| Record::QueueUpdated {
                uid,
                time_ms: t,
                attrs: QueueAttributes::defaults(FlushPolicy::Sync)
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, t)| Record::QueueDeleted { uid, time_ms: t }),
            (any::<u32>(), any::<[u64; 4]>(), bodies).prop_map(|(uid, n, (bodies, keys))| Record::Enqueued {
                uid,
                first_seq: n[0],
                first_msg_id: n[1],
                enqueue_ms: n[2],
                visible_at_ms: n[3],
                bodies,
                keys
            }),
            (any::<u32>(), any::<u64>(), any::<u64>(), seqs.clone()).prop_map(|(uid, t, v, seqs)| Record::Received {
                uid,
                time_ms: t,
                visible_at_ms: v,
                seqs
            }),
            (any::<u32>(), seqs.clone()).prop_map(|(uid, seqs)| Record::Deleted { uid, seqs }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(uid, seq, v)| Record::VisibilityChanged {
                uid,
                seq,
                visible_at_ms: v
            }),
            (any::<u32>(), any::<[u64; 4]>(), any::<[u32; 2]>(), any::<[u8; 2]>(), bytes(40), bytes(20)).prop_map(
                |(uid, n, c, sf, body, suffix)| Record::Relocated {
                    uid,
                    seq: n[0],
                    entry: RelocatedEntry {
                        msg_id: n[1],
                        enqueue_ms: n[2],
                        visible_at_ms: n[3],
                        dequeue_count: c[0],
                        first_dequeue_rel: c[1],
                        state: sf[0],
                        flags: sf[1],
                    },
                    body,
                    suffix
                }
            ),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(uid, time_ms, start_ms)| Record::Rewound {
                uid,
                time_ms,
                start_ms
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, time_ms)| Record::Purged { uid, time_ms }),
            (any::<u32>(), any::<[u64; 4]>(), bytes(40), bytes(20)).prop_map(|(uid, n, body, suffix)| {
                Record::HalfEnqueued { uid, seq: n[0], msg_id: n[1], enqueue_ms: n[2], check_at_ms: n[3], body, suffix }
            }),
            (any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>())
                .prop_map(|(uid, seq, count, next_ms)| Record::TxChecked { uid, seq, count, next_ms }),
            (any::<u32>(), any::<u64>(), any::<bool>(), any::<u64>())
                .prop_map(|(uid, seq, commit, time_ms)| Record::TxEnded { uid, seq, commit, time_ms }),
            (any::<[u64; 3]>(), any::<u8>(), any::<[u32; 2]>(), "[a-z]{1,20}", bytes(40), bytes(20)).prop_map(
                |(n, kind, u, dst_queue, body, suffix)| Record::TransferOut {
                    id: n[0],
                    kind,
                    redrive: n[1],
                    src_uid: u[0],
                    src_seq: n[2],
                    dequeue_count: u[1],
                    time_ms: n[1] ^ n[2],
                    dst_queue,
                    body,
                    suffix
                }
            ),
            (any::<u16>(), any::<[u64; 4]>(), any::<[u32; 2]>(), bytes(40), bytes(20)).prop_map(
                |(src_shard, n, u, body, suffix)| Record::TransferIn {
                    src_shard,
                    id: n[0],
                    uid: u[0],
                    seq: n[1],
                    msg_id: n[2],
                    enqueue_ms: n[3],
                    dequeue_count: u[1],
                    body,
                    suffix
                }
            ),
            seqs.prop_map(|ids| Record::TransferDone { ids }),
            (any::<[u64; 4]>(), any::<u32>()).prop_map(|(n, uid)| Record::TransferReturned {
                id: n[0],
                uid,
                seq: n[1],
                msg_id: n[2],
                enqueue_ms: n[3]
            }),
            (any::<[u64; 4]>(), any::<[u32; 2]>(), "[a-z]{0,20}").prop_map(|(n, u, to)| Record::RedriveStarted {
                id: n[0],
                uid: u[0],
                rate: u[1],
                end_seq: n[1],
                total: n[2],
                time_ms: n[3],
                to
            }),
            (any::<u64>(), any::<u8>(), any::<u64>()).prop_map(|(id, state, time_ms)| Record::RedriveEnded {
                id,
                state,
                time_ms
            }),
            (any::<u32>(), any::<[u64; 2]>(), any::<[u32; 2]>(), any::<u8>(), "[a-z]{1,20}").prop_map(
                |(uid, n, m, filter_type, name)| Record::TopicCreated {
                    uid,
                    time_ms: n[0],
                    create_seq: n[1],
                    max_msg_size: m[0],
                    retention_s: m[1],
                    filter_type,
                    name
                }
            ),
            (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(uid, time_ms, max_msg_size)| Record::TopicUpdated {
                uid,
                time_ms,
                max_msg_size
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, time_ms)| Record::TopicDeleted { uid, time_ms }),
            (any::<[u32; 2]>(), any::<u64>(), "[a-z]{1,10}", "[a-z:/.]{0,30}", strs(), strs(), any::<[u8; 16]>())
                .prop_map(|(u, time_ms, name, endpoint, filter_tags, binding_keys, secret)| Record::Subscribed {
                    uid: u[0],
                    sid: u[1],
                    time_ms,
                    def: SubscriptionDef {
                        name,
                        protocol: 2,
                        endpoint,
                        strategy: 1,
                        format: 2,
                        filter_tags,
                        binding_keys,
                        dead_letter_queue: "dlq".into(),
                        secret
                    }
                }),
            (any::<[u32; 2]>(), any::<u64>(), strs(), strs()).prop_map(|(u, time_ms, filter_tags, binding_keys)| {
                Record::SubscriptionUpdated {
                    uid: u[0],
                    sid: u[1],
                    time_ms,
                    strategy: 2,
                    format: 1,
                    filter_tags,
                    binding_keys,
                }
            }),
            (any::<[u32; 2]>(), any::<u64>()).prop_map(|(u, time_ms)| Record::Unsubscribed {
                uid: u[0],
                sid: u[1],
                time_ms
            }),
            (
                any::<u32>(),
                any::<[u64; 3]>(),
                strs(),
                "[a-z.]{0,20}",
                proptest::collection::vec(any::<u32>(), 0..6),
                keyed_bodies()
            )
                .prop_map(|(uid, n, tags, routing_key, targets, (bodies, keys))| Record::Published {
                    uid,
                    first_msg_id: n[0],
                    first_transfer: n[1],
                    time_ms: n[2],
                    tags,
                    routing_key,
                    targets,
                    bodies,
                    keys
                }),
            proptest::collection::vec(any::<(u64, u32, u64)>(), 0..10)
                .prop_map(|entries| Record::PushRetry { entries }),
            (any::<u64>(), any::<u64>()).prop_map(|(id, time_ms)| Record::PushGaveUp { id, time_ms }),
            (any::<[u64; 3]>(), "[a-z]{1,10}", "AKID[a-z]{0,32}", strs(), "[ -~]{0,200}").prop_map(
                |(n, name, secret_id, secrets, policy)| Record::KeyPut {
                    time_ms: n[0],
                    key: crate::engine::keys::KeyDef {
                        name,
                        secret_id,
                        secrets,
                        policy,
                        created_ms: n[1],
                        modified_ms: n[2]
                    }
                }
            ),
            (any::<u64>(), "[a-z]{1,10}").prop_map(|(time_ms, name)| Record::KeyDeleted { time_ms, name }),
        ]
    }

    /// The decoded form of a live record: bodies become spans (checked
    /// against the payload) and suffixes are found after them.
    fn expected_span(rec: &Record<Bytes>, payload: &[u8], offset: u32) -> Option<(Bytes, Bytes, BodySpan)> {
        let (body, suffix) = match rec {
            Record::Relocated { body, suffix, .. }
            | Record::HalfEnqueued { body, suffix, .. }
            | Record::TransferOut { body, suffix, .. }
            | Record::TransferIn { body, suffix, .. } => (body.clone(), suffix.clone()),
            _ => return None,
        };
        let span = BodySpan { offset, len: body.len() as u32 };
        assert_eq!(&payload[offset as usize..(offset + span.len) as usize], &body[..]);
        Some((body, suffix, span))
    }

    proptest! {
        #[test]
        fn records_round_trip(rec in records()) {
            let (rtype, payload, offset) = flatten(&rec);
            prop_assert_eq!(rec.check_decodes_to(&payload, offset), Ok(()));
            let back = Record::decode(rtype, &payload).expect("decodes");
            prop_assert_eq!(back.rtype(), rtype);
            match (&rec, &back) {
                (Record::Published { bodies, .. }, Record::Published { bodies: spans, .. })
                | (Record::Enqueued { bodies, .. }, Record::Enqueued { bodies: spans, .. }) => {
                    prop_assert_eq!(spans.first().map(|s| s.offset), bodies.first().map(|_| offset));
                    for (b, s) in bodies.iter().zip(spans) {
                        prop_assert_eq!(&payload[s.offset as usize..(s.offset + s.len) as usize], &b[..]);
                    }
                }
                _ => {
                    if let Some((body, suffix, span)) = expected_span(&rec, &payload, offset) {
                        let tail = &payload[(span.offset + span.len) as usize..];
                        prop_assert_eq!(tail, &suffix[..]);
                        prop_assert_eq!(span.len as usize, body.len());
                    } else {
                        // Fixed-layout records re-encode to the same bytes.
                        prop_assert_eq!(format!("{rec:?}"), format!("{back:?}"));
                    }
                }
            }
        }

        /// Every cut is an error, except one by design: just before a
        /// batch's keys it reads as the keyless record (the log frames
        /// each record with its length and checksum, so such a cut is never
        /// read back).
        #[test]
        fn truncated_records_are_errors(rec in records()) {
            let (rtype, payload, _) = flatten(&rec);
            let keyless = without_keys(&rec).map(|r| flatten(&r).1.len());
            for cut in 0..payload.len() {
                prop_assert!(Record::decode(rtype, &payload[..cut]).is_err() || keyless == Some(cut), "cut {}", cut);
            }
        }

        #[test]
        fn garbage_never_panics(rtype in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(rtype, &data);
        }
    }
}
