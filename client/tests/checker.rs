//! `TransactionChecker` against the real cmqd, and against scripted servers
//! for exact push sequences and a broker that goes silent or away.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cmq_client::{Client, ClientError, TransactionChecker};
use cmq_protocol::*;
use support::scripted::{self, ScriptedServer};
use support::tap::Tap;
use support::{broker, client, wait_until, CLIENT_TIMEOUT};

fn checker(addr: std::net::SocketAddr, group: &str) -> TransactionChecker {
    TransactionChecker::connect_with_timeout(addr, group, Some(CLIENT_TIMEOUT)).expect("register")
}

/// Serves the handshake and a RegisterChecker, like a broker would.
fn accept_checker(peer: &mut scripted::Peer) -> String {
    peer.accept_handshake(1, 0);
    let (id, req) = peer.read_request().expect("RegisterChecker");
    let Request::RegisterChecker(r) = req else { panic!("first request was {:?}", req.opcode()) };
    peer.respond(id, &Response::RegisterChecker(Empty {}));
    r.producer_group
}

#[test]
fn a_spawned_checker_commits_rolls_back_and_leaves_undecided_ones_alone() {
    let broker = broker(2);
    let tap = Tap::start(broker.addr);
    let mut producer = client(broker.addr);
    // Asked a second after sending, then every second, long enough never to
    // fall back to the default during the test.
    let attrs =
        QueueAttributesUpdate { first_query_interval: Some(1), max_query_count: Some(1000), ..Default::default() };
    producer.create_queue("tx", &attrs).expect("create");
    let yes = producer.send_transaction_message("tx", "shop", "yes").expect("half");
    let no = producer.send_transaction_message("tx", "shop", "no").expect("half");
    let maybe = producer.send_transaction_message("tx", "shop", "maybe").expect("half");
    let other_group = producer.send_transaction_message("tx", "other", "yes").expect("half");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let thread = checker(tap.addr, "shop").spawn({
        let seen = seen.clone();
        move |check| {
            seen.lock().expect("lock").push((check.msg_id, check.producer_group.clone(), check.check_count));
            match &check.body[..] {
                b"yes" => Some(true),
                b"no" => Some(false),
                _ => None,
            }
        }
    });
    let state = |c: &mut Client, id| c.query_message("tx", id).expect("query").state;
    wait_until("the commit and the rollback", || {
        state(&mut producer, yes) == MessageState::Ready && state(&mut producer, no) == MessageState::RolledBack
    });
    // Asked again, the undecided one comes back with a higher count.
    wait_until("a second check of the undecided one", || {
        seen.lock().expect("lock").iter().any(|(id, _, count)| *id == maybe && *count >= 2)
    });
    assert_eq!(state(&mut producer, maybe), MessageState::Half);
    assert_eq!(state(&mut producer, other_group), MessageState::Half, "not this checker's group");
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.iter().all(|(id, group, _)| group == "shop" && *id != other_group), "{seen:?}");

    // A check repeated before the answer to the previous one landed (a
    // loaded machine) is answered again and refused as already resolved.
    let stats = thread.stop().expect("stopped cleanly");
    assert!(stats.committed >= 1 && stats.rolled_back >= 1 && stats.undecided >= 2, "{stats:?}");
    assert_eq!(stats.checks, stats.committed + stats.rolled_back + stats.undecided, "{stats:?}");
    assert_eq!(stats.refused, stats.committed + stats.rolled_back - 2, "{stats:?}");
    assert_eq!(stats.ignored_pushes, 0);
    wait_until("the checker's connection to close", || tap.open_connections() == 0);
    assert_eq!(producer.receive("tx", Some(0)).expect("receive").map(|m| m.msg_id), Some(yes));
}

#[test]
fn refusals_are_reported_and_checks_pushed_during_a_reply_wait_are_not_lost() {
    let (groups_tx, groups_rx) = mpsc::channel();
    let groups_tx = Mutex::new(groups_tx);
    let server = ScriptedServer::start(move |mut peer| {
        let _ = groups_tx.lock().expect("lock").send(accept_checker(&mut peer));
        // Two checks back to back: the second arrives while the checker waits
        // for the answer to its first EndTransaction.
        // A push of a kind this client does not know is skipped.
        let mut unknown = Vec::new();
        let start = frame::begin(&mut unknown, 0x0999, frame::FLAG_PUSH, 0);
        frame::end(&mut unknown, start);
        peer.push(&scripted::check("q", 1, "g"));
        peer.write_raw(&unknown);
        peer.push(&scripted::check("q", 2, "g"));
        let (id, req) = peer.read_request().expect("EndTransaction 1");
        assert!(matches!(req, Request::EndTransaction(EndTransaction { msg_id: 1, commit: true, .. })), "{req:?}");
        peer.respond_error(id, Opcode::EndTransaction, ErrorCode::MESSAGE_NOT_FOUND, "already resolved");
        let (id, req) = peer.read_request().expect("EndTransaction 2");
        assert!(matches!(req, Request::EndTransaction(EndTransaction { msg_id: 2, .. })), "{req:?}");
        peer.respond(id, &Response::EndTransaction(Empty {}));
        peer.read_request(); // until the client goes
    });
    let mut checker = checker(server.addr(), "g");
    assert_eq!(groups_rx.recv().expect("registered"), "g");
    let stopper = checker.stopper();
    let mut outcomes = Vec::new();
    let stats = checker
        .run_with_report(
            |_| Some(true),
            |outcome| {
                outcomes.push((
                    outcome.check.msg_id,
                    outcome.decision,
                    outcome.result.as_ref().err().and_then(ClientError::code),
                ));
                if outcomes.len() == 2 {
                    stopper.stop();
                }
            },
        )
        .expect("stopped");
    assert_eq!(outcomes, [(1, Some(true), Some(ErrorCode::MESSAGE_NOT_FOUND)), (2, Some(true), None)]);
    assert_eq!((stats.checks, stats.committed, stats.refused, stats.ignored_pushes), (2, 1, 1, 1));
}

#[test]
fn stopping_from_inside_the_callback_ends_run_without_answering() {
    let (ended_tx, ended_rx) = mpsc::channel();
    let ended_tx = Mutex::new(ended_tx);
    let server = ScriptedServer::start(move |mut peer| {
        accept_checker(&mut peer);
        peer.push(&scripted::check("q", 1, "g"));
        // Anything but the connection closing would be a request.
        let _ = ended_tx.lock().expect("lock").send(peer.read_request().map(|(_, r)| r.opcode()));
    });
    let mut checker = checker(server.addr(), "g");
    let stopper = checker.stopper();
    let stats = checker
        .run(|_| {
            stopper.stop();
            Some(true)
        })
        .expect("stopped");
    assert_eq!((stats.checks, stats.committed, stats.undecided), (1, 0, 1));
    assert_eq!(ended_rx.recv().expect("server saw the end"), None, "no EndTransaction after stop");
    assert!(checker.stopper().is_stopped());
    assert!(checker.run(|_| None).is_ok(), "a stopped checker stays stopped");
}

#[test]
fn a_refused_registration_fails_connect() {
    let broker = broker(1);
    let err = TransactionChecker::connect_with_timeout(broker.addr, "9 not a name", Some(CLIENT_TIMEOUT))
        .expect_err("invalid group");
    assert_eq!(err.code(), Some(ErrorCode::INVALID_PARAMETER), "{err:?}");
}

#[test]
fn the_broker_going_away_ends_run_with_an_error() {
    let server = ScriptedServer::start(|mut peer| {
        accept_checker(&mut peer);
        // Dropping the peer closes the connection.
    });
    let err = checker(server.addr(), "g").run(|_| Some(true)).expect_err("disconnected");
    assert!(matches!(err, ClientError::Disconnected), "{err:?}");
}

#[test]
fn heartbeats_keep_a_live_broker_and_detect_a_silent_one() {
    // Answers pings: the checker stays up through several idle intervals.
    let (pings_tx, pings_rx) = mpsc::channel();
    let pings_tx = Mutex::new(pings_tx);
    let server = ScriptedServer::start(move |mut peer| {
        accept_checker(&mut peer);
        while let Some((id, req)) = peer.read_request() {
            assert_eq!(req.opcode(), Opcode::Ping);
            peer.respond(id, &Response::Ping(Empty {}));
            let _ = pings_tx.lock().expect("lock").send(());
        }
    });
    let mut live = checker(server.addr(), "g");
    live.set_heartbeat(Duration::from_millis(20));
    let thread = live.spawn(|_| None);
    for _ in 0..3 {
        pings_rx.recv_timeout(CLIENT_TIMEOUT).expect("a heartbeat ping");
    }
    assert!(!thread.is_finished());
    thread.stop().expect("still healthy when stopped");

    // Never answers: run ends with a timeout after one interval plus the reply timeout.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let server = ScriptedServer::start(move |mut peer| {
        accept_checker(&mut peer);
        peer.read_request().expect("the ping");
        let _ = release_rx.lock().expect("lock").recv();
    });
    let mut silent = TransactionChecker::connect_with_timeout(server.addr(), "g", Some(Duration::from_millis(100)))
        .expect("register");
    silent.set_heartbeat(Duration::from_millis(20));
    let started = Instant::now();
    let err = silent.run(|_| None).expect_err("silent broker");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < CLIENT_TIMEOUT);
    drop(release_tx);
}

#[test]
fn dropping_the_thread_handle_stops_the_checker() {
    let broker = broker(1);
    let tap = Tap::start(broker.addr);
    let thread = checker(tap.addr, "g").spawn(|_| None);
    assert_eq!(tap.open_connections(), 1);
    drop(thread);
    wait_until("the checker's connection to close", || tap.open_connections() == 0);
}
