//! Expected bytes for golden tests, written field by field from a layout
//! table (never by the codec under test): little-endian integers, `str` a
//! u16 length then UTF-8.

use cmq_protocol::wire::Wire;
use cmq_protocol::QueueAttributes;

#[derive(Default)]
pub struct Gold(pub Vec<u8>);

impl Gold {
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u128(mut self, v: u128) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(self, s: &str) -> Self {
        self.u16(s.len() as u16).raw(s.as_bytes())
    }
    /// The protocol's QueueAttributes encoding (its own golden tests pin it).
    pub fn attrs(mut self, a: &QueueAttributes) -> Self {
        a.encode(&mut self.0);
        self
    }
    /// Bytes so far (an offset in the payload being written).
    pub fn offset(&self) -> u32 {
        self.0.len() as u32
    }
}
