//! The deterministic simulation of a three-replica group (broker/src/sim):
//! many seeds per run, each checked after every step; a failure prints the
//! seed, and `CMQ_SIM_SEED=<seed>` replays exactly that run.
//!
//! `CMQ_SIM_SEEDS=<n>` sets how many seeds run (default below);
//! `CMQ_SIM_FROM=<seed>` where they start (default: a seed from the clock,
//! printed, so every CI run explores new seeds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cmq_broker::sim::{run, SimOptions};

const SEEDS_DEFAULT: u64 = 40;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Odd seeds crash processes only (acknowledged async messages must
/// survive), even seeds also cut power (only sync ones must).
fn options(seed: u64) -> SimOptions {
    SimOptions { power_loss: seed.is_multiple_of(2), ..SimOptions::default() }
}

#[test]
fn seeds_hold_every_invariant() {
    if let Some(seed) = env_u64("CMQ_SIM_SEED") {
        let r = run(seed, &options(seed)).unwrap_or_else(|e| panic!("{e}"));
        println!("seed {seed}: {r:?}");
        return;
    }
    let n = env_u64("CMQ_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let from = env_u64("CMQ_SIM_FROM").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() * 1000)
    });
    // Seeds are independent: one thread per core, seed k on thread k % threads.
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get() as u64).clamp(1, n.max(1));
    println!("simulating seeds {from}..{} on {threads} threads (replay one with CMQ_SIM_SEED=<seed>)", from + n);
    let started = Instant::now();
    let failed = AtomicBool::new(false);
    let results: Vec<Result<Totals, (u64, String)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let failed = &failed;
                scope.spawn(move || run_seeds((from + t..from + n).step_by(threads as usize), failed))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut totals = Totals::default();
    // Of the failures found, the lowest seed (threads stop at the first failure anywhere).
    let mut failures: Vec<(u64, String)> = Vec::new();
    for r in results {
        match r {
            Ok(t) => totals.add(&t),
            Err(f) => failures.push(f),
        }
    }
    failures.sort();
    if let Some((seed, e)) = failures.into_iter().next() {
        panic!("{e}\nreplay: CMQ_SIM_SEED={seed} cargo test -p cmq-broker --test simulation -- --nocapture")
    }
    println!(
        "{n} seeds in {:.1?}: {} acknowledged sends, {} acknowledged deletes, {} crashes, {} elections",
        started.elapsed(),
        totals.sends,
        totals.deletes,
        totals.crashes,
        totals.elections
    );
    assert!(totals.sends > 0 && totals.deletes > 0, "the clients got work done");
}

#[derive(Default)]
struct Totals {
    sends: usize,
    deletes: usize,
    crashes: u64,
    elections: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.sends += o.sends;
        self.deletes += o.deletes;
        self.crashes += o.crashes;
        self.elections += o.elections;
    }
}

/// Runs `seeds` until one fails (or another thread's did).
fn run_seeds(seeds: impl Iterator<Item = u64>, failed: &AtomicBool) -> Result<Totals, (u64, String)> {
    let mut totals = Totals::default();
    for seed in seeds {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        match run(seed, &options(seed)) {
            Ok(r) => totals.add(&Totals {
                sends: r.acked_sends,
                deletes: r.acked_deletes,
                crashes: r.crashes,
                elections: r.elections,
            }),
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                return Err((seed, e.to_string()));
            }
        }
    }
    Ok(totals)
}

#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions { duration_ms: 2_000, ..SimOptions::default() };
    let a = run(7, &opts).unwrap_or_else(|e| panic!("{e}"));
    let b = run(7, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b, "same seed, same run");
    assert!(a.acked_sends > 0);
}
