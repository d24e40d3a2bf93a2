//! Per-address backoff after failed authentication: a guesser gets a handful
//! of tries a second, not millions.
//!
//! Each failure from an IP address doubles the time that address must wait
//! before its next attempt (from [`BACKOFF_FIRST_MS`] up to
//! [`BACKOFF_MAX_MS`]); a success clears it. Attempts during the wait are
//! refused without checking anything (and count as failures).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Wait after the first failure: at most five guesses a second per address.
pub const BACKOFF_FIRST_MS: u64 = 200;

/// Longest wait (after about six failures in a row).
pub const BACKOFF_MAX_MS: u64 = 10_000;

/// Addresses remembered at once. When full, addresses whose wait is over
/// are forgotten first; if none is, the table is cleared (a flood from
/// more addresses than this is not slowed by this table, but each attempt
/// still costs the guesser a connection and a round trip).
pub const BACKOFF_ADDRS_MAX: usize = 16_384;

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    until_ms: u64,
}

#[derive(Default)]
pub struct Backoff {
    addrs: Mutex<HashMap<IpAddr, Entry>>,
}

impl Backoff {
    /// How long `ip` must still wait at `now_ms` (0: it may try).
    pub fn wait_ms(&self, ip: IpAddr, now_ms: u64) -> u64 {
        let addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        addrs.get(&ip).map_or(0, |e| e.until_ms.saturating_sub(now_ms))
    }

    /// Records a failure; returns the wait it imposes.
    pub fn failed(&self, ip: IpAddr, now_ms: u64) -> u64 {
        let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        if addrs.len() >= BACKOFF_ADDRS_MAX && !addrs.contains_key(&ip) {
            addrs.retain(|_, e| e.until_ms > now_ms);
            if addrs.len() >= BACKOFF_ADDRS_MAX {
                addrs.clear();
            }
        }
        let e = addrs.entry(ip).or_insert(Entry { failures: 0, until_ms: 0 });
        e.failures = e.failures.saturating_add(1);
        let wait = BACKOFF_FIRST_MS.saturating_mul(1 << (e.failures - 1).min(16)).min(BACKOFF_MAX_MS);
        e.until_ms = now_ms + wait;
        wait
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_per_failure_up_to_the_cap_and_clear_on_success() {
        let b = Backoff::default();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(b.wait_ms(ip, 0), 0);
        assert_eq!(b.failed(ip, 1_000), BACKOFF_FIRST_MS);
        assert_eq!(b.wait_ms(ip, 1_000), BACKOFF_FIRST_MS);
        assert_eq!(b.wait_ms(other, 1_000), 0, "other addresses are not slowed");
        assert_eq!(b.failed(ip, 2_000), 2 * BACKOFF_FIRST_MS);
        for _ in 0..20 {
            b.failed(ip, 3_000);
        }
        assert_eq!(b.wait_ms(ip, 3_000), BACKOFF_MAX_MS);
        b.succeeded(ip);
        assert_eq!(b.wait_ms(ip, 3_000), 0);
    }
}
