//! `cmqd`: parse settings, start the shards, stop cleanly on SIGTERM/SIGINT.

use clap::Parser;
use cmq_broker::config::{Config, Flags};
use cmq_broker::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    abort_on_panic();
    if let Err(e) = run() {
        log::error!("{e:#}");
        eprintln!("cmqd: {e:#}");
        std::process::exit(1);
    }
}

/// A panic in any thread ends the process at once, with a non-zero status
/// (SIGABRT), in every build: a shard that died while the others serve on
/// is a silent partial outage (its queues unanswered, peers' messages to it
/// piling up), whereas a process that exits is restarted by its supervisor
/// and recovers every acknowledged message from the log. Release builds
/// also set `panic = "abort"` (Cargo.toml); this hook makes debug and test
/// builds behave the same, after the default hook has printed the message.
fn abort_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        log::error!("thread {thread} panicked: cmqd aborts; restart it and recovery rebuilds the state from the log");
        std::process::abort();
    }));
}

fn run() -> anyhow::Result<()> {
    let cfg = Config::from_flags(Flags::parse())?;
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let server = Server::start(cfg.clone())?;
    log::info!(
        "cmqd {} listening on {} with {} shards, data in {}, default flush {}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr,
        cfg.shards,
        cfg.data_dir.display(),
        cfg.flush.as_str()
    );
    // Tests and scripts read the bound address (useful with port 0) from stdout.
    println!("cmqd listening on {}", server.local_addr);
    if let Some(sig) = signals.forever().next() {
        log::info!("received signal {sig}; shutting down");
    }
    server.shutdown();
    server.join();
    log::info!("cmqd stopped");
    Ok(())
}
