//! `Client` against the fake broker and scripted servers, over real sockets.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use cmq_client::{Client, ClientError};
use cmq_protocol::names::shard_for;
use cmq_protocol::*;
use support::{FakeBroker, FakeServer, CLIENT_TIMEOUT};

fn client(addr: std::net::SocketAddr) -> Client {
    Client::connect_with_timeout(addr, Some(CLIENT_TIMEOUT)).expect("connect")
}

/// The broker serves each connection from the shard it asks for.
fn honour_hint(hint: Option<u16>) -> u16 {
    hint.unwrap_or(0)
}

#[test]
fn every_operation_round_trips() {
    let broker = FakeBroker::start(1, honour_hint);
    let mut c = client(broker.addr());
    c.ping().expect("ping");

    let update = QueueAttributesUpdate { visibility_timeout: Some(45), ..Default::default() };
    let id = c.create_queue("orders", &update).expect("create");
    assert!(id > 0);
    let info = c.queue_info("orders").expect("info");
    assert_eq!((info.queue_id, info.attributes.visibility_timeout), (id, 45));
    let info = c
        .set_queue_attributes("orders", &QueueAttributesUpdate { max_msg_size: Some(2048), ..Default::default() })
        .expect("set");
    assert_eq!((info.attributes.max_msg_size, info.attributes.visibility_timeout), (2048, 45));

    let one = c.send("orders", "first", 0).expect("send");
    let many = c.send_batch("orders", &[Bytes::from("a"), Bytes::from("b"), Bytes::from("c")], 0).expect("batch");
    assert_eq!(many.len(), 3);
    assert!(many.iter().all(|id| *id > one));

    let m = c.receive("orders", Some(0)).expect("receive").expect("a message");
    assert_eq!((m.msg_id, &m.body[..]), (one, &b"first"[..]));
    let vis = c.change_visibility("orders", m.receipt_handle, 10).expect("change visibility");
    assert_eq!(vis.receipt_handle, m.receipt_handle);
    c.delete_message("orders", m.receipt_handle).expect("delete");

    let got = c.receive_batch("orders", 16, None).expect("batch receive");
    assert_eq!(got.iter().map(|m| &m.body[..]).collect::<Vec<_>>(), [b"a", b"b", b"c"]);
    let mut handles: Vec<_> = got.iter().map(|m| m.receipt_handle).collect();
    handles.push(ReceiptHandle(1)); // never issued
    let results = c.delete_batch("orders", &handles).expect("batch delete");
    assert_eq!(results.iter().map(|r| r.code).collect::<Vec<_>>(), [0, 0, 0, ErrorCode::RECEIPT_HANDLE_INVALID.0]);

    let list = c.list_queues("ord", "", 0, 0).expect("list");
    assert_eq!((list.total, list.queues[0].queue.as_str()), (1, "orders"));
    c.delete_queue("orders").expect("delete queue");
    assert_eq!(c.list_queues("", "", 0, 0).expect("list").total, 0);
}

#[test]
fn no_message_is_none_not_an_error() {
    let broker = FakeBroker::start(1, honour_hint);
    let mut c = client(broker.addr());
    c.create_queue("empty", &QueueAttributesUpdate::default()).expect("create");
    assert_eq!(c.receive("empty", Some(0)).expect("not an error"), None);
    assert!(c.receive_batch("empty", 16, Some(0)).expect("not an error").is_empty());
}

#[test]
fn server_errors_carry_code_and_message() {
    let broker = FakeBroker::start(1, honour_hint);
    let mut c = client(broker.addr());
    let err = c.queue_info("nope").expect_err("no such queue");
    assert_eq!(err.code(), Some(ErrorCode::QUEUE_NOT_FOUND));
    assert_eq!(err.to_string(), "4440 QUEUE_NOT_FOUND: queue \"nope\" does not exist");
    // A server error leaves the client fully usable.
    c.ping().expect("still connected");
}

#[test]
fn queue_requests_go_to_the_owning_shard() {
    const SHARDS: u16 = 4;
    let broker = FakeBroker::start(SHARDS, honour_hint);
    let mut c = client(broker.addr());
    assert_eq!(c.shard_count(), SHARDS);
    let names: Vec<String> = (0..24).map(|i| format!("queue-{i}")).collect();
    for name in &names {
        c.create_queue(name, &QueueAttributesUpdate::default()).expect("create");
        c.send(name, "x", 0).expect("send");
        assert_eq!(c.receive(name, Some(0)).expect("receive").map(|m| m.body), Some(Bytes::from("x")));
    }
    let routed = broker.state.lock().expect("lock").routed.clone();
    assert_eq!(routed.len(), names.len() * 3);
    for r in &routed {
        assert_eq!(r.shard, shard_for(&r.queue, SHARDS), "{r:?}");
    }
    // Every shard got traffic, over at most one connection each.
    for shard in 0..SHARDS {
        let conn = c.connection(shard).expect("a connection per shard");
        assert_eq!(conn.shard_id(), shard);
    }
}

#[test]
fn hints_the_broker_ignores_still_work() {
    // The broker serves every connection from shard 0 whatever was asked;
    // it forwards, so the client must simply keep going.
    let broker = FakeBroker::start(4, |_| 0);
    let mut c = client(broker.addr());
    for i in 0..8 {
        let name = format!("q{i}");
        c.create_queue(&name, &QueueAttributesUpdate::default()).expect("create");
        c.send(&name, "x", 0).expect("send");
    }
    let routed = broker.state.lock().expect("lock").routed.clone();
    assert!(routed.iter().all(|r| r.shard == 0));
    assert!(routed.iter().any(|r| r.hint.is_some_and(|h| h != 0)), "client did ask for other shards");
}

#[test]
fn a_long_poll_does_not_hold_up_a_later_answer() {
    let (answered_tx, answered_rx) = mpsc::channel::<()>();
    let answered_rx = Mutex::new(answered_rx);
    let server = FakeServer::start(move |mut peer| {
        peer.accept_handshake(1, 0);
        let (receive_id, _) = peer.read_request().expect("receive");
        let (ping_id, _) = peer.read_request().expect("ping");
        peer.respond(ping_id, &Response::Ping(Empty {}));
        // Only answer the long poll after the client has its ping answer.
        answered_rx.lock().expect("lock").recv().expect("client got the ping");
        peer.respond(receive_id, &Response::ReceiveMessage(ReceivedMessage { msg_id: 9, ..Default::default() }));
    });
    let mut c = client(server.addr());
    let receive = c
        .submit(&Request::ReceiveMessage(ReceiveMessage { queue: "q".into(), polling_wait_seconds: Some(20) }))
        .expect("submit receive");
    let ping = c.submit(&Request::Ping(Ping {})).expect("submit ping");
    c.flush().expect("flush");
    assert!(matches!(c.wait(ping), Ok(Response::Ping(_))));
    answered_tx.send(()).expect("server waiting");
    assert!(matches!(c.wait(receive), Ok(Response::ReceiveMessage(m)) if m.msg_id == 9));
}

#[test]
fn answers_for_other_tickets_are_stashed_until_waited_for() {
    let server = FakeServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let ids: Vec<u64> = (0..3).map(|_| peer.read_request().expect("request").0).collect();
        for (i, id) in ids.iter().enumerate().rev() {
            let list = ListQueuesOk { total: i as u32, queues: vec![] };
            peer.respond(*id, &Response::ListQueues(list));
        }
    });
    let mut c = client(server.addr());
    let tickets: Vec<_> =
        (0..3).map(|_| c.submit(&Request::ListQueues(ListQueues::default())).expect("submit")).collect();
    // Waiting for the first reads (and stashes) the other two on the way.
    for (i, t) in tickets.into_iter().enumerate() {
        match c.wait(t).expect("answer") {
            Response::ListQueues(l) => assert_eq!(l.total, i as u32),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn waiting_twice_for_a_ticket_is_refused() {
    let broker = FakeBroker::start(1, honour_hint);
    let mut c = client(broker.addr());
    let t = c.submit(&Request::Ping(Ping {})).expect("submit");
    c.wait(t).expect("first wait");
    let err = c.wait(t).expect_err("second wait");
    assert!(matches!(&err, ClientError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput), "{err:?}");
    c.ping().expect("client unaffected");
}

#[test]
fn a_dropped_connection_fails_its_tickets_and_the_next_call_reconnects() {
    let connections = AtomicUsize::new(0);
    let server = FakeServer::start(move |mut peer| {
        let n = connections.fetch_add(1, Ordering::SeqCst);
        peer.accept_handshake(1, 0);
        if n == 0 {
            peer.read_request(); // then hang up without answering
            return;
        }
        while let Some((id, _)) = peer.read_request() {
            peer.respond(id, &Response::Ping(Empty {}));
        }
    });
    let mut c = client(server.addr());
    let err = c.ping().expect_err("first connection hangs up");
    assert!(matches!(err, ClientError::Disconnected), "{err:?}");
    c.ping().expect("reconnected");
}

#[test]
fn waits_on_receives_allow_for_the_polling_wait() {
    // The only test that sleeps: what it checks is the passing of time.
    let server = FakeServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        while let Some((id, req)) = peer.read_request() {
            std::thread::sleep(Duration::from_millis(300));
            let resp = match req {
                Request::ReceiveMessage(_) => Response::ReceiveMessage(ReceivedMessage::default()),
                _ => Response::Ping(Empty {}),
            };
            peer.respond(id, &resp);
        }
    });
    let mut c = Client::connect_with_timeout(server.addr(), Some(Duration::from_millis(100))).expect("connect");
    assert!(c.receive("q", Some(1)).expect("within wait + timeout").is_some());
    let err = c.ping().expect_err("300 ms > 100 ms timeout");
    assert!(err.is_timeout(), "{err:?}");
}
