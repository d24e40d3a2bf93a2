//! Queue management: create, delete, list, get and set attributes.

use crate::limits::{LIST_PAGE_MAX, NAME_CHARS_MAX};
use crate::queue_attributes::{QueueAttributes, QueueAttributesUpdate};

crate::wire_struct! {
    /// Create a queue; attributes left `None` take CMQ's defaults.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct CreateQueue {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub attributes: QueueAttributesUpdate,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct CreateQueueOk {
        pub queue_id: u64,
    }
}

crate::wire_struct! {
    /// Delete a queue and every message in it.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct DeleteQueue {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    /// List queues whose name starts with `prefix` and contains `contains`
    /// (either may be empty), in creation order; `limit` 0 means the default page.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListQueues {
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub prefix: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub contains: String = string(NAME_CHARS_MAX),
        pub offset: u32,
        pub limit: u32,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct QueueSummary {
        pub queue_id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListQueuesOk {
        /// Queues matching the filter, not just this page.
        pub total: u32,
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(8)"))]
        pub queues: Vec<QueueSummary> = list(LIST_PAGE_MAX as usize),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetQueueAttributes {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    /// Change some attributes; answers with the queue's new state.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SetQueueAttributes {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub attributes: QueueAttributesUpdate,
    }
}

crate::wire_struct! {
    /// A queue's configuration and live counts. Times are Unix milliseconds.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct QueueInfo {
        pub queue_id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub attributes: QueueAttributes,
        pub create_time_ms: u64,
        pub last_modify_time_ms: u64,
        /// Ready to be received (CMQ activeMsgNum).
        pub active_msg_num: u64,
        /// Received and not yet deleted nor returned (CMQ inactiveMsgNum).
        pub inactive_msg_num: u64,
        /// Sent with a delay that has not yet passed (CMQ delayMsgNum).
        pub delay_msg_num: u64,
        /// Deleted but still rewindable (CMQ rewindMsgNum).
        pub rewind_msg_num: u64,
        /// Enqueue time of the oldest unconsumed message, 0 if none (CMQ minMsgTime).
        pub min_msg_time_ms: u64,
        /// The shard that owns the queue.
        pub shard: u16,
    }
}
