//! Log records: every state change of the engine, in the form it is written
//! to the write-ahead log and replayed from it.
//!
//! The engine never changes state except by applying a record, and applying
//! is the same code live and at recovery, so the state rebuilt from the log is
//! the state that was acknowledged. Receive-side state is logged too
//! (`Received`, `VisibilityChanged`): a message's dequeueCount drives
//! dead-lettering and must not silently reset across a restart.
//!
//! Each record is a named struct (`Enqueued`, `TransferOut`, …) and
//! [`Record`] has one variant per struct. The structs are declared with
//! `log_struct!` (`engine/codec.rs`), which generates their encoder and
//! decoder from the fields in order, so the table below is the fields of
//! each struct in declaration order; `record/golden_tests.rs` pins every
//! type's bytes, written from this table.
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
use cmq_protocol::auth::{POLICY_BYTES_MAX, SECRET_ID_BYTES_MAX};
use cmq_protocol::limits::{NAME_CHARS_MAX, URL_BYTES_MAX};
use cmq_protocol::QueueAttributes;

pub use crate::engine::codec::BodySpan;
use crate::engine::codec::{put_list, put_str, LogReader, LogValue, Out, TooLong};
use crate::engine::keys::KeyDef;
use crate::log_struct;

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

/// A body and what follows it in the log. Live records carry the bytes;
/// decoded records carry where they are.
pub trait BodyData {}
impl BodyData for Bytes {}
impl BodyData for BodySpan {}

/// Why a message moves to another queue.
pub mod transfer_kind {
    pub const DEAD_LETTER: u8 = 1;
    pub const REDRIVE: u8 = 2;
    /// A published message on its way to a queue subscription.
    pub const PUBLISH: u8 = 3;
    /// A published message on its way to an HTTP subscription (never sent between shards).
    pub const PUSH: u8 = 4;
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

/// Longest tag, filter tag or binding key read back (the protocol's limit
/// on them; the broker's own rules are tighter).
pub const TAG_BYTES_MAX: usize = NAME_CHARS_MAX;

const _: () = assert!(RECORD_IDS_MAX <= RECORD_ITEMS_MAX);
const _: () = assert!(2 + RECORD_IDS_MAX * 20 <= crate::storage::RECORD_PAYLOAD_MAX_BYTES as usize);
// A full batch's keys fit easily in the room a record has beside its bodies.
const _: () = assert!(
    2 + cmq_protocol::limits::BATCH_MSGS_MAX * (1 + cmq_protocol::limits::IDEMPOTENCY_KEY_BYTES_MAX)
        <= crate::storage::RECORD_OVERHEAD_MAX_BYTES as usize / 64
);

log_struct! {
    /// A message's full state as carried by a `Relocated` record.
    #[derive(Copy)]
    pub struct RelocatedEntry {
        pub msg_id: u64,
        pub enqueue_ms: u64,
        pub visible_at_ms: u64,
        pub dequeue_count: u32,
        pub first_dequeue_rel: u32,
        pub state: u8,
        pub flags: u8,
    }
}

log_struct! {
    /// A subscription's definition as logged (and kept in the catalog).
    pub struct SubscriptionDef {
        pub name: String = str(NAME_CHARS_MAX),
        pub protocol: u8,
        pub endpoint: String = str(URL_BYTES_MAX),
        pub strategy: u8,
        pub format: u8,
        pub filter_tags: Vec<String> = strs(RECORD_ITEMS_MAX, TAG_BYTES_MAX),
        pub binding_keys: Vec<String> = strs(RECORD_ITEMS_MAX, TAG_BYTES_MAX),
        pub dead_letter_queue: String = str(NAME_CHARS_MAX),
        pub secret: [u8; 16],
    }
}

/// An authentication key as logged (and kept in the catalog): name,
/// secret id, its SecretKeys, policy, created and modified times.
/// (`KeyDef` keeps its own `Debug`, which hides the secrets.)
impl LogValue for KeyDef {
    const MIN_BYTES: usize = 2 + 2 + 2 + 2 + 8 + 8;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, _: &'static str) -> Result<(), TooLong> {
        put_str(out, &self.name, "key name")?;
        put_str(out, &self.secret_id, "secret id")?;
        put_list(out, &self.secrets, "secrets")?;
        put_str(out, &self.policy, "policy")?;
        self.created_ms.put(out, "created_ms")?;
        self.modified_ms.put(out, "modified_ms")
    }
    fn get(r: &mut LogReader<'_>, _: &'static str) -> Result<Self, cmq_protocol::DecodeError> {
        Ok(KeyDef {
            name: r.string("key name", NAME_CHARS_MAX)?,
            secret_id: r.string("secret id", SECRET_ID_BYTES_MAX)?,
            secrets: cmq_protocol::wire::decode_strs(r, "secrets", RECORD_ITEMS_MAX, NAME_CHARS_MAX)?,
            policy: r.string("policy", POLICY_BYTES_MAX)?,
            created_ms: r.u64("created_ms")?,
            modified_ms: r.u64("modified_ms")?,
        })
    }
}

log_struct! {
    pub struct QueueCreated {
        pub uid: u32,
        pub time_ms: u64,
        pub create_seq: u64,
        pub attrs: QueueAttributes,
        pub name: String,
    }
}

log_struct! {
    pub struct QueueUpdated {
        pub uid: u32,
        pub time_ms: u64,
        pub attrs: QueueAttributes,
    }
}

log_struct! {
    pub struct QueueDeleted {
        pub uid: u32,
        pub time_ms: u64,
    }
}

log_struct! {
    pub struct Enqueued<B> {
        pub uid: u32,
        pub first_seq: u64,
        pub first_msg_id: u64,
        pub enqueue_ms: u64,
        pub visible_at_ms: u64,
        pub bodies: Vec<B> = bodies,
        /// Empty, or one idempotency key per body (empty: none).
        pub keys: Vec<Bytes> = keys(bodies),
    }
}

log_struct! {
    pub struct Received {
        pub uid: u32,
        pub time_ms: u64,
        pub visible_at_ms: u64,
        pub seqs: Vec<u64> = list(RECORD_ITEMS_MAX),
    }
}

log_struct! {
    pub struct Deleted {
        pub uid: u32,
        pub seqs: Vec<u64> = list(RECORD_ITEMS_MAX),
    }
}

log_struct! {
    pub struct VisibilityChanged {
        pub uid: u32,
        pub seq: u64,
        pub visible_at_ms: u64,
    }
}

log_struct! {
    pub struct Relocated<B> {
        pub uid: u32,
        pub seq: u64,
        pub entry: RelocatedEntry,
        pub body: B = data(suffix),
        pub suffix: Bytes = after(body),
    }
}

log_struct! {
    pub struct Rewound {
        pub uid: u32,
        pub time_ms: u64,
        pub start_ms: u64,
    }
}

log_struct! {
    pub struct Purged {
        pub uid: u32,
        pub time_ms: u64,
    }
}

log_struct! {
    pub struct HalfEnqueued<B> {
        pub uid: u32,
        pub seq: u64,
        pub msg_id: u64,
        pub enqueue_ms: u64,
        pub check_at_ms: u64,
        pub body: B = data(suffix),
        /// The producer group.
        pub suffix: Bytes = after(body),
    }
}

log_struct! {
    pub struct TxChecked {
        pub uid: u32,
        pub seq: u64,
        pub count: u32,
        pub next_ms: u64,
    }
}

log_struct! {
    pub struct TxEnded {
        pub uid: u32,
        pub seq: u64,
        pub commit: bool,
        pub time_ms: u64,
    }
}

log_struct! {
    pub struct TransferOut<B> {
        pub id: u64,
        pub kind: u8,
        pub redrive: u64,
        pub src_uid: u32,
        pub src_seq: u64,
        pub dequeue_count: u32,
        pub time_ms: u64,
        pub dst_queue: String,
        pub body: B = data(suffix),
        /// The message's `MessageOrigin`, if any.
        pub suffix: Bytes = after(body),
    }
}

log_struct! {
    pub struct TransferIn<B> {
        pub src_shard: u16,
        pub id: u64,
        pub uid: u32,
        pub seq: u64,
        pub msg_id: u64,
        pub enqueue_ms: u64,
        pub dequeue_count: u32,
        pub body: B = data(suffix),
        /// The message's `MessageOrigin`, if any.
        pub suffix: Bytes = after(body),
    }
}

log_struct! {
    pub struct TransferDone {
        pub ids: Vec<u64> = list(RECORD_ITEMS_MAX),
    }
}

log_struct! {
    pub struct TransferReturned {
        pub id: u64,
        pub uid: u32,
        pub seq: u64,
        pub msg_id: u64,
        pub enqueue_ms: u64,
    }
}

log_struct! {
    pub struct RedriveStarted {
        pub id: u64,
        pub uid: u32,
        pub rate: u32,
        pub end_seq: u64,
        pub total: u64,
        pub time_ms: u64,
        pub to: String,
    }
}

log_struct! {
    pub struct RedriveEnded {
        pub id: u64,
        pub state: u8,
        pub time_ms: u64,
    }
}

log_struct! {
    pub struct TopicCreated {
        pub uid: u32,
        pub time_ms: u64,
        pub create_seq: u64,
        pub max_msg_size: u32,
        pub retention_s: u32,
        pub filter_type: u8,
        pub name: String,
    }
}

log_struct! {
    pub struct TopicUpdated {
        pub uid: u32,
        pub time_ms: u64,
        pub max_msg_size: u32,
    }
}

log_struct! {
    pub struct TopicDeleted {
        pub uid: u32,
        pub time_ms: u64,
    }
}

log_struct! {
    pub struct Subscribed {
        pub uid: u32,
        pub sid: u32,
        pub time_ms: u64,
        pub def: SubscriptionDef,
    }
}

log_struct! {
    pub struct SubscriptionUpdated {
        pub uid: u32,
        pub sid: u32,
        pub time_ms: u64,
        pub strategy: u8,
        pub format: u8,
        pub filter_tags: Vec<String> = strs(RECORD_ITEMS_MAX, TAG_BYTES_MAX),
        pub binding_keys: Vec<String> = strs(RECORD_ITEMS_MAX, TAG_BYTES_MAX),
    }
}

log_struct! {
    pub struct Unsubscribed {
        pub uid: u32,
        pub sid: u32,
        pub time_ms: u64,
    }
}

log_struct! {
    pub struct Published<B> {
        pub uid: u32,
        pub first_msg_id: u64,
        pub first_transfer: u64,
        pub time_ms: u64,
        pub tags: Vec<String> = strs(RECORD_ITEMS_MAX, TAG_BYTES_MAX),
        pub routing_key: String,
        pub targets: Vec<u32> = list(RECORD_ITEMS_MAX),
        pub bodies: Vec<B> = bodies,
        /// Empty, or one idempotency key per body (empty: none).
        pub keys: Vec<Bytes> = keys(bodies),
    }
}

log_struct! {
    pub struct PushRetry {
        /// `(push id, attempt, next attempt at)`.
        pub entries: Vec<(u64, u32, u64)> = list(RECORD_ITEMS_MAX),
    }
}

log_struct! {
    pub struct PushGaveUp {
        pub id: u64,
        pub time_ms: u64,
    }
}

log_struct! {
    /// A key's whole state (shard 0 only).
    pub struct KeyPut {
        pub time_ms: u64,
        pub key: KeyDef,
    }
}

log_struct! {
    pub struct KeyDeleted {
        pub time_ms: u64,
        pub name: String,
    }
}

/// Why a logged payload could not be decoded. At recovery this is corruption
/// that the log's checksum did not catch, or a record from a newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record type {rtype}: {reason}")]
pub struct RecordError {
    pub rtype: u8,
    pub reason: String,
}

/// Declares [`Record`]: one variant per record struct, named after it,
/// with its type byte; and the dispatch from a record to its struct's
/// codec and back. A variant written `Name<B>` carries bodies.
macro_rules! records {
    ($($variant:ident $(<$b:ident>)? = $code:ident,)*) => {
        /// A record. `B` is the body representation: `Bytes` when written
        /// live, `BodySpan` when decoded from the log (bodies are never
        /// copied on replay). For records with a suffix, live records carry
        /// it in `suffix`; decoded ones find it right after the body span.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Record<B> {
            $($variant($variant $(<$b>)?),)*
        }

        impl<B> Record<B> {
            pub fn rtype(&self) -> u8 {
                match self {
                    $(Record::$variant(_) => rtype::$code,)*
                }
            }
        }

        impl LogRecord for Record<Bytes> {
            fn rtype(&self) -> u8 {
                Record::rtype(self)
            }
            fn put_payload<'r>(&'r self, out: &mut Out<'_, 'r>) -> Result<(), TooLong> {
                match self {
                    $(Record::$variant(r) => r.put_payload(out),)*
                }
            }
            fn to_record(&self) -> Record<Bytes> {
                self.clone()
            }
        }

        /// Each record struct, as written live (bodies as `Bytes`).
        mod live {
            use super::*;
            type B = Bytes;
            $(
                impl LogRecord for $variant $(<$b>)? {
                    fn rtype(&self) -> u8 {
                        rtype::$code
                    }
                    fn put_payload<'r>(&'r self, out: &mut Out<'_, 'r>) -> Result<(), TooLong> {
                        self.put(out, stringify!($variant))
                    }
                    fn to_record(&self) -> Record<Bytes> {
                        Record::$variant(self.clone())
                    }
                }
            )*
        }

        impl Record<BodySpan> {
            fn get(rtype: u8, r: &mut LogReader<'_>) -> Result<Record<BodySpan>, cmq_protocol::DecodeError> {
                Ok(match rtype {
                    $(rtype::$code => Record::$variant($variant::get(r, stringify!($variant))?),)*
                    _ => return Err(cmq_protocol::DecodeError::Invalid("unknown record type")),
                })
            }

            /// This record with its bodies (and suffixes) read out of `payload`.
            fn resolve(&self, payload: &[u8]) -> Option<Record<Bytes>> {
                Some(match self {
                    $(Record::$variant(r) => Record::$variant(records!(@resolve r, payload $(, $b)?)),)*
                })
            }
        }
    };
    (@resolve $r:ident, $p:ident) => { $r.clone() };
    (@resolve $r:ident, $p:ident, $b:ident) => { $r.resolve($p)? };
}

records! {
    QueueCreated = QUEUE_CREATED,
    QueueUpdated = QUEUE_UPDATED,
    QueueDeleted = QUEUE_DELETED,
    Enqueued<B> = ENQUEUED,
    Received = RECEIVED,
    Deleted = DELETED,
    VisibilityChanged = VISIBILITY_CHANGED,
    Relocated<B> = RELOCATED,
    Rewound = REWOUND,
    Purged = PURGED,
    HalfEnqueued<B> = HALF_ENQUEUED,
    TxChecked = TX_CHECKED,
    TxEnded = TX_ENDED,
    TransferOut<B> = TRANSFER_OUT,
    TransferIn<B> = TRANSFER_IN,
    TransferDone = TRANSFER_DONE,
    TransferReturned = TRANSFER_RETURNED,
    RedriveStarted = REDRIVE_STARTED,
    RedriveEnded = REDRIVE_ENDED,
    TopicCreated = TOPIC_CREATED,
    TopicUpdated = TOPIC_UPDATED,
    TopicDeleted = TOPIC_DELETED,
    Subscribed = SUBSCRIBED,
    SubscriptionUpdated = SUBSCRIPTION_UPDATED,
    Unsubscribed = UNSUBSCRIBED,
    Published<B> = PUBLISHED,
    PushRetry = PUSH_RETRY,
    PushGaveUp = PUSH_GAVE_UP,
    KeyPut = KEY_PUT,
    KeyDeleted = KEY_DELETED,
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

/// A record as written: a record struct, or a [`Record`] holding one.
pub trait LogRecord {
    /// Its type byte (`rtype`).
    fn rtype(&self) -> u8;

    /// Its payload, bodies referenced.
    fn put_payload<'r>(&'r self, out: &mut Out<'_, 'r>) -> Result<(), TooLong>;

    /// This record as a [`Record`].
    fn to_record(&self) -> Record<Bytes>;

    /// Encodes the record's payload as gathered parts: fixed fields go into
    /// `scratch`, bodies are referenced, not copied. Calls `emit` with the
    /// parts in order (the log copies them once, into its write buffer), and
    /// returns what `emit` returns and the offset of the (first) body in the
    /// payload (0 for a record without one). Every count and length is
    /// checked against its field's width: a record that cannot be encoded
    /// faithfully is an error, and `emit` is not called.
    fn encode<R>(&self, scratch: &mut Vec<u8>, emit: impl FnOnce(&[&[u8]]) -> R) -> Result<(R, u32), RecordError> {
        let rtype = self.rtype();
        let mut out = Out::new(scratch);
        self.put_payload(&mut out)
            .map_err(|TooLong(field)| RecordError { rtype, reason: format!("{field} does not fit its field") })?;
        let offset = out.first_hole().unwrap_or(0);
        let offset = u32::try_from(offset).map_err(|_| RecordError { rtype, reason: "header too long".into() })?;
        if out.is_flat() {
            let buf: &[u8] = out.buf();
            return Ok((emit(&[buf]), offset));
        }
        Ok((emit(&out.parts()), offset))
    }

    /// Whether `payload` (this record's encoding, first body at `offset`)
    /// decodes back to this record: every field equal, every body and
    /// suffix at its place. The engine checks each record it logs this way
    /// in debug and test builds, so an encoding that loses information
    /// fails where it is written, not at the next start.
    fn check_decodes_to(&self, payload: &[u8], offset: u32) -> Result<(), String> {
        let back = Record::decode(self.rtype(), payload).map_err(|e| e.to_string())?;
        let first_at = back.first_span().is_none_or(|s| s.offset == offset);
        if first_at && back.resolve(payload) == Some(keys_normalized(self.to_record())) {
            Ok(())
        } else {
            Err(format!("record type {} decodes to a different record: {back:?}", self.rtype()))
        }
    }
}

/// `rec` as it reads back: keys all empty are logged as none.
fn keys_normalized(mut rec: Record<Bytes>) -> Record<Bytes> {
    if let Record::Enqueued(Enqueued { keys, .. }) | Record::Published(Published { keys, .. }) = &mut rec {
        if keys.iter().all(|k| k.is_empty()) {
            keys.clear();
        }
    }
    rec
}

impl Record<BodySpan> {
    /// Decodes a payload read back from the log (bodies stay where they are).
    pub fn decode(rtype: u8, payload: &[u8]) -> Result<Record<BodySpan>, RecordError> {
        let fail = |e: cmq_protocol::DecodeError| RecordError { rtype, reason: e.to_string() };
        let mut r = LogReader::over(payload);
        let rec = Record::get(rtype, &mut r).map_err(fail)?;
        r.finish().map_err(fail)?;
        Ok(rec)
    }

    /// The span of the record's (first) body.
    fn first_span(&self) -> Option<BodySpan> {
        match self {
            Record::Enqueued(Enqueued { bodies, .. }) | Record::Published(Published { bodies, .. }) => {
                bodies.first().copied()
            }
            Record::Relocated(Relocated { body, .. })
            | Record::HalfEnqueued(HalfEnqueued { body, .. })
            | Record::TransferOut(TransferOut { body, .. })
            | Record::TransferIn(TransferIn { body, .. }) => Some(*body),
            _ => None,
        }
    }
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
        let ids = Record::TransferDone(TransferDone { ids: vec![7; RECORD_ITEMS_MAX + 1] });
        let e = ids.encode(&mut scratch, |_| emitted = true).expect_err("65,536 ids");
        assert!(!emitted, "nothing reaches the log");
        assert_eq!(e.rtype, rtype::TRANSFER_DONE);
        let at_limit = Record::TransferDone(TransferDone { ids: vec![7; RECORD_ITEMS_MAX] });
        let (payload, offset) = at_limit.encode(&mut scratch, |p| p.concat()).expect("65,535 ids");
        assert_eq!(at_limit.check_decodes_to(&payload, offset), Ok(()));
        let retries = Record::PushRetry(PushRetry { entries: vec![(1, 2, 3); RECORD_ITEMS_MAX + 1] });
        assert!(retries.encode(&mut scratch, |_| ()).is_err());
        let long = "q".repeat(usize::from(u16::MAX) + 1);
        let out = Record::TransferOut(TransferOut {
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
        });
        assert!(out.encode(&mut scratch, |_| ()).is_err(), "a string longer than its u16 length");
        let tags = Record::SubscriptionUpdated(SubscriptionUpdated {
            uid: 1,
            sid: 1,
            time_ms: 0,
            strategy: 1,
            format: 1,
            filter_tags: vec![long],
            binding_keys: Vec::new(),
        });
        assert!(tags.encode(&mut scratch, |_| ()).is_err());
        let bodies = Record::Enqueued(Enqueued {
            uid: 1,
            first_seq: 1,
            first_msg_id: 1,
            enqueue_ms: 0,
            visible_at_ms: 0,
            bodies: vec![Bytes::new(); RECORD_ITEMS_MAX + 1],
            keys: Vec::new(),
        });
        assert!(bodies.encode(&mut scratch, |_| ()).is_err());
    }

    #[test]
    fn a_payload_of_another_record_does_not_check() {
        let a = Record::<Bytes>::TransferDone(TransferDone { ids: vec![1, 2] });
        let b = Record::<Bytes>::TransferDone(TransferDone { ids: vec![1, 3] });
        let (_, payload, offset) = flatten(&b);
        assert!(a.check_decodes_to(&payload, offset).is_err());
        assert_eq!(b.check_decodes_to(&payload, offset), Ok(()));
        let body = |b: &'static [u8]| {
            Record::<Bytes>::HalfEnqueued(HalfEnqueued {
                uid: 1,
                seq: 2,
                msg_id: 3,
                enqueue_ms: 4,
                check_at_ms: 5,
                body: Bytes::from_static(b),
                suffix: Bytes::from_static(b"group"),
            })
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
            Record::Enqueued(Enqueued { keys, .. }) | Record::Published(Published { keys, .. })
                if keys.iter().any(|k| !k.is_empty()) =>
            {
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
            (any::<u32>(), any::<u64>(), "[a-z][a-z0-9]{0,63}").prop_map(|(uid, t, name)| Record::QueueCreated(
                QueueCreated {
                    uid,
                    time_ms: t,
                    create_seq: t / 3,
                    attrs: QueueAttributes::defaults(FlushPolicy::Async),
                    name
                }
            )),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, t)| Record::QueueUpdated(QueueUpdated {
                uid,
                time_ms: t,
                attrs: QueueAttributes::defaults(FlushPolicy::Sync)
            })),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, t)| Record::QueueDeleted(QueueDeleted { uid, time_ms: t })),
            (any::<u32>(), any::<[u64; 4]>(), bodies).prop_map(|(uid, n, (bodies, keys))| Record::Enqueued(Enqueued {
                uid,
                first_seq: n[0],
                first_msg_id: n[1],
                enqueue_ms: n[2],
                visible_at_ms: n[3],
                bodies,
                keys
            })),
            (any::<u32>(), any::<u64>(), any::<u64>(), seqs.clone())
                .prop_map(|(uid, t, v, seqs)| Record::Received(Received { uid, time_ms: t, visible_at_ms: v, seqs })),
            (any::<u32>(), seqs.clone()).prop_map(|(uid, seqs)| Record::Deleted(Deleted { uid, seqs })),
            (any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(uid, seq, v)| Record::VisibilityChanged(VisibilityChanged { uid, seq, visible_at_ms: v })),
            (any::<u32>(), any::<[u64; 4]>(), any::<[u32; 2]>(), any::<[u8; 2]>(), bytes(40), bytes(20)).prop_map(
                |(uid, n, c, sf, body, suffix)| Record::Relocated(Relocated {
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
                })
            ),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(uid, time_ms, start_ms)| Record::Rewound(Rewound {
                uid,
                time_ms,
                start_ms
            })),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, time_ms)| Record::Purged(Purged { uid, time_ms })),
            (any::<u32>(), any::<[u64; 4]>(), bytes(40), bytes(20)).prop_map(|(uid, n, body, suffix)| {
                Record::HalfEnqueued(HalfEnqueued {
                    uid,
                    seq: n[0],
                    msg_id: n[1],
                    enqueue_ms: n[2],
                    check_at_ms: n[3],
                    body,
                    suffix,
                })
            }),
            (any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>())
                .prop_map(|(uid, seq, count, next_ms)| Record::TxChecked(TxChecked { uid, seq, count, next_ms })),
            (any::<u32>(), any::<u64>(), any::<bool>(), any::<u64>())
                .prop_map(|(uid, seq, commit, time_ms)| Record::TxEnded(TxEnded { uid, seq, commit, time_ms })),
            (any::<[u64; 3]>(), any::<u8>(), any::<[u32; 2]>(), "[a-z]{1,20}", bytes(40), bytes(20)).prop_map(
                |(n, kind, u, dst_queue, body, suffix)| Record::TransferOut(TransferOut {
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
                })
            ),
            (any::<u16>(), any::<[u64; 4]>(), any::<[u32; 2]>(), bytes(40), bytes(20)).prop_map(
                |(src_shard, n, u, body, suffix)| Record::TransferIn(TransferIn {
                    src_shard,
                    id: n[0],
                    uid: u[0],
                    seq: n[1],
                    msg_id: n[2],
                    enqueue_ms: n[3],
                    dequeue_count: u[1],
                    body,
                    suffix
                })
            ),
            seqs.prop_map(|ids| Record::TransferDone(TransferDone { ids })),
            (any::<[u64; 4]>(), any::<u32>()).prop_map(|(n, uid)| Record::TransferReturned(TransferReturned {
                id: n[0],
                uid,
                seq: n[1],
                msg_id: n[2],
                enqueue_ms: n[3]
            })),
            (any::<[u64; 4]>(), any::<[u32; 2]>(), "[a-z]{0,20}").prop_map(|(n, u, to)| Record::RedriveStarted(
                RedriveStarted { id: n[0], uid: u[0], rate: u[1], end_seq: n[1], total: n[2], time_ms: n[3], to }
            )),
            (any::<u64>(), any::<u8>(), any::<u64>())
                .prop_map(|(id, state, time_ms)| Record::RedriveEnded(RedriveEnded { id, state, time_ms })),
            (any::<u32>(), any::<[u64; 2]>(), any::<[u32; 2]>(), any::<u8>(), "[a-z]{1,20}").prop_map(
                |(uid, n, m, filter_type, name)| Record::TopicCreated(TopicCreated {
                    uid,
                    time_ms: n[0],
                    create_seq: n[1],
                    max_msg_size: m[0],
                    retention_s: m[1],
                    filter_type,
                    name
                })
            ),
            (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(uid, time_ms, max_msg_size)| Record::TopicUpdated(
                TopicUpdated { uid, time_ms, max_msg_size }
            )),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, time_ms)| Record::TopicDeleted(TopicDeleted { uid, time_ms })),
            (any::<[u32; 2]>(), any::<u64>(), "[a-z]{1,10}", "[a-z:/.]{0,30}", strs(), strs(), any::<[u8; 16]>())
                .prop_map(|(u, time_ms, name, endpoint, filter_tags, binding_keys, secret)| Record::Subscribed(
                    Subscribed {
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
                    }
                )),
            (any::<[u32; 2]>(), any::<u64>(), strs(), strs()).prop_map(|(u, time_ms, filter_tags, binding_keys)| {
                Record::SubscriptionUpdated(SubscriptionUpdated {
                    uid: u[0],
                    sid: u[1],
                    time_ms,
                    strategy: 2,
                    format: 1,
                    filter_tags,
                    binding_keys,
                })
            }),
            (any::<[u32; 2]>(), any::<u64>()).prop_map(|(u, time_ms)| Record::Unsubscribed(Unsubscribed {
                uid: u[0],
                sid: u[1],
                time_ms
            })),
            (
                any::<u32>(),
                any::<[u64; 3]>(),
                strs(),
                "[a-z.]{0,20}",
                proptest::collection::vec(any::<u32>(), 0..6),
                keyed_bodies()
            )
                .prop_map(|(uid, n, tags, routing_key, targets, (bodies, keys))| Record::Published(
                    Published {
                        uid,
                        first_msg_id: n[0],
                        first_transfer: n[1],
                        time_ms: n[2],
                        tags,
                        routing_key,
                        targets,
                        bodies,
                        keys
                    }
                )),
            proptest::collection::vec(any::<(u64, u32, u64)>(), 0..10)
                .prop_map(|entries| Record::PushRetry(PushRetry { entries })),
            (any::<u64>(), any::<u64>()).prop_map(|(id, time_ms)| Record::PushGaveUp(PushGaveUp { id, time_ms })),
            (any::<[u64; 3]>(), "[a-z]{1,10}", "AKID[a-z]{0,32}", strs(), "[ -~]{0,200}").prop_map(
                |(n, name, secret_id, secrets, policy)| Record::KeyPut(KeyPut {
                    time_ms: n[0],
                    key: crate::engine::keys::KeyDef {
                        name,
                        secret_id,
                        secrets,
                        policy,
                        created_ms: n[1],
                        modified_ms: n[2]
                    }
                })
            ),
            (any::<u64>(), "[a-z]{1,10}").prop_map(|(time_ms, name)| Record::KeyDeleted(KeyDeleted { time_ms, name })),
        ]
    }

    /// The decoded form of a live record: bodies become spans (checked
    /// against the payload) and suffixes are found after them.
    fn expected_span(rec: &Record<Bytes>, payload: &[u8], offset: u32) -> Option<(Bytes, Bytes, BodySpan)> {
        let (body, suffix) = match rec {
            Record::Relocated(Relocated { body, suffix, .. })
            | Record::HalfEnqueued(HalfEnqueued { body, suffix, .. })
            | Record::TransferOut(TransferOut { body, suffix, .. })
            | Record::TransferIn(TransferIn { body, suffix, .. }) => (body.clone(), suffix.clone()),
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
                (Record::Published(Published { bodies, .. }), Record::Published(Published { bodies: spans, .. }))
                | (Record::Enqueued(Enqueued { bodies, .. }), Record::Enqueued(Enqueued { bodies: spans, .. })) => {
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
