//! Issue 11: kill -9 the leader of a shard under load (pipelined producers
//! and consumers on both shards): a new leader serves within 2 s (default
//! Raft tick, 50 ms); after the dead node restarts and catches up, the drain
//! returns every acknowledged, undeleted message, no acknowledged delete
//! comes back, and all three replicas hold the same state.

use std::time::{Duration, Instant};

use cmq_integration_tests::{Cluster, ClusterSpec, Workload};
use cmq_protocol::FlushPolicy;

/// The bound on failover: kill to first acknowledged write.
const FAILOVER_MAX: Duration = Duration::from_secs(2);

#[test]
fn a_killed_leader_is_replaced_within_two_seconds_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::start(&ClusterSpec::default());
    let w = Workload::start(&c, "failover", &[FlushPolicy::Sync, FlushPolicy::Async]);
    w.wait_acks(400, Duration::from_secs(30));

    let victim = c.wait_leader(0, Duration::from_secs(10), |_| true);
    let led: Vec<u16> = (0..c.shards).filter(|&s| c.leader_of(s) == Some(victim)).collect();
    let killed_at = Instant::now();
    c.kill9(victim);
    for &shard in &led {
        let first = poll(Duration::from_secs(20), || w.ledger.first_ack_after(shard, killed_at, victim))
            .unwrap_or_else(|| panic!("no write on shard {shard} succeeded within 20 s of killing its leader"));
        let took = first - killed_at;
        eprintln!("shard {shard}: node {} killed, first write acknowledged by a new leader after {took:?}", victim + 1);
        assert!(took < FAILOVER_MAX, "shard {shard}: failover took {took:?}");
    }
    w.wait_acks(300, Duration::from_secs(20));

    c.restart(victim);
    w.wait_acks(300, Duration::from_secs(20));
    w.finish(&c);
}

/// Polls `f` every 10 ms until it gives a value or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
