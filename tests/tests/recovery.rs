//! Recovery from damaged logs: a torn last record (written, never
//! acknowledged as durable) is dropped (and logged), damage to acknowledged
//! data stops start-up with the file and offset named, and `--repair`
//! starts anyway, keeping every undamaged message.
//!
//! Each test writes real records through cmqd, kills it with SIGKILL, damages
//! the segment file found by walking the record chain from offset 32, and
//! starts cmqd again on it. `corruption.rs` flips bytes at random offsets.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{Client, QueueAttributesUpdate};
use cmq_integration_tests::raw::RawConn;
use cmq_integration_tests::wal_files::{
    byte_at, data_records, enqueued_bodies, newest_data_segment, overwrite, read_payload, records, rtype,
    run_cmqd_expecting_refusal, segments, shard_dir, RecordLoc, SEGMENT_BYTES_MIN,
};
use cmq_integration_tests::Broker;
use cmq_protocol::{Request, SendMessage};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(b: &Broker) -> Client {
    Client::connect_with_timeout(b.addr, Some(CALL_TIMEOUT)).expect("connect to cmqd")
}

/// A long lease, so a drain sees each message once.
fn long_lease() -> QueueAttributesUpdate {
    QueueAttributesUpdate { visibility_timeout: Some(600), ..Default::default() }
}

/// Receives everything ready in `queue` (without deleting); returns the bodies.
fn drain(c: &mut Client, queue: &str) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let got = c.receive_batch(queue, 16, Some(0)).expect("receive");
        if got.is_empty() {
            return out;
        }
        out.extend(got.into_iter().map(|m| m.body));
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Data records in the newest segment of `dir`.
fn data_record_count(dir: &Path) -> usize {
    newest_data_segment(dir).map_or(0, |(_, recs)| data_records(&recs).len())
}

/// Writes nine small messages on one shard (acknowledged: fdatasync'd),
/// then a tenth while fdatasync is stalled: written to the file, never
/// acknowledged, exactly what a crash may leave torn. Kills cmqd, applies
/// `damage` to that last record, restarts, and checks that exactly it is
/// gone and the torn tail was logged.
fn torn_tail_case(what: &str, damage: impl Fn(&Path, &RecordLoc)) {
    const N: usize = 10;
    let faults = tempfile::tempdir().expect("temp dir");
    let fault = faults.path().join("fault");
    let fault_arg = fault.to_str().expect("utf-8 path");
    let mut b = Broker::start(&["--shards", "1", "--flush", "sync", "--fault-file", fault_arg]);
    let mut c = connect(&b);
    c.create_queue("torn", &long_lease()).expect("create");
    let names: Vec<String> = (0..N).map(|i| format!("torn-{i:02} {}", "x".repeat(100 + i))).collect();
    for n in &names[..N - 1] {
        c.send("torn", n.clone(), 0).expect("send");
    }
    let dir = shard_dir(&b.data_dir, 0);
    let before = data_record_count(&dir);
    std::fs::write(&fault, b"stall-sync").expect("stall fdatasync");
    let mut raw = RawConn::open(b.addr);
    let last_body = Bytes::from(names[N - 1].clone());
    raw.send(&Request::SendMessage(SendMessage {
        queue: "torn".into(),
        delay_seconds: 0,
        body: last_body,
        ..Default::default()
    }));
    // The record is written at the end of the loop turn; its fdatasync
    // never completes, so it is never acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while data_record_count(&dir) == before {
        assert!(Instant::now() < deadline, "{what}: the unacknowledged send was never written");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(c);
    b.kill9();
    std::fs::remove_file(&fault).expect("remove fault file");

    let (seg, recs) = newest_data_segment(&dir).expect("a segment with records");
    let last = *data_records(&recs).last().expect("records");
    assert_eq!(last.rtype, rtype::ENQUEUED, "last record is not the last send: {recs:?}");
    assert_eq!(recs.last(), Some(&last), "nothing follows the unacknowledged record: {recs:?}");
    let bodies = enqueued_bodies(&read_payload(&seg, &last));
    assert_eq!(bodies, vec![names[N - 1].as_bytes().to_vec()], "last record does not hold the last message");
    damage(&seg, &last);

    b.restart();
    let log = b.stderr();
    let expected = format!("WAL torn tail in {} at file offset {}", seg.display(), last.offset);
    assert!(log.contains(&expected), "{what}: log lacks {expected:?}; cmqd's log:\n{log}");
    let mut c = connect(&b);
    let info = c.queue_info("torn").expect("info");
    assert_eq!(info.active_msg_num, N as u64 - 1, "{what}: expected exactly the last message dropped: {info:?}");
    let got: Vec<String> = drain(&mut c, "torn").iter().map(text).collect();
    assert_eq!(got, names[..N - 1].to_vec(), "{what}: the earlier messages are not all there, in order");

    // The tail was cleaned: the next start is clean and the log takes new writes.
    c.send("torn", "after", 0).expect("send after recovery");
    drop(c);
    b.kill9();
    b.restart();
    assert!(!b.stderr().contains("torn tail"), "{what}: second start still found a torn tail:\n{}", b.stderr());
    let mut c = connect(&b);
    let info = c.queue_info("torn").expect("info");
    assert_eq!(info.active_msg_num + info.inactive_msg_num, N as u64, "{what}: {info:?}");
}

#[test]
fn torn_write_cut_last_record_is_dropped_and_logged() {
    // Segments are preallocated, so a cut write leaves zeros: zero the last
    // record from its middle to its end.
    torn_tail_case("cut", |seg, last| {
        let mid = last.offset + (last.end() - last.offset) / 2;
        overwrite(seg, mid, &vec![0u8; (last.end() - mid) as usize]);
    });
}

#[test]
fn torn_write_garbled_byte_in_last_record_is_dropped_and_logged() {
    torn_tail_case("garble", |seg, last| {
        let at = last.offset + (last.end() - last.offset) / 2;
        overwrite(seg, at, &[byte_at(seg, at) ^ 0x5a]);
    });
}

/// The same damage to a last record that was acknowledged (fdatasync'd,
/// and the durable mark written after it says so) is not a torn write: it
/// is corruption, and cmqd refuses to start rather than drop it.
#[test]
fn damage_to_an_acknowledged_last_record_is_corruption_not_a_torn_tail() {
    let args = ["--shards", "1", "--flush", "sync"];
    let mut b = Broker::start(&args);
    let mut c = connect(&b);
    c.create_queue("acked", &long_lease()).expect("create");
    for i in 0..10 {
        c.send("acked", format!("acked-{i:02} {}", "y".repeat(100)), 0).expect("send");
    }
    drop(c);
    b.kill9();
    let (seg, recs) = newest_data_segment(&shard_dir(&b.data_dir, 0)).expect("a segment with records");
    let last = *data_records(&recs).last().expect("records");
    assert_eq!(last.rtype, rtype::ENQUEUED);
    let at = last.offset + (last.end() - last.offset) / 2;
    overwrite(&seg, at, &[byte_at(&seg, at) ^ 0x5a]);
    let r = run_cmqd_expecting_refusal(&b.data_dir, &args, Duration::from_secs(30));
    assert!(!r.started, "cmqd dropped an acknowledged message as a torn tail; its log:\n{}", r.stderr);
    let named = format!("{} at file offset {}", seg.display(), last.offset);
    assert!(r.stderr.contains(&named) && r.stderr.contains("--repair"), "refusal lacks {named:?}:\n{}", r.stderr);
}

/// A 64 KiB body starting with its tag.
fn big_body(tag: &str) -> Bytes {
    let mut v = format!("{tag}|").into_bytes();
    let fill = tag.bytes().fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    v.resize(64 * 1024, fill);
    Bytes::from(v)
}

fn tag_of(body: &[u8]) -> String {
    let end = body.iter().position(|&b| b == b'|').unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

#[test]
fn corruption_in_the_middle_refuses_start_and_repair_keeps_the_rest() {
    // Two segments of data, so damage in the first one is not a torn tail
    // (only the newest data segment may have one).
    const BATCHES: usize = 30; // 16 × 64 KiB each: 30 MiB, more than one 17 MiB segment
    let seg_bytes = SEGMENT_BYTES_MIN.to_string();
    let args = ["--shards", "1", "--segment-bytes", &seg_bytes, "--flush", "async"];
    let mut b = Broker::start(&args);
    let mut c = connect(&b);
    c.create_queue("mid", &long_lease()).expect("create");
    let mut all = BTreeSet::new();
    for batch in 0..BATCHES {
        let tags: Vec<String> = (0..16).map(|i| format!("mid-{batch:03}-{i:02}")).collect();
        let bodies: Vec<Bytes> = tags.iter().map(|t| big_body(t)).collect();
        c.send_batch("mid", &bodies, 0).expect("send batch");
        all.extend(tags);
    }
    drop(c);
    b.kill9();

    let dir = shard_dir(&b.data_dir, 0);
    let segs = segments(&dir);
    assert!(segs.len() >= 2 && !records(&segs[1]).is_empty(), "expected data in two segments: {segs:?}");
    let seg0 = &segs[0];
    let recs = records(seg0);
    let enq: Vec<RecordLoc> = recs.iter().copied().filter(|r| r.rtype == rtype::ENQUEUED).collect();
    let victim = enq[enq.len() / 2];
    let lost: BTreeSet<String> = enqueued_bodies(&read_payload(seg0, &victim)).iter().map(|b| tag_of(b)).collect();
    assert_eq!(lost.len(), 16);
    let at = victim.offset + (victim.end() - victim.offset) / 2;
    overwrite(seg0, at, &[byte_at(seg0, at) ^ 0xff]);

    // Without --repair: refused, naming the file and the record's offset.
    let r = run_cmqd_expecting_refusal(&b.data_dir, &args, Duration::from_secs(30));
    assert!(!r.started, "cmqd started on a log corrupt in the middle; its log:\n{}", r.stderr);
    assert!(r.status.is_some_and(|s| !s.success()), "cmqd did not exit with an error: {:?}", r.status);
    let named = format!("{} at file offset {}", seg0.display(), victim.offset);
    assert!(r.stderr.contains(&named), "refusal does not name {named:?}:\n{}", r.stderr);
    assert!(r.stderr.contains("--repair"), "refusal does not point at --repair:\n{}", r.stderr);

    // With --repair: starts, reports the skip, keeps every undamaged message.
    let mut repair_args = args.to_vec();
    repair_args.push("--repair");
    let mut repaired = Broker::start_in(&b.data_dir, &repair_args);
    let log = repaired.stderr();
    assert!(log.contains("WAL repair: skipped") && log.contains(&named), "repair not reported for {named:?}:\n{log}");
    let mut c = connect(&repaired);
    let got = drain(&mut c, "mid");
    for body in &got {
        assert_eq!(body, &big_body(&tag_of(body)), "a repaired message's body differs: {}", tag_of(body));
    }
    let got_tags: BTreeSet<String> = got.iter().map(|b| tag_of(b)).collect();
    assert_eq!(got.len(), got_tags.len(), "a message was delivered twice");
    let expected: BTreeSet<String> = all.difference(&lost).cloned().collect();
    let missing: Vec<&String> = expected.difference(&got_tags).collect();
    let extra: Vec<&String> = got_tags.difference(&expected).collect();
    assert!(missing.is_empty(), "repair lost undamaged messages: {missing:?}");
    assert!(extra.is_empty(), "messages of the damaged record were delivered: {extra:?}");
    drop(c);
    repaired.kill9();

    // Repair rewrote the damage: a normal start works again.
    b.restart();
    assert!(!b.stderr().contains("corruption"), "log still corrupt after repair:\n{}", b.stderr());
}
