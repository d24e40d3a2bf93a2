//! Connections: handing a connection to the shard it asks for, pipelining
//! with out-of-order completion, 100 concurrent clients, and the connection limit.

use std::collections::{HashMap, HashSet};
use std::sync::Barrier;

use bytes::Bytes;
use cmq_integration_tests::{name_on_shard, request_frame, Broker, RawConn};
use cmq_protocol::*;

// ---- handover ----------------------------------------------------------------------

#[test]
fn shard_hint_hands_the_connection_to_that_shard() {
    let broker = Broker::start(&["--shards", "2"]);
    let queues = [name_on_shard("ho", 0, 2), name_on_shard("ho", 1, 2)];
    RawConn::open(broker.addr).create_queue(&queues[0]);
    RawConn::open(broker.addr).create_queue(&queues[1]);
    // The kernel spreads connections over the shards' listeners, so among several
    // connections some arrive on the other shard and must be handed over.
    for i in 0..8 {
        for hint in [1u16, 0] {
            let (mut c, ok) = RawConn::open_hint(broker.addr, Some(hint));
            assert_eq!(ok.shard_id, hint, "connection {i}: {ok:?}");
            assert_eq!(ok.shard_count, 2);
            // It works, for queues on its own shard and on the other.
            c.ping().ok();
            for q in &queues {
                c.assert_round_trip(q, &format!("conn {i} on shard {hint}"));
            }
        }
    }
}

#[test]
fn requests_sent_with_the_handshake_survive_the_handover() {
    let broker = Broker::start(&["--shards", "2"]);
    for i in 0..8u64 {
        let q = format!("early{i}");
        let mut c = RawConn::connect(broker.addr);
        // Handshake and two requests in one write: the requests are already
        // buffered when the connection moves to shard 1.
        let hs = Handshake { shard_hint: Some(1), ..Handshake::new("eager") };
        let mut bytes = request_frame(1, &Request::Handshake(hs));
        bytes.extend(request_frame(2, &Request::CreateQueue(CreateQueue { queue: q.clone(), ..Default::default() })));
        bytes.extend(request_frame(
            3,
            &Request::SendMessage(SendMessage {
                queue: q.clone(),
                delay_seconds: 0,
                body: Bytes::from("early"),
                ..Default::default()
            }),
        ));
        c.write_raw(&bytes);
        let Response::Handshake(ok) = c.read_reply(1).ok() else { panic!("wrong response type") };
        assert_eq!(ok.shard_id, 1);
        let Response::CreateQueue(_) = c.read_reply(2).ok() else { panic!("wrong response type") };
        let Response::SendMessage(_) = c.read_reply(3).ok() else { panic!("wrong response type") };
        assert_eq!(&c.receive_ok(&q, None).body[..], b"early");
    }
}

#[test]
fn out_of_range_shard_hint_is_ignored() {
    let broker = Broker::start(&["--shards", "2"]);
    for hint in [Some(2u16), Some(u16::MAX), None] {
        let (mut c, ok) = RawConn::open_hint(broker.addr, hint);
        assert!(ok.shard_id < 2, "{hint:?}: {ok:?}");
        c.ping().ok();
    }
}

// ---- pipelining ------------------------------------------------------------------------

/// On one connection: a long-polling receive on an empty queue, then a send to
/// another queue, then a send to the polled queue, all in one write. The two
/// sends are answered first, then the receive, with the message of the second
/// send: a waiting receive does not hold up later requests.
fn out_of_order_completion(conn_shard: u16, queue_shard: u16) {
    let broker = Broker::start(&["--shards", "2"]);
    let polled = name_on_shard("polled", queue_shard, 2);
    let other = name_on_shard("other", queue_shard, 2);
    let mut c = RawConn::open_on_shard(broker.addr, conn_shard);
    c.create_queue(&polled);
    c.create_queue(&other);
    let mut bytes = Vec::new();
    let reqs = [
        (101, Request::ReceiveMessage(ReceiveMessage { queue: polled.clone(), polling_wait_seconds: Some(10) })),
        (
            102,
            Request::SendMessage(SendMessage {
                queue: other.clone(),
                delay_seconds: 0,
                body: "to other".into(),
                ..Default::default()
            }),
        ),
        (
            103,
            Request::SendMessage(SendMessage {
                queue: polled.clone(),
                delay_seconds: 0,
                body: "to polled".into(),
                ..Default::default()
            }),
        ),
    ];
    for (id, r) in &reqs {
        bytes.extend(request_frame(*id, r));
    }
    c.write_raw(&bytes);
    let replies: Vec<_> = (0..3).map(|_| c.read().expect("connection open")).collect();
    let order: Vec<u64> = replies.iter().map(|r| r.id()).collect();
    assert_eq!(order, vec![102, 103, 101], "send, send, then the receive they unblocked");
    let mut replies = replies.into_iter();
    let Response::SendMessage(_) = replies.next().expect("1").ok() else { panic!("wrong type") };
    let Response::SendMessage(sent) = replies.next().expect("2").ok() else { panic!("wrong type") };
    let Response::ReceiveMessage(m) = replies.next().expect("3").ok() else { panic!("wrong type") };
    assert_eq!((m.msg_id, &m.body[..]), (sent.msg_id, &b"to polled"[..]));
    assert_eq!(c.queue_info(&other).active_msg_num, 1);
}

#[test]
fn pipelining_out_of_order_completion_on_the_owner_shard() {
    out_of_order_completion(0, 0);
}

#[test]
fn pipelining_out_of_order_completion_forwarded_to_the_owner() {
    out_of_order_completion(0, 1);
}

#[test]
fn many_pipelined_requests_are_each_answered_once() {
    let broker = Broker::start(&["--shards", "2"]);
    let local = name_on_shard("pipe", 0, 2);
    let remote = name_on_shard("pipe", 1, 2);
    let mut c = RawConn::open_on_shard(broker.addr, 0);
    c.create_queue(&local);
    c.create_queue(&remote);
    let mut bytes = Vec::new();
    let mut expect: HashMap<u64, Opcode> = HashMap::new();
    for i in 0..300u64 {
        let req = match i % 3 {
            0 => Request::SendMessage(SendMessage {
                queue: local.clone(),
                delay_seconds: 0,
                body: format!("l{i}").into(),
                ..Default::default()
            }),
            1 => Request::SendMessage(SendMessage {
                queue: remote.clone(),
                delay_seconds: 0,
                body: format!("r{i}").into(),
                ..Default::default()
            }),
            _ => Request::Ping(Ping {}),
        };
        let id = 10_000 + i;
        expect.insert(id, req.opcode());
        bytes.extend(request_frame(id, &req));
    }
    c.write_raw(&bytes);
    let mut msg_ids = HashSet::new();
    for _ in 0..300 {
        let r = c.read().expect("connection open");
        let op = expect.remove(&r.id()).unwrap_or_else(|| panic!("unexpected or repeated reply {r:?}"));
        match (op, r.ok()) {
            (Opcode::SendMessage, Response::SendMessage(s)) => assert!(msg_ids.insert(s.msg_id)),
            (Opcode::Ping, Response::Ping(_)) => {}
            (op, resp) => panic!("{op:?} answered with {resp:?}"),
        }
    }
    assert!(expect.is_empty());
    assert_eq!(c.queue_info(&local).active_msg_num, 100);
    assert_eq!(c.queue_info(&remote).active_msg_num, 100);
    // Pipelined receives on the local queue come back in queue order.
    let mut bytes = Vec::new();
    for i in 0..100u64 {
        let req = Request::ReceiveMessage(ReceiveMessage { queue: local.clone(), polling_wait_seconds: Some(0) });
        bytes.extend(request_frame(20_000 + i, &req));
    }
    c.write_raw(&bytes);
    for i in 0..100u64 {
        let r = c.read().expect("connection open");
        assert_eq!(r.id(), 20_000 + i);
        let Response::ReceiveMessage(m) = r.ok() else { panic!("wrong type") };
        assert_eq!(&m.body[..], format!("l{}", i * 3).as_bytes());
    }
}

// ---- many clients -------------------------------------------------------------------------

const CLIENTS: usize = 100;
const ROUNDS: usize = 20;

/// What one client sent (bodies) and received (msg id, body).
type ClientLog = (Vec<String>, Vec<(u64, String)>);

/// 100 connections at once, each sending, receiving and deleting on four
/// shared queues. Every message sent is received exactly once and deleted.
fn hundred_connections(shards: u16) {
    let broker = Broker::start(&["--shards", &shards.to_string()]);
    let queues: Vec<String> = (0..4).map(|i| name_on_shard(&format!("shared{i}-"), i % shards, shards)).collect();
    let mut admin = RawConn::open(broker.addr);
    for q in &queues {
        admin.create_queue(q);
    }
    let start = Barrier::new(CLIENTS);
    let results: Vec<ClientLog> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (queues, start, addr) = (&queues, &start, broker.addr);
                s.spawn(move || {
                    let mut c = RawConn::open(addr);
                    let q = &queues[t % queues.len()];
                    let mut sent = Vec::new();
                    let mut got = Vec::new();
                    start.wait();
                    for r in 0..ROUNDS {
                        let body = format!("client{t}-round{r}");
                        c.send_ok(q, body.clone());
                        sent.push(body);
                        // Every client sends before it receives, so some message is
                        // always there or on its way; a long poll waits for it.
                        let m = c.receive_ok(q, Some(10));
                        assert_eq!(m.dequeue_count, 1, "no message is delivered twice");
                        c.delete_message(q, m.receipt_handle).ok();
                        got.push((m.msg_id, String::from_utf8(m.body.to_vec()).expect("utf8")));
                    }
                    (sent, got)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let sent: HashSet<String> = results.iter().flat_map(|(s, _)| s.iter().cloned()).collect();
    let got: Vec<(u64, String)> = results.iter().flat_map(|(_, g)| g.iter().cloned()).collect();
    assert_eq!(sent.len(), CLIENTS * ROUNDS);
    assert_eq!(got.len(), CLIENTS * ROUNDS);
    assert_eq!(got.iter().map(|(id, _)| id).collect::<HashSet<_>>().len(), got.len(), "no msg id received twice");
    let got_bodies: HashSet<String> = got.into_iter().map(|(_, b)| b).collect();
    assert_eq!(got_bodies, sent, "every message sent was received");
    for q in &queues {
        let info = admin.queue_info(q);
        assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (0, 0, 0), "{q}");
    }
}

#[test]
fn hundred_concurrent_connections_one_shard() {
    hundred_connections(1);
}

#[test]
fn hundred_concurrent_connections_two_shards() {
    hundred_connections(2);
}

// ---- back-pressure --------------------------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("cmqd's /proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("cmqd's /proc stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Messages of 1 MiB in the back-pressure queue: their answers (24 MiB) are far
/// more than a connection's output bound (4 MiB) plus the socket buffers.
const BIG_MSGS: usize = 24;
/// Receives the stalled client pipelines (more than there are messages).
const HOG_RECEIVES: u64 = 32;

/// Fills queue "big" with 1 MiB messages, then opens a client that pipelines
/// receives for all of them in one write and reads nothing. Returns the hog and
/// a bystander on the same (only) shard, once the broker has read the hog's
/// requests: the hog's bytes were in the socket before the bystander's ping was
/// sent, so by the time the ping is answered the hog's turn has run.
fn stalled_hog(broker: &Broker) -> (RawConn, RawConn) {
    let mut other = RawConn::open(broker.addr);
    other.create_queue_attrs("big", QueueAttributesUpdate { max_msg_size: Some(1 << 20), ..Default::default() });
    for i in 0..BIG_MSGS {
        other.send_ok("big", vec![i as u8; 1 << 20]);
    }
    let mut hog = RawConn::open(broker.addr);
    let mut bytes = Vec::new();
    for id in 1..=HOG_RECEIVES {
        let req = Request::ReceiveMessage(ReceiveMessage { queue: "big".into(), polling_wait_seconds: Some(0) });
        bytes.extend(request_frame(id, &req));
    }
    hog.write_raw(&bytes);
    other.ping().ok();
    (hog, other)
}

/// A client that pipelines requests and never reads the answers: the broker
/// stops executing its requests once their answers pile up, instead of
/// buffering answers without bound, and serves other clients meanwhile.
#[test]
fn a_client_that_stops_reading_is_paused_not_buffered() {
    let broker = Broker::start(&["--shards", "1"]);
    let (_hog, mut other) = stalled_hog(&broker);
    let info = other.queue_info("big");
    assert!(
        info.inactive_msg_num < BIG_MSGS as u64 && info.active_msg_num > 0,
        "the broker executed {} of the stalled client's receives ({} MiB of answers nobody reads)",
        info.inactive_msg_num,
        info.inactive_msg_num
    );
    let rss = rss_kib(broker.pid());
    assert!(rss < 256 * 1024, "cmqd holds {rss} KiB");
    other.create_queue("bp");
    other.assert_round_trip("bp", "while another client is stalled");
}

/// While a client is paused by back-pressure, the broker has nothing to do
/// until that client reads: it must sleep, not poll in a loop.
#[test]
fn a_paused_client_does_not_make_the_broker_spin() {
    let broker = Broker::start(&["--shards", "1"]);
    let (_hog, mut other) = stalled_hog(&broker);
    assert!(other.queue_info("big").active_msg_num > 0, "the hog is paused, not done");
    // No event to wait for here: measure CPU use over a short quiet window.
    let before = cpu_ticks(broker.pid());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let used = cpu_ticks(broker.pid()) - before;
    // 500 ms is 50 ticks at the usual 100 Hz; a busy loop uses most of them.
    assert!(used <= 10, "cmqd used {used} clock ticks of CPU in 500 ms with only a paused client");
}

/// Once a paused client reads, the broker resumes: every request is answered,
/// in order, and every message is delivered once.
#[test]
fn a_paused_client_is_fully_answered_once_it_reads() {
    let broker = Broker::start(&["--shards", "1"]);
    let (mut hog, mut other) = stalled_hog(&broker);
    let mut bodies = Vec::new();
    for id in 1..=HOG_RECEIVES {
        let r = hog.read_reply(id);
        if id as usize <= BIG_MSGS {
            let Response::ReceiveMessage(m) = r.ok() else { panic!("wrong response type") };
            assert_eq!(m.body.len(), 1 << 20);
            bodies.push(m.body[0]);
        } else {
            r.expect_err(ErrorCode::NO_MESSAGE);
        }
    }
    assert_eq!(bodies, (0..BIG_MSGS as u8).collect::<Vec<_>>());
    let info = other.queue_info("big");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (0, BIG_MSGS as u64));
}

/// A burst of pipelined requests larger than the broker reads in one go
/// (its fair share per loop turn), written at once and only then read back.
#[test]
fn a_pipelined_burst_larger_than_one_read_is_fully_answered() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    let n = 20_000usize;
    let one = request_frame(7, &Request::Ping(Ping {}));
    let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
    c.write_raw(&burst);
    for i in 0..n {
        let r = c.read().unwrap_or_else(|| panic!("closed after {i} answers"));
        assert!(r.id() == 7 && r.is_ok(), "answer {i}: {r:?}");
    }
    c.ping().ok();
}

// ---- connection limit -----------------------------------------------------------------------

#[test]
fn too_many_connections_refuses_the_extra_one_until_a_slot_frees() {
    let broker = Broker::start(&["--shards", "2", "--max-connections", "3"]);
    let mut conns: Vec<RawConn> = (0..3).map(|_| RawConn::open(broker.addr)).collect();

    let refused = |addr| {
        let mut c = RawConn::connect(addr);
        let replies = c.read_until_closed();
        assert_eq!(replies.len(), 1, "one error, then closed: {replies:?}");
        let e = replies.into_iter().next().expect("one").expect_err(ErrorCode::TOO_MANY_CONNECTIONS);
        assert!(e.message.contains('3'), "the message states the limit: {:?}", e.message);
    };
    refused(broker.addr);
    for c in &mut conns {
        c.ping().ok();
    }

    // Close one; once the broker has closed its side the slot is free again.
    let mut gone = conns.pop().expect("three");
    gone.shutdown_write();
    assert!(gone.read_until_closed().is_empty());
    let mut fresh = RawConn::open(broker.addr);
    fresh.create_queue("after");
    fresh.assert_round_trip("after", "new connection");
    refused(broker.addr);
}
