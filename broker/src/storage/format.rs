//! Byte layout of segment headers and records (see the table in `mod.rs`).
//! Pure functions over byte slices so that they can be tested and fuzzed
//! without files.

use std::ops::Range;

use super::{RECORD_HEADER_BYTES, RECORD_PAYLOAD_MAX_BYTES, SEGMENT_HEADER_BYTES};

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"cmq-wal\n";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const RTYPE_PADDING: u8 = 0;

const HDR: usize = SEGMENT_HEADER_BYTES as usize;
const REC_HDR: usize = RECORD_HEADER_BYTES as usize;
/// Largest valid value of the length field (type byte + payload).
const LEN_FIELD_MAX: u32 = RECORD_PAYLOAD_MAX_BYTES + 1;

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

pub(crate) fn encode_segment_header(base: u64, capacity: u64) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base.to_le_bytes());
    h[20..28].copy_from_slice(&capacity.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Returns `(base, capacity)` or why the header is not valid.
pub(crate) fn decode_segment_header(h: &[u8]) -> Result<(u64, u64), &'static str> {
    if h.len() < HDR {
        return Err("segment shorter than its header");
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    let crc = le_u32(h, 28).ok_or("short header")?;
    if crc != crc32c::crc32c(&h[0..28]) {
        return Err("segment header CRC mismatch");
    }
    if le_u32(h, 8) != Some(FORMAT_VERSION) {
        return Err("unsupported segment format version");
    }
    let base = le_u64(h, 12).ok_or("short header")?;
    let cap = le_u64(h, 20).ok_or("short header")?;
    Ok((base, cap))
}

/// Total on-disk size of a record with this payload length.
pub(crate) fn record_bytes(payload_len: u64) -> u64 {
    RECORD_HEADER_BYTES + payload_len
}

/// Appends one framed record to `buf`. The caller has checked the payload
/// length against `RECORD_PAYLOAD_MAX_BYTES`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, rtype: u8, parts: &[&[u8]], payload_len: u32) {
    let len = (payload_len + 1).to_le_bytes();
    let mut crc = crc32c::crc32c(&len);
    crc = crc32c::crc32c_append(crc, &[rtype]);
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    buf.reserve(REC_HDR + payload_len as usize);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(rtype);
    for p in parts {
        buf.extend_from_slice(p);
    }
}

/// A padding record of exactly `total` bytes (>= 9) with a zero payload.
pub(crate) fn encode_padding(total: usize) -> Vec<u8> {
    debug_assert!(total >= REC_HDR);
    let zeros = vec![0u8; total - REC_HDR];
    let mut buf = Vec::with_capacity(total);
    encode_record(&mut buf, RTYPE_PADDING, &[&zeros], zeros.len() as u32);
    buf
}

/// What lies at one record slot of a segment image.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Record {
        rtype: u8,
        payload: Range<usize>,
        next: usize,
    },
    /// Zero length field, or too little room left for any record.
    End,
    Bad(&'static str),
}

/// Parses the record slot at `off` of `seg`, which is the whole segment (or
/// a prefix of it standing for the readable part). `verify` checks the CRC.
pub(crate) fn parse_slot(seg: &[u8], off: usize, verify: bool) -> Slot {
    let Some(rest) = seg.len().checked_sub(off) else {
        return Slot::Bad("offset past segment end");
    };
    if rest < REC_HDR {
        return Slot::End;
    }
    let Some(len) = le_u32(seg, off) else {
        return Slot::End;
    };
    if len == 0 {
        return Slot::End;
    }
    if len > LEN_FIELD_MAX {
        return Slot::Bad("impossible record length");
    }
    let body = off + 8;
    let end = body + len as usize;
    if end > seg.len() {
        return Slot::Bad("record length runs past the segment end");
    }
    if verify {
        let stored = le_u32(seg, off + 4).unwrap_or(0);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&seg[off..off + 4]), &seg[body..end]);
        if crc != stored {
            return Slot::Bad("record CRC mismatch");
        }
    }
    Slot::Record { rtype: seg[body], payload: body + 1..end, next: end }
}

/// One past the last non-zero byte of `buf[from..]`, or `from` if all zero.
pub(crate) fn nonzero_end(buf: &[u8], from: usize) -> usize {
    // Blocks reduced with OR vectorise well; an early-exit byte loop does not.
    const BLOCK: usize = 4096;
    let mut end = buf.len();
    while end > from {
        let start = end.saturating_sub(BLOCK).max(from);
        let block = &buf[start..end];
        if block.iter().fold(0u8, |a, &b| a | b) != 0 {
            let last = block.iter().rposition(|&b| b != 0).unwrap_or(0);
            return start + last + 1;
        }
        end = start;
    }
    from
}

/// First offset in `from..` holding a verifying record, if any. The
/// reference for [`resync_in`], which recovery uses.
#[cfg(test)]
pub(crate) fn resync(seg: &[u8], from: usize) -> Option<usize> {
    let last = seg.len().checked_sub(REC_HDR)?;
    (from..=last).find(|&o| matches!(parse_slot(seg, o, true), Slot::Record { .. }))
}

/// [`nonzero_end`] for a `buf` known to be zero outside `data` (sorted,
/// disjoint ranges, as the file system reports them): reads only those.
pub(crate) fn nonzero_end_in(buf: &[u8], from: usize, data: &[Range<usize>]) -> usize {
    for r in data.iter().rev() {
        if r.end <= from {
            break;
        }
        let (lo, hi) = (r.start.max(from), r.end.min(buf.len()));
        if lo < hi {
            let end = nonzero_end(&buf[..hi], lo);
            if end > lo {
                return end;
            }
        }
    }
    from
}

/// [`resync`] for a `seg` known to be zero outside `data`: a record starts
/// with a non-zero length field, so only offsets whose 4-byte length field
/// touches a data range can hold one.
pub(crate) fn resync_in(seg: &[u8], from: usize, data: &[Range<usize>]) -> Option<usize> {
    let last = seg.len().checked_sub(REC_HDR)?;
    data.iter().find_map(|r| {
        let (lo, hi) = (r.start.saturating_sub(3).max(from), r.end.min(last + 1));
        (lo..hi).find(|&o| matches!(parse_slot(seg, o, true), Slot::Record { .. }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(records: &[(u8, &[u8])], cap: usize) -> Vec<u8> {
        let mut v = vec![0u8; HDR];
        for (t, p) in records {
            encode_record(&mut v, *t, &[p], p.len() as u32);
        }
        v.resize(cap, 0);
        v
    }

    #[test]
    fn golden_record_bytes() {
        let mut v = Vec::new();
        encode_record(&mut v, 7, &[b"ab", b"c"], 3);
        let crc = crc32c::crc32c(&[4, 0, 0, 0, 7, b'a', b'b', b'c']);
        let mut want = vec![4, 0, 0, 0];
        want.extend_from_slice(&crc.to_le_bytes());
        want.extend_from_slice(&[7, b'a', b'b', b'c']);
        assert_eq!(v, want);
    }

    #[test]
    fn golden_segment_header() {
        let h = encode_segment_header(0x0102, 64 << 20);
        assert_eq!(&h[0..8], b"cmq-wal\n");
        assert_eq!(&h[8..12], &[1, 0, 0, 0]);
        assert_eq!(&h[12..20], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&h[20..28], &(64u64 << 20).to_le_bytes());
        assert_eq!(decode_segment_header(&h), Ok((0x0102, 64 << 20)));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
    }

    #[test]
    fn round_trip_and_end() {
        let img = image(&[(1, b"hello"), (2, b"")], 256);
        let Slot::Record { rtype, payload, next } = parse_slot(&img, HDR, true) else { panic!("first record") };
        assert_eq!((rtype, &img[payload]), (1, &b"hello"[..]));
        let Slot::Record { rtype, next: n2, .. } = parse_slot(&img, next, true) else { panic!("second record") };
        assert_eq!(rtype, 2);
        assert_eq!(parse_slot(&img, n2, true), Slot::End);
        assert_eq!(nonzero_end(&img, n2), n2);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = image(&[(3, &[9u8; 40])], HDR + 49);
        for cut in HDR..full.len() {
            let mut img = full[..cut].to_vec();
            // A truncated record reads as running past the end or as End
            // (fewer than 9 bytes left), never as a record.
            assert!(!matches!(parse_slot(&img, HDR, true), Slot::Record { .. }));
            img.resize(full.len(), 0);
            assert!(!matches!(parse_slot(&img, HDR, true), Slot::Record { .. }));
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let full = image(&[(3, &[9u8; 20])], HDR + 29);
        for byte in HDR..full.len() {
            for bit in 0..8 {
                let mut img = full.clone();
                img[byte] ^= 1 << bit;
                assert!(!matches!(parse_slot(&img, HDR, true), Slot::Record { .. }), "flip {byte}.{bit}");
            }
        }
    }

    /// Zeroes `img` outside `data`, as a file system reporting those
    /// ranges guarantees.
    fn only_in(img: &mut [u8], data: &[Range<usize>]) {
        let mut prev = 0;
        for r in data {
            img[prev..r.start].fill(0);
            prev = r.end;
        }
        let len = img.len();
        img[prev.min(len)..].fill(0);
    }

    fn ranges(cuts: &[usize], len: usize) -> Vec<Range<usize>> {
        let mut c: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
        c.sort_unstable();
        c.dedup();
        c.chunks_exact(2).map(|p| p[0]..p[1]).filter(|r| !r.is_empty()).collect()
    }

    proptest::proptest! {
        /// Reading only the data ranges finds what a full read finds.
        #[test]
        fn data_range_scans_match_full_scans(
            recs in proptest::collection::vec((1u8..=255, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)), 0..12),
            junk in proptest::collection::vec((0usize..600, 1u8..=255), 0..6),
            cuts in proptest::collection::vec(0usize..601, 0..8),
            from in 0usize..600,
        ) {
            let recs: Vec<(u8, &[u8])> = recs.iter().map(|(t, p)| (*t, &p[..])).collect();
            let mut img = image(&recs, 600);
            for (at, b) in junk {
                img[at] = b;
            }
            let data = ranges(&cuts, img.len());
            only_in(&mut img, &data);
            proptest::prop_assert_eq!(nonzero_end_in(&img, from, &data), nonzero_end(&img, from));
            proptest::prop_assert_eq!(resync_in(&img, from, &data), resync(&img, from));
        }
    }

    #[test]
    fn resync_finds_next_record() {
        let mut img = image(&[(1, b"aaaa"), (2, b"bbbb")], 128);
        let second = HDR + 13;
        img[HDR + 5] ^= 0xff;
        assert_eq!(resync(&img, HDR + 9), Some(second));
        assert_eq!(resync(&img, second + 1), None);
    }
}
