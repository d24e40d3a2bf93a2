//! Issue 9, case 6: a backlog of more than 65,535 cross-shard transfers
//! confirmed at once must not write a record that cannot be read back.
//!
//! A topic on shard 0 has 50 queue subscriptions to one queue on shard 1,
//! which is full (maxMsgHeapNum 1), so 88 batch publishes of 16 leave
//! 70,400 deliveries pending in the topic shard's outbox, refused for now
//! and backing off. After a restart every pending delivery is due at once;
//! the queue is then given room, so the whole backlog is accepted together
//! and confirmed (`TransferDone`) together. Before the fix that one record
//! carried 70,400 ids behind a u16 count (written as 4,864), and the next
//! start refused the log ("trailing bytes"). Now every delivery arrives
//! exactly once and the broker starts again with nothing pending.

mod topic_util;

use bytes::Bytes;
use cmq_client::SubscribeBuilder;
use cmq_integration_tests::{name_on_shard, poll_until, Broker};
use cmq_protocol::{BatchPublishMessage, QueueAttributesUpdate, Request, Response, Subscribe, TopicAttributesUpdate};
use std::time::Duration;
use topic_util::*;

const SHARDS: u16 = 2;
/// Queue subscriptions of the topic, all to the same queue.
const SUBSCRIPTIONS: usize = 50;
/// Batch publishes of 16 bodies.
const PUBLISHES: usize = 88;
const BODIES_PER_PUBLISH: usize = 16;
/// 70,400: more than a u16 count can say.
const DELIVERIES: u64 = (SUBSCRIPTIONS * PUBLISHES * BODIES_PER_PUBLISH) as u64;

/// How long the backlog may take to move (debug build, 2 vCPUs shared).
const MOVE_WITHIN: Duration = Duration::from_secs(120);

fn publish_all(c: &mut cmq_client::Client, topic: &str) {
    let tickets: Vec<_> = (0..PUBLISHES)
        .map(|p| {
            let bodies = (0..BODIES_PER_PUBLISH).map(|i| Bytes::from(format!("m{p}-{i}"))).collect();
            let req = Request::BatchPublishMessage(BatchPublishMessage {
                topic: topic.to_owned(),
                bodies,
                tags: Default::default(),
                routing_key: String::new(),
                ..Default::default()
            });
            c.submit(&req).expect("submit publish")
        })
        .collect();
    c.flush().expect("flush");
    for t in tickets {
        match c.wait(t).expect("publish") {
            Response::BatchPublishMessage(ok) => assert_eq!(ok.msg_ids.len(), BODIES_PER_PUBLISH),
            other => panic!("unexpected answer to a publish: {other:?}"),
        }
    }
}

#[test]
fn seventy_thousand_transfers_confirmed_at_once_survive_a_restart() {
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let topic = name_on_shard("backlog-topic-", 0, SHARDS);
    let queue = name_on_shard("backlog-queue-", 1, SHARDS);
    let full = QueueAttributesUpdate { max_msg_heap_num: Some(1), ..Default::default() };
    c.create_queue(&queue, &full).expect("create queue");
    c.send(&queue, Bytes::from_static(b"filler"), 0).expect("fill the queue");
    c.create_topic(&topic, &TopicAttributesUpdate::default()).expect("create topic");
    for i in 0..SUBSCRIPTIONS {
        c.subscribe(&Subscribe::to_queue(&topic, &format!("s{i}"), &queue)).expect("subscribe");
    }
    publish_all(&mut c, &topic);
    assert_eq!(c.topic_info(&topic).expect("topic info").msg_count, DELIVERIES, "every delivery is pending");

    // After a restart every pending delivery is due at once; with room in
    // the queue the whole backlog is accepted and confirmed together.
    b.kill9();
    b.restart();
    c = client(&b);
    let room = QueueAttributesUpdate { max_msg_heap_num: Some(1_000_000), ..Default::default() };
    c.set_queue_attributes(&queue, &room).expect("give the queue room");
    poll_until(MOVE_WITHIN, "the backlog to reach the queue", || match c.topic_info(&topic) {
        Ok(i) if i.msg_count == 0 => Ok(()),
        Ok(i) => Err(format!("{} deliveries pending, the queue holds {}", i.msg_count, held(&mut c, &queue))),
        Err(e) => Err(e.to_string()),
    });
    assert_eq!(held(&mut c, &queue), DELIVERIES + 1, "every delivery arrived once");

    // The log those confirmations went into must read back.
    b.kill9();
    b.restart();
    c = client(&b);
    assert_eq!(c.topic_info(&topic).expect("topic info").msg_count, 0, "nothing pending after the restart");
    assert_eq!(held(&mut c, &queue), DELIVERIES + 1, "no delivery lost or repeated by the restart");
}
