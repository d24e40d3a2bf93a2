//! The CMQ API 2.0 gateway of a 3-node cluster: every node's HTTP port
//! serves every queue. A request for a queue another node leads is run by
//! the leader (forwarded over the binary protocol as the caller's key) and
//! the leader's answer returned: signed requests to followers and to the
//! leader, anonymous ones, the console's JSON API, a key's refusal through
//! a follower, a long poll through a follower, and a leader killed mid-run.
//! Leadership moving under a forwarded long poll parked on the leader: a
//! transfer (the poll goes on at the new leader after one more hop) and a
//! kill -9 (6000, outcome unknown); either way nothing sent is lost, and
//! the follower's `cmq_http_forwarded_total` counts how each ended.

mod cmq_signer;

use std::time::{Duration, Instant};

use cmq_integration_tests::console::Console;
use cmq_integration_tests::{http, Cluster, ClusterSpec, NodeConn, Reply};
use cmq_protocol::{CreateKey, Request, Response, TransferLeader};
use cmq_signer::{code, Signer};

/// Longest a test waits for a new leader to serve.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

const QUEUE: &str = "gq";

/// `--auth optional`: keys are checked when used, and the harness's own
/// status connections stay anonymous.
fn cluster() -> Cluster {
    let spec = ClusterSpec { extra_args: vec!["--auth".into(), "optional".into()], ..ClusterSpec::default() };
    let c = Cluster::start(&spec);
    c.create_queue(QUEUE, Default::default());
    c
}

fn policy(statements: serde_json::Value) -> String {
    serde_json::json!({"version": "2.0", "statement": statements}).to_string()
}

/// Creates key `name` on the leader of shard 0 (where keys live).
fn create_key(c: &Cluster, name: &str, policy: &str) -> Signer {
    let leader = c.wait_leader(0, FAILOVER_TIMEOUT, |_| true);
    let req = Request::CreateKey(CreateKey { name: name.into(), policy: policy.into() });
    let (mut conn, _) = NodeConn::open(c.client_addrs()[leader], Some(0)).expect("connect to shard 0's leader");
    match conn.call(&req, Duration::from_secs(10)).expect("CreateKey answered") {
        Reply::Ok(_, Response::CreateKey(k)) => Signer { secret_id: k.secret_id, secret_key: k.secret_key },
        other => panic!("CreateKey: {other:?}"),
    }
}

/// Repeats `params` against `node` until `done` holds for the answer;
/// panics past `timeout` with the last answer.
fn until(
    c: &Cluster,
    node: usize,
    s: &Signer,
    params: &[(&str, &str)],
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = s.call(c.http_addr(node), params);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "node {node}: {params:?} still answered {v} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send(c: &Cluster, node: usize, s: &Signer, body: &str) -> serde_json::Value {
    s.call(c.http_addr(node), &[("Action", "SendMessage"), ("queueName", QUEUE), ("msgBody", body)])
}

fn receive(c: &Cluster, node: usize, s: &Signer, wait_s: &str) -> serde_json::Value {
    s.call(c.http_addr(node), &[("Action", "ReceiveMessage"), ("queueName", QUEUE), ("pollingWaitSeconds", wait_s)])
}

fn delete(c: &Cluster, node: usize, s: &Signer, handle: &str) -> serde_json::Value {
    s.call(c.http_addr(node), &[("Action", "DeleteMessage"), ("queueName", QUEUE), ("receiptHandle", handle)])
}

/// The queue's leader and the two followers.
fn roles(c: &Cluster) -> (usize, usize, usize) {
    let leader = c.wait_leader(c.shard_of(QUEUE), FAILOVER_TIMEOUT, |_| true);
    let followers: Vec<usize> = (0..c.len()).filter(|&i| i != leader).collect();
    (leader, followers[0], followers[1])
}

/// The console's JSON API forwards the same way: a follower's anonymous
/// session reads the queue (GetQueueAttributes, run by the leader).
fn console_on_a_follower_shows_the_queue(c: &Cluster, follower: usize) {
    let mut console = Console::new(c.http_addr(follower));
    console.anonymous();
    let q = console.ok("GET", &format!("/api/v1/queues/{QUEUE}"), &[]);
    assert_eq!(q["queueName"], QUEUE, "{q}");
}

#[test]
fn every_node_serves_every_queue_and_a_key_is_refused_through_a_follower_too() {
    let c = cluster();
    let (leader, f1, f2) = roles(&c);
    // Anonymous (an unknown SecretId where the broker serves anonymous callers).
    let anon = Signer { secret_id: "AKIDnobody".into(), secret_key: "x".into() };
    let v = send(&c, f1, &anon, "anonymous");
    assert_eq!(code(&v), 0, "anonymous send through a follower: {v}");
    let v = receive(&c, f2, &anon, "0");
    assert_eq!((code(&v), v["msgBody"].as_str()), (0, Some("anonymous")), "{v}");
    let v = delete(&c, leader, &anon, v["receiptHandle"].as_str().expect("handle"));
    assert_eq!(code(&v), 0, "{v}");
    console_on_a_follower_shows_the_queue(&c, f1);

    let app = create_key(
        &c,
        "app",
        &policy(serde_json::json!([{"effect": "allow", "action": ["cmq:*"], "resource": ["*"]}])),
    );
    let nosend = create_key(
        &c,
        "nosend",
        &policy(serde_json::json!([
            {"effect": "allow", "action": ["cmq:*"], "resource": ["*"]},
            {"effect": "deny", "action": ["cmq:SendMessage"], "resource": [format!("queue/{QUEUE}")]},
        ])),
    );
    // Each node learns the keys as its replica of shard 0 applies them.
    for node in 0..c.len() {
        until(&c, node, &app, &[("Action", "ListQueue")], FAILOVER_TIMEOUT, |v| code(v) == 0);
    }
    // Send on a follower, receive on the other follower, delete on the leader.
    let v = send(&c, f1, &app, "signed 1");
    assert_eq!(code(&v), 0, "{v}");
    let sent = v["msgId"].as_str().expect("msgId").to_owned();
    let v = receive(&c, f2, &app, "1");
    assert_eq!((code(&v), v["msgBody"].as_str(), v["msgId"].as_str()), (0, Some("signed 1"), Some(&*sent)), "{v}");
    let v = delete(&c, leader, &app, v["receiptHandle"].as_str().expect("handle"));
    assert_eq!(code(&v), 0, "{v}");
    // The other way round: send on the leader, receive and delete on followers.
    assert_eq!(code(&send(&c, leader, &app, "signed 2")), 0);
    let v = receive(&c, f1, &app, "1");
    assert_eq!((code(&v), v["msgBody"].as_str()), (0, Some("signed 2")), "{v}");
    assert_eq!(code(&delete(&c, f2, &app, v["receiptHandle"].as_str().expect("handle"))), 0);

    // A long poll through a follower waits its time on the leader: 7000 after it.
    let started = Instant::now();
    let v = receive(&c, f2, &app, "2");
    let waited = started.elapsed();
    assert_eq!(code(&v), 7000, "{v}");
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(8), "waited {waited:?}");

    // The key that may not send is refused on every node, with the same answer.
    let answers: Vec<(i64, String)> = (0..c.len())
        .map(|node| {
            let v = send(&c, node, &nosend, "refused");
            (code(&v), v["message"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 4101, "ACCESS_DENIED: {answers:?}");
    assert!(answers[0].1.contains("may not"), "{answers:?}");
    // The refused sends stored nothing; it may still receive.
    let v = receive(&c, f1, &nosend, "0");
    assert_eq!(code(&v), 7000, "{v}");
    c.assert_no_panics();
}

#[test]
fn after_the_leader_is_killed_the_surviving_nodes_serve_once_a_new_leader_is_elected() {
    let mut c = cluster();
    let (leader, f1, f2) = roles(&c);
    let app = Signer { secret_id: "AKIDanyone".into(), secret_key: "x".into() };
    assert_eq!(code(&send(&c, f1, &app, "before")), 0);
    c.kill9(leader);
    // Until a new leader is elected a survivor answers 6000 at once (the
    // leader unreachable, or no leader known yet); then it serves.
    let started = Instant::now();
    let v = until(
        &c,
        f1,
        &app,
        &[("Action", "SendMessage"), ("queueName", QUEUE), ("msgBody", "after")],
        FAILOVER_TIMEOUT,
        |v| {
            assert!(code(v) == 0 || code(v) == 6000, "{v}");
            code(v) == 0
        },
    );
    let failover = started.elapsed();
    assert!(v["msgId"].is_string(), "{v}");
    // Both messages reach a receiver on the other survivor, and deletes work.
    let mut seen = std::collections::BTreeSet::new();
    let receive = [("Action", "ReceiveMessage"), ("queueName", QUEUE), ("pollingWaitSeconds", "1")];
    while !(seen.contains("before") && seen.contains("after")) {
        let v = until(&c, f2, &app, &receive, FAILOVER_TIMEOUT, |v| code(v) == 0);
        seen.insert(v["msgBody"].as_str().expect("body").to_owned());
        assert_eq!(code(&delete(&c, f1, &app, v["receiptHandle"].as_str().expect("handle"))), 0);
    }
    assert_eq!(seen.len(), 2, "only what was sent; failover took {failover:?}");
    c.assert_no_panics();
}

/// Forward metrics of node `i`: (forwarded requests by outcome, open connections).
fn forward_metrics(c: &Cluster, i: usize) -> (std::collections::BTreeMap<String, f64>, f64) {
    let m = http::Metrics::scrape(c.http_addr(i));
    let outcomes = m
        .label_values("cmq_http_forwarded_total", "outcome")
        .into_iter()
        .map(|o| {
            let n = m.value("cmq_http_forwarded_total", &[("outcome", &o)]);
            (o, n)
        })
        .collect();
    (outcomes, m.value("cmq_http_forward_connections", &[]))
}

/// Leadership of the queue's shard moves (`change`) while a long poll
/// forwarded through a follower is parked on the leader. The poll's answer
/// must be a documented one, in time: the message sent after the change,
/// 7000 (its wait ran out on the new leader after one more hop), or 6000
/// (the old leader ended it, or its connection broke); and the message
/// sent after the change is received exactly once.
fn leader_change_under_a_forwarded_long_poll(change: impl FnOnce(&mut Cluster, usize, usize)) -> Changed {
    let mut c = cluster();
    c.wait_converged(FAILOVER_TIMEOUT);
    let (leader, f1, f2) = roles(&c);
    let app = Signer { secret_id: "AKIDanyone".into(), secret_key: "x".into() };
    let (poll_addr, poller) = (c.http_addr(f1), app.clone());
    let wait_s = 8;
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let wait = wait_s.to_string();
        let v = poller
            .call(poll_addr, &[("Action", "ReceiveMessage"), ("queueName", QUEUE), ("pollingWaitSeconds", &wait)]);
        (v, started.elapsed())
    });
    // The poll is this node's first forwarded request: its connection to
    // the leader opening is the poll on its way to be parked there.
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    while forward_metrics(&c, f1).1 < 1.0 {
        assert!(Instant::now() < deadline, "the long poll was never forwarded");
        std::thread::sleep(Duration::from_millis(20));
    }
    change(&mut c, leader, f2);
    let new_leader = c.wait_leader(c.shard_of(QUEUE), FAILOVER_TIMEOUT, |i| i != leader);
    let send = [("Action", "SendMessage"), ("queueName", QUEUE), ("msgBody", "after the change")];
    until(&c, f1, &app, &send, FAILOVER_TIMEOUT, |v| {
        assert!(code(v) == 0 || code(v) == 6000, "{v}");
        code(v) == 0
    });
    let (v, took) = poll.join().expect("the poll's thread");
    eprintln!("the long poll answered after {took:?}: {v}");
    let sdk_timeout = Duration::from_secs(wait_s + 10);
    assert!(took < sdk_timeout, "answered after the SDK gave up: {took:?}: {v}");
    let mut bodies = Vec::new();
    match code(&v) {
        0 => {
            bodies.push(v["msgBody"].as_str().expect("a body").to_owned());
            assert_eq!(code(&delete(&c, new_leader, &app, v["receiptHandle"].as_str().expect("handle"))), 0);
        }
        7000 => {}
        6000 => assert!(v["message"].as_str().is_some_and(|m| m.contains("retry") || m.contains("unknown")), "{v}"),
        _ => panic!("not a documented answer to a long poll: {v}"),
    }
    // Whatever the poll got, the message is there exactly once.
    loop {
        let v = until(
            &c,
            f2,
            &app,
            &[("Action", "ReceiveMessage"), ("queueName", QUEUE), ("pollingWaitSeconds", "1")],
            FAILOVER_TIMEOUT,
            |v| code(v) != 6000,
        );
        if code(&v) == 7000 {
            break;
        }
        assert_eq!(code(&v), 0, "{v}");
        bodies.push(v["msgBody"].as_str().expect("a body").to_owned());
        assert_eq!(code(&delete(&c, f2, &app, v["receiptHandle"].as_str().expect("handle"))), 0);
    }
    assert_eq!(bodies, ["after the change"], "received once, nothing else; the poll answered {v}");
    c.assert_no_panics();
    let (forwarded, _) = forward_metrics(&c, f1);
    Changed { poll: code(&v), forwarded }
}

/// What [`leader_change_under_a_forwarded_long_poll`] saw.
struct Changed {
    /// The long poll's answer code.
    poll: i64,
    /// The follower's `cmq_http_forwarded_total` by outcome.
    forwarded: std::collections::BTreeMap<String, f64>,
}

#[test]
fn a_leader_transfer_under_a_forwarded_long_poll_loses_nothing() {
    let seen = leader_change_under_a_forwarded_long_poll(|c, leader, to| {
        let shard = c.shard_of(QUEUE);
        let req = Request::TransferLeader(TransferLeader { shard: Some(shard), to: to as u64 + 1 });
        let (mut conn, _) = c.node_conn(leader, None).expect("connect to the leader");
        let r = conn.call(&req, Duration::from_secs(10)).expect("TransferLeader answered");
        assert!(matches!(r, Reply::Ok(..)), "{r:?}");
    });
    // The old leader ended the parked poll naming no successor; the
    // follower waited for the election and took one more hop to the new
    // leader, where the poll went on waiting and got the message.
    assert_eq!(seen.poll, 0, "the long poll survives a leadership transfer");
    // The send after the change went to the new leader (the follower stayed one).
    let n = |o: &str| seen.forwarded.get(o).copied().unwrap_or(0.0);
    assert!(n("answered") >= 1.0, "{:?}", seen.forwarded);
    assert_eq!(n("lost") + n("off"), 0.0, "{:?}", seen.forwarded);
}

#[test]
fn a_leader_killed_under_a_forwarded_long_poll_answers_6000_and_loses_nothing() {
    let seen = leader_change_under_a_forwarded_long_poll(|c, leader, _| c.kill9(leader));
    assert_eq!(seen.poll, 6000, "the connection to the leader broke: the outcome is unknown");
    let n = |o: &str| seen.forwarded.get(o).copied().unwrap_or(0.0);
    assert!(n("lost") + n("unreachable") >= 1.0, "the poll's end is counted: {:?}", seen.forwarded);
}
