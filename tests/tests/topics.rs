//! Topic and subscription lifecycle over a real cmqd (issue 6, done-when
//! #2): unsubscribing and deleting a topic stop delivery, and the pending
//! deliveries of what was removed are reclaimed, also across a kill -9
//! and restart; plus every topic error code and the topic limits.

mod topic_util;

use bytes::Bytes;
use cmq_client::{Client, SubscribeBuilder, NO_TAGS};
use cmq_integration_tests::{name_on_shard, poll_until, Broker};
use cmq_protocol::{ErrorCode, FilterType, QueueAttributesUpdate, SetSubscriptionAttributes, StrList};
use cmq_protocol::{Subscribe, TopicAttributesUpdate};
use topic_util::*;

const SHARDS: u16 = 2;

fn heap(n: u64) -> QueueAttributesUpdate {
    QueueAttributesUpdate { max_msg_heap_num: Some(n), ..Default::default() }
}

/// A queue holding one message that cannot take another: deliveries to it
/// stay pending (QUEUE_FULL is retried later) until it is emptied.
fn blocked_queue(c: &mut Client, name: &str) {
    c.create_queue(name, &heap(1)).unwrap();
    c.send(name, "blocker", 0).unwrap();
}

/// Waits until `sub` of `topic` has exactly `n` deliveries pending.
#[track_caller]
fn wait_pending(c: &mut Client, topic: &str, sub: &str, n: u64) {
    poll_until(DELIVERY_WITHIN, &format!("{topic}/{sub} to have {n} pending deliveries"), || {
        let i = c.subscription_info(topic, sub).unwrap();
        if i.msg_count == n {
            Ok(())
        } else {
            Err(format!("msgCount {}", i.msg_count))
        }
    })
}

/// Empties a blocked queue of its blocker and lets it take any number of messages.
fn unblock(c: &mut Client, name: &str) {
    assert_eq!(take(c, name, 1), ["blocker"]);
    c.set_queue_attributes(name, &heap(100_000)).unwrap();
}

#[test]
fn unsubscribe_stops_delivery_and_reclaims_pending_deliveries() {
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let topic = name_on_shard("unsub-topic-", 0, SHARDS);
    let blocked = name_on_shard("unsub-blocked-", 1, SHARDS);
    let kept = name_on_shard("unsub-kept-", 1, SHARDS);
    c.create_topic(&topic, &TopicAttributesUpdate::default()).unwrap();
    blocked_queue(&mut c, &blocked);
    c.create_queue(&kept, &Default::default()).unwrap();
    c.subscribe(&Subscribe::to_queue(&topic, "gone", &blocked)).unwrap();
    c.subscribe(&Subscribe::to_queue(&topic, "kept", &kept)).unwrap();

    let first: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    for m in &first {
        c.publish(&topic, m.clone(), NO_TAGS, "").unwrap();
    }
    assert_eq!(counts(&take(&mut c, &kept, 5)), counts(&first));
    wait_pending(&mut c, &topic, "gone", 5);
    poll_until(DELIVERY_WITHIN, "only the blocked subscription's deliveries pending", || {
        let n = c.topic_info(&topic).unwrap().msg_count;
        if n == 5 {
            Ok(())
        } else {
            Err(format!("topic msgCount {n}"))
        }
    });

    c.unsubscribe(&topic, "gone").unwrap();
    let info = c.topic_info(&topic).unwrap();
    assert_eq!((info.msg_count, info.subscription_count), (0, 1), "the 5 pending deliveries are reclaimed: {info:?}");
    expect_code(c.subscription_info(&topic, "gone"), ErrorCode::SUBSCRIPTION_NOT_FOUND, "removed subscription");
    let listed = c.list_subscriptions(&topic, "", 0, 0).unwrap();
    assert_eq!(listed.subscriptions.iter().map(|s| s.subscription.as_str()).collect::<Vec<_>>(), ["kept"]);

    // Publishing goes on for the other subscription only.
    c.publish(&topic, "after", NO_TAGS, "").unwrap();
    expect_exactly(&mut c, &topic, &kept, &["after"]);

    // The queue has room again: a reclaimed delivery, if any survived, would now arrive.
    unblock(&mut c, &blocked);
    b.kill9();
    b.restart();
    let mut c = client(&b);
    let info = c.topic_info(&topic).unwrap();
    assert_eq!((info.msg_count, info.subscription_count), (0, 1), "after restart: {info:?}");
    expect_code(c.subscription_info(&topic, "gone"), ErrorCode::SUBSCRIPTION_NOT_FOUND, "after restart");
    // Barrier: a new subscription to the same queue, from the same topic
    // (so the same shard's outbox, where surviving deliveries would be due
    // first). The queue gets the marker and nothing else.
    c.subscribe(&Subscribe::to_queue(&topic, "again", &blocked)).unwrap();
    c.publish(&topic, "marker", NO_TAGS, "").unwrap();
    expect_exactly(&mut c, &topic, &blocked, &["marker"]);
    expect_exactly(&mut c, &topic, &kept, &["marker"]);
}

#[test]
fn deleting_a_topic_stops_delivery_and_reclaims_pending_deliveries() {
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let topic = name_on_shard("del-topic-", 0, SHARDS);
    let other = name_on_shard("del-other-", 0, SHARDS);
    let blocked = name_on_shard("del-blocked-", 1, SHARDS);
    let open = name_on_shard("del-open-", 0, SHARDS);
    c.create_topic(&topic, &TopicAttributesUpdate::default()).unwrap();
    c.create_topic(&other, &TopicAttributesUpdate::default()).unwrap();
    blocked_queue(&mut c, &blocked);
    c.create_queue(&open, &Default::default()).unwrap();
    c.subscribe(&Subscribe::to_queue(&topic, "blocked", &blocked)).unwrap();
    c.subscribe(&Subscribe::to_queue(&topic, "open", &open)).unwrap();
    for i in 0..4 {
        c.publish(&topic, format!("doomed-{i}"), NO_TAGS, "").unwrap();
    }
    assert_eq!(take(&mut c, &open, 4).len(), 4);
    wait_pending(&mut c, &topic, "blocked", 4);

    c.delete_topic(&topic).unwrap();
    expect_code(c.topic_info(&topic), ErrorCode::TOPIC_NOT_FOUND, "deleted topic");
    expect_code(c.publish(&topic, "x", NO_TAGS, ""), ErrorCode::TOPIC_NOT_FOUND, "publish to a deleted topic");
    expect_code(c.subscription_info(&topic, "open"), ErrorCode::TOPIC_NOT_FOUND, "its subscriptions went with it");
    assert!(c.list_topics("del-", "", 0, 0).unwrap().topics.iter().all(|t| t.topic != topic));

    unblock(&mut c, &blocked);
    b.kill9();
    b.restart();
    let mut c = client(&b);
    expect_code(c.topic_info(&topic), ErrorCode::TOPIC_NOT_FOUND, "still deleted after restart");
    // Barrier through another topic on the same shard: its marker reaches
    // both queues, and nothing of the deleted topic ever does.
    c.subscribe(&Subscribe::to_queue(&other, "b", &blocked)).unwrap();
    c.subscribe(&Subscribe::to_queue(&other, "o", &open)).unwrap();
    c.publish(&other, "marker", NO_TAGS, "").unwrap();
    expect_exactly(&mut c, &other, &blocked, &["marker"]);
    expect_exactly(&mut c, &other, &open, &["marker"]);

    // The name is free again, for a topic that starts empty.
    c.create_topic(&topic, &TopicAttributesUpdate::default()).unwrap();
    let info = c.topic_info(&topic).unwrap();
    assert_eq!((info.msg_count, info.subscription_count), (0, 0), "{info:?}");
    c.publish(&topic, "into-nothing", NO_TAGS, "").unwrap();
    assert_eq!(c.topic_info(&topic).unwrap().msg_count, 0, "no subscription: the message is dropped");
    assert_eq!((held(&mut c, &blocked), held(&mut c, &open)), (0, 0));
}

/// Subscription ids name one subscription broker-wide (CMQ's
/// `subscriptionId`), like topic ids do: subscriptions of topics owned by
/// different shards must not share one.
#[test]
fn subscription_ids_are_unique_across_shards() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let mut topic_ids = Vec::new();
    let mut sub_ids = Vec::new();
    for shard in 0..SHARDS {
        let topic = name_on_shard("ids-", shard, SHARDS);
        topic_ids.push(c.create_topic(&topic, &TopicAttributesUpdate::default()).unwrap());
        for s in ["x", "y"] {
            let id = c.subscribe(&Subscribe::to_http(&topic, s, "http://127.0.0.1:9/")).unwrap().subscription_id;
            assert_eq!(c.subscription_info(&topic, s).unwrap().subscription_id, id);
            sub_ids.push((topic.clone(), s, id));
        }
    }
    assert_ne!(topic_ids[0], topic_ids[1], "topic ids are unique");
    let distinct: std::collections::BTreeSet<u64> = sub_ids.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(distinct.len(), sub_ids.len(), "subscription ids must be unique broker-wide: {sub_ids:?}");
}

// ---- errors -------------------------------------------------------------------

#[test]
fn topic_and_subscription_errors_have_their_codes() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let nf = ErrorCode::TOPIC_NOT_FOUND;
    expect_code(c.topic_info("nope"), nf, "topic info");
    expect_code(c.delete_topic("nope"), nf, "delete topic");
    expect_code(c.set_topic_attributes("nope", 2048), nf, "set topic attributes");
    expect_code(c.publish("nope", "x", NO_TAGS, ""), nf, "publish");
    expect_code(c.publish_batch("nope", &[Bytes::from("x")], NO_TAGS, ""), nf, "batch publish");
    expect_code(c.subscribe(&Subscribe::to_http("nope", "s", "http://127.0.0.1:9/")), nf, "subscribe");
    expect_code(c.unsubscribe("nope", "s"), nf, "unsubscribe");
    expect_code(c.list_subscriptions("nope", "", 0, 0), nf, "list subscriptions");
    expect_code(c.subscription_info("nope", "s"), nf, "subscription info");

    c.create_topic("t", &TopicAttributesUpdate::default()).unwrap();
    expect_code(c.create_topic("t", &TopicAttributesUpdate::default()), ErrorCode::TOPIC_ALREADY_EXISTS, "twice");
    assert_eq!(c.list_topics("t", "", 0, 0).unwrap().total, 1);

    let snf = ErrorCode::SUBSCRIPTION_NOT_FOUND;
    expect_code(c.unsubscribe("t", "s"), snf, "unsubscribe");
    expect_code(c.subscription_info("t", "s"), snf, "subscription info");
    expect_code(c.clear_subscription_filter_tags("t", "s"), snf, "clear filter tags");
    let update = SetSubscriptionAttributes { topic: "t".into(), subscription: "s".into(), ..Default::default() };
    expect_code(c.set_subscription_attributes(&update), snf, "set subscription attributes");

    c.create_queue("q", &Default::default()).unwrap();
    c.subscribe(&Subscribe::to_queue("t", "s", "q")).unwrap();
    let exists = ErrorCode::SUBSCRIPTION_ALREADY_EXISTS;
    expect_code(c.subscribe(&Subscribe::to_queue("t", "s", "q")), exists, "same subscription twice");
    expect_code(c.subscribe(&Subscribe::to_http("t", "s", "http://127.0.0.1:9/")), exists, "same name, other endpoint");
    // Names are per topic.
    c.create_topic("t2", &TopicAttributesUpdate::default()).unwrap();
    c.subscribe(&Subscribe::to_queue("t2", "s", "q")).unwrap();

    // A queue endpoint (or an HTTP subscription's dead-letter queue) that does not exist.
    let m = expect_code(c.subscribe(&Subscribe::to_queue("t", "s2", "no-such-queue")), ErrorCode::QUEUE_NOT_FOUND, "q");
    assert!(m.contains("no-such-queue"), "{m}");
    let dlq = Subscribe::to_http("t", "s3", "http://127.0.0.1:9/").with_dead_letter_queue("no-such-dlq");
    expect_code(c.subscribe(&dlq), ErrorCode::QUEUE_NOT_FOUND, "missing dead-letter queue");
    let i = c.topic_info("t").unwrap();
    assert_eq!(i.subscription_count, 1, "no failed subscribe left a subscription behind: {i:?}");
}

#[test]
fn invalid_tags_routing_keys_and_bodies_are_refused() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let small = TopicAttributesUpdate { max_msg_size: Some(1024), ..Default::default() };
    c.create_topic("tags", &small).unwrap();
    let rk = TopicAttributesUpdate { filter_type: Some(FilterType::RoutingKey), ..Default::default() };
    c.create_topic("keys", &rk).unwrap();
    c.create_queue("tq", &Default::default()).unwrap();
    c.create_queue("kq", &Default::default()).unwrap();
    c.subscribe(&Subscribe::to_queue("tags", "all", "tq")).unwrap();
    c.subscribe(&Subscribe::to_queue("keys", "all", "kq").with_binding_keys(&["#"])).unwrap();
    let inv = ErrorCode::INVALID_PARAMETER;

    // Message tags: at most 5, each at most 16 characters.
    let six = ["a", "b", "c", "d", "e", "f"];
    let m = expect_code(c.publish("tags", "x", &six, ""), inv, "6 tags");
    assert!(m.to_lowercase().contains("tag"), "{m}");
    expect_code(c.publish_batch("tags", &[Bytes::from("x")], &six, ""), inv, "6 tags on a batch");
    let m = expect_code(c.publish("tags", "x", &["a".repeat(17)], ""), inv, "17-character tag");
    assert!(m.contains("msgTag"), "{m}");
    // 16 characters (not bytes) is fine: 16 × 'é' is 32 bytes.
    c.publish("tags", "ok-16", &["é".repeat(16), "b".into(), "c".into(), "d".into(), "e".into()], "").unwrap();

    // Routing keys: at most 64 bytes and 16 words.
    let m = expect_code(c.publish("keys", "x", NO_TAGS, &"k".repeat(65)), inv, "65-byte routing key");
    assert!(m.contains("routing") || m.contains("Routing"), "{m}");
    let seventeen = vec!["w"; 17].join(".");
    let m = expect_code(c.publish("keys", "x", NO_TAGS, &seventeen), inv, "17 words");
    assert!(m.contains("routingKey"), "{m}");
    expect_code(c.publish_batch("keys", &[Bytes::from("x")], NO_TAGS, &seventeen), inv, "17 words on a batch");
    c.publish("keys", "ok-64", NO_TAGS, &"k".repeat(64)).unwrap();
    c.publish("keys", "ok-16w", NO_TAGS, &vec!["w"; 16].join(".")).unwrap();

    // The same limits on subscriptions.
    let s = Subscribe::to_queue("tags", "f6", "tq").with_filter_tags(&six);
    expect_code(c.subscribe(&s), inv, "6 filter tags");
    let s = Subscribe::to_queue("tags", "f17", "tq").with_filter_tags(&["x".repeat(17)]);
    assert!(expect_code(c.subscribe(&s), inv, "17-character filter tag").contains("filterTag"));
    let s = Subscribe::to_queue("keys", "b17", "kq").with_binding_keys(&[seventeen.as_str()]);
    assert!(expect_code(c.subscribe(&s), inv, "17-word binding key").contains("bindingKey"));
    let s = Subscribe::to_queue("keys", "b65", "kq").with_binding_keys(&["k".repeat(65)]);
    expect_code(c.subscribe(&s), inv, "65-byte binding key");
    let update = SetSubscriptionAttributes {
        topic: "keys".into(),
        subscription: "all".into(),
        binding_keys: Some(StrList(vec![seventeen.clone()])),
        ..Default::default()
    };
    expect_code(c.set_subscription_attributes(&update), inv, "17-word binding key by update");
    assert_eq!(c.subscription_info("keys", "all").unwrap().binding_keys.0, ["#"], "a refused update changes nothing");

    // Bodies over the topic's maxMsgSize; a batch with one is refused whole.
    let m = expect_code(c.publish("tags", vec![b'x'; 1025], NO_TAGS, ""), ErrorCode::MESSAGE_TOO_LARGE, "1025 bytes");
    assert!(m.contains("maxMsgSize"), "{m}");
    let batch = [Bytes::from("fits"), Bytes::from(vec![b'x'; 1025])];
    expect_code(c.publish_batch("tags", &batch, NO_TAGS, ""), ErrorCode::MESSAGE_TOO_LARGE, "batch");
    c.publish("tags", vec![b'y'; 1024], NO_TAGS, "").unwrap();
    c.set_topic_attributes("tags", 2048).unwrap();
    c.publish("tags", vec![b'z'; 1025], NO_TAGS, "").unwrap();
    expect_code(c.publish("tags", vec![b'z'; 2049], NO_TAGS, ""), ErrorCode::MESSAGE_TOO_LARGE, "after raising");

    // Only what was accepted was delivered.
    let y = "y".repeat(1024);
    let z = "z".repeat(1025);
    expect_exactly(&mut c, "tags", "tq", &["ok-16", y.as_str(), z.as_str()]);
    expect_exactly(&mut c, "keys", "kq", &["ok-64", "ok-16w"]);
}

#[test]
fn too_many_topics_and_subscriptions() {
    let mut b = Broker::start(&["--shards", "2", "--max-topics", "2"]);
    let mut c = client(&b);
    // One topic per shard: the limit is broker-wide.
    let t0 = name_on_shard("lim-", 0, SHARDS);
    let t1 = name_on_shard("lim-", 1, SHARDS);
    c.create_topic(&t0, &TopicAttributesUpdate::default()).unwrap();
    c.create_topic(&t1, &TopicAttributesUpdate::default()).unwrap();
    for shard in 0..SHARDS {
        let t = name_on_shard("extra-", shard, SHARDS);
        let m = expect_code(c.create_topic(&t, &TopicAttributesUpdate::default()), ErrorCode::TOO_MANY_TOPICS, &t);
        assert!(m.contains('2'), "{m}");
    }
    // At the limit, an existing name is still "already exists".
    expect_code(c.create_topic(&t0, &TopicAttributesUpdate::default()), ErrorCode::TOPIC_ALREADY_EXISTS, "dup");

    // The count survives a restart.
    b.kill9();
    b.restart();
    let mut c = client(&b);
    let extra = name_on_shard("extra-", 0, SHARDS);
    expect_code(c.create_topic(&extra, &TopicAttributesUpdate::default()), ErrorCode::TOO_MANY_TOPICS, "after restart");
    c.delete_topic(&t1).unwrap();
    c.create_topic(&extra, &TopicAttributesUpdate::default()).unwrap();
    expect_code(c.create_topic(&t1, &TopicAttributesUpdate::default()), ErrorCode::TOO_MANY_TOPICS, "full again");

    // 100 subscriptions per topic, then TOO_MANY_TOPICS (PROTOCOL.md §3).
    for i in 0..100 {
        c.subscribe(&Subscribe::to_http(&t0, &format!("s{i}"), "http://127.0.0.1:9/")).unwrap();
    }
    let m = expect_code(
        c.subscribe(&Subscribe::to_http(&t0, "s100", "http://127.0.0.1:9/")),
        ErrorCode::TOO_MANY_TOPICS,
        "101st subscription",
    );
    assert!(m.contains("100"), "{m}");
    c.unsubscribe(&t0, "s0").unwrap();
    c.subscribe(&Subscribe::to_http(&t0, "s100", "http://127.0.0.1:9/")).unwrap();
    assert_eq!(c.topic_info(&t0).unwrap().subscription_count, 100);
}
