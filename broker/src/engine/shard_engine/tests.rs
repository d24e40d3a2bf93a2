use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use cmq_protocol::{ErrorCode, FlushPolicy, QueueAttributesUpdate, ReceiptHandle};
use proptest::prelude::*;

use super::*;
use crate::engine::log::MemLog;

fn engine() -> ShardEngine {
    ShardEngine::new(EngineConfig { shard: 1, secret: [9; 16], default_flush: FlushPolicy::Sync, queues_max: 100 })
}

fn body(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn setup(attrs: QueueAttributesUpdate) -> (ShardEngine, MemLog) {
    let mut e = engine();
    let mut log = MemLog::default();
    e.create_queue(&mut log, 1_000, "q", &attrs).expect("create");
    (e, log)
}

fn recv(e: &mut ShardEngine, log: &mut MemLog, now: u64, max: usize) -> Vec<Delivery> {
    e.receive(log, now, "q", max, Some(0)).expect("receive").deliveries()
}

fn replayed(log: &MemLog) -> ShardEngine {
    replayed_from(log, None, 0)
}

/// Replays as recovery does after segments below `cut` were deleted.
fn replayed_from(log: &MemLog, catalog: Option<&Catalog>, cut: u64) -> ShardEngine {
    let mut e = engine();
    if let Some(c) = catalog {
        e.load_catalog(c);
    }
    // Whole records below the cut are gone, as whole segments are in the WAL.
    for (pos, rtype, payload) in log.iter().filter(|(pos, _, p)| pos + p.len() as u64 > cut) {
        e.replay(pos, rtype, payload).expect("replay");
    }
    e
}

/// Compaction as the shard runs it: copy live messages from below `pos` to
/// the head, take a catalog, and return where the log may now be cut.
fn compact(e: &mut ShardEngine, log: &mut MemLog, pos: u64) -> (Catalog, u64) {
    e.relocate_below(log, pos, usize::MAX).expect("relocate");
    let end = log.data.len() as u64 + 1;
    let catalog = e.catalog(end);
    let cut = e.min_live_pos().unwrap_or(end).min(catalog.log_pos);
    (catalog, cut)
}

#[test]
fn send_receive_delete_cycle() {
    let (mut e, mut log) = setup(Default::default());
    let ids = e.send(&mut log, 2_000, "q", 0, &[body("a"), body("b")]).expect("send");
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0] >> 56, 1, "message ids carry the shard");
    let got = recv(&mut e, &mut log, 2_000, 16);
    assert_eq!(got.len(), 2);
    assert_eq!(log.bytes(got[0].body_pos, got[0].body_len), b"a");
    assert_eq!(log.bytes(got[1].body_pos, got[1].body_len), b"b");
    assert_eq!(got[0].head.msg_id, ids[0]);
    assert_eq!(got[0].head.dequeue_count, 1);
    assert_eq!(got[0].head.first_dequeue_time_ms, 2_000);
    assert_eq!(got[0].head.next_visible_time_ms, 2_000 + 30_000);
    let handles: Vec<_> = got.iter().map(|d| d.head.receipt_handle).collect();
    let results = e.delete(&mut log, 2_500, "q", &handles).expect("delete");
    assert!(results.iter().all(Result::is_ok));
    let info = e.queue_info(3_000, "q").expect("info");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (0, 0, 0));
}

#[test]
fn visibility_timeout_redelivers_and_invalidates_old_handle() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { visibility_timeout: Some(5), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[body("x")]).expect("send");
    let first = recv(&mut e, &mut log, 1_000, 1);
    assert!(recv(&mut e, &mut log, 5_999, 1).is_empty(), "still in flight");
    let second = recv(&mut e, &mut log, 6_000, 1);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].head.dequeue_count, 2);
    assert_eq!(second[0].head.first_dequeue_time_ms, 1_000);
    let stale = e.delete(&mut log, 6_001, "q", &[first[0].head.receipt_handle]).expect("delete");
    assert_eq!(stale[0].as_ref().map_err(|e| e.code), Err(ErrorCode::RECEIPT_HANDLE_INVALID));
    let fresh = e.delete(&mut log, 6_001, "q", &[second[0].head.receipt_handle]).expect("delete");
    assert!(fresh[0].is_ok());
}

#[test]
fn expired_handle_is_rejected_even_before_redelivery() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { visibility_timeout: Some(1), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[body("x")]).expect("send");
    let d = recv(&mut e, &mut log, 1_000, 1);
    let r = e.delete(&mut log, 2_000, "q", &[d[0].head.receipt_handle]).expect("delete");
    assert!(r[0].is_err());
}

#[test]
fn delayed_messages_wait_their_turn() {
    let (mut e, mut log) = setup(Default::default());
    e.send(&mut log, 1_000, "q", 10, &[body("late")]).expect("send");
    e.send(&mut log, 1_000, "q", 0, &[body("now")]).expect("send");
    let info = e.queue_info(1_000, "q").expect("info");
    assert_eq!((info.active_msg_num, info.delay_msg_num), (1, 1));
    let got = recv(&mut e, &mut log, 1_000, 16);
    assert_eq!(got.len(), 1);
    assert_eq!(log.bytes(got[0].body_pos, got[0].body_len), b"now");
    assert!(recv(&mut e, &mut log, 10_999, 16).is_empty());
    e.tick(11_000);
    let got = recv(&mut e, &mut log, 11_000, 16);
    assert_eq!(log.bytes(got[0].body_pos, got[0].body_len), b"late");
}

#[test]
fn queue_full_rejects_whole_batch() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { max_msg_heap_num: Some(3), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[body("a"), body("b")]).expect("send");
    let err = e.send(&mut log, 1_000, "q", 0, &[body("c"), body("d")]).expect_err("full");
    assert_eq!(err.code, ErrorCode::QUEUE_FULL);
    e.send(&mut log, 1_000, "q", 0, &[body("c")]).expect("exactly at the limit");
    assert_eq!(e.queue_info(1_000, "q").expect("info").active_msg_num, 3);
}

#[test]
fn message_size_limit_is_the_queues() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { max_msg_size: Some(1024), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[Bytes::from(vec![b'x'; 1024])]).expect("at limit");
    let err = e.send(&mut log, 1_000, "q", 0, &[Bytes::from(vec![b'x'; 1025])]).expect_err("over");
    assert_eq!(err.code, ErrorCode::MESSAGE_TOO_LARGE);
    let err = e.send(&mut log, 1_000, "q", 0, &[Bytes::new()]).expect_err("empty");
    assert_eq!(err.code, ErrorCode::INVALID_PARAMETER);
}

#[test]
fn long_poll_waiter_is_served_by_send_and_times_out_otherwise() {
    let (mut e, mut log) = setup(Default::default());
    let ReceiveOutcome::Waiting(w1) = e.receive(&mut log, 1_000, "q", 1, Some(5)).expect("rx") else {
        panic!("expected to wait")
    };
    let ReceiveOutcome::Waiting(w2) = e.receive(&mut log, 1_000, "q", 1, Some(2)).expect("rx") else {
        panic!("expected to wait")
    };
    e.tick(1_000);
    assert_eq!(e.next_deadline(), Some(2_000), "the next retention sweep");
    e.tick(2_000);
    assert_eq!(e.next_deadline(), Some(3_000), "the shorter poll's deadline");
    e.send(&mut log, 2_500, "q", 0, &[body("m")]).expect("send");
    let served = e.serve_waiters(&mut log, 2_500);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].0, w1, "oldest waiter first");
    assert_eq!(e.expire_waiters(2_999), Vec::<u64>::new());
    assert_eq!(e.expire_waiters(3_000), vec![w2]);
}

#[test]
fn change_visibility_extends_and_zero_releases() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { visibility_timeout: Some(5), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[body("x")]).expect("send");
    let d = recv(&mut e, &mut log, 1_000, 1);
    let h = d[0].head.receipt_handle;
    let (h2, next) = e.change_visibility(&mut log, 5_000, "q", h, 10).expect("extend");
    assert_eq!((h2, next), (h, 15_000));
    e.tick(6_000);
    assert!(recv(&mut e, &mut log, 6_000, 1).is_empty(), "lease extended past the original 6s");
    e.change_visibility(&mut log, 7_000, "q", h, 0).expect("release");
    let again = recv(&mut e, &mut log, 7_000, 1);
    assert_eq!(again[0].head.dequeue_count, 2);
    let err = e.change_visibility(&mut log, 7_000, "q", h, 5).expect_err("old handle");
    assert_eq!(err.code, ErrorCode::RECEIPT_HANDLE_INVALID);
}

#[test]
fn queue_admin_errors() {
    let (mut e, mut log) = setup(Default::default());
    assert_eq!(
        e.create_queue(&mut log, 1, "q", &Default::default()).map_err(|e| e.code),
        Err(ErrorCode::QUEUE_ALREADY_EXISTS)
    );
    assert_eq!(
        e.create_queue(&mut log, 1, "9q", &Default::default()).map_err(|e| e.code),
        Err(ErrorCode::INVALID_PARAMETER)
    );
    assert_eq!(e.send(&mut log, 1, "nope", 0, &[body("x")]).map_err(|e| e.code), Err(ErrorCode::QUEUE_NOT_FOUND));
    let bad = QueueAttributesUpdate { visibility_timeout: Some(0), ..Default::default() };
    let err = e.set_queue_attributes(&mut log, 1, "q", &bad).expect_err("range");
    assert!(err.message.contains("visibilityTimeout"), "{}", err.message);
    assert_eq!(e.delete(&mut log, 1, "q", &[]).map_err(|e| e.code), Err(ErrorCode::BATCH_TOO_LARGE));
    assert_eq!(e.receive(&mut log, 1, "q", 17, None).map_err(|e| e.code), Err(ErrorCode::BATCH_TOO_LARGE));
    let bodies = vec![body("x"); 17];
    assert_eq!(e.send(&mut log, 1, "q", 0, &bodies).map_err(|e| e.code), Err(ErrorCode::BATCH_TOO_LARGE));
    e.delete_queue(&mut log, 1, "q").expect("delete queue");
    assert_eq!(e.delete_queue(&mut log, 1, "q").map_err(|e| e.code), Err(ErrorCode::QUEUE_NOT_FOUND));
}

#[test]
fn failed_log_append_changes_nothing() {
    let (mut e, mut log) = setup(Default::default());
    e.send(&mut log, 1_000, "q", 0, &[body("a")]).expect("send");
    log.fail = true;
    assert_eq!(e.send(&mut log, 1_000, "q", 0, &[body("b")]).map_err(|e| e.code), Err(ErrorCode::STORAGE_UNAVAILABLE));
    assert!(e.receive(&mut log, 1_000, "q", 1, Some(0)).is_err());
    log.fail = false;
    let got = recv(&mut e, &mut log, 1_000, 16);
    assert_eq!(got.len(), 1, "the failed receive returned its pick; the failed send added nothing");
    assert_eq!(got[0].head.dequeue_count, 1);
}

#[test]
fn list_queues_filters_and_orders_by_creation() {
    let mut e = engine();
    let mut log = MemLog::default();
    for (t, n) in [(3, "b-two"), (1, "a-one"), (2, "b-one")] {
        e.create_queue(&mut log, t, n, &Default::default()).expect("create");
    }
    let (total, page) = e.list_queues("b-", "", 10);
    assert_eq!(total, 2);
    assert_eq!(page.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["b-one", "b-two"]);
    let (total, page) = e.list_queues("", "one", 1);
    assert_eq!((total, page.len()), (2, 1));
    assert_eq!(page[0].name, "a-one");
}

#[test]
fn replay_rebuilds_the_same_state() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { visibility_timeout: Some(5), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[body("a"), body("b"), body("c")]).expect("send");
    e.send(&mut log, 1_000, "q", 60, &[body("d")]).expect("send");
    let d = recv(&mut e, &mut log, 1_000, 2);
    e.delete(&mut log, 1_500, "q", &[d[0].head.receipt_handle]).expect("delete");
    let mut r = replayed(&log);
    assert_eq!(r.queue_info(2_000, "q"), e.queue_info(2_000, "q"));
    // The surviving handle works on the replayed engine: dequeue counts and leases were logged.
    let ok = r.delete(&mut log, 2_000, "q", &[d[1].head.receipt_handle]).expect("delete");
    assert!(ok[0].is_ok());
    let next = recv(&mut r, &mut log, 2_000, 16);
    assert_eq!(next.len(), 1);
    assert_eq!(log.bytes(next[0].body_pos, next[0].body_len), b"c");
    // New ids continue after the replayed ones.
    let ids = r.send(&mut log, 2_000, "q", 0, &[body("e")]).expect("send");
    assert!(ids[0] > d[1].head.msg_id);
}

#[test]
fn retention_drops_old_messages() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { msg_retention_seconds: Some(60), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[body("old")]).expect("send");
    e.send(&mut log, 30_000, "q", 0, &[body("new")]).expect("send");
    e.tick(61_000);
    let info = e.queue_info(61_000, "q").expect("info");
    assert_eq!(info.active_msg_num, 1);
    assert_eq!(info.min_msg_time_ms, 30_000);
}

#[test]
fn deleted_messages_are_kept_for_rewind_seconds() {
    let upd = QueueAttributesUpdate { rewind_seconds: Some(60), ..Default::default() };
    let (mut e, mut log) = setup(upd);
    e.send(&mut log, 1_000, "q", 0, &[body("a")]).expect("send");
    let d = recv(&mut e, &mut log, 1_000, 1);
    e.delete(&mut log, 1_000, "q", &[d[0].head.receipt_handle]).expect("delete");
    assert_eq!(e.queue_info(1_000, "q").expect("info").rewind_msg_num, 1);
    e.tick(61_000);
    assert_eq!(e.queue_info(61_000, "q").expect("info").rewind_msg_num, 0);
}

#[test]
fn compaction_then_cut_log_rebuilds_the_same_state() {
    let upd = QueueAttributesUpdate { visibility_timeout: Some(5), rewind_seconds: Some(600), ..Default::default() };
    let (mut e, mut log) = setup(upd);
    e.send(&mut log, 1_000, "q", 0, &[body("a"), body("b"), body("c"), body("d")]).expect("send");
    e.send(&mut log, 1_000, "q", 30, &[body("late")]).expect("send");
    let d = recv(&mut e, &mut log, 1_000, 2);
    e.delete(&mut log, 1_100, "q", &[d[0].head.receipt_handle]).expect("delete");
    let end = log.data.len() as u64 + 1;
    let (catalog, cut) = compact(&mut e, &mut log, end);
    assert!(cut + 16 >= end, "everything live was copied past the old log ({cut} < {end})");
    let mut r = replayed_from(&log, Some(&catalog), cut);
    assert_eq!(r.queue_info(2_000, "q"), e.queue_info(2_000, "q"));
    assert_eq!(r.queue_info(2_000, "q").expect("info").rewind_msg_num, 1, "deleted-but-rewindable kept");
    // The in-flight message kept its lease and dequeue count; its handle still works.
    assert!(r.delete(&mut log, 2_000, "q", &[d[1].head.receipt_handle]).expect("delete")[0].is_ok());
    let rest = recv(&mut r, &mut log, 2_000, 16);
    let bodies: Vec<&[u8]> = rest.iter().map(|x| log.bytes(x.body_pos, x.body_len)).collect();
    assert_eq!(bodies, [b"c".as_slice(), b"d"]);
    // Numbering continues: no reused sequence numbers or message ids.
    let id = r.send(&mut log, 2_000, "q", 0, &[body("e")]).expect("send")[0];
    assert!(id > d[1].head.msg_id);
}

// ---- model-based property test ---------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Send {
        n: usize,
        delay: u32,
    },
    Receive {
        max: usize,
    },
    /// Delete using the k-th handle ever issued (possibly stale).
    Delete {
        k: usize,
    },
    ChangeVisibility {
        k: usize,
        secs: u32,
    },
    /// Time passes; timers run only if `tick` (the shard may be busy).
    Advance {
        ms: u64,
        tick: bool,
    },
    Restart,
    /// Compact the log below a fraction of its length, cut it, and restart from catalog + the rest.
    CompactRestart {
        frac: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..=16, prop_oneof![4 => Just(0u32), 1 => 0u32..20]).prop_map(|(n, delay)| Op::Send { n, delay }),
        3 => (1usize..=16).prop_map(|max| Op::Receive { max }),
        3 => any::<usize>().prop_map(|k| Op::Delete { k }),
        1 => (any::<usize>(), 0u32..15).prop_map(|(k, secs)| Op::ChangeVisibility { k, secs }),
        2 => (0u64..12_000, any::<bool>()).prop_map(|(ms, tick)| Op::Advance { ms, tick }),
        1 => Just(Op::Restart),
        1 => any::<u8>().prop_map(|frac| Op::CompactRestart { frac }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// For any sequence of operations and clock steps: no message is held by
    /// two consumers inside its visibility window, a deleted message never
    /// reappears, no message is lost, and a restart (replay) changes nothing.
    #[test]
    fn engine_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let attrs = QueueAttributesUpdate { visibility_timeout: Some(5), ..Default::default() };
        let (mut e, mut log) = setup(attrs);
        let mut now = 1_000u64;
        let mut handles: Vec<(u64, ReceiptHandle)> = Vec::new();
        // msg id -> end of its current lease
        let mut lease_end: HashMap<u64, u64> = HashMap::new();
        let mut current_handle: HashMap<u64, ReceiptHandle> = HashMap::new();
        let mut sent: HashSet<u64> = HashSet::new();
        let mut deleted: HashSet<u64> = HashSet::new();

        for op in ops {
            match op {
                Op::Send { n, delay } => {
                    let bodies: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("m{i}"))).collect();
                    for id in e.send(&mut log, now, "q", delay, &bodies).expect("send") {
                        prop_assert!(sent.insert(id));
                    }
                }
                Op::Receive { max } => {
                    for d in recv(&mut e, &mut log, now, max) {
                        let id = d.head.msg_id;
                        prop_assert!(sent.contains(&id));
                        prop_assert!(!deleted.contains(&id), "deleted message {} reappeared", id);
                        if let Some(end) = lease_end.get(&id) {
                            prop_assert!(now >= *end, "message {} redelivered at {} inside lease ending {}", id, now, end);
                        }
                        lease_end.insert(id, d.head.next_visible_time_ms);
                        current_handle.insert(id, d.head.receipt_handle);
                        handles.push((id, d.head.receipt_handle));
                    }
                }
                Op::Delete { k } => {
                    if handles.is_empty() { continue; }
                    let (id, h) = handles[k % handles.len()];
                    let ok = e.delete(&mut log, now, "q", &[h]).expect("delete")[0].is_ok();
                    let valid = !deleted.contains(&id) && current_handle.get(&id) == Some(&h) && now < lease_end[&id];
                    prop_assert_eq!(ok, valid, "delete of {} at {}", id, now);
                    if ok { deleted.insert(id); }
                }
                Op::ChangeVisibility { k, secs } => {
                    if handles.is_empty() { continue; }
                    let (id, h) = handles[k % handles.len()];
                    let valid = !deleted.contains(&id) && current_handle.get(&id) == Some(&h) && now < lease_end[&id];
                    let res = e.change_visibility(&mut log, now, "q", h, secs);
                    prop_assert_eq!(res.is_ok(), valid);
                    if let Ok((_, next)) = res { lease_end.insert(id, next); }
                }
                Op::Advance { ms, tick } => {
                    now += ms;
                    if tick {
                        e.tick(now);
                    }
                }
                Op::Restart => {
                    let mut r = replayed(&log);
                    r.tick(now);
                    prop_assert_eq!(r.queue_info(now, "q"), e.queue_info(now, "q"));
                    e = r;
                }
                Op::CompactRestart { frac } => {
                    let pos = log.data.len() as u64 * u64::from(frac) / 255;
                    let (catalog, cut) = compact(&mut e, &mut log, pos);
                    let mut r = replayed_from(&log, Some(&catalog), cut);
                    r.tick(now);
                    e.tick(now);
                    prop_assert_eq!(r.queue_info(now, "q"), e.queue_info(now, "q"));
                    e = r;
                }
            }
        }
        // Nothing lost: far enough in the future every lease and delay has
        // ended, and every sent, undeleted message is received exactly once.
        now += 60_000;
        e.tick(now);
        let mut remaining: HashSet<u64> = sent.difference(&deleted).copied().collect();
        loop {
            let got = recv(&mut e, &mut log, now, 16);
            if got.is_empty() { break; }
            for d in got {
                prop_assert!(remaining.remove(&d.head.msg_id), "unexpected or duplicate {}", d.head.msg_id);
            }
        }
        prop_assert!(remaining.is_empty(), "lost messages: {:?}", remaining);
    }
}
