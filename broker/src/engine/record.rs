//! Log records: every state change of the engine, in the form it is written
//! to the write-ahead log and replayed from it.
//!
//! The engine never changes state except by applying a record, and applying
//! is the same code live and at recovery, so the state rebuilt from the log is
//! the state that was acknowledged. Receive-side state is logged too
//! (`Received`, `VisibilityChanged`): a message's dequeueCount drives
//! dead-lettering and must not silently reset across a restart.
//!
//! Payload layouts (little-endian; `[T]` is a u16 count then the items):
//! ```text
//! 1 QueueCreated      uid u32, time_ms u64, attrs (protocol QueueAttributes), name str16
//! 2 QueueUpdated      uid u32, time_ms u64, attrs
//! 3 QueueDeleted      uid u32, time_ms u64
//! 4 Enqueued          uid u32, first_seq u64, first_msg_id u64, enqueue_ms u64,
//!                     visible_at_ms u64, count u16, count × (len u32, body)
//! 5 Received          uid u32, time_ms u64, visible_at_ms u64, [seq u64]
//! 6 Deleted           uid u32, [seq u64]
//! 7 VisibilityChanged uid u32, seq u64, visible_at_ms u64
//! 8 Relocated         uid u32, seq u64, msg_id u64, enqueue_ms u64, visible_at_ms u64,
//!                     dequeue_count u32, first_dequeue_rel u32, state u8, len u32, body
//! ```
//!
//! `Relocated` is written by compaction: a live message from an old segment
//! copied to the head with its whole current state, so the old segment can
//! be deleted. Applying it replaces whatever replay built for that message.

use bytes::Bytes;
use cmq_protocol::wire::{Reader, Wire, Writer};
use cmq_protocol::QueueAttributes;

/// Record type bytes, as stored in the log's record header.
pub mod rtype {
    pub const QUEUE_CREATED: u8 = 1;
    pub const QUEUE_UPDATED: u8 = 2;
    pub const QUEUE_DELETED: u8 = 3;
    pub const ENQUEUED: u8 = 4;
    pub const RECEIVED: u8 = 5;
    pub const DELETED: u8 = 6;
    pub const VISIBILITY_CHANGED: u8 = 7;
    pub const RELOCATED: u8 = 8;
}

/// Where a body sits inside an `Enqueued` payload (replay path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySpan {
    /// Offset from the start of the record payload.
    pub offset: u32,
    pub len: u32,
}

/// A record. `B` is the body representation: `Bytes` when written live,
/// `BodySpan` when decoded from the log (bodies are never copied on replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<B> {
    QueueCreated { uid: u32, time_ms: u64, attrs: QueueAttributes, name: String },
    QueueUpdated { uid: u32, time_ms: u64, attrs: QueueAttributes },
    QueueDeleted { uid: u32, time_ms: u64 },
    Enqueued { uid: u32, first_seq: u64, first_msg_id: u64, enqueue_ms: u64, visible_at_ms: u64, bodies: Vec<B> },
    Received { uid: u32, time_ms: u64, visible_at_ms: u64, seqs: Vec<u64> },
    Deleted { uid: u32, seqs: Vec<u64> },
    VisibilityChanged { uid: u32, seq: u64, visible_at_ms: u64 },
    Relocated { uid: u32, seq: u64, entry: RelocatedEntry, body: B },
}

/// A message's full state as carried by a `Relocated` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocatedEntry {
    pub msg_id: u64,
    pub enqueue_ms: u64,
    pub visible_at_ms: u64,
    pub dequeue_count: u32,
    pub first_dequeue_rel: u32,
    pub state: u8,
}

/// Bytes before the body in a `Relocated` payload.
pub const RELOCATED_BODY_OFFSET: u32 = 4 + 8 + 8 + 8 + 8 + 4 + 4 + 1 + 4;

/// Bytes before the first body's length prefix in an `Enqueued` payload.
const ENQUEUED_HEADER_BYTES: u32 = 4 + 8 + 8 + 8 + 8 + 2;

/// Why a logged payload could not be decoded. At recovery this is corruption
/// that the log's checksum did not catch, or a record from a newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record type {rtype}: {reason}")]
pub struct RecordError {
    pub rtype: u8,
    pub reason: String,
}

impl<B> Record<B> {
    pub fn rtype(&self) -> u8 {
        match self {
            Record::QueueCreated { .. } => rtype::QUEUE_CREATED,
            Record::QueueUpdated { .. } => rtype::QUEUE_UPDATED,
            Record::QueueDeleted { .. } => rtype::QUEUE_DELETED,
            Record::Enqueued { .. } => rtype::ENQUEUED,
            Record::Received { .. } => rtype::RECEIVED,
            Record::Deleted { .. } => rtype::DELETED,
            Record::VisibilityChanged { .. } => rtype::VISIBILITY_CHANGED,
            Record::Relocated { .. } => rtype::RELOCATED,
        }
    }

    pub fn uid(&self) -> u32 {
        match self {
            Record::QueueCreated { uid, .. }
            | Record::QueueUpdated { uid, .. }
            | Record::QueueDeleted { uid, .. }
            | Record::Enqueued { uid, .. }
            | Record::Received { uid, .. }
            | Record::Deleted { uid, .. }
            | Record::VisibilityChanged { uid, .. }
            | Record::Relocated { uid, .. } => *uid,
        }
    }
}

/// Body spans of an `Enqueued` payload with these body lengths.
pub fn body_spans(lens: impl Iterator<Item = u32>) -> impl Iterator<Item = BodySpan> {
    let mut offset = ENQUEUED_HEADER_BYTES;
    lens.map(move |len| {
        let span = BodySpan { offset: offset + 4, len };
        offset += 4 + len;
        span
    })
}

impl Record<Bytes> {
    /// Encodes the record's payload as gathered parts: fixed fields go into
    /// `scratch`, bodies are referenced, not copied. Calls `emit` with the
    /// parts in order (the log copies them once, into its write buffer).
    pub fn encode<R>(&self, scratch: &mut Vec<u8>, emit: impl FnOnce(&[&[u8]]) -> R) -> R {
        scratch.clear();
        match self {
            Record::Enqueued { uid, first_seq, first_msg_id, enqueue_ms, visible_at_ms, bodies } => {
                scratch.put_u32(*uid);
                scratch.put_u64(*first_seq);
                scratch.put_u64(*first_msg_id);
                scratch.put_u64(*enqueue_ms);
                scratch.put_u64(*visible_at_ms);
                scratch.put_count(bodies.len());
                let header_end = scratch.len();
                for body in bodies {
                    scratch.put_u32(body.len() as u32);
                }
                let (header, lens) = scratch.split_at(header_end);
                let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + 2 * bodies.len());
                parts.push(header);
                for (len, body) in lens.chunks_exact(4).zip(bodies) {
                    parts.push(len);
                    parts.push(body);
                }
                emit(&parts)
            }
            Record::Relocated { uid, seq, entry, body } => {
                scratch.put_u32(*uid);
                scratch.put_u64(*seq);
                scratch.put_u64(entry.msg_id);
                scratch.put_u64(entry.enqueue_ms);
                scratch.put_u64(entry.visible_at_ms);
                scratch.put_u32(entry.dequeue_count);
                scratch.put_u32(entry.first_dequeue_rel);
                scratch.put_u8(entry.state);
                scratch.put_u32(body.len() as u32);
                emit(&[scratch.as_slice(), body])
            }
            _ => {
                self.encode_fixed(scratch);
                emit(&[scratch.as_slice()])
            }
        }
    }

    fn encode_fixed(&self, w: &mut Vec<u8>) {
        match self {
            Record::QueueCreated { uid, time_ms, attrs, name } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                attrs.encode(w);
                w.put_str(name);
            }
            Record::QueueUpdated { uid, time_ms, attrs } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                attrs.encode(w);
            }
            Record::QueueDeleted { uid, time_ms } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
            }
            Record::Received { uid, time_ms, visible_at_ms, seqs } => {
                w.put_u32(*uid);
                w.put_u64(*time_ms);
                w.put_u64(*visible_at_ms);
                put_seqs(w, seqs);
            }
            Record::Deleted { uid, seqs } => {
                w.put_u32(*uid);
                put_seqs(w, seqs);
            }
            Record::VisibilityChanged { uid, seq, visible_at_ms } => {
                w.put_u32(*uid);
                w.put_u64(*seq);
                w.put_u64(*visible_at_ms);
            }
            Record::Enqueued { .. } | Record::Relocated { .. } => {
                unreachable!("records with bodies are encoded as gathered parts")
            }
        }
    }
}

fn put_seqs(w: &mut Vec<u8>, seqs: &[u64]) {
    w.put_count(seqs.len());
    for s in seqs {
        w.put_u64(*s);
    }
}

/// Most sequence numbers one record may carry (a batch, or a compaction run).
const RECORD_SEQS_MAX: usize = u16::MAX as usize;

impl Record<BodySpan> {
    /// Decodes a payload read back from the log.
    pub fn decode(rtype: u8, payload: &[u8]) -> Result<Record<BodySpan>, RecordError> {
        let err = |e: cmq_protocol::DecodeError| RecordError { rtype, reason: e.to_string() };
        // Records are small except for bodies, which are skipped, so copying
        // the payload into `Bytes` for the shared reader is cheap enough only
        // for the fixed part: decode Enqueued by hand.
        if rtype == rtype::ENQUEUED {
            return decode_enqueued(payload).map_err(err);
        }
        if rtype == rtype::RELOCATED {
            return decode_relocated(payload).map_err(err);
        }
        let mut r = Reader::new(Bytes::copy_from_slice(payload));
        let rec = match rtype {
            rtype::QUEUE_CREATED => Record::QueueCreated {
                uid: r.u32("uid").map_err(err)?,
                time_ms: r.u64("time_ms").map_err(err)?,
                attrs: QueueAttributes::decode(&mut r, "attrs").map_err(err)?,
                name: r.string("name", cmq_protocol::limits::NAME_CHARS_MAX).map_err(err)?,
            },
            rtype::QUEUE_UPDATED => Record::QueueUpdated {
                uid: r.u32("uid").map_err(err)?,
                time_ms: r.u64("time_ms").map_err(err)?,
                attrs: QueueAttributes::decode(&mut r, "attrs").map_err(err)?,
            },
            rtype::QUEUE_DELETED => {
                Record::QueueDeleted { uid: r.u32("uid").map_err(err)?, time_ms: r.u64("time_ms").map_err(err)? }
            }
            rtype::RECEIVED => Record::Received {
                uid: r.u32("uid").map_err(err)?,
                time_ms: r.u64("time_ms").map_err(err)?,
                visible_at_ms: r.u64("visible_at_ms").map_err(err)?,
                seqs: get_seqs(&mut r).map_err(err)?,
            },
            rtype::DELETED => Record::Deleted { uid: r.u32("uid").map_err(err)?, seqs: get_seqs(&mut r).map_err(err)? },
            rtype::VISIBILITY_CHANGED => Record::VisibilityChanged {
                uid: r.u32("uid").map_err(err)?,
                seq: r.u64("seq").map_err(err)?,
                visible_at_ms: r.u64("visible_at_ms").map_err(err)?,
            },
            other => return Err(RecordError { rtype: other, reason: "unknown record type".into() }),
        };
        r.finish().map_err(err)?;
        Ok(rec)
    }
}

fn get_seqs(r: &mut Reader) -> Result<Vec<u64>, cmq_protocol::DecodeError> {
    let n = r.count("seqs", RECORD_SEQS_MAX)?;
    (0..n).map(|_| r.u64("seq")).collect()
}

fn decode_relocated(p: &[u8]) -> Result<Record<BodySpan>, cmq_protocol::DecodeError> {
    use cmq_protocol::DecodeError::{Invalid, Truncated};
    let h = p.get(..RELOCATED_BODY_OFFSET as usize).ok_or(Truncated("relocated header"))?;
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or_default());
    let len = u32_at(45);
    if u64::from(RELOCATED_BODY_OFFSET) + u64::from(len) != p.len() as u64 {
        return Err(Invalid("relocated body length"));
    }
    Ok(Record::Relocated {
        uid: u32_at(0),
        seq: u64_at(4),
        entry: RelocatedEntry {
            msg_id: u64_at(12),
            enqueue_ms: u64_at(20),
            visible_at_ms: u64_at(28),
            dequeue_count: u32_at(36),
            first_dequeue_rel: u32_at(40),
            state: h[44],
        },
        body: BodySpan { offset: RELOCATED_BODY_OFFSET, len },
    })
}

fn decode_enqueued(p: &[u8]) -> Result<Record<BodySpan>, cmq_protocol::DecodeError> {
    use cmq_protocol::DecodeError::Truncated;
    let header = p.get(..ENQUEUED_HEADER_BYTES as usize).ok_or(Truncated("enqueued header"))?;
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or_default());
    let uid = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let count = u16::from_le_bytes(header[36..38].try_into().unwrap_or_default()) as usize;
    let mut bodies = Vec::with_capacity(count.min(cmq_protocol::limits::BATCH_MSGS_MAX));
    let mut offset = ENQUEUED_HEADER_BYTES as usize;
    for _ in 0..count {
        let len_bytes = p.get(offset..offset + 4).ok_or(Truncated("body length"))?;
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or_default());
        let end = offset + 4 + len as usize;
        if end > p.len() {
            return Err(Truncated("body"));
        }
        bodies.push(BodySpan { offset: offset as u32 + 4, len });
        offset = end;
    }
    if offset != p.len() {
        return Err(cmq_protocol::DecodeError::TrailingBytes(p.len() - offset));
    }
    Ok(Record::Enqueued {
        uid,
        first_seq: u64_at(4),
        first_msg_id: u64_at(12),
        enqueue_ms: u64_at(20),
        visible_at_ms: u64_at(28),
        bodies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmq_protocol::FlushPolicy;
    use proptest::prelude::*;

    fn flatten(rec: &Record<Bytes>) -> (u8, Vec<u8>) {
        let mut scratch = Vec::new();
        let payload = rec.encode(&mut scratch, |parts| parts.concat());
        (rec.rtype(), payload)
    }

    fn records() -> impl Strategy<Value = Record<Bytes>> {
        let seqs = proptest::collection::vec(any::<u64>(), 0..20);
        let bodies = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..17)
            .prop_map(|v| v.into_iter().map(Bytes::from).collect::<Vec<_>>());
        prop_oneof![
            (any::<u32>(), any::<u64>(), "[a-z][a-z0-9]{0,63}").prop_map(|(uid, t, name)| {
                Record::QueueCreated { uid, time_ms: t, attrs: QueueAttributes::defaults(FlushPolicy::Async), name }
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, t)| Record::QueueUpdated {
                uid,
                time_ms: t,
                attrs: QueueAttributes::defaults(FlushPolicy::Sync)
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(uid, t)| Record::QueueDeleted { uid, time_ms: t }),
            (any::<u32>(), any::<[u64; 4]>(), bodies).prop_map(|(uid, n, bodies)| {
                Record::Enqueued {
                    uid,
                    first_seq: n[0],
                    first_msg_id: n[1],
                    enqueue_ms: n[2],
                    visible_at_ms: n[3],
                    bodies,
                }
            }),
            (any::<u32>(), any::<u64>(), any::<u64>(), seqs.clone())
                .prop_map(|(uid, t, v, seqs)| { Record::Received { uid, time_ms: t, visible_at_ms: v, seqs } }),
            (any::<u32>(), seqs).prop_map(|(uid, seqs)| Record::Deleted { uid, seqs }),
            (any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(uid, seq, v)| { Record::VisibilityChanged { uid, seq, visible_at_ms: v } }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(rec in records()) {
            let (rtype, payload) = flatten(&rec);
            let back = Record::decode(rtype, &payload).expect("decodes");
            match (&rec, &back) {
                (Record::Enqueued { bodies, .. }, Record::Enqueued { bodies: spans, .. }) => {
                    prop_assert_eq!(bodies.len(), spans.len());
                    let expected: Vec<_> = body_spans(bodies.iter().map(|b| b.len() as u32)).collect();
                    prop_assert_eq!(&expected, spans);
                    for (b, s) in bodies.iter().zip(spans) {
                        prop_assert_eq!(&payload[s.offset as usize..(s.offset + s.len) as usize], &b[..]);
                    }
                }
                (Record::Relocated { uid, seq, entry, body }, Record::Relocated { uid: u2, seq: s2, entry: e2, body: span }) => {
                    prop_assert_eq!((uid, seq, entry), (u2, s2, e2));
                    prop_assert_eq!(&payload[span.offset as usize..(span.offset + span.len) as usize], &body[..]);
                }
                _ => {
                    let again = flatten(&match back.clone() {
                        Record::QueueCreated { uid, time_ms, attrs, name } => Record::QueueCreated { uid, time_ms, attrs, name },
                        Record::QueueUpdated { uid, time_ms, attrs } => Record::QueueUpdated { uid, time_ms, attrs },
                        Record::QueueDeleted { uid, time_ms } => Record::QueueDeleted { uid, time_ms },
                        Record::Received { uid, time_ms, visible_at_ms, seqs } => Record::Received { uid, time_ms, visible_at_ms, seqs },
                        Record::Deleted { uid, seqs } => Record::Deleted { uid, seqs },
                        Record::VisibilityChanged { uid, seq, visible_at_ms } => Record::VisibilityChanged { uid, seq, visible_at_ms },
                        Record::Enqueued { .. } | Record::Relocated { .. } => unreachable!(),
                    });
                    prop_assert_eq!(again, (rtype, payload));
                }
            }
        }

        #[test]
        fn truncated_records_are_errors(rec in records()) {
            let (rtype, payload) = flatten(&rec);
            for cut in 0..payload.len() {
                prop_assert!(Record::decode(rtype, &payload[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(rtype in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(rtype, &data);
        }
    }
}
