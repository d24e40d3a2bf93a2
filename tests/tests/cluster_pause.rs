//! Issue 11: SIGSTOP the leader of a shard for longer than the election
//! timeout, then SIGCONT: it steps down and never acknowledges anything
//! while it is not leader. Requests sent to it while it was stopped are
//! answered NOT_LEADER or with a closed connection, never with success;
//! afterwards it answers NOT_LEADER naming the new leader; the ledger and
//! the replicas' digests hold.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_integration_tests::ledger::Ack;
use cmq_integration_tests::{Cluster, ClusterSpec, NodeConn, Reply, Workload};
use cmq_protocol::*;

/// Longest election timeout with the default tick: 20 ticks of 50 ms.
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(1);

/// Sends pipelined to the stopped leader.
const STALE_SENDS: usize = 20;

#[test]
fn a_paused_leader_steps_down_and_acknowledges_nothing_once_deposed() {
    let mut c = Cluster::start(&ClusterSpec::default());
    let w = Workload::start(&c, "pause", &[FlushPolicy::Sync, FlushPolicy::Async]);
    w.wait_acks(300, Duration::from_secs(30));

    let shard = 0;
    let old = c.wait_leader(shard, Duration::from_secs(10), |_| true);
    let queue = w.queues.iter().find(|q| c.shard_of(q) == shard).expect("a queue on the shard").clone();
    let (mut stale, _) = NodeConn::open(c.client_addrs()[old], Some(shard)).expect("connect to the leader");

    c.pause(old);
    let paused_at = Instant::now();
    let mut sent = Vec::new();
    for i in 0..STALE_SENDS {
        let body = Bytes::from(format!("{queue}|stale|{i}|"));
        w.ledger.attempt(&queue, std::slice::from_ref(&body));
        let req = Request::SendMessage(SendMessage {
            queue: queue.clone(),
            delay_seconds: 0,
            body: body.clone(),
            ..Default::default()
        });
        let id = stale.send(&req).expect("the kernel buffers requests for a stopped process");
        sent.push((id, body));
    }

    let new = c.wait_leader(shard, Duration::from_secs(10), |i| i != old);
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.ledger.first_ack_after(shard, paused_at, old).is_none() || paused_at.elapsed() < ELECTION_TIMEOUT_MAX * 2 {
        assert!(Instant::now() < deadline, "node {} was elected but no write succeeded on it", new + 1);
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "node {} paused; node {} leads shard {shard} and serves after {:?}",
        old + 1,
        new + 1,
        w.ledger.first_ack_after(shard, paused_at, old).map(|t| t - paused_at)
    );

    c.resume(old);
    let resumed_at = Instant::now();
    let outcomes = stale_outcomes(&mut stale, &sent, &w, shard, old, paused_at);
    eprintln!("requests sent to the paused leader: {outcomes:?}");
    assert_eq!(outcomes.acked, 0, "the deposed leader acknowledged sends it received while stopped");

    let hint = not_leader_hint(&c, old, shard, &queue);
    assert_eq!(hint, new as u64 + 1, "the old leader names the new one");
    assert!(c.wait_leader(shard, Duration::from_secs(5), |_| true) != old, "the old leader stepped down");
    eprintln!("old leader answered NOT_LEADER {:?} after resuming", resumed_at.elapsed());

    w.finish(&c);
}

#[derive(Debug, Default)]
struct Outcomes {
    acked: usize,
    not_leader: usize,
    other_error: usize,
    /// Unanswered when the connection closed.
    closed: usize,
}

/// Reads the replies to `sent` (until all came or the connection closed);
/// successes are recorded in the ledger too, so the drain checks them.
fn stale_outcomes(
    conn: &mut NodeConn,
    sent: &[(u64, Bytes)],
    w: &Workload,
    shard: u16,
    node: usize,
    sent_at: Instant,
) -> Outcomes {
    let mut o = Outcomes::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left = sent.len();
    while left > 0 {
        match conn.read(deadline) {
            Ok(Reply::Ok(id, Response::SendMessage(ok))) => {
                let body = &sent.iter().find(|(i, _)| *i == id).expect("a reply to a sent request").1;
                let ack = Ack { shard, node, sent_at, acked_at: Instant::now() };
                w.ledger.acked(ack, std::slice::from_ref(body), &[ok.msg_id]);
                o.acked += 1;
            }
            Ok(Reply::Ok(_, other)) => panic!("a send was answered with {other:?}"),
            Ok(Reply::Err(_, e)) if e.code() == ErrorCode::NOT_LEADER => o.not_leader += 1,
            Ok(Reply::Err(..)) => o.other_error += 1,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the resumed node neither answered nor closed")
            }
            Err(_) => {
                o.closed += left;
                break;
            }
        }
        left = sent.len() - o.acked - o.not_leader - o.other_error;
    }
    o
}

/// Asks `node` for the queue's attributes (a read, which a deposed leader
/// must not serve either) until it answers NOT_LEADER (it may close
/// connections while it steps down); returns the leader its hint names.
fn not_leader_hint(c: &Cluster, node: usize, shard: u16, queue: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        let req = Request::GetQueueAttributes(GetQueueAttributes { queue: queue.into() });
        let reply = NodeConn::open(c.client_addrs()[node], Some(shard))
            .and_then(|(mut conn, _)| conn.call(&req, Duration::from_secs(3)));
        match reply {
            Ok(Reply::Err(_, e)) if e.code() == ErrorCode::NOT_LEADER => {
                if let Some((id, _)) = parse_leader_hint(&e.message) {
                    return id;
                }
                last = e.message;
            }
            Ok(Reply::Ok(..)) => panic!("node {} serves shard {shard} again after resuming", node + 1),
            other => last = format!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("node {} never answered NOT_LEADER with a leader after resuming: {last}", node + 1);
}
