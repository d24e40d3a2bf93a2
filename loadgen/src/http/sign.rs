//! Signing a CMQ API 2.0 request as the spec (§3) says: the common
//! parameters added, the string `POST` + host + `/v2/index.php` + `?` +
//! `k=v` pairs sorted bytewise by key (`_` in keys written as `.`, values
//! raw), its HMAC (HmacSHA256 by default, HmacSHA1 on request) in base64 as
//! `Signature`, everything form-encoded as the POST body.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};

/// The path every SDK posts to.
pub const API_PATH: &str = "/v2/index.php";

/// SecretId sent when the run has no credentials: a broker that serves
/// anonymous clients ignores the signature of a key it does not know (the
/// request is still signed, so the load generator's cost is the same).
pub const ANONYMOUS_SECRET_ID: &str = "cmq-loadgen-anonymous";

/// Which HMAC signs the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha1,
}

impl Hash {
    pub fn param(self) -> &'static str {
        match self {
            Hash::Sha256 => "HmacSHA256",
            Hash::Sha1 => "HmacSHA1",
        }
    }
}

/// One connection's signer: its key, the host it signs for, and a nonce
/// sequence of its own (SecretId, Nonce, Timestamp must never repeat).
pub struct Signer {
    secret_id: String,
    key: Vec<u8>,
    hash: Hash,
    host: String,
    nonce: u64,
}

impl Signer {
    /// `nonce_seed`: where this connection's nonces start (random per
    /// connection, so connections never collide).
    pub fn new(secret_id: &str, key: &[u8], hash: Hash, host: &str, nonce_seed: u64) -> Signer {
        Signer { secret_id: secret_id.to_owned(), key: key.to_vec(), hash, host: host.to_owned(), nonce: nonce_seed }
    }

    /// The form body of `params` plus the common parameters, signed, at
    /// `timestamp` (Unix seconds).
    pub fn form(&mut self, params: &[(&str, &str)], timestamp: u64) -> String {
        self.nonce = self.nonce.wrapping_add(1) & (u64::MAX >> 1);
        let (nonce, ts) = (self.nonce.to_string(), timestamp.to_string());
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(params.len() + 6);
        all.extend_from_slice(params);
        all.push(("SecretId", &self.secret_id));
        all.push(("Timestamp", &ts));
        all.push(("Nonce", &nonce));
        all.push(("SignatureMethod", self.hash.param()));
        all.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let signature = self.sign(&string_to_sign(&self.host, &all));
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(256));
        for (k, v) in &all {
            form.append_pair(k, v);
        }
        form.append_pair("Signature", &signature);
        form.finish()
    }

    fn sign(&self, text: &str) -> String {
        let raw = match self.hash {
            Hash::Sha256 => mac::<Hmac<sha2::Sha256>>(&self.key, text),
            Hash::Sha1 => mac::<Hmac<sha1::Sha1>>(&self.key, text),
        };
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

/// `POST{host}/v2/index.php?k=v&...` over pairs already sorted by key.
pub fn string_to_sign(host: &str, sorted: &[(&str, &str)]) -> String {
    let mut s = format!("POST{host}{API_PATH}?");
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            s.push('&');
        }
        s.extend(k.chars().map(|c| if c == '_' { '.' } else { c }));
        s.push('=');
        s.push_str(v);
    }
    s
}

fn mac<M: Mac + KeyInit>(key: &[u8], text: &str) -> Vec<u8> {
    let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(text.as_bytes());
    m.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engineering notes' vector (keys sorted bytewise: `msgBody.10`
    /// before `msgBody.2`), for both hashes.
    #[test]
    fn known_vectors_for_both_hashes() {
        let mut pairs = vec![
            ("Action", "SendMessage"),
            ("Nonce", "12345"),
            ("RequestClient", "SDK_Python_1.3"),
            ("SecretId", "AKIDtest"),
            ("SignatureMethod", "HmacSHA256"),
            ("Timestamp", "1700000000"),
            ("msgBody", "hello world"),
            ("msgBody.10", "x"),
            ("msgBody.2", "y"),
            ("queueName", "q1"),
        ];
        pairs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let text = string_to_sign("127.0.0.1:8080", &pairs);
        assert!(text.ends_with("msgBody=hello world&msgBody.10=x&msgBody.2=y&queueName=q1"), "{text}");
        let s = |hash| Signer::new("AKIDtest", b"secretKeyXYZ", hash, "127.0.0.1:8080", 0);
        assert_eq!(s(Hash::Sha256).sign(&text), "FpP7S3gG/N0FyNopzoRbnSIiNxDmyDNaGaLXzjwBFNw=");
        assert_eq!(s(Hash::Sha1).sign(&text), "twdhKDzElgONUuPequCT7Vjt+MI=");
    }

    #[test]
    fn form_carries_common_parameters_and_fresh_nonces() {
        let mut s = Signer::new("AKID", b"k", Hash::Sha1, "h:1", 41);
        let a = s.form(&[("Action", "SendMessage"), ("msgBody", "a b&c")], 1_700_000_000);
        let b = s.form(&[("Action", "SendMessage"), ("msgBody", "a b&c")], 1_700_000_000);
        assert!(a.contains("msgBody=a+b%26c") && a.contains("Nonce=42") && a.contains("SignatureMethod=HmacSHA1"));
        assert!(a.contains("SecretId=AKID&") && a.contains("Timestamp=1700000000") && a.contains("&Signature="));
        assert!(b.contains("Nonce=43"), "{b}");
    }
}
