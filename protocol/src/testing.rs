//! Proptest strategies for fields whose values must respect wire limits.

use bytes::Bytes;
use proptest::prelude::*;

/// Any Unicode text of at most 16 characters: at most 64 bytes in UTF-8, so it
/// fits every name-sized field (24 characters could reach 96 bytes and made
/// round trips of `contains`, `prefix`, `routing_key` fail now and then).
pub fn text() -> impl Strategy<Value = String> {
    ".{0,16}"
}

/// ASCII text that fits a 64-byte field.
pub fn ascii_text() -> impl Strategy<Value = String> {
    "[ -~]{0,24}"
}

pub fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_-]{0,63}"
}

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

pub fn bodies() -> impl Strategy<Value = Vec<Bytes>> {
    proptest::collection::vec(bytes(48), 0..=crate::limits::BATCH_MSGS_MAX)
}

pub fn small_vec<T: Arbitrary>(max: usize) -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec(any::<T>(), 0..=max)
}

/// An idempotency key: none, or 1..=IDEMPOTENCY_KEY_BYTES_MAX bytes.
pub fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        proptest::collection::vec(any::<u8>(), 1..=crate::limits::IDEMPOTENCY_KEY_BYTES_MAX).prop_map(Bytes::from),
    ]
}

/// A batch's keys: none, or 1..=16 keys of which some may be empty.
pub fn keys() -> impl Strategy<Value = Vec<Bytes>> {
    proptest::collection::vec(bytes(crate::limits::IDEMPOTENCY_KEY_BYTES_MAX + 1), 0..=crate::limits::BATCH_MSGS_MAX)
}
