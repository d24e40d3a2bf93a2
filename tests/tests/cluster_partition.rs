//! Issue 11: partition the leader of a shard from both followers (every
//! link to and from it blackholed at the proxies), with clients on both
//! sides: the minority side acknowledges nothing sent to it during the
//! partition; the majority elects a leader and serves; after healing, the
//! ledger holds and the replicas' digests agree.

use std::time::{Duration, Instant};

use cmq_integration_tests::{Cluster, ClusterSpec, Load, NodeConn, Reply, Router, Workload};
use cmq_protocol::*;

#[test]
fn a_partitioned_leader_acknowledges_nothing_and_the_majority_serves() {
    let mut c = Cluster::start(&ClusterSpec::default());
    let w = Workload::start(&c, "part", &[FlushPolicy::Sync, FlushPolicy::Async]);
    w.wait_acks(300, Duration::from_secs(30));

    let shard = 0;
    let old = c.wait_leader(shard, Duration::from_secs(10), |_| true);
    c.isolate(old);
    let cut_at = Instant::now();
    // Clients on the minority side: a producer and a consumer per queue that
    // stay on the old leader. A send it acknowledged would show below; a
    // receive or delete it acknowledged would come back in the drain (a
    // double lease, or a resurrected message).
    let mut minority = Load::empty();
    for q in w.queues.iter().filter(|q| c.shard_of(q) == shard) {
        minority.producer(Router::pinned(c.client_addrs(), shard, old), q, &w.ledger, &w.spec);
        minority.consumer(Router::pinned(c.client_addrs(), shard, old), q, &w.ledger);
    }

    let new = c.wait_leader(shard, Duration::from_secs(10), |i| i != old);
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.ledger.first_ack_after(shard, cut_at, old).is_none() {
        assert!(Instant::now() < deadline, "node {} was elected but no write succeeded on it", new + 1);
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "node {} cut off; node {} leads shard {shard} and serves after {:?}",
        old + 1,
        new + 1,
        w.ledger.first_ack_after(shard, cut_at, old).map(|t| t - cut_at)
    );
    w.wait_acks(300, Duration::from_secs(20));
    // The minority side has seen its leader step down (check_quorum).
    let q0 = w.queues.iter().find(|q| c.shard_of(q) == shard).expect("a queue on the shard");
    wait_not_leader(&c, old, shard, q0);
    c.assert_running();

    let heal_at = Instant::now();
    minority.stop();
    for s in 0..c.shards {
        let acked = w.ledger.acks_by_node_sent_within(s, old, cut_at, heal_at);
        assert_eq!(acked, 0, "shard {s}: the cut-off node acknowledged {acked} sends made during the partition");
    }
    c.heal();
    w.finish(&c);
}

/// Waits until `node` answers a read with NOT_LEADER (a leader cut off
/// from its group must stop serving, reads included).
fn wait_not_leader(c: &Cluster, node: usize, shard: u16, queue: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let req = Request::GetQueueAttributes(GetQueueAttributes { queue: queue.into() });
    let mut last = String::new();
    while Instant::now() < deadline {
        let reply = NodeConn::open(c.client_addrs()[node], Some(shard))
            .and_then(|(mut conn, _)| conn.call(&req, Duration::from_secs(3)));
        match reply {
            Ok(Reply::Err(_, e)) if e.code() == ErrorCode::NOT_LEADER => return,
            Ok(Reply::Ok(..)) => panic!("node {} served a read while cut off from its group", node + 1),
            other => last = format!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("node {} never answered NOT_LEADER while cut off: {last}", node + 1);
}

/// A node cut off from its group still answers what depends on no
/// replicated state: Ping, the cluster map and its own ClusterStatus (an
/// operator asks the partitioned node what it sees; a health check pings).
#[test]
fn a_cut_off_node_still_answers_ping_map_and_status() {
    let c = Cluster::start(&ClusterSpec::default());
    let leader = c.wait_leader(0, Duration::from_secs(10), |_| true);
    let cut = (0..c.len()).find(|&i| i != leader).expect("a follower");
    c.isolate(cut);
    // Long enough that it knows no leader any more (check_quorum, elections).
    c.wait_leader(0, Duration::from_secs(10), |i| i != cut);
    let requests =
        [Request::Ping(Ping {}), Request::GetClusterMap(GetClusterMap {}), Request::ClusterStatus(ClusterStatus {})];
    for req in requests {
        let reply = NodeConn::open(c.client_addrs()[cut], None)
            .and_then(|(mut conn, _)| conn.call(&req, Duration::from_secs(5)));
        assert!(matches!(reply, Ok(Reply::Ok(..))), "node {} cut off: {:?} got {reply:?}", cut + 1, req.opcode());
    }
    c.heal();
}
