//! Authentication attempts on the HTTP port (the CMQ API's signatures and
//! the console's sign-in) in the binary protocol's per-address backoff
//! (`backoff.rs`, docs/SECURITY.md): an address that must still wait is
//! refused before anything is checked; a failure is counted, logged with
//! the address (never a secret) and lengthens the address's wait; a
//! success clears it.

use std::net::IpAddr;

use super::Auth;

/// What a refusal during a wait says (the binary port, the CMQ API's 4100
/// and the console's 429 all say it).
pub fn must_wait_message(wait_ms: u64) -> String {
    format!("too many failed attempts from this address; retry in {wait_ms} ms")
}

impl Auth {
    /// Before an attempt from `peer` (None: address unknown) is checked:
    /// `Err(wait_ms)` while the address must wait. The refusal counts as a
    /// failure but does not lengthen the wait; the first of each wait is
    /// logged, later ones only counted (a guesser cannot flood the log).
    /// `via` names the check, for the log.
    pub fn admit_attempt(&self, peer: Option<IpAddr>, via: &str) -> Result<(), u64> {
        let Some(ip) = peer else { return Ok(()) };
        let Err(refused) = self.backoff.admit(ip, self.backoff.now_ms()) else { return Ok(()) };
        self.count_failure();
        if refused.first {
            log::warn!(
                "{via}: refused an attempt from {ip} unchecked: it must wait {} ms after failed attempts \
                 (further refusals during this wait are only counted)",
                refused.wait_ms
            );
        }
        Err(refused.wait_ms)
    }

    /// A failed attempt from `peer`: counted, logged, and the address
    /// slowed down. Returns the wait imposed.
    pub fn attempt_failed(&self, peer: Option<IpAddr>, via: &str, why: &str) -> u64 {
        self.count_failure();
        let wait = peer.map_or(0, |ip| self.backoff.failed(ip, self.backoff.now_ms()));
        let who = peer.map_or_else(|| "unknown address".to_owned(), |ip| ip.to_string());
        log::warn!("{via}: authentication failed from {who}: {why} (next attempt from there in {wait} ms)");
        wait
    }

    /// A successful attempt: the address's backoff is cleared.
    pub fn attempt_succeeded(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            self.backoff.succeeded(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::backoff::BACKOFF_FIRST_MS;
    use std::sync::atomic::Ordering;

    #[test]
    fn failures_slow_the_address_down_and_a_success_clears_it() {
        let auth = Auth::default();
        let ip: Option<IpAddr> = Some("10.1.2.3".parse().expect("ip"));
        assert_eq!(auth.admit_attempt(ip, "test"), Ok(()));
        assert_eq!(auth.attempt_failed(ip, "test", "wrong signature"), BACKOFF_FIRST_MS);
        let wait = auth.admit_attempt(ip, "test").expect_err("must wait");
        assert!(wait > 0 && wait <= BACKOFF_FIRST_MS, "{wait}");
        assert_eq!(auth.admit_attempt(None, "test"), Ok(()), "an unknown address is not held up");
        assert_eq!(auth.failures.load(Ordering::Relaxed), 2, "the failure and the refusal are counted");
        auth.attempt_succeeded(ip);
        assert_eq!(auth.admit_attempt(ip, "test"), Ok(()));
        assert!(must_wait_message(150).contains("retry in 150 ms"));
    }
}
