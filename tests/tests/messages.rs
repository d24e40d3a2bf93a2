//! Message operations against a real cmqd: send, batch send, receive, batch
//! receive, delete, batch delete (per-item results), change visibility,
//! visibility-timeout redelivery, delay messages and stale receipt handles.
//!
//! Nothing here sleeps: where a test needs time to pass (a lease to end, a
//! delay to run out) it waits in a long-polling receive for the event.

use std::collections::HashSet;

use bytes::Bytes;
use cmq_integration_tests::{bodies, Broker, RawConn};
use cmq_protocol::*;

fn vis(secs: u32) -> QueueAttributesUpdate {
    QueueAttributesUpdate { visibility_timeout: Some(secs), ..Default::default() }
}

#[test]
fn send_receive_delete_round_trip() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("q");
    let id = c.send_ok("q", "hello");
    let info = c.queue_info("q");
    assert_eq!(info.active_msg_num, 1);
    let m = c.receive_ok("q", None);
    assert_eq!(m.msg_id, id);
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(m.dequeue_count, 1);
    assert!(m.enqueue_time_ms >= info.create_time_ms);
    assert!(m.first_dequeue_time_ms >= m.enqueue_time_ms);
    assert_eq!(m.next_visible_time_ms, m.first_dequeue_time_ms + 30_000, "default visibilityTimeout is 30 s");
    let Response::DeleteMessage(_) = c.delete_message("q", m.receipt_handle).ok() else { panic!("wrong type") };
    let info = c.queue_info("q");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (0, 0, 0));
    c.receive("q", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}

#[test]
fn messages_come_out_in_send_order_with_distinct_ids() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("fifo");
    let ids: Vec<u64> = (0..10).map(|i| c.send_ok("fifo", format!("m{i}"))).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10, "ids are unique: {ids:?}");
    for (i, id) in ids.iter().enumerate() {
        let m = c.receive_ok("fifo", None);
        assert_eq!((m.msg_id, &m.body[..]), (*id, format!("m{i}").as_bytes()));
    }
}

#[test]
fn bodies_are_binary_safe_up_to_max_msg_size() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("big", QueueAttributesUpdate { max_msg_size: Some(1_048_576), ..Default::default() });
    let binary: Vec<u8> = (0..=255u8).cycle().take(1_048_576).collect();
    c.send_ok("big", binary.clone());
    c.send_ok("big", vec![0u8]);
    let m = c.receive_ok("big", None);
    assert_eq!(m.body.len(), binary.len());
    assert!(m.body[..] == binary[..], "a 1 MiB body comes back byte for byte");
    assert_eq!(&c.receive_ok("big", None).body[..], &[0u8]);
}

#[test]
fn empty_body_is_invalid() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("q");
    let e = c.send_message("q", 0, Bytes::new()).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("msgBody"), "{:?}", e.message);
    let e = c.batch_send("q", 0, vec![Bytes::from("x"), Bytes::new()]).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("msgBody"), "{:?}", e.message);
    assert_eq!(c.queue_info("q").active_msg_num, 0, "a batch is all or nothing");
}

#[test]
fn batch_send_and_batch_receive() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("batch");
    let names: Vec<String> = (0..16).map(|i| format!("b{i}")).collect();
    let ids = c.batch_send_ok("batch", 0, bodies(&names));
    assert_eq!(ids.len(), 16);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 16);
    assert_eq!(c.queue_info("batch").active_msg_num, 16);

    let first = c.batch_receive_ok("batch", 10, None);
    assert_eq!(first.len(), 10);
    let rest = c.batch_receive_ok("batch", 16, None);
    assert_eq!(rest.len(), 6, "a batch receive returns what there is, up to numOfMsg");
    let got: Vec<_> = first.iter().chain(&rest).map(|m| (m.msg_id, m.body.clone())).collect();
    let want: Vec<_> = ids.iter().copied().zip(bodies(&names)).collect();
    assert_eq!(got, want, "request order is send order");
    assert!(first.iter().chain(&rest).all(|m| m.dequeue_count == 1));
    let handles: HashSet<_> = first.iter().chain(&rest).map(|m| m.receipt_handle).collect();
    assert_eq!(handles.len(), 16, "every delivery has its own receipt handle");
    c.batch_receive("batch", 16, Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    let info = c.queue_info("batch");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (0, 16));
}

#[test]
fn full_batch_of_max_size_bodies_fits_in_a_frame() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("huge", QueueAttributesUpdate { max_msg_size: Some(1_048_576), ..Default::default() });
    let batch: Vec<Bytes> = (0..16u8).map(|i| Bytes::from(vec![i; 1_048_576])).collect();
    let ids = c.batch_send_ok("huge", 0, batch);
    assert_eq!(ids.len(), 16);
    let got = c.batch_receive_ok("huge", 16, None);
    assert_eq!(got.len(), 16, "16 bodies of 1 MiB come back in one response");
    for (i, m) in got.iter().enumerate() {
        assert!(m.body.len() == 1_048_576 && m.body.iter().all(|b| *b == i as u8), "body {i}");
    }
}

#[test]
fn batch_delete_reports_each_handle() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("bd");
    c.create_queue("other");
    c.batch_send_ok("bd", 0, bodies(&["a", "b", "c", "d"]));
    c.send_ok("other", "x");
    let other = c.receive_ok("other", None);
    let ms = c.batch_receive_ok("bd", 4, None);
    assert_eq!(ms.len(), 4);
    // Message 0 is redelivered (its first handle goes stale); message 1 is deleted first.
    c.change_visibility_ok("bd", ms[0].receipt_handle, 0);
    let again = c.receive_ok("bd", None);
    assert_eq!((again.msg_id, again.dequeue_count), (ms[0].msg_id, 2));
    c.delete_message("bd", ms[1].receipt_handle).ok();

    let results = c.batch_delete_ok(
        "bd",
        vec![
            ms[2].receipt_handle, // valid
            ms[0].receipt_handle, // stale: superseded by a later receive
            ms[1].receipt_handle, // already deleted
            ReceiptHandle(12345), // garbage
            other.receipt_handle, // another queue's handle
            again.receipt_handle, // valid
            ms[2].receipt_handle, // duplicate of the first item
            ms[3].receipt_handle, // valid
        ],
    );
    let codes: Vec<u16> = results.iter().map(|r| r.code).collect();
    let bad = ErrorCode::RECEIPT_HANDLE_INVALID.0;
    assert_eq!(codes, vec![0, bad, bad, bad, bad, 0, bad, 0]);
    assert!(results.iter().filter(|r| r.code != 0).all(|r| !r.message.is_empty()), "{results:?}");
    let info = c.queue_info("bd");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (0, 0, 0), "all four are gone");
    // The other queue's message was not touched.
    assert_eq!(c.queue_info("other").inactive_msg_num, 1);

    // All handles failing is still a successful request with per-item errors.
    let results = c.batch_delete_ok("bd", vec![ms[3].receipt_handle, ReceiptHandle(1)]);
    assert_eq!(results.iter().map(|r| r.code).collect::<Vec<_>>(), vec![bad, bad]);
}

#[test]
fn visibility_timeout_redelivers_with_dequeue_count_2() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("lease", vis(1));
    let id = c.send_ok("lease", "again");
    let first = c.receive_ok("lease", None);
    assert_eq!((first.msg_id, first.dequeue_count), (id, 1));
    assert_eq!(first.next_visible_time_ms, first.first_dequeue_time_ms + 1000);
    let info = c.queue_info("lease");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (0, 1));

    // Not deleted: it comes back when the lease ends. Wait for that in a long poll.
    let second = c.receive_ok("lease", Some(10));
    assert_eq!(second.msg_id, id);
    assert_eq!(&second.body[..], b"again");
    assert_eq!(second.dequeue_count, 2);
    assert_eq!(second.first_dequeue_time_ms, first.first_dequeue_time_ms, "firstDequeueTime is kept");
    assert_eq!(second.enqueue_time_ms, first.enqueue_time_ms);
    assert!(second.next_visible_time_ms >= first.next_visible_time_ms + 1000);
    assert_ne!(second.receipt_handle, first.receipt_handle);

    // Only the latest handle works.
    c.delete_message("lease", first.receipt_handle).expect_err(ErrorCode::RECEIPT_HANDLE_INVALID);
    c.change_visibility("lease", first.receipt_handle, 30).expect_err(ErrorCode::RECEIPT_HANDLE_INVALID);
    c.delete_message("lease", second.receipt_handle).ok();
    c.delete_message("lease", second.receipt_handle).expect_err(ErrorCode::RECEIPT_HANDLE_INVALID);
    let info = c.queue_info("lease");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (0, 0));
}

#[test]
fn stale_receipt_handles_are_rejected() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("stale");
    c.send_ok("stale", "m");
    let invalid = ErrorCode::RECEIPT_HANDLE_INVALID;

    // Garbage handles.
    for h in [0u128, 1, 12345, u128::MAX] {
        c.delete_message("stale", ReceiptHandle(h)).expect_err(invalid);
        c.change_visibility("stale", ReceiptHandle(h), 5).expect_err(invalid);
    }
    // A tampered handle (one bit flipped).
    let m = c.receive_ok("stale", None);
    c.delete_message("stale", ReceiptHandle(m.receipt_handle.0 ^ 1)).expect_err(invalid);
    // A handle whose lease was ended (visibility set to 0) is expired, even before anyone receives again.
    c.change_visibility_ok("stale", m.receipt_handle, 0);
    c.delete_message("stale", m.receipt_handle).expect_err(invalid);
    // Superseded by a later receive.
    let m2 = c.receive_ok("stale", None);
    assert_eq!((m2.msg_id, m2.dequeue_count), (m.msg_id, 2));
    c.delete_message("stale", m.receipt_handle).expect_err(invalid);
    // After delete.
    c.delete_message("stale", m2.receipt_handle).ok();
    c.delete_message("stale", m2.receipt_handle).expect_err(invalid);
    c.change_visibility("stale", m2.receipt_handle, 5).expect_err(invalid);
    let e = c.batch_delete_ok("stale", vec![m2.receipt_handle]);
    assert_eq!(e[0].code, invalid.0);
}

#[test]
fn receipt_handles_are_bound_to_their_queue() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("qa");
    c.create_queue("qb");
    c.send_ok("qa", "a");
    c.send_ok("qb", "b");
    let a = c.receive_ok("qa", None);
    c.receive_ok("qb", None);
    c.delete_message("qb", a.receipt_handle).expect_err(ErrorCode::RECEIPT_HANDLE_INVALID);
    assert_eq!(c.queue_info("qb").inactive_msg_num, 1);
    c.delete_message("qa", a.receipt_handle).ok();
}

#[test]
fn change_visibility_extends_shortens_and_keeps_the_handle() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("cv");
    c.send_ok("cv", "lease");
    let m = c.receive_ok("cv", None);
    assert_eq!(m.next_visible_time_ms - m.first_dequeue_time_ms, 30_000);

    // A heartbeat: same handle, new deadline.
    let ok = c.change_visibility_ok("cv", m.receipt_handle, 600);
    assert_eq!(ok.receipt_handle, m.receipt_handle);
    assert!(ok.next_visible_time_ms >= m.first_dequeue_time_ms + 600_000, "{ok:?}");
    // Shorten to 1 s: a long poll gets the message back when that runs out, not after 30 s.
    let ok = c.change_visibility_ok("cv", m.receipt_handle, 1);
    assert!(ok.next_visible_time_ms < m.next_visible_time_ms);
    let again = c.receive_ok("cv", Some(10));
    assert_eq!((again.msg_id, again.dequeue_count), (m.msg_id, 2));
    assert!(again.first_dequeue_time_ms == m.first_dequeue_time_ms);

    // Changing visibility keeps the handle valid for delete.
    c.change_visibility_ok("cv", again.receipt_handle, 60);
    c.delete_message("cv", again.receipt_handle).ok();

    let e = c.change_visibility("cv", ReceiptHandle(7), 43_201).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("visibilityTimeout"), "{:?}", e.message);
}

#[test]
fn change_visibility_zero_returns_the_message_at_once() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("cv0");
    c.send_ok("cv0", "back");
    let m = c.receive_ok("cv0", None);
    c.receive("cv0", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    c.change_visibility_ok("cv0", m.receipt_handle, 0);
    let again = c.receive_ok("cv0", Some(0));
    assert_eq!((again.msg_id, again.dequeue_count), (m.msg_id, 2));
}

#[test]
fn delayed_message_is_invisible_then_delivered_by_a_long_poll() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("delay");
    let Response::SendMessage(sent) = c.send_message("delay", 1, "later").ok() else { panic!("wrong type") };
    c.receive("delay", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    let info = c.queue_info("delay");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (0, 0, 1));

    let m = c.receive_ok("delay", Some(10));
    assert_eq!((m.msg_id, &m.body[..], m.dequeue_count), (sent.msg_id, &b"later"[..], 1));
    assert!(
        m.first_dequeue_time_ms >= m.enqueue_time_ms + 1000,
        "delivered {} ms after enqueue, before its 1 s delay",
        m.first_dequeue_time_ms - m.enqueue_time_ms
    );
    let info = c.queue_info("delay");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (0, 1, 0));
}

#[test]
fn delayed_batch_and_ordering_with_ready_messages() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("dbatch");
    c.batch_send_ok("dbatch", 1, bodies(&["late1", "late2"]));
    c.send_ok("dbatch", "now");
    assert_eq!(c.queue_info("dbatch").delay_msg_num, 2);
    assert_eq!(&c.receive_ok("dbatch", Some(0)).body[..], b"now", "a ready message is not held up by delayed ones");
    let got = c.batch_receive_ok("dbatch", 16, Some(10));
    let mut all: Vec<Bytes> = got.iter().map(|m| m.body.clone()).collect();
    if all.len() < 2 {
        all.extend(c.batch_receive_ok("dbatch", 16, Some(10)).into_iter().map(|m| m.body));
    }
    assert_eq!(all, bodies(&["late1", "late2"]));
}

#[test]
fn delay_longer_than_retention_is_invalid() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("dr", QueueAttributesUpdate { msg_retention_seconds: Some(60), ..Default::default() });
    let e = c.send_message("dr", 61, "x").expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("delaySeconds"), "{:?}", e.message);
    c.send_message("dr", 60, "x").ok();
}

#[test]
fn receive_uses_the_queues_polling_wait_by_default() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut waiter = RawConn::open(broker.addr);
    let mut sender = RawConn::open(broker.addr);
    waiter.create_queue_attrs("pw", QueueAttributesUpdate { polling_wait_seconds: Some(10), ..Default::default() });
    // No wait given: the queue's 10 s applies, so the receive waits for the send below.
    let rid = waiter.send(&Request::ReceiveMessage(ReceiveMessage { queue: "pw".into(), polling_wait_seconds: None }));
    // Barrier: a later request on the same connection to the same queue is answered
    // only after the receive was registered.
    assert_eq!(waiter.queue_info("pw").active_msg_num, 0);
    sender.send_ok("pw", "woken");
    let r = loop {
        let r = waiter.read().expect("open");
        if r.id() == rid {
            break r;
        }
    };
    let Response::ReceiveMessage(m) = r.ok() else { panic!("wrong type") };
    assert_eq!(&m.body[..], b"woken");
    // An explicit 0 overrides the queue's wait.
    waiter.receive("pw", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}
