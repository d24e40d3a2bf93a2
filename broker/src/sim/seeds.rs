//! Running many seeds: one thread per core, seed `from + k` on thread
//! `k % threads`, stopping everywhere at the first failure. Used by the
//! simulation test (debug build, a few seeds) and by `examples/simulate.rs`
//! (release build, thousands, `make sim`).

use std::sync::atomic::{AtomicBool, Ordering};

use super::{run, SimFailure, SimOptions};

/// Odd seeds crash processes only (acknowledged async messages must
/// survive), even seeds also cut power (only sync ones must).
pub fn options_for(seed: u64) -> SimOptions {
    SimOptions { power_loss: seed.is_multiple_of(2), ..SimOptions::default() }
}

/// What a batch of seeds did, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub seeds: u64,
    pub acked_sends: usize,
    pub acked_deletes: usize,
    pub crashes: u64,
    pub elections: u64,
    pub releases: u64,
    pub catalogs: u64,
    pub snapshots: u64,
    pub removed: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.seeds += o.seeds;
        self.acked_sends += o.acked_sends;
        self.acked_deletes += o.acked_deletes;
        self.crashes += o.crashes;
        self.elections += o.elections;
        self.releases += o.releases;
        self.catalogs += o.catalogs;
        self.snapshots += o.snapshots;
        self.removed += o.removed;
    }
}

/// Runs seeds `from..from + n` on `threads` threads. On failure, the
/// lowest failing seed found (other threads stop at their next seed).
pub fn run_seeds(from: u64, n: u64, threads: usize) -> Result<Totals, SimFailure> {
    let threads = (threads.max(1) as u64).min(n.max(1));
    let failed = AtomicBool::new(false);
    let results: Vec<Result<Totals, SimFailure>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let failed = &failed;
                scope.spawn(move || run_share((from + t..from + n).step_by(threads as usize), failed))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(t) => totals.add(&t),
            Err(f) => failures.push(f),
        }
    }
    match failures.into_iter().min_by_key(|f| f.seed) {
        Some(f) => Err(f),
        None => Ok(totals),
    }
}

fn run_share(seeds: impl Iterator<Item = u64>, failed: &AtomicBool) -> Result<Totals, SimFailure> {
    let mut totals = Totals::default();
    for seed in seeds {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        // A panic (in raft-rs, say) is reported with its seed (in a debug
        // build: a release build aborts).
        let ran = std::panic::catch_unwind(|| run(seed, &options_for(seed)));
        let ran = ran.unwrap_or_else(|p| {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            Err(SimFailure { seed, at_ms: 0, what: format!("panicked: {}", what.unwrap_or_default()) })
        });
        match ran {
            Ok(r) => totals.add(&Totals {
                seeds: 1,
                acked_sends: r.acked_sends,
                acked_deletes: r.acked_deletes,
                crashes: r.crashes,
                elections: r.elections,
                releases: r.releases,
                catalogs: r.catalogs,
                snapshots: r.snapshots,
                removed: r.removed,
            }),
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }
    Ok(totals)
}
