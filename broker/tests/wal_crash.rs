//! Property: after random appends / submits / completions and a crash at
//! any point (the WAL dropped without waiting for anything; the files cut
//! at an arbitrary position at or after the last durable one: zeroed,
//! truncated, or with garbage in the torn window), reopening replays
//! exactly a prefix of what was appended, and that prefix holds every
//! record below `durable_end` before the crash; `open_replay` delivers the
//! same records as `open` + `replay`. Along the way: `written_end` and
//! `durable_end` never go back, `durable_end <= written_end <= end`, every
//! batch reported complete has its end written (async) or durable (sync),
//! and after a wait everything submitted is written.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cmq_broker::storage::{
    Backend, BatchId, LogPos, Progress, Wal, WalConfig, WalError, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Append(u8, usize),
    Submit(bool),
    Poll,
    Wait,
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Bytes from the cut on are zero, as in a preallocated segment.
    Zero,
    /// The file is truncated at the cut (later segments deleted).
    Truncate,
    /// Zeroed, then up to 64 bytes of garbage right at the cut.
    Garbage(u8),
}

fn step(big_bytes: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u8..=255, 0usize..3000).prop_map(|(t, n)| Step::Append(t, n)),
        1 => (1u8..=255, 1usize..=big_bytes).prop_map(|(t, n)| Step::Append(t, n)),
        3 => any::<bool>().prop_map(Step::Submit),
        2 => Just(Step::Poll),
        1 => Just(Step::Wait),
    ]
}

fn cut() -> impl Strategy<Value = Cut> {
    prop_oneof![Just(Cut::Zero), Just(Cut::Truncate), (1u8..=255).prop_map(Cut::Garbage),]
}

fn payload(seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (seq * 131 + j * 17 + 1) as u8).collect()
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Applies a crash that kept every byte below `at` and lost what follows.
fn crash(dir: &Path, at: u64, end: u64, how: Cut) -> std::io::Result<()> {
    for (base, path) in segments(dir) {
        let f = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = f.metadata()?.len();
        let data_hi = end.saturating_sub(base).min(len);
        let from = at.saturating_sub(base).max(SEGMENT_HEADER_BYTES);
        if base + len <= at || from >= len {
            continue;
        }
        match how {
            Cut::Truncate if base <= at => f.set_len(from)?,
            Cut::Truncate => std::fs::remove_file(&path)?,
            Cut::Zero | Cut::Garbage(_) => {
                if data_hi > from {
                    f.write_all_at(&vec![0u8; (data_hi - from) as usize], from)?;
                }
                if let Cut::Garbage(g) = how {
                    if base <= at && at < base + len {
                        let n = 64.min(len - from) as usize;
                        let junk: Vec<u8> = (0..n).map(|i| g.wrapping_mul(i as u8 + 1) | 1).collect();
                        f.write_all_at(&junk, from)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_progress(before: Progress, now: Progress, end: LogPos) -> Result<(), TestCaseError> {
    prop_assert!(now.written_end >= before.written_end, "written_end went back: {:?} -> {:?}", before, now);
    prop_assert!(now.durable_end >= before.durable_end, "durable_end went back: {:?} -> {:?}", before, now);
    prop_assert!(now.durable_end <= now.written_end && now.written_end <= end, "{:?}, end {:?}", now, end);
    Ok(())
}

fn run(backend: Backend, steps: Vec<Step>, cut_frac: f64, how: Cut) -> Result<(), TestCaseError> {
    let d = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let cfg = WalConfig { segment_bytes: SEGMENT_BYTES_MIN, backend, ..WalConfig::default() };
    let mut wal = match Wal::open(d.path(), cfg.clone()) {
        Ok((w, _)) => w,
        Err(WalError::UringUnavailable(_)) => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(e.to_string())),
    };
    let mut appended: Vec<(LogPos, u8, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    // Submitted batches: end and kind (a joined batch grows).
    let mut batches: HashMap<BatchId, (LogPos, bool)> = HashMap::new();
    let mut last = wal.progress();
    for s in steps {
        match s {
            Step::Append(t, n) => {
                let data = payload(appended.len(), n);
                let (a, b) = data.split_at(n / 3);
                let p = wal.append(t, &[a, b]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                appended.push((p, t, data));
            }
            Step::Submit(sync) => {
                if let Some(id) = wal.submit(sync) {
                    let e = batches.entry(id).or_insert((wal.end(), sync));
                    *e = (wal.end(), e.1 || sync);
                }
            }
            Step::Poll => {
                let p = wal.poll_completions(&mut out);
                prop_assert_eq!(p, wal.progress());
            }
            Step::Wait => {
                prop_assert!(wal.wait(&mut out, Some(Duration::from_secs(30))));
                if !wal.has_pending() {
                    prop_assert_eq!(wal.written_end(), wal.end(), "a wait leaves nothing submitted unwritten");
                }
            }
        }
        let now = wal.progress();
        check_progress(last, now, wal.end())?;
        last = now;
        for (id, r) in out.drain(..) {
            prop_assert!(r.is_ok(), "a batch failed: {:?}", r);
            let (end, sync) = batches.remove(&id).ok_or_else(|| TestCaseError::fail("unknown batch completed"))?;
            let reached = if sync { now.durable_end } else { now.written_end };
            prop_assert!(reached >= end, "batch {:?} (sync {}) reported at {:?}, its end is {:?}", id, sync, now, end);
        }
    }
    let durable = wal.durable_end().0;
    let end = wal.end().0;
    // The crash: nothing more is waited for or submitted.
    drop(wal);
    let at = durable + ((end - durable) as f64 * cut_frac) as u64;
    crash(d.path(), at, end, how).map_err(|e| TestCaseError::fail(e.to_string()))?;

    // Reopen and replay in one pass (what the broker does at start-up);
    // a second replay of the opened log must agree with it.
    let mut got = Vec::new();
    let (wal, _) = Wal::open_replay(d.path(), cfg, LogPos(0), |p, t, b| {
        got.push((p, t, b.to_vec()));
        Ok::<_, std::convert::Infallible>(())
    })
    .map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
    let mut again = Vec::new();
    wal.replay(LogPos(0), |p, t, b| {
        again.push((p, t, b.to_vec()));
        Ok::<_, std::convert::Infallible>(())
    })
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(again == got, "open_replay and replay differ");
    prop_assert!(got.len() <= appended.len());
    for (g, a) in got.iter().zip(&appended) {
        prop_assert_eq!(g, a, "replay is not a prefix of the appends");
    }
    let must = appended.iter().filter(|(p, _, b)| p.0 + b.len() as u64 <= durable).count();
    prop_assert!(
        got.len() >= must,
        "lost acknowledged records: replayed {}, durable {must} (durable end {durable}, cut {at})",
        got.len()
    );
    // The log is usable after the crash.
    let (mut wal, _) =
        Wal::open(d.path(), WalConfig { segment_bytes: SEGMENT_BYTES_MIN, backend, ..WalConfig::default() })
            .map_err(|e| TestCaseError::fail(format!("second reopen: {e}")))?;
    wal.append(9, &[b"after"]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    wal.submit(true);
    let mut out = Vec::new();
    prop_assert!(wal.wait(&mut out, Some(Duration::from_secs(30))));
    prop_assert!(out.iter().all(|(_, r)| r.is_ok()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn crash_replays_a_prefix_with_every_acked_record_thread(
        steps in prop::collection::vec(step(64 << 10), 1..80), frac in 0.0f64..1.0, how in cut(),
    ) {
        run(Backend::Thread, steps, frac, how)?;
    }

    #[test]
    fn crash_replays_a_prefix_with_every_acked_record_uring(
        steps in prop::collection::vec(step(64 << 10), 1..80), frac in 0.0f64..1.0, how in cut(),
    ) {
        run(Backend::IoUring, steps, frac, how)?;
    }
}

proptest! {
    // Few cases: each writes tens of MiB so that segments roll.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn crash_across_segment_rolls(
        steps in prop::collection::vec(step(6 << 20), 20..60), frac in 0.0f64..1.0, how in cut(), uring in any::<bool>(),
    ) {
        let b = if uring { Backend::IoUring } else { Backend::Thread };
        run(b, steps, frac, how)?;
    }
}
