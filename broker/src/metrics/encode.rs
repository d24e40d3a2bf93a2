//! The `/metrics` page: every metric family cmqd exports (the catalog
//! docs/METRICS.md lists, a test keeps them in step), encoded from one
//! scrape's data with `prometheus-client`, in the Prometheus text format or
//! in OpenMetrics when the scraper asks for it.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::histogram::Histogram;
use super::latency::KIND_LABELS;
use super::process::{DiskSample, ProcessSample, GIT_COMMIT, VERSION};
use super::queues::QueueSample;
use super::shard::PUSH_RESULTS;
use super::snapshot::{BrokerSnapshot, ShardSnapshot};

/// A metric family: its registered name (counters are exposed with
/// `_total` appended, histograms as `_bucket`, `_sum` and `_count`), type,
/// labels and help text.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Family {
    /// The name a scrape shows (the sample name of counters; the base name
    /// of histograms).
    pub fn exposed(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            _ => self.name.to_owned(),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

macro_rules! families {
    ($($id:ident = $name:literal $kind:ident [$($label:literal),*] $help:literal;)*) => {
        $(pub const $id: Family = Family { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help };)*
        /// Every family, in the order a scrape shows them.
        pub const FAMILIES: &[&Family] = &[$(&$id),*];
    };
}

families! {
    BUILD_INFO = "cmq_build_info" Gauge ["version", "commit"] "Always 1; the labels name the cmqd version and the git commit it was built from.";
    START_TIME = "cmq_process_start_time_seconds" Gauge [] "When cmqd started, in Unix seconds.";
    UPTIME = "cmq_uptime_seconds" Gauge [] "Seconds since cmqd started.";
    RESIDENT = "cmq_process_resident_memory_bytes" Gauge [] "Resident set size of the cmqd process.";
    OPEN_FDS = "cmq_process_open_fds" Gauge [] "Open file descriptors of the cmqd process.";
    SHARDS = "cmq_shards" Gauge [] "Shards (event-loop threads) of this broker.";
    SHARD_UP = "cmq_shard_up" Gauge ["shard"] "1 if the shard's event loop answered this scrape in time, 0 if it is stalled.";
    SHARD_LEADER = "cmq_shard_leader" Gauge ["shard"] "Node id this node believes leads the shard's replication group (0: unknown; alone: this node).";
    SHARD_TERM = "cmq_shard_term" Gauge ["shard"] "Raft term of the shard's replication group as this node knows it.";
    REQUESTS = "cmq_requests" Counter ["op", "code"] "Requests answered, by operation and result code (OK or the error code's name).";
    LATENCY = "cmq_request_latency_seconds" Histogram ["kind", "shard"] "Time from the loop turn that produced an answer until the log released it (written, fdatasync'd or committed as the queue needs), for sends (the acknowledgement), receives and deletes.";
    TURNS = "cmq_event_loop_turns" Counter ["shard"] "Event-loop turns.";
    TURN_SECONDS = "cmq_event_loop_turn_seconds" Histogram ["shard"] "Duration of each event-loop turn.";
    LONGEST_TURN = "cmq_event_loop_longest_turn_seconds" Gauge ["shard"] "Longest event-loop turn in the last 10 to 20 seconds.";
    MAILBOX = "cmq_shard_mailbox_messages" Gauge ["shard"] "Messages waiting in the shard's cross-shard inbox.";
    CONNECTIONS = "cmq_connections" Gauge ["shard"] "Open client connections.";
    CONN_REFUSED = "cmq_connections_refused" Counter ["shard", "reason"] "Client connections refused or closed by a limit or deadline, by reason.";
    BUDGET_WAITS = "cmq_connection_budget_waits" Counter ["shard"] "Reads put off because the connection-buffer budget was used up.";
    BUFFER_BYTES = "cmq_connection_buffer_bytes" Gauge ["shard"] "Bytes the shard's connection buffers hold (against --buffer-budget-bytes).";
    QUEUES = "cmq_queues" Gauge [] "Queues on this broker.";
    TOPICS = "cmq_topics" Gauge [] "Topics on this broker.";
    AUTH_FAILURES = "cmq_auth_failures" Counter [] "Client authentication attempts refused (AUTH_FAILED): unknown SecretId, wrong signature, stale timestamp, replay, anonymous where authentication is required, or an address in its backoff.";
    QUEUES_OTHER = "cmq_queues_in_other" Gauge [] "Queues summed in the queue=\"_other\" series (past --metrics-top-queues).";
    QUEUE_MESSAGES = "cmq_queue_messages" Gauge ["queue", "state"] "Messages in a queue by state: active (ready), inactive (received, in flight), delayed.";
    QUEUE_OLDEST = "cmq_queue_oldest_message_age_seconds" Gauge ["queue"] "Age of the queue's oldest unconsumed message (0 if none).";
    SENT = "cmq_messages_sent" Counter ["queue"] "Messages enqueued into the queue (sent, published to it, or moved in).";
    RECEIVED = "cmq_messages_received" Counter ["queue"] "Messages delivered from the queue (a message received twice counts twice).";
    DELETED = "cmq_messages_deleted" Counter ["queue"] "Messages deleted from the queue.";
    DEAD_LETTERED = "cmq_messages_dead_lettered" Counter ["queue"] "Messages moved from the queue to its dead-letter queue.";
    PUSHES = "cmq_pushes" Counter ["shard", "result"] "HTTP pushes to topic subscribers that finished, by result: delivered (2xx), failed (retried later), rejected (no retry can succeed).";
    PUSHES_DEFERRED = "cmq_pushes_deferred" Counter ["shard"] "HTTP pushes that waited in the outbox because the push pool was full.";
    WAL_BYTES = "cmq_wal_appended_bytes" Counter ["shard"] "Bytes appended to the shard's write-ahead log (record headers included).";
    WAL_RECORDS = "cmq_wal_appended_records" Counter ["shard"] "Records appended to the shard's write-ahead log.";
    WAL_FSYNCS = "cmq_wal_fsyncs" Counter ["shard"] "fdatasync calls completed on the shard's write-ahead log.";
    WAL_FSYNC_SECONDS = "cmq_wal_fsync_seconds" Histogram ["shard"] "Duration of each fdatasync of the write-ahead log.";
    WAL_GROUP = "cmq_wal_group_commit_records" Histogram ["shard"] "Records each fdatasync made durable (group-commit size).";
    WAL_SEGMENTS = "cmq_wal_segments" Gauge ["shard"] "Live segment files of the shard's write-ahead log.";
    WAL_DISK = "cmq_wal_disk_bytes" Gauge ["shard"] "Disk space the shard's live segments take (they are preallocated).";
    WAL_FAILED = "cmq_wal_failed" Gauge ["shard"] "1 while the shard's log refuses writes after a storage error.";
    WAL_OLDEST = "cmq_wal_oldest_segment_age_seconds" Gauge ["shard"] "Age of the shard's oldest retained segment file.";
    DISK_FREE = "cmq_disk_free_bytes" Gauge [] "Free bytes (for unprivileged users) on the file system of the data directory.";
    DISK_SIZE = "cmq_disk_size_bytes" Gauge [] "Size of the file system of the data directory.";
    HTTP_WAITING = "cmq_http_requests_waiting" Gauge [] "CMQ API (HTTP) requests waiting for the broker's answer, long polls included.";
    HTTP_FORWARDED = "cmq_http_forwarded" Counter ["outcome"] "HTTP requests (CMQ API, console) for a shard another node leads, by how forwarding them to the leader ended: answered, refused, unreachable, lost, timed_out, off.";
    HTTP_FORWARD_CONNECTIONS = "cmq_http_forward_connections" Gauge [] "Connections open from this node's HTTP port to other nodes' client ports (forwarded requests), in use and idle.";
}

/// Connection refusals and closes of one shard (`ConnCounters`), by reason.
#[derive(Clone, Debug, Default)]
pub struct ConnSample {
    pub refused: Vec<(&'static str, u64)>,
    pub budget_waits: u64,
    pub buffer_bytes: u64,
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub shard_count: usize,
    pub broker: BrokerSnapshot,
    /// By shard.
    pub conns: Vec<ConnSample>,
    /// By shard: (leader node id, term).
    pub leaders: Vec<(u64, u64)>,
    pub queues: u64,
    pub topics: u64,
    /// Refused authentication attempts since start.
    pub auth_failures: u64,
    /// CMQ API requests awaiting their answer (`shard::external::Registry`).
    pub http_waiting: u64,
    /// Forwarded HTTP requests by outcome (`http::forward::OUTCOMES`).
    pub http_forwarded: Vec<(&'static str, u64)>,
    /// Connections open to leaders' client ports for forwarded requests.
    pub http_forward_connections: u64,
    pub process: ProcessSample,
    pub disk: DiskSample,
    /// Unix ms of the scrape (for ages).
    pub now_ms: u64,
}

/// The response's content type and body.
pub fn render(scrape: Scrape, openmetrics: bool) -> (&'static str, String) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut body = String::new();
    let result = if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)
    };
    if result.is_err() {
        // Writing to a String cannot fail; an encoder refusing a value is a bug.
        log::error!(target: "cmq::http", "encoding /metrics failed");
    }
    let ctype = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (ctype, body)
}

type Labels = Vec<(&'static str, String)>;

fn shard_label(s: usize) -> Labels {
    vec![("shard", s.to_string())]
}

/// Writes one family and its series.
struct Writer<'a, 'b> {
    enc: &'b mut DescriptorEncoder<'a>,
}

impl Writer<'_, '_> {
    fn family(&mut self, f: &Family, mut each: impl FnMut(&mut MetricEncoder) -> fmt::Result) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(f.name, f.help, None, f.metric_type())?;
        each(&mut m)
    }

    fn gauges(&mut self, f: &Family, series: impl IntoIterator<Item = (Labels, f64)>) -> fmt::Result {
        let series: Vec<(Labels, f64)> = series.into_iter().collect();
        self.family(f, |m| {
            for (labels, v) in &series {
                if labels.is_empty() {
                    m.encode_gauge(v)?;
                } else {
                    m.encode_family(labels)?.encode_gauge(v)?;
                }
            }
            Ok(())
        })
    }

    fn counters(&mut self, f: &Family, series: impl IntoIterator<Item = (Labels, u64)>) -> fmt::Result {
        let series: Vec<(Labels, u64)> = series.into_iter().collect();
        self.family(f, |m| {
            for (labels, v) in &series {
                m.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(v, None)?;
            }
            Ok(())
        })
    }

    fn histograms<'h>(
        &mut self,
        f: &Family,
        unit: f64,
        series: impl IntoIterator<Item = (Labels, &'h Histogram)>,
    ) -> fmt::Result {
        let series: Vec<(Labels, &Histogram)> = series.into_iter().collect();
        self.family(f, |m| {
            for (labels, h) in &series {
                let buckets = h.buckets(unit);
                m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                    h.sum() as f64 * unit,
                    h.count(),
                    &buckets,
                    None,
                )?;
            }
            Ok(())
        })
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut w = Writer { enc: &mut enc };
        self.process_families(&mut w)?;
        self.shard_families(&mut w)?;
        self.request_families(&mut w)?;
        self.connection_families(&mut w)?;
        self.queue_families(&mut w)?;
        self.wal_families(&mut w)
    }
}

const US: f64 = 1e-6;

impl Scrape {
    fn shards(&self) -> impl Iterator<Item = &ShardSnapshot> {
        self.broker.shards.iter()
    }

    fn per_shard<'a>(&'a self, v: impl Fn(&ShardSnapshot) -> u64 + 'a) -> impl Iterator<Item = (Labels, u64)> + 'a {
        self.shards().map(move |s| (shard_label(usize::from(s.shard)), v(s)))
    }

    fn per_shard_f<'a>(&'a self, v: impl Fn(&ShardSnapshot) -> f64 + 'a) -> impl Iterator<Item = (Labels, f64)> + 'a {
        self.shards().map(move |s| (shard_label(usize::from(s.shard)), v(s)))
    }

    fn process_families(&self, w: &mut Writer) -> fmt::Result {
        let p = &self.process;
        let info = vec![("version", VERSION.to_owned()), ("commit", GIT_COMMIT.to_owned())];
        w.gauges(&BUILD_INFO, [(info, 1.0)])?;
        w.gauges(&START_TIME, [(vec![], p.start_unix_secs)])?;
        w.gauges(&UPTIME, [(vec![], p.uptime_secs)])?;
        w.gauges(&RESIDENT, [(vec![], p.resident_bytes as f64)])?;
        w.gauges(&OPEN_FDS, [(vec![], p.open_fds as f64)])?;
        w.gauges(&DISK_FREE, [(vec![], self.disk.free_bytes as f64)])?;
        w.gauges(&DISK_SIZE, [(vec![], self.disk.size_bytes as f64)])
    }

    fn shard_families(&self, w: &mut Writer) -> fmt::Result {
        w.gauges(&SHARDS, [(vec![], self.shard_count as f64)])?;
        let up = (0..self.shard_count).map(|k| {
            let answered = self.shards().any(|s| usize::from(s.shard) == k);
            (shard_label(k), if answered { 1.0 } else { 0.0 })
        });
        w.gauges(&SHARD_UP, up)?;
        w.gauges(&SHARD_LEADER, self.leaders.iter().enumerate().map(|(k, (l, _))| (shard_label(k), *l as f64)))?;
        w.gauges(&SHARD_TERM, self.leaders.iter().enumerate().map(|(k, (_, t))| (shard_label(k), *t as f64)))?;
        w.counters(&TURNS, self.per_shard(|s| s.turns))?;
        w.histograms(&TURN_SECONDS, US, self.shards().map(|s| (shard_label(usize::from(s.shard)), &s.turn_us)))?;
        w.gauges(&LONGEST_TURN, self.per_shard_f(|s| s.longest_turn_us as f64 * US))?;
        w.gauges(&MAILBOX, self.per_shard_f(|s| s.inbox_depth as f64))
    }

    fn request_families(&self, w: &mut Writer) -> fmt::Result {
        // Summed over shards: the owning shard answers, which says nothing
        // to an operator; the latency histograms keep the shard.
        let mut sums: std::collections::BTreeMap<(u16, u16), u64> = Default::default();
        for (op, code, n) in self.shards().flat_map(|s| s.answers.iter()) {
            *sums.entry((*op, *code)).or_insert(0) += n;
        }
        let requests = sums.into_iter().map(|((op, code), n)| {
            let op = cmq_protocol::Opcode::from_u16(op).map_or_else(|| op.to_string(), |o| o.name().to_owned());
            let code = if code == 0 { "OK".to_owned() } else { cmq_protocol::ErrorCode(code).name().to_owned() };
            (vec![("op", op), ("code", code)], n)
        });
        w.counters(&REQUESTS, requests)?;
        let latency = self.shards().flat_map(|s| {
            KIND_LABELS.iter().enumerate().map(move |(k, kind)| {
                (vec![("kind", (*kind).to_owned()), ("shard", s.shard.to_string())], &s.latency_us[k])
            })
        });
        w.histograms(&LATENCY, US, latency)
    }

    fn connection_families(&self, w: &mut Writer) -> fmt::Result {
        w.gauges(&CONNECTIONS, self.per_shard_f(|s| s.connections as f64))?;
        let refused = self.conns.iter().enumerate().flat_map(|(k, c)| {
            c.refused.iter().map(move |(why, n)| (vec![("shard", k.to_string()), ("reason", (*why).to_owned())], *n))
        });
        w.counters(&CONN_REFUSED, refused)?;
        w.counters(&BUDGET_WAITS, self.conns.iter().enumerate().map(|(k, c)| (shard_label(k), c.budget_waits)))?;
        w.gauges(&BUFFER_BYTES, self.conns.iter().enumerate().map(|(k, c)| (shard_label(k), c.buffer_bytes as f64)))
    }

    fn queue_families(&self, w: &mut Writer) -> fmt::Result {
        let t = &self.broker.queues;
        w.gauges(&QUEUES, [(vec![], self.queues as f64)])?;
        w.gauges(&TOPICS, [(vec![], self.topics as f64)])?;
        w.counters(&AUTH_FAILURES, [(vec![], self.auth_failures)])?;
        w.gauges(&HTTP_WAITING, [(vec![], self.http_waiting as f64)])?;
        w.counters(&HTTP_FORWARDED, self.http_forwarded.iter().map(|(o, n)| (vec![("outcome", (*o).to_owned())], *n)))?;
        w.gauges(&HTTP_FORWARD_CONNECTIONS, [(vec![], self.http_forward_connections as f64)])?;
        w.gauges(&QUEUES_OTHER, [(vec![], t.other_queues as f64)])?;
        let all: Vec<&QueueSample> = t.top.iter().chain(std::iter::once(&t.other)).collect();
        let q = |s: &QueueSample| vec![("queue", s.name.clone())];
        let states = all.iter().flat_map(|s| {
            [("active", s.active), ("inactive", s.inactive), ("delayed", s.delayed)]
                .map(|(state, n)| (vec![("queue", s.name.clone()), ("state", state.to_owned())], n as f64))
        });
        w.gauges(&QUEUE_MESSAGES, states)?;
        let age = |s: &QueueSample| match s.oldest_ms {
            0 => 0.0,
            t => self.now_ms.saturating_sub(t) as f64 / 1e3,
        };
        w.gauges(&QUEUE_OLDEST, all.iter().map(|s| (q(s), age(s))))?;
        w.counters(&SENT, all.iter().map(|s| (q(s), s.totals.sent)))?;
        w.counters(&RECEIVED, all.iter().map(|s| (q(s), s.totals.received)))?;
        w.counters(&DELETED, all.iter().map(|s| (q(s), s.totals.deleted)))?;
        w.counters(&DEAD_LETTERED, all.iter().map(|s| (q(s), s.totals.dead_lettered)))?;
        let pushes = self.shards().flat_map(|s| {
            PUSH_RESULTS
                .iter()
                .zip(s.pushes)
                .map(|(r, n)| (vec![("shard", s.shard.to_string()), ("result", (*r).to_owned())], n))
        });
        w.counters(&PUSHES, pushes)?;
        w.counters(&PUSHES_DEFERRED, self.per_shard(|s| s.pushes_deferred))
    }

    fn wal_families(&self, w: &mut Writer) -> fmt::Result {
        w.counters(&WAL_BYTES, self.per_shard(|s| s.wal.bytes))?;
        w.counters(&WAL_RECORDS, self.per_shard(|s| s.wal.records))?;
        w.counters(&WAL_FSYNCS, self.per_shard(|s| s.wal.syncs))?;
        let label = |s: &ShardSnapshot| shard_label(usize::from(s.shard));
        w.histograms(&WAL_FSYNC_SECONDS, US, self.shards().map(|s| (label(s), &s.wal.sync_us)))?;
        w.histograms(&WAL_GROUP, 1.0, self.shards().map(|s| (label(s), &s.wal.sync_records)))?;
        w.gauges(&WAL_SEGMENTS, self.per_shard_f(|s| s.wal.segments as f64))?;
        w.gauges(&WAL_DISK, self.per_shard_f(|s| s.wal.disk_bytes as f64))?;
        w.gauges(&WAL_FAILED, self.per_shard_f(|s| if s.wal.failed { 1.0 } else { 0.0 }))?;
        let oldest = self.disk.oldest_segment_age_secs.iter().enumerate();
        w.gauges(&WAL_OLDEST, oldest.filter_map(|(k, age)| Some((shard_label(k), (*age)?))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::queues::{QueueTable, OTHER_QUEUE};

    fn scrape() -> Scrape {
        let mut s0 = ShardSnapshot { shard: 0, turns: 7, connections: 2, ..Default::default() };
        s0.answers = vec![(cmq_protocol::Opcode::SendMessage as u16, 0, 5), (0x0200, 4440, 1)];
        s0.latency_us[0].record_n(100, 5);
        s0.wal.sync_us.record(2000);
        s0.queues = QueueTable::select(
            vec![QueueSample { name: "orders".into(), active: 3, oldest_ms: 9_000, ..Default::default() }],
            10,
        );
        let broker = BrokerSnapshot::merge(vec![s0], 10);
        Scrape { shard_count: 2, broker, leaders: vec![(1, 1), (1, 1)], now_ms: 10_000, ..Default::default() }
    }

    #[test]
    fn families_have_prefixes_help_and_unique_names() {
        let mut names: Vec<String> = FAMILIES.iter().map(|f| f.exposed()).collect();
        for f in FAMILIES {
            assert!(f.name.starts_with("cmq_") && !f.help.is_empty(), "{}", f.name);
            assert!(!f.name.ends_with("_total"), "{}: counters get _total when exposed", f.name);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len());
    }

    #[test]
    fn a_scrape_shows_every_family_with_help_in_both_formats() {
        for openmetrics in [false, true] {
            let (ctype, body) = render(scrape(), openmetrics);
            assert_eq!(ctype.starts_with("application/openmetrics-text"), openmetrics);
            for f in FAMILIES {
                let help = format!("# HELP {} ", if openmetrics { f.name.to_owned() } else { f.exposed() });
                assert!(body.contains(&help), "{help} missing:\n{body}");
            }
            assert_eq!(body.ends_with("# EOF\n"), openmetrics);
            assert!(body.contains("cmq_requests_total{op=\"SendMessage\",code=\"OK\"} 5"), "{body}");
            assert!(body.contains("code=\"QUEUE_NOT_FOUND\""), "{body}");
            assert!(body.contains("cmq_queue_messages{queue=\"orders\",state=\"active\"} 3"), "{body}");
            assert!(body.contains(&format!("cmq_queue_messages{{queue=\"{OTHER_QUEUE}\",state=\"active\"}} 0")));
            assert!(body.contains("cmq_queue_oldest_message_age_seconds{queue=\"orders\"} 1"), "{body}");
            assert!(body.contains("cmq_shard_up{shard=\"1\"} 0"), "shard 1 did not answer:\n{body}");
            assert!(body.contains("cmq_wal_fsync_seconds_count{shard=\"0\"} 1"), "{body}");
            let bucket = body.lines().any(|l| {
                l.starts_with("cmq_request_latency_seconds_bucket{")
                    && ["le=\"0.000128\"", "kind=\"send\"", "shard=\"0\""].iter().all(|p| l.contains(p))
                    && l.ends_with(" 5")
            });
            assert!(bucket, "the 100 µs sends are in the 128 µs bucket:\n{body}");
        }
    }
}
