//! A redrive task: moving a dead-letter queue's messages back out, in the
//! background, at a bounded rate.

use cmq_protocol::{RedriveInfo, RedriveState};

/// Messages one task moves per loop turn when it has no rate limit, so a
/// large redrive never stalls the shard.
pub const REDRIVE_UNLIMITED_PER_TURN: u32 = 512;

/// When only in-flight messages are left, how often the task looks again.
pub const REDRIVE_RESCAN_MS: u64 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct Redrive {
    pub id: u64,
    /// The dead-letter queue.
    pub uid: u32,
    /// Destination queue; empty = each message's source queue.
    pub to: String,
    pub rate: u32,
    /// Messages with a lower sequence number are in scope; later arrivals are not.
    pub end_seq: u64,
    pub total: u64,
    pub moved: u64,
    pub failed: u64,
    pub state: RedriveState,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Next sequence number to look at.
    pub cursor: u64,
    /// Token bucket for the rate limit.
    pub tokens: f64,
    pub refilled_ms: u64,
    pub next_scan_ms: u64,
    /// Messages with nowhere to go (no origin, no `to`): left in place, counted in `failed` once.
    pub skipped: std::collections::HashSet<u64>,
    /// Why the latest message counted in `failed` could not be moved, for
    /// the task's status. Rebuilt by replaying the log; a task restored from
    /// a catalog checkpoint keeps its count but says why only in general.
    pub failure: String,
}

/// What a task's status says when messages failed for a reason no longer known.
pub const FAILURE_REASON_UNKNOWN: &str =
    "their destination queue does not exist, or they have no source queue to go back to";

impl Redrive {
    /// How many messages may move now; refills the token bucket.
    pub fn budget(&mut self, now_ms: u64) -> u32 {
        if self.rate == 0 {
            return REDRIVE_UNLIMITED_PER_TURN;
        }
        let elapsed = now_ms.saturating_sub(self.refilled_ms) as f64 / 1000.0;
        self.refilled_ms = now_ms;
        // At most one second's worth banked, so a pause cannot turn into a burst.
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(f64::from(self.rate).max(1.0));
        self.tokens.floor() as u32
    }

    pub fn spend(&mut self, n: u32) {
        if self.rate > 0 {
            self.tokens -= f64::from(n);
        }
    }

    /// When the task next has budget (rate-limited tasks), for the shard's poll timeout.
    pub fn next_due(&self, now_ms: u64) -> u64 {
        if self.state != RedriveState::Running {
            return u64::MAX;
        }
        let by_rate = if self.rate == 0 || self.tokens >= 1.0 {
            now_ms
        } else {
            now_ms + ((1.0 - self.tokens) * 1000.0 / f64::from(self.rate)).ceil() as u64
        };
        by_rate.max(self.next_scan_ms)
    }

    pub fn info(&self, dead_letter_queue: &str, remaining: u64) -> RedriveInfo {
        RedriveInfo {
            id: self.id,
            dead_letter_queue: dead_letter_queue.to_owned(),
            to: self.to.clone(),
            rate_per_second: self.rate,
            state: self.state,
            moved: self.moved,
            remaining,
            failed: self.failed,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            note: self.note(),
        }
    }

    /// Empty while every message moved; else how many did not, and why.
    fn note(&self) -> String {
        if self.failed == 0 {
            return String::new();
        }
        let why = if self.failure.is_empty() { FAILURE_REASON_UNKNOWN } else { &self.failure };
        let what = if self.failed == 1 { "1 message" } else { &format!("{} messages", self.failed) };
        format!("{what} could not be moved ({why}); they stay in the dead-letter queue")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(rate: u32) -> Redrive {
        Redrive {
            id: 1,
            uid: 1,
            to: String::new(),
            rate,
            end_seq: 10,
            total: 10,
            moved: 0,
            failed: 0,
            state: RedriveState::Running,
            started_ms: 0,
            finished_ms: 0,
            cursor: 0,
            tokens: 0.0,
            refilled_ms: 0,
            next_scan_ms: 0,
            skipped: Default::default(),
            failure: String::new(),
        }
    }

    #[test]
    fn rate_limit_is_a_token_bucket_without_bursts() {
        let mut t = task(100);
        assert_eq!(t.budget(0), 0);
        assert_eq!(t.budget(100), 10, "100 ms at 100/s");
        t.spend(10);
        assert_eq!(t.budget(60_000), 100, "at most one second banked");
        assert_eq!(task(0).budget(0), REDRIVE_UNLIMITED_PER_TURN);
    }

    #[test]
    fn a_task_that_failed_says_why_in_its_status() {
        let mut t = task(0);
        assert_eq!(t.info("dlq", 0).note, "", "nothing failed");
        t.failed = 1;
        assert_eq!(
            t.info("dlq", 0).note,
            format!("1 message could not be moved ({FAILURE_REASON_UNKNOWN}); they stay in the dead-letter queue")
        );
        t.failed = 3;
        t.failure = "queue \"gone\" does not exist".into();
        assert_eq!(
            t.info("dlq", 0).note,
            "3 messages could not be moved (queue \"gone\" does not exist); they stay in the dead-letter queue"
        );
    }
}
