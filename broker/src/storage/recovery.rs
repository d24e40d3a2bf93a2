//! The open-time scan: verifies every segment, tells a torn write from
//! corruption, repairs on request (quarantining what it cuts). See the
//! recovery rules in `mod.rs`.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    decode_segment_header, durable_claim, encode_padding, encode_segment_header, nonzero_end_in, parse_slot, resync_in,
    verified_len, HeaderError, Slot, FORMAT_VERSION, RTYPE_WAL,
};
use super::segment::{create_segment, data_ranges, list_segments, open_rw, segment_path, sync_dir, Reserve, Segment};
use super::wal::{LogPos, SkippedRange, TornTail, WalConfig};
use super::{ReplayError, WalError, RECORD_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, TORN_WINDOW_BYTES};

const HDR: usize = SEGMENT_HEADER_BYTES as usize;
const REC_HDR: usize = RECORD_HEADER_BYTES as usize;
/// Zeroing writes go out in pieces of this size.
pub(crate) const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Directory (in the log's directory) where repair saves what it cuts.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

pub(crate) struct Recovered {
    pub segs: Vec<Segment>,
    /// Index of the newest segment holding data (the one to append to).
    pub newest: usize,
    /// Records delivered or deliverable (the WAL's own records excluded).
    pub records: u64,
    /// The highest position a durable mark claims.
    pub claim: u64,
    /// End position of the last record that is not the WAL's own.
    pub data_end: u64,
    pub torn_tail: Option<TornTail>,
    pub skipped: Vec<SkippedRange>,
    pub quarantined: Vec<PathBuf>,
    pub filled_gaps: Vec<(LogPos, LogPos)>,
}

struct Scan {
    records: u64,
    /// File offset where valid records stop.
    valid_end: usize,
    bad: Option<&'static str>,
    /// One past the last non-zero byte at or after `valid_end`.
    nonzero_end: usize,
    /// The highest durable claim among the records scanned.
    claim: u64,
    /// File offset of the end of the last record that is not the WAL's.
    data_end: usize,
}

impl Scan {
    fn clean(&self) -> bool {
        self.bad.is_none() && self.nonzero_end == self.valid_end
    }

    fn reason(&self) -> &'static str {
        self.bad.unwrap_or("non-zero bytes after the end of data")
    }
}

/// Where the file system says a segment may hold non-zero bytes (after
/// its header); the tail checks read only these ranges.
fn seg_data(seg: &Segment) -> Vec<Range<usize>> {
    data_ranges(&seg.file, SEGMENT_HEADER_BYTES, seg.capacity)
}

/// Verifies the records of one segment image based at log position `base`;
/// `data` are its data ranges (zero elsewhere). Each record is passed to
/// `sink(offset, rtype, payload)` right after it verified, in order, so
/// that replay needs no second pass; the scan stops at the first bad record.
fn scan<E>(
    buf: &[u8],
    base: u64,
    data: &[Range<usize>],
    mut sink: impl FnMut(usize, u8, &[u8]) -> Result<(), E>,
) -> Result<Scan, E> {
    let mut off = HDR;
    let mut records = 0;
    let mut claim = 0;
    let mut data_end = 0;
    let (valid_end, bad) = loop {
        match parse_slot(buf, base, off, true) {
            Slot::Record { rtype, payload, next } => {
                if rtype == RTYPE_WAL {
                    if let Some(c) = durable_claim(rtype, &buf[payload.clone()], base + off as u64) {
                        claim = claim.max(c);
                    }
                } else {
                    records += 1;
                    data_end = next;
                }
                sink(off, rtype, &buf[payload])?;
                off = next;
            }
            Slot::End => break (off, None),
            Slot::Bad { why, .. } => break (off, Some(why)),
        }
    };
    Ok(Scan { records, valid_end, bad, nonzero_end: nonzero_end_in(buf, valid_end, data), claim, data_end })
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corrupt { path: path.to_path_buf(), offset, reason: reason.into() }
}

pub(crate) fn write_zeros(seg: &Segment, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min((to - from) as usize)];
    let mut off = from;
    while off < to {
        let n = zeros.len().min((to - off) as usize);
        seg.file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Padding records exactly covering `len` bytes (len >= the record header)
/// from log position `pos`, each no larger than the largest record.
fn padding_pieces(mut pos: u64, mut len: usize) -> Vec<Vec<u8>> {
    let max = RECORD_BYTES_MAX as usize;
    let mut out = Vec::new();
    while len > 0 {
        let piece = if len > max { max.min(len - REC_HDR) } else { len };
        out.push(encode_padding(pos, piece));
        pos += piece as u64;
        len -= piece;
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Fix {
    Pad { off: usize, len: usize },
    Zero { off: usize, end: usize },
}

/// What follows the first bad record at `off` of a segment image (zero
/// outside `data`): the fixes that skip exactly the damaged ranges and keep
/// every valid record after them, and the highest durable claim among
/// those records.
struct Plan {
    fixes: Vec<Fix>,
    claim_after: u64,
}

/// Where the next record may start after a damaged one at `off`: right
/// after it if its header verified (only its payload is damaged), else the
/// first verifying record at least a header's length further (the damaged
/// record was at least that long).
fn next_valid(buf: &[u8], base: u64, off: usize, data: &[Range<usize>]) -> Option<usize> {
    if let Some(len) = verified_len(buf, base, off) {
        let next = off + len as usize;
        if matches!(parse_slot(buf, base, next, true), Slot::Record { .. }) {
            return Some(next);
        }
        return resync_in(buf, base, next, data);
    }
    resync_in(buf, base, off + REC_HDR, data)
}

fn plan_repair(buf: &[u8], base: u64, mut off: usize, data: &[Range<usize>]) -> Plan {
    let mut fixes = Vec::new();
    let mut claim_after = 0;
    loop {
        let Some(next) = next_valid(buf, base, off, data) else {
            let end = nonzero_end_in(buf, off, data);
            if end > off {
                fixes.push(Fix::Zero { off, end });
            }
            return Plan { fixes, claim_after };
        };
        fixes.push(Fix::Pad { off, len: next - off });
        // Continue with the valid records from there.
        let mut o = next;
        loop {
            match parse_slot(buf, base, o, true) {
                Slot::Record { rtype, payload, next } => {
                    if let Some(c) = durable_claim(rtype, &buf[payload], base + o as u64) {
                        claim_after = claim_after.max(c);
                    }
                    o = next;
                }
                Slot::End if nonzero_end_in(buf, o, data) == o => return Plan { fixes, claim_after },
                Slot::End | Slot::Bad { .. } => break,
            }
        }
        off = o;
    }
}

/// Why the first bad record at `x` of the newest data segment is not a torn
/// write, if it is not (recovery rule 3): a durable mark after it claims it
/// was durable, or damage reaches further than a torn write can.
fn not_torn(buf: &[u8], base: u64, x: usize, garbage_end: usize, plan: &Plan) -> Option<String> {
    let pos = base + x as u64;
    if plan.claim_after > pos {
        return Some(format!(
            "a durable mark after it shows that log position {} was fdatasync'd, so this is damage, not a torn write",
            plan.claim_after
        ));
    }
    // What a crash can leave unsynced starts at or before `x` and spans at
    // most the torn window, or one larger record written alone.
    let extent = TORN_WINDOW_BYTES.max(verified_len(buf, base, x).unwrap_or(RECORD_BYTES_MAX));
    let reach = (garbage_end - x) as u64;
    (reach > extent)
        .then(|| format!("non-zero bytes reach {reach} bytes past it, beyond what a torn write can leave ({extent})"))
}

/// Copies `buf[off..end]` of segment `seg_path` to the quarantine directory
/// of `dir` (durably) before repair overwrites it; returns the file.
fn quarantine(dir: &Path, seg_path: &Path, off: usize, bytes: &[u8]) -> Result<PathBuf, WalError> {
    let qdir = dir.join(QUARANTINE_DIR);
    let name = seg_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = qdir.join(format!("{name}@{off}"));
    let r = (|| {
        if !qdir.exists() {
            std::fs::create_dir(&qdir)?;
            sync_dir(dir)?;
        }
        let f = std::fs::File::create(&path)?;
        f.write_all_at(bytes, 0)?;
        f.sync_all()?;
        sync_dir(&qdir)
    })();
    r.map_err(|e| WalError::io("save damaged bytes to quarantine", &path, e))?;
    Ok(path)
}

/// Writes one fix; returns (file offset, bytes covered).
fn apply_fix(seg: &Segment, fix: &Fix) -> Result<(u64, u64), WalError> {
    let (off, bytes, r) = match *fix {
        Fix::Pad { off, len } => {
            let mut at = off as u64;
            let mut r = Ok(());
            for piece in padding_pieces(seg.base + at, len) {
                r = r.and_then(|()| seg.file.write_all_at(&piece, at));
                at += piece.len() as u64;
            }
            (off, len, r)
        }
        Fix::Zero { off, end } => (off, end - off, write_zeros(seg, off as u64, end as u64)),
    };
    r.map_err(|e| WalError::io("rewrite damaged bytes", &seg.path, e))?;
    Ok((off as u64, bytes as u64))
}

/// What repair did, for the report.
#[derive(Default)]
struct Repairs {
    skipped: Vec<SkippedRange>,
    quarantined: Vec<PathBuf>,
}

fn open_segment(dir: &Path, base: u64, cfg: &WalConfig, repairs: &mut Repairs) -> Result<Segment, WalError> {
    let path = segment_path(dir, base);
    let file = open_rw(&path).map_err(|e| WalError::io("open segment", &path, e))?;
    let len = file.metadata().map_err(|e| WalError::io("stat segment", &path, e))?.len();
    let mut hdr = [0u8; HDR];
    let decoded = match file.read_exact_at(&mut hdr, 0) {
        Ok(()) => decode_segment_header(&hdr).and_then(|(b, cap)| {
            if b != base {
                Err(HeaderError::Bad("segment header base differs from the file name"))
            } else if cap < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES {
                Err(HeaderError::Bad("segment capacity too small"))
            } else {
                Ok(cap)
            }
        }),
        Err(_) => Err(HeaderError::Bad("segment shorter than its header")),
    };
    let capacity = match decoded {
        Ok(cap) => cap,
        Err(HeaderError::Version(found)) => {
            return Err(WalError::Format { path, found, supported: FORMAT_VERSION });
        }
        Err(HeaderError::Bad(why)) if cfg.repair && len >= SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES => {
            log::warn!("repair: rewriting the header of {} ({why})", path.display());
            repairs.quarantined.push(quarantine(dir, &path, 0, &hdr)?);
            file.write_all_at(&encode_segment_header(base, len), 0)
                .and_then(|()| file.sync_data())
                .map_err(|e| WalError::io("rewrite segment header", &path, e))?;
            repairs.skipped.push(SkippedRange {
                segment: path.clone(),
                offset: 0,
                bytes: SEGMENT_HEADER_BYTES,
                reason: why.to_string(),
            });
            len
        }
        Err(HeaderError::Bad(why)) => return Err(corrupt(&path, 0, why)),
    };
    if len < capacity {
        log::warn!(
            "WAL segment {} is {} bytes, its header says {capacity}: extending it with zeros",
            path.display(),
            len
        );
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, capacity)
            .map_err(std::io::Error::from)
            .and_then(|()| file.sync_all())
            .map_err(|e| WalError::io("extend truncated segment", &path, e))?;
    }
    Segment::new(base, capacity, path.clone(), file).map_err(|e| WalError::io("map segment", &path, e))
}

/// Lists and opens the segments of `dir`, checking that they are
/// contiguous (repair fills gaps with empty segments).
fn open_segments(
    dir: &Path,
    cfg: &WalConfig,
    repairs: &mut Repairs,
    filled_gaps: &mut Vec<(LogPos, LogPos)>,
) -> Result<Vec<Segment>, WalError> {
    let bases = list_segments(dir).map_err(|e| WalError::io("list segments", dir, e))?;
    let mut segs: Vec<Segment> = Vec::with_capacity(bases.len());
    for base in bases {
        if let Some(prev) = segs.last() {
            let expected = prev.end();
            if base < expected {
                let why = format!("segment overlaps {} (which ends at {expected})", prev.path.display());
                return Err(corrupt(&segment_path(dir, base), 0, why));
            }
            if base > expected {
                if !cfg.repair || base - expected < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES {
                    return Err(WalError::Gap { dir: dir.to_path_buf(), from: expected, to: base });
                }
                log::warn!(
                    "repair: log positions {expected}..{base} are missing in {}; filling with an empty segment",
                    dir.display()
                );
                let file = create_segment(dir, expected, base - expected, Reserve::Sparse, &None)
                    .map_err(|e| WalError::io("create filler segment", segment_path(dir, expected), e))?;
                let path = segment_path(dir, expected);
                let filler = Segment::new(expected, base - expected, path.clone(), file)
                    .map_err(|e| WalError::io("map segment", &path, e))?;
                segs.push(filler);
                filled_gaps.push((LogPos(expected), LogPos(base)));
            }
        }
        segs.push(open_segment(dir, base, cfg, repairs)?);
    }
    Ok(segs)
}

/// Applies the recovery rules to the log in `dir` and passes every
/// record that starts at or after position `from` (WAL records excepted) to
/// `deliver`, in log order, as soon as it verified: each byte is read and
/// checked once. Only records that every outcome keeps are delivered (the
/// scan stops at the first bad record; what follows a repaired range comes
/// after the repair). When this fails, records may have been delivered
/// already.
pub(crate) fn recover<E>(
    dir: &Path,
    cfg: &WalConfig,
    from: u64,
    mut deliver: impl FnMut(LogPos, u8, &[u8]) -> Result<(), E>,
) -> Result<Recovered, ReplayError<E>> {
    let mut repairs = Repairs::default();
    let mut filled_gaps = Vec::new();
    let mut segs = open_segments(dir, cfg, &mut repairs, &mut filled_gaps)?;
    for s in &mut segs {
        s.map.set_stable(s.capacity);
    }
    let mut data: Vec<Vec<Range<usize>>> = segs.iter().map(seg_data).collect();
    // The newest data segment: the last one holding any non-zero byte.
    let newest = segs.iter().zip(&data).rposition(|(s, d)| nonzero_end_in(s.map.stable_bytes(), HDR, d) > HDR);
    let newest = newest.unwrap_or(0);
    let mut torn_tail = None;
    let mut claim = 0;
    let mut scans = Vec::with_capacity(segs.len());

    for i in 0..segs.len() {
        let base = segs[i].base;
        // Replay from the first record at or after `from`; on a rescan
        // after a repair, from the first record not delivered yet.
        fn sink<E>(
            deliver: &mut impl FnMut(LogPos, u8, &[u8]) -> Result<(), E>,
            base: u64,
            from: u64,
            deliver_from: usize,
        ) -> impl FnMut(usize, u8, &[u8]) -> Result<(), ReplayError<E>> + '_ {
            move |off, rtype, payload| {
                if off >= deliver_from && base + off as u64 >= from && rtype != RTYPE_WAL {
                    deliver(LogPos(base + (off + REC_HDR) as u64), rtype, payload).map_err(ReplayError::Callback)
                } else {
                    Ok(())
                }
            }
        }
        let first = scan(segs[i].map.stable_bytes(), base, &data[i], sink(&mut deliver, base, from, 0))?;
        claim = claim.max(first.claim);
        if first.clean() {
            scans.push(first);
            continue;
        }
        let x = first.valid_end;
        let image = segs[i].map.stable_bytes();
        let (torn, fixes, why) = if i == newest {
            let plan = plan_repair(image, base, x, &data[i]);
            match not_torn(image, base, x, first.nonzero_end, &plan) {
                None => (true, vec![Fix::Zero { off: x, end: first.nonzero_end }], String::new()),
                Some(why) => (false, plan.fixes, why),
            }
        } else {
            let why = "in a segment older than the newest one, all of which was fdatasync'd".to_string();
            let fixes = if cfg.repair { plan_repair(image, base, x, &data[i]).fixes } else { Vec::new() };
            (false, fixes, why)
        };
        let reason = first.reason();
        if !torn && !cfg.repair {
            return Err(corrupt(&segs[i].path, x as u64, format!("{reason}; {why}")).into());
        }
        if !torn {
            for fix in &fixes {
                let (off, end) = match *fix {
                    Fix::Pad { off, len } => (off, off + len),
                    Fix::Zero { off, end } => (off, end),
                };
                repairs.quarantined.push(quarantine(dir, &segs[i].path, off, &image[off..end])?);
            }
        }
        let seg = &mut segs[i];
        // Writing below the stable end needs `&mut` on the map (see mmap.rs).
        seg.map.set_stable(x as u64);
        for fix in &fixes {
            let (off, bytes) = apply_fix(seg, fix)?;
            if torn {
                log::warn!(
                    "WAL torn tail in {} at file offset {off}: dropped {bytes} bytes ({reason}; never acknowledged \
                     as durable)",
                    seg.path.display()
                );
                torn_tail = Some(TornTail { segment: seg.path.clone(), offset: off, dropped_bytes: bytes });
            } else {
                let saved = repairs.quarantined.last().map(|p| p.display().to_string()).unwrap_or_default();
                log::warn!(
                    "WAL repair: skipped {bytes} damaged bytes in {} at file offset {off} ({reason}); saved to {saved}",
                    seg.path.display()
                );
                repairs.skipped.push(SkippedRange {
                    segment: seg.path.clone(),
                    offset: off,
                    bytes,
                    reason: reason.to_string(),
                });
            }
        }
        seg.file.sync_data().map_err(|e| WalError::io("fdatasync recovered segment", &seg.path, e))?;
        seg.map.set_stable(seg.capacity);
        // Re-verify the whole segment, so a failed fix cannot pass silently
        // (the fixes may have turned holes into data: ask again), and
        // deliver the records after the first bad one.
        data[i] = seg_data(&segs[i]);
        let again = scan(segs[i].map.stable_bytes(), base, &data[i], sink(&mut deliver, base, from, x))?;
        if !again.clean() {
            return Err(corrupt(&segs[i].path, again.valid_end as u64, again.reason()).into());
        }
        claim = claim.max(again.claim);
        scans.push(again);
    }

    if let Some(seg) = segs.get(newest) {
        // Data a previous process wrote without a sync becomes durable now,
        // so everything found counts as durable from here on.
        seg.file.sync_data().map_err(|e| WalError::io("fdatasync newest segment", &seg.path, e))?;
    }
    let mut records = 0;
    let mut data_end = 0;
    for (seg, sc) in segs.iter_mut().zip(&scans) {
        records += sc.records;
        if sc.data_end > 0 {
            data_end = seg.base + sc.data_end as u64;
        }
        seg.data_end = seg.base + sc.valid_end as u64;
        seg.map.set_stable(sc.valid_end as u64);
    }
    let Repairs { skipped, quarantined } = repairs;
    Ok(Recovered { segs, newest, records, claim, data_end, torn_tail, skipped, quarantined, filled_gaps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::{encode_durable_mark, encode_record};

    #[test]
    fn padding_covers_exactly() {
        for len in [
            13usize,
            14,
            100,
            RECORD_BYTES_MAX as usize,
            RECORD_BYTES_MAX as usize + 1,
            RECORD_BYTES_MAX as usize + 13,
            3 * RECORD_BYTES_MAX as usize + 5,
        ] {
            let pos = 4096;
            let pieces = padding_pieces(pos, len);
            assert_eq!(pieces.iter().map(Vec::len).sum::<usize>(), len);
            let mut at = pos;
            for p in &pieces {
                assert!(p.len() >= REC_HDR && p.len() as u64 <= RECORD_BYTES_MAX);
                assert!(matches!(parse_slot(p, at, 0, true), Slot::Record { rtype: 0, .. }));
                at += p.len() as u64;
            }
        }
    }

    fn image(recs: &[&[u8]], cap: usize) -> Vec<u8> {
        let mut img = vec![0u8; HDR];
        for p in recs {
            let pos = img.len() as u64;
            encode_record(&mut img, pos, 1, &[p], p.len() as u32);
        }
        img.resize(cap, 0);
        img
    }

    #[test]
    fn plan_repair_pads_exactly_the_damaged_record_then_zeroes() {
        let mut img = image(&[b"one", b"two", b"three"], 256);
        img[HDR + REC_HDR] ^= 0x55; // damage the payload of "one"
        img[200] = 7; // garbage after the end
        let all_data = [Range { start: 0, end: img.len() }];
        let plan = plan_repair(&img, 0, HDR, &all_data);
        assert_eq!(plan.fixes, vec![Fix::Pad { off: HDR, len: 16 }, Fix::Zero { off: HDR + 16 + 16 + 18, end: 201 }]);
        // A damaged length: the search finds the next record all the same.
        let mut img = image(&[b"one", b"two", b"three"], 256);
        img[HDR] ^= 0x40;
        let plan = plan_repair(&img, 0, HDR, &all_data);
        assert_eq!(plan.fixes, vec![Fix::Pad { off: HDR, len: 16 }]);
    }

    #[test]
    fn a_mark_after_the_damage_makes_it_corruption() {
        let mut img = image(&[b"acknowledged"], 4096);
        let end = img.iter().rposition(|&b| b != 0).map_or(HDR, |p| p + 1);
        img.truncate(end);
        encode_durable_mark(&mut img, end as u64, end as u64);
        img.resize(4096, 0);
        let data = [Range { start: 0, end: img.len() }];
        img[HDR + REC_HDR + 3] ^= 1;
        let plan = plan_repair(&img, 0, HDR, &data);
        assert_eq!(plan.claim_after, end as u64);
        let nz = nonzero_end_in(&img, HDR, &data);
        assert!(not_torn(&img, 0, HDR, nz, &plan).is_some());
        // The same damage with no mark after it is a torn write.
        let mut img = image(&[b"acknowledged"], 4096);
        img[HDR + REC_HDR + 3] ^= 1;
        let plan = plan_repair(&img, 0, HDR, &data);
        let nz = nonzero_end_in(&img, HDR, &data);
        assert_eq!(not_torn(&img, 0, HDR, nz, &plan), None);
    }
}
