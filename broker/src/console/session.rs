//! Console sign-ins: a server-side session table keyed by a random id that
//! travels in an HttpOnly, SameSite=Strict cookie, each session with its
//! own CSRF token that state-changing requests must echo in a header.
//!
//! A session remembers the SecretId it signed in with, not the key's
//! policy: every request looks the key up again, so a deleted key or a
//! changed policy takes effect at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie holding the session id.
pub const COOKIE_NAME: &str = "cmq_session";

/// The header a state-changing request carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Sessions held at once; signing in with the table full ends the session
/// closest to expiring (so a flood of sign-ins cannot grow memory, and
/// cannot lock everyone out either).
pub const SESSIONS_MAX: usize = 1024;

/// `--console-session-secs` default (8 hours) and largest (7 days).
pub const SESSION_SECS_DEFAULT: u64 = 8 * 3600;
pub const SESSION_SECS_MAX: u64 = 7 * 24 * 3600;

/// `--console-session-secs`, checked.
pub fn ttl_secs(flag: Option<u64>) -> anyhow::Result<u64> {
    let secs = flag.unwrap_or(SESSION_SECS_DEFAULT);
    if !(1..=SESSION_SECS_MAX).contains(&secs) {
        anyhow::bail!("--console-session-secs {secs}: must be 1..={SESSION_SECS_MAX}");
    }
    Ok(secs)
}

/// Who a session acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Signed in with this SecretId.
    Key(String),
    /// Anonymous access (loopback, no keys): no sign-in needed.
    Anonymous,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub holder: Holder,
    pub csrf: String,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `holder` lasting `ttl`: its id and the session.
    pub fn create(&self, holder: Holder, ttl: Duration, now: Instant) -> Result<(String, Session), getrandom::Error> {
        let id = crate::auth::secrets::new_secret_key()?;
        let session = Session { holder, csrf: crate::auth::secrets::new_secret_key()?, expires: now + ttl };
        let mut t = self.lock();
        t.retain(|_, s| s.expires > now);
        if t.len() >= SESSIONS_MAX {
            let soonest = t.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                t.remove(&k);
            }
        }
        t.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session with this id (an expired one is forgotten).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut t = self.lock();
        match t.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                t.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_id(cookie_header: &str) -> Option<&str> {
    cookie_header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == COOKIE_NAME).map(|(_, v)| v)
}

/// The `Set-Cookie` value for a session id (`ttl_secs` 0: delete it).
/// `secure` (the HTTP port serves HTTPS): the browser sends the cookie over
/// HTTPS only, never to a plaintext service on another port of the same
/// host (cookies are not scoped by port).
pub fn set_cookie(id: &str, ttl_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl_secs}{secure}")
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_the_table_stays_bounded() {
        let s = Sessions::default();
        let now = Instant::now();
        let (id, made) = s.create(Holder::Anonymous, Duration::from_secs(10), now).expect("rng");
        assert_eq!(s.get(&id, now).map(|x| x.csrf), Some(made.csrf));
        assert!(s.get(&id, now + Duration::from_secs(10)).is_none(), "expired at its deadline");
        assert!(s.is_empty(), "an expired session is forgotten");
        for k in 0..SESSIONS_MAX + 5 {
            s.create(Holder::Key(format!("k{k}")), Duration::from_secs(100 + k as u64), now).expect("rng");
        }
        assert_eq!(s.len(), SESSIONS_MAX);
    }

    #[test]
    fn cookies_and_secrets() {
        assert_eq!(cookie_id("a=1; cmq_session=xyz; b=2"), Some("xyz"));
        assert_eq!(cookie_id("cmq_sessionx=1"), None);
        let c = set_cookie("xyz", 60, false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age=60"));
        assert!(!c.contains("Secure") && set_cookie("xyz", 60, true).ends_with("; Secure"));
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd") && !same_secret(b"ab", b"abc"));
        assert!(ttl_secs(Some(0)).is_err() && ttl_secs(Some(SESSION_SECS_MAX + 1)).is_err());
        assert_eq!(ttl_secs(None).expect("default"), SESSION_SECS_DEFAULT);
    }
}
