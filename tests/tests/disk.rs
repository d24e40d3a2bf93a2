//! Disk behaviour of the write-ahead log on the real cmqd: a full disk
//! (through the hidden `--fault-file`) fails only writes, with
//! STORAGE_UNAVAILABLE, and loses nothing; a really full disk (a small
//! tmpfs) recovers as soon as consumers delete, for any shard count, with
//! or without a restart; consumed data is given back (segments released);
//! a few old live messages do not pin an old segment (compaction moves
//! them, state and all).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{
    BatchSendMessage, Client, ClientError, ErrorCode, QueueAttributesUpdate, ReceivedMessage, Request, Response,
};
use cmq_integration_tests::wal_files::{log_usage, segments, shard_dir, LogUsage, Tmpfs, SEGMENT_BYTES_MIN};
use cmq_integration_tests::Broker;
use cmq_protocol::names::shard_for;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies of the bulk tests: the default maxMsgSize, so a batch of 16 is 1 MiB.
const BIG_BODY_BYTES: usize = 64 * 1024;
/// How long housekeeping (about once a second) may take to give space back.
const RECLAIM_DEADLINE: Duration = Duration::from_secs(30);
/// Between two looks at the data directory while waiting on housekeeping.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn connect(b: &Broker) -> Client {
    Client::connect_with_timeout(b.addr, Some(CALL_TIMEOUT)).expect("connect to cmqd")
}

fn lease(secs: u32) -> QueueAttributesUpdate {
    QueueAttributesUpdate { visibility_timeout: Some(secs), ..Default::default() }
}

/// `per_shard` queue names owned by each of `shards` shards.
fn names_on_shards(prefix: &str, shards: u16, per_shard: usize) -> Vec<String> {
    let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); usize::from(shards)];
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let s = usize::from(shard_for(&name, shards));
        if by_shard[s].len() < per_shard {
            by_shard[s].push(name);
        }
        if by_shard.iter().all(|v| v.len() == per_shard) {
            break;
        }
    }
    by_shard.into_iter().flatten().collect()
}

/// A 64 KiB body starting with its tag; the rest is derived from the tag,
/// so a body can be checked byte for byte.
fn big_body(tag: &str) -> Bytes {
    let mut v = format!("{tag}|").into_bytes();
    let fill = tag.bytes().fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    v.resize(BIG_BODY_BYTES, fill);
    Bytes::from(v)
}

fn tag_of(body: &[u8]) -> String {
    let end = body.iter().position(|&b| b == b'|').unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// Sends `batches` batches of 16 big bodies, round-robin over `queues`,
/// `window` requests in flight. Returns the highest message id per queue.
fn produce(c: &mut Client, queues: &[String], batches: usize, prefix: &str) -> HashMap<String, u64> {
    produce_windowed(c, queues, batches, prefix, 1)
}

fn produce_windowed(
    c: &mut Client,
    queues: &[String],
    batches: usize,
    prefix: &str,
    window: usize,
) -> HashMap<String, u64> {
    let mut max_id = HashMap::new();
    let mut next = 0;
    while next < batches {
        let mut tickets = Vec::new();
        for b in next..(next + window).min(batches) {
            let q = &queues[b % queues.len()];
            let bodies = (0..16).map(|i| big_body(&format!("{prefix}-{b:04}-{i:02}"))).collect();
            let req = Request::BatchSendMessage(BatchSendMessage {
                queue: q.clone(),
                delay_seconds: 0,
                bodies,
                ..Default::default()
            });
            tickets.push((q.clone(), c.submit(&req).expect("submit")));
        }
        next += tickets.len();
        c.flush().expect("flush");
        for (q, t) in tickets {
            match c.wait(t).unwrap_or_else(|e| panic!("batch send ({window} in flight): {e}")) {
                Response::BatchSendMessage(ok) => {
                    let m = max_id.entry(q).or_insert(0);
                    *m = ok.msg_ids.iter().copied().fold(*m, u64::max);
                }
                other => panic!("batch send answered with {:?}", other.opcode()),
            }
        }
    }
    max_id
}

/// Receives and deletes everything in `queue`; returns how many.
fn consume_all(c: &mut Client, queue: &str) -> usize {
    let mut n = 0;
    loop {
        let got = c.receive_batch(queue, 16, Some(0)).expect("receive");
        if got.is_empty() {
            return n;
        }
        for m in &got {
            assert_eq!(m.body, big_body(&tag_of(&m.body)), "body damaged: {}", tag_of(&m.body));
        }
        let handles: Vec<_> = got.iter().map(|m| m.receipt_handle).collect();
        for r in c.delete_batch(queue, &handles).expect("delete batch") {
            assert_eq!(r.code, 0, "delete failed: {}", r.message);
        }
        n += got.len();
    }
}

fn usage_of(b: &Broker, shards: usize) -> Vec<LogUsage> {
    (0..shards).map(|s| log_usage(&shard_dir(&b.data_dir, s))).collect()
}

fn show(u: &[LogUsage]) -> String {
    u.iter().enumerate().map(|(s, u)| format!("shard {s}: {u}")).collect::<Vec<_>>().join("; ")
}

/// Polls the data directory until `ok` holds for every shard, or the deadline.
fn await_usage(b: &Broker, shards: usize, ok: impl Fn(&LogUsage) -> bool) -> Result<(Vec<LogUsage>, Duration), String> {
    let start = Instant::now();
    loop {
        let u = usage_of(b, shards);
        if u.iter().all(&ok) {
            return Ok((u, start.elapsed()));
        }
        if start.elapsed() > RECLAIM_DEADLINE {
            return Err(show(&u));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Segments per shard left once everything is consumed: the active segment
/// plus the next one, which the WAL prepares in the background once the
/// active one is half full (so a roll never waits for a file creation).
const SEGMENTS_PER_SHARD_AT_REST_MAX: usize = 2;

fn at_rest(u: &LogUsage) -> bool {
    // Allocation rounds up to file-system blocks: allow 1 MiB of slack per segment.
    let bytes_max = SEGMENTS_PER_SHARD_AT_REST_MAX as u64 * (SEGMENT_BYTES_MIN + (1 << 20));
    u.files <= SEGMENTS_PER_SHARD_AT_REST_MAX && u.allocated_bytes <= bytes_max && u.len_bytes <= bytes_max
}

#[test]
fn consumed_log_space_is_released_to_two_segments_per_shard() {
    const SHARDS: usize = 2;
    const BATCHES: usize = 200; // 200 MiB of bodies
    let seg = SEGMENT_BYTES_MIN.to_string();
    let mut b = Broker::start(&["--shards", "2", "--segment-bytes", &seg, "--flush", "async"]);
    let mut c = connect(&b);
    let queues = names_on_shards("reclaim", SHARDS as u16, 2);
    for q in &queues {
        c.create_queue(q, &lease(600)).expect("create");
    }
    let started = Instant::now();
    let max_ids = produce(&mut c, &queues, BATCHES, "r");
    let produced_in = started.elapsed();
    let peak = usage_of(&b, SHARDS);
    for (s, u) in peak.iter().enumerate() {
        // About 100 MiB per shard: at least three full segments each.
        assert!(u.files >= 3, "shard {s} holds too little for this test to mean anything: {u}");
    }
    let mut consumed = 0;
    for q in &queues {
        consumed += consume_all(&mut c, q);
    }
    assert_eq!(consumed, BATCHES * 16);
    let consumed_in = started.elapsed() - produced_in;

    let (rest, waited) = await_usage(&b, SHARDS, at_rest).unwrap_or_else(|now| {
        panic!(
            "log space not released within {RECLAIM_DEADLINE:?} after consuming everything: {now} \
             (at most {SEGMENTS_PER_SHARD_AT_REST_MAX} segments per shard expected; peak was {})",
            show(&peak)
        )
    });
    eprintln!(
        "reclaim: produced 200 MiB in {produced_in:.1?}, consumed in {consumed_in:.1?}; peak {}; \
         released within {waited:.1?}: {}",
        show(&peak),
        show(&rest)
    );

    // Released for good: a restart brings back neither messages nor
    // segments, and message ids continue (the catalog kept the counters).
    drop(c);
    b.kill9();
    b.restart();
    let mut c = connect(&b);
    let after = usage_of(&b, SHARDS);
    assert!(after.iter().all(at_rest), "segments came back after restart: {}", show(&after));
    for q in &queues {
        let info = c.queue_info(q).expect("queue survives release of its creation record");
        assert_eq!(info.active_msg_num + info.inactive_msg_num + info.delay_msg_num, 0, "{q}: {info:?}");
        let id = c.send(q, "after", 0).expect("send");
        assert!(id > max_ids[q], "{q}: message id {id} not above {} issued before the restart", max_ids[q]);
    }
}

#[test]
fn compaction_moves_a_few_old_live_messages_and_frees_the_oldest_segment() {
    let seg = SEGMENT_BYTES_MIN.to_string();
    let mut b = Broker::start(&["--shards", "1", "--segment-bytes", &seg, "--flush", "async"]);
    let mut c = connect(&b);
    c.create_queue("keep", &lease(1)).expect("create");
    c.create_queue("fill", &lease(600)).expect("create");
    let keep: Vec<(u64, String)> =
        (0..3).map(|i| format!("keep-{i}")).map(|t| (c.send("keep", t.clone(), 0).expect("send"), t)).collect();
    // One of them has been delivered once: its dequeue count must move with it.
    let first = c.receive("keep", Some(0)).expect("receive").expect("a keep message");
    assert_eq!((first.msg_id, first.dequeue_count), (keep[0].0, 1));

    let dir = shard_dir(&b.data_dir, 0);
    let oldest = segments(&dir).first().cloned().expect("a segment");
    // Over three segments of filler, all consumed: the keep messages are then
    // the only live data in the oldest segment.
    produce(&mut c, &["fill".to_string()], 110, "f");
    assert!(segments(&dir).len() >= 4, "filler did not span segments: {}", log_usage(&dir));
    assert_eq!(consume_all(&mut c, "fill"), 110 * 16);

    let (rest, waited) = await_usage(&b, 1, |u| !u.names.iter().any(|n| oldest.ends_with(n)) && at_rest(u))
        .unwrap_or_else(|now| {
            panic!(
                "the oldest segment {} is still there {RECLAIM_DEADLINE:?} after its other messages were \
                 consumed (3 live messages should have been relocated): {now}",
                oldest.display()
            )
        });
    eprintln!("compaction: oldest segment gone within {waited:.1?}: {}", show(&rest));

    let check = |c: &mut Client, expect_counts: [u32; 3], when: &str| {
        let mut got: BTreeMap<u64, ReceivedMessage> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 3 && Instant::now() < deadline {
            // The in-flight one comes back when its 1 s lease ends (broker timer).
            for m in c.receive_batch("keep", 16, Some(2)).expect("receive") {
                got.insert(m.msg_id, m);
            }
        }
        assert_eq!(got.len(), 3, "{when}: keep messages missing: got {:?}", got.keys().collect::<Vec<_>>());
        for ((id, tag), want) in keep.iter().zip(expect_counts) {
            let m = &got[id];
            assert_eq!(&m.body[..], tag.as_bytes(), "{when}: body of {tag} changed");
            assert_eq!(m.dequeue_count, want, "{when}: dequeueCount of {tag} not carried over");
        }
        let m0 = &got[&keep[0].0];
        assert_eq!(m0.first_dequeue_time_ms, first.first_dequeue_time_ms, "{when}: firstDequeueTime changed");
        assert_eq!(m0.enqueue_time_ms, first.enqueue_time_ms, "{when}: enqueueTime changed");
    };
    check(&mut c, [2, 1, 1], "after compaction");
    // The relocated copies are what a restart replays.
    drop(c);
    b.kill9();
    b.restart();
    assert!(!oldest.exists(), "the compacted segment reappeared");
    let mut c = connect(&b);
    check(&mut c, [3, 2, 2], "after compaction and kill -9");
}

fn is_unavailable(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::STORAGE_UNAVAILABLE)
}

/// Everything the ENOSPC test was told, to check against what comes back.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<String>,
    /// Sends whose connection died before an answer: may or may not exist.
    unknown: BTreeSet<String>,
    deleted: BTreeSet<String>,
}

impl Ledger {
    fn body_ok(&self, m: &ReceivedMessage) -> Result<String, String> {
        let body = &m.body;
        let tag = tag_of(body);
        let known = self.acked.contains(&tag) || self.unknown.contains(&tag);
        let intact = if tag.starts_with("pre-") { body == tag.as_bytes() } else { *body == big_body(&tag) };
        if !known || !intact {
            let start = String::from_utf8_lossy(&body[..body.len().min(24)]).into_owned();
            return Err(format!(
                "msg {:#x}: delivered a message never sent, or with a damaged body ({} bytes, starting {start:?})",
                m.msg_id,
                body.len()
            ));
        }
        if self.deleted.contains(&tag) {
            return Err(format!("delivered {tag}, whose delete was acknowledged"));
        }
        Ok(tag)
    }
}

#[test]
fn full_disk_fails_only_writes_and_loses_nothing() {
    const PRE: usize = 32;
    let faults = tempfile::tempdir().expect("temp dir");
    let fault = faults.path().join("disk-is-full");
    let seg = SEGMENT_BYTES_MIN.to_string();
    let fault_arg = fault.to_str().expect("utf-8 path");
    let mut b =
        Broker::start(&["--shards", "1", "--segment-bytes", &seg, "--flush", "async", "--fault-file", fault_arg]);
    let mut c = connect(&b);
    c.create_queue("full", &lease(600)).expect("create");
    let mut led = Ledger::default();
    for i in 0..PRE {
        let tag = format!("pre-{i:02}");
        c.send("full", tag.clone(), 0).expect("send before the fault");
        led.acked.insert(tag);
    }
    let held_before = c.receive_batch("full", 4, Some(0)).expect("receive before the fault");
    assert_eq!(held_before.len(), 4);
    let mut problems: Vec<String> = Vec::new();

    std::fs::write(&fault, b"").expect("create fault file");
    // Writes fail, possibly only once the space already reserved (the rest
    // of the active segment) is used up: fill it, bounded by three segments.
    let budget = 3 * SEGMENT_BYTES_MIN as usize / (16 * BIG_BODY_BYTES);
    let mut refusal = None;
    let mut disconnects = 0;
    for batch in 0..budget {
        let tags: Vec<String> = (0..16).map(|i| format!("fill-{batch:03}-{i:02}")).collect();
        let bodies: Vec<Bytes> = tags.iter().map(|t| big_body(t)).collect();
        match c.send_batch("full", &bodies, 0) {
            Ok(_) => led.acked.extend(tags),
            Err(e) if is_unavailable(&e) => {
                refusal = Some(e.to_string());
                break;
            }
            Err(e @ ClientError::Server { .. }) => panic!("send under a full disk failed with the wrong error: {e}"),
            Err(_) => {
                // Connection closed: that batch's outcome is unknown.
                disconnects += 1;
                led.unknown.extend(tags);
            }
        }
    }
    let refusal = refusal.unwrap_or_else(|| {
        panic!("sends kept succeeding with the disk full ({} MiB acknowledged)", led.acked.len() / 16)
    });
    assert!(refusal.to_lowercase().contains("storage unavailable"), "unclear refusal: {refusal}");
    if disconnects > 0 {
        eprintln!("enospc: {disconnects} send(s) under the fault were answered by closing the connection");
    }
    // It keeps refusing while the disk is full (a small message may still fit
    // in what is left of the active segment: repeat the batch that did not).
    let again: Vec<Bytes> = (0..16).map(|i| big_body(&format!("refused-{i:02}"))).collect();
    let e = c.send_batch("full", &again, 0).expect_err("send with the disk full");
    assert!(is_unavailable(&e), "second send under the fault: {e}");

    // Reads and deletes of stored messages keep working.
    let handles: Vec<_> = held_before.iter().map(|m| m.receipt_handle).collect();
    let mut to_delete_later = Vec::new();
    match c.delete_batch("full", &handles) {
        Ok(results) => {
            for (m, r) in held_before.iter().zip(results) {
                if r.code == 0 {
                    led.deleted.insert(tag_of(&m.body));
                } else {
                    problems.push(format!("delete under the fault failed: {} {}", r.code, r.message));
                    to_delete_later.push(m.clone());
                }
            }
        }
        Err(e) => {
            problems.push(format!("delete under the fault failed: {e}"));
            to_delete_later.extend(held_before.iter().cloned());
        }
    }
    match c.receive_batch("full", 4, Some(0)) {
        Ok(got) if !got.is_empty() => {
            for m in got {
                if let Err(p) = led.body_ok(&m) {
                    problems.push(p);
                }
                to_delete_later.push(m);
            }
        }
        Ok(_) => problems.push("receive under the fault found nothing, with stored messages ready".into()),
        Err(e) => problems.push(format!("receive under the fault failed: {e}")),
    }

    // Space returns: writes resume (the WAL retries about once a second).
    std::fs::remove_file(&fault).expect("remove fault file");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut resumed_after = None;
    while Instant::now() < deadline {
        match c.send("full", big_body("post-00"), 0) {
            Ok(_) => {
                led.acked.insert("post-00".into());
                resumed_after = Some(deadline - Instant::now());
                break;
            }
            Err(e) if is_unavailable(&e) => std::thread::sleep(POLL_INTERVAL),
            Err(e @ ClientError::Server { .. }) => panic!("send after the fault cleared: {e}"),
            Err(_) => {
                led.unknown.insert("post-00".into());
            }
        }
    }
    assert!(resumed_after.is_some(), "sends still fail 15 s after the fault file was removed");
    // The first success may have fit in the old segment while the new one is
    // still being created (the log retries about every 100 ms): a client
    // retries 6001, as any client of a full disk must.
    for i in 1..4 {
        let bodies: Vec<Bytes> = (0..16).map(|j| big_body(&format!("post-{i:02}-{j:02}"))).collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match c.send_batch("full", &bodies, 0) {
                Ok(_) => break,
                Err(e) if is_unavailable(&e) && Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Err(e) => panic!("send after recovery: {e}"),
            }
        }
        led.acked.extend(bodies.iter().map(|b| tag_of(b)));
    }
    for m in to_delete_later {
        c.delete_message("full", m.receipt_handle).expect("delete after recovery");
        led.deleted.insert(tag_of(&m.body));
    }

    // What the running broker serves now, and then after kill -9, is
    // exactly what was acknowledged (unknown outcomes may go either way).
    let mut check = |c: &mut Client, when: &str| {
        let mut seen = BTreeSet::new();
        let mut handles = Vec::new();
        loop {
            let got = c.receive_batch("full", 16, Some(0)).unwrap_or_else(|e| panic!("{when}: receive: {e}"));
            if got.is_empty() {
                break;
            }
            for m in got {
                match led.body_ok(&m) {
                    Ok(tag) => {
                        if !seen.insert(tag.clone()) {
                            problems.push(format!("{when}: {tag} delivered twice within its lease"));
                        }
                    }
                    Err(p) => problems.push(format!("{when}: {p}")),
                }
                handles.push(m.receipt_handle);
            }
        }
        let missing: Vec<&String> =
            led.acked.iter().filter(|t| !led.deleted.contains(*t) && !seen.contains(*t)).collect();
        if !missing.is_empty() {
            problems.push(format!("{when}: {} acknowledged message(s) missing: {missing:?}", missing.len()));
        }
        // Hand them back for the next look.
        for h in handles {
            c.change_visibility("full", h, 0).unwrap_or_else(|e| panic!("{when}: change visibility: {e}"));
        }
    };
    check(&mut c, "after the fault cleared");
    drop(c);
    b.kill9();
    b.restart();
    let mut c = connect(&b);
    check(&mut c, "after kill -9 and restart");
    assert!(problems.is_empty(), "full-disk behaviour violated:\n  {}", problems.join("\n  "));
}

/// Found by the bulk producer above: two 1 MiB batch sends pipelined on one
/// connection to an async-flush queue, and the second is never answered.
#[test]
fn pipelined_big_batches_on_an_async_queue_are_all_answered() {
    let b = Broker::start(&["--shards", "1", "--flush", "async"]);
    let mut c = Client::connect_with_timeout(b.addr, Some(Duration::from_secs(10))).expect("connect");
    let queues = vec!["bulk".to_string()];
    c.create_queue("bulk", &lease(600)).expect("create");
    produce_windowed(&mut c, &queues, 24, "p", 2);
    assert_eq!(c.queue_info("bulk").expect("info").active_msg_num, 24 * 16);
}

/// How long sends may take to resume once everything is deleted. The log
/// releases segments about once a second; this only bounds a hang.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);

/// Sends 1 MiB batches to every queue in turn until each is refused with
/// STORAGE_UNAVAILABLE; returns the tags acknowledged and the refusal.
fn fill_until_refused(c: &mut Client, queues: &[String], prefix: &str, fs_mib: u64) -> (BTreeSet<String>, String) {
    let mut acked = BTreeSet::new();
    let mut refused: BTreeSet<&String> = BTreeSet::new();
    for batch in 0..2 * fs_mib as usize {
        let q = &queues[batch % queues.len()];
        if refused.contains(q) {
            continue;
        }
        let tags: Vec<String> = (0..16).map(|i| format!("{prefix}-{batch:04}-{i:02}")).collect();
        let bodies: Vec<Bytes> = tags.iter().map(|t| big_body(t)).collect();
        match c.send_batch(q, &bodies, 0) {
            Ok(_) => acked.extend(tags),
            Err(e) if is_unavailable(&e) => {
                refused.insert(q);
                if refused.len() == queues.len() {
                    return (acked, e.to_string());
                }
            }
            Err(e) => panic!("send to {q} on a full disk failed with the wrong error: {e}"),
        }
    }
    panic!("{} MiB acknowledged on a {fs_mib} MiB file system without a refusal", acked.len() / 16);
}

/// Receives and deletes everything; returns the tags seen.
fn delete_everything(c: &mut Client, queues: &[String]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for q in queues {
        loop {
            let got = c.receive_batch(q, 16, Some(0)).unwrap_or_else(|e| panic!("receive on a full disk: {e}"));
            if got.is_empty() {
                break;
            }
            let handles: Vec<_> = got.iter().map(|m| m.receipt_handle).collect();
            for r in c.delete_batch(q, &handles).unwrap_or_else(|e| panic!("delete on a full disk: {e}")) {
                assert_eq!(r.code, 0, "delete on a full disk failed: {}", r.message);
            }
            for m in got {
                assert_eq!(m.body, big_body(&tag_of(&m.body)), "body damaged: {}", tag_of(&m.body));
                seen.insert(tag_of(&m.body));
            }
        }
    }
    seen
}

/// Retries a 1 MiB batch send on every queue until each succeeds; returns
/// how long that took.
fn await_sends(c: &mut Client, queues: &[String], prefix: &str) -> Duration {
    let start = Instant::now();
    for q in queues {
        let bodies: Vec<Bytes> = (0..16).map(|i| big_body(&format!("{prefix}-{q}-{i:02}"))).collect();
        loop {
            match c.send_batch(q, &bodies, 0) {
                Ok(_) => break,
                Err(e) if is_unavailable(&e) && start.elapsed() < RESUME_DEADLINE => std::thread::sleep(POLL_INTERVAL),
                Err(e) => {
                    panic!("sends to {q} still fail {:.1?} after every message was deleted: {e}", start.elapsed())
                }
            }
        }
    }
    start.elapsed()
}

/// Issue 9, case 3: `shards` shards at the minimum segment size fill a
/// `fs_mib` MiB file system; once consumers have received and deleted
/// everything, sends resume on every shard, with no restart, and again
/// after a restart on the full disk.
fn full_disk_recovers(shards: u16, fs_mib: u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let fs = Tmpfs::mount(&tmp.path().join("fs"), fs_mib).unwrap_or_else(|e| panic!("{e}"));
    let data = fs.path.join("data");
    let seg = SEGMENT_BYTES_MIN.to_string();
    let n = shards.to_string();
    let args = ["--shards", &n, "--segment-bytes", &seg, "--flush", "async"];
    let mut b = Broker::start_in(&data, &args);
    let mut c = connect(&b);
    let queues = names_on_shards("full", shards, 1);
    for q in &queues {
        c.create_queue(q, &lease(600)).expect("create");
    }
    let what = format!("{shards} shards, {fs_mib} MiB");

    // Without a restart.
    let (acked, refusal) = fill_until_refused(&mut c, &queues, "a", fs_mib);
    assert!(refusal.contains("until consumers delete messages"), "the refusal does not say what helps: {refusal}");
    let seen = delete_everything(&mut c, &queues);
    assert_eq!(seen, acked, "{what}: deleted messages differ from those acknowledged");
    let resumed = await_sends(&mut c, &queues, "after-a");
    eprintln!(
        "full disk, {what}: {} MiB acknowledged; sends resumed {resumed:.1?} after the deletes",
        acked.len() / 16
    );

    // With a restart on the full disk.
    let (acked, _) = fill_until_refused(&mut c, &queues, "b", fs_mib);
    drop(c);
    b.kill9();
    b.restart();
    let mut c = connect(&b);
    let seen = delete_everything(&mut c, &queues);
    let resent = queues.iter().flat_map(|q| (0..16).map(move |i| format!("after-a-{q}-{i:02}")));
    let expected: BTreeSet<String> = acked.iter().cloned().chain(resent).collect();
    assert_eq!(seen, expected, "{what}: after a restart on the full disk, the messages differ from those acknowledged");
    let resumed = await_sends(&mut c, &queues, "after-b");
    eprintln!("full disk, {what}: after kill -9 and a restart on the full disk, sends resumed {resumed:.1?}");
    drop(c);
    b.kill9();
    b.restart();
    let mut c = connect(&b);
    for q in &queues {
        let info = c.queue_info(q).expect("info");
        assert_eq!(info.active_msg_num, 16, "{what}: {q} after the last restart: {info:?}");
    }
}

/// The issue's measurement: two shards at the minimum segment size on a
/// 96 MiB file system.
#[test]
fn a_really_full_disk_recovers_when_consumers_delete_two_shards() {
    full_disk_recovers(2, 96);
}

/// Each shard has room for one segment only: the one that fills up holds
/// the log's head, so without the spare segment it could never be released
/// (this is the case that never recovered before).
#[test]
fn a_really_full_disk_recovers_when_each_shard_has_one_segment() {
    full_disk_recovers(2, 50);
}

/// More shards than whole segments fit: they recover one after the other,
/// as each gives back its spare's worth.
#[test]
fn a_really_full_disk_recovers_with_four_shards() {
    full_disk_recovers(4, 96);
}
