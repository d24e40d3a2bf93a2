//! Issue 12, item 4, the peer port: TLS between the nodes of a cluster
//! (`--peer-tls-cert/--peer-tls-key/--peer-tls-ca`). Three real `cmqd`
//! nodes with certificates from the tests' own CA elect, replicate and
//! survive a leader kill, and the proxies in front of every peer listener
//! never see a message body; a node whose certificate comes from another
//! CA, and a node without peer TLS, are refused with a log line saying
//! why, on both sides, and never join.

use std::time::{Duration, Instant};

use cmq_client::Client;
use cmq_integration_tests::cluster::random_u64;
use cmq_integration_tests::tls::TestPki;
use cmq_integration_tests::{Cluster, ClusterSpec};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Generous: the machine runs other tests meanwhile.
const WITHIN: Duration = Duration::from_secs(20);

fn spec(shards: u16) -> ClusterSpec {
    ClusterSpec { nodes: 3, shards, ..Default::default() }
}

fn client(c: &Cluster) -> Client {
    let seeds: Vec<String> = c.client_addrs().iter().map(|a| a.to_string()).collect();
    Client::connect_with_timeout(seeds.join(",").as_str(), Some(CLIENT_TIMEOUT)).expect("connect")
}

/// Watches every peer link for `pattern`; returns (chunks carrying it, bytes seen).
fn wire(c: &Cluster, pattern: Option<&[u8]>) -> (u64, u64) {
    let (mut hits, mut bytes) = (0, 0);
    for a in 0..c.len() {
        for b in (0..c.len()).filter(|&b| b != a) {
            if let Some(p) = pattern {
                c.link(a, b).watch(p);
            }
            hits += c.link(a, b).watch_hits();
            bytes += c.link(a, b).bytes_seen();
        }
    }
    (hits, bytes)
}

/// Sends `body` and receives it back (whichever node leads); returns what came back.
fn round_trip(cl: &mut Client, queue: &str, body: &str) -> String {
    cl.send(queue, body.to_owned(), 0).expect("send");
    let m = cl.receive(queue, Some(5)).expect("receive").expect("a message");
    cl.delete_message(queue, m.receipt_handle).expect("delete");
    String::from_utf8_lossy(&m.body).into_owned()
}

/// Polls until node `i`'s log has a line containing every one of `words`.
fn wait_log_line(c: &Cluster, i: usize, words: &[&str]) -> String {
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(line) = c.log(i).lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "node {} never logged {words:?}; its log:\n{}", i + 1, c.log(i));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_tls_cluster_replicates_survives_a_leader_kill_and_hides_bodies_on_the_wire() {
    let pki = TestPki::new();
    let mut c = Cluster::start(&ClusterSpec { extra_args: pki.peer_args(), ..spec(2) });
    let queue = "peer-tls";
    c.create_queue(queue, Default::default());
    let shard = c.shard_of(queue);
    let secret = format!("peer-tls-secret-{:016x}", random_u64());
    let (_, before) = wire(&c, Some(secret.as_bytes()));

    let mut cl = client(&c);
    cl.send(queue, secret.clone(), 0).expect("send");
    // Every replica applied the send: it crossed the peer links.
    c.wait_converged(WITHIN);
    let (hits, after) = wire(&c, None);
    assert!(after > before, "no replication traffic crossed the proxies");
    assert_eq!(hits, 0, "the message body crossed a peer link in plaintext");

    // The leader dies; another node (which has the message) takes over.
    let victim = c.wait_leader(shard, WITHIN, |_| true);
    c.kill9(victim);
    c.wait_leader(shard, WITHIN, |i| i != victim);
    let mut cl = client(&c);
    let m = cl.receive(queue, Some(5)).expect("receive").expect("the replicated message");
    assert_eq!(String::from_utf8_lossy(&m.body), secret);
    cl.delete_message(queue, m.receipt_handle).expect("delete");
    assert_eq!(round_trip(&mut cl, queue, &format!("{secret}-after-kill")), format!("{secret}-after-kill"));

    // The restarted node redials over TLS and catches up.
    c.restart(victim);
    c.wait_converged(WITHIN);
    assert_eq!(wire(&c, None).0, 0, "a body crossed a peer link in plaintext");
    for i in 0..c.len() {
        let log = c.log(i);
        assert!(!log.contains("handshake failed: TLS") && !log.contains("TLS_REQUIRED"), "node {}:\n{log}", i + 1);
    }
    assert!(c.log(0).contains("(peer TLS: mutual TLS 1.3 on every peer link)"), "no peer TLS start-up line");
    c.assert_no_panics();
}

/// The proxies' watch does find a body on plaintext links: the check above
/// would catch TLS being off.
#[test]
fn without_peer_tls_the_wire_shows_the_body() {
    let mut c = Cluster::start(&spec(1));
    c.create_queue("peer-plain", Default::default());
    let secret = format!("peer-plain-secret-{:016x}", random_u64());
    wire(&c, Some(secret.as_bytes()));
    client(&c).send("peer-plain", secret.clone(), 0).expect("send");
    c.wait_converged(WITHIN);
    assert!(wire(&c, None).0 > 0, "the watch did not see a plaintext body");
    c.kill9_all();
}

#[test]
fn a_node_with_a_certificate_from_another_ca_is_refused_and_logged() {
    let pki = TestPki::new();
    let (good, stranger) = (pki.peer_args(), pki.stranger_peer_args());
    let mut c = Cluster::start_with(&spec(1), |i| if i == 2 { stranger.clone() } else { good.clone() });
    // Nodes 1 and 2 refuse node 3's certificate when they dial it, and say why.
    wait_log_line(&c, 0, &["peer link to node 3", "invalid peer certificate"]);
    // Node 3 refuses theirs, and their acceptors log the failed handshake.
    wait_log_line(&c, 2, &["peer link to node 1", "invalid peer certificate"]);
    wait_log_line(&c, 0, &["peer acceptor: refused the connection", "TLS"]);
    // The other two form the cluster; node 3 never learns a leader.
    c.create_queue("peer-tls-stranger", Default::default());
    let mut cl = client(&c);
    assert_eq!(round_trip(&mut cl, "peer-tls-stranger", "between 1 and 2"), "between 1 and 2");
    let st = c.status(2).expect("node 3 answers");
    assert_eq!(st.shards[0].leader, 0, "node 3 joined: {st:?}");
    assert_eq!(st.shards[0].commit, 0, "node 3 got entries: {st:?}");
    c.assert_no_panics();
    c.kill9_all();
}

#[test]
fn a_plaintext_node_cannot_join_a_tls_cluster() {
    let pki = TestPki::new();
    let good = pki.peer_args();
    let mut c = Cluster::start_with(&spec(1), |i| if i == 2 { Vec::new() } else { good.clone() });
    // Node 3 dials in plaintext: refused with TLS_REQUIRED, logged on both sides.
    wait_log_line(&c, 0, &["peer acceptor: refused the connection", "TLS_REQUIRED"]);
    wait_log_line(&c, 2, &["peer link to node 1", "refused by the peer: TLS_REQUIRED"]);
    // Nodes 1 and 2 dial node 3 with TLS: it refuses, and they say what is likely wrong.
    wait_log_line(&c, 2, &["peer acceptor: refused the connection", "started a TLS handshake"]);
    wait_log_line(&c, 0, &["peer link to node 3", "peer TLS"]);
    c.create_queue("peer-tls-plain", Default::default());
    let st = c.status(2).expect("node 3 answers");
    assert_eq!((st.shards[0].leader, st.shards[0].commit), (0, 0), "node 3 joined: {st:?}");
    c.assert_no_panics();
    c.kill9_all();
}
