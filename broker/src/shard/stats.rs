//! The shard's side of metrics: counting answers as they are produced,
//! timing them when the log lets them out, and answering the HTTP
//! thread's request for a snapshot (`ShardMsg::Stats`) from this thread.

use std::sync::atomic::Ordering;

use cmq_protocol::{ErrorCode, GetStatsOk, QueueStats, Response, ShardStats};

use super::mailbox::ReplyTo;
use super::release::Need;
use super::reply::ReplyDep;
use super::Shard;
use crate::metrics::latency::KINDS;
use crate::metrics::queues::{QueueSample, QueueTable};
use crate::metrics::snapshot::{BrokerSnapshot, ShardSnapshot, StatsRequest, WalSnapshot};

/// Longest a test may stall a shard's loop (`ShardMsg::Stall`).
pub const STALL_MS_MAX: u64 = 60_000;

impl crate::metrics::latency::Need for Need {
    fn max(self, other: Need) -> Need {
        Need::max(self, other)
    }
}

impl Shard {
    /// An answer to `op` was produced; it goes out once `need` is met.
    #[inline]
    pub(super) fn count_answer(&mut self, op: u16, code: ErrorCode, need: Need) {
        let waits_for_sync = need.durable > self.durability.progress.durable_end;
        self.metrics.answered(op, code, need, waits_for_sync);
    }

    /// HTTP push outcomes collected from the push pool.
    pub(super) fn count_pushes(&mut self, outcomes: &[(u64, crate::push::PushOutcome)]) {
        use crate::push::PushOutcome;
        for (_, o) in outcomes {
            let i = match o {
                PushOutcome::Delivered { .. } => 0,
                PushOutcome::Failed { retryable: true, .. } => 1,
                PushOutcome::Failed { retryable: false, .. } => 2,
            };
            self.metrics.pushes[i] += 1;
        }
    }

    /// Each failed push's reason, under its subscription (before the
    /// engine sees the outcome: a push given up on leaves the outbox).
    pub(super) fn note_push_failures(&mut self, outcomes: &[(u64, crate::push::PushOutcome)], now: u64) {
        for (id, o) in outcomes {
            let crate::push::PushOutcome::Failed { reason, retryable, .. } = o else { continue };
            if let Some((topic, sub)) = self.engine.push_subscription(*id) {
                self.metrics.push_failures.record(topic, sub, reason, !retryable, now);
            }
        }
    }

    /// Times the answers the log's progress let out.
    pub(super) fn time_released(&mut self) {
        if self.metrics.latency.is_waiting() {
            let p = self.durability.progress;
            self.metrics.latency.release(std::time::Instant::now(), |n| n.is_met(p));
        }
    }

    /// Answers a request for this shard's metrics.
    pub(super) fn answer_stats(&mut self, req: StatsRequest, now: u64) {
        let (wal, segments, failed) = self.log.wal_report();
        let wal = WalSnapshot {
            records: wal.records,
            bytes: wal.bytes,
            syncs: wal.syncs,
            sync_us: wal.sync_us.clone(),
            sync_records: wal.sync_records.clone(),
            segments: segments as u64,
            disk_bytes: self.log.disk_bytes(),
            failed,
        };
        let snapshot = ShardSnapshot {
            shard: self.id,
            turns: self.turn,
            answers: self.metrics.answers(),
            latency_us: std::array::from_fn::<_, KINDS, _>(|k| self.metrics.latency.histogram(k).clone()),
            untimed: self.metrics.latency.untimed,
            turn_us: self.metrics.turns.clone(),
            longest_turn_us: self.metrics.longest_turn_us(),
            inbox_depth: self.inbox.rx.len() as u64,
            connections: self.clients.conns.len() as u64,
            wal,
            queues: match req.top_queues {
                Some(n) => QueueTable::select(self.queue_samples(now), n),
                None => QueueTable::default(),
            },
            topics: self.engine.topic_count() as u64,
            pushes: self.metrics.pushes,
            pushes_deferred: self.metrics.pushes_deferred,
            push_failures: self.metrics.push_failures.clone(),
        };
        (req.reply)(snapshot);
    }

    /// Every queue of this shard, with the numbers queue-info shows.
    fn queue_samples(&mut self, now: u64) -> Vec<QueueSample> {
        let (_, listed) = self.engine.list(crate::engine::Listed::Queues, "", "", usize::MAX, |_| true);
        let mut out = Vec::with_capacity(listed.len());
        for l in listed {
            let Ok(info) = self.engine.queue_info(now, &l.name) else { continue };
            let totals = self.engine.queue(&l.name).map(|q| q.totals).unwrap_or_default();
            out.push(QueueSample {
                name: l.name,
                active: info.active_msg_num,
                inactive: info.inactive_msg_num,
                delayed: info.delay_msg_num,
                oldest_ms: info.min_msg_time_ms,
                totals,
            });
        }
        out
    }

    /// GetStats, once every shard answered: the same merge as /metrics.
    pub(super) fn finish_stats(&mut self, to: ReplyTo, id: u64, top: usize, shards: Vec<ShardSnapshot>) {
        let merged = BrokerSnapshot::merge(shards, top);
        let shards = merged.shards.iter().map(|s| self.shard_stats(s)).collect();
        let q = &merged.queues;
        let queues = q.top.iter().chain(std::iter::once(&q.other)).map(queue_stats).collect();
        let ok = GetStatsOk { node_id: self.shared.cfg.node_id, shards, queues, other_queues: q.other_queues };
        self.reply_ok(to, id, &Response::GetStats(ok), ReplyDep::Read);
    }

    fn shard_stats(&self, s: &ShardSnapshot) -> ShardStats {
        let leader = self.shared.leaders.get(usize::from(s.shard)).map_or(0, |(l, _)| l.load(Ordering::Relaxed));
        let errors = s.answers.iter().filter(|(_, code, _)| *code != 0).map(|(_, _, n)| n).sum();
        ShardStats {
            shard: s.shard,
            leader,
            turns: s.turns,
            longest_turn_us: s.longest_turn_us,
            connections: s.connections,
            inbox_depth: s.inbox_depth,
            answers: s.answers.iter().map(|(_, _, n)| n).sum(),
            errors,
            wal_bytes: s.wal.bytes,
            wal_records: s.wal.records,
            fsyncs: s.wal.syncs,
            wal_disk_bytes: s.wal.disk_bytes,
            send_us: s.latency_us[0].counts(),
            receive_us: s.latency_us[1].counts(),
            delete_us: s.latency_us[2].counts(),
            fsync_us: s.wal.sync_us.counts(),
        }
    }

    /// A follower learns its group's leader (and term) from the leader's
    /// messages, with no event of its own: publish it when it changes, so
    /// /readyz, the cluster map and NOT_LEADER answers name it.
    pub(super) fn publish_leader_if_changed(&self) {
        let Some(r) = self.repl.as_deref() else { return };
        let (leader, term) = &self.shared.leaders[usize::from(self.id)];
        if leader.load(Ordering::Relaxed) != r.replica.leader_id() || term.load(Ordering::Relaxed) != r.replica.term() {
            self.publish_leader();
        }
    }

    /// Testing only (`--fault-http-hooks`): blocks this shard's loop.
    pub(super) fn stall(&self, ms: u64) {
        log::warn!(target: "cmq::shard", "shard {}: stalling the event loop for {ms} ms (test hook)", self.id);
        std::thread::sleep(std::time::Duration::from_millis(ms.min(STALL_MS_MAX)));
    }
}

fn queue_stats(q: &QueueSample) -> QueueStats {
    QueueStats {
        queue: q.name.clone(),
        active: q.active,
        inactive: q.inactive,
        delayed: q.delayed,
        oldest_ms: q.oldest_ms,
        sent: q.totals.sent,
        received: q.totals.received,
        deleted: q.totals.deleted,
        dead_lettered: q.totals.dead_lettered,
    }
}
