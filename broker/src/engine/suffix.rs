//! What the log stores right after some message bodies: the producer group
//! of a half message, or the `MessageOrigin` of a moved message (its
//! protocol encoding, so a delivery can copy it into a response as is).
//! An entry's flags say which one follows.

use bytes::Bytes;
use cmq_protocol::wire::{Reader, Wire, Writer};
use cmq_protocol::{ErrorCode, MessageOrigin};

use crate::engine::error::EngineError;
use crate::engine::message_index::{Entry, FLAG_GROUP, FLAG_ORIGIN};
use crate::engine::record_log::Log;

/// Bytes of a `MessageOrigin` after its queue name: original id, first enqueue time.
const ORIGIN_FIXED_BYTES: u32 = 16;

pub fn encode_origin(o: &MessageOrigin) -> Bytes {
    let mut w = Vec::with_capacity(2 + o.source_queue.len() + ORIGIN_FIXED_BYTES as usize);
    o.encode(&mut w);
    Bytes::from(w)
}

pub fn encode_group(group: &str) -> Bytes {
    let mut w = Vec::with_capacity(2 + group.len());
    w.put_str(group);
    Bytes::from(w)
}

fn corrupt(what: &str) -> EngineError {
    EngineError::new(ErrorCode::INTERNAL, format!("unreadable {what} in the log"))
}

/// Length of the suffix starting at `pos`, for an entry with `flags`.
fn suffix_len_at<L: Log + ?Sized>(log: &L, pos: u64, flags: u8) -> Result<u32, EngineError> {
    if flags & (FLAG_ORIGIN | FLAG_GROUP) == 0 {
        return Ok(0);
    }
    let raw = log.read(pos, 2)?;
    let name_len = u32::from(u16::from_le_bytes([raw[0], raw[1]]));
    Ok(if flags & FLAG_ORIGIN != 0 { 2 + name_len + ORIGIN_FIXED_BYTES } else { 2 + name_len })
}

/// Bytes of the suffix that follows an entry's body (empty if none).
pub fn suffix_of<'a, L: Log + ?Sized>(log: &'a L, e: &Entry) -> Result<&'a [u8], EngineError> {
    let pos = e.body_pos + u64::from(e.body_len);
    let len = suffix_len_at(log, pos, e.flags)?;
    if len == 0 {
        return Ok(&[]);
    }
    log.read(pos, len)
}

/// The encoded origin following a body at `body_pos` (for deliveries).
pub fn origin_bytes<L: Log + ?Sized>(log: &L, body_pos: u64, body_len: u32) -> Result<&[u8], EngineError> {
    let pos = body_pos + u64::from(body_len);
    let len = suffix_len_at(log, pos, FLAG_ORIGIN)?;
    log.read(pos, len)
}

pub fn decode_origin(bytes: &[u8]) -> Result<MessageOrigin, EngineError> {
    let mut r = Reader::new(Bytes::copy_from_slice(bytes));
    MessageOrigin::decode(&mut r, "origin").map_err(|_| corrupt("message origin"))
}

/// The original message id inside an encoded origin, without decoding the rest.
pub fn origin_msg_id(bytes: &[u8]) -> Option<u64> {
    let name_len = usize::from(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]));
    let raw = bytes.get(2 + name_len..2 + name_len + 8)?;
    raw.try_into().ok().map(u64::from_le_bytes)
}

pub fn read_origin<L: Log + ?Sized>(log: &L, e: &Entry) -> Result<Option<MessageOrigin>, EngineError> {
    if e.flags & FLAG_ORIGIN == 0 {
        return Ok(None);
    }
    decode_origin(suffix_of(log, e)?).map(Some)
}

pub fn read_group<L: Log + ?Sized>(log: &L, e: &Entry) -> Result<String, EngineError> {
    let raw = suffix_of(log, e)?;
    let mut r = Reader::new(Bytes::copy_from_slice(raw));
    r.string("group", cmq_protocol::limits::NAME_CHARS_MAX).map_err(|_| corrupt("producer group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_id_is_found_without_decoding() {
        let o = MessageOrigin { source_queue: "orders".into(), original_msg_id: 77, first_enqueue_time_ms: 5 };
        let b = encode_origin(&o);
        assert_eq!(origin_msg_id(&b), Some(77));
        assert_eq!(decode_origin(&b), Ok(o));
        assert_eq!(origin_msg_id(&b[..3]), None);
    }
}
