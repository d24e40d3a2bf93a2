//! Push signatures: `X-CMQ-Signature: sha256=<hex>` over `"<timestamp>." + body`.
//!
//! See the module documentation of [`crate::push`] for the receiver's side.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-CMQ-Signature";
/// Header carrying the Unix time (seconds) the push was signed at.
pub const TIMESTAMP_HEADER: &str = "X-CMQ-Timestamp";
/// Prefix of the signature value, naming the algorithm.
pub const SIGNATURE_PREFIX: &str = "sha256=";

/// Hex digits of an HMAC-SHA256 tag.
const SIGNATURE_HEX_CHARS: usize = 64;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length (long keys are hashed first), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The value of the signature header: `sha256=` and the lowercase hex of
/// HMAC-SHA256(`secret`, `"<timestamp>."` + `body`), where `<timestamp>` is
/// the decimal Unix time in seconds also sent as [`TIMESTAMP_HEADER`].
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = String::with_capacity(SIGNATURE_PREFIX.len() + SIGNATURE_HEX_CHARS);
    out.push_str(SIGNATURE_PREFIX);
    for b in tag.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Checks a signature header value against `secret`, `timestamp` and `body`
/// in constant time (the tag comparison is `Mac::verify_slice`). Accepts
/// upper- or lowercase hex. Whether `timestamp` is recent enough is the
/// caller's decision.
pub fn verify(secret: &[u8], timestamp: u64, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.trim().strip_prefix(SIGNATURE_PREFIX) else { return false };
    let Some(tag) = decode_hex(hex) else { return false };
    mac(secret, timestamp, body).verify_slice(&tag).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let bytes = hex.as_bytes();
    if bytes.len() != SIGNATURE_HEX_CHARS {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    bytes.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sig = sign(b"secret", 1_700_000_000, b"hello");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), 7 + 64);
        assert!(verify(b"secret", 1_700_000_000, b"hello", &sig));
        assert!(verify(b"secret", 1_700_000_000, b"hello", &sig.to_uppercase().replace("SHA256=", "sha256=")));
    }

    #[test]
    fn tampering_is_detected() {
        let sig = sign(b"secret", 1_700_000_000, b"hello");
        assert!(!verify(b"secret", 1_700_000_000, b"hellp", &sig), "body changed");
        assert!(!verify(b"secret", 1_700_000_001, b"hello", &sig), "timestamp changed");
        assert!(!verify(b"secreT", 1_700_000_000, b"hello", &sig), "other key");
        assert!(!verify(b"secret", 1_700_000_000, b"hello", &sig[7..]), "no prefix");
        assert!(!verify(b"secret", 1_700_000_000, b"hello", &sig[..sig.len() - 2]), "short");
        assert!(!verify(b"secret", 1_700_000_000, b"hello", &format!("{sig}00")), "long");
        let mut flipped = sig.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(!verify(b"secret", 1_700_000_000, b"hello", std::str::from_utf8(&flipped).unwrap()));
        assert!(!verify(b"secret", 1_700_000_000, b"hello", "sha256=zz"), "not hex");
    }

    /// Pins the scheme: HMAC-SHA256(key, "<timestamp>." + body), as computed by
    /// `printf 1700000000.hello | openssl dgst -sha256 -hmac secret`.
    #[test]
    fn golden() {
        assert_eq!(
            sign(b"secret", 1_700_000_000, b"hello"),
            "sha256=47b1df0ab12338b2685470b0d2b37033add7c3b2bc8172f313e77413f1bb78c8"
        );
    }
}
