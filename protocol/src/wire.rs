//! Primitive encoding shared by every frame payload.
//!
//! All integers are little-endian. Strings are UTF-8 with a `u16` byte-length
//! prefix; byte strings (message bodies) have a `u32` prefix and decode as
//! zero-copy slices of the received frame; lists have a `u16` item count;
//! options are a `u8` tag (0 = absent, 1 = present) followed by the value.
//! Every length and count is checked against a limit and against the bytes
//! actually left before anything is allocated.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::limits::STRING_BYTES_MAX;

/// Reads a payload front to back. Byte strings are sliced out of the
/// underlying `Bytes` without copying. `Reader<&[u8]>` reads a borrowed
/// slice (log records read in place) with the same checks; it has no byte
/// strings to slice out.
pub struct Reader<B = Bytes> {
    buf: B,
    pos: usize,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    /// A `u32`-prefixed byte string of at most `max` bytes, sliced without copying.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        self.slice_of(field, len, max)
    }

    /// A `u8`-prefixed byte string of at most `max` bytes, sliced without
    /// copying (idempotency keys).
    pub fn short_bytes(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u8(field)?);
        self.slice_of(field, len, max)
    }

    /// The next `len` bytes (at most `max`), sliced without copying.
    fn slice_of(&mut self, field: &'static str, len: usize, max: usize) -> Result<Bytes, DecodeError> {
        if len > max {
            return Err(DecodeError::TooLong { field, got: len, max });
        }
        if self.remaining() < len {
            return Err(DecodeError::Truncated(field));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }
}

impl<'a> Reader<&'a [u8]> {
    /// A reader over a borrowed slice.
    pub fn over(buf: &'a [u8]) -> Reader<&'a [u8]> {
        Reader { buf, pos: 0 }
    }
}

impl<B: AsRef<[u8]>> Reader<B> {
    pub fn remaining(&self) -> usize {
        self.buf.as_ref().len() - self.pos
    }

    /// Bytes read so far (the offset of the next one).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet, without reading them.
    pub fn rest(&self) -> &[u8] {
        &self.buf.as_ref()[self.pos..]
    }

    /// Fails unless the whole payload was consumed: trailing garbage is an
    /// error, so two encodings can never mean the same thing.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// The next `n` bytes, as they are.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(field));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf.as_ref()[start..self.pos])
    }

    fn take_array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take_array::<1>(field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take_array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take_array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take_array(field)?))
    }
    pub fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.take_array(field)?))
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid(field)),
        }
    }

    /// A `u16`-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, got: len, max });
        }
        let raw = self.take(len, field)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| DecodeError::Invalid(field))
    }

    /// A `u16` item count, checked against `max` and against the bytes left
    /// (every item takes at least one byte) before the caller allocates.
    pub fn count(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = self.u16(field)? as usize;
        if n > max {
            return Err(DecodeError::TooMany { field, got: n, max });
        }
        if n > self.remaining() {
            return Err(DecodeError::Truncated(field));
        }
        Ok(n)
    }
}

/// Appends a payload to a caller-owned buffer.
pub trait Writer {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_u128(&mut self, v: u128);
    fn put_bool(&mut self, v: bool);
    fn put_str(&mut self, v: &str);
    fn put_bytes(&mut self, v: &[u8]);
    fn put_count(&mut self, n: usize);
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u128(&mut self, v: u128) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bool(&mut self, v: bool) {
        self.push(v as u8);
    }
    /// Strings longer than `u16::MAX` bytes are truncated at a character
    /// boundary; every string field has a far smaller limit anyway.
    fn put_str(&mut self, v: &str) {
        let mut end = v.len().min(u16::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.put_u16(end as u16);
        self.extend_from_slice(&v.as_bytes()[..end]);
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.put_u32(v.len() as u32);
        self.extend_from_slice(v);
    }
    fn put_count(&mut self, n: usize) {
        debug_assert!(n <= u16::MAX as usize);
        self.put_u16(n as u16);
    }
}

/// A value with a wire encoding. `decode` reads exactly what `encode` wrote.
pub trait Wire: Sized {
    fn encode(&self, w: &mut Vec<u8>);
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError>;
}

macro_rules! wire_int {
    ($($t:ty => $put:ident, $get:ident;)*) => {$(
        impl Wire for $t {
            fn encode(&self, w: &mut Vec<u8>) { w.$put(*self) }
            fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> { r.$get(field) }
        }
    )*};
}

wire_int! {
    u8 => put_u8, u8;
    u16 => put_u16, u16;
    u32 => put_u32, u32;
    u64 => put_u64, u64;
    u128 => put_u128, u128;
    bool => put_bool, bool;
}

impl Wire for String {
    fn encode(&self, w: &mut Vec<u8>) {
        w.put_str(self)
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        r.string(field, STRING_BYTES_MAX)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn encode(&self, w: &mut Vec<u8>) {
        match self {
            None => w.put_u8(0),
            Some(v) => {
                w.put_u8(1);
                v.encode(w);
            }
        }
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        match r.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(r, field)?)),
            _ => Err(DecodeError::Invalid(field)),
        }
    }
}

/// Lists decode through [`decode_list`] with a per-field limit; this impl is
/// for encoding (and for decoding with the generic string limit, never used
/// for client-sized lists).
pub fn encode_list<T: Wire>(items: &[T], w: &mut Vec<u8>) {
    w.put_count(items.len());
    for item in items {
        item.encode(w);
    }
}

/// Decodes a `u16`-counted list of at most `max` items.
pub fn decode_list<T: Wire>(r: &mut Reader, field: &'static str, max: usize) -> Result<Vec<T>, DecodeError> {
    let n = r.count(field, max)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(T::decode(r, field)?);
    }
    Ok(out)
}

/// Decodes a `u16`-counted list of at most `max_items` strings of at most
/// `max_bytes` each (tags, filter tags, binding keys; the broker's log
/// records read their string lists with it too).
pub fn decode_strs<B: AsRef<[u8]>>(
    r: &mut Reader<B>,
    field: &'static str,
    max_items: usize,
    max_bytes: usize,
) -> Result<Vec<String>, DecodeError> {
    let n = r.count(field, max_items)?;
    // Every string takes at least its two-byte length.
    if n.saturating_mul(2) > r.remaining() {
        return Err(DecodeError::Truncated(field));
    }
    (0..n).map(|_| r.string(field, max_bytes)).collect()
}

/// An optional idempotency key at the end of a payload (protocol version
/// 3): absent (no bytes at all) when empty, else `len u8` (1..=max) and the
/// key. Absent is how a version 2 client's frame ends, so old frames decode
/// unchanged; a present length of 0 would be a second encoding of "none"
/// and is refused.
pub fn encode_trailing_key(key: &Bytes, w: &mut Vec<u8>) {
    if !key.is_empty() {
        debug_assert!(key.len() <= u8::MAX as usize);
        w.put_u8(key.len() as u8);
        w.extend_from_slice(key);
    }
}

pub fn decode_trailing_key(r: &mut Reader, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Bytes::new());
    }
    let key = r.short_bytes(field, max)?;
    if key.is_empty() {
        return Err(DecodeError::Invalid(field));
    }
    Ok(key)
}

/// An optional list of keys at the end of a payload, one per message of a
/// batch: absent when the list is empty, else `count u16` (1..=items) and
/// `count × (len u8, key)`, where a length of 0 means that message has no
/// key. The broker checks that the count matches the batch.
pub fn encode_trailing_keys(keys: &[Bytes], w: &mut Vec<u8>) {
    if !keys.is_empty() {
        w.put_count(keys.len());
        for key in keys {
            debug_assert!(key.len() <= u8::MAX as usize);
            w.put_u8(key.len() as u8);
            w.extend_from_slice(key);
        }
    }
}

pub fn decode_trailing_keys(
    r: &mut Reader,
    field: &'static str,
    items: usize,
    max: usize,
) -> Result<Vec<Bytes>, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Vec::new());
    }
    let n = r.count(field, items)?;
    if n == 0 {
        return Err(DecodeError::Invalid(field));
    }
    (0..n).map(|_| r.short_bytes(field, max)).collect()
}

/// Declares a struct whose wire form is its fields in order. A field may name
/// a codec: `= list(MAX)` for a counted list, `= string(MAX)` for a string
/// with a tighter limit than the default, `= bytes(MAX)` for a byte string,
/// `= bytes_list(ITEMS, BYTES)` for a list of byte strings,
/// `= key(BYTES)` for an optional trailing idempotency key and
/// `= keys(ITEMS, BYTES)` for an optional trailing list of them (see
/// [`encode_trailing_key`]; these must be a struct's last field).
#[macro_export]
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty $(= $codec:ident ( $($arg:expr),* ))?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $crate::wire::Wire for $name {
            #[allow(unused_variables)]
            fn encode(&self, w: &mut Vec<u8>) {
                $( $crate::wire_struct!(@encode w, self.$field $(, $codec)?); )*
            }
            #[allow(unused_variables)]
            fn decode(r: &mut $crate::wire::Reader, _field: &'static str) -> Result<Self, $crate::error::DecodeError> {
                Ok($name {
                    $( $field: $crate::wire_struct!(@decode r, $ty, stringify!($field) $(, $codec($($arg),*))?), )*
                })
            }
        }
    };
    (@encode $w:ident, $v:expr) => { $crate::wire::Wire::encode(&$v, $w) };
    (@encode $w:ident, $v:expr, list) => { $crate::wire::encode_list(&$v, $w) };
    (@encode $w:ident, $v:expr, string) => { $crate::wire::Writer::put_str($w, &$v) };
    (@encode $w:ident, $v:expr, bytes) => { $crate::wire::Writer::put_bytes($w, &$v) };
    (@encode $w:ident, $v:expr, bytes_list) => {{
        $crate::wire::Writer::put_count($w, $v.len());
        for item in $v.iter() { $crate::wire::Writer::put_bytes($w, item); }
    }};
    (@encode $w:ident, $v:expr, key) => { $crate::wire::encode_trailing_key(&$v, $w) };
    (@encode $w:ident, $v:expr, keys) => { $crate::wire::encode_trailing_keys(&$v, $w) };
    (@decode $r:ident, $ty:ty, $f:expr) => { <$ty as $crate::wire::Wire>::decode($r, $f)? };
    (@decode $r:ident, $ty:ty, $f:expr, list($max:expr)) => { $crate::wire::decode_list($r, $f, $max)? };
    (@decode $r:ident, $ty:ty, $f:expr, string($max:expr)) => { $r.string($f, $max)? };
    (@decode $r:ident, $ty:ty, $f:expr, bytes($max:expr)) => { $r.bytes($f, $max)? };
    (@decode $r:ident, $ty:ty, $f:expr, key($max:expr)) => { $crate::wire::decode_trailing_key($r, $f, $max)? };
    (@decode $r:ident, $ty:ty, $f:expr, keys($items:expr, $max:expr)) => {
        $crate::wire::decode_trailing_keys($r, $f, $items, $max)?
    };
    (@decode $r:ident, $ty:ty, $f:expr, bytes_list($items:expr, $max:expr)) => {{
        let n = $r.count($f, $items)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n { out.push($r.bytes(concat!($f, "[]"), $max)?); }
        out
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_limits_are_checked_before_reading() {
        let mut buf = Vec::new();
        buf.put_str("hello");
        let mut r = Reader::new(Bytes::from(buf.clone()));
        assert_eq!(r.string("s", 4), Err(DecodeError::TooLong { field: "s", got: 5, max: 4 }));
        let mut r = Reader::new(Bytes::from(buf));
        assert_eq!(r.string("s", 5).as_deref(), Ok("hello"));
        r.finish().expect("fully consumed");
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut r = Reader::new(Bytes::from_static(&[2, 0, 0xff, 0xfe]));
        assert_eq!(r.string("s", 10), Err(DecodeError::Invalid("s")));
    }

    #[test]
    fn count_cannot_exceed_remaining_bytes() {
        let mut r = Reader::new(Bytes::from_static(&[10, 0, 1, 2]));
        assert_eq!(r.count("l", 100), Err(DecodeError::Truncated("l")));
    }

    #[test]
    fn bytes_are_zero_copy_slices() {
        let mut buf = Vec::new();
        buf.put_bytes(b"body");
        let frame = Bytes::from(buf);
        let mut r = Reader::new(frame.clone());
        let body = r.bytes("b", 10).expect("decodes");
        assert_eq!(&body[..], b"body");
        assert_eq!(body.as_ptr(), frame[4..].as_ptr());
    }

    #[test]
    fn put_str_truncates_on_char_boundary() {
        let long = "é".repeat(40_000);
        let mut buf = Vec::new();
        buf.put_str(&long);
        let mut r = Reader::new(Bytes::from(buf));
        let back = r.string("s", usize::MAX).expect("valid utf8");
        assert!(back.len() <= u16::MAX as usize && back.chars().all(|c| c == 'é'));
    }
}
