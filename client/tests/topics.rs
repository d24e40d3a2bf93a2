//! The topic operations of `Client` against the real cmqd (and a scripted
//! server where a test needs a broker that answers wrongly).

mod support;

use bytes::Bytes;
use cmq_client::{Client, ClientError, SubscribeBuilder, NO_TAGS};
use cmq_protocol::names::shard_for;
use cmq_protocol::*;
use support::scripted::ScriptedServer;
use support::{broker, client, wait_until, HttpSink, EVENT_TIMEOUT};

fn queue(c: &mut Client, name: &str) {
    c.create_queue(name, &QueueAttributesUpdate::default()).expect("create queue");
}

/// Bodies of the next `n` messages to reach `queue` (deliveries from a
/// topic arrive in the background), received and deleted; then checks that
/// no other is waiting.
fn drain(c: &mut Client, queue: &str, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    wait_until(&format!("{n} messages in {queue}"), || {
        for m in c.receive_batch(queue, 16, Some(1)).expect("receive") {
            bodies.push(String::from_utf8(m.body.to_vec()).expect("utf-8"));
            c.delete_message(queue, m.receipt_handle).expect("delete");
        }
        bodies.len() >= n
    });
    assert!(c.receive(queue, Some(0)).expect("receive").is_none(), "more than {n} in {queue}: {bodies:?}");
    bodies
}

fn code(err: ClientError) -> ErrorCode {
    err.code().unwrap_or_else(|| panic!("not a server error: {err:?}"))
}

#[test]
fn topic_administration_round_trips() {
    let broker = broker(1);
    let mut c = client(broker.addr);
    let attrs = TopicAttributesUpdate {
        max_msg_size: Some(4096),
        msg_retention_seconds: Some(3600),
        filter_type: Some(FilterType::RoutingKey),
    };
    let id = c.create_topic("orders", &attrs).expect("create");
    let plain = c.create_topic("audit", &TopicAttributesUpdate::default()).expect("create with defaults");
    assert_ne!(id, plain);
    assert_eq!(code(c.create_topic("orders", &attrs).expect_err("twice")), ErrorCode::TOPIC_ALREADY_EXISTS);

    let info = c.topic_info("orders").expect("info");
    assert_eq!((info.topic_id, info.topic.as_str()), (id, "orders"));
    assert_eq!((info.max_msg_size, info.msg_retention_seconds), (4096, 3600));
    assert_eq!((info.filter_type, info.subscription_count, info.msg_count), (FilterType::RoutingKey, 0, 0));
    let defaults = c.topic_info("audit").expect("info");
    assert_eq!((defaults.max_msg_size, defaults.msg_retention_seconds), (65_536, 86_400));
    assert_eq!(defaults.filter_type, FilterType::Tag);

    let info = c.set_topic_attributes("orders", 2048).expect("set");
    assert_eq!((info.max_msg_size, info.msg_retention_seconds), (2048, 3600));
    assert_eq!(code(c.set_topic_attributes("orders", 10).expect_err("too small")), ErrorCode::INVALID_PARAMETER);

    let page = c.list_topics("", "", 0, 0).expect("list");
    assert_eq!(page.total, 2);
    assert_eq!(page.topics.iter().map(|t| t.topic.as_str()).collect::<Vec<_>>(), ["orders", "audit"]);
    assert_eq!(page.topics[0].topic_id, id);
    let page = c.list_topics("or", "", 0, 0).expect("prefix");
    assert_eq!((page.total, page.topics.len()), (1, 1));
    let page = c.list_topics("", "d", 1, 1).expect("contains, paged");
    assert_eq!((page.total, page.topics.len()), (2, 1), "orders and audit both contain d");
    assert_eq!(page.topics[0].topic, "audit");

    c.delete_topic("orders").expect("delete");
    assert_eq!(code(c.topic_info("orders").expect_err("gone")), ErrorCode::TOPIC_NOT_FOUND);
    assert_eq!(code(c.delete_topic("orders").expect_err("gone")), ErrorCode::TOPIC_NOT_FOUND);
    assert_eq!(c.list_topics("", "", 0, 0).expect("list").total, 1);
}

#[test]
fn publishing_to_a_tag_topic_reaches_the_matching_queues() {
    let broker = broker(1);
    let mut c = client(broker.addr);
    for q in ["qa", "qb", "qall"] {
        queue(&mut c, q);
    }
    c.create_topic("news", &TopicAttributesUpdate::default()).expect("create");
    let a = c.subscribe(&Subscribe::to_queue("news", "on-a", "qa").with_filter_tags(&["a"])).expect("subscribe");
    assert!(a.subscription_id > 0);
    assert_eq!(a.push_secret, "", "queue subscriptions are not signed");
    let tags_b = vec![String::from("b")];
    c.subscribe(&Subscribe::to_queue("news", "on-b", "qb").with_filter_tags(&tags_b)).expect("subscribe");
    c.subscribe(&Subscribe::to_queue("news", "all", "qall")).expect("subscribe");

    let one = c.publish("news", "tagged a", &["a"], "").expect("publish");
    let two = c.publish("news", Bytes::from("tagged a b"), &tags_b, "").expect("publish");
    assert!(two > one);
    c.publish("news", "untagged", NO_TAGS, "").expect("publish");
    let ids =
        c.publish_batch("news", &[Bytes::from("batch 1"), Bytes::from("batch 2")], &["a", "b"], "").expect("batch");
    assert_eq!(ids.len(), 2);
    assert!(ids[0] > two && ids[1] > ids[0]);

    assert_eq!(drain(&mut c, "qa", 3), ["tagged a", "batch 1", "batch 2"]);
    assert_eq!(drain(&mut c, "qb", 3), ["tagged a b", "batch 1", "batch 2"]);
    assert_eq!(drain(&mut c, "qall", 5), ["tagged a", "tagged a b", "untagged", "batch 1", "batch 2"]);
    assert_eq!(c.topic_info("news").expect("info").subscription_count, 3);
}

#[test]
fn publishing_with_a_routing_key_reaches_the_matching_bindings() {
    let broker = broker(1);
    let mut c = client(broker.addr);
    let attrs = TopicAttributesUpdate { filter_type: Some(FilterType::RoutingKey), ..Default::default() };
    c.create_topic("events", &attrs).expect("create");
    for (sub, key) in [("created", "order.created"), ("orders", "order.*"), ("audit", "audit.#")] {
        queue(&mut c, sub);
        c.subscribe(&Subscribe::to_queue("events", sub, sub).with_binding_keys(&[key])).expect("subscribe");
    }
    c.publish("events", "1", NO_TAGS, "order.created").expect("publish");
    c.publish("events", "2", NO_TAGS, "order.paid").expect("publish");
    c.publish_batch("events", &[Bytes::from("3"), Bytes::from("4")], NO_TAGS, "audit.login.failed").expect("batch");
    c.publish("events", "5", NO_TAGS, "").expect("no routing key reaches nobody");
    assert_eq!(drain(&mut c, "created", 1), ["1"]);
    assert_eq!(drain(&mut c, "orders", 2), ["1", "2"]);
    assert_eq!(drain(&mut c, "audit", 2), ["3", "4"]);
}

#[test]
fn subscriptions_list_show_change_and_go() {
    let broker = broker(1);
    let mut c = client(broker.addr);
    queue(&mut c, "inbox");
    queue(&mut c, "dead");
    c.create_topic("t", &TopicAttributesUpdate::default()).expect("create");
    let q = c.subscribe(&Subscribe::to_queue("t", "to-queue", "inbox").with_filter_tags(&["x", "y"])).expect("sub");
    let sink = HttpSink::always(200);
    let hook_url = sink.url("/hook");
    let hook = Subscribe::to_http("t", "to-hook", &hook_url)
        .with_notify_strategy(NotifyStrategy::BackoffRetry)
        .with_dead_letter_queue("dead");
    let h = c.subscribe(&hook).expect("subscribe http");
    assert!(!h.push_secret.is_empty(), "http subscriptions get a signing secret");
    assert_ne!(q.subscription_id, h.subscription_id);
    assert_eq!(code(c.subscribe(&hook).expect_err("same name")), ErrorCode::SUBSCRIPTION_ALREADY_EXISTS);
    let missing = Subscribe::to_queue("t", "nowhere", "no-such-queue");
    assert_eq!(code(c.subscribe(&missing).expect_err("no queue")), ErrorCode::QUEUE_NOT_FOUND);
    let no_topic = Subscribe::to_queue("nope", "s", "inbox");
    assert_eq!(code(c.subscribe(&no_topic).expect_err("no topic")), ErrorCode::TOPIC_NOT_FOUND);

    let page = c.list_subscriptions("t", "", 0, 0).expect("list");
    assert_eq!(page.total, 2);
    let rows: Vec<_> = page
        .subscriptions
        .iter()
        .map(|s| (s.subscription_id, s.subscription.as_str(), s.protocol, s.endpoint.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            (q.subscription_id, "to-queue", SubscriptionProtocol::Queue, "inbox"),
            (h.subscription_id, "to-hook", SubscriptionProtocol::Http, hook_url.as_str()),
        ]
    );
    let page = c.list_subscriptions("t", "hook", 0, 0).expect("contains");
    assert_eq!((page.total, page.subscriptions[0].subscription.as_str()), (1, "to-hook"));
    assert_eq!(c.list_subscriptions("t", "", 1, 5).expect("offset").subscriptions.len(), 1);

    let info = c.subscription_info("t", "to-hook").expect("info");
    assert_eq!((info.topic.as_str(), info.subscription.as_str()), ("t", "to-hook"));
    assert_eq!((info.protocol, info.notify_strategy), (SubscriptionProtocol::Http, NotifyStrategy::BackoffRetry));
    assert_eq!((info.dead_letter_queue.as_str(), info.push_secret.as_str()), ("dead", h.push_secret.as_str()));
    assert_eq!(info.notify_content_format, NotifyContentFormat::Json);

    // Absent fields are kept; a list given replaces the stored one.
    let info = c
        .set_subscription_attributes(&SetSubscriptionAttributes {
            topic: "t".into(),
            subscription: "to-queue".into(),
            filter_tags: Some(cmq_client::str_list(&["z"])),
            ..Default::default()
        })
        .expect("set");
    assert_eq!(info.filter_tags.0, ["z"]);
    assert_eq!(info.notify_content_format, NotifyContentFormat::Simplified, "kept");
    let info = c
        .set_subscription_attributes(&SetSubscriptionAttributes {
            topic: "t".into(),
            subscription: "to-queue".into(),
            notify_strategy: Some(NotifyStrategy::BackoffRetry),
            ..Default::default()
        })
        .expect("set");
    assert_eq!(
        (info.filter_tags.0.as_slice(), info.notify_strategy),
        (&["z".to_owned()][..], NotifyStrategy::BackoffRetry)
    );

    c.publish("t", "not for z", &["x"], "").expect("publish");
    c.clear_subscription_filter_tags("t", "to-queue").expect("clear");
    assert!(c.subscription_info("t", "to-queue").expect("info").filter_tags.0.is_empty());
    c.publish("t", "for all", &["x"], "").expect("publish");
    assert_eq!(drain(&mut c, "inbox", 1), ["for all"], "the first publish matched nothing in inbox");
    assert_eq!(c.subscription_info("t", "to-queue").expect("info").delivered, 1);
    // The HTTP subscription has no filter: both were pushed to it.
    // Sorted: the push pool may send the two on two connections, in either order.
    let mut pushed: Vec<String> = (0..2)
        .map(|_| {
            let r = sink.next(EVENT_TIMEOUT, "a push");
            serde_json::from_slice::<serde_json::Value>(&r.body).expect("JSON push")["msgBody"].to_string()
        })
        .collect();
    pushed.sort();
    assert_eq!(pushed, ["\"for all\"", "\"not for z\""]);

    c.unsubscribe("t", "to-hook").expect("unsubscribe");
    for err in [
        c.unsubscribe("t", "to-hook").expect_err("gone"),
        c.subscription_info("t", "to-hook").expect_err("gone"),
        c.clear_subscription_filter_tags("t", "to-hook").expect_err("gone"),
    ] {
        assert_eq!(code(err), ErrorCode::SUBSCRIPTION_NOT_FOUND);
    }
    assert_eq!(c.list_subscriptions("t", "", 0, 0).expect("list").total, 1);
}

#[test]
fn topic_requests_go_to_the_topics_shard() {
    const SHARDS: u16 = 4;
    let broker = broker(SHARDS);
    let mut c = client(broker.addr);
    let topics: Vec<String> = (0..12).map(|i| format!("topic-{i}")).collect();
    for t in &topics {
        // The queue it feeds lives wherever its own name puts it.
        queue(&mut c, &format!("{t}-q"));
        let owner = usize::from(shard_for(t, SHARDS));
        let before = sent_per_shard(&c);
        c.create_topic(t, &TopicAttributesUpdate::default()).expect("create");
        c.subscribe(&Subscribe::to_queue(t, "s", &format!("{t}-q"))).expect("subscribe");
        c.publish(t, "x", NO_TAGS, "").expect("publish");
        c.publish_batch(t, &[Bytes::from("y")], NO_TAGS, "").expect("batch");
        c.list_subscriptions(t, "", 0, 0).expect("list");
        c.subscription_info(t, "s").expect("info");
        c.clear_subscription_filter_tags(t, "s").expect("clear");
        c.set_subscription_attributes(&SetSubscriptionAttributes {
            topic: t.clone(),
            subscription: "s".into(),
            ..Default::default()
        })
        .expect("set");
        c.topic_info(t).expect("info");
        c.set_topic_attributes(t, 1024).expect("set");
        c.unsubscribe(t, "s").expect("unsubscribe");
        c.delete_topic(t).expect("delete");
        let after = sent_per_shard(&c);
        for (shard, (a, b)) in after.iter().zip(&before).enumerate() {
            // A connection opened just now also sent its handshake.
            let sent = a - b - u64::from(*b == 0 && a > b);
            assert_eq!(sent, if shard == owner { 12 } else { 0 }, "{t} (shard {owner}): shard {shard} sent {sent}");
        }
    }
    c.list_topics("", "", 0, 0).expect("list topics: any shard");
}

/// Frames each shard's connection has sent so far.
fn sent_per_shard(c: &Client) -> Vec<u64> {
    (0..c.shard_count()).map(|s| c.connection(s).map_or(0, |conn| conn.stats().frames_sent)).collect()
}

#[test]
fn limits_come_back_as_errors_on_a_usable_connection() {
    let broker = broker(1);
    let mut c = client(broker.addr);
    c.create_topic("t", &TopicAttributesUpdate::default()).expect("create");
    let six = ["a", "b", "c", "d", "e", "f"];
    let err = c.publish("t", "x", &six, "").expect_err("six tags");
    assert_eq!(code(err), ErrorCode::INVALID_PARAMETER);
    let err = c.publish("t", "x", NO_TAGS, &"k".repeat(65)).expect_err("routing key too long");
    assert_eq!(code(err), ErrorCode::INVALID_PARAMETER);
    let bodies: Vec<Bytes> = (0..17).map(|i| Bytes::from(format!("{i}"))).collect();
    assert_eq!(code(c.publish_batch("t", &bodies, NO_TAGS, "").expect_err("17")), ErrorCode::BATCH_TOO_LARGE);
    assert_eq!(code(c.publish("t", "", NO_TAGS, "").expect_err("empty")), ErrorCode::INVALID_PARAMETER);
    let too_big = Bytes::from(vec![b'x'; 65_537]);
    assert_eq!(code(c.publish("t", too_big, NO_TAGS, "").expect_err("over maxMsgSize")), ErrorCode::MESSAGE_TOO_LARGE);
    let err = c.subscribe(&Subscribe::to_http("t", "s", "https://h/").with_filter_tags(&six)).expect_err("six");
    assert_eq!(code(err), ErrorCode::INVALID_PARAMETER);
    c.publish("t", "fine", &["a"], "").expect("still connected");
}

#[test]
fn a_batch_answered_with_the_wrong_number_of_ids_is_a_protocol_error() {
    let server = ScriptedServer::start(|mut peer| {
        peer.accept_handshake(1, 0);
        while let Some((id, req)) = peer.read_request() {
            assert!(matches!(req, Request::BatchPublishMessage(_)), "{req:?}");
            peer.respond(id, &Response::BatchPublishMessage(BatchPublishMessageOk { msg_ids: vec![1] }));
        }
    });
    let mut c = client(server.addr());
    let err = c.publish_batch("t", &[Bytes::from("a"), Bytes::from("b")], NO_TAGS, "").expect_err("one id for two");
    assert!(matches!(&err, ClientError::Protocol(m) if m == "published 2 messages, got 1 ids back"), "{err:?}");
}
