//! Transaction (half) messages against a real cmqd: invisible until
//! committed, discarded on rollback, durable across kill -9, and, when the
//! producer says nothing, asked back over a registered checker connection
//! (a PUSH frame with request id 0, possibly from another shard) until the
//! checker answers or maxQueryCount checks pass and the queue's
//! transactionDefault applies.
//!
//! Checks run on the broker's timer (firstQueryInterval, at least 1 s), so
//! the tests wait for the push frames themselves, with deadlines.

use std::time::{Duration, Instant};

use cmq_integration_tests::{backlog, name_on_shard, poll_until, Broker, PushConn, RawConn, Reply};
use cmq_protocol::*;

const SHARDS: u16 = 2;

fn tx_queue(interval: u32, max_checks: u32, default: TxDefault) -> QueueAttributesUpdate {
    QueueAttributesUpdate {
        first_query_interval: Some(interval),
        max_query_count: Some(max_checks),
        transaction_default: Some(default),
        ..Default::default()
    }
}

#[test]
fn half_message_is_invisible_until_committed() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("tx");
    let id = c.send_tx_ok("tx", "producers", "payment");
    c.receive("tx", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    let info = c.queue_info("tx");
    assert_eq!(backlog(&info), 0, "a half message is not ready, in flight or delayed: {info:?}");
    let q = c.query_ok("tx", id);
    assert_eq!((q.msg_id, q.state, q.dequeue_count), (id, MessageState::Half, 0), "{q:?}");
    let peeked = c.peek_ok("tx", 0, 10, true).messages;
    assert_eq!(peeked.len(), 1);
    assert_eq!((peeked[0].msg_id, peeked[0].state, &peeked[0].body[..]), (id, MessageState::Half, &b"payment"[..]));

    // A consumer already waiting gets it the moment it is committed.
    let mut consumer = RawConn::open(broker.addr);
    let wait =
        consumer.send(&Request::ReceiveMessage(ReceiveMessage { queue: "tx".into(), polling_wait_seconds: Some(10) }));
    consumer.barrier("tx");
    let t = Instant::now();
    c.end_tx("tx", id, true).ok();
    let Reply::Ok(_, Response::ReceiveMessage(m)) = consumer.read_reply(wait) else { panic!("commit wakes the poll") };
    assert!(t.elapsed() < Duration::from_secs(2), "delivered at commit, not at a timer: {:?}", t.elapsed());
    assert_eq!((m.msg_id, &m.body[..], m.dequeue_count), (id, &b"payment"[..], 1));

    // It is no longer a pending transaction: ending it again is refused either way.
    let e = c.end_tx("tx", id, true).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
    assert!(e.message.contains(&id.to_string()), "{:?}", e.message);
    c.end_tx("tx", id, false).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
    assert_eq!(c.query_ok("tx", id).state, MessageState::InFlight, "a rollback after commit changed nothing");
}

#[test]
fn rolled_back_half_message_is_gone() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("tx");
    let id = c.send_tx_ok("tx", "producers", "undo me");
    c.end_tx("tx", id, false).ok();
    let q = c.query_ok("tx", id);
    assert_eq!((q.msg_id, q.state), (id, MessageState::RolledBack), "{q:?}");
    assert!(q.state_time_ms > 0, "{q:?}");
    c.receive("tx", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    assert!(c.peek_ok("tx", 0, 10, false).messages.is_empty());
    c.end_tx("tx", id, false).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
    c.end_tx("tx", id, true).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
    assert_eq!(c.query_ok("tx", id).state, MessageState::RolledBack, "a commit after rollback changed nothing");
}

#[test]
fn end_transaction_of_anything_but_a_pending_half_message_is_message_not_found() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("tx");
    let plain = c.send_ok("tx", "not a transaction");
    c.end_tx("tx", plain, true).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
    c.end_tx("tx", u64::MAX, true).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
    c.end_tx("missing", plain, true).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    let e = c.send_tx("tx", "9 bad group", "x").expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("producerGroup"), "{:?}", e.message);
    c.send_tx("missing", "g", "x").expect_err(ErrorCode::QUEUE_NOT_FOUND);
    let e = c.register_checker("").expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("producerGroup"), "{:?}", e.message);
    // The plain message is untouched.
    assert_eq!(c.receive_ok("tx", Some(0)).msg_id, plain);
}

#[test]
fn unresolved_half_message_is_asked_back_and_resolved_by_the_checker() {
    let broker = Broker::start(&["--shards", "2"]);
    let q = name_on_shard("orders", 0, SHARDS);
    let mut c = RawConn::open_on_shard(broker.addr, 0);
    c.create_queue_attrs(&q, tx_queue(1, 3, TxDefault::Rollback));
    // The checker is served by the other shard than the queue's.
    let mut checker = PushConn::open(broker.addr, Some(1));
    checker.register_checker("billing").ok();

    let sent = Instant::now();
    let id = c.send_tx_ok(&q, "billing", "charge 42");
    let enqueued = c.query_ok(&q, id).enqueue_time_ms;

    let first = checker.next_check(Duration::from_secs(5)).expect("a check within firstQueryInterval + slack");
    let first_after = sent.elapsed();
    assert!(first_after >= Duration::from_millis(900), "not before firstQueryInterval: {first_after:?}");
    assert_eq!(
        (first.queue.as_str(), first.msg_id, first.producer_group.as_str(), first.check_count),
        (q.as_str(), id, "billing", 1)
    );
    assert_eq!((first.enqueue_time_ms, &first.body[..]), (enqueued, &b"charge 42"[..]));

    // Not answered: the broker asks again an interval later.
    let second = checker.next_check(Duration::from_secs(5)).expect("a second check");
    // Measured from the send: a late first delivery must not make the gap look short.
    assert!(sent.elapsed() >= Duration::from_millis(1800), "checks are firstQueryInterval apart: {:?}", sent.elapsed());
    assert_eq!((second.msg_id, second.check_count), (id, 2));
    c.receive(&q, Some(0)).expect_err(ErrorCode::NO_MESSAGE);

    // The checker commits on its own connection.
    checker.end_tx(&q, id, true).ok();
    let m = c.receive_ok(&q, Some(5));
    assert_eq!((m.msg_id, &m.body[..]), (id, &b"charge 42"[..]));
    assert!(checker.next_check(Duration::from_millis(1500)).is_none(), "a resolved message is not asked about again");
}

#[test]
fn without_an_answer_the_queue_default_applies_after_max_query_count() {
    const MAX_CHECKS: u32 = 2;
    let broker = Broker::start(&["--shards", "2"]);
    let commits = name_on_shard("commits", 0, SHARDS);
    let rolls = name_on_shard("rolls", 1, SHARDS);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs(&commits, tx_queue(1, MAX_CHECKS, TxDefault::Commit));
    c.create_queue_attrs(&rolls, tx_queue(1, MAX_CHECKS, TxDefault::Rollback));
    // A checker that never answers for the commit queue's group; none at all for the other.
    let mut mute = PushConn::open(broker.addr, Some(1));
    mute.register_checker("mute").ok();

    let sent = Instant::now();
    let to_commit = c.send_tx_ok(&commits, "mute", "commit by default");
    let to_roll = c.send_tx_ok(&rolls, "nobody", "roll back by default");

    // maxQueryCount checks, numbered, then the default commits it.
    for n in 1..=MAX_CHECKS {
        let check = mute.next_check(Duration::from_secs(5)).unwrap_or_else(|| panic!("check {n}"));
        assert_eq!((check.msg_id, check.check_count), (to_commit, n));
    }
    let m = c.receive_ok(&commits, Some(10));
    let waited = sent.elapsed();
    assert_eq!((m.msg_id, &m.body[..]), (to_commit, &b"commit by default"[..]));
    assert!(
        waited >= Duration::from_millis(900 * u64::from(MAX_CHECKS + 1)),
        "the default applies only after {MAX_CHECKS} checks an interval apart: {waited:?}"
    );
    assert!(mute.next_check(Duration::from_millis(300)).is_none(), "no check beyond maxQueryCount");

    let status = poll_until(Duration::from_secs(10), "the rollback default applies", || {
        let s = c.query_ok(&rolls, to_roll);
        if s.state == MessageState::RolledBack {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    });
    assert!(status.state_time_ms >= m.enqueue_time_ms.saturating_sub(1000), "{status:?}");
    c.receive(&rolls, Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    c.end_tx(&rolls, to_roll, true).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
}

#[test]
fn half_messages_survive_kill9() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    // The default firstQueryInterval (10 s): no check interferes.
    c.create_queue("tx");
    let keep = c.send_tx_ok("tx", "g", "keep");
    let drop_it = c.send_tx_ok("tx", "g", "drop");
    let resolved = c.send_tx_ok("tx", "g", "resolved before the crash");
    c.end_tx("tx", resolved, false).ok();
    drop(c);
    broker.kill9();
    broker.restart();
    let mut c = RawConn::open(broker.addr);
    assert_eq!(c.query_ok("tx", keep).state, MessageState::Half);
    assert_eq!(c.query_ok("tx", drop_it).state, MessageState::Half);
    c.end_tx("tx", resolved, true).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
    c.receive("tx", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    c.end_tx("tx", keep, true).ok();
    c.end_tx("tx", drop_it, false).ok();
    let m = c.receive_ok("tx", Some(0));
    assert_eq!((m.msg_id, &m.body[..]), (keep, &b"keep"[..]));
    c.receive("tx", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}

#[test]
fn checks_resume_after_kill9() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let q = name_on_shard("orders", 1, SHARDS);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs(&q, tx_queue(1, 5, TxDefault::Rollback));
    let id = c.send_tx_ok(&q, "billing", "pending at the crash");
    drop(c);
    broker.kill9();
    broker.restart();
    // Registrations do not outlive connections: the checker registers again.
    let mut checker = PushConn::open(broker.addr, Some(0));
    checker.register_checker("billing").ok();
    let check = checker.next_check(Duration::from_secs(5)).expect("the check timer is recovered");
    assert_eq!((check.queue.as_str(), check.msg_id, &check.body[..]), (q.as_str(), id, &b"pending at the crash"[..]));
    checker.end_tx(&q, id, true).ok();
    let mut c = RawConn::open(broker.addr);
    assert_eq!(c.receive_ok(&q, Some(5)).msg_id, id);
}

#[test]
fn when_a_checker_disconnects_the_next_check_goes_to_the_one_still_registered() {
    let broker = Broker::start(&["--shards", "2"]);
    let q = name_on_shard("orders", 0, SHARDS);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs(&q, tx_queue(1, 10, TxDefault::Rollback));
    // The first checker is on the other shard than the queue, and leaves after one check.
    let mut first = PushConn::open(broker.addr, Some(1));
    first.register_checker("billing").ok();
    let id = c.send_tx_ok(&q, "billing", "x");
    let check = first.next_check(Duration::from_secs(5)).expect("first check");
    assert_eq!((check.msg_id, check.check_count), (id, 1));
    drop(first);
    let mut second = PushConn::open(broker.addr, Some(1));
    second.register_checker("billing").ok();
    let check = second.next_check(Duration::from_secs(5)).expect("the next check reaches the live checker");
    assert_eq!((check.msg_id, check.check_count), (id, 2), "no check was sent to the closed connection");
    second.end_tx(&q, id, false).ok();
    assert_eq!(c.query_ok(&q, id).state, MessageState::RolledBack);
}
