//! `/healthz` (alive) and `/readyz` (ready for traffic), both JSON with
//! per-shard detail, 200 when the answer is yes and 503 when it is no, as
//! Kubernetes probes and load balancers expect.
//!
//! Alive: every shard's event loop answered a question through its inbox
//! within [`HEALTH_DEADLINE`] (a loop that turns answers in one turn).
//! Ready: alive, not shutting down, every shard's log writable, and in a
//! cluster every shard's replication group has a known leader (so a
//! request can be served or sent where it can be).

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::router::{json, Reply};
use super::HttpContext;

/// A shard's loop must answer within this to count as alive.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(1);

/// Per shard: whether it answered, and the facts that came with the answer.
struct ShardHealth {
    alive: bool,
    answer_ms: Option<f64>,
    turns: Option<u64>,
    log_failed: bool,
}

async fn probe(ctx: &HttpContext) -> Vec<ShardHealth> {
    let answers = ctx.bridge.gather(None, HEALTH_DEADLINE).await;
    answers
        .into_iter()
        .map(|a| match a {
            Some(a) => ShardHealth {
                alive: true,
                answer_ms: Some(a.took.as_secs_f64() * 1e3),
                turns: Some(a.snapshot.turns),
                log_failed: a.snapshot.wal.failed,
            },
            None => ShardHealth { alive: false, answer_ms: None, turns: None, log_failed: false },
        })
        .collect()
}

pub async fn healthz(ctx: &HttpContext) -> Reply {
    let shards = probe(ctx).await;
    let ok = shards.iter().all(|s| s.alive);
    let detail: Vec<Value> = shards
        .iter()
        .enumerate()
        .map(|(k, s)| json!({"shard": k, "alive": s.alive, "answer_ms": s.answer_ms, "turns": s.turns}))
        .collect();
    let body = json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "deadline_ms": HEALTH_DEADLINE.as_millis() as u64,
        "shards": detail,
    });
    json(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

pub async fn readyz(ctx: &HttpContext) -> Reply {
    let shards = probe(ctx).await;
    let shared = &ctx.shared;
    let clustered = shared.cfg.cluster.is_some();
    let shutting_down = shared.shutdown.load(Ordering::Relaxed);
    let mut ready = !shutting_down;
    let mut detail = Vec::with_capacity(shards.len());
    for (k, s) in shards.iter().enumerate() {
        let (leader, term) =
            shared.leaders.get(k).map_or((0, 0), |(l, t)| (l.load(Ordering::Relaxed), t.load(Ordering::Relaxed)));
        let shard_ready = s.alive && !s.log_failed && leader != 0;
        ready &= shard_ready;
        detail.push(json!({
            "shard": k,
            "ready": shard_ready,
            "alive": s.alive,
            "log_failed": s.log_failed,
            "leader": leader,
            "term": term,
        }));
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "node_id": shared.cfg.node_id,
        "clustered": clustered,
        "shutting_down": shutting_down,
        "shards": detail,
    });
    json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}
