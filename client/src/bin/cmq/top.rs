//! `cmq stats` (one snapshot; `--json` for scripts) and `cmq top` (a live
//! view that refreshes every `--interval` seconds, like htop or nats top):
//! per shard and per queue rates, depth, in flight, p99 latency and
//! fdatasync time. Both read the broker's GetStats answer, which holds the
//! same numbers as its /metrics page, so they work without the HTTP port.
//! Counters are totals since the broker started: rates and the latency
//! percentiles of `top` come from the difference of two answers.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use cmq_client::protocol::{GetStats, GetStatsOk, QueueStats, ShardStats, STATS_QUEUES_MAX};
use cmq_client::{Client, Request, Response};
use serde_json::{json, Value};

use crate::commands::Out;

/// Longest refresh interval of `cmq top`, seconds.
const TOP_INTERVAL_MAX: u64 = 3600;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Queues to show, the deepest first (the rest are summed as _other), 0..=1000
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=STATS_QUEUES_MAX as i64))]
    pub top: u16,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Queues to show, the deepest first (the rest are summed as _other), 0..=1000
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=STATS_QUEUES_MAX as i64))]
    pub top: u16,
    /// Seconds between refreshes, 1..=3600
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=TOP_INTERVAL_MAX))]
    pub interval: u64,
    /// Stop after this many refreshes (0: until interrupted)
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
}

fn fetch(c: &mut Client, top: u16) -> Result<GetStatsOk> {
    match c.call(&Request::GetStats(GetStats { top_queues: top }))? {
        Response::GetStats(s) => Ok(s),
        other => bail!("unexpected answer to GetStats: {other:?}"),
    }
}

/// `cmq stats`: totals since the broker started.
pub fn stats(c: &mut Client, out: &mut Out, a: &StatsArgs) -> Result<()> {
    let s = fetch(c, a.top)?;
    if out.json {
        return out.json(&stats_json(&s));
    }
    out.line(render(&s, None, Duration::ZERO))
}

/// `cmq top`: refreshes until interrupted (or `--iterations`).
pub fn top(c: &mut Client, out: &mut Out, a: &TopArgs) -> Result<()> {
    let clear = std::io::stdout().is_terminal();
    let mut prev = fetch(c, a.top)?;
    let mut prev_at = Instant::now();
    let mut shown = 0;
    while a.iterations == 0 || shown < a.iterations {
        std::thread::sleep(Duration::from_secs(a.interval));
        let cur = fetch(c, a.top)?;
        let now = Instant::now();
        let text = render(&cur, Some(&prev), now - prev_at);
        if clear {
            // Home and clear the screen, like top.
            out.line(format_args!("\x1b[H\x1b[2J{text}"))?;
        } else {
            out.line(text)?;
        }
        out.flush()?;
        (prev, prev_at) = (cur, now);
        shown += 1;
    }
    Ok(())
}

/// An upper bound on the `q` quantile of power-of-two buckets (µs), None if empty.
fn quantile_us(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut acc = 0;
    for (i, c) in counts.iter().enumerate() {
        acc += c;
        if acc >= rank {
            return Some(1u64 << i.min(counts.len().saturating_sub(2)));
        }
    }
    None
}

fn minus(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().enumerate().map(|(i, x)| x.saturating_sub(b.get(i).copied().unwrap_or(0))).collect()
}

fn stats_json(s: &GetStatsOk) -> Value {
    let p99 = |h: &[u64]| quantile_us(h, 0.99);
    let shards: Vec<Value> = s
        .shards
        .iter()
        .map(|k| {
            json!({
                "shard": k.shard, "leader": k.leader, "connections": k.connections, "answers": k.answers,
                "errors": k.errors, "turns": k.turns, "longest_turn_us": k.longest_turn_us,
                "inbox_depth": k.inbox_depth, "wal_bytes": k.wal_bytes, "wal_records": k.wal_records,
                "fsyncs": k.fsyncs, "wal_disk_bytes": k.wal_disk_bytes,
                "send_p99_us": p99(&k.send_us), "receive_p99_us": p99(&k.receive_us),
                "delete_p99_us": p99(&k.delete_us), "fsync_p99_us": p99(&k.fsync_us),
            })
        })
        .collect();
    let queues: Vec<Value> = s
        .queues
        .iter()
        .map(|q| {
            json!({
                "queue": q.queue, "active": q.active, "inactive": q.inactive, "delayed": q.delayed,
                "oldest_ms": q.oldest_ms, "sent": q.sent, "received": q.received, "deleted": q.deleted,
                "dead_lettered": q.dead_lettered,
            })
        })
        .collect();
    json!({ "node_id": s.node_id, "shards": shards, "queues": queues, "other_queues": s.other_queues })
}

fn us(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1_000_000 => format!("{:.1}s", v as f64 / 1e6),
        Some(v) if v >= 1000 => format!("{:.1}ms", v as f64 / 1e3),
        Some(v) => format!("{v}µs"),
    }
}

/// Per second over `dt`, or the total when there is no earlier answer.
fn rate(cur: u64, prev: Option<u64>, dt: Duration) -> String {
    match prev {
        Some(p) if dt > Duration::ZERO => format!("{:.0}", cur.saturating_sub(p) as f64 / dt.as_secs_f64()),
        Some(_) => "-".into(),
        None => cur.to_string(),
    }
}

/// The screen: a shard table and a queue table. With `prev`, counters are
/// rates per second and percentiles cover the time since `prev`.
fn render(cur: &GetStatsOk, prev: Option<&GetStatsOk>, dt: Duration) -> String {
    let per = if prev.is_some() { "/s" } else { " total" };
    let mut t = format!("cmq node {}: {} shards, interval {:.1}s\n\n", cur.node_id, cur.shards.len(), dt.as_secs_f64());
    t.push_str(&format!(
        "{:>5} {:>6} {:>6} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}\n",
        "SHARD",
        "LEADER",
        "CONNS",
        format!("REQ{per}"),
        "ERR",
        "SEND p99",
        "RECV p99",
        "DEL p99",
        "FSYNC p99",
        "FSYNCS",
        "INBOX",
        "MAX TURN"
    ));
    for k in &cur.shards {
        let p: Option<&ShardStats> = prev.and_then(|p| p.shards.iter().find(|x| x.shard == k.shard));
        let hist = |f: fn(&ShardStats) -> &Vec<u64>| match p {
            Some(p) => minus(f(k), f(p)),
            None => f(k).clone(),
        };
        t.push_str(&format!(
            "{:>5} {:>6} {:>6} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}\n",
            k.shard,
            k.leader,
            k.connections,
            rate(k.answers, p.map(|p| p.answers), dt),
            rate(k.errors, p.map(|p| p.errors), dt),
            us(quantile_us(&hist(|s| &s.send_us), 0.99)),
            us(quantile_us(&hist(|s| &s.receive_us), 0.99)),
            us(quantile_us(&hist(|s| &s.delete_us), 0.99)),
            us(quantile_us(&hist(|s| &s.fsync_us), 0.99)),
            rate(k.fsyncs, p.map(|p| p.fsyncs), dt),
            k.inbox_depth,
            us(Some(k.longest_turn_us)),
        ));
    }
    t.push_str(&format!(
        "\n{:<24} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>8} {:>10}\n",
        "QUEUE",
        "READY",
        "INFLIGHT",
        "DELAYED",
        format!("SENT{per}"),
        "RECV",
        "DEL",
        "DLQ",
        "OLDEST"
    ));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    for q in &cur.queues {
        let p: Option<&QueueStats> = prev.and_then(|p| p.queues.iter().find(|x| x.queue == q.queue));
        let oldest = match q.oldest_ms {
            0 => "-".into(),
            t => format!("{}s", now_ms.saturating_sub(t) / 1000),
        };
        t.push_str(&format!(
            "{:<24} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>8} {:>10}\n",
            q.queue,
            q.active,
            q.inactive,
            q.delayed,
            rate(q.sent, p.map(|p| p.sent), dt),
            rate(q.received, p.map(|p| p.received), dt),
            rate(q.deleted, p.map(|p| p.deleted), dt),
            rate(q.dead_lettered, p.map(|p| p.dead_lettered), dt),
            oldest,
        ));
    }
    if cur.other_queues > 0 {
        t.push_str(&format!("({} more queues summed as _other)\n", cur.other_queues));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_power_of_two_buckets() {
        assert_eq!(quantile_us(&[0, 0, 0], 0.99), None);
        assert_eq!(quantile_us(&[0, 98, 1, 1], 0.99), Some(4));
        assert_eq!(quantile_us(&[0, 100, 0, 0], 0.99), Some(2));
        assert_eq!(minus(&[5, 3], &[2, 4]), vec![3, 0]);
        assert_eq!(us(Some(1500)), "1.5ms");
        assert_eq!(rate(30, Some(10), Duration::from_secs(2)), "10");
    }
}
