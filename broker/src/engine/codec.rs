//! The one codec of log records (`record.rs`) and the catalog
//! (`catalog.rs`): the protocol's primitive encoding (little-endian
//! integers, `u16`-length strings, `u16`-counted lists) read with its
//! [`Reader`], and [`log_struct!`], which generates a struct's encoder and
//! decoder from its fields in order.
//!
//! It differs from the protocol's `Wire` in three ways the log needs:
//! encoding is all or nothing (a count or length past its field is an
//! error naming the field, never a truncation: a record that cannot be
//! read back must not be written); payloads are read in place from the
//! log (`Reader<&[u8]>`, nothing copied); and message bodies are never
//! copied into the encoding: [`Out`] notes where each goes and the log
//! gathers them with the fixed fields in one write.

use bytes::Bytes;
use cmq_protocol::wire::{Reader, Wire};
use cmq_protocol::{DecodeError, QueueAttributes, RedriveState};

/// A reader over a payload borrowed from the log.
pub type LogReader<'a> = Reader<&'a [u8]>;

/// A count or length that does not fit its field; names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong(pub &'static str);

/// Where a body sits inside a payload (replay path): offset from the start
/// of the record payload, and the body's length. A suffix, if any, follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySpan {
    pub offset: u32,
    pub len: u32,
}

/// An encoding in progress: fixed fields are written to a (reused)
/// buffer; bodies are referenced at the place they go.
pub struct Out<'s, 'r> {
    buf: &'s mut Vec<u8>,
    /// `(buffer length when the body was reached, body)`, in order.
    holes: Vec<(usize, &'r [u8])>,
}

impl<'s, 'r> Out<'s, 'r> {
    pub fn new(buf: &'s mut Vec<u8>) -> Self {
        buf.clear();
        Out { buf, holes: Vec::new() }
    }

    pub fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }

    /// Bytes encoded so far, bodies included (the offset of the next one).
    pub fn position(&self) -> usize {
        self.buf.len() + self.holes.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    /// A body (or suffix) goes here, referenced rather than copied.
    pub fn body(&mut self, body: &'r [u8]) {
        self.holes.push((self.buf.len(), body));
    }

    /// The encoding as gathered parts, in order.
    pub fn parts(&self) -> Vec<&[u8]> {
        let mut parts = Vec::with_capacity(2 * self.holes.len() + 1);
        let mut from = 0;
        for &(at, body) in &self.holes {
            parts.push(&self.buf[from..at]);
            parts.push(body);
            from = at;
        }
        parts.push(&self.buf[from..]);
        parts
    }

    /// Where the first body goes, if there is one.
    pub fn first_hole(&self) -> Option<usize> {
        self.holes.first().map(|&(at, _)| at)
    }

    /// Whether no body was referenced (the buffer is the whole encoding).
    pub fn is_flat(&self) -> bool {
        self.holes.is_empty()
    }

    pub fn put_u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn put_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `u16` count or length of `n`.
    pub fn put_count(&mut self, n: usize, field: &'static str) -> Result<(), TooLong> {
        self.put_u16(u16::try_from(n).map_err(|_| TooLong(field))?);
        Ok(())
    }

    /// A `u32` count or length of `n`.
    pub fn put_len32(&mut self, n: usize, field: &'static str) -> Result<(), TooLong> {
        self.put_u32(u32::try_from(n).map_err(|_| TooLong(field))?);
        Ok(())
    }
}

/// A value with a log encoding. `get` reads exactly what `put` wrote.
pub trait LogValue: Sized {
    /// Fewest bytes an encoding takes: a count is checked against the
    /// bytes left before anything is allocated.
    const MIN_BYTES: usize;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, field: &'static str) -> Result<(), TooLong>;
    fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError>;
}

macro_rules! log_int {
    ($($t:ty => $get:ident;)*) => {$(
        impl LogValue for $t {
            const MIN_BYTES: usize = std::mem::size_of::<$t>();
            fn put<'r>(&'r self, out: &mut Out<'_, 'r>, _: &'static str) -> Result<(), TooLong> {
                out.buf().extend_from_slice(&self.to_le_bytes());
                Ok(())
            }
            fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
                r.$get(field)
            }
        }
    )*};
}

log_int! {
    u8 => u8;
    u16 => u16;
    u32 => u32;
    u64 => u64;
    u128 => u128;
}

impl LogValue for bool {
    const MIN_BYTES: usize = 1;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, _: &'static str) -> Result<(), TooLong> {
        out.put_u8(u8::from(*self));
        Ok(())
    }
    fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.bool(field)
    }
}

/// A `u16`-length string, whole. Fields with a tighter limit name it
/// (`= str(MAX)`); this is the limit of the length field itself.
impl LogValue for String {
    const MIN_BYTES: usize = 2;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, field: &'static str) -> Result<(), TooLong> {
        put_str(out, self, field)
    }
    fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.string(field, usize::from(u16::MAX))
    }
}

/// Raw bytes of a fixed length (a subscription's signing secret).
impl LogValue for [u8; 16] {
    const MIN_BYTES: usize = 16;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, _: &'static str) -> Result<(), TooLong> {
        out.buf().extend_from_slice(self);
        Ok(())
    }
    fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let mut v = [0; 16];
        v.copy_from_slice(r.take(16, field)?);
        Ok(v)
    }
}

impl<A: LogValue, B: LogValue> LogValue for (A, B) {
    const MIN_BYTES: usize = A::MIN_BYTES + B::MIN_BYTES;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, field: &'static str) -> Result<(), TooLong> {
        self.0.put(out, field)?;
        self.1.put(out, field)
    }
    fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok((A::get(r, field)?, B::get(r, field)?))
    }
}

impl<A: LogValue, B: LogValue, C: LogValue> LogValue for (A, B, C) {
    const MIN_BYTES: usize = A::MIN_BYTES + B::MIN_BYTES + C::MIN_BYTES;
    fn put<'r>(&'r self, out: &mut Out<'_, 'r>, field: &'static str) -> Result<(), TooLong> {
        self.0.put(out, field)?;
        self.1.put(out, field)?;
        self.2.put(out, field)
    }
    fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok((A::get(r, field)?, B::get(r, field)?, C::get(r, field)?))
    }
}

/// The most bytes a `QueueAttributes` encoding takes: eleven integers of
/// at most 8 bytes, two one-byte enums and a name of at most
/// NAME_CHARS_MAX bytes with its length (about 120 bytes; rounded up).
pub const QUEUE_ATTRIBUTES_BYTES_MAX: usize = 11 * 8 + 2 + 2 + cmq_protocol::limits::NAME_CHARS_MAX;

/// A protocol value embedded in a record: its `Wire` encoding, read from a
/// copy of at most `max` bytes (the protocol's reader owns its buffer).
fn get_wire<T: Wire>(r: &mut LogReader<'_>, field: &'static str, max: usize) -> Result<T, DecodeError> {
    let window = Bytes::copy_from_slice(&r.rest()[..r.remaining().min(max)]);
    let mut inner = Reader::new(window.clone());
    let v = T::decode(&mut inner, field)?;
    r.take(window.len() - inner.remaining(), field)?;
    Ok(v)
}

/// Protocol values a record or the catalog embeds, in their `Wire`
/// encoding, with the most bytes each takes.
macro_rules! log_via_wire {
    ($($t:ty, $max:expr;)*) => {$(
        impl LogValue for $t {
            const MIN_BYTES: usize = 1;
            fn put<'r>(&'r self, out: &mut Out<'_, 'r>, _: &'static str) -> Result<(), TooLong> {
                self.encode(out.buf());
                Ok(())
            }
            fn get(r: &mut LogReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
                get_wire(r, field, $max)
            }
        }
    )*};
}

log_via_wire! {
    QueueAttributes, QUEUE_ATTRIBUTES_BYTES_MAX;
    // One byte.
    RedriveState, 1;
}

/// A `u16`-length string, whole.
pub fn put_str(out: &mut Out<'_, '_>, v: &str, field: &'static str) -> Result<(), TooLong> {
    out.put_count(v.len(), field)?;
    out.buf().extend_from_slice(v.as_bytes());
    Ok(())
}

/// A `u16`-counted list.
pub fn put_list<'r, T: LogValue>(out: &mut Out<'_, 'r>, items: &'r [T], field: &'static str) -> Result<(), TooLong> {
    out.put_count(items.len(), field)?;
    put_items(out, items, field)
}

/// A `u32`-counted list (the catalog's sections).
pub fn put_list32<'r, T: LogValue>(out: &mut Out<'_, 'r>, items: &'r [T], field: &'static str) -> Result<(), TooLong> {
    out.put_len32(items.len(), field)?;
    put_items(out, items, field)
}

fn put_items<'r, T: LogValue>(out: &mut Out<'_, 'r>, items: &'r [T], field: &'static str) -> Result<(), TooLong> {
    items.iter().try_for_each(|item| item.put(out, field))
}

/// `n` items of at least `min_bytes` each must fit in what is left.
fn check_fits(r: &LogReader<'_>, field: &'static str, n: usize, min_bytes: usize) -> Result<(), DecodeError> {
    if n.saturating_mul(min_bytes.max(1)) > r.remaining() {
        return Err(DecodeError::Truncated(field));
    }
    Ok(())
}

/// A `u16` count of at most `max` items of at least `min_bytes` each.
pub fn get_count(
    r: &mut LogReader<'_>,
    field: &'static str,
    max: usize,
    min_bytes: usize,
) -> Result<usize, DecodeError> {
    let n = r.count(field, max)?;
    check_fits(r, field, n, min_bytes)?;
    Ok(n)
}

/// A `u16`-counted list of at most `max` items.
pub fn get_list<T: LogValue>(r: &mut LogReader<'_>, field: &'static str, max: usize) -> Result<Vec<T>, DecodeError> {
    let n = get_count(r, field, max, T::MIN_BYTES)?;
    get_items(r, field, n)
}

/// A `u32`-counted list of at most `max` items.
pub fn get_list32<T: LogValue>(r: &mut LogReader<'_>, field: &'static str, max: usize) -> Result<Vec<T>, DecodeError> {
    let n = r.u32(field)? as usize;
    if n > max {
        return Err(DecodeError::TooMany { field, got: n, max });
    }
    check_fits(r, field, n, T::MIN_BYTES)?;
    get_items(r, field, n)
}

fn get_items<T: LogValue>(r: &mut LogReader<'_>, field: &'static str, n: usize) -> Result<Vec<T>, DecodeError> {
    (0..n).map(|_| T::get(r, field)).collect()
}

/// A batch's bodies: `count u16`, then `count × (len u32, body)`.
pub fn put_bodies<'r>(out: &mut Out<'_, 'r>, bodies: &'r [Bytes], field: &'static str) -> Result<(), TooLong> {
    out.put_count(bodies.len(), field)?;
    out.holes.reserve(bodies.len());
    for body in bodies {
        out.put_len32(body.len(), field)?;
        out.body(body);
    }
    Ok(())
}

pub fn get_bodies(r: &mut LogReader<'_>, field: &'static str) -> Result<Vec<BodySpan>, DecodeError> {
    let n = usize::from(r.u16(field)?);
    check_fits(r, field, n, 4)?;
    let mut bodies = Vec::with_capacity(n.min(cmq_protocol::limits::BATCH_MSGS_MAX));
    for _ in 0..n {
        let len = r.u32(field)?;
        let offset = u32::try_from(r.position()).map_err(|_| DecodeError::Invalid(field))?;
        r.take(len as usize, field)?;
        bodies.push(BodySpan { offset, len });
    }
    Ok(bodies)
}

/// A batch's idempotency keys: nothing when no message has one, else a
/// count equal to the body count and each key with a u8 length.
pub fn put_keys(out: &mut Out<'_, '_>, keys: &[Bytes], bodies: usize, field: &'static str) -> Result<(), TooLong> {
    if keys.iter().all(|k| k.is_empty()) {
        return Ok(());
    }
    if keys.len() != bodies {
        return Err(TooLong(field));
    }
    out.put_count(keys.len(), field)?;
    for k in keys {
        out.put_u8(u8::try_from(k.len()).map_err(|_| TooLong(field))?);
        out.buf().extend_from_slice(k);
    }
    Ok(())
}

pub fn get_keys(r: &mut LogReader<'_>, field: &'static str, bodies: usize) -> Result<Vec<Bytes>, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Vec::new());
    }
    if usize::from(r.u16(field)?) != bodies || bodies == 0 {
        return Err(DecodeError::Invalid(field));
    }
    (0..bodies)
        .map(|_| {
            let n = usize::from(r.u8(field)?);
            r.take(n, field).map(Bytes::copy_from_slice)
        })
        .collect()
}

/// One body and what follows it: `body_len u32, data_len u32`, then the
/// body and its suffix (`data_len` bytes in all).
pub fn put_data<'r>(
    out: &mut Out<'_, 'r>,
    body: &'r Bytes,
    suffix: &'r Bytes,
    field: &'static str,
) -> Result<(), TooLong> {
    out.put_len32(body.len(), field)?;
    out.put_len32(body.len() + suffix.len(), field)?;
    out.body(body);
    out.body(suffix);
    Ok(())
}

/// The body's span; its suffix is the rest of the `data_len` bytes.
pub fn get_data(r: &mut LogReader<'_>, field: &'static str) -> Result<BodySpan, DecodeError> {
    let body_len = r.u32(field)?;
    let data_len = r.u32(field)?;
    if body_len > data_len {
        return Err(DecodeError::Invalid(field));
    }
    let offset = u32::try_from(r.position()).map_err(|_| DecodeError::Invalid(field))?;
    r.take(data_len as usize, field)?;
    Ok(BodySpan { offset, len: body_len })
}

/// The bytes of `span` in `payload`.
pub fn span_bytes(payload: &[u8], span: &BodySpan) -> Option<Bytes> {
    payload.get(span.offset as usize..span.offset as usize + span.len as usize).map(Bytes::copy_from_slice)
}

/// Declares a struct whose log encoding is its fields in order. A field may
/// name a codec (default: the field type's [`LogValue`]):
/// - `= str(MAX)`: a string of at most MAX bytes;
/// - `= strs(ITEMS, BYTES)`: a `u16`-counted list of such strings;
/// - `= list(MAX)` / `= list32(MAX)`: a `u16`- / `u32`-counted list;
/// - `= bodies`: a batch's bodies; `= keys(BODIES)`: its trailing keys;
/// - `= data(SUFFIX)`: one body followed by the field SUFFIX, whose own
///   codec is `= after(BODY)` (it holds the bytes after the body).
///
/// A struct generic in `B` (the body representation) is encoded with
/// `Bytes` bodies and decoded with [`BodySpan`]s; `resolve` turns the
/// decoded form back into bytes (to check a record decodes to itself).
#[macro_export]
macro_rules! log_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<B> {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty $(= $codec:ident $(($($arg:tt)*))?)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name<B> {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name<bytes::Bytes> {
            pub fn put<'r>(
                &'r self,
                out: &mut $crate::engine::codec::Out<'_, 'r>,
                _field: &'static str,
            ) -> Result<(), $crate::engine::codec::TooLong> {
                $( $crate::log_struct!(@put out, self, $field $(, $codec $(($($arg)*))?)?); )*
                Ok(())
            }
        }

        impl $name<$crate::engine::codec::BodySpan> {
            pub fn get(
                r: &mut $crate::engine::codec::LogReader<'_>,
                _field: &'static str,
            ) -> Result<Self, cmq_protocol::DecodeError> {
                $( let $field = $crate::log_struct!(@get r, $ty, $field $(, $codec $(($($arg)*))?)?); )*
                Ok($name { $($field),* })
            }

            /// This record with its bodies read out of `payload`.
            pub fn resolve(&self, payload: &[u8]) -> Option<$name<bytes::Bytes>> {
                Some($name {
                    $( $field: $crate::log_struct!(@resolve self, payload, $field $(, $codec $(($($arg)*))?)?), )*
                })
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty $(= $codec:ident $(($($arg:tt)*))?)? ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $crate::engine::codec::LogValue for $name {
            const MIN_BYTES: usize = 0 $(+ $crate::log_struct!(@min $ty $(, $codec)?))*;
            fn put<'r>(
                &'r self,
                out: &mut $crate::engine::codec::Out<'_, 'r>,
                _field: &'static str,
            ) -> Result<(), $crate::engine::codec::TooLong> {
                $( $crate::log_struct!(@put out, self, $field $(, $codec $(($($arg)*))?)?); )*
                Ok(())
            }
            fn get(
                r: &mut $crate::engine::codec::LogReader<'_>,
                _field: &'static str,
            ) -> Result<Self, cmq_protocol::DecodeError> {
                $( let $field = $crate::log_struct!(@get r, $ty, $field $(, $codec $(($($arg)*))?)?); )*
                Ok($name { $($field),* })
            }
        }
    };

    (@min $ty:ty) => { <$ty as $crate::engine::codec::LogValue>::MIN_BYTES };
    (@min $ty:ty, list32) => { 4 };
    (@min $ty:ty, $codec:ident) => { 2 };

    (@put $out:ident, $s:ident, $f:ident) => {
        $crate::engine::codec::LogValue::put(&$s.$f, $out, stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, str($max:expr)) => {
        $crate::engine::codec::put_str($out, &$s.$f, stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, strs($items:expr, $max:expr)) => {
        $crate::engine::codec::put_list($out, &$s.$f, stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, list($max:expr)) => {
        $crate::engine::codec::put_list($out, &$s.$f, stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, list32($max:expr)) => {
        $crate::engine::codec::put_list32($out, &$s.$f, stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, bodies) => {
        $crate::engine::codec::put_bodies($out, &$s.$f, stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, keys($bodies:ident)) => {
        $crate::engine::codec::put_keys($out, &$s.$f, $s.$bodies.len(), stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, data($suffix:ident)) => {
        $crate::engine::codec::put_data($out, &$s.$f, &$s.$suffix, stringify!($f))?
    };
    (@put $out:ident, $s:ident, $f:ident, after($body:ident)) => {};

    (@get $r:ident, $ty:ty, $f:ident) => {
        <$ty as $crate::engine::codec::LogValue>::get($r, stringify!($f))?
    };
    (@get $r:ident, $ty:ty, $f:ident, str($max:expr)) => { $r.string(stringify!($f), $max)? };
    (@get $r:ident, $ty:ty, $f:ident, strs($items:expr, $max:expr)) => {
        cmq_protocol::wire::decode_strs($r, stringify!($f), $items, $max)?
    };
    (@get $r:ident, $ty:ty, $f:ident, list($max:expr)) => {
        $crate::engine::codec::get_list($r, stringify!($f), $max)?
    };
    (@get $r:ident, $ty:ty, $f:ident, list32($max:expr)) => {
        $crate::engine::codec::get_list32($r, stringify!($f), $max)?
    };
    (@get $r:ident, $ty:ty, $f:ident, bodies) => { $crate::engine::codec::get_bodies($r, stringify!($f))? };
    (@get $r:ident, $ty:ty, $f:ident, keys($bodies:ident)) => {
        $crate::engine::codec::get_keys($r, stringify!($f), $bodies.len())?
    };
    (@get $r:ident, $ty:ty, $f:ident, data($suffix:ident)) => { $crate::engine::codec::get_data($r, stringify!($f))? };
    (@get $r:ident, $ty:ty, $f:ident, after($body:ident)) => { bytes::Bytes::new() };

    (@resolve $s:ident, $p:ident, $f:ident, bodies) => {
        $s.$f.iter().map(|span| $crate::engine::codec::span_bytes($p, span)).collect::<Option<Vec<_>>>()?
    };
    (@resolve $s:ident, $p:ident, $f:ident, data($suffix:ident)) => { $crate::engine::codec::span_bytes($p, &$s.$f)? };
    (@resolve $s:ident, $p:ident, $f:ident, after($body:ident)) => {
        bytes::Bytes::copy_from_slice($p.get(($s.$body.offset + $s.$body.len) as usize..)?)
    };
    (@resolve $s:ident, $p:ident, $f:ident $(, $codec:ident $(($($arg:tt)*))?)?) => { $s.$f.clone() };
}

#[cfg(test)]
pub mod gold;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_attributes_fit_their_window() {
        let mut a = QueueAttributes::defaults(cmq_protocol::FlushPolicy::Sync);
        a.dead_letter_queue = "d".repeat(cmq_protocol::limits::NAME_CHARS_MAX);
        a.max_msg_heap_num = u64::MAX;
        let mut buf = Vec::new();
        a.encode(&mut buf);
        assert!(buf.len() <= QUEUE_ATTRIBUTES_BYTES_MAX, "{} bytes", buf.len());
        // Read back in place, followed by other bytes it must not take.
        buf.extend_from_slice(&[1, 2, 3]);
        let mut r = Reader::over(&buf);
        assert_eq!(QueueAttributes::get(&mut r, "attrs"), Ok(a));
        assert_eq!(r.remaining(), 3);
    }

    #[test]
    fn gathered_parts_put_bodies_in_place() {
        let body = Bytes::from_static(b"BODY");
        let mut buf = Vec::new();
        let mut out = Out::new(&mut buf);
        out.put_u8(1);
        out.body(&body);
        out.put_u8(2);
        assert_eq!(out.position(), 6);
        assert_eq!(out.parts().concat(), b"\x01BODY\x02");
    }
}
