//! Message operations: send, receive, delete, change visibility.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::inspection::MessageOrigin;
use crate::limits::{BATCH_MSGS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, MSG_BYTES_MAX, NAME_CHARS_MAX, STRING_BYTES_MAX};
use crate::wire::{Reader, Wire, Writer};
use crate::DecodeError;

/// Proof that a consumer holds a message: valid for deletion and visibility
/// changes until the message's visibility window ends or it is received again.
/// Opaque to clients; shown as a decimal string (CMQ handles are digit strings).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReceiptHandle(pub u128);

impl fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptHandle({})", self.0)
    }
}

impl FromStr for ReceiptHandle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<u128>().map(ReceiptHandle).map_err(|_| format!("receiptHandle: {s:?} is not a receipt handle"))
    }
}

impl Wire for ReceiptHandle {
    fn encode(&self, w: &mut Vec<u8>) {
        w.put_u128(self.0)
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        r.u128(field).map(ReceiptHandle)
    }
}

crate::wire_struct! {
    /// Send one message; it becomes receivable after `delay_seconds`.
    /// With a non-empty `idempotency_key`, a send repeated with the same key
    /// within the queue's dedup window is answered with the first send's
    /// message id and stores nothing (protocol version 3; see PROTOCOL.md).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SendMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub delay_seconds: u32,
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(64)"))]
        pub body: Bytes = bytes(MSG_BYTES_MAX as usize),
        #[cfg_attr(test, proptest(strategy = "crate::testing::key()"))]
        pub idempotency_key: Bytes = key(IDEMPOTENCY_KEY_BYTES_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SendMessageOk {
        pub msg_id: u64,
    }
}

crate::wire_struct! {
    /// Send 1..=16 messages sharing one delay; all or none are accepted.
    /// `idempotency_keys` is empty (no keys) or holds one key per body
    /// (an empty key: that message has none).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchSendMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub delay_seconds: u32,
        #[cfg_attr(test, proptest(strategy = "crate::testing::bodies()"))]
        pub bodies: Vec<Bytes> = bytes_list(BATCH_MSGS_MAX, MSG_BYTES_MAX as usize),
        #[cfg_attr(test, proptest(strategy = "crate::testing::keys()"))]
        pub idempotency_keys: Vec<Bytes> = keys(BATCH_MSGS_MAX, IDEMPOTENCY_KEY_BYTES_MAX),
    }
}

crate::wire_struct! {
    /// Message ids in request order.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchSendMessageOk {
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(16)"))]
        pub msg_ids: Vec<u64> = list(BATCH_MSGS_MAX),
    }
}

crate::wire_struct! {
    /// Receive one message, waiting up to `polling_wait_seconds` (default: the queue's).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ReceiveMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub polling_wait_seconds: Option<u32>,
    }
}

crate::wire_struct! {
    /// Receive up to `max_messages` (1..=16); answers as soon as one is available.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchReceiveMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub max_messages: u16,
        pub polling_wait_seconds: Option<u32>,
    }
}

/// A delivered message. Times are Unix milliseconds. `origin` is set for a
/// message that was dead-lettered (or redriven): its source queue, original
/// message id and first enqueue time; `msg_id` is then the original id too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReceivedMessage {
    pub msg_id: u64,
    pub receipt_handle: ReceiptHandle,
    pub enqueue_time_ms: u64,
    pub first_dequeue_time_ms: u64,
    pub next_visible_time_ms: u64,
    pub dequeue_count: u32,
    #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(64)"))]
    pub body: Bytes,
    pub origin: Option<MessageOrigin>,
}

/// Everything of a [`ReceivedMessage`] but its body, so the broker can encode
/// a delivery straight from the body's bytes on disk without building a `Bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryHead {
    pub msg_id: u64,
    pub receipt_handle: ReceiptHandle,
    pub enqueue_time_ms: u64,
    pub first_dequeue_time_ms: u64,
    pub next_visible_time_ms: u64,
    pub dequeue_count: u32,
}

impl DeliveryHead {
    /// Encodes a ReceivedMessage with this head, `body`, and `origin`: the
    /// wire encoding of a `MessageOrigin` (as stored next to the body), if any.
    pub fn encode_with_body(&self, body: &[u8], origin: Option<&[u8]>, w: &mut Vec<u8>) {
        w.put_u64(self.msg_id);
        w.put_u128(self.receipt_handle.0);
        w.put_u64(self.enqueue_time_ms);
        w.put_u64(self.first_dequeue_time_ms);
        w.put_u64(self.next_visible_time_ms);
        w.put_u32(self.dequeue_count);
        w.put_bytes(body);
        match origin {
            None => w.put_u8(0),
            Some(o) => {
                w.put_u8(1);
                w.extend_from_slice(o);
            }
        }
    }
}

impl Wire for ReceivedMessage {
    fn encode(&self, w: &mut Vec<u8>) {
        let head = DeliveryHead {
            msg_id: self.msg_id,
            receipt_handle: self.receipt_handle,
            enqueue_time_ms: self.enqueue_time_ms,
            first_dequeue_time_ms: self.first_dequeue_time_ms,
            next_visible_time_ms: self.next_visible_time_ms,
            dequeue_count: self.dequeue_count,
        };
        let origin = self.origin.as_ref().map(|o| {
            let mut buf = Vec::new();
            o.encode(&mut buf);
            buf
        });
        head.encode_with_body(&self.body, origin.as_deref(), w)
    }
    fn decode(r: &mut Reader, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(ReceivedMessage {
            msg_id: r.u64("msg_id")?,
            receipt_handle: ReceiptHandle(r.u128("receipt_handle")?),
            enqueue_time_ms: r.u64("enqueue_time_ms")?,
            first_dequeue_time_ms: r.u64("first_dequeue_time_ms")?,
            next_visible_time_ms: r.u64("next_visible_time_ms")?,
            dequeue_count: r.u32("dequeue_count")?,
            body: r.bytes("body", MSG_BYTES_MAX as usize)?,
            origin: Option::<MessageOrigin>::decode(r, "origin")?,
        })
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchReceiveMessageOk {
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub messages: Vec<ReceivedMessage> = list(BATCH_MSGS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct DeleteMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub receipt_handle: ReceiptHandle,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchDeleteMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(16)"))]
        pub receipt_handles: Vec<ReceiptHandle> = list(BATCH_MSGS_MAX),
    }
}

crate::wire_struct! {
    /// The outcome of one item of a batch: code 0 is success.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ItemResult {
        pub code: u16,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub message: String = string(STRING_BYTES_MAX),
    }
}

crate::wire_struct! {
    /// One result per receipt handle, in request order.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchDeleteMessageOk {
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(16)"))]
        pub results: Vec<ItemResult> = list(BATCH_MSGS_MAX),
    }
}

crate::wire_struct! {
    /// Make a received message invisible for `visibility_timeout` seconds from
    /// now (0 returns it to the queue at once). Repeating it is a lease heartbeat.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ChangeMessageVisibility {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub receipt_handle: ReceiptHandle,
        pub visibility_timeout: u32,
    }
}

crate::wire_struct! {
    /// The handle stays valid; `next_visible_time_ms` is the new deadline.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ChangeMessageVisibilityOk {
        pub receipt_handle: ReceiptHandle,
        pub next_visible_time_ms: u64,
    }
}

crate::wire_struct! {
    /// A response with nothing to say but success.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct Empty {}
}

crate::wire_struct! {
    /// Liveness check; answered by the shard that serves the connection.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct Ping {}
}
