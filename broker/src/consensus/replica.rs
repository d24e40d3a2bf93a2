//! One replica of one Raft group: raft-rs's `RawNode` plus what ties it to
//! the log and the engine. Sans-IO: the shard loop (or the simulator)
//! feeds it messages, ticks and log progress, and it tells the caller what
//! to send; it writes to the log and applies to the engine through the
//! [`RawLog`] and [`Applier`] it is handed.
//!
//! The order of one `Ready` follows raft-rs's async-ready protocol and the
//! Raft thesis: a leader's messages go out at once (so followers write
//! while the leader's fdatasync runs); entries and hard state are appended
//! to the log; committed entries are applied; messages that depend on the
//! log (a follower's append responses, votes) are held until the log is
//! durable past what the `Ready` wrote, and only then is raft-rs told the
//! `Ready` was persisted.

use std::collections::{BTreeMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};

use super::entry::{self, CachedEntry, EntryIndex, IndexedEntry};
use super::log::{EntryLog, LogFailure, OpenEntry, RawLog};
use super::readback;
use super::records::{rtype, ConfStateRecord, EntryHeader, EntryKind, HardStateRecord, SnapshotRecord, FLAG_SYNC};
use super::scan::SnapshotBase;
use super::state_records::{DurableCommit, StateRecords};
use super::store::{PreparedSnapshot, RaftStore};
use crate::engine::Durability;

/// Where committed entries go: the engine.
pub trait Applier {
    /// Applies one engine record of a committed entry, found at `pos` in the local log.
    fn apply(&mut self, pos: u64, rtype: u8, payload: &[u8]) -> Result<(), String>;
    /// Forgets everything applied since the durable base (the catalog, or
    /// `snapshot` when it is newer), before the log's committed entries are
    /// applied again.
    fn reset(&mut self, snapshot: Option<&SnapshotBase>);
    /// Replaces the state with a snapshot's (see [`SnapshotRecord`]).
    fn install_snapshot(&mut self, _snapshot: &SnapshotBase) -> Result<(), String> {
        Err("this replica cannot install snapshots".into())
    }
    /// Every record of entry `index` is applied; the entry ends at `end_pos`.
    fn entry_applied(&mut self, _index: u64, _end_pos: u64) {}
}

/// The data of a snapshot as Raft carries it: `catalog_index u64`, then a
/// catalog file's bytes (see `SnapshotRecord`).
pub fn encode_snapshot_data(catalog_index: u64, catalog: &[u8]) -> bytes::Bytes {
    let mut v = Vec::with_capacity(8 + catalog.len());
    v.extend_from_slice(&catalog_index.to_le_bytes());
    v.extend_from_slice(catalog);
    bytes::Bytes::from(v)
}

/// `(catalog_index, catalog)` of a snapshot's data.
pub fn decode_snapshot_data(data: &bytes::Bytes) -> Option<(u64, bytes::Bytes)> {
    let head: [u8; 8] = data.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(head), data.slice(8..)))
}

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: u64,
    /// Ticks without a leader's heartbeat before an election (randomised
    /// in `[election_ticks, 2 * election_ticks)` unless `election_ticks_max` is set).
    pub election_ticks: usize,
    /// Exclusive upper bound of the randomised election timeout; the
    /// simulator sets `election_ticks + 1` to make it deterministic.
    pub election_ticks_max: Option<usize>,
    pub heartbeat_ticks: usize,
    /// Bytes of entries per append message.
    pub append_bytes_max: u64,
    /// Append messages in flight per follower.
    pub inflight_max: usize,
    /// The machine restarted since this replica last ran (power loss or
    /// reboot): entries it had written but not fdatasync'd may be gone,
    /// among them entries acknowledged to async clients as written on a
    /// majority. It neither votes nor campaigns until a leader has
    /// committed an entry of its own term here (every entry before that is
    /// then committed, so durable on a majority), or until it hears that
    /// a majority of the voters (itself included) abstain (a majority's
    /// machines restarted: async writes are not promised to survive that),
    /// or, as a last resort, after `ABSTAIN_ELECTIONS_MAX` election timeouts.
    pub rebooted: bool,
}

/// Election timeouts a rebooted replica abstains for at most, when no
/// leader reaches it and no majority of abstaining peers is heard: the
/// escape for a group that would otherwise stay without a leader (a
/// rebooted replica and one that is down for good). Long, because ending it
/// early is what loses async writes: a peer that holds them may merely be
/// cut off for a while (the simulator found a partition plus one power
/// loss doing exactly that with the earlier bound of 5).
pub const ABSTAIN_ELECTIONS_MAX: u64 = 60;

/// Ticks between an abstaining replica's `Abstaining` announcements.
pub const ABSTAIN_ANNOUNCE_TICKS: u64 = 3;

/// How long (ticks) a peer's announcement counts: two announcements, so
/// one lost frame does not make it forgotten.
const ABSTAIN_HEARD_TICKS: u64 = 2 * ABSTAIN_ANNOUNCE_TICKS + 1;

impl ReplicaConfig {
    pub fn new(id: u64) -> ReplicaConfig {
        ReplicaConfig {
            id,
            election_ticks: 10,
            election_ticks_max: None,
            heartbeat_ticks: 2,
            append_bytes_max: 1 << 20,
            inflight_max: 1024,
            rebooted: false,
        }
    }
}

/// What changed that the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This replica leads now and has applied every entry of its log: it
    /// may serve.
    BecameLeader,
    /// This replica no longer leads: output it produced that is not yet
    /// released may depend on entries a new leader will overwrite.
    LostLeadership,
    /// Entries from `from` on were replaced by a new leader's: output that
    /// depends on them must not go out. The engine was rebuilt if it had
    /// applied them.
    Truncated { from: u64 },
    /// The group's membership changed (committed); `added`: a node that
    /// joined and where its peers reach it.
    ConfChanged { voters: Vec<u64>, learners: Vec<u64>, added: Option<(u64, String)> },
    /// A leader's snapshot replaced this replica's state and log up to `index`.
    SnapshotInstalled { index: u64 },
}

/// What the caller must send or do after a call.
#[derive(Debug, Default)]
pub struct Outbox {
    pub messages: Vec<Message>,
    /// `(to, term, index)`: this follower has written the leader's entries
    /// up to `index` (in the OS, maybe not yet fdatasync'd).
    pub written_acks: Vec<(u64, u64, u64)>,
    /// Peers to tell that this replica abstains from elections.
    pub abstaining_to: Vec<u64>,
    pub events: Vec<Event>,
}

/// A `Ready` whose log writes may not yet be safe.
struct PendingReady {
    number: u64,
    /// The log end after the ready's writes.
    end: u64,
    /// Whether raft-rs needs the writes durable (entries, vote or term);
    /// otherwise written is enough.
    durable: bool,
    messages: Vec<Message>,
    /// A written-ack to send once the entries are written: `(leader, term, index)`.
    ack: Option<(u64, u64, u64)>,
}

/// Why a replica cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("log: {0}")]
    Log(#[from] LogFailure),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("applying entry {index}: {msg}")]
    Apply { index: u64, msg: String },
    #[error("log index: {0}")]
    Index(#[from] entry::IndexError),
    #[error("{0}")]
    Busy(String),
}

impl ReplicaError {
    /// The error code and message a client gets.
    pub fn into_code(self) -> (cmq_protocol::ErrorCode, String) {
        use cmq_protocol::ErrorCode;
        match self {
            ReplicaError::Busy(m) => (ErrorCode::BUSY, m),
            ReplicaError::Raft(raft::Error::ProposalDropped) => {
                (ErrorCode::NOT_LEADER, "this node stopped leading the shard; retry".into())
            }
            e => (ErrorCode::INTERNAL, e.to_string()),
        }
    }
}

/// How long an unconfirmed read waits before its ReadIndex round is
/// repeated (raft-rs drops a round when no leader is known), in ticks.
const READ_RETRY_TICKS: u64 = 4;

pub struct Replica {
    node: RawNode<RaftStore>,
    id: u64,
    /// The engine reflects every entry up to here (a leader's own entries
    /// as it produced them, a follower's as they committed).
    applied: u64,
    /// Followers' written-acks in the current term: node -> index.
    acks: BTreeMap<u64, u64>,
    pending: VecDeque<PendingReady>,
    leading: bool,
    /// ReadIndex rounds: the last sequence asked for, the last confirmed,
    /// and rounds waiting for their index to be applied.
    read_asked: u64,
    read_confirmed: u64,
    read_states: VecDeque<(u64, u64)>,
    read_asked_at_tick: u64,
    ticks: u64,
    /// An entry this replica had applied was replaced: rebuild the engine.
    truncated_applied: bool,
    /// Ticks left before a rebooted replica votes again anyway (0: it votes).
    abstain_ticks: u64,
    /// Abstaining peers heard from: node -> the tick of the last announcement.
    abstaining_peers: BTreeMap<u64, u64>,
    /// An announcement of this replica's abstention is due.
    announce_abstaining: bool,
    /// The last snapshot installed in the log (the base a rebuild starts
    /// from when it is newer than the catalog file).
    base: Option<SnapshotBase>,
    /// A snapshot raft-rs has not yet counted as applied (it may be once
    /// its record is durable).
    snapshot_unapplied: Option<u64>,
    /// Where its hard-state and configuration records lie (a release keeps them).
    state_records: StateRecords,
    /// The commit index a restart would replay to.
    durable_commit: DurableCommit,
}

impl Replica {
    /// A replica over `store` (already filled from the log), whose engine
    /// has applied entries up to `applied`.
    pub fn new(cfg: &ReplicaConfig, store: RaftStore, applied: u64) -> Result<Replica, ReplicaError> {
        let mut rc = raft::Config::new(cfg.id);
        rc.election_tick = cfg.election_ticks;
        rc.heartbeat_tick = cfg.heartbeat_ticks;
        rc.min_election_tick = cfg.election_ticks;
        rc.max_election_tick = cfg.election_ticks_max.unwrap_or(2 * cfg.election_ticks);
        rc.applied = applied;
        rc.max_size_per_msg = cfg.append_bytes_max;
        rc.max_inflight_msgs = cfg.inflight_max;
        rc.check_quorum = true;
        rc.pre_vote = true;
        rc.validate()?;
        let durable_commit = DurableCommit::found(store.hard_state.commit);
        let logger = super::logger::logger(cfg.id);
        let node = RawNode::new(&rc, store, &logger)?;
        Ok(Replica {
            node,
            id: cfg.id,
            applied,
            acks: BTreeMap::new(),
            pending: VecDeque::new(),
            leading: false,
            read_asked: 0,
            read_confirmed: 0,
            read_states: VecDeque::new(),
            read_asked_at_tick: 0,
            ticks: 0,
            truncated_applied: false,
            abstain_ticks: if cfg.rebooted { ABSTAIN_ELECTIONS_MAX * cfg.election_ticks as u64 } else { 0 },
            abstaining_peers: BTreeMap::new(),
            announce_abstaining: cfg.rebooted,
            base: None,
            snapshot_unapplied: None,
            state_records: StateRecords::default(),
            durable_commit,
        })
    }

    /// The snapshot the log starts from, found at start-up.
    pub fn set_snapshot_base(&mut self, base: Option<SnapshotBase>) {
        self.base = base;
    }

    pub fn snapshot_base(&self) -> Option<&SnapshotBase> {
        self.base.as_ref()
    }

    /// Where the hard-state and configuration records found at start-up lie.
    pub fn set_state_records(&mut self, records: StateRecords) {
        self.state_records = records;
    }

    /// The log must be kept from here: the last durable hard-state and
    /// configuration records (see `state_records.rs`).
    pub fn state_records_floor(&self) -> u64 {
        self.state_records.floor()
    }

    /// Writes the hard state and configuration again at the log's head, so
    /// the older records may be released once these are durable. Only
    /// between turns: never inside an entry being built.
    pub fn rewrite_state_records<R: RawLog>(&mut self, log: &mut EntryLog<R>) -> Result<(), LogFailure> {
        if log.has_open() || self.state_records.rewrite_pending() {
            return Ok(());
        }
        let hs = self.node.store().hard_state.clone();
        let rec = HardStateRecord { term: hs.term, vote: hs.vote, commit: hs.commit };
        let pos = log.raw.append(rtype::HARD_STATE, &[&rec.encode()], Durability::Written)?;
        self.state_records.wrote_hard_state(pos, log.raw.end());
        self.durable_commit.wrote(log.raw.end(), hs.commit);
        let conf = conf_record(&self.node.store().conf_state);
        let pos = log.raw.append(rtype::CONF_STATE, &[&conf.encode()], Durability::Written)?;
        self.state_records.wrote_conf(pos, log.raw.end());
        log.raw.require_sync();
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Leads and has applied its whole log (may take requests).
    pub fn is_leader(&self) -> bool {
        self.leading
    }

    /// The node this replica believes leads (0: none known).
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The commit index a restart would replay to (the last durable
    /// hard-state record's; see `DurableCommit`): releases and catalogs
    /// wait for what they reflect to be committed this far, not just
    /// [`commit_index`](Self::commit_index).
    pub fn durable_commit_index(&self) -> u64 {
        self.durable_commit.index()
    }

    pub fn last_index(&self) -> u64 {
        self.node.store().index.last_index()
    }

    pub fn store(&self) -> &RaftStore {
        self.node.store()
    }

    /// A leadership transfer is under way: raft-rs drops proposals meanwhile.
    pub fn transferring(&self) -> bool {
        self.node.raft.lead_transferee.is_some()
    }

    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.node.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// Per follower (leader only): `(node, matched index)`.
    pub fn follower_progress(&self) -> Vec<(u64, u64)> {
        if !self.leading {
            return Vec::new();
        }
        let mut v: Vec<(u64, u64)> =
            self.node.raft.prs().iter().filter(|(id, _)| **id != self.id).map(|(id, p)| (*id, p.matched)).collect();
        v.sort_unstable();
        v
    }

    /// Whether this replica stays out of elections (see `ReplicaConfig::rebooted`).
    pub fn abstaining(&self) -> bool {
        self.abstain_ticks > 0
    }

    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.abstain_ticks > 0 {
            // No campaign: a rebooted replica might lack entries a majority
            // acknowledged as written. It still follows a leader.
            self.abstain_ticks -= 1;
            if self.abstain_ticks == 0 {
                log::warn!("replica {}: no leader reached it after a restart of its machine; voting again", self.id);
            }
            self.announce_abstaining |= self.ticks.is_multiple_of(ABSTAIN_ANNOUNCE_TICKS);
        } else {
            self.node.tick();
        }
        if self.read_confirmed < self.read_asked && self.ticks >= self.read_asked_at_tick + READ_RETRY_TICKS {
            // The round was dropped (no leader known): ask again; a later
            // round confirms every read before it.
            self.read_index();
        }
    }

    /// Hands raft-rs a message from a peer. Entries that do not parse are
    /// refused before raft-rs sees them, so a faulty peer cannot make this
    /// replica write garbage.
    pub fn step(&mut self, msg: Message) -> Result<(), ReplicaError> {
        // Only appends carry log entries (a ReadIndex request carries its
        // context in an entry too).
        let appends = msg.get_msg_type() == MessageType::MsgAppend;
        for e in msg.get_entries().iter().filter(|_| appends) {
            if e.get_entry_type() == EntryType::EntryNormal {
                if let Err(err) = entry::count_records(e.get_data()) {
                    log::warn!(
                        "replica {}: dropped a message from {} with a bad entry {}: {err}",
                        self.id,
                        msg.from,
                        e.index
                    );
                    return Ok(());
                }
            }
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot && !snapshot_acceptable(msg.get_snapshot()) {
            log::warn!("replica {}: dropped a snapshot from {} that does not decode", self.id, msg.from);
            return Ok(());
        }
        if self.abstain_ticks > 0
            && matches!(msg.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote)
        {
            return Ok(());
        }
        match self.node.step(msg) {
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Peer `from` announced that it abstains (its machine restarted). When
    /// the abstaining replicas heard from, this one included, are a
    /// majority of the voters, a majority's machines restarted: no leader
    /// can be elected while they abstain, and async writes are not promised
    /// to survive that, so this replica votes again.
    pub fn on_peer_abstaining(&mut self, from: u64) {
        if self.abstain_ticks == 0 {
            return;
        }
        self.abstaining_peers.insert(from, self.ticks);
        self.stop_abstaining_if_a_majority_does();
    }

    fn stop_abstaining_if_a_majority_does(&mut self) {
        let voters = self.voters();
        let heard = |id: &u64| self.abstaining_peers.get(id).is_some_and(|t| self.ticks <= t + ABSTAIN_HEARD_TICKS);
        let abstaining = voters.iter().filter(|id| **id == self.id || heard(id)).count();
        if abstaining > voters.len() / 2 {
            if voters.len() > 1 {
                log::warn!(
                    "replica {}: {abstaining} of {} voters restarted after their machines did; voting again \
                     (async writes acknowledged but not on disk may be lost)",
                    self.id,
                    voters.len()
                );
            }
            self.abstain_ticks = 0;
            self.abstaining_peers.clear();
        }
    }

    /// A follower wrote our entries up to `index` in `term`.
    pub fn on_written_ack(&mut self, from: u64, term: u64, index: u64) {
        if self.leading && term == self.term() {
            let e = self.acks.entry(from).or_insert(0);
            *e = (*e).max(index);
        }
    }

    /// Starts a ReadIndex round; returns its sequence number. Output that
    /// reflects reads done before this call may go once
    /// [`read_confirmed`](Self::read_confirmed) reaches it.
    pub fn read_index(&mut self) -> u64 {
        self.read_asked += 1;
        self.read_asked_at_tick = self.ticks;
        self.node.read_index(self.read_asked.to_le_bytes().to_vec());
        self.read_asked
    }

    /// The last ReadIndex round started.
    pub fn read_asked(&self) -> u64 {
        self.read_asked
    }

    /// Tells raft-rs a message to `to` could not be sent (its link is full):
    /// it probes the peer instead of streaming to it.
    pub fn report_unreachable(&mut self, to: u64) {
        self.node.report_unreachable(to);
    }

    /// Every read done before ReadIndex round `n` may be answered, for
    /// every `n` up to this.
    pub fn read_confirmed(&self) -> u64 {
        self.read_confirmed
    }

    /// Proposes this turn's open entry. Returns false if Raft refused it
    /// (not leader, or a leadership transfer): the entry is made void in
    /// the log and the engine must be rebuilt.
    pub fn propose<R: RawLog>(&mut self, log: &mut EntryLog<R>) -> bool {
        let Some(mut open) = log.take_open() else { return true };
        let context = if open.sync { vec![FLAG_SYNC] } else { Vec::new() };
        let before = self.node.raft.raft_log.last_index();
        // `leading` follows the readies; a message stepped in this turn may
        // have deposed raft-rs already, and a follower's raft-rs forwards a
        // proposal to the leader instead of appending it (no entry here,
        // and the records would be committed behind this replica's back).
        let still_leader = self.node.raft.state == StateRole::Leader;
        if !self.leading || !still_leader || self.node.propose(context, std::mem::take(&mut open.data)).is_err() {
            log.void(open);
            return false;
        }
        let index = self.node.raft.raft_log.last_index();
        let term = self.node.raft.term;
        debug_assert_eq!(index, before + 1, "one proposal, one entry");
        // raft-rs turned the data into `Bytes`: share it, no copy.
        let data = self.node.raft.raft_log.unstable_entries().last().map(|e| e.data.clone()).unwrap_or_default();
        open.data_len = data.len();
        let prev_term = self.node.raft.raft_log.term(index - 1).unwrap_or(0);
        log.finish(&open, term, index, prev_term);
        self.record_own_entry(index, term, &open, data, log.raw.end());
        self.applied = index;
        true
    }

    fn record_own_entry(&mut self, index: u64, term: u64, open: &OpenEntry, data: bytes::Bytes, end_pos: u64) {
        let store = self.node.mut_store();
        let e = IndexedEntry { term, header_pos: open.header_pos, end_pos };
        if let Err(err) = store.index.push(index, e) {
            // Raft assigned the index after our last one: a mismatch is a bug.
            panic!("entry index out of step with raft: {err}");
        }
        store.cache.put(index, CachedEntry { kind: EntryKind::Normal, data, positions: open.positions.clone() });
    }

    /// Handles every `Ready` raft-rs has, and releases what the log's
    /// progress made safe. Call after `step`, `tick`, `propose`,
    /// `read_index`, and whenever the log's written or durable end moves.
    pub fn pump<R: RawLog>(
        &mut self,
        log: &mut EntryLog<R>,
        applier: &mut impl Applier,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        loop {
            self.release_persisted(&log.raw, out);
            self.fetch_wanted(&log.raw)?;
            if !self.node.has_ready() {
                break;
            }
            self.handle_ready(log, applier, out)?;
        }
        self.confirm_reads();
        self.maybe_stop_abstaining();
        if std::mem::take(&mut self.announce_abstaining) && self.abstain_ticks > 0 {
            out.abstaining_to.extend(self.voters().into_iter().filter(|id| *id != self.id));
        }
        let keep_from = self.node.store().index.first_index();
        let applied = self.node.raft.raft_log.applied;
        self.node.mut_store().cache.trim(applied, keep_from);
        Ok(())
    }

    fn handle_ready<R: RawLog>(
        &mut self,
        log: &mut EntryLog<R>,
        applier: &mut impl Applier,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        let mut rd = self.node.ready();
        let mut became_leader = false;
        if let Some(ss) = rd.ss() {
            let now_leader = ss.raft_state == StateRole::Leader;
            if self.leading && !now_leader {
                self.step_down(log, out);
            }
            became_leader = now_leader && !self.leading;
        }
        out.messages.extend(rd.take_messages());
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap, log, applier, out)?;
        }
        let mut ack = None;
        let mut sync = false;
        for e in rd.take_entries() {
            sync |= e.get_context().first().is_some_and(|f| f & FLAG_SYNC != 0);
            if self.write_entry(&e, log, out)? {
                ack = Some((e.term, e.index));
            }
        }
        if self.truncated_applied {
            self.rebuild(log, applier)?;
        }
        if let Some(hs) = rd.hs() {
            self.write_hard_state(hs, log)?;
        }
        let durable = rd.must_sync();
        if durable && (sync || rd.hs().is_some_and(|h| h.vote != 0 || h.term != 0)) {
            // A vote or term change, or a sync queue's data: fdatasync now,
            // not within the flush interval.
            log.raw.require_sync();
        }
        for rs in rd.take_read_states() {
            self.on_read_state(rs);
        }
        self.apply_committed(rd.take_committed_entries(), log, applier, out)?;
        let messages = rd.take_persisted_messages();
        let number = rd.number();
        self.node.advance_append_async(rd);
        let leader = self.node.raft.leader_id;
        let ack = ack.filter(|_| !self.leading && leader != 0).map(|(term, index)| (leader, term, index));
        self.pending.push_back(PendingReady { number, end: log.raw.end(), durable, messages, ack });
        if became_leader {
            self.take_lead(log, applier, out)?;
        }
        Ok(())
    }

    /// Writes an entry raft-rs handed over, unless it is our own proposal
    /// (already in the log). Returns whether it wrote one from a leader.
    fn write_entry<R: RawLog>(
        &mut self,
        e: &Entry,
        log: &mut EntryLog<R>,
        out: &mut Outbox,
    ) -> Result<bool, ReplicaError> {
        let index = e.index;
        let last = self.node.store().index.last_index();
        if index <= last {
            if self.node.store().index.term(index) == Some(e.term) {
                return Ok(false);
            }
            out.events.push(Event::Truncated { from: index });
            if index <= self.applied {
                self.truncated_applied = true;
            }
        }
        let kind = match e.get_entry_type() {
            EntryType::EntryNormal => EntryKind::Normal,
            EntryType::EntryConfChangeV2 => EntryKind::ConfChange,
            EntryType::EntryConfChange => {
                return Err(ReplicaError::Apply { index, msg: "version 1 configuration changes are not used".into() })
            }
        };
        let data = e.get_data();
        let records = match kind {
            EntryKind::ConfChange => 1,
            _ => entry::count_records(data).map_err(|err| ReplicaError::Apply { index, msg: err.to_string() })?,
        };
        let flags = e.get_context().first().copied().unwrap_or(0) & FLAG_SYNC;
        let prev_term = self.node.store().index.term(index - 1).unwrap_or(0);
        let data_len = data.len() as u32;
        let header = EntryHeader { term: e.term, index, prev_term, kind, flags, records, data_len };
        let header_pos = log.raw.append(rtype::ENTRY, &[&header.encode()], Durability::Written)?;
        let mut positions = Vec::with_capacity(records as usize);
        if kind == EntryKind::ConfChange {
            positions.push(log.raw.append(rtype::CONF_CHANGE, &[data], Durability::Written)?);
        } else {
            for r in entry::records(data) {
                let (rt, payload) = r.map_err(|err| ReplicaError::Apply { index, msg: err.to_string() })?;
                positions.push(log.raw.append(rt, &[payload], Durability::Written)?);
            }
        }
        log.note_entry(header_pos, log.raw.end());
        let store = self.node.mut_store();
        store.index.push(index, IndexedEntry { term: e.term, header_pos, end_pos: log.raw.end() })?;
        store.cache.put(index, CachedEntry { kind, data: e.data.clone(), positions });
        Ok(true)
    }

    fn write_hard_state<R: RawLog>(&mut self, hs: &HardState, log: &mut EntryLog<R>) -> Result<(), ReplicaError> {
        let rec = HardStateRecord { term: hs.term, vote: hs.vote, commit: hs.commit };
        let pos = log.raw.append(rtype::HARD_STATE, &[&rec.encode()], Durability::Written)?;
        self.state_records.wrote_hard_state(pos, log.raw.end());
        self.durable_commit.wrote(log.raw.end(), hs.commit);
        self.node.mut_store().hard_state = hs.clone();
        Ok(())
    }

    fn apply_committed<R: RawLog>(
        &mut self,
        entries: Vec<Entry>,
        log: &mut EntryLog<R>,
        applier: &mut impl Applier,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
        for e in &entries {
            match e.get_entry_type() {
                EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(e, log, out)?;
                    let end = self.node.store().index.end_pos(e.index);
                    applier.entry_applied(e.index, end);
                    // Reads wait for the applied index to reach the commit
                    // index they were confirmed at: a configuration change
                    // counts (an idle group would otherwise never answer one).
                    self.applied = self.applied.max(e.index);
                }
                _ if e.index <= self.applied => {}
                _ => {
                    self.apply_entry(e.index, &log.raw, applier)?;
                    self.applied = e.index;
                }
            }
        }
        self.node.advance_apply_to(last);
        Ok(())
    }

    /// Applies one entry's engine records with their local positions.
    fn apply_entry(&self, index: u64, raw: &impl RawLog, applier: &mut impl Applier) -> Result<(), ReplicaError> {
        let store = self.node.store();
        readback::apply_entry(&store.index, index, store.cache.get(index), raw, applier)
            .map_err(|e| ReplicaError::Apply { index: e.index, msg: e.msg })
    }

    fn apply_conf_change<R: RawLog>(
        &mut self,
        e: &Entry,
        log: &mut EntryLog<R>,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        let cc = match ConfChangeV2::parse_from_bytes(e.get_data()) {
            Ok(cc) => cc,
            Err(err) => {
                return Err(ReplicaError::Apply { index: e.index, msg: format!("configuration change: {err}") })
            }
        };
        let cs = self.node.apply_conf_change(&cc)?;
        if !cs.voters.contains(&self.id) && self.node.raft.state == StateRole::Leader {
            // Removed while leading (it was elected after the change was
            // proposed, or an operator removed the leader). raft-rs leaves
            // such a leader leading and panics at its next commit
            // (`maybe_commit` unwraps its own progress; the simulator hit it
            // in seed 3 of a `run_seeds` batch, before relocations came out
            // in a deterministic order): step down now; the voters elect another.
            let term = self.node.raft.term;
            self.node.raft.become_follower(term, raft::INVALID_ID);
        }
        let rec = conf_record(&cs);
        let pos = log.raw.append(rtype::CONF_STATE, &[&rec.encode()], Durability::Written)?;
        self.state_records.wrote_conf(pos, log.raw.end());
        log.raw.require_sync();
        let added = cc
            .get_changes()
            .iter()
            .find(|c| c.get_change_type() == ConfChangeType::AddNode)
            .map(|c| (c.node_id, String::from_utf8_lossy(cc.get_context()).into_owned()));
        out.events.push(Event::ConfChanged { voters: rec.voters.clone(), learners: rec.learners.clone(), added });
        let store = self.node.mut_store();
        store.conf_state = cs;
        // A snapshot prepared before carries the old configuration: a node
        // just added is not in it and refuses it, and raft-rs would send it
        // again forever (the simulator found a new node that never caught
        // up: seed 1796448009008). The next one is built with this one.
        store.snapshot = None;
        Ok(())
    }

    /// A new leader applies the rest of its log (Raft commits it in the new
    /// term) before it serves, so the requests it takes see all of it.
    fn take_lead<R: RawLog>(
        &mut self,
        log: &mut EntryLog<R>,
        applier: &mut impl Applier,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        let last = self.node.store().index.last_index();
        for i in self.applied + 1..=last {
            self.apply_entry(i, &log.raw, applier)?;
            self.applied = i;
        }
        self.leading = true;
        self.acks.clear();
        log.set_writable(true);
        out.events.push(Event::BecameLeader);
        Ok(())
    }

    fn step_down<R: RawLog>(&mut self, log: &mut EntryLog<R>, out: &mut Outbox) {
        self.leading = false;
        self.acks.clear();
        log.set_writable(false);
        out.events.push(Event::LostLeadership);
    }

    /// The engine had applied entries a new leader replaced: start over
    /// from the durable base and apply what is committed.
    pub fn rebuild<R: RawLog>(
        &mut self,
        log: &mut EntryLog<R>,
        applier: &mut impl Applier,
    ) -> Result<(), ReplicaError> {
        self.truncated_applied = false;
        applier.reset(self.base.as_ref());
        // What raft-rs knows committed may run past what this replica has
        // written so far; the rest is applied as raft-rs hands it over.
        let commit = self.node.raft.raft_log.committed.min(self.node.raft.raft_log.applied);
        let first = self.node.store().index.first_index();
        for i in first..=commit {
            self.apply_entry(i, &log.raw, applier)?;
        }
        self.applied = commit.max(first - 1);
        Ok(())
    }

    /// Sends what waited for the log and tells raft-rs which readies are
    /// safe.
    fn release_persisted(&mut self, raw: &impl RawLog, out: &mut Outbox) {
        let (written, durable) = (raw.written_end(), raw.durable_end());
        self.state_records.durable_to(durable);
        self.durable_commit.durable_to(durable);
        // Written-acks go as soon as a ready is written, also behind an
        // earlier one that waits for its fdatasync: async writers wait on
        // them, and must not wait for the flush interval (only the latest
        // is sent; it covers the ones before it).
        let acks = self.pending.iter_mut().take_while(|p| p.end <= written).filter_map(|p| p.ack.take());
        if let Some(ack) = acks.last() {
            out.written_acks.push(ack);
        }
        while let Some(p) = self.pending.front() {
            if p.end > written || (p.durable && p.end > durable) {
                // The rest waits for the write, or for the fdatasync.
                break;
            }
            let Some(p) = self.pending.pop_front() else { break };
            out.messages.extend(p.messages);
            self.node.on_persist_ready(p.number);
        }
        if let Some(index) = self.snapshot_unapplied {
            let l = &self.node.raft.raft_log;
            if l.persisted >= index && l.committed >= index {
                if l.applied < index {
                    self.node.advance_apply_to(index);
                }
                self.snapshot_unapplied = None;
            }
        }
    }

    /// Reads entries a lagging follower needs into the cache (raft-rs asked
    /// for them and got `LogTemporarilyUnavailable`).
    fn fetch_wanted(&mut self, raw: &impl RawLog) -> Result<(), ReplicaError> {
        let Some((low, high, ctx)) = self.node.store().wanted.borrow_mut().take() else { return Ok(()) };
        // Entries released since raft-rs asked are not fetched: asked again,
        // it finds them compacted and sends a snapshot instead.
        let first = self.node.store().index.first_index();
        for i in low.max(first)..high {
            if self.node.store().cache.get(i).is_some() {
                continue;
            }
            let c = readback::read_entry(&self.node.store().index, i, raw)
                .map_err(|e| ReplicaError::Apply { index: e.index, msg: e.msg })?;
            self.node.mut_store().cache.put_fetched(i, c);
        }
        self.node.on_entries_fetched(ctx);
        Ok(())
    }

    /// A leader committed an entry of its own term here: everything before
    /// it is committed, so this replica's vote can no longer lose an entry
    /// acknowledged as written on a majority.
    fn maybe_stop_abstaining(&mut self) {
        if self.abstain_ticks == 0 {
            return;
        }
        if self.node.raft.leader_id == 0 {
            // A group of one (itself) is its own majority.
            self.stop_abstaining_if_a_majority_does();
            return;
        }
        let log = &self.node.raft.raft_log;
        if log.term(log.committed).ok() == Some(self.node.raft.term) {
            self.abstain_ticks = 0;
        }
    }

    fn on_read_state(&mut self, rs: ReadState) {
        let Ok(seq) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else { return };
        self.read_states.push_back((u64::from_le_bytes(seq), rs.index));
    }

    fn confirm_reads(&mut self) {
        while let Some(&(seq, index)) = self.read_states.front() {
            if index > self.applied {
                break;
            }
            self.read_confirmed = self.read_confirmed.max(seq);
            self.read_states.pop_front();
        }
    }

    /// Log positions output may wait for: `(written on a majority, committed)`.
    /// Written counts only entries of the current term (Raft's commit rule:
    /// only those are sure to be in every future leader's log).
    pub fn release_positions(&self, raw: &impl RawLog) -> (u64, u64) {
        let store = self.node.store();
        let commit = self.node.raft.raft_log.committed.min(store.index.last_index());
        let committed_end = store.index.end_pos(commit);
        if !self.leading {
            return (committed_end, committed_end);
        }
        let own = store.index.index_ending_by(raw.written_end());
        let voters = self.node.raft.prs().conf().voters().ids();
        let mut written: Vec<u64> = voters
            .iter()
            .map(|id| if id == self.id { own } else { self.acks.get(&id).copied().unwrap_or(0) })
            .collect();
        written.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = written.get(written.len() / 2).copied().unwrap_or(0);
        let term = self.node.raft.term;
        let quorum_end = if store.index.term(quorum) == Some(term) { store.index.end_pos(quorum) } else { 0 };
        (quorum_end.max(committed_end), committed_end)
    }

    /// A leader's snapshot: the log restarts after it and the engine takes
    /// its state (see [`SnapshotRecord`]). Written before the entries of the
    /// same `Ready`, fdatasync'd before raft-rs hears it is persisted.
    fn install_snapshot<R: RawLog>(
        &mut self,
        snap: &Snapshot,
        log: &mut EntryLog<R>,
        applier: &mut impl Applier,
        out: &mut Outbox,
    ) -> Result<(), ReplicaError> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let bad = |msg: &str| ReplicaError::Apply { index, msg: format!("snapshot: {msg}") };
        let (catalog_index, catalog) = decode_snapshot_data(&snap.data).ok_or_else(|| bad("data too short"))?;
        let conf = conf_record(meta.get_conf_state());
        let record = SnapshotRecord { index, term, catalog_index, conf, catalog };
        let pos = log.raw.append(rtype::SNAPSHOT, &[&record.encode_head(), &record.catalog], Durability::Written)?;
        log.raw.require_sync();
        let end = log.raw.end();
        self.state_records.wrote_conf(pos, end);
        // A restart counts entries up to the snapshot's index committed.
        self.durable_commit.wrote(end, index);
        log.note_entry(pos, end);
        let base = SnapshotBase { pos, end, record };
        applier.install_snapshot(&base).map_err(|e| bad(&e))?;
        let store = self.node.mut_store();
        store.index = EntryIndex::starting_after(index, term, end);
        store.cache.clear();
        store.conf_state = meta.get_conf_state().clone();
        store.hard_state.commit = store.hard_state.commit.max(index);
        store.snapshot = None;
        self.base = Some(base);
        self.applied = index;
        self.truncated_applied = false;
        self.snapshot_unapplied = Some(index);
        log::info!("replica {}: installed a snapshot at entry {index} (term {term})", self.id);
        out.events.push(Event::SnapshotInstalled { index });
        Ok(())
    }

    /// The log below `pos` was released: entries whose header was there
    /// are gone (a follower that needs them gets a snapshot).
    pub fn forget_entries_below(&mut self, pos: u64) {
        self.node.mut_store().index.forget_below(pos);
    }

    /// Whether raft-rs asked for a snapshot to send (a follower needs
    /// entries this log no longer holds, or its log is empty). Clears the
    /// request.
    pub fn take_snapshot_wanted(&mut self) -> bool {
        self.node.store().snapshot_wanted.borrow_mut().take().is_some()
    }

    /// Offers raft-rs a snapshot built from the catalog file (`catalog`,
    /// which reflects every entry up to `catalog_index`): the state just
    /// before the first entry this log holds. raft-rs sends it on its next
    /// try. Returns the snapshot's index.
    pub fn offer_snapshot(&mut self, catalog_index: u64, catalog: &[u8]) -> Result<u64, String> {
        let store = self.node.store();
        let first = store.index.first_index();
        // A log that still starts at entry 1 offers entry 1: a group's
        // first entry is its first leader's empty entry.
        let index = (first - 1).max(1);
        let empty = |e: &IndexedEntry| e.end_pos == e.header_pos + EntryHeader::PAYLOAD_BYTES as u64;
        if index == first && !store.index.get(1).is_some_and(empty) {
            return Err("entry 1 is not an empty entry".into());
        }
        if catalog_index + 1 < first {
            return Err(format!("the catalog reflects entries up to {catalog_index}, the log starts at {first}"));
        }
        if index > self.commit_index() {
            return Err(format!("entry {index} is not committed yet"));
        }
        let term = store.index.term(index).ok_or_else(|| format!("the term of entry {index} is unknown"))?;
        let conf = store.conf_state.clone();
        let data = encode_snapshot_data(catalog_index, catalog);
        self.node.mut_store().snapshot = Some(PreparedSnapshot { index, term, conf, data });
        Ok(index)
    }

    /// The catalog to offer a snapshot from: the catalog file's
    /// (`(catalog_index, bytes)`, written at log position `file_pos`), or,
    /// when the snapshot this replica installed is newer, that snapshot's
    /// catalog, as a restart would load it. A node that joined by snapshot
    /// has no catalog file until its housekeeping writes one, which a quiet
    /// group never makes it do; the older file does not reach the entry its
    /// log starts at, so as leader it could offer no snapshot, and a
    /// follower or new node behind its log never caught up (seed 6582).
    pub fn snapshot_catalog(&self, file: (u64, Vec<u8>), file_pos: u64) -> (u64, Vec<u8>) {
        match self.base.as_ref().filter(|b| b.pos > file_pos) {
            Some(b) => (b.record.catalog_index, b.record.catalog.to_vec()),
            None => file,
        }
    }

    /// A snapshot message to `to` went out (or could not).
    pub fn report_snapshot(&mut self, to: u64, sent: bool) {
        let status = if sent { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.node.report_snapshot(to, status);
    }

    /// A one-line description of raft-rs's view, for diagnostics.
    pub fn debug_state(&self) -> String {
        let l = &self.node.raft.raft_log;
        format!(
            "state {:?} leader {} persisted {} committed {} applied(raft) {} pending readies {:?}",
            self.node.raft.state,
            self.node.raft.leader_id,
            l.persisted,
            l.committed,
            l.applied,
            self.pending.iter().map(|p| (p.number, p.end, p.durable)).collect::<Vec<_>>()
        )
    }

    /// Asks raft-rs to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Proposes adding node `id` as a voter; its peers reach it at
    /// `peer_addr` (carried in the change, so every replica learns it).
    pub fn propose_add_node(&mut self, id: u64, peer_addr: &str) -> Result<(), ReplicaError> {
        self.propose_change(ConfChangeType::AddNode, id, peer_addr.as_bytes().to_vec())
    }

    pub fn propose_remove_node(&mut self, id: u64) -> Result<(), ReplicaError> {
        self.propose_change(ConfChangeType::RemoveNode, id, Vec::new())
    }

    /// One node at a time: raft-rs refuses a change while another is pending.
    fn propose_change(&mut self, kind: ConfChangeType, id: u64, context: Vec<u8>) -> Result<(), ReplicaError> {
        if self.node.raft.has_pending_conf() {
            return Err(ReplicaError::Busy("a membership change is still in progress; retry when it is done".into()));
        }
        let single = ConfChangeSingle { change_type: kind, node_id: id, ..Default::default() };
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.set_context(context.into());
        self.node.propose_conf_change(Vec::new(), cc)?;
        Ok(())
    }

    /// Messages are addressed by node id; encode for the wire.
    pub fn encode(msg: &Message) -> Vec<u8> {
        msg.write_to_bytes().unwrap_or_default()
    }

    /// Decodes a peer's message. The entries' data share `bytes` (the
    /// received frame) instead of being copied out of it.
    pub fn decode(bytes: &bytes::Bytes) -> Option<Message> {
        let m = Message::parse_from_carllerche_bytes(bytes).ok()?;
        (m.get_msg_type() != MessageType::MsgHup).then_some(m)
    }
}

/// A snapshot whose data decodes (its catalog is checked where it is
/// installed; this keeps a garbled one from reaching raft-rs at all).
fn snapshot_acceptable(snap: &Snapshot) -> bool {
    decode_snapshot_data(&snap.data).is_some_and(|(_, c)| crate::engine::Catalog::decode(&c).is_ok())
}

fn conf_record(cs: &ConfState) -> ConfStateRecord {
    ConfStateRecord {
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        learners_next: cs.learners_next.clone(),
        auto_leave: cs.auto_leave,
    }
}

#[cfg(test)]
mod abstain_tests {
    use raft::eraftpb::{ConfState, HardState};

    use super::*;
    use crate::consensus::scan::LogScanner;

    /// Replica 1 of {1, 2, 3}, restarted after its machine did.
    fn rebooted() -> Replica {
        let scanned = LogScanner::default().finish();
        let cs = ConfState { voters: vec![1, 2, 3], ..Default::default() };
        let store = RaftStore::new(scanned.index, HardState::default(), cs);
        let mut cfg = ReplicaConfig::new(1);
        cfg.rebooted = true;
        Replica::new(&cfg, store, 0).expect("a replica")
    }

    #[test]
    fn a_snapshot_is_offered_from_the_newer_of_the_catalog_file_and_the_installed_snapshot() {
        let mut r = rebooted();
        let file = (0, b"file".to_vec());
        assert_eq!(r.snapshot_catalog(file.clone(), 0), file, "no snapshot installed");
        let conf = ConfStateRecord { voters: vec![1, 2, 3], ..Default::default() };
        let catalog = bytes::Bytes::from_static(b"snap");
        let record = SnapshotRecord { index: 112, term: 3, catalog_index: 115, conf, catalog };
        r.set_snapshot_base(Some(SnapshotBase { pos: 500, end: 600, record }));
        assert_eq!(r.snapshot_catalog(file.clone(), 0), (115, b"snap".to_vec()), "no catalog file since");
        assert_eq!(r.snapshot_catalog((130, b"file".to_vec()), 900).0, 130, "a catalog file written since");
    }

    #[test]
    fn a_rebooted_replica_votes_again_once_a_majority_of_voters_abstains() {
        let mut r = rebooted();
        // Ten election timeouts without a leader: a peer holding entries
        // this replica lost may only be cut off, so it keeps abstaining.
        for _ in 0..10 * ReplicaConfig::new(1).election_ticks {
            r.tick();
        }
        assert!(r.abstaining());
        r.on_peer_abstaining(2);
        assert!(!r.abstaining(), "two of three voters restarted: a majority abstaining elects no one");
    }

    #[test]
    fn a_rebooted_replica_votes_again_after_the_last_resort_bound() {
        let mut r = rebooted();
        let bound = ABSTAIN_ELECTIONS_MAX * ReplicaConfig::new(1).election_ticks as u64;
        for _ in 1..bound {
            r.tick();
        }
        assert!(r.abstaining());
        r.tick();
        assert!(!r.abstaining());
    }

    #[test]
    fn a_replica_that_did_not_reboot_ignores_announcements() {
        let scanned = LogScanner::default().finish();
        let cs = ConfState { voters: vec![1, 2, 3], ..Default::default() };
        let store = RaftStore::new(scanned.index, HardState::default(), cs);
        let mut r = Replica::new(&ReplicaConfig::new(1), store, 0).expect("a replica");
        r.on_peer_abstaining(2);
        assert!(!r.abstaining());
        assert!(r.abstaining_peers.is_empty());
    }
}

#[cfg(test)]
mod removal_tests {
    use raft::eraftpb::{ConfState, HardState};

    use super::*;
    use crate::consensus::scan::LogScanner;
    use crate::sim::SimLog;

    pub(super) struct NoEngine;

    impl Applier for NoEngine {
        fn apply(&mut self, _pos: u64, _rtype: u8, _payload: &[u8]) -> Result<(), String> {
            Ok(())
        }

        fn reset(&mut self, _snapshot: Option<&SnapshotBase>) {}
    }

    pub(super) type Node = (Replica, EntryLog<SimLog>);

    /// Replica `id` of the group {1, 2}, with an empty log.
    pub(super) fn node(id: u64) -> Node {
        let cs = ConfState { voters: vec![1, 2], ..Default::default() };
        let store = RaftStore::new(LogScanner::default().finish().index, HardState::default(), cs);
        let replica = Replica::new(&ReplicaConfig::new(id), store, 0).expect("a replica");
        (replica, EntryLog::new(SimLog::default(), true))
    }

    /// Rounds of: every replica handles its readies with its log written
    /// and fdatasync'd at once, then its messages are delivered.
    pub(super) fn exchange(nodes: &mut [Node], rounds: usize) {
        for _ in 0..rounds {
            exchange_syncing(nodes, &[true, true]);
        }
    }

    /// One round of `exchange`, where node `k + 1` fdatasyncs its log only
    /// if `sync[k]` (otherwise it is written: in the OS, not on disk).
    pub(super) fn exchange_syncing(nodes: &mut [Node], sync: &[bool]) {
        let mut messages = Vec::new();
        for ((r, log), sync) in nodes.iter_mut().zip(sync) {
            let mut out = Outbox::default();
            r.pump(log, &mut NoEngine, &mut out).expect("pump");
            log.raw.submit(0);
            if *sync {
                let synced = log.raw.start_sync();
                log.raw.sync_done(synced);
            }
            r.pump(log, &mut NoEngine, &mut out).expect("pump");
            messages.extend(out.messages);
        }
        for m in messages {
            let to = usize::try_from(m.to - 1).expect("a node");
            nodes[to].0.step(m).expect("step");
        }
    }

    /// raft-rs leaves a leader that applies its own removal leading, and
    /// panics at its next commit; the replica makes it step down.
    #[test]
    fn a_leader_that_applies_its_own_removal_steps_down() {
        let mut nodes = vec![node(1), node(2)];
        for _ in 0..40 {
            nodes[0].0.tick();
            exchange(&mut nodes, 1);
        }
        assert!(nodes[0].0.is_leader(), "node 1 campaigned first");
        nodes[0].0.propose_remove_node(1).expect("proposed");
        exchange(&mut nodes, 10);
        assert_eq!(nodes[1].0.voters(), vec![2]);
        assert!(!nodes[0].0.is_leader(), "a removed leader steps down");
    }
}

#[cfg(test)]
mod durable_commit_tests {
    use super::removal_tests::{exchange, exchange_syncing, node, NoEngine};
    use super::Outbox;
    use crate::consensus::scan::LogScanner;
    use crate::engine::{Durability, Log};

    /// A follower learns that entries are committed in a hard state written
    /// without an fdatasync of its own; a power loss takes it back, and the
    /// restart applies entries only up to the commit index it finds. A
    /// release or a catalog that relied on the entries after it would
    /// leave the restarted engine without state those entries hold (seed
    /// 1796449737090: two replicas differed after the same 186 entries),
    /// so they count only `durable_commit_index`, which is exactly what a
    /// restart finds.
    #[test]
    fn the_durable_commit_index_is_what_a_restart_after_a_power_loss_applies() {
        let mut nodes = vec![node(1), node(2)];
        for _ in 0..40 {
            nodes[0].0.tick();
            exchange(&mut nodes, 1);
        }
        assert!(nodes[0].0.is_leader(), "node 1 campaigned first");
        let (leader, leader_log) = &mut nodes[0];
        leader_log.append(1, &[b"a record"], Durability::Written).expect("appended");
        assert!(leader.propose(leader_log));
        let index = leader.last_index();
        // Node 2 writes and fdatasyncs the entry; the leader commits it.
        for _ in 0..10 {
            exchange_syncing(&mut nodes, &[true, true]);
            if nodes[0].0.commit_index() >= index {
                break;
            }
        }
        assert!(nodes[0].0.commit_index() >= index);
        // Node 2 hears of the commit; that hard state is written, not yet durable.
        for _ in 0..10 {
            exchange_syncing(&mut nodes, &[true, false]);
            if nodes[1].0.commit_index() >= index {
                break;
            }
        }
        let (follower, log) = &mut nodes[1];
        assert!(follower.commit_index() >= index, "node 2 learned the commit");
        follower.pump(log, &mut NoEngine, &mut Outbox::default()).expect("pump");
        log.raw.submit(0);
        assert_eq!(follower.store().hard_state.commit, follower.commit_index(), "the hard state is written");
        let durable = follower.durable_commit_index();
        assert!(durable < index, "its hard state is not durable yet");

        let mut lost = log.raw.clone();
        lost.crash(true, 0);
        let mut scanner = LogScanner::default();
        for (pos, end, rt, payload) in lost.records() {
            scanner.record(pos, end, rt, payload).expect("scanned");
        }
        let scanned = scanner.finish();
        assert!(scanned.index.last_index() >= index, "the entry itself was durable");
        assert_eq!(
            scanned.hard_state.commit.min(scanned.index.last_index()),
            durable,
            "a restart after a power loss applies up to the durable commit index, not further"
        );

        log.raw.submit(0);
        let synced = log.raw.start_sync();
        log.raw.sync_done(synced);
        follower.pump(log, &mut NoEngine, &mut Outbox::default()).expect("pump");
        assert_eq!(follower.durable_commit_index(), follower.commit_index(), "durable once fdatasync'd");
    }
}
