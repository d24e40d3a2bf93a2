//! `cmqd`: parse settings, start the shards, stop cleanly on SIGTERM/SIGINT.

use clap::Parser;
use cmq_broker::config::{Config, Flags};
use cmq_broker::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run() {
        log::error!("{e:#}");
        eprintln!("cmqd: {e:#}");
        std::process::exit(1);
    }
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
