//! The deterministic simulation of a three-replica group (broker/src/sim):
//! many seeds per run, each checked after every step; a failure prints the
//! seed, and `CMQ_SIM_SEED=<seed>` replays exactly that run.
//!
//! `CMQ_SIM_SEEDS=<n>` sets how many seeds run (default below);
//! `CMQ_SIM_FROM=<seed>` where they start (default: a seed from the clock,
//! printed, so every CI run explores new seeds).

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
    println!("simulating seeds {from}..{} (replay one with CMQ_SIM_SEED=<seed>)", from + n);
    let started = Instant::now();
    let mut totals = (0usize, 0usize, 0u64, 0u64);
    for seed in from..from + n {
        match run(seed, &options(seed)) {
            Ok(r) => {
                totals.0 += r.acked_sends;
                totals.1 += r.acked_deletes;
                totals.2 += r.crashes;
                totals.3 += r.elections;
            }
            Err(e) => {
                panic!("{e}\nreplay: CMQ_SIM_SEED={seed} cargo test -p cmq-broker --test simulation -- --nocapture")
            }
        }
    }
    println!(
        "{n} seeds in {:.1?}: {} acknowledged sends, {} acknowledged deletes, {} crashes, {} elections",
        started.elapsed(),
        totals.0,
        totals.1,
        totals.2,
        totals.3
    );
    assert!(totals.0 > 0 && totals.1 > 0, "the clients got work done");
}

#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions { duration_ms: 2_000, ..SimOptions::default() };
    let a = run(7, &opts).unwrap_or_else(|e| panic!("{e}"));
    let b = run(7, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b, "same seed, same run");
    assert!(a.acked_sends > 0);
}
