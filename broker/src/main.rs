//! `cmqd`: parse settings, start the shards, stop cleanly on SIGTERM/SIGINT.

use std::io::Write;

use clap::Parser;
use cmq_broker::config::{Config, Flags, LogFormat};
use cmq_broker::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    let cfg = match Config::from_flags(Flags::parse()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("cmqd: {e:#}");
            std::process::exit(1);
        }
    };
    init_logging(cfg.log_format);
    abort_on_panic();
    if let Err(e) = run(cfg) {
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

/// `RUST_LOG` filters (default `info`); `--log-format` picks the line format.
/// Every line names its target (the module, or `cmq::<area>`), which
/// stays the same from release to release so that log filters keep working.
fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

fn run(cfg: Config) -> anyhow::Result<()> {
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
    // Tests and scripts read the bound addresses (useful with port 0) from
    // stdout: the HTTP port's line comes first.
    if let Some(http) = server.http_addr() {
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        log::info!("HTTP port (metrics, health, CMQ API) on {scheme}://{http}/");
        println!("cmqd http on {http}");
    }
    if let Some(tls) = &cfg.tls {
        let mtls = if tls.client_ca.is_some() { ", client certificates required" } else { "" };
        log::info!("TLS on the client and HTTP ports with {}{mtls}", tls.cert.display());
    }
    println!("cmqd listening on {}", server.local_addr);
    cmq_broker::notify::notify("READY=1");
    if let Some(sig) = signals.forever().next() {
        log::info!("received signal {sig}; shutting down");
    }
    cmq_broker::notify::notify("STOPPING=1");
    server.shutdown();
    server.join();
    log::info!("cmqd stopped");
    Ok(())
}
