//! Work crossing to other shards of this node: requests forwarded to the
//! shard that owns their queue, replies and pushes for connections another
//! shard holds, and the messages that must wait for this turn's records
//! before they go.

use std::collections::VecDeque;

use super::mailbox::{Forwarded, ReplyBatch, ShardMsg};
use super::release::{HoldQueue, Need};
use super::Shard;

/// Answer bytes a shard produces for other shards' connections, by running
/// requests they forwarded, in one turn or still held for the log. Past it
/// the rest of the forwarded requests wait for a later turn: one write of
/// thousands of pipelined PeekMessages (16 MiB answers each) must not make
/// the owner build gigabytes of answers at once. Two maximum-size responses.
pub(super) const FORWARDED_REPLY_BYTES_MAX: usize = 2 * cmq_protocol::limits::FRAME_BYTES_MAX as usize;

/// What goes to the other shards of this node, and when.
pub(super) struct CrossShard {
    /// Replies for peers' connections produced this turn, per peer.
    pub(super) remote_out: Vec<ReplyBatch>,
    /// What this turn's replies in `remote_out` need.
    pub(super) remote_need: Need,
    /// Push frames for peers' connections produced this turn, per peer.
    pub(super) push_out: Vec<ReplyBatch>,
    /// Answers to external requests produced this turn (`external.rs`).
    pub(super) external_out: ReplyBatch,
    /// Other messages to peers that must wait for this turn's records
    /// (transfers, transfer verdicts).
    pub(super) turn_msgs: Vec<(u16, ShardMsg)>,
    /// Messages to peers of earlier turns, waiting for the log.
    pub(super) staged: HoldQueue<Vec<(u16, ShardMsg)>>,
    /// Requests to forward at the end of this turn, per owner shard.
    pub(super) forward_out: Vec<Vec<Forwarded>>,
    /// Messages a full peer inbox refused; retried every turn (replies must not be lost).
    pub(super) unsent: Vec<(u16, ShardMsg)>,
    /// Forwarded requests put off by FORWARDED_REPLY_BYTES_MAX, in arrival order.
    pub(super) deferred: VecDeque<Forwarded>,
    /// Answer bytes for peers produced this turn by forwarded requests.
    pub(super) forwarded_reply_bytes: usize,
    /// Answer bytes for peers in `staged` (waiting for the log).
    pub(super) staged_reply_bytes: usize,
}

impl Shard {
    /// Runs requests other shards forwarded, in order, until the answers they
    /// produced for peers reach FORWARDED_REPLY_BYTES_MAX; the rest wait.
    pub(super) fn run_forwarded(&mut self, reqs: Vec<Forwarded>, now: u64) {
        if !self.cross.deferred.is_empty() {
            self.cross.deferred.extend(reqs);
            return;
        }
        let mut reqs = reqs.into_iter();
        while !self.forwarded_replies_full() {
            let Some(f) = reqs.next() else { return };
            self.run_one_forwarded(f, now);
        }
        self.cross.deferred.extend(reqs);
    }

    pub(super) fn run_deferred(&mut self, now: u64) {
        while !self.forwarded_replies_full() {
            let Some(f) = self.cross.deferred.pop_front() else { return };
            self.run_one_forwarded(f, now);
        }
    }

    pub(super) fn run_one_forwarded(&mut self, f: Forwarded, now: u64) {
        let peer = usize::from(f.reply_to.shard);
        let before = self.cross.remote_out.get(peer).map_or(0, |b| b.buf.len());
        self.execute(f.reply_to, f.request_id, f.request, now);
        let after = self.cross.remote_out.get(peer).map_or(0, |b| b.buf.len());
        self.cross.forwarded_reply_bytes += after.saturating_sub(before);
    }

    pub(super) fn forwarded_replies_full(&self) -> bool {
        self.cross.forwarded_reply_bytes + self.cross.staged_reply_bytes >= FORWARDED_REPLY_BYTES_MAX
            || self.entry_full()
    }

    /// Frames computed by another shard for our connections, released there
    /// once what they depend on was safe. They still queue behind anything
    /// this connection is waiting on (one ordered byte stream per
    /// connection).
    pub(super) fn deliver_remote(&mut self, batch: ReplyBatch, replies: bool) {
        for (c, start, end) in batch.parts {
            let Some(conn) = self.clients.conns.get_mut(c.token) else { continue };
            if conn.gen != c.gen {
                continue;
            }
            let Some(frames) = batch.buf.get(start..end) else {
                log::error!("shard {}: malformed reply batch ({start}..{end})", self.id);
                continue;
            };
            if conn.shed {
                continue;
            }
            if replies && conn.session.is_some() {
                if let Some(blank) = self.redacted_frame(c, frames) {
                    if let Some(conn) = self.clients.conns.get_mut(c.token) {
                        conn.out.extend_from_slice(&blank);
                    }
                    self.hold_conn(c, Need::NONE);
                    self.answered(c);
                    continue;
                }
            }
            let Some(conn) = self.clients.conns.get_mut(c.token) else { continue };
            conn.out.extend_from_slice(frames);
            self.hold_conn(c, Need::NONE);
            if replies {
                self.answered(c);
            } else {
                self.touch(c);
            }
        }
    }

    pub(super) fn send_to(&mut self, shard: u16, msg: ShardMsg) {
        if shard == super::external::EXTERNAL_SHARD {
            return self.deliver_external(msg);
        }
        if let Err(msg) = self.shared.peers[usize::from(shard)].send(msg) {
            self.cross.unsent.push((shard, msg));
        }
    }
}

/// Answer bytes in a list of messages to peers (for FORWARDED_REPLY_BYTES_MAX).
pub(super) fn reply_bytes(msgs: &[(u16, ShardMsg)]) -> usize {
    msgs.iter().map(|(_, m)| if let ShardMsg::Replies(b) = m { b.buf.len() } else { 0 }).sum()
}
