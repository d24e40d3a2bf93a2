//! WAL tests on real files: inline writes, segment rolls, group commit,
//! the torn-window and segment rules, replay, torn tails, corruption,
//! repair, release, injected EIO and real ENOSPC, the completion token,
//! the data-directory lock across kill -9. Every test that does I/O runs
//! on both backends.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cmq_broker::storage::{
    AppendClass, Backend, BatchId, DataDirLock, LockError, LogPos, Wal, WalConfig, WalError, NO_SPACE_RETRY_MS,
    RECORD_BYTES_MAX, RECORD_HEADER_BYTES, ROLL_SYNC_AHEAD_MIN_BYTES, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES,
    SPARE_SEGMENT_BYTES, SYNC_AHEAD_BYTES, TORN_WINDOW_BYTES,
};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;
type Completions = Vec<(BatchId, Result<(), WalError>)>;

// ---------------------------------------------------------------- helpers

static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            if let Ok(mut v) = LOGGED.lock() {
                v.push(format!("{} {}", r.level(), r.args()));
            }
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn init_log() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Warn);
}

fn logged_containing(needle: &str) -> Vec<String> {
    LOGGED.lock().map(|v| v.iter().filter(|l| l.contains(needle)).cloned().collect()).unwrap_or_default()
}

fn cfg(backend: Backend) -> WalConfig {
    WalConfig { segment_bytes: SEGMENT_BYTES_MIN, backend, ..WalConfig::default() }
}

/// Opens, or returns None (after saying why) when io_uring is not usable
/// on this machine, so the io_uring variants skip instead of failing.
fn open(dir: &Path, c: WalConfig) -> Res<Option<Wal>> {
    match Wal::open(dir, c) {
        Ok((w, _)) => Ok(Some(w)),
        Err(WalError::UringUnavailable(e)) => {
            eprintln!("skipped: io_uring unavailable here: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn wait_all(wal: &mut Wal) -> Completions {
    let mut out = Vec::new();
    assert!(wal.wait(&mut out, Some(Duration::from_secs(60))), "batches did not complete");
    out
}

fn body(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

fn replay_all(wal: &Wal) -> Res<Vec<(LogPos, u8, Vec<u8>)>> {
    let mut v = Vec::new();
    wal.replay(LogPos(0), |p, t, b| {
        v.push((p, t, b.to_vec()));
        Ok::<_, std::convert::Infallible>(())
    })?;
    Ok(v)
}

fn seg_files(dir: &Path) -> Res<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    Ok(v)
}

/// Overwrites bytes of a segment file (the page cache is what the WAL
/// reads, so no fsync: the many-offset tests would spend minutes in it).
fn write_at(path: &Path, off: u64, bytes: &[u8]) -> Res {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(bytes, off)?;
    Ok(())
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() -> super::Res { super::$name(super::Backend::IoUring) } )*
        }
        mod thread {
            $( #[test] fn $name() -> super::Res { super::$name(super::Backend::Thread) } )*
        }
    };
}

both_backends!(
    inline_writes_are_visible_before_any_fsync,
    torn_window_and_segment_rule_hold,
    async_data_is_synced_ahead_of_a_roll,
    eio_fails_the_wal_behind_a_running_fsync_and_on_fsync,
    append_read_replay_across_rolls,
    group_commit_completes_in_order,
    fsyncs_coalesce,
    fsync_only_batch,
    completion_token_fires_in_mio,
    release_deletes_only_whole_segments,
    fault_file_refuses_writes_then_recovers,
    full_disk_fails_only_new_data,
    eio_on_segment_creation_fails_the_wal,
    real_enospc_on_tmpfs,
    huge_batch_is_split_and_rolls_inside_one_flight,
);

// ------------------------------------------------------------------ tests

/// `submit` writes on the calling thread: the bytes are in the file (seen
/// through another descriptor, i.e. the page cache) and async batches are
/// complete when it returns, before any fdatasync; a later open replays
/// them.
fn inline_writes_are_visible_before_any_fsync(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    let durable = wal.durable_end();
    let mut recs = Vec::new();
    let mut ids = Vec::new();
    for i in 0..200u64 {
        let data = body(i, 500);
        recs.push((wal.append(1 + (i % 3) as u8, &[&data])?, data));
        if i % 10 == 9 {
            let before = wal.written_end();
            ids.push(wal.submit(false).ok_or("no batch")?);
            assert!(wal.written_end() > before);
            assert_eq!(wal.written_end(), wal.end(), "written when submit returns");
        }
    }
    assert_eq!(wal.sync_count(), 0);
    assert_eq!(wal.durable_end(), durable);
    // Complete without any wakeup or wait.
    let mut out = Vec::new();
    let p = wal.poll_completions(&mut out);
    assert_eq!(out.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    out.into_iter().try_for_each(|(_, r)| r)?;
    assert_eq!(p.written_end, wal.end());
    assert_eq!(p.durable_end, durable);
    assert_eq!(wal.in_flight(), 0);
    for (p, data) in &recs {
        assert_eq!(wal.read(*p, data.len() as u32)?, &data[..]);
    }
    let got = replay_all(&wal)?;
    assert_eq!(got.iter().map(|(p, _, b)| (*p, b.clone())).collect::<Vec<_>>(), recs);
    let seg = std::fs::File::open(&seg_files(d.path())?[0])?;
    for (p, data) in &recs {
        let mut buf = vec![0u8; data.len()];
        seg.read_exact_at(&mut buf, p.0)?;
        assert_eq!(&buf, data, "not in the file at {}", p.0);
    }
    // A sync batch now covers all of it with one fdatasync.
    wal.append(1, &[b"last"])?;
    wal.submit(true).ok_or("no batch")?;
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    assert_eq!(wal.sync_count(), 1);
    assert!(wal.durable_end() >= wal.records_end(), "not all durable");
    drop(wal);
    let (wal, rep) = Wal::open(d.path(), cfg(b))?;
    assert_eq!(rep.records, 201);
    assert_eq!(replay_all(&wal)?.len(), 201);
    Ok(())
}

/// Checks the two write rules from outside: at most TORN_WINDOW_BYTES
/// written but not durable, and no byte written into a segment while an
/// older one holds bytes that are not durable. Also the ends' order.
fn check_write_rules(wal: &Wal) {
    let (w, dur, end) = (wal.written_end().0, wal.synced_end().0, wal.end().0);
    assert!(wal.durable_end().0 <= dur, "reported durable past the synced end");
    assert!(dur <= w && w <= end, "durable {dur} written {w} end {end}");
    let stats = wal.segment_stats();
    let seg_of = |pos: u64| stats.iter().rposition(|s| s.base.0 < pos);
    for (i, s) in stats.iter().enumerate() {
        if s.base.0 + s.capacity < w {
            let data_end = s.base.0 + s.len;
            assert!(dur >= data_end, "segment {i} holds unsynced bytes ({dur}..{data_end}) while {w} is written");
        }
    }
    if seg_of(w) == seg_of(dur.max(1)) {
        assert!(w - dur <= TORN_WINDOW_BYTES, "{} bytes written but not durable", w - dur);
    }
}

fn torn_window_and_segment_rule_hold(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    // Segments of three windows, so a window fits without a roll.
    let c = WalConfig { segment_bytes: 3 * TORN_WINDOW_BYTES, ..cfg(b) };
    let Some(mut wal) = open(d.path(), c)? else { return Ok(()) };
    let mb = 1usize << 20;
    // Async only, nothing collected: the WAL starts an fdatasync by itself
    // at SYNC_AHEAD_BYTES, and holds writes back at the window.
    let n = (TORN_WINDOW_BYTES as usize / mb) + 8;
    for i in 0..n {
        wal.append(1, &[&body(i as u64, mb)])?;
        wal.submit(false).ok_or("no batch")?;
        check_write_rules(&wal);
        let outstanding = (i as u64 + 1) * (mb as u64 + RECORD_HEADER_BYTES);
        assert_eq!(wal.sync_count(), u64::from(outstanding >= SYNC_AHEAD_BYTES), "after {outstanding} bytes");
    }
    assert!(wal.written_end() < wal.end(), "the window held nothing back");
    assert!(wal.written_end().0 - wal.synced_end().0 <= TORN_WINDOW_BYTES);
    // Collecting the fdatasync lets the rest out.
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    assert_eq!(wal.written_end(), wal.end());
    check_write_rules(&wal);

    // Across two rolls, collecting now and then.
    let mut pos = Vec::new();
    for i in 0..(7 * TORN_WINDOW_BYTES as usize / mb) {
        pos.push(wal.append(2, &[&body(i as u64, mb)])?);
        wal.submit(i % 5 == 0).ok_or("no batch")?;
        check_write_rules(&wal);
        if i % 3 == 0 {
            let mut out = Vec::new();
            wal.poll_completions(&mut out);
            out.into_iter().try_for_each(|(_, r)| r)?;
            check_write_rules(&wal);
        }
    }
    assert!(wal.segment_stats().len() >= 3);
    wal.submit(true);
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    check_write_rules(&wal);
    assert!(wal.durable_end() >= wal.records_end(), "not all durable");
    for (i, p) in pos.iter().enumerate().step_by(17) {
        assert_eq!(wal.read(*p, mb as u32)?, &body(i as u64, mb)[..]);
    }
    Ok(())
}

/// Async data only: the WAL syncs ahead by itself, sooner as the segment
/// fills, so a roll (whose first write waits for the old segment to be
/// durable) finds little left to sync.
fn async_data_is_synced_ahead_of_a_roll(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    let rec = 256usize << 10;
    for i in 0..400u64 {
        wal.append(1, &[&body(i, rec)])?;
        wal.submit(false).ok_or("no batch")?;
        // Nothing runs after a wait: whatever is outstanding did not call
        // for a sync.
        for (_, r) in wait_all(&mut wal) {
            r?;
        }
        check_write_rules(&wal);
        let (w, dur) = (wal.written_end().0, wal.synced_end().0);
        let stats = wal.segment_stats();
        let seg = stats.iter().rfind(|s| s.base.0 < w).ok_or("no segment")?;
        let left = seg.base.0 + seg.capacity - w;
        let ahead_at = SYNC_AHEAD_BYTES.min(left.max(ROLL_SYNC_AHEAD_MIN_BYTES));
        assert!(w - dur < ahead_at, "{} bytes outstanding, {left} left in the segment", w - dur);
    }
    assert!(wal.end().0 > 2 * SEGMENT_BYTES_MIN, "fewer than two rolls");
    // A handful of fdatasyncs per segment, not one per batch.
    assert!(wal.sync_count() < 60, "{} fdatasyncs for 400 async batches", wal.sync_count());
    Ok(())
}

/// Fail-stop on injected EIO, reported through the completions: a batch
/// whose inline write fails while an earlier sync batch's fdatasync runs
/// (that one still completes, its fdatasync started before the fault),
/// then, after recovery, a failed fdatasync.
fn eio_fails_the_wal_behind_a_running_fsync_and_on_fsync(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let fault = d.path().join("FAULT");
    let c = WalConfig { fault_file: Some(fault.clone()), ..cfg(b) };
    let Some(mut wal) = open(&d.path().join("wal"), c.clone())? else { return Ok(()) };
    let a = wal.append(1, &[b"synced before the fault"])?;
    let a_id = wal.submit(true).ok_or("no batch")?;
    std::fs::write(&fault, b"eio")?;
    let written = wal.written_end();
    let lost = wal.append(1, &[b"never written"])?;
    let b_id = wal.submit(false).ok_or("no batch")?;
    assert!(wal.is_failed());
    assert_eq!(wal.written_end(), written, "nothing written");
    let done = wait_all(&mut wal);
    assert_eq!(done.len(), 2);
    assert!(matches!(done[0], (id, Ok(()))  if id == a_id), "{done:?}");
    assert!(matches!(&done[1], (id, Err(WalError::Io { op: "write", .. })) if *id == b_id), "{done:?}");
    assert_eq!(wal.durable_end(), written);
    assert!(matches!(wal.append(1, &[b"x"]), Err(WalError::Unavailable)));
    assert_eq!(wal.submit(true), None);
    assert!(wal.try_recover().is_err(), "recovered under the fault");
    std::fs::remove_file(&fault)?;
    wal.try_recover()?;
    assert_eq!(wal.end(), written);
    assert_eq!(wal.durable_end(), written);

    // Written (async, acknowledged), then the fdatasync fails.
    let p = wal.append(1, &[b"written, then the fsync fails"])?;
    assert_eq!(p, lost, "appends resume where the failed write began");
    let w_id = wal.submit(false).ok_or("no batch")?;
    let done = wait_all(&mut wal);
    assert!(matches!(done.as_slice(), [(id, Ok(()))] if *id == w_id), "{done:?}");
    let written = wal.written_end();
    std::fs::write(&fault, b"eio")?;
    let s_id = wal.submit(true).ok_or("no fsync-only batch")?;
    let done = wait_all(&mut wal);
    assert!(matches!(done.as_slice(), [(id, Err(WalError::Io { op: "fdatasync", .. }))] if *id == s_id), "{done:?}");
    assert!(wal.is_failed());
    assert_eq!(wal.written_end(), written, "written_end never goes back");
    assert!(wal.durable_end() < written);
    assert_eq!(wal.read(p, 5)?, b"writt", "written data stays readable");
    std::fs::remove_file(&fault)?;
    wal.try_recover()?;
    // Recovery re-validated and synced the written tail: nothing is lost.
    assert_eq!(wal.end(), written);
    assert_eq!(wal.durable_end(), written);
    drop(wal);
    let (wal, rep) = Wal::open(&d.path().join("wal"), c)?;
    assert!(rep.torn_tail.is_none());
    let got: Vec<(LogPos, Vec<u8>)> = replay_all(&wal)?.into_iter().map(|(p, _, b)| (p, b)).collect();
    assert_eq!(got, vec![(a, b"synced before the fault".to_vec()), (p, b"written, then the fsync fails".to_vec())]);
    Ok(())
}

fn append_read_replay_across_rolls(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    // 1 MiB bodies in 3 parts: ~90 MiB, so at least two rolls.
    let n = 90u64;
    let mut pos = Vec::new();
    for i in 0..n {
        let data = body(i, 1 << 20);
        let (a, rest) = data.split_at(10);
        let (m, z) = rest.split_at(1000);
        let p = wal.append(1 + (i % 5) as u8, &[a, m, z])?;
        // Readable at once from the unsubmitted batch...
        assert_eq!(wal.read(p, data.len() as u32)?, &data[..]);
        pos.push(p);
        if i % 7 == 6 {
            wal.submit(i % 2 == 0);
        }
    }
    wal.submit(true);
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    // ...and from the segment maps once written.
    for (i, p) in pos.iter().enumerate() {
        assert_eq!(wal.read(*p, 1 << 20)?, &body(i as u64, 1 << 20)[..]);
    }
    assert!(wal.segment_stats().len() >= 3, "{:?}", wal.segment_stats());
    let end = wal.end();
    drop(wal);
    assert!(seg_files(d.path())?.len() >= 3);

    let (wal, rep) = Wal::open(d.path(), cfg(b))?;
    assert_eq!(rep.end, end);
    assert!(rep.torn_tail.is_none() && rep.skipped.is_empty());
    assert_eq!(rep.records, n);
    let got = replay_all(&wal)?;
    assert_eq!(got.len() as u64, n);
    for (i, (p, t, data)) in got.iter().enumerate() {
        assert_eq!(*p, pos[i]);
        assert_eq!(*t, 1 + (i % 5) as u8);
        assert_eq!(data, &body(i as u64, 1 << 20));
    }
    // Replay from a position skips what lies before it.
    let from = LogPos(pos[50].0 - RECORD_HEADER_BYTES);
    let mut count = 0;
    wal.replay(from, |_, _, _| {
        count += 1;
        Ok::<_, std::convert::Infallible>(())
    })?;
    assert_eq!(count, n - 50);
    Ok(())
}

/// One batch far larger than the torn window and than a segment: the
/// flight is split (extra fdatasyncs, several io_uring chains) and rolls
/// segments; its bytes stay readable while it runs.
fn huge_batch_is_split_and_rolls_inside_one_flight(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    let n = 150u64;
    let mut pos = Vec::new();
    for i in 0..n {
        pos.push(wal.append(1, &[&body(i, 1 << 20)])?);
    }
    let id = wal.submit(true).ok_or("no batch")?;
    for (i, p) in pos.iter().enumerate().step_by(13) {
        assert_eq!(wal.read(*p, 4096)?, &body(i as u64, 4096)[..], "read during the flight");
    }
    let done = wait_all(&mut wal);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, id);
    done.into_iter().try_for_each(|(_, r)| r)?;
    assert!(wal.durable_end() >= wal.records_end(), "not all durable");
    assert!(wal.segment_stats().len() >= 5);
    drop(wal);
    let (wal, rep) = Wal::open(d.path(), cfg(b))?;
    assert_eq!(rep.records, n);
    for (i, p) in pos.iter().enumerate() {
        assert_eq!(wal.read(*p, 1 << 20)?, &body(i as u64, 1 << 20)[..]);
    }
    Ok(())
}

fn group_commit_completes_in_order(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    for i in 0..1000u64 {
        wal.append(2, &[&body(i, 64)])?;
    }
    assert!(wal.has_pending());
    let first = wal.submit(true).ok_or("nothing submitted")?;
    assert!(!wal.has_pending());
    assert_eq!(wal.written_end(), wal.end(), "written inline");
    // While the first fdatasync runs, later sync submits are written at
    // once and join one batch waiting for the next fdatasync (the same id
    // comes back) — the group commit.
    let mut ids = vec![first];
    for round in 0..50u64 {
        for i in 0..10 {
            wal.append(3, &[&body(round * 10 + i, 1024)])?;
        }
        let id = wal.submit(true).ok_or("nothing submitted")?;
        assert_eq!(wal.written_end(), wal.end(), "a write never waits for a running fdatasync");
        if ids.last() != Some(&id) {
            ids.push(id);
        }
        let mut out = Vec::new();
        let p = wal.poll_completions(&mut out);
        assert_eq!(p, wal.progress());
        for (done, r) in out {
            r?;
            assert_eq!(done, ids.remove(0), "completions out of order");
        }
        // At most: the batch the running fdatasync covers, the one
        // waiting for the next, and the running fdatasync.
        assert!(wal.in_flight() <= 3, "{}", wal.in_flight());
    }
    let rest: Vec<BatchId> = wait_all(&mut wal).into_iter().map(|(id, r)| r.map(|()| id)).collect::<Result<_, _>>()?;
    assert_eq!(rest, ids);
    assert!(wal.durable_end() >= wal.records_end(), "not all durable");
    assert_eq!(wal.in_flight(), 0);
    assert_eq!(wal.submit(true), None, "nothing left to do");
    drop(wal);
    let (wal, rep) = Wal::open(d.path(), cfg(b))?;
    assert_eq!(rep.records, 1500);
    assert_eq!(replay_all(&wal)?.len(), 1500);
    Ok(())
}

/// Sync submits while an fdatasync runs start none of their own: the next
/// one, started when the running one completes, covers all of them.
fn fsyncs_coalesce(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    wal.append(1, &[b"first"])?;
    wal.submit(true).ok_or("no batch")?;
    assert_eq!(wal.sync_count(), 1);
    let mut last = LogPos(0);
    for i in 0..100u64 {
        last = wal.append(1, &[&body(i, 100)])?;
        // No poll: the first fdatasync is not collected yet, finished or not.
        wal.submit(true).ok_or("no batch")?;
    }
    assert_eq!(wal.sync_count(), 1, "a second fdatasync started while one ran");
    assert_eq!(wal.written_end(), wal.end());
    let done = wait_all(&mut wal);
    assert_eq!(done.len(), 2, "the first batch, then one joined by every later submit");
    done.into_iter().try_for_each(|(_, r)| r)?;
    assert_eq!(wal.sync_count(), 2);
    assert!(wal.durable_end() >= wal.records_end(), "not all durable");
    assert_eq!(wal.read(last, 100)?, &body(99, 100)[..]);
    Ok(())
}

fn fsync_only_batch(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    assert_eq!(wal.submit(true), None, "empty log: nothing to sync");
    wal.append(1, &[b"x"])?;
    let a = wal.submit(false).ok_or("no batch")?;
    wait_all(&mut wal);
    assert!(wal.durable_end() < wal.end());
    let s = wal.submit(true).ok_or("no fsync-only batch")?;
    assert!(s > a);
    let done = wait_all(&mut wal);
    assert!(matches!(done.as_slice(), [(id, Ok(()))] if *id == s));
    assert!(wal.durable_end() >= wal.records_end(), "not all durable");
    assert_eq!(wal.submit(true), None);
    assert_eq!(wal.submit(false), None);
    Ok(())
}

fn completion_token_fires_in_mio(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    let mut poll = mio::Poll::new()?;
    let mut events = mio::Events::with_capacity(8);
    let token = mio::Token(7);
    wal.register(poll.registry(), token)?;
    for round in 0..20 {
        wal.append(1, &[&body(round, 100)])?;
        let id = wal.submit(true).ok_or("no batch")?;
        let mut out = Vec::new();
        while out.is_empty() {
            poll.poll(&mut events, Some(Duration::from_secs(10)))?;
            assert!(events.iter().any(|e| e.token() == token), "token did not fire");
            wal.poll_completions(&mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, id);
    }
    Ok(())
}

fn release_deletes_only_whole_segments(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let Some(mut wal) = open(d.path(), cfg(b))? else { return Ok(()) };
    let mut pos = Vec::new();
    for i in 0..80u64 {
        pos.push(wal.append(1, &[&body(i, 1 << 20)])?);
        wal.submit(false);
    }
    wait_all(&mut wal);
    let stats = wal.segment_stats();
    assert!(stats.len() >= 3);
    let disk = wal.disk_bytes();
    // A position inside the second segment frees only the first.
    let inside_second = LogPos(stats[1].base.0 + 100);
    wal.release_before(inside_second);
    let after = wal.segment_stats();
    assert_eq!(after[0].base, stats[1].base);
    assert_eq!(wal.disk_bytes(), disk - stats[0].capacity);
    assert!(matches!(wal.read(pos[0], 10), Err(WalError::OutOfRange { .. })));
    // The active segment is never released, whatever the position.
    wal.release_before(LogPos(u64::MAX));
    let last = wal.segment_stats();
    assert!(!last.is_empty());
    assert!(last.iter().any(|s| s.base.0 <= wal.end().0 && wal.end().0 <= s.base.0 + s.capacity));
    let p = *pos.last().ok_or("no positions")?;
    assert_eq!(wal.read(p, 16)?, &body(79, 16)[..]);
    drop(wal); // waits for the background deletions
    let files = seg_files(d.path())?;
    assert_eq!(files.len(), last.len());
    let (wal, _) = Wal::open(d.path(), cfg(b))?;
    assert_eq!(wal.read(p, 1 << 20)?, &body(79, 1 << 20)[..]);
    Ok(())
}

fn fault_file_refuses_writes_then_recovers(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let fault = d.path().join("FAULT");
    let c = WalConfig { fault_file: Some(fault.clone()), ..cfg(b) };
    let Some(mut wal) = open(&d.path().join("wal"), c.clone())? else { return Ok(()) };
    let mut acked = Vec::new();
    for i in 0..10u64 {
        let p = wal.append(1, &[&body(i, 300)])?;
        wal.submit(true);
        for (_, r) in wait_all(&mut wal) {
            r?;
        }
        acked.push((p, body(i, 300)));
    }
    let good_end = wal.end();

    // A failing device: the write fails with EIO.
    std::fs::write(&fault, b"eio")?;
    let lost = wal.append(1, &[b"never acknowledged"])?;
    let failed_id = wal.submit(true).ok_or("no batch")?;
    let done = wait_all(&mut wal);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, failed_id);
    match &done[0].1 {
        Err(e) => assert!(matches!(e, WalError::Io { .. }) && !e.is_no_space(), "{e}"),
        Ok(()) => return Err("write succeeded under the fault".into()),
    }
    assert!(wal.is_failed());
    assert!(matches!(wal.append(1, &[b"x"]), Err(WalError::Unavailable)));
    assert_eq!(wal.submit(true), None);
    // Written data stays readable.
    for (p, data) in &acked {
        assert_eq!(wal.read(*p, data.len() as u32)?, &data[..]);
    }
    assert!(wal.read(lost, 5).is_err());
    // Recovery keeps failing while the fault lasts...
    let e = wal.try_recover().err().ok_or("recovered under the fault")?;
    assert!(matches!(e, WalError::Io { .. }), "{e}");
    // ...and resumes at the last durable position once it is gone.
    std::fs::remove_file(&fault)?;
    wal.try_recover()?;
    assert!(!wal.is_failed());
    assert_eq!(wal.end(), good_end);
    let p = wal.append(1, &[b"after recovery"])?;
    assert_eq!(p, lost, "appends resume where the failed batch began");
    wal.submit(true);
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    acked.push((p, b"after recovery".to_vec()));
    drop(wal);

    let (wal, rep) = Wal::open(&d.path().join("wal"), c)?;
    assert!(rep.torn_tail.is_none());
    let got = replay_all(&wal)?;
    let want: Vec<(LogPos, Vec<u8>)> = acked;
    assert_eq!(got.into_iter().map(|(p, _, b)| (p, b)).collect::<Vec<_>>(), want);
    Ok(())
}

/// Appends records of `len` bytes of `class`, submitting (with fdatasync)
/// every few, until one gets `NoSpace`; returns what was appended. Every
/// batch must complete Ok: a full disk fails no write.
fn append_until_no_space(wal: &mut Wal, class: AppendClass, len: usize, seed: u64) -> Res<Vec<(LogPos, Vec<u8>)>> {
    let mut got = Vec::new();
    loop {
        let data = body(seed + got.len() as u64, len);
        match wal.append_class(1, &[&data], class) {
            Ok(p) => got.push((p, data)),
            Err(WalError::NoSpace) => break,
            Err(e) => return Err(e.into()),
        }
        if got.len().is_multiple_of(8) {
            wal.submit(true);
        }
        if got.len() > 100_000 {
            return Err("the disk never filled up".into());
        }
    }
    wal.submit(true);
    for (_, r) in wait_all(wal) {
        r?;
    }
    Ok(got)
}

/// Retries a Normal append (the creation of the next segment is retried
/// in the background, at most every NO_SPACE_RETRY_MS) until it succeeds.
fn append_when_space_returns(wal: &mut Wal, data: &[u8]) -> Res<LogPos> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match wal.append(1, &[data]) {
            Ok(p) => return Ok(p),
            Err(WalError::NoSpace) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(NO_SPACE_RETRY_MS / 4));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn assert_replays(dir: &Path, c: WalConfig, want: &[(LogPos, Vec<u8>)]) -> Res {
    let (wal, rep) = Wal::open(dir, c)?;
    assert!(rep.torn_tail.is_none() && rep.skipped.is_empty());
    let got: Vec<(LogPos, Vec<u8>)> = replay_all(&wal)?.into_iter().map(|(p, _, b)| (p, b)).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "replay differs from what was acknowledged");
    Ok(())
}

/// A full disk (the fault file) fails the creation of the next segment:
/// the spare becomes the next segment (an emergency one). Normal appends
/// fill the last normal segment, then get NoSpace; Reserve appends go on
/// in the emergency segment and are durable, then get NoSpace too; nothing
/// fails, and Normal appends resume by themselves once the disk has room
/// again, with a new spare made first.
fn full_disk_fails_only_new_data(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let fault = d.path().join("FAULT");
    let dir = d.path().join("wal");
    let c = WalConfig { fault_file: Some(fault.clone()), ..cfg(b) };
    // A new log cannot even start on a full disk: it needs its first segment.
    std::fs::write(&fault, b"")?;
    let e = Wal::open(&dir, c.clone()).err().ok_or("opened a new log on a full disk")?;
    assert!(e.is_no_space(), "{e}");
    std::fs::remove_file(&fault)?;

    let Some(mut wal) = open(&dir, c.clone())? else { return Ok(()) };
    let spare = dir.join("spare-segment");
    assert_eq!(std::fs::metadata(&spare)?.len(), SPARE_SEGMENT_BYTES, "the spare is made at open");
    let mut acked = append_n(&mut wal, 3, 1000, 0)?;
    // The disk fills up before the next segment is prepared (at half fill).
    std::fs::write(&fault, b"")?;
    let normal = append_until_no_space(&mut wal, AppendClass::Normal, 1 << 20, 100)?;
    assert!(!normal.is_empty());
    acked.extend(normal);
    assert!(wal.is_out_of_space() && !wal.is_failed());
    let stats = wal.segment_stats();
    assert_eq!(stats.len(), 2, "the spare, and no new segment: {stats:?}");
    assert_eq!(stats[1].capacity, SPARE_SEGMENT_BYTES, "the spare became the next segment");
    assert!(!spare.exists());
    let first_end = stats[0].base.0 + stats[0].capacity;
    assert!(stats[0].len + (1 << 20) + 64 > stats[0].capacity, "Normal appends filled the last normal segment");
    let seg_end = stats[1].base.0 + stats[1].capacity;
    // NoSpace adds nothing and stays NoSpace, without blocking.
    let end = wal.end();
    let small = body(1, 100);
    for _ in 0..100 {
        assert!(matches!(wal.append(1, &[&small]), Err(WalError::NoSpace)));
    }
    assert_eq!(wal.end(), end);
    assert!(!wal.has_pending());

    // Deletes, receives, visibility changes: the spare takes them.
    let reserve = append_until_no_space(&mut wal, AppendClass::Reserve, 4000, 10_000)?;
    assert!(reserve.iter().all(|(p, _)| p.0 > first_end), "Reserve appends went into the spare");
    let used: u64 = reserve.iter().map(|(_, b)| RECORD_HEADER_BYTES + b.len() as u64).sum();
    assert!(used + 8192 >= SPARE_SEGMENT_BYTES - SEGMENT_HEADER_BYTES, "the spare held only {used} bytes");
    assert!(seg_end - wal.end().0 < 2 * (RECORD_HEADER_BYTES + 4000), "the spare was not used up");
    acked.extend(reserve);
    // Exhausted: Reserve appends get NoSpace too, still without failing.
    assert!(matches!(wal.append_class(1, &[&[7u8; 4000]], AppendClass::Reserve), Err(WalError::NoSpace)));
    assert!(!wal.is_failed());
    // Everything appended is readable and durable.
    assert!(wal.durable_end() >= wal.records_end(), "not all durable");
    for (p, data) in acked.iter().step_by(17) {
        assert_eq!(wal.read(*p, data.len() as u32)?, &data[..]);
    }

    // Space returns: Normal appends resume in a new segment.
    std::fs::remove_file(&fault)?;
    let data = body(99_999, 1 << 20);
    let p = append_when_space_returns(&mut wal, &data)?;
    assert!(!wal.is_out_of_space());
    assert!(p.0 > seg_end, "resumed in a new segment");
    assert!(spare.exists(), "a new spare is made when space returns");
    acked.push((p, data));
    acked.extend(append_n(&mut wal, 40, 1 << 20, 200_000)?);
    assert!(wal.segment_stats().len() >= 4, "rolls continue");
    drop(wal);
    assert_replays(&dir, c, &acked)
}

/// Appends `n` acknowledged (fdatasync'd) records of `len` bytes.
fn append_n(wal: &mut Wal, n: u64, len: usize, seed: u64) -> Res<Vec<(LogPos, Vec<u8>)>> {
    let mut got = Vec::new();
    for i in 0..n {
        let data = body(seed + i, len);
        got.push((wal.append(1, &[&data])?, data));
    }
    wal.submit(true);
    for (_, r) in wait_all(wal) {
        r?;
    }
    Ok(got)
}

/// A segment creation failing with EIO is a failing device, not a full
/// disk: the WAL stops taking writes until `try_recover`.
fn eio_on_segment_creation_fails_the_wal(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let fault = d.path().join("FAULT");
    let dir = d.path().join("wal");
    let c = WalConfig { fault_file: Some(fault.clone()), ..cfg(b) };
    let Some(mut wal) = open(&dir, c.clone())? else { return Ok(()) };
    let mut acked = append_n(&mut wal, 3, 1000, 0)?;
    std::fs::write(&fault, b"eio-create")?;
    let mut err = None;
    for i in 0..100u64 {
        match wal.append(1, &[&body(i, 1 << 20)]) {
            Ok(p) => acked.push((p, body(i, 1 << 20))),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        // One batch at a time: a failure also fails a batch still waiting
        // for the I/O slot, and this test wants every append acknowledged.
        wal.submit(true);
        for (_, r) in wait_all(&mut wal) {
            r?;
        }
    }
    let e = err.ok_or("no error under the fault")?;
    assert!(matches!(e, WalError::Io { .. }) && !e.is_no_space(), "{e}");
    assert!(wal.is_failed() && !wal.is_out_of_space());
    assert!(matches!(wal.append_class(1, &[b"x"], AppendClass::Reserve), Err(WalError::Unavailable)));
    assert!(wal.try_recover().is_err(), "recovered under the fault");
    std::fs::remove_file(&fault)?;
    wal.try_recover()?;
    acked.extend(append_n(&mut wal, 20, 1 << 20, 500)?);
    drop(wal);
    assert_replays(&dir, c, &acked)
}

/// Mounts a tmpfs of `size_mib` MiB at `mnt`; unmounted on drop. Fails
/// (never skips) when mounting is not possible: the tests run as root.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(mnt: &Path, size_mib: u64) -> Res<Tmpfs> {
        std::fs::create_dir_all(mnt)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(mnt)
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(Tmpfs(mnt.to_path_buf())),
            Ok(o) => Err(format!(
                "cannot mount a {size_mib} MiB tmpfs at {} (this test needs root / CAP_SYS_ADMIN): {}",
                mnt.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )
            .into()),
            Err(e) => Err(format!("cannot run mount(8) for a tmpfs (this test needs it): {e}").into()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A real full disk: a tmpfs with room for the spare, two segments and a
/// bit, not three. Normal appends get NoSpace, Reserve appends fill the
/// spare segment; then releasing the oldest segment (as housekeeping does
/// after consumers deleted its messages) frees space and Normal appends
/// resume with no other action.
fn real_enospc_on_tmpfs(b: Backend) -> Res {
    let d = tempfile::tempdir()?;
    let mnt = d.path().join("mnt");
    let size_mib = (SPARE_SEGMENT_BYTES + 2 * SEGMENT_BYTES_MIN) / (1 << 20) + 6;
    let _tmpfs = Tmpfs::mount(&mnt, size_mib)?;
    let dir = mnt.join("wal");
    let Some(mut wal) = open(&dir, cfg(b))? else { return Ok(()) };
    let mut acked = append_until_no_space(&mut wal, AppendClass::Normal, 1 << 20, 0)?;
    assert!(wal.is_out_of_space() && !wal.is_failed());
    let stats = wal.segment_stats();
    assert_eq!(stats.len(), 3, "two segments and the spare: {stats:?}");
    assert_eq!(stats[2].capacity, SPARE_SEGMENT_BYTES);
    let reserve = append_until_no_space(&mut wal, AppendClass::Reserve, 200, 50_000)?;
    assert!(reserve.len() as u64 * 213 + 8192 >= SPARE_SEGMENT_BYTES - SEGMENT_HEADER_BYTES);
    acked.extend(reserve);
    assert!(matches!(wal.append(1, &[b"x"]), Err(WalError::NoSpace)));
    // Consumers deleted everything in the first segment: housekeeping
    // releases it, and that alone brings writes back.
    let first = wal.segment_stats()[0];
    let released_below = first.base.0 + first.capacity;
    wal.release_before(LogPos(released_below));
    let data = body(7, 1 << 20);
    let p = append_when_space_returns(&mut wal, &data)?;
    assert!(!wal.is_out_of_space());
    acked.push((p, data));
    acked.extend(append_n(&mut wal, 5, 1 << 20, 60_000)?);
    drop(wal);
    acked.retain(|(p, _)| p.0 >= released_below);
    assert_replays(&dir, cfg(b), &acked)
}

// ------------------------------------------- recovery (one backend is enough)

/// Builds a one-segment log of `n` small records, returns (dir, positions).
/// All but the last are fdatasync'd (a durable mark follows them); the last
/// one is only written, as a crash can leave it: torn tests damage it.
fn small_log(n: u64) -> Res<(tempfile::TempDir, Vec<LogPos>)> {
    let d = tempfile::tempdir()?;
    let (mut wal, _) = Wal::open(d.path(), cfg(Backend::Thread))?;
    let mut pos = Vec::new();
    for i in 0..n {
        if i + 1 == n {
            wal.submit(true);
            for (_, r) in wait_all(&mut wal) {
                r?;
            }
        }
        pos.push(wal.append(1, &[&body(i, 20 + i as usize)])?);
    }
    wal.submit(false);
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    assert_eq!(wal.end(), LogPos(pos[n as usize - 1].0 + 20 + n - 1), "the last record is the last one written");
    Ok((d, pos))
}

#[test]
fn torn_tail_cut_at_every_offset_drops_only_the_last_record() -> Res {
    init_log();
    let n = 5u64;
    let (d, pos) = small_log(n)?;
    let seg = seg_files(d.path())?.remove(0);
    let last_start = pos[n as usize - 1].0 - RECORD_HEADER_BYTES;
    let last_len = RECORD_HEADER_BYTES + 20 + n - 1;
    let mut original = vec![0u8; last_len as usize];
    OpenOptions::new().read(true).open(&seg)?.read_exact_at(&mut original, last_start)?;
    for cut in 0..last_len {
        // A crash that persisted only `cut` bytes of the last record.
        write_at(&seg, last_start + cut, &vec![0u8; (last_len - cut) as usize])?;
        let (wal, rep) = Wal::open(d.path(), cfg(Backend::Thread))?;
        let got = replay_all(&wal)?;
        assert_eq!(got.len() as u64, n - 1, "cut at {cut}");
        assert_eq!(rep.end.0, last_start);
        if cut >= 1 {
            let t = rep.torn_tail.clone().ok_or(format!("cut {cut}: no torn tail reported"))?;
            assert_eq!(t.offset, last_start);
            assert!(t.dropped_bytes >= 1 && t.dropped_bytes <= cut);
            assert!(!logged_containing(&seg.display().to_string()).is_empty());
        }
        drop(wal);
        write_at(&seg, last_start, &original)?;
    }
    Ok(())
}

#[test]
fn garbled_byte_in_the_last_record_drops_only_it() -> Res {
    init_log();
    let n = 5u64;
    let (d, pos) = small_log(n)?;
    let seg = seg_files(d.path())?.remove(0);
    let last_start = pos[n as usize - 1].0 - RECORD_HEADER_BYTES;
    let last_len = RECORD_HEADER_BYTES + 20 + n - 1;
    let mut original = vec![0u8; last_len as usize];
    OpenOptions::new().read(true).open(&seg)?.read_exact_at(&mut original, last_start)?;
    for at in 0..last_len {
        let mut bad = original.clone();
        bad[at as usize] ^= 0x5a;
        write_at(&seg, last_start, &bad)?;
        let (wal, rep) = Wal::open(d.path(), cfg(Backend::Thread))?;
        assert_eq!(replay_all(&wal)?.len() as u64, n - 1, "garbled byte {at}");
        let t = rep.torn_tail.ok_or("no torn tail reported")?;
        assert_eq!((t.offset, t.segment), (last_start, seg.clone()));
        let warned = logged_containing(&format!("{} at file offset {last_start}", seg.display()));
        assert!(!warned.is_empty(), "no warning names the segment and offset");
        drop(wal);
        write_at(&seg, last_start, &original)?;
    }
    Ok(())
}

#[test]
fn garbage_past_the_torn_window_is_corruption() -> Res {
    let (d, pos) = small_log(3)?;
    let seg = seg_files(d.path())?.remove(0);
    let end = pos[2].0 + 22;
    // Damage the last record and put data far beyond the window.
    write_at(&seg, end - 3, b"\xff")?;
    write_at(&seg, end + cmq_broker::storage::TORN_WINDOW_BYTES + 100, b"real data?")?;
    let e = Wal::open(d.path(), cfg(Backend::Thread)).err().ok_or("opened")?;
    let msg = e.to_string();
    assert!(matches!(e, WalError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    // Repair keeps the first two records and clears the rest.
    let c = WalConfig { repair: true, ..cfg(Backend::Thread) };
    let (wal, rep) = Wal::open(d.path(), c)?;
    assert_eq!(replay_all(&wal)?.len(), 2);
    assert!(!rep.skipped.is_empty());
    drop(wal);
    let (wal, rep) = Wal::open(d.path(), cfg(Backend::Thread))?;
    assert!(rep.skipped.is_empty() && rep.torn_tail.is_none());
    assert_eq!(replay_all(&wal)?.len(), 2);
    Ok(())
}

/// Three segments of 1 MiB records; returns (dir, positions, segment paths).
/// The last record is only written, not fdatasync'd (as after a crash).
fn three_segments() -> Res<(tempfile::TempDir, Vec<LogPos>, Vec<PathBuf>)> {
    let d = tempfile::tempdir()?;
    let (mut wal, _) = Wal::open(d.path(), cfg(Backend::Thread))?;
    let mut pos = Vec::new();
    for i in 0..75u64 {
        if i == 74 {
            wal.submit(true);
            for (_, r) in wait_all(&mut wal) {
                r?;
            }
        }
        pos.push(wal.append(1, &[&body(i, 1 << 20)])?);
        if i % 10 == 9 {
            wal.submit(false);
        }
    }
    wal.submit(false);
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    drop(wal);
    let files = seg_files(d.path())?;
    assert!(files.len() >= 3);
    Ok((d, pos, files))
}

#[test]
fn corruption_in_an_older_segment_fails_open_and_repair_keeps_the_rest() -> Res {
    init_log();
    let (d, pos, files) = three_segments()?;
    // Flip a payload byte of the third record (first segment).
    let victim = pos[2].0 + 1000;
    write_at(&files[0], victim, &[0xAB ^ body(2, 1 << 20)[1000]])?;
    let e = Wal::open(d.path(), cfg(Backend::Thread)).err().ok_or("opened a corrupt log")?;
    let msg = e.to_string();
    assert!(matches!(e, WalError::Corrupt { offset, .. } if offset == pos[2].0 - RECORD_HEADER_BYTES), "{msg}");
    assert!(msg.contains(&files[0].display().to_string()), "{msg}");

    let c = WalConfig { repair: true, ..cfg(Backend::Thread) };
    let (wal, rep) = Wal::open(d.path(), c)?;
    assert_eq!(rep.skipped.len(), 1);
    assert_eq!(rep.skipped[0].offset, pos[2].0 - RECORD_HEADER_BYTES);
    let got = replay_all(&wal)?;
    assert_eq!(got.len(), pos.len() - 1);
    assert!(got.iter().all(|(p, _, _)| *p != pos[2]));
    assert_eq!(got[2].2, body(3, 1 << 20));
    drop(wal);
    // The repair is durable: a normal open is clean now.
    let (wal, rep) = Wal::open(d.path(), cfg(Backend::Thread))?;
    assert!(rep.skipped.is_empty());
    assert_eq!(replay_all(&wal)?.len(), pos.len() - 1);
    Ok(())
}

/// The zero checks read only what the file system reports as data: a
/// stray byte written into a never-written (unwritten, preallocated) part
/// of a segment must still be found, in an older segment's tail and far
/// out in an empty segment after the newest one.
#[test]
fn stray_bytes_in_preallocated_space_are_found() -> Res {
    let (d, _, files) = three_segments()?;
    let len = std::fs::metadata(&files[0])?.len();
    write_at(&files[0], len - 1, b"\x01")?;
    let e = Wal::open(d.path(), cfg(Backend::Thread)).err().ok_or("opened")?;
    assert!(matches!(&e, WalError::Corrupt { path, .. } if *path == files[0]), "{e}");
    write_at(&files[0], len - 1, b"\x00")?;
    Wal::open(d.path(), cfg(Backend::Thread))?;

    // An empty segment after the newest data segment, with one byte past
    // what a torn write can leave (the window, or one record of the largest
    // size written alone): it becomes the newest data segment, and corrupt.
    let d = tempfile::tempdir()?;
    let c = WalConfig { segment_bytes: 64 << 20, ..cfg(Backend::Thread) };
    let (mut wal, _) = Wal::open(d.path(), c.clone())?;
    let big = body(0, 12 << 20);
    for _ in 0..3 {
        wal.append(1, &[&big])?; // past half fill: the next segment is prepared
    }
    wal.submit(true);
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    drop(wal);
    let files = seg_files(d.path())?;
    assert_eq!(files.len(), 2, "the prepared segment exists");
    let at = SEGMENT_HEADER_BYTES + TORN_WINDOW_BYTES.max(RECORD_BYTES_MAX) + (1 << 20);
    write_at(&files[1], at, b"\x07")?;
    let e = Wal::open(d.path(), c).err().ok_or("opened")?;
    assert!(matches!(&e, WalError::Corrupt { path, .. } if *path == files[1]), "{e}");
    Ok(())
}

/// 50 small records, then 40 of 1 MiB: at least two segments.
fn mixed_log() -> Res<(tempfile::TempDir, Vec<LogPos>)> {
    let d = tempfile::tempdir()?;
    let (mut wal, _) = Wal::open(d.path(), cfg(Backend::Thread))?;
    let mut pos = Vec::new();
    for i in 0..90u64 {
        pos.push(wal.append(1, &[&body(i, if i < 50 { 100 } else { 1 << 20 })])?);
        wal.submit(true);
    }
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    assert!(wal.segment_stats().len() >= 2);
    Ok((d, pos))
}

/// Copies the segment files of `from` into a new directory.
fn copy_log(from: &Path) -> Res<tempfile::TempDir> {
    let d = tempfile::tempdir()?;
    for f in seg_files(from)? {
        std::fs::copy(&f, d.path().join(f.file_name().ok_or("no name")?))?;
    }
    Ok(d)
}

type Replayed = Vec<(LogPos, u8, Vec<u8>)>;

/// `open_replay` on one copy of a log and `open` + `replay` on another
/// must deliver the same records and report the same recovery.
fn same_as_open_then_replay(dir: &Path, c: &WalConfig, from: LogPos) -> Res<Replayed> {
    let other = copy_log(dir)?;
    let mut fused = Vec::new();
    let (wal, rep) = Wal::open_replay(dir, c.clone(), from, |p, t, b| {
        fused.push((p, t, b.to_vec()));
        Ok::<_, std::convert::Infallible>(())
    })?;
    let (wal2, rep2) = Wal::open(other.path(), c.clone())?;
    let mut two_pass = Vec::new();
    wal2.replay(from, |p, t, b| {
        two_pass.push((p, t, b.to_vec()));
        Ok::<_, std::convert::Infallible>(())
    })?;
    assert!(fused == two_pass, "open_replay delivered {} records, open + replay {}", fused.len(), two_pass.len());
    assert_eq!((rep.records, rep.end, rep.segments), (rep2.records, rep2.end, rep2.segments));
    let name = |t: &Option<cmq_broker::storage::TornTail>| t.as_ref().map(|t| (t.offset, t.dropped_bytes));
    assert_eq!(name(&rep.torn_tail), name(&rep2.torn_tail));
    let skips = |r: &cmq_broker::storage::RecoveryReport| {
        r.skipped.iter().map(|s| (s.offset, s.bytes, s.reason.clone())).collect::<Vec<_>>()
    };
    assert_eq!(skips(&rep), skips(&rep2));
    // And the opened logs agree with what was delivered.
    let mut again = Vec::new();
    wal.replay(from, |p, t, b| {
        again.push((p, t, b.to_vec()));
        Ok::<_, std::convert::Infallible>(())
    })?;
    assert!(again == fused);
    Ok(fused)
}

#[test]
fn open_replay_delivers_exactly_what_replay_does() -> Res {
    let c = cfg(Backend::Thread);
    // Clean, across segments, from the start and from the middle.
    let (d, pos, files) = three_segments()?;
    assert_eq!(same_as_open_then_replay(d.path(), &c, LogPos(0))?.len(), pos.len());
    let mid = LogPos(pos[40].0 - RECORD_HEADER_BYTES);
    assert_eq!(same_as_open_then_replay(d.path(), &c, mid)?.len(), pos.len() - 40);
    // A torn tail in the newest segment: the last record is not delivered.
    let last = *pos.last().ok_or("no records")?;
    // Every segment has the minimum size: the last record's is found by
    // division (a prepared, empty segment may follow it).
    let newest = files.get((last.0 / SEGMENT_BYTES_MIN) as usize).ok_or("no such segment")?;
    let off = last.0 % SEGMENT_BYTES_MIN + 1000;
    write_at(newest, off, b"\xee\xee")?;
    assert_eq!(same_as_open_then_replay(d.path(), &c, LogPos(0))?.len(), pos.len() - 1);
    // Damage in an older segment with repair: records after it come after
    // the repair, the damaged one never. (Small records there, so that
    // repair's byte-by-byte search for the next record is short.)
    let (d, pos) = mixed_log()?;
    let files = seg_files(d.path())?;
    write_at(&files[0], pos[10].0 + 3, b"\x99\x99")?;
    let rc = WalConfig { repair: true, ..c.clone() };
    let got = same_as_open_then_replay(d.path(), &rc, LogPos(0))?;
    assert_eq!(got.len(), pos.len() - 1);
    assert!(got.iter().all(|(p, _, _)| *p != pos[10]));
    // Without repair: the corruption error, as from open.
    let (d, pos) = mixed_log()?;
    let files = seg_files(d.path())?;
    write_at(&files[0], pos[10].0 + 3, b"\x99\x99")?;
    let mut n = 0;
    let e = Wal::open_replay(d.path(), c.clone(), LogPos(0), |_, _, _| {
        n += 1;
        Ok::<_, std::convert::Infallible>(())
    })
    .err()
    .ok_or("opened a corrupt log")?;
    assert!(matches!(e, cmq_broker::storage::ReplayError::Wal(WalError::Corrupt { .. })), "{e}");
    assert_eq!(n, 10, "delivered exactly the records before the damaged one");
    // A callback error stops the open and comes back as such.
    let e = Wal::open_replay(d.path(), c, LogPos(0), |p, _, _| if p == pos[5] { Err("stop") } else { Ok(()) })
        .err()
        .ok_or("callback error ignored")?;
    assert!(matches!(e, cmq_broker::storage::ReplayError::Callback("stop")), "{e}");
    Ok(())
}

#[test]
fn missing_middle_segment_is_an_error_unless_repair() -> Res {
    let (d, pos, files) = three_segments()?;
    std::fs::remove_file(&files[1])?;
    let e = Wal::open(d.path(), cfg(Backend::Thread)).err().ok_or("opened with a gap")?;
    assert!(matches!(e, WalError::Gap { .. }), "{e}");
    let c = WalConfig { repair: true, ..cfg(Backend::Thread) };
    let (wal, rep) = Wal::open(d.path(), c)?;
    assert_eq!(rep.filled_gaps.len(), 1);
    let got = replay_all(&wal)?;
    assert!(got.len() < pos.len() && got.len() > 30);
    assert_eq!(got[0].0, pos[0]);
    assert_eq!(got.last().map(|g| g.0), pos.last().copied());
    Ok(())
}

#[test]
fn truncated_newest_segment_reopens_and_is_extended() -> Res {
    let (d, pos) = small_log(4)?;
    let seg = seg_files(d.path())?.remove(0);
    let cut = pos[3].0 + 5; // inside the last record
    OpenOptions::new().write(true).open(&seg)?.set_len(cut)?;
    let (mut wal, rep) = Wal::open(d.path(), cfg(Backend::Thread))?;
    assert_eq!(replay_all(&wal)?.len(), 3);
    assert!(rep.torn_tail.is_some());
    assert_eq!(std::fs::metadata(&seg)?.len(), SEGMENT_BYTES_MIN);
    wal.append(1, &[b"again"])?;
    wal.submit(true);
    for (_, r) in wait_all(&mut wal) {
        r?;
    }
    Ok(())
}

#[test]
fn bad_config_and_bad_appends_are_refused() -> Res {
    let d = tempfile::tempdir()?;
    let c = WalConfig { segment_bytes: SEGMENT_BYTES_MIN - 1, ..WalConfig::default() };
    assert!(matches!(Wal::open(d.path(), c), Err(WalError::Config(_))));
    let (mut wal, rep) = Wal::open(d.path(), cfg(Backend::Thread))?;
    assert_eq!(rep.end, LogPos(SEGMENT_HEADER_BYTES));
    assert!(matches!(wal.append(0, &[b"x"]), Err(WalError::ReservedType)));
    let big = vec![0u8; cmq_broker::storage::RECORD_PAYLOAD_MAX_BYTES as usize + 1];
    assert!(matches!(wal.append(1, &[&big]), Err(WalError::RecordTooLarge { .. })));
    let p = wal.append(1, &[b"abc"])?;
    assert!(wal.read(p, 4).is_err(), "past the end");
    assert!(wal.read(LogPos(u64::MAX), 4).is_err());
    assert_eq!(wal.read(p, 3)?, b"abc");
    assert_eq!(wal.read(p, 0)?, b"");
    Ok(())
}

#[test]
fn auto_backend_reports_its_choice() -> Res {
    let d = tempfile::tempdir()?;
    let (wal, rep) = Wal::open(d.path(), WalConfig { segment_bytes: SEGMENT_BYTES_MIN, ..WalConfig::default() })?;
    assert_ne!(rep.backend, Backend::Auto);
    assert_eq!(wal.backend(), rep.backend);
    eprintln!("auto chose {:?} ({:?})", rep.backend, rep.backend_note);
    Ok(())
}

// ------------------------------------------------------- data-dir lock

const LOCK_CHILD_ENV: &str = "CMQ_TEST_LOCK_CHILD_DIR";

/// Runs only as the child of `lock_dies_with_a_killed_process`.
#[test]
fn lock_child_holder() -> Res {
    let Ok(dir) = std::env::var(LOCK_CHILD_ENV) else { return Ok(()) };
    let _lock = DataDirLock::acquire(Path::new(&dir))?;
    println!("LOCKED");
    use std::io::Write;
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

#[test]
fn lock_dies_with_a_killed_process() -> Res {
    use std::io::BufRead;
    let d = tempfile::tempdir()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "lock_child_holder", "--nocapture", "--test-threads=1"])
        .env(LOCK_CHILD_ENV, d.path())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let locked = lines.any(|l| l.map(|l| l.contains("LOCKED")).unwrap_or(false));
    assert!(locked, "child never took the lock");
    match DataDirLock::acquire(d.path()) {
        Err(LockError::Held { dir, .. }) => assert_eq!(dir, d.path()),
        other => return Err(format!("expected Held, got {other:?}").into()),
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    let lock = DataDirLock::acquire(d.path())?;
    assert_eq!(lock.dir(), d.path());
    Ok(())
}

/// Waits for the checkpoint being written to finish.
fn checkpoint_outcome(wal: &mut Wal) -> Result<LogPos, WalError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = wal.poll_checkpoint() {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "the checkpoint never finished");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checkpoints are written by the housekeeper once the log below their
/// position is written: one at a time, atomically, and durable together
/// with the log up to that position (the housekeeper fdatasyncs it first).
#[test]
fn checkpoints_cover_written_positions_only_and_one_at_a_time() -> Res {
    let d = tempfile::tempdir()?;
    let (mut wal, _) = Wal::open(d.path(), cfg(Backend::Thread))?;
    assert_eq!(wal.poll_checkpoint().map(|r| r.is_ok()), None, "none running");
    wal.append(1, &[b"not written yet"])?;
    let end = wal.end();
    let e = wal.checkpoint("snap", end, Box::new(|| b"too early".to_vec())).err().ok_or("accepted")?;
    assert!(matches!(e, WalError::Busy(_)), "{e}");
    wal.submit(false); // written, not durable
    assert!(wal.synced_end() < end);
    wal.checkpoint("snap", end, Box::new(|| b"first".to_vec()))?;
    let e = wal.checkpoint("snap", end, Box::new(|| b"second".to_vec())).err().ok_or("two at once")?;
    assert!(matches!(e, WalError::Busy(_)), "{e}");
    assert_eq!(checkpoint_outcome(&mut wal)?, end);
    assert_eq!(std::fs::read(d.path().join("snap"))?, b"first");
    drop(wal);
    // The housekeeper made the log durable up to the checkpoint before
    // writing it: a reopen (here after a clean drop) finds the record.
    let (wal, rep) = Wal::open(d.path(), cfg(Backend::Thread))?;
    assert!(rep.end >= end && replay_all(&wal)?.len() == 1);
    Ok(())
}
