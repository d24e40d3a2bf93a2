//! Authentication and key management (PROTOCOL.md, "Authentication").
//!
//! A connection that authenticates does so before its Handshake, in two
//! round trips: `AuthChallenge` gets a fresh 32-byte server nonce;
//! `Authenticate` answers it with the SecretId, a client nonce, a timestamp
//! and an HMAC-SHA256 under the SecretKey over all of them; the broker
//! answers with its own HMAC over the same transcript under another label,
//! so the client knows it reached a broker holding its key. The SecretKey
//! never crosses the wire; a server nonce is good for one attempt, so a
//! recorded `Authenticate` is useless on any later connection.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::limits::{NAME_CHARS_MAX, STRING_BYTES_MAX};

type HmacSha256 = Hmac<Sha256>;

/// `Handshake.auth_method` of a connection that authenticated with
/// `AuthChallenge` + `Authenticate` before its handshake.
pub const AUTH_METHOD_V1: &str = "cmq-auth-v1";

/// Label that starts the transcript the client's MAC covers.
pub const CLIENT_MAC_LABEL: &[u8] = b"cmq-auth-v1";

/// Label that starts the transcript the server's MAC covers (distinct, so a
/// client's tag can never be reflected back as the server's proof).
pub const SERVER_MAC_LABEL: &[u8] = b"cmq-auth-v1-server";

/// Bytes of each nonce (server's and client's).
pub const AUTH_NONCE_BYTES: usize = 32;

/// Bytes of an HMAC-SHA256 tag.
pub const AUTH_MAC_BYTES: usize = 32;

/// Longest SecretId accepted (`AKID` + 32 characters are generated).
pub const SECRET_ID_BYTES_MAX: usize = 64;

/// Characters of a generated SecretKey.
pub const SECRET_KEY_CHARS: usize = 40;

/// Characters of a generated SecretId after its `AKID` prefix.
pub const SECRET_ID_RANDOM_CHARS: usize = 32;

/// Prefix of every SecretId (as CMQ's).
pub const SECRET_ID_PREFIX: &str = "AKID";

/// Longest SecretKey a client may hold (one is generated at 40 characters).
pub const SECRET_KEY_BYTES_MAX: usize = 64;

/// Longest policy document (JSON). A policy is read whole and compiled;
/// 16 KiB holds hundreds of statements.
pub const POLICY_BYTES_MAX: usize = 16 * 1024;

/// Keys one ListKeys answer may carry (every key: the broker holds at most this many).
pub const KEYS_MAX: usize = 1000;

/// How far a client's timestamp may be from the broker's clock, either way.
/// Five minutes, as CMQ's signature check allows.
pub const AUTH_TIMESTAMP_SKEW_MS_MAX: u64 = 5 * 60 * 1000;

/// Channel binding bytes longest accepted in a transcript (a TLS exporter is 32).
pub const CHANNEL_BINDING_BYTES_MAX: usize = 64;

/// The TLS channel binding of a transcript when the connection runs over
/// TLS: RFC 9266 "tls-exporter", the TLS 1.3 exporter with this label and no
/// context, [`TLS_EXPORTER_BYTES`] long. Both ends derive it from their own
/// TLS session, so an Authenticate relayed through a TLS-terminating man in
/// the middle does not verify on the broker's session.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Length of the tls-exporter channel binding (RFC 9266).
pub const TLS_EXPORTER_BYTES: usize = 32;

const _: () = assert!(TLS_EXPORTER_BYTES <= CHANNEL_BINDING_BYTES_MAX);

const _: () = assert!(POLICY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(SECRET_ID_PREFIX.len() + SECRET_ID_RANDOM_CHARS <= SECRET_ID_BYTES_MAX);
const _: () = assert!(SECRET_KEY_CHARS <= SECRET_KEY_BYTES_MAX);

crate::wire_struct! {
    /// Asks for a server nonce. Allowed only before the handshake, once per connection.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct AuthChallenge {}
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct AuthChallengeOk {
        /// Exactly `AUTH_NONCE_BYTES` bytes.
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(AUTH_NONCE_BYTES)"))]
        pub server_nonce: Bytes = bytes(AUTH_NONCE_BYTES),
    }
}

crate::wire_struct! {
    /// Proves possession of the SecretKey of `secret_id` (see [`transcript`]).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct Authenticate {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub secret_id: String = string(SECRET_ID_BYTES_MAX),
        /// Exactly `AUTH_NONCE_BYTES` bytes.
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(AUTH_NONCE_BYTES)"))]
        pub client_nonce: Bytes = bytes(AUTH_NONCE_BYTES),
        /// The client's clock, milliseconds since the Unix epoch.
        pub timestamp_ms: u64,
        /// Exactly `AUTH_MAC_BYTES` bytes: HMAC-SHA256(SecretKey, CLIENT_MAC_LABEL | transcript).
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(AUTH_MAC_BYTES)"))]
        pub mac: Bytes = bytes(AUTH_MAC_BYTES),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct AuthenticateOk {
        /// The key's name.
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub key_name: String = string(NAME_CHARS_MAX),
        /// HMAC-SHA256(SecretKey, SERVER_MAC_LABEL | transcript).
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(AUTH_MAC_BYTES)"))]
        pub server_mac: Bytes = bytes(AUTH_MAC_BYTES),
    }
}

crate::wire_struct! {
    /// Creates a key named `name` with `policy` (JSON; empty = allows nothing).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct CreateKey {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub name: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub policy: String = string(POLICY_BYTES_MAX),
    }
}

crate::wire_struct! {
    /// A new SecretKey, shown this once.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct KeySecret {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub name: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub secret_id: String = string(SECRET_ID_BYTES_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub secret_key: String = string(SECRET_KEY_BYTES_MAX),
    }
}

crate::wire_struct! {
    /// Every key (never a SecretKey).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListKeys {}
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct KeySummary {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub name: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub secret_id: String = string(SECRET_ID_BYTES_MAX),
        /// SecretKeys valid now: 2 during a rotation.
        pub secrets: u8,
        pub created_ms: u64,
        pub modified_ms: u64,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListKeysOk {
        /// In name order.
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub keys: Vec<KeySummary> = list(KEYS_MAX),
    }
}

crate::wire_struct! {
    /// Deletes the key `name` and closes its connections; with
    /// `old_secret_only`, only the older SecretKey of a rotated key.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct DeleteKey {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub name: String = string(NAME_CHARS_MAX),
        pub old_secret_only: bool,
    }
}

crate::wire_struct! {
    /// Adds a second SecretKey to `name`, valid alongside the first until
    /// the first is deleted (`DeleteKey` with `old_secret_only`).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct RotateKey {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub name: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    /// Replaces the policy of key `name`; open connections follow within a second.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SetPolicy {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub name: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub policy: String = string(POLICY_BYTES_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetPolicy {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub name: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetPolicyOk {
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub policy: String = string(POLICY_BYTES_MAX),
    }
}

crate::wire_struct! {
    /// Who this connection is authenticated as.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct WhoAmI {}
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct WhoAmIOk {
        /// Empty for an anonymous connection.
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub key_name: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub secret_id: String = string(SECRET_ID_BYTES_MAX),
        /// The broker's authentication mode: "required", "optional", "off" or "anonymous".
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub auth_mode: String = string(STRING_BYTES_MAX),
    }
}

/// The bytes both MACs cover after their label:
/// `server_nonce[32] | client_nonce[32] | u16 len | secret_id | u64 timestamp_ms | u16 len | binding`
/// (integers little-endian; `binding` is empty without TLS).
pub fn transcript(
    server_nonce: &[u8],
    client_nonce: &[u8],
    secret_id: &str,
    timestamp_ms: u64,
    binding: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(2 * AUTH_NONCE_BYTES + 12 + secret_id.len() + binding.len());
    t.extend_from_slice(server_nonce);
    t.extend_from_slice(client_nonce);
    t.extend_from_slice(&(secret_id.len() as u16).to_le_bytes());
    t.extend_from_slice(secret_id.as_bytes());
    t.extend_from_slice(&timestamp_ms.to_le_bytes());
    t.extend_from_slice(&(binding.len() as u16).to_le_bytes());
    t.extend_from_slice(binding);
    t
}

fn hmac(secret_key: &[u8], label: &[u8], transcript: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret_key).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(transcript);
    mac
}

/// HMAC-SHA256(secret_key, label | transcript).
pub fn mac(secret_key: &[u8], label: &[u8], transcript: &[u8]) -> [u8; AUTH_MAC_BYTES] {
    hmac(secret_key, label, transcript).finalize().into_bytes().into()
}

/// Whether `tag` is HMAC-SHA256(secret_key, label | transcript), compared in constant time.
pub fn verify(secret_key: &[u8], label: &[u8], transcript: &[u8], tag: &[u8]) -> bool {
    hmac(secret_key, label, transcript).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the MAC construction: a change here breaks every client.
    #[test]
    fn golden_client_and_server_macs() {
        let t = transcript(&[1; 32], &[2; 32], "AKIDtest", 1_700_000_000_000, b"");
        assert_eq!(t.len(), 32 + 32 + 2 + 8 + 8 + 2);
        let c = mac(b"secretKeyXYZ", CLIENT_MAC_LABEL, &t);
        let s = mac(b"secretKeyXYZ", SERVER_MAC_LABEL, &t);
        assert_ne!(c, s, "distinct labels");
        assert!(verify(b"secretKeyXYZ", CLIENT_MAC_LABEL, &t, &c));
        assert!(!verify(b"secretKeyXYZ", SERVER_MAC_LABEL, &t, &c), "a client tag is no server proof");
        assert!(!verify(b"secretKeyXYZ", CLIENT_MAC_LABEL, &t, &c[..31]), "truncated tags fail");
        assert!(!verify(b"other", CLIENT_MAC_LABEL, &t, &c));
        let hex: String = c.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_CLIENT_MAC);
    }

    /// Computed independently (Python `hmac`), not by this code.
    const GOLDEN_CLIENT_MAC: &str = "a8d6eb329d2d8390c9ddf3223c7b6d4dd0d4cd9f74e4bd2b5d1758d5e68f8642";
}
