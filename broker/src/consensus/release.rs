//! Log release: how far a shard's log may be released, and when its
//! housekeeping writes a catalog or compacts instead. One rule, shared by
//! the shard (`shard/storage.rs`: `housekeep`, `shard/replication.rs`:
//! `set_consensus_floor`) and the simulator (`sim/`), so the simulator
//! releases its logs exactly as a node does. Pure functions of positions:
//! no I/O.

use super::log::{EntryLog, LogFailure, RawLog};
use super::Replica;

/// Compaction empties the oldest segment when it holds less live data than
/// this fraction of its capacity (and there are newer segments). Keeps disk
/// use within a few times the live data.
pub const COMPACT_LIVE_FRACTION_DENOM: u64 = 4;

/// The lowest log position the consensus layer needs kept: entries not yet
/// applied here (a restart applies them), and, on a leader, entries some
/// follower does not have yet (it will be sent them), unless that follower
/// is more than `lag_max` bytes of log behind, or behind what was released
/// already: it gets a snapshot instead, so a node that is down does not
/// hold the others' disks; and the last durable hard-state and
/// configuration records (`state_records.rs`). `u64::MAX`: nothing.
pub fn consensus_floor(rep: &Replica, lag_max: u64) -> u64 {
    let ix = &rep.store().index;
    let last_end = ix.end_pos(ix.last_index());
    let first = ix.first_index();
    let needed_from = rep
        .follower_progress()
        .into_iter()
        // A new leader knows no follower's match yet (0): keep what is
        // retained until it learns it, rather than releasing it all and
        // forcing every follower onto a snapshot.
        .map(|(_, matched)| if matched == 0 { first } else { matched + 1 })
        .filter(|i| *i >= first && ix.get(*i).is_none_or(|e| last_end - e.header_pos <= lag_max))
        .chain(std::iter::once(rep.applied().min(rep.commit_index()) + 1))
        .min()
        .unwrap_or(u64::MAX);
    let entries = ix.get(needed_from).map_or(u64::MAX, |e| e.header_pos);
    entries.min(rep.state_records_floor())
}

/// The last entry the engine's state reflects: the entries applied, and
/// the turn's open entry if there is one (a leader's requests changed the
/// engine already; it gets the index after the log's last when proposed).
/// A release computed from that state waits for this index to commit
/// ([`GatedRelease`]): held at the applied index alone, a delete in the open
/// entry freed a body that was released once the entries before it
/// committed, though the open entry itself might never be (seed 237).
pub fn reflected_index<R: RawLog>(rep: &Replica, log: &EntryLog<R>) -> u64 {
    if log.has_open() {
        rep.applied().max(rep.last_index() + 1)
    } else {
        rep.applied()
    }
}

/// Between turns: when the hard-state and configuration records hold the
/// oldest segment (ending at `oldest_end`), writes them again at the head,
/// so that they never keep the log from being released for long.
pub fn keep_state_records<R: RawLog>(
    rep: &mut Replica,
    log: &mut EntryLog<R>,
    oldest_end: u64,
) -> Result<(), LogFailure> {
    // Only once the head has left that segment: a copy there would not help.
    if rep.state_records_floor() < oldest_end && log.raw.end() >= oldest_end {
        rep.rewrite_state_records(log)?;
    }
    Ok(())
}

/// How far a replica's log may be released below `bound`: entries are the
/// unit (the header of any entry with a record at or after `bound` stays:
/// a restart reads entries from their header), and so does what the
/// consensus layer still needs (`consensus_floor`).
pub fn release_floor<R: RawLog>(log: &EntryLog<R>, bound: u64, consensus_floor: u64) -> u64 {
    log.entry_start(bound).min(consensus_floor)
}

/// What housekeeping knows about the log's space.
#[derive(Debug, Clone, Copy)]
pub struct LogSpace {
    /// Where the oldest segment still held ends (its base plus capacity).
    pub oldest_end: u64,
    pub oldest_capacity: u64,
    pub segments: usize,
    /// The lowest position live data needs (`ShardEngine::min_live_pos`; `u64::MAX`: none).
    pub live: u64,
    /// Where records the engine does not reflect yet may lie: in a group,
    /// entries written but not applied (`consensus_floor`); alone, none
    /// (`u64::MAX`). What they will make live is unknown, so it bounds
    /// `live`, and so does the head (what is written next).
    pub unapplied_from: u64,
    /// Position of the last catalog known durable.
    pub catalog_pos: u64,
    /// Where the next record goes.
    pub head: u64,
    /// No catalog is being taken or written.
    pub catalog_idle: bool,
    /// The log refuses writes (after a storage error).
    pub failed: bool,
}

/// What one housekeeping pass does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Housekeeping {
    /// Release whole segments below `release_floor(bound)`.
    Release {
        bound: u64,
    },
    /// Only queue-management records keep the oldest segment: take a
    /// catalog (`live`: the bound for the release that follows its write).
    Catalog {
        live: u64,
    },
    /// Live messages keep the oldest segment and are few: copy them forward.
    Compact,
    Nothing,
}

/// The housekeeping rule: release what nothing needs (`floor` maps a bound
/// to how far the log may be released below it), else take a catalog when
/// only queue-management records hold the oldest segment, else compact
/// the oldest segment when it is mostly garbage (`live_bytes_below`: live
/// message bytes below a position).
///
/// The bounds it returns are used later (a catalog's once it is durable, a
/// release in a group once what it reflects is committed): by then entries
/// written but not applied now may be applied, with live bodies below
/// `s.live`. So `live` counts from no further than where such records may
/// lie (the simulator found a follower's catalog releasing a body an
/// entry applied after the catalog was due had made live: seed 17, once
/// it released logs).
pub fn housekeeping(s: &LogSpace, floor: impl Fn(u64) -> u64, live_bytes_below: impl Fn(u64) -> u64) -> Housekeeping {
    let live = s.live.min(s.unapplied_from).min(s.head);
    let bound = live.min(s.catalog_pos);
    if floor(bound) >= s.oldest_end {
        return Housekeeping::Release { bound };
    }
    let head_moved_on = s.head >= s.oldest_end;
    if live >= s.oldest_end && s.catalog_pos < s.oldest_end && head_moved_on && s.catalog_idle && !s.failed {
        return Housekeeping::Catalog { live };
    }
    if s.segments >= 3 && !s.failed && live_bytes_below(s.oldest_end) < s.oldest_capacity / COMPACT_LIVE_FRACTION_DENOM
    {
        return Housekeeping::Compact;
    }
    Housekeeping::Nothing
}

/// In a group, a release waits for the entries its bound reflects to
/// commit. A leader applies its own entries as it produces them, before
/// they commit: a delete (or a compaction's relocation) there frees a body
/// in the engine at once, but a new leader may replace that entry, and the
/// message is live again in the group. Released then, its body would be
/// gone from this replica's log, and a rebuild or restart here would lose
/// it (seed 8 of the simulator, once it released logs). So the bound is
/// held with the index the engine reflected when it was computed
/// ([`reflected_index`]: the turn's open entry included), and used once that
/// index is committed; entries replaced meanwhile (or a turn's entry Raft
/// refused) void it. Committed as a
/// restart of this replica knows it (`Replica::durable_commit_index`): a
/// restart applies entries only up to its last durable hard state, and an
/// engine without the entry that superseded a released record would lack
/// the message until the entry is applied again (seed 1796449737090).
#[derive(Debug, Default)]
pub struct GatedRelease {
    pending: Option<(u64, u64)>,
}

impl GatedRelease {
    /// A release below `bound`, computed from an engine that reflects the
    /// entries up to `applied` (it replaces any held before: bounds only grow).
    pub fn hold(&mut self, bound: u64, applied: u64) {
        self.pending = Some((bound, applied));
    }

    /// The bound to release below, once the entries it reflects are committed.
    pub fn take_due(&mut self, committed: u64) -> Option<u64> {
        let (bound, gate) = self.pending?;
        (committed >= gate).then(|| {
            self.pending = None;
            bound
        })
    }

    /// Entries this replica applied were replaced (or a snapshot replaced
    /// its state): a bound computed from them is void.
    pub fn void(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(live: u64, catalog_pos: u64) -> LogSpace {
        LogSpace {
            oldest_end: 100,
            oldest_capacity: 100,
            segments: 3,
            live,
            unapplied_from: u64::MAX,
            catalog_pos,
            head: 250,
            catalog_idle: true,
            failed: false,
        }
    }

    #[test]
    fn release_then_catalog_then_compaction() {
        let all = |b: u64| b;
        assert_eq!(housekeeping(&space(150, 120), all, |_| 0), Housekeeping::Release { bound: 120 });
        assert_eq!(housekeeping(&space(150, 50), all, |_| 0), Housekeeping::Catalog { live: 150 });
        // Nothing live: a catalog releases no further than the head now.
        assert_eq!(housekeeping(&space(u64::MAX, 50), all, |_| 0), Housekeeping::Catalog { live: 250 });
        // Entries written but not applied may hold live bodies.
        let unapplied = LogSpace { unapplied_from: 130, ..space(u64::MAX, 50) };
        assert_eq!(housekeeping(&unapplied, all, |_| 0), Housekeeping::Catalog { live: 130 });
        let unapplied = LogSpace { unapplied_from: 110, ..space(u64::MAX, 120) };
        assert_eq!(housekeeping(&unapplied, all, |_| 0), Housekeeping::Release { bound: 110 });
        assert_eq!(housekeeping(&space(50, 120), all, |_| 10), Housekeeping::Compact);
        assert_eq!(housekeeping(&space(50, 120), all, |_| 30), Housekeeping::Nothing);
        // What the consensus layer needs holds the release back.
        assert_eq!(housekeeping(&space(150, 120), |b| b.min(90), |_| 30), Housekeeping::Nothing);
    }

    #[test]
    fn a_release_waits_for_what_it_reflects_to_commit() {
        let mut g = GatedRelease::default();
        g.hold(4096, 12);
        assert_eq!(g.take_due(11), None, "entry 12 (a leader's own delete, say) is not committed");
        assert_eq!(g.take_due(12), Some(4096));
        assert_eq!(g.take_due(20), None, "released once");
        g.hold(8192, 30);
        g.void();
        assert_eq!(g.take_due(40), None, "entries replaced: the bound is void");
    }
}
