//! HTTP push: delivering topic messages to `http://` subscription endpoints.
//!
//! The topic engine decides *what* to push and *when* (it owns the outbox:
//! pending deliveries, attempt counts and next attempt times, logged and
//! replayed); this module *does* the requests, on its own threads, and says
//! how long to wait before the next attempt ([`next_retry`]).
//!
//! # Threads
//!
//! One [`PushPool`] per broker with `push_workers` threads (default 4). Each
//! shard holds a [`PushHandle`]: [`PushHandle::submit`] never blocks (a full
//! queue gives the task back), and [`PushHandle::take_outcomes`] collects the
//! shard's results. Outcomes go to a bounded queue per shard and wake that
//! shard's mio `Poll` through its `Waker` (the shard's existing inbox waker
//! will do), at most once between two `take_outcomes` calls: so the shard
//! calls `take_outcomes` on every loop turn (an atomic store and an empty
//! channel check when there is nothing). One shared pool rather than one per shard: the
//! thread count does not grow with shards (2 vCPUs), the per-endpoint bound
//! protects a receiver however many shards own subscriptions pointing at it,
//! and kept-alive connections are shared.
//!
//! Each endpoint (scheme, host, port) has at most `endpoint_concurrency`
//! pushes in flight and at most that many connections (default 4); further
//! pushes to it wait in its own queue while other endpoints keep flowing.
//! Connections are kept alive and reused (HTTP/1.1, one request at a time);
//! an idle one is closed after `idle_keep_ms`. `https://` endpoints use TLS
//! 1.2/1.3 (rustls) and trust Mozilla's root certificates (compiled in) plus
//! those of `tls_ca_file`; the certificate must name the URL's host. A kept connection that turns
//! out to be closed by the server before it answered is replaced by a fresh
//! one and the push sent again once.
//!
//! # The request
//!
//! ```text
//! POST /path?query HTTP/1.1
//! Host: host[:port]
//! User-Agent: cmqd-push/<version>
//! Content-Type: text/plain
//! Content-Length: <n>
//! Connection: keep-alive
//! x-cmq-request-id: <shard>-<delivery>-<attempt>
//! x-cmq-message-id: <msgId>
//! x-cmq-message-tag: <tags joined by ", "; absent when the message has none>
//! X-CMQ-Timestamp: <Unix seconds when the attempt was signed>
//! X-CMQ-Signature: sha256=<64 lowercase hex digits>
//!
//! <body>
//! ```
//!
//! The `x-cmq-*` headers and the `text/plain` content type (for both formats)
//! are those of Tencent CMQ's documented push, so receivers written for CMQ
//! keep working; the timestamp and signature headers are ours. Control
//! characters in tags are removed from the tag header.
//!
//! `x-cmq-request-id` names one attempt: the shard, the delivery (one message
//! to one subscription) and the attempt number, from 1. An attempt repeated
//! because a broker crash lost its outcome carries the same id, so a receiver
//! can recognise the repeat.
//!
//! A `2xx` answer is a delivery. Any other status, a timeout (the task's
//! `timeout`, default 15 s as in CMQ, covering connect, send and the answer),
//! a refused or reset connection, or a malformed answer is a failure that the
//! engine retries per the subscription's `notifyStrategy` (CMQ retries every
//! non-2xx, 4xx included), and so is a failed TLS handshake (an expired or
//! untrusted certificate can be fixed while retries last). Redirects are not
//! followed. Only failures that no retry can fix are marked not retryable:
//! an invalid URL, and a task whose headers could split the request.
//!
//! # Body formats (`notifyContentFormat`)
//!
//! `JSON` (default for http endpoints): one JSON object, UTF-8:
//!
//! ```json
//! {"TopicOwner":"<owner>","topicName":"orders","subscriptionName":"billing",
//!  "msgId":"42","msgBody":"the message body","msgTag":["a","b"],
//!  "routingKey":"order.created","publishTime":1700000000}
//! ```
//!
//! `TopicOwner`, `topicName`, `subscriptionName`, `msgId` (a string),
//! `msgBody` and `publishTime` (Unix seconds) are the fields, names and order
//! of CMQ's documented JSON push. `msgTag` (array of strings, `[]` when
//! untagged) and `routingKey` (`""` when none) are our additions. A body that
//! is not valid UTF-8 has its invalid bytes replaced by U+FFFD in `msgBody`:
//! use `SIMPLIFIED` for binary payloads.
//!
//! `SIMPLIFIED`: the HTTP body is the message body exactly as published; the
//! message id and tags are in the headers.
//!
//! # Signature
//!
//! Every attempt carries `X-CMQ-Timestamp: <t>` (Unix seconds, decimal) and
//! `X-CMQ-Signature: sha256=<hex>`, where `<hex>` is the lowercase hex
//! HMAC-SHA256 keyed with the subscription's push secret (its bytes exactly
//! as the subscriber was given it) over the bytes `"<t>." + body`: the
//! decimal timestamp, a full stop, then the raw HTTP body. Retries are
//! signed again with their own timestamp. To verify, a receiver recomputes
//! the HMAC over the timestamp header, `.` and the body as received,
//! compares in constant time, and rejects timestamps too far from its clock
//! (say, more than 5 minutes) so a captured push cannot be replayed later.
//! Python:
//!
//! ```text
//! mac = hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
//! ok = hmac.compare_digest("sha256=" + mac, request.headers["X-CMQ-Signature"])
//! ```
//!
//! [`sign`] and [`verify`] implement both sides.
//!
//! # Retries (`notifyStrategy`)
//!
//! [`next_retry`]`(strategy, failed_attempts, delivery_id)`: `BACKOFF_RETRY`
//! waits a random 10–20 s (a hash of the delivery id and attempt, so replay
//! computes the same) and gives up after 3 retries; `EXPONENTIAL_DECAY_RETRY`
//! waits 1, 2, 4 … 256 s then 512 s, and gives up after 176 retries (86,015 s
//! of waiting, just under a day). `retry_time_scale` multiplies every
//! interval (tests only).

mod body;
mod http;
mod pool;
mod retry;
mod sign;
mod tls;
mod url;

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

pub use body::{
    build_task, header_value, render_body, NotifyContentFormat, PushMessage, PushRequest, CONTENT_TYPE_JSON,
    CONTENT_TYPE_SIMPLIFIED, MESSAGE_ID_HEADER, MESSAGE_TAG_HEADER, REQUEST_ID_HEADER,
};
pub use http::{
    COALESCE_BODY_BYTES_MAX, INTERIM_RESPONSES_MAX, REQUEST_BODY_BYTES_MAX, REQUEST_HEAD_BYTES_MAX,
    RESPONSE_BODY_BYTES_MAX, RESPONSE_HEADERS_MAX, RESPONSE_HEAD_BYTES_MAX, USER_AGENT,
};
pub use pool::{PushHandle, PushPool, PushStats, IDLE_CONNS_MAX};
pub use retry::{
    next_retry, next_retry_scaled, retries_max, NotifyStrategy, BACKOFF_INTERVAL_MAX_MS, BACKOFF_INTERVAL_MIN_MS,
    BACKOFF_RETRIES_MAX, EXPONENTIAL_INTERVAL_CAP_S, EXPONENTIAL_RETRIES_MAX, EXPONENTIAL_SPAN_S,
};
pub use sign::{sign, verify, SIGNATURE_HEADER, SIGNATURE_PREFIX, TIMESTAMP_HEADER};
pub use url::{parse as parse_url, Endpoint, Scheme, Target, UrlError, URL_BYTES_MAX};

/// Worker threads by default. Pushes are network-bound; 4 keep 4 slow
/// receivers from stalling everyone without crowding 2 vCPUs.
pub const PUSH_WORKERS_DEFAULT: usize = 4;
/// Most worker threads (each blocks on one request at a time).
pub const PUSH_WORKERS_MAX: usize = 256;
/// Pushes in flight (and so connections) per endpoint by default.
pub const ENDPOINT_CONCURRENCY_DEFAULT: usize = 4;
/// Most pushes in flight, and connections, per endpoint.
pub const ENDPOINT_CONCURRENCY_MAX: usize = 64;
/// Pushes one shard may have outstanding by default (queued, in flight, or
/// with the outcome not yet taken). This bounds the memory of queued bodies
/// (4096 x a 64 KiB message = 256 MiB at worst), not time: at 15 s per
/// timed-out push and 4 workers, 4096 pushes to dead endpoints take hours,
/// so the engine should submit pushes that are due, not its whole backlog.
pub const PUSH_QUEUE_TASKS_DEFAULT: usize = 4096;
/// Most pushes one shard may have outstanding (its outcome queue is
/// allocated up front: about 3.5 MiB at this size).
pub const PUSH_QUEUE_TASKS_MAX: usize = 65_536;
/// Time to set up a TCP connection, by default.
pub const CONNECT_TIMEOUT_DEFAULT_MS: u64 = 5_000;
/// How long an unused kept-alive connection is kept, by default. Servers
/// close idle connections after 5 s (Node) to 75 s (nginx); a connection
/// found closed costs a reconnect, not a failure.
pub const IDLE_KEEP_DEFAULT_MS: u64 = 15_000;
/// A push attempt's time budget by default (CMQ: "about 15 seconds").
pub const PUSH_TIMEOUT_DEFAULT_MS: u64 = 15_000;

const _: () = assert!(ENDPOINT_CONCURRENCY_DEFAULT <= ENDPOINT_CONCURRENCY_MAX);
const _: () = assert!(PUSH_WORKERS_DEFAULT <= PUSH_WORKERS_MAX);
const _: () = assert!(PUSH_QUEUE_TASKS_DEFAULT <= PUSH_QUEUE_TASKS_MAX);
// Every endpoint at its limit keeps all its connections idle: the pool-wide cap must allow a few.
const _: () = assert!(IDLE_CONNS_MAX >= 4 * ENDPOINT_CONCURRENCY_MAX);

/// Push pool settings. cmqd sets `workers`, `endpoint_concurrency`,
/// `idle_keep_ms` and `tls_ca_file` from its `push_*` flags and config-file
/// keys (`Config::push_config`); the rest keep their defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// Worker threads (`push_workers`).
    pub workers: usize,
    /// Pushes in flight, and connections, per endpoint (host:port).
    pub endpoint_concurrency: usize,
    /// Pushes each shard may have outstanding; `submit` refuses more.
    pub queue_len: usize,
    pub connect_timeout_ms: u64,
    pub idle_keep_ms: u64,
    /// Multiplies every retry interval (testing only: 0.001 runs a schedule in milliseconds).
    pub retry_time_scale: f64,
    /// A PEM file of CA certificates trusted for https endpoints besides
    /// Mozilla's roots (receivers behind a private CA).
    pub tls_ca_file: Option<String>,
}

impl Default for PushConfig {
    fn default() -> PushConfig {
        PushConfig {
            workers: PUSH_WORKERS_DEFAULT,
            endpoint_concurrency: ENDPOINT_CONCURRENCY_DEFAULT,
            queue_len: PUSH_QUEUE_TASKS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_DEFAULT_MS,
            idle_keep_ms: IDLE_KEEP_DEFAULT_MS,
            retry_time_scale: 1.0,
            tls_ca_file: None,
        }
    }
}

impl PushConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=PUSH_WORKERS_MAX).contains(&self.workers) {
            return Err(format!("push workers: {} is out of range 1..={PUSH_WORKERS_MAX}", self.workers));
        }
        if !(1..=ENDPOINT_CONCURRENCY_MAX).contains(&self.endpoint_concurrency) {
            return Err(format!(
                "push endpoint_concurrency: {} is out of range 1..={ENDPOINT_CONCURRENCY_MAX}",
                self.endpoint_concurrency
            ));
        }
        if !(1..=PUSH_QUEUE_TASKS_MAX).contains(&self.queue_len) {
            return Err(format!("push queue_len: {} is out of range 1..={PUSH_QUEUE_TASKS_MAX}", self.queue_len));
        }
        if self.connect_timeout_ms == 0 {
            return Err("push connect_timeout_ms must be positive".into());
        }
        if !(self.retry_time_scale.is_finite() && self.retry_time_scale > 0.0 && self.retry_time_scale <= 1.0) {
            return Err(format!("push retry_time_scale: {} is out of range (0, 1]", self.retry_time_scale));
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn idle_keep(&self) -> Duration {
        Duration::from_millis(self.idle_keep_ms)
    }

    /// [`next_retry`] under this configuration's `retry_time_scale`.
    pub fn next_retry(&self, strategy: NotifyStrategy, attempt: u32, delivery_id: u64) -> Option<Duration> {
        next_retry_scaled(strategy, attempt, delivery_id, self.retry_time_scale)
    }
}

/// One push attempt, ready to send. Build it with [`build_task`] (which
/// renders, signs and names it) or by hand.
#[derive(Debug, Clone)]
pub struct PushTask {
    /// Comes back with the outcome; unique among this shard's outstanding tasks.
    pub id: u64,
    pub url: String,
    pub body: Bytes,
    pub content_type: &'static str,
    /// Extra headers (signature, CMQ's `x-cmq-*`). Host, Content-Length,
    /// Content-Type, Transfer-Encoding, Connection and User-Agent are the
    /// pool's own and refused here.
    pub headers: Vec<(String, String)>,
    /// Budget for the whole attempt: connect, send, answer.
    pub timeout: Duration,
}

/// How a push attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The endpoint answered 2xx.
    Delivered { status: u16 },
    /// Anything else. `status` is the HTTP status when the endpoint answered
    /// one; `retryable` is false only when no retry can succeed (invalid URL
    /// or headers).
    Failed { status: Option<u16>, reason: String, retryable: bool },
}

impl PushOutcome {
    pub fn is_delivered(&self) -> bool {
        matches!(self, PushOutcome::Delivered { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_toml() {
        let d = PushConfig::default();
        assert_eq!((d.workers, d.endpoint_concurrency, d.queue_len), (4, 4, 4096));
        assert_eq!(d.validate(), Ok(()));
        let c: PushConfig = toml::from_str("workers = 2\ntls_ca_file = \"/etc/ca.pem\"").unwrap();
        assert_eq!(
            c,
            PushConfig { workers: 2, tls_ca_file: Some("/etc/ca.pem".into()), ..PushConfig::default() },
            "absent fields take their defaults"
        );
        let fast: PushConfig = toml::from_str("retry_time_scale = 0.001").unwrap();
        assert_eq!(fast.next_retry(NotifyStrategy::ExponentialDecayRetry, 3, 0), Some(Duration::from_millis(4)));
    }

    #[test]
    fn config_bounds() {
        let bad = [
            PushConfig { workers: 0, ..PushConfig::default() },
            PushConfig { workers: PUSH_WORKERS_MAX + 1, ..PushConfig::default() },
            PushConfig { endpoint_concurrency: 0, ..PushConfig::default() },
            PushConfig { endpoint_concurrency: ENDPOINT_CONCURRENCY_MAX + 1, ..PushConfig::default() },
            PushConfig { queue_len: 0, ..PushConfig::default() },
            PushConfig { queue_len: PUSH_QUEUE_TASKS_MAX + 1, ..PushConfig::default() },
            PushConfig { connect_timeout_ms: 0, ..PushConfig::default() },
            PushConfig { retry_time_scale: 0.0, ..PushConfig::default() },
            PushConfig { retry_time_scale: 2.0, ..PushConfig::default() },
            PushConfig { retry_time_scale: f64::NAN, ..PushConfig::default() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
