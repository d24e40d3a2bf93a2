//! When cmqd lets a response out: once the log records it depends on are as
//! safe as their queue demands, and no sooner or later. Driven with fdatasync
//! stalled (the hidden `--fault-file` holding `stall-sync`), so "not yet"
//! is a state the test can look at rather than a race.
//!
//! - An async queue's send is answered while a sync queue's fdatasync is
//!   stalled on the same shard (answers wait for their own records, not
//!   for the loop turn's).
//! - A sync queue's message is not handed to a consumer before its record
//!   is durable: a crash could take it back after the consumer acted on it.
//! - On one connection, answers still leave in the order they were produced.

use std::io::ErrorKind;
use std::path::Path;

use bytes::Bytes;
use cmq_integration_tests::raw::{RawConn, Reply};
use cmq_integration_tests::Broker;
use cmq_protocol::{
    CreateQueue, FlushPolicy, QueueAttributesUpdate, ReceiveMessage, ReceivedMessage, Request, Response, SendMessage,
};

fn create(c: &mut RawConn, queue: &str, flush: FlushPolicy) {
    let attributes = QueueAttributesUpdate { flush_policy: Some(flush), ..Default::default() };
    c.call(Request::CreateQueue(CreateQueue { queue: queue.into(), attributes })).ok();
}

fn send(queue: &str, body: &'static str) -> Request {
    Request::SendMessage(SendMessage {
        queue: queue.into(),
        delay_seconds: 0,
        body: Bytes::from_static(body.as_bytes()),
        ..Default::default()
    })
}

fn receive(queue: &str, wait_s: u32) -> Request {
    Request::ReceiveMessage(ReceiveMessage { queue: queue.into(), polling_wait_seconds: Some(wait_s) })
}

fn received(r: Reply) -> ReceivedMessage {
    match r.ok() {
        Response::ReceiveMessage(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Nothing has arrived on `c` (the check does not wait).
fn assert_nothing_arrived(c: &mut RawConn, what: &str) {
    c.stream.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    let r = std::io::Read::read(&mut c.stream, &mut b);
    c.stream.set_nonblocking(false).expect("blocking");
    match r {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what}: expected nothing yet, got {other:?}"),
    }
}

fn stall_sync(fault: &Path, on: bool) {
    if on {
        std::fs::write(fault, b"stall-sync").expect("write fault file");
    } else {
        std::fs::remove_file(fault).expect("remove fault file");
    }
}

#[test]
fn answers_wait_for_their_own_records_only() {
    let faults = tempfile::tempdir().expect("temp dir");
    let fault = faults.path().join("fault");
    let fault_arg = fault.to_str().expect("utf-8 path");
    // One shard: every queue shares one log, so a stalled fdatasync stalls
    // everything that depends on it.
    let b = Broker::start(&["--shards", "1", "--fault-file", fault_arg]);
    let mut admin = RawConn::open(b.addr);
    create(&mut admin, "durable", FlushPolicy::Sync);
    create(&mut admin, "fast", FlushPolicy::Async);
    create(&mut admin, "quick", FlushPolicy::Async);

    stall_sync(&fault, true);
    // A sync send, then (pipelined on the same connection) an async one.
    let mut producer = RawConn::open(b.addr);
    let sync_send = producer.send(&send("durable", "kept"));
    let async_behind = producer.send(&send("fast", "behind"));
    // A consumer long-polls the sync queue: the message is there, but not
    // durable yet.
    let mut consumer = RawConn::open(b.addr);
    let early_receive = consumer.send(&receive("durable", 20));

    // Another connection's async send and receive are answered meanwhile.
    let mut other = RawConn::open(b.addr);
    other.call(send("quick", "quick")).ok();
    let m = received(other.call(receive("quick", 0)));
    assert_eq!(m.body, Bytes::from_static(b"quick"));
    // One more round trip: whatever the loop turns so far let out is
    // written by now.
    other.call(send("quick", "again")).ok();

    assert_nothing_arrived(&mut producer, "sync send (and the async one queued behind it) with fdatasync stalled");
    assert_nothing_arrived(&mut consumer, "receive of a message whose record is not durable");

    stall_sync(&fault, false);
    let first = producer.read().expect("sync send answered once fdatasync runs");
    assert_eq!(first.id(), sync_send, "answers on one connection keep their order");
    first.ok();
    let second = producer.read().expect("async send answered");
    assert_eq!(second.id(), async_behind);
    second.ok();
    let r = consumer.read().expect("receive answered once the message is durable");
    assert_eq!(r.id(), early_receive);
    assert_eq!(received(r).body, Bytes::from_static(b"kept"));
}
