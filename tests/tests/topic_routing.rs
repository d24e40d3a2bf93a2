//! Topic fan-out to queues over a real cmqd (issue 6, done-when #1): tag
//! filtering and routing-key bindings exactly as the HTTP spec's §8 says,
//! single and batch publishes, fan-out to queues owned by different
//! shards, and (measured, not asserted) publish-to-receivable latency.
//!
//! Every check is on exact multisets of bodies per queue after the topic's
//! msgCount has dropped to 0, followed by "the queue holds nothing more":
//! a delivery to the wrong queue, a missing one and a duplicate all fail.

mod topic_util;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{str_list, SubscribeBuilder, NO_TAGS};
use cmq_integration_tests::{name_on_shard, names_on_shard, Broker};
use cmq_protocol::names::shard_for;
use cmq_protocol::{FilterType, SetSubscriptionAttributes, Subscribe, TopicAttributesUpdate};
use topic_util::*;

const SHARDS: u16 = 2;

fn routing_key_topic() -> TopicAttributesUpdate {
    TopicAttributesUpdate { filter_type: Some(FilterType::RoutingKey), ..Default::default() }
}

fn bodies(items: &[String]) -> Vec<Bytes> {
    items.iter().map(|s| Bytes::from(s.clone())).collect()
}

#[test]
fn tag_filters_deliver_to_exactly_the_matching_queues() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    c.create_topic("tags", &TopicAttributesUpdate::default()).unwrap();
    assert_eq!(c.topic_info("tags").unwrap().filter_type, FilterType::Tag, "tag filtering is the default");
    for q in ["qa", "qb", "qall", "qab"] {
        c.create_queue(q, &Default::default()).unwrap();
    }
    c.subscribe(&Subscribe::to_queue("tags", "sa", "qa").with_filter_tags(&["a"])).unwrap();
    c.subscribe(&Subscribe::to_queue("tags", "sb", "qb").with_filter_tags(&["b"])).unwrap();
    c.subscribe(&Subscribe::to_queue("tags", "sall", "qall")).unwrap();
    // Two filter tags that both match one message: still one copy.
    c.subscribe(&Subscribe::to_queue("tags", "sab", "qab").with_filter_tags(&["a", "b"])).unwrap();

    c.publish("tags", "m-a", &["a"], "").unwrap();
    c.publish("tags", "m-ab", &["a", "b"], "").unwrap();
    c.publish("tags", "m-none", NO_TAGS, "").unwrap();
    c.publish("tags", "m-c", &["c"], "").unwrap();
    // Tags compare exactly: "A" is not "a".
    c.publish("tags", "m-A", &["A"], "").unwrap();
    // A routing key means nothing on a tag topic.
    c.publish("tags", "m-b-rk", &["b"], "a").unwrap();
    let batch = ["batch-b-1", "batch-b-2", "batch-b-3"].map(String::from);
    assert_eq!(c.publish_batch("tags", &bodies(&batch), &["b"], "").unwrap().len(), 3);
    let untagged_batch = ["batch-none-1", "batch-none-2"].map(String::from);
    c.publish_batch("tags", &bodies(&untagged_batch), NO_TAGS, "").unwrap();

    expect_exactly(&mut c, "tags", "qa", &["m-a", "m-ab"]);
    expect_exactly(&mut c, "tags", "qb", &["m-ab", "m-b-rk", "batch-b-1", "batch-b-2", "batch-b-3"]);
    expect_exactly(&mut c, "tags", "qab", &["m-a", "m-ab", "m-b-rk", "batch-b-1", "batch-b-2", "batch-b-3"]);
    let all = [
        "m-a",
        "m-ab",
        "m-none",
        "m-c",
        "m-A",
        "m-b-rk",
        "batch-b-1",
        "batch-b-2",
        "batch-b-3",
        "batch-none-1",
        "batch-none-2",
    ];
    expect_exactly(&mut c, "tags", "qall", &all);

    // The counters agree: everything delivered, nothing pending or dropped.
    for (sub, n) in [("sa", 2), ("sb", 5), ("sab", 6), ("sall", 11)] {
        let i = c.subscription_info("tags", sub).unwrap();
        assert_eq!((i.delivered, i.msg_count, i.dropped), (n, 0, 0), "{sub}: {i:?}");
    }

    // Clearing the filter tags makes a subscription take everything, and a
    // new filter tag list replaces the old one (§5.4).
    c.clear_subscription_filter_tags("tags", "sa").unwrap();
    let update = SetSubscriptionAttributes {
        topic: "tags".into(),
        subscription: "sb".into(),
        filter_tags: Some(str_list(&["c"])),
        ..Default::default()
    };
    assert_eq!(c.set_subscription_attributes(&update).unwrap().filter_tags.0, ["c"]);
    c.publish("tags", "after-untagged", NO_TAGS, "").unwrap();
    c.publish("tags", "after-b", &["b"], "").unwrap();
    c.publish("tags", "after-c", &["c"], "").unwrap();
    expect_exactly(&mut c, "tags", "qa", &["after-untagged", "after-b", "after-c"]);
    expect_exactly(&mut c, "tags", "qb", &["after-c"]);
    expect_exactly(&mut c, "tags", "qab", &["after-b"]);
    expect_exactly(&mut c, "tags", "qall", &["after-untagged", "after-b", "after-c"]);
}

#[test]
fn routing_keys_match_bindings_word_by_word() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    c.create_topic("rk", &routing_key_topic()).unwrap();
    for q in ["q-created", "q-star", "q-audit", "q-both", "q-none"] {
        c.create_queue(q, &Default::default()).unwrap();
    }
    c.subscribe(&Subscribe::to_queue("rk", "created", "q-created").with_binding_keys(&["order.created"])).unwrap();
    c.subscribe(&Subscribe::to_queue("rk", "star", "q-star").with_binding_keys(&["order.*"])).unwrap();
    c.subscribe(&Subscribe::to_queue("rk", "audit", "q-audit").with_binding_keys(&["audit.#"])).unwrap();
    // Both keys match "order.created": one copy, not two.
    c.subscribe(&Subscribe::to_queue("rk", "both", "q-both").with_binding_keys(&["order.created", "order.*"])).unwrap();
    // No binding key on a routing-key topic: receives nothing (§8 [REC]).
    c.subscribe(&Subscribe::to_queue("rk", "none", "q-none")).unwrap();

    // (routing key, which subscriptions' queues get it)
    let cases: &[(&str, &[&str])] = &[
        ("order.created", &["q-created", "q-star", "q-both"]),
        ("order.paid", &["q-star", "q-both"]),
        ("order.created.x", &[]), // `*` is exactly one word; order.created is exact
        ("order", &[]),
        ("x.order.created", &[]),
        ("ORDER.CREATED", &[]), // words compare case-sensitively
        ("audit", &[]),         // `#` is one or more words, not zero
        ("audit.login", &["q-audit"]),
        ("audit.login.failed.twice", &["q-audit"]),
        ("auditx.login", &[]),
        ("", &[]), // empty = no routing key: matches nothing, not even audit.#
    ];
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for (i, (key, queues)) in cases.iter().enumerate() {
        let body = format!("single-{i}-{key}");
        c.publish("rk", body.clone(), NO_TAGS, key).unwrap();
        for q in *queues {
            expected.entry(q).or_default().push(body.clone());
        }
        // The same key in a batch of 3 (one routing key for the whole batch).
        let batch: Vec<String> = (0..3).map(|j| format!("batch-{i}-{j}-{key}")).collect();
        c.publish_batch("rk", &bodies(&batch), NO_TAGS, key).unwrap();
        for q in *queues {
            expected.entry(q).or_default().extend(batch.iter().cloned());
        }
    }
    // Tags mean nothing on a routing-key topic.
    c.publish("rk", "tagged-audit", &["order.created"], "audit.x").unwrap();
    expected.entry("q-audit").or_default().push("tagged-audit".into());

    for q in ["q-created", "q-star", "q-audit", "q-both", "q-none"] {
        let want = expected.remove(q).unwrap_or_default();
        expect_exactly(&mut c, "rk", q, &want);
    }
    assert_eq!(c.subscription_info("rk", "none").unwrap().delivered, 0);
    assert_eq!(c.subscription_info("rk", "both").unwrap().delivered, 8);
}

#[test]
fn fan_out_reaches_queues_owned_by_every_shard() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    assert_eq!(c.shard_count(), SHARDS);
    for topic_shard in 0..SHARDS {
        let topic = name_on_shard(&format!("fan{topic_shard}-"), topic_shard, SHARDS);
        let info_shard = {
            c.create_topic(&topic, &TopicAttributesUpdate::default()).unwrap();
            c.topic_info(&topic).unwrap().shard
        };
        assert_eq!(info_shard, topic_shard, "topic {topic} is served by the shard its name hashes to");
        let mut queues = Vec::new();
        for shard in 0..SHARDS {
            queues.extend(names_on_shard(&format!("t{topic_shard}-s{shard}-q"), shard, SHARDS, 2));
        }
        for q in &queues {
            c.create_queue(q, &Default::default()).unwrap();
            assert_eq!(c.queue_info(q).unwrap().shard, shard_for(q, SHARDS));
            c.subscribe(&Subscribe::to_queue(&topic, &format!("sub-{q}"), q)).unwrap();
        }
        assert!(queues.iter().any(|q| shard_for(q, SHARDS) == topic_shard));
        assert!(queues.iter().any(|q| shard_for(q, SHARDS) != topic_shard));

        let mut sent = Vec::new();
        for i in 0..10 {
            let body = format!("{topic}-single-{i}");
            c.publish(&topic, body.clone(), NO_TAGS, "").unwrap();
            sent.push(body);
        }
        for k in 0..2 {
            let batch: Vec<String> = (0..16).map(|j| format!("{topic}-batch-{k}-{j}")).collect();
            c.publish_batch(&topic, &bodies(&batch), NO_TAGS, "").unwrap();
            sent.extend(batch);
        }
        for q in &queues {
            expect_exactly(&mut c, &topic, q, &sent);
            let i = c.subscription_info(&topic, &format!("sub-{q}")).unwrap();
            assert_eq!((i.delivered, i.msg_count), (sent.len() as u64, 0), "{q}: {i:?}");
        }
    }
}

/// Publish-ack → receivable latency for a queue subscription whose queue
/// is on the other shard, with a publisher per shard's worth of load: each
/// message's latency is the time from its publish acknowledgement to the
/// moment a long-polling consumer got it. Printed for docs/BENCHMARKS.md;
/// not asserted (the target is p99 < 10 ms under load).
#[test]
fn publish_to_receivable_latency_is_measured() {
    // CMQ_LATENCY_PUBLISHERS=N measures with more concurrent publishers (same total).
    let publishers_n: usize =
        std::env::var("CMQ_LATENCY_PUBLISHERS").ok().and_then(|v| v.parse().ok()).unwrap_or(4).clamp(1, 64);
    const TOTAL: usize = 2_000;
    let per_publisher = TOTAL / publishers_n;
    let b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let topic = name_on_shard("lat-topic-", 0, SHARDS);
    let queue = name_on_shard("lat-queue-", 1, SHARDS);
    c.create_topic(&topic, &TopicAttributesUpdate::default()).unwrap();
    c.create_queue(&queue, &Default::default()).unwrap();
    c.subscribe(&Subscribe::to_queue(&topic, "lat", &queue)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (mut cc, queue, done) = (client(&b), queue.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen: HashMap<String, Instant> = HashMap::new();
            while seen.len() < publishers_n * per_publisher {
                let msgs = cc.receive_batch(&queue, 16, Some(1)).expect("receive");
                let at = Instant::now();
                if msgs.is_empty() && done.load(Ordering::SeqCst) && cc.topic_info(&topic).unwrap().msg_count == 0 {
                    break;
                }
                let handles: Vec<_> = msgs.iter().map(|m| m.receipt_handle).collect();
                for m in msgs {
                    let prev = seen.insert(String::from_utf8_lossy(&m.body).into_owned(), at);
                    assert!(prev.is_none(), "a message arrived twice");
                }
                if !handles.is_empty() {
                    cc.delete_batch(&queue, &handles).expect("delete");
                }
            }
            seen
        })
    };
    let started = Instant::now();
    let publishers: Vec<_> = (0..publishers_n)
        .map(|p| {
            let (mut pc, topic) = (client(&b), name_on_shard("lat-topic-", 0, SHARDS));
            std::thread::spawn(move || {
                (0..per_publisher)
                    .map(|i| {
                        let body = format!("p{p}-{i}");
                        pc.publish(&topic, body.clone(), NO_TAGS, "").expect("publish");
                        (body, Instant::now())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<(String, Instant)> = publishers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let publish_secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let seen = consumer.join().unwrap();
    assert_eq!(seen.len(), acked.len(), "every published message arrived");
    let mut early = 0;
    let mut lat: Vec<Duration> = acked
        .iter()
        .map(|(body, ack)| {
            let at = seen[body];
            if at < *ack {
                early += 1;
            }
            at.saturating_duration_since(*ack)
        })
        .collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    eprintln!(
        "publish->receivable latency, queue subscription on the other shard, {} msgs from {publishers_n} publishers \
         ({:.0} publishes/s, {}): p50 {:?} p90 {:?} p99 {:?} max {:?} ({early} received before their ack was read)",
        lat.len(),
        lat.len() as f64 / publish_secs,
        cmq_integration_tests::broker::cmqd_path().display(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat[lat.len() - 1],
    );
}
