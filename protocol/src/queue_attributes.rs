//! Queue attributes: CMQ's names, ranges and defaults, plus our flush policy.
//!
//! Ranges follow the attribute table of CMQ's API (§7.1 of the HTTP contract).
//! `maxMsgHeapNum` accepts values down to 1 rather than CMQ's 1,000,000: a
//! self-hosted broker has no reason to forbid small bounded queues.

use crate::wire::{Reader, Wire, Writer};
use crate::DecodeError;

/// An inclusive range with a default, for one numeric attribute.
#[derive(Debug, Clone, Copy)]
pub struct AttrRange {
    pub name: &'static str,
    pub min: u64,
    pub max: u64,
    pub default: u64,
}

impl AttrRange {
    pub fn check(&self, v: u64) -> Result<u64, String> {
        if v < self.min || v > self.max {
            Err(format!("{}: {} is out of range {}..={}", self.name, v, self.min, self.max))
        } else {
            Ok(v)
        }
    }
}

pub const MAX_MSG_HEAP_NUM: AttrRange =
    AttrRange { name: "maxMsgHeapNum", min: 1, max: 1_000_000_000, default: 100_000_000 };
pub const POLLING_WAIT_SECONDS: AttrRange = AttrRange { name: "pollingWaitSeconds", min: 0, max: 30, default: 0 };
pub const VISIBILITY_TIMEOUT: AttrRange = AttrRange { name: "visibilityTimeout", min: 1, max: 43_200, default: 30 };
pub const MAX_MSG_SIZE: AttrRange = AttrRange { name: "maxMsgSize", min: 1024, max: 1_048_576, default: 65_536 };
pub const MSG_RETENTION_SECONDS: AttrRange =
    AttrRange { name: "msgRetentionSeconds", min: 60, max: 1_296_000, default: 345_600 };
/// Also bounded by the queue's msgRetentionSeconds.
pub const REWIND_SECONDS: AttrRange = AttrRange { name: "rewindSeconds", min: 0, max: 43_200, default: 0 };
/// Dead-letter policy 0: moved after this many receives without a delete (CMQ MaxReceiveCount).
pub const MAX_RECEIVE_COUNT: AttrRange = AttrRange { name: "maxReceiveCount", min: 1, max: 1000, default: 0 };
/// Dead-letter policy 1: moved after this long unconsumed (CMQ MaxTimeToLive); also below msgRetentionSeconds.
pub const MAX_TIME_TO_LIVE: AttrRange = AttrRange { name: "maxTimeToLive", min: 300, max: 43_200, default: 0 };
/// Transaction messages: seconds before the broker first asks the producer about an unresolved half message.
pub const FIRST_QUERY_INTERVAL: AttrRange = AttrRange { name: "firstQueryInterval", min: 1, max: 43_200, default: 10 };
/// Transaction messages: how many times the broker asks before applying the queue's default.
pub const MAX_QUERY_COUNT: AttrRange = AttrRange { name: "maxQueryCount", min: 1, max: 1000, default: 5 };

const _: () = assert!(MAX_MSG_SIZE.max == crate::limits::MSG_BYTES_MAX as u64);
const _: () = assert!(MAX_MSG_SIZE.min == crate::limits::MSG_BYTES_LIMIT_MIN as u64);
const _: () = assert!(POLLING_WAIT_SECONDS.max == crate::limits::POLLING_WAIT_SECONDS_MAX as u64);

/// When a write to this queue is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum FlushPolicy {
    /// After the write-ahead log record is on stable storage (fdatasync).
    #[default]
    Sync,
    /// After the record reached the OS; fdatasync follows within the server's flush interval.
    Async,
}

impl FlushPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushPolicy::Sync => "sync",
            FlushPolicy::Async => "async",
        }
    }
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(FlushPolicy::Sync),
            "async" => Ok(FlushPolicy::Async),
            other => Err(format!("flushPolicy: {other:?} is not sync or async")),
        }
    }
}

impl Wire for FlushPolicy {
    fn encode(&self, w: &mut Vec<u8>) {
        w.put_u8(match self {
            FlushPolicy::Sync => 1,
            FlushPolicy::Async => 2,
        })
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        match r.u8(field)? {
            1 => Ok(FlushPolicy::Sync),
            2 => Ok(FlushPolicy::Async),
            _ => Err(DecodeError::Invalid(field)),
        }
    }
}

/// What happens to a transaction (half) message nobody commits or rolls back
/// after `maxQueryCount` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TxDefault {
    #[default]
    Rollback,
    Commit,
}

impl TxDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            TxDefault::Rollback => "rollback",
            TxDefault::Commit => "commit",
        }
    }
}

impl std::str::FromStr for TxDefault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rollback" => Ok(TxDefault::Rollback),
            "commit" => Ok(TxDefault::Commit),
            other => Err(format!("transactionDefault: {other:?} is not commit or rollback")),
        }
    }
}

impl Wire for TxDefault {
    fn encode(&self, w: &mut Vec<u8>) {
        w.put_u8(match self {
            TxDefault::Rollback => 1,
            TxDefault::Commit => 2,
        })
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        match r.u8(field)? {
            1 => Ok(TxDefault::Rollback),
            2 => Ok(TxDefault::Commit),
            _ => Err(DecodeError::Invalid(field)),
        }
    }
}

crate::wire_struct! {
    /// A queue's complete configuration.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct QueueAttributes {
        pub max_msg_heap_num: u64,
        pub polling_wait_seconds: u32,
        pub visibility_timeout: u32,
        pub max_msg_size: u32,
        pub msg_retention_seconds: u32,
        pub rewind_seconds: u32,
        pub flush_policy: FlushPolicy,
        /// Dead-letter queue name; empty = no dead-letter policy.
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub dead_letter_queue: String = string(crate::limits::NAME_CHARS_MAX),
        /// Policy 0: receives without delete before the move (0 = not this policy).
        pub max_receive_count: u32,
        /// Policy 1: seconds unconsumed before the move (0 = not this policy).
        pub max_time_to_live: u32,
        pub first_query_interval: u32,
        pub max_query_count: u32,
        pub transaction_default: TxDefault,
    }
}

crate::wire_struct! {
    /// A partial configuration: `None` keeps the current (or default) value.
    /// `dead_letter_queue: Some("")` removes the dead-letter policy.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct QueueAttributesUpdate {
        pub max_msg_heap_num: Option<u64>,
        pub polling_wait_seconds: Option<u32>,
        pub visibility_timeout: Option<u32>,
        pub max_msg_size: Option<u32>,
        pub msg_retention_seconds: Option<u32>,
        pub rewind_seconds: Option<u32>,
        pub flush_policy: Option<FlushPolicy>,
        #[cfg_attr(test, proptest(strategy = "proptest::option::of(crate::testing::text())"))]
        pub dead_letter_queue: Option<String>,
        pub max_receive_count: Option<u32>,
        pub max_time_to_live: Option<u32>,
        pub first_query_interval: Option<u32>,
        pub max_query_count: Option<u32>,
        pub transaction_default: Option<TxDefault>,
    }
}

impl QueueAttributes {
    /// CMQ's defaults, with the given flush policy (the server's `--flush`).
    pub fn defaults(flush_policy: FlushPolicy) -> QueueAttributes {
        QueueAttributes {
            max_msg_heap_num: MAX_MSG_HEAP_NUM.default,
            polling_wait_seconds: POLLING_WAIT_SECONDS.default as u32,
            visibility_timeout: VISIBILITY_TIMEOUT.default as u32,
            max_msg_size: MAX_MSG_SIZE.default as u32,
            msg_retention_seconds: MSG_RETENTION_SECONDS.default as u32,
            rewind_seconds: REWIND_SECONDS.default as u32,
            flush_policy,
            dead_letter_queue: String::new(),
            max_receive_count: 0,
            max_time_to_live: 0,
            first_query_interval: FIRST_QUERY_INTERVAL.default as u32,
            max_query_count: MAX_QUERY_COUNT.default as u32,
            transaction_default: TxDefault::Rollback,
        }
    }

    /// Whether this queue moves messages to a dead-letter queue.
    pub fn has_dead_letter(&self) -> bool {
        !self.dead_letter_queue.is_empty()
    }

    /// Applies an update, checking every range; the error names the attribute.
    pub fn updated(&self, u: &QueueAttributesUpdate) -> Result<QueueAttributes, String> {
        let narrow = |v: u64| v as u32;
        let mut out = QueueAttributes {
            max_msg_heap_num: MAX_MSG_HEAP_NUM.check(u.max_msg_heap_num.unwrap_or(self.max_msg_heap_num))?,
            polling_wait_seconds: narrow(
                POLLING_WAIT_SECONDS.check(u.polling_wait_seconds.unwrap_or(self.polling_wait_seconds).into())?,
            ),
            visibility_timeout: narrow(
                VISIBILITY_TIMEOUT.check(u.visibility_timeout.unwrap_or(self.visibility_timeout).into())?,
            ),
            max_msg_size: narrow(MAX_MSG_SIZE.check(u.max_msg_size.unwrap_or(self.max_msg_size).into())?),
            msg_retention_seconds: narrow(
                MSG_RETENTION_SECONDS.check(u.msg_retention_seconds.unwrap_or(self.msg_retention_seconds).into())?,
            ),
            rewind_seconds: narrow(REWIND_SECONDS.check(u.rewind_seconds.unwrap_or(self.rewind_seconds).into())?),
            flush_policy: u.flush_policy.unwrap_or(self.flush_policy),
            dead_letter_queue: u.dead_letter_queue.clone().unwrap_or_else(|| self.dead_letter_queue.clone()),
            max_receive_count: u.max_receive_count.unwrap_or(self.max_receive_count),
            max_time_to_live: u.max_time_to_live.unwrap_or(self.max_time_to_live),
            first_query_interval: narrow(
                FIRST_QUERY_INTERVAL.check(u.first_query_interval.unwrap_or(self.first_query_interval).into())?,
            ),
            max_query_count: narrow(MAX_QUERY_COUNT.check(u.max_query_count.unwrap_or(self.max_query_count).into())?),
            transaction_default: u.transaction_default.unwrap_or(self.transaction_default),
        };
        if out.rewind_seconds > out.msg_retention_seconds {
            return Err(format!(
                "rewindSeconds: {} exceeds msgRetentionSeconds {}",
                out.rewind_seconds, out.msg_retention_seconds
            ));
        }
        out.check_dead_letter(u)?;
        Ok(out)
    }

    /// The dead-letter policy is a queue plus exactly one of the two limits.
    /// Setting one limit clears the other, so switching policies is one update.
    fn check_dead_letter(&mut self, u: &QueueAttributesUpdate) -> Result<(), String> {
        if u.max_receive_count.is_some_and(|n| n > 0) && u.max_time_to_live.is_none() {
            self.max_time_to_live = 0;
        }
        if u.max_time_to_live.is_some_and(|n| n > 0) && u.max_receive_count.is_none() {
            self.max_receive_count = 0;
        }
        if self.dead_letter_queue.is_empty() {
            self.max_receive_count = 0;
            self.max_time_to_live = 0;
            if u.max_receive_count.is_some_and(|n| n > 0) || u.max_time_to_live.is_some_and(|n| n > 0) {
                return Err("deadLetterQueueName: maxReceiveCount/maxTimeToLive need a dead-letter queue".into());
            }
            return Ok(());
        }
        crate::names::validate_name("deadLetterQueueName", &self.dead_letter_queue)?;
        match (self.max_receive_count, self.max_time_to_live) {
            (0, 0) => Err("deadLetterQueueName: set maxReceiveCount or maxTimeToLive".into()),
            (n, 0) => MAX_RECEIVE_COUNT.check(n.into()).map(|_| ()),
            (0, t) => {
                MAX_TIME_TO_LIVE.check(t.into())?;
                if t >= self.msg_retention_seconds {
                    return Err(format!(
                        "maxTimeToLive: {t} must be below msgRetentionSeconds {}",
                        self.msg_retention_seconds
                    ));
                }
                Ok(())
            }
            _ => Err("maxReceiveCount: a dead-letter policy uses maxReceiveCount or maxTimeToLive, not both".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_cmqs() {
        let d = QueueAttributes::defaults(FlushPolicy::Sync);
        assert_eq!(d.visibility_timeout, 30);
        assert_eq!(d.max_msg_size, 65_536);
        assert_eq!(d.msg_retention_seconds, 345_600);
        assert_eq!(d.polling_wait_seconds, 0);
        assert_eq!(d.rewind_seconds, 0);
        assert_eq!(d.max_msg_heap_num, 100_000_000);
        assert_eq!(d.updated(&QueueAttributesUpdate::default()), Ok(d));
    }

    #[test]
    fn every_range_is_checked_at_its_boundaries() {
        let d = QueueAttributes::defaults(FlushPolicy::Sync);
        type MakeUpdate = fn(u64) -> QueueAttributesUpdate;
        let cases: [(MakeUpdate, AttrRange); 6] = [
            (|v| QueueAttributesUpdate { max_msg_heap_num: Some(v), ..Default::default() }, MAX_MSG_HEAP_NUM),
            (
                |v| QueueAttributesUpdate { polling_wait_seconds: Some(v as u32), ..Default::default() },
                POLLING_WAIT_SECONDS,
            ),
            (
                |v| QueueAttributesUpdate { visibility_timeout: Some(v as u32), ..Default::default() },
                VISIBILITY_TIMEOUT,
            ),
            (|v| QueueAttributesUpdate { max_msg_size: Some(v as u32), ..Default::default() }, MAX_MSG_SIZE),
            (
                |v| QueueAttributesUpdate { msg_retention_seconds: Some(v as u32), ..Default::default() },
                MSG_RETENTION_SECONDS,
            ),
            (|v| QueueAttributesUpdate { rewind_seconds: Some(v as u32), ..Default::default() }, REWIND_SECONDS),
        ];
        for (make, range) in cases {
            assert!(d.updated(&make(range.min)).is_ok(), "{} min", range.name);
            assert!(d.updated(&make(range.max)).is_ok(), "{} max", range.name);
            if range.min > 0 {
                let err = d.updated(&make(range.min - 1)).expect_err("below min");
                assert!(err.starts_with(range.name), "{err}");
            }
            let err = d.updated(&make(range.max + 1)).expect_err("above max");
            assert!(err.starts_with(range.name), "{err}");
        }
    }

    #[test]
    fn dead_letter_policy_rules() {
        let d = QueueAttributes::defaults(FlushPolicy::Sync);
        let dlq = |mrc: Option<u32>, ttl: Option<u32>| QueueAttributesUpdate {
            dead_letter_queue: Some("dlq".into()),
            max_receive_count: mrc,
            max_time_to_live: ttl,
            ..Default::default()
        };
        let a = d.updated(&dlq(Some(3), None)).expect("count policy");
        assert_eq!((a.max_receive_count, a.max_time_to_live), (3, 0));
        let b =
            a.updated(&QueueAttributesUpdate { max_time_to_live: Some(300), ..Default::default() }).expect("switch");
        assert_eq!((b.max_receive_count, b.max_time_to_live), (0, 300));
        assert!(d.updated(&dlq(None, None)).expect_err("no limit").contains("maxReceiveCount"));
        assert!(d.updated(&dlq(Some(1001), None)).expect_err("range").starts_with("maxReceiveCount"));
        assert!(d.updated(&dlq(None, Some(299))).expect_err("range").starts_with("maxTimeToLive"));
        assert!(d.updated(&dlq(Some(1), Some(300))).is_err(), "both");
        let no_queue = QueueAttributesUpdate { max_receive_count: Some(3), ..Default::default() };
        assert!(d.updated(&no_queue).is_err());
        let cleared =
            a.updated(&QueueAttributesUpdate { dead_letter_queue: Some(String::new()), ..Default::default() });
        assert_eq!(cleared.map(|c| (c.has_dead_letter(), c.max_receive_count)), Ok((false, 0)));
        let bad_name = QueueAttributesUpdate {
            dead_letter_queue: Some("9x".into()),
            max_receive_count: Some(1),
            ..Default::default()
        };
        assert!(d.updated(&bad_name).expect_err("name").starts_with("deadLetterQueueName"));
    }

    #[test]
    fn rewind_cannot_exceed_retention() {
        let d = QueueAttributes::defaults(FlushPolicy::Sync);
        let u =
            QueueAttributesUpdate { msg_retention_seconds: Some(60), rewind_seconds: Some(61), ..Default::default() };
        assert!(d.updated(&u).expect_err("rewind > retention").starts_with("rewindSeconds"));
    }
}
