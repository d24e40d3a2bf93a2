//! Issue 11: a seeded random schedule of kills, pauses and partitions
//! against a three-node cluster under load, then the ledger and digest
//! checks.
//!
//! The seed is printed first; `CMQ_CLUSTER_SEED=<seed>` replays the same
//! schedule (the same faults in the same order for the same lengths; the
//! processes' own timing still varies). `CMQ_CLUSTER_SECS=<n>` runs the
//! schedule for n seconds instead of 60.
//!
//! Faults hit one node at a time (or, now and then, every node with a
//! kill -9), so a majority can always make progress: after each fault is
//! undone, every shard must have a leader again within 20 s (liveness).

use std::time::{Duration, Instant};

use cmq_integration_tests::cluster::random_u64;
use cmq_integration_tests::{Cluster, ClusterSpec, Workload};
use cmq_protocol::FlushPolicy;

/// How long the schedule runs unless `CMQ_CLUSTER_SECS` says otherwise.
const DEFAULT_SECS: u64 = 60;

/// How long the cluster may take to have every leader again after a fault.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// SplitMix64: small, seedable, the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9 a node, restart it after a while.
    Kill(usize),
    /// kill -9 the leader of a shard, restart it after a while.
    KillLeader(u16),
    /// SIGSTOP a node, SIGCONT it after a while.
    Pause(usize),
    /// Blackhole every link of a node.
    Isolate(usize),
    /// Blackhole both directions between two nodes.
    CutPair(usize, usize),
    /// Delay every link of a node.
    Slow(usize),
    /// kill -9 every node at once, restart them all.
    KillAll,
}

fn pick(rng: &mut Rng, nodes: usize, shards: u16) -> Fault {
    let n = rng.below(nodes as u64) as usize;
    match rng.below(20) {
        0..=3 => Fault::Kill(n),
        4..=7 => Fault::KillLeader(rng.below(shards.into()) as u16),
        8..=10 => Fault::Pause(n),
        11..=14 => Fault::Isolate(n),
        15..=16 => Fault::CutPair(n, (n + 1 + rng.below(nodes as u64 - 1) as usize) % nodes),
        17..=18 => Fault::Slow(n),
        _ => Fault::KillAll,
    }
}

/// Prints the seed again if the test fails, so it can be replayed.
struct SeedOnFailure(u64);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster_random failed; replay with CMQ_CLUSTER_SEED={}", self.0);
        }
    }
}

#[test]
fn a_random_schedule_of_kills_pauses_and_partitions_loses_nothing() {
    let seed = std::env::var("CMQ_CLUSTER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(random_u64);
    let secs = std::env::var("CMQ_CLUSTER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SECS);
    eprintln!("cluster_random: CMQ_CLUSTER_SEED={seed} CMQ_CLUSTER_SECS={secs}");
    let _guard = SeedOnFailure(seed);
    let mut rng = Rng(seed);

    let mut c = Cluster::start(&ClusterSpec::default());
    let w = Workload::start(&c, "rand", &[FlushPolicy::Sync, FlushPolicy::Async]);
    w.wait_acks(100, Duration::from_secs(30));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut step = 0;
    while Instant::now() < end {
        step += 1;
        let fault = pick(&mut rng, c.len(), c.shards);
        let hold = rng.millis(100, 2500);
        let acked = w.ledger.acked_count();
        let t = Instant::now();
        inflict(&mut c, fault, hold);
        for s in 0..c.shards {
            c.wait_leader(s, RECOVERY_TIMEOUT, |_| true);
        }
        c.assert_running();
        c.assert_no_panics();
        eprintln!(
            "step {step}: {fault:?} for {hold:?}, recovered after {:?}; {} sends acknowledged meanwhile",
            t.elapsed(),
            w.ledger.acked_count() - acked
        );
    }
    w.wait_acks(100, Duration::from_secs(30));
    w.finish(&c);
}

/// Puts `fault` in place, keeps it for `hold`, then undoes it.
fn inflict(c: &mut Cluster, fault: Fault, hold: Duration) {
    match fault {
        Fault::Kill(n) => {
            c.kill9(n);
            std::thread::sleep(hold);
            c.restart(n);
        }
        Fault::KillLeader(s) => {
            let n = c.wait_leader(s, RECOVERY_TIMEOUT, |_| true);
            inflict(c, Fault::Kill(n), hold);
        }
        Fault::Pause(n) => {
            c.pause(n);
            std::thread::sleep(hold);
            c.resume(n);
        }
        Fault::Isolate(n) => {
            c.isolate(n);
            std::thread::sleep(hold);
            c.heal();
        }
        Fault::CutPair(a, b) => {
            c.blackhole_pair(a, b);
            std::thread::sleep(hold);
            c.heal();
        }
        Fault::Slow(n) => {
            c.delay(n, Duration::from_millis(30));
            std::thread::sleep(hold);
            c.heal();
        }
        Fault::KillAll => {
            c.kill9_all();
            for n in 0..c.len() {
                c.restart(n);
            }
        }
    }
}
