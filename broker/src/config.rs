//! cmqd's settings: command-line flags, an optional TOML file, and the
//! embedded defaults. Precedence: flag > file > default. Every setting is
//! documented in `cmqd --help` and in the sample `cmqd.toml` of the README.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use cmq_protocol::FlushPolicy;
use serde::Deserialize;

use crate::cluster::auth::{ClusterKey, CLUSTER_KEY_BYTES_MAX};
use crate::push::{
    PushConfig, ENDPOINT_CONCURRENCY_DEFAULT, ENDPOINT_CONCURRENCY_MAX, IDLE_KEEP_DEFAULT_MS, PUSH_WORKERS_DEFAULT,
    PUSH_WORKERS_MAX,
};

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
    /// Threads sending HTTP pushes: one pool shared by every shard.
    pub const PUSH_WORKERS: usize = super::PUSH_WORKERS_DEFAULT;
    /// HTTP pushes in flight, and connections, per endpoint (scheme, host, port).
    pub const PUSH_ENDPOINT_CONCURRENCY: usize = super::ENDPOINT_CONCURRENCY_DEFAULT;
    /// How long an unused kept-alive push connection is kept (ms).
    pub const PUSH_IDLE_KEEP_MS: u64 = super::IDLE_KEEP_DEFAULT_MS;
    pub const IO_BACKEND: &str = "auto";
    /// A connection must complete its handshake within this (ms).
    pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
    /// A connection with nothing in flight and nothing to send is closed after this (ms).
    pub const IDLE_TIMEOUT_MS: u64 = 300_000;
    /// A request frame must arrive whole, and pending output make progress, within this (ms).
    pub const FRAME_TIMEOUT_MS: u64 = 30_000;
    /// Default connection-buffer budget: this fraction (1/N) of the memory
    /// the broker may use (RAM, or the cgroup's limit if lower).
    pub const BUFFER_BUDGET_RAM_DIVISOR: u64 = 4;
    /// Budget used when the memory size cannot be read.
    pub const BUFFER_BUDGET_FALLBACK_BYTES: u64 = 1024 * 1024 * 1024;
    /// The HTTP port: metrics, health checks.
    pub const HTTP_LISTEN: &str = "127.0.0.1:7780";
    /// Queues named in per-queue metrics (the deepest); the rest are summed.
    pub const METRICS_TOP_QUEUES: usize = 100;
}

/// Bounds on settings, checked at start-up before anything is written to
/// disk (`Config::validate`); `cmqd --help` and the README state them (a
/// test keeps the help text in step).
pub const SHARDS_MAX: usize = 256;
pub const FLUSH_INTERVAL_MS_MAX: u64 = 60_000;
pub const CONNECTIONS_MAX: usize = 1_000_000;
/// Queues a broker may be configured for: a shard's catalog holds at most
/// 10 million (`engine/catalog.rs`).
pub const QUEUES_MAX: usize = 10_000_000;
/// Topics a broker may be configured for (same bound as queues).
pub const TOPICS_MAX: usize = 10_000_000;
/// Write-ahead-log segment sizes (see `storage/mod.rs`: a segment holds at
/// least one record of the largest size).
pub const SEGMENT_BYTES_MIN: u64 = crate::storage::SEGMENT_BYTES_MIN;
pub const SEGMENT_BYTES_MAX: u64 = crate::storage::SEGMENT_BYTES_MAX;
/// An idle push connection is kept at most a day: past that it is a leak,
/// not a cache (servers close idle connections after seconds to minutes).
const PUSH_IDLE_KEEP_MS_MAX: u64 = 86_400_000;
/// Deadlines shorter than this would close healthy connections on a busy
/// machine (they are checked on a 250 ms tick).
const DEADLINE_MS_MIN: u64 = 500;
/// Longest handshake and frame deadline: one hour.
const DEADLINE_MS_MAX: u64 = 3_600_000;
/// Most queues per-queue metrics name (cardinality bound of a scrape).
pub const METRICS_TOP_QUEUES_MAX: usize = crate::metrics::queues::TOP_QUEUES_MAX;
/// Longest idle deadline: one week.
const IDLE_TIMEOUT_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// The smallest budget that still lets one maximum-size request in and one
/// maximum-size response out.
pub const BUFFER_BUDGET_BYTES_MIN: u64 = 2 * cmq_protocol::limits::FRAME_BYTES_MAX as u64;

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
    /// Threads (shared by all shards) sending HTTP pushes for topic subscriptions, 1..=256 [default: 4].
    #[arg(long, value_name = "N")]
    pub push_workers: Option<usize>,
    /// HTTP pushes in flight, and connections, per endpoint (scheme, host, port), 1..=64; further
    /// pushes to it wait their turn [default: 4].
    #[arg(long, value_name = "N")]
    pub push_endpoint_concurrency: Option<usize>,
    /// Milliseconds an unused kept-alive push connection stays open for reuse, 0..=86400000
    /// [default: 15000].
    #[arg(long, value_name = "MS")]
    pub push_idle_keep_ms: Option<u64>,
    /// PEM file of CA certificates trusted for https:// push endpoints, besides the built-in
    /// Mozilla roots (receivers behind a private CA) [default: none].
    #[arg(long, value_name = "FILE")]
    pub push_tls_ca_file: Option<PathBuf>,
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
    /// Testing only: shard 0 panics on its Nth event-loop turn (proves that a panicked
    /// shard ends the process, so a supervisor restarts it).
    #[arg(long, hide = true, value_name = "N")]
    pub fault_panic_after_turns: Option<u64>,
    /// Broker-wide memory for connection buffers: partial request frames and unsent
    /// responses. Past it the broker stops reading the connections assembling the largest
    /// frames until memory frees, and closes the connections that hold the most unsent output
    /// without reading it [default: 1/4 of RAM or of the cgroup memory limit; at least
    /// 33685504 (two maximum-size frames)].
    #[arg(long, value_name = "BYTES")]
    pub buffer_budget_bytes: Option<u64>,
    /// A connection that has not completed its handshake within this many milliseconds is closed
    /// (HANDSHAKE_TIMEOUT) [default: 10000; range 500..=3600000].
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// A connection with no request in flight, no long poll waiting and nothing unsent for this
    /// many milliseconds is closed (IDLE_TIMEOUT); 0 = never [default: 300000; range 0 or
    /// 500..=604800000].
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// A request frame must arrive whole within this many milliseconds of its first byte
    /// (else FRAME_TIMEOUT), and unsent responses must make progress within it (else the
    /// connection is closed as a slow consumer) [default: 30000; range 500..=3600000].
    #[arg(long, value_name = "MS")]
    pub frame_timeout_ms: Option<u64>,
    /// This node's id in a cluster (1..=2^63) [default: 1]. Shard k of every node forms Raft group k.
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
    /// Address the other nodes of the cluster connect to (required with --peers).
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<SocketAddr>,
    /// The other nodes of the cluster, as ID=PEER_ADDR pairs separated by commas
    /// (e.g. 2=127.0.0.1:7802,3=127.0.0.1:7803). Without it cmqd runs as a single node.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peers: Option<String>,
    /// File holding the cluster key every node shares (at least 16 bytes; not readable by
    /// group or others). Nodes prove they hold it to each other before exchanging anything.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Milliseconds per Raft tick: heartbeats every 2 ticks, elections after 10 to 20 silent
    /// ticks [default: 50; range 10..=1000].
    #[arg(long, value_name = "MS")]
    pub raft_tick_ms: Option<u64>,
    /// Join a running cluster (with an empty data directory): start knowing no members and
    /// wait to be added (`cmq cluster add-node`); the leader then sends this node a snapshot.
    /// Ignored once the node holds a log.
    #[arg(long)]
    pub join: bool,
    /// Address of the HTTP port serving /metrics (Prometheus), /healthz and /readyz, or `off`
    /// [default: 127.0.0.1:7780].
    #[arg(long, value_name = "ADDR|off")]
    pub http_listen: Option<String>,
    /// Queues named in per-queue metrics: the N deepest; the others are summed under
    /// queue="_other", so a scrape stays small with any number of queues, 0..=1000 [default: 100].
    #[arg(long, value_name = "N")]
    pub metrics_top_queues: Option<usize>,
    /// Log line format: text, or json (one object per line: ts, level, target, msg) [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Testing only: serve POST /debug/stall?shard=K&ms=M on the HTTP port (blocks a shard's loop).
    #[arg(long, hide = true)]
    pub fault_http_hooks: bool,
    /// Client authentication: `required` (every connection authenticates with a SecretId/SecretKey;
    /// permissions enforced), `optional` (anonymous connections get every permission, authenticated
    /// ones their policy), `off` (nothing enforced). Not given: required once any key exists; with no
    /// keys anonymous clients are served on a loopback --listen address only (see --allow-anonymous).
    #[arg(long, value_enum, value_name = "MODE")]
    pub auth: Option<crate::auth::AuthMode>,
    /// Create an administrator key (policy: every action on every resource) if the broker has no
    /// keys, and write it to FILE (mode 0600, credentials format: secret_id = "...", secret_key = "...").
    #[arg(long, value_name = "FILE")]
    pub init_admin_key: Option<PathBuf>,
    /// Serve anonymous clients on a non-loopback --listen address with no keys (protected mode off).
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Web console sign-ins expire this many seconds after they are made, 1..=604800 [default: 28800].
    #[arg(long, value_name = "SECS")]
    pub console_session_secs: Option<u64>,
    /// Serve TLS on the client port (TLS 1.3) and the HTTP port (HTTPS) with this PEM certificate
    /// chain (leaf first); needs --tls-key. Clients connect with `cmq --tls [--ca-file FILE]`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by a CA in this PEM file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Connections one key may have open at once, broker-wide (0: no limit); one more is refused
    /// with TOO_MANY_KEY_CONNECTIONS when it authenticates.
    #[arg(long, value_name = "N")]
    pub key_connections_max: Option<u64>,
    /// Requests one key may make per second, broker-wide over all its connections (0: no limit);
    /// more in the same second are answered REQUEST_RATE_EXCEEDED.
    #[arg(long, value_name = "N")]
    pub key_requests_per_second: Option<u64>,
    /// TLS 1.3 on the peer links (node to node: Raft, replication, forwarding) with this PEM
    /// certificate chain, presented both to the nodes this one dials and to those that dial it;
    /// needs --peer-tls-key and --peer-tls-ca. Every node of the cluster must turn it on.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// The PEM private key of --peer-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// Mutual TLS between nodes: every peer's certificate must chain to a CA in this PEM file, and
    /// a dialled peer's must name the IP address in --peers.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// The PEM CA that signed the other nodes' client-port certificates (--tls-cert): a follower's
    /// HTTP port forwards a request to its shard's leader over TLS, trusting this CA [default:
    /// --peer-tls-ca; with neither, requests are not forwarded where the client port serves TLS].
    #[arg(long, value_name = "FILE")]
    pub forward_tls_ca: Option<PathBuf>,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// `[time level target] message`.
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`.
    Json,
}

/// `--http-listen`: an address, or `off` (no HTTP port).
pub fn parse_http_listen(text: &str) -> anyhow::Result<Option<SocketAddr>> {
    if text.trim() == "off" {
        return Ok(None);
    }
    let addr = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--http-listen: {text:?} is not an IP:PORT address or `off`"))?;
    Ok(Some(addr))
}

/// `--tls-cert` and `--tls-key` come together; `--tls-client-ca` needs them.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> anyhow::Result<Option<crate::tls::TlsFiles>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles { cert, key, client_ca })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => bail!("--tls-client-ca needs --tls-cert and --tls-key"),
        _ => bail!("--tls-cert and --tls-key must be given together"),
    }
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
    push_endpoint_concurrency: Option<usize>,
    push_idle_keep_ms: Option<u64>,
    push_tls_ca_file: Option<PathBuf>,
    io_backend: Option<IoBackend>,
    buffer_budget_bytes: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    frame_timeout_ms: Option<u64>,
    node_id: Option<u64>,
    peer_listen: Option<SocketAddr>,
    peers: Option<String>,
    cluster_key_file: Option<PathBuf>,
    raft_tick_ms: Option<u64>,
    join: Option<bool>,
    http_listen: Option<String>,
    metrics_top_queues: Option<usize>,
    log_format: Option<LogFormat>,
    auth: Option<crate::auth::AuthMode>,
    init_admin_key: Option<PathBuf>,
    allow_anonymous: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    key_connections_max: Option<u64>,
    key_requests_per_second: Option<u64>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    forward_tls_ca: Option<PathBuf>,
}

/// Where a node of the cluster is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub id: u64,
    pub peer_addr: SocketAddr,
}

/// Running as one node of a replicated cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub peer_listen: SocketAddr,
    /// The other nodes (not this one), by id.
    pub peers: Vec<PeerSpec>,
    /// (Its `Debug` shows no key bytes.)
    pub key: ClusterKey,
    pub raft_tick_ms: u64,
    /// Started with `--join`: no members until a leader's snapshot says.
    pub join: bool,
    /// `--peer-tls-cert/--peer-tls-key/--peer-tls-ca` (None: plaintext peer links).
    pub tls: Option<crate::tls::peer::PeerTlsFiles>,
}
const RAFT_TICK_MS_MIN: u64 = 10;
const RAFT_TICK_MS_MAX: u64 = 1000;
const RAFT_TICK_MS_DEFAULT: u64 = 50;

/// The cluster settings as given, before they are checked.
struct ClusterFlags {
    peer_listen: Option<SocketAddr>,
    peers: Option<String>,
    key_file: Option<PathBuf>,
    raft_tick_ms: Option<u64>,
    join: bool,
    tls: [Option<PathBuf>; 3],
}

impl ClusterFlags {
    /// None without `--peers` (a single node); every other cluster setting
    /// is then refused, so a typo cannot silently start a lone node.
    fn resolve(self, node_id: u64) -> anyhow::Result<Option<ClusterConfig>> {
        if node_id == 0 || node_id > i64::MAX as u64 {
            bail!("--node-id: {node_id} is out of range 1..=9223372036854775807");
        }
        let Some(peers) = self.peers else {
            if self.peer_listen.is_some()
                || self.key_file.is_some()
                || self.join
                || self.tls.iter().any(Option::is_some)
            {
                bail!(
                    "--peer-listen, --cluster-key-file, --join and --peer-tls-* need --peers (the other nodes of the cluster)"
                );
            }
            return Ok(None);
        };
        let peers = parse_peers(&peers)?;
        if peers.iter().any(|p| p.id == node_id) {
            bail!("--peers lists this node's own id {node_id}");
        }
        let Some(peer_listen) = self.peer_listen else {
            bail!("--peers needs --peer-listen (where the other nodes reach this one)");
        };
        let Some(key_file) = self.key_file else {
            bail!("--peers needs --cluster-key-file (the key every node of the cluster shares)");
        };
        let key = read_cluster_key(&key_file)?;
        let raft_tick_ms = self.raft_tick_ms.unwrap_or(RAFT_TICK_MS_DEFAULT);
        if !(RAFT_TICK_MS_MIN..=RAFT_TICK_MS_MAX).contains(&raft_tick_ms) {
            bail!("--raft-tick-ms: {raft_tick_ms} is out of range {RAFT_TICK_MS_MIN}..={RAFT_TICK_MS_MAX}");
        }
        let tls = peer_tls_files(self.tls)?;
        Ok(Some(ClusterConfig { node_id, peer_listen, peers, key, raft_tick_ms, join: self.join, tls }))
    }
}

/// `--peer-tls-cert`, `--peer-tls-key` and `--peer-tls-ca` come together
/// (mutual TLS needs all three on every node).
fn peer_tls_files([cert, key, ca]: [Option<PathBuf>; 3]) -> anyhow::Result<Option<crate::tls::peer::PeerTlsFiles>> {
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::tls::peer::PeerTlsFiles { cert, key, ca })),
        (None, None, None) => Ok(None),
        _ => bail!("--peer-tls-cert, --peer-tls-key and --peer-tls-ca must be given together"),
    }
}

/// Parses `2=127.0.0.1:7802,3=127.0.0.1:7803`.
pub fn parse_peers(text: &str) -> anyhow::Result<Vec<PeerSpec>> {
    let mut out: Vec<PeerSpec> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addr)) = part.split_once('=') else {
            bail!("--peers: {part:?} is not ID=ADDR");
        };
        let id: u64 = id.trim().parse().map_err(|_| anyhow::anyhow!("--peers: node id {id:?} is not a number"))?;
        if id == 0 || id > i64::MAX as u64 {
            bail!("--peers: node id {id} is out of range 1..=9223372036854775807");
        }
        let peer_addr: SocketAddr =
            addr.trim().parse().map_err(|_| anyhow::anyhow!("--peers: {addr:?} is not an IP:PORT address"))?;
        if out.iter().any(|p| p.id == id) {
            bail!("--peers: node {id} is listed twice");
        }
        out.push(PeerSpec { id, peer_addr });
    }
    if out.len() + 1 > cmq_protocol::limits::CLUSTER_NODES_MAX {
        bail!("--peers: at most {} nodes in a cluster", cmq_protocol::limits::CLUSTER_NODES_MAX);
    }
    Ok(out)
}

/// Reads the cluster key: refused if short, huge, or readable by others.
pub fn read_cluster_key(path: &Path) -> anyhow::Result<ClusterKey> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading cluster key file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "cluster key file {} is readable by group or others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    if meta.len() > CLUSTER_KEY_BYTES_MAX as u64 {
        bail!("cluster key file {} is larger than {CLUSTER_KEY_BYTES_MAX} bytes", path.display());
    }
    let raw = std::fs::read(path).with_context(|| format!("reading cluster key file {}", path.display()))?;
    ClusterKey::from_file_contents(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
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
    pub push_endpoint_concurrency: usize,
    pub push_idle_keep_ms: u64,
    pub push_tls_ca_file: Option<PathBuf>,
    pub push_retry_scale: f64,
    pub io_backend: IoBackend,
    pub repair: bool,
    pub fault_file: Option<PathBuf>,
    pub fault_drop_one_in: u64,
    /// Testing only: shard 0 panics on this loop turn (0 = never).
    pub fault_panic_after_turns: u64,
    pub buffer_budget_bytes: u64,
    pub handshake_timeout_ms: u64,
    /// 0 = connections are never closed for being idle.
    pub idle_timeout_ms: u64,
    pub frame_timeout_ms: u64,
    /// This node's id (1 when it runs alone).
    pub node_id: u64,
    /// Set when cmqd runs as one node of a cluster (`--peers`).
    pub cluster: Option<ClusterConfig>,
    /// None: no HTTP port (`--http-listen off`).
    pub http_listen: Option<SocketAddr>,
    pub metrics_top_queues: usize,
    pub log_format: LogFormat,
    /// Testing only: the HTTP port's fault hooks.
    pub fault_http_hooks: bool,
    /// `--auth` (Auto when not given).
    pub auth: crate::auth::AuthMode,
    pub init_admin_key: Option<PathBuf>,
    pub allow_anonymous: bool,
    /// `--console-session-secs`: how long a web console sign-in lasts.
    pub console_session_secs: u64,
    /// `--tls-cert/--tls-key/--tls-client-ca` (None: plaintext ports).
    pub tls: Option<crate::tls::TlsFiles>,
    /// `--key-connections-max` (0: off).
    pub key_connections_max: u64,
    /// `--key-requests-per-second` (0: off).
    pub key_requests_per_second: u64,
    /// `--forward-tls-ca`: the CA of the other nodes' client ports (needs
    /// `--tls-cert` and `--peers`).
    pub forward_tls_ca: Option<PathBuf>,
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
            push_endpoint_concurrency: flags
                .push_endpoint_concurrency
                .or(file.push_endpoint_concurrency)
                .unwrap_or(defaults::PUSH_ENDPOINT_CONCURRENCY),
            push_idle_keep_ms: flags
                .push_idle_keep_ms
                .or(file.push_idle_keep_ms)
                .unwrap_or(defaults::PUSH_IDLE_KEEP_MS),
            push_tls_ca_file: flags.push_tls_ca_file.or(file.push_tls_ca_file),
            push_retry_scale: flags.push_retry_scale.unwrap_or(1.0),
            io_backend: flags.io_backend.or(file.io_backend).unwrap_or(IoBackend::Auto),
            repair: flags.repair,
            fault_file: flags.fault_file,
            fault_drop_one_in: flags.fault_drop_one_in.unwrap_or(0),
            fault_panic_after_turns: flags.fault_panic_after_turns.unwrap_or(0),
            buffer_budget_bytes: flags
                .buffer_budget_bytes
                .or(file.buffer_budget_bytes)
                .unwrap_or_else(default_buffer_budget_bytes),
            handshake_timeout_ms: flags
                .handshake_timeout_ms
                .or(file.handshake_timeout_ms)
                .unwrap_or(defaults::HANDSHAKE_TIMEOUT_MS),
            idle_timeout_ms: flags.idle_timeout_ms.or(file.idle_timeout_ms).unwrap_or(defaults::IDLE_TIMEOUT_MS),
            frame_timeout_ms: flags.frame_timeout_ms.or(file.frame_timeout_ms).unwrap_or(defaults::FRAME_TIMEOUT_MS),
            node_id: flags.node_id.or(file.node_id).unwrap_or(1),
            cluster: None,
            http_listen: parse_http_listen(
                flags.http_listen.as_deref().or(file.http_listen.as_deref()).unwrap_or(defaults::HTTP_LISTEN),
            )?,
            metrics_top_queues: flags
                .metrics_top_queues
                .or(file.metrics_top_queues)
                .unwrap_or(defaults::METRICS_TOP_QUEUES),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            fault_http_hooks: flags.fault_http_hooks,
            auth: flags.auth.or(file.auth).unwrap_or_default(),
            init_admin_key: flags.init_admin_key.or(file.init_admin_key),
            allow_anonymous: flags.allow_anonymous || file.allow_anonymous.unwrap_or(false),
            console_session_secs: crate::console::session::ttl_secs(flags.console_session_secs)?,
            tls: tls_files(
                flags.tls_cert.or(file.tls_cert),
                flags.tls_key.or(file.tls_key),
                flags.tls_client_ca.or(file.tls_client_ca),
            )?,
            key_connections_max: flags.key_connections_max.or(file.key_connections_max).unwrap_or(0),
            key_requests_per_second: flags.key_requests_per_second.or(file.key_requests_per_second).unwrap_or(0),
            forward_tls_ca: flags.forward_tls_ca.or(file.forward_tls_ca),
        };
        cfg.validate()?;
        let cluster = ClusterFlags {
            peer_listen: flags.peer_listen.or(file.peer_listen),
            peers: flags.peers.or(file.peers),
            key_file: flags.cluster_key_file.or(file.cluster_key_file),
            raft_tick_ms: flags.raft_tick_ms.or(file.raft_tick_ms),
            join: flags.join || file.join.unwrap_or(false),
            tls: [
                flags.peer_tls_cert.or(file.peer_tls_cert),
                flags.peer_tls_key.or(file.peer_tls_key),
                flags.peer_tls_ca.or(file.peer_tls_ca),
            ],
        };
        let cluster = cluster.resolve(cfg.node_id)?;
        if cfg.forward_tls_ca.is_some() && (cluster.is_none() || cfg.tls.is_none()) {
            bail!("--forward-tls-ca needs --peers and --tls-cert (it is whom a follower trusts when it forwards over TLS)");
        }
        Ok(Config { cluster, ..cfg })
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
        if self.push_endpoint_concurrency == 0 || self.push_endpoint_concurrency > ENDPOINT_CONCURRENCY_MAX {
            bail!(
                "--push-endpoint-concurrency: {} is out of range 1..={ENDPOINT_CONCURRENCY_MAX}",
                self.push_endpoint_concurrency
            );
        }
        if self.push_idle_keep_ms > PUSH_IDLE_KEEP_MS_MAX {
            bail!("--push-idle-keep-ms: {} is out of range 0..={PUSH_IDLE_KEEP_MS_MAX}", self.push_idle_keep_ms);
        }
        if let Some(path) = &self.push_tls_ca_file {
            if !path.is_file() {
                bail!("--push-tls-ca-file: {} is not a readable file", path.display());
            }
        }
        if !(self.push_retry_scale > 0.0 && self.push_retry_scale <= 1.0) {
            bail!("--push-retry-scale: must be in (0, 1]");
        }
        if self.metrics_top_queues > METRICS_TOP_QUEUES_MAX {
            bail!("--metrics-top-queues: {} is out of range 0..={METRICS_TOP_QUEUES_MAX}", self.metrics_top_queues);
        }
        self.validate_connection_limits()
    }

    fn validate_connection_limits(&self) -> anyhow::Result<()> {
        if self.buffer_budget_bytes < BUFFER_BUDGET_BYTES_MIN {
            bail!(
                "--buffer-budget-bytes: {} is below the minimum of {BUFFER_BUDGET_BYTES_MIN}",
                self.buffer_budget_bytes
            );
        }
        let deadline = DEADLINE_MS_MIN..=DEADLINE_MS_MAX;
        if !deadline.contains(&self.handshake_timeout_ms) {
            bail!("--handshake-timeout-ms: {} is out of range {deadline:?}", self.handshake_timeout_ms);
        }
        if !deadline.contains(&self.frame_timeout_ms) {
            bail!("--frame-timeout-ms: {} is out of range {deadline:?}", self.frame_timeout_ms);
        }
        if self.idle_timeout_ms != 0 && !(DEADLINE_MS_MIN..=IDLE_TIMEOUT_MS_MAX).contains(&self.idle_timeout_ms) {
            bail!(
                "--idle-timeout-ms: {} is out of range: 0 (never) or {DEADLINE_MS_MIN}..={IDLE_TIMEOUT_MS_MAX}",
                self.idle_timeout_ms
            );
        }
        Ok(())
    }
}

impl Config {
    /// The push pool's settings: what flags and file set, defaults for the rest.
    pub fn push_config(&self) -> PushConfig {
        PushConfig {
            workers: self.push_workers,
            endpoint_concurrency: self.push_endpoint_concurrency,
            idle_keep_ms: self.push_idle_keep_ms,
            tls_ca_file: self.push_tls_ca_file.as_ref().map(|p| p.to_string_lossy().into_owned()),
            retry_time_scale: self.push_retry_scale,
            ..PushConfig::default()
        }
    }
}

/// 1/4 of the memory this process may use: RAM (`MemTotal` in
/// /proc/meminfo), or the cgroup v2 memory limit if that is lower.
fn default_buffer_budget_bytes() -> u64 {
    let ram = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_total_bytes(&t));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|t| t.trim().parse::<u64>().ok());
    let usable = match (ram, cgroup) {
        (Some(r), Some(c)) => r.min(c),
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => return defaults::BUFFER_BUDGET_FALLBACK_BYTES,
    };
    (usable / defaults::BUFFER_BUDGET_RAM_DIVISOR).max(BUFFER_BUDGET_BYTES_MIN)
}

/// `MemTotal` from the text of /proc/meminfo, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
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

    fn key_file(mode: u32, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("cluster.key");
        std::fs::write(&p, content).expect("write key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, p)
    }

    #[test]
    fn peers_parse_and_bad_lists_are_refused() {
        let p = parse_peers("2=127.0.0.1:7802, 3=127.0.0.1:7803").expect("valid");
        assert_eq!(p.iter().map(|p| p.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(p[1].peer_addr.to_string(), "127.0.0.1:7803");
        for bad in ["2", "x=127.0.0.1:1", "0=127.0.0.1:1", "2=nowhere", "2=127.0.0.1:1,2=127.0.0.1:2"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (2..=17).map(|i| format!("{i}=127.0.0.1:{i}")).collect();
        assert!(parse_peers(&many.join(",")).is_err(), "more nodes than CLUSTER_NODES_MAX");
    }

    #[test]
    fn cluster_settings_need_each_other_and_a_private_key() {
        let (_d, key) = key_file(0o600, b"0123456789abcdef0123\n");
        let k = key.to_str().expect("utf-8");
        let base = ["--node-id", "1", "--peer-listen", "127.0.0.1:7801", "--peers", "2=127.0.0.1:7802"];
        let ok = Config::from_flags(flags(&[&base[..], &["--cluster-key-file", k]].concat())).expect("valid");
        let c = ok.cluster.expect("a cluster");
        assert_eq!((c.node_id, c.peers.len(), c.raft_tick_ms), (1, 1, 50));
        assert!(Config::from_flags(flags(&base)).is_err(), "no key file");
        assert!(Config::from_flags(flags(&["--peer-listen", "127.0.0.1:7801"])).is_err(), "no --peers");
        assert!(Config::from_flags(flags(&["--peers", "2=127.0.0.1:7802", "--cluster-key-file", k])).is_err());
        let own = ["--node-id", "2", "--peer-listen", "127.0.0.1:7801", "--peers", "2=127.0.0.1:7802"];
        assert!(Config::from_flags(flags(&[&own[..], &["--cluster-key-file", k]].concat())).is_err(), "own id");
        let (_d2, open_key) = key_file(0o644, b"0123456789abcdef0123");
        assert!(read_cluster_key(&open_key).is_err(), "readable by others");
        let (_d3, short) = key_file(0o600, b"short");
        assert!(read_cluster_key(&short).is_err(), "too short");
        assert!(Config::from_flags(flags(&[])).expect("single node").cluster.is_none());
    }

    /// Peer TLS takes all three files (mutual TLS needs each), only in a cluster.
    #[test]
    fn peer_tls_flags_come_together_and_need_a_cluster() {
        let (_d, key) = key_file(0o600, b"0123456789abcdef0123\n");
        let k = key.to_str().expect("utf-8");
        let base = ["--node-id", "1", "--peer-listen", "127.0.0.1:7801", "--peers", "2=127.0.0.1:7802"];
        let base = [&base[..], &["--cluster-key-file", k]].concat();
        let tls = ["--peer-tls-cert", "/c.pem", "--peer-tls-key", "/c.key", "--peer-tls-ca", "/ca.pem"];
        let c = Config::from_flags(flags(&[&base[..], &tls[..]].concat())).expect("valid").cluster.expect("cluster");
        let files = c.tls.expect("peer TLS");
        assert_eq!((files.cert.to_str(), files.ca.to_str()), (Some("/c.pem"), Some("/ca.pem")));
        let plain = Config::from_flags(flags(&base)).expect("valid");
        assert!(plain.cluster.expect("cluster").tls.is_none());
        for missing in [0, 2, 4] {
            let mut partial = tls.to_vec();
            partial.drain(missing..missing + 2);
            let err = Config::from_flags(flags(&[&base[..], &partial[..]].concat())).expect_err("partial");
            assert!(err.to_string().contains("must be given together"), "{err}");
        }
        assert!(Config::from_flags(flags(&tls)).is_err(), "peer TLS without --peers");
    }

    /// `--forward-tls-ca` (file key `forward_tls_ca`) only where forwarding runs over TLS.
    #[test]
    fn forward_tls_ca_needs_a_cluster_with_client_tls() {
        let (_d, key) = key_file(0o600, b"0123456789abcdef0123\n");
        let k = key.to_str().expect("utf-8");
        let base = ["--node-id", "1", "--peer-listen", "127.0.0.1:7801", "--peers", "2=127.0.0.1:7802"];
        let base = [&base[..], &["--cluster-key-file", k]].concat();
        let tls = ["--tls-cert", "/s.pem", "--tls-key", "/s.key"];
        let ca = ["--forward-tls-ca", "/fwd-ca.pem"];
        let c = Config::from_flags(flags(&[&base[..], &tls[..], &ca[..]].concat())).expect("valid");
        assert_eq!(c.forward_tls_ca.as_deref().and_then(|p| p.to_str()), Some("/fwd-ca.pem"));
        for without in [&base[..], &tls[..]] {
            let err = Config::from_flags(flags(&[without, &ca[..]].concat())).expect_err("refused");
            assert!(err.to_string().contains("--forward-tls-ca needs"), "{err}");
        }
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("cmqd.toml");
        std::fs::write(&file, "forward_tls_ca = \"/from-file.pem\"\n").expect("write");
        let args = [&base[..], &tls[..], &["--config", file.to_str().expect("utf-8")]].concat();
        let c = Config::from_flags(flags(&args)).expect("valid");
        assert_eq!(c.forward_tls_ca.as_deref().and_then(|p| p.to_str()), Some("/from-file.pem"));
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
            format!("0..={METRICS_TOP_QUEUES_MAX}"),
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
            ("--push-workers", "256", "0", "257"),
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
    fn push_settings_come_from_flags_or_the_file_and_reach_the_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here: the pool parses it at start-up").expect("write");
        let path = dir.path().join("cmqd.toml");
        let toml = format!(
            "push_endpoint_concurrency = 8\npush_idle_keep_ms = 2500\npush_tls_ca_file = {:?}\npush_workers = 2\n",
            ca.display().to_string()
        );
        std::fs::write(&path, toml).expect("write");
        let p = path.to_str().expect("utf8");
        let cfg = Config::from_flags(flags(&["--config", p, "--push-idle-keep-ms", "500"])).expect("valid");
        let push = cfg.push_config();
        assert_eq!((push.workers, push.endpoint_concurrency, push.idle_keep_ms), (2, 8, 500), "flag over file");
        assert_eq!(push.tls_ca_file.as_deref(), ca.to_str());
        assert_eq!(push.validate(), Ok(()));

        let plain = Config::from_flags(flags(&[])).expect("defaults").push_config();
        let defaults = PushConfig::default();
        assert_eq!(
            (plain.workers, plain.endpoint_concurrency, plain.idle_keep_ms, plain.tls_ca_file),
            (defaults.workers, defaults.endpoint_concurrency, defaults.idle_keep_ms, None)
        );
    }

    #[test]
    fn push_settings_are_bounded() {
        let max_workers = (PUSH_WORKERS_MAX + 1).to_string();
        let max_conc = (ENDPOINT_CONCURRENCY_MAX + 1).to_string();
        let keep = (PUSH_IDLE_KEEP_MS_MAX + 1).to_string();
        let cases: [(&[&str], &str); 6] = [
            (&["--push-workers", "0"], "--push-workers"),
            (&["--push-workers", &max_workers], "--push-workers"),
            (&["--push-endpoint-concurrency", "0"], "--push-endpoint-concurrency"),
            (&["--push-endpoint-concurrency", &max_conc], "--push-endpoint-concurrency"),
            (&["--push-idle-keep-ms", &keep], "--push-idle-keep-ms"),
            (&["--push-tls-ca-file", "/nonexistent/ca.pem"], "--push-tls-ca-file"),
        ];
        for (args, named) in cases {
            let err = Config::from_flags(flags(args)).expect_err("out of range");
            assert!(err.to_string().starts_with(named), "{args:?}: {err}");
        }
        for ok in [&["--push-workers", &PUSH_WORKERS_MAX.to_string()][..], &["--push-idle-keep-ms", "0"]] {
            assert!(Config::from_flags(flags(ok)).is_ok(), "{ok:?}");
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

    #[test]
    fn connection_limits_have_defaults_flags_file_keys_and_ranges() {
        let cfg = Config::from_flags(flags(&[])).expect("valid");
        assert_eq!(cfg.handshake_timeout_ms, defaults::HANDSHAKE_TIMEOUT_MS);
        assert_eq!(cfg.idle_timeout_ms, defaults::IDLE_TIMEOUT_MS);
        assert_eq!(cfg.frame_timeout_ms, defaults::FRAME_TIMEOUT_MS);
        assert!(cfg.buffer_budget_bytes >= BUFFER_BUDGET_BYTES_MIN);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmqd.toml");
        let text = "buffer_budget_bytes = 67108864\nhandshake_timeout_ms = 1000\nidle_timeout_ms = 0\n";
        std::fs::write(&path, text).expect("write");
        let p = path.to_str().expect("utf8");
        let cfg = Config::from_flags(flags(&["--config", p, "--frame-timeout-ms", "2000"])).expect("valid");
        assert_eq!(cfg.buffer_budget_bytes, 64 << 20);
        assert_eq!((cfg.handshake_timeout_ms, cfg.idle_timeout_ms, cfg.frame_timeout_ms), (1000, 0, 2000));
        let min = BUFFER_BUDGET_BYTES_MIN.to_string();
        let below = (BUFFER_BUDGET_BYTES_MIN - 1).to_string();
        assert!(Config::from_flags(flags(&["--buffer-budget-bytes", &min])).is_ok());
        for (flag, bad) in [
            ("--buffer-budget-bytes", below.as_str()),
            ("--handshake-timeout-ms", "499"),
            ("--handshake-timeout-ms", "3600001"),
            ("--frame-timeout-ms", "0"),
            ("--idle-timeout-ms", "499"),
        ] {
            let err = Config::from_flags(flags(&[flag, bad])).expect_err(bad);
            assert!(err.to_string().contains(flag), "{flag} {bad}: {err}");
        }
        assert!(Config::from_flags(flags(&["--handshake-timeout-ms", "500"])).is_ok());
    }

    #[test]
    fn http_and_log_settings_have_defaults_flags_file_keys_and_bounds() {
        let cfg = Config::from_flags(flags(&[])).expect("valid");
        assert_eq!(cfg.http_listen.map(|a| a.to_string()).as_deref(), Some(defaults::HTTP_LISTEN));
        assert_eq!((cfg.metrics_top_queues, cfg.log_format), (defaults::METRICS_TOP_QUEUES, LogFormat::Text));
        let off = Config::from_flags(flags(&["--http-listen", "off"])).expect("off");
        assert_eq!(off.http_listen, None);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmqd.toml");
        let text = "http_listen = \"127.0.0.1:9100\"\nmetrics_top_queues = 7\nlog_format = \"json\"\n";
        std::fs::write(&path, text).expect("write");
        let p = path.to_str().expect("utf8");
        let cfg = Config::from_flags(flags(&["--config", p, "--metrics-top-queues", "1000"])).expect("valid");
        assert_eq!(cfg.http_listen.map(|a| a.port()), Some(9100));
        assert_eq!((cfg.metrics_top_queues, cfg.log_format), (METRICS_TOP_QUEUES_MAX, LogFormat::Json));
        for (flag, bad) in [("--http-listen", "nowhere"), ("--metrics-top-queues", "1001")] {
            let err = Config::from_flags(flags(&[flag, bad])).expect_err(bad);
            assert!(err.to_string().contains(flag), "{flag} {bad}: {err}");
        }
        assert!(Config::from_flags(flags(&["--metrics-top-queues", "0"])).is_ok());
    }

    #[test]
    fn mem_total_is_read_from_meminfo() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(text), Some(24_576_000 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 5 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: x kB\n"), None);
    }
}
