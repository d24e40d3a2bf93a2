//! `GET /metrics`: one round of questions to the shards, plus what the HTTP
//! thread reads itself, encoded by `metrics::encode`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::http::request::Parts;
use hyper::{header, StatusCode};

use super::router::{reply, Reply};
use super::HttpContext;
use crate::metrics::encode::{render, ConnSample, Scrape};
use crate::metrics::process::{sample_disk, sample_process};
use crate::metrics::snapshot::BrokerSnapshot;
use crate::shard::ConnCounters;

/// How long a scrape waits for the shards (Prometheus' default scrape
/// timeout is 10 s); a shard that has not answered is shown with
/// `cmq_shard_up 0` and without its series.
pub const SCRAPE_SHARD_DEADLINE: Duration = Duration::from_secs(2);

pub async fn metrics(ctx: &HttpContext, req: &Parts) -> Reply {
    let top = ctx.shared.cfg.metrics_top_queues;
    let answers = ctx.bridge.gather(Some(top), SCRAPE_SHARD_DEADLINE).await;
    let shards = answers.into_iter().flatten().map(|a| a.snapshot).collect();
    let shared = &ctx.shared;
    let scrape = Scrape {
        shard_count: shared.cfg.shards,
        broker: BrokerSnapshot::merge(shards, top),
        conns: shared.conn_counters.iter().map(conn_sample).collect(),
        leaders: shared.leaders.iter().map(|(l, t)| (l.load(Ordering::Relaxed), t.load(Ordering::Relaxed))).collect(),
        queues: shared.queue_count.load(Ordering::Relaxed) as u64,
        topics: shared.topic_count.load(Ordering::Relaxed) as u64,
        auth_failures: shared.auth.failures.load(Ordering::Relaxed),
        http_waiting: shared.external.len() as u64,
        http_forwarded: ctx.forward.outcomes(),
        http_forward_connections: ctx.forward.open_connections(),
        process: sample_process(&ctx.start),
        disk: sample_disk(&shared.cfg.data_dir, shared.cfg.shards),
        now_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    };
    let (ctype, body) = render(scrape, wants_openmetrics(req));
    reply(StatusCode::OK, ctype, body)
}

/// Prometheus asks for OpenMetrics in its Accept header; anything else
/// (curl, older scrapers) gets the classic text format.
fn wants_openmetrics(req: &Parts) -> bool {
    req.headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

fn conn_sample(c: &ConnCounters) -> ConnSample {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    ConnSample {
        refused: vec![
            ("too_many_connections", get(&c.connections_refused)),
            ("buffer_budget", get(&c.tls_budget_refusals)),
            ("handshake_frame_too_large", get(&c.handshake_frames_too_large)),
            ("handshake_timeout", get(&c.handshake_timeouts)),
            ("frame_timeout", get(&c.frame_timeouts)),
            ("idle_timeout", get(&c.idle_timeouts)),
            ("slow_consumer", get(&c.slow_consumer_closes)),
        ],
        budget_waits: get(&c.budget_read_waits),
        buffer_bytes: get(&c.buffer_bytes),
    }
}
