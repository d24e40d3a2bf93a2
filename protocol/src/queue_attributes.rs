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
    }
}

crate::wire_struct! {
    /// A partial configuration: `None` keeps the current (or default) value.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct QueueAttributesUpdate {
        pub max_msg_heap_num: Option<u64>,
        pub polling_wait_seconds: Option<u32>,
        pub visibility_timeout: Option<u32>,
        pub max_msg_size: Option<u32>,
        pub msg_retention_seconds: Option<u32>,
        pub rewind_seconds: Option<u32>,
        pub flush_policy: Option<FlushPolicy>,
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
        }
    }

    /// Applies an update, checking every range; the error names the attribute.
    pub fn updated(&self, u: &QueueAttributesUpdate) -> Result<QueueAttributes, String> {
        let narrow = |v: u64| v as u32;
        let out = QueueAttributes {
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
        };
        if out.rewind_seconds > out.msg_retention_seconds {
            return Err(format!(
                "rewindSeconds: {} exceeds msgRetentionSeconds {}",
                out.rewind_seconds, out.msg_retention_seconds
            ));
        }
        Ok(out)
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
    fn rewind_cannot_exceed_retention() {
        let d = QueueAttributes::defaults(FlushPolicy::Sync);
        let u =
            QueueAttributesUpdate { msg_retention_seconds: Some(60), rewind_seconds: Some(61), ..Default::default() };
        assert!(d.updated(&u).expect_err("rewind > retention").starts_with("rewindSeconds"));
    }
}
