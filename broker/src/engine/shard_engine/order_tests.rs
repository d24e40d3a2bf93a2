//! Replicas apply the same records and must then write and answer the
//! same: nothing may follow the order a hash map happens to keep (every
//! `HashMap` has its own random seed, so two engines in one process
//! already disagree on it).

use bytes::Bytes;
use cmq_protocol::{FlushPolicy, QueueAttributesUpdate};

use super::*;
use crate::engine::record_log::MemLog;

fn engine() -> ShardEngine {
    ShardEngine::new(EngineConfig {
        shard: 1,
        shard_count: 2,
        secret: [9; 16],
        default_flush: FlushPolicy::Async,
        queues_max: 100,
    })
}

fn replayed(log: &MemLog) -> ShardEngine {
    let mut e = engine();
    for (pos, rtype, payload) in log.iter() {
        e.replay(pos, rtype, payload).expect("replay");
    }
    e
}

/// The records compaction writes when it copies every live message.
fn relocated(mut e: ShardEngine, log: &MemLog) -> Vec<(u8, Vec<u8>)> {
    let mut copy = MemLog { data: log.data.clone(), records: log.records.clone(), fail: false };
    let before = copy.records.len();
    e.relocate_below(&mut copy, u64::MAX, usize::MAX).expect("relocate");
    copy.iter().skip(before).map(|(_, rtype, payload)| (rtype, payload.to_vec())).collect()
}

#[test]
fn replicas_walk_their_queues_in_the_same_order() {
    let mut e = engine();
    let mut log = MemLog::default();
    let dlq = QueueAttributesUpdate {
        dead_letter_queue: Some("dlq".into()),
        max_receive_count: Some(5),
        ..Default::default()
    };
    e.create_queue(&mut log, 1_000, "dlq", &QueueAttributesUpdate::default(), 0).expect("create");
    for i in 0..24 {
        let name = format!("q{i:02}");
        e.create_queue(&mut log, 1_000, &name, &dlq, i + 1).expect("create");
        e.send(&mut log, 1_001, &name, 0, &[Bytes::from(name.clone())]).expect("send");
    }
    let (a, b) = (replayed(&log), replayed(&log));
    assert_eq!(a.digest(), b.digest());
    let sources: Vec<String> = (0..24).map(|i| format!("q{i:02}")).collect();
    assert_eq!(a.dead_letter_sources("dlq"), sources, "in creation (uid) order");
    assert_eq!(b.dead_letter_sources("dlq"), sources);
    let (ra, rb) = (relocated(a, &log), relocated(b, &log));
    assert_eq!(ra.len(), 24);
    assert_eq!(ra, rb, "compaction copies the queues in the same order on every replica");
}
