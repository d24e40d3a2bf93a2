//! A few minutes of broker history for the console's charts: every
//! [`SAMPLE_EVERY`] a sampler asks each shard for its snapshot (through a
//! bridge of its own, so it never queues behind a `/metrics` scrape) and
//! keeps the last [`HISTORY_SAMPLES`] in a ring. It starts with the first
//! console request and lives as long as the HTTP thread's runtime.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::http::ShardBridge;
use crate::metrics::snapshot::BrokerSnapshot;
use crate::shard::Shared;

/// How often the sampler asks the shards (and how long it waits for them).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples kept: five minutes at one a second.
pub const HISTORY_SAMPLES: usize = 300;

/// Queues whose history each sample keeps: the deepest (the rest are only in the totals).
pub const HISTORY_QUEUES_MAX: usize = 50;

/// One shard at one moment.
#[derive(Clone, Debug, Default)]
pub struct ShardLoad {
    pub shard: u16,
    pub turns: u64,
    pub inbox: u64,
    pub connections: u64,
}

/// One queue at one moment (counters are totals since start).
#[derive(Clone, Debug, Default)]
pub struct QueuePoint {
    pub name: String,
    pub active: u64,
    pub inactive: u64,
    pub delayed: u64,
    pub sent: u64,
    pub received: u64,
}

/// The broker at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Unix milliseconds.
    pub t_ms: u64,
    pub shards: Vec<ShardLoad>,
    /// Shards that did not answer in time.
    pub missing: usize,
    /// Messages in and out since start, every queue.
    pub sent: u64,
    pub received: u64,
    pub disk_bytes: u64,
    pub queues: Vec<QueuePoint>,
}

impl Sample {
    fn of(snapshot: &BrokerSnapshot, missing: usize, t_ms: u64) -> Sample {
        let q = &snapshot.queues;
        let all = q.top.iter().chain(std::iter::once(&q.other));
        let (sent, received) = all.fold((0, 0), |(s, r), x| (s + x.totals.sent, r + x.totals.received));
        let shards = snapshot
            .shards
            .iter()
            .map(|s| ShardLoad { shard: s.shard, turns: s.turns, inbox: s.inbox_depth, connections: s.connections })
            .collect();
        let queues = q
            .top
            .iter()
            .map(|x| QueuePoint {
                name: x.name.clone(),
                active: x.active,
                inactive: x.inactive,
                delayed: x.delayed,
                sent: x.totals.sent,
                received: x.totals.received,
            })
            .collect();
        let disk_bytes = snapshot.shards.iter().map(|s| s.wal.disk_bytes).sum();
        Sample { t_ms, shards, missing, sent, received, disk_bytes, queues }
    }

    fn queue(&self, name: &str) -> Option<&QueuePoint> {
        self.queues.iter().find(|q| q.name == name)
    }
}

#[derive(Default)]
pub struct History {
    started: AtomicBool,
    ring: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Starts the sampler unless it runs (call on the HTTP runtime).
    pub fn ensure_started(self: &Arc<Self>, shared: &Arc<Shared>) {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(sample_forever(self.clone(), ShardBridge::new(shared.peers.clone())));
        }
    }

    pub fn push(&self, s: Sample) {
        let mut ring = self.lock();
        if ring.len() == HISTORY_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// The latest sample, if any.
    pub fn latest(&self) -> Option<Sample> {
        self.lock().back().cloned()
    }

    /// Broker-wide series: per sample its time, messages/s in and out,
    /// disk bytes and each shard's turns/s, inbox and connections.
    pub fn broker_series(&self) -> Vec<Value> {
        let ring = self.lock();
        pairs(&ring)
            .map(|(a, b)| {
                let shards: Vec<Value> = b
                    .shards
                    .iter()
                    .map(|s| {
                        let before = a.shards.iter().find(|x| x.shard == s.shard).map_or(s.turns, |x| x.turns);
                        json!({"shard": s.shard, "turnsPerSec": rate(before, s.turns, a, b),
                               "inbox": s.inbox, "connections": s.connections})
                    })
                    .collect();
                json!({"t": b.t_ms, "inPerSec": rate(a.sent, b.sent, a, b), "outPerSec": rate(a.received, b.received, a, b),
                       "diskBytes": b.disk_bytes, "missingShards": b.missing, "shards": shards})
            })
            .collect()
    }

    /// One queue's series (samples where it was among the deepest).
    pub fn queue_series(&self, name: &str) -> Vec<Value> {
        let ring = self.lock();
        pairs(&ring)
            .filter_map(|(a, b)| {
                let q = b.queue(name)?;
                let (sent0, recv0) = a.queue(name).map_or((q.sent, q.received), |p| (p.sent, p.received));
                Some(json!({"t": b.t_ms, "depth": q.active + q.inactive + q.delayed, "active": q.active,
                            "inFlight": q.inactive, "delayed": q.delayed,
                            "inPerSec": rate(sent0, q.sent, a, b), "outPerSec": rate(recv0, q.received, a, b)}))
            })
            .collect()
    }

    /// A queue's latest in/out rates, if the last two samples have it.
    pub fn queue_rates(&self, name: &str) -> Option<(f64, f64)> {
        let ring = self.lock();
        let (a, b) = pairs(&ring).last()?;
        let (p, q) = (a.queue(name)?, b.queue(name)?);
        Some((rate(p.sent, q.sent, a, b), rate(p.received, q.received, a, b)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn pairs(ring: &VecDeque<Sample>) -> impl Iterator<Item = (&Sample, &Sample)> {
    ring.iter().zip(ring.iter().skip(1))
}

/// Per second between two samples; a counter that went back (a restart) counts as 0.
fn rate(before: u64, after: u64, a: &Sample, b: &Sample) -> f64 {
    let ms = b.t_ms.saturating_sub(a.t_ms).max(1);
    after.saturating_sub(before) as f64 * 1000.0 / ms as f64
}

async fn sample_forever(history: Arc<History>, bridge: ShardBridge) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut clock = crate::clock::Clock::default();
    loop {
        tick.tick().await;
        let answers = bridge.gather(Some(HISTORY_QUEUES_MAX), SAMPLE_EVERY).await;
        let missing = answers.iter().filter(|a| a.is_none()).count();
        let shards = answers.into_iter().flatten().map(|a| a.snapshot).collect();
        let snapshot = BrokerSnapshot::merge(shards, HISTORY_QUEUES_MAX);
        history.push(Sample::of(&snapshot, missing, clock.now_ms()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, sent: u64, received: u64, depth: u64) -> Sample {
        let q = QueuePoint { name: "q".into(), active: depth, sent, received, ..Default::default() };
        Sample { t_ms, sent, received, queues: vec![q], ..Default::default() }
    }

    #[test]
    fn the_ring_is_bounded_and_rates_are_per_second() {
        let h = History::default();
        for k in 0..HISTORY_SAMPLES as u64 + 10 {
            h.push(sample(k * 500, k * 10, k * 5, k));
        }
        let series = h.broker_series();
        assert_eq!(series.len(), HISTORY_SAMPLES - 1);
        assert_eq!(series[0]["inPerSec"], 20.0, "10 per half second");
        assert_eq!(series[0]["outPerSec"], 10.0);
        let q = h.queue_series("q");
        assert_eq!(q.last().map(|p| p["depth"].clone()), Some(json!(HISTORY_SAMPLES as u64 + 9)));
        assert_eq!(h.queue_rates("q"), Some((20.0, 10.0)));
        assert!(h.queue_series("nope").is_empty());
    }
}
