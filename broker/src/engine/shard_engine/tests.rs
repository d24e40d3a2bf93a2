use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use cmq_protocol::{ErrorCode, FlushPolicy, MessageState, MessageStatus, QueueAttributesUpdate, ReceiptHandle};
use proptest::prelude::*;

use super::*;
use crate::engine::catalog::Catalog;
use crate::engine::record::{PushRetry, TransferDone};
use crate::engine::record_log::MemLog;

fn engine() -> ShardEngine {
    ShardEngine::new(EngineConfig {
        shard: 1,
        shard_count: 2,
        secret: [9; 16],
        default_flush: FlushPolicy::Sync,
        queues_max: 100,
    })
}

fn body(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn setup(attrs: QueueAttributesUpdate) -> (ShardEngine, MemLog) {
    let mut e = engine();
    let mut log = MemLog::default();
    e.create_queue(&mut log, 1_000, "q", &attrs, 0).expect("create");
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
    e.tick(&mut log, 11_000);
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
    e.tick(&mut log, 1_000);
    assert_eq!(e.next_deadline(0), Some(2_000), "the next retention sweep");
    e.tick(&mut log, 2_000);
    assert_eq!(e.next_deadline(0), Some(3_000), "the shorter poll's deadline");
    e.send(&mut log, 2_500, "q", 0, &[body("m")]).expect("send");
    let served = e.serve_waiters(&mut log, 2_500);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].0, w1, "oldest waiter first");
    assert_eq!(e.expire_waiters(2_999), vec![]);
    assert_eq!(e.expire_waiters(3_000), vec![(w2, Default::default())]);
}

#[test]
fn change_visibility_extends_and_zero_releases() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { visibility_timeout: Some(5), ..Default::default() });
    e.send(&mut log, 1_000, "q", 0, &[body("x")]).expect("send");
    let d = recv(&mut e, &mut log, 1_000, 1);
    let h = d[0].head.receipt_handle;
    let (h2, next) = e.change_visibility(&mut log, 5_000, "q", h, 10).expect("extend");
    assert_eq!((h2, next), (h, 15_000));
    e.tick(&mut log, 6_000);
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
        e.create_queue(&mut log, 1, "q", &Default::default(), 0).map_err(|e| e.code),
        Err(ErrorCode::QUEUE_ALREADY_EXISTS)
    );
    assert_eq!(
        e.create_queue(&mut log, 1, "9q", &Default::default(), 0).map_err(|e| e.code),
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
        e.create_queue(&mut log, t, n, &Default::default(), 0).expect("create");
    }
    let (total, page) = e.list(Listed::Queues, "b-", "", 10, |_| true);
    assert_eq!(total, 2);
    assert_eq!(page.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["b-one", "b-two"]);
    let (total, page) = e.list(Listed::Queues, "", "one", 1, |_| true);
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
    e.tick(&mut log, 61_000);
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
    e.tick(&mut log, 61_000);
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
                        e.tick(&mut log, now);
                    }
                }
                Op::Restart => {
                    let mut r = replayed(&log);
                    r.tick(&mut log, now);
                    prop_assert_eq!(r.queue_info(now, "q"), e.queue_info(now, "q"));
                    e = r;
                }
                Op::CompactRestart { frac } => {
                    let pos = log.data.len() as u64 * u64::from(frac) / 255;
                    let (catalog, cut) = compact(&mut e, &mut log, pos);
                    let mut r = replayed_from(&log, Some(&catalog), cut);
                    r.tick(&mut log, now);
                    e.tick(&mut log, now);
                    prop_assert_eq!(r.queue_info(now, "q"), e.queue_info(now, "q"));
                    e = r;
                }
            }
        }
        // Nothing lost: far enough in the future every lease and delay has
        // ended, and every sent, undeleted message is received exactly once.
        now += 60_000;
        e.tick(&mut log, now);
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

// ---- issue 5: dead letters, transfers, redrive, rewind, inspection, transactions ----

/// Two shards, each an engine with its own log, and the transfers between them.
struct Cluster {
    shards: Vec<(ShardEngine, MemLog)>,
}

impl Cluster {
    fn new() -> Cluster {
        let mk = |shard| {
            let cfg = EngineConfig {
                shard,
                shard_count: 2,
                secret: [9; 16],
                default_flush: FlushPolicy::Sync,
                queues_max: 100,
            };
            (ShardEngine::new(cfg), MemLog::default())
        };
        Cluster { shards: vec![mk(0), mk(1)] }
    }

    fn owner(name: &str) -> usize {
        usize::from(cmq_protocol::names::shard_for(name, 2))
    }

    fn at(&mut self, name: &str) -> (&mut ShardEngine, &mut MemLog) {
        let (e, l) = &mut self.shards[Self::owner(name)];
        (e, l)
    }

    fn create(&mut self, name: &str, u: QueueAttributesUpdate) {
        let (e, l) = self.at(name);
        e.create_queue(l, 1_000, name, &u, 0).expect("create");
    }

    /// Runs timers on both shards and moves transfers until nothing moves.
    fn settle(&mut self, now: u64) {
        for _ in 0..10 {
            let mut moved = false;
            for s in 0..2 {
                let (e, l) = &mut self.shards[s];
                e.tick(l, now);
                let low = e.transfer_low_watermark();
                let outs = e.transfers_to_send(now);
                let ins: Vec<InTransfer> = outs
                    .iter()
                    .map(|t| InTransfer {
                        src_shard: s as u16,
                        id: t.id,
                        kind: t.kind,
                        dst_queue: t.dst_queue.clone(),
                        body: Bytes::copy_from_slice(l.bytes(t.body_pos, t.body_len)),
                        origin: Bytes::copy_from_slice(l.bytes(t.body_pos + u64::from(t.body_len), t.suffix_len)),
                        dequeue_count: t.dequeue_count,
                        low_watermark: low,
                    })
                    .collect();
                let mut results = Vec::new();
                for t in &ins {
                    moved = true;
                    let dst = usize::from(cmq_protocol::names::shard_for(&t.dst_queue, 2));
                    let (de, dl) = &mut self.shards[dst];
                    results.push((t.id, de.accept_transfer(dl, now, t).map_err(|e| e.code)));
                }
                let (e, l) = &mut self.shards[s];
                e.transfer_results(l, now, &results);
            }
            if !moved {
                return;
            }
        }
    }

    fn recv(
        &mut self,
        name: &str,
        now: u64,
        max: usize,
    ) -> Vec<(Delivery, Vec<u8>, Option<cmq_protocol::MessageOrigin>)> {
        let (e, l) = self.at(name);
        e.receive(l, now, name, max, Some(0))
            .expect("receive")
            .deliveries()
            .into_iter()
            .map(|d| {
                let body = l.bytes(d.body_pos, d.body_len).to_vec();
                let origin = d.origin.then(|| {
                    let raw = crate::engine::suffix::origin_bytes(&*l, d.body_pos, d.body_len).expect("origin");
                    crate::engine::suffix::decode_origin(raw).expect("decodes")
                });
                (d, body, origin)
            })
            .collect()
    }

    fn info(&mut self, name: &str, now: u64) -> cmq_protocol::QueueInfo {
        let (e, _) = self.at(name);
        e.queue_info(now, name).expect("info")
    }

    /// Every shard restarts from its own log.
    fn restart(&mut self) {
        for (e, l) in self.shards.iter_mut() {
            let shard = e.shard();
            let cfg = EngineConfig {
                shard,
                shard_count: 2,
                secret: [9; 16],
                default_flush: FlushPolicy::Sync,
                queues_max: 100,
            };
            let mut fresh = ShardEngine::new(cfg);
            for (pos, rtype, payload) in l.iter() {
                fresh.replay(pos, rtype, payload).expect("replay");
            }
            *e = fresh;
        }
    }
}

/// Two queue names owned by different shards (so moves cross shards).
fn names_on_both_shards() -> (String, String) {
    let a = (0..).map(|i| format!("src{i}")).find(|n| Cluster::owner(n) == 0).expect("name");
    let b = (0..).map(|i| format!("dlq{i}")).find(|n| Cluster::owner(n) == 1).expect("name");
    (a, b)
}

fn dlq_policy(dlq: &str, max_receive: u32) -> QueueAttributesUpdate {
    QueueAttributesUpdate {
        visibility_timeout: Some(1),
        dead_letter_queue: Some(dlq.to_owned()),
        max_receive_count: Some(max_receive),
        ..Default::default()
    }
}

#[test]
fn poison_message_moves_after_exactly_max_receive_count_across_shards() {
    let (src, dlq) = names_on_both_shards();
    let mut c = Cluster::new();
    c.create(&dlq, Default::default());
    c.create(&src, dlq_policy(&dlq, 3));
    let (e, l) = c.at(&src);
    let id = e.send(l, 1_000, &src, 0, &[body("poison")]).expect("send")[0];
    let mut now = 1_000;
    for n in 1..=3 {
        c.settle(now);
        let got = c.recv(&src, now, 1);
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].0.head.dequeue_count, n);
        now += 1_000;
    }
    c.settle(now);
    assert!(c.recv(&src, now, 1).is_empty(), "not delivered a 4th time from the source");
    let info = c.info(&src, now);
    assert_eq!(info.active_msg_num + info.inactive_msg_num, 0);
    let got = c.recv(&dlq, now, 1);
    assert_eq!(got.len(), 1);
    let (d, b, origin) = &got[0];
    assert_eq!(b, b"poison");
    assert_eq!(d.head.dequeue_count, 4, "kept its dequeue count (3) and was received once more");
    let origin = origin.as_ref().expect("origin");
    assert_eq!(origin.source_queue, src);
    assert_eq!(origin.original_msg_id, id);
    assert_eq!(origin.first_enqueue_time_ms, 1_000);
}

#[test]
fn dead_letter_moves_survive_restart_in_exactly_one_queue() {
    let (src, dlq) = names_on_both_shards();
    let mut c = Cluster::new();
    c.create(&dlq, Default::default());
    c.create(&src, dlq_policy(&dlq, 1));
    let (e, l) = c.at(&src);
    e.send(l, 1_000, &src, 0, &[body("a"), body("b")]).expect("send");
    c.settle(1_000);
    assert_eq!(c.recv(&src, 1_000, 2).len(), 2);
    // Leases end; the source logs TransferOut but the destination never got it.
    let (e, l) = c.at(&src);
    e.tick(l, 2_000);
    assert_eq!(e.queue_info(2_000, &src).expect("info").inactive_msg_num, 0);
    c.restart();
    c.settle(2_000);
    let got = c.recv(&dlq, 2_000, 16);
    assert_eq!(got.len(), 2, "the outbox was resent after the restart");
    // A duplicate delivery of the same transfer is filtered.
    c.restart();
    c.settle(3_000);
    assert_eq!(c.info(&dlq, 3_000).inactive_msg_num, 2);
    assert_eq!(c.info(&dlq, 3_000).active_msg_num, 0, "no duplicate after a second restart");
    assert_eq!(c.info(&src, 3_000).active_msg_num, 0);
}

#[test]
fn max_time_to_live_moves_unconsumed_messages() {
    let (src, dlq) = names_on_both_shards();
    let mut c = Cluster::new();
    c.create(&dlq, Default::default());
    let ttl = QueueAttributesUpdate {
        dead_letter_queue: Some(dlq.clone()),
        max_time_to_live: Some(300),
        ..Default::default()
    };
    c.create(&src, ttl);
    let (e, l) = c.at(&src);
    e.send(l, 1_000, &src, 0, &[body("old")]).expect("send");
    c.settle(300_999);
    assert_eq!(c.info(&src, 300_999).active_msg_num, 1);
    c.settle(301_000);
    c.settle(302_000);
    assert_eq!(c.info(&src, 302_000).active_msg_num, 0);
    assert_eq!(c.info(&dlq, 302_000).active_msg_num, 1);
}

#[test]
fn redrive_moves_messages_back_to_their_source_at_the_rate() {
    let (src, dlq) = names_on_both_shards();
    let mut c = Cluster::new();
    c.create(&dlq, Default::default());
    c.create(&src, dlq_policy(&dlq, 1));
    let (e, l) = c.at(&src);
    let bodies: Vec<Bytes> = (0..10).map(|i| body(&format!("m{i}"))).collect();
    e.send(l, 1_000, &src, 0, &bodies).expect("send");
    c.settle(1_000);
    assert_eq!(c.recv(&src, 1_000, 16).len(), 10);
    c.settle(2_000);
    assert_eq!(c.info(&dlq, 2_000).active_msg_num, 10);
    let (e, l) = c.at(&dlq);
    let info = e.start_redrive(l, 2_000, &dlq, "", 5).expect("start");
    assert_eq!(info.state, cmq_protocol::RedriveState::Running);
    let id = info.id;
    c.settle(2_000);
    c.settle(3_000);
    let (e, _) = c.at(&dlq);
    let moved = e.list_redrives()[0].moved;
    assert!((4..=6).contains(&moved), "about 5 per second, moved {moved}");
    c.restart();
    for t in 4..8 {
        c.settle(t * 1_000);
    }
    let (e, _) = c.at(&dlq);
    let r = e.list_redrives().into_iter().find(|r| r.id == id).expect("task");
    assert_eq!((r.state, r.moved, r.remaining), (cmq_protocol::RedriveState::Done, 10, 0));
    let back = c.recv(&src, 8_000, 16);
    assert_eq!(back.len(), 10, "every message back in its source queue, none twice");
    assert!(back.iter().all(|(d, _, o)| d.head.dequeue_count == 1 && o.is_some()), "counts restart, origin kept");
}

#[test]
fn rewind_redelivers_deleted_messages_in_order() {
    let upd = QueueAttributesUpdate { rewind_seconds: Some(3600), ..Default::default() };
    let (mut e, mut log) = setup(upd);
    e.send(&mut log, 1_000, "q", 0, &[body("a")]).expect("send");
    e.send(&mut log, 2_000, "q", 0, &[body("b")]).expect("send");
    e.send(&mut log, 3_000, "q", 0, &[body("c")]).expect("send");
    let got = recv(&mut e, &mut log, 4_000, 16);
    let handles: Vec<_> = got.iter().map(|d| d.head.receipt_handle).collect();
    e.delete(&mut log, 4_000, "q", &handles).expect("delete");
    assert_eq!(e.queue_info(4_000, "q").expect("info").rewind_msg_num, 3);
    assert_eq!(e.rewind(&mut log, 5_000, "q", 2_000).expect("rewind"), 2);
    let again = recv(&mut e, &mut log, 5_000, 16);
    let bodies: Vec<&[u8]> = again.iter().map(|d| log.bytes(d.body_pos, d.body_len)).collect();
    assert_eq!(bodies, [b"b".as_slice(), b"c"], "messages since the rewind time, in enqueue order");
    assert_eq!(e.queue_info(5_000, "q").expect("info").rewind_msg_num, 1);
    let err = e.rewind(&mut log, 5_000_000, "q", 1_000).expect_err("out of window");
    assert_eq!(err.code, ErrorCode::INVALID_PARAMETER);
    assert!(e.rewind(&mut log, 5_000, "q", 6_000).is_err(), "future");
}

#[test]
fn peek_changes_nothing_and_query_reports_states() {
    let (mut e, mut log) = setup(QueueAttributesUpdate { visibility_timeout: Some(30), ..Default::default() });
    let ids = e.send(&mut log, 1_000, "q", 0, &[body("a"), body("b")]).expect("send");
    e.send(&mut log, 1_000, "q", 60, &[body("later")]).expect("send");
    let d = recv(&mut e, &mut log, 1_000, 1);
    let before = e.queue_info(1_500, "q").expect("info");
    let log_len = log.records.len();
    let page = e.peek(&log, "q", 0, 10, true).expect("peek");
    assert_eq!(page.messages.len(), 3);
    assert_eq!(page.messages[0].state, MessageState::InFlight);
    assert_eq!(page.messages[0].next_visible_time_ms, 31_000);
    assert_eq!(page.messages[1].state, MessageState::Ready);
    assert_eq!(&page.messages[2].body[..], b"later");
    assert_eq!(page.messages[2].state, MessageState::Delayed);
    assert_eq!(e.queue_info(1_500, "q").expect("info"), before, "peek changed counts");
    assert_eq!(log.records.len(), log_len, "peek logged something");
    let paged = e.peek(&log, "q", 0, 2, false).expect("peek");
    assert_eq!(paged.messages.len(), 2);
    let rest = e.peek(&log, "q", paged.next_cursor, 2, false).expect("peek");
    assert_eq!((rest.messages.len(), rest.next_cursor), (1, 0));
    assert!(
        e.delete(&mut log, 1_500, "q", &[d[0].head.receipt_handle]).expect("delete")[0].is_ok(),
        "handle still valid"
    );
    let st = e.query_message(&log, "q", ids[1]).expect("query");
    assert_eq!(st.state, MessageState::Ready);
    let gone = e.query_message(&log, "q", ids[0]).expect("query");
    assert_eq!(gone.state, MessageState::Gone);
    assert_eq!(e.purge(&mut log, 2_000, "q").expect("purge"), 2);
    assert_eq!(e.query_message(&log, "q", ids[1]).expect("query").state, MessageState::Purged);
    let info = e.queue_info(2_000, "q").expect("info");
    assert_eq!((info.active_msg_num, info.delay_msg_num), (0, 0));
    assert_eq!(replayed(&log).queue_info(2_000, "q").expect("info"), info, "purge is durable");
}

/// An id of another queue of this shard, of another shard, or never issued:
/// one answer, the same as for a delete the queue no longer remembers.
#[test]
fn query_answers_ids_the_queue_cannot_account_for_in_one_shape() {
    let (mut e, mut log) = setup(Default::default());
    e.create_queue(&mut log, 1_000, "other", &Default::default(), 0).expect("create");
    let here = e.send(&mut log, 1_000, "q", 0, &[body("here")]).expect("send")[0];
    let elsewhere = e.send(&mut log, 1_000, "other", 0, &[body("elsewhere")]).expect("send")[0];
    let d = recv(&mut e, &mut log, 1_000, 1);
    assert!(e.delete(&mut log, 1_000, "q", &[d[0].head.receipt_handle]).expect("delete")[0].is_ok());
    let other_shard: u64 = 5; // shard 0 (top bits 0), counter 5
    let never_issued = here + 1_000;
    let answers: Vec<MessageStatus> = [here, elsewhere, other_shard, never_issued, u64::MAX]
        .iter()
        .map(|id| e.query_message(&log, "q", *id).expect("an answer, not an error"))
        .collect();
    for (a, id) in answers.iter().zip([here, elsewhere, other_shard, never_issued, u64::MAX]) {
        let want = MessageStatus {
            msg_id: id,
            state: MessageState::Gone,
            detail: inspection::GONE_DETAIL.into(),
            ..Default::default()
        };
        assert_eq!(*a, want, "msg id {id:#x}");
    }
}

#[test]
fn transactions_commit_rollback_and_check_then_default() {
    let upd = QueueAttributesUpdate { first_query_interval: Some(5), max_query_count: Some(2), ..Default::default() };
    let (mut e, mut log) = setup(upd);
    let g = "producers";
    let keep = e.send_half(&mut log, 1_000, "q", g, &body("keep")).expect("half");
    let drop = e.send_half(&mut log, 1_000, "q", g, &body("drop")).expect("half");
    let forgotten = e.send_half(&mut log, 1_000, "q", g, &body("forgotten")).expect("half");
    assert!(recv(&mut e, &mut log, 1_000, 16).is_empty(), "half messages are invisible");
    e.end_transaction(&mut log, 2_000, "q", keep, true).expect("commit");
    e.end_transaction(&mut log, 2_000, "q", drop, false).expect("rollback");
    let err = e.end_transaction(&mut log, 2_000, "q", drop, true).expect_err("already resolved");
    assert_eq!(err.code, ErrorCode::MESSAGE_NOT_FOUND);
    let got = recv(&mut e, &mut log, 2_000, 16);
    assert_eq!(got.len(), 1);
    assert_eq!(log.bytes(got[0].body_pos, got[0].body_len), b"keep");
    // The forgotten one is checked at 6 s and 11 s, then rolled back (the default).
    e.tick(&mut log, 6_000);
    let checks = e.take_checks();
    assert_eq!(checks.len(), 1);
    assert_eq!((checks[0].msg_id, checks[0].count, checks[0].group.as_str()), (forgotten, 1, g));
    let mut r = replayed(&log);
    r.tick(&mut log, 11_000);
    assert_eq!(r.take_checks()[0].count, 2, "check count survived the restart");
    r.tick(&mut log, 16_000);
    assert!(r.take_checks().is_empty());
    assert_eq!(r.query_message(&log, "q", forgotten).expect("query").state, MessageState::RolledBack);
    assert_eq!(r.queue_info(16_000, "q").expect("info").active_msg_num, 0, "committed one was received");
}

// ---- issue 6: topics ----------------------------------------------------------

fn subscribe_queue(c: &mut Cluster, topic: &str, name: &str, queue: &str, tags: &[&str], keys: &[&str]) {
    let req = cmq_protocol::Subscribe {
        topic: topic.into(),
        subscription: name.into(),
        protocol: cmq_protocol::SubscriptionProtocol::Queue,
        endpoint: queue.into(),
        filter_tags: cmq_protocol::StrList(tags.iter().map(|s| s.to_string()).collect()),
        binding_keys: cmq_protocol::StrList(keys.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let (e, l) = c.at(topic);
    e.subscribe(l, 1_000, &req).expect("subscribe");
}

fn publish(c: &mut Cluster, topic: &str, body: &str, tags: &[&str], key: &str) -> u64 {
    let tags: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
    let (e, l) = c.at(topic);
    e.publish(l, 1_000, topic, &[Bytes::copy_from_slice(body.as_bytes())], &tags, key).expect("publish")[0]
}

fn bodies_in(c: &mut Cluster, queue: &str) -> Vec<String> {
    let mut out: Vec<String> =
        c.recv(queue, 1_000, 16).into_iter().map(|(_, b, _)| String::from_utf8_lossy(&b).into_owned()).collect();
    out.sort();
    out
}

fn create_topic(c: &mut Cluster, name: &str, ft: cmq_protocol::FilterType) {
    let (e, l) = c.at(name);
    let u = cmq_protocol::TopicAttributesUpdate { filter_type: Some(ft), ..Default::default() };
    e.create_topic(l, 1_000, name, &u, 0).expect("create topic");
}

#[test]
fn tag_topic_delivers_to_exactly_the_matching_queues_on_both_shards() {
    let mut c = Cluster::new();
    let (qa, qb) = names_on_both_shards();
    c.create(&qa, Default::default());
    c.create(&qb, Default::default());
    c.create("qall", Default::default());
    create_topic(&mut c, "events", cmq_protocol::FilterType::Tag);
    subscribe_queue(&mut c, "events", "on-a", &qa, &["a"], &[]);
    subscribe_queue(&mut c, "events", "on-b", &qb, &["b"], &[]);
    subscribe_queue(&mut c, "events", "all", "qall", &[], &[]);
    publish(&mut c, "events", "m-a", &["a"], "");
    publish(&mut c, "events", "m-ab", &["a", "b"], "");
    publish(&mut c, "events", "m-none", &[], "");
    c.settle(1_000);
    assert_eq!(bodies_in(&mut c, &qa), ["m-a", "m-ab"]);
    assert_eq!(bodies_in(&mut c, &qb), ["m-ab"]);
    assert_eq!(bodies_in(&mut c, "qall"), ["m-a", "m-ab", "m-none"]);
    let (e, _) = c.at("events");
    let info = e.subscription_info("events", "on-a").expect("info");
    assert_eq!((info.msg_count, info.delivered), (0, 2));
}

#[test]
fn routing_key_topic_routes_by_binding_keys() {
    let mut c = Cluster::new();
    for q in ["created", "orders", "audit"] {
        c.create(q, Default::default());
    }
    create_topic(&mut c, "bus", cmq_protocol::FilterType::RoutingKey);
    subscribe_queue(&mut c, "bus", "s1", "created", &[], &["order.created"]);
    subscribe_queue(&mut c, "bus", "s2", "orders", &[], &["order.*"]);
    subscribe_queue(&mut c, "bus", "s3", "audit", &[], &["audit.#"]);
    publish(&mut c, "bus", "1", &[], "order.created");
    publish(&mut c, "bus", "2", &[], "order.paid");
    publish(&mut c, "bus", "3", &[], "audit.login.failed");
    publish(&mut c, "bus", "4", &[], "audit");
    publish(&mut c, "bus", "5", &[], "");
    c.settle(1_000);
    assert_eq!(bodies_in(&mut c, "created"), ["1"]);
    assert_eq!(bodies_in(&mut c, "orders"), ["1", "2"]);
    assert_eq!(bodies_in(&mut c, "audit"), ["3"], "# is one or more words");
}

#[test]
fn acknowledged_publishes_reach_every_subscription_after_a_crash() {
    let mut c = Cluster::new();
    let (qa, qb) = names_on_both_shards();
    c.create(&qa, Default::default());
    c.create(&qb, Default::default());
    create_topic(&mut c, "t", cmq_protocol::FilterType::Tag);
    subscribe_queue(&mut c, "t", "a", &qa, &[], &[]);
    subscribe_queue(&mut c, "t", "b", &qb, &[], &[]);
    for i in 0..20 {
        publish(&mut c, "t", &format!("m{i:02}"), &[], "");
    }
    // Crash before anything was delivered; then again after a partial delivery.
    c.restart();
    c.settle(1_000);
    c.restart();
    c.settle(2_000);
    let expected: Vec<String> = (0..16).map(|i| format!("m{i:02}")).collect();
    assert_eq!(bodies_in(&mut c, &qa), expected);
    assert_eq!(c.info(&qa, 2_000).active_msg_num, 4, "the rest is there too, and nothing twice");
    assert_eq!(c.info(&qb, 2_000).active_msg_num + c.info(&qb, 2_000).inactive_msg_num, 20);
    let (e, _) = c.at("t");
    assert_eq!(e.topic_info("t").expect("info").msg_count, 0);
}

#[test]
fn unsubscribe_and_topic_deletion_stop_delivery_and_reclaim_pending() {
    let mut c = Cluster::new();
    c.create("q1", Default::default());
    create_topic(&mut c, "t", cmq_protocol::FilterType::Tag);
    subscribe_queue(&mut c, "t", "s", "q1", &[], &[]);
    publish(&mut c, "t", "pending", &[], "");
    let (e, l) = c.at("t");
    assert_eq!(e.pending_deliveries(), 1);
    e.unsubscribe(l, 1_000, "t", "s").expect("unsubscribe");
    assert_eq!(e.pending_deliveries(), 0, "pending deliveries of a deleted subscription are reclaimed");
    publish(&mut c, "t", "after", &[], "");
    c.settle(1_000);
    assert!(bodies_in(&mut c, "q1").is_empty());
    subscribe_queue(&mut c, "t", "s2", "q1", &[], &[]);
    publish(&mut c, "t", "x", &[], "");
    let (e, l) = c.at("t");
    e.delete_topic(l, 1_000, "t").expect("delete");
    assert_eq!(e.pending_deliveries(), 0);
    c.restart();
    let (e, _) = c.at("t");
    assert_eq!(e.pending_deliveries(), 0, "still reclaimed after a restart");
    assert!(e.topic_info("t").is_err());
}

#[test]
fn http_pushes_retry_on_schedule_survive_restart_then_dead_letter() {
    let mut c = Cluster::new();
    c.create("pushdlq", Default::default());
    create_topic(&mut c, "hooks", cmq_protocol::FilterType::Tag);
    let req = cmq_protocol::Subscribe {
        topic: "hooks".into(),
        subscription: "web".into(),
        protocol: cmq_protocol::SubscriptionProtocol::Http,
        endpoint: "http://127.0.0.1:1/hook".into(),
        dead_letter_queue: "pushdlq".into(),
        ..Default::default()
    };
    let (e, l) = c.at("hooks");
    let ok = e.subscribe(l, 1_000, &req).expect("subscribe");
    assert_eq!(ok.push_secret.len(), 32, "hex of 16 bytes");
    publish(&mut c, "hooks", "evt", &[], "");
    let schedule = |_: cmq_protocol::NotifyStrategy, attempt: u32, _: u64| {
        (attempt <= 2).then(|| std::time::Duration::from_millis(100 * u64::from(attempt)))
    };
    let (e, l) = c.at("hooks");
    let pushes = e.pushes_to_send(1_000, usize::MAX);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].url, "http://127.0.0.1:1/hook");
    assert!(e.pushes_to_send(1_000, usize::MAX).is_empty(), "handed out once");
    let id = pushes[0].id;
    e.push_results(l, 1_000, &[(id, PushResult::Failed("503".into()))], schedule);
    assert!(e.pushes_to_send(1_050, usize::MAX).is_empty(), "not before its retry time");
    c.restart();
    let (e, l) = c.at("hooks");
    assert_eq!(e.pushes_to_send(1_050, usize::MAX).len(), 0, "retry time survived the restart");
    let again = e.pushes_to_send(1_100, usize::MAX);
    assert_eq!((again.len(), again[0].attempt), (1, 1));
    e.push_results(l, 1_100, &[(id, PushResult::Failed("timeout".into()))], schedule);
    let third = e.pushes_to_send(1_300, usize::MAX);
    e.push_results(l, 1_300, &[(third[0].id, PushResult::Failed("500".into()))], schedule);
    c.settle(1_300);
    assert_eq!(bodies_in(&mut c, "pushdlq"), ["evt"], "gave up after the schedule, into the dead-letter queue");
    let (e, _) = c.at("hooks");
    let info = e.subscription_info("hooks", "web").expect("info");
    // Given up on and moved to the dead-letter queue: neither delivered nor dropped.
    assert_eq!((info.msg_count, info.delivered, info.dropped), (0, 0, 0), "{info:?}");
    c.restart();
    let (e, _) = c.at("hooks");
    let info = e.subscription_info("hooks", "web").expect("info");
    assert_eq!((info.msg_count, info.delivered, info.dropped), (0, 0, 0), "replayed the same: {info:?}");
}

// ---- issue 9: records that always read back, bounded work per turn ------------

/// Topic `t` with `subs` subscriptions (queue `dst`, or an HTTP endpoint),
/// and `publishes` batch publishes of 16 bodies: `subs * publishes * 16`
/// pending deliveries.
fn backlog(e: &mut ShardEngine, log: &mut MemLog, http: bool, subs: usize, publishes: usize) {
    e.create_topic(log, 1_000, "t", &Default::default(), 0).expect("create topic");
    for i in 0..subs {
        let (protocol, endpoint) = if http {
            (cmq_protocol::SubscriptionProtocol::Http, "http://127.0.0.1:1/hook".to_owned())
        } else {
            (cmq_protocol::SubscriptionProtocol::Queue, "dst".to_owned())
        };
        let req = cmq_protocol::Subscribe {
            topic: "t".into(),
            subscription: format!("s{i}"),
            protocol,
            endpoint,
            ..Default::default()
        };
        e.subscribe(log, 1_000, &req).expect("subscribe");
    }
    let bodies: Vec<Bytes> = (0..16).map(|i| body(&format!("m{i}"))).collect();
    for _ in 0..publishes {
        e.publish(log, 1_000, "t", &bodies, &[], "").expect("publish");
    }
}

/// Ids each record of type `rtype` in the log carries.
fn list_lengths(log: &MemLog, rtype: u8) -> Vec<usize> {
    log.iter()
        .filter(|(_, t, _)| *t == rtype)
        .map(|(_, t, p)| match Record::decode(t, p).expect("decodes") {
            Record::TransferDone(TransferDone { ids }) => ids.len(),
            Record::PushRetry(PushRetry { entries }) => entries.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn seventy_thousand_confirmations_at_once_are_logged_in_records_that_read_back() {
    let mut e = engine();
    let mut log = MemLog::default();
    backlog(&mut e, &mut log, false, 50, 88);
    assert_eq!(e.pending_deliveries(), 70_400);
    // Every verdict of the backlog arrives in one turn (a restart made all due).
    let verdicts: Vec<(u64, Result<(), ErrorCode>)> = (1..=70_400).map(|id| (id, Ok(()))).collect();
    e.transfer_results(&mut log, 2_000, &verdicts);
    assert_eq!(e.pending_deliveries(), 0);
    let records = list_lengths(&log, crate::engine::record::rtype::TRANSFER_DONE);
    assert_eq!(records.iter().sum::<usize>(), 70_400, "every confirmation logged");
    assert!(records.iter().all(|n| *n <= crate::engine::record::RECORD_IDS_MAX), "{records:?}");
    let back = replayed(&log);
    assert_eq!(back.pending_deliveries(), 0, "the log reads back: nothing pending after a restart");
    assert_eq!(back.topic_info("t").expect("info").msg_count, 0);
}

#[test]
fn due_transfers_are_handed_out_a_bounded_batch_per_turn() {
    let mut e = engine();
    let mut log = MemLog::default();
    backlog(&mut e, &mut log, false, 10, 20);
    let bound = crate::engine::transfers::OUTBOX_DUE_PER_TURN_MAX;
    let mut sent = 0;
    for turn in 0.. {
        let batch = e.transfers_to_send(2_000).len();
        assert!(batch <= bound, "turn {turn}: {batch}");
        if batch == 0 {
            break;
        }
        sent += batch;
        if sent < 3_200 {
            assert!(e.next_deadline(2_000).is_some_and(|d| d <= 2_000), "the rest stay due for the next turn");
        }
    }
    assert_eq!(sent, 3_200, "each pending delivery sent once");
}

#[test]
fn a_full_push_pool_pauses_pushes_instead_of_touching_each() {
    let mut e = engine();
    let mut log = MemLog::default();
    backlog(&mut e, &mut log, true, 1, 400);
    e.tick(&mut log, 2_000);
    assert!(e.next_deadline(2_000).is_some_and(|d| d <= 2_000), "6,400 pushes due");
    let first = e.pushes_to_send(2_000, 100);
    assert_eq!(first.len(), 100, "no more than the pool has room for");
    e.push_pool_full(2_000);
    assert_eq!(e.next_deadline(2_000), Some(2_000 + topics::PUSH_POOL_FULL_RETRY_MS), "due pushes wait for the pool");
    let rest = e.pushes_to_send(2_100, usize::MAX);
    assert_eq!(rest.len(), crate::engine::transfers::OUTBOX_DUE_PER_TURN_MAX, "bounded per turn");
    // A whole pool's worth of failures comes back in one turn.
    let failed: Vec<(u64, PushResult)> =
        first.iter().chain(&rest).map(|p| (p.id, PushResult::Failed("timeout".into()))).collect();
    let schedule = |_: cmq_protocol::NotifyStrategy, _: u32, _: u64| Some(std::time::Duration::from_secs(5));
    e.push_results(&mut log, 2_200, &failed, schedule);
    let records = list_lengths(&log, crate::engine::record::rtype::PUSH_RETRY);
    assert_eq!(records.iter().sum::<usize>(), failed.len());
    assert!(records.iter().all(|n| *n <= crate::engine::record::RECORD_IDS_MAX));
    assert_eq!(replayed(&log).pending_deliveries(), 6_400);
}

#[test]
fn replay_refuses_unknown_queues_and_positions_that_do_not_grow() {
    let (mut e, mut log) = setup(Default::default());
    e.send(&mut log, 2_000, "q", 0, &[body("a")]).expect("send");
    let records: Vec<(u64, u8, Vec<u8>)> = log.iter().map(|(p, t, b)| (p, t, b.to_vec())).collect();
    let (create, send) = (&records[0], &records[1]);
    let err = engine().replay(send.0, send.1, &send.2).expect_err("a send to a queue never created");
    assert!(err.reason.contains("queue uid 1 is unknown"), "{err}");
    let mut twice = engine();
    twice.replay(create.0, create.1, &create.2).expect("create");
    twice.replay(send.0, send.1, &send.2).expect("send");
    let err = twice.replay(send.0, send.1, &send.2).expect_err("the same position again");
    assert!(err.reason.contains("positions must grow"), "{err}");
    // Before a catalog's position, records of queues deleted before it are expected.
    let mut catalogued = engine();
    catalogued.load_catalog(&Catalog { log_pos: send.0 + 1, ..Default::default() });
    catalogued.replay(send.0, send.1, &send.2).expect("a deleted queue's send before the catalog");
}

/// A log whose positions go backwards (a bug the engine must not serve through).
struct Backwards(MemLog);

impl Log for Backwards {
    fn append(&mut self, rtype: u8, parts: &[&[u8]], durability: Durability) -> Result<u64, EngineError> {
        self.0.append(rtype, parts, durability).map(|_| 9)
    }

    fn read(&self, pos: u64, len: u32) -> Result<&[u8], EngineError> {
        self.0.read(pos, len)
    }
}

#[test]
#[should_panic(expected = "the log went backwards")]
fn a_log_position_that_does_not_grow_stops_the_engine() {
    let mut e = engine();
    let mut log = Backwards(MemLog::default());
    e.create_queue(&mut log, 1_000, "a", &Default::default(), 0).expect("create");
    let _ = e.create_queue(&mut log, 1_000, "b", &Default::default(), 1);
}

/// Keys and policies are engine state: every change survives replay, and
/// a catalog taken after them carries them once their records are cut away.
#[test]
fn keys_survive_replay_and_catalogs() {
    use cmq_protocol::{CreateKey, DeleteKey, SetPolicy};
    let mut e = engine();
    let mut log = MemLog::default();
    let policy = crate::auth::policy::ADMIN_POLICY.to_owned();
    let admin = CreateKey { name: "admin".into(), policy: policy.clone() };
    e.create_key(&mut log, 1, &admin, "AKIDa".into(), "s1".into()).expect("create");
    let dup = e.create_key(&mut log, 2, &admin, "AKIDb".into(), "s".into()).expect_err("duplicate");
    assert_eq!(dup.code, ErrorCode::KEY_ALREADY_EXISTS);
    let bad = CreateKey { name: "app".into(), policy: "{".into() };
    assert_eq!(
        e.create_key(&mut log, 2, &bad, "AKIDc".into(), "s".into()).expect_err("bad").code,
        ErrorCode::INVALID_PARAMETER
    );
    e.create_key(&mut log, 3, &CreateKey { name: "app".into(), policy: String::new() }, "AKIDd".into(), "s2".into())
        .expect("create app");
    e.rotate_key(&mut log, 4, "admin", "s3".into()).expect("rotate");
    assert!(e.rotate_key(&mut log, 4, "admin", "s4".into()).is_err(), "one rotation at a time");
    e.set_policy(&mut log, 5, &SetPolicy { name: "app".into(), policy: policy.clone() }).expect("policy");
    e.delete_key(&mut log, 6, &DeleteKey { name: "admin".into(), old_secret_only: true }).expect("retire old");
    e.create_key(&mut log, 7, &CreateKey { name: "gone".into(), policy: String::new() }, "AKIDe".into(), "s5".into())
        .expect("create gone");
    e.delete_key(&mut log, 8, &DeleteKey { name: "gone".into(), old_secret_only: false }).expect("delete");
    let keys = |e: &ShardEngine| e.keys().iter().cloned().collect::<Vec<_>>();
    let want = keys(&e);
    assert_eq!(want.len(), 2);
    assert_eq!(want[0].secrets, vec!["s3".to_owned()], "the rotated key keeps only its new secret");
    assert_eq!(want[1].policy, policy);
    assert_eq!(keys(&replayed(&log)), want, "replay rebuilds the same keys");
    let end = log.data.len() as u64 + 1;
    let catalog = Catalog::decode(&e.catalog(end).encode()).expect("catalog decodes");
    let r = replayed_from(&log, Some(&catalog), end);
    assert_eq!(keys(&r), want, "the catalog alone holds them");
    assert_eq!(e.get_policy("nope").expect_err("missing").code, ErrorCode::KEY_NOT_FOUND);
    assert!(e.fresh().keys().version() > e.keys().version(), "a replaced engine is republished");
}
