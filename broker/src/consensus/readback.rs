//! Reading entries back from the log: to apply them (at start-up, after a
//! truncation, on a new leader) and to send them to a lagging follower.

use bytes::Bytes;

use super::entry::{self, CachedEntry, EntryIndex, IndexedEntry};
use super::log::{LogFailure, RawLog};
use super::records::{EntryHeader, EntryKind};
use super::replica::Applier;

/// Why an entry could not be read back or applied.
#[derive(Debug, thiserror::Error)]
#[error("entry {index}: {msg}")]
pub struct ReadbackError {
    pub index: u64,
    pub msg: String,
}

fn err(index: u64, msg: impl Into<String>) -> ReadbackError {
    ReadbackError { index, msg: msg.into() }
}

/// Position of the first record after the header at `header_pos`.
fn first_record_pos(raw: &impl RawLog, header_pos: u64) -> Result<u64, LogFailure> {
    let mut next = None;
    raw.read_records(header_pos, 2, &mut |pos, _, _| next = Some(pos))?;
    next.filter(|p| *p != header_pos).ok_or_else(|| LogFailure("entry header without records".into()))
}

pub(super) fn header(raw: &impl RawLog, index: u64, ie: &IndexedEntry) -> Result<EntryHeader, ReadbackError> {
    let bytes = raw.read(ie.header_pos, EntryHeader::PAYLOAD_BYTES as u32).map_err(|e| err(index, e.0))?;
    EntryHeader::decode(bytes).map_err(|e| err(index, format!("header: {e}")))
}

/// Entry `index` as Raft carries it, with its records' local positions.
pub fn read_entry(index: &EntryIndex, i: u64, raw: &impl RawLog) -> Result<CachedEntry, ReadbackError> {
    let ie = index.get(i).ok_or_else(|| err(i, "not in the log"))?;
    let h = header(raw, i, ie)?;
    let mut data = Vec::with_capacity(h.data_len as usize);
    let mut positions = Vec::with_capacity(h.records as usize);
    if h.records > 0 {
        let first = first_record_pos(raw, ie.header_pos).map_err(|e| err(i, e.0))?;
        raw.read_records(first, h.records, &mut |pos, rt, payload| {
            positions.push(pos);
            match h.kind {
                EntryKind::ConfChange => data.extend_from_slice(payload),
                _ => entry::push_record(&mut data, rt, &[payload]),
            }
        })
        .map_err(|e| err(i, e.0))?;
    }
    Ok(CachedEntry { kind: h.kind, data: Bytes::from(data), positions })
}

/// Applies the engine records of entry `i` (a configuration change has none).
pub fn apply_entry(
    index: &EntryIndex,
    i: u64,
    cached: Option<&CachedEntry>,
    raw: &impl RawLog,
    applier: &mut impl Applier,
) -> Result<(), ReadbackError> {
    apply_records(index, i, cached, raw, applier)?;
    applier.entry_applied(i, index.end_pos(i));
    Ok(())
}

fn apply_records(
    index: &EntryIndex,
    i: u64,
    cached: Option<&CachedEntry>,
    raw: &impl RawLog,
    applier: &mut impl Applier,
) -> Result<(), ReadbackError> {
    if let Some(c) = cached {
        return apply_cached(i, c, applier);
    }
    let ie = index.get(i).ok_or_else(|| err(i, "not in the log"))?;
    let h = header(raw, i, ie)?;
    if h.kind != EntryKind::Normal || h.records == 0 {
        return Ok(());
    }
    let first = first_record_pos(raw, ie.header_pos).map_err(|e| err(i, e.0))?;
    let mut failed = None;
    raw.read_records(first, h.records, &mut |pos, rt, payload| {
        if failed.is_none() {
            failed = applier.apply(pos, rt, payload).err();
        }
    })
    .map_err(|e| err(i, e.0))?;
    failed.map_or(Ok(()), |m| Err(err(i, m)))
}

fn apply_cached(i: u64, c: &CachedEntry, applier: &mut impl Applier) -> Result<(), ReadbackError> {
    if c.kind != EntryKind::Normal {
        return Ok(());
    }
    for (r, pos) in entry::records(&c.data).zip(&c.positions) {
        let (rt, payload) = r.map_err(|e| err(i, e.to_string()))?;
        applier.apply(*pos, rt, payload).map_err(|m| err(i, m))?;
    }
    Ok(())
}

/// Applies every entry from `from` to `to` (inclusive) that the log holds.
pub fn apply_range(
    index: &EntryIndex,
    from: u64,
    to: u64,
    raw: &impl RawLog,
    applier: &mut impl Applier,
) -> Result<(), ReadbackError> {
    for i in from.max(index.first_index())..=to.min(index.last_index()) {
        apply_entry(index, i, None, raw, applier)?;
    }
    Ok(())
}
