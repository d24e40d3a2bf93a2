//! One flipped byte in acknowledged data is corruption, never a torn write
//! (issue 9, case 4): about 20 MB of acknowledged sync messages, cmqd
//! killed with SIGKILL, one byte flipped at a random offset in the middle
//! of the newest segment. cmqd must refuse to start, naming `--repair`, the
//! file and the offset of the damaged record; `--repair` must start and
//! deliver every acknowledged message but those of the damaged record, and
//! the quarantine file must hold exactly the bytes it cut.
//!
//! Each run tries several random offsets (`CMQ_CORRUPTION_CASES`, default
//! 4) on copies of one log: uniformly in the middle half of the data, and,
//! since a record header is 1% of the bytes, every second case in a
//! record header (its length, type or checksums), every fourth in a
//! durable mark. The seed is printed; `CMQ_CORRUPTION_SEED=<seed>` replays
//! a run.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cmq_client::{Client, QueueAttributesUpdate, Request, Response, SendMessage};
use cmq_integration_tests::wal_files::{
    enqueued_bodies, newest_data_segment, read_payload, rtype, run_cmqd_expecting_refusal, shard_dir, RecordLoc,
    QUARANTINE_DIR, RECORD_HEADER_BYTES,
};
use cmq_integration_tests::Broker;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Acknowledged messages written before the crash: about 21 MB of log.
const MESSAGES: u32 = 20_000;
const BODY_BYTES: usize = 1000;
/// Sends in flight on the producer's connection.
const WINDOW: u32 = 64;
const CASES_DEFAULT: usize = 4;
const QUEUE: &str = "acked";
const ARGS: [&str; 4] = ["--shards", "1", "--flush", "sync"];

/// Message `i`'s body: its number, then filler derived from it.
fn body(i: u32) -> Bytes {
    let mut v = format!("m{i:06}|").into_bytes();
    let mut x = i.wrapping_mul(2_654_435_761).wrapping_add(1);
    while v.len() < BODY_BYTES {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(b'a' + (x % 26) as u8);
    }
    Bytes::from(v)
}

fn index_of(b: &[u8]) -> Option<u32> {
    let tag = b.strip_prefix(b"m")?.get(..6)?;
    std::str::from_utf8(tag).ok()?.parse().ok()
}

/// Sends every message, `WINDOW` at a time; returns those acknowledged.
fn produce(c: &mut Client) -> BTreeSet<u32> {
    let mut acked = BTreeSet::new();
    let mut next = 0;
    while next < MESSAGES {
        let mut tickets = Vec::new();
        for i in next..(next + WINDOW).min(MESSAGES) {
            let req = Request::SendMessage(SendMessage {
                queue: QUEUE.into(),
                delay_seconds: 0,
                body: body(i),
                ..Default::default()
            });
            tickets.push((i, c.submit(&req).expect("submit")));
        }
        next += tickets.len() as u32;
        c.flush().expect("flush");
        for (i, t) in tickets {
            match c.wait(t).unwrap_or_else(|e| panic!("send {i}: {e}")) {
                Response::SendMessage(_) => {
                    acked.insert(i);
                }
                other => panic!("send {i} answered with {:?}", other.opcode()),
            }
        }
    }
    acked
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// Every message in the queue, each received once (a long lease).
fn drain(c: &mut Client) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let got = c.receive_batch(QUEUE, 16, Some(0)).expect("receive");
        if got.is_empty() {
            return out;
        }
        out.extend(got.into_iter().map(|m| m.body));
    }
}

/// The messages a record holds (none for the WAL's own records).
fn messages_in(seg: &Path, rec: &RecordLoc) -> BTreeSet<u32> {
    if rec.rtype != rtype::ENQUEUED {
        return BTreeSet::new();
    }
    enqueued_bodies(&read_payload(seg, rec)).iter().map(|b| index_of(b).expect("a message of this test")).collect()
}

/// Case `n`'s offset, in the middle half of the data: anywhere (even
/// cases), in a record header (`n % 4 == 1`), in a durable mark (`n % 4 ==
/// 3`).
fn pick_offset(rng: &mut StdRng, n: usize, recs: &[RecordLoc], data_end: u64) -> u64 {
    let middle: Vec<&RecordLoc> =
        recs.iter().filter(|r| r.offset >= data_end / 4 && r.end() <= data_end * 3 / 4).collect();
    let marks: Vec<&&RecordLoc> = middle.iter().filter(|r| r.rtype == rtype::WAL).collect();
    match n % 4 {
        1 => middle[rng.random_range(0..middle.len())].offset + rng.random_range(0..RECORD_HEADER_BYTES),
        3 if !marks.is_empty() => {
            let m = marks[rng.random_range(0..marks.len())];
            m.offset + rng.random_range(0..u64::from(m.len))
        }
        _ => rng.random_range(data_end / 4..data_end * 3 / 4),
    }
}

struct Case {
    offset: u64,
    mask: u8,
    rec: RecordLoc,
}

/// Flips the byte of `case` in a copy of `pristine`, then checks the
/// refusal, the repair and the quarantine.
fn check_case(pristine: &Path, seg_name: &std::ffi::OsStr, case: &Case, acked: &BTreeSet<u32>) {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    copy_dir(pristine, &data);
    let shard = shard_dir(&data, 0);
    let seg = shard.join(seg_name);
    // The messages of the record, read before the flip can change them.
    let lost = messages_in(&seg, &case.rec);
    let mut bytes = std::fs::read(&seg).expect("read segment");
    bytes[case.offset as usize] ^= case.mask;
    std::fs::write(&seg, &bytes).expect("write segment");

    let r = run_cmqd_expecting_refusal(&data, &ARGS, CALL_TIMEOUT);
    assert!(!r.started, "cmqd started on acknowledged data with a flipped byte; its log:\n{}", r.stderr);
    assert!(r.status.is_some_and(|s| !s.success()), "cmqd did not exit with an error: {:?}", r.status);
    let named = format!("{} at file offset {}", seg.display(), case.rec.offset);
    assert!(r.stderr.contains(&named), "the refusal does not name {named:?}:\n{}", r.stderr);
    assert!(r.stderr.contains("--repair"), "the refusal does not point at --repair:\n{}", r.stderr);

    let mut args = ARGS.to_vec();
    args.push("--repair");
    let mut b = Broker::start_in(&data, &args);
    assert!(b.stderr().contains("WAL repair: skipped"), "repair not reported:\n{}", b.stderr());
    let mut c = Client::connect_with_timeout(b.addr, Some(CALL_TIMEOUT)).expect("connect");
    let mut got = BTreeSet::new();
    for m in drain(&mut c) {
        let i = index_of(&m).unwrap_or_else(|| panic!("a message this test never sent: {:?}", &m[..m.len().min(16)]));
        assert_eq!(m, body(i), "message {i} delivered with a different body");
        assert!(got.insert(i), "message {i} delivered twice");
    }
    let expected: BTreeSet<u32> = acked.difference(&lost).copied().collect();
    let missing: Vec<&u32> = expected.difference(&got).collect();
    let extra: Vec<&u32> = got.difference(&expected).collect();
    assert!(missing.is_empty(), "repair lost {} acknowledged message(s) outside the damaged record: {missing:?}", {
        missing.len()
    });
    assert!(extra.is_empty(), "delivered messages of the damaged record, or never acknowledged: {extra:?}");

    let saved = shard.join(QUARANTINE_DIR).join(format!("{}@{}", seg_name.to_string_lossy(), case.rec.offset));
    let cut = std::fs::read(&saved).unwrap_or_else(|e| panic!("quarantine file {}: {e}", saved.display()));
    assert_eq!(cut, bytes[case.rec.offset as usize..case.rec.end() as usize], "the quarantine does not hold the cut");
    eprintln!("  refused naming the offset; repair delivered {} of {}, lost {}", got.len(), acked.len(), lost.len());
    drop(c);
    b.kill9();
}

#[test]
fn a_flipped_byte_in_acknowledged_data_is_refused_and_repair_loses_only_its_record() {
    let seed = std::env::var("CMQ_CORRUPTION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let cases = std::env::var("CMQ_CORRUPTION_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES_DEFAULT);
    eprintln!("corruption: seed {seed} ({cases} cases; CMQ_CORRUPTION_SEED={seed} replays them)");
    let mut b = Broker::start(&ARGS);
    let mut c = Client::connect_with_timeout(b.addr, Some(CALL_TIMEOUT)).expect("connect");
    c.create_queue(QUEUE, &QueueAttributesUpdate { visibility_timeout: Some(600), ..Default::default() })
        .expect("create");
    let acked = produce(&mut c);
    drop(c);
    b.kill9();

    let (seg, recs) = newest_data_segment(&shard_dir(&b.data_dir, 0)).expect("a segment with records");
    let data_end = recs.last().map_or(0, RecordLoc::end);
    assert!(data_end >= 20_000_000, "only {data_end} bytes of log: the test needs about 20 MB");
    let seg_name = seg.file_name().expect("a file name").to_owned();
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0..cases {
        let offset = pick_offset(&mut rng, n, &recs, data_end);
        let mask = 1u8 << rng.random_range(0..8);
        let rec = *recs.iter().find(|r| r.offset <= offset && offset < r.end()).expect("a record holds every byte");
        eprintln!(
            "case {n}: byte {offset} ^ {mask:#04x} in the type-{} record at {}..{} ({} bytes into it)",
            rec.rtype,
            rec.offset,
            rec.end(),
            offset - rec.offset
        );
        check_case(&b.data_dir, &seg_name, &Case { offset, mask, rec }, &acked);
    }
}
