//! A simulated node's log space, as `shard/storage.rs` keeps a real one:
//! housekeeping by the shared rule (`consensus/release.rs`: release, catalog,
//! compaction), the catalog file (taken between turns, written once the
//! entries it reflects are committed and the log below it is durable,
//! atomically, so it survives every crash), the snapshot a leader offers
//! from it, and the applier that starts over from it or from a snapshot.

use bytes::Bytes;

use super::log::{SimLog, SEGMENT_BYTES};
use crate::consensus::release::{self, housekeeping, GatedRelease, Housekeeping, LogSpace};
use crate::consensus::scan::SnapshotBase;
use crate::consensus::{Applier, EntryLog, Replica};
use crate::engine::{Catalog, ShardEngine};
use crate::shard::replication::FOLLOWER_LAG_SEGMENTS_MAX;

/// Virtual milliseconds between housekeeping passes (a node: a second).
const HOUSEKEEP_EVERY_MS: u64 = 25;
/// Messages compaction copies per turn (a node: 1024).
const RELOCATE_PER_TURN_MAX: usize = 8;

/// The catalog on its way to the file (`shard/storage.rs`: `CatalogWrite`).
enum CatalogWrite {
    Idle,
    /// Wanted: taken after the turn's entry is proposed.
    Due {
        live: u64,
    },
    /// Taken; reflects entries up to `gate`, written once they are committed
    /// and the log up to its position is written.
    Ready {
        catalog: Box<Catalog>,
        live: u64,
        gate: u64,
    },
    /// The housekeeper fdatasyncs the log up to the catalog's position and
    /// renames the file into place at `done_at`.
    Writing {
        catalog: Box<Catalog>,
        live: u64,
        done_at: u64,
    },
}

/// What a node keeps besides its log: the catalog file, and housekeeping.
pub struct Disk {
    /// The catalog file's bytes (none written yet: none).
    pub catalog: Option<Bytes>,
    /// Its position (counted only once durable).
    pub catalog_pos: u64,
    write: CatalogWrite,
    /// Entries committed as of the last turn whose events were handled
    /// (`ShardLog::set_committed_index`): raft-rs may count entries
    /// committed in `step` that replace applied ones before the `Ready`
    /// that says so is handled. Durably committed: a restart applies them
    /// (`Replica::durable_commit_index`).
    committed: u64,
    gated_release: GatedRelease,
    consensus_floor: u64,
    next_housekeep_ms: u64,
    compacting: bool,
    /// Segments released and catalogs written (for the report).
    pub releases: u64,
    pub catalogs: u64,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            catalog: None,
            catalog_pos: 0,
            write: CatalogWrite::Idle,
            committed: 0,
            gated_release: GatedRelease::default(),
            consensus_floor: u64::MAX,
            next_housekeep_ms: 0,
            compacting: false,
            releases: 0,
            catalogs: 0,
        }
    }
}

impl Disk {
    /// The process died: what was in memory is gone. A catalog the
    /// housekeeper was writing is in place or not (`completed`).
    pub fn crash(&mut self, log: &mut SimLog, completed: bool) {
        if completed {
            if let CatalogWrite::Writing { catalog, .. } = std::mem::replace(&mut self.write, CatalogWrite::Idle) {
                self.put_catalog(log, &catalog);
            }
        }
        self.write = CatalogWrite::Idle;
        self.committed = 0;
        self.gated_release.void();
        self.consensus_floor = u64::MAX;
        self.next_housekeep_ms = 0;
        self.compacting = false;
    }

    /// Loads the catalog file into a fresh `engine`; returns its position.
    pub fn load_catalog(&self, engine: &mut ShardEngine) -> u64 {
        *engine = engine.fresh();
        match self.catalog.as_deref().map(Catalog::decode) {
            Some(Ok(c)) => {
                engine.load_catalog(&c);
                c.log_pos
            }
            Some(Err(e)) => panic!("the simulator's own catalog does not decode: {e}"),
            None => 0,
        }
    }

    /// Housekeeping (about every `HOUSEKEEP_EVERY_MS`), then a compaction
    /// step while one is under way: `shard/mod.rs`'s `housekeep`.
    pub fn housekeep(&mut self, log: &mut EntryLog<SimLog>, engine: &mut ShardEngine, replica: &mut Replica, now: u64) {
        let leading = replica.is_leader() && !replica.transferring();
        if now >= self.next_housekeep_ms {
            self.next_housekeep_ms = now + HOUSEKEEP_EVERY_MS;
            self.consensus_floor = release::consensus_floor(replica, FOLLOWER_LAG_SEGMENTS_MAX * SEGMENT_BYTES);
            if !self.compacting {
                self.compacting = self.plan(log, engine, replica) && leading;
            }
        }
        if self.compacting {
            // Relocations are proposed like any record (leader only).
            let end = log.raw.first_pos() + SEGMENT_BYTES;
            let moved = engine.relocate_below(log, end, RELOCATE_PER_TURN_MAX);
            self.compacting = leading && moved.is_ok_and(|n| n == RELOCATE_PER_TURN_MAX);
        }
    }

    /// One pass of the shared rule; returns whether to compact.
    fn plan(&mut self, log: &mut EntryLog<SimLog>, engine: &ShardEngine, replica: &mut Replica) -> bool {
        if let Some(bound) = self.gated_release.take_due(self.committed) {
            self.release_below(log, replica, bound);
        }
        let first = log.raw.first_pos();
        let space = LogSpace {
            oldest_end: first + SEGMENT_BYTES,
            oldest_capacity: SEGMENT_BYTES,
            segments: log.raw.segments(),
            live: engine.min_live_pos().unwrap_or(u64::MAX),
            unapplied_from: self.consensus_floor,
            catalog_pos: self.catalog_pos,
            head: crate::consensus::RawLog::end(&log.raw),
            catalog_idle: matches!(self.write, CatalogWrite::Idle),
            failed: false,
        };
        let floor = self.consensus_floor;
        match housekeeping(&space, |b| release::release_floor(log, b, floor), |p| engine.live_bytes_below(p)) {
            Housekeeping::Release { bound } => self.gated_release.hold(bound, release::reflected_index(replica, log)),
            Housekeeping::Catalog { live } => self.write = CatalogWrite::Due { live },
            Housekeeping::Compact => return true,
            Housekeeping::Nothing => {}
        }
        false
    }

    fn release_below(&mut self, log: &mut EntryLog<SimLog>, replica: &mut Replica, bound: u64) {
        let to = release::release_floor(log, bound, self.consensus_floor);
        let before = log.raw.first_pos();
        log.raw.release_before(to);
        let first = log.raw.first_pos();
        log.forget_below(first);
        replica.forget_entries_below(first);
        if std::env::var("CMQ_SIM_DEBUG").is_ok() && first > before {
            let ix = &replica.store().index;
            eprintln!(
                "node {}: released below {first} (bound {bound}); log from entry {} ({:?}), applied {} commit {}",
                replica.id(),
                ix.first_index(),
                ix.get(ix.first_index()).map(|e| e.header_pos),
                replica.applied(),
                self.committed
            );
        }
        self.releases += u64::from(first > before);
    }

    /// After the turn's entry is proposed: takes a catalog found due, at
    /// `applied_end`, where entry `applied` ends (`shard/storage.rs`:
    /// `capture_catalog`).
    pub fn capture(&mut self, engine: &ShardEngine, applied: u64, applied_end: u64) {
        if engine.catalog_pending() {
            return;
        }
        if let CatalogWrite::Due { live } = self.write {
            let pos = applied_end;
            self.write = CatalogWrite::Ready { catalog: Box::new(engine.catalog(pos)), live, gate: applied };
        }
    }

    /// At the end of a turn, its events handled: entries up to `index` are committed.
    pub fn set_committed(&mut self, index: u64) {
        self.committed = index;
    }

    /// After the turn's write: hands a taken catalog to the housekeeper once
    /// the log below it is written and what it reflects is committed.
    pub fn submit(&mut self, written_end: u64, done_at: u64) {
        let committed = self.committed;
        let due = |c: &Catalog, gate: u64| written_end >= c.log_pos && committed >= gate;
        if !matches!(&self.write, CatalogWrite::Ready { catalog, gate, .. } if due(catalog, *gate)) {
            return;
        }
        if let CatalogWrite::Ready { catalog, live, .. } = std::mem::replace(&mut self.write, CatalogWrite::Idle) {
            self.write = CatalogWrite::Writing { catalog, live, done_at };
        }
    }

    /// The housekeeper finished writing a catalog: count it, and release
    /// what it frees at once.
    pub fn collect(&mut self, log: &mut EntryLog<SimLog>, replica: &mut Replica, now: u64) {
        let CatalogWrite::Writing { done_at, live, .. } = self.write else { return };
        if now < done_at {
            return;
        }
        if let CatalogWrite::Writing { catalog, .. } = std::mem::replace(&mut self.write, CatalogWrite::Idle) {
            self.put_catalog(&mut log.raw, &catalog);
        }
        self.release_below(log, replica, live.min(self.catalog_pos));
    }

    fn put_catalog(&mut self, log: &mut SimLog, catalog: &Catalog) {
        // The housekeeper fdatasyncs the log up to the catalog first.
        log.sync_done(catalog.log_pos);
        self.catalog = Some(Bytes::from(catalog.encode()));
        self.catalog_pos = self.catalog_pos.max(catalog.log_pos);
        self.catalogs += 1;
    }

    /// Entries this replica applied were replaced: a catalog taken from
    /// them must not be written.
    pub fn drop_pending(&mut self) {
        self.gated_release.void();
        if matches!(self.write, CatalogWrite::Due { .. } | CatalogWrite::Ready { .. }) {
            self.write = CatalogWrite::Idle;
        }
    }

    /// raft-rs asked for a snapshot to send: offer one built from the
    /// catalog file (`shard/storage.rs`: `catalog_for_snapshot`).
    pub fn offer_snapshot(&self, replica: &mut Replica) -> Result<u64, String> {
        let (file, file_pos) = match self.catalog.as_deref() {
            Some(b) => {
                let c = Catalog::decode(b)?;
                ((replica.store().index.index_ending_by(c.log_pos), b.to_vec()), c.log_pos)
            }
            None => ((0, Catalog::default().encode()), 0),
        };
        // Or the snapshot this node installed, when newer (seed 6582).
        let (catalog_index, bytes) = replica.snapshot_catalog(file, file_pos);
        replica.offer_snapshot(catalog_index, &bytes)
    }
}

/// The simulator's applier: `shard/storage.rs`'s `ShardApplier`, with the
/// catalog file in memory.
pub struct SimApplier<'a> {
    pub engine: &'a mut ShardEngine,
    pub disk: &'a Disk,
}

impl Applier for SimApplier<'_> {
    fn apply(&mut self, pos: u64, rtype: u8, payload: &[u8]) -> Result<(), String> {
        self.engine.replay(pos, rtype, payload).map_err(|e| e.to_string())
    }

    fn reset(&mut self, snapshot: Option<&SnapshotBase>) {
        let file_pos = self.disk.load_catalog(self.engine);
        if let Some(b) = snapshot.filter(|b| b.pos > file_pos) {
            *self.engine = self.engine.fresh();
            if let Err(e) = load_snapshot(self.engine, b) {
                panic!("reloading a snapshot the replica installed: {e}");
            }
        }
    }

    fn install_snapshot(&mut self, snapshot: &SnapshotBase) -> Result<(), String> {
        let mut fresh = self.engine.fresh();
        load_snapshot(&mut fresh, snapshot)?;
        *self.engine = fresh;
        Ok(())
    }

    fn entry_applied(&mut self, index: u64, end_pos: u64) {
        self.engine.entry_applied(index, end_pos);
    }
}

/// Loads a snapshot's catalog into a fresh engine.
pub fn load_snapshot(engine: &mut ShardEngine, b: &SnapshotBase) -> Result<(), String> {
    let c = Catalog::decode(&b.record.catalog).map_err(|e| format!("the snapshot's catalog: {e}"))?;
    engine.load_snapshot_catalog(&c, b.record.catalog_index, b.record.index, b.end);
    Ok(())
}
