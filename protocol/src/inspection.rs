//! Looking at and resetting a queue: rewind, peek, query by id, purge.

use bytes::Bytes;

use crate::limits::{MSG_BYTES_MAX, NAME_CHARS_MAX, PEEK_MSGS_MAX, STRING_BYTES_MAX};
use crate::wire::{Reader, Wire, Writer};
use crate::DecodeError;

/// A message's state as inspection reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum MessageState {
    /// Receivable now.
    #[default]
    Ready,
    /// Sent with a delay that has not passed.
    Delayed,
    /// Received; invisible until `next_visible_time_ms`.
    InFlight,
    /// Deleted, but kept for the queue's rewindSeconds.
    Deleted,
    /// A transaction (half) message not yet committed.
    Half,
    /// Moved to the dead-letter queue named in the detail.
    DeadLettered,
    /// Dropped after msgRetentionSeconds.
    Expired,
    /// Not in the queue as far as it can tell: deleted and no longer
    /// retained, another queue's message, or an id never issued.
    Gone,
    /// Dropped by PurgeQueue.
    Purged,
    /// A half message rolled back.
    RolledBack,
    /// Moved back out of a dead-letter queue by a redrive.
    Redriven,
}

impl MessageState {
    const ALL: [MessageState; 11] = [
        MessageState::Ready,
        MessageState::Delayed,
        MessageState::InFlight,
        MessageState::Deleted,
        MessageState::Half,
        MessageState::DeadLettered,
        MessageState::Expired,
        MessageState::Gone,
        MessageState::Purged,
        MessageState::RolledBack,
        MessageState::Redriven,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Ready => "ready",
            MessageState::Delayed => "delayed",
            MessageState::InFlight => "in-flight",
            MessageState::Deleted => "deleted",
            MessageState::Half => "half",
            MessageState::DeadLettered => "dead-lettered",
            MessageState::Expired => "expired",
            MessageState::Gone => "gone",
            MessageState::Purged => "purged",
            MessageState::RolledBack => "rolled-back",
            MessageState::Redriven => "redriven",
        }
    }
}

impl Wire for MessageState {
    fn encode(&self, w: &mut Vec<u8>) {
        let i = MessageState::ALL.iter().position(|s| s == self).unwrap_or(0);
        w.put_u8(i as u8 + 1)
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let v = r.u8(field)?;
        MessageState::ALL.get(usize::from(v).wrapping_sub(1)).copied().ok_or(DecodeError::Invalid(field))
    }
}

crate::wire_struct! {
    /// Where a dead-lettered (or redriven) message came from.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct MessageOrigin {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub source_queue: String = string(NAME_CHARS_MAX),
        pub original_msg_id: u64,
        /// When the message was first enqueued anywhere.
        pub first_enqueue_time_ms: u64,
    }
}

crate::wire_struct! {
    /// Make messages enqueued at or after `start_consume_time_ms` receivable
    /// again in enqueue order, including deleted ones still within the
    /// queue's rewindSeconds.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct RewindQueue {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub start_consume_time_ms: u64,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct RewindQueueOk {
        /// Deleted messages made receivable again.
        pub rewound: u64,
    }
}

crate::wire_struct! {
    /// A non-destructive look at up to `max` messages (ready, delayed, in
    /// flight, half, deleted-but-rewindable) in enqueue order, starting after
    /// `cursor` (0 = from the oldest). Changes nothing.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct PeekMessages {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub cursor: u64,
        pub max: u16,
        pub include_body: bool,
    }
}

crate::wire_struct! {
    /// One message as seen by inspection. Times are Unix milliseconds, 0 = never.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct PeekedMessage {
        pub msg_id: u64,
        pub state: MessageState,
        pub enqueue_time_ms: u64,
        pub first_dequeue_time_ms: u64,
        pub dequeue_count: u32,
        /// In flight: when the lease ends; delayed: when it becomes ready.
        pub next_visible_time_ms: u64,
        pub body_len: u32,
        /// Empty unless the request asked for bodies.
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(32)"))]
        pub body: Bytes = bytes(MSG_BYTES_MAX as usize),
        pub origin: Option<MessageOrigin>,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct PeekMessagesOk {
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub messages: Vec<PeekedMessage> = list(PEEK_MSGS_MAX),
        /// Pass as `cursor` for the next page; 0 when there is no more.
        pub next_cursor: u64,
    }
}

crate::wire_struct! {
    /// The state of one message, by id.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct QueryMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub msg_id: u64,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct MessageStatus {
        pub msg_id: u64,
        pub state: MessageState,
        pub enqueue_time_ms: u64,
        pub first_dequeue_time_ms: u64,
        pub dequeue_count: u32,
        pub next_visible_time_ms: u64,
        /// When it left the queue (deleted, expired, dead-lettered, purged…), 0 if it has not.
        pub state_time_ms: u64,
        /// E.g. the dead-letter queue it went to.
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub detail: String = string(STRING_BYTES_MAX),
        pub origin: Option<MessageOrigin>,
    }
}

crate::wire_struct! {
    /// Drop every message of the queue, durably.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct PurgeQueue {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct PurgeQueueOk {
        pub purged: u64,
    }
}
