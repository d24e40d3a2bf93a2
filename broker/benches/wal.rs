//! WAL throughput: one fdatasync per record vs group commit (64 records per
//! fdatasync), 64 B and 1 KiB records, io_uring vs flusher-thread backend;
//! plus the hot-path read. Run: `cargo bench -p cmq-broker --bench wal`.
//! Figures are records/s (criterion's "thrpt", elements per second).
//! `WAL_AB=1`, `WAL_LAT=1` and `WAL_OPEN=1` select the hand-rolled modes
//! below.

use std::time::Duration;

use cmq_broker::storage::{Backend, LogPos, Wal, WalConfig, WalError};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

/// Keep at most this many segments on disk during a run.
const SEGMENTS_KEPT: usize = 3;
const GROUP_RECORDS: usize = 64;

fn open(dir: &std::path::Path, backend: Backend) -> Option<Wal> {
    match Wal::open(dir, WalConfig { backend, ..WalConfig::default() }) {
        Ok((w, _)) => Some(w),
        Err(WalError::UringUnavailable(e)) => {
            eprintln!("io_uring unavailable, skipping: {e}");
            None
        }
        Err(e) => panic!("open WAL: {e}"),
    }
}

fn commit(wal: &mut Wal, out: &mut Vec<(cmq_broker::storage::BatchId, Result<(), WalError>)>) {
    flush(wal, out, true);
}

fn flush(wal: &mut Wal, out: &mut Vec<(cmq_broker::storage::BatchId, Result<(), WalError>)>, sync: bool) {
    wal.submit(sync);
    assert!(wal.wait(out, Some(Duration::from_secs(30))));
    for (_, r) in out.drain(..) {
        r.expect("batch failed");
    }
    if wal.segment_stats().len() > SEGMENTS_KEPT {
        let end = wal.end();
        wal.release_before(end);
    }
}

fn bench_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_commit");
    g.sample_size(20).measurement_time(Duration::from_secs(6)).warm_up_time(Duration::from_secs(1));
    for (backend, bname) in [(Backend::IoUring, "io_uring"), (Backend::Thread, "thread")] {
        for size in [64usize, 1024] {
            let d = tempfile::tempdir().expect("tempdir");
            let Some(mut wal) = open(d.path(), backend) else { continue };
            let rec = vec![0x5au8; size];
            let mut out = Vec::new();

            g.throughput(Throughput::Elements(1));
            g.bench_function(BenchmarkId::new(format!("{bname}/fsync_per_record"), size), |b| {
                b.iter(|| {
                    wal.append(1, &[&rec]).expect("append");
                    commit(&mut wal, &mut out);
                })
            });

            g.throughput(Throughput::Elements(GROUP_RECORDS as u64));
            g.bench_function(BenchmarkId::new(format!("{bname}/group_{GROUP_RECORDS}"), size), |b| {
                b.iter(|| {
                    for _ in 0..GROUP_RECORDS {
                        wal.append(1, &[&rec]).expect("append");
                    }
                    commit(&mut wal, &mut out);
                })
            });

            // No fdatasync: the inline write into the page cache (the
            // backend is not involved any more).
            g.bench_function(BenchmarkId::new(format!("{bname}/nosync_{GROUP_RECORDS}"), size), |b| {
                b.iter(|| {
                    for _ in 0..GROUP_RECORDS {
                        wal.append(1, &[&rec]).expect("append");
                    }
                    flush(&mut wal, &mut out, false);
                })
            });
        }
    }
    g.finish();
}

fn bench_read(c: &mut Criterion) {
    let d = tempfile::tempdir().expect("tempdir");
    let Some(mut wal) = open(d.path(), Backend::Thread) else { return };
    let rec = vec![7u8; 1024];
    let mut pos: Vec<LogPos> = Vec::new();
    for _ in 0..4096 {
        pos.push(wal.append(1, &[&rec]).expect("append"));
    }
    let mut out = Vec::new();
    commit(&mut wal, &mut out);
    let mut g = c.benchmark_group("wal_read");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("mmap_1KiB", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let s = wal.read(pos[i], 1024).expect("read");
            std::hint::black_box(s[0])
        })
    });
    g.finish();
}

criterion_group!(benches, bench_commit, bench_read);

/// Process CPU time (user + system, all threads including io_uring's
/// workers), from /proc/self/stat, in clock ticks (100 per second).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12) // utime, stime
}

/// `WAL_AB=1 cargo bench -p cmq-broker --bench wal`: the two backends
/// interleaved in short alternating rounds, so that the disk's slow
/// phases (fdatasync here varies between ~0.13 and ~3 ms over minutes)
/// hit both alike. Prints the median and p99 latency per commit, the
/// records/s at the median, and CPU time per record.
fn ab() {
    const ROUNDS: usize = 20;
    const ITERS_PER_ROUND: usize = 200;
    let cases: [(&str, usize, usize, bool); 3] = [
        ("fsync_per_record", 64, 1, true),
        ("group_64 (sync)", 1024, GROUP_RECORDS, true),
        ("nosync_64", 1024, GROUP_RECORDS, false),
    ];
    for (name, size, per_iter, sync) in cases {
        let rec = vec![0x5au8; size];
        let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
        let backends = [Backend::IoUring, Backend::Thread];
        let mut wals: Vec<Wal> = Vec::new();
        for (d, b) in dirs.iter().zip(backends) {
            match open(d.path(), b) {
                Some(w) => wals.push(w),
                None => return,
            }
        }
        let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut cpu = [0u64; 2];
        let mut out = Vec::new();
        for round in 0..ROUNDS {
            for k in 0..2 {
                let which = if round % 2 == 0 { k } else { 1 - k };
                let wal = &mut wals[which];
                let c0 = cpu_ticks();
                for _ in 0..ITERS_PER_ROUND {
                    let t = std::time::Instant::now();
                    for _ in 0..per_iter {
                        wal.append(1, &[&rec]).expect("append");
                    }
                    flush(wal, &mut out, sync);
                    lat[which].push(t.elapsed().as_secs_f64() * 1e6);
                }
                cpu[which] += cpu_ticks() - c0;
            }
        }
        for (k, b) in ["io_uring", "thread"].iter().enumerate() {
            let v = &mut lat[k];
            v.sort_by(|a, b| a.total_cmp(b));
            let med = v[v.len() / 2];
            let p99 = v[v.len() * 99 / 100];
            let records = (v.len() * per_iter) as f64;
            println!(
                "{name:18} {size:5}B {b:9} median {med:8.1} us  p99 {p99:8.1} us  {:9.0} records/s  cpu {:5.2} us/record",
                per_iter as f64 * 1e6 / med,
                cpu[k] as f64 * 1e4 / records,
            );
        }
    }
}

/// Process CPU time of every thread (io_uring's io-wq workers included),
/// in nanoseconds, from /proc/self/task/*/schedstat (first field).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// One case of `lat()`: `records` records of `record_bytes` per batch,
/// submitted with `sync`; with `behind_sync`, the measured (async) batch
/// is submitted right after a one-record sync batch, so it meets a running
/// fdatasync.
struct LatCase {
    name: &'static str,
    records: usize,
    record_bytes: usize,
    sync: bool,
    behind_sync: bool,
    iters_per_round: usize,
}

/// Latencies of one backend in one case, microseconds.
#[derive(Default)]
struct LatSamples {
    /// Until `poll_completions` reported the batch (completions come in id
    /// order: what a batch-id adapter sees).
    complete: Vec<f64>,
    /// Until the end the batch needs (`written_end` for async,
    /// `durable_end` for sync) passed it: what a position-based adapter
    /// sees.
    end: Vec<f64>,
    /// The `submit` call itself: how long the caller's thread is busy.
    call: Vec<f64>,
    /// The same, for the calls that started an fdatasync.
    call_syncing: Vec<f64>,
    cpu_ns: u64,
    records: u64,
}

/// `WAL_LAT=1 cargo bench -p cmq-broker --bench wal`: latency from
/// `submit` to the batch's completion, measured one batch at a time (the
/// "plain" case: nothing else in flight): an async batch completes when
/// its bytes are written to the OS, a sync one when they are fdatasync'd.
/// Appends are not timed; CPU per record counts everything (appends,
/// submit, every thread of the process). The two backends run
/// interleaved in short alternating rounds so that the disk's slow phases
/// hit both alike.
fn lat() {
    const ROUNDS: usize = 20;
    let case = |name, records, record_bytes, sync, behind_sync, iters_per_round| LatCase {
        name,
        records,
        record_bytes,
        sync,
        behind_sync,
        iters_per_round,
    };
    let cases = [
        case("submit->written", 1, 64, false, false, 1000),
        case("submit->written", 64, 64, false, false, 1000),
        case("submit->durable", 1, 64, true, false, 100),
        case("submit->durable", 64, 64, true, false, 100),
        case("written, behind fsync", 1, 64, false, true, 100),
        case("submit->written", 16, 64 << 10, false, false, 20),
    ];
    for case in cases {
        let rec = vec![0x5au8; case.record_bytes];
        let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
        let backends = [Backend::IoUring, Backend::Thread];
        let mut wals: Vec<Wal> = Vec::new();
        for (d, b) in dirs.iter().zip(backends) {
            match open(d.path(), b) {
                Some(w) => wals.push(w),
                None => return,
            }
        }
        let mut res = [LatSamples::default(), LatSamples::default()];
        let mut out = Vec::new();
        for round in 0..ROUNDS {
            for k in 0..2 {
                let which = if round % 2 == 0 { k } else { 1 - k };
                let wal = &mut wals[which];
                let r = &mut res[which];
                let c0 = cpu_ns();
                for _ in 0..case.iters_per_round {
                    if case.behind_sync {
                        wal.append(1, &[&rec]).expect("append");
                        wal.submit(true);
                        r.records += 1;
                    }
                    for _ in 0..case.records {
                        wal.append(1, &[&rec]).expect("append");
                    }
                    r.records += case.records as u64;
                    let target = wal.end();
                    let reached = |wal: &Wal| {
                        if case.sync {
                            wal.durable_end() >= target
                        } else {
                            wal.written_end() >= target
                        }
                    };
                    let t = std::time::Instant::now();
                    let syncs = wal.sync_count();
                    let id = wal.submit(case.sync).expect("a batch");
                    let call = t.elapsed().as_secs_f64() * 1e6;
                    r.call.push(call);
                    if wal.sync_count() > syncs {
                        r.call_syncing.push(call);
                    }
                    let mut end_us = None;
                    let mut complete_us = None;
                    while complete_us.is_none() {
                        wal.poll_completions(&mut out);
                        let us = t.elapsed().as_secs_f64() * 1e6;
                        if end_us.is_none() && reached(wal) {
                            end_us = Some(us);
                        }
                        for (i, res) in out.drain(..) {
                            res.expect("batch failed");
                            if i == id {
                                complete_us = Some(us);
                            }
                        }
                        if complete_us.is_none() {
                            // Returns when everything is done, at the latest
                            // when the measured batch (the last) completes.
                            assert!(wal.wait(&mut out, Some(Duration::from_secs(30))));
                            let us = t.elapsed().as_secs_f64() * 1e6;
                            end_us = end_us.or(Some(us));
                            complete_us = Some(us);
                            for (_, res) in out.drain(..) {
                                res.expect("batch failed");
                            }
                        }
                    }
                    r.complete.extend(complete_us);
                    r.end.extend(end_us);
                    // The next iteration starts with nothing in flight.
                    assert!(wal.wait(&mut out, Some(Duration::from_secs(30))));
                    for (_, res) in out.drain(..) {
                        res.expect("batch failed");
                    }
                    if wal.segment_stats().len() > SEGMENTS_KEPT {
                        let end = wal.end();
                        wal.release_before(end);
                    }
                }
                r.cpu_ns += cpu_ns() - c0;
            }
        }
        for (k, b) in ["io_uring", "thread"].iter().enumerate() {
            let r = &mut res[k];
            let pct = |v: &mut Vec<f64>, p: usize| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[(v.len() * p / 100).min(v.len() - 1)]
            };
            let size = if case.record_bytes >= 1024 {
                format!("{} KiB", case.record_bytes >> 10)
            } else {
                format!("{} B", case.record_bytes)
            };
            let syncing = if r.call_syncing.is_empty() {
                "-".to_string()
            } else {
                let n = r.call_syncing.len();
                format!("{n} x p50 {:.1} p99 {:.1}", pct(&mut r.call_syncing, 50), pct(&mut r.call_syncing, 99))
            };
            println!(
                "{:22} {:2} x {size:6} {b:9} complete p50 {:8.1} p90 {:8.1} p99 {:8.1} us | end p50 {:8.1} p99 {:8.1} us | \
                 cpu {:6.2} us/record | submit call p50 {:.1} p99 {:.1} us, starting an fsync: {syncing}",
                case.name,
                case.records,
                pct(&mut r.complete, 50),
                pct(&mut r.complete, 90),
                pct(&mut r.complete, 99),
                pct(&mut r.end, 50),
                pct(&mut r.end, 99),
                r.cpu_ns as f64 / 1e3 / r.records as f64,
                pct(&mut r.call, 50),
                pct(&mut r.call, 99),
            );
        }
    }
}

/// Makes a log of one default-size segment holding about `data_bytes` of
/// 1 KiB records (all durable), followed by `empty_after` empty segments
/// (as the housekeeper prepares them). Returns the number of records.
fn build_log(dir: &std::path::Path, data_bytes: u64, empty_after: usize) -> u64 {
    let (mut wal, _) = Wal::open(dir, WalConfig::default()).expect("open WAL");
    let start = wal.end().0;
    let rec = vec![0xa5u8; 1024];
    let mut n = 0u64;
    let mut out = Vec::new();
    while wal.end().0 - start < data_bytes {
        wal.append(1, &[&rec]).expect("append");
        n += 1;
        if n.is_multiple_of(4096) {
            wal.submit(false);
        }
    }
    commit(&mut wal, &mut out);
    let stats = wal.segment_stats();
    let cap = stats[0].capacity;
    assert!(wal.end().0 < cap, "the data must fit one segment");
    drop(wal);
    // Past half fill the WAL prepared the next segment: remove it, so that
    // each case holds exactly the segments it names.
    for s in &stats[1..] {
        std::fs::remove_file(dir.join(format!("{:020}.log", s.base.0))).expect("remove prepared segment");
    }
    // Empty segments exactly as `create_segment` writes them: fallocated,
    // 32-byte header (magic, version 1, base, capacity, CRC32C).
    for k in 1..=empty_after as u64 {
        let base = k * cap;
        let path = dir.join(format!("{base:020}.log"));
        let f = std::fs::File::create(&path).expect("create segment");
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, cap).expect("fallocate");
        let mut h = Vec::with_capacity(32);
        h.extend_from_slice(b"cmq-wal\n");
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&base.to_le_bytes());
        h.extend_from_slice(&cap.to_le_bytes());
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        std::os::unix::fs::FileExt::write_all_at(&f, &h, 0).expect("header");
        f.sync_all().expect("fsync");
    }
    n
}

/// Drops the page cache of every file in `dir` (they are all synced), so
/// the next open reads from the disk: a cold start without dropping the
/// whole machine's cache.
fn evict(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        if let Ok(f) = std::fs::File::open(e.path()) {
            let _ = f.sync_all();
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        }
    }
}

/// `WAL_OPEN=1 cargo bench -p cmq-broker --bench wal`: start-up cost.
/// Median wall time of `Wal::open` and of the `replay` that follows, and
/// of `Wal::open_replay` (both in one pass), over a few runs, warm (pages
/// cached) and cold (the log's pages evicted).
fn open_times() {
    const RUNS: usize = 15;
    let cases: [(&str, u64, usize); 4] = [
        ("1 segment, 0 B data", 0, 0),
        ("1 segment, 1 MiB data", 1 << 20, 0),
        ("1 segment, 60 MiB data", 60 << 20, 0),
        ("4 empty segments", 0, 3),
    ];
    for (name, data, empty) in cases {
        let d = tempfile::tempdir().expect("tempdir");
        let records = build_log(d.path(), data, empty);
        for cold in [false, true] {
            let (mut open_ms, mut replay_ms, mut fused_ms) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RUNS {
                if cold {
                    evict(d.path());
                }
                let t = std::time::Instant::now();
                let (wal, rep) = Wal::open(d.path(), WalConfig::default()).expect("open");
                open_ms.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(rep.records, records);
                let t = std::time::Instant::now();
                let mut bytes = 0usize;
                wal.replay(LogPos(0), |_, _, b| {
                    bytes += b.len();
                    Ok::<_, std::convert::Infallible>(())
                })
                .expect("replay");
                replay_ms.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(bytes as u64, records * 1024);
                drop(wal);
                if cold {
                    evict(d.path());
                }
                let t = std::time::Instant::now();
                let mut bytes = 0usize;
                let (wal, _) = Wal::open_replay(d.path(), WalConfig::default(), LogPos(0), |_, _, b| {
                    bytes += b.len();
                    Ok::<_, std::convert::Infallible>(())
                })
                .expect("open_replay");
                fused_ms.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(bytes as u64, records * 1024);
                drop(wal);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            println!(
                "{name:24} {:4}  open {:7.2} ms + replay {:6.2} ms  | open_replay {:7.2} ms  ({records} records)",
                if cold { "cold" } else { "warm" },
                med(&mut open_ms),
                med(&mut replay_ms),
                med(&mut fused_ms),
            );
        }
    }
}

fn main() {
    if std::env::var_os("WAL_AB").is_some() {
        ab();
        return;
    }
    if std::env::var_os("WAL_LAT").is_some() {
        lat();
        return;
    }
    if std::env::var_os("WAL_OPEN").is_some() {
        open_times();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
