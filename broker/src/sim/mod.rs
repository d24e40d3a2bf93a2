//! A deterministic simulation of one Raft group: three replicas (engine,
//! raft-rs, log) in one thread, a simulated network (delays, drops,
//! reordering, partitions) and simulated disks (crashes that lose what was
//! not written or not fdatasync'd), all driven by one seed, checking after
//! every step that no committed entry is lost or differs between replicas
//! and that clients' acknowledged messages are never lost or resurrected.
//!
//! The same seed replays the same run exactly: every choice comes from the
//! seeded generator, time is virtual, and raft-rs's only randomness (its
//! election timeout) is pinned per node from the seed.

mod disk;
mod log;
mod membership;
pub mod seeds;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use cmq_protocol::{ErrorCode, FlushPolicy, QueueAttributesUpdate, ReceiptHandle};
use raft::eraftpb::{ConfState, HardState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::consensus::entry::CachedEntry;
use crate::consensus::scan::LogScanner;
use crate::consensus::state_records::StateRecords;
use crate::consensus::store::RaftStore;
use crate::consensus::{conf_replay, readback, EntryLog, Event, Outbox, RawLog, Replica, ReplicaConfig};
use crate::engine::{EngineConfig, ReceiveOutcome, ShardEngine};
use disk::{Disk, SimApplier};
pub use log::SimLog;
use membership::{Change, Proposal};

/// Virtual milliseconds between raft ticks.
const TICK_MS: u64 = 10;
/// An async fdatasync is due at most this long after the write.
const FLUSH_INTERVAL_MS: u64 = 50;
/// The simulated queues: one sync, one async.
const QUEUES: [(&str, FlushPolicy); 2] = [("q", FlushPolicy::Sync), ("qa", FlushPolicy::Async)];
/// Visibility timeout of the simulated queue (virtual seconds).
const VISIBILITY_S: u32 = 3;
/// Live message bodies are counted per 256 bytes of log (a node: 1 MiB),
/// an eighth of a simulated segment.
const SIM_POS_BUCKET_SHIFT: u32 = 8;
/// A replica's state fingerprint is recomputed at most this often.
const DIGEST_EVERY_MS: u64 = 20;

/// What one run does.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub nodes: u64,
    /// Virtual time of the faulty phase, then the network heals and the
    /// queue is drained.
    pub duration_ms: u64,
    pub clients: usize,
    /// Per step, the chance of each kind of fault.
    pub crash_per_mille: u32,
    pub partition_per_mille: u32,
    pub drop_per_mille: u32,
    /// Every 50 virtual ms while no membership change is under way, the
    /// chance that one starts (a new node added, then an old one removed).
    pub membership_per_mille: u32,
    /// Crashes may lose power (unsynced data lost) rather than only kill
    /// the process. Acknowledged async messages survive process crashes
    /// only, so they are checked in runs without power loss.
    pub power_loss: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            duration_ms: 6_000,
            clients: 3,
            crash_per_mille: 2,
            partition_per_mille: 3,
            drop_per_mille: 20,
            membership_per_mille: 25,
            power_loss: true,
        }
    }
}

/// What a run saw (for the caller to print and to check replays).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub steps: u64,
    pub acked_sends: usize,
    pub acked_deletes: usize,
    pub drained: usize,
    pub crashes: u64,
    pub elections: u64,
    pub commit_index: u64,
    /// Log segments released, catalogs written, snapshots installed.
    pub releases: u64,
    pub catalogs: u64,
    pub snapshots: u64,
    /// Nodes removed from the group (each replaced by a new one).
    pub removed: u64,
    /// A hash of everything that happened, to check that a replay is exact.
    pub trace: u64,
}

/// A broken invariant, with the seed that reproduces it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("seed {seed}: at {at_ms} ms: {what}")]
pub struct SimFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
}

/// A reply held until the log is safe enough.
struct Held {
    /// Log positions that must be written on a majority, and committed.
    written: u64,
    durable: u64,
    client: usize,
    reply: Reply,
}

#[derive(Debug, Clone)]
enum Reply {
    Sent { queue: usize, body: Bytes, msg_id: u64 },
    Received { issued_ms: u64, msgs: Vec<(usize, u64, ReceiptHandle, Bytes)> },
    Deleted { queue: usize, msg_id: u64 },
    Failed,
}

#[derive(Debug, Clone)]
enum Op {
    Send(usize, Bytes),
    Receive(usize),
    Delete(usize, u64, ReceiptHandle),
}

impl Op {
    fn queue(&self) -> usize {
        match self {
            Op::Send(q, _) | Op::Receive(q) | Op::Delete(q, ..) => *q,
        }
    }
}

struct Client {
    /// The node it talks to.
    node: u64,
    /// Its one outstanding request (and the time it was issued).
    busy: Option<(Op, u64)>,
    /// Messages it received and has not deleted yet: (queue, id, handle).
    to_delete: VecDeque<(usize, u64, ReceiptHandle)>,
    next_body: u64,
    /// Next time it may issue a request.
    ready_at: u64,
}

struct Node {
    id: u64,
    up: bool,
    log: EntryLog<SimLog>,
    /// The catalog file and log-space housekeeping.
    disk: Disk,
    engine: ShardEngine,
    replica: Option<Replica>,
    held: Vec<Held>,
    /// Requests received this turn: (client, op, issued).
    inbox: Vec<(usize, Op, u64)>,
    sync: Option<(u64, u64)>,
    restart_at: u64,
    /// The last crash lost power (the restart is a reboot).
    rebooted: bool,
    /// (applied index, digest, when computed).
    last_digest: Option<(u64, u64, u64)>,
    /// Committed entries up to here were checked.
    checked_to: u64,
    /// Started empty to join a running group (knows no members).
    joining: bool,
    /// Removed from the group and stopped for good.
    retired: bool,
    /// A membership change to propose in its next turn (as leader).
    proposal: Option<Proposal>,
    /// After installing a snapshot, its state is the group's only from
    /// here (see `Sim::snapshot_installed`); kept across crashes, as the
    /// log it restarts from is the same.
    complete_from: u64,
}

impl Node {
    fn new(id: u64, joining: bool) -> Node {
        Node {
            id,
            up: false,
            log: EntryLog::new(SimLog::default(), true),
            disk: Disk::default(),
            engine: new_engine(),
            replica: None,
            held: Vec::new(),
            inbox: Vec::new(),
            sync: None,
            restart_at: 0,
            rebooted: false,
            last_digest: None,
            checked_to: 0,
            joining,
            retired: false,
            proposal: None,
            complete_from: 0,
        }
    }
}

#[derive(Debug, Clone)]
enum Wire {
    Raft(Vec<u8>),
    WrittenAck { term: u64, index: u64 },
    Abstaining,
}

struct Sim {
    seed: u64,
    opts: SimOptions,
    rng: StdRng,
    now: u64,
    nodes: Vec<Node>,
    /// In flight: (deliver at, sequence, from, to, message).
    net: BTreeMap<(u64, u64), (u64, u64, Wire)>,
    net_seq: u64,
    /// Links cut: (from, to).
    cut: BTreeSet<(u64, u64)>,
    heal_at: u64,
    clients: Vec<Client>,
    ledger: Ledger,
    /// Every index any replica saw committed, with its term.
    committed: BTreeMap<u64, u64>,
    report: SimReport,
    /// Clients stop issuing requests (the run is settling).
    quiet: bool,
    /// The membership change under way, and when to drive it next.
    change: Change,
    next_change_ms: u64,
}

/// A message as the ledger knows it: (queue, message id). Ids are unique
/// per shard only among committed entries: an async send whose
/// acknowledgement two power losses took back frees its id for a later
/// send, possibly to the other queue.
type MsgKey = (usize, u64);

#[derive(Default)]
struct Ledger {
    acked: BTreeMap<Bytes, MsgKey>,
    /// Acknowledged sends to the async queue (a subset of `acked`), with
    /// when they were acknowledged.
    acked_async: BTreeMap<Bytes, u64>,
    /// Power losses: (when, node).
    power_losses: Vec<(u64, u64)>,
    /// A node lost power while another that had lost power was still down
    /// or not yet back in step with a leader.
    double_power_loss: bool,
    unknown: BTreeSet<Bytes>,
    /// Deleted message -> when the delete was acknowledged.
    deleted: BTreeMap<MsgKey, u64>,
    /// Deletes whose outcome is unknown (the reply was lost).
    maybe_deleted: BTreeSet<MsgKey>,
    /// Every body ever received, by message id.
    seen: BTreeMap<u64, Bytes>,
}

impl Ledger {
    /// Async acknowledgements promise the entry is written on a majority:
    /// they survive process crashes and one machine losing power at a
    /// time, not a second one before the first is back in step.
    fn majority_lost_power(&self) -> bool {
        self.double_power_loss
    }
}

/// Idempotency keys an engine of the simulation keeps: a handful, so that
/// sends evict keys all the time and the replicas' windows (compared by
/// the digest, carried by snapshots) are exercised at their limit.
const SIM_DEDUP_KEYS_MAX: usize = 8;

fn new_engine() -> ShardEngine {
    let cfg =
        EngineConfig { shard: 0, shard_count: 1, secret: [7; 16], default_flush: FlushPolicy::Sync, queues_max: 16 };
    let mut engine = ShardEngine::new(cfg);
    engine.limit_dedup_keys(SIM_DEDUP_KEYS_MAX);
    engine
}

/// Runs one seed.
pub fn run(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    // Live bodies are counted per bucket of this size: small enough for
    // the simulated segments to be released.
    crate::engine::message_index::set_pos_bucket_shift(SIM_POS_BUCKET_SHIFT);
    let mut sim = Sim::new(seed, opts.clone());
    sim.run()?;
    Ok(sim.report)
}

impl Sim {
    fn new(seed: u64, opts: SimOptions) -> Sim {
        let rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            nodes: Vec::new(),
            net: BTreeMap::new(),
            net_seq: 0,
            cut: BTreeSet::new(),
            heal_at: 0,
            clients: Vec::new(),
            ledger: Ledger::default(),
            committed: BTreeMap::new(),
            report: SimReport::default(),
            quiet: false,
            change: Change::Idle,
            next_change_ms: 0,
            opts,
        };
        for id in 1..=sim.opts.nodes {
            sim.nodes.push(Node::new(id, false));
        }
        for i in 0..sim.opts.clients {
            let node = sim.rng.random_range(1..=sim.opts.nodes);
            sim.clients.push(Client { node, busy: None, to_delete: VecDeque::new(), next_body: 0, ready_at: i as u64 });
        }
        sim
    }

    fn fail(&self, what: impl Into<String>) -> SimFailure {
        SimFailure { seed: self.seed, at_ms: self.now, what: what.into() }
    }

    fn trace(&mut self, v: u64) {
        self.report.trace = self.report.trace.rotate_left(5) ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn run(&mut self) -> Result<(), SimFailure> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        self.create_queue()?;
        while self.now < self.opts.duration_ms {
            self.step(true)?;
        }
        self.settle()?;
        self.drain()?;
        self.report.commit_index = self.committed.keys().next_back().copied().unwrap_or(0);
        self.report.releases = self.nodes.iter().map(|n| n.disk.releases).sum();
        self.report.catalogs = self.nodes.iter().map(|n| n.disk.catalogs).sum();
        if let Some(i) = self.leader() {
            let voters = self.nodes[i].replica.as_ref().map(|r| r.voters()).unwrap_or_default();
            let members: Vec<u64> = self.nodes.iter().filter(|n| !n.retired).map(|n| n.id).collect();
            if voters.iter().any(|v| !members.contains(v)) {
                return Err(self.fail(format!("voters {voters:?} include a removed node (members {members:?})")));
            }
        }
        Ok(())
    }

    /// One millisecond of virtual time.
    fn step(&mut self, faults: bool) -> Result<(), SimFailure> {
        self.now += 1;
        self.report.steps += 1;
        if faults {
            self.inject_faults()?;
        }
        self.deliver()?;
        self.drive_membership(faults);
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                if self.now >= self.nodes[i].restart_at {
                    self.start_node(i)?;
                }
                continue;
            }
            self.complete_sync(i);
            if self.now % TICK_MS == (i as u64) % TICK_MS {
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.tick();
                }
            }
        }
        self.clients_act();
        for i in 0..self.nodes.len() {
            if self.nodes[i].up {
                self.turn(i)?;
            }
        }
        self.check()
    }

    // ---- nodes --------------------------------------------------------------

    /// Starts (or restarts) node `i` from what its log and catalog hold,
    /// as `ShardLog::open` and `server.rs`'s `open_replication` do.
    fn start_node(&mut self, i: usize) -> Result<(), SimFailure> {
        let id = self.nodes[i].id;
        let n = &mut self.nodes[i];
        // A joining node knows no members: it learns them from the leader's snapshot.
        let voters: Vec<u64> = if n.joining { Vec::new() } else { (1..=self.opts.nodes).collect() };
        n.log.raw.recover();
        let mut scanner = LogScanner::default();
        let mut failure = None;
        for (pos, end, rt, payload) in n.log.raw.records() {
            if let Err(e) = scanner.record(pos, end, rt, payload) {
                failure = Some(format!("node {id}: scan: {e}"));
                break;
            }
        }
        let scanned = scanner.finish();
        let raw = std::mem::take(&mut n.log.raw);
        n.log = EntryLog::new(raw, true);
        let (first, last) = (scanned.index.first_index(), scanned.index.last_index());
        for k in first..=last {
            if let Some(e) = scanned.index.get(k) {
                n.log.note_entry(e.header_pos, e.end_pos);
            }
        }
        let mut engine = new_engine();
        let file_pos = n.disk.load_catalog(&mut engine);
        if let Some(b) = scanned.snapshot.as_ref().filter(|b| b.pos > file_pos) {
            engine = engine.fresh();
            if let Err(e) = disk::load_snapshot(&mut engine, b) {
                failure.get_or_insert(format!("node {id}: {e}"));
            }
        }
        let commit = scanned.hard_state.commit.min(last);
        let mut applier = SimApplier { engine: &mut engine, disk: &n.disk };
        if let Err(e) = readback::apply_range(&scanned.index, first, commit, &n.log.raw, &mut applier) {
            failure.get_or_insert(format!("node {id}: replay of entry {}: {}", e.index, e.msg));
        }
        let hs =
            HardState { term: scanned.hard_state.term, vote: scanned.hard_state.vote, commit, ..Default::default() };
        let mut cs = ConfState { voters: scanned.conf.map(|c| c.voters).unwrap_or(voters), ..Default::default() };
        if let Err(e) = conf_replay::replay_conf_changes(&scanned.index, commit, &n.log.raw, &mut cs) {
            failure.get_or_insert(format!("node {id}: configuration change {}: {}", e.index, e.msg));
        }
        if std::env::var("CMQ_SIM_DEBUG").is_ok() {
            eprintln!(
                "{} ms: node {id} starts: voters {:?}, commit {commit}, log {first}..={last}",
                self.now, cs.voters
            );
        }
        let base = scanned.snapshot;
        let state_records = StateRecords::found(scanned.hard_state_pos, scanned.conf_pos);
        let mut store = RaftStore::new(scanned.index, hs, cs);
        store.snapshot_for_empty_logs = true;
        // Cache what is not committed yet for raft-rs.
        for index in commit + 1..=last {
            match read_cached(&store, index, &n.log.raw) {
                Some(c) => store.cache.put(index, c),
                None => {
                    failure.get_or_insert(format!("node {id}: entry {index} unreadable at start"));
                }
            }
        }
        if let Some(f) = failure {
            return Err(self.fail(f));
        }
        let mut cfg = ReplicaConfig::new(id);
        cfg.election_ticks = 10;
        let pinned = self.rng.random_range(10..20);
        cfg.election_ticks = pinned;
        cfg.election_ticks_max = Some(pinned + 1);
        cfg.inflight_max = 64;
        cfg.append_bytes_max = 64 * 1024;
        cfg.rebooted = self.nodes[i].rebooted;
        let mut replica = Replica::new(&cfg, store, commit).map_err(|e| self.fail(format!("node {id}: start: {e}")))?;
        replica.set_snapshot_base(base);
        replica.set_state_records(state_records);
        let n = &mut self.nodes[i];
        n.engine = engine;
        n.replica = Some(replica);
        n.up = true;
        n.log.set_writable(false);
        n.held.clear();
        n.inbox.clear();
        n.sync = None;
        n.last_digest = None;
        n.checked_to = 0;
        self.trace(id ^ 0x5757);
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        let power_loss = self.opts.power_loss && self.rng.random_bool(0.5);
        // Async writes are promised to survive process crashes and one
        // machine losing power while the others run: a crash that overlaps
        // a power loss elsewhere (that machine still down, or back but not
        // yet in step with a leader) is outside the promise.
        let rebooting = |n: &Node| n.rebooted && (!n.up || n.replica.as_ref().is_some_and(|r| r.abstaining()));
        let others = self.nodes.iter().enumerate().filter(|(k, n)| *k != i && !n.retired);
        let overlaps = others.map(|(_, n)| n).any(|n| rebooting(n) || (power_loss && !n.up));
        self.ledger.double_power_loss |= overlaps;
        if power_loss {
            self.ledger.power_losses.push((self.now, self.nodes[i].id));
        }
        let keep = self.rng.random_range(0..4);
        let down_for = self.rng.random_range(20..800);
        let catalog_written = self.rng.random_bool(0.5);
        let n = &mut self.nodes[i];
        n.disk.crash(&mut n.log.raw, catalog_written);
        // Abstention outlives a process crash (server.rs keeps a marker file
        // in the shard's directory until the replica votes again).
        let still_abstaining = n.rebooted && n.replica.as_ref().is_some_and(Replica::abstaining);
        n.up = false;
        n.replica = None;
        n.log.raw.crash(power_loss, keep);
        n.rebooted = power_loss || still_abstaining;
        n.restart_at = self.now + down_for;
        for h in std::mem::take(&mut n.held) {
            fail_reply(&mut self.ledger, &h.reply);
            self.clients[h.client].busy = None;
        }
        for (c, op, _) in std::mem::take(&mut n.inbox) {
            fail_op(&mut self.ledger, &op);
            self.clients[c].busy = None;
        }
        self.report.crashes += 1;
        self.trace(0xc4a5 ^ i as u64);
    }

    fn complete_sync(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some((at, target)) = n.sync {
            if self.now >= at {
                n.log.raw.sync_done(target);
                n.sync = None;
            }
        }
    }

    /// One loop turn of node `i`: requests, proposal, Ready handling,
    /// the turn's write, fdatasync, releases.
    fn turn(&mut self, i: usize) -> Result<(), SimFailure> {
        self.execute_requests(i);
        let now = self.now;
        let catalog_done_at = now + self.rng.random_range(1..20);
        let n = &mut self.nodes[i];
        let Some(replica) = n.replica.as_mut() else { return Ok(()) };
        n.disk.collect(&mut n.log, replica, now);
        n.disk.housekeep(&mut n.log, &mut n.engine, replica, now);
        if n.log.has_open() && !replica.propose(&mut n.log) {
            // Raft refused the turn's entry: its effects are gone; replay.
            // A release or catalog computed from them is void.
            fail_all(&mut n.held, &mut self.ledger, &mut self.clients);
            n.disk.drop_pending();
            let mut applier = SimApplier { engine: &mut n.engine, disk: &n.disk };
            if let Err(e) = replica.rebuild(&mut n.log, &mut applier) {
                return Err(SimFailure { seed: self.seed, at_ms: now, what: format!("node {}: rebuild: {e}", n.id) });
            }
        }
        let applied_end = replica.store().index.end_pos(replica.applied()).min(n.log.raw.end());
        n.disk.capture(&n.engine, replica.applied(), applied_end);
        let oldest_end = n.log.raw.first_pos() + log::SEGMENT_BYTES;
        if let Err(e) = crate::consensus::release::keep_state_records(replica, &mut n.log, oldest_end) {
            return Err(SimFailure { seed: self.seed, at_ms: now, what: format!("node {}: {e}", n.id) });
        }
        self.propose_change(i);
        let n = &mut self.nodes[i];
        let Some(replica) = n.replica.as_mut() else { return Ok(()) };
        let mut out = Outbox::default();
        let mut applier = SimApplier { engine: &mut n.engine, disk: &n.disk };
        if let Err(e) = replica.pump(&mut n.log, &mut applier, &mut out) {
            return Err(SimFailure { seed: self.seed, at_ms: now, what: format!("node {}: {e}", n.id) });
        }
        n.log.raw.submit(now);
        if n.sync.is_none() && n.log.raw.sync_due(now, FLUSH_INTERVAL_MS) {
            let target = n.log.raw.start_sync();
            let delay = self.rng.random_range(1..6);
            n.sync = Some((now + delay, target));
        }
        n.disk.submit(n.log.raw.written_end(), catalog_done_at);
        let mut applier = SimApplier { engine: &mut n.engine, disk: &n.disk };
        // What the write made safe (followers' acks).
        if let Err(e) = replica.pump(&mut n.log, &mut applier, &mut out) {
            return Err(SimFailure { seed: self.seed, at_ms: now, what: format!("node {}: {e}", n.id) });
        }
        if !n.up {
            return Ok(());
        }
        if replica.take_snapshot_wanted() {
            let offered = n.disk.offer_snapshot(replica);
            if std::env::var("CMQ_SIM_DEBUG").is_ok() {
                eprintln!("{now} ms: node {} offers a snapshot: {offered:?}", n.id);
            }
            self.trace(offered.map_or(0x0ff, |index| index.rotate_left(16)));
        }
        let n = &mut self.nodes[i];
        n.engine.tick_passive(now);
        self.handle_events(i, &out.events);
        let n = &mut self.nodes[i];
        if let Some(r) = n.replica.as_ref() {
            n.disk.set_committed(r.durable_commit_index());
        }
        self.send_out(i, out);
        self.release(i);
        Ok(())
    }

    fn handle_events(&mut self, i: usize, events: &[Event]) {
        for e in events {
            self.trace(match e {
                Event::BecameLeader => 1,
                Event::LostLeadership => 2,
                Event::Truncated { from } => 3 ^ from.rotate_left(8),
                Event::ConfChanged { .. } => 4,
                Event::SnapshotInstalled { index } => 5 ^ index.rotate_left(8),
            });
            match e {
                Event::BecameLeader => self.report.elections += 1,
                Event::LostLeadership => {
                    let n = &mut self.nodes[i];
                    fail_all(&mut n.held, &mut self.ledger, &mut self.clients);
                }
                Event::Truncated { .. } | Event::SnapshotInstalled { .. } => {
                    // Output may depend on replaced entries; a catalog taken from them must not be written.
                    let n = &mut self.nodes[i];
                    fail_all(&mut n.held, &mut self.ledger, &mut self.clients);
                    n.disk.drop_pending();
                    if matches!(e, Event::SnapshotInstalled { .. }) {
                        self.snapshot_installed(i);
                    }
                }
                Event::ConfChanged { voters, .. } => {
                    if std::env::var("CMQ_SIM_DEBUG").is_ok() {
                        eprintln!("{} ms: node {}: voters {voters:?}", self.now, self.nodes[i].id);
                    }
                }
            }
        }
    }

    /// Node `i` installed a snapshot: the catalog plus the entries its
    /// leader kept. That leader released its log below a body once an entry
    /// it applied had deleted the message, and that entry committed (up to
    /// the group's commit index now); the entry that enqueued the message
    /// is gone, so between the snapshot's index and that delete this node
    /// lacks a message the others hold (seeds 237 and 1796451554426). No
    /// client can see it: followers serve no reads (NOT_LEADER), and a
    /// leader serves only once it has applied its whole log, which holds
    /// every committed entry. So its state is compared from there on.
    fn snapshot_installed(&mut self, i: usize) {
        let committed = self.committed.keys().next_back().copied().unwrap_or(0);
        if std::env::var("CMQ_SIM_DEBUG").is_ok() {
            let r = self.nodes[i].replica.as_ref();
            let base = r.and_then(|r| r.snapshot_base()).map(|b| (b.record.index, b.record.catalog_index, b.pos));
            eprintln!("{} ms: node {} installed snapshot {base:?}; committed {committed}", self.now, self.nodes[i].id);
        }
        let n = &mut self.nodes[i];
        n.complete_from = n.complete_from.max(committed);
        self.report.snapshots += 1;
    }

    fn send_out(&mut self, i: usize, out: Outbox) {
        let from = self.nodes[i].id;
        for m in out.messages {
            let to = m.to;
            let sent = self.send(from, to, Wire::Raft(Replica::encode(&m)));
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                // As the shard does: finished once on the link (a lost one is re-sent).
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.report_snapshot(to, sent);
                }
            }
        }
        for (to, term, index) in out.written_acks {
            self.send(from, to, Wire::WrittenAck { term, index });
        }
        for to in out.abstaining_to {
            self.send(from, to, Wire::Abstaining);
        }
    }

    /// Puts a message on the network; false if its link is cut (a drop
    /// on the way is not known to the sender).
    fn send(&mut self, from: u64, to: u64, w: Wire) -> bool {
        if self.cut.contains(&(from, to)) {
            return false;
        }
        if self.rng.random_range(0..1000) < self.opts.drop_per_mille {
            return true;
        }
        let delay = self.rng.random_range(1..8);
        self.net_seq += 1;
        self.net.insert((self.now + delay, self.net_seq), (from, to, w));
        true
    }

    fn deliver(&mut self) -> Result<(), SimFailure> {
        while let Some((&(at, seq), _)) = self.net.iter().next() {
            if at > self.now {
                break;
            }
            let Some((from, to, w)) = self.net.remove(&(at, seq)) else { break };
            let Some(n) = self.nodes.iter_mut().find(|n| n.id == to) else { continue };
            let Some(r) = n.replica.as_mut().filter(|_| n.up) else { continue };
            match w {
                Wire::Raft(bytes) => {
                    let Some(m) = Replica::decode(&bytes::Bytes::from(bytes)) else {
                        return Err(SimFailure {
                            seed: self.seed,
                            at_ms: self.now,
                            what: "undecodable message".into(),
                        });
                    };
                    if let Err(e) = r.step(m) {
                        return Err(SimFailure {
                            seed: self.seed,
                            at_ms: self.now,
                            what: format!("node {to}: step: {e}"),
                        });
                    }
                }
                Wire::WrittenAck { term, index } => r.on_written_ack(from, term, index),
                Wire::Abstaining => r.on_peer_abstaining(from),
            }
        }
        Ok(())
    }

    // ---- faults -------------------------------------------------------------

    fn inject_faults(&mut self) -> Result<(), SimFailure> {
        if self.rng.random_range(0..1000) < self.opts.crash_per_mille {
            let i = self.rng.random_range(0..self.nodes.len());
            if self.nodes[i].up {
                self.crash(i);
            }
        }
        if self.cut.is_empty() && self.rng.random_range(0..1000) < self.opts.partition_per_mille {
            let victim = self.random_member();
            let one_way = self.rng.random_bool(0.3);
            let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
            for other in ids {
                if other != victim {
                    self.cut.insert((victim, other));
                    if !one_way {
                        self.cut.insert((other, victim));
                    }
                }
            }
            self.heal_at = self.now + self.rng.random_range(100..2000);
            self.trace(0xa11 ^ victim);
        }
        if !self.cut.is_empty() && self.now >= self.heal_at {
            self.cut.clear();
        }
        Ok(())
    }

    // ---- clients ------------------------------------------------------------

    fn clients_act(&mut self) {
        if self.quiet {
            return;
        }
        for c in 0..self.clients.len() {
            if self.clients[c].busy.is_some() || self.now < self.clients[c].ready_at {
                continue;
            }
            let op = self.pick_op(c);
            self.issue(c, op);
        }
    }

    fn pick_op(&mut self, c: usize) -> Op {
        let roll = self.rng.random_range(0..10);
        let q = self.rng.random_range(0..QUEUES.len());
        let cl = &mut self.clients[c];
        if roll < 3 {
            if let Some((q, id, h)) = cl.to_delete.pop_front() {
                return Op::Delete(q, id, h);
            }
        }
        if roll < 6 {
            cl.next_body += 1;
            return Op::Send(q, Bytes::from(format!("c{c}-m{}", cl.next_body)));
        }
        Op::Receive(q)
    }

    fn issue(&mut self, c: usize, op: Op) {
        let target = self.clients[c].node;
        let Some(i) = self.nodes.iter().position(|n| n.id == target) else { return };
        let leading =
            self.nodes[i].up && self.nodes[i].replica.as_ref().is_some_and(|r| r.is_leader() && !r.transferring());
        if !leading {
            // NOT_LEADER (or no answer): follow the hint, else try another node.
            let hint = self.nodes[i].replica.as_ref().filter(|_| self.nodes[i].up).map_or(0, |r| r.leader_id());
            let next = if hint != 0 && hint != target { hint } else { self.random_member() };
            let cl = &mut self.clients[c];
            cl.node = next;
            cl.ready_at = self.now + 5;
            if let Op::Delete(q, id, h) = op {
                cl.to_delete.push_front((q, id, h));
            }
            return;
        }
        self.clients[c].busy = Some((op.clone(), self.now));
        self.nodes[i].inbox.push((c, op, self.now));
    }

    fn execute_requests(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        for (c, op, issued) in std::mem::take(&mut n.inbox) {
            let leading = n.replica.as_ref().is_some_and(|r| r.is_leader());
            let reply = if !leading {
                fail_op(&mut self.ledger, &op);
                Reply::Failed
            } else {
                execute(&mut n.engine, &mut n.log, now, &op, issued)
            };
            let op = op.clone();
            if matches!(reply, Reply::Failed) {
                self.clients[c].busy = None;
                self.clients[c].ready_at = now + 3;
                continue;
            }
            // The reply may reflect anything logged so far: all of it
            // written on a majority, and committed if the queue is sync.
            let end = n.log.entries_end();
            let durable = if QUEUES[op.queue()].1 == FlushPolicy::Sync { end } else { 0 };
            n.held.push(Held { written: end, durable, client: c, reply });
        }
    }

    /// Hands out the replies the log's progress made safe.
    fn release(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(r) = n.replica.as_ref() else { return };
        let (written, committed) = r.release_positions(&n.log.raw);
        let mut k = 0;
        while k < n.held.len() {
            if n.held[k].durable > committed || n.held[k].written > written {
                k += 1;
                continue;
            }
            let h = n.held.remove(k);
            let now = self.now;
            self.clients[h.client].busy = None;
            self.clients[h.client].ready_at = now + 1;
            match h.reply {
                Reply::Sent { queue, body, msg_id } => {
                    self.ledger.unknown.remove(&body);
                    if QUEUES[queue].1 == FlushPolicy::Async {
                        self.ledger.acked_async.insert(body.clone(), now);
                    }
                    self.ledger.acked.insert(body, (queue, msg_id));
                    self.report.acked_sends += 1;
                }
                Reply::Received { issued_ms, msgs } => {
                    for (q, id, handle, body) in msgs {
                        let lossy = QUEUES[q].1 == FlushPolicy::Async && self.ledger.majority_lost_power();
                        if let Some(at) = self.ledger.deleted.get(&(q, id)).filter(|_| !lossy) {
                            if *at < issued_ms {
                                let what = format!(
                                    "message {id} (queue {}) received at {now} ms (asked at {issued_ms} ms) after its delete was acknowledged at {at} ms; power losses {:?}",
                                    QUEUES[q].0, self.ledger.power_losses
                                );
                                self.report.trace = u64::MAX;
                                self.ledger.seen.insert(u64::MAX, Bytes::from(what));
                                continue;
                            }
                        }
                        self.ledger.seen.insert(id, body);
                        self.clients[h.client].to_delete.push_back((q, id, handle));
                    }
                }
                Reply::Deleted { queue, msg_id } => {
                    self.ledger.deleted.entry((queue, msg_id)).or_insert(now);
                    self.report.acked_deletes += 1;
                }
                Reply::Failed => {}
            }
        }
    }

    fn create_queue(&mut self) -> Result<(), SimFailure> {
        for (k, (name, flush)) in QUEUES.iter().enumerate() {
            self.create_one(name, *flush, k as u64 + 1)?;
        }
        Ok(())
    }

    fn create_one(&mut self, name: &str, flush: FlushPolicy, seq: u64) -> Result<(), SimFailure> {
        for _ in 0..5_000 {
            self.step(false)?;
            let Some(i) = self.nodes.iter().position(|n| n.replica.as_ref().is_some_and(|r| r.is_leader())) else {
                continue;
            };
            let now = self.now;
            let update = QueueAttributesUpdate {
                visibility_timeout: Some(VISIBILITY_S),
                flush_policy: Some(flush),
                ..Default::default()
            };
            let n = &mut self.nodes[i];
            match n.engine.create_queue(&mut n.log, now, name, &update, seq) {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::QUEUE_ALREADY_EXISTS => return Ok(()),
                Err(e) => return Err(self.fail(format!("create queue: {e}"))),
            }
            // Wait until it commits.
            for _ in 0..2_000 {
                self.step(false)?;
                if self.nodes.iter().all(|n| n.engine.queue(name).is_some()) {
                    return Ok(());
                }
            }
        }
        Err(self.fail("no leader created the queue"))
    }

    /// Faults stop: every node restarts, the network heals, and the group
    /// must elect a leader and bring every replica to the same state.
    fn settle(&mut self) -> Result<(), SimFailure> {
        self.cut.clear();
        let drop = std::mem::replace(&mut self.opts.drop_per_mille, 0);
        for n in self.nodes.iter_mut().filter(|n| !n.retired) {
            n.restart_at = n.restart_at.min(self.now);
        }
        self.quiet = true;
        for _ in 0..20_000 {
            self.step(false)?;
            if self.converged() && self.clients.iter().all(|c| c.busy.is_none()) {
                break;
            }
        }
        self.opts.drop_per_mille = drop;
        if std::env::var("CMQ_SIM_DEBUG").is_ok() {
            let busy: Vec<_> = self.clients.iter().map(|c| (c.node, c.busy.clone())).collect();
            let held: Vec<_> = self
                .nodes
                .iter()
                .map(|n| {
                    let r = n.replica.as_ref();
                    (
                        n.id,
                        n.held.len(),
                        r.map(|r| (r.is_leader(), r.abstaining(), r.term(), r.follower_progress(), r.debug_state())),
                        (n.log.raw.written_end(), n.log.raw.durable_end(), n.sync),
                    )
                })
                .collect();
            eprintln!("settled at {} ms: clients {busy:?}; held {held:?}", self.now);
        }
        if !self.converged() {
            let state: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    n.replica.as_ref().map_or("down".into(), |r| {
                        format!(
                            "node {}: leader {} commit {} applied {} last {}",
                            n.id,
                            r.is_leader(),
                            r.commit_index(),
                            r.applied(),
                            r.last_index()
                        )
                    })
                })
                .collect();
            return Err(self.fail(format!("replicas did not converge after healing: {state:?}")));
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        let members = self.nodes.iter().filter(|n| !n.retired).count();
        let reps: Vec<&Replica> = self.nodes.iter().filter_map(|n| n.replica.as_ref().filter(|_| n.up)).collect();
        if reps.len() != members || !reps.iter().any(|r| r.is_leader()) {
            return false;
        }
        let a = reps[0].applied();
        reps.iter().all(|r| r.applied() == a && r.commit_index() == a)
    }

    /// Receives and deletes everything, then checks the ledger.
    fn drain(&mut self) -> Result<(), SimFailure> {
        if let Some(what) = self.ledger.seen.get(&u64::MAX) {
            return Err(self.fail(String::from_utf8_lossy(what).to_string()));
        }
        let Some(i) = self.nodes.iter().position(|n| n.replica.as_ref().is_some_and(|r| r.is_leader())) else {
            return Err(self.fail("no leader to drain"));
        };
        // Leases of earlier receives end; then take everything once.
        self.now += u64::from(VISIBILITY_S) * 1000 + 1;
        let now = self.now;
        let mut drained: BTreeMap<MsgKey, Bytes> = BTreeMap::new();
        for (q, (name, _)) in QUEUES.iter().enumerate() {
            loop {
                let n = &mut self.nodes[i];
                n.engine.tick(&mut n.log, now);
                let ds = match n.engine.receive(&mut n.log, now, name, 16, None) {
                    Ok(ReceiveOutcome::Delivered(ds)) => ds,
                    Ok(_) => break,
                    Err(e) => return Err(SimFailure { seed: self.seed, at_ms: now, what: format!("drain: {e}") }),
                };
                for d in ds {
                    let body = Bytes::copy_from_slice(n.log.read_body(d.body_pos, d.body_len));
                    if drained.insert((q, d.head.msg_id), body).is_some() {
                        let what = format!("message {} delivered twice while draining", d.head.msg_id);
                        return Err(SimFailure { seed: self.seed, at_ms: now, what });
                    }
                }
            }
        }
        for (body, key) in &self.ledger.acked {
            let (q, id) = key;
            // An async acknowledgement (sends and deletes alike) promises
            // the entry is written on a majority: only power losses of two
            // nodes before their flush may take it back.
            let async_lossy = self.ledger.acked_async.contains_key(body) && self.ledger.majority_lost_power();
            if self.ledger.deleted.contains_key(key) {
                if let Some(got) = drained.get(key).filter(|_| !async_lossy) {
                    return Err(self.fail(format!(
                        "message {id} ({body:?}, async: {:?}) came back as {got:?} after its delete was acknowledged at {} ms; power losses {:?}",
                        self.ledger.acked_async.get(body),
                        self.ledger.deleted[key],
                        self.ledger.power_losses
                    )));
                }
            } else if drained.get(key) != Some(body) && !self.ledger.maybe_deleted.contains(key) && !async_lossy {
                let where_: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let q = n.engine.queue(QUEUES[*q].0);
                        let e = q.and_then(|q| q.find_msg_id(*id).and_then(|s| q.entry(s).map(|e| (s, *e))));
                        format!("node {}: {e:?}", n.id)
                    })
                    .collect();
                return Err(self.fail(format!(
                    "acknowledged message {id} ({body:?}) lost; held as {where_:?}; drained {:?}",
                    drained.get(key)
                )));
            }
        }
        let known: BTreeSet<&Bytes> = self.ledger.acked.keys().chain(self.ledger.unknown.iter()).collect();
        for ((_, id), body) in &drained {
            if !known.contains(body) {
                return Err(self.fail(format!("message {id} ({body:?}) was never sent")));
            }
        }
        self.report.drained = drained.len();
        Ok(())
    }

    // ---- invariants ---------------------------------------------------------

    fn check(&mut self) -> Result<(), SimFailure> {
        for i in 0..self.nodes.len() {
            let Some(r) = self.nodes[i].replica.as_ref().filter(|_| self.nodes[i].up) else { continue };
            let id = self.nodes[i].id;
            let commit = r.commit_index().min(r.last_index());
            let ix = &r.store().index;
            // Entries newly committed here must match what any replica
            // committed at the same index (checked once per index per node).
            let from = self.nodes[i].checked_to.min(commit) + 1;
            for index in from.max(ix.first_index())..=commit {
                let Some(term) = ix.term(index) else {
                    return Err(self.fail(format!("node {id}: committed entry {index} missing from its log")));
                };
                match self.committed.get(&index) {
                    Some(t) if *t != term => {
                        return Err(self.fail(format!(
                            "node {id}: committed entry {index} has term {term}, another replica committed term {t}"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(index, term);
                    }
                }
            }
            let applied = r.applied();
            self.nodes[i].checked_to = commit;
            let stale =
                self.nodes[i].last_digest.is_none_or(|(a, _, at)| a != applied && self.now >= at + DIGEST_EVERY_MS);
            if stale {
                // Every live message's body is still in this replica's log
                // (nothing released under it).
                if let Some(what) = unreadable_body(&self.nodes[i]) {
                    return Err(self.fail(format!("node {id}: {what}")));
                }
                // A replica that installed a snapshot whose catalog is ahead
                // of its applied entries, or that has not yet applied the
                // entries its snapshot's release relied on, holds no state
                // another has.
                let d = self.nodes[i].engine.digest();
                let pending = self.nodes[i].engine.catalog_pending() || applied < self.nodes[i].complete_from;
                self.nodes[i].last_digest = (!pending).then_some((applied, d, self.now));
            }
        }
        // Replicas that applied the same entries hold the same state.
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (Some((ia, da, _)), Some((ib, db, _))) = (self.nodes[a].last_digest, self.nodes[b].last_digest)
                else {
                    continue;
                };
                let (Some(ra), Some(rb)) = (self.nodes[a].replica.as_ref(), self.nodes[b].replica.as_ref()) else {
                    continue;
                };
                if ia == ib && ia > 0 && ra.store().index.term(ia) == rb.store().index.term(ib) && da != db {
                    let (ea, eb) = (&self.nodes[a].engine, &self.nodes[b].engine);
                    return Err(self.fail(format!(
                        "nodes {} and {} applied the same {ia} entries but differ (logs from entries {} and {}, snapshots at {:?} and {:?}): {}",
                        self.nodes[a].id,
                        self.nodes[b].id,
                        ra.store().index.first_index(),
                        rb.store().index.first_index(),
                        ra.snapshot_base().map(|b| b.record.index),
                        rb.snapshot_base().map(|b| b.record.index),
                        state_difference(ea, eb)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Runs one client request on the leader's engine.
fn execute(engine: &mut ShardEngine, log: &mut EntryLog<SimLog>, now: u64, op: &Op, issued: u64) -> Reply {
    let queue = op.queue();
    let name = QUEUES[queue].0;
    match op {
        // Every body is unique: it is its own idempotency key.
        Op::Send(_, body) => {
            match engine.send_keyed(log, now, name, 0, std::slice::from_ref(body), std::slice::from_ref(body)) {
                Ok(ids) => Reply::Sent { queue, body: body.clone(), msg_id: ids[0] },
                Err(_) => Reply::Failed,
            }
        }
        Op::Receive(_) => match engine.receive(log, now, name, 4, None) {
            Ok(ReceiveOutcome::Delivered(ds)) => Reply::Received {
                issued_ms: issued,
                msgs: ds
                    .iter()
                    .map(|d| {
                        let body = Bytes::copy_from_slice(log.read_body(d.body_pos, d.body_len));
                        (queue, d.head.msg_id, d.head.receipt_handle, body)
                    })
                    .collect(),
            },
            Ok(_) => Reply::Received { issued_ms: issued, msgs: Vec::new() },
            Err(_) => Reply::Failed,
        },
        Op::Delete(_, id, h) => match engine.delete(log, now, name, &[*h]) {
            Ok(rs) if rs.first().is_some_and(|r| r.is_ok()) => Reply::Deleted { queue, msg_id: *id },
            _ => Reply::Failed,
        },
    }
}

trait ReadBody {
    fn read_body(&self, pos: u64, len: u32) -> &[u8];
}

impl ReadBody for EntryLog<SimLog> {
    fn read_body(&self, pos: u64, len: u32) -> &[u8] {
        self.raw.read(pos, len).unwrap_or(b"<unreadable>")
    }
}

fn read_cached(store: &RaftStore, index: u64, raw: &SimLog) -> Option<CachedEntry> {
    crate::consensus::readback::read_entry(&store.index, index, raw).ok()
}

/// Where two replicas' states differ (the first few messages each holds
/// differently), to diagnose a divergence.
fn state_difference(a: &ShardEngine, b: &ShardEngine) -> String {
    let lines = |e: &ShardEngine| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (name, _) in QUEUES {
            let Some(q) = e.queue(name) else { continue };
            out.insert(format!("{name}: next_seq {}", q.next_seq()));
            for (seq, m) in q.iter() {
                let state = (m.msg_id, m.enqueue_ms, m.visible_at_ms, m.dequeue_count, m.state, m.body_len);
                out.insert(format!("{name} seq {seq}: (id, enqueued, visible, dequeues, state, len) {state:?}"));
            }
        }
        for (i, (key, seen)) in e.dedup_entries().enumerate() {
            out.insert(format!(
                "dedup key #{i}: (uid, digest, id, time) {:?}",
                (key.uid, key.key(), seen.msg_id, seen.time_ms)
            ));
        }
        out
    };
    let (la, lb) = (lines(a), lines(b));
    let only_a: Vec<&String> = la.difference(&lb).take(6).collect();
    let only_b: Vec<&String> = lb.difference(&la).take(6).collect();
    format!("only the first: {only_a:?}; only the second: {only_b:?}")
}

/// A live message of `n`'s engine whose body its log no longer holds.
fn unreadable_body(n: &Node) -> Option<String> {
    for (name, _) in QUEUES {
        let Some(q) = n.engine.queue(name) else { continue };
        for (seq, e) in q.iter() {
            if let Err(err) = n.log.raw.read(e.body_pos, e.body_len) {
                return Some(format!("message {} (queue {name}, seq {seq}) unreadable: {}", e.msg_id, err.0));
            }
        }
    }
    None
}

fn fail_op(ledger: &mut Ledger, op: &Op) {
    match op {
        Op::Send(_, body) if !ledger.acked.contains_key(body) => {
            ledger.unknown.insert(body.clone());
        }
        Op::Delete(q, id, _) => {
            ledger.maybe_deleted.insert((*q, *id));
        }
        _ => {}
    }
}

fn fail_reply(ledger: &mut Ledger, reply: &Reply) {
    match reply {
        Reply::Sent { body, .. } if !ledger.acked.contains_key(body) => {
            ledger.unknown.insert(body.clone());
        }
        Reply::Deleted { queue, msg_id } => {
            ledger.maybe_deleted.insert((*queue, *msg_id));
        }
        _ => {}
    }
}

fn fail_all(held: &mut Vec<Held>, ledger: &mut Ledger, clients: &mut [Client]) {
    for h in held.drain(..) {
        fail_reply(ledger, &h.reply);
        clients[h.client].busy = None;
    }
}
