//! The WAL proper: appends, group-commit flights, reads, replay, release,
//! failure handling.

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
use super::format::{encode_record, parse_slot, record_bytes, Slot, RTYPE_PADDING};
use super::housekeeper::{Housekeeper, Prepared};
use super::io::{Engine, FlightResult, Flusher, IoFailure, Notifier, Op};
use super::recovery::{recover, write_zeros};
use super::segment::{create_segment, eio, fault, is_full, segment_path, sync_dir, Fault, Reserve, Segment};
use super::uring::Uring;
use super::{
    NO_SPACE_RETRY_MS, RECORD_HEADER_BYTES, RECORD_PAYLOAD_MAX_BYTES, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES, SEGMENT_RESERVE_BYTES, TORN_WINDOW_BYTES,
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
/// (`WAL_AB=1 cargo bench -p cmq-broker --bench wal`, the two interleaved):
/// equal medians within 1-4 %, the thread backend never slower and with
/// a lower p99, because io_uring punts buffered writes and fsync to its
/// io-wq kernel threads anyway (the same thread hop as our flusher) and
/// wakes the loop once per completed entry. io_uring stays the fallback
/// and can be chosen explicitly.
const AUTO_ORDER: [Backend; 2] = [Backend::Thread, Backend::IoUring];

/// A position in the shard's log: a global byte offset (see `mod.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos(pub u64);

/// Identifies one submitted batch. Ids increase; completions are reported
/// in id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

/// Whether an append may use the reserve at the end of the newest segment
/// (see [`SEGMENT_RESERVE_BYTES`] and the "Full disk" section in `mod.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppendClass {
    /// New data. Stops [`SEGMENT_RESERVE_BYTES`] short of the end of the
    /// last segment on disk; when it needs a new segment and the disk is
    /// full, the append fails with [`WalError::NoSpace`].
    #[default]
    Normal,
    /// Small records that lead to space being freed (deletes, receives,
    /// visibility changes): may fill the reserve, and get
    /// [`WalError::NoSpace`] only once it is used up.
    Reserve,
}

/// Which I/O backend runs the flights.
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
    /// as if full: creating a segment fails with ENOSPC (writes into
    /// preallocated segments still succeed, as on a real full disk). If it
    /// holds `eio`, every write, fdatasync and segment creation fails with
    /// EIO instead; `eio-create`: only segment creation fails, with EIO.
    /// Checked when a flight starts, when a segment is created and in
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
    /// Records that verified (padding included).
    pub records: u64,
    pub end: LogPos,
    pub torn_tail: Option<TornTail>,
    /// Damaged ranges skipped by `repair`.
    pub skipped: Vec<SkippedRange>,
    /// Missing position ranges that `repair` filled with empty segments.
    pub filled_gaps: Vec<(LogPos, LogPos)>,
    /// The backend in use (never `Auto`).
    pub backend: Backend,
    /// Why `Auto` did not get its first choice, if it did not.
    pub backend_note: Option<String>,
}

/// Appended bytes not yet handed to the I/O backend; one per touched segment.
struct Chunk {
    seg_base: u64,
    file: Arc<File>,
    start: u64,
    buf: Vec<u8>,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
}

/// Bytes of a running flight, readable until it completes.
struct FlightChunk {
    start: u64,
    buf: Arc<Vec<u8>>,
}

/// The sealed batch waiting for the I/O slot. Later submits join it.
struct Waiting {
    id: u64,
    end: u64,
    sync: bool,
}

struct Flight {
    id: u64,
    end: u64,
    chunks: Vec<FlightChunk>,
    /// Position the flight's last fdatasync covers, if it has one.
    synced_to: Option<u64>,
    /// (segment base, op name) per op, to name the file in an error.
    ops: Vec<(u64, &'static str)>,
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

/// Written-but-not-synced bytes, by the ops issued so far.
struct Unsynced {
    seg_base: u64,
    file: Arc<File>,
    bytes: u64,
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
    /// End of the bytes sealed by `submit` (waiting or issued).
    sealed_end: u64,
    /// Sealed position up to which a sync was asked for.
    sync_asked_to: u64,
    /// End of the bytes handed to flights.
    issued_end: u64,
    /// End of the bytes whose flight completed (readable through the maps).
    written_end: u64,
    /// End of the bytes covered by a completed fdatasync.
    durable_end: u64,
    /// Highest position ever handed to a flight (what a failure may have
    /// left on disk).
    high_water: u64,
    unsynced: Option<Unsynced>,
    pending: VecDeque<Chunk>,
    waiting: Option<Waiting>,
    flight: Option<Flight>,
    /// Completions to report, in id order.
    ready: VecDeque<(BatchId, Result<(), WalError>)>,
    next_id: u64,
    failed: bool,
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

fn make_engine(want: Backend, notifier: &Arc<Notifier>) -> Result<(Engine, Backend, Option<String>), WalError> {
    let thread = || {
        Flusher::spawn(notifier.clone())
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
                    _ => Flusher::spawn(notifier.clone()).map(Engine::Thread),
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
        let notifier = Arc::new(Notifier::new().map_err(|e| WalError::io("create eventfd", dir, e))?);
        let (engine, backend, backend_note) = make_engine(cfg.backend, &notifier)?;
        let keeper = Housekeeper::spawn(dir, cfg.fault_file.clone())
            .map_err(|e| WalError::io("spawn housekeeper thread", dir, e))?;
        let report = RecoveryReport {
            segments: segs.len(),
            records: rec.records,
            end: LogPos(end),
            torn_tail: rec.torn_tail,
            skipped: rec.skipped,
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
            sync_asked_to: end,
            issued_end: end,
            written_end: end,
            durable_end: end,
            high_water: end,
            unsynced: None,
            pending: VecDeque::new(),
            waiting: None,
            flight: None,
            ready: VecDeque::new(),
            next_id: 1,
            failed: false,
            engine,
            backend,
            notifier,
            keeper,
            prep: Prep::Idle,
            full_retry_at: None,
            prepare_requests: 0,
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
                match parse_slot(bytes, off, verify) {
                    Slot::Record { rtype, payload, next } => {
                        if verify && rtype != RTYPE_PADDING {
                            f(LogPos(base + payload.start as u64), rtype, &bytes[payload])
                                .map_err(ReplayError::Callback)?;
                        }
                        off = next;
                    }
                    Slot::End => return Ok(()),
                    Slot::Bad(why) => {
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
        let mem = Path::new("<in-memory batch>");
        if let Some(fl) = &self.flight {
            for c in &fl.chunks {
                deliver(c.start, &c.buf, 0, mem)?;
            }
        }
        for c in &self.pending {
            deliver(c.start, &c.buf, 0, mem)?;
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
        if rtype == RTYPE_PADDING {
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
            self.roll()?;
        }
        let start = self.end;
        let seg = &self.segs[self.active];
        let extend = self.pending.back().is_some_and(|c| c.seg_base == seg.base && c.end() == start);
        if !extend {
            let chunk = Chunk {
                seg_base: seg.base,
                file: seg.file.clone(),
                start,
                buf: self.pool.pop().unwrap_or_else(|| Vec::with_capacity(BUFFER_INITIAL_BYTES)),
            };
            self.pending.push_back(chunk);
        }
        if let Some(c) = self.pending.back_mut() {
            encode_record(&mut c.buf, rtype, parts, payload as u32);
        }
        self.end += rec;
        self.maybe_prepare_next();
        Ok(LogPos(start + RECORD_HEADER_BYTES))
    }

    /// Reads `len` bytes at `pos` (normally a payload returned by `append`)
    /// from the unsubmitted batch, the running flight or the segment map.
    /// No system call, no allocation.
    pub fn read(&self, pos: LogPos, len: u32) -> Result<&[u8], WalError> {
        let (p, n) = (pos.0, u64::from(len));
        let oor = |why| WalError::OutOfRange { pos: p, len: n, why };
        let e = p.checked_add(n).ok_or_else(|| oor("overflows"))?;
        if e > self.end {
            return Err(oor("beyond the end of the log"));
        }
        if p >= self.written_end {
            fn slice(p: u64, len: u32, start: u64, buf: &[u8]) -> Option<&[u8]> {
                let off = usize::try_from(p.checked_sub(start)?).ok()?;
                buf.get(off..off.checked_add(len as usize)?)
            }
            if let Some(fl) = &self.flight {
                if let Some(s) = fl.chunks.iter().find_map(|c| slice(p, len, c.start, &c.buf)) {
                    return Ok(s);
                }
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

    /// Seals everything appended so far into a batch and starts writing it
    /// if no flight is running; `sync` asks for an fdatasync after it.
    ///
    /// Returns None when there is nothing to do (nothing appended, and no
    /// unsynced data if `sync`). If a batch is already waiting for the
    /// running flight, the new records join it and its id is returned
    /// again (its `sync` becomes true if either asked). With nothing
    /// appended but unsynced data outstanding, `sync` makes an fsync-only
    /// batch. After a failure, the batch completes with
    /// `WalError::Unavailable`.
    pub fn submit(&mut self, sync: bool) -> Option<BatchId> {
        let new_data = self.end > self.sealed_end;
        if self.failed {
            if !new_data {
                return None;
            }
            self.sealed_end = self.end;
            self.recycle_pending();
            let id = self.take_id();
            self.push_ready(id, Err(WalError::Unavailable));
            return Some(BatchId(id));
        }
        let need_sync = sync && self.sync_asked_to < self.end;
        if !new_data && !need_sync {
            return None;
        }
        self.sealed_end = self.end;
        if sync {
            self.sync_asked_to = self.end;
        }
        let id = match &mut self.waiting {
            Some(w) => {
                w.end = self.end;
                w.sync |= sync;
                w.id
            }
            None => {
                let id = self.take_id();
                self.waiting = Some(Waiting { id, end: self.end, sync });
                id
            }
        };
        if self.flight.is_none() {
            self.start_waiting();
        }
        Some(BatchId(id))
    }

    /// Batches submitted whose completion has not been reported yet.
    pub fn in_flight(&self) -> usize {
        usize::from(self.flight.is_some()) + usize::from(self.waiting.is_some()) + self.ready.len()
    }

    /// True when records were appended but not yet submitted.
    pub fn has_pending(&self) -> bool {
        self.end > self.sealed_end
    }

    /// Bytes appended but not yet submitted.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.iter().map(|c| c.end().saturating_sub(c.start.max(self.sealed_end))).sum()
    }

    /// Registers the completion eventfd (readable when a flight finished).
    /// Edge-triggered is fine: `poll_completions` resets it.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut SourceFd(&self.notifier.raw_fd()), token, Interest::READABLE)
    }

    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut SourceFd(&self.notifier.raw_fd()))
    }

    /// Appends finished batches to `out`, in id order, and starts the
    /// waiting batch if the I/O slot freed up. Cheap when nothing finished.
    pub fn poll_completions(&mut self, out: &mut Vec<(BatchId, Result<(), WalError>)>) {
        if self.flight.is_some() {
            self.notifier.drain();
            if let Some(r) = self.engine.poll() {
                self.finish_flight(r);
                if !self.failed {
                    self.start_waiting();
                }
            }
        }
        if self.prep == Prep::Requested {
            self.maybe_prepare_next();
        }
        let limit = self.flight.as_ref().map_or(u64::MAX, |f| f.id);
        while self.ready.front().is_some_and(|(id, _)| id.0 < limit) {
            if let Some(c) = self.ready.pop_front() {
                out.push(c);
            }
        }
    }

    /// Blocks until every submitted batch has completed or `timeout`
    /// passes; returns whether all completed. For shutdown, tests and
    /// benchmarks; the event loop uses `register` + `poll_completions`.
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

    /// Everything below this survived a completed fdatasync.
    pub fn durable_end(&self) -> LogPos {
        LogPos(self.durable_end)
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
        while self.active > 0 {
            let Some(front) = self.segs.front() else { break };
            if front.end() > pos.0 || front.end() > self.written_end {
                break;
            }
            if let Some(seg) = self.segs.pop_front() {
                self.active -= 1;
                log::debug!("releasing WAL segment {}", seg.path.display());
                // The map and file close here; the unlink happens on the
                // housekeeper thread, in order.
                self.keeper.delete(seg.path.clone());
                freed = true;
            }
        }
        if freed && self.full_retry_at.is_some() {
            self.full_retry_at = Some(Instant::now());
            self.retry_if_due();
        }
    }

    /// Live segments, oldest first.
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
    /// Nothing whose batch completed `Ok` is lost. Needs no flight running
    /// and nothing pending (`Busy` otherwise); keeps failing while the
    /// fault (or the full disk) persists.
    pub fn try_recover(&mut self) -> Result<(), WalError> {
        if !self.failed {
            return Ok(());
        }
        if self.flight.is_some() || self.waiting.is_some() {
            return Err(WalError::Busy("a flight is still running; poll completions first"));
        }
        if self.has_pending() {
            return Err(WalError::Busy("records are pending; submit them first"));
        }
        if fault(&self.cfg.fault_file) == Fault::Eio {
            return Err(WalError::io("write", &self.segs[self.active].path, eio()));
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
        let (d, w) = (self.durable_end, self.written_end);
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
        self.issued_end = w;
        self.durable_end = w;
        self.high_water = w;
        self.unsynced = None;
        self.recycle_pending();
        self.failed = false;
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn push_ready(&mut self, id: u64, r: Result<(), WalError>) {
        let at = self.ready.partition_point(|(i, _)| i.0 < id);
        self.ready.insert(at, (BatchId(id), r));
    }

    /// Enters the failed state: the waiting batch and everything after it
    /// will complete with `Unavailable`.
    fn fail(&mut self) {
        self.failed = true;
        if let Some(w) = self.waiting.take() {
            self.push_ready(w.id, Err(WalError::Unavailable));
        }
        self.recycle_pending();
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

    /// Removes the pending bytes below `end` (a record boundary).
    fn take_pending_upto(&mut self, end: u64) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        while let Some(c) = self.pending.front_mut() {
            if c.end() <= end {
                if let Some(c) = self.pending.pop_front() {
                    chunks.push(c);
                }
            } else if c.start < end {
                let keep = (end - c.start) as usize;
                let mut tail = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(BUFFER_INITIAL_BYTES));
                tail.extend_from_slice(&c.buf[keep..]);
                c.buf.truncate(keep);
                chunks.push(Chunk {
                    seg_base: c.seg_base,
                    file: c.file.clone(),
                    start: c.start,
                    buf: std::mem::replace(&mut c.buf, tail),
                });
                c.start = end;
                break;
            } else {
                break;
            }
        }
        chunks
    }

    /// Starts the waiting batch as a flight (the I/O slot is free).
    fn start_waiting(&mut self) {
        debug_assert!(self.flight.is_none());
        let Some(w) = self.waiting.take() else { return };
        if fault(&self.cfg.fault_file) == Fault::Eio {
            let path = self.segs[self.active].path.clone();
            self.push_ready(w.id, Err(WalError::io("write", path, eio())));
            self.fail();
            return;
        }
        let chunks = self.take_pending_upto(w.end);
        let mut ops = Vec::with_capacity(2 * chunks.len() + 2);
        let mut desc = Vec::with_capacity(ops.capacity());
        let mut flight_chunks = Vec::with_capacity(chunks.len());
        let mut pos = self.issued_end;
        let mut synced_to = None;
        let mut sync_op = |unsynced: Unsynced, pos: u64, ops: &mut Vec<Op>| {
            ops.push(Op::Sync { seg_base: unsynced.seg_base, file: unsynced.file });
            synced_to = Some(pos);
        };
        for c in chunks {
            // Before writing into another segment, make the old one
            // durable: only the newest data segment may hold a torn tail.
            if let Some(u) = self.unsynced.take_if(|u| u.seg_base != c.seg_base) {
                sync_op(u, pos, &mut ops);
            }
            let buf = Arc::new(c.buf);
            let len = buf.len();
            let mut s = 0;
            while s < len {
                let used = self.unsynced.as_ref().map_or(0, |u| u.bytes);
                let room = TORN_WINDOW_BYTES - used;
                if room == 0 {
                    if let Some(u) = self.unsynced.take() {
                        sync_op(u, pos, &mut ops);
                    }
                    continue;
                }
                let n = room.min((len - s) as u64) as usize;
                ops.push(Op::Write {
                    seg_base: c.seg_base,
                    file: c.file.clone(),
                    off: c.start - c.seg_base + s as u64,
                    buf: buf.clone(),
                    start: s,
                    end: s + n,
                });
                s += n;
                pos = c.start + s as u64;
                self.unsynced = Some(Unsynced { seg_base: c.seg_base, file: c.file.clone(), bytes: used + n as u64 });
            }
            flight_chunks.push(FlightChunk { start: c.start, buf });
        }
        if w.sync {
            if let Some(u) = self.unsynced.take() {
                sync_op(u, pos, &mut ops);
            }
        }
        desc.extend(ops.iter().map(|o| (o.seg_base(), o.name())));
        self.issued_end = w.end;
        self.high_water = self.high_water.max(w.end);
        if ops.is_empty() {
            // An fsync-only batch with everything already synced.
            self.push_ready(w.id, Ok(()));
            return;
        }
        self.flight = Some(Flight { id: w.id, end: w.end, chunks: flight_chunks, synced_to, ops: desc });
        if let Err(f) = self.engine.start(ops) {
            self.finish_flight(Err(f));
        }
    }

    fn finish_flight(&mut self, r: FlightResult) {
        let Some(fl) = self.flight.take() else { return };
        match r {
            Ok(()) => {
                self.written_end = fl.end;
                if let Some(s) = fl.synced_to {
                    self.durable_end = self.durable_end.max(s);
                }
                let w = self.written_end;
                for seg in self.segs.iter_mut().rev() {
                    if seg.base >= w {
                        continue;
                    }
                    let stable = (w - seg.base).min(seg.capacity);
                    if stable as usize <= seg.map.stable() {
                        break;
                    }
                    seg.map.set_stable(stable);
                }
                self.push_ready(fl.id, Ok(()));
            }
            Err(IoFailure { op_index, error }) => {
                let (base, op) = fl.ops.get(op_index).copied().unwrap_or((self.segs[self.active].base, "write"));
                let path = segment_path(&self.dir, base);
                log::error!("WAL {op} failed on {}: {error}; refusing writes until recovered", path.display());
                self.push_ready(fl.id, Err(WalError::io(op, path, error)));
                self.fail();
            }
        }
        for c in fl.chunks {
            if let Ok(buf) = Arc::try_unwrap(c.buf) {
                self.recycle(buf);
            }
        }
    }

    /// Where appends of `class` must stop in the active segment: its end,
    /// or for `Normal` appends in the last segment on disk, the start of
    /// the reserve.
    fn append_limit(&self, class: AppendClass) -> u64 {
        let seg = &self.segs[self.active];
        if class == AppendClass::Normal && self.active + 1 == self.segs.len() {
            seg.end() - SEGMENT_RESERVE_BYTES.min(seg.capacity)
        } else {
            seg.end()
        }
    }

    /// Moves appends to the next segment (prepared in the background if
    /// all went well).
    fn roll(&mut self) -> Result<(), WalError> {
        if self.active + 1 == self.segs.len() {
            self.add_next()?;
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

    /// Adds the segment after the last one, waiting for the background
    /// preparation if it runs. A full disk gives `NoSpace` and leaves the
    /// WAL writable; while the disk is full this never blocks (it collects
    /// or starts a background attempt). Any other failure fails the WAL.
    fn add_next(&mut self) -> Result<(), WalError> {
        let segs = self.segs.len();
        if self.full_retry_at.is_some() {
            if self.prep == Prep::Requested {
                if let Some(p) = self.keeper.try_prepared() {
                    self.prep = Prep::Idle;
                    self.take_prepared(p)?;
                }
            }
            if self.segs.len() == segs {
                self.retry_if_due();
                return Err(WalError::NoSpace);
            }
            return Ok(());
        }
        let base = self.next_base();
        if self.prep == Prep::Idle {
            self.request_prepare();
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
                let seg = self.map_new(base, self.cfg.segment_bytes, file).inspect_err(|_| self.fail())?;
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
                self.fail();
                Err(WalError::io("create segment", path, e))
            }
        }
    }

    /// Takes the housekeeper's answer to a preparation request: adds the
    /// segment, or records why there is none. Errors only if mapping the
    /// new segment failed (which fails the WAL).
    fn take_prepared(&mut self, p: Prepared) -> Result<(), WalError> {
        let base = self.next_base();
        match p.result {
            Ok(file) if p.base == base => match self.map_new(base, self.cfg.segment_bytes, file) {
                Ok(seg) => {
                    self.segs.push_back(seg);
                    if self.full_retry_at.take().is_some() {
                        log::warn!("WAL in {}: disk space is back, new data is accepted again", self.dir.display());
                    }
                    Ok(())
                }
                Err(e) => {
                    log::error!("WAL cannot map its new segment: {e}; refusing writes until recovered");
                    self.prep = Prep::Failed;
                    self.fail();
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
                 reserve is reached, deletes and receives use the reserve; retrying every {NO_SPACE_RETRY_MS} ms",
                self.dir.display(),
                segment_path(&self.dir, base).display()
            );
            self.full_retry_at = Some(Instant::now() + Duration::from_millis(NO_SPACE_RETRY_MS));
        }
    }

    /// While the disk is full: asks the housekeeper to try creating the
    /// next segment again, if no attempt is running and the last one is at
    /// least `NO_SPACE_RETRY_MS` old (or space was freed since).
    fn retry_if_due(&mut self) {
        let Some(at) = self.full_retry_at else { return };
        if self.prep == Prep::Requested || self.active + 1 < self.segs.len() {
            return;
        }
        let now = Instant::now();
        if now < at {
            return;
        }
        self.request_prepare();
        self.full_retry_at = Some(now + Duration::from_millis(NO_SPACE_RETRY_MS));
    }

    /// Asks the housekeeper to create the segment after the last one.
    fn request_prepare(&mut self) {
        debug_assert!(self.prep != Prep::Requested, "one preparation at a time");
        self.keeper.prepare(self.next_base(), self.cfg.segment_bytes);
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
                    let _ = self.take_prepared(p);
                }
            }
            Prep::Idle | Prep::Failed => {
                if self.active + 1 == self.segs.len() {
                    let a = &self.segs[self.active];
                    let (num, den) = PREPARE_AT_FILL;
                    if (self.end - a.base) * den > a.capacity * num {
                        if self.full_retry_at.is_some() {
                            self.retry_if_due();
                        } else if self.prep == Prep::Idle {
                            self.request_prepare();
                        }
                    }
                }
            }
        }
    }
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
        match parse_slot(&buf, off, true) {
            Slot::Record { next, .. } => off = next,
            Slot::End | Slot::Bad(_) => return Err(lost(lo - seg.base + off as u64)),
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
}
