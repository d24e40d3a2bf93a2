//! Messages moving between queues on different shards (dead-lettering,
//! redrive), and transaction checks pushed to checker connections.

use std::collections::{HashMap, VecDeque};

use std::time::Duration;

use bytes::Bytes;
use cmq_protocol::{Request, TransactionCheck};

use crate::engine::PushResult;
use crate::push::{build_task, PushMessage, PushOutcome, PushRequest};

use super::mailbox::{ReplyTo, ShardMsg, TransferVerdicts};
use super::Shard;
use crate::engine::InTransfer;

/// How long one push attempt may take (CMQ: 15 s).
const PUSH_TIMEOUT_MS: u64 = 15_000;

/// Pushes a shard builds (body copied, rendered, signed) and hands to the
/// pool in one loop turn, at most: about 60 µs each in a release build on
/// a busy 2-vCPU machine, so a turn that refills an empty pool takes a few
/// milliseconds, not the 60 ms of the pool's whole 4,096. Outcomes wake
/// the loop, so a fast endpoint still gets a new batch every turn.
pub const PUSHES_PER_TURN_MAX: usize = 256;

/// Transfers a shard applies (each a `TransferIn` record with its body) in
/// one loop turn, at most. Each source sends a bounded batch a turn, but
/// many sources, or many of one source's turns, can wait in the inbox
/// together (after a restart a whole backlog is due at once): the rest
/// wait for the next turns, in arrival order.
pub const TRANSFERS_IN_PER_TURN_MAX: usize = 4096;

/// Body bytes of the transfers a shard applies in one loop turn, at most
/// (at least one transfer goes, however large): the turn's records stay
/// within what one replicated entry carries.
pub const TRANSFERS_IN_BYTES_PER_TURN_MAX: usize = 8 << 20;

/// Transfers received and not yet applied, and this turn's budget.
#[derive(Default)]
pub(super) struct TransfersIn {
    waiting: VecDeque<(u64, Vec<InTransfer>)>,
    turn: u64,
    applied: usize,
    applied_bytes: usize,
}

impl TransfersIn {
    /// Whether transfers wait for a later turn (the loop must not sleep).
    pub(super) fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The next waiting transfers that fit in turn `turn`'s budget (a
    /// batch is split at the budget), or None.
    fn next_batch(&mut self, turn: u64) -> Option<(u64, Vec<InTransfer>)> {
        if self.turn != turn {
            self.turn = turn;
            self.applied = 0;
            self.applied_bytes = 0;
        }
        let (from_node, mut ts) = self.waiting.pop_front()?;
        let mut fit = 0;
        for t in &ts {
            let size = t.body.len() + t.origin.len();
            let first = self.applied == 0;
            if self.applied == TRANSFERS_IN_PER_TURN_MAX
                || (!first && self.applied_bytes + size > TRANSFERS_IN_BYTES_PER_TURN_MAX)
            {
                break;
            }
            self.applied += 1;
            self.applied_bytes += size;
            fit += 1;
        }
        if fit < ts.len() {
            self.waiting.push_front((from_node, ts.split_off(fit)));
        }
        (fit > 0).then_some((from_node, ts))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Shard {
    /// Sends the outbox's due transfers: applied at once when the
    /// destination queue is ours, otherwise staged for its shard until this
    /// turn's records (the `TransferOut`s) are durable. At most a bounded
    /// batch a turn (`OUTBOX_DUE_PER_TURN_MAX`): after a restart the whole
    /// backlog is due at once, and the rest goes on the next turns.
    pub(super) fn send_transfers(&mut self, now: u64) {
        self.apply_transfers_in(now);
        let due = self.engine.transfers_to_send(now);
        if due.is_empty() {
            return;
        }
        let low_watermark = self.engine.transfer_low_watermark();
        let mut local = Vec::new();
        let mut remote: HashMap<u16, Vec<InTransfer>> = HashMap::new();
        for t in due {
            let read = |pos, len| self.log.read(pos, len).map(Bytes::copy_from_slice);
            let (body, origin) =
                match (read(t.body_pos, t.body_len), read(t.body_pos + u64::from(t.body_len), t.suffix_len)) {
                    (Ok(b), Ok(o)) => (b, o),
                    (Err(e), _) | (_, Err(e)) => {
                        log::error!("shard {}: cannot read transfer {}: {}", self.id, t.id, e.message);
                        continue;
                    }
                };
            let it = InTransfer {
                src_shard: self.id,
                id: t.id,
                kind: t.kind,
                dst_queue: t.dst_queue,
                body,
                origin,
                dequeue_count: t.dequeue_count,
                low_watermark,
            };
            if t.dst_shard == self.id {
                local.push(it);
            } else {
                remote.entry(t.dst_shard).or_default().push(it);
            }
        }
        if !local.is_empty() {
            let results: TransferVerdicts = local
                .iter()
                .map(|t| (t.id, self.engine.accept_transfer(&mut self.log, now, t).map_err(|e| e.code)))
                .collect();
            self.engine.transfer_results(&mut self.log, now, &results);
        }
        for (shard, ts) in remote {
            self.cross.turn_msgs.push((shard, ShardMsg::Transfers { from_node: 0, ts }));
        }
    }

    /// Transfers sent to our queues: applied now, up to this turn's
    /// [`TRANSFERS_IN_PER_TURN_MAX`], the rest on the next turns.
    /// (`from_node`: where the source shard is, 0 for this node.)
    pub(super) fn receive_transfers(&mut self, from_node: u64, ts: Vec<InTransfer>, now: u64) {
        self.exchange.transfers_in.waiting.push_back((from_node, ts));
        self.apply_transfers_in(now);
    }

    /// Applies waiting transfers, in arrival order, within this turn's
    /// budget (called on every turn while some wait). A replica that no
    /// longer serves drops them: their sources send them again.
    pub(super) fn apply_transfers_in(&mut self, now: u64) {
        if !self.exchange.transfers_in.is_waiting() {
            return;
        }
        if !self.may_serve() {
            let n: usize = self.exchange.transfers_in.waiting.drain(..).map(|(_, ts)| ts.len()).sum();
            log::debug!("shard {}: not serving; {n} transfers dropped (their sources resend)", self.id);
            return;
        }
        while let Some((from_node, ts)) = self.exchange.transfers_in.next_batch(self.turn) {
            self.accept_transfers(from_node, ts, now);
        }
    }

    /// Applies transfers; the verdicts go back once the `TransferIn`
    /// records are durable.
    fn accept_transfers(&mut self, from_node: u64, ts: Vec<InTransfer>, now: u64) {
        let mut by_src: HashMap<u16, TransferVerdicts> = HashMap::new();
        for t in &ts {
            let r = self.engine.accept_transfer(&mut self.log, now, t).map_err(|e| e.code);
            by_src.entry(t.src_shard).or_default().push((t.id, r));
        }
        for (src, results) in by_src {
            let msg = ShardMsg::TransferResults { from: self.id, from_node: 0, results };
            self.stage_to(from_node, src, msg);
        }
    }

    /// Verdicts on our transfers; tells the destination what it may forget
    /// once the `TransferDone` records are durable.
    pub(super) fn transfer_results(&mut self, from: u16, from_node: u64, results: TransferVerdicts, now: u64) {
        self.engine.transfer_results(&mut self.log, now, &results);
        let below = self.engine.transfer_low_watermark();
        self.stage_to(from_node, from, ShardMsg::TransferPrune { from: self.id, from_node: 0, below });
    }

    /// Stages `msg` for shard `to` of node `node` (0: this node) with the
    /// turn's other messages: it goes once this turn's records are safe.
    fn stage_to(&mut self, node: u64, to: u16, msg: ShardMsg) {
        let msg = if node == 0 { msg } else { ShardMsg::Remote { node, to, msg: Box::new(msg) } };
        self.cross.turn_msgs.push((to, msg));
    }

    /// Hands due HTTP pushes to the push pool, as many as it has room for
    /// (at most [`PUSHES_PER_TURN_MAX`] a turn). A full pool costs one comparison:
    /// nothing is copied or signed for a push the pool would refuse, and
    /// the due pushes wait for an outcome (which wakes the loop) or a short
    /// pause, not the next turn.
    pub(super) fn send_pushes(&mut self, now: u64) {
        let room = self.exchange.push.room().min(PUSHES_PER_TURN_MAX);
        if room == 0 {
            self.engine.push_pool_full(now);
            return;
        }
        let mut due = self.engine.pushes_to_send(now, room).into_iter();
        while let Some(p) = due.next() {
            let body = match self.log.read(p.body_pos, p.body_len) {
                Ok(b) => Bytes::copy_from_slice(b),
                Err(e) => {
                    log::error!("shard {}: cannot read pushed message {}: {}", self.id, p.meta.msg_id, e.message);
                    continue;
                }
            };
            let secret = hex(&p.secret);
            let msg = PushMessage {
                topic_owner: "cmq",
                topic: &p.meta.topic,
                subscription: &p.subscription,
                msg_id: p.meta.msg_id,
                body,
                tags: &p.meta.tags,
                routing_key: &p.meta.routing_key,
                publish_time_ms: p.meta.publish_ms,
            };
            let request_id = format!("{}-{}-{}", self.id, p.id, p.attempt + 1);
            let req = PushRequest {
                id: p.id,
                request_id: &request_id,
                url: &p.url,
                format: p.format,
                secret: secret.as_bytes(),
                timestamp_s: now / 1000,
                timeout: Duration::from_millis(PUSH_TIMEOUT_MS),
            };
            if self.exchange.push.submit(build_task(&req, &msg)).is_err() {
                // The pool is stopping (it had room): this and the rest wait in the outbox.
                self.engine.push_not_sent(p.id, now);
                for rest in due.by_ref() {
                    self.engine.push_not_sent(rest.id, now);
                }
                self.metrics.pushes_deferred += 1;
            }
        }
    }

    /// Outcomes of pushes, logged by the engine (retry times survive restarts).
    pub(super) fn collect_push_outcomes(&mut self, now: u64) {
        let mut outcomes = Vec::new();
        self.exchange.push.take_outcomes(&mut outcomes);
        if outcomes.is_empty() {
            return;
        }
        self.count_pushes(&outcomes);
        self.note_push_failures(&outcomes, now);
        let results: Vec<(u64, PushResult)> = outcomes
            .into_iter()
            .map(|(id, o)| match o {
                PushOutcome::Delivered { .. } => (id, PushResult::Delivered),
                PushOutcome::Failed { reason, retryable: true, .. } => (id, PushResult::Failed(reason)),
                PushOutcome::Failed { reason, retryable: false, .. } => (id, PushResult::Rejected(reason)),
            })
            .collect();
        let scale = self.shared.cfg.push_retry_scale;
        self.engine.push_results(&mut self.log, now, &results, |strategy, attempt, id| {
            crate::push::next_retry_scaled(strategy, attempt, id, scale)
        });
    }

    pub(super) fn add_checker(&mut self, group: String, reply_to: ReplyTo) {
        let list = self.exchange.checkers.entry(group).or_default();
        if !list.contains(&reply_to) {
            list.push(reply_to);
        }
    }

    /// Registers a connection as a checker on every shard.
    pub(super) fn register_checker(&mut self, group: String, reply_to: ReplyTo) {
        if let Some(conn) = self.clients.conns.get_mut(reply_to.conn.token) {
            conn.checker = true;
        }
        for shard in 0..self.shard_count() {
            if shard != self.id {
                self.send_to(shard, ShardMsg::CheckerRegistered { group: group.clone(), reply_to });
            }
        }
        self.add_checker(group, reply_to);
    }

    /// Pushes due transaction checks to a checker of each message's group
    /// (round robin); with no checker connected the check is only counted.
    pub(super) fn push_checks(&mut self) {
        for c in self.engine.take_checks() {
            let Some(list) = self.exchange.checkers.get(&c.group).filter(|l| !l.is_empty()) else {
                log::debug!("no checker for producer group {:?}; message {} waits", c.group, c.msg_id);
                continue;
            };
            self.exchange.next_checker = self.exchange.next_checker.wrapping_add(1);
            let to = list[self.exchange.next_checker % list.len()];
            let body = match self.log.read(c.body_pos, c.body_len) {
                Ok(b) => Bytes::copy_from_slice(b),
                Err(e) => {
                    log::error!("shard {}: cannot read half message {}: {}", self.id, c.msg_id, e.message);
                    continue;
                }
            };
            let check = Request::TransactionCheck(TransactionCheck {
                queue: c.queue,
                msg_id: c.msg_id,
                producer_group: c.group,
                check_count: c.count,
                enqueue_time_ms: c.enqueue_ms,
                body,
            });
            if to.shard == self.id {
                if let Some(conn) = self.clients.conns.get_mut(to.conn.token).filter(|x| x.gen == to.conn.gen) {
                    check.encode_push(&mut conn.out);
                    self.touch(to.conn);
                }
            } else {
                let batch = &mut self.cross.push_out[usize::from(to.shard)];
                let start = batch.buf.len();
                check.encode_push(&mut batch.buf);
                batch.parts.push((to.conn, start, batch.buf.len()));
            }
        }
    }
}

/// Messages between queues of different shards, transaction checkers,
/// and HTTP pushes.
pub(super) struct Exchange {
    /// Connections (on any shard) answering transaction checks, per producer group.
    pub(super) checkers: HashMap<String, Vec<ReplyTo>>,
    pub(super) next_checker: usize,
    /// This shard's queue in the broker's HTTP push pool.
    pub(super) push: crate::push::PushHandle,
    /// Transfers received beyond a turn's budget (`exchange.rs`).
    pub(super) transfers_in: TransfersIn,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfers(ids: std::ops::Range<u64>) -> Vec<InTransfer> {
        ids.map(|id| InTransfer {
            src_shard: 0,
            id,
            kind: 1,
            dst_queue: "q".into(),
            body: Bytes::from_static(b"b"),
            origin: Bytes::new(),
            dequeue_count: 0,
            low_watermark: 0,
        })
        .collect()
    }

    fn ids(batch: &Option<(u64, Vec<InTransfer>)>) -> (u64, u64, u64) {
        let (node, ts) = batch.as_ref().expect("a batch");
        (*node, ts[0].id, ts.len() as u64)
    }

    #[test]
    fn waiting_transfers_are_applied_a_budget_per_turn_in_arrival_order() {
        let max = TRANSFERS_IN_PER_TURN_MAX as u64;
        let mut t = TransfersIn::default();
        t.waiting.push_back((0, transfers(0..3000)));
        t.waiting.push_back((7, transfers(3000..3000 + max)));
        assert_eq!(ids(&t.next_batch(1)), (0, 0, 3000));
        assert_eq!(ids(&t.next_batch(1)), (7, 3000, max - 3000), "split at the budget");
        assert!(t.next_batch(1).is_none() && t.is_waiting(), "the rest waits for the next turn");
        assert_eq!(ids(&t.next_batch(2)), (7, max, 3000));
        assert!(t.next_batch(2).is_none() && !t.is_waiting());
    }

    #[test]
    fn waiting_transfers_are_applied_within_a_byte_budget_per_turn() {
        let big = |id| InTransfer {
            body: Bytes::from(vec![0; TRANSFERS_IN_BYTES_PER_TURN_MAX / 2]),
            ..transfers(id..id + 1)[0].clone()
        };
        let mut t = TransfersIn::default();
        t.waiting.push_back((0, vec![big(0), big(1), big(2)]));
        assert_eq!(ids(&t.next_batch(1)), (0, 0, 2), "two halves fill a turn");
        assert!(t.next_batch(1).is_none());
        let mut huge = TransfersIn::default();
        let body = Bytes::from(vec![0; TRANSFERS_IN_BYTES_PER_TURN_MAX + 1]);
        huge.waiting.push_back((0, vec![InTransfer { body, ..big(9) }, big(10)]));
        assert_eq!(ids(&huge.next_batch(1)), (0, 9, 1), "one always goes");
        assert!(huge.next_batch(1).is_none());
        assert_eq!(ids(&huge.next_batch(2)), (0, 10, 1));
    }
}
