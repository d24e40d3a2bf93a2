//! Dead-letter queues against a real cmqd with two shards, the source and
//! the dead-letter queue on different shards (the move is a cross-shard
//! transfer): a poison message is moved after exactly maxReceiveCount
//! receives, keeps its id, body, origin and dequeue count, and the policy's
//! attributes are validated (own DLQ, missing DLQ, ranges, in-use targets).
//!
//! Waits are long polls; the only timer-bound waits are lease ends.

use std::time::{Duration, Instant};

use cmq_integration_tests::{backlog, dead_letter_after, name_on_shard, Broker, RawConn};
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

const SHARDS: u16 = 2;

/// A source queue on shard 0 and a dead-letter queue on shard 1.
fn source_and_dlq() -> (String, String) {
    let src = name_on_shard("src", 0, SHARDS);
    let dlq = name_on_shard("dlq", 1, SHARDS);
    assert_ne!(shard_for(&src, SHARDS), shard_for(&dlq, SHARDS));
    (src, dlq)
}

#[test]
fn poison_message_reaches_the_dlq_after_exactly_max_receive_count_receives() {
    const MAX_RECEIVES: u32 = 3;
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let (src, dlq) = source_and_dlq();
    c.create_queue(&dlq);
    c.create_queue_attrs(&src, dead_letter_after(&dlq, MAX_RECEIVES, 1));
    let sent = c.send_ok(&src, "poison");

    // Receive it maxReceiveCount times, never deleting; each receive after
    // the first waits (long poll) for the previous lease to end.
    let mut first = None;
    let mut last = None;
    for n in 1..=MAX_RECEIVES {
        let m = c.receive_ok(&src, Some(5));
        assert_eq!((m.msg_id, m.dequeue_count, &m.body[..]), (sent, n, &b"poison"[..]), "receive {n}");
        assert!(m.origin.is_none(), "a message never moved has no origin");
        first.get_or_insert(m.clone());
        last = Some(m);
    }
    let (first, last) = (first.unwrap(), last.unwrap());

    // A consumer long-polls the source while the last lease runs out: if the
    // broker redelivered instead of moving, this poll would get the message.
    let mut watcher = RawConn::open(broker.addr);
    let watch =
        watcher.send(&Request::ReceiveMessage(ReceiveMessage { queue: src.clone(), polling_wait_seconds: Some(2) }));
    watcher.barrier(&src); // the poll is registered before the lease ends
                           // Meanwhile the dead-letter queue receives it (long poll: the move is the event).
    let mut d = RawConn::open(broker.addr);
    let t = Instant::now();
    let dead = d.receive_ok(&dlq, Some(10));
    assert!(
        dead.enqueue_time_ms >= last.next_visible_time_ms,
        "moved only after the last lease ended: {dead:?} vs {last:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "the move took {:?}", t.elapsed());
    assert_eq!(dead.msg_id, sent, "a dead-lettered message keeps its id");
    assert_eq!(&dead.body[..], b"poison");
    assert_eq!(dead.dequeue_count, MAX_RECEIVES + 1, "dequeueCount continues from the source's");
    let origin = dead.origin.clone().expect("a dead-lettered message carries its origin");
    assert_eq!(origin.source_queue, src);
    assert_eq!(origin.original_msg_id, sent);
    assert_eq!(origin.first_enqueue_time_ms, first.enqueue_time_ms, "first enqueue time is the send's");

    let never = watcher.read_reply(watch);
    assert_eq!(never.code(), ErrorCode::NO_MESSAGE, "never received a {}th time: {never:?}", MAX_RECEIVES + 1);
    let info = c.queue_info(&src);
    assert_eq!(backlog(&info), 0, "the source no longer holds it: {info:?}");
    // The dead-letter queue's own lease works on the moved message.
    d.delete_message(&dlq, dead.receipt_handle).ok();
    assert_eq!(backlog(&d.queue_info(&dlq)), 0);
}

#[test]
fn messages_deleted_in_time_are_never_dead_lettered() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let (src, dlq) = source_and_dlq();
    c.create_queue(&dlq);
    c.create_queue_attrs(&src, dead_letter_after(&dlq, 1, 1));
    let good = c.send_ok(&src, "good");
    let bad = c.send_ok(&src, "bad");
    let a = c.receive_ok(&src, Some(5));
    let b = c.receive_ok(&src, Some(5));
    assert_eq!((a.msg_id, b.msg_id), (good, bad));
    c.delete_message(&src, a.receipt_handle).ok();
    // Only the undeleted one arrives, and nothing follows it.
    let dead = c.receive_ok(&dlq, Some(10));
    assert_eq!(dead.msg_id, bad);
    assert_eq!(dead.dequeue_count, 2, "1 receive in the source, 1 here");
    c.receive(&dlq, Some(1)).expect_err(ErrorCode::NO_MESSAGE);
    c.receive(&src, Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}

#[test]
fn a_queue_cannot_be_its_own_dead_letter_queue() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let e =
        c.create_queue_with("selfish", dead_letter_after("selfish", 3, 30)).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("deadLetterQueueName"), "{:?}", e.message);
    c.get_attributes("selfish").expect_err(ErrorCode::QUEUE_NOT_FOUND);
    c.create_queue("plain");
    let e = c.set_attributes("plain", dead_letter_after("plain", 3, 30)).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("deadLetterQueueName"), "{:?}", e.message);
    assert!(!c.queue_info("plain").attributes.has_dead_letter());
}

#[test]
fn a_dead_letter_queue_that_does_not_exist_is_queue_not_found() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    // The missing DLQ would live on the other shard than the queue naming it.
    let (src, dlq) = source_and_dlq();
    let e = c.create_queue_with(&src, dead_letter_after(&dlq, 3, 30)).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    assert!(e.message.contains(&dlq), "{:?}", e.message);
    c.get_attributes(&src).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    c.create_queue(&src);
    let e = c.set_attributes(&src, dead_letter_after(&dlq, 3, 30)).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    assert!(e.message.contains(&dlq), "{:?}", e.message);
    // Once it exists, both work.
    c.create_queue(&dlq);
    let info = c.set_attributes_ok(&src, dead_letter_after(&dlq, 3, 30));
    assert_eq!((info.attributes.dead_letter_queue.as_str(), info.attributes.max_receive_count), (dlq.as_str(), 3));
    let other = name_on_shard("other", 1, SHARDS);
    c.create_queue_attrs(&other, dead_letter_after(&dlq, 5, 30));
}

#[test]
fn dead_letter_policy_ranges_are_validated() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let (src, dlq) = source_and_dlq();
    c.create_queue(&dlq);
    let policy = |mrc: Option<u32>, ttl: Option<u32>, retention: Option<u32>| QueueAttributesUpdate {
        dead_letter_queue: Some(dlq.clone()),
        max_receive_count: mrc,
        max_time_to_live: ttl,
        msg_retention_seconds: retention,
        ..Default::default()
    };
    let bad: Vec<(&str, QueueAttributesUpdate)> = vec![
        ("maxReceiveCount", policy(Some(1001), None, None)),
        ("maxTimeToLive", policy(None, Some(299), None)),
        ("maxTimeToLive", policy(None, Some(43_201), None)),
        ("maxTimeToLive", policy(None, Some(600), Some(600))),
        ("maxTimeToLive", policy(None, Some(600), Some(300))),
        ("maxReceiveCount", policy(Some(3), Some(600), None)),
        ("maxReceiveCount", policy(None, None, None)),
        ("deadLetterQueueName", QueueAttributesUpdate { max_receive_count: Some(3), ..Default::default() }),
    ];
    for (i, (field, u)) in bad.into_iter().enumerate() {
        let e = c.create_queue_with(&src, u.clone()).expect_err(ErrorCode::INVALID_PARAMETER);
        assert!(e.message.contains(field), "case {i}: {:?} should name {field}", e.message);
    }
    c.get_attributes(&src).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    // The boundaries are accepted; setting one limit replaces the other.
    let a = c.create_queue_attrs(&src, policy(Some(1000), None, None));
    assert!(a > 0);
    let info = c.set_attributes_ok(&src, QueueAttributesUpdate { max_time_to_live: Some(300), ..Default::default() });
    assert_eq!((info.attributes.max_receive_count, info.attributes.max_time_to_live), (0, 300));
    let info = c.set_attributes_ok(&src, policy(None, Some(43_200), Some(43_201)));
    assert_eq!((info.attributes.max_time_to_live, info.attributes.msg_retention_seconds), (43_200, 43_201));
    let info = c.set_attributes_ok(&src, QueueAttributesUpdate { max_receive_count: Some(1), ..Default::default() });
    assert_eq!((info.attributes.max_receive_count, info.attributes.max_time_to_live), (1, 0));
    // The policy is durable.
    let attrs = info.attributes;
    drop(c);
    let mut broker = broker;
    broker.kill9();
    broker.restart();
    let mut c = RawConn::open(broker.addr);
    assert_eq!(c.queue_info(&src).attributes, attrs);
}

#[test]
fn deleting_a_dead_letter_target_is_refused() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let (src, dlq) = source_and_dlq();
    // A second source on the DLQ's own shard: both must be named.
    let src2 = name_on_shard("twin", 1, SHARDS);
    c.create_queue(&dlq);
    c.create_queue_attrs(&src, dead_letter_after(&dlq, 3, 30));
    c.create_queue_attrs(&src2, dead_letter_after(&dlq, 3, 30));
    c.send_ok(&dlq, "still here");

    let e = c.delete_queue(&dlq).expect_err(ErrorCode::QUEUE_IN_USE);
    assert!(e.message.contains(&src) && e.message.contains(&src2), "names the sources: {:?}", e.message);
    assert_eq!(c.queue_info(&dlq).active_msg_num, 1, "the refused delete changed nothing");

    // One source clears its policy: still refused, naming only the other.
    let info = c.set_attributes_ok(
        &src,
        QueueAttributesUpdate { dead_letter_queue: Some(String::new()), ..Default::default() },
    );
    assert!(!info.attributes.has_dead_letter());
    assert_eq!(info.attributes.max_receive_count, 0, "clearing the queue clears its limit");
    let e = c.delete_queue(&dlq).expect_err(ErrorCode::QUEUE_IN_USE);
    assert!(e.message.contains(&src2) && !e.message.contains(&format!("{src:?}")), "{:?}", e.message);

    // Deleting the last source unbinds too.
    c.delete_queue(&src2).ok();
    c.delete_queue(&dlq).ok();
    c.get_attributes(&dlq).expect_err(ErrorCode::QUEUE_NOT_FOUND);
}
