//! The open-time scan: verifies every segment, applies the torn-tail rule,
//! repairs on request. See the recovery rules in `mod.rs`.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{
    decode_segment_header, encode_padding, encode_segment_header, nonzero_end_in, parse_slot, resync_in, Slot,
    RTYPE_PADDING,
};
use super::segment::{create_segment, data_ranges, list_segments, open_rw, segment_path, Reserve, Segment};
use super::wal::{LogPos, SkippedRange, TornTail, WalConfig};
use super::{ReplayError, WalError, RECORD_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, TORN_WINDOW_BYTES};

const HDR: usize = SEGMENT_HEADER_BYTES as usize;
const REC_HDR: usize = RECORD_HEADER_BYTES as usize;
/// Zeroing writes go out in pieces of this size.
pub(crate) const ZERO_CHUNK_BYTES: usize = 1 << 20;

pub(crate) struct Recovered {
    pub segs: Vec<Segment>,
    /// Index of the newest segment holding data (the one to append to).
    pub newest: usize,
    pub records: u64,
    pub torn_tail: Option<TornTail>,
    pub skipped: Vec<SkippedRange>,
    pub filled_gaps: Vec<(LogPos, LogPos)>,
}

struct Scan {
    records: u64,
    /// File offset where valid records stop.
    valid_end: usize,
    bad: Option<&'static str>,
    /// One past the last non-zero byte at or after `valid_end`.
    nonzero_end: usize,
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

/// Verifies the records of one segment image; `data` are its data ranges
/// (zero elsewhere). Each record is passed to `sink(offset, rtype,
/// payload)` right after its CRC verified, in order, so that replay needs
/// no second pass; the scan stops at the first bad record.
fn scan<E>(
    buf: &[u8],
    data: &[Range<usize>],
    mut sink: impl FnMut(usize, u8, &[u8]) -> Result<(), E>,
) -> Result<Scan, E> {
    let mut off = HDR;
    let mut records = 0;
    Ok(loop {
        match parse_slot(buf, off, true) {
            Slot::Record { rtype, payload, next } => {
                sink(off, rtype, &buf[payload])?;
                records += 1;
                off = next;
            }
            Slot::End => {
                break Scan { records, valid_end: off, bad: None, nonzero_end: nonzero_end_in(buf, off, data) }
            }
            Slot::Bad(why) => {
                break Scan { records, valid_end: off, bad: Some(why), nonzero_end: nonzero_end_in(buf, off, data) }
            }
        }
    })
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

/// Padding records exactly covering `len` bytes (len >= 9), each no larger
/// than the largest record.
fn padding_pieces(mut len: usize) -> Vec<Vec<u8>> {
    let max = RECORD_BYTES_MAX as usize;
    let mut out = Vec::new();
    while len > 0 {
        let piece = if len > max { max.min(len - REC_HDR) } else { len };
        out.push(encode_padding(piece));
        len -= piece;
    }
    out
}

enum Fix {
    Pad { off: usize, len: usize },
    Zero { off: usize, end: usize },
}

/// Plans the repair of one segment image (zero outside `data`) from its
/// first bad offset on.
fn plan_repair(buf: &[u8], mut off: usize, data: &[Range<usize>]) -> Vec<Fix> {
    let mut fixes = Vec::new();
    loop {
        match resync_in(buf, off + REC_HDR, data) {
            Some(next) => {
                fixes.push(Fix::Pad { off, len: next - off });
                // Continue with the valid records from there.
                let mut o = next;
                loop {
                    match parse_slot(buf, o, true) {
                        Slot::Record { next, .. } => o = next,
                        Slot::End if nonzero_end_in(buf, o, data) == o => return fixes,
                        Slot::End | Slot::Bad(_) => break,
                    }
                }
                off = o;
            }
            None => {
                let end = nonzero_end_in(buf, off, data);
                if end > off {
                    fixes.push(Fix::Zero { off, end });
                }
                return fixes;
            }
        }
    }
}

/// Writes one fix; returns (file offset, bytes covered).
fn apply_fix(seg: &Segment, fix: &Fix) -> Result<(u64, u64), WalError> {
    let (off, bytes, r) = match *fix {
        Fix::Pad { off, len } => {
            let mut at = off as u64;
            let mut r = Ok(());
            for piece in padding_pieces(len) {
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

fn open_segment(dir: &Path, base: u64, cfg: &WalConfig, skipped: &mut Vec<SkippedRange>) -> Result<Segment, WalError> {
    let path = segment_path(dir, base);
    let file = open_rw(&path).map_err(|e| WalError::io("open segment", &path, e))?;
    let len = file.metadata().map_err(|e| WalError::io("stat segment", &path, e))?.len();
    let mut hdr = [0u8; HDR];
    let read = file.read_exact_at(&mut hdr, 0);
    let decoded = match read {
        Ok(()) => decode_segment_header(&hdr).and_then(|(b, cap)| {
            if b != base {
                Err("segment header base differs from the file name")
            } else if cap < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES {
                Err("segment capacity too small")
            } else {
                Ok(cap)
            }
        }),
        Err(_) => Err("segment shorter than its header"),
    };
    let capacity = match decoded {
        Ok(cap) => cap,
        Err(why) if cfg.repair && len >= SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES => {
            log::warn!("repair: rewriting the header of {} ({why})", path.display());
            file.write_all_at(&encode_segment_header(base, len), 0)
                .and_then(|()| file.sync_data())
                .map_err(|e| WalError::io("rewrite segment header", &path, e))?;
            skipped.push(SkippedRange {
                segment: path.clone(),
                offset: 0,
                bytes: SEGMENT_HEADER_BYTES,
                reason: why.to_string(),
            });
            len
        }
        Err(why) => return Err(corrupt(&path, 0, why)),
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

/// Applies the recovery rules to the log in `dir` and passes every
/// record that starts at or after position `from` (padding excepted) to
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
    let bases = list_segments(dir).map_err(|e| WalError::io("list segments", dir, e))?;
    let mut skipped = Vec::new();
    let mut filled_gaps = Vec::new();
    let mut segs: Vec<Segment> = Vec::with_capacity(bases.len());
    for base in bases {
        if let Some(prev) = segs.last() {
            let expected = prev.end();
            if base < expected {
                return Err(corrupt(
                    &segment_path(dir, base),
                    0,
                    format!("segment overlaps {} (which ends at {expected})", prev.path.display()),
                )
                .into());
            }
            if base > expected {
                if !cfg.repair || base - expected < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES {
                    return Err(WalError::Gap { dir: dir.to_path_buf(), from: expected, to: base }.into());
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
        segs.push(open_segment(dir, base, cfg, &mut skipped)?);
    }

    for s in &mut segs {
        s.map.set_stable(s.capacity);
    }
    let mut data: Vec<Vec<Range<usize>>> = segs.iter().map(seg_data).collect();
    // The newest data segment: the last one holding any non-zero byte.
    let newest = segs.iter().zip(&data).rposition(|(s, d)| nonzero_end_in(s.map.stable_bytes(), HDR, d) > HDR);
    let newest = newest.unwrap_or(0);
    let mut torn_tail = None;
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
                if off >= deliver_from && base + off as u64 >= from && rtype != RTYPE_PADDING {
                    deliver(LogPos(base + (off + REC_HDR) as u64), rtype, payload).map_err(ReplayError::Callback)
                } else {
                    Ok(())
                }
            }
        }
        let first = scan(segs[i].map.stable_bytes(), &data[i], sink(&mut deliver, base, from, 0))?;
        if first.clean() {
            scans.push(first);
            continue;
        }
        let (valid_end, garbage_end) = (first.valid_end, first.nonzero_end);
        let reason = first.reason();
        let torn = i == newest && (garbage_end as u64) <= valid_end as u64 + TORN_WINDOW_BYTES;
        if !torn && !cfg.repair {
            return Err(corrupt(&segs[i].path, valid_end as u64, reason).into());
        }
        let fixes = if torn {
            vec![Fix::Zero { off: valid_end, end: garbage_end }]
        } else {
            plan_repair(segs[i].map.stable_bytes(), valid_end, &data[i])
        };
        let seg = &mut segs[i];
        // Writing below the stable end needs `&mut` on the map (see mmap.rs).
        seg.map.set_stable(valid_end as u64);
        for fix in &fixes {
            let (off, bytes) = apply_fix(seg, fix)?;
            if torn {
                log::warn!(
                    "WAL torn tail in {} at file offset {off}: dropped {bytes} bytes ({reason})",
                    seg.path.display()
                );
                torn_tail = Some(TornTail { segment: seg.path.clone(), offset: off, dropped_bytes: bytes });
            } else {
                log::warn!(
                    "WAL repair: skipped {bytes} damaged bytes in {} at file offset {off} ({reason})",
                    seg.path.display()
                );
                skipped.push(SkippedRange {
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
        let again = scan(segs[i].map.stable_bytes(), &data[i], sink(&mut deliver, base, from, valid_end))?;
        if !again.clean() {
            return Err(corrupt(&segs[i].path, again.valid_end as u64, again.reason()).into());
        }
        scans.push(again);
    }

    if let Some(seg) = segs.get(newest) {
        // Data a previous process wrote without a sync becomes durable now,
        // so everything found counts as durable from here on.
        seg.file.sync_data().map_err(|e| WalError::io("fdatasync newest segment", &seg.path, e))?;
    }
    let mut records = 0;
    for (seg, sc) in segs.iter_mut().zip(&scans) {
        records += sc.records;
        seg.data_end = seg.base + sc.valid_end as u64;
        seg.map.set_stable(sc.valid_end as u64);
    }
    Ok(Recovered { segs, newest, records, torn_tail, skipped, filled_gaps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::encode_record;

    #[test]
    fn padding_covers_exactly() {
        for len in [
            9usize,
            10,
            100,
            RECORD_BYTES_MAX as usize,
            RECORD_BYTES_MAX as usize + 1,
            RECORD_BYTES_MAX as usize + 9,
            3 * RECORD_BYTES_MAX as usize + 5,
        ] {
            let pieces = padding_pieces(len);
            assert_eq!(pieces.iter().map(Vec::len).sum::<usize>(), len);
            for p in &pieces {
                assert!(p.len() >= REC_HDR && p.len() as u64 <= RECORD_BYTES_MAX);
                assert!(matches!(parse_slot(p, 0, true), Slot::Record { rtype: 0, .. }));
            }
        }
    }

    #[test]
    fn plan_repair_pads_then_zeroes() {
        let mut img = vec![0u8; HDR];
        for p in [&b"one"[..], b"two", b"three"] {
            encode_record(&mut img, 1, &[p], p.len() as u32);
        }
        img.resize(256, 0);
        img[HDR + 9] ^= 0x55; // damage "one"
        img[200] = 7; // garbage after the end
        let all_data = [Range { start: 0, end: img.len() }];
        let fixes = plan_repair(&img, HDR, &all_data);
        assert!(matches!(fixes[0], Fix::Pad { off, len: 12 } if off == HDR));
        assert!(matches!(fixes[1], Fix::Zero { end: 201, .. }));
        assert_eq!(fixes.len(), 2);
    }
}
