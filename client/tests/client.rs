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

fn dead_letter_setup(c: &mut Client, queue: &str, dlq: &str) {
    c.create_queue(dlq, &QueueAttributesUpdate::default()).expect("create dlq");
    let policy =
        QueueAttributesUpdate { dead_letter_queue: Some(dlq.into()), max_receive_count: Some(1), ..Default::default() };
    c.create_queue(queue, &policy).expect("create source");
}

/// Receives every message of `queue` once and makes it visible again, so
/// that the next receive moves it to the dead-letter queue (maxReceiveCount 1).
fn exhaust_receives(c: &mut Client, queue: &str) {
    for m in c.receive_batch(queue, 16, Some(0)).expect("receive") {
        c.change_visibility(queue, m.receipt_handle, 0).expect("make visible");
    }
    assert_eq!(c.receive(queue, Some(0)).expect("receive"), None, "all moved to the dead-letter queue");
}

#[test]
fn dead_lettered_messages_carry_their_origin() {
    let broker = FakeBroker::start(2, honour_hint);
    let mut c = client(broker.addr());
    dead_letter_setup(&mut c, "orders", "orders-dlq");
    let info = c.queue_info("orders").expect("info");
    assert_eq!(info.attributes.dead_letter_queue, "orders-dlq");
    assert_eq!((info.attributes.max_receive_count, info.attributes.max_time_to_live), (1, 0));
    let before = support::now_ms();
    let id = c.send("orders", "poison", 0).expect("send");
    exhaust_receives(&mut c, "orders");

    let m = c.receive("orders-dlq", Some(0)).expect("receive").expect("dead-lettered");
    assert_eq!((m.msg_id, &m.body[..]), (id, &b"poison"[..]));
    let origin = m.origin.expect("origin");
    assert_eq!((origin.source_queue.as_str(), origin.original_msg_id), ("orders", id));
    assert!(origin.first_enqueue_time_ms >= before);

    let err = c.delete_queue("orders-dlq").expect_err("in use");
    assert_eq!(err.code(), Some(ErrorCode::QUEUE_IN_USE));
    let clear = QueueAttributesUpdate { dead_letter_queue: Some(String::new()), ..Default::default() };
    let info = c.set_queue_attributes("orders", &clear).expect("clear policy");
    assert!(!info.attributes.has_dead_letter());
    c.delete_queue("orders-dlq").expect("no longer in use");
}

#[test]
fn rewind_peek_query_and_purge() {
    let broker = FakeBroker::start(1, honour_hint);
    let mut c = client(broker.addr());
    c.create_queue("q", &QueueAttributesUpdate::default()).expect("create");
    let start = support::now_ms();
    let ids = c.send_batch("q", &[Bytes::from("a"), Bytes::from("bb"), Bytes::from("ccc")], 0).expect("send");
    let m = c.receive("q", Some(0)).expect("receive").expect("a");
    c.delete_message("q", m.receipt_handle).expect("delete");
    let leased = c.receive("q", Some(0)).expect("receive").expect("bb");

    // Two pages through the cursor; without bodies only their length comes back.
    let first = c.peek_messages("q", 0, 2, false).expect("peek");
    assert_eq!(first.messages.iter().map(|m| m.msg_id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(first.messages[0].state, MessageState::Deleted);
    assert_eq!(first.messages[1].state, MessageState::InFlight);
    assert_eq!(first.messages[1].next_visible_time_ms, leased.next_visible_time_ms);
    assert!(first.messages.iter().all(|m| m.body.is_empty()));
    assert_eq!(first.messages[1].body_len, 2);
    assert_ne!(first.next_cursor, 0);
    let second = c.peek_messages("q", first.next_cursor, 2, true).expect("peek");
    assert_eq!(second.messages.iter().map(|m| &m.body[..]).collect::<Vec<_>>(), [b"ccc"]);
    assert_eq!(second.next_cursor, 0);
    let err = c.peek_messages("q", 0, 0, false).expect_err("max 0");
    assert_eq!(err.code(), Some(ErrorCode::INVALID_PARAMETER));

    let status = c.query_message("q", ids[0]).expect("query");
    assert_eq!((status.msg_id, status.state), (ids[0], MessageState::Deleted));
    assert!(status.state_time_ms >= start);
    assert_eq!(c.rewind_queue("q", start).expect("rewind"), 1);
    assert_eq!(c.query_message("q", ids[0]).expect("query").state, MessageState::Ready);
    assert_eq!(c.receive("q", Some(0)).expect("receive").map(|m| m.msg_id), Some(ids[0]), "enqueue order");

    assert_eq!(c.purge_queue("q").expect("purge"), 3);
    assert_eq!(c.query_message("q", ids[2]).expect("query").state, MessageState::Purged);
    assert_eq!(c.receive("q", Some(0)).expect("receive"), None);
    let err = c.query_message("q", 12345).expect_err("unknown id");
    assert_eq!(err.code(), Some(ErrorCode::MESSAGE_NOT_FOUND));
}

#[test]
fn transaction_messages_commit_and_roll_back() {
    let broker = FakeBroker::start(2, honour_hint);
    let mut c = client(broker.addr());
    c.create_queue("tx", &QueueAttributesUpdate::default()).expect("create");
    let keep = c.send_transaction_message("tx", "producers", "keep").expect("half");
    let drop = c.send_transaction_message("tx", "producers", "drop").expect("half");
    assert_eq!(c.receive("tx", Some(0)).expect("receive"), None, "half messages are invisible");
    assert_eq!(c.query_message("tx", keep).expect("query").state, MessageState::Half);
    c.end_transaction("tx", keep, true).expect("commit");
    c.end_transaction("tx", drop, false).expect("roll back");
    assert_eq!(c.receive("tx", Some(0)).expect("receive").map(|m| m.msg_id), Some(keep));
    assert_eq!(c.query_message("tx", drop).expect("query").state, MessageState::RolledBack);
    let err = c.end_transaction("tx", drop, true).expect_err("already resolved");
    assert_eq!(err.code(), Some(ErrorCode::MESSAGE_NOT_FOUND));
    assert_eq!(broker.state.lock().expect("lock").ended, [(keep, true), (drop, false)]);
}

#[test]
fn redrives_start_list_and_cancel_on_the_shard_their_id_names() {
    const SHARDS: u16 = 4;
    let broker = FakeBroker::start(SHARDS, honour_hint);
    let mut c = client(broker.addr());
    dead_letter_setup(&mut c, "src", "graveyard");
    c.create_queue("elsewhere", &QueueAttributesUpdate::default()).expect("create");
    c.send_batch("src", &[Bytes::from("1"), Bytes::from("2"), Bytes::from("3")], 0).expect("send");
    exhaust_receives(&mut c, "src");

    let task = c.start_redrive("graveyard", None, 1).expect("start");
    assert_eq!((task.state, task.remaining, task.rate_per_second), (RedriveState::Running, 3, 1));
    assert_eq!(task.to, "");
    let dlq_shard = shard_for("graveyard", SHARDS);
    assert_ne!(dlq_shard, c.server_info().shard_id, "not the first connection's shard");
    assert_eq!(task.id >> 48, u64::from(dlq_shard));
    // Every listing moves one message in the fake.
    let listed = c.list_redrives().expect("list");
    assert_eq!((listed[0].id, listed[0].moved, listed[0].remaining), (task.id, 1, 2));
    let cancelled = c.cancel_redrive(task.id).expect("cancel");
    assert_eq!((cancelled.state, cancelled.moved), (RedriveState::Cancelled, 1));
    assert_eq!(
        c.receive("src", Some(0)).expect("receive").and_then(|m| m.origin).map(|o| o.source_queue).as_deref(),
        Some("src")
    );

    let routed = broker.state.lock().expect("lock").routed.clone();
    let cancel = routed.iter().find(|r| r.op == Opcode::CancelRedrive).expect("cancel routed");
    assert_eq!(cancel.to_shard, Some(dlq_shard));
    assert_eq!((cancel.hint, cancel.shard), (Some(dlq_shard), dlq_shard), "sent to the shard the id names");

    let all = c.start_redrive("graveyard", Some("elsewhere"), 0).expect("start");
    assert_eq!(all.remaining, 2);
    let done = c.list_redrives().expect("list").into_iter().find(|t| t.id == all.id).expect("listed");
    assert_eq!((done.state, done.moved, done.remaining, done.to.as_str()), (RedriveState::Done, 2, 0, "elsewhere"));
    assert_eq!(c.receive_batch("elsewhere", 16, Some(0)).expect("receive").len(), 2);

    let err = c.cancel_redrive((1 << 48) | 999).expect_err("unknown");
    assert_eq!(err.code(), Some(ErrorCode::REDRIVE_NOT_FOUND));
}

#[test]
fn requests_are_routed_as_the_protocol_says() {
    let broker = FakeBroker::start(4, honour_hint);
    let c = client(broker.addr());
    let cancel = |shard: u64| Request::CancelRedrive(CancelRedrive { id: (shard << 48) | 7 });
    assert_eq!(c.shard_for_request(&cancel(3)), 3);
    assert_eq!(c.shard_for_request(&cancel(0)), 0);
    // A shard the broker does not have (fewer shards since the id was minted): any connection.
    assert_eq!(c.shard_for_request(&cancel(9)), c.server_info().shard_id);
    let send = Request::SendMessage(SendMessage { queue: "q7".into(), delay_seconds: 0, body: Bytes::new() });
    assert_eq!(c.shard_for_request(&send), shard_for("q7", 4));
    assert_eq!(c.shard_for_request(&Request::ListRedrives(ListRedrives {})), c.server_info().shard_id);
}

#[test]
fn pushes_reaching_a_client_are_kept_for_take_pushes() {
    let broker = FakeBroker::start(2, honour_hint);
    let mut c = client(broker.addr());
    c.create_queue("tx", &QueueAttributesUpdate::default()).expect("create");
    let id = c.send_transaction_message("tx", "grp", "x").expect("half");
    c.call(&Request::RegisterChecker(RegisterChecker { producer_group: "grp".into() })).expect("register");
    assert_eq!(broker.ask_checkers(), 1);
    let mut pushes = Vec::new();
    support::wait_until("the push", || {
        c.ping().expect("ping");
        pushes.extend(c.take_pushes());
        !pushes.is_empty()
    });
    let [cmq_client::Push::TransactionCheck(check)] = &pushes[..] else { panic!("{pushes:?}") };
    assert_eq!((check.msg_id, check.queue.as_str(), check.check_count), (id, "tx", 1));
}

/// A request that crosses the broker's idle close (the broker answers the
/// connection with IDLE_TIMEOUT, request id 0, and closes it without reading
/// the request) is sent again on a new connection: the caller sees its answer.
#[test]
fn a_request_that_meets_an_idle_close_is_sent_again_on_a_new_connection() {
    let connections = AtomicUsize::new(0);
    let pings = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = pings.clone();
    let server = FakeServer::start(move |mut peer| {
        let nth = connections.fetch_add(1, Ordering::SeqCst);
        peer.accept_handshake(1, 0);
        while let Some((id, _)) = peer.read_request() {
            if nth == 0 {
                let mut out = Vec::new();
                ErrorBody::new(ErrorCode::IDLE_TIMEOUT, "idle for 500 ms").encode_frame(0, 0, &mut out);
                peer.write_raw(&out);
                return;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            peer.respond(id, &Response::Ping(Empty {}));
        }
    });
    let mut c = client(server.addr());
    c.ping().expect("answered on a second connection");
    assert_eq!(pings.load(Ordering::SeqCst), 1, "run once");
}
