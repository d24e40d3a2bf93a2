//! The CMQ API gateway of a 3-node cluster whose client ports serve TLS
//! (`--tls-cert`), with certificates from the tests' own CA: a follower
//! forwards to the shard's leader over TLS (trusting `--peer-tls-ca`, and
//! presenting its `--peer-tls-cert` to a leader that requires client
//! certificates), signed and anonymous, over HTTPS from Rust; the forward
//! metrics count it. Without a CA to trust, a follower does not forward:
//! the documented 6000 naming the leader, counted as `off`, and a log line
//! at start saying why. A leader requiring client certificates from a
//! follower with none to present: 6000 "could not be reached", counted as
//! `unreachable`.

#[allow(dead_code)] // `Signer::call` speaks plain HTTP; this file speaks HTTPS.
mod cmq_signer;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmq_integration_tests::tls::TestPki;
use cmq_integration_tests::{Cluster, ClusterSpec, Reply};
use cmq_protocol::{CreateKey, Request, Response};
use cmq_signer::{code, Signer, ANSWER_TIMEOUT};
use rustls::pki_types::ServerName;

/// Longest a test waits for the cluster to do something (leaders, keys).
const WITHIN: Duration = Duration::from_secs(20);

const QUEUE: &str = "tq";

/// HTTPS to the nodes' HTTP ports (the client port's certificate, and its
/// client-certificate requirement, apply to both ports).
struct Https {
    tls: Arc<rustls::ClientConfig>,
}

impl Https {
    /// One request (`Connection: close`); the answer's head and body.
    fn exchange(&self, addr: SocketAddr, head: &str, body: &str) -> (String, String) {
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).expect("TLS session");
        let tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        tcp.set_read_timeout(Some(ANSWER_TIMEOUT)).expect("timeout");
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(format!("{head}Host: {addr}\r\nConnection: close\r\n").as_bytes()).expect("write head");
        s.write_all(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).expect("write body");
        let mut reply = Vec::new();
        // The server may close without close_notify: what was read counts.
        let _ = s.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        (head.to_owned(), body.to_owned())
    }

    /// A signed CMQ API request; the JSON answer.
    fn call(&self, addr: SocketAddr, signer: &Signer, params: &[(&str, &str)]) -> serde_json::Value {
        let body = signer.body(&addr.to_string(), params);
        let (_, json) = self.exchange(addr, "POST /v2/index.php HTTP/1.1\r\n", &body);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
    }

    /// Sample `series` (name and labels as the page writes them) of node
    /// `addr`'s `/metrics`; 0 when absent.
    fn metric(&self, addr: SocketAddr, series: &str) -> f64 {
        let (_, page) = self.exchange(addr, "GET /metrics HTTP/1.1\r\n", "");
        let value = page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok());
        value.unwrap_or(0.0)
    }
}

const ANSWERED: &str = "cmq_http_forwarded_total{outcome=\"answered\"}";
const OFF: &str = "cmq_http_forwarded_total{outcome=\"off\"}";
const CONNECTIONS: &str = "cmq_http_forward_connections";

fn start(pki: &TestPki, client_ports: Vec<String>, with_cert: bool, more: &[String]) -> Cluster {
    let mut extra_args = client_ports;
    extra_args.extend(more.iter().cloned());
    extra_args.extend(["--auth".into(), "optional".into()]);
    let spec = ClusterSpec { extra_args, client_tls: Some(pki.client_config(with_cert)), ..ClusterSpec::default() };
    let c = Cluster::start(&spec);
    c.create_queue(QUEUE, Default::default());
    // Every node knows the leaders (else a follower answers "no leader yet").
    c.wait_converged(WITHIN);
    c
}

/// The queue's leader and the two followers.
fn roles(c: &Cluster) -> (usize, usize, usize) {
    let leader = c.wait_leader(c.shard_of(QUEUE), WITHIN, |_| true);
    let followers: Vec<usize> = (0..c.len()).filter(|&i| i != leader).collect();
    (leader, followers[0], followers[1])
}

/// Creates a key allowed everything, on shard 0's leader (over TLS).
fn create_key(c: &Cluster) -> Signer {
    let leader = c.wait_leader(0, WITHIN, |_| true);
    let policy = r#"{"version":"2.0","statement":[{"effect":"allow","action":["cmq:*"],"resource":["*"]}]}"#;
    let req = Request::CreateKey(CreateKey { name: "app".into(), policy: policy.into() });
    let (mut conn, _) = c.node_conn(leader, Some(0)).expect("TLS connection to shard 0's leader");
    match conn.call(&req, Duration::from_secs(10)).expect("CreateKey answered") {
        Reply::Ok(_, Response::CreateKey(k)) => Signer { secret_id: k.secret_id, secret_key: k.secret_key },
        other => panic!("CreateKey: {other:?}"),
    }
}

/// Send on `from`, receive on `to`, delete on `from` again; all answered 0.
fn cycle(https: &Https, c: &Cluster, s: &Signer, (from, to): (usize, usize), body: &str) {
    let send = [("Action", "SendMessage"), ("queueName", QUEUE), ("msgBody", body)];
    let v = https.call(c.http_addr(from), s, &send);
    assert_eq!(code(&v), 0, "send through node {}: {v}", from + 1);
    let receive = [("Action", "ReceiveMessage"), ("queueName", QUEUE), ("pollingWaitSeconds", "1")];
    let v = https.call(c.http_addr(to), s, &receive);
    assert_eq!((code(&v), v["msgBody"].as_str()), (0, Some(body)), "receive through node {}: {v}", to + 1);
    let handle = v["receiptHandle"].as_str().expect("a receipt handle");
    let delete = [("Action", "DeleteMessage"), ("queueName", QUEUE), ("receiptHandle", handle)];
    let v = https.call(c.http_addr(from), s, &delete);
    assert_eq!(code(&v), 0, "delete through node {}: {v}", from + 1);
}

/// Mutual TLS on the client and HTTP ports, peer TLS between the nodes, no
/// `--forward-tls-ca`: followers trust `--peer-tls-ca` and present their
/// peer certificate, which the leader's `--tls-client-ca` (the same CA)
/// admits. Anonymous and signed requests (authentication bound to the
/// forwarded TLS session) are forwarded and answered.
#[test]
fn followers_forward_over_tls_to_a_leader_that_requires_client_certificates() {
    let pki = TestPki::new();
    let c = start(&pki, pki.mtls_server_args(), true, &pki.peer_args());
    let https = Https { tls: pki.client_config(true) };
    let (leader, f1, f2) = roles(&c);
    let anon = Signer { secret_id: "AKIDnobody".into(), secret_key: "x".into() };
    cycle(&https, &c, &anon, (f1, f2), "anonymous over tls");

    let app = create_key(&c);
    let deadline = Instant::now() + WITHIN;
    for node in 0..c.len() {
        // Each node learns the key as its replica of shard 0 applies it.
        while code(&https.call(c.http_addr(node), &app, &[("Action", "ListQueue")])) != 0 {
            assert!(Instant::now() < deadline, "node {} never learnt the key", node + 1);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cycle(&https, &c, &app, (f2, f1), "signed over tls");
    cycle(&https, &c, &app, (leader, f2), "leader and follower");

    // Forwarded: f1 two sends, a delete and a receive; f2 two receives, a
    // send and a delete. The leader forwarded nothing.
    assert!(https.metric(c.http_addr(f1), ANSWERED) >= 3.0, "f1 forwarded its requests");
    assert!(https.metric(c.http_addr(f2), ANSWERED) >= 4.0, "f2 forwarded its requests");
    assert_eq!(https.metric(c.http_addr(leader), ANSWERED), 0.0, "the leader runs its own requests");
    for f in [f1, f2] {
        assert!(https.metric(c.http_addr(f), CONNECTIONS) >= 1.0, "node {}: pooled connections", f + 1);
        assert_eq!(https.metric(c.http_addr(f), OFF), 0.0);
    }
    c.assert_no_panics();
}

/// Client-port TLS with no CA for forwarding (no `--forward-tls-ca`, no
/// peer TLS): a follower answers the documented 6000 naming the leader,
/// counts it as `off`, and said why at start; the leader serves.
#[test]
fn without_a_ca_a_follower_answers_6000_naming_the_leader() {
    let pki = TestPki::new();
    let c = start(&pki, pki.server_args(), false, &[]);
    let https = Https { tls: pki.client_config(false) };
    let (leader, f1, _) = roles(&c);
    let anon = Signer { secret_id: "AKIDnobody".into(), secret_key: "x".into() };
    let send = [("Action", "SendMessage"), ("queueName", QUEUE), ("msgBody", "not forwarded")];
    let v = https.call(c.http_addr(f1), &anon, &send);
    assert_eq!(code(&v), 6000, "{v}");
    let hint = format!("leader={}@{}", leader + 1, c.client_addrs()[leader]);
    assert!(v["message"].as_str().is_some_and(|m| m.contains(&hint)), "{hint} in {v}");
    assert_eq!(https.metric(c.http_addr(f1), OFF), 1.0);
    assert_eq!(https.metric(c.http_addr(f1), CONNECTIONS), 0.0, "nothing dialled");
    assert!(c.log(f1).contains("not forwarding to shard leaders"), "{}", c.log(f1));
    // The leader serves it; nothing was stored by the refused send.
    cycle(&https, &c, &anon, (leader, leader), "on the leader");
    c.assert_no_panics();
}

/// A leader that requires client certificates (`--tls-client-ca`) and
/// followers with a CA to trust (`--forward-tls-ca`) but no peer
/// certificate to present: the leader refuses the forwarded connection, so
/// a follower answers 6000 saying the leader could not be reached and why,
/// counted as `unreachable`; nothing is stored.
#[test]
fn without_a_peer_certificate_a_leader_requiring_client_certificates_is_unreachable() {
    let pki = TestPki::new();
    let forward_ca = ["--forward-tls-ca".to_owned(), pki.ca.to_str().expect("utf-8").to_owned()];
    let c = start(&pki, pki.mtls_server_args(), true, &forward_ca);
    let https = Https { tls: pki.client_config(true) };
    let (leader, f1, _) = roles(&c);
    let anon = Signer { secret_id: "AKIDnobody".into(), secret_key: "x".into() };
    let send = [("Action", "SendMessage"), ("queueName", QUEUE), ("msgBody", "refused")];
    let v = https.call(c.http_addr(f1), &anon, &send);
    assert_eq!(code(&v), 6000, "{v}");
    let message = v["message"].as_str().unwrap_or("");
    assert!(message.contains("could not be reached") && message.contains("Certificate"), "{v}");
    assert_eq!(https.metric(c.http_addr(f1), "cmq_http_forwarded_total{outcome=\"unreachable\"}"), 1.0);
    assert_eq!(https.metric(c.http_addr(f1), CONNECTIONS), 0.0, "the refused connection is not kept");
    let receive = [("Action", "ReceiveMessage"), ("queueName", QUEUE), ("pollingWaitSeconds", "0")];
    assert_eq!(code(&https.call(c.http_addr(leader), &anon, &receive)), 7000, "nothing was stored");
    c.assert_no_panics();
}
