//! Signed CMQ API 2.0 requests over raw HTTP, for tests that drive several
//! nodes' gateways: the spec's §3 signature computed here (HmacSHA256),
//! one request per connection (`Connection: close`), the JSON envelope back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};

/// Longest a test waits for one answer (long polls included).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

/// Nonces unique within this test process (a replayed triple is refused).
static NONCE: AtomicU64 = AtomicU64::new(1);

/// A key to sign with (any SecretId where the broker serves anonymous callers).
#[derive(Debug, Clone)]
pub struct Signer {
    pub secret_id: String,
    pub secret_key: String,
}

impl Signer {
    /// The form body of `params` signed for `host`, with the common parameters.
    pub fn body(&self, host: &str, params: &[(&str, &str)]) -> String {
        let mut all: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        all.push(("SecretId", self.secret_id.clone()));
        all.push(("Timestamp", (cmq_integration_tests::auth::unix_ms() / 1000).to_string()));
        all.push(("Nonce", NONCE.fetch_add(1, Ordering::Relaxed).to_string()));
        all.push(("SignatureMethod", "HmacSHA256".into()));
        let sig = sign(&self.secret_key, &string_to_sign("POST", host, &all));
        all.push(("Signature", sig));
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &all {
            form.append_pair(k, v);
        }
        form.finish()
    }

    /// POSTs `params` signed to `/v2/index.php` at `addr`; the JSON answer.
    pub fn call(&self, addr: SocketAddr, params: &[(&str, &str)]) -> serde_json::Value {
        let host = addr.to_string();
        let body = self.body(&host, params);
        let raw = format!(
            "POST /v2/index.php HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(ANSWER_TIMEOUT)).expect("timeout");
        s.write_all(raw.as_bytes()).expect("write request");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply);
        let (head, json) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
    }
}

/// The answer's `code`.
pub fn code(v: &serde_json::Value) -> i64 {
    v["code"].as_i64().unwrap_or_else(|| panic!("no code: {v}"))
}

/// The spec's §3 string to sign: METHOD + HOST + PATH + "?" + sorted k=v
/// pairs (`_` in keys as `.`, values raw, `Signature` left out).
fn string_to_sign(method: &str, host: &str, params: &[(&str, String)]) -> String {
    let mut sorted: Vec<&(&str, String)> = params.iter().filter(|(k, _)| *k != "Signature").collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let pairs: Vec<String> = sorted.iter().map(|(k, v)| format!("{}={v}", k.replace('_', "."))).collect();
    format!("{method}{host}/v2/index.php?{}", pairs.join("&"))
}

fn sign(key: &str, text: &str) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    m.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}
