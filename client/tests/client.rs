//! `Client` against the real cmqd, and against scripted servers where a test
//! needs one that misbehaves, over real sockets.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cmq_client::{Client, ClientError};
use cmq_protocol::names::shard_for;
use cmq_protocol::*;
use support::scripted::ScriptedServer;
use support::{broker, client, wait_until};

#[test]
fn every_operation_round_trips() {
    let broker = broker(1);
    let mut c = client(broker.addr);
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
    let broker = broker(1);
    let mut c = client(broker.addr);
    c.create_queue("empty", &QueueAttributesUpdate::default()).expect("create");
    assert_eq!(c.receive("empty", Some(0)).expect("not an error"), None);
    assert!(c.receive_batch("empty", 16, Some(0)).expect("not an error").is_empty());
}

#[test]
fn server_errors_carry_code_and_message() {
    let broker = broker(1);
    let mut c = client(broker.addr);
    let err = c.queue_info("nope").expect_err("no such queue");
    assert_eq!(err.code(), Some(ErrorCode::QUEUE_NOT_FOUND));
    assert_eq!(err.to_string(), "4440 QUEUE_NOT_FOUND: queue \"nope\" does not exist");
    // A server error leaves the client fully usable.
    c.ping().expect("still connected");
}

/// Frames each shard's connection has sent so far.
fn sent_per_shard(c: &Client) -> Vec<u64> {
    (0..c.shard_count()).map(|s| c.connection(s).map_or(0, |conn| conn.stats().frames_sent)).collect()
}

#[test]
fn queue_requests_go_to_the_owning_shard() {
    const SHARDS: u16 = 4;
    let broker = broker(SHARDS);
    let mut c = client(broker.addr);
    assert_eq!(c.shard_count(), SHARDS);
    let names: Vec<String> = (0..24).map(|i| format!("queue-{i}")).collect();
    for name in &names {
        let owner = shard_for(name, SHARDS);
        let before = sent_per_shard(&c);
        c.create_queue(name, &QueueAttributesUpdate::default()).expect("create");
        c.send(name, "x", 0).expect("send");
        assert_eq!(c.receive(name, Some(0)).expect("receive").map(|m| m.body), Some(Bytes::from("x")));
        assert_eq!(c.queue_info(name).expect("info").shard, owner, "the broker keeps {name} where the client thinks");
        let after = sent_per_shard(&c);
        for shard in 0..SHARDS {
            let sent = after[usize::from(shard)] - before.get(usize::from(shard)).copied().unwrap_or(0);
            // A connection opened just now also sent its handshake.
            let handshake = u64::from(before[usize::from(shard)] == 0 && sent > 0);
            let want = if shard == owner { 4 } else { 0 };
            assert_eq!(sent - handshake, want, "{name}: shard {shard} (owner {owner}) sent {sent}");
        }
    }
    // Every shard got traffic, over one connection each, served by that shard.
    for shard in 0..SHARDS {
        let conn = c.connection(shard).expect("a connection per shard");
        assert_eq!(conn.shard_id(), shard);
    }
}

#[test]
fn hints_a_broker_ignores_still_work() {
    // A broker that serves every connection from shard 0, whatever was
    // asked (cmqd honours hints; an older or proxied one may not): the
    // client must simply keep going, since a broker forwards.
    let hints = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = hints.clone();
    let server = ScriptedServer::start(move |mut peer| {
        let hello = peer.accept_handshake(4, 0);
        seen.lock().expect("lock").push(hello.shard_hint);
        while let Some((id, req)) = peer.read_request() {
            let resp = match req {
                Request::CreateQueue(_) => Response::CreateQueue(CreateQueueOk { queue_id: 1 }),
                Request::SendMessage(_) => Response::SendMessage(SendMessageOk { msg_id: 7 }),
                other => panic!("unexpected {:?}", other.opcode()),
            };
            peer.respond(id, &resp);
        }
    });
    let mut c = client(server.addr());
    for i in 0..8 {
        let name = format!("q{i}");
        c.create_queue(&name, &QueueAttributesUpdate::default()).expect("create");
        assert_eq!(c.send(&name, "x", 0).expect("send"), 7);
    }
    let hints = hints.lock().expect("lock").clone();
    assert!(hints.iter().any(|h| h.is_some_and(|h| h != 0)), "client did ask for other shards: {hints:?}");
    assert!(hints.len() <= 4, "one connection per shard at most: {hints:?}");
}

#[test]
fn a_long_poll_does_not_hold_up_a_later_answer() {
    let (answered_tx, answered_rx) = mpsc::channel::<()>();
    let answered_rx = Mutex::new(answered_rx);
    let server = ScriptedServer::start(move |mut peer| {
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
    let server = ScriptedServer::start(|mut peer| {
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
    let broker = broker(1);
    let mut c = client(broker.addr);
    let t = c.submit(&Request::Ping(Ping {})).expect("submit");
    c.wait(t).expect("first wait");
    let err = c.wait(t).expect_err("second wait");
    assert!(matches!(&err, ClientError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput), "{err:?}");
    c.ping().expect("client unaffected");
}

/// The first two Pings and every send are read and then the connection is
/// dropped without an answer; later Pings are answered.
fn dropping_server() -> (ScriptedServer, Arc<AtomicUsize>) {
    let pings = Arc::new(AtomicUsize::new(0));
    let sends = Arc::new(AtomicUsize::new(0));
    let seen = sends.clone();
    let server = ScriptedServer::start(move |mut peer| {
        peer.accept_handshake(1, 0);
        while let Some((id, req)) = peer.read_request() {
            let drop_it = match req {
                Request::Ping(_) => pings.fetch_add(1, Ordering::SeqCst) < 2,
                _ => {
                    seen.fetch_add(1, Ordering::SeqCst);
                    true
                }
            };
            if drop_it {
                return;
            }
            peer.respond(id, &Response::Ping(Empty {}));
        }
    });
    (server, sends)
}

#[test]
fn a_dropped_connection_fails_its_tickets_and_the_next_call_reconnects() {
    let (server, sends) = dropping_server();
    let mut c = client(server.addr());
    let t = c.submit(&Request::Ping(Ping {})).expect("submit");
    let err = c.wait(t).expect_err("the connection hangs up");
    assert!(matches!(err, ClientError::Disconnected), "tickets are not retried: {err:?}");

    // One node and nowhere else to go: the loss is reported as it is...
    let err = c.ping().expect_err("the second drop");
    assert!(matches!(err, ClientError::Disconnected), "{err:?}");
    // ...and the next call reconnects.
    c.ping().expect("reconnected");

    // A send may have been stored before the connection went: not repeated.
    let err = c.send("q", "body", 0).expect_err("dropped");
    match &err {
        ClientError::OutcomeUnknown { op, cause, .. } => {
            assert_eq!(*op, "SendMessage");
            assert!(matches!(**cause, ClientError::Disconnected), "{cause:?}");
        }
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert!(err.to_string().contains("may or may not have been applied"), "{err}");
    assert_eq!(sends.load(Ordering::SeqCst), 1, "sent once, never repeated");
    c.ping().expect("the client carries on");
}

#[test]
fn waits_on_receives_allow_for_the_polling_wait() {
    // The only test that sleeps: what it checks is the passing of time.
    let server = ScriptedServer::start(|mut peer| {
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
/// that the next receive moves it to the dead-letter queue (maxReceiveCount
/// 1); returns once they are all there (the move crosses shards).
fn exhaust_receives(c: &mut Client, queue: &str) {
    let got = c.receive_batch(queue, 16, Some(0)).expect("receive");
    for m in &got {
        c.change_visibility(queue, m.receipt_handle, 0).expect("make visible");
    }
    assert_eq!(c.receive(queue, Some(0)).expect("receive"), None, "all moved to the dead-letter queue");
    let dlq = c.queue_info(queue).expect("info").attributes.dead_letter_queue;
    wait_until("the dead-lettered messages to arrive", || {
        c.queue_info(&dlq).expect("info").active_msg_num == got.len() as u64
    });
}

#[test]
fn dead_lettered_messages_carry_their_origin() {
    let broker = broker(2);
    let mut c = client(broker.addr);
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
    let broker = broker(1);
    let mut c = client(broker.addr);
    let keep = QueueAttributesUpdate { rewind_seconds: Some(600), ..Default::default() };
    c.create_queue("q", &keep).expect("create");
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
    assert_eq!(status.dequeue_count, 1);
    assert!(status.enqueue_time_ms >= start);
    assert_eq!(c.rewind_queue("q", start).expect("rewind"), 1);
    assert_eq!(c.query_message("q", ids[0]).expect("query").state, MessageState::Ready);
    assert_eq!(c.receive("q", Some(0)).expect("receive").map(|m| m.msg_id), Some(ids[0]), "enqueue order");

    assert_eq!(c.purge_queue("q").expect("purge"), 3);
    assert_eq!(c.query_message("q", ids[2]).expect("query").state, MessageState::Purged);
    assert_eq!(c.receive("q", Some(0)).expect("receive"), None);
    let unknown = c.query_message("q", 12345).expect("an answer, not an error");
    assert_eq!((unknown.msg_id, unknown.state), (12345, MessageState::Gone));
}

#[test]
fn transaction_messages_commit_and_roll_back() {
    let broker = broker(2);
    let mut c = client(broker.addr);
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
    let err = c.end_transaction("tx", keep, false).expect_err("already committed");
    assert_eq!(err.code(), Some(ErrorCode::MESSAGE_NOT_FOUND));
}

#[test]
fn redrives_start_list_and_cancel_on_the_shard_their_id_names() {
    const SHARDS: u16 = 4;
    let broker = broker(SHARDS);
    let mut c = client(broker.addr);
    // The first connection's shard is wherever the broker put it; pick a
    // dead-letter queue on another one, so the id must steer the cancel.
    let home = c.server_info().shard_id;
    let dlq = (0..).map(|i| format!("graveyard-{i}")).find(|n| shard_for(n, SHARDS) != home).expect("a name");
    let dlq_shard = shard_for(&dlq, SHARDS);
    dead_letter_setup(&mut c, "src", &dlq);
    c.create_queue("elsewhere", &QueueAttributesUpdate::default()).expect("create");
    let bodies: Vec<Bytes> = (0..10).map(|i| Bytes::from(i.to_string())).collect();
    c.send_batch("src", &bodies, 0).expect("send");
    exhaust_receives(&mut c, "src");

    // One message a second: most are still there when it is cancelled.
    let task = c.start_redrive(&dlq, None, 1).expect("start");
    assert_eq!((task.state, task.remaining, task.rate_per_second), (RedriveState::Running, 10, 1));
    assert_eq!(task.to, "");
    assert_eq!(task.id >> 48, u64::from(dlq_shard), "the id names the dead-letter queue's shard");
    let listed = c.list_redrives().expect("list");
    assert_eq!((listed.len(), listed[0].id, listed[0].state), (1, task.id, RedriveState::Running));
    let sent_before = c.connection(dlq_shard).map_or(0, |conn| conn.stats().frames_sent);
    let cancelled = c.cancel_redrive(task.id).expect("cancel");
    let sent_after = c.connection(dlq_shard).expect("the id's shard's connection").stats().frames_sent;
    assert!(sent_after > sent_before, "the cancel went to shard {dlq_shard}, the one its id names");
    assert_eq!(cancelled.state, RedriveState::Cancelled);
    assert!(cancelled.moved < 10, "at 1/s it cannot have moved all 10 by now: {cancelled:?}");
    // Moves already under way finish; nothing more follows.
    wait_until("the moved messages to reach src", || {
        c.queue_info("src").expect("info").active_msg_num == cancelled.moved
    });
    let moved = c.receive_batch("src", 16, Some(0)).expect("receive");
    assert_eq!(moved.len() as u64, cancelled.moved, "what it says it moved is back in src");
    assert!(moved.iter().all(|m| m.origin.as_ref().is_some_and(|o| o.source_queue == "src")));

    let all = c.start_redrive(&dlq, Some("elsewhere"), 0).expect("start");
    let left = 10 - cancelled.moved;
    assert_eq!(all.remaining, left);
    let mut done = None;
    wait_until("the unlimited redrive to finish", || {
        done = c.list_redrives().expect("list").into_iter().find(|t| t.id == all.id && t.state == RedriveState::Done);
        done.is_some()
    });
    let done = done.expect("done");
    assert_eq!((done.moved, done.remaining, done.failed, done.to.as_str()), (left, 0, 0, "elsewhere"));
    assert_eq!(done.note, "", "nothing failed");
    assert_eq!(c.receive_batch("elsewhere", 16, Some(0)).expect("receive").len() as u64, left);

    let err = c.cancel_redrive((1 << 48) | 999).expect_err("unknown");
    assert_eq!(err.code(), Some(ErrorCode::REDRIVE_NOT_FOUND));
}

#[test]
fn a_redrive_to_a_missing_queue_is_refused_and_a_failed_one_says_why() {
    let broker = broker(2);
    let mut c = client(broker.addr);
    dead_letter_setup(&mut c, "src", "dlq");
    c.send_batch("src", &[Bytes::from("1"), Bytes::from("2")], 0).expect("send");
    exhaust_receives(&mut c, "src");

    let err = c.start_redrive("dlq", Some("nowhere"), 0).expect_err("refused up front");
    assert_eq!(err.code(), Some(ErrorCode::QUEUE_NOT_FOUND));
    assert_eq!(err.to_string(), "4440 QUEUE_NOT_FOUND: to: queue \"nowhere\" does not exist");
    assert!(c.list_redrives().expect("list").is_empty(), "no task was started");

    // The source queue goes away after the messages left it: back where
    // they came from is nowhere, and the task's status says so.
    let clear = QueueAttributesUpdate { dead_letter_queue: Some(String::new()), ..Default::default() };
    c.set_queue_attributes("src", &clear).expect("clear policy");
    c.delete_queue("src").expect("delete source");
    let task = c.start_redrive("dlq", None, 0).expect("start");
    let mut finished = None;
    wait_until("the redrive to finish", || {
        finished =
            c.list_redrives().expect("list").into_iter().find(|t| t.id == task.id && t.state != RedriveState::Running);
        finished.is_some()
    });
    let t = finished.expect("finished");
    assert_eq!((t.state, t.moved, t.failed), (RedriveState::Done, 0, 2), "{t:?}");
    assert_eq!(
        t.note,
        "2 messages could not be moved (queue \"src\" does not exist); they stay in the dead-letter queue"
    );
    assert_eq!(c.queue_info("dlq").expect("info").active_msg_num, 2, "still in the dead-letter queue");
}

#[test]
fn requests_are_routed_as_the_protocol_says() {
    let broker = broker(4);
    let c = client(broker.addr);
    let cancel = |shard: u64| Request::CancelRedrive(CancelRedrive { id: (shard << 48) | 7 });
    assert_eq!(c.shard_for_request(&cancel(3)), 3);
    assert_eq!(c.shard_for_request(&cancel(0)), 0);
    // A shard the broker does not have (fewer shards since the id was minted): the first connection.
    assert_eq!(c.shard_for_request(&cancel(9)), c.server_info().shard_id);
    let send = Request::SendMessage(SendMessage {
        queue: "q7".into(),
        delay_seconds: 0,
        body: Bytes::new(),
        ..Default::default()
    });
    assert_eq!(c.shard_for_request(&send), shard_for("q7", 4));
    assert_eq!(c.shard_for_request(&Request::ListRedrives(ListRedrives {})), c.server_info().shard_id);
}

#[test]
fn pushes_reaching_a_client_are_kept_for_take_pushes() {
    let broker = broker(2);
    let mut c = client(broker.addr);
    // The broker asks the group's checker a second after the half message.
    let check_soon = QueueAttributesUpdate { first_query_interval: Some(1), ..Default::default() };
    c.create_queue("tx", &check_soon).expect("create");
    c.call(&Request::RegisterChecker(RegisterChecker { producer_group: "grp".into() })).expect("register");
    let id = c.send_transaction_message("tx", "grp", "x").expect("half");
    let mut pushes = Vec::new();
    wait_until("the push", || {
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
    let server = support::scripted::ScriptedServer::start(move |mut peer| {
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
