//! What an authenticated connection carries: its key, and the decisions
//! its policy made, cached per (action, resource) until the key table's
//! version changes. A cached check is one hash lookup and a bit test.

use std::collections::HashMap;
use std::sync::Arc;

use super::actions::{Action, Resource};
use super::table::Principal;

/// Names one connection caches decisions for, per resource kind. A client
/// touching more names than this pays a policy evaluation now and then (the
/// cache of that kind is cleared when full), never unbounded memory.
pub const SESSION_CACHE_NAMES_MAX: usize = 1024;

fn digest(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret).into()
}

/// Decisions for one resource: a bit per action (`Action` < 64).
#[derive(Clone, Copy, Default)]
struct Line {
    known: u64,
    allowed: u64,
}

impl Line {
    fn get(&self, a: Action) -> Option<bool> {
        let bit = 1u64 << a.0;
        (self.known & bit != 0).then_some(self.allowed & bit != 0)
    }

    fn set(&mut self, a: Action, allowed: bool) {
        let bit = 1u64 << a.0;
        self.known |= bit;
        if allowed {
            self.allowed |= bit;
        }
    }
}

/// An authenticated connection's key and cached decisions.
pub struct Session {
    pub principal: Arc<Principal>,
    /// The key table version `principal` was read at.
    pub version: u64,
    broker: Line,
    /// Queue, topic, key and group names.
    named: [HashMap<Box<str>, Line>; 4],
    /// SHA-256 of the SecretKey this connection authenticated with (not the
    /// secret itself): once a rotation retires it, the connection is closed.
    secret_digest: [u8; 32],
    /// Its place in the key's connection count and request windows
    /// (`limits.rs`); None in unit tests.
    pub slot: Option<super::limits::KeyConnection>,
}

impl Session {
    /// A session of `principal`, authenticated with `secret` (one of its SecretKeys).
    pub fn new(principal: Arc<Principal>, version: u64, secret: &[u8]) -> Session {
        let secret_digest = digest(secret);
        Session { principal, version, broker: Line::default(), named: Default::default(), secret_digest, slot: None }
    }

    /// The key changed (a new table): forget every decision.
    pub fn refresh(&mut self, principal: Arc<Principal>, version: u64) {
        self.principal = principal;
        self.version = version;
        self.broker = Line::default();
        self.named = Default::default();
    }

    /// Whether `key` (the session's key as the table has it now) still has
    /// the SecretKey this session authenticated with.
    pub fn secret_still_valid(&self, key: &Principal) -> bool {
        key.secrets.iter().any(|s| digest(s) == self.secret_digest)
    }

    /// Whether the key may take `action` on `resource` (cached).
    pub fn allows(&mut self, action: Action, resource: Resource<'_>) -> bool {
        let (kind, name) = match resource {
            Resource::Broker => {
                if let Some(d) = self.broker.get(action) {
                    return d;
                }
                let d = self.principal.policy.allows(action.name(), &resource.path());
                self.broker.set(action, d);
                return d;
            }
            Resource::Queue(n) => (0, n),
            Resource::Topic(n) => (1, n),
            Resource::Key(n) => (2, n),
            Resource::Group(n) => (3, n),
        };
        if let Some(d) = self.named[kind].get(name).and_then(|l| l.get(action)) {
            return d;
        }
        let d = self.principal.policy.allows(action.name(), &resource.path());
        let cache = &mut self.named[kind];
        if cache.len() >= SESSION_CACHE_NAMES_MAX && !cache.contains_key(name) {
            cache.clear();
        }
        cache.entry(name.into()).or_default().set(action, d);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::Policy;

    fn principal(policy: &str) -> Arc<Principal> {
        Arc::new(Principal {
            name: "k".into(),
            secret_id: "AKIDx".into(),
            secrets: vec![b"s".to_vec()],
            policy: Policy::parse(policy).expect("policy"),
            created_ms: 0,
            modified_ms: 0,
        })
    }

    #[test]
    fn cached_decisions_match_the_policy_and_refresh_forgets_them() {
        let send = Action(5);
        let purge = Action(15);
        let mut s = Session::new(
            principal(
                r#"{"version":"2.0","statement":[{"effect":"allow","action":"cmq:SendMessage","resource":"queue/a*"}]}"#,
            ),
            1,
            b"s",
        );
        assert!(s.secret_still_valid(&s.principal.clone()));
        for _ in 0..2 {
            assert!(s.allows(send, Resource::Queue("ab")));
            assert!(!s.allows(purge, Resource::Queue("ab")));
            assert!(!s.allows(send, Resource::Queue("b")));
            assert!(!s.allows(send, Resource::Topic("ab")));
            assert!(!s.allows(send, Resource::Broker));
        }
        s.refresh(principal(""), 2);
        assert!(s.secret_still_valid(&principal("")), "refresh keeps the secret it authenticated with");
        let rotated = Principal {
            name: "k".into(),
            secret_id: "AKIDx".into(),
            secrets: vec![b"t".to_vec()],
            policy: Policy::parse("").expect("policy"),
            created_ms: 0,
            modified_ms: 0,
        };
        assert!(!s.secret_still_valid(&rotated), "a retired SecretKey");
        assert!(!s.allows(send, Resource::Queue("ab")), "a new policy, not the cached decision");
        for i in 0..SESSION_CACHE_NAMES_MAX + 10 {
            assert!(!s.allows(send, Resource::Queue(&format!("q{i}"))));
        }
        assert!(s.named[0].len() <= SESSION_CACHE_NAMES_MAX);
    }
}
