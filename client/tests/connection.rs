//! `Connection` over real loopback sockets: against the real cmqd, and
//! against a scripted server where a test needs exact control of what the
//! server sends (answers out of order, frames cut or garbled, silence).

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmq_client::{ClientError, Connection, Event, Push};
use cmq_protocol::frame;
use cmq_protocol::*;
use support::scripted::{self, response_frame, ScriptedServer};
use support::{broker, CLIENT_TIMEOUT};

fn connect(server: &ScriptedServer) -> Connection {
    Connection::connect_with_timeout(server.addr(), None, Some(CLIENT_TIMEOUT)).expect("connect to scripted server")
}

fn ping() -> Request {
    Request::Ping(Ping {})
}

#[test]
fn handshake_sends_hint_and_reports_the_shard() {
    let broker = broker(4);
    for hint in 0..4 {
        let conn = Connection::connect_with_timeout(broker.addr, Some(hint), Some(CLIENT_TIMEOUT)).expect("connect");
        assert_eq!((conn.shard_count(), conn.shard_id()), (4, hint), "cmqd serves the hinted shard");
        assert!(conn.handshake_info().server.starts_with("cmqd/"), "{:?}", conn.handshake_info());
    }
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = ScriptedServer::start(move |mut peer| {
        let hello = peer.accept_handshake(8, 3);
        let _ = tx.lock().expect("lock").send(hello);
    });
    Connection::connect_with_timeout(server.addr(), Some(3), Some(CLIENT_TIMEOUT)).expect("connect");
    let hello = rx.recv().expect("server saw a handshake");
    assert_eq!(hello.shard_hint, Some(3));
    assert!(hello.client.starts_with("cmq-client/"), "{}", hello.client);
}

#[test]
fn out_of_order_responses_are_matched_by_id() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let reqs: Vec<_> = (0..3).map(|_| peer.read_request().expect("request")).collect();
        // Answer last-first, each with the response type its request asked for.
        for (id, req) in reqs.into_iter().rev() {
            let resp = match req {
                Request::Ping(_) => Response::Ping(Empty {}),
                Request::ListQueues(_) => Response::ListQueues(ListQueuesOk { total: 7, queues: vec![] }),
                Request::GetQueueAttributes(r) => {
                    Response::GetQueueAttributes(QueueInfo { queue: r.queue, ..Default::default() })
                }
                other => panic!("unexpected {:?}", other.opcode()),
            };
            peer.respond(id, &resp);
        }
    });
    let mut conn = connect(&server);
    let a = conn.submit(&ping());
    let b = conn.submit(&Request::ListQueues(ListQueues::default()));
    let c = conn.submit(&Request::GetQueueAttributes(GetQueueAttributes { queue: "q1".into() }));
    assert_eq!(conn.in_flight(), 3);
    conn.flush().expect("flush");

    let mut order = Vec::new();
    for _ in 0..3 {
        let (id, result) = conn.recv().expect("connection healthy");
        match result.expect("success") {
            Response::Ping(_) => assert_eq!(id, a),
            Response::ListQueues(l) => assert_eq!((id, l.total), (b, 7)),
            Response::GetQueueAttributes(info) => assert_eq!((id, info.queue.as_str()), (c, "q1")),
            other => panic!("unexpected {other:?}"),
        }
        order.push(id);
    }
    assert_eq!(order, [c, b, a]);
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn many_pipelined_requests_go_out_in_one_write_and_come_back_in_few_reads() {
    const N: usize = 1000;
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        // Read every request before answering any: the client must not be
        // waiting for an answer before sending the next request.
        let ids: Vec<u64> = (0..N).map(|_| peer.read_request().expect("request").0).collect();
        let mut all = Vec::new();
        for id in ids {
            all.extend(response_frame(id, &Response::Ping(Empty {})));
        }
        peer.write_raw(&all);
    });
    let mut conn = connect(&server);
    let before = conn.stats();
    let ids: Vec<u64> = (0..N).map(|_| conn.submit(&ping())).collect();
    conn.flush().expect("flush");
    let after_flush = conn.stats();
    assert_eq!(after_flush.writes - before.writes, 1, "one flush of {N} small frames is one write");

    let mut got = Vec::with_capacity(N);
    for _ in 0..N {
        let (id, result) = conn.recv().expect("healthy");
        assert!(matches!(result, Ok(Response::Ping(_))));
        got.push(id);
    }
    assert_eq!(got, ids);
    let stats = conn.stats();
    assert_eq!(stats.frames_received - before.frames_received, N as u64);
    // 16 KB of responses: a handful of reads, not one per frame.
    assert!(stats.reads - before.reads <= 8, "{} reads for {N} frames", stats.reads - before.reads);
}

#[test]
fn error_frame_becomes_server_error_and_connection_stays_usable() {
    let broker = broker(1);
    let mut conn = Connection::connect_with_timeout(broker.addr, None, Some(CLIENT_TIMEOUT)).expect("connect");
    let id = conn.submit(&Request::GetQueueAttributes(GetQueueAttributes { queue: "x".into() }));
    let (got, result) = conn.recv().expect("healthy");
    assert_eq!(got, id);
    let err = result.expect_err("error frame");
    assert_eq!(err.code(), Some(ErrorCode::QUEUE_NOT_FOUND));
    assert_eq!(err.to_string(), "4440 QUEUE_NOT_FOUND: queue \"x\" does not exist");
    assert!(matches!(err, ClientError::Server { .. }));

    conn.submit(&ping());
    assert!(matches!(conn.recv().expect("still healthy").1, Ok(Response::Ping(_))));
}

#[test]
fn server_closing_mid_frame_is_disconnected_at_every_cut() {
    let frame = response_frame(1, &Response::ListQueues(ListQueuesOk { total: 1, queues: vec![] }));
    for cut in [0, 1, 4, 15, 16, frame.len() - 1] {
        let server = ScriptedServer::start(move |mut peer| {
            peer.accept_handshake(1, 0);
            let (id, _) = peer.read_request().expect("request");
            let mut partial = response_frame(id, &Response::ListQueues(ListQueuesOk { total: 1, queues: vec![] }));
            partial.truncate(cut);
            peer.write_raw(&partial);
            // Dropping the peer closes the socket.
        });
        let mut conn = connect(&server);
        conn.submit(&Request::ListQueues(ListQueues::default()));
        let err = conn.recv().expect_err("closed mid-frame");
        assert!(matches!(err, ClientError::Disconnected), "cut {cut}: {err:?}");
        assert!(conn.is_broken());
        assert!(matches!(conn.recv(), Err(ClientError::Disconnected)));
        assert!(matches!(conn.flush(), Err(ClientError::Disconnected)));
    }
}

#[test]
fn impossible_frame_length_is_a_protocol_error() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        peer.read_request();
        peer.write_raw(&u32::MAX.to_le_bytes());
        // Keep the socket open: the client must not wait for 4 GiB to arrive.
        peer.read_request();
    });
    let mut conn = connect(&server);
    conn.submit(&ping());
    let err = conn.recv().expect_err("oversized");
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    assert!(conn.is_broken());
}

#[test]
fn undecodable_or_mismatched_payloads_fail_only_their_request() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let (a, _) = peer.read_request().expect("a");
        let (b, _) = peer.read_request().expect("b");
        let (c, _) = peer.read_request().expect("c");
        // a: a ListQueues answer to a Ping.
        peer.respond(a, &Response::ListQueues(ListQueuesOk::default()));
        // b: right opcode, payload with a trailing byte.
        let mut bad = response_frame(b, &Response::Ping(Empty {}));
        bad.push(0xee);
        bad[0] += 1;
        peer.write_raw(&bad);
        peer.respond(c, &Response::Ping(Empty {}));
    });
    let mut conn = connect(&server);
    let ids: Vec<u64> = (0..3).map(|_| conn.submit(&ping())).collect();
    for (i, expect_ok) in [false, false, true].into_iter().enumerate() {
        let (id, result) = conn.recv().expect("framing intact");
        assert_eq!(id, ids[i]);
        match result {
            Ok(_) => assert!(expect_ok, "request {i} should have failed"),
            Err(e) => assert!(!expect_ok && matches!(e, ClientError::Protocol(_)), "request {i}: {e:?}"),
        }
    }
    assert!(!conn.is_broken());
}

#[test]
fn response_to_a_request_never_sent_breaks_the_connection() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let (id, _) = peer.read_request().expect("request");
        peer.respond(id + 100, &Response::Ping(Empty {}));
        peer.read_request();
    });
    let mut conn = connect(&server);
    conn.submit(&ping());
    assert!(matches!(conn.recv(), Err(ClientError::Protocol(_))));
    assert!(conn.is_broken());
}

#[test]
fn refused_handshake_reports_the_code() {
    let server = ScriptedServer::start(|mut peer| {
        let (id, _) = peer.read_request().expect("handshake");
        peer.respond_error(id, Opcode::Handshake, ErrorCode::UNSUPPORTED_VERSION, "this server speaks 7..=9");
    });
    let err = Connection::connect_with_timeout(server.addr(), None, Some(CLIENT_TIMEOUT)).expect_err("refused");
    assert!(matches!(err, ClientError::Handshake { .. }), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::UNSUPPORTED_VERSION));
    assert_eq!(err.to_string(), "handshake failed: 4003 UNSUPPORTED_VERSION: this server speaks 7..=9");
}

#[test]
fn unsolicited_error_before_close_is_surfaced() {
    // A full broker answers the connection itself, not the handshake's id.
    let server = ScriptedServer::start(|mut peer| {
        peer.read_request();
        peer.respond_error(0, Opcode::Handshake, ErrorCode::TOO_MANY_CONNECTIONS, "limit 2 reached");
    });
    let err = Connection::connect_with_timeout(server.addr(), None, Some(CLIENT_TIMEOUT)).expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::TOO_MANY_CONNECTIONS), "{err:?}");
}

#[test]
fn silent_server_during_handshake_times_out() {
    let (server, release_tx) = scripted::silent_server();
    let err = Connection::connect_with_timeout(server.addr(), None, Some(Duration::from_millis(50)))
        .expect_err("no handshake answer");
    assert!(err.is_timeout(), "{err:?}");
    // What happened, not the OS's "Resource temporarily unavailable (os error 11)".
    let text = err.to_string();
    assert_eq!(text, format!("timed out after 50 ms waiting for an answer from {}", server.addr()));
    drop(release_tx);
}

#[test]
fn read_timeout_leaves_the_connection_usable() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let server = ScriptedServer::start(move |mut peer| {
        peer.accept_handshake(1, 0);
        let (id, _) = peer.read_request().expect("request");
        // Send half the answer, then the rest only once the client timed out.
        let frame = response_frame(id, &Response::Ping(Empty {}));
        peer.write_raw(&frame[..10]);
        go_rx.lock().expect("lock").recv().expect("go");
        peer.write_raw(&frame[10..]);
    });
    let mut conn = connect(&server);
    conn.set_read_timeout(Some(Duration::from_millis(50))).expect("set timeout");
    let id = conn.submit(&ping());
    let err = conn.recv().expect_err("nothing complete yet");
    assert!(err.is_timeout(), "{err:?}");
    assert!(!conn.is_broken());
    go_tx.send(()).expect("server waiting");
    conn.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("set timeout");
    let (got, result) = conn.recv().expect("rest arrived");
    assert_eq!(got, id);
    assert!(result.is_ok());
}

#[test]
fn recv_with_nothing_in_flight_fails_instead_of_blocking() {
    let broker = broker(1);
    let mut conn = Connection::connect(broker.addr, None).expect("connect without timeout");
    let err = conn.recv().expect_err("nothing to wait for");
    assert!(matches!(&err, ClientError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput), "{err:?}");
    assert!(!conn.is_broken());
}

#[test]
fn recv_flushes_what_was_submitted() {
    let broker = broker(1);
    let mut conn = Connection::connect_with_timeout(broker.addr, None, Some(CLIENT_TIMEOUT)).expect("connect");
    let id = conn.submit(&ping());
    assert!(conn.has_unflushed());
    assert_eq!(conn.recv().expect("healthy").0, id);
}

fn check_push(msg_id: u64) -> Push {
    let Request::TransactionCheck(c) = scripted::check("q", msg_id, "g") else { unreachable!() };
    Push::TransactionCheck(c)
}

#[test]
fn a_push_between_two_replies_is_queued_and_replies_keep_their_ids() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let (a, _) = peer.read_request().expect("a");
        let (b, _) = peer.read_request().expect("b");
        // One write: reply b, a push, reply a, another push. The pushes carry
        // request id 0 and would be "a response nobody asked for" if mistaken.
        let mut all = response_frame(b, &Response::ListQueues(ListQueuesOk { total: 2, queues: vec![] }));
        all.extend(scripted::push_frame(&scripted::check("q", 7, "g")));
        all.extend(response_frame(a, &Response::Ping(Empty {})));
        all.extend(scripted::push_frame(&scripted::check("q", 8, "g")));
        peer.write_raw(&all);
        let (c, _) = peer.read_request().expect("c");
        peer.respond(c, &Response::Ping(Empty {}));
    });
    let mut conn = connect(&server);
    let a = conn.submit(&ping());
    let b = conn.submit(&Request::ListQueues(ListQueues::default()));
    let (id, result) = conn.recv().expect("healthy");
    assert_eq!(id, b);
    assert!(matches!(result, Ok(Response::ListQueues(l)) if l.total == 2));
    let (id, result) = conn.recv().expect("healthy");
    assert_eq!(id, a);
    assert!(matches!(result, Ok(Response::Ping(_))));
    // The second push is buffered behind the last reply; a later recv reads past it.
    let c = conn.submit(&ping());
    assert_eq!(conn.recv().expect("healthy").0, c);
    assert_eq!(conn.queued_pushes(), 2);
    assert_eq!(conn.take_pushes(), [check_push(7), check_push(8)]);
    assert!(conn.take_pushes().is_empty());
    assert_eq!(conn.stats().pushes_received, 2);
    assert!(!conn.is_broken());
}

#[test]
fn recv_event_interleaves_replies_and_pushes_in_arrival_order() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let (a, _) = peer.read_request().expect("a");
        let (b, _) = peer.read_request().expect("b");
        peer.respond(a, &Response::Ping(Empty {}));
        peer.push(&scripted::check("q", 1, "g"));
        peer.respond(b, &Response::Ping(Empty {}));
        peer.push(&scripted::check("q", 2, "g"));
        peer.read_request();
    });
    let mut conn = connect(&server);
    let a = conn.submit(&ping());
    let b = conn.submit(&ping());
    let mut seen = Vec::new();
    for _ in 0..4 {
        match conn.recv_event().expect("healthy") {
            Event::Reply((id, result)) => {
                assert!(result.is_ok());
                seen.push(format!(
                    "reply {}",
                    if id == a {
                        "a"
                    } else if id == b {
                        "b"
                    } else {
                        "?"
                    }
                ));
            }
            Event::Push(Push::TransactionCheck(c)) => seen.push(format!("check {}", c.msg_id)),
            Event::Push(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["reply a", "check 1", "reply b", "check 2"]);
    // The last push arrived with nothing in flight: recv_event waited for it
    // where recv refuses to wait.
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn recv_event_returns_pushes_queued_by_recv_first() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let (a, _) = peer.read_request().expect("a");
        peer.push(&scripted::check("q", 5, "g"));
        peer.respond(a, &Response::Ping(Empty {}));
        peer.push(&scripted::check("q", 6, "g"));
        peer.read_request();
    });
    let mut conn = connect(&server);
    conn.submit(&ping());
    assert!(conn.recv().expect("reply").1.is_ok());
    assert!(matches!(conn.recv_event().expect("push"), Event::Push(p) if p == check_push(5)));
    assert!(matches!(conn.recv_event().expect("push"), Event::Push(p) if p == check_push(6)));
    // Nothing in flight and nothing pushed: recv still refuses to wait.
    let err = conn.recv().expect_err("nothing to wait for");
    assert!(matches!(&err, ClientError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput), "{err:?}");
}

#[test]
fn unknown_or_malformed_pushes_are_surfaced_not_fatal() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let (a, _) = peer.read_request().expect("a");
        // An opcode this client does not know, flagged PUSH.
        let mut unknown = Vec::new();
        let start = frame::begin(&mut unknown, 0x0999, frame::FLAG_PUSH, 0);
        unknown.extend_from_slice(b"future");
        frame::end(&mut unknown, start);
        // A TransactionCheck whose payload is cut short.
        let mut short = Vec::new();
        let start = frame::begin(&mut short, Opcode::TransactionCheck as u16, frame::FLAG_PUSH, 0);
        short.extend_from_slice(&[1, 0]);
        frame::end(&mut short, start);
        peer.write_raw(&[unknown, short].concat());
        peer.respond(a, &Response::Ping(Empty {}));
    });
    let mut conn = connect(&server);
    let a = conn.submit(&ping());
    assert_eq!(conn.recv().expect("healthy").0, a);
    let pushes = conn.take_pushes();
    assert!(
        matches!(&pushes[..], [
            Push::Unrecognised { opcode: 0x0999, payload, .. },
            Push::Unrecognised { opcode: 0x0213, reason, .. },
        ] if &payload[..] == b"future" && reason.contains("TransactionCheck")),
        "{pushes:?}"
    );
    assert!(!conn.is_broken());
}

#[test]
fn a_push_flagged_as_a_response_breaks_the_connection() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        let (a, _) = peer.read_request().expect("a");
        let mut bad = Vec::new();
        let start = frame::begin(&mut bad, Opcode::Ping as u16, frame::FLAG_PUSH | frame::FLAG_RESPONSE, a);
        frame::end(&mut bad, start);
        peer.write_raw(&bad);
        peer.read_request();
    });
    let mut conn = connect(&server);
    conn.submit(&ping());
    assert!(matches!(conn.recv(), Err(ClientError::Protocol(_))));
    assert!(conn.is_broken());
}

#[test]
fn a_closer_wakes_a_blocked_recv_event_from_another_thread() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        peer.read_request(); // until the client closes
    });
    let mut conn = Connection::connect(server.addr(), None).expect("connect without timeout");
    let closer = conn.closer().expect("closer");
    let waiter = std::thread::spawn(move || conn.recv_event().map(|_| ()));
    // Whether the waiter is already blocked or not yet reading, it sees the close.
    closer.close();
    closer.close(); // idempotent
    let result = waiter.join().expect("no panic");
    assert!(matches!(result, Err(ClientError::Disconnected)), "{result:?}");
}

// ---- a connection the broker closed while idle -------------------------------------

/// The broker's idle deadline closes a connection with an IDLE_TIMEOUT frame
/// (request id 0) and a FIN. An idle connection notices before its next
/// request; a push that arrived while idle is kept, not taken for a close.
#[test]
fn a_connection_closed_while_idle_is_noticed_before_the_next_request() {
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let closed_tx = Mutex::new(closed_tx);
    let server = ScriptedServer::start(move |mut peer| {
        peer.accept_handshake(1, 0);
        let (id, _) = peer.read_request().expect("ping");
        peer.respond(id, &Response::Ping(Empty {}));
        peer.push(&support::scripted::check("q", 9, "g"));
        let mut out = Vec::new();
        ErrorBody::new(ErrorCode::IDLE_TIMEOUT, "idle for 500 ms").encode_frame(0, 0, &mut out);
        peer.write_raw(&out);
        let _ = closed_tx.lock().expect("lock").send(());
    });
    let mut conn = connect(&server);
    conn.submit(&ping());
    conn.recv().expect("healthy").1.expect("pong");
    assert!(!conn.closed_while_idle(), "just used: not looked at");
    closed_rx.recv().expect("server closed");
    // The check runs only after a quarter second of silence.
    support::wait_until("the close to be noticed", || conn.closed_while_idle());
    assert!(conn.is_broken());
    assert_eq!(conn.take_pushes(), vec![check_push(9)], "the push before the close is kept");
}

#[test]
fn an_idle_connection_that_is_still_open_stays_usable() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        while let Some((id, _)) = peer.read_request() {
            peer.respond(id, &Response::Ping(Empty {}));
        }
    });
    let mut conn = connect(&server);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!conn.closed_while_idle());
    conn.submit(&ping());
    conn.recv().expect("healthy").1.expect("pong");
}
