//! Idempotent sends and publishes in the engine: one message per key within
//! the window, batches, and the window rebuilt by replay, catalogs and
//! snapshot catalogs (`engine/dedup.rs`).

use bytes::Bytes;
use cmq_protocol::FlushPolicy;

use super::*;
use crate::engine::dedup::DEDUP_WINDOW_MS;
use crate::engine::record_log::MemLog;
use crate::engine::Catalog;

fn engine() -> ShardEngine {
    ShardEngine::new(EngineConfig {
        shard: 1,
        shard_count: 1,
        secret: [9; 16],
        default_flush: FlushPolicy::Sync,
        queues_max: 100,
    })
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn setup() -> (ShardEngine, MemLog) {
    let mut e = engine();
    let mut log = MemLog::default();
    e.create_queue(&mut log, 1_000, "q", &Default::default(), 0).expect("create");
    (e, log)
}

fn send(e: &mut ShardEngine, log: &mut MemLog, now: u64, bodies: &[&str], keys: &[&str]) -> Vec<u64> {
    let bodies: Vec<Bytes> = bodies.iter().map(|s| b(s)).collect();
    let keys: Vec<Bytes> = keys.iter().map(|s| b(s)).collect();
    e.send_keyed(log, now, "q", 0, &bodies, &keys).expect("send")
}

fn stored(e: &mut ShardEngine, now: u64) -> u64 {
    e.queue_info(now, "q").expect("info").active_msg_num
}

/// Replays `log` from `catalog` (if any), skipping records below `cut`.
fn replayed(log: &MemLog, catalog: Option<&Catalog>, cut: u64) -> ShardEngine {
    let mut e = engine();
    if let Some(c) = catalog {
        e.load_catalog(c);
    }
    for (pos, rtype, payload) in log.iter().filter(|(pos, _, p)| pos + p.len() as u64 > cut) {
        e.replay(pos, rtype, payload).expect("replay");
    }
    e
}

#[test]
fn a_repeated_key_gets_the_first_id_and_logs_nothing() {
    let (mut e, mut log) = setup();
    let first = send(&mut e, &mut log, 2_000, &["a"], &["k"]);
    let records = log.iter().count();
    let again = send(&mut e, &mut log, 3_000, &["a (retried)"], &["k"]);
    assert_eq!(again, first);
    assert_eq!(log.iter().count(), records, "a duplicate logs nothing");
    assert_eq!(stored(&mut e, 3_000), 1);
    // Other keys and unkeyed sends are stored as usual.
    assert_ne!(send(&mut e, &mut log, 3_000, &["b"], &["other"]), first);
    assert_ne!(send(&mut e, &mut log, 3_000, &["c"], &[]), first);
    assert_eq!(stored(&mut e, 3_000), 3);
}

#[test]
fn the_window_ends_five_minutes_after_the_first_send() {
    let (mut e, mut log) = setup();
    let first = send(&mut e, &mut log, 2_000, &["a"], &["k"]);
    assert_eq!(send(&mut e, &mut log, 2_000 + DEDUP_WINDOW_MS - 1, &["a"], &["k"]), first);
    let later = send(&mut e, &mut log, 2_000 + DEDUP_WINDOW_MS, &["a"], &["k"]);
    assert_ne!(later, first, "the window is over: a new message");
    assert_eq!(send(&mut e, &mut log, 2_000 + DEDUP_WINDOW_MS + 1, &["a"], &["k"]), later);
}

#[test]
fn a_batch_stores_each_key_once() {
    let (mut e, mut log) = setup();
    let ids = send(&mut e, &mut log, 2_000, &["a", "b", "a again", "none"], &["ka", "kb", "ka", ""]);
    assert_eq!(ids[0], ids[2], "a key repeated inside the batch is stored once");
    assert_eq!(ids[1], ids[0] + 1);
    assert_eq!(ids[3], ids[0] + 2, "the stored messages are numbered consecutively");
    assert_eq!(stored(&mut e, 2_000), 3);
    // Part old, part new: only the new one is stored, ids in request order.
    let more = send(&mut e, &mut log, 2_500, &["b", "c"], &["kb", "kc"]);
    assert_eq!(more[0], ids[1]);
    assert!(more[1] > ids[3]);
    assert_eq!(stored(&mut e, 2_500), 4);
    // Entirely old: nothing logged.
    let records = log.iter().count();
    assert_eq!(send(&mut e, &mut log, 2_600, &["x", "y"], &["kc", "ka"]), [more[1], ids[0]]);
    assert_eq!(log.iter().count(), records);
}

#[test]
fn keys_must_match_the_batch() {
    let (mut e, mut log) = setup();
    let err = e.send_keyed(&mut log, 2_000, "q", 0, &[b("a"), b("b")], &[b("k")]).expect_err("one key, two bodies");
    assert_eq!(err.code, ErrorCode::INVALID_PARAMETER);
    assert!(err.message.contains("idempotencyKeys"), "{}", err.message);
}

#[test]
fn the_shards_oldest_key_goes_when_the_shard_is_full_whichever_queue_holds_it() {
    const CAP: usize = 4 * BATCH_MSGS_MAX + 3;
    let (mut e, mut log) = setup();
    e.limit_dedup_keys(CAP);
    e.create_queue(&mut log, 1_000, "busy", &Default::default(), 0).expect("create");
    e.create_topic(&mut log, 1_000, "t", &Default::default(), 0).expect("topic");
    let upd = QueueAttributesUpdate { max_msg_heap_num: Some(100_000_000), ..Default::default() };
    e.set_queue_attributes(&mut log, 1_000, "busy", &upd).expect("attrs");
    let first = send(&mut e, &mut log, 2_000, &["m"], &["key-0"]);
    // The rest of the shard's keys in batches, on another queue and a topic.
    let batch = BATCH_MSGS_MAX;
    let bodies: Vec<Bytes> = (0..batch).map(|_| b("m")).collect();
    let mut sent = 1;
    while sent < CAP {
        let n = batch.min(CAP - sent);
        let keys: Vec<Bytes> = (sent..sent + n).map(|i| Bytes::from(format!("key-{i}"))).collect();
        if (sent / batch).is_multiple_of(2) {
            e.send_keyed(&mut log, 2_000, "busy", 0, &bodies[..n], &keys).expect("send");
        } else {
            e.publish_keyed(&mut log, 2_000, "t", &bodies[..n], &keys, &[], "").expect("publish");
        }
        sent += n;
    }
    assert_eq!(send(&mut e, &mut log, 2_000, &["m"], &["key-0"]), first, "exactly full: still known");
    e.send_keyed(&mut log, 2_000, "busy", 0, &[b("m")], &[b("one-more")]).expect("send");
    assert_ne!(send(&mut e, &mut log, 2_000, &["m"], &["key-0"]), first, "one past full: the shard's oldest went");
    assert_eq!(e.dedup_order.len(), CAP);
}

#[test]
fn a_deleted_queues_keys_leave_the_shards_count_and_the_catalog() {
    let (mut e, mut log) = setup();
    e.create_queue(&mut log, 1_000, "gone", &Default::default(), 0).expect("create");
    e.send_keyed(&mut log, 2_000, "gone", 0, &[b("a"), b("b")], &[b("ka"), b("kb")]).expect("send");
    let kept = send(&mut e, &mut log, 2_000, &["c"], &["kc"]);
    assert_eq!(e.dedup_order.len(), 3);
    e.delete_queue(&mut log, 3_000, "gone").expect("delete");
    assert_eq!(e.dedup_order.len(), 1);
    let catalog = e.catalog(log.data.len() as u64 + 1);
    assert_eq!(catalog.dedup.len(), 1, "only the live queue's key");
    let r = replayed(&log, None, 0);
    assert_eq!(r.digest(), e.digest());
    assert_eq!(send(&mut e, &mut log, 4_000, &["c"], &["kc"]), kept);
}

#[test]
fn replay_rebuilds_the_window() {
    let (mut e, mut log) = setup();
    let first = send(&mut e, &mut log, 2_000, &["a", "b"], &["ka", "kb"]);
    send(&mut e, &mut log, 3_000, &["c"], &[]);
    let mut r = replayed(&log, None, 0);
    assert_eq!(r.digest(), e.digest(), "the digest covers the windows");
    assert_eq!(send(&mut r, &mut log, 4_000, &["b"], &["kb"]), [first[1]]);
    assert_eq!(stored(&mut r, 4_000), 3);
}

#[test]
fn a_catalog_keeps_the_window_when_the_records_are_gone() {
    let (mut e, mut log) = setup();
    let first = send(&mut e, &mut log, 2_000, &["a"], &["ka"]);
    e.create_topic(&mut log, 2_000, "t", &Default::default(), 0).expect("topic");
    let published = e.publish_keyed(&mut log, 2_000, "t", &[b("p")], &[b("kp")], &[], "").expect("publish");
    let end = log.data.len() as u64 + 1;
    let catalog = Catalog::decode(&e.catalog(end).encode()).expect("the catalog reads back");
    // Every record before the catalog is gone (as if the message was consumed).
    let mut r = replayed(&log, Some(&catalog), end);
    assert_eq!(send(&mut r, &mut log, 3_000, &["a"], &["ka"]), first);
    let again = r.publish_keyed(&mut log, 3_000, "t", &[b("p")], &[b("kp")], &[], "").expect("publish");
    assert_eq!(again, published);
    // Records before the catalog that are still there add nothing twice:
    // the same window, the same digest.
    let mut kept = replayed(&log, Some(&catalog), 0);
    assert_eq!(kept.digest(), e.digest());
    assert_eq!(send(&mut kept, &mut log, 3_000, &["a"], &["ka"]), first);
}

#[test]
fn a_snapshot_catalog_ahead_of_the_entries_adds_nothing_twice() {
    let (mut e, mut log) = setup();
    send(&mut e, &mut log, 2_000, &["a"], &["ka"]);
    let end = log.data.len() as u64 + 1;
    let catalog = e.catalog(end);
    // A follower installs the catalog, then applies the entries it already reflects.
    let mut f = engine();
    f.load_snapshot_catalog(&catalog, 5, 3, 0);
    for (pos, rtype, payload) in log.iter() {
        f.replay(pos, rtype, payload).expect("replay");
    }
    f.entry_applied(5, end);
    assert_eq!(f.digest(), e.digest());
}

#[test]
fn published_keys_deduplicate_per_topic() {
    let (mut e, mut log) = setup();
    for t in ["t1", "t2"] {
        e.create_topic(&mut log, 1_000, t, &Default::default(), 0).expect("topic");
    }
    let publish = |e: &mut ShardEngine, log: &mut MemLog, topic: &str, keys: &[&str]| {
        let bodies: Vec<Bytes> = keys.iter().map(|_| b("body")).collect();
        let keys: Vec<Bytes> = keys.iter().map(|k| b(k)).collect();
        e.publish_keyed(log, 2_000, topic, &bodies, &keys, &[], "").expect("publish")
    };
    let first = publish(&mut e, &mut log, "t1", &["k", "k"]);
    assert_eq!(first[0], first[1]);
    assert_eq!(publish(&mut e, &mut log, "t1", &["k"]), [first[0]]);
    assert_ne!(publish(&mut e, &mut log, "t2", &["k"]), [first[0]], "another topic's window");
    let r = replayed(&log, None, 0);
    let mut r = r;
    assert_eq!(publish(&mut r, &mut log, "t1", &["k"]), [first[0]]);
}
