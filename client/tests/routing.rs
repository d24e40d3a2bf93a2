//! Leader routing against scripted nodes: each fake node is a scripted
//! server on its own port that answers the handshake with a cluster map
//! naming all of them, so a test decides exactly who leads, who refuses
//! with `NOT_LEADER` (with or without a hint), and who is down. The real
//! three-node cluster is exercised in tests/tests/cluster_client.rs.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cmq_client::retry::RETRY_ATTEMPTS_MAX;
use cmq_client::{Client, ClientError};
use cmq_protocol::*;
use support::scripted::{silent_server, Peer, ScriptedServer};
use support::CLIENT_TIMEOUT;

/// What every fake node shares: the cluster map each one hands out.
#[derive(Clone)]
struct Cluster {
    map: Arc<Mutex<ClusterMap>>,
}

impl Cluster {
    /// `n` nodes (ids 1..=n) on ephemeral ports, one shard led by `leader`
    /// in term 1; returns the listeners to serve them on.
    fn new(n: u64, leader: u64) -> (Cluster, Vec<TcpListener>) {
        let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let nodes = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| ClusterNode {
                id: i as u64 + 1,
                client_addr: l.local_addr().expect("addr").to_string(),
                peer_addr: String::new(),
            })
            .collect();
        let map = ClusterMap { node_id: 0, nodes, leaders: vec![ShardLeader { leader, term: 1 }] };
        (Cluster { map: Arc::new(Mutex::new(map)) }, listeners)
    }

    /// The map as node `id` hands it out.
    fn as_seen_by(&self, id: u64) -> ClusterMap {
        ClusterMap { node_id: id, ..self.map.lock().expect("lock").clone() }
    }

    fn set_leader(&self, leader: u64, term: u64) {
        self.map.lock().expect("lock").leaders = vec![ShardLeader { leader, term }];
    }

    fn addr(&self, id: u64) -> String {
        self.map.lock().expect("lock").nodes[id as usize - 1].client_addr.clone()
    }
}

/// What a fake node does with a send: answer it, or refuse it.
#[derive(Clone, Copy)]
enum OnSend {
    Serve,
    /// NOT_LEADER naming this node as the leader.
    Hint(u64),
    /// NOT_LEADER knowing no leader (an election).
    NoHint,
}

/// Counts per fake node.
#[derive(Default)]
struct Seen {
    sends: AtomicUsize,
    maps: AtomicUsize,
    connections: AtomicUsize,
}

/// Serves node `id` of `cluster` on `listener`: handshakes with the map,
/// answers GetClusterMap with it, Pings, and sends as `on_send(n)` says
/// for the node's n-th send.
fn node(
    cluster: &Cluster,
    id: u64,
    listener: TcpListener,
    on_send: impl Fn(usize) -> OnSend + Send + Sync + 'static,
) -> (ScriptedServer, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let (cluster, counts) = (cluster.clone(), seen.clone());
    let server = ScriptedServer::start_on(listener, move |mut peer: Peer| {
        counts.connections.fetch_add(1, Ordering::SeqCst);
        peer.accept_handshake_in(1, 0, cluster.as_seen_by(id));
        while let Some((rid, req)) = peer.read_request() {
            match req {
                Request::GetClusterMap(_) => {
                    counts.maps.fetch_add(1, Ordering::SeqCst);
                    peer.respond(rid, &Response::GetClusterMap(cluster.as_seen_by(id)));
                }
                Request::SendMessage(_) => {
                    let n = counts.sends.fetch_add(1, Ordering::SeqCst);
                    match on_send(n) {
                        OnSend::Serve => peer.respond(rid, &Response::SendMessage(SendMessageOk { msg_id: id })),
                        OnSend::Hint(leader) => {
                            let msg = not_leader_message(0, Some((leader, &cluster.addr(leader))));
                            peer.respond_error(rid, Opcode::SendMessage, ErrorCode::NOT_LEADER, &msg);
                        }
                        OnSend::NoHint => {
                            let msg = not_leader_message(0, None);
                            peer.respond_error(rid, Opcode::SendMessage, ErrorCode::NOT_LEADER, &msg);
                        }
                    }
                }
                _ => peer.respond(rid, &Response::Ping(Empty {})),
            }
        }
    });
    (server, seen)
}

fn connect(seeds: &str) -> Client {
    Client::connect_with_timeout(seeds, Some(CLIENT_TIMEOUT)).expect("connect")
}

/// A port nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

#[test]
fn a_not_leader_hint_is_followed_and_remembered() {
    // Node 1's map is stale: it names itself, but node 2 leads.
    let (cluster, mut ls) = Cluster::new(2, 1);
    let l2 = ls.pop().expect("listener");
    let (_n1, seen1) = node(&cluster, 1, ls.pop().expect("listener"), |_| OnSend::Hint(2));
    let (_n2, seen2) = node(&cluster, 2, l2, |_| OnSend::Serve);
    let mut c = connect(&cluster.addr(1));

    assert_eq!(c.send("q", "a", 0).expect("sent via the hint"), 2, "node 2 stored it");
    assert_eq!(c.leader_of(0), 2);
    assert_eq!(c.send("q", "b", 0).expect("sent"), 2);
    assert_eq!(seen1.sends.load(Ordering::SeqCst), 1, "the second send went straight to the leader");
    assert_eq!(seen2.sends.load(Ordering::SeqCst), 2);
}

#[test]
fn with_no_leader_known_the_client_backs_off_and_asks_for_the_map() {
    let (cluster, mut ls) = Cluster::new(2, 1);
    let l2 = ls.pop().expect("listener");
    // Node 1 refused as the election began; by its next map, node 2 won.
    let elected = cluster.clone();
    let (_n1, seen1) = node(&cluster, 1, ls.pop().expect("listener"), move |_| {
        elected.set_leader(2, 2);
        OnSend::NoHint
    });
    let (_n2, seen2) = node(&cluster, 2, l2, |_| OnSend::Serve);
    let mut c = connect(&cluster.addr(1));

    let started = Instant::now();
    assert_eq!(c.send("q", "a", 0).expect("sent after the election"), 2);
    assert!(started.elapsed() >= cmq_client::retry::BACKOFF_MIN, "backed off before trying again");
    assert!(seen1.maps.load(Ordering::SeqCst) >= 1, "asked for a fresh map");
    assert_eq!((seen1.sends.load(Ordering::SeqCst), seen2.sends.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(c.known_cluster().leaders[0].term, 2);
}

#[test]
fn retries_stop_at_the_deadline() {
    // An election that never ends.
    let (cluster, mut ls) = Cluster::new(1, 0);
    let (_n1, seen) = node(&cluster, 1, ls.pop().expect("listener"), |_| OnSend::NoHint);
    let mut c = connect(&cluster.addr(1));
    c.set_retry_deadline(Duration::from_millis(300));

    let started = Instant::now();
    let err = c.send("q", "a", 0).expect_err("no leader ever");
    let took = started.elapsed();
    assert_eq!(err.code(), Some(ErrorCode::NOT_LEADER), "{err}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "took {took:?}");
    let sends = seen.sends.load(Ordering::SeqCst);
    assert!((2..=RETRY_ATTEMPTS_MAX as usize).contains(&sends), "{sends} attempts");
}

#[test]
fn retries_stop_at_the_attempt_limit_when_leaders_name_each_other() {
    // Nodes 1 and 2 each name the other: no backoff, so only the count stops it.
    let (cluster, mut ls) = Cluster::new(2, 1);
    let l2 = ls.pop().expect("listener");
    let (_n1, seen1) = node(&cluster, 1, ls.pop().expect("listener"), |_| OnSend::Hint(2));
    let (_n2, seen2) = node(&cluster, 2, l2, |_| OnSend::Hint(1));
    let mut c = connect(&cluster.addr(1));

    let err = c.send("q", "a", 0).expect_err("nobody serves");
    assert!(err.is_not_leader(), "{err}");
    let attempts = seen1.sends.load(Ordering::SeqCst) + seen2.sends.load(Ordering::SeqCst);
    assert_eq!(attempts, RETRY_ATTEMPTS_MAX as usize);
}

#[test]
fn a_leader_that_refuses_connections_is_skipped_for_the_node_that_knows_better() {
    // The map names node 3, which is down; node 1's replica knows node 2 leads.
    let (cluster, mut ls) = Cluster::new(3, 3);
    drop(ls.pop()); // node 3: nothing listens there any more
    let l2 = ls.pop().expect("listener");
    let (_n1, _) = node(&cluster, 1, ls.pop().expect("listener"), |_| OnSend::Hint(2));
    let (_n2, seen2) = node(&cluster, 2, l2, |_| OnSend::Serve);
    let mut c = connect(&cluster.addr(1));
    assert_eq!(c.send("q", "a", 0).expect("sent"), 2);
    assert_eq!(seen2.sends.load(Ordering::SeqCst), 1);
}

#[test]
fn dead_and_silent_seeds_are_skipped() {
    let (cluster, mut ls) = Cluster::new(1, 1);
    let (_n1, seen) = node(&cluster, 1, ls.pop().expect("listener"), |_| OnSend::Serve);
    let (silent, _release) = silent_server();
    let seeds = format!("{},{},{}", dead_addr(), silent.addr(), cluster.addr(1));

    let started = Instant::now();
    let mut c = Client::connect_with_timeout(seeds.as_str(), Some(Duration::from_millis(300))).expect("third seed");
    assert!(started.elapsed() < Duration::from_secs(2), "a silent seed costs its timeout only");
    c.ping().expect("ping");
    assert_eq!(c.seeds().len(), 3);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

    let all_dead = format!("{},{}", dead_addr(), dead_addr());
    let err = Client::connect_with_timeout(all_dead.as_str(), Some(CLIENT_TIMEOUT)).expect_err("nobody there");
    let text = err.to_string();
    for seed in all_dead.split(',') {
        assert!(text.contains(seed), "{text}");
    }
    assert!(matches!(&err, ClientError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused), "{err:?}");
}

#[test]
fn a_keyless_send_whose_connection_is_lost_is_not_repeated_even_on_another_node() {
    // Node 1 leads and hangs up on every send; node 2 would serve.
    let (cluster, mut ls) = Cluster::new(2, 1);
    let l2 = ls.pop().expect("listener");
    let sends1 = Arc::new(AtomicU64::new(0));
    let counted = sends1.clone();
    let map = cluster.clone();
    let _n1 = ScriptedServer::start_on(ls.pop().expect("listener"), move |mut peer| {
        peer.accept_handshake_in(1, 0, map.as_seen_by(1));
        while let Some((rid, req)) = peer.read_request() {
            if matches!(req, Request::SendMessage(_)) {
                counted.fetch_add(1, Ordering::SeqCst);
                return;
            }
            peer.respond(rid, &Response::Ping(Empty {}));
        }
    });
    let (_n2, seen2) = node(&cluster, 2, l2, |_| OnSend::Serve);
    let mut c = connect(&cluster.addr(1));
    // Without an idempotency key (as a version 2 client sends).
    let keyless = Request::SendMessage(SendMessage { queue: "q".into(), body: "a".into(), ..Default::default() });
    let err = c.call(&keyless).expect_err("lost");
    assert!(matches!(err, ClientError::OutcomeUnknown { node: 1, .. }), "{err:?}");
    assert_eq!((sends1.load(Ordering::SeqCst), seen2.sends.load(Ordering::SeqCst)), (1, 0));
}

#[test]
fn a_keyed_send_whose_connection_is_lost_is_sent_again_with_the_same_key() {
    // Node 1 leads; it hangs up on the first send (having stored it, say)
    // and answers the second as the broker answers a repeated key.
    let (cluster, mut ls) = Cluster::new(2, 1);
    let l2 = ls.pop().expect("listener");
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    let map = cluster.clone();
    let _n1 = ScriptedServer::start_on(ls.pop().expect("listener"), move |mut peer| {
        peer.accept_handshake_in(1, 0, map.as_seen_by(1));
        while let Some((rid, req)) = peer.read_request() {
            match req {
                Request::SendMessage(r) => {
                    let mut k = seen.lock().expect("keys");
                    k.push(r.idempotency_key);
                    if k.len() == 1 {
                        return;
                    }
                    peer.respond(rid, &Response::SendMessage(SendMessageOk { msg_id: 42 }));
                }
                _ => peer.respond(rid, &Response::Ping(Empty {})),
            }
        }
    });
    let (_n2, _) = node(&cluster, 2, l2, |_| OnSend::Serve);
    let mut c = connect(&cluster.addr(1));
    assert_eq!(c.send("q", "a", 0).expect("sent again"), 42);
    let keys = keys.lock().expect("keys");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].len(), 16, "the client's own key");
    assert_eq!(keys[0], keys[1], "the repeat carries the same key");
}

#[test]
fn a_read_whose_connection_is_lost_is_asked_again() {
    // Node 1 leads and hangs up on the first GetQueueAttributes only.
    let (cluster, mut ls) = Cluster::new(2, 1);
    let l2 = ls.pop().expect("listener");
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let map = cluster.clone();
    let _n1 = ScriptedServer::start_on(ls.pop().expect("listener"), move |mut peer| {
        peer.accept_handshake_in(1, 0, map.as_seen_by(1));
        while let Some((rid, req)) = peer.read_request() {
            match req {
                Request::GetQueueAttributes(r) => {
                    if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                        return;
                    }
                    peer.respond(
                        rid,
                        &Response::GetQueueAttributes(QueueInfo { queue: r.queue, ..Default::default() }),
                    );
                }
                _ => peer.respond(rid, &Response::Ping(Empty {})),
            }
        }
    });
    let (_n2, _) = node(&cluster, 2, l2, |_| OnSend::Serve);
    let mut c = connect(&cluster.addr(1));
    assert_eq!(c.queue_info("q").expect("asked again").queue, "q");
    assert_eq!(asked.load(Ordering::SeqCst), 2);
}

#[test]
fn a_repeated_delete_that_finds_its_handle_spent_says_the_lost_attempt_may_have_done_it() {
    // Node 1 leads; it hangs up on the first delete (having applied it, say)
    // and answers the second as a spent handle.
    let (cluster, mut ls) = Cluster::new(2, 1);
    let l2 = ls.pop().expect("listener");
    let deletes = Arc::new(AtomicUsize::new(0));
    let counted = deletes.clone();
    let map = cluster.clone();
    let _n1 = ScriptedServer::start_on(ls.pop().expect("listener"), move |mut peer| {
        peer.accept_handshake_in(1, 0, map.as_seen_by(1));
        while let Some((rid, req)) = peer.read_request() {
            match req {
                Request::DeleteMessage(_) if counted.fetch_add(1, Ordering::SeqCst) == 0 => return,
                Request::DeleteMessage(_) => {
                    let msg = "receipt handle is invalid";
                    peer.respond_error(rid, Opcode::DeleteMessage, ErrorCode::RECEIPT_HANDLE_INVALID, msg);
                }
                _ => peer.respond(rid, &Response::Ping(Empty {})),
            }
        }
    });
    let (_n2, _) = node(&cluster, 2, l2, |_| OnSend::Serve);
    let mut c = connect(&cluster.addr(1));
    let err = c.delete_message("q", ReceiptHandle(7)).expect_err("spent");
    assert_eq!(err.code(), Some(ErrorCode::RECEIPT_HANDLE_INVALID));
    assert!(err.to_string().contains("an earlier attempt was sent to node 1"), "{err}");
    assert_eq!(deletes.load(Ordering::SeqCst), 2, "repeated once");
}
