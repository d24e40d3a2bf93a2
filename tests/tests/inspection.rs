//! Inspection against a real cmqd: PeekMessages (a non-destructive view of
//! ready, delayed and in-flight messages, paged with a cursor) changes
//! nothing, QueryMessage reports each state a message can be in, including
//! dead-lettered and redriven ones looked up by their original id, and
//! PurgeQueue drops everything durably.

use std::time::Duration;

use cmq_integration_tests::{
    backlog, dead_letter_after, name_on_shard, names_on_shard, poll_until, Broker, RawConn, Reply,
};
use cmq_protocol::limits::PEEK_MSGS_MAX;
use cmq_protocol::*;

const SHARDS: u16 = 2;

fn attrs(visibility: u32, rewind: u32) -> QueueAttributesUpdate {
    QueueAttributesUpdate { visibility_timeout: Some(visibility), rewind_seconds: Some(rewind), ..Default::default() }
}

#[test]
fn peek_changes_nothing() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("insp", attrs(30, 0));
    let m0 = c.send_ok("insp", "zero");
    let m1 = match c.send_message("insp", 60, "delayed").ok() {
        Response::SendMessage(s) => s.msg_id,
        other => panic!("{other:?}"),
    };
    let ids: Vec<u64> = ["two", "three", "four"].iter().map(|b| c.send_ok("insp", *b)).collect();
    let (m2, m3, m4) = (ids[0], ids[1], ids[2]);
    let r0 = c.receive_ok("insp", Some(0));
    let r2 = c.receive_ok("insp", Some(0));
    assert_eq!((r0.msg_id, r2.msg_id), (m0, m2));

    let before = c.queue_info("insp");
    assert_eq!((before.active_msg_num, before.inactive_msg_num, before.delay_msg_num), (2, 2, 1));
    let page = c.peek_ok("insp", 0, 100, true);
    assert_eq!(page.next_cursor, 0, "one page holds them all");
    let seen: Vec<(u64, MessageState, u32, &[u8])> =
        page.messages.iter().map(|p| (p.msg_id, p.state, p.dequeue_count, &p.body[..])).collect();
    assert_eq!(
        seen,
        vec![
            (m0, MessageState::InFlight, 1, &b"zero"[..]),
            (m1, MessageState::Delayed, 0, &b"delayed"[..]),
            (m2, MessageState::InFlight, 1, &b"two"[..]),
            (m3, MessageState::Ready, 0, &b"three"[..]),
            (m4, MessageState::Ready, 0, &b"four"[..]),
        ],
        "every message in enqueue order with its state and dequeue count"
    );
    let p = &page.messages;
    assert_eq!(p[0].next_visible_time_ms, r0.next_visible_time_ms, "in flight: the lease end");
    assert_eq!(p[2].next_visible_time_ms, r2.next_visible_time_ms);
    assert_eq!((p[0].first_dequeue_time_ms, p[0].enqueue_time_ms), (r0.first_dequeue_time_ms, r0.enqueue_time_ms));
    assert_eq!(p[1].next_visible_time_ms, p[1].enqueue_time_ms + 60_000, "delayed: when it becomes ready");
    assert_eq!((p[3].next_visible_time_ms, p[3].first_dequeue_time_ms), (0, 0), "ready, never received");
    assert!(p.iter().all(|m| m.origin.is_none() && m.body_len as usize == m.body.len()));

    // Peek again (without bodies), query each: nothing changes.
    for _ in 0..3 {
        let again = c.peek_ok("insp", 0, 100, false);
        assert_eq!(again.messages.len(), 5);
        for (a, b) in again.messages.iter().zip(p) {
            assert!(a.body.is_empty(), "no bodies unless asked");
            assert_eq!(
                (a.msg_id, a.state, a.dequeue_count, a.next_visible_time_ms, a.body_len),
                (b.msg_id, b.state, b.dequeue_count, b.next_visible_time_ms, b.body_len)
            );
        }
        for id in [m0, m1, m2, m3, m4] {
            c.query_ok("insp", id);
        }
    }
    let after = c.queue_info("insp");
    assert_eq!(after, before, "queue counts and times are identical after peeking");

    // Receipt handles from before the peek still work.
    c.delete_message("insp", r0.receipt_handle).ok();
    c.change_visibility_ok("insp", r2.receipt_handle, 30);
    c.delete_message("insp", r2.receipt_handle).ok();
    // Peeked ready messages were not counted as received.
    let r3 = c.receive_ok("insp", Some(0));
    assert_eq!((r3.msg_id, r3.dequeue_count), (m3, 1));
    assert_eq!(c.receive_ok("insp", Some(0)).msg_id, m4);
    c.receive("insp", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}

#[test]
fn peek_pages_with_the_cursor() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("pages");
    let ids: Vec<u64> = (0..25).map(|i| c.send_ok("pages", format!("m{i}"))).collect();

    let first = c.peek_ok("pages", 0, 10, false);
    assert_eq!(first.messages.iter().map(|m| m.msg_id).collect::<Vec<_>>(), ids[..10]);
    assert_ne!(first.next_cursor, 0);
    // Consuming messages in between does not disturb the cursor.
    for m in c.drain("pages", 5, Duration::from_secs(5)) {
        assert!(ids[..5].contains(&m.msg_id));
    }
    let second = c.peek_ok("pages", first.next_cursor, 10, false);
    assert_eq!(second.messages.iter().map(|m| m.msg_id).collect::<Vec<_>>(), ids[10..20]);
    let third = c.peek_ok("pages", second.next_cursor, 10, false);
    assert_eq!(third.messages.iter().map(|m| m.msg_id).collect::<Vec<_>>(), ids[20..]);
    assert_eq!(third.next_cursor, 0, "no more pages");
    // peek_all follows the cursor: the 20 left.
    assert_eq!(c.peek_all("pages").iter().map(|m| m.msg_id).collect::<Vec<_>>(), ids[5..]);

    c.peek("pages", 0, 0, false).expect_err(ErrorCode::INVALID_PARAMETER);
    c.peek("pages", 0, PEEK_MSGS_MAX as u16 + 1, false).expect_err(ErrorCode::INVALID_PARAMETER);
    c.peek("missing", 0, 10, false).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    assert!(c.peek_ok("pages", u64::MAX, 10, false).messages.is_empty(), "a cursor past the end is an empty page");
}

#[test]
fn query_reports_ready_delayed_in_flight_and_deleted() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("plain", attrs(30, 0));
    c.create_queue_attrs("kept", attrs(30, 600));

    let ready = c.send_ok("plain", "ready");
    let q = c.query_ok("plain", ready);
    assert_eq!((q.msg_id, q.state, q.dequeue_count, q.first_dequeue_time_ms), (ready, MessageState::Ready, 0, 0));
    assert!(q.enqueue_time_ms > 0);

    let r = c.receive_ok("plain", Some(0));
    let q = c.query_ok("plain", ready);
    assert_eq!((q.state, q.dequeue_count), (MessageState::InFlight, 1));
    assert_eq!(q.next_visible_time_ms, r.next_visible_time_ms, "in flight until the lease end");
    assert_eq!(q.first_dequeue_time_ms, r.first_dequeue_time_ms);
    let extended = c.change_visibility_ok("plain", r.receipt_handle, 120);
    assert_eq!(c.query_ok("plain", ready).next_visible_time_ms, extended.next_visible_time_ms);

    c.delete_message("plain", r.receipt_handle).ok();
    let q = c.query_ok("plain", ready);
    assert_eq!(q.state, MessageState::Gone, "deleted and not retained (rewindSeconds 0): {q:?}");

    let delayed = match c.send_message("plain", 30, "later").ok() {
        Response::SendMessage(s) => s.msg_id,
        other => panic!("{other:?}"),
    };
    let q = c.query_ok("plain", delayed);
    assert_eq!(q.state, MessageState::Delayed);
    assert_eq!(q.next_visible_time_ms, q.enqueue_time_ms + 30_000);

    // With rewindSeconds, a deleted message is kept and reported as deleted.
    let kept = c.send_ok("kept", "kept");
    let r = c.receive_ok("kept", Some(0));
    c.delete_message("kept", r.receipt_handle).ok();
    let q = c.query_ok("kept", kept);
    assert_eq!((q.state, q.dequeue_count), (MessageState::Deleted, 1), "{q:?}");
}

/// An id the queue cannot account for gets one answer, whether it was never
/// issued or belongs to another queue on this shard or on another.
#[test]
fn query_of_an_id_not_in_the_queue_is_gone_whoever_owns_it() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let names = names_on_shard("q-", 0, 2, 2);
    let (q, same_shard) = (&names[0], &names[1]);
    let other_shard = &name_on_shard("other-", 1, 2);
    for name in [q, same_shard, other_shard] {
        c.create_queue(name);
    }
    let ids = [c.send_ok(same_shard, "x"), c.send_ok(other_shard, "y"), 12_345, u64::MAX];
    let answers: Vec<_> = ids.iter().map(|id| c.query_ok(q, *id)).collect();
    for (a, id) in answers.iter().zip(ids) {
        assert_eq!((a.msg_id, a.state, a.state_time_ms), (id, MessageState::Gone, 0), "{a:?}");
        assert_eq!(a.detail, answers[0].detail, "the same words for every id");
    }
    c.query("missing", 1).expect_err(ErrorCode::QUEUE_NOT_FOUND);
}

/// A source on shard 0 whose one message has been dead-lettered to a DLQ on
/// shard 1 (and is ready there). Returns (source, dlq, id, the source's receive).
fn dead_letter_one(c: &mut RawConn) -> (String, String, u64, ReceivedMessage) {
    let src = name_on_shard("src", 0, SHARDS);
    let dlq = name_on_shard("dlq", 1, SHARDS);
    c.create_queue(&dlq);
    c.create_queue_attrs(&src, dead_letter_after(&dlq, 1, 1));
    let id = c.send_ok(&src, "poison");
    let r = c.receive_ok(&src, Some(0));
    poll_until(Duration::from_secs(10), "the message reaches the DLQ", || {
        let info = c.queue_info(&dlq);
        if info.active_msg_num == 1 {
            Ok(())
        } else {
            Err(format!("{info:?}"))
        }
    });
    (src, dlq, id, r)
}

#[test]
fn query_dead_lettered_message_in_the_source_and_in_the_dlq() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let (src, dlq, id, r) = dead_letter_one(&mut c);

    // In the source: dead-lettered, naming where it went.
    let q = c.query_ok(&src, id);
    assert_eq!(q.state, MessageState::DeadLettered, "{q:?}");
    assert!(q.detail.contains(&dlq), "{q:?}");

    // In the DLQ: found by its original id, with its origin.
    let q = c.query_ok(&dlq, id);
    assert_eq!((q.msg_id, q.state, q.dequeue_count), (id, MessageState::Ready, 1), "{q:?}");
    let origin =
        MessageOrigin { source_queue: src.clone(), original_msg_id: id, first_enqueue_time_ms: r.enqueue_time_ms };
    assert_eq!(q.origin.as_ref(), Some(&origin));
    let peeked = c.peek_ok(&dlq, 0, 10, false).messages;
    assert_eq!(peeked.len(), 1);
    assert_eq!(
        (peeked[0].msg_id, peeked[0].state, peeked[0].origin.as_ref()),
        (id, MessageState::Ready, Some(&origin))
    );
    let d = c.receive_ok(&dlq, Some(0));
    let q = c.query_ok(&dlq, id);
    assert_eq!((q.state, q.dequeue_count, q.next_visible_time_ms), (MessageState::InFlight, 2, d.next_visible_time_ms));

    // Redriven back, the source finds it by its original id again.
    c.change_visibility_ok(&dlq, d.receipt_handle, 0);
    let task = c.start_redrive_ok(&dlq, "", 0);
    poll_until(Duration::from_secs(10), "the redrive is done and the message back", || {
        let t = c.redrive_info(task.id);
        let back = c.queue_info(&src).active_msg_num;
        if t.state == RedriveState::Done && back == 1 {
            Ok(())
        } else {
            Err(format!("{t:?}, {back} in the source"))
        }
    });
    let q = c.query_ok(&src, id);
    assert_eq!((q.state, q.dequeue_count, q.origin.as_ref()), (MessageState::Ready, 0, Some(&origin)), "{q:?}");
}

#[test]
fn query_dead_lettered_message_says_when_it_left() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let (src, _dlq, id, r) = dead_letter_one(&mut c);
    // MessageStatus.state_time_ms: "When it left the queue (deleted, expired, dead-lettered, purged…)".
    let q = c.query_ok(&src, id);
    assert_eq!(q.state, MessageState::DeadLettered);
    assert!(q.state_time_ms >= r.next_visible_time_ms, "state time is when it left the source: {q:?}");
}

#[test]
fn query_redriven_message_in_the_dlq_by_its_original_id() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let (src, dlq, id, _) = dead_letter_one(&mut c);
    let task = c.start_redrive_ok(&dlq, "", 0);
    poll_until(Duration::from_secs(10), "the message is back in the source", || {
        let t = c.redrive_info(task.id);
        let back = c.queue_info(&src).active_msg_num;
        if t.state == RedriveState::Done && back == 1 {
            Ok(())
        } else {
            Err(format!("{t:?}, {back} in the source"))
        }
    });
    // Clients know a moved message only by its original id (receive and peek show it).
    let q = c.query(&dlq, id);
    let Reply::Ok(_, Response::QueryMessage(q)) = q else {
        panic!("querying the DLQ by the original id after the redrive: {q:?}")
    };
    assert_eq!(q.state, MessageState::Redriven, "{q:?}");
}

#[test]
fn purge_drops_everything_durably() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("p", attrs(30, 600));
    let t0 = cmq_integration_tests::now_ms();
    let mut ids = c.batch_send_ok("p", 0, cmq_integration_tests::bodies(&["a", "b", "c", "d", "e", "f", "g"]));
    if let Response::SendMessage(s) = c.send_message("p", 60, "delayed").ok() {
        ids.push(s.msg_id);
    }
    let half = c.send_tx_ok("p", "g", "half");
    let inflight = c.receive_ok("p", Some(0));
    let deleted = c.receive_ok("p", Some(0));
    c.delete_message("p", deleted.receipt_handle).ok();
    let before = c.queue_info("p");
    assert_eq!(
        (before.active_msg_num, before.inactive_msg_num, before.delay_msg_num, before.rewind_msg_num),
        (5, 1, 1, 1)
    );

    let purged = c.purge_ok("p");
    assert_eq!(purged, 8, "5 ready + 1 in flight + 1 delayed + 1 half: the undeleted ones");
    let check_empty = |c: &mut RawConn, when: &str| {
        let info = c.queue_info("p");
        assert_eq!(
            (backlog(&info), info.rewind_msg_num, info.min_msg_time_ms),
            (0, 0, 0),
            "{when}: everything is gone: {info:?}"
        );
        assert!(c.peek_ok("p", 0, 100, false).messages.is_empty(), "{when}: peek shows nothing");
        for id in &ids {
            assert_eq!(c.query_ok("p", *id).state, MessageState::Purged, "{when}: message {id}");
        }
        c.end_tx("p", half, true).expect_err(ErrorCode::MESSAGE_NOT_FOUND);
        c.delete_message("p", inflight.receipt_handle).expect_err(ErrorCode::RECEIPT_HANDLE_INVALID);
        assert_eq!(c.rewind_ok("p", t0), 0, "{when}: rewind brings nothing back");
    };
    check_empty(&mut c, "after the purge");
    c.receive("p", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    let fresh = c.send_ok("p", "after the purge");

    drop(c);
    broker.kill9();
    broker.restart();
    let mut c = RawConn::open(broker.addr);
    let m = c.receive_ok("p", Some(0));
    assert_eq!(m.msg_id, fresh, "only the message sent after the purge survives the restart");
    c.delete_message("p", m.receipt_handle).ok();
    c.receive("p", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    // The fresh message was deleted into the rewind window; rewind would bring back only it.
    let info = c.queue_info("p");
    assert_eq!((backlog(&info), info.rewind_msg_num), (0, 1), "{info:?}");
    for id in &ids {
        assert_eq!(c.query_ok("p", *id).state, MessageState::Purged, "after kill -9: message {id}");
    }
    c.purge("missing").expect_err(ErrorCode::QUEUE_NOT_FOUND);
}
