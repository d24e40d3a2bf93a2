//! The Rust client, `cmq` and `cmq-loadgen` against three real `cmqd`
//! nodes: given the seed list of all three, they find each shard's leader,
//! and keep working when a leader is killed (kill -9) and another node is
//! elected. A small local start helper; the shared cluster harness
//! (tests/src/cluster.rs) covers the replication tests themselves.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{Client, ClientError, ClusterView};
use cmq_integration_tests::broker::cmqd_path;
use cmq_integration_tests::Broker;
use cmq_protocol::names::shard_for;
use serde_json::Value;

/// Shards per node: two groups, so a kill moves one leader and not the other.
const SHARDS: u16 = 2;

/// Generous bounds for a machine that runs other tests meanwhile.
const ELECTION_WITHIN: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

struct Cluster {
    nodes: Vec<Broker>,
    peer_ports: Vec<u16>,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes (ids 1..=3) on 127.0.0.1, each with its own data dir,
    /// sharing a cluster key; returns once every shard has a leader.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, b"cluster-client-test-key-0123456789").expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        // Reserved by binding and releasing: the peer list is needed up front.
        let peer_ports: Vec<u16> = (0..3).map(|_| cmq_integration_tests::reserve_port()).collect();
        let nodes = (1..=3u64).map(|id| start_node(dir.path(), &key, id, &peer_ports)).collect();
        let cluster = Cluster { nodes, peer_ports, key, _dir: dir };
        cluster.wait_for_leaders(&[]);
        cluster
    }

    fn seeds(&self) -> String {
        self.nodes.iter().map(Broker::addr_string).collect::<Vec<_>>().join(",")
    }

    fn node(&mut self, id: u64) -> &mut Broker {
        &mut self.nodes[id as usize - 1]
    }

    /// Polls until every shard has a leader that is not in `dead`.
    fn wait_for_leaders(&self, dead: &[u64]) -> ClusterView {
        let deadline = Instant::now() + ELECTION_WITHIN;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            let view = Client::connect_with_timeout(self.seeds().as_str(), Some(CLIENT_TIMEOUT))
                .and_then(|mut c| c.cluster_status());
            match view {
                Ok(v)
                    if (0..SHARDS).all(|k| {
                        v.shard(k).is_some_and(|s| s.status.leader != 0 && !dead.contains(&s.status.leader))
                    }) =>
                {
                    return v
                }
                Ok(v) => {
                    last = format!("{:?}", (0..SHARDS).map(|k| v.shard(k).map(|s| s.status.leader)).collect::<Vec<_>>())
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no leader for every shard within {ELECTION_WITHIN:?}: {last}");
    }
}

fn start_node(dir: &Path, key: &Path, id: u64, peer_ports: &[u16]) -> Broker {
    let peers: Vec<(u64, u16)> = (1..=3u64).filter(|p| *p != id).map(|p| (p, peer_ports[p as usize - 1])).collect();
    start_node_with(dir, key, id, peer_ports[id as usize - 1], &peers)
}

/// Node `id` listening for peers on `peer_port`, told of `peers` (id, peer port).
fn start_node_with(dir: &Path, key: &Path, id: u64, peer_port: u16, peers: &[(u64, u16)]) -> Broker {
    let peers: Vec<String> = peers.iter().map(|(p, port)| format!("{p}=127.0.0.1:{port}")).collect();
    let args = [
        "--node-id".to_owned(),
        id.to_string(),
        "--peer-listen".to_owned(),
        format!("127.0.0.1:{peer_port}"),
        "--peers".to_owned(),
        peers.join(","),
        "--cluster-key-file".to_owned(),
        key.display().to_string(),
        "--shards".to_owned(),
        SHARDS.to_string(),
        "--segment-bytes".to_owned(),
        "17825792".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start_in(&dir.join(format!("node{id}")), &args)
}

/// One queue name per shard: `names[k]` lives on shard k.
fn queue_per_shard() -> Vec<String> {
    (0..SHARDS)
        .map(|k| (0..).map(|i| format!("q{k}-{i}")).find(|n| shard_for(n, SHARDS) == k).expect("a name"))
        .collect()
}

fn bin(name: &str) -> PathBuf {
    let p = cmqd_path().with_file_name(name);
    assert!(p.exists(), "{} not found: run `cargo build --bins` first (make test does)", p.display());
    p
}

fn cmq(seeds: &str, args: &[&str]) -> Output {
    Command::new(bin("cmq")).args(["--server", seeds, "--timeout", "10"]).args(args).output().expect("run cmq")
}

/// Receives and deletes everything in `queue`; returns the bodies.
fn drain(c: &mut Client, queue: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let batch = c.receive_batch(queue, 16, Some(1)).expect("receive");
        if batch.is_empty() {
            return got;
        }
        let handles: Vec<_> = batch.iter().map(|m| m.receipt_handle).collect();
        for r in c.delete_batch(queue, &handles).expect("delete") {
            assert_eq!(r.code, 0, "delete: {r:?}");
        }
        got.extend(batch.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
    }
}

#[test]
fn the_client_and_cli_follow_leaders_through_a_leader_kill() {
    let mut cluster = Cluster::start();
    let seeds = cluster.seeds();
    let queues = queue_per_shard();
    // A dead first seed costs nothing but a refused connect.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut c =
        Client::connect_with_timeout(format!("{dead},{seeds}").as_str(), Some(CLIENT_TIMEOUT)).expect("connect");
    assert_eq!(c.shard_count(), SHARDS);

    // Acknowledged sends per queue (the ledger), and sends of unknown outcome.
    let mut acked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unknown: Vec<String> = Vec::new();
    for q in &queues {
        c.create_queue(q, &Default::default()).expect("create");
        for i in 0..10 {
            let body = format!("{q} before {i}");
            c.send(q, body.clone(), 0).expect("send");
            acked.entry(q.clone()).or_default().push(body);
        }
    }
    let bodies: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("{} batch {i}", queues[1]))).collect();
    c.send_batch(&queues[1], &bodies, 0).expect("batch send");
    acked.entry(queues[1].clone()).or_default().extend(bodies.iter().map(|b| String::from_utf8_lossy(b).into_owned()));

    // Requests went to each shard's leader: the leaders' connections carry them.
    let view = c.cluster_status().expect("status");
    for k in 0..SHARDS {
        let leader = view.shard(k).expect("shard").status.leader;
        assert_eq!(c.leader_of(k), leader, "shard {k}");
        let conn = c.connection(k).expect("a connection per shard");
        let at = cluster.node(leader).addr;
        assert_eq!(conn.peer_addr(), at, "shard {k}'s connection goes to its leader, node {leader}");
    }

    // `cmq cluster status` shows every shard's leader and every node.
    let out = cmq(&seeds, &["cluster", "status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    for k in 0..SHARDS {
        let leader = view.shard(k).expect("shard").status.leader.to_string();
        let row = text.lines().find(|l| l.split_whitespace().next() == Some(&k.to_string()) && l.contains("same"));
        let row = row.unwrap_or_else(|| panic!("no row for shard {k}:\n{text}"));
        assert_eq!(row.split_whitespace().nth(1), Some(leader.as_str()), "{text}");
    }

    // Kill shard 0's leader; the same client keeps going.
    let victim = view.shard(0).expect("shard 0").status.leader;
    cluster.node(victim).kill9();
    let killed = Instant::now();
    let mut n = 0;
    loop {
        let body = format!("{} after {n}", queues[0]);
        n += 1;
        match c.send(&queues[0], body.clone(), 0) {
            Ok(_) => {
                acked.entry(queues[0].clone()).or_default().push(body);
                break;
            }
            // Sent to the dying leader: it may or may not have stored it.
            Err(ClientError::OutcomeUnknown { .. }) => unknown.push(body),
            Err(e) => assert!(killed.elapsed() < ELECTION_WITHIN, "no new leader for shard 0: {e}"),
        }
    }
    eprintln!("shard 0 took a send {:?} after its leader was killed", killed.elapsed());
    for q in &queues {
        for i in 0..5 {
            let body = format!("{q} later {i}");
            c.send(q, body.clone(), 0).expect("the new leaders serve");
            acked.entry(q.clone()).or_default().push(body);
        }
    }
    let view = cluster.wait_for_leaders(&[victim]);
    assert_ne!(c.leader_of(0), victim);

    let out = cmq(&seeds, &["--json", "cluster", "status"]);
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).expect("json");
    for (k, s) in status["shards"].as_array().expect("shards").iter().enumerate() {
        assert_eq!(s["leader"].as_u64(), Some(view.shard(k as u16).expect("shard").status.leader), "{status}");
    }
    let down = &status["nodes"][victim as usize - 1];
    assert!(down["error"].is_string(), "the killed node is reported unreachable: {status}");

    // Every acknowledged message is there exactly once; unknown ones at most once.
    for q in &queues {
        let mut got = drain(&mut c, q);
        got.sort();
        let mut want = acked[q].clone();
        want.sort();
        let extra: Vec<&String> = got.iter().filter(|b| !want.contains(b)).collect();
        assert!(extra.iter().all(|b| unknown.contains(b)), "{q}: unexpected {extra:?}");
        got.retain(|b| want.contains(b));
        assert_eq!(got, want, "{q}: every acknowledged message exactly once");
    }
}

#[test]
fn loadgen_follows_leaders_through_a_leader_kill() {
    let mut cluster = Cluster::start();
    let seeds = cluster.seeds();
    let report = tempfile::NamedTempFile::new().expect("temp file");
    // A short visibility timeout: messages leased by receives whose answer
    // died with the leader come back within the drain.
    let child = Command::new(bin("cmq-loadgen"))
        .args(["--server", &seeds, "--duration", "4", "--warmup", "0", "--verify", "--pipeline", "8"])
        .args(["--visibility-timeout", "2"])
        .args(["--producers", "2", "--consumers", "2", "--threads", "1", "--json"])
        .arg(report.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cmq-loadgen");

    // Once load flows, kill shard 0's leader.
    let mut c = Client::connect_with_timeout(seeds.as_str(), Some(CLIENT_TIMEOUT)).expect("connect");
    let deadline = Instant::now() + ELECTION_WITHIN;
    let flowing = |c: &mut Client| {
        c.list_queues("loadgen", "", 0, 0).is_ok_and(|l| l.total >= u32::from(SHARDS))
            && c.cluster_status().is_ok_and(|v| v.shard(0).is_some_and(|s| s.status.commit > 10))
    };
    while !flowing(&mut c) {
        assert!(Instant::now() < deadline, "the load generator never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = c.cluster_status().expect("status").shard(0).expect("shard 0").status.leader;
    cluster.node(victim).kill9();

    let out = child.wait_with_output().expect("cmq-loadgen ends");
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let describe = || {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}\nreport: {text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert_eq!(out.status.code(), Some(0), "{}", describe());
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {}", describe()));
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64()), (Some(0), Some(0)), "{}", describe());
    assert!(r["acked_total"].as_u64().is_some_and(|n| n > 0), "{}", describe());
    let errors = r["errors"].as_object().expect("errors");
    let saw_kill = ["not leader, resent", "outcome unknown (connection lost)", "disconnected"];
    assert!(saw_kill.iter().any(|k| errors.contains_key(*k)), "it went through the kill: {}", describe());
}

/// Every shard's voters, as its leader reports them.
fn voters(seeds: &str) -> Vec<Vec<u64>> {
    let out = cmq(seeds, &["--json", "cluster", "status"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let shards = v["shards"].as_array().expect("shards");
    shards.iter().map(|s| s["voters"].as_array().expect("voters").iter().filter_map(Value::as_u64).collect()).collect()
}

#[test]
fn a_dead_node_is_replaced_through_the_cli() {
    let mut cluster = Cluster::start();
    let seeds = cluster.seeds();
    cluster.node(3).kill9();
    let out = cmq(&seeds, &["cluster", "remove-node", "--id", "3"]);
    assert!(out.status.success(), "{out:?}");
    assert!(voters(&seeds).iter().all(|v| v == &[1, 2]), "{:?}", voters(&seeds));

    // A fresh node 4 joins in its place.
    let port4 = cmq_integration_tests::reserve_port();
    let peers = [(1, cluster.peer_ports[0]), (2, cluster.peer_ports[1])];
    let dir = cluster._dir.path().to_owned();
    cluster.nodes.push(start_node_with(&dir, &cluster.key, 4, port4, &peers));
    let out = cmq(&seeds, &["cluster", "add-node", "--id", "4", "--peer-addr", &format!("127.0.0.1:{port4}")]);
    assert!(out.status.success(), "{out:?}");
    assert!(voters(&seeds).iter().all(|v| v == &[1, 2, 4]), "{:?}", voters(&seeds));

    let mut c = Client::connect_with_timeout(seeds.as_str(), Some(CLIENT_TIMEOUT)).expect("connect");
    for q in queue_per_shard() {
        c.create_queue(&q, &Default::default()).expect("create");
        c.send(&q, "after the replacement", 0).expect("send");
        assert_eq!(drain(&mut c, &q), vec!["after the replacement".to_owned()]);
    }
}
