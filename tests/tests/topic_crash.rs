//! Crash test for topic fan-out (issue 6, done-when #1, "a kill -9 right
//! after publish acknowledgements loses no delivery"): publish hundreds of
//! messages (single and batched, some tagged) to two topics, one per
//! shard, whose subscriptions' queues are on both shards; kill -9 cmqd the
//! moment the last acknowledgement arrives (the final burst is pipelined,
//! so its deliveries are still under way), restart, and check that every
//! acknowledged publish reached every matching queue exactly once: nothing
//! missing, nothing twice, nothing unexpected. Several rounds on one data
//! directory.
//!
//! Batch sizes, tags and burst sizes come from a seeded RNG; the seed is
//! printed, and `CMQ_CRASH_SEED=<seed>` replays a run (`CMQ_CRASH_ROUNDS`
//! runs more rounds).

mod topic_util;

use std::collections::HashMap;

use bytes::Bytes;
use cmq_client::{str_list, Client, SubscribeBuilder};
use cmq_integration_tests::{name_on_shard, Broker};
use cmq_protocol::{BatchPublishMessage, PublishMessage, Request, Response, Subscribe, TopicAttributesUpdate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use topic_util::*;

const SHARDS: u16 = 2;
const TAG: &str = "odd";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One publish request: 1 body (PublishMessage) or a batch, tagged or not.
struct Publish {
    topic: String,
    bodies: Vec<String>,
    tagged: bool,
}

impl Publish {
    fn request(&self) -> Request {
        let tags = if self.tagged { str_list(&[TAG]) } else { str_list::<&str>(&[]) };
        if self.bodies.len() == 1 {
            Request::PublishMessage(PublishMessage {
                topic: self.topic.clone(),
                body: Bytes::from(self.bodies[0].clone()),
                tags,
                routing_key: String::new(),
                ..Default::default()
            })
        } else {
            Request::BatchPublishMessage(BatchPublishMessage {
                topic: self.topic.clone(),
                bodies: self.bodies.iter().map(|b| Bytes::from(b.clone())).collect(),
                tags,
                routing_key: String::new(),
                ..Default::default()
            })
        }
    }
}

fn acked(resp: Response, n: usize) {
    let ids = match resp {
        Response::PublishMessage(ok) => vec![ok.msg_id],
        Response::BatchPublishMessage(ok) => ok.msg_ids,
        other => panic!("unexpected answer to a publish: {other:?}"),
    };
    assert_eq!(ids.len(), n, "one id per body");
}

struct Layout {
    topics: Vec<String>,
    /// Every message of every topic.
    all: Vec<String>,
    /// Tagged messages only (one per topic, on the shard other than the topic's).
    filtered: Vec<(String, String)>,
}

fn set_up(c: &mut Client) -> Layout {
    let all: Vec<String> = (0..SHARDS).map(|s| name_on_shard("all-", s, SHARDS)).collect();
    for q in &all {
        c.create_queue(q, &Default::default()).unwrap();
    }
    let mut topics = Vec::new();
    let mut filtered = Vec::new();
    for s in 0..SHARDS {
        let topic = name_on_shard("crash-topic-", s, SHARDS);
        c.create_topic(&topic, &TopicAttributesUpdate::default()).unwrap();
        for (i, q) in all.iter().enumerate() {
            c.subscribe(&Subscribe::to_queue(&topic, &format!("all{i}"), q)).unwrap();
        }
        let f = name_on_shard(&format!("odd-of-{topic}-"), 1 - s, SHARDS);
        c.create_queue(&f, &Default::default()).unwrap();
        c.subscribe(&Subscribe::to_queue(&topic, "odd", &f).with_filter_tags(&[TAG])).unwrap();
        topics.push(topic.clone());
        filtered.push((topic, f));
    }
    Layout { topics, all, filtered }
}

#[test]
fn kill_9_right_after_publish_acks_loses_no_delivery() {
    let seed = env_u64("CMQ_CRASH_SEED").unwrap_or_else(rand::random);
    let rounds = env_u64("CMQ_CRASH_ROUNDS").unwrap_or(3);
    eprintln!("topic crash test: seed {seed} (CMQ_CRASH_SEED={seed} replays), {rounds} rounds");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = client(&b);
    let layout = set_up(&mut c);

    for round in 0..rounds {
        let ctx = format!("seed {seed} round {round}");
        let mut next = 0;
        let mut make = |rng: &mut StdRng, topic: &str, n: usize| -> Publish {
            let bodies = (0..n)
                .map(|_| {
                    next += 1;
                    format!("r{round}-{topic}-{next}")
                })
                .collect();
            Publish { topic: topic.to_owned(), bodies, tagged: rng.random_bool(0.5) }
        };
        // Sequential publishes: singles and batches, to both topics.
        let mut sequential = Vec::new();
        for _ in 0..20 {
            for t in &layout.topics {
                let n = if rng.random_bool(0.5) { 1 } else { rng.random_range(2..=16) };
                sequential.push(make(&mut rng, t, n));
            }
        }
        // The final burst, pipelined: all sent at once, then every ack read, then kill -9.
        let burst: Vec<Publish> = (0..rng.random_range(10..=20))
            .map(|i| {
                let n = if i % 3 == 0 { 1 } else { 16 };
                make(&mut rng, &layout.topics[i % layout.topics.len()], n)
            })
            .collect();
        for p in &sequential {
            acked(c.call(&p.request()).unwrap_or_else(|e| panic!("{ctx}: publish: {e}")), p.bodies.len());
        }
        let tickets: Vec<_> = burst.iter().map(|p| c.submit(&p.request()).expect("submit")).collect();
        c.flush().expect("flush");
        for (t, p) in tickets.into_iter().zip(&burst) {
            acked(c.wait(t).unwrap_or_else(|e| panic!("{ctx}: publish: {e}")), p.bodies.len());
        }
        b.kill9();

        let published: Vec<&Publish> = sequential.iter().chain(&burst).collect();
        let total: usize = published.iter().map(|p| p.bodies.len()).sum();
        b.restart();
        c = client(&b);
        let pending: u64 = layout.topics.iter().map(|t| c.topic_info(t).unwrap().msg_count).sum();
        let n = published.len();
        eprintln!("{ctx}: {total} messages in {n} publishes acknowledged; {pending} deliveries pending at restart");

        let every: Vec<&str> = published.iter().flat_map(|p| p.bodies.iter().map(String::as_str)).collect();
        let mut expected: HashMap<&str, Vec<&str>> = layout.all.iter().map(|q| (q.as_str(), every.clone())).collect();
        for (topic, q) in &layout.filtered {
            let tagged = published.iter().filter(|p| p.tagged && &p.topic == topic);
            expected.insert(q, tagged.flat_map(|p| p.bodies.iter().map(String::as_str)).collect());
        }
        for (q, want) in &expected {
            let got = take(&mut c, q, want.len());
            assert_eq!(counts(&got), counts(want), "{ctx}: queue {q}: every acknowledged publish exactly once");
        }
        for t in &layout.topics {
            settle(&mut c, t);
        }
        for q in expected.keys() {
            assert_eq!(held(&mut c, q), 0, "{ctx}: queue {q} got more than it should have (duplicates?)");
        }
        for t in &layout.topics {
            for sub in ["all0", "all1", "odd"] {
                let i = c.subscription_info(t, sub).unwrap();
                assert_eq!((i.msg_count, i.dropped), (0, 0), "{ctx}: {t}/{sub}: {i:?}");
            }
        }
    }
}
