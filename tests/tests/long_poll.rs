//! Long polling against a real cmqd: a receive waiting on one connection is
//! woken by a send on another connection, across shards; polls time out with
//! NO_MESSAGE; waiters share messages without duplicates; a poll on a deleted
//! queue or a closed connection does not swallow messages.

use std::time::{Duration, Instant};

use cmq_integration_tests::{name_on_shard, Broker, RawConn};
use cmq_protocol::*;

fn receive_req(queue: &str, wait: u32) -> Request {
    Request::ReceiveMessage(ReceiveMessage { queue: queue.into(), polling_wait_seconds: Some(wait) })
}

/// A receive on a connection served by a shard that does not own the queue
/// (so it is forwarded and waits on the owner) must be woken by a send from
/// another connection. `sender_on_owner` says where the sending connection is
/// served: on the owner (the send runs there directly) or on the waiter's
/// shard (the send is forwarded too). Both queues are tried, one per shard.
fn cross_shard_long_poll(sender_on_owner: bool) {
    let broker = Broker::start(&["--shards", "2"]);
    let queues = [name_on_shard("lp", 0, 2), name_on_shard("lp", 1, 2)];
    let mut admin = RawConn::open(broker.addr);
    for q in &queues {
        admin.create_queue(q);
    }
    for (owner, queue) in queues.iter().enumerate() {
        let owner = owner as u16;
        let other = 1 - owner;
        let sender_shard = if sender_on_owner { owner } else { other };
        let mut waiter = RawConn::open_on_shard(broker.addr, other);
        let mut sender = RawConn::open_on_shard(broker.addr, sender_shard);
        let start = Instant::now();
        let rid = waiter.send(&receive_req(queue, 10));
        let info = waiter.barrier(queue);
        assert_eq!(info.shard, owner);
        let body = format!("wake {queue} from shard {sender_shard}");
        let msg_id = sender.send_ok(queue, body.clone());
        let r = waiter.read_reply(rid);
        let elapsed = start.elapsed();
        let Response::ReceiveMessage(m) = r.ok() else { panic!("wrong response type") };
        assert_eq!((m.msg_id, &m.body[..]), (msg_id, body.as_bytes()));
        assert!(elapsed < Duration::from_secs(9), "woken by the send, not by the 10 s timeout: {elapsed:?}");
        waiter.delete_message(queue, m.receipt_handle).ok();
        // Both connections still work.
        waiter.ping().ok();
        sender.ping().ok();
    }
}

#[test]
fn long_poll_on_non_owner_shard_is_woken_by_a_send_on_the_owner_shard() {
    cross_shard_long_poll(true);
}

#[test]
fn long_poll_on_non_owner_shard_is_woken_by_a_forwarded_send() {
    cross_shard_long_poll(false);
}

#[test]
fn long_poll_times_out_with_no_message() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("empty");
    let start = Instant::now();
    let e = c.receive("empty", Some(1)).expect_err(ErrorCode::NO_MESSAGE);
    assert_eq!(e.code, 7000);
    assert!(start.elapsed() >= Duration::from_millis(900), "answered before the wait: {:?}", start.elapsed());
    let start = Instant::now();
    c.batch_receive("empty", 16, Some(1)).expect_err(ErrorCode::NO_MESSAGE);
    assert!(start.elapsed() >= Duration::from_millis(900), "answered before the wait: {:?}", start.elapsed());
    // The connection is fine afterwards.
    c.assert_round_trip("empty", "after");
}

#[test]
fn batch_long_poll_returns_as_soon_as_one_message_arrives() {
    let broker = Broker::start(&["--shards", "2"]);
    let q = name_on_shard("blp", 1, 2);
    let mut waiter = RawConn::open_on_shard(broker.addr, 0);
    let mut sender = RawConn::open_on_shard(broker.addr, 1);
    waiter.create_queue(&q);
    let rid = waiter.send(&Request::BatchReceiveMessage(BatchReceiveMessage {
        queue: q.clone(),
        max_messages: 16,
        polling_wait_seconds: Some(10),
    }));
    waiter.barrier(&q);
    let start = Instant::now();
    sender.send_ok(&q, "one");
    let Response::BatchReceiveMessage(got) = waiter.read_reply(rid).ok() else { panic!("wrong response type") };
    assert_eq!(got.messages.len(), 1);
    assert_eq!(&got.messages[0].body[..], b"one");
    assert!(start.elapsed() < Duration::from_secs(9), "did not wait to fill the batch: {:?}", start.elapsed());
}

#[test]
fn waiting_receivers_share_messages_without_duplicates() {
    let broker = Broker::start(&["--shards", "2"]);
    let q = name_on_shard("share", 0, 2);
    let mut admin = RawConn::open(broker.addr);
    admin.create_queue(&q);
    let mut waiters: Vec<(RawConn, u64)> = (0..4u16)
        .map(|i| {
            let mut c = RawConn::open_on_shard(broker.addr, i % 2);
            let rid = c.send(&receive_req(&q, 10));
            c.barrier(&q);
            (c, rid)
        })
        .collect();
    let ids = admin.batch_send_ok(&q, 0, cmq_integration_tests::bodies(&["a", "b", "c", "d"]));
    let mut got: Vec<u64> = waiters
        .iter_mut()
        .map(|(c, rid)| {
            let Response::ReceiveMessage(m) = c.read_reply(*rid).ok() else { panic!("wrong response type") };
            m.msg_id
        })
        .collect();
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want, "each waiter got a different message, and none was lost");
    let info = admin.queue_info(&q);
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (0, 4));
}

#[test]
fn deleting_a_queue_ends_its_long_polls() {
    let broker = Broker::start(&["--shards", "2"]);
    let q = name_on_shard("doomed", 1, 2);
    let mut admin = RawConn::open(broker.addr);
    admin.create_queue(&q);
    let mut local = RawConn::open_on_shard(broker.addr, 1);
    let mut remote = RawConn::open_on_shard(broker.addr, 0);
    let lid = local.send(&receive_req(&q, 10));
    local.barrier(&q);
    let rid = remote.send(&receive_req(&q, 10));
    remote.barrier(&q);
    let start = Instant::now();
    admin.delete_queue(&q).ok();
    local.read_reply(lid).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    remote.read_reply(rid).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    assert!(start.elapsed() < Duration::from_secs(9), "ended by the delete: {:?}", start.elapsed());
    local.ping().ok();
    remote.ping().ok();
}

/// A long poll whose connection went away must not take a message with it.
/// The waiter and the sender share a shard that does not own the queue, so the
/// "connection closed" notice and the forwarded send reach the owner in order.
#[test]
fn closed_connections_long_poll_does_not_swallow_a_message() {
    let broker = Broker::start(&["--shards", "2"]);
    let q = name_on_shard("orphan", 1, 2);
    let mut admin = RawConn::open(broker.addr);
    admin.create_queue(&q);
    for waiter_shard in [1u16, 0] {
        let mut waiter = RawConn::open_on_shard(broker.addr, waiter_shard);
        waiter.send(&receive_req(&q, 30));
        waiter.barrier(&q);
        waiter.shutdown_write();
        let left = waiter.read_until_closed();
        assert!(left.is_empty(), "the closed poll was answered: {left:?}");

        let mut sender = RawConn::open_on_shard(broker.addr, 0);
        let id = sender.send_ok(&q, format!("for the living, waiter on shard {waiter_shard}"));
        let m = sender.receive_ok(&q, Some(0));
        assert_eq!((m.msg_id, m.dequeue_count), (id, 1), "the message went to nobody first");
        sender.delete_message(&q, m.receipt_handle).ok();
    }
}

#[test]
fn polling_wait_over_30_seconds_is_invalid() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("pw");
    let e = c.receive("pw", Some(31)).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("pollingWaitSeconds"), "{:?}", e.message);
    let e = c.batch_receive("pw", 1, Some(31)).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("pollingWaitSeconds"), "{:?}", e.message);
}
