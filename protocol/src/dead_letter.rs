//! Redrive: moving messages out of a dead-letter queue, as a background task.

use crate::limits::{LIST_PAGE_MAX, NAME_CHARS_MAX, STRING_BYTES_MAX};
use crate::wire::{Reader, Wire, Writer};
use crate::DecodeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RedriveState {
    #[default]
    Running,
    Done,
    Cancelled,
}

impl RedriveState {
    pub fn as_str(self) -> &'static str {
        match self {
            RedriveState::Running => "running",
            RedriveState::Done => "done",
            RedriveState::Cancelled => "cancelled",
        }
    }
}

impl Wire for RedriveState {
    fn encode(&self, w: &mut Vec<u8>) {
        w.put_u8(match self {
            RedriveState::Running => 1,
            RedriveState::Done => 2,
            RedriveState::Cancelled => 3,
        })
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        match r.u8(field)? {
            1 => Ok(RedriveState::Running),
            2 => Ok(RedriveState::Done),
            3 => Ok(RedriveState::Cancelled),
            _ => Err(DecodeError::Invalid(field)),
        }
    }
}

crate::wire_struct! {
    /// Move the messages of a dead-letter queue back to the queues they came
    /// from (or all to `to`), at most `rate_per_second` per second (0 = as
    /// fast as possible). Messages that arrive in the dead-letter queue after
    /// the start are left alone.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct StartRedrive {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub dead_letter_queue: String = string(NAME_CHARS_MAX),
        /// Empty: each message goes back to its source queue.
        #[cfg_attr(test, proptest(strategy = "crate::testing::ascii_text()"))]
        pub to: String = string(NAME_CHARS_MAX),
        pub rate_per_second: u32,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct RedriveInfo {
        pub id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub dead_letter_queue: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::ascii_text()"))]
        pub to: String = string(NAME_CHARS_MAX),
        pub rate_per_second: u32,
        pub state: RedriveState,
        pub moved: u64,
        pub remaining: u64,
        /// Messages that could not be moved (target queue missing), left in the dead-letter queue.
        pub failed: u64,
        pub started_ms: u64,
        pub finished_ms: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub note: String = string(STRING_BYTES_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListRedrives {}
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListRedrivesOk {
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub redrives: Vec<RedriveInfo> = list(LIST_PAGE_MAX as usize),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct CancelRedrive {
        pub id: u64,
    }
}
