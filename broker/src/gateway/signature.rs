//! The CMQ API 2.0 request signature (spec §3): HMAC-SHA1 or HMAC-SHA256
//! over `METHOD + HOST + /v2/index.php + "?" + k=v&...` with the keys
//! sorted bytewise, `_` in keys written as `.`, values raw; base64.
//! Also the replay guard: a (SecretId, Nonce, Timestamp) seen within the
//! freshness window is refused.

use std::collections::BTreeSet;

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
/// (4420, retry) rather than let through unchecked.
pub const REPLAY_ENTRIES_MAX: usize = 200_000;

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

/// Requests seen within the freshness window, oldest timestamp first, so
/// expiry pops from the front.
#[derive(Default)]
pub struct ReplayGuard {
    seen: BTreeSet<(u64, String, u64)>,
}

/// Why the replay guard refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    Repeated,
    Full,
}

impl ReplayGuard {
    /// Records a fresh request; refuses one seen before (or any when full).
    pub fn admit(&mut self, secret_id: &str, nonce: u64, timestamp: u64, now: u64) -> Result<(), Replay> {
        let horizon = now.saturating_sub(TIMESTAMP_SKEW_SECS_MAX);
        while self.seen.first().is_some_and(|(t, _, _)| *t < horizon) {
            self.seen.pop_first();
        }
        let key = (timestamp, secret_id.to_owned(), nonce);
        if self.seen.contains(&key) {
            return Err(Replay::Repeated);
        }
        if self.seen.len() >= REPLAY_ENTRIES_MAX {
            return Err(Replay::Full);
        }
        self.seen.insert(key);
        Ok(())
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
        assert_eq!(g.seen.len(), 1, "entries older than the window are dropped");
        for i in 0..REPLAY_ENTRIES_MAX as u64 - 1 {
            g.admit("x", i, 1400, 1400).expect("room");
        }
        assert_eq!(g.admit("x", u64::MAX, 1400, 1400), Err(Replay::Full));
    }
}
