//! The CMQ API 2.0 request signature (spec §3): HMAC-SHA1 or HMAC-SHA256
//! over `METHOD + HOST + /v2/index.php + "?" + k=v&...` with the keys
//! sorted bytewise, `_` in keys written as `.`, values raw; base64.
//! Also the replay guard: a (SecretId, Nonce, Timestamp) seen within the
//! freshness window is refused.

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::params::Params;

/// The only path the API is served on (a constant in every SDK).
pub const API_PATH: &str = "/v2/index.php";

/// How far a request's `Timestamp` may be from the broker's clock, seconds.
pub const TIMESTAMP_SKEW_SECS_MAX: u64 = 300;

/// (SecretId, Nonce, Timestamp) triples remembered for the replay check. A
/// request arriving while this many fresh ones are remembered is refused
/// (4420, retry) rather than let through unchecked. Each entry lives about
/// [`TIMESTAMP_SKEW_SECS_MAX`] (clients send the current time), so this caps
/// sustained signed traffic near 4,000,000 / 300 s = 13,000 requests/s; an
/// entry is a 64-bit hash in a hash set, 10-18 bytes with the set's slack,
/// so at most about 72 MB (docs/BENCHMARKS.md, "CMQ API gateway").
pub const REPLAY_ENTRIES_MAX: usize = 4_000_000;

/// Which HMAC: `HmacSHA256`, else (any other value or none) HMAC-SHA1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Sha1,
    Sha256,
}

impl Method {
    pub fn from_param(v: Option<&str>) -> Method {
        if v == Some("HmacSHA256") {
            Method::Sha256
        } else {
            Method::Sha1
        }
    }
}

/// The string the client signed. `skip_at`: leave out values starting
/// with `@` (the Python SDK does so for POST).
pub fn string_to_sign(http_method: &str, host: &str, params: &Params, skip_at: bool) -> String {
    let mut s = format!("{http_method}{host}{API_PATH}?");
    let mut first = true;
    for (k, v) in params.iter() {
        if k == "Signature" || (skip_at && v.starts_with('@')) {
            continue;
        }
        if !first {
            s.push('&');
        }
        first = false;
        s.extend(k.chars().map(|c| if c == '_' { '.' } else { c }));
        s.push('=');
        s.push_str(v);
    }
    s
}

/// Base64 of the HMAC of `text` under `key`.
pub fn sign(method: Method, key: &[u8], text: &str) -> String {
    let raw = match method {
        Method::Sha1 => mac::<Hmac<Sha1>>(key, text),
        Method::Sha256 => mac::<Hmac<Sha256>>(key, text),
    };
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn mac<M: Mac + KeyInit>(key: &[u8], text: &str) -> Vec<u8> {
    let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(text.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Whether `signature` signs this request under one of `keys`, for one of
/// the host spellings: the `Host` header as sent, then with the default
/// port added or removed; for POST also without the `@` values.
pub fn verify(
    http_method: &str,
    host: &str,
    default_port: u16,
    params: &Params,
    keys: &[Vec<u8>],
    signature: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature) else { return false };
    let method = Method::from_param(params.get("SignatureMethod"));
    let hosts = host_spellings(host, default_port);
    let at_variants: &[bool] = if http_method == "POST" { &[false, true] } else { &[false] };
    for h in &hosts {
        for skip_at in at_variants {
            let text = string_to_sign(http_method, h, params, *skip_at);
            for key in keys {
                if matches(method, key, &text, &given) {
                    return true;
                }
            }
        }
    }
    false
}

/// Constant-time comparison (`Mac::verify_slice`).
fn matches(method: Method, key: &[u8], text: &str, given: &[u8]) -> bool {
    fn check<M: Mac + KeyInit>(key: &[u8], text: &str, given: &[u8]) -> bool {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(text.as_bytes());
        m.verify_slice(given).is_ok()
    }
    match method {
        Method::Sha1 => check::<Hmac<Sha1>>(key, text, given),
        Method::Sha256 => check::<Hmac<Sha256>>(key, text, given),
    }
}

/// `host` as sent, and with the default port toggled (`http.client` drops
/// `:80` from `Host` even when the user typed it).
fn host_spellings(host: &str, default_port: u16) -> Vec<String> {
    let suffix = format!(":{default_port}");
    let other = match host.strip_suffix(&suffix) {
        Some(bare) => bare.to_owned(),
        None if !host.contains(':') || host.ends_with(']') => format!("{host}{suffix}"),
        None => return vec![host.to_owned()],
    };
    vec![host.to_owned(), other]
}

/// Whether `timestamp` is within [`TIMESTAMP_SKEW_SECS_MAX`] of `now`.
pub fn fresh(timestamp: u64, now: u64) -> bool {
    timestamp.abs_diff(now) <= TIMESTAMP_SKEW_SECS_MAX
}

/// Requests seen within the freshness window: per `Timestamp` second, a
/// keyed 64-bit hash of each (SecretId, Nonce), so that an entry costs a
/// hash-set slot instead of a string; expiry drops whole seconds from the
/// front. Two different requests of the same second share a hash with
/// probability about n^2 / 2^65 for n requests in that second (a refused
/// request the client retries); the key is random per process, so nobody
/// can craft a collision.
pub struct ReplayGuard {
    by_second: BTreeMap<u64, HashSet<u64>>,
    entries: usize,
    limit: usize,
    hash_key: (u64, u64),
}

impl Default for ReplayGuard {
    fn default() -> ReplayGuard {
        ReplayGuard::with_limit(REPLAY_ENTRIES_MAX)
    }
}

/// Why the replay guard refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    Repeated,
    Full,
}

impl ReplayGuard {
    /// A guard remembering at most `limit` requests.
    pub fn with_limit(limit: usize) -> ReplayGuard {
        ReplayGuard { by_second: BTreeMap::new(), entries: 0, limit, hash_key: (rand::random(), rand::random()) }
    }

    /// Records a fresh request; refuses one seen before (or any when full).
    pub fn admit(&mut self, secret_id: &str, nonce: u64, timestamp: u64, now: u64) -> Result<(), Replay> {
        let horizon = now.saturating_sub(TIMESTAMP_SKEW_SECS_MAX);
        while let Some(entry) = self.by_second.first_entry().filter(|e| *e.key() < horizon) {
            self.entries -= entry.remove().len();
        }
        let fingerprint = self.fingerprint(secret_id, nonce);
        if self.by_second.get(&timestamp).is_some_and(|s| s.contains(&fingerprint)) {
            return Err(Replay::Repeated);
        }
        if self.entries >= self.limit {
            return Err(Replay::Full);
        }
        self.by_second.entry(timestamp).or_default().insert(fingerprint);
        self.entries += 1;
        Ok(())
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn fingerprint(&self, secret_id: &str, nonce: u64) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        h.write(secret_id.as_bytes());
        h.write_u8(0xff); // no SecretId is a prefix of another's bytes plus the nonce
        h.write_u64(nonce);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_params(method: &str) -> Params {
        let raw = format!(
            "Action=SendMessage&Nonce=12345&RequestClient=SDK_Python_1.3&SecretId=AKIDexample&SignatureMethod={method}\
             &Timestamp=1700000000&delaySeconds=0&msgBody=hello+world&queueName=q1&Signature=ignored"
        );
        Params::parse(raw.as_bytes()).expect("parses")
    }

    /// The spec's test vectors (§3), recomputed with Python's hmac module
    /// when this test was written.
    #[test]
    fn spec_vectors_for_both_hashes() {
        let p = spec_params("HmacSHA1");
        let text = string_to_sign("POST", "127.0.0.1:9876", &p, false);
        assert_eq!(
            text,
            "POST127.0.0.1:9876/v2/index.php?Action=SendMessage&Nonce=12345&RequestClient=SDK_Python_1.3\
             &SecretId=AKIDexample&SignatureMethod=HmacSHA1&Timestamp=1700000000&delaySeconds=0\
             &msgBody=hello world&queueName=q1"
        );
        assert_eq!(sign(Method::Sha1, b"secretKeyExample", &text), "0gnPkJNbgnlEC3inLbCl1C+eQgY=");
        let p = spec_params("HmacSHA256");
        let text = string_to_sign("POST", "127.0.0.1:9876", &p, false);
        assert_eq!(sign(Method::Sha256, b"secretKeyExample", &text), "hiAGHO9myUo9YCBwmeYRQCU/pa9lZtwLmRRxCiz5rrQ=");
    }

    /// The engineering notes' vector: list keys sort bytewise (`msgBody.10`
    /// before `msgBody.2`).
    #[test]
    fn notes_vector_sorts_list_keys_bytewise() {
        let raw = "Action=SendMessage&Nonce=12345&RequestClient=SDK_Python_1.3&SecretId=AKIDtest\
                   &SignatureMethod=HmacSHA256&Timestamp=1700000000&msgBody=hello+world&msgBody.10=x&msgBody.2=y&queueName=q1";
        let p = Params::parse(raw.as_bytes()).expect("parses");
        let text = string_to_sign("POST", "127.0.0.1:8080", &p, false);
        assert_eq!(sign(Method::Sha256, b"secretKeyXYZ", &text), "FpP7S3gG/N0FyNopzoRbnSIiNxDmyDNaGaLXzjwBFNw=");
        assert_eq!(sign(Method::Sha1, b"secretKeyXYZ", &text), "twdhKDzElgONUuPequCT7Vjt+MI=");
    }

    #[test]
    fn verify_accepts_host_and_at_variants_and_refuses_the_rest() {
        let p = spec_params("HmacSHA1");
        let keys = [b"wrong".to_vec(), b"secretKeyExample".to_vec()];
        let good = "0gnPkJNbgnlEC3inLbCl1C+eQgY=";
        assert!(verify("POST", "127.0.0.1:9876", 80, &p, &keys, good), "second key of a rotation");
        assert!(!verify("GET", "127.0.0.1:9876", 80, &p, &keys, good), "method is signed");
        assert!(!verify("POST", "127.0.0.1:9877", 80, &p, &keys, good), "host is signed");
        assert!(!verify("POST", "127.0.0.1:9876", 80, &p, &keys[..1], good));
        assert!(!verify("POST", "127.0.0.1:9876", 80, &p, &keys, "not base64!"));
        // A client that typed :80 signs it; http.client leaves it out of Host.
        let text = string_to_sign("POST", "example.com:80", &p, false);
        let sig = sign(Method::Sha1, b"k", &text);
        assert!(verify("POST", "example.com", 80, &p, &[b"k".to_vec()], &sig));
        // Python leaves `@` values out of a POST's signature.
        let at = Params::parse(b"Action=SendMessage&msgBody=%40file&Nonce=1").expect("parses");
        let text = string_to_sign("POST", "h:1", &at, true);
        assert!(!text.contains("msgBody"));
        assert!(verify("POST", "h:1", 80, &at, &[b"k".to_vec()], &sign(Method::Sha1, b"k", &text)));
        assert!(!verify("GET", "h:1", 80, &at, &[b"k".to_vec()], &sign(Method::Sha1, b"k", &text)));
        // `_` in keys is signed as `.`.
        let u = Params::parse(b"msgBody_1=a").expect("parses");
        assert!(string_to_sign("GET", "h", &u, false).ends_with("?msgBody.1=a"));
    }

    #[test]
    fn signature_method_defaults_to_sha1() {
        assert_eq!(Method::from_param(Some("HmacSHA256")), Method::Sha256);
        assert_eq!(Method::from_param(Some("hmacsha256")), Method::Sha1);
        assert_eq!(Method::from_param(None), Method::Sha1);
    }

    #[test]
    fn timestamps_and_replays() {
        assert!(fresh(1000, 1300) && fresh(1300, 1000) && !fresh(1000, 1301) && !fresh(1301, 1000));
        let mut g = ReplayGuard::default();
        g.admit("a", 1, 1000, 1000).expect("first");
        assert_eq!(g.admit("a", 1, 1000, 1000), Err(Replay::Repeated));
        g.admit("b", 1, 1000, 1000).expect("other key");
        g.admit("a", 2, 1000, 1000).expect("other nonce");
        g.admit("a", 1, 1001, 1000).expect("other timestamp");
        g.admit("z", 9, 1400, 1400).expect("later");
        assert_eq!(g.len(), 1, "entries older than the window are dropped");
        assert_eq!(g.admit("z", 9, 1400, 1400), Err(Replay::Repeated));
        assert_eq!(g.limit, REPLAY_ENTRIES_MAX);
        // At the limit: full until the window moves past the oldest second.
        let mut g = ReplayGuard::with_limit(1000);
        for i in 0..999 {
            g.admit("x", i, 1400 + i % 3, 1400).expect("room");
        }
        g.admit("x", 5000, 1401, 1400).expect("the last slot");
        assert_eq!(g.admit("x", 5001, 1400, 1400), Err(Replay::Full));
        assert_eq!(g.admit("x", 0, 1400, 1400), Err(Replay::Repeated), "a replay is still told apart");
        g.admit("x", 5001, 1701, 1701).expect("second 1400 expired: room again");
        assert_eq!(g.len(), 1000 - 333 + 1, "second 1400's 333 gone, one added");
    }
}
