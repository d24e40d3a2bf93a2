//! Per-key limits (`--key-connections-max`, `--key-requests-per-second`;
//! 0, the default, turns each off): so one application's key cannot take
//! the whole broker. Both count broker-wide, over every shard.
//!
//! * Connections: checked when a connection authenticates; one past the
//!   limit is answered TOO_MANY_KEY_CONNECTIONS and closed. A connection
//!   holds a [`KeyConnection`], whose drop (the connection closing) gives
//!   its place back.
//! * Requests: fixed one-second windows on the broker's monotonic clock; a
//!   request past the limit in its window is answered REQUEST_RATE_EXCEEDED
//!   and the connection stays open. At a window's edge a client can get up
//!   to twice the limit within one second (the price of one atomic counter
//!   per request instead of a lock).
//!
//! Nothing is tracked for keys with no open connection, so the table holds
//! at most one entry per open connection's key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One key's use, shared by its connections on every shard.
#[derive(Debug, Default)]
pub struct KeyUsage {
    connections: AtomicU64,
    /// The window (seconds on the broker's monotonic clock) `requests` counts.
    window_s: AtomicU64,
    requests: AtomicU64,
}

impl KeyUsage {
    /// Counts one request at `now_ms`; false when it is past `per_second`
    /// in its window (it is refused, and still counted).
    pub fn admit(&self, now_ms: u64, per_second: u64) -> bool {
        let window = now_ms / 1000;
        let seen = self.window_s.load(Ordering::Relaxed);
        if seen != window && self.window_s.compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed) < per_second
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

type Table = Arc<Mutex<HashMap<Box<str>, Arc<KeyUsage>>>>;

/// The keys with open connections, by SecretId.
#[derive(Debug, Default)]
pub struct KeyUsageTable {
    keys: Table,
}

/// A connection's place in its key's count; dropping it gives the place back.
#[derive(Debug)]
pub struct KeyConnection {
    pub usage: Arc<KeyUsage>,
    secret_id: Box<str>,
    table: Table,
}

impl KeyUsageTable {
    /// A new connection of `secret_id`, unless `connections_max` (0: no
    /// limit) of its connections are open already.
    pub fn open(&self, secret_id: &str, connections_max: u64) -> Option<KeyConnection> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let usage = keys.entry(secret_id.into()).or_default().clone();
        if connections_max != 0 && usage.connections() >= connections_max {
            return None;
        }
        usage.connections.fetch_add(1, Ordering::Relaxed);
        Some(KeyConnection { usage, secret_id: secret_id.into(), table: self.keys.clone() })
    }

    /// Open connections of `secret_id`.
    pub fn connections(&self, secret_id: &str) -> u64 {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(secret_id).map_or(0, |u| u.connections())
    }
}

impl Drop for KeyConnection {
    fn drop(&mut self) {
        let mut keys = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if self.usage.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            keys.remove(&self.secret_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_limited_per_key_and_given_back_on_drop() {
        let t = KeyUsageTable::default();
        let a: Vec<KeyConnection> = (0..3).map(|_| t.open("AKIDa", 3).expect("within the limit")).collect();
        assert!(t.open("AKIDa", 3).is_none(), "the fourth is refused");
        let b = t.open("AKIDb", 3).expect("another key has its own count");
        assert!(t.open("AKIDa", 0).is_some(), "0: no limit");
        drop(a);
        assert_eq!(t.connections("AKIDa"), 0);
        assert!(t.keys.lock().unwrap().get("AKIDa").is_none(), "a key with no connection is forgotten");
        assert_eq!(b.usage.connections(), 1);
        assert!(t.open("AKIDa", 3).is_some(), "places given back");
    }

    #[test]
    fn requests_are_limited_per_one_second_window() {
        let u = KeyUsage::default();
        for i in 0..5 {
            assert!(u.admit(10_000 + i, 5), "request {i} of 5");
        }
        assert!(!u.admit(10_999, 5), "the sixth in the same second is refused");
        assert!(u.admit(11_000, 5), "the next window starts afresh");
        for _ in 0..4 {
            assert!(u.admit(11_500, 5));
        }
        assert!(!u.admit(11_999, 5));
    }
}
