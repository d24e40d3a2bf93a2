//! Command-line options.

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::body::HEADER_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Producers only: send as fast as allowed (or at --rate).
    Produce,
    /// Preload --preload messages, then consumers receive and delete them, measured.
    Consume,
    /// Producers and consumers at once: every message sent, received and deleted.
    Cycle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    Sync,
    Async,
}

/// Load generator for the cmq broker: closed- or open-loop producers and
/// consumers, HdrHistogram latencies, and exact loss/duplicate accounting.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "cmq-loadgen",
    version,
    after_help = "\
Latencies: send-ack is from a send request's submission (with --rate, from the
time it was due) to its answer, one sample per request; e2e is from the send
time carried in each body to the consumer receiving it, one sample per message.
Rates and latencies cover the measured interval only (after --warmup, until
--duration ends or the last of --messages completes); error counts and
--verify cover the whole run. Errors are keyed by broker error code, or by
disconnected/timeout/io/protocol; \"stalled\" counts answers that arrived only
after the load generator pinged a connection that had gone quiet with requests
in flight (a broker that missed a wake-up).

Exit status: 0 success; 1 the run could not start (connect, queue setup) or
bad options; 2 --verify found lost or duplicated messages; 3 a connection
broke during the run (the report is still printed)."
)]
pub struct Opts {
    /// Workload: produce, consume or cycle.
    #[arg(long, value_enum, default_value_t = Mode::Cycle)]
    pub mode: Mode,

    /// Broker address (host:port), or several nodes of a cluster
    /// comma-separated: the first that answers tells where the rest are,
    /// and each shard's connections go to the node that leads it (following
    /// the leader when it moves).
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "HOST:PORT[,...]")]
    pub server: String,

    /// SecretId to authenticate every connection with (with --secret-key; else
    /// $CMQ_SECRET_ID/$CMQ_SECRET_KEY, else --credentials, else
    /// ~/.config/cmq/credentials if it exists; none: anonymous).
    #[arg(long, value_name = "AKID...")]
    pub secret_id: Option<String>,

    /// SecretKey of --secret-id.
    #[arg(long, value_name = "KEY")]
    pub secret_key: Option<String>,

    /// Credentials file (secret_id = "...", secret_key = "..."; refused if
    /// group or others may read it).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<std::path::PathBuf>,

    /// Connect over TLS 1.3 (the broker runs with --tls-cert), checking its
    /// certificate against --ca-file, or Mozilla's root CAs without it.
    #[arg(long)]
    pub tls: bool,

    /// PEM file of the CA(s) to trust for the broker's certificate (implies --tls).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Client certificate (PEM chain) for a broker with --tls-client-ca; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Check the broker's certificate for this name instead of the host of
    /// --server (for an address given as an IP; implies --tls), like `cmq`.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Queues to spread the load over; 0 = one per broker shard. Names are
    /// PREFIX-K, chosen so that the queues spread evenly over the shards.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub queues: usize,

    /// Prefix of the queue names. Without --reuse, queues by these names are
    /// deleted and created afresh.
    #[arg(long, default_value = "loadgen", value_name = "NAME")]
    pub queue_prefix: String,

    /// Producers, each with its own connection to its queues' shard.
    #[arg(long, default_value_t = 2, value_name = "P")]
    pub producers: usize,

    /// Consumers, each with its own connection to its queues' shard.
    #[arg(long, default_value_t = 2, value_name = "C")]
    pub consumers: usize,

    /// Threads that drive the connections, each an event loop over its share
    /// of them; 0 = one thread per connection. Changes only what the load
    /// generator costs, not the load: connections and requests in flight stay
    /// as --producers, --consumers and --pipeline say. With --pipeline 1 one
    /// thread costs least (each wake-up collects every answer that came
    /// meanwhile); with deep pipelines two refill their windows sooner.
    #[arg(long, default_value_t = 2, value_name = "T")]
    pub threads: usize,

    /// Requests in flight per connection (with --rate: at most this many).
    #[arg(long, default_value_t = 32, value_name = "D")]
    pub pipeline: usize,

    /// Messages per send, receive and delete request (1-16); 1 uses the
    /// single-message operations.
    #[arg(long, default_value_t = 16, value_name = "B")]
    pub batch: usize,

    /// Message body size in bytes (at least 24: id and send time).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,

    /// Send without idempotency keys (protocol version 2's sends). By
    /// default, against a cluster (several seeds or nodes), every message
    /// carries a fresh 16-byte key, as the client library's sends do, and
    /// against a single node none; this flag and --idempotency-keys
    /// measure what the keys cost.
    #[arg(long, conflicts_with = "idempotency_keys")]
    pub no_idempotency_keys: bool,

    /// Every message carries a fresh 16-byte idempotency key, also against
    /// a single node.
    #[arg(long)]
    pub idempotency_keys: bool,

    /// Flush policy of the queues this run creates: sync or async.
    #[arg(long, value_enum, default_value_t = Flush::Sync)]
    pub flush: Flush,

    /// Use existing queues as they are (create only missing ones); do not
    /// delete and recreate them.
    #[arg(long)]
    pub reuse: bool,

    /// Messages per run: produce sends N, cycle sends N and ends when all are
    /// received, consume ends after N deliveries (or when the queues are
    /// empty). Conflicts with --duration.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub messages: Option<u64>,

    /// Measured seconds [default: 10 when --messages is not given].
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,

    /// Seconds of load before measuring starts [default: 1 with --duration, 0 with --messages].
    #[arg(long, value_name = "S")]
    pub warmup: Option<f64>,

    /// Consume mode: messages sent (unmeasured) before consumers start
    /// [default: --messages if given, else 1000000]; 0 consumes what the queues hold.
    #[arg(long, value_name = "N")]
    pub preload: Option<u64>,

    /// Open loop: offer this many messages/s in total, spread over the
    /// producers; latency is measured from each request's due time.
    /// Without it the run is closed loop (--pipeline requests always in flight).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// Cycle mode: producers pause while more than this many acknowledged
    /// messages wait unreceived, so the run measures a steady state instead
    /// of a growing queue (and end-to-end latency stays meaningful); 0 = no
    /// limit [default: 16 x consumers x pipeline x batch, at least 1000: enough
    /// that consumers never find the queues empty].
    #[arg(long, value_name = "N")]
    pub backlog_max: Option<u64>,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,

    /// Track every message by id and report lost, duplicated and redelivered
    /// messages; cycle and consume runs drain the queues before reporting.
    #[arg(long)]
    pub verify: bool,

    /// Seconds --verify keeps consuming after the measured interval for
    /// messages still unaccounted for.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub drain_timeout: f64,

    /// The broker's process id: report its CPU seconds over the measured interval.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// visibilityTimeout (seconds) of the queues this run creates.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub visibility_timeout: u32,

    /// Long-poll seconds of each consumer receive (0-30).
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub wait: u32,

    /// Drive the CMQ API 2.0 HTTP gateway at this URL (cmqd's --http-listen,
    /// e.g. http://127.0.0.1:7780) instead of the binary protocol:
    /// SendMessage / ReceiveMessage / DeleteMessage over keep-alive
    /// connections, one per producer and consumer, one request in flight
    /// each (--pipeline and --batch do not apply), every request signed
    /// with the run's key (anonymous: a key the broker does not know).
    /// Queues are still created over --server. Modes: cycle and produce;
    /// --size at least 48 (the body header is sent as hex text).
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,

    /// With --http: sign with HmacSHA1 instead of HmacSHA256.
    #[arg(long, requires = "http")]
    pub sha1: bool,
}

impl Opts {
    /// Checks what clap cannot; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        let batch_max = cmq_protocol::limits::BATCH_MSGS_MAX;
        if !(1..=batch_max).contains(&self.batch) {
            return Err(format!("--batch must be 1-{batch_max} (got {})", self.batch));
        }
        if self.size < HEADER_BYTES || self.size > cmq_protocol::limits::MSG_BYTES_MAX as usize {
            return Err(format!(
                "--size must be {HEADER_BYTES}-{} bytes (got {})",
                cmq_protocol::limits::MSG_BYTES_MAX,
                self.size
            ));
        }
        if self.pipeline == 0 || self.pipeline > 4096 {
            return Err(format!("--pipeline must be 1-4096 (got {})", self.pipeline));
        }
        if self.mode != Mode::Consume && self.producers == 0 {
            return Err("--producers must be at least 1 in produce and cycle mode".into());
        }
        if self.producers as u64 >= u64::from(crate::body::PRODUCERS_MAX) {
            return Err(format!("--producers must be below {}", crate::body::PRODUCERS_MAX));
        }
        if self.mode != Mode::Produce && self.consumers == 0 {
            return Err("--consumers must be at least 1 in consume and cycle mode".into());
        }
        if self.wait > cmq_protocol::limits::POLLING_WAIT_SECONDS_MAX {
            return Err(format!(
                "--wait must be 0-{} (got {})",
                cmq_protocol::limits::POLLING_WAIT_SECONDS_MAX,
                self.wait
            ));
        }
        if !(1..=43_200).contains(&self.visibility_timeout) {
            return Err(format!("--visibility-timeout must be 1-43200 (got {})", self.visibility_timeout));
        }
        for (name, v) in
            [("--duration", self.duration), ("--warmup", self.warmup), ("--drain-timeout", Some(self.drain_timeout))]
        {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!("{name} must be a non-negative number of seconds (got {v})"));
                }
            }
        }
        if let Some(r) = self.rate {
            if !r.is_finite() || r <= 0.0 {
                return Err(format!("--rate must be a positive number of messages/s (got {r})"));
            }
        }
        if self.messages == Some(0) {
            return Err("--messages must be at least 1".into());
        }
        if self.http.is_some() {
            self.validate_http()?;
        }
        cmq_protocol::names::validate_name("--queue-prefix", &format!("{}-0", self.queue_prefix))?;
        Ok(())
    }

    /// What --http cannot do.
    fn validate_http(&self) -> Result<(), String> {
        let min = crate::http::agent::TEXT_HEADER_CHARS;
        if self.size < min {
            return Err(format!("--size must be at least {min} with --http (got {})", self.size));
        }
        if self.mode == Mode::Consume {
            return Err("--http supports --mode cycle and produce".into());
        }
        if self.rate.is_some() {
            return Err("--rate is not supported with --http (closed loop only)".into());
        }
        Ok(())
    }

    /// With --http one message per request and one request in flight.
    pub fn effective(mut self) -> Opts {
        if self.http.is_some() {
            self.batch = 1;
            self.pipeline = 1;
        }
        self
    }

    pub fn duration_s(&self) -> Option<f64> {
        match (self.messages, self.duration) {
            (Some(_), _) => None,
            (None, Some(d)) => Some(d),
            (None, None) => Some(10.0),
        }
    }

    pub fn warmup_s(&self) -> f64 {
        self.warmup.unwrap_or(if self.duration_s().is_some() { 1.0 } else { 0.0 })
    }

    pub fn backlog_max_n(&self) -> u64 {
        if self.mode != Mode::Cycle {
            return 0;
        }
        self.backlog_max.unwrap_or_else(|| (16 * self.consumers * self.pipeline * self.batch).max(1000) as u64)
    }

    pub fn preload_n(&self) -> u64 {
        self.preload.or(self.messages).unwrap_or(1_000_000)
    }
}
