//! Shared run state, per-thread counters and histograms, CPU accounting.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use cmq_client::ClientError;
use hdrhistogram::Histogram;

/// Longest latency a histogram tells apart (one hour, in ns); longer ones are clamped.
const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;

/// Significant digits of every latency histogram (0.1% resolution).
const LATENCY_SIGFIGS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIGS).expect("constant histogram bounds are valid")
}

/// Where the run is. Threads read it once per answer; the monitor moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Running, not measured.
    Warmup = 0,
    /// Running and measured.
    Measure = 1,
    /// Producers stop; consumers keep draining for `--verify`.
    Drain = 2,
    /// Everyone stops (answers in flight are still collected).
    Stop = 3,
}

/// State every thread of a run shares.
pub struct Run {
    phase: AtomicU8,
    origin: Instant,
    /// Per-run random value carried in every body.
    pub nonce: u32,
    /// Messages whose send was acknowledged, over the whole run.
    pub acked_total: AtomicU64,
    /// First deliveries (dequeue count 1) of this run's messages, over the whole run.
    pub first_deliveries: AtomicU64,
    /// Producer threads that have finished.
    pub producers_done: AtomicUsize,
    /// A send's or a receive's answer was lost with its connection (a
    /// leader died): first deliveries may then include messages never
    /// acknowledged, and messages leased by a lost receive come back only
    /// after their visibility timeout, so counting deliveries no longer
    /// tells when every acknowledged message was delivered. The run then
    /// drains until its queues are empty instead.
    pub uncertain: AtomicBool,
}

impl Run {
    pub fn new(nonce: u32, phase: Phase) -> Run {
        Run {
            phase: AtomicU8::new(phase as u8),
            origin: Instant::now(),
            nonce,
            acked_total: AtomicU64::new(0),
            first_deliveries: AtomicU64::new(0),
            producers_done: AtomicUsize::new(0),
            uncertain: AtomicBool::new(false),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Warmup,
            1 => Phase::Measure,
            2 => Phase::Drain,
            _ => Phase::Stop,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Relaxed);
    }

    /// Acknowledged messages not yet delivered once.
    pub fn backlog(&self) -> u64 {
        self.acked_total.load(Relaxed).saturating_sub(self.first_deliveries.load(Relaxed))
    }

    /// Nanoseconds since the run began; comparable across threads.
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The instant `ns` nanoseconds after the run began.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.origin + std::time::Duration::from_nanos(ns)
    }
}

/// Latency samples of one interval (ns).
pub struct Hists {
    pub send_ack: Histogram<u64>,
    pub e2e: Histogram<u64>,
}

impl Hists {
    pub fn new() -> Hists {
        Hists { send_ack: new_histogram(), e2e: new_histogram() }
    }

    /// Moves `other`'s samples into `self` and empties `other`.
    pub fn absorb(&mut self, other: &mut Hists) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.send_ack.add(&other.send_ack);
        let _ = self.e2e.add(&other.e2e);
        other.send_ack.reset();
        other.e2e.reset();
    }
}

/// One thread's live counters, read by the monitor every second. Aligned so
/// that two threads' counters never share a cache line.
#[repr(align(128))]
pub struct Counters {
    /// Messages whose send was acknowledged.
    pub sent: AtomicU64,
    /// Messages delivered.
    pub received: AtomicU64,
    /// Messages deleted successfully.
    pub deleted: AtomicU64,
    /// Failed requests and failed batch items (NO_MESSAGE excluded).
    pub errors: AtomicU64,
    /// Receives answered NO_MESSAGE.
    pub empty_receives: AtomicU64,
    /// Samples since the monitor last took them.
    pub hists: Mutex<Hists>,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            empty_receives: AtomicU64::new(0),
            hists: Mutex::new(Hists::new()),
        }
    }
}

/// A sum of counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub sent: u64,
    pub received: u64,
    pub deleted: u64,
    pub errors: u64,
    pub empty_receives: u64,
}

impl Snapshot {
    pub fn take(all: &[std::sync::Arc<Counters>]) -> Snapshot {
        let mut s = Snapshot::default();
        for c in all {
            s.sent += c.sent.load(Relaxed);
            s.received += c.received.load(Relaxed);
            s.deleted += c.deleted.load(Relaxed);
            s.errors += c.errors.load(Relaxed);
            s.empty_receives += c.empty_receives.load(Relaxed);
        }
        s
    }

    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            sent: self.sent - earlier.sent,
            received: self.received - earlier.received,
            deleted: self.deleted - earlier.deleted,
            errors: self.errors - earlier.errors,
            empty_receives: self.empty_receives - earlier.empty_receives,
        }
    }
}

/// What an error is filed under in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrKey {
    /// A broker error code.
    Code(u16),
    /// Not from the broker: "disconnected", "timeout", "io", "protocol",
    /// "handshake"; "stalled" is an answer that came only after a Ping
    /// nudged an idle connection (the broker missed a wake-up).
    Other(&'static str),
    /// A CMQ API 2.0 code (`--http`).
    Cmq(i64),
}

impl ErrKey {
    pub fn of(e: &ClientError) -> ErrKey {
        match e {
            ClientError::Server { code, .. } => ErrKey::Code(code.0),
            ClientError::Disconnected => ErrKey::Other("disconnected"),
            ClientError::Io(_) if e.is_timeout() => ErrKey::Other("timeout"),
            ClientError::Io(_) => ErrKey::Other("io"),
            ClientError::Protocol(_) => ErrKey::Other("protocol"),
            ClientError::Handshake { .. } => ErrKey::Other("handshake"),
            ClientError::OutcomeUnknown { .. } => ErrKey::Other(crate::worker::OUTCOME_UNKNOWN),
        }
    }

    /// The key in the JSON report: the numeric code, or the category.
    pub fn json_key(&self) -> String {
        match self {
            ErrKey::Code(c) => c.to_string(),
            ErrKey::Other(s) => (*s).to_owned(),
            ErrKey::Cmq(c) => format!("cmq-{c}"),
        }
    }
}

impl fmt::Display for ErrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrKey::Code(c) => write!(f, "{}", cmq_protocol::ErrorCode(*c)),
            ErrKey::Other(s) => f.write_str(s),
            ErrKey::Cmq(c) => write!(f, "CMQ code {c}"),
        }
    }
}

pub type ErrorCounts = BTreeMap<ErrKey, u64>;

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// CPU seconds the whole machine has spent busy (every CPU, all processes),
/// from the first line of /proc/stat: everything but idle and iowait.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat_busy_ticks(stat.lines().next()?).map(|t| t as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Busy ticks of a `cpu  user nice system idle iowait irq softirq steal ...` line.
pub fn parse_proc_stat_busy_ticks(line: &str) -> Option<u64> {
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = v[..] else { return None };
    Some(user + nice + system + irq + softirq + steal)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted
/// from the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')': state is field 3, so utime (14) is the 12th field here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_cpu_fields() {
        let line = "1234 (cmqd (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert!(cpu_seconds("self").is_some());
        assert_eq!(parse_proc_stat_busy_ticks("cpu  10 1 5 1000 7 2 3 4 0 0"), Some(25));
        assert_eq!(parse_proc_stat_busy_ticks("cpu0 10 1 5 1000 7 2 3 4 0 0"), None);
        assert!(machine_busy_seconds().is_some());
    }

    #[test]
    fn absorbing_moves_samples() {
        let mut a = Hists::new();
        let mut b = Hists::new();
        b.send_ack.record(1_000).unwrap();
        b.e2e.record(5_000).unwrap();
        a.absorb(&mut b);
        assert_eq!((a.send_ack.len(), a.e2e.len(), b.send_ack.len()), (1, 1, 0));
    }
}
