//! Frame header and the two-phase frame decoder.
//!
//! ```text
//! offset size field
//!   0     4  length      u32 LE: bytes that follow this field (12 + payload)
//!   4     2  opcode      u16 LE: the operation (see `ops.rs`)
//!   6     1  flags       bit 0 RESPONSE, bit 1 ERROR, bit 2 PUSH; other bits zero
//!   7     1  reserved    sent as zero, ignored on receipt
//!   8     8  request_id  u64 LE: chosen by the client, echoed in the response
//!  16     …  payload
//! ```
//!
//! Decoding is two-phase, as in mini-redis: [`check`] says whether a whole
//! frame is buffered (and refuses oversized or impossible lengths before the
//! caller grows any buffer), then [`split`] cuts it out without copying.

use bytes::{Bytes, BytesMut};

use crate::limits::FRAME_BYTES_MAX;

/// Bytes in a frame header, length prefix included.
pub const HEADER_BYTES: usize = 16;

/// Size of the length prefix itself.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Flag bit: this frame answers the request with the same `request_id`.
pub const FLAG_RESPONSE: u8 = 0x01;
/// Flag bit: the response payload is an [`crate::ErrorBody`].
pub const FLAG_ERROR: u8 = 0x02;
/// Flag bit: a frame the broker sends on its own (not an answer), request id 0.
pub const FLAG_PUSH: u8 = 0x04;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub opcode: u16,
    pub flags: u8,
    pub request_id: u64,
}

impl FrameHeader {
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
    pub fn is_push(&self) -> bool {
        self.flags & FLAG_PUSH != 0
    }
}

/// Why the byte stream cannot be framed. Both are fatal for the connection:
/// once a length prefix is untrustworthy the stream cannot be resynchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(u64),
    #[error("frame length {0} is shorter than a frame header")]
    TooShort(u32),
}

/// Phase one: if `buf` starts with a whole frame, its total length.
/// `Ok(None)` means "incomplete, read more"; it is not an error.
pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let total = len as u64 + LENGTH_PREFIX_BYTES as u64;
    if total > FRAME_BYTES_MAX as u64 {
        return Err(FrameError::TooLarge(total));
    }
    if (total as usize) < HEADER_BYTES {
        return Err(FrameError::TooShort(len));
    }
    Ok((buf.len() >= total as usize).then_some(total as usize))
}

/// Phase two: cut the frame `check` measured off the front of `buf` and
/// split it into header and payload (the payload shares `buf`'s memory).
pub fn split(buf: &mut BytesMut, total: usize) -> (FrameHeader, Bytes) {
    let frame = buf.split_to(total).freeze();
    let header = FrameHeader {
        opcode: u16::from_le_bytes([frame[4], frame[5]]),
        flags: frame[6],
        request_id: u64::from_le_bytes(frame[8..16].try_into().expect("header is 16 bytes")),
    };
    (header, frame.slice(HEADER_BYTES..))
}

/// Starts a frame at the end of `out`; returns where it starts, for [`end`].
pub fn begin(out: &mut Vec<u8>, opcode: u16, flags: u8, request_id: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&opcode.to_le_bytes());
    out.push(flags);
    out.push(0);
    out.extend_from_slice(&request_id.to_le_bytes());
    start
}

/// Patches the length prefix of the frame begun at `start`.
pub fn end(out: &mut [u8], start: usize) {
    let len = (out.len() - start - LENGTH_PREFIX_BYTES) as u32;
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_golden_bytes() {
        let mut out = Vec::new();
        let start = begin(&mut out, 0x0201, FLAG_RESPONSE, 0x0102030405060708);
        out.extend_from_slice(b"xy");
        end(&mut out, start);
        assert_eq!(out, [14, 0, 0, 0, 0x01, 0x02, 0x01, 0, 8, 7, 6, 5, 4, 3, 2, 1, b'x', b'y']);
        let mut buf = BytesMut::from(&out[..]);
        let total = check(&buf).expect("valid").expect("complete");
        let (h, payload) = split(&mut buf, total);
        assert_eq!(h, FrameHeader { opcode: 0x0201, flags: FLAG_RESPONSE, request_id: 0x0102030405060708 });
        assert_eq!(&payload[..], b"xy");
        assert!(buf.is_empty());
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let mut out = Vec::new();
        let start = begin(&mut out, 1, 0, 7);
        out.extend_from_slice(&[9; 20]);
        end(&mut out, start);
        for cut in 0..out.len() {
            assert_eq!(check(&out[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(check(&out), Ok(Some(out.len())));
    }

    #[test]
    fn oversized_length_is_refused_from_the_prefix_alone() {
        let limit = FRAME_BYTES_MAX - LENGTH_PREFIX_BYTES as u32;
        assert_eq!(check(&limit.to_le_bytes()), Ok(None));
        let over = limit + 1;
        assert_eq!(check(&over.to_le_bytes()), Err(FrameError::TooLarge(FRAME_BYTES_MAX as u64 + 1)));
        assert!(check(&u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn impossible_short_length_is_refused() {
        assert_eq!(check(&11u32.to_le_bytes()), Err(FrameError::TooShort(11)));
        assert_eq!(check(&12u32.to_le_bytes()), Ok(None));
    }
}
