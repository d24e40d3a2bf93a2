//! Messages moving between queues on different shards (dead-lettering,
//! redrive), and transaction checks pushed to checker connections.

use std::collections::HashMap;

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Shard {
    /// Sends the outbox's due transfers: applied at once when the
    /// destination queue is ours, otherwise staged for its shard until this
    /// turn's records (the `TransferOut`s) are durable.
    pub(super) fn send_transfers(&mut self, now: u64) {
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
            self.turn_msgs.push((shard, ShardMsg::Transfers { from_node: 0, ts }));
        }
    }

    /// Applies transfers sent to our queues; the verdicts go back once the
    /// `TransferIn` records are durable.
    /// (`from_node`: where the source shard is, 0 for this node.)
    pub(super) fn receive_transfers(&mut self, from_node: u64, ts: Vec<InTransfer>, now: u64) {
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
        self.turn_msgs.push((to, msg));
    }

    /// Hands due HTTP pushes to the push pool; a full pool leaves them for later.
    pub(super) fn send_pushes(&mut self, now: u64) {
        for p in self.engine.pushes_to_send(now) {
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
            if self.push.submit(build_task(&req, &msg)).is_err() {
                // The pool is full: the delivery waits in the outbox.
                self.engine.push_not_sent(p.id, now);
                self.metrics.pushes_deferred += 1;
            }
        }
    }

    /// Outcomes of pushes, logged by the engine (retry times survive restarts).
    pub(super) fn collect_push_outcomes(&mut self, now: u64) {
        let mut outcomes = Vec::new();
        self.push.take_outcomes(&mut outcomes);
        if outcomes.is_empty() {
            return;
        }
        self.count_pushes(&outcomes);
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
        let list = self.checkers.entry(group).or_default();
        if !list.contains(&reply_to) {
            list.push(reply_to);
        }
    }

    /// Registers a connection as a checker on every shard.
    pub(super) fn register_checker(&mut self, group: String, reply_to: ReplyTo) {
        if let Some(conn) = self.conns.get_mut(reply_to.conn.token) {
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
            let Some(list) = self.checkers.get(&c.group).filter(|l| !l.is_empty()) else {
                log::debug!("no checker for producer group {:?}; message {} waits", c.group, c.msg_id);
                continue;
            };
            self.next_checker = self.next_checker.wrapping_add(1);
            let to = list[self.next_checker % list.len()];
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
                if let Some(conn) = self.conns.get_mut(to.conn.token).filter(|x| x.gen == to.conn.gen) {
                    check.encode_push(&mut conn.out);
                    self.touch(to.conn);
                }
            } else {
                let batch = &mut self.push_out[usize::from(to.shard)];
                let start = batch.buf.len() as u32;
                check.encode_push(&mut batch.buf);
                batch.parts.push((to.conn, start, batch.buf.len() as u32));
            }
        }
    }
}
