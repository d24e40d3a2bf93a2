//! The workload every cluster test runs: queues on every shard (one per
//! flush policy asked for), pipelined producers and consumers recording a
//! [`Ledger`], and the end of a test: stop, heal, converge, compare the
//! replicas' digests, drain every queue and check the ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmq_protocol::{FlushPolicy, QueueAttributesUpdate};

use crate::cluster::Cluster;
use crate::ledger::{Ledger, Report};
use crate::load::{drain, Load, LoadSpec};
use crate::ops::name_on_shard;

/// The queues' visibility timeout (seconds): a message leased by a
/// consumer whose delete was lost comes back this soon, for the drain.
pub const VISIBILITY_S: u32 = 2;

/// How long the end of a test may take to converge, and to drain.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Workload {
    pub queues: Vec<String>,
    pub ledger: Arc<Ledger>,
    pub spec: LoadSpec,
    load: Option<Load>,
}

impl Workload {
    /// Creates a queue on every shard for every policy of `flushes` (named
    /// after `prefix`), and starts the load on them.
    pub fn start(c: &Cluster, prefix: &str, flushes: &[FlushPolicy]) -> Workload {
        Workload::start_with(c, prefix, flushes, |_| {})
    }

    /// As [`Workload::start`], with the load's shape changed by `shape`.
    pub fn start_with(
        c: &Cluster,
        prefix: &str,
        flushes: &[FlushPolicy],
        shape: impl FnOnce(&mut LoadSpec),
    ) -> Workload {
        let mut queues = Vec::new();
        for shard in 0..c.shards {
            for f in flushes {
                let q = name_on_shard(&format!("{prefix}-{}-", f.as_str()), shard, c.shards);
                let attrs = QueueAttributesUpdate {
                    visibility_timeout: Some(VISIBILITY_S),
                    flush_policy: Some(*f),
                    ..Default::default()
                };
                c.create_queue(&q, attrs);
                queues.push(q);
            }
        }
        let mut spec = LoadSpec::new(&queues, c.shards);
        shape(&mut spec);
        let ledger = Arc::new(Ledger::new());
        let load = Load::start(&c.client_addrs(), &ledger, &spec);
        Workload { queues, ledger, spec, load: Some(load) }
    }

    /// Waits until `n` more sends have been acknowledged (the load runs).
    #[track_caller]
    pub fn wait_acks(&self, n: usize, timeout: Duration) {
        let target = self.ledger.acked_count() + n;
        let deadline = Instant::now() + timeout;
        while self.ledger.acked_count() < target {
            assert!(
                Instant::now() < deadline,
                "only {} of {target} sends acknowledged within {timeout:?}",
                self.ledger.acked_count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the load (idempotent).
    pub fn stop(&mut self) {
        if let Some(l) = self.load.take() {
            l.stop();
        }
    }

    /// The end of a test, with every node up: stop the load, heal every
    /// link, wait until the replicas agree (equal digests per shard), drain
    /// every queue, check the ledger, compare digests again after the
    /// drain, and check that no node logged a panic. Returns the ledger's
    /// report (already asserted).
    pub fn finish(mut self, c: &Cluster) -> Report {
        self.stop();
        c.heal();
        let before = c.wait_converged(CONVERGE_TIMEOUT);
        let drained = drain(&c.client_addrs(), c.shards, &self.queues, &self.ledger, DRAIN_TIMEOUT);
        let report = self.ledger.check();
        eprintln!("ledger: {} (drain took {drained}); digests before the drain {before:x?}", report.summary());
        report.assert_ok();
        assert!(report.acked > 0, "the load acknowledged nothing");
        let after = c.wait_converged(CONVERGE_TIMEOUT);
        eprintln!("digests after the drain {after:x?}");
        c.assert_no_panics();
        report
    }
}
