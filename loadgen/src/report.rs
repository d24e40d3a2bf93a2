//! The progress line, the final text report and the JSON report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::body::split_id;
use crate::opts::{Mode, Opts};
use crate::stats::{ErrorCounts, Hists, Phase, Snapshot};
use crate::verify::Verdict;

/// What the monitor measured.
#[derive(Default)]
pub struct Measured {
    /// Length of the measured interval.
    pub secs: f64,
    /// Counter increments within it.
    pub counts: Snapshot,
    /// Latency samples within it (ns).
    pub hists: Hists,
    pub broker_cpu_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
    /// Busy CPU seconds of the whole machine (all processes) over the interval.
    pub machine_cpu_s: Option<f64>,
    /// Acknowledged sends over the whole run (preload included).
    pub acked_total: u64,
    /// Seconds spent draining after the measured interval (--verify).
    pub drain_secs: f64,
    pub drain_timed_out: bool,
    /// The whole run, setup excluded.
    pub wall_secs: f64,
}

impl Default for Hists {
    fn default() -> Hists {
        Hists::new()
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Percentiles {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }

    fn json(&self) -> Value {
        json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999, "max": self.max,
               "mean": self.mean, "count": self.count})
    }

    fn text(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            fmt_us(self.p50),
            fmt_us(self.p90),
            fmt_us(self.p99),
            fmt_us(self.p999),
            fmt_us(self.max),
            thousands(self.count as f64)
        )
    }
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Microseconds, shown in the unit that keeps them readable.
pub fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// The per-second line on stderr.
pub fn progress(elapsed: Duration, phase: Phase, d: &Snapshot, interval: Duration, h: &Hists) {
    let per_s = |n: u64| thousands(n as f64 / interval.as_secs_f64().max(1e-9));
    let p99 = |h: &Histogram<u64>| {
        if h.is_empty() {
            "-".to_owned()
        } else {
            fmt_us(h.value_at_quantile(0.99) as f64 / 1000.0)
        }
    };
    let tag = match phase {
        Phase::Warmup => "warmup",
        Phase::Measure => "measure",
        Phase::Drain => "drain",
        Phase::Stop => "stop",
    };
    eprintln!(
        "[{:6.1}s {tag:>7}] sent {}/s  recv {}/s  del {}/s | ack p99 {}  e2e p99 {} | errors {}",
        elapsed.as_secs_f64(),
        per_s(d.sent),
        per_s(d.received),
        per_s(d.deleted),
        p99(&h.send_ack),
        p99(&h.e2e),
        d.errors
    );
}

pub struct Report {
    command: String,
    config: Value,
    mode: Mode,
    shards: u16,
    queues: Vec<String>,
    m: Measured,
    send_ack: Percentiles,
    e2e: Percentiles,
    errors: ErrorCounts,
    verdict: Option<Verdict>,
    broken: Vec<String>,
    open_loop_rate: Option<f64>,
    summary: String,
}

impl Report {
    pub fn new(
        opts: &Opts,
        shards: u16,
        queues: &[(String, u16)],
        m: Measured,
        errors: ErrorCounts,
        verdict: Option<Verdict>,
        broken: Vec<String>,
    ) -> Report {
        let summary = format!(
            "{} queue(s) over {} shard(s), {} producer(s), {} consumer(s), pipeline {}, batch {}, {}-byte bodies, flush {:?}{}",
            queues.len(),
            shards,
            if opts.mode == Mode::Consume { 0 } else { opts.producers },
            if opts.mode == Mode::Produce { 0 } else { opts.consumers },
            opts.pipeline,
            opts.batch,
            opts.size,
            opts.flush,
            opts.rate.map_or(", closed loop".to_owned(), |r| format!(", open loop at {} msgs/s", thousands(r))),
        )
        .to_lowercase();
        Report {
            command: command_line(),
            config: serde_json::to_value(opts).unwrap_or(Value::Null),
            mode: opts.mode,
            shards,
            queues: queues.iter().map(|(n, _)| n.clone()).collect(),
            send_ack: Percentiles::of(&m.hists.send_ack),
            e2e: Percentiles::of(&m.hists.e2e),
            m,
            errors,
            verdict,
            broken,
            open_loop_rate: opts.rate,
            summary,
        }
    }

    fn rate(&self, n: u64) -> f64 {
        if self.m.secs > 0.0 {
            n as f64 / self.m.secs
        } else {
            0.0
        }
    }

    /// The headline: completed cycles/s (cycle), sends/s (produce), deletes/s (consume).
    pub fn msgs_per_s(&self) -> f64 {
        match self.mode {
            Mode::Cycle | Mode::Consume => self.rate(self.m.counts.deleted),
            Mode::Produce => self.rate(self.m.counts.sent),
        }
    }

    fn cpu_pct(&self, s: Option<f64>) -> Option<f64> {
        s.filter(|_| self.m.secs > 0.0).map(|s| (s / self.m.secs * 1000.0).round() / 10.0)
    }

    /// Busy CPU not spent by the broker (when known) or the load generator:
    /// other load that competed for the machine during the measurement.
    fn other_cpu_s(&self) -> Option<f64> {
        let machine = self.m.machine_cpu_s?;
        let ours = self.m.loadgen_cpu_s? + self.m.broker_cpu_s.unwrap_or(0.0);
        Some((machine - ours).max(0.0))
    }

    pub fn exit_code(&self) -> u8 {
        if self.verdict.as_ref().is_some_and(|v| v.lost > 0 || v.duplicated > 0) {
            2
        } else if !self.broken.is_empty() {
            3
        } else {
            0
        }
    }

    pub fn print(&self) {
        let c = &self.m.counts;
        let headline = match self.mode {
            Mode::Cycle => "cycles/s (sent, received and deleted)",
            Mode::Produce => "messages/s sent",
            Mode::Consume => "messages/s consumed (received and deleted)",
        };
        println!("cmq-loadgen {}: {}", mode_name(self.mode), self.summary);
        println!("measured {:.2} s", self.m.secs);
        println!("  {:<14} {}", headline, thousands(self.msgs_per_s()));
        println!("  {:<14} {:>12} ({}/s)", "sent", thousands(c.sent as f64), thousands(self.rate(c.sent)));
        println!("  {:<14} {:>12} ({}/s)", "received", thousands(c.received as f64), thousands(self.rate(c.received)));
        println!("  {:<14} {:>12} ({}/s)", "deleted", thousands(c.deleted as f64), thousands(self.rate(c.deleted)));
        println!("  {:<14} {}", "send-ack", self.send_ack.text());
        println!("  {:<14} {}", "end-to-end", self.e2e.text());
        println!("  {:<14} {}", "empty receives", thousands(c.empty_receives as f64));
        if self.errors.is_empty() {
            println!("  {:<14} none", "errors");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}: {}", thousands(*v as f64))).collect();
            println!("  {:<14} {} (whole run)", "errors", list.join(", "));
            if self.errors.contains_key(&crate::stats::ErrKey::Other("stalled")) {
                println!("  {:<14} answers that arrived only after a Ping nudged the idle connection", "(stalled)");
            }
        }
        if let (Some(s), Some(p)) = (self.m.broker_cpu_s, self.cpu_pct(self.m.broker_cpu_s)) {
            println!("  {:<14} {s:.2} s ({p:.1}% of one core)", "broker CPU");
        }
        if let (Some(s), Some(p)) = (self.m.loadgen_cpu_s, self.cpu_pct(self.m.loadgen_cpu_s)) {
            println!("  {:<14} {s:.2} s ({p:.1}% of one core)", "loadgen CPU");
        }
        if let (Some(s), Some(p)) = (self.other_cpu_s(), self.cpu_pct(self.other_cpu_s())) {
            println!("  {:<14} {s:.2} s ({p:.1}% of one core; other processes on this machine)", "other CPU");
        }
        if let Some(v) = &self.verdict {
            println!(
                "  {:<14} lost {}, duplicated {}, redelivered {} (acked {}, delivered {}, unacked delivered {}, foreign {}){}",
                "verify",
                v.lost,
                v.duplicated,
                v.redelivered,
                v.acked,
                v.delivered_unique,
                v.unacked_delivered,
                v.foreign,
                if self.m.drain_timed_out { "; the drain timed out" } else { "" }
            );
            if !v.sample_lost.is_empty() {
                let ids: Vec<String> =
                    v.sample_lost.iter().map(|&id| split_id(id)).map(|(p, s)| format!("{p}/{s}")).collect();
                println!("  {:<14} e.g. producer/counter {}", "lost", ids.join(", "));
            }
        }
        for b in &self.broken {
            println!("  broken: {b}");
        }
    }

    pub fn json(&self) -> Value {
        let c = &self.m.counts;
        let errors: serde_json::Map<String, Value> =
            self.errors.iter().map(|(k, v)| (k.json_key(), json!(v))).collect();
        let error_names: serde_json::Map<String, Value> =
            self.errors.keys().map(|k| (k.json_key(), json!(k.to_string()))).collect();
        let v = self.verdict.as_ref();
        json!({
            "schema": 1,
            "command": self.command,
            "mode": self.mode,
            "config": self.config,
            "shards": self.shards,
            "queues": self.queues,
            "duration_s": self.m.secs,
            "wall_s": self.m.wall_secs,
            "drain_s": self.m.drain_secs,
            "msgs_per_s": self.msgs_per_s(),
            "sent": c.sent,
            "received": c.received,
            "deleted": c.deleted,
            "sent_per_s": self.rate(c.sent),
            "received_per_s": self.rate(c.received),
            "deleted_per_s": self.rate(c.deleted),
            "empty_receives": c.empty_receives,
            "send_ack_us": self.send_ack.json(),
            "e2e_us": self.e2e.json(),
            "errors": errors,
            "error_names": error_names,
            "acked_total": self.m.acked_total,
            "verified": v.is_some(),
            "lost": v.map(|v| v.lost),
            "duplicated": v.map(|v| v.duplicated),
            "redelivered": v.map(|v| v.redelivered),
            "unacked_delivered": v.map(|v| v.unacked_delivered),
            "foreign": v.map(|v| v.foreign),
            "delivered_unique": v.map(|v| v.delivered_unique),
            "drain_timed_out": self.m.drain_timed_out,
            "broker_cpu_s": self.m.broker_cpu_s,
            "broker_cpu_pct": self.cpu_pct(self.m.broker_cpu_s),
            "loadgen_cpu_s": self.m.loadgen_cpu_s,
            "loadgen_cpu_pct": self.cpu_pct(self.m.loadgen_cpu_s),
            "machine_cpu_pct": self.cpu_pct(self.m.machine_cpu_s),
            "other_cpu_pct": self.cpu_pct(self.other_cpu_s()),
            "open_loop_rate": self.open_loop_rate,
            "broken": self.broken,
        })
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Produce => "produce",
        Mode::Consume => "consume",
        Mode::Cycle => "cycle",
    }
}

/// The command line as typed, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c)) {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(fmt_us(70.2), "70 µs");
        assert_eq!(fmt_us(1_500.0), "1.50 ms");
        assert_eq!(fmt_us(25_000.0), "25.0 ms");
    }

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = crate::stats::new_histogram();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(Percentiles::of(&crate::stats::new_histogram()).count, 0);
    }
}
