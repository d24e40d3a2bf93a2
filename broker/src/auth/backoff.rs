//! Per-address backoff after failed authentication: a guesser gets a handful
//! of tries a second, not millions.
//!
//! Each failure from an IP address doubles the time that address must wait
//! before its next attempt (from [`BACKOFF_FIRST_MS`] up to
//! [`BACKOFF_MAX_MS`]); a success clears it. Attempts during the wait are
//! refused without checking anything (and count as failures).
//!
//! One table and one clock serve every port that authenticates: the binary
//! protocol's handshake (`shard/authn.rs`), the CMQ API's signatures and the
//! console's sign-in (`attempts.rs`), so a guesser cannot multiply its
//! tries by switching ports. The clock is the table's own: monotonic
//! milliseconds since the table was made ([`Backoff::now_ms`]), so a
//! wall-clock step neither frees nor locks out an address, and shards and
//! HTTP threads agree on it. Addresses are keyed in canonical form (an
//! IPv4 client of a `[::]` listener is the same IPv4 address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    /// Whether a refusal during the current wait was logged already (a
    /// guesser hammering the HTTP port must not flood the log).
    refusal_logged: bool,
}

pub struct Backoff {
    addrs: Mutex<HashMap<IpAddr, Entry>>,
    /// Entries in `addrs`: while 0 (no address is slowed down, the usual
    /// case) a check or a success takes no lock, so the CMQ API, where
    /// every request authenticates, does not serialise on this table.
    len: AtomicUsize,
    epoch: Instant,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { addrs: Default::default(), len: AtomicUsize::new(0), epoch: Instant::now() }
    }
}

/// An attempt refused unchecked because its address must still wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MustWait {
    pub wait_ms: u64,
    /// The first refusal of this wait (log it; later ones are only counted).
    pub first: bool,
}

impl Backoff {
    /// The table's clock: monotonic milliseconds since it was made, from 1.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// How long `ip` must still wait at `now_ms` (0: it may try).
    pub fn wait_ms(&self, ip: IpAddr, now_ms: u64) -> u64 {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        addrs.get(&ip.to_canonical()).map_or(0, |e| e.until_ms.saturating_sub(now_ms))
    }

    /// Whether `ip` may try at `now_ms`; if not, the refusal (which does not
    /// lengthen the wait: a client retrying on a timer gets in once it is over).
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), MustWait> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        match addrs.get_mut(&ip.to_canonical()) {
            Some(e) if e.until_ms > now_ms => {
                let first = !e.refusal_logged;
                e.refusal_logged = true;
                Err(MustWait { wait_ms: e.until_ms - now_ms, first })
            }
            _ => Ok(()),
        }
    }

    /// Records a failure; returns the wait it imposes.
    pub fn failed(&self, ip: IpAddr, now_ms: u64) -> u64 {
        let ip = ip.to_canonical();
        let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        if addrs.len() >= BACKOFF_ADDRS_MAX && !addrs.contains_key(&ip) {
            addrs.retain(|_, e| e.until_ms > now_ms);
            if addrs.len() >= BACKOFF_ADDRS_MAX {
                addrs.clear();
            }
        }
        let e = addrs.entry(ip).or_insert(Entry { failures: 0, until_ms: 0, refusal_logged: false });
        e.failures = e.failures.saturating_add(1);
        let wait = BACKOFF_FIRST_MS.saturating_mul(1 << (e.failures - 1).min(16)).min(BACKOFF_MAX_MS);
        e.until_ms = now_ms + wait;
        e.refusal_logged = false;
        self.len.store(addrs.len(), Ordering::Relaxed);
        wait
    }

    pub fn succeeded(&self, ip: IpAddr) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        addrs.remove(&ip.to_canonical());
        self.len.store(addrs.len(), Ordering::Relaxed);
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

    #[test]
    fn refusals_during_a_wait_do_not_lengthen_it_and_are_logged_once() {
        let b = Backoff::default();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(b.admit(ip, 1_000), Ok(()), "an empty table admits everyone");
        b.failed(ip, 1_000);
        assert_eq!(b.admit(ip, 1_050), Err(MustWait { wait_ms: BACKOFF_FIRST_MS - 50, first: true }));
        assert_eq!(b.admit(ip, 1_100), Err(MustWait { wait_ms: BACKOFF_FIRST_MS - 100, first: false }));
        assert_eq!(b.admit(ip, 1_000 + BACKOFF_FIRST_MS), Ok(()), "the wait is over on time");
        b.failed(ip, 2_000);
        assert!(b.admit(ip, 2_001).is_err_and(|w| w.first), "each new wait logs its first refusal");
        b.succeeded(ip);
        assert_eq!(b.admit(ip, 2_002), Ok(()));
        assert!(b.now_ms() >= 1);
        b.failed("::ffff:10.0.0.3".parse().expect("ip"), 3_000);
        assert!(b.admit("10.0.0.3".parse().expect("ip"), 3_001).is_err(), "IPv4-mapped is the IPv4 address");
    }
}
