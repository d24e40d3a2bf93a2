//! Byte layout of segment headers and records (see the tables in `mod.rs`).
//! Pure functions over byte slices so that they can be tested and fuzzed
//! without files.

use std::ops::Range;

use super::{RECORD_HEADER_BYTES, RECORD_PAYLOAD_MAX_BYTES, SEGMENT_HEADER_BYTES};

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"cmq-wal\n";
/// Version 2: records carry a header CRC bound to their log position, and
/// the log holds durable marks (version 1 had a 9-byte header with one CRC).
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Record type of the WAL's own records (padding and durable marks); the
/// first payload byte says which (`WAL_KIND_*`). Never delivered by replay.
pub(crate) const RTYPE_WAL: u8 = 0;
/// A WAL record whose payload is all zero: filler written by repair.
pub(crate) const WAL_KIND_PADDING: u8 = 0;
/// A durable mark: the payload is this byte then a log position (u64): every
/// byte below it was covered by a completed fdatasync when the mark was
/// appended.
pub(crate) const WAL_KIND_DURABLE: u8 = 1;
/// Payload bytes of a durable mark.
pub(crate) const DURABLE_MARK_PAYLOAD_BYTES: usize = 9;
/// Record bytes of a durable mark, header included.
pub(crate) const DURABLE_MARK_BYTES: u64 = RECORD_HEADER_BYTES + DURABLE_MARK_PAYLOAD_BYTES as u64;

const HDR: usize = SEGMENT_HEADER_BYTES as usize;
const REC_HDR: usize = RECORD_HEADER_BYTES as usize;
/// Largest valid value of the length field (the whole record).
const LEN_FIELD_MAX: u32 = RECORD_PAYLOAD_MAX_BYTES + RECORD_HEADER_BYTES as u32;
/// Header bytes covered by the header CRC (after the position): length,
/// type and payload CRC.
const HEADER_CRC_AT: usize = 9;

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

/// Why a segment header is not usable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Damaged: repair may rewrite it.
    Bad(&'static str),
    /// A valid header of another format version: never rewritten.
    Version(u32),
}

/// Returns `(base, capacity)` or why the header is not valid.
pub(crate) fn decode_segment_header(h: &[u8]) -> Result<(u64, u64), HeaderError> {
    if h.len() < HDR {
        return Err(HeaderError::Bad("segment shorter than its header"));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Bad("bad segment magic"));
    }
    let crc = le_u32(h, 28).ok_or(HeaderError::Bad("short header"))?;
    if crc != crc32c::crc32c(&h[0..28]) {
        return Err(HeaderError::Bad("segment header CRC mismatch"));
    }
    let version = le_u32(h, 8).ok_or(HeaderError::Bad("short header"))?;
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let base = le_u64(h, 12).ok_or(HeaderError::Bad("short header"))?;
    let cap = le_u64(h, 20).ok_or(HeaderError::Bad("short header"))?;
    Ok((base, cap))
}

/// Total on-disk size of a record with this payload length.
pub(crate) fn record_bytes(payload_len: u64) -> u64 {
    RECORD_HEADER_BYTES + payload_len
}

/// CRC32C of a record header's first 9 bytes, bound to the record's log
/// position: a record image copied to another position (stale bytes of a
/// reused area, a log record inside a message body) does not verify there.
fn header_crc(pos: u64, head: &[u8]) -> u32 {
    // One pass over 17 bytes on the stack: two calls cost twice the setup.
    let mut b = [0u8; 8 + HEADER_CRC_AT];
    b[..8].copy_from_slice(&pos.to_le_bytes());
    b[8..].copy_from_slice(&head[..HEADER_CRC_AT]);
    crc32c::crc32c(&b)
}

/// Appends one framed record, to be stored at log position `pos`, to
/// `buf`. The caller has checked the payload length against
/// `RECORD_PAYLOAD_MAX_BYTES`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, pos: u64, rtype: u8, parts: &[&[u8]], payload_len: u32) {
    let mut pcrc = 0;
    for p in parts {
        pcrc = crc32c::crc32c_append(pcrc, p);
    }
    let mut head = [0u8; REC_HDR];
    head[0..4].copy_from_slice(&(payload_len + RECORD_HEADER_BYTES as u32).to_le_bytes());
    head[4] = rtype;
    head[5..9].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = header_crc(pos, &head[..HEADER_CRC_AT]);
    head[9..13].copy_from_slice(&hcrc.to_le_bytes());
    buf.reserve(REC_HDR + payload_len as usize);
    buf.extend_from_slice(&head);
    for p in parts {
        buf.extend_from_slice(p);
    }
}

/// A padding record of exactly `total` bytes (>= the header) at `pos`.
pub(crate) fn encode_padding(pos: u64, total: usize) -> Vec<u8> {
    debug_assert!(total >= REC_HDR);
    // All zero: the kind byte (`WAL_KIND_PADDING`) and the rest.
    let zeros = vec![WAL_KIND_PADDING; total - REC_HDR];
    let mut buf = Vec::with_capacity(total);
    encode_record(&mut buf, pos, RTYPE_WAL, &[&zeros], zeros.len() as u32);
    buf
}

/// Appends a durable mark claiming `durable` to `buf`, to be stored at `pos`.
pub(crate) fn encode_durable_mark(buf: &mut Vec<u8>, pos: u64, durable: u64) {
    let mut p = [0u8; DURABLE_MARK_PAYLOAD_BYTES];
    p[0] = WAL_KIND_DURABLE;
    p[1..9].copy_from_slice(&durable.to_le_bytes());
    encode_record(buf, pos, RTYPE_WAL, &[&p], DURABLE_MARK_PAYLOAD_BYTES as u32);
}

/// The position a verified WAL record claims durable, if it is a durable
/// mark. A claim beyond the mark's own position is impossible (the mark was
/// written after what it claims); it is capped there.
pub(crate) fn durable_claim(rtype: u8, payload: &[u8], own_pos: u64) -> Option<u64> {
    if rtype != RTYPE_WAL || payload.len() != DURABLE_MARK_PAYLOAD_BYTES || payload[0] != WAL_KIND_DURABLE {
        return None;
    }
    le_u64(payload, 1).map(|d| d.min(own_pos))
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
    /// Not a valid record. `next` is where the following record starts if
    /// the header verified (only the payload is damaged), so the damage is
    /// exactly this record.
    Bad {
        why: &'static str,
        next: Option<usize>,
    },
}

/// Parses the record slot at `off` of `seg`, which is the whole segment (or
/// a prefix of it standing for the readable part) and starts at log
/// position `base`. The header CRC is always checked (it is 13 bytes);
/// `verify` also checks the payload CRC.
pub(crate) fn parse_slot(seg: &[u8], base: u64, off: usize, verify: bool) -> Slot {
    let bad = |why| Slot::Bad { why, next: None };
    let Some(rest) = seg.len().checked_sub(off) else {
        return bad("offset past segment end");
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
    if len < RECORD_HEADER_BYTES as u32 || len > LEN_FIELD_MAX {
        return bad("impossible record length");
    }
    let end = off + len as usize;
    if end > seg.len() {
        return bad("record length runs past the segment end");
    }
    let stored_hcrc = le_u32(seg, off + HEADER_CRC_AT).unwrap_or(0);
    if stored_hcrc != header_crc(base + off as u64, &seg[off..off + HEADER_CRC_AT]) {
        return bad("record header CRC mismatch");
    }
    let payload = off + REC_HDR..end;
    if verify {
        let stored = le_u32(seg, off + 5).unwrap_or(0);
        if stored != crc32c::crc32c(&seg[payload.clone()]) {
            return Slot::Bad { why: "record payload CRC mismatch", next: Some(end) };
        }
    }
    Slot::Record { rtype: seg[off + 4], payload, next: end }
}

/// The length of a record at `off` whose header verifies at its position,
/// whatever its payload holds.
pub(crate) fn verified_len(seg: &[u8], base: u64, off: usize) -> Option<u64> {
    match parse_slot(seg, base, off, false) {
        Slot::Record { next, .. } | Slot::Bad { next: Some(next), .. } => Some((next - off) as u64),
        _ => None,
    }
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
pub(crate) fn resync(seg: &[u8], base: u64, from: usize) -> Option<usize> {
    let last = seg.len().checked_sub(REC_HDR)?;
    (from..=last).find(|&o| matches!(parse_slot(seg, base, o, true), Slot::Record { .. }))
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
/// touches a data range can hold one. Each candidate costs a length check
/// and a 17-byte header CRC; only a verifying header leads to the payload
/// CRC, so a search through any bytes stays linear.
pub(crate) fn resync_in(seg: &[u8], base: u64, from: usize, data: &[Range<usize>]) -> Option<usize> {
    // Nor can one start after the last non-zero byte: a data range may be
    // mostly zeros (cached pages of a preallocated segment count as data).
    let last = seg.len().checked_sub(REC_HDR)?.min(nonzero_end_in(seg, from, data));
    data.iter().find_map(|r| {
        let (lo, hi) = (r.start.saturating_sub(3).max(from), r.end.min(last + 1));
        (lo..hi).find(|&o| matches!(parse_slot(seg, base, o, true), Slot::Record { .. }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment image based at log position `base`.
    fn image(base: u64, records: &[(u8, &[u8])], cap: usize) -> Vec<u8> {
        let mut v = vec![0u8; HDR];
        for (t, p) in records {
            let pos = base + v.len() as u64;
            encode_record(&mut v, pos, *t, &[p], p.len() as u32);
        }
        v.resize(cap, 0);
        v
    }

    #[test]
    fn golden_record_bytes() {
        let mut v = Vec::new();
        encode_record(&mut v, 0x1122, 7, &[b"ab", b"c"], 3);
        let pcrc = crc32c::crc32c(b"abc");
        let mut want = vec![16, 0, 0, 0, 7];
        want.extend_from_slice(&pcrc.to_le_bytes());
        let mut bound = 0x1122u64.to_le_bytes().to_vec();
        bound.extend_from_slice(&want);
        want.extend_from_slice(&crc32c::crc32c(&bound).to_le_bytes());
        want.extend_from_slice(b"abc");
        assert_eq!(v, want);
    }

    #[test]
    fn golden_segment_header() {
        let h = encode_segment_header(0x0102, 64 << 20);
        assert_eq!(&h[0..8], b"cmq-wal\n");
        assert_eq!(&h[8..12], &[2, 0, 0, 0]);
        assert_eq!(&h[12..20], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&h[20..28], &(64u64 << 20).to_le_bytes());
        assert_eq!(decode_segment_header(&h), Ok((0x0102, 64 << 20)));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(matches!(decode_segment_header(&bad), Err(HeaderError::Bad(_))));
    }

    #[test]
    fn an_older_format_version_is_not_damage() {
        let mut h = encode_segment_header(0, 1 << 20);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&h), Err(HeaderError::Version(1)));
    }

    #[test]
    fn round_trip_and_end() {
        let img = image(1 << 20, &[(1, b"hello"), (2, b"")], 256);
        let base = 1 << 20;
        let Slot::Record { rtype, payload, next } = parse_slot(&img, base, HDR, true) else { panic!("first record") };
        assert_eq!((rtype, &img[payload]), (1, &b"hello"[..]));
        let Slot::Record { rtype, next: n2, .. } = parse_slot(&img, base, next, true) else { panic!("second record") };
        assert_eq!(rtype, 2);
        assert_eq!(parse_slot(&img, base, n2, true), Slot::End);
        assert_eq!(nonzero_end(&img, n2), n2);
    }

    #[test]
    fn a_record_does_not_verify_at_another_position() {
        let img = image(0, &[(1, b"hello")], 256);
        assert!(matches!(parse_slot(&img, 0, HDR, true), Slot::Record { .. }));
        assert!(matches!(parse_slot(&img, 4096, HDR, true), Slot::Bad { next: None, .. }));
        // The same bytes copied to another offset of the same segment.
        let mut moved = img.clone();
        moved.copy_within(HDR..HDR + 18, 100);
        assert!(matches!(parse_slot(&moved, 0, 100, true), Slot::Bad { .. }));
    }

    #[test]
    fn durable_marks_round_trip() {
        let mut v = vec![0u8; HDR];
        encode_durable_mark(&mut v, HDR as u64, 7);
        assert_eq!(v.len() as u64, SEGMENT_HEADER_BYTES + DURABLE_MARK_BYTES);
        let Slot::Record { rtype, payload, .. } = parse_slot(&v, 0, HDR, true) else { panic!("mark") };
        assert_eq!(durable_claim(rtype, &v[payload.clone()], HDR as u64), Some(7));
        // A claim past the mark itself is capped at the mark.
        assert_eq!(durable_claim(rtype, &v[payload.clone()], 5), Some(5));
        assert_eq!(durable_claim(1, &v[payload], 100), None);
        let pad = encode_padding(HDR as u64, 40);
        let mut img = vec![0u8; HDR];
        img.extend_from_slice(&pad);
        let Slot::Record { rtype, payload, next } = parse_slot(&img, 0, HDR, true) else { panic!("padding") };
        assert_eq!((rtype, next), (RTYPE_WAL, HDR + 40));
        assert_eq!(durable_claim(rtype, &img[payload], 0), None);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = image(0, &[(3, &[9u8; 40])], HDR + 53);
        for cut in HDR..full.len() {
            let mut img = full[..cut].to_vec();
            // A truncated record reads as running past the end or as End
            // (too few bytes left), never as a record.
            assert!(!matches!(parse_slot(&img, 0, HDR, true), Slot::Record { .. }));
            img.resize(full.len(), 0);
            assert!(!matches!(parse_slot(&img, 0, HDR, true), Slot::Record { .. }));
        }
    }

    #[test]
    fn every_flipped_bit_is_detected_and_only_payload_damage_keeps_the_length() {
        let full = image(0, &[(3, &[9u8; 20])], HDR + 33);
        for byte in HDR..full.len() {
            for bit in 0..8 {
                let mut img = full.clone();
                img[byte] ^= 1 << bit;
                match parse_slot(&img, 0, HDR, true) {
                    Slot::Record { .. } => panic!("flip {byte}.{bit} not detected"),
                    Slot::Bad { next: Some(n), .. } => {
                        assert!(byte >= HDR + REC_HDR, "header flip {byte}.{bit} kept a length");
                        assert_eq!(n, HDR + 33);
                    }
                    Slot::Bad { next: None, .. } | Slot::End => assert!(byte < HDR + REC_HDR, "flip {byte}.{bit}"),
                }
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
            let mut img = image(0, &recs, 600);
            for (at, b) in junk {
                img[at] = b;
            }
            let data = ranges(&cuts, img.len());
            only_in(&mut img, &data);
            proptest::prop_assert_eq!(nonzero_end_in(&img, from, &data), nonzero_end(&img, from));
            proptest::prop_assert_eq!(resync_in(&img, 0, from, &data), resync(&img, 0, from));
        }
    }

    #[test]
    fn resync_finds_next_record() {
        let mut img = image(0, &[(1, b"aaaa"), (2, b"bbbb")], 128);
        let second = HDR + 17;
        img[HDR + 1] ^= 0xff; // the first record's length
        assert_eq!(resync(&img, 0, HDR + 1), Some(second));
        assert_eq!(resync(&img, 0, second + 1), None);
    }
}
