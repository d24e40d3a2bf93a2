//! Idempotent sends across a leader change (issue 11, item 6): producers
//! using the Rust client, whose sends carry idempotency keys and are sent
//! again after the leader is killed (kill -9), store every message exactly
//! once; a batch repeated by hand with the same keys after the leader
//! change is answered with the first ids and stores nothing; the replicas'
//! dedup windows match (the state digest covers them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::Client;
use cmq_integration_tests::{name_on_shard, poll_until, Cluster, ClusterSpec};
use cmq_protocol::*;

const PRODUCERS: usize = 3;
const BATCH: usize = 8;

/// (body, id) of every acknowledged message, and bodies whose send failed.
#[derive(Default)]
struct Acks {
    acked: Vec<(Bytes, u64)>,
    failed: Vec<Bytes>,
}

fn seeds(c: &Cluster) -> String {
    c.client_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

fn produce(seeds: String, queue: String, p: usize, stop: Arc<AtomicBool>, acks: Arc<Mutex<Acks>>) {
    let mut client = Client::connect(seeds.as_str()).expect("connect");
    client.set_retry_deadline(Duration::from_secs(20));
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let bodies: Vec<Bytes> = (0..BATCH)
            .map(|_| {
                seq += 1;
                Bytes::from(format!("p{p}-{seq}"))
            })
            .collect();
        let result = client.send_batch(&queue, &bodies, 0);
        let mut a = acks.lock().expect("acks");
        match result {
            Ok(ids) => a.acked.extend(bodies.into_iter().zip(ids)),
            Err(e) => {
                eprintln!("producer {p}: {e}");
                a.failed.extend(bodies);
            }
        }
    }
}

fn batch_ids(r: Response) -> Vec<u64> {
    match r {
        Response::BatchSendMessage(ok) => ok.msg_ids,
        other => panic!("expected BatchSendMessage, got {other:?}"),
    }
}

#[test]
fn keyed_sends_retried_across_a_leader_kill_are_stored_once() {
    let mut c = Cluster::start(&ClusterSpec::default());
    let queue = name_on_shard("idem-", 0, c.shards);
    let attrs = QueueAttributesUpdate { flush_policy: Some(FlushPolicy::Sync), ..Default::default() };
    c.create_queue(&queue, attrs);
    let mut client = Client::connect(seeds(&c).as_str()).expect("connect");
    client.set_retry_deadline(Duration::from_secs(20));

    // A batch with keys of our own choosing, to repeat after the kill.
    let by_hand = Request::BatchSendMessage(BatchSendMessage {
        queue: queue.clone(),
        bodies: (0..4).map(|i| Bytes::from(format!("by-hand-{i}"))).collect(),
        idempotency_keys: (0..4u8).map(|i| Bytes::from(vec![0xee, i])).collect(),
        ..Default::default()
    });
    let first_ids = batch_ids(client.call(&by_hand).expect("keyed batch"));

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (s, q, stop, acks) = (seeds(&c), queue.clone(), stop.clone(), acks.clone());
            std::thread::spawn(move || produce(s, q, p, stop, acks))
        })
        .collect();
    let acked = || acks.lock().expect("acks").acked.len();
    let enough = |n: usize| move || if acked() >= n { Ok(()) } else { Err(format!("{} acknowledged", acked())) };
    poll_until(Duration::from_secs(30), "400 messages acknowledged", enough(400));

    let victim = c.wait_leader(0, Duration::from_secs(10), |_| true);
    c.kill9(victim);
    let at_kill = acked();
    let killed_at = Instant::now();
    poll_until(Duration::from_secs(30), "400 more after the kill, under a new leader", enough(at_kill + 400));
    eprintln!("400 more messages acknowledged {:?} after the kill", killed_at.elapsed());

    // The same batch again, now answered by the new leader.
    let new_leader = c.wait_leader(0, Duration::from_secs(10), |n| n != victim);
    assert_ne!(new_leader, victim);
    assert_eq!(batch_ids(client.call(&by_hand).expect("repeated batch")), first_ids);

    c.restart(victim);
    stop.store(true, Ordering::Relaxed);
    for t in producers {
        t.join().expect("producer");
    }
    let digests = c.wait_converged(Duration::from_secs(60));
    eprintln!("converged: digests {digests:x?}");

    let delivered = drain(&mut client, &queue);
    let acks = acks.lock().expect("acks");
    assert!(acks.failed.is_empty(), "{} sends failed though they are retried", acks.failed.len());
    let mut seen: HashMap<Bytes, u64> = HashMap::new();
    for (body, id) in &delivered {
        assert!(seen.insert(body.clone(), *id).is_none(), "{body:?} stored twice");
    }
    for (body, id) in &acks.acked {
        assert_eq!(seen.get(body), Some(id), "acknowledged {body:?} as {id}: not delivered under that id");
    }
    if let Request::BatchSendMessage(b) = &by_hand {
        for (body, id) in b.bodies.iter().zip(&first_ids) {
            assert_eq!(seen.get(body), Some(id), "{body:?}");
        }
    }
    assert_eq!(delivered.len(), acks.acked.len() + 4, "every delivered message was acknowledged once");
}

/// Receives and deletes everything in `queue`.
fn drain(c: &mut Client, queue: &str) -> Vec<(Bytes, u64)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = c.receive_batch(queue, 16, Some(0)).expect("receive");
        if got.is_empty() {
            return out;
        }
        assert!(Instant::now() < deadline, "drain took over 60 s");
        let handles: Vec<ReceiptHandle> = got.iter().map(|m| m.receipt_handle).collect();
        c.delete_batch(queue, &handles).expect("delete");
        out.extend(got.into_iter().map(|m| (m.body, m.msg_id)));
    }
}
