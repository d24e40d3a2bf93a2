//! Transaction (half) messages, after RocketMQ and CMQ transaction queues.
//!
//! A producer sends a half message: stored durably, invisible. It commits
//! (the message becomes visible) or rolls back (discarded) with
//! EndTransaction. If neither arrives within the queue's
//! `firstQueryInterval`, the broker asks: it pushes a TransactionCheck frame
//! over a connection that registered as a checker for the message's producer
//! group, and keeps asking (every firstQueryInterval) up to `maxQueryCount`
//! times; then it applies the queue's `transactionDefault`. The checker
//! answers with an ordinary EndTransaction request.

use bytes::Bytes;

use crate::limits::{MSG_BYTES_MAX, NAME_CHARS_MAX};

crate::wire_struct! {
    /// Store a half message; the answer is its message id, which EndTransaction names.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SendTransactionMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub producer_group: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(64)"))]
        pub body: Bytes = bytes(MSG_BYTES_MAX as usize),
    }
}

crate::wire_struct! {
    /// Commit (make visible) or roll back (discard) a half message.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct EndTransaction {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub msg_id: u64,
        pub commit: bool,
    }
}

crate::wire_struct! {
    /// This connection answers transaction checks for `producer_group` (on
    /// every shard) until it closes.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct RegisterChecker {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub producer_group: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    /// Pushed by the broker (PUSH flag, request id 0): is this half message committed?
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct TransactionCheck {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub msg_id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub producer_group: String = string(NAME_CHARS_MAX),
        /// 1 for the first check.
        pub check_count: u32,
        pub enqueue_time_ms: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(64)"))]
        pub body: Bytes = bytes(MSG_BYTES_MAX as usize),
    }
}
