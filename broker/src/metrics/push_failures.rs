//! Why pushes to each HTTP subscription failed, most recent first: a shard
//! keeps the last failure per subscription (the reason the push client gave:
//! "HTTP 503", "connection refused", a timeout, ...) with its time and a
//! count, for the console's subscription page. In memory only (the log keeps
//! what a restart needs: retry times, delivered and dropped counts).

use std::collections::BTreeMap;

/// Subscriptions a shard remembers failures of; beyond, the one whose last
/// failure is oldest is forgotten.
pub const PUSH_FAILURE_SUBSCRIPTIONS_MAX: usize = 1024;

/// Longest reason kept (bytes; longer ones are cut at a character boundary).
pub const PUSH_FAILURE_REASON_BYTES_MAX: usize = 256;

/// A subscription's last push failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushFailure {
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Failed attempts since the broker started.
    pub count: u64,
    /// Whether the push client judged it final (no retry can succeed).
    pub rejected: bool,
}

/// (topic, subscription) -> its last failure.
#[derive(Clone, Debug, Default)]
pub struct PushFailures {
    by_subscription: BTreeMap<(String, String), PushFailure>,
}

impl PushFailures {
    pub fn record(&mut self, topic: &str, subscription: &str, reason: &str, rejected: bool, at_ms: u64) {
        let key = (topic.to_owned(), subscription.to_owned());
        if !self.by_subscription.contains_key(&key) && self.by_subscription.len() >= PUSH_FAILURE_SUBSCRIPTIONS_MAX {
            let oldest = self.by_subscription.iter().min_by_key(|(_, f)| f.at_ms).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.by_subscription.remove(&k);
            }
        }
        let f = self.by_subscription.entry(key).or_default();
        f.reason = cut(reason, PUSH_FAILURE_REASON_BYTES_MAX).to_owned();
        f.at_ms = at_ms;
        f.count += 1;
        f.rejected = rejected;
    }

    pub fn get(&self, topic: &str, subscription: &str) -> Option<&PushFailure> {
        self.by_subscription.get(&(topic.to_owned(), subscription.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.by_subscription.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_subscription.is_empty()
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_failure_is_kept_per_subscription_within_bounds() {
        let mut f = PushFailures::default();
        f.record("t", "s", "HTTP 503", false, 10);
        f.record("t", "s", "connection refused", false, 20);
        let got = f.get("t", "s").expect("recorded");
        assert_eq!((got.reason.as_str(), got.at_ms, got.count), ("connection refused", 20, 2));
        f.record("t", "long", &"é".repeat(PUSH_FAILURE_REASON_BYTES_MAX), true, 30);
        assert!(f.get("t", "long").is_some_and(|l| l.reason.len() <= PUSH_FAILURE_REASON_BYTES_MAX && l.rejected));
        for k in 0..PUSH_FAILURE_SUBSCRIPTIONS_MAX {
            f.record("u", &format!("s{k}"), "x", false, 100 + k as u64);
        }
        assert_eq!(f.len(), PUSH_FAILURE_SUBSCRIPTIONS_MAX);
        assert!(f.get("t", "s").is_none(), "the oldest failures were forgotten");
        assert!(f.get("u", "s0").is_some());
    }
}
