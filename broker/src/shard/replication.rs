//! A shard as one replica of its Raft group (see docs/ARCHITECTURE.md ("Replication")).
//!
//! Everything of group `k` runs on shard `k`'s thread: its `Replica`
//! (raft-rs plus the entry handling), its links to shard `k` of the other
//! nodes, and the engine the group's entries are applied to. The loop
//! turn gains four steps:
//!
//! 1. frames from peers are handed to the replica (after the turn's
//!    readiness events), and the replica ticks on its own clock;
//! 2. requests run only while this replica leads; otherwise `NOT_LEADER`;
//! 3. before the turn's write, the turn's records are proposed as one
//!    entry, a ReadIndex round is started if a read was answered this
//!    turn, and every `Ready` is handled (written, applied, messages out);
//! 4. output is released against the group's progress (written on a
//!    majority, committed, reads confirmed) instead of the local log's.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use cmq_protocol::peer::DataFrame;
use cmq_protocol::ErrorCode;
use mio::event::Event as MioEvent;
use mio::Token;
use raft::eraftpb::MessageType;

use super::mailbox::{Answer, Membership, Query, ShardMsg};
use super::release;
use super::reply::ReplyDep;
use super::storage::ShardApplier;
use super::Shard;
use crate::cluster::transport::{DataKind, PeerLinks, SendError};
use crate::consensus::entry::ENTRY_BYTES_SOFT_MAX;
use crate::consensus::{Event, Outbox, Replica};

/// Tokens of a shard's peer links: far from connection tokens (slab
/// indices) and below the listener, waker and storage tokens.
pub const PEER_TOKEN_BASE: usize = usize::MAX - 1024;

/// How far (in log segments) a follower may fall behind before the leader
/// stops keeping the log for it; it then catches up from a snapshot. A
/// follower restarting or briefly cut off catches up from the log; one
/// down for long does not hold the leader's disk space.
pub const FOLLOWER_LAG_SEGMENTS_MAX: u64 = 2;

/// Offers raft-rs a snapshot for a follower that needs one (built from the
/// catalog file; see docs/ARCHITECTURE.md, "Snapshots").
fn offer_snapshot(shard: u16, r: &mut Replication) {
    let made = super::storage::catalog_for_snapshot(&r.dir, &r.replica.store().index)
        .map_err(|e| format!("{e:#}"))
        .and_then(|(file, file_pos)| {
            // Or the snapshot this node installed, when newer (seed 6582).
            let (catalog_index, catalog) = r.replica.snapshot_catalog(file, file_pos);
            r.replica.offer_snapshot(catalog_index, &catalog)
        });
    match made {
        Ok(index) => log::info!("shard {shard}: offering a snapshot at entry {index}"),
        Err(e) => log::warn!("shard {shard}: cannot offer a snapshot yet: {e}"),
    }
}

/// A shard's part of its Raft group.
pub struct Replication {
    pub replica: Replica,
    pub links: PeerLinks,
    pub node_id: u64,
    tick_ms: u64,
    next_tick_ms: u64,
    /// Frames that arrived during the turn's readiness events, handed to
    /// the replica after them (a `Ready` is never handled mid-turn).
    frames: Vec<(u64, DataFrame)>,
    /// A reply that changed nothing went out this turn: start a ReadIndex
    /// round at the end of it.
    read_wanted: bool,
    /// Scatter/gather questions waiting for a ReadIndex round: (round,
    /// asking shard, gather, question).
    parked: Vec<(u64, u16, u64, Query)>,
    /// Membership changes asked this turn, carried out once the turn's own
    /// entry is proposed (a configuration change is an entry of its own;
    /// it must come after the turn's, never in the middle of it).
    membership: Vec<(u16, u64, Membership)>,
    /// Where the shard's catalog lives (the applier reloads it).
    dir: PathBuf,
    /// While the replica abstains after its machine restarted: the file
    /// that says so across a process restart (removed once it votes).
    pub abstain_marker: Option<PathBuf>,
}

/// The file in a shard's directory whose presence makes its replica
/// abstain at start-up, as after a machine restart (see `server.rs`).
pub const ABSTAIN_MARKER: &str = "ABSTAINING";

impl Replication {
    pub fn new(replica: Replica, links: PeerLinks, node_id: u64, tick_ms: u64, dir: PathBuf) -> Replication {
        Replication {
            replica,
            links,
            node_id,
            tick_ms,
            next_tick_ms: 0,
            frames: Vec::new(),
            read_wanted: false,
            parked: Vec::new(),
            membership: Vec::new(),
            dir,
            abstain_marker: None,
        }
    }

    /// The ReadIndex round a read answered now waits for.
    fn read_round(&mut self) -> u64 {
        self.read_wanted = true;
        self.replica.read_asked() + 1
    }
}

impl Shard {
    pub(super) fn owns_peer_token(&self, t: Token) -> bool {
        self.repl.as_ref().is_some_and(|r| r.links.owns(t))
    }

    /// A readiness event on a peer link: frames wait in `frames`.
    pub(super) fn peer_event(&mut self, ev: &MioEvent, now: u64) {
        let Some(r) = self.repl.as_deref_mut() else { return };
        let frames = &mut r.frames;
        r.links.handle_event(self.poll.registry(), ev, now, &mut |from, f| frames.push((from, f)));
    }

    /// Step 1: peers' frames, link timers, Raft's clock.
    pub(super) fn repl_receive(&mut self, now: u64) {
        let Some(r) = self.repl.as_deref_mut() else { return };
        // Raft must never be handed an entry whose segment was released.
        r.replica.forget_entries_below(self.log.first_pos());
        let frames = &mut r.frames;
        r.links.tick(self.poll.registry(), now, &mut |from, f| frames.push((from, f)));
        for (from, frame) in std::mem::take(&mut r.frames) {
            match frame {
                DataFrame::Raft(bytes) => match Replica::decode(&bytes) {
                    Some(m) if m.from == from => {
                        if let Err(e) = r.replica.step(m) {
                            log::error!("shard {}: raft refused a message from node {from}: {e}", self.id);
                        }
                    }
                    _ => {
                        log::warn!("shard {}: undecodable raft message from node {from}; dropping the link", self.id);
                        r.links.disconnect(self.poll.registry(), from, now);
                    }
                },
                DataFrame::WrittenAck { term, index } => r.replica.on_written_ack(from, term, index),
                DataFrame::Forward(bytes) => self.forwarded.push((from, bytes)),
                DataFrame::SnapshotChunk(_) => {}
                DataFrame::Abstaining => r.replica.on_peer_abstaining(from),
            }
        }
        while now >= r.next_tick_ms {
            if r.next_tick_ms == 0 {
                r.next_tick_ms = now;
            }
            r.replica.tick();
            r.next_tick_ms += r.tick_ms;
        }
    }

    /// The earliest time the replication side has work.
    pub(super) fn repl_deadline(&self) -> Option<u64> {
        let r = self.repl.as_deref()?;
        Some(r.links.next_deadline_ms().unwrap_or(u64::MAX).min(r.next_tick_ms))
    }

    /// Whether requests may run here: alone always; in a group only on a
    /// leader that has applied its whole log and is not handing leadership
    /// over (raft-rs drops proposals meanwhile).
    pub(super) fn may_serve(&self) -> bool {
        self.repl.as_deref().is_none_or(|r| r.replica.is_leader() && !r.replica.transferring())
    }

    /// In a group: this turn's entry reached the size a replica sends at
    /// once (`ENTRY_BYTES_SOFT_MAX`); further requests wait a turn.
    pub(super) fn entry_full(&self) -> bool {
        self.repl.is_some() && self.log.entries_ref().open_bytes() >= ENTRY_BYTES_SOFT_MAX
    }

    /// The `NOT_LEADER` answer: who leads, if known.
    pub(super) fn not_leader_message(&self) -> String {
        let leader = self.repl.as_deref().map_or(0, |r| r.replica.leader_id());
        let addr = self.shared.node_client_addr(leader);
        cmq_protocol::not_leader_message(self.id, addr.as_deref().map(|a| (leader, a)))
    }

    /// The read need of a reply that changed nothing (0 alone).
    pub(super) fn read_need(&mut self) -> u64 {
        self.repl.as_deref_mut().map_or(0, Replication::read_round)
    }

    /// Step 3, before the turn's write: propose the turn's entry, start a
    /// ReadIndex round if one is wanted, handle what Raft has ready.
    pub(super) fn repl_before_submit(&mut self) {
        let Some(r) = self.repl.as_deref_mut() else { return };
        if !r.replica.propose(self.log.entries()) {
            // This replica stopped leading within the turn: the entry was
            // made void, and the engine holds its effects: start over.
            log::info!("shard {}: lost leadership with a turn's records unproposed; rebuilding", self.id);
            self.repl_rebuild();
        }
        let Some(r) = self.repl.as_deref_mut() else { return };
        if std::mem::take(&mut r.read_wanted) || !r.parked.is_empty() {
            r.replica.read_index();
        }
        // No entry is half built now: a catalog due may be taken, and
        // membership changes proposed.
        let applied = r.replica.applied();
        let applied_end = r.replica.store().index.end_pos(applied);
        self.log.capture_catalog(&self.engine, applied, applied_end);
        let oldest_end = self.log.oldest_segment_end();
        if let Err(e) = crate::consensus::release::keep_state_records(&mut r.replica, self.log.entries(), oldest_end) {
            // Retried at the next turn; meanwhile the old records stay.
            log::warn!("shard {}: cannot write the hard state and configuration again: {e}", self.id);
        }
        for (from, gather, m) in std::mem::take(&mut r.membership) {
            let answer = Answer::Done(self.membership(m));
            self.deliver_answer(from, gather, answer);
        }
        self.repl_pump();
    }

    /// Handles every `Ready` and acts on what it says.
    pub(super) fn repl_pump(&mut self) {
        let Some(r) = self.repl.as_deref_mut() else { return };
        r.replica.forget_entries_below(self.log.first_pos());
        let mut out = Outbox::default();
        let mut applier = ShardApplier { engine: &mut self.engine, dir: &r.dir };
        if let Err(e) = r.replica.pump(self.log.entries(), &mut applier, &mut out) {
            // The log cannot take what Raft asks of it, or an entry does not
            // apply: serving on would diverge from the group. A restart
            // recovers from the log.
            log::error!("shard {}: replication failed: {e}; cmqd must restart", self.id);
            std::process::abort();
        }
        if !r.replica.abstaining() {
            if let Some(marker) = r.abstain_marker.take() {
                // Left in place if this fails: the next start abstains once
                // more, which is safe.
                if let Err(e) = std::fs::remove_file(&marker) {
                    log::warn!("shard {}: cannot remove {}: {e}", self.id, marker.display());
                }
            }
        }
        let now = self.clock.now_ms();
        for m in &out.messages {
            let bytes = Replica::encode(m);
            let sent = r.links.send(m.to, DataKind::Raft, &[&bytes]);
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // The snapshot is the message itself: once it is on its way
                // raft-rs may probe again (a lost one is simply re-sent).
                r.replica.report_snapshot(m.to, sent.is_ok());
            } else if let Err(SendError::Full | SendError::TooLarge) = sent {
                r.replica.report_unreachable(m.to);
            }
        }
        if r.replica.take_snapshot_wanted() {
            offer_snapshot(self.id, r);
        }
        for to in out.abstaining_to {
            let _ = r.links.send_abstaining(to);
        }
        for (to, term, index) in out.written_acks {
            let _ = r.links.send_written_ack(to, term, index);
        }
        r.links.flush(self.poll.registry(), now);
        // Releases and catalogs count only entries a restart would apply again.
        self.log.set_committed_index(r.replica.durable_commit_index());
        for e in out.events {
            self.repl_event(e);
        }
        self.publish_leader_if_changed();
        self.answer_parked();
    }

    fn repl_event(&mut self, e: Event) {
        let Some(r) = self.repl.as_deref() else { return };
        log::info!("shard {} (node {}): {e:?} in term {}", self.id, r.node_id, r.replica.term());
        match e {
            Event::BecameLeader => {}
            Event::LostLeadership => {
                // Output produced as leader may depend on entries the new
                // leader replaces, or on reads no longer confirmed: its
                // outcome is unknown. Long polls end: the new leader serves.
                self.fail_unreleased();
                self.end_waits_not_leader();
            }
            Event::Truncated { .. } => {
                self.fail_unreleased();
                self.log.drop_pending_catalog();
            }
            Event::ConfChanged { voters, added, .. } => self.conf_changed(&voters, added),
            Event::SnapshotInstalled { .. } => {
                self.fail_unreleased();
                self.log.drop_pending_catalog();
            }
        }
        self.publish_leader();
    }

    /// Tells the other shards (and so the handshakes they answer) who
    /// leads this shard.
    pub(super) fn publish_leader(&self) {
        let Some(r) = self.repl.as_deref() else { return };
        let slot = &self.shared.leaders[usize::from(self.id)];
        slot.0.store(r.replica.leader_id(), Ordering::Relaxed);
        slot.1.store(r.replica.term(), Ordering::Relaxed);
        for node in r.replica.voters() {
            if let Some(addr) = r.links.peer_client_addr(node) {
                self.shared.learn_node_addr(node, addr);
            }
        }
    }

    /// Step 3 again, after the write: what the write made safe (a
    /// follower's written-acks) goes out.
    pub(super) fn repl_after_submit(&mut self) {
        if self.repl.is_some() {
            self.repl_pump();
        }
    }

    /// Step 4: the group's progress, as output compares it with its needs.
    pub(super) fn group_progress(&self) -> Option<release::Progress> {
        let r = self.repl.as_deref()?;
        let (written, committed) = r.replica.release_positions(&self.log.entries_ref().raw);
        Some(release::Progress {
            written_end: written,
            durable_end: committed,
            read_confirmed: r.replica.read_confirmed(),
        })
    }

    /// After Raft refused the turn's entry: the engine is rebuilt from the
    /// committed entries; everything produced from it since is void.
    fn repl_rebuild(&mut self) {
        self.fail_unreleased();
        // A release or catalog computed from the void entry's effects is void.
        self.log.drop_pending_catalog();
        self.end_waits_not_leader();
        let Some(r) = self.repl.as_deref_mut() else { return };
        let mut applier = ShardApplier { engine: &mut self.engine, dir: &r.dir };
        if let Err(e) = r.replica.rebuild(self.log.entries(), &mut applier) {
            log::error!("shard {}: cannot rebuild state from the log: {e}; cmqd must restart", self.id);
            std::process::abort();
        }
    }

    /// Ends every long poll with NOT_LEADER (this replica stopped serving them).
    fn end_waits_not_leader(&mut self) {
        let waits = self.engine.take_waiters();
        let msg = self.not_leader_message();
        self.end_waits(waits, ErrorCode::NOT_LEADER, &msg, ReplyDep::Logged(0));
    }

    /// A scatter/gather question: in a group it is answered once a
    /// ReadIndex round confirms this replica's state is current (a follower
    /// too: raft-rs forwards the round to the leader).
    pub(super) fn take_query(&mut self, from: u16, gather: u64, query: Query, now: u64) {
        if let (Query::Membership(m), Some(r)) = (&query, self.repl.as_deref_mut()) {
            r.membership.push((from, gather, m.clone()));
            return;
        }
        let status = matches!(query, Query::ReplicaStatus | Query::Membership(_));
        let Some(r) = self.repl.as_deref_mut().filter(|_| !status) else {
            // Alone, or a status question (what this replica knows now),
            // asked before the turn's entry is built: our own gather may
            // finish here.
            let answer = self.answer_query(query);
            if from == self.id {
                return self.gather_answer(gather, answer, now);
            }
            return self.deliver_answer(from, gather, answer);
        };
        let round = r.read_round();
        r.parked.push((round, from, gather, query));
    }

    fn answer_parked(&mut self) {
        let Some(r) = self.repl.as_deref_mut() else { return };
        let confirmed = r.replica.read_confirmed();
        if r.parked.iter().all(|(round, ..)| *round > confirmed) {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut r.parked).into_iter().partition(|p| p.0 <= confirmed);
        r.parked = waiting;
        for (_, from, gather, query) in ready {
            let answer = self.answer_query(query);
            self.deliver_answer(from, gather, answer);
        }
    }

    /// Answers go through the asking shard's inbox, this shard's own
    /// included: this runs after the turn's entry was proposed, and
    /// finishing a gather may log records (a DeleteQueue once the dead-letter
    /// sources are known, a CreateQueue once no shard has the name), which
    /// belong in the next turn's entry. Finishing it here logged them into
    /// the entry already proposed, and cmqd aborted
    /// (`tests/tests/cluster_admin.rs`).
    fn deliver_answer(&mut self, from: u16, gather: u64, answer: Answer) {
        self.send_to(from, ShardMsg::Answer { gather, answer });
    }

    /// Cross-shard messages from other nodes: transfers and verdicts for
    /// groups whose leaders are elsewhere (see `forward.rs`).
    pub(super) fn take_forwarded(&mut self, now: u64) {
        for (from, bytes) in std::mem::take(&mut self.forwarded) {
            self.forwarded_frame(from, bytes, now);
        }
    }

    /// A membership change this shard carries out if it leads its group
    /// (a shard another node leads is that node's to change: Ok).
    pub(super) fn membership(&mut self, m: Membership) -> Result<(), (ErrorCode, String)> {
        let Some(r) = self.repl.as_deref_mut() else { return Ok(()) };
        if !r.replica.is_leader() {
            return Ok(());
        }
        let voters = r.replica.voters();
        let proposed = match m {
            Membership::TransferLeader { to } if !voters.contains(&to) => {
                return Err((
                    ErrorCode::INVALID_PARAMETER,
                    format!("to: node {to} is not a voter of shard {}", self.id),
                ));
            }
            Membership::TransferLeader { to } => {
                r.replica.transfer_leader(to);
                Ok(())
            }
            Membership::AddNode { id, .. } if voters.contains(&id) => Ok(()),
            Membership::AddNode { id, peer_addr } => r.replica.propose_add_node(id, &peer_addr.to_string()),
            Membership::RemoveNode { id } if !voters.contains(&id) => Ok(()),
            Membership::RemoveNode { id } => r.replica.propose_remove_node(id),
        };
        proposed.map_err(|e| e.into_code())
    }

    /// A membership change committed: links, the acceptor and the map follow.
    fn conf_changed(&mut self, voters: &[u64], added: Option<(u64, String)>) {
        if let Some((id, peer_addr)) = added {
            self.shared.learn_peer_addr(id, &peer_addr);
        }
        self.shared.set_members(voters);
        let Some(r) = self.repl.as_deref_mut() else { return };
        let peers = self.shared.peer_addrs(voters, r.node_id);
        let now = self.clock.now_ms();
        if let Err(e) = r.links.set_peers(self.poll.registry(), &peers, now) {
            log::error!("shard {}: cannot follow the new membership {voters:?}: {e}", self.id);
        }
    }

    /// An authenticated connection from another node's shard of this group.
    pub(super) fn add_peer_conn(&mut self, stream: crate::cluster::acceptor::AuthenticatedStream) {
        let Some(r) = self.repl.as_deref_mut() else { return };
        let (node, addr) = (stream.node_id, stream.client_addr.clone());
        if r.links.add_inbound(self.poll.registry(), stream) {
            self.shared.learn_node_addr(node, &addr);
        }
    }

    /// Tells the log what Raft still needs kept: entries not yet applied
    /// here (a restart applies them), and, on a leader, entries some
    /// follower does not have yet (it will be sent them).
    pub(super) fn set_consensus_floor(&mut self) {
        let Some(r) = self.repl.as_deref() else { return };
        let lag_max = FOLLOWER_LAG_SEGMENTS_MAX * self.shared.cfg.segment_bytes;
        let floor = crate::consensus::release::consensus_floor(&r.replica, lag_max);
        // The engine may reflect the turn's open entry too (seed 237).
        let reflected = crate::consensus::release::reflected_index(&r.replica, self.log.entries());
        self.log.set_consensus_floor(floor, reflected);
    }

    /// This shard's replica state for ClusterStatus (alone: node 1 leads
    /// in term 1, everything it holds is committed).
    pub(super) fn shard_status(&self) -> cmq_protocol::ShardStatus {
        let digest = self.engine.digest();
        match self.repl_status() {
            Some(s) => cmq_protocol::ShardStatus { digest, ..s },
            None => cmq_protocol::ShardStatus {
                leader: self.shared.cfg.node_id,
                term: 1,
                voters: vec![self.shared.cfg.node_id],
                digest,
                ..Default::default()
            },
        }
    }

    fn repl_status(&self) -> Option<cmq_protocol::ShardStatus> {
        let r = self.repl.as_deref()?;
        let rep = &r.replica;
        let followers = rep
            .follower_progress()
            .into_iter()
            .map(|(node, matched)| cmq_protocol::FollowerProgress { node, matched })
            .collect();
        Some(cmq_protocol::ShardStatus {
            leader: rep.leader_id(),
            term: rep.term(),
            commit: rep.commit_index(),
            applied: rep.applied(),
            last_index: rep.last_index(),
            voters: rep.voters(),
            followers,
            digest: 0,
        })
    }
}
