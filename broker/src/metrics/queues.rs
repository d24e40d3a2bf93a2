//! Per-queue metrics with bounded cardinality: the `n` deepest queues by
//! name, everything else summed under one `queue="_other"` series (a name
//! no queue can have: queue names start with a letter). Each shard picks
//! its own `n` deepest; the broker merges them and picks again, so a scrape
//! never carries more than `n + 1` queue label values whatever the number
//! of queues.

use crate::engine::queue::QueueTotals;

/// The label value of the series that sums every queue not shown by name.
pub const OTHER_QUEUE: &str = "_other";

/// Most queues a scrape names (`--metrics-top-queues` is bounded by it).
pub const TOP_QUEUES_MAX: usize = 1000;

/// One queue's state and totals at scrape time (or a sum of queues).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSample {
    pub name: String,
    /// Ready to be received.
    pub active: u64,
    /// Received, not deleted (in flight).
    pub inactive: u64,
    pub delayed: u64,
    /// Enqueue time of the oldest unconsumed message (Unix ms), 0 if none.
    pub oldest_ms: u64,
    pub totals: QueueTotals,
}

impl QueueSample {
    /// Messages waiting in any state: what "deepest" means.
    pub fn depth(&self) -> u64 {
        self.active + self.inactive + self.delayed
    }

    fn add(&mut self, o: &QueueSample) {
        self.active += o.active;
        self.inactive += o.inactive;
        self.delayed += o.delayed;
        self.oldest_ms = match (self.oldest_ms, o.oldest_ms) {
            (0, t) | (t, 0) => t,
            (a, b) => a.min(b),
        };
        self.totals.sent += o.totals.sent;
        self.totals.received += o.totals.received;
        self.totals.deleted += o.totals.deleted;
        self.totals.dead_lettered += o.totals.dead_lettered;
    }
}

/// The named queues and the sum of the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueTable {
    /// Deepest first (ties by name, so the choice is deterministic).
    pub top: Vec<QueueSample>,
    pub other: QueueSample,
    /// How many queues `other` sums.
    pub other_queues: u64,
}

impl Default for QueueTable {
    fn default() -> Self {
        QueueTable { top: Vec::new(), other: other_sample(), other_queues: 0 }
    }
}

fn other_sample() -> QueueSample {
    QueueSample { name: OTHER_QUEUE.to_owned(), ..Default::default() }
}

impl QueueTable {
    /// Keeps the `n` deepest of `samples`; sums the rest.
    pub fn select(samples: Vec<QueueSample>, n: usize) -> QueueTable {
        let mut t = QueueTable { top: samples, ..Default::default() };
        t.trim(n);
        t
    }

    /// Merges shards' tables, keeping the `n` deepest queues overall.
    pub fn merge(tables: Vec<QueueTable>, n: usize) -> QueueTable {
        let mut all = QueueTable::default();
        for t in tables {
            all.top.extend(t.top);
            all.other.add(&t.other);
            all.other_queues += t.other_queues;
        }
        all.trim(n);
        all
    }

    pub fn queue_count(&self) -> u64 {
        self.top.len() as u64 + self.other_queues
    }

    fn trim(&mut self, n: usize) {
        self.top.sort_by(|a, b| b.depth().cmp(&a.depth()).then_with(|| a.name.cmp(&b.name)));
        for q in self.top.drain(n.min(self.top.len())..) {
            self.other.add(&q);
            self.other_queues += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, active: u64, sent: u64, oldest_ms: u64) -> QueueSample {
        QueueSample {
            name: name.into(),
            active,
            oldest_ms,
            totals: QueueTotals { sent, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn the_deepest_are_named_and_the_rest_summed() {
        let t = QueueTable::select(vec![q("a", 1, 10, 5), q("b", 9, 1, 7), q("c", 5, 2, 0), q("d", 5, 3, 3)], 2);
        assert_eq!(t.top.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["b", "c"], "ties by name");
        assert_eq!(t.other_queues, 2);
        assert_eq!((t.other.name.as_str(), t.other.active, t.other.totals.sent), (OTHER_QUEUE, 6, 13));
        assert_eq!(t.other.oldest_ms, 3, "the oldest of the rest; 0 means none");
        assert_eq!(t.queue_count(), 4);
    }

    #[test]
    fn merging_shards_keeps_n_overall_and_loses_nothing() {
        let a = QueueTable::select(vec![q("a1", 3, 1, 0), q("a2", 1, 1, 0), q("a3", 0, 1, 0)], 2);
        let b = QueueTable::select(vec![q("b1", 2, 1, 0), q("b2", 5, 1, 0)], 2);
        let m = QueueTable::merge(vec![a, b], 2);
        assert_eq!(m.top.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["b2", "a1"]);
        assert_eq!(m.queue_count(), 5);
        let sent: u64 = m.top.iter().map(|q| q.totals.sent).sum::<u64>() + m.other.totals.sent;
        assert_eq!(sent, 5);
        assert_eq!(m.other.active, 3);
        let none = QueueTable::merge(vec![QueueTable::select(vec![q("x", 1, 1, 0)], 0)], 0);
        assert!(none.top.is_empty());
        assert_eq!(none.other_queues, 1);
    }
}
