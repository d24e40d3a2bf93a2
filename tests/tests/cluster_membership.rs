//! Membership (issue 11): a node added to a running group with `--join`
//! catches up from the leader's snapshot plus the log after it, a dead node
//! is removed, and the joined node holds everything (it serves every
//! undeleted message once it leads). The lagging-follower snapshot case is
//! `cluster_snapshot.rs`.
//!
//! Real `cmqd` processes on loopback, one shard each (one Raft group).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::protocol::{AddNode, ClusterStatus, ClusterStatusOk, RemoveNode, Request, Response};
use cmq_client::{Client, ClientError, ErrorCode, QueueAttributesUpdate};
use cmq_integration_tests::Broker;
use cmq_protocol::FlushPolicy;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Elections, joins and catch-up on 2 busy cores: generous, never slept.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
const SEGMENT_BYTES: u64 = 17_825_792;
const QUEUE: &str = "orders";

struct Node {
    id: u64,
    peer_addr: SocketAddr,
    broker: Broker,
}

fn key_file(dir: &Path) -> String {
    let path = dir.join("cluster.key");
    std::fs::write(&path, b"snapshot-test-cluster-key-0123456789").expect("write key");
    let mut perms = std::fs::metadata(&path).expect("key").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&path, perms).expect("chmod key");
    path.display().to_string()
}

fn start_node(root: &Path, id: u64, peer_addr: SocketAddr, peers: &[(u64, SocketAddr)], key: &str, join: bool) -> Node {
    let peers: Vec<String> = peers.iter().filter(|(p, _)| *p != id).map(|(p, a)| format!("{p}={a}")).collect();
    let mut args: Vec<String> = [
        "--node-id",
        &id.to_string(),
        "--peer-listen",
        &peer_addr.to_string(),
        "--peers",
        &peers.join(","),
        "--cluster-key-file",
        key,
        "--shards",
        "1",
        "--segment-bytes",
        &SEGMENT_BYTES.to_string(),
        "--raft-tick-ms",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if join {
        args.push("--join".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start_in(&root.join(format!("node{id}")), &args);
    Node { id, peer_addr, broker }
}

fn start_cluster(root: &Path, key: &str) -> Vec<Node> {
    let addrs: Vec<(u64, SocketAddr)> = (1..=3).map(|id| (id, cmq_integration_tests::reserve_addr())).collect();
    addrs.iter().map(|(id, a)| start_node(root, *id, *a, &addrs, key, false)).collect()
}

fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
    Client::connect_with_timeout(addr, Some(CALL_TIMEOUT))
}

fn status(addr: SocketAddr) -> Option<ClusterStatusOk> {
    let r = connect(addr).and_then(|mut c| c.call(&Request::ClusterStatus(ClusterStatus {})));
    match r {
        Ok(Response::ClusterStatus(s)) => Some(s),
        Ok(other) => panic!("ClusterStatus answered {other:?}"),
        Err(e) => {
            eprintln!("cluster status from {addr}: {e}");
            None
        }
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node leading shard 0, as every live node sees it.
fn leader<'a>(nodes: &'a [Node], live: &[u64]) -> &'a Node {
    let id = wait_for("a leader every live node knows", || {
        let leaders: Vec<u64> = nodes
            .iter()
            .filter(|n| live.contains(&n.id))
            .map(|n| status(n.broker.addr).map_or(0, |s| s.shards[0].leader))
            .collect();
        let l = leaders[0];
        // Each node reports its own view at once (ClusterStatus waits for no
        // ReadIndex round), so just after a kill they may all still name the
        // dead leader: only a live one counts.
        (live.contains(&l) && leaders.iter().all(|x| *x == l)).then_some(l)
    });
    nodes.iter().find(|n| n.id == id).expect("the leader is one of ours")
}

/// Waits until every live node has applied the leader's commit index and
/// reports the leader's digest; returns that digest.
fn converged(nodes: &[Node], live: &[u64]) -> u64 {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        let all: Vec<_> = nodes.iter().filter(|n| live.contains(&n.id)).map(|n| status(n.broker.addr)).collect();
        if let Some(all) = all.iter().cloned().collect::<Option<Vec<_>>>() {
            let lead = all.iter().find(|s| s.shards[0].followers.len() + 1 >= live.len());
            if let Some(lead) = lead {
                let (commit, digest) = (lead.shards[0].commit, lead.shards[0].digest);
                if all.iter().all(|s| s.shards[0].applied >= commit && s.shards[0].digest == digest) {
                    return digest;
                }
            }
        }
        if Instant::now() > deadline {
            for (n, s) in nodes.iter().filter(|n| live.contains(&n.id)).zip(&all) {
                let log = n.broker.stderr();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!(
                    "node {} at {}: {:?}\n{}",
                    n.id,
                    n.broker.addr,
                    s.as_ref().map(|s| &s.shards),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!("timed out waiting for every replica of {live:?} to apply the same entries");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call_ok(addr: SocketAddr, req: Request) {
    wait_for("the membership change to be accepted", || match connect(addr).ok()?.call(&req) {
        Ok(_) => Some(()),
        Err(e) if e.code() == Some(ErrorCode::BUSY) => None,
        Err(e) => panic!("{req:?}: {e}"),
    })
}

fn sync_queue() -> QueueAttributesUpdate {
    QueueAttributesUpdate { visibility_timeout: Some(600), flush_policy: Some(FlushPolicy::Sync), ..Default::default() }
}

/// Receives and deletes up to `n` messages; returns how many.
fn drain(c: &mut Client, n: usize) -> usize {
    try_drain(c, n).expect("drain")
}

fn try_drain(c: &mut Client, n: usize) -> Result<usize, ClientError> {
    let mut done = 0;
    while done < n {
        let max = (n - done).min(16) as u16;
        let got = c.receive_batch(QUEUE, max, Some(0))?;
        if got.is_empty() {
            break;
        }
        let handles: Vec<_> = got.iter().map(|m| m.receipt_handle).collect();
        let results = c.delete_batch(QUEUE, &handles)?;
        assert!(results.iter().all(|r| r.code == 0), "every delete succeeds: {results:?}");
        done += handles.len();
    }
    Ok(done)
}

#[test]
fn a_joining_node_catches_up_by_snapshot_and_replaces_a_dead_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let key = key_file(tmp.path());
    let mut nodes = start_cluster(tmp.path(), &key);
    let live = [1, 2, 3];
    let l = leader(&nodes, &live).broker.addr;
    let mut c = connect(l).expect("connect to the leader");
    c.create_queue(QUEUE, &sync_queue()).expect("create queue");
    let body = Bytes::from(vec![7u8; 512]);
    for _ in 0..50 {
        c.send_batch(QUEUE, &vec![body.clone(); 8], 0).expect("send");
    }
    assert_eq!(drain(&mut c, 100), 100);
    converged(&nodes, &live);

    // Node 4 joins with an empty data directory and no members known.
    let peers: Vec<(u64, SocketAddr)> = nodes.iter().map(|n| (n.id, n.peer_addr)).collect();
    let addr4 = cmq_integration_tests::reserve_addr();
    let mut all = peers.clone();
    all.push((4, addr4));
    nodes.push(start_node(tmp.path(), 4, addr4, &all, &key, true));
    call_ok(l, Request::AddNode(AddNode { id: 4, peer_addr: addr4.to_string() }));
    let live = [1, 2, 3, 4];
    let digest = converged(&nodes, &live);
    let n4 = &nodes[3];
    // (Its log is read by another thread: the line may trail the status.)
    wait_for("node 4's log to show it started from a snapshot", || {
        n4.broker.stderr().contains("installed a snapshot").then_some(())
    });
    assert_eq!(status(n4.broker.addr).expect("status").shards[0].voters, vec![1, 2, 3, 4]);
    assert_ne!(digest, 0);

    // Node 3 dies for good and is removed; the group of 1, 2, 4 serves.
    let dead = (0..3).rev().find(|i| nodes[*i].broker.addr != l).expect("a follower");
    nodes[dead].broker.kill9();
    let dead_id = nodes[dead].id;
    let l = leader(&nodes, &[1, 2, 3, 4].into_iter().filter(|i| *i != dead_id).collect::<Vec<_>>()).broker.addr;
    call_ok(l, Request::RemoveNode(RemoveNode { id: dead_id }));
    let live: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != dead_id).collect();
    let mut c = connect(l).expect("connect to the leader");
    for _ in 0..10 {
        c.send_batch(QUEUE, &vec![body.clone(); 8], 0).expect("send after the change");
    }
    converged(&nodes, &live);
    let voters = status(l).expect("status").shards[0].voters.clone();
    assert_eq!(voters, live, "the dead node left the group");

    // The joined node holds everything: it can lead and serve every message.
    let leader_node = nodes.iter_mut().find(|n| n.broker.addr == l).expect("leader");
    leader_node.broker.kill9();
    let killed = leader_node.id;
    let rest: Vec<u64> = live.iter().copied().filter(|i| *i != killed).collect();
    let l = leader(&nodes, &rest).broker.addr;
    let mut c = connect(l).expect("connect to the new leader");
    assert_eq!(drain(&mut c, 10_000), 400 - 100 + 80, "every undeleted message survives");
}
