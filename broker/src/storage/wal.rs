//! The WAL proper: appends, inline writes, group-committed fdatasyncs,
//! reads, replay, release, failure handling.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::error::{ReplayError, WalError};
use super::format::{
    encode_durable_mark, encode_record, parse_slot, record_bytes, Slot, DURABLE_MARK_BYTES, RTYPE_WAL,
};
use super::housekeeper::{Encode, Housekeeper, Prepared};
use super::io::{Engine, Flusher, Notifier};
use super::recovery::{recover, write_zeros};
use super::segment::{
    create_segment, eio, ensure_spare, fault, is_full, segment_path, sync_dir, Fault, Reserve, Segment,
};
use super::uring::Uring;
use super::{
    BATCHES_MAX, NO_SPACE_RETRY_MS, RECORD_HEADER_BYTES, RECORD_PAYLOAD_MAX_BYTES, ROLL_SYNC_AHEAD_MIN_BYTES,
    SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES, SEGMENT_MARK_ROOM_BYTES,
    SYNC_AHEAD_BYTES, TORN_WINDOW_BYTES,
};

/// Batch buffers kept for reuse, so steady-state appends do not allocate.
const BUFFER_POOL_MAX: usize = 4;
/// Buffers that grew beyond this (a burst of large bodies) are freed
/// rather than pooled, so one burst does not pin its memory forever.
const BUFFER_KEEP_MAX_BYTES: usize = 8 << 20;
/// Initial capacity of a fresh batch buffer.
const BUFFER_INITIAL_BYTES: usize = 64 << 10;
/// The next segment is prepared in the background once the active one is
/// this full (numerator / denominator), early enough that the roll never
/// waits for it at any realistic append rate.
const PREPARE_AT_FILL: (u64, u64) = (1, 2);

/// The order in which `Auto` tries the backends. Measured on this machine
/// when they ran whole flights (`WAL_AB=1`): equal medians within 1-4 %,
/// the thread backend never slower and with a lower p99. Since writes are
/// inline and the backends only run fdatasync (`WAL_LAT=1 cargo bench -p
/// cmq-broker --bench wal`, the two interleaved, three runs): submit to
/// durable within 2-4 % at the median (io_uring a few µs ahead, both ~130
/// µs for one record), p99 and CPU per record mixed run to run. io_uring
/// punts fdatasync to its io-wq kernel threads (the same thread hop as our
/// flusher), so neither can win by much; the thread stays first, io_uring
/// the fallback (and can be chosen explicitly).
const AUTO_ORDER: [Backend; 2] = [Backend::Thread, Backend::IoUring];

/// A position in the shard's log: a global byte offset (see `mod.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos(pub u64);

/// Identifies one submitted batch. Ids increase; completions are reported
/// in id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

/// Whether an append may use the emergency segment (the adopted spare; see
/// [`super::SPARE_SEGMENT_BYTES`] and the "Full disk" section in `mod.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppendClass {
    /// New data. When it needs a new segment and the disk is full, the
    /// append fails with [`WalError::NoSpace`]; it never goes into an
    /// emergency segment while that is the last one.
    #[default]
    Normal,
    /// Small records that lead to space being freed (deletes, receives,
    /// visibility changes): may fill the emergency segment, and get
    /// [`WalError::NoSpace`] only once that is used up too.
    Reserve,
}

/// Which backend runs the fdatasyncs (writes are always inline).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The faster backend on this machine (see `AUTO_ORDER`: the flusher
    /// thread), the other one if it cannot start.
    #[default]
    Auto,
    IoUring,
    Thread,
}

#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Capacity of new segments, in `SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX`.
    pub segment_bytes: u64,
    pub backend: Backend,
    /// Skip damaged records and missing segments instead of failing open.
    pub repair: bool,
    /// Fault injection for tests. While this file exists the disk behaves
    /// as if full: creating a segment (or the spare, or a checkpoint that
    /// outgrew its reserve) fails with ENOSPC (writes into preallocated
    /// segments still succeed, as on a real full disk). If it holds `eio`,
    /// every write, fdatasync, segment creation and checkpoint fails with
    /// EIO instead; `eio-create`: only segment creation fails, with EIO;
    /// `eio-sync`: only fdatasync fails, with EIO; `stall-sync`: fdatasync
    /// (thread backend) does not start while it says so. Checked before
    /// each write and each fdatasync, when a segment is created and in
    /// `try_recover`.
    pub fault_file: Option<PathBuf>,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig { segment_bytes: SEGMENT_BYTES_DEFAULT, backend: Backend::Auto, repair: false, fault_file: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base: LogPos,
    /// Bytes from `base` to the end of the last record appended to it
    /// (header included); `base + len` is where its data ends.
    pub len: u64,
    /// File size (preallocated).
    pub capacity: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// File offset of the first dropped byte.
    pub offset: u64,
    pub dropped_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRange {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// What `open` found and did.
#[derive(Clone, Debug)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Records that verified (the WAL's own padding and marks excluded).
    pub records: u64,
    pub end: LogPos,
    /// The highest position a durable mark in the log claims (see
    /// "Durable marks" in `mod.rs`).
    pub durable_claim: LogPos,
    pub torn_tail: Option<TornTail>,
    /// Damaged ranges skipped by `repair`.
    pub skipped: Vec<SkippedRange>,
    /// Files holding the bytes `repair` cut out (one per skipped range).
    pub quarantined: Vec<PathBuf>,
    /// Missing position ranges that `repair` filled with empty segments.
    pub filled_gaps: Vec<(LogPos, LogPos)>,
    /// The backend in use (never `Auto`).
    pub backend: Backend,
    /// Why `Auto` did not get its first choice, if it did not.
    pub backend_note: Option<String>,
}

/// Appended bytes of one segment that are not written yet, entirely or in
/// part. Readable (and replayable) from here until the whole chunk is
/// written, then from the segment map.
struct Chunk {
    seg_base: u64,
    file: Arc<File>,
    start: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` already written (always a record boundary).
    written: usize,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
}

/// A submitted batch whose completion has not been reported yet. It
/// completes when `written_end` (async) or `durable_end` (sync) reaches
/// its end.
struct Batch {
    id: u64,
    end: u64,
    sync: bool,
}

/// The segment written last.
#[derive(Clone)]
struct LastWritten {
    seg_base: u64,
    /// Its end position (base + capacity).
    seg_end: u64,
    file: Arc<File>,
}

/// The running fdatasync.
struct Syncing {
    seg_base: u64,
    /// `written_end` and `written_bytes` when it started: what it makes
    /// durable.
    to: u64,
    bytes_to: u64,
}

/// A durable mark appended but not yet written.
struct PendingMark {
    /// Its end position: written once `written_end` reaches it.
    end: u64,
    claim: u64,
}

/// Progress of the log, as returned by [`Wal::poll_completions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every byte below is written to the OS (page cache): see
    /// [`Wal::written_end`].
    pub written_end: LogPos,
    /// Every byte below is covered by a completed fdatasync: see
    /// [`Wal::durable_end`].
    pub durable_end: LogPos,
}

#[derive(PartialEq, Eq)]
enum Prep {
    Idle,
    /// The housekeeper is creating the next segment (at most one request
    /// is outstanding).
    Requested,
    /// The last background creation failed for another reason than a full
    /// disk; the roll retries synchronously.
    Failed,
}

pub struct Wal {
    dir: PathBuf,
    cfg: WalConfig,
    segs: VecDeque<Segment>,
    /// Index in `segs` of the segment receiving appends; later ones are
    /// empty segments prepared ahead.
    active: usize,
    /// Next append position.
    end: u64,
    /// End of the bytes sealed by `submit` (written, or waiting to be).
    sealed_end: u64,
    /// Sealed position up to which a sync was asked for.
    sync_asked_to: u64,
    /// End of the bytes written by a `pwrite` that returned (a record
    /// boundary); readable through the segment maps.
    written_end: u64,
    /// End of the bytes covered by a completed fdatasync.
    synced_end: u64,
    /// What `durable_end()` reports: `synced_end`, once a written durable
    /// mark claims every data record below it (see `note_durability`).
    durable_end: u64,
    /// End of the last record appended through `append` (marks excluded).
    data_end: u64,
    /// Highest claim of a durable mark appended, and of one written.
    claim_appended: u64,
    claim_written: u64,
    /// Marks appended and not yet written, in log order.
    marks: VecDeque<PendingMark>,
    /// Highest position a write was ever attempted up to (what a failure
    /// may have left on disk).
    high_water: u64,
    /// Bytes written since open, and how many of them a completed
    /// fdatasync covers. Their difference is what the torn window limits
    /// (positions also skip the unused tail of a segment at a roll).
    written_bytes: u64,
    durable_bytes: u64,
    /// The segment of the last write. Every written-but-not-durable byte
    /// lies in it: nothing is written into another segment until an
    /// fdatasync has covered everything written before.
    last_written: Option<LastWritten>,
    syncing: Option<Syncing>,
    syncs_started: u64,
    /// Records, bytes and fdatasyncs since open, for metrics.
    stats: crate::metrics::wal::WalStats,
    /// Sealed bytes wait for an fdatasync before they may be written (the
    /// torn window is full, or they go into the next segment).
    blocked: bool,
    /// Appended bytes not written yet (sealed or not), in log order.
    pending: VecDeque<Chunk>,
    /// Start of a record reserved by `reserve` and not yet filled by
    /// `patch`: nothing is sealed or written past it until it is.
    reserved: Option<u64>,
    /// Submitted batches not reported yet, in id order.
    batches: VecDeque<Batch>,
    next_id: u64,
    failed: bool,
    /// Why the WAL failed, for the first batch that cannot complete.
    fail_error: Option<WalError>,
    /// A batch has been reported failed since the failure: later ones fail
    /// too (completions never go back to `Ok` before `try_recover`).
    fail_reported: bool,
    engine: Engine,
    backend: Backend,
    notifier: Arc<Notifier>,
    keeper: Housekeeper,
    prep: Prep,
    /// Set while the disk is full (the last attempt to create the next
    /// segment failed with ENOSPC): the earliest time of the next attempt.
    /// Appends that need a new segment then fail with `NoSpace` at once.
    full_retry_at: Option<Instant>,
    /// Segment creations asked of the housekeeper (for tests).
    prepare_requests: u64,
    /// The file name of the checkpoint the housekeeper is writing.
    checkpointing: Option<String>,
    pool: Vec<Vec<u8>>,
}

fn validate(cfg: &WalConfig) -> Result<(), WalError> {
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&cfg.segment_bytes) {
        return Err(WalError::Config(format!(
            "segment_bytes = {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} \
             (at least two records of the maximum size)",
            cfg.segment_bytes
        )));
    }
    Ok(())
}

fn make_engine(
    want: Backend,
    notifier: &Arc<Notifier>,
    fault_file: &Option<PathBuf>,
) -> Result<(Engine, Backend, Option<String>), WalError> {
    let thread = || {
        Flusher::spawn(notifier.clone(), fault_file.clone())
            .map(Engine::Thread)
            .map_err(|e| WalError::io("spawn flusher thread", "cmq-wal-flush", e))
    };
    match want {
        Backend::Thread => Ok((thread()?, Backend::Thread, None)),
        Backend::IoUring => Uring::probe(notifier)
            .map(|u| (Engine::Uring(Box::new(u)), Backend::IoUring, None))
            .map_err(WalError::UringUnavailable),
        Backend::Auto => {
            let mut why = Vec::new();
            for b in AUTO_ORDER {
                let r = match b {
                    Backend::IoUring => Uring::probe(notifier).map(|u| Engine::Uring(Box::new(u))),
                    _ => Flusher::spawn(notifier.clone(), fault_file.clone()).map(Engine::Thread),
                };
                match r {
                    Ok(e) => {
                        let note = (!why.is_empty()).then(|| why.join("; "));
                        return Ok((e, b, note));
                    }
                    Err(e) => why.push(format!("{b:?} unusable: {e}")),
                }
            }
            Err(WalError::io("start an I/O backend", "cmq-wal", io::Error::other(why.join("; "))))
        }
    }
}

impl Wal {
    /// Opens (creating if missing) the log in `dir`, verifies it and
    /// truncates a torn tail. See the recovery rules in `mod.rs`.
    pub fn open(dir: &Path, cfg: WalConfig) -> Result<(Wal, RecoveryReport), WalError> {
        Self::open_replay(dir, cfg, LogPos(0), |_, _, _| Ok::<(), std::convert::Infallible>(())).map_err(|e| match e {
            ReplayError::Wal(e) => e,
            ReplayError::Callback(never) => match never {},
        })
    }

    /// `open` followed by `replay(from, f)`, in one pass: every record is
    /// delivered right after the open-time scan verified it, so each byte
    /// of the log is read and CRC-checked once at start-up (`replay`
    /// afterwards would read and check everything a second time). The
    /// records and their order are exactly those of `replay(from, f)` on
    /// the opened log. Only records that recovery keeps are delivered (the
    /// scan stops at the first bad record, torn or not). If this fails,
    /// some records may have been delivered already: discard what `f`
    /// built.
    pub fn open_replay<E>(
        dir: &Path,
        cfg: WalConfig,
        from: LogPos,
        f: impl FnMut(LogPos, u8, &[u8]) -> Result<(), E>,
    ) -> Result<(Wal, RecoveryReport), ReplayError<E>> {
        validate(&cfg)?;
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| WalError::io("create WAL directory", dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| WalError::io("fsync directory", parent, e))?;
            }
        }
        let rec = recover(dir, &cfg, from.0, f)?;
        let mut segs: VecDeque<Segment> = rec.segs.into();
        return_unused_spare(dir, &mut segs, rec.newest)?;
        // The emergency allowance comes first, before the first segment; on
        // a full disk the housekeeper keeps trying (with every preparation).
        if let Err(e) = ensure_spare(dir, &cfg.fault_file) {
            log::warn!("WAL in {}: cannot create the spare segment: {e}; retrying as space allows", dir.display());
        }
        if segs.is_empty() {
            let path = segment_path(dir, 0);
            let file = create_segment(dir, 0, cfg.segment_bytes, Reserve::Preallocate, &cfg.fault_file)
                .map_err(|e| WalError::io("create segment", &path, e))?;
            let mut seg = Segment::new(0, cfg.segment_bytes, path.clone(), file)
                .map_err(|e| WalError::io("map segment", &path, e))?;
            seg.map.set_stable(SEGMENT_HEADER_BYTES);
            segs.push_back(seg);
        }
        let active = rec.newest.min(segs.len() - 1);
        let end = segs[active].data_end;
        // Everything found is durable now. If no data record follows the
        // last mark, claiming `end` needs no new mark.
        let claim = if rec.data_end <= rec.claim { end } else { rec.claim };
        let notifier = Arc::new(Notifier::new().map_err(|e| WalError::io("create eventfd", dir, e))?);
        let (engine, backend, backend_note) = make_engine(cfg.backend, &notifier, &cfg.fault_file)?;
        let keeper = Housekeeper::spawn(dir, cfg.fault_file.clone())
            .map_err(|e| WalError::io("spawn housekeeper thread", dir, e))?;
        let report = RecoveryReport {
            segments: segs.len(),
            records: rec.records,
            end: LogPos(end),
            durable_claim: LogPos(rec.claim),
            torn_tail: rec.torn_tail,
            skipped: rec.skipped,
            quarantined: rec.quarantined,
            filled_gaps: rec.filled_gaps,
            backend,
            backend_note,
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            cfg,
            segs,
            active,
            end,
            sealed_end: end,
            reserved: None,
            sync_asked_to: end,
            written_end: end,
            // Recovery made everything found durable; no acknowledgement of
            // this process depends on it. What no mark claims yet (records
            // after the last mark) is claimed by the first write.
            synced_end: end,
            durable_end: end,
            data_end: rec.data_end,
            claim_appended: claim,
            claim_written: claim,
            marks: VecDeque::new(),
            high_water: end,
            written_bytes: 0,
            durable_bytes: 0,
            last_written: None,
            syncing: None,
            syncs_started: 0,
            stats: Default::default(),
            blocked: false,
            pending: VecDeque::new(),
            batches: VecDeque::new(),
            next_id: 1,
            failed: false,
            fail_error: None,
            fail_reported: false,
            engine,
            backend,
            notifier,
            keeper,
            prep: Prep::Idle,
            full_retry_at: None,
            prepare_requests: 0,
            checkpointing: None,
            pool: Vec::new(),
        };
        Ok((wal, report))
    }

    /// Calls `f(payload position, rtype, payload)` for every record that
    /// starts at or after `from`, in log order, including records not yet
    /// written. Padding records are skipped. CRCs are verified again; at
    /// start-up, [`Wal::open_replay`] delivers the same records from the
    /// open-time scan instead, reading and checking everything once.
    pub fn replay<E>(
        &self,
        from: LogPos,
        mut f: impl FnMut(LogPos, u8, &[u8]) -> Result<(), E>,
    ) -> Result<(), ReplayError<E>> {
        let mut deliver = |base: u64, bytes: &[u8], first: usize, path: &Path| -> Result<(), ReplayError<E>> {
            let mut off = first;
            loop {
                let verify = base + off as u64 >= from.0;
                match parse_slot(bytes, base, off, verify) {
                    Slot::Record { rtype, payload, next } => {
                        if verify && rtype != RTYPE_WAL {
                            f(LogPos(base + payload.start as u64), rtype, &bytes[payload])
                                .map_err(ReplayError::Callback)?;
                        }
                        off = next;
                    }
                    Slot::End => return Ok(()),
                    Slot::Bad { why, .. } => {
                        return Err(ReplayError::Wal(WalError::Corrupt {
                            path: path.to_path_buf(),
                            offset: off as u64,
                            reason: why.to_string(),
                        }))
                    }
                }
            }
        };
        for seg in &self.segs {
            if seg.end() <= from.0 {
                continue;
            }
            deliver(seg.base, seg.map.stable_bytes(), SEGMENT_HEADER_BYTES as usize, &seg.path)?;
        }
        // The written part of a chunk was delivered from its segment map.
        let mem = Path::new("<in-memory batch>");
        for c in &self.pending {
            deliver(c.start, &c.buf, c.written, mem)?;
        }
        Ok(())
    }

    /// Adds one record (`parts` concatenated) to the current batch and
    /// returns the position of its payload. Nothing is written until
    /// `submit`. Same as `append_class(.., AppendClass::Normal)`.
    pub fn append(&mut self, rtype: u8, parts: &[&[u8]]) -> Result<LogPos, WalError> {
        self.append_class(rtype, parts, AppendClass::Normal)
    }

    /// Adds one record of the given class (see [`AppendClass`]).
    ///
    /// Errors: `Unavailable` after a write failure (until `try_recover`),
    /// `NoSpace` when the record needs a segment that the full disk has no
    /// room for (nothing is added; the WAL stays writable and appends
    /// resume by themselves once a segment can be created), and the
    /// argument errors `ReservedType` and `RecordTooLarge`.
    pub fn append_class(&mut self, rtype: u8, parts: &[&[u8]], class: AppendClass) -> Result<LogPos, WalError> {
        if self.failed {
            return Err(WalError::Unavailable);
        }
        if rtype == RTYPE_WAL {
            return Err(WalError::ReservedType);
        }
        let payload: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if payload > u64::from(RECORD_PAYLOAD_MAX_BYTES) {
            return Err(WalError::RecordTooLarge { len: payload, max: RECORD_PAYLOAD_MAX_BYTES });
        }
        let rec = record_bytes(payload);
        // A loop only to step over a segment too small for the record (a
        // repair filler); a new segment always has room for it.
        while self.end + rec > self.append_limit(class) {
            self.roll(class)?;
        }
        let start = self.end;
        encode_record(self.chunk_at_end(), start, rtype, parts, payload as u32);
        self.end += rec;
        self.stats.appended(rec);
        self.data_end = self.end;
        self.maybe_prepare_next();
        Ok(LogPos(start + RECORD_HEADER_BYTES))
    }

    /// Appends a record of `len` zero bytes whose content is filled in by
    /// [`patch`](Self::patch) before the next `submit` (a header whose
    /// fields are known only after the records that follow it). Until
    /// then nothing is sealed or written at or past it.
    pub fn reserve(&mut self, rtype: u8, len: usize, class: AppendClass) -> Result<LogPos, WalError> {
        let pos = self.append_class(rtype, &[&vec![0u8; len]], class)?;
        self.reserved = Some(pos.0 - RECORD_HEADER_BYTES);
        Ok(pos)
    }

    /// Replaces the payload of the reserved record at `pos` (same length).
    pub fn patch(&mut self, pos: LogPos, payload: &[u8]) -> Result<(), WalError> {
        let start = pos.0.checked_sub(RECORD_HEADER_BYTES).ok_or(WalError::OutOfRange {
            pos: pos.0,
            len: payload.len() as u64,
            why: "not a record",
        })?;
        let oor = |why| WalError::OutOfRange { pos: pos.0, len: payload.len() as u64, why };
        if self.reserved != Some(start) {
            return Err(oor("not the reserved record"));
        }
        let c = self.pending.iter_mut().find(|c| c.start <= start && start < c.end()).ok_or(oor("not pending"))?;
        let off = usize::try_from(start - c.start).map_err(|_| oor("offset"))?;
        let total = RECORD_HEADER_BYTES as usize + payload.len();
        let old = c.buf.get(off..off + total).ok_or(oor("past the batch"))?;
        if u32::from_le_bytes([old[0], old[1], old[2], old[3]]) as usize != total {
            return Err(oor("length differs from the reservation"));
        }
        let rtype = old[4];
        let mut rec = Vec::with_capacity(total);
        encode_record(&mut rec, start, rtype, &[payload], payload.len() as u32);
        c.buf[off..off + total].copy_from_slice(&rec);
        self.reserved = None;
        Ok(())
    }

    /// Calls `f(position, rtype, payload)` for `count` records from the one
    /// whose payload is at `pos`, in log order, across segment ends; the
    /// WAL's own records (durable marks, padding) are skipped and not
    /// counted. Reads the segment maps and the unwritten batch: no system
    /// call.
    pub fn read_records(&self, pos: LogPos, count: u32, f: &mut dyn FnMut(LogPos, u8, &[u8])) -> Result<(), WalError> {
        let mut start = pos.0.checked_sub(RECORD_HEADER_BYTES).ok_or(WalError::OutOfRange {
            pos: pos.0,
            len: 0,
            why: "not a record",
        })?;
        let mut left = count;
        while left > 0 {
            match self.record_at(start) {
                Some((rtype, payload, next)) => {
                    if rtype != RTYPE_WAL {
                        f(LogPos(start + RECORD_HEADER_BYTES), rtype, payload);
                        left -= 1;
                    }
                    start = next;
                }
                None => {
                    // End of a segment's data: the log goes on at the next one.
                    let i = self.segs.partition_point(|s| s.base <= start);
                    let next = self.segs.get(i).filter(|s| s.base < self.end).ok_or(WalError::OutOfRange {
                        pos: start,
                        len: 0,
                        why: "the log ends before the records asked for",
                    })?;
                    start = next.base + SEGMENT_HEADER_BYTES;
                }
            }
        }
        Ok(())
    }

    /// The record starting at `start`: its type, payload and where the
    /// next one starts; None where the segment's data ends.
    fn record_at(&self, start: u64) -> Option<(u8, &[u8], u64)> {
        if start + RECORD_HEADER_BYTES > self.end {
            return None;
        }
        let head = self.read(LogPos(start), RECORD_HEADER_BYTES as u32).ok()?;
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        if len < RECORD_HEADER_BYTES {
            return None;
        }
        let rtype = head[4];
        let payload = self.read(LogPos(start + RECORD_HEADER_BYTES), (len - RECORD_HEADER_BYTES) as u32).ok()?;
        Some((rtype, payload, start + len))
    }

    /// The buffer of the pending chunk that ends at `end` in the active
    /// segment (a new one if there is none), to append a record to.
    fn chunk_at_end(&mut self) -> &mut Vec<u8> {
        let start = self.end;
        let seg = &self.segs[self.active];
        let extend = self.pending.back().is_some_and(|c| c.seg_base == seg.base && c.end() == start);
        if !extend {
            let chunk = Chunk {
                seg_base: seg.base,
                file: seg.file.clone(),
                start,
                buf: self.pool.pop().unwrap_or_else(|| Vec::with_capacity(BUFFER_INITIAL_BYTES)),
                written: 0,
            };
            self.pending.push_back(chunk);
        }
        match self.pending.back_mut() {
            Some(c) => &mut c.buf,
            // Unreachable: a chunk was pushed just above if none matched.
            None => unreachable!("a pending chunk exists"),
        }
    }

    /// True when a durable mark should be appended: a data record below
    /// the synced end is not yet claimed by any mark.
    fn mark_due(&self) -> bool {
        !self.failed && self.data_end.min(self.synced_end) > self.claim_appended
    }

    /// Appends a durable mark claiming `synced_end` (not written yet), or
    /// raises the claim of the last mark if it is the last record and not
    /// written yet (so a stalled write never piles marks up). Data records
    /// leave `SEGMENT_MARK_ROOM_BYTES` at the end of every segment, so a
    /// mark always fits in the active one: at most three follow the last
    /// data record of a segment (one written with it, one for the
    /// fdatasync running when it was written, one for the next, which
    /// covers it).
    fn append_mark(&mut self) {
        let claim = self.synced_end;
        if self.raise_unwritten_mark(claim) {
            return;
        }
        let start = self.end;
        if start + DURABLE_MARK_BYTES > self.segs[self.active].end() {
            debug_assert!(false, "no room for a durable mark at {start}");
            // Acknowledgements must not wait forever: expose without a mark.
            log::error!("WAL in {}: no room for a durable mark at {start}", self.dir.display());
            self.claim_appended = claim;
            self.claim_written = self.claim_written.max(claim);
            self.note_durability();
            return;
        }
        encode_durable_mark(self.chunk_at_end(), start, claim);
        self.end += DURABLE_MARK_BYTES;
        self.claim_appended = claim;
        self.marks.push_back(PendingMark { end: self.end, claim });
    }

    /// Re-encodes the last record, when it is a mark not written yet, with
    /// a higher claim. Returns whether it did.
    fn raise_unwritten_mark(&mut self, claim: u64) -> bool {
        let end = self.end;
        let Some(m) = self.marks.back_mut().filter(|m| m.end == end && m.end > self.written_end) else {
            return false;
        };
        let Some(c) = self.pending.back_mut().filter(|c| c.end() == end) else { return false };
        let at = c.buf.len() - DURABLE_MARK_BYTES as usize;
        c.buf.truncate(at);
        encode_durable_mark(&mut c.buf, end - DURABLE_MARK_BYTES, claim);
        m.claim = claim;
        self.claim_appended = claim;
        true
    }

    /// After a completed fdatasync: writes a mark claiming it right away
    /// (with whatever was appended before it), so that acknowledgements
    /// that wait for this fdatasync find their claim in the page cache
    /// before they go out; see "Durable marks" in `mod.rs`.
    fn mark_now(&mut self) {
        if !self.mark_due() || self.reserved.is_some() {
            // A reserved record is waiting for its content: the mark goes
            // out with the next submit instead.
            return;
        }
        self.append_mark();
        self.sealed_end = self.end;
        self.write_sealed();
    }

    /// Moves the reported durable end up to what the written marks allow:
    /// `synced_end` if every data record below it is claimed by a written
    /// mark, the last written claim otherwise. Never goes back.
    fn note_durability(&mut self) {
        // A failed log writes nothing, marks included: what an fdatasync
        // started before the failure covered is durable all the same.
        let unclaimed = !self.failed && self.data_end.min(self.synced_end) > self.claim_written;
        let exposed = if unclaimed { self.claim_written } else { self.synced_end };
        self.durable_end = self.durable_end.max(exposed);
    }

    /// Reads `len` bytes at `pos` (normally a payload returned by `append`)
    /// from the segment map once written, from the in-memory batch before.
    /// No system call, no allocation.
    pub fn read(&self, pos: LogPos, len: u32) -> Result<&[u8], WalError> {
        let (p, n) = (pos.0, u64::from(len));
        let oor = |why| WalError::OutOfRange { pos: p, len: n, why };
        let e = p.checked_add(n).ok_or_else(|| oor("overflows"))?;
        if e > self.end {
            return Err(oor("beyond the end of the log"));
        }
        if e > self.written_end {
            fn slice(p: u64, len: u32, start: u64, buf: &[u8]) -> Option<&[u8]> {
                let off = usize::try_from(p.checked_sub(start)?).ok()?;
                buf.get(off..off.checked_add(len as usize)?)
            }
            return self
                .pending
                .iter()
                .find_map(|c| slice(p, len, c.start, &c.buf))
                .ok_or_else(|| oor("not in a written segment or a pending batch"));
        }
        let i = self.segs.partition_point(|s| s.base <= p);
        let seg = i.checked_sub(1).and_then(|i| self.segs.get(i)).ok_or_else(|| oor("released"))?;
        seg.map.slice(p - seg.base, n).ok_or_else(|| oor("spans the end of a segment or of written data"))
    }

    /// Seals everything appended so far into a batch and writes it at once,
    /// on the calling thread (a buffered `pwrite` per touched segment: a
    /// copy into the page cache); `sync` asks for an fdatasync covering it,
    /// which runs in the background (see "Write path" in `mod.rs`).
    ///
    /// Returns None when there is nothing to do (nothing appended, and
    /// nothing unsynced if `sync`). With nothing appended but unsynced data
    /// outstanding, `sync` makes an fsync-only batch. The batch completes
    /// (see [`Wal::poll_completions`]) when its bytes are written (async)
    /// or durable (sync); an async batch written here is complete as soon
    /// as this returns. When the previous batch of the same kind still
    /// waits for work that has not started (a write held back by the torn
    /// window or a segment change, or an fdatasync not started yet), the
    /// new records join it and its id is returned again: they complete
    /// together, at no cost to either. A write error fails the WAL (see
    /// `try_recover`) and the batch completes with it; after a failure,
    /// batches complete with `WalError::Unavailable`.
    pub fn submit(&mut self, sync: bool) -> Option<BatchId> {
        // A reserved record still zero would be written as garbage.
        assert!(self.reserved.is_none(), "submit with a reserved record not yet patched");
        let new_data = self.end > self.sealed_end;
        if self.failed {
            if !new_data {
                return None;
            }
            self.sealed_end = self.end;
            self.recycle_pending();
            return Some(self.add_batch(sync));
        }
        // Only records need syncing; a durable mark alone does not (the
        // next fdatasync covers it, or recovery does).
        let need_sync = sync && self.sync_asked_to.max(self.synced_end) < self.data_end;
        if !new_data && !need_sync {
            return None;
        }
        if self.mark_due() {
            self.append_mark();
        }
        let id = self.add_batch(sync);
        self.sealed_end = self.end;
        if sync {
            self.sync_asked_to = self.end;
        }
        self.write_sealed();
        self.maybe_start_sync();
        Some(id)
    }

    /// Submitted batches whose completion has not been reported yet, plus
    /// one while an fdatasync runs: 0 means nothing is going on.
    pub fn in_flight(&self) -> usize {
        self.batches.len() + usize::from(self.syncing.is_some())
    }

    /// True when records were appended but not yet submitted.
    pub fn has_pending(&self) -> bool {
        self.end > self.sealed_end
    }

    /// Bytes appended but not yet submitted.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.iter().map(|c| c.end().saturating_sub(c.start.max(self.sealed_end))).sum()
    }

    /// Registers the completion eventfd (readable when an fdatasync
    /// finished). Edge-triggered is fine: `poll_completions` resets it.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut SourceFd(&self.notifier.raw_fd()), token, Interest::READABLE)
    }

    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut SourceFd(&self.notifier.raw_fd()))
    }

    /// Collects a finished fdatasync (advancing `durable_end`, writing what
    /// waited for it, and starting the next one if anything needs it), then
    /// appends the batches that completed to `out`, in id order, and
    /// returns the log's progress. Call it every loop turn and after
    /// `submit`: async batches written inline are complete at once, and no
    /// wakeup comes for them. Cheap when no fdatasync runs (no system
    /// call).
    pub fn poll_completions(&mut self, out: &mut Vec<(BatchId, Result<(), WalError>)>) -> Progress {
        if self.syncing.is_some() {
            self.notifier.drain();
            if let Some(r) = self.engine.poll() {
                self.finish_sync(r);
            }
        }
        if self.prep == Prep::Requested {
            self.maybe_prepare_next();
        }
        while let Some(b) = self.batches.front() {
            let done = self.written_end >= b.end && (!b.sync || self.durable_end >= b.end);
            let r = if done && !self.fail_reported {
                Ok(())
            } else if self.failed && self.syncing.is_none() {
                // Nothing more will complete: what is left failed.
                self.fail_reported = true;
                Err(self.fail_error.take().unwrap_or(WalError::Unavailable))
            } else {
                break;
            };
            out.push((BatchId(b.id), r));
            self.batches.pop_front();
        }
        self.progress()
    }

    /// Blocks until every submitted batch has completed (and no fdatasync
    /// runs) or `timeout` passes; returns whether all completed. For
    /// shutdown, tests and benchmarks; the event loop uses `register` +
    /// `poll_completions`.
    pub fn wait(&mut self, out: &mut Vec<(BatchId, Result<(), WalError>)>, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.poll_completions(out);
            if self.in_flight() == 0 {
                return true;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return false,
                },
                None => None,
            };
            self.notifier.wait(left);
        }
    }

    /// Next append position.
    pub fn end(&self) -> LogPos {
        LogPos(self.end)
    }

    /// Every byte below this has been written to the OS (a `pwrite`
    /// returned): acknowledgements of async data up to here may go out.
    /// Advances inside `submit` (and in `poll_completions`, for writes that
    /// waited for an fdatasync), always to a record boundary; never goes
    /// back. It does not limit reads or replay: appended records are
    /// readable at once.
    pub fn written_end(&self) -> LogPos {
        LogPos(self.written_end)
    }

    /// Every byte below this is covered by a completed fdatasync, and a
    /// durable mark claiming it is written (see "Durable marks" in
    /// `mod.rs`): acknowledgements of sync data up to here may go out, a
    /// crash loses nothing below it, and damage below it is corruption,
    /// never a torn write. Advances when `poll_completions` collects a
    /// finished fdatasync (which writes the mark at once); never goes back;
    /// never passes `written_end`.
    pub fn durable_end(&self) -> LogPos {
        LogPos(self.durable_end)
    }

    /// End of the last record appended through `append`: `end()` less the
    /// durable marks the WAL appended after it.
    pub fn records_end(&self) -> LogPos {
        LogPos(self.data_end)
    }

    /// Every byte below this is covered by a completed fdatasync (whether
    /// or not a durable mark claims it yet): what the torn window is
    /// measured from. For tests and metrics; acknowledgements use
    /// [`Wal::durable_end`].
    pub fn synced_end(&self) -> LogPos {
        LogPos(self.synced_end)
    }

    /// fdatasyncs started since open (for metrics and tests: with group
    /// commit, far fewer than sync batches under load).
    pub fn sync_count(&self) -> u64 {
        self.syncs_started
    }

    /// Records, bytes and fdatasyncs since open (for metrics).
    pub fn stats(&self) -> &crate::metrics::wal::WalStats {
        &self.stats
    }

    /// Both ends at once.
    pub fn progress(&self) -> Progress {
        Progress { written_end: LogPos(self.written_end), durable_end: LogPos(self.durable_end) }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True after a write, fsync or segment-creation failure, until
    /// `try_recover` succeeds.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// True while the disk is full: the next segment could not be created
    /// at the last attempt, so `Normal` appends get `NoSpace` once they
    /// reach the reserve. Clears by itself when a segment is created.
    pub fn is_out_of_space(&self) -> bool {
        self.full_retry_at.is_some()
    }

    /// Deletes (in the background) every segment lying entirely below
    /// `pos`, oldest first; never the active segment or one still being
    /// written. While the disk is full, a release that frees a segment
    /// retries creating the next one at once (the housekeeper runs that
    /// after the deletions, so it sees the space they free).
    pub fn release_before(&mut self, pos: LogPos) {
        let mut freed = false;
        let mut released_last_written = false;
        while self.active > 0 {
            let Some(front) = self.segs.front() else { break };
            if front.end() > pos.0 || front.end() > self.written_end {
                break;
            }
            if let Some(seg) = self.segs.pop_front() {
                self.active -= 1;
                if self.last_written.as_ref().is_some_and(|l| l.seg_base == seg.base) {
                    // Its unsynced bytes (every unsynced byte lies in it) are
                    // dead; holding its file would keep a deleted file's space
                    // allocated, which a full disk needs back.
                    self.last_written = None;
                    self.durable_bytes = self.written_bytes;
                    self.synced_end = self.synced_end.max(seg.end().min(self.written_end));
                    self.note_durability();
                    released_last_written = true;
                }
                log::debug!("releasing WAL segment {}", seg.path.display());
                // Unmapped, closed and unlinked on the housekeeper thread,
                // in order: unmapping stalls the caller for milliseconds.
                self.keeper.release(seg);
                freed = true;
            }
        }
        if released_last_written && self.blocked {
            // What waited for that segment to be durable may go now.
            self.write_sealed();
            self.maybe_start_sync();
        }
        if freed && self.full_retry_at.is_some() {
            self.full_retry_at = Some(Instant::now());
            self.retry_if_due(self.may_adopt(AppendClass::Normal));
        }
    }

    /// Writes the checkpoint file `name` (a snapshot of the caller's state
    /// at log position `pos`, encoded by `encode`) on the housekeeper
    /// thread, atomically and durably, once the log is durable up to `pos`
    /// (the housekeeper fdatasyncs it first if needed): after a crash, the
    /// file never claims records the log lost. Its space is kept
    /// preallocated, so a full disk does not stop it (see `checkpoint.rs`).
    /// Collect the outcome with [`Wal::poll_checkpoint`]; only then may
    /// segments below `pos` be released on its strength.
    ///
    /// Errors: `Busy` while another checkpoint runs or while `pos` is not
    /// written yet (submit first), `Unavailable` after a failure.
    pub fn checkpoint(&mut self, name: &str, pos: LogPos, encode: Encode) -> Result<(), WalError> {
        if self.failed {
            return Err(WalError::Unavailable);
        }
        if self.checkpointing.is_some() {
            return Err(WalError::Busy("a checkpoint is being written"));
        }
        if pos.0 > self.written_end {
            return Err(WalError::Busy("the checkpoint's position is not written yet"));
        }
        // Every written byte that is not durable lies in the last written
        // segment (see `write_sealed`): syncing it covers `pos`.
        let sync = (self.synced_end < pos.0).then(|| self.last_written.as_ref().map(|l| l.file.clone())).flatten();
        self.keeper.checkpoint(name.to_owned(), pos.0, encode, sync);
        self.checkpointing = Some(name.to_owned());
        Ok(())
    }

    /// The outcome of the checkpoint being written, once it is known: the
    /// position it covers (durable now), or why it failed (the previous
    /// version is still in place). None while it runs, or if none runs.
    pub fn poll_checkpoint(&mut self) -> Option<Result<LogPos, WalError>> {
        self.checkpointing.as_ref()?;
        let done = self.keeper.try_checkpoint()?;
        let name = self.checkpointing.take().unwrap_or_default();
        Some(
            done.result
                .map(|()| LogPos(done.pos))
                .map_err(|e| WalError::io("write checkpoint", self.dir.join(name), e)),
        )
    }

    /// Live segments, oldest first.
    /// Where the oldest segment held starts (everything below was released).
    pub fn first_segment_base(&self) -> LogPos {
        LogPos(self.segs.front().map_or(0, |s| s.base))
    }

    pub fn segment_stats(&self) -> Vec<SegmentInfo> {
        self.segs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let data_end = if i == self.active {
                    self.end
                } else if i > self.active {
                    s.base + SEGMENT_HEADER_BYTES
                } else {
                    s.data_end
                };
                SegmentInfo { base: LogPos(s.base), len: data_end - s.base, capacity: s.capacity }
            })
            .collect()
    }

    /// Disk space held by live segments (they are preallocated).
    pub fn disk_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.capacity).sum()
    }

    /// After a failure: re-validates the unsynced-but-written tail, makes
    /// it durable, erases what failed batches may have left on disk and
    /// resumes appends at the end of the last successfully written batch.
    /// Resumes at `written_end` (a record boundary), so nothing whose batch
    /// completed `Ok`, and nothing below `durable_end`, is lost; records of
    /// a failed batch below `written_end` stay (as after a crash there).
    /// Needs every completion collected (`in_flight() == 0`) and nothing
    /// pending (`Busy` otherwise); keeps failing while the fault (or the
    /// full disk) persists.
    pub fn try_recover(&mut self) -> Result<(), WalError> {
        if !self.failed {
            return Ok(());
        }
        if self.in_flight() > 0 {
            return Err(WalError::Busy("completions are outstanding; poll completions first"));
        }
        if self.has_pending() {
            return Err(WalError::Busy("records are pending; submit them first"));
        }
        match fault(&self.cfg.fault_file) {
            Fault::Eio => return Err(WalError::io("write", &self.segs[self.active].path, eio())),
            Fault::EioSync => return Err(WalError::io("fdatasync", &self.segs[self.active].path, eio())),
            _ => {}
        }
        if self.prep == Prep::Failed && self.active + 1 == self.segs.len() && self.full_retry_at.is_none() {
            // The failure was (or may be) the next segment's creation: make
            // sure appends can continue before declaring success. A full
            // disk is no reason to stay failed: that is the NoSpace state.
            let base = self.next_base();
            match create_segment(&self.dir, base, self.cfg.segment_bytes, Reserve::Preallocate, &self.cfg.fault_file) {
                Ok(file) => {
                    let seg = self.map_new(base, self.cfg.segment_bytes, file)?;
                    self.segs.push_back(seg);
                    self.prep = Prep::Idle;
                }
                Err(e) if is_full(&e) => self.enter_full(base, &e),
                Err(e) => return Err(WalError::io("create segment", segment_path(&self.dir, base), e)),
            }
        }
        let (d, w) = (self.synced_end, self.written_end);
        let h = self.high_water.max(w);
        for i in 0..self.segs.len() {
            let seg_data_end = if i == self.active { self.end } else { self.segs[i].data_end };
            let seg = &mut self.segs[i];
            let lo = d.max(seg.base + SEGMENT_HEADER_BYTES);
            let hi = w.min(seg_data_end).min(seg.end());
            if lo < hi {
                revalidate(seg, lo, hi)?;
            }
            let (zlo, zhi) = (w.max(seg.base + SEGMENT_HEADER_BYTES), h.min(seg.end()));
            if zlo < zhi {
                write_zeros(seg, zlo - seg.base, zhi - seg.base)
                    .map_err(|e| WalError::io("erase failed batch", &seg.path, e))?;
            }
            if lo < hi || zlo < zhi {
                seg.file.sync_data().map_err(|e| WalError::io("fdatasync", &seg.path, e))?;
            }
        }
        let idx = self.segs.partition_point(|s| s.base < w).saturating_sub(1);
        for (i, seg) in self.segs.iter_mut().enumerate() {
            if i == idx {
                seg.data_end = w;
                seg.map.set_stable(w - seg.base);
            } else if i > idx {
                seg.data_end = seg.base + SEGMENT_HEADER_BYTES;
                seg.map.set_stable(SEGMENT_HEADER_BYTES);
            }
        }
        log::warn!("WAL in {} recovered: resuming at {w} ({} unacknowledged bytes erased)", self.dir.display(), h - w);
        self.active = idx;
        self.end = w;
        self.sealed_end = w;
        self.sync_asked_to = w;
        // Re-validated and synced above. No acknowledgement is waiting on
        // it (failed batches fail); the next write carries a mark for it.
        self.synced_end = w;
        self.durable_end = w;
        self.data_end = self.data_end.min(w);
        self.claim_appended = self.claim_written;
        self.high_water = w;
        self.durable_bytes = self.written_bytes;
        self.last_written = None;
        self.blocked = false;
        self.recycle_pending();
        self.failed = false;
        self.fail_error = None;
        self.fail_reported = false;
        Ok(())
    }

    /// Adds a batch ending at the current end, or extends the last one
    /// when that costs it nothing (see `submit`). Called before the new
    /// bytes are written.
    fn add_batch(&mut self, sync: bool) -> BatchId {
        let full = self.batches.len() >= BATCHES_MAX;
        let (written, durable) = (self.written_end, self.synced_end);
        let syncing_to = self.syncing.as_ref().map(|s| s.to);
        if let Some(last) = self.batches.back_mut() {
            // Whether everything the last batch still needs is yet to start.
            let unstarted = if last.sync {
                last.end > durable && syncing_to.is_none_or(|to| last.end > to)
            } else {
                last.end > written
            };
            if !self.failed && unstarted && (last.sync == sync || full) {
                last.end = self.end;
                last.sync |= sync;
                return BatchId(last.id);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.batches.push_back(Batch { id, end: self.end, sync });
        BatchId(id)
    }

    /// Enters the failed state: unwritten appends are dropped, no write or
    /// fdatasync starts any more, and once a running fdatasync finished,
    /// every batch that has not completed fails (the first with `error`).
    fn fail(&mut self, error: WalError) {
        if !self.failed {
            self.failed = true;
            self.fail_error = Some(error);
        }
        self.blocked = false;
        self.recycle_pending();
        // Records and marks not written are dropped.
        self.marks.clear();
        self.data_end = self.data_end.min(self.written_end);
    }

    fn recycle_pending(&mut self) {
        while let Some(c) = self.pending.pop_front() {
            self.recycle(c.buf);
        }
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < BUFFER_POOL_MAX && buf.capacity() <= BUFFER_KEEP_MAX_BYTES {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Writes the sealed bytes, in order, as far as two rules allow: at
    /// most `TORN_WINDOW_BYTES` written but not durable, and nothing
    /// written into a segment while an older one holds bytes that are not
    /// durable. What they hold back is written when the fdatasync that
    /// frees it completes (`finish_sync`); `blocked` makes sure one starts.
    fn write_sealed(&mut self) {
        self.blocked = false;
        let mut fault_checked = false;
        while !self.failed {
            let Some(c) = self.pending.front() else { break };
            let from = c.start + c.written as u64;
            let to = c.end().min(self.sealed_end);
            if from >= to {
                break;
            }
            let unsynced = self.written_bytes - self.durable_bytes;
            if unsynced > 0 && self.last_written.as_ref().is_some_and(|l| l.seg_base != c.seg_base) {
                self.blocked = true;
                break;
            }
            let sealed = &c.buf[c.written..(to - c.start) as usize];
            let mut n = whole_records_within(sealed, TORN_WINDOW_BYTES.saturating_sub(unsynced));
            if n == 0 && unsynced == 0 {
                // A record larger than the window goes out alone: nothing
                // else is unsynced before it, and nothing is written after
                // it until it is durable (the window is then overfull).
                n = first_record_len(sealed);
            }
            if n == 0 {
                self.blocked = true;
                break;
            }
            let seg_base = c.seg_base;
            if !fault_checked {
                fault_checked = true;
                if fault(&self.cfg.fault_file) == Fault::Eio {
                    self.write_failed(seg_base, eio());
                    break;
                }
            }
            let end = from + n as u64;
            self.high_water = self.high_water.max(end);
            if let Err(e) = c.file.write_all_at(&c.buf[c.written..c.written + n], from - seg_base) {
                self.write_failed(seg_base, e);
                break;
            }
            self.written_end = end;
            self.written_bytes += n as u64;
            self.marks_written();
            if let Some(seg) = self.segs.iter_mut().rev().find(|s| s.base == seg_base) {
                seg.map.set_stable(end - seg_base);
                if self.last_written.as_ref().is_none_or(|l| l.seg_base != seg_base) {
                    let file = seg.file.clone();
                    self.last_written = Some(LastWritten { seg_base, seg_end: seg.end(), file });
                }
            }
            if let Some(c) = self.pending.front_mut() {
                c.written += n;
                if c.written == c.buf.len() {
                    if let Some(c) = self.pending.pop_front() {
                        self.recycle(c.buf);
                    }
                }
            }
        }
        // Everything sealed is written: so is every position below the
        // sealed end. (They differ only when a roll moved the end past the
        // unused tail of a segment and the next header without a record
        // following yet; those bytes are zeros and a durable header.)
        let unwritten = self.pending.front().is_some_and(|c| c.start + (c.written as u64) < self.sealed_end);
        if !self.failed && !unwritten {
            self.written_end = self.written_end.max(self.sealed_end);
        }
    }

    /// Takes note of the durable marks the last write covered.
    fn marks_written(&mut self) {
        let mut any = false;
        while let Some(m) = self.marks.front() {
            if m.end > self.written_end {
                break;
            }
            self.claim_written = self.claim_written.max(m.claim);
            self.marks.pop_front();
            any = true;
        }
        if any {
            self.note_durability();
        }
    }

    fn write_failed(&mut self, seg_base: u64, e: io::Error) {
        let path = segment_path(&self.dir, seg_base);
        log::error!("WAL write failed on {}: {e}; refusing writes until recovered", path.display());
        self.fail(WalError::io("write", path, e));
    }

    /// Starts an fdatasync of the segment holding the written-but-not-
    /// durable bytes, when none runs and something needs it: a sync batch,
    /// a write held back by the rules, or `SYNC_AHEAD_BYTES` outstanding
    /// (so that async writes rarely meet a full window; sooner near the
    /// end of the segment, see `ROLL_SYNC_AHEAD_MIN_BYTES`). It covers
    /// everything written so far; what is written while it runs waits for
    /// the next one (group commit).
    fn maybe_start_sync(&mut self) {
        if self.failed || self.syncing.is_some() {
            return;
        }
        let unsynced = self.written_bytes - self.durable_bytes;
        let last = self.last_written.clone();
        let Some(LastWritten { seg_base, seg_end, file }) = last.filter(|_| unsynced > 0) else {
            // Every byte written is durable; positions up to `written_end`
            // that no write covered (see `write_sealed`) hold none.
            self.synced_end = self.written_end;
            self.note_durability();
            return;
        };
        let asked = self.sync_asked_to > self.synced_end;
        let seg_left = seg_end.saturating_sub(self.written_end);
        let ahead_at = SYNC_AHEAD_BYTES.min(seg_left.max(ROLL_SYNC_AHEAD_MIN_BYTES));
        if !(asked || self.blocked || unsynced >= ahead_at) {
            return;
        }
        // The thread backend fails `eio-sync` itself, after the fact.
        let failing = match fault(&self.cfg.fault_file) {
            Fault::Eio => true,
            Fault::EioSync => self.backend == Backend::IoUring,
            _ => false,
        };
        let started = if failing { Err(eio()) } else { self.engine.start_sync(file) };
        match started {
            Ok(()) => {
                self.syncs_started += 1;
                self.stats.sync_started();
                self.syncing = Some(Syncing { seg_base, to: self.written_end, bytes_to: self.written_bytes });
            }
            Err(e) => self.sync_failed(seg_base, e),
        }
    }

    /// The running fdatasync finished with `r`.
    fn finish_sync(&mut self, r: io::Result<()>) {
        let Some(s) = self.syncing.take() else { return };
        match r {
            Ok(()) => {
                self.stats.sync_finished(&self.dir);
                self.synced_end = self.synced_end.max(s.to);
                self.durable_bytes = self.durable_bytes.max(s.bytes_to);
                self.write_sealed();
                self.mark_now();
                self.note_durability();
                self.maybe_start_sync();
            }
            Err(e) => {
                self.stats.sync_failed();
                self.sync_failed(s.seg_base, e)
            }
        }
    }

    fn sync_failed(&mut self, seg_base: u64, e: io::Error) {
        let path = segment_path(&self.dir, seg_base);
        log::error!("WAL fdatasync failed on {}: {e}; refusing writes until recovered", path.display());
        self.fail(WalError::io("fdatasync", path, e));
    }

    /// Where appends of `class` must stop in the active segment: short of
    /// the mark room at its end, or for `Normal` appends in an emergency
    /// segment, at its start (new data never goes into one: it rolls on to
    /// the next normal segment, so the emergency segment can be released
    /// as soon as the records in it are dead).
    fn append_limit(&self, class: AppendClass) -> u64 {
        let seg = &self.segs[self.active];
        if class == AppendClass::Normal && seg.emergency {
            seg.base + SEGMENT_HEADER_BYTES
        } else {
            seg.end() - SEGMENT_MARK_ROOM_BYTES.min(seg.capacity)
        }
    }

    /// Once a normal segment follows the emergency segment holding the
    /// head, moves the head into it, appends or not: the emergency segment
    /// then holds no head and is released (and its space given back) as
    /// soon as its records are dead, even on a shard nobody writes to.
    fn leave_emergency(&mut self) {
        let next = self.active + 1;
        if self.failed || !self.segs[self.active].emergency || self.segs.get(next).is_none_or(|s| s.emergency) {
            return;
        }
        self.segs[self.active].data_end = self.end;
        self.active = next;
        self.end = self.segs[next].base + SEGMENT_HEADER_BYTES;
    }

    /// Moves the head into the next segment when that one exists already
    /// and the caller says nothing the log holds is needed any more (no
    /// live data at or after the head: every record of the active segment
    /// is dead). A segment filled past `PREPARE_AT_FILL` has its successor
    /// prepared; if its consumers then drain it and nobody writes, the
    /// head would stay in it, so neither it (all dead) could be released
    /// nor the prepared one used: on a disk that shards share and that is
    /// full, that space is what the other shards wait for. Returns whether
    /// the head moved (the next `submit` writes the move).
    pub fn leave_dead_head(&mut self) -> bool {
        let next = self.active + 1;
        if self.failed || self.reserved.is_some() || next >= self.segs.len() {
            return false;
        }
        self.segs[self.active].data_end = self.end;
        self.active = next;
        self.end = self.segs[next].base + SEGMENT_HEADER_BYTES;
        true
    }

    /// Moves appends to the next segment (prepared in the background if
    /// all went well).
    fn roll(&mut self, class: AppendClass) -> Result<(), WalError> {
        if self.active + 1 == self.segs.len() {
            self.add_next(class)?;
        }
        self.segs[self.active].data_end = self.end;
        self.active += 1;
        let next = &self.segs[self.active];
        self.end = next.base + SEGMENT_HEADER_BYTES;
        Ok(())
    }

    fn next_base(&self) -> u64 {
        self.segs.back().map_or(0, Segment::end)
    }

    /// Whether a preparation may adopt the spare on a full disk: not while
    /// the last segment is an emergency one already, unless a `Reserve`
    /// append has used it up (records that free space may chain spares;
    /// new data never takes space from them).
    fn may_adopt(&self, class: AppendClass) -> bool {
        class == AppendClass::Reserve || !self.segs.back().is_some_and(|s| s.emergency)
    }

    /// Adds the segment after the last one, waiting for the background
    /// preparation if it runs. A full disk gives `NoSpace` and leaves the
    /// WAL writable; while the disk is full this never blocks (it collects
    /// or starts a background attempt). Any other failure fails the WAL.
    fn add_next(&mut self, class: AppendClass) -> Result<(), WalError> {
        let adopt = self.may_adopt(class);
        let segs = self.segs.len();
        if self.full_retry_at.is_some() {
            if self.prep == Prep::Requested {
                if let Some(p) = self.keeper.try_prepared() {
                    self.prep = Prep::Idle;
                    self.take_prepared(p)?;
                }
            }
            if self.segs.len() == segs {
                self.retry_if_due(adopt);
                return Err(WalError::NoSpace);
            }
            return Ok(());
        }
        let base = self.next_base();
        if self.prep == Prep::Idle {
            self.request_prepare(adopt);
        }
        if self.prep == Prep::Requested {
            self.prep = Prep::Idle;
            if let Some(p) = self.keeper.wait_prepared() {
                self.take_prepared(p)?;
            }
            if self.segs.len() > segs {
                return Ok(());
            }
            if self.full_retry_at.is_some() {
                return Err(WalError::NoSpace);
            }
        }
        // The background attempt failed for another reason: try once more
        // here before giving up.
        let path = segment_path(&self.dir, base);
        match create_segment(&self.dir, base, self.cfg.segment_bytes, Reserve::Preallocate, &self.cfg.fault_file) {
            Ok(file) => {
                self.prep = Prep::Idle;
                let seg = self
                    .map_new(base, self.cfg.segment_bytes, file)
                    .inspect_err(|_| self.fail(WalError::Unavailable))?;
                self.segs.push_back(seg);
                Ok(())
            }
            Err(e) if is_full(&e) => {
                self.prep = Prep::Idle;
                self.enter_full(base, &e);
                Err(WalError::NoSpace)
            }
            Err(e) => {
                self.prep = Prep::Failed;
                log::error!(
                    "WAL cannot create its next segment {}: {e}; refusing writes until recovered",
                    path.display()
                );
                self.fail(WalError::Unavailable);
                Err(WalError::io("create segment", path, e))
            }
        }
    }

    /// Takes the housekeeper's answer to a preparation request: adds the
    /// segment (a normal one, or the adopted spare on a full disk), or
    /// records why there is none. Errors only if mapping the new segment
    /// failed (which fails the WAL).
    fn take_prepared(&mut self, p: Prepared) -> Result<(), WalError> {
        let base = self.next_base();
        match p.result {
            Ok(new) if p.base == base => match self.map_new(base, new.capacity, new.file) {
                Ok(seg) => {
                    self.segs.push_back(seg);
                    if p.disk_full {
                        self.enter_full(base, &super::segment::no_space());
                    } else if self.full_retry_at.take().is_some() {
                        log::warn!("WAL in {}: disk space is back, new data is accepted again", self.dir.display());
                    }
                    Ok(())
                }
                Err(e) => {
                    log::error!("WAL cannot map its new segment: {e}; refusing writes until recovered");
                    self.prep = Prep::Failed;
                    self.fail(WalError::Unavailable);
                    Err(e)
                }
            },
            Ok(_) => {
                // Unreachable by construction (one request at a time,
                // segments only added here and in `add_next`); a file at a
                // stale base would break the contiguity check at the next
                // open, so remove it.
                debug_assert!(false, "prepared segment at a stale base");
                self.keeper.delete(segment_path(&self.dir, p.base));
                Ok(())
            }
            Err(e) if is_full(&e) => {
                self.enter_full(p.base, &e);
                Ok(())
            }
            Err(e) => {
                log::warn!("WAL could not prepare segment {}: {e}", segment_path(&self.dir, p.base).display());
                self.prep = Prep::Failed;
                Ok(())
            }
        }
    }

    /// Notes that the disk is full (a segment creation failed with ENOSPC).
    fn enter_full(&mut self, base: u64, e: &io::Error) {
        if self.full_retry_at.is_none() {
            log::warn!(
                "WAL in {}: disk full, cannot create segment {}: {e}; new data is refused (NoSpace) once the \
                 last segment is full, deletes and receives go on in the spare segment; retrying every \
                 {NO_SPACE_RETRY_MS} ms",
                self.dir.display(),
                segment_path(&self.dir, base).display()
            );
            self.full_retry_at = Some(Instant::now() + Duration::from_millis(NO_SPACE_RETRY_MS));
        }
    }

    /// While the disk is full: asks the housekeeper to try creating the
    /// next segment again, if no attempt is running and the last one is at
    /// least `NO_SPACE_RETRY_MS` old (or space was freed since).
    fn retry_if_due(&mut self, adopt: bool) {
        let Some(at) = self.full_retry_at else { return };
        if self.prep == Prep::Requested || self.active + 1 < self.segs.len() {
            return;
        }
        let now = Instant::now();
        if now < at {
            return;
        }
        self.request_prepare(adopt);
        self.full_retry_at = Some(now + Duration::from_millis(NO_SPACE_RETRY_MS));
    }

    /// Asks the housekeeper to create the segment after the last one
    /// (`adopt`: or, on a full disk, to turn the spare into it).
    fn request_prepare(&mut self, adopt: bool) {
        debug_assert!(self.prep != Prep::Requested, "one preparation at a time");
        self.keeper.prepare(self.next_base(), self.cfg.segment_bytes, adopt);
        self.prep = Prep::Requested;
        self.prepare_requests += 1;
    }

    fn map_new(&self, base: u64, cap: u64, file: File) -> Result<Segment, WalError> {
        let path = segment_path(&self.dir, base);
        let mut seg = Segment::new(base, cap, path.clone(), file).map_err(|e| WalError::io("map segment", &path, e))?;
        seg.map.set_stable(SEGMENT_HEADER_BYTES);
        Ok(seg)
    }

    /// Requests the next segment once the active one is filling up, and
    /// collects it when ready. A few comparisons when there is nothing to do.
    fn maybe_prepare_next(&mut self) {
        match self.prep {
            Prep::Requested => {
                if let Some(p) = self.keeper.try_prepared() {
                    self.prep = Prep::Idle;
                    // A mapping failure has failed the WAL; the next append
                    // reports it.
                    if self.take_prepared(p).is_ok() {
                        self.leave_emergency();
                    }
                }
            }
            Prep::Idle | Prep::Failed => {
                if self.active + 1 == self.segs.len() {
                    let a = &self.segs[self.active];
                    let (num, den) = PREPARE_AT_FILL;
                    if (self.end - a.base) * den > a.capacity * num {
                        let adopt = self.may_adopt(AppendClass::Normal);
                        if self.full_retry_at.is_some() {
                            self.retry_if_due(adopt);
                        } else if self.prep == Prep::Idle {
                            self.request_prepare(adopt);
                        }
                    }
                }
            }
        }
    }
}

/// An emergency segment that was prepared ahead of the newest data segment
/// and never written to (the process stopped first) goes back to being the
/// spare, or is deleted if there is a spare already: otherwise a restart on
/// a full disk would hold two emergency allowances, and a head left in the
/// full segment before it could never leave it.
fn return_unused_spare(dir: &Path, segs: &mut VecDeque<Segment>, newest: usize) -> Result<(), WalError> {
    while segs.len() > newest + 1 {
        let Some(last) = segs.back() else { break };
        if !last.emergency || last.data_end > last.base + SEGMENT_HEADER_BYTES {
            break;
        }
        let Some(seg) = segs.pop_back() else { break };
        let path = seg.path.clone();
        drop(seg);
        let spare = dir.join(super::segment::SPARE_NAME);
        let r = if spare.exists() { std::fs::remove_file(&path) } else { std::fs::rename(&path, &spare) };
        r.and_then(|()| sync_dir(dir)).map_err(|e| WalError::io("return an unused emergency segment", &path, e))?;
        log::info!("WAL in {}: unused emergency segment {} is the spare again", dir.display(), path.display());
    }
    Ok(())
}

/// Bytes of the longest run of whole records at the start of `buf` (back
/// to back, as appended) that fits in `room`.
fn whole_records_within(buf: &[u8], room: u64) -> usize {
    if buf.len() as u64 <= room {
        return buf.len();
    }
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    let mut off = 0;
    while off < buf.len() {
        let next = off + first_record_len(&buf[off..]);
        if next > room || next == off {
            break;
        }
        off = next;
    }
    off
}

/// Bytes of the first record of `buf` (its length field counts the whole
/// record), at most `buf.len()`.
fn first_record_len(buf: &[u8]) -> usize {
    let Some(len) = buf.get(0..4) else { return 0 };
    (u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize).min(buf.len())
}

/// Checks that `seg[lo..hi)` (global positions, record-aligned) still holds
/// valid records, then writes the same bytes back so the next fdatasync
/// really carries them to disk (after a failed writeback the kernel may
/// have marked them clean).
fn revalidate(seg: &mut Segment, lo: u64, hi: u64) -> Result<(), WalError> {
    let lost = |offset| WalError::Lost { path: seg.path.clone(), offset };
    let mut buf = vec![0u8; (hi - lo) as usize];
    seg.file.read_exact_at(&mut buf, lo - seg.base).map_err(|e| WalError::io("re-read written data", &seg.path, e))?;
    let mut off = 0;
    while off < buf.len() {
        match parse_slot(&buf, lo, off, true) {
            Slot::Record { next, .. } => off = next,
            Slot::End | Slot::Bad { .. } => return Err(lost(lo - seg.base + off as u64)),
        }
    }
    seg.file.write_all_at(&buf, lo - seg.base).map_err(|e| WalError::io("rewrite written data", &seg.path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_can_move_to_its_shard_thread() {
        fn is_send<T: Send>() {}
        is_send::<Wal>();
    }

    /// While the disk is full, appends that hit NoSpace in a tight loop ask
    /// for a segment creation at most once per NO_SPACE_RETRY_MS.
    #[test]
    fn full_disk_retries_are_rate_limited() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let fault = d.path().join("FAULT");
        let cfg = WalConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
            backend: Backend::Thread,
            fault_file: Some(fault.clone()),
            ..WalConfig::default()
        };
        let (mut wal, _) = Wal::open(&d.path().join("wal"), cfg)?;
        std::fs::write(&fault, b"")?;
        let big = vec![1u8; 1 << 20];
        while wal.append(1, &[&big]).is_ok() {}
        assert!(wal.is_out_of_space());
        let before = wal.prepare_requests;
        let t = Instant::now();
        let mut refused = 0u64;
        while t.elapsed() < Duration::from_millis(5 * NO_SPACE_RETRY_MS) {
            assert!(matches!(wal.append(1, &[&big]), Err(WalError::NoSpace)));
            refused += 1;
        }
        let asked = wal.prepare_requests - before;
        let most = (t.elapsed().as_millis() as u64).div_ceil(NO_SPACE_RETRY_MS) + 1;
        assert!(asked >= 2 && asked <= most, "{asked} creation attempts for {refused} refused appends");
        assert!(refused > 100 * asked);
        Ok(())
    }

    /// A drained segment whose successor was prepared gives the head to it
    /// on request, and is then released whole (the 4-shard full-disk case
    /// in tests/disk.rs waited forever on such a segment).
    #[test]
    fn a_dead_head_moves_into_the_prepared_segment_and_its_segment_goes() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let cfg = WalConfig { segment_bytes: SEGMENT_BYTES_MIN, backend: Backend::Thread, ..WalConfig::default() };
        let (mut wal, _) = Wal::open(&d.path().join("wal"), cfg)?;
        assert!(!wal.leave_dead_head(), "no next segment yet");
        let body = vec![7u8; 1 << 20];
        let (num, den) = PREPARE_AT_FILL;
        for _ in 0..SEGMENT_BYTES_MIN * num / den / (1 << 20) + 1 {
            wal.append(1, &[&body])?;
        }
        wal.submit(true).expect("a batch");
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while wal.segment_stats().len() < 2 {
            assert!(Instant::now() < deadline, "the next segment was never prepared");
            wal.wait(&mut done, Some(Duration::from_millis(10)));
            wal.poll_completions(&mut done);
        }
        let first = wal.segment_stats()[0];
        assert!(wal.end().0 < first.base.0 + first.capacity, "the head is still in the first segment");
        assert!(wal.leave_dead_head());
        assert_eq!(wal.end().0, first.base.0 + first.capacity + SEGMENT_HEADER_BYTES);
        assert!(!wal.leave_dead_head(), "no segment after the new head");
        wal.submit(true).expect("the move is written");
        assert!(wal.wait(&mut done, Some(Duration::from_secs(10))));
        wal.release_before(wal.end());
        let left = wal.segment_stats();
        assert_eq!(left.len(), 1, "the drained segment is released: {left:?}");
        assert_eq!(left[0].base.0, first.base.0 + first.capacity);
        // Appends go on in the new head segment.
        let pos = wal.append(2, &[b"after"])?;
        assert!(pos.0 > left[0].base.0);
        Ok(())
    }

    /// A reserved record is filled in before the batch is written; records
    /// read back across a segment end come in order, marks skipped.
    #[test]
    fn reserved_records_are_patched_and_records_read_back_across_segments() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let cfg = WalConfig { segment_bytes: SEGMENT_BYTES_MIN, backend: Backend::Thread, ..WalConfig::default() };
        let (mut wal, _) = Wal::open(&d.path().join("wal"), cfg)?;
        let head = wal.reserve(240, 8, AppendClass::Normal)?;
        assert!(wal.patch(LogPos(head.0 + 1), &[0; 8]).is_err(), "only the reserved record");
        // Enough records to cross into a second segment.
        let body = vec![7u8; 1 << 20];
        let mut positions = vec![head];
        for i in 0..20u8 {
            positions.push(wal.append(i + 1, &[&[i], &body])?);
        }
        assert!(wal.patch(head, &[0; 9]).is_err(), "length must match");
        wal.patch(head, &42u64.to_le_bytes())?;
        assert!(wal.patch(head, &[0; 8]).is_err(), "already filled");
        let id = wal.submit(true).expect("a batch");
        let mut done = Vec::new();
        assert!(wal.wait(&mut done, Some(Duration::from_secs(10))));
        assert!(done.iter().any(|(b, r)| *b == id && r.is_ok()));
        assert!(wal.segment_stats().len() >= 2, "the records span segments");
        let mut seen = Vec::new();
        wal.read_records(head, 21, &mut |pos, rt, payload| seen.push((pos, rt, payload[0], payload.len())))?;
        assert_eq!(seen.len(), 21);
        assert_eq!(seen[0], (head, 240, 42, 8));
        for (i, (pos, rt, first, len)) in seen.iter().skip(1).enumerate() {
            assert_eq!((*pos, *rt, *first as usize, *len), (positions[i + 1], i as u8 + 1, i, body.len() + 1));
        }
        assert!(wal.read_records(head, 100, &mut |_, _, _| {}).is_err(), "past the end");
        Ok(())
    }
}
