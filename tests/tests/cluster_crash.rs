//! Issue 11: kill -9 all three nodes at once, repeatedly, while pipelined
//! clients write and consume, and restart them: nothing acknowledged is
//! lost (sync queues: committed means fdatasync'd on a majority; async
//! queues: written on a majority, which a process crash cannot lose as the
//! page cache survives it), no acknowledged delete comes back, and the
//! replicas agree.

use std::time::{Duration, Instant};

use cmq_integration_tests::{Cluster, ClusterSpec, Workload};
use cmq_protocol::FlushPolicy;

/// Whole-cluster crashes per test run.
const ROUNDS: usize = 5;

#[test]
fn killing_every_node_at_once_loses_nothing_acknowledged() {
    let mut c = Cluster::start(&ClusterSpec::default());
    let w = Workload::start(&c, "crash", &[FlushPolicy::Sync, FlushPolicy::Async]);
    for round in 1..=ROUNDS {
        w.wait_acks(300, Duration::from_secs(30));
        c.kill9_all();
        let down_at = Instant::now();
        for i in 0..c.len() {
            c.restart(i);
        }
        for s in 0..c.shards {
            c.wait_leader(s, Duration::from_secs(20), |_| true);
        }
        eprintln!("round {round}: every node killed and restarted, leaders again after {:?}", down_at.elapsed());
    }
    w.wait_acks(300, Duration::from_secs(30));
    w.finish(&c);
}
