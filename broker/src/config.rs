//! cmqd's settings: command-line flags, an optional TOML file, and the
//! embedded defaults. Precedence: flag > file > default. Every setting is
//! documented in `cmqd --help` and in the sample `cmqd.toml` of the README.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use cmq_protocol::FlushPolicy;
use serde::Deserialize;

/// Defaults, named so the help text, the TOML loader and the docs agree.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:7700";
    pub const DATA_DIR: &str = "./data";
    pub const FLUSH: &str = "sync";
    /// Async-flush queues are fdatasync'd at least this often (ms).
    pub const FLUSH_INTERVAL_MS: u64 = 50;
    /// Write-ahead-log segment size (bytes).
    pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    /// Open client connections across all shards.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// Queues across all shards.
    pub const MAX_QUEUES: usize = 100_000;
    /// Topics across all shards.
    pub const MAX_TOPICS: usize = 10_000;
    /// Threads sending HTTP pushes, per shard.
    pub const PUSH_WORKERS: usize = 4;
    pub const IO_BACKEND: &str = "auto";
}

/// Bounds on settings, checked at start-up before anything is written to
/// disk (`Config::validate`); `cmqd --help` and the README state them (a
/// test keeps the help text in step).
pub const SHARDS_MAX: usize = 256;
pub const FLUSH_INTERVAL_MS_MAX: u64 = 60_000;
pub const CONNECTIONS_MAX: usize = 1_000_000;
pub const PUSH_WORKERS_MAX: usize = 64;
/// Queues a broker may be configured for: a shard's catalog holds at most
/// 10 million (`engine/catalog.rs`).
pub const QUEUES_MAX: usize = 10_000_000;
/// Topics a broker may be configured for (same bound as queues).
pub const TOPICS_MAX: usize = 10_000_000;
/// Write-ahead-log segment sizes (see `storage/mod.rs`: a segment holds at
/// least one record of the largest size).
pub const SEGMENT_BYTES_MIN: u64 = crate::storage::SEGMENT_BYTES_MIN;
pub const SEGMENT_BYTES_MAX: u64 = crate::storage::SEGMENT_BYTES_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoBackend {
    /// The flusher thread (measured at least as fast here), else io_uring.
    Auto,
    IoUring,
    Thread,
}

/// cmqd: the cmq message-queue broker.
#[derive(Debug, Parser)]
#[command(name = "cmqd", version, about, long_about = None)]
pub struct Flags {
    /// TOML config file; keys are the long flag names with '-' → '_' (e.g. data_dir = "/var/lib/cmq").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for the binary protocol [default: 127.0.0.1:7700].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the write-ahead log and manifest [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Event-loop threads; each owns the queues whose name hashes to it, 1..=256 [default: number of
    /// CPUs]. Fixed for the life of a data directory.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Default flush policy of new queues: sync (fdatasync before acknowledging) or async [default: sync].
    #[arg(long, value_name = "POLICY")]
    pub flush: Option<String>,
    /// Longest time async-flush data waits for its fdatasync, in milliseconds, 1..=60000 [default: 50].
    #[arg(long, value_name = "MS")]
    pub flush_interval_ms: Option<u64>,
    /// Write-ahead-log segment size in bytes, 17825792..=4294967296 (17 MiB..=4 GiB): a segment holds at
    /// least one record of the largest size (a batch of 16 bodies of 1 MiB) [default: 67108864 (64 MiB)].
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// Maximum open client connections, 1..=1000000; more are refused with TOO_MANY_CONNECTIONS
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Maximum queues on this broker, 1..=10000000; more are refused with TOO_MANY_QUEUES
    /// [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_queues: Option<usize>,
    /// Maximum topics on this broker, 1..=10000000; more are refused with TOO_MANY_TOPICS
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_topics: Option<usize>,
    /// Threads (shared by all shards) sending HTTP pushes for topic subscriptions, 1..=64 [default: 4].
    #[arg(long, value_name = "N")]
    pub push_workers: Option<usize>,
    /// Testing only: multiply HTTP push retry intervals by this factor (e.g. 0.001).
    #[arg(long, hide = true, value_name = "FACTOR")]
    pub push_retry_scale: Option<f64>,
    /// How the write-ahead log does I/O [default: auto].
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub io_backend: Option<IoBackend>,
    /// Start even if the log is corrupt: skip exactly the damaged records (each one is logged, and its
    /// bytes are saved in the shard's quarantine/ directory first) and keep every valid record.
    #[arg(long)]
    pub repair: bool,
    /// Testing only: while this file exists the log behaves as if the disk were full
    /// (put `eio` in it for a failing device, `eio-create` for failing segment creation,
    /// `eio-sync` for a failing fdatasync, `stall-sync` for an fdatasync that does not finish).
    #[arg(long, hide = true, value_name = "FILE")]
    pub fault_file: Option<PathBuf>,
    /// Testing only: acknowledge the send carrying every Nth message without storing it
    /// (proves that cmq-loadgen --verify catches a broker that loses messages).
    #[arg(long, hide = true, value_name = "N")]
    pub fault_drop_one_in: Option<u64>,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    flush: Option<String>,
    flush_interval_ms: Option<u64>,
    segment_bytes: Option<u64>,
    max_connections: Option<usize>,
    max_queues: Option<usize>,
    max_topics: Option<usize>,
    push_workers: Option<usize>,
    io_backend: Option<IoBackend>,
}

/// The effective, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub flush: FlushPolicy,
    pub flush_interval_ms: u64,
    pub segment_bytes: u64,
    pub max_connections: usize,
    pub max_queues: usize,
    pub max_topics: usize,
    pub push_workers: usize,
    pub push_retry_scale: f64,
    pub io_backend: IoBackend,
    pub repair: bool,
    pub fault_file: Option<PathBuf>,
    pub fault_drop_one_in: u64,
}

impl Config {
    pub fn from_flags(flags: Flags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let flush = flags.flush.or(file.flush).unwrap_or_else(|| defaults::FLUSH.to_owned());
        let cfg = Config {
            listen: flags.listen.or(file.listen).unwrap_or_else(|| defaults::LISTEN.parse().expect("valid default")),
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR)),
            shards: flags.shards.or(file.shards).unwrap_or(cpus),
            flush: flush.parse().map_err(|e: String| anyhow::anyhow!("--flush: {e}"))?,
            flush_interval_ms: flags
                .flush_interval_ms
                .or(file.flush_interval_ms)
                .unwrap_or(defaults::FLUSH_INTERVAL_MS),
            segment_bytes: flags.segment_bytes.or(file.segment_bytes).unwrap_or(defaults::SEGMENT_BYTES),
            max_connections: flags.max_connections.or(file.max_connections).unwrap_or(defaults::MAX_CONNECTIONS),
            max_queues: flags.max_queues.or(file.max_queues).unwrap_or(defaults::MAX_QUEUES),
            max_topics: flags.max_topics.or(file.max_topics).unwrap_or(defaults::MAX_TOPICS),
            push_workers: flags.push_workers.or(file.push_workers).unwrap_or(defaults::PUSH_WORKERS),
            push_retry_scale: flags.push_retry_scale.unwrap_or(1.0),
            io_backend: flags.io_backend.or(file.io_backend).unwrap_or(IoBackend::Auto),
            repair: flags.repair,
            fault_file: flags.fault_file,
            fault_drop_one_in: flags.fault_drop_one_in.unwrap_or(0),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            bail!("--shards: {} is out of range 1..={SHARDS_MAX}", self.shards);
        }
        if self.flush_interval_ms == 0 || self.flush_interval_ms > FLUSH_INTERVAL_MS_MAX {
            bail!("--flush-interval-ms: {} is out of range 1..={FLUSH_INTERVAL_MS_MAX}", self.flush_interval_ms);
        }
        if self.max_connections == 0 || self.max_connections > CONNECTIONS_MAX {
            bail!("--max-connections: {} is out of range 1..={CONNECTIONS_MAX}", self.max_connections);
        }
        if self.max_queues == 0 || self.max_queues > QUEUES_MAX {
            bail!("--max-queues: {} is out of range 1..={QUEUES_MAX}", self.max_queues);
        }
        if self.max_topics == 0 || self.max_topics > TOPICS_MAX {
            bail!("--max-topics: {} is out of range 1..={TOPICS_MAX}", self.max_topics);
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            bail!(
                "--segment-bytes: {} is out of range {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} (17 MiB..=4 GiB: a \
                 segment holds at least one record of the largest size)",
                self.segment_bytes
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            bail!("--data-dir: must not be empty");
        }
        if self.push_workers == 0 || self.push_workers > PUSH_WORKERS_MAX {
            bail!("--push-workers: {} is out of range 1..={PUSH_WORKERS_MAX}", self.push_workers);
        }
        if !(self.push_retry_scale > 0.0 && self.push_retry_scale <= 1.0) {
            bail!("--push-retry-scale: must be in (0, 1]");
        }
        Ok(())
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::parse_from(std::iter::once("cmqd").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let cfg = Config::from_flags(flags(&[])).expect("valid");
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(cfg.data_dir, PathBuf::from("./data"));
        assert_eq!(cfg.flush, FlushPolicy::Sync);
        assert!(cfg.shards >= 1);
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmqd.toml");
        std::fs::write(&path, "shards = 3\nflush = \"async\"\nlisten = \"127.0.0.1:9000\"\n").expect("write");
        let p = path.to_str().expect("utf8");
        let cfg = Config::from_flags(flags(&["--config", p, "--shards", "2"])).expect("valid");
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.flush, FlushPolicy::Async);
        assert_eq!(cfg.listen.port(), 9000);
    }

    /// The ranges `--help` states are the ones `validate` enforces.
    #[test]
    fn help_states_every_range() {
        use clap::CommandFactory;
        let help = Flags::command().render_long_help().to_string().replace('\n', " ");
        let help: String = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for range in [
            format!("1..={SHARDS_MAX}"),
            format!("1..={FLUSH_INTERVAL_MS_MAX}"),
            format!("{SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} (17 MiB..=4 GiB)"),
            format!("1..={CONNECTIONS_MAX}"),
            format!("1..={QUEUES_MAX}"),
            format!("1..={TOPICS_MAX}"),
            format!("1..={PUSH_WORKERS_MAX}"),
        ] {
            assert!(help.contains(&range), "--help does not state {range}:\n{help}");
        }
        assert_eq!(SEGMENT_BYTES_MIN, 17 << 20);
        assert_eq!(SEGMENT_BYTES_MAX, 4 << 30);
    }

    #[test]
    fn every_setting_is_checked_at_its_bounds() {
        let seg_min = SEGMENT_BYTES_MIN.to_string();
        let seg_max = SEGMENT_BYTES_MAX.to_string();
        let below = (SEGMENT_BYTES_MIN - 1).to_string();
        let above = (SEGMENT_BYTES_MAX + 1).to_string();
        let cases: [(&str, &str, &str, &str); 8] = [
            ("--shards", "1", "0", "257"),
            ("--flush-interval-ms", "60000", "0", "60001"),
            ("--segment-bytes", &seg_min, &below, &above),
            ("--segment-bytes", &seg_max, "4194304", "0"),
            ("--max-connections", "1000000", "0", "1000001"),
            ("--max-queues", "10000000", "0", "10000001"),
            ("--max-topics", "10000000", "0", "10000001"),
            ("--push-workers", "64", "0", "65"),
        ];
        for (flag, ok, low, high) in cases {
            Config::from_flags(flags(&[flag, ok])).unwrap_or_else(|e| panic!("{flag} {ok} refused: {e}"));
            for bad in [low, high] {
                let err = Config::from_flags(flags(&[flag, bad])).expect_err("out of range");
                assert!(err.to_string().contains(flag), "{flag} {bad}: {err}");
            }
        }
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let err = Config::from_flags(flags(&["--shards", "0"])).expect_err("zero shards");
        assert!(err.to_string().contains("--shards"));
        let err = Config::from_flags(flags(&["--flush", "maybe"])).expect_err("bad flush");
        assert!(err.to_string().contains("--flush"));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "shardz = 3\n").expect("write");
        let err = Config::from_flags(flags(&["--config", path.to_str().expect("utf8")])).expect_err("unknown key");
        assert!(format!("{err:#}").contains("shardz"), "{err:#}");
    }
}
