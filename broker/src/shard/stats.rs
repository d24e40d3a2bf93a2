//! The shard's side of metrics: counting answers as they are produced,
//! timing them when the log lets them out, and answering the HTTP
//! thread's request for a snapshot (`ShardMsg::Stats`) from this thread.

use cmq_protocol::ErrorCode;

use super::release::Need;
use super::Shard;
use crate::metrics::latency::KINDS;
use crate::metrics::queues::{QueueSample, QueueTable};
use crate::metrics::snapshot::{ShardSnapshot, StatsRequest, WalSnapshot};

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
        let waits_for_sync = need.durable > self.progress.durable_end;
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

    /// Times the answers the log's progress let out.
    pub(super) fn time_released(&mut self) {
        if self.metrics.latency.is_waiting() {
            let p = self.progress;
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
            connections: self.conns.len() as u64,
            wal,
            queues: match req.top_queues {
                Some(n) => QueueTable::select(self.queue_samples(now), n),
                None => QueueTable::default(),
            },
            topics: self.engine.topic_count() as u64,
            pushes: self.metrics.pushes,
            pushes_deferred: self.metrics.pushes_deferred,
        };
        (req.reply)(snapshot);
    }

    /// Every queue of this shard, with the numbers queue-info shows.
    fn queue_samples(&mut self, now: u64) -> Vec<QueueSample> {
        let (_, listed) = self.engine.list_queues("", "", usize::MAX);
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

    /// Testing only (`--fault-http-hooks`): blocks this shard's loop.
    pub(super) fn stall(&self, ms: u64) {
        log::warn!(target: "cmq::shard", "shard {}: stalling the event loop for {ms} ms (test hook)", self.id);
        std::thread::sleep(std::time::Duration::from_millis(ms.min(STALL_MS_MAX)));
    }
}
