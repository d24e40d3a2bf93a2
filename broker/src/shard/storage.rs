//! The shard's side of the write-ahead log: the engine's `Log` over the
//! WAL, the group-commit batch cycle the event loop drives, the periodic
//! fdatasync of async data, recovery at start-up (catalog + replay), and
//! log-space housekeeping (releasing segments, compaction, catalogs).

use std::path::{Path, PathBuf};

use cmq_protocol::ErrorCode;
use mio::{Registry, Token};

use crate::consensus::entry::EntryIndex;
use crate::consensus::records::rtype as crtype;
use crate::consensus::release::{self, housekeeping, GatedRelease, Housekeeping, LogSpace};
use crate::consensus::scan::{LogScanner, Scanned, SnapshotBase};
use crate::consensus::{Applier, EntryLog, LogFailure, RawLog};
use crate::engine::record::rtype;
use crate::engine::{Catalog, Durability, EngineError, Log, ShardEngine};
use crate::storage::{AppendClass, BatchId, LogPos, Progress, RecoveryReport, ReplayError, Wal, WalConfig, WalError};

/// File holding the shard's latest catalog snapshot.
const CATALOG_FILE: &str = "catalog";

/// Messages compaction copies per loop turn, so it never stalls the shard.
const RELOCATE_PER_TURN_MAX: usize = 1024;

/// How often a failed log retries recovery.
const RECOVER_EVERY_MS: u64 = 1000;

/// The catalog snapshot on its way to disk. It is taken by `housekeep`
/// (which has the engine) at the log's end, handed to the WAL's
/// housekeeper thread by `submit` once every record before that position
/// is written (the housekeeper makes them durable, then writes the file),
/// and counts only once the WAL reports it durable: segments below a
/// catalog's position are released only after that.
enum CatalogWrite {
    Idle,
    /// In a group: wanted, to be taken at the end of the turn, once the
    /// turn's entry is proposed (never with an entry half built).
    Due {
        live: u64,
    },
    /// Taken; `live` is the lowest position live data needed then (it only
    /// grows: new data goes to the head), the bound for the release that
    /// follows the write. In a group it reflects entries up to `gate` and
    /// is written only once they are committed: a restart must never start
    /// from state a new leader could replace.
    Ready {
        catalog: Box<Catalog>,
        live: u64,
        gate: u64,
    },
    Writing {
        live: u64,
    },
}

/// The WAL as the consensus layer sees it: which records may use the full
/// disk's reserve, which need an fdatasync before they are acknowledged,
/// and storage errors as engine errors.
pub struct WalLog {
    wal: Wal,
    /// A record that must be fdatasync'd was appended since the last submit.
    sync_pending: bool,
    /// End of the last record that must be fdatasync'd before what
    /// depends on it is acknowledged.
    sync_mark: u64,
}

/// Records that free space, or must not stop while the disk is full
/// (consumers draining it; the small records of the consensus layer), may
/// use the log's reserve.
fn append_class(rt: u8) -> AppendClass {
    match rt {
        rtype::RECEIVED
        | rtype::DELETED
        | rtype::VISIBILITY_CHANGED
        | rtype::QUEUE_DELETED
        | rtype::PURGED
        | rtype::TRANSFER_DONE
        | crtype::ENTRY
        | crtype::HARD_STATE
        | crtype::CONF_STATE
        | crtype::SNAPSHOT => AppendClass::Reserve,
        _ => AppendClass::Normal,
    }
}

fn storage_error(e: WalError) -> LogFailure {
    match e {
        WalError::NoSpace => LogFailure(
            "storage unavailable: disk full; new data is refused until consumers delete messages or \
             space is freed on the disk (receives and deletes still work); retry later"
                .into(),
        ),
        e => LogFailure(format!("storage unavailable: {e}")),
    }
}

impl RawLog for WalLog {
    fn append(&mut self, rt: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, LogFailure> {
        let pos = self.wal.append_class(rt, parts, append_class(rt)).map_err(storage_error)?;
        if durability == Durability::Synced {
            self.sync_pending = true;
            self.sync_mark = self.wal.end().0;
        }
        Ok(pos.0)
    }

    fn reserve(&mut self, rt: u8, len: usize, durability: Durability) -> Result<u64, LogFailure> {
        let pos = self.wal.reserve(rt, len, append_class(rt)).map_err(storage_error)?;
        if durability == Durability::Synced {
            self.sync_pending = true;
            self.sync_mark = self.wal.end().0;
        }
        Ok(pos.0)
    }

    fn patch(&mut self, pos: u64, payload: &[u8]) {
        if let Err(e) = self.wal.patch(LogPos(pos), payload) {
            // Only ever the header reserved this turn: a mismatch is a bug,
            // and writing the unfilled header would make the log unreadable.
            panic!("patching the entry header at {pos}: {e}");
        }
    }

    fn read(&self, pos: u64, len: u32) -> Result<&[u8], LogFailure> {
        self.wal.read(LogPos(pos), len).map_err(|e| LogFailure(e.to_string()))
    }

    fn read_records(&self, pos: u64, count: u32, f: &mut dyn FnMut(u64, u8, &[u8])) -> Result<(), LogFailure> {
        self.wal
            .read_records(LogPos(pos), count, &mut |p, rt, payload| f(p.0, rt, payload))
            .map_err(|e| LogFailure(e.to_string()))
    }

    fn end(&self) -> u64 {
        self.wal.end().0
    }

    fn written_end(&self) -> u64 {
        self.wal.written_end().0
    }

    fn durable_end(&self) -> u64 {
        self.wal.durable_end().0
    }

    /// Raft's own records (votes, terms, configurations, a sync queue's
    /// entry on a follower) get their fdatasync this turn. The sync mark,
    /// which output waits on, stays where the engine's synced records put
    /// it: no reply depends on these records, and raising the mark past
    /// the entries made every later reply of an async queue look as if
    /// its call had logged a synced record (`Shard::logging` compares the
    /// mark, clamped to the entries' end, before and after the call), so it
    /// waited for the commit, a follower's periodic fdatasync: a 50 ms
    /// stall (`flush_interval_ms`) for async sends in a cluster.
    fn require_sync(&mut self) {
        self.sync_pending = true;
    }
}

/// How the shard's entries get their index and term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A single node: the shard numbers its own entries (term 1).
    Solo,
    /// A replica of a Raft group: Raft numbers them.
    Replicated,
}

/// Applies records read back from the log to the engine.
pub struct EngineApplier<'a>(pub &'a mut ShardEngine);

impl Applier for EngineApplier<'_> {
    fn apply(&mut self, pos: u64, rt: u8, payload: &[u8]) -> Result<(), String> {
        self.0.replay(pos, rt, payload).map_err(|e| e.to_string())
    }

    fn reset(&mut self, _snapshot: Option<&SnapshotBase>) {
        *self.0 = self.0.fresh();
    }

    fn entry_applied(&mut self, index: u64, end_pos: u64) {
        self.0.entry_applied(index, end_pos);
    }
}

/// The shard's applier: starting over reloads the shard's catalog (the
/// log's records before it are skipped by replay).
pub struct ShardApplier<'a> {
    pub engine: &'a mut ShardEngine,
    pub dir: &'a Path,
}

impl Applier for ShardApplier<'_> {
    fn apply(&mut self, pos: u64, rt: u8, payload: &[u8]) -> Result<(), String> {
        self.engine.replay(pos, rt, payload).map_err(|e| e.to_string())
    }

    fn reset(&mut self, snapshot: Option<&SnapshotBase>) {
        *self.engine = self.engine.fresh();
        let loaded = load_catalog(self.dir, self.engine).and_then(|file_pos| match snapshot {
            Some(b) if b.pos > file_pos => {
                *self.engine = self.engine.fresh();
                load_snapshot(self.engine, b)
            }
            _ => Ok(()),
        });
        if let Err(e) = loaded {
            // The catalog was readable at start-up; failing now means the
            // disk is failing: do not serve from a state missing queues.
            log::error!("reloading the catalog in {}: {e:#}; cmqd must restart", self.dir.display());
            std::process::abort();
        }
    }

    fn install_snapshot(&mut self, snapshot: &SnapshotBase) -> Result<(), String> {
        let mut fresh = self.engine.fresh();
        load_snapshot(&mut fresh, snapshot).map_err(|e| format!("{e:#}"))?;
        *self.engine = fresh;
        Ok(())
    }

    fn entry_applied(&mut self, index: u64, end_pos: u64) {
        self.engine.entry_applied(index, end_pos);
    }
}

/// Loads a snapshot's catalog into a fresh engine.
fn load_snapshot(engine: &mut ShardEngine, b: &SnapshotBase) -> anyhow::Result<()> {
    let c = Catalog::decode(&b.record.catalog).map_err(|e| anyhow::anyhow!("the snapshot's catalog: {e}"))?;
    engine.load_snapshot_catalog(&c, b.record.catalog_index, b.record.index, b.end);
    Ok(())
}

pub struct ShardLog {
    log: EntryLog<WalLog>,
    mode: Mode,
    /// Solo: the index the next entry gets.
    next_index: u64,
    dir: PathBuf,
    /// See `set_consensus_floor`.
    consensus_floor: u64,
    /// See `set_committed_index` (alone: everything).
    committed_index: u64,
    /// In a group: the entries the engine reflects (see `set_consensus_floor`).
    applied_index: u64,
    /// In a group: a release waiting for those entries to commit.
    gated_release: GatedRelease,
    /// Written-but-not-synced data exists since this time (async queues).
    unsynced_since_ms: Option<u64>,
    flush_interval_ms: u64,
    next_recover_ms: u64,
    /// Position of the last catalog known durable on disk.
    catalog_pos: u64,
    catalog_write: CatalogWrite,
    /// Reused by `poll_failure` (called every loop turn).
    completions: Vec<(BatchId, Result<(), WalError>)>,
}

impl ShardLog {
    /// Opens the shard's log directory and replays it into `engine`: every
    /// entry the log holds (solo), or the committed ones (replicated; the
    /// rest are Raft's to commit or replace). Returns what the log says
    /// about the consensus state too.
    pub fn open(
        dir: &Path,
        cfg: WalConfig,
        flush_interval_ms: u64,
        engine: &mut ShardEngine,
        mode: Mode,
    ) -> anyhow::Result<(ShardLog, RecoveryReport, Scanned)> {
        // The catalog first: replay skips the queue records it covers.
        let catalog_pos = load_catalog(dir, engine)?;
        // The open-time scan reads and verifies the log once and finds the
        // entries. Alone, every record is applied as it is read (entries
        // only number the turns); in a group only committed entries are,
        // read back once the scan knows the commit index.
        let mut scanner = if mode == Mode::Solo { LogScanner::tolerant() } else { LogScanner::default() };
        let (wal, report) = Wal::open_replay(dir, cfg, LogPos(0), |pos, rt, payload| {
            scanner.record(pos.0, pos.0 + payload.len() as u64, rt, payload).map_err(|e| e.to_string())?;
            if mode == Mode::Solo && rt < crtype::FIRST {
                engine.replay(pos.0, rt, payload).map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })
        .map_err(|e| match e {
            ReplayError::Wal(e) => anyhow::Error::new(e),
            ReplayError::Callback(e) => anyhow::anyhow!("reading {}: {e}", dir.display()),
        })?;
        let scanned = scanner.finish();
        let raw = WalLog { wal, sync_pending: false, sync_mark: 0 };
        let mut log = ShardLog {
            next_index: scanned.index.last_index() + 1,
            log: EntryLog::new(raw, mode == Mode::Replicated),
            mode,
            dir: dir.to_owned(),
            consensus_floor: u64::MAX,
            committed_index: if mode == Mode::Solo { u64::MAX } else { 0 },
            applied_index: 0,
            gated_release: GatedRelease::default(),
            unsynced_since_ms: None,
            flush_interval_ms,
            next_recover_ms: 0,
            catalog_pos,
            catalog_write: CatalogWrite::Idle,
            completions: Vec::new(),
        };
        for i in scanned.index.first_index()..=scanned.index.last_index() {
            if let Some(e) = scanned.index.get(i) {
                log.log.note_entry(e.header_pos, e.end_pos);
            }
        }
        if let Some(b) = scanned.snapshot.as_ref().filter(|b| b.pos > catalog_pos) {
            // A snapshot installed after the catalog file was written: it is
            // the base the entries after it apply to.
            *engine = engine.fresh();
            load_snapshot(engine, b).map_err(|e| anyhow::anyhow!("{}: {e:#}", dir.display()))?;
        }
        if mode == Mode::Replicated {
            let upto = scanned.hard_state.commit.min(scanned.index.last_index());
            log.apply_entries(&scanned.index, upto, engine)?;
        }
        Ok((log, report, scanned))
    }

    /// Applies entries `first..=upto` of `index` to `engine`.
    pub fn apply_entries(&self, index: &EntryIndex, upto: u64, engine: &mut ShardEngine) -> anyhow::Result<()> {
        let from = index.first_index();
        crate::consensus::readback::apply_range(index, from, upto, &self.log.raw, &mut EngineApplier(engine))
            .map_err(|e| anyhow::anyhow!("replaying {}: {e}", self.dir.display()))
    }

    /// Rebuilds `engine` (fresh) from the catalog and the log's entries up
    /// to `upto` (solo: all of them).
    pub fn replay_into(&mut self, engine: &mut ShardEngine, index: Option<(&EntryIndex, u64)>) -> anyhow::Result<()> {
        self.catalog_pos = load_catalog(&self.dir, engine)?;
        match index {
            Some((ix, upto)) => self.apply_entries(ix, upto, engine),
            None => {
                // Alone: every record in log order, as at start-up.
                let mut scanner = LogScanner::tolerant();
                self.log
                    .raw
                    .wal
                    .replay(LogPos(0), |pos, rt, payload| {
                        scanner.record(pos.0, pos.0 + payload.len() as u64, rt, payload).map_err(|e| e.to_string())?;
                        if rt < crtype::FIRST {
                            engine.replay(pos.0, rt, payload).map_err(|e| e.to_string())?;
                        }
                        Ok::<(), String>(())
                    })
                    .map_err(|e| anyhow::anyhow!("replaying {}: {e}", self.dir.display()))?;
                self.next_index = scanner.finish().index.last_index() + 1;
                Ok(())
            }
        }
    }

    /// The engine's log (entries, the WAL under them).
    pub fn entries(&mut self) -> &mut EntryLog<WalLog> {
        &mut self.log
    }

    pub fn entries_ref(&self) -> &EntryLog<WalLog> {
        &self.log
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Solo, before the turn's write: the turn's records become entry
    /// `next_index` (term 1). Replicated, Raft assigns entries (the shard
    /// proposes them before it submits).
    fn seal_solo(&mut self) {
        if self.mode != Mode::Solo {
            return;
        }
        if let Some(open) = self.log.take_open() {
            let prev_term = u64::from(self.next_index > 1);
            self.log.finish(&open, 1, self.next_index, prev_term);
            self.next_index += 1;
        }
    }

    fn wal(&self) -> &Wal {
        &self.log.raw.wal
    }

    fn wal_mut(&mut self) -> &mut Wal {
        &mut self.log.raw.wal
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        self.wal_mut().register(registry, token)
    }

    /// The bytes of a body written at `pos`.
    pub fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError> {
        self.wal().read(LogPos(pos), len).map_err(|e| EngineError::new(ErrorCode::INTERNAL, e.to_string()))
    }

    /// Whether records were appended since the last submit.
    pub fn has_pending(&self) -> bool {
        self.wal().has_pending()
    }

    /// Where the records logged so far end (the open entry included):
    /// output that reflects every record so far needs this much written
    /// (never the log's own end: hard state and durable marks after the
    /// last entry are not part of any entry a commit could reach).
    pub fn end(&self) -> u64 {
        self.log.entries_end()
    }

    /// End of the last record that must be durable before what depends on
    /// it goes out. Never past the entries (`end`): in a group, "durable"
    /// means committed, and records the consensus layer writes between
    /// entries (hard state, configuration) are never part of an entry a
    /// commit could reach; output waiting for them would wait for the next
    /// entry.
    pub fn sync_mark(&self) -> u64 {
        self.log.raw.sync_mark.min(self.end())
    }

    /// Output depends on the log up to `pos` being durable (a sync queue's
    /// message whose record was appended as async data, before the queue's
    /// flush policy changed): make sure an fdatasync will cover it.
    pub fn require_durable(&mut self, pos: u64) {
        let raw = &mut self.log.raw;
        if pos > raw.sync_mark {
            raw.sync_mark = pos;
            raw.sync_pending = true;
        }
    }

    /// How far the log is written and durable.
    pub fn progress(&self) -> Progress {
        self.wal().progress()
    }

    /// Seals this turn's records into a batch and writes it (one write,
    /// plus one fdatasync in the background if any of them needs it).
    pub fn submit(&mut self, now_ms: u64) {
        self.seal_solo();
        let raw = &mut self.log.raw;
        if raw.wal.has_pending() || raw.sync_pending {
            let sync = raw.sync_pending;
            raw.sync_pending = false;
            let _ = raw.wal.submit(sync);
        }
        // Anything written and not durable (async records, or a durable
        // mark the WAL wrote) is fdatasync'd within the flush interval.
        if self.unsynced_since_ms.is_none()
            && self.wal().durable_end() < self.wal().records_end()
            && !self.wal().is_failed()
        {
            self.unsynced_since_ms = Some(now_ms);
        }
        self.send_catalog();
    }

    /// Hands a catalog snapshot to the WAL's housekeeper once every record
    /// before its position is written.
    fn send_catalog(&mut self) {
        let CatalogWrite::Ready { catalog, live, gate } = &self.catalog_write else { return };
        if self.wal().written_end().0 < catalog.log_pos || self.committed_index < *gate {
            return;
        }
        let writing = CatalogWrite::Writing { live: *live };
        let CatalogWrite::Ready { catalog: c, .. } = std::mem::replace(&mut self.catalog_write, writing) else {
            return;
        };
        let pos = LogPos(c.log_pos);
        if let Err(e) = self.wal_mut().checkpoint(CATALOG_FILE, pos, Box::new(move || c.encode())) {
            log::warn!("cannot write catalog in {}: {e}", self.dir.display());
            self.catalog_write = CatalogWrite::Idle;
        }
    }

    /// Takes the outcome of a catalog write: from now on, segments below
    /// its position may be released, and those that nothing else needs are,
    /// at once (on a full disk, the space they free is what new data waits
    /// for).
    fn collect_catalog(&mut self) {
        let CatalogWrite::Writing { live } = self.catalog_write else { return };
        match self.wal_mut().poll_checkpoint() {
            Some(Ok(pos)) => {
                self.catalog_pos = self.catalog_pos.max(pos.0);
                self.catalog_write = CatalogWrite::Idle;
                let bound = live.min(self.catalog_pos);
                self.release_below(bound);
            }
            Some(Err(e)) => {
                log::warn!("cannot write catalog in {}: {e}", self.dir.display());
                self.catalog_write = CatalogWrite::Idle;
            }
            None => {}
        }
    }

    /// When async data written at `unsynced_since` must be fdatasync'd.
    pub fn periodic_sync_due(&self) -> Option<u64> {
        self.unsynced_since_ms.map(|t| t + self.flush_interval_ms)
    }

    /// fdatasyncs async data once it has waited the flush interval.
    pub fn periodic_sync(&mut self, now_ms: u64) {
        if self.periodic_sync_due().is_some_and(|d| d <= now_ms) {
            self.seal_solo();
            self.unsynced_since_ms = None;
            let _ = self.wal_mut().submit(true);
        }
    }

    /// Shutdown: fdatasyncs everything written so far and waits (bounded)
    /// for it. Returns whether the log is fully durable.
    pub fn sync_and_wait(&mut self, timeout: std::time::Duration) -> bool {
        self.seal_solo();
        self.unsynced_since_ms = None;
        let _ = self.wal_mut().submit(true);
        let mut done = Vec::new();
        self.wal_mut().wait(&mut done, Some(timeout)) && self.wal().durable_end() >= self.wal().records_end()
    }

    /// Collects the batches that finished since the last call; returns the
    /// first that failed (its id and why), if any. What succeeded needs no
    /// answer: output is released from `progress()`.
    pub fn poll_failure(&mut self) -> Option<(u64, String)> {
        let progress = self.log.raw.wal.poll_completions(&mut self.completions);
        self.collect_catalog();
        if progress.durable_end >= self.wal().records_end() {
            // Everything is durable already (the WAL syncs ahead on its own).
            self.unsynced_since_ms = None;
        }
        let failed = self.completions.iter().find_map(|(id, r)| r.as_ref().err().map(|e| (id.0, e.to_string())));
        self.completions.clear();
        failed
    }

    pub fn is_failed(&self) -> bool {
        self.wal().is_failed()
    }

    pub fn is_idle(&self) -> bool {
        self.wal().in_flight() == 0 && !self.wal().has_pending()
    }

    /// After a write failure: tries to resume writing (at most once a
    /// second). Returns true when it just became writable again.
    pub fn try_recover(&mut self, now_ms: u64) -> bool {
        if !self.wal().is_failed() || now_ms < self.next_recover_ms || !self.is_idle() {
            return false;
        }
        self.next_recover_ms = now_ms + RECOVER_EVERY_MS;
        match self.wal_mut().try_recover() {
            Ok(()) => {
                // Appends that were never written are gone; their positions
                // will be reused, so a catalog taken after them is void.
                let end = self.wal().end().0;
                self.log.raw.sync_mark = self.log.raw.sync_mark.min(end);
                self.log.reset_after_recovery();
                if matches!(self.catalog_write, CatalogWrite::Ready { .. }) {
                    self.catalog_write = CatalogWrite::Idle;
                }
                log::info!("log {} writable again", self.dir.display());
                return true;
            }
            Err(WalError::Lost { .. }) => {
                // Written data vanished from the page cache: only a restart
                // (replay from disk) gives a state we can trust.
                log::error!("log {}: written data lost after an I/O error; cmqd must restart", self.dir.display());
                std::process::abort();
            }
            Err(e) => log::debug!("log {} still unavailable: {e}", self.dir.display()),
        }
        false
    }

    /// Housekeeping, called about once a second: release segments nothing
    /// needs, write a catalog when only old queue records hold a segment,
    /// and compact the oldest segment when it is mostly garbage.
    /// Returns whether compaction should continue next turn.
    pub fn housekeep(&mut self, engine: &mut ShardEngine) -> bool {
        self.collect_catalog();
        if let Some(bound) = self.gated_release.take_due(self.committed_index) {
            self.release_below(bound);
        }
        let live = engine.min_live_pos().unwrap_or(u64::MAX);
        if live >= self.wal().end().0 {
            // Everything in the head segment is dead: if its successor is
            // ready, move on, so a catalog below lets the dead one go.
            self.wal_mut().leave_dead_head();
        }
        let stats = self.wal().segment_stats();
        let Some(oldest) = stats.first() else { return false };
        let space = LogSpace {
            oldest_end: oldest.base.0 + oldest.capacity,
            oldest_capacity: oldest.capacity,
            segments: stats.len(),
            live,
            unapplied_from: self.consensus_floor,
            catalog_pos: self.catalog_pos,
            head: self.wal().end().0,
            catalog_idle: matches!(self.catalog_write, CatalogWrite::Idle),
            failed: self.is_failed(),
        };
        log::debug!("log {}: {space:?}", self.dir.display());
        match housekeeping(&space, |b| self.release_floor(b), |p| engine.live_bytes_below(p)) {
            Housekeeping::Release { bound } => match self.mode {
                Mode::Solo => self.release_below(bound),
                // The bound may reflect entries not committed yet.
                Mode::Replicated => self.gated_release.hold(bound, self.applied_index),
            },
            Housekeeping::Catalog { live } => {
                // Only queue-management records keep the oldest segment:
                // snapshot them (written off the loop; released once durable).
                self.catalog_write = match self.mode {
                    Mode::Solo => {
                        let pos = self.wal().end().0;
                        CatalogWrite::Ready { catalog: Box::new(engine.catalog(pos)), live, gate: 0 }
                    }
                    Mode::Replicated => CatalogWrite::Due { live },
                };
            }
            // Live messages keep the oldest segment: copy them forward.
            Housekeeping::Compact => return true,
            Housekeeping::Nothing => {}
        }
        false
    }

    /// Releases whole segments below `bound`, but never the header of an
    /// entry with a record at or after it (an entry's records may follow
    /// its header into the next segment, and a restart reads entries from
    /// their header), nor what the consensus layer still needs.
    fn release_below(&mut self, bound: u64) {
        let to = self.release_floor(bound);
        self.wal_mut().release_before(LogPos(to));
        let first = self.wal().segment_stats().first().map_or(to, |s| s.base.0);
        self.log.forget_below(first);
    }

    /// In a group, after the turn's entry is proposed: takes a catalog that
    /// `housekeep` found due; it reflects the entries up to `applied`, which
    /// ends at log position `applied_end`, and is written once they are
    /// committed (`set_committed_index`). Its position is `applied_end`, not
    /// the log's end: a follower's log holds entries appended but not
    /// applied yet, and a catalog claiming them made a restart skip their
    /// queue-management records and idempotency keys (the simulator's seed
    /// 7, once its sends carried keys).
    pub fn capture_catalog(&mut self, engine: &ShardEngine, applied: u64, applied_end: u64) {
        if engine.catalog_pending() {
            // A snapshot's catalog is ahead of what is applied: wait.
            return;
        }
        if let CatalogWrite::Due { live } = self.catalog_write {
            let pos = applied_end.min(self.wal().end().0);
            self.catalog_write = CatalogWrite::Ready { catalog: Box::new(engine.catalog(pos)), live, gate: applied };
        }
    }

    /// In a group: entries up to `index` are committed, and a restart
    /// would apply them (`Replica::durable_commit_index`).
    pub fn set_committed_index(&mut self, index: u64) {
        self.committed_index = index;
    }

    /// In a group: entries this replica applied were replaced; a catalog
    /// taken from them must not be written, nor a release computed from them done.
    pub fn drop_pending_catalog(&mut self) {
        self.gated_release.void();
        if matches!(self.catalog_write, CatalogWrite::Due { .. } | CatalogWrite::Ready { .. }) {
            self.catalog_write = CatalogWrite::Idle;
        }
    }

    /// How far the log may be released below `bound`. Alone, replay takes
    /// every record as it comes, so an entry's header may go with its
    /// segment while records of the entry stay. In a group entries are the
    /// unit: the header of any entry with a record at or after `bound`
    /// stays, and so does what Raft still needs.
    fn release_floor(&self, bound: u64) -> u64 {
        match self.mode {
            Mode::Solo => bound,
            Mode::Replicated => release::release_floor(&self.log, bound, self.consensus_floor),
        }
    }

    /// The lowest log position the consensus layer needs kept (entries a
    /// follower may still fetch), and the entries the engine reflects
    /// (`applied`: a release it allows waits for them to commit). Solo: none.
    pub fn set_consensus_floor(&mut self, pos: u64, applied: u64) {
        self.consensus_floor = pos;
        self.applied_index = applied;
    }

    /// One bounded step of compaction of the oldest segment.
    pub fn compact_step(&mut self, engine: &mut ShardEngine) -> bool {
        let Some(oldest) = self.wal().segment_stats().first().copied() else { return false };
        let end = oldest.base.0 + oldest.capacity;
        match engine.relocate_below(&mut self.log, end, RELOCATE_PER_TURN_MAX) {
            Ok(n) => n == RELOCATE_PER_TURN_MAX,
            Err(e) => {
                log::warn!("compaction of {} stopped: {}", self.dir.display(), e.message);
                false
            }
        }
    }

    /// Where the oldest segment still held ends (0: no segment).
    pub fn oldest_segment_end(&self) -> u64 {
        self.wal().segment_stats().first().map_or(0, |s| s.base.0 + s.capacity)
    }

    /// Where the oldest segment still held starts: everything below was released.
    pub fn first_pos(&self) -> u64 {
        self.wal().first_segment_base().0
    }

    pub fn disk_bytes(&self) -> u64 {
        self.wal().disk_bytes()
    }

    /// The WAL's counters, live segments, and whether it failed (for metrics).
    pub fn wal_report(&self) -> (&crate::metrics::wal::WalStats, usize, bool) {
        (self.wal().stats(), self.wal().segment_stats().len(), self.wal().is_failed())
    }
}

/// The catalog file's bytes and the entry it reflects everything up to,
/// for a snapshot a follower gets (none yet: an empty catalog at entry 0).
pub fn catalog_for_snapshot(dir: &Path, index: &EntryIndex) -> anyhow::Result<((u64, Vec<u8>), u64)> {
    let path = dir.join(CATALOG_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let c = Catalog::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(((index.index_ending_by(c.log_pos), bytes), c.log_pos))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(((0, Catalog::default().encode()), 0)),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// Loads the shard's catalog into `engine`, if there is one; returns its log position.
fn load_catalog(dir: &Path, engine: &mut ShardEngine) -> anyhow::Result<u64> {
    use anyhow::Context;
    let path = dir.join(CATALOG_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let c = Catalog::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            engine.load_catalog(&c);
            Ok(c.log_pos)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl Log for ShardLog {
    fn append(&mut self, rt: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, EngineError> {
        self.log.append(rt, parts, durability)
    }

    fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError> {
        ShardLog::read(self, pos, len)
    }
}

/// The shard's view of its log: what the log made safe, the connections
/// whose output waits for it (`release.rs`), and log-space upkeep.
pub(super) struct LogState {
    /// The log's progress as last seen (what held output is compared with).
    pub(super) progress: super::release::Progress,
    /// Local connections with output waiting for the log.
    pub(super) waiting: Vec<super::mailbox::ConnRef>,
    /// A log batch failed: the engine holds changes the log does not, and is
    /// rebuilt from the log once the log is writable again.
    pub(super) engine_suspect: bool,
    /// Compaction of the oldest log segment is under way (a bounded step per turn).
    pub(super) compacting: bool,
    pub(super) next_housekeep_ms: u64,
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use cmq_protocol::{FlushPolicy, QueueAttributesUpdate};

    use super::*;
    use crate::engine::EngineConfig;
    use crate::storage::{Backend, SEGMENT_BYTES_MIN};

    type Res = Result<(), Box<dyn std::error::Error>>;

    fn engine() -> ShardEngine {
        ShardEngine::new(EngineConfig {
            shard: 0,
            shard_count: 1,
            secret: [7; 16],
            default_flush: FlushPolicy::Async,
            queues_max: 100,
        })
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs housekeeping until `done` holds (the catalog is written on the
    /// housekeeper thread, so its outcome arrives later).
    fn housekeep_until(log: &mut ShardLog, e: &mut ShardEngine, done: impl Fn(&ShardLog) -> bool) -> Res {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(log) {
            if Instant::now() > deadline {
                return Err("housekeeping did not get there".into());
            }
            log.housekeep(e);
            log.submit(10);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Raft's "fdatasync this soon" (a vote, a configuration, a hard state
    /// written between entries) asks for an fdatasync but moves no output
    /// dependency: an async send logged after it does not look as if it had
    /// logged a synced record (which made its reply wait for the commit, a
    /// follower's periodic fdatasync, up to `flush_interval_ms`).
    #[test]
    fn raft_sync_requests_leave_the_output_sync_mark_alone() -> Res {
        let d = tempfile::tempdir()?;
        let cfg =
            WalConfig { segment_bytes: SEGMENT_BYTES_MIN, backend: Backend::Thread, repair: false, fault_file: None };
        let mut e = engine();
        let (mut log, _, _) = ShardLog::open(&d.path().join("shard-0"), cfg, 50, &mut e, Mode::Solo)?;
        e.create_queue(&mut log, 1, "q", &QueueAttributesUpdate::default(), 1).map_err(|e| e.message)?;
        log.submit(1);
        let created = log.sync_mark();
        assert!(created > 0, "a queue's creation is a synced record");
        // A hard state after the entries, and Raft asks for its fdatasync.
        log.entries().raw.append(crtype::HARD_STATE, &[&[0u8; 24]], Durability::Written).map_err(|e| e.0)?;
        log.entries().raw.require_sync();
        assert!(log.entries().raw.sync_pending, "the fdatasync is asked for");
        let body = vec![Bytes::from_static(b"async body")];
        e.send(&mut log, 2, "q", 0, &body).map_err(|e| e.message)?;
        assert!(log.end() > created);
        assert_eq!(log.sync_mark(), created, "an async send after it needs nothing durable");
        Ok(())
    }

    /// The catalog is written off the loop, and the segments below its
    /// position are released only once it is durable: a catalog write that
    /// fails releases nothing, and a restart then still finds every queue.
    #[test]
    fn segments_are_released_only_after_the_catalog_is_durable() -> Res {
        let d = tempfile::tempdir()?;
        let fault = d.path().join("FAULT");
        let dir = d.path().join("shard-0");
        let cfg = WalConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
            backend: Backend::Thread,
            repair: false,
            fault_file: Some(fault.clone()),
        };
        let mut e = engine();
        let (mut log, _, _) = ShardLog::open(&dir, cfg.clone(), 50, &mut e, Mode::Solo)?;
        let attrs = QueueAttributesUpdate::default();
        e.create_queue(&mut log, 1, "keep", &attrs, 1).map_err(|e| e.message)?;
        e.create_queue(&mut log, 1, "filler", &attrs, 2).map_err(|e| e.message)?;
        let batch = vec![Bytes::from(vec![b'x'; 64 << 10]); 16];
        for _ in 0..40 {
            e.send(&mut log, 2, "filler", 0, &batch).map_err(|e| e.message)?;
            log.submit(2);
            assert!(log.sync_and_wait(Duration::from_secs(30)));
        }
        e.delete_queue(&mut log, 3, "filler").map_err(|e| e.message)?;
        log.submit(3);
        assert!(log.sync_and_wait(Duration::from_secs(30)));
        let first = segment_files(&dir).first().cloned().ok_or("no segment")?;
        assert!(segment_files(&dir).len() >= 3);

        // Only "keep"'s creation holds the first segment: a catalog is due.
        // Its write fails: nothing is released.
        std::fs::write(&fault, b"eio")?;
        assert!(!log.housekeep(&mut e));
        assert!(matches!(log.catalog_write, CatalogWrite::Ready { .. }));
        log.submit(4);
        assert!(matches!(log.catalog_write, CatalogWrite::Writing { .. }), "the catalog went to the housekeeper");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(log.catalog_write, CatalogWrite::Idle) {
            assert!(Instant::now() < deadline, "the catalog write never finished");
            log.collect_catalog();
            std::thread::sleep(Duration::from_millis(5));
        }
        log.housekeep(&mut e);
        assert_eq!(log.catalog_pos, 0);
        assert!(first.exists(), "a segment was released although its catalog was never written");
        assert!(!dir.join(CATALOG_FILE).exists());

        // The fault gone, the catalog is written, then the segments go.
        std::fs::remove_file(&fault)?;
        housekeep_until(&mut log, &mut e, |l| l.catalog_pos > 0)?;
        assert!(dir.join(CATALOG_FILE).exists());
        housekeep_until(&mut log, &mut e, |_| !first.exists())?;
        drop(log);
        let mut again = engine();
        let (_log, _, _) = ShardLog::open(&dir, cfg, 50, &mut again, Mode::Solo)?;
        assert_eq!(again.queue_count(), 1, "the catalog kept the queue whose creation was released");
        Ok(())
    }
}
