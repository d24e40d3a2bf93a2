//! Crash test: clients send to sync-flush queues on two shards and receive
//! and delete what they get, while the test kills cmqd with SIGKILL at
//! random moments, round after round. After each restart everything is
//! drained and checked against what the broker acknowledged:
//!
//! * every acknowledged send whose delete was not acknowledged is delivered
//!   again (at least once), with its message id;
//! * no message whose delete was acknowledged is ever delivered again;
//! * nothing is delivered that was never sent.
//!
//! A request whose connection died before its answer has an unknown
//! outcome and counts neither way. The kill moments come from a seeded RNG;
//! the seed is printed, and `CMQ_CRASH_SEED=<seed>` replays a run (up to
//! thread scheduling). `CMQ_CRASH_ROUNDS` changes the number of rounds.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{Client, ClientError, ErrorCode, FlushPolicy, QueueAttributesUpdate, Request, Response, SendMessage};
use cmq_integration_tests::wal_files::{segments, shard_dir, SEGMENT_BYTES_MIN};
use cmq_integration_tests::Broker;
use cmq_protocol::names::shard_for;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS_DEFAULT: usize = 20;
const WORKERS: usize = 4;
const SHARDS: u16 = 2;
const QUEUES_PER_SHARD: usize = 2;
/// How long cmqd runs under load before a kill, at random in this range.
const RUN_MS: std::ops::Range<u64> = 50..500;
/// Sends each worker pipelines per step, at random in 1..=this.
const SENDS_PER_STEP_MAX: usize = 8;
/// Chance that a worker deletes a message it received (else it lets the
/// lease run out, so redelivery across crashes is exercised too).
const DELETE_PERCENT: u32 = 85;
/// Leases are short so a drain after a crash need not wait long for
/// messages that were in flight when cmqd died.
const VISIBILITY_TIMEOUT_S: u32 = 1;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a post-crash drain may take (leases of 1 s are the slow part).
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
/// Longest the workers may take to notice a kill.
const PARK_DEADLINE: Duration = Duration::from_secs(20);
const BODY_PREFIX: &str = "crash-msg ";
/// Bodies are up to this long, so the run fills a few small segments and
/// some kills land around segment rolls.
const BODY_PAD_MAX: usize = 6000;

fn body_of(id: u64, pad: usize) -> Bytes {
    let mut s = format!("{BODY_PREFIX}{id} ");
    s.extend(std::iter::repeat_n(char::from(b'a' + (id % 26) as u8), pad));
    Bytes::from(s)
}

/// The unique id a body carries, if it is one of ours and intact.
fn id_of(body: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(body).ok()?;
    let rest = s.strip_prefix(BODY_PREFIX)?;
    let (id, pad) = rest.split_once(' ')?;
    let id: u64 = id.parse().ok()?;
    let c = char::from(b'a' + (id % 26) as u8);
    pad.chars().all(|x| x == c).then_some(id)
}

#[derive(Default)]
struct Ledger {
    /// Ids of every send attempted (acknowledged or not).
    attempted: HashSet<u64>,
    /// Acknowledged sends: id → (queue index, message id).
    acked: HashMap<u64, (usize, u64)>,
    /// Acknowledged deletes: id → dequeue count of the deleted delivery.
    deleted: HashMap<u64, u32>,
    /// Deletes whose answer was lost: the message may or may not be gone.
    delete_unknown: HashSet<u64>,
    violations: Vec<String>,
    sends_unknown: u64,
    sends_refused: u64,
    deliveries: u64,
    redeliveries: u64,
}

impl Ledger {
    /// Checks one delivery; returns our id for it if the body is ours.
    fn delivered(&mut self, when: &str, queue: usize, msg_id: u64, dequeue_count: u32, body: &[u8]) -> Option<u64> {
        self.deliveries += 1;
        if dequeue_count > 1 {
            self.redeliveries += 1;
        }
        let Some(id) = id_of(body).filter(|id| self.attempted.contains(id)) else {
            let start = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
            self.violations.push(format!("{when}: msg {msg_id:#x} has a body never sent: {start:?}"));
            return None;
        };
        if let Some(&(q, sent_id)) = self.acked.get(&id) {
            if (q, sent_id) != (queue, msg_id) {
                self.violations.push(format!(
                    "{when}: id {id} sent to queue {q} as msg {sent_id:#x} came back from queue {queue} as msg {msg_id:#x}"
                ));
            }
        }
        if let Some(&dc) = self.deleted.get(&id) {
            // During a run a slow worker may report an older delivery after
            // another worker's delete; a later delivery is always a violation.
            if when.starts_with("drain") || dequeue_count > dc {
                self.violations.push(format!(
                    "{when}: id {id} (msg {msg_id:#x}, dequeueCount {dequeue_count}) delivered after its delete \
                     (of dequeueCount {dc}) was acknowledged"
                ));
            }
        }
        Some(id)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Run,
    Pause,
    Stop,
}

struct CtlState {
    phase: Phase,
    epoch: u64,
    addr: SocketAddr,
    parked: usize,
}

/// Tells the workers where cmqd is and when to pause for a crash.
struct Control {
    state: Mutex<CtlState>,
    changed: Condvar,
}

impl Control {
    /// Blocks until a run newer than `seen` starts; None once stopped.
    fn wait_run(&self, seen: u64) -> Option<(u64, SocketAddr)> {
        let mut s = self.state.lock().expect("control lock");
        loop {
            match s.phase {
                Phase::Stop => return None,
                Phase::Run if s.epoch > seen => return Some((s.epoch, s.addr)),
                _ => s = self.changed.wait(s).expect("control lock"),
            }
        }
    }

    /// A worker lost its broker during `epoch`.
    fn park(&self, epoch: u64) {
        let mut s = self.state.lock().expect("control lock");
        if s.epoch == epoch {
            s.parked += 1;
            self.changed.notify_all();
        }
    }

    /// Waits until every worker has noticed the crash.
    fn await_parked(&self) {
        let deadline = Instant::now() + PARK_DEADLINE;
        let mut s = self.state.lock().expect("control lock");
        s.phase = Phase::Pause;
        while s.parked < WORKERS {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| {
                panic!("only {} of {WORKERS} workers noticed the crash within {PARK_DEADLINE:?}", s.parked)
            });
            s = self.changed.wait_timeout(s, left).expect("control lock").0;
        }
    }

    fn resume(&self, addr: SocketAddr) {
        let mut s = self.state.lock().expect("control lock");
        s.epoch += 1;
        s.addr = addr;
        s.parked = 0;
        s.phase = Phase::Run;
        self.changed.notify_all();
    }

    fn stop(&self) {
        let mut s = self.state.lock().expect("control lock");
        s.phase = Phase::Stop;
        self.changed.notify_all();
    }
}

struct Shared {
    ctl: Control,
    ledger: Mutex<Ledger>,
    queues: Vec<String>,
    next_id: AtomicU64,
}

fn worker(w: usize, seed: u64, sh: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(w as u64 + 1)));
    let mut seen = 0;
    while let Some((epoch, addr)) = sh.ctl.wait_run(seen) {
        seen = epoch;
        if let Ok(mut c) = Client::connect_with_timeout(addr, Some(CALL_TIMEOUT)) {
            while step(&mut c, &mut rng, &sh, epoch) {}
        }
        // The connection died (cmqd was killed): wait for the next run.
        sh.ctl.park(epoch);
    }
}

/// One step of a worker: a few pipelined sends, then a receive and
/// deletes. Returns false once the connection is gone.
fn step(c: &mut Client, rng: &mut StdRng, sh: &Shared, epoch: u64) -> bool {
    let n = rng.random_range(1..=SENDS_PER_STEP_MAX);
    let mut tickets = Vec::with_capacity(n);
    for _ in 0..n {
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let q = rng.random_range(0..sh.queues.len());
        let body = body_of(id, rng.random_range(0..BODY_PAD_MAX));
        sh.ledger.lock().expect("ledger").attempted.insert(id);
        let req = Request::SendMessage(SendMessage {
            queue: sh.queues[q].clone(),
            delay_seconds: 0,
            body,
            ..Default::default()
        });
        match c.submit(&req) {
            Ok(t) => tickets.push((id, q, t)),
            Err(_) => {
                sh.ledger.lock().expect("ledger").sends_unknown += 1;
            }
        }
    }
    let mut alive = c.flush().is_ok();
    for (id, q, t) in tickets {
        let r = c.wait(t);
        let mut l = sh.ledger.lock().expect("ledger");
        match r {
            Ok(Response::SendMessage(ok)) => {
                l.acked.insert(id, (q, ok.msg_id));
            }
            Ok(other) => l.violations.push(format!("send answered with {:?}", other.opcode())),
            Err(ClientError::Server { code, message }) => {
                l.sends_refused += 1;
                l.violations.push(format!("send refused by a running broker: {code}: {message}"));
            }
            Err(_) => {
                l.sends_unknown += 1;
                alive = false;
            }
        }
    }
    if !alive {
        return false;
    }

    let q = rng.random_range(0..sh.queues.len());
    let msgs = match c.receive_batch(&sh.queues[q], 16, Some(0)) {
        Ok(m) => m,
        Err(ClientError::Server { code, message }) => {
            sh.ledger.lock().expect("ledger").violations.push(format!("receive refused: {code}: {message}"));
            return true;
        }
        Err(_) => return false,
    };
    let mut to_delete = Vec::new();
    {
        let mut l = sh.ledger.lock().expect("ledger");
        let when = format!("run {epoch}");
        for m in &msgs {
            if let Some(id) = l.delivered(&when, q, m.msg_id, m.dequeue_count, &m.body) {
                if rng.random_ratio(DELETE_PERCENT, 100) {
                    to_delete.push((id, m.dequeue_count, m.receipt_handle));
                }
            }
        }
    }
    if to_delete.is_empty() {
        return true;
    }
    let handles: Vec<_> = to_delete.iter().map(|d| d.2).collect();
    let r = c.delete_batch(&sh.queues[q], &handles);
    let mut l = sh.ledger.lock().expect("ledger");
    match r {
        Ok(results) => {
            for ((id, dc, _), res) in to_delete.iter().zip(results) {
                if res.code == 0 {
                    l.deleted.insert(*id, *dc);
                } else if res.code != ErrorCode::RECEIPT_HANDLE_INVALID.0 {
                    l.violations.push(format!("delete of id {id} refused: {} {}", res.code, res.message));
                }
                // RECEIPT_HANDLE_INVALID: the 1 s lease ran out first; not deleted.
            }
            true
        }
        Err(ClientError::Server { code, message }) => {
            l.violations.push(format!("delete refused: {code}: {message}"));
            true
        }
        Err(_) => {
            l.delete_unknown.extend(to_delete.iter().map(|d| d.0));
            false
        }
    }
}

/// Receives one batch from queue `qi` (long-polling up to `wait` seconds),
/// checks each delivery and deletes them all. Returns (received, of which
/// delivered before).
fn take_batch(c: &mut Client, sh: &Shared, qi: usize, wait: u32, when: &str) -> (usize, usize) {
    let q = &sh.queues[qi];
    let msgs = c.receive_batch(q, 16, Some(wait)).unwrap_or_else(|e| panic!("{when}: receive: {e}"));
    if msgs.is_empty() {
        return (0, 0);
    }
    let ids: Vec<(Option<u64>, u32)> = {
        let mut l = sh.ledger.lock().expect("ledger");
        msgs.iter().map(|m| (l.delivered(when, qi, m.msg_id, m.dequeue_count, &m.body), m.dequeue_count)).collect()
    };
    let handles: Vec<_> = msgs.iter().map(|m| m.receipt_handle).collect();
    let results = c.delete_batch(q, &handles).unwrap_or_else(|e| panic!("{when}: delete: {e}"));
    let mut l = sh.ledger.lock().expect("ledger");
    for ((id, dc), r) in ids.into_iter().zip(results) {
        assert_eq!(r.code, 0, "{when}: delete refused: {}", r.message);
        if let Some(id) = id {
            l.deleted.insert(id, dc);
        }
    }
    (msgs.len(), msgs.iter().filter(|m| m.dequeue_count > 1).count())
}

/// After a restart, with the workers parked: receives and deletes
/// everything, then checks that nothing acknowledged is missing.
/// Returns (messages drained, of which delivered before the crash too).
fn drain_and_check(addr: SocketAddr, sh: &Shared, round: usize) -> (usize, usize) {
    let when = format!("drain after crash {round}");
    let mut c = Client::connect_with_timeout(addr, Some(CALL_TIMEOUT)).expect("connect for the drain");
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let (mut drained, mut again) = (0, 0);
    loop {
        let mut got_any = false;
        let mut in_flight = Vec::new();
        for qi in 0..sh.queues.len() {
            loop {
                let (n, a) = take_batch(&mut c, sh, qi, 0, &when);
                if n == 0 {
                    break;
                }
                got_any = true;
                drained += n;
                again += a;
            }
            let info = c.queue_info(&sh.queues[qi]).unwrap_or_else(|e| panic!("{when}: queue info: {e}"));
            assert_eq!(info.delay_msg_num, 0, "{when}: unexpected delayed messages: {info:?}");
            if info.active_msg_num + info.inactive_msg_num > 0 {
                in_flight.push(qi);
            }
        }
        if in_flight.is_empty() && !got_any {
            break;
        }
        assert!(Instant::now() < deadline, "{when}: queues {in_flight:?} not drained within {DRAIN_DEADLINE:?}");
        if !got_any {
            // Messages leased before the crash come back when their lease
            // ends (the broker's timer): a long poll returns as one does.
            let (n, a) = take_batch(&mut c, sh, in_flight[0], 2, &when);
            drained += n;
            again += a;
        }
    }
    // Every queue is empty now and all we drained is deleted: whatever was
    // acknowledged and neither deleted nor possibly deleted is lost.
    let mut l = sh.ledger.lock().expect("ledger");
    let mut lost: Vec<(u64, usize, u64)> = l
        .acked
        .iter()
        .filter(|(id, _)| !l.deleted.contains_key(id) && !l.delete_unknown.contains(id))
        .map(|(id, (q, m))| (*id, *q, *m))
        .collect();
    lost.sort_unstable();
    if !lost.is_empty() {
        let shown: Vec<String> =
            lost.iter().take(20).map(|(id, q, m)| format!("id {id} (queue {q}, msg {m:#x})")).collect();
        l.violations.push(format!(
            "{when}: {} acknowledged send(s) never delivered again: {}",
            lost.len(),
            shown.join(", ")
        ));
        // Do not report them again after the next crash.
        for (id, _, _) in lost {
            l.deleted.insert(id, u32::MAX);
        }
    }
    (drained, again)
}

#[test]
fn acknowledged_sends_and_deletes_survive_random_kill9() {
    let seed = std::env::var("CMQ_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    let rounds = std::env::var("CMQ_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(ROUNDS_DEFAULT);
    eprintln!("crash test: seed {seed} (replay with CMQ_CRASH_SEED={seed}), {rounds} rounds");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);

    // The smallest segments (17 MiB), so the log rolls during the run.
    let seg = SEGMENT_BYTES_MIN.to_string();
    let mut b = Broker::start(&["--shards", &SHARDS.to_string(), "--flush", "sync", "--segment-bytes", &seg]);
    let mut queues: Vec<String> = Vec::new();
    let mut per_shard = [0usize; SHARDS as usize];
    for i in 0.. {
        let name = format!("crash-{i}");
        let s = usize::from(shard_for(&name, SHARDS));
        if per_shard[s] < QUEUES_PER_SHARD {
            per_shard[s] += 1;
            queues.push(name);
        }
        if per_shard.iter().all(|&n| n == QUEUES_PER_SHARD) {
            break;
        }
    }
    {
        let mut c = Client::connect_with_timeout(b.addr, Some(CALL_TIMEOUT)).expect("connect");
        let attrs = QueueAttributesUpdate {
            visibility_timeout: Some(VISIBILITY_TIMEOUT_S),
            flush_policy: Some(FlushPolicy::Sync),
            ..Default::default()
        };
        for q in &queues {
            c.create_queue(q, &attrs).expect("create queue");
        }
    }

    let sh = Arc::new(Shared {
        ctl: Control {
            state: Mutex::new(CtlState { phase: Phase::Run, epoch: 1, addr: b.addr, parked: 0 }),
            changed: Condvar::new(),
        },
        ledger: Mutex::new(Ledger::default()),
        queues,
        next_id: AtomicU64::new(1),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let sh = sh.clone();
            std::thread::spawn(move || worker(w, seed, sh))
        })
        .collect();

    let (mut drained, mut again) = (0, 0);
    let mut seen_segments = HashSet::new();
    for round in 1..=rounds {
        // The random moment: let the load run, then SIGKILL mid-flight.
        let run_ms = rng.random_range(RUN_MS);
        std::thread::sleep(Duration::from_millis(run_ms));
        b.kill9();
        let t = Instant::now();
        sh.ctl.await_parked();
        let parked = t.elapsed();
        b.restart();
        let restarted = t.elapsed();
        if std::env::var("CMQ_CRASH_LOG").is_ok() {
            eprintln!("{}", b.stderr());
        }
        for s in 0..usize::from(SHARDS) {
            for p in segments(&shard_dir(&b.data_dir, s)) {
                seen_segments.insert(p);
            }
        }
        let (d, a) = drain_and_check(b.addr, &sh, round);
        eprintln!(
            "round {round}: killed after {run_ms} ms; workers parked in {parked:.1?}, restarted by {restarted:.1?}, \
             drained {d} ({a} delivered before) by {:.1?}",
            t.elapsed()
        );
        drained += d;
        again += a;
        let l = sh.ledger.lock().expect("ledger");
        if !l.violations.is_empty() {
            break;
        }
        drop(l);
        if round < rounds {
            sh.ctl.resume(b.addr);
        }
    }
    sh.ctl.stop();
    for w in workers {
        w.join().expect("worker thread");
    }

    let l = sh.ledger.lock().expect("ledger");
    eprintln!(
        "crash test: {rounds} rounds in {:.1?}: {} sends attempted, {} acknowledged, {} with unknown outcome, \
         {} deletes acknowledged, {} with unknown outcome; {} deliveries ({} redeliveries); \
         {drained} drained after crashes ({again} of them delivered before); {} segment files seen",
        started.elapsed(),
        l.attempted.len(),
        l.acked.len(),
        l.sends_unknown,
        l.deleted.len(),
        l.delete_unknown.len(),
        l.deliveries,
        l.redeliveries,
        seen_segments.len(),
    );
    assert!(
        l.violations.is_empty(),
        "seed {seed}: {} violation(s):\n  {}\ncmqd's log of the last run:\n{}",
        l.violations.len(),
        l.violations.iter().take(40).cloned().collect::<Vec<_>>().join("\n  "),
        b.stderr()
    );
    // The test must have exercised something: acknowledged traffic in most rounds.
    assert!(l.acked.len() >= rounds * 10, "too little traffic to mean anything: {} sends acknowledged", l.acked.len());
    assert!(l.sends_unknown > 0 || !l.delete_unknown.is_empty(), "no request was ever cut off by a kill");
}
