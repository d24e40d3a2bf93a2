//! The deterministic simulation of a three-replica group (broker/src/sim):
//! many seeds per run, each checked after every step; a failure prints the
//! seed, and `CMQ_SIM_SEED=<seed>` replays exactly that run.
//!
//! `CMQ_SIM_SEEDS=<n>` sets how many seeds run (default below);
//! `CMQ_SIM_FROM=<seed>` where they start (default: a fixed seed, so the
//! test fails only on seeds seen passing before). Thousands of seeds run
//! from a release build: `make sim` (a fixed range), `make sim-explore`
//! (from a seed taken from the clock, to hunt for new bugs).

use std::time::Instant;

use cmq_broker::sim::seeds::{options_for, run_seeds};
use cmq_broker::sim::{run, SimOptions};

/// A debug build takes about 1.4 s a seed (releases, catalogs, snapshots
/// and membership changes included), two seeds at once on 2 cores; `make
/// sim` runs thousands.
const SEEDS_DEFAULT: u64 = 24;
/// Where they start by default.
const FROM_DEFAULT: u64 = 1;
/// Seeds that once found a bug, named in the commit that fixed it.
const REGRESSIONS: [u64; 8] = [
    // A joined node lacked a message: a leader's release was gated on the
    // entries applied, not on its turn's open entry that freed the body.
    237,
    // A snapshot's state is the group's only from the entries its leader's
    // release relied on: compared from there.
    1796451554426,
    // The first leader waited forever for a snapshot for followers with
    // empty logs before anything was committed.
    1796451554568,
    // A leader that had joined by snapshot, with no catalog file since,
    // could offer no snapshot: a new node never caught up.
    6582,
    1001830,
    // A restarted node lost a committed configuration change whose record
    // was in a torn tail (its hard state already committed past it).
    1491,
    7002595,
    // Once sends carried idempotency keys: a follower took its catalog at
    // its log's end, past entries it had not applied; restarted, it skipped
    // their keys (and would have skipped their queue-management records).
    7,
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeds_hold_every_invariant() {
    if let Some(seed) = env_u64("CMQ_SIM_SEED") {
        let r = run(seed, &options_for(seed)).unwrap_or_else(|e| panic!("{e}"));
        println!("seed {seed}: {r:?}");
        return;
    }
    let n = env_u64("CMQ_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let from = env_u64("CMQ_SIM_FROM").unwrap_or(FROM_DEFAULT);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!("simulating seeds {from}..{} on {threads} threads (replay one with CMQ_SIM_SEED=<seed>)", from + n);
    let started = Instant::now();
    let t = run_seeds(from, n, threads).unwrap_or_else(|e| {
        panic!("{e}\nreplay: CMQ_SIM_SEED={} cargo test -p cmq-broker --test simulation -- --nocapture", e.seed)
    });
    println!("{n} seeds in {:.1?}: {t:?}", started.elapsed());
    assert!(t.acked_sends > 0 && t.acked_deletes > 0, "the clients got work done");
}

#[test]
fn regression_seeds_hold_every_invariant() {
    for seed in REGRESSIONS {
        if let Err(e) = run(seed, &options_for(seed)) {
            panic!("{e}\nreplay: CMQ_SIM_SEED={seed} cargo test -p cmq-broker --test simulation -- --nocapture");
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions { duration_ms: 2_000, ..SimOptions::default() };
    let a = run(7, &opts).unwrap_or_else(|e| panic!("{e}"));
    let b = run(7, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b, "same seed, same run");
    assert!(a.acked_sends > 0);
}
