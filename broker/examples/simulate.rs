//! Thousands of simulator seeds from a release build (`make sim`): the
//! same runs as `tests/simulation.rs`, about ten times faster than its
//! debug build. Exits 1 at the first failing seed, printing how to replay
//! it. A release build aborts on panic, which is why the simulator reports
//! broken invariants as values rather than panics.
//!
//!     cargo run --release --example simulate -- [SEEDS [FROM]]
//!
//! SEEDS defaults to 2000; FROM to a seed taken from the clock (printed).
//! `make sim` passes 3000 and a fixed FROM (`SIM_FROM`), so `make test`
//! fails only on seeds seen passing before; `make sim-explore` passes no
//! FROM, to hunt for new bugs.

use std::process::ExitCode;
use std::time::Instant;

use cmq_broker::sim::seeds::run_seeds;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let n = match args.next().transpose() {
        Ok(n) => n.unwrap_or(2000),
        Err(e) => return usage(&e.to_string()),
    };
    let from = match args.next().transpose() {
        Ok(f) => f.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() * 1000)
        }),
        Err(e) => return usage(&e.to_string()),
    };
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!("simulating seeds {from}..{} on {threads} threads", from + n);
    let started = Instant::now();
    match run_seeds(from, n, threads) {
        Ok(t) => {
            println!("{n} seeds passed in {:.1?}: {t:?}", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}\nreplay: CMQ_SIM_SEED={} cargo test -p cmq-broker --test simulation -- --nocapture", e.seed);
            ExitCode::FAILURE
        }
    }
}

fn usage(e: &str) -> ExitCode {
    eprintln!("simulate: {e}\nusage: simulate [SEEDS [FROM]]");
    ExitCode::from(2)
}
