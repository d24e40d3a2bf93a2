//! Cluster-key authentication of peer links: HMAC-SHA256 challenge and
//! response in both directions (PROTOCOL.md, "Peer protocol").
//!
//! The dialer sends a Hello with a fresh nonce; the acceptor answers with
//! its own nonce and a MAC over both (so the dialer knows it reached a node
//! holding the key); the dialer answers with its MAC over the same
//! transcript under a different label (so the acceptor knows the same).
//! Fresh nonces on both sides make a recorded handshake useless on a later
//! connection; the distinct labels stop a tag from being reflected back.
//!
//! What it does not do by itself: authenticate or hide each frame after
//! the handshake. With peer TLS on (`--peer-tls-*`) the handshake runs
//! inside a mutually authenticated TLS 1.3 session, which does, and the
//! transcript both MACs cover ends with the session's tls-exporter value
//! (RFC 9266), so the MACs prove the key holder is the end of *this* TLS
//! session (a man in the middle relaying between two sessions fails).
//! Without TLS the key stops strangers from joining or injecting entries
//! over an honest network, not a man in the middle.

use std::fmt;
use std::io;
use std::sync::Arc;

use cmq_protocol::peer::{
    self, Challenge, Hello, Proof, Refuse, RefuseReason, ACCEPTOR_MAC_LABEL, DIALER_MAC_LABEL, MAC_BYTES, NONCE_BYTES,
    PEER_PROTOCOL_VERSION,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest cluster key accepted: 128 bits, the strength HMAC-SHA256 needs
/// at the least to resist guessing.
pub const CLUSTER_KEY_BYTES_MIN: usize = 16;

/// Longest cluster key accepted (a key file is read whole; this keeps a
/// wrong path from reading a huge file into memory).
pub const CLUSTER_KEY_BYTES_MAX: usize = 4096;

/// The shared secret every node of a cluster holds. Its `Debug` output is
/// redacted, so it cannot leak into a log line by accident.
#[derive(Clone)]
pub struct ClusterKey(Arc<[u8]>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cluster key is {0} bytes; at least {CLUSTER_KEY_BYTES_MIN} are required")]
    TooShort(usize),
    #[error("cluster key is {0} bytes; at most {CLUSTER_KEY_BYTES_MAX} are allowed")]
    TooLong(usize),
}

impl ClusterKey {
    pub fn new(bytes: &[u8]) -> Result<ClusterKey, KeyError> {
        if bytes.len() < CLUSTER_KEY_BYTES_MIN {
            return Err(KeyError::TooShort(bytes.len()));
        }
        if bytes.len() > CLUSTER_KEY_BYTES_MAX {
            return Err(KeyError::TooLong(bytes.len()));
        }
        Ok(ClusterKey(bytes.into()))
    }

    /// The key from a key file's contents: surrounding whitespace (a final
    /// newline an editor added) is not part of the key.
    pub fn from_file_contents(contents: &[u8]) -> Result<ClusterKey, KeyError> {
        ClusterKey::new(contents.trim_ascii())
    }

    /// A key for another purpose, derived from the cluster key (HMAC with
    /// a label of its own), e.g. the receipt-handle key every replica must
    /// share so a handle issued by one leader is valid at the next.
    pub fn derive(&self, label: &[u8]) -> [u8; MAC_BYTES] {
        self.tag(label, &[])
    }

    fn mac(&self, label: &[u8], transcript: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length (long keys are hashed first), so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        mac.update(transcript);
        mac
    }

    fn tag(&self, label: &[u8], transcript: &[u8]) -> [u8; MAC_BYTES] {
        self.mac(label, transcript).finalize().into_bytes().into()
    }

    /// Constant-time comparison (`Mac::verify_slice`).
    fn verify(&self, label: &[u8], transcript: &[u8], tag: &[u8; MAC_BYTES]) -> bool {
        self.mac(label, transcript).verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Who this node is, as its peer links present it.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: u64,
    pub shard_count: u16,
    /// Where this node serves clients; told to peers in the handshake.
    pub client_addr: String,
    pub key: ClusterKey,
}

/// 256 bits from the operating system's CSPRNG.
pub fn random_nonce() -> io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(format!("OS random source failed: {e}")))?;
    Ok(nonce)
}

// ---- dialer side ----------------------------------------------------------

/// The Hello a dialer sends for its shard `shard`.
pub fn hello(me: &NodeIdentity, shard: u16, nonce: [u8; NONCE_BYTES]) -> Hello {
    Hello {
        version: PEER_PROTOCOL_VERSION,
        node_id: me.node_id,
        shard,
        shard_count: me.shard_count,
        client_addr: me.client_addr.clone(),
        nonce,
    }
}

/// The dialer's check of a Challenge: it comes from the node it meant to
/// reach (`expected_node`) and that node holds the key. Returns the Proof
/// to send, or the Refuse to send before closing. `binding`: the TLS
/// session's tls-exporter value when the link is TLS.
pub fn answer_challenge(
    key: &ClusterKey,
    hello: &Hello,
    expected_node: u64,
    c: &Challenge,
    binding: Option<&[u8]>,
) -> Result<Proof, Refuse> {
    if c.node_id != expected_node {
        let msg = format!("dialled node {expected_node} but node {} answered", c.node_id);
        return Err(Refuse::new(RefuseReason::WRONG_NODE, &msg));
    }
    let mut transcript = peer::auth_transcript(hello, c.node_id, &c.client_addr, &c.nonce);
    transcript.extend_from_slice(binding.unwrap_or_default());
    if !key.verify(ACCEPTOR_MAC_LABEL, &transcript, &c.mac) {
        let msg = format!("node {} did not prove it holds the cluster key", c.node_id);
        return Err(Refuse::new(RefuseReason::AUTH_FAILED, &msg));
    }
    Ok(Proof { mac: key.tag(DIALER_MAC_LABEL, &transcript) })
}

// ---- acceptor side --------------------------------------------------------

/// The acceptor's check of a Hello, before it spends a nonce on it.
/// `is_member` says whether a node id belongs to the cluster.
pub fn check_hello(me: &NodeIdentity, is_member: impl Fn(u64) -> bool, h: &Hello) -> Result<(), Refuse> {
    if h.version != PEER_PROTOCOL_VERSION {
        let msg = format!("peer protocol version {} here, {} there", PEER_PROTOCOL_VERSION, h.version);
        return Err(Refuse::new(RefuseReason::VERSION, &msg));
    }
    if h.shard_count != me.shard_count {
        let msg = format!("--shards is {} here, {} there: every node must run the same", me.shard_count, h.shard_count);
        return Err(Refuse::new(RefuseReason::SHARD_COUNT, &msg));
    }
    if h.shard >= me.shard_count {
        return Err(Refuse::new(RefuseReason::BAD_SHARD, &format!("no shard {}", h.shard)));
    }
    if h.node_id == me.node_id || !is_member(h.node_id) {
        let msg = format!("node {} is not a peer of node {}", h.node_id, me.node_id);
        return Err(Refuse::new(RefuseReason::UNKNOWN_NODE, &msg));
    }
    Ok(())
}

/// The Challenge answering an accepted Hello, and the transcript the Proof
/// must cover (ending with `binding`, the TLS session's tls-exporter value,
/// when the link is TLS).
pub fn challenge(
    me: &NodeIdentity,
    h: &Hello,
    nonce: [u8; NONCE_BYTES],
    binding: Option<&[u8]>,
) -> (Challenge, Vec<u8>) {
    let mut transcript = peer::auth_transcript(h, me.node_id, &me.client_addr, &nonce);
    transcript.extend_from_slice(binding.unwrap_or_default());
    let mac = me.key.tag(ACCEPTOR_MAC_LABEL, &transcript);
    (Challenge { node_id: me.node_id, client_addr: me.client_addr.clone(), nonce, mac }, transcript)
}

/// The acceptor's check of the dialer's Proof.
pub fn check_proof(key: &ClusterKey, transcript: &[u8], proof: &Proof, dialer: u64) -> Result<(), Refuse> {
    if key.verify(DIALER_MAC_LABEL, transcript, &proof.mac) {
        Ok(())
    } else {
        let msg = format!("node {dialer} did not prove it holds the cluster key");
        Err(Refuse::new(RefuseReason::AUTH_FAILED, &msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, key: &[u8]) -> NodeIdentity {
        NodeIdentity {
            node_id: id,
            shard_count: 2,
            client_addr: format!("127.0.0.1:770{id}"),
            key: ClusterKey::new(key).expect("key"),
        }
    }

    const K: &[u8] = b"0123456789abcdef-cluster";

    /// Runs a whole handshake between a dialer and an acceptor; returns the
    /// first refusal.
    fn handshake(d: &NodeIdentity, a: &NodeIdentity) -> Result<(), Refuse> {
        let h = hello(d, 1, random_nonce().expect("nonce"));
        check_hello(a, |id| id == d.node_id, &h)?;
        let (c, transcript) = challenge(a, &h, random_nonce().expect("nonce"), None);
        let proof = answer_challenge(&d.key, &h, a.node_id, &c, None)?;
        check_proof(&a.key, &transcript, &proof, d.node_id)
    }

    #[test]
    fn same_key_authenticates_both_ways() {
        assert_eq!(handshake(&node(1, K), &node(2, K)), Ok(()));
        assert_eq!(handshake(&node(2, K), &node(1, K)), Ok(()));
    }

    #[test]
    fn a_different_key_is_caught_by_the_dialer() {
        let err = handshake(&node(1, K), &node(2, b"another key, 16+ bytes")).expect_err("refused");
        assert_eq!(RefuseReason(err.reason), RefuseReason::AUTH_FAILED);
    }

    /// A dialer without the key that skips checking the Challenge still
    /// cannot produce a Proof the acceptor takes.
    #[test]
    fn a_forged_proof_is_caught_by_the_acceptor() {
        let (d, a) = (node(1, b"not the cluster key!"), node(2, K));
        let h = hello(&d, 0, random_nonce().expect("nonce"));
        let (_, transcript) = challenge(&a, &h, random_nonce().expect("nonce"), None);
        let forged = Proof { mac: d.key.tag(DIALER_MAC_LABEL, &transcript) };
        assert_eq!(
            RefuseReason(check_proof(&a.key, &transcript, &forged, 1).expect_err("forged").reason),
            RefuseReason::AUTH_FAILED
        );
        // Reflecting the acceptor's own tag back does not work either.
        let (c, transcript) = challenge(&a, &h, random_nonce().expect("nonce"), None);
        assert!(check_proof(&a.key, &transcript, &Proof { mac: c.mac }, 1).is_err());
    }

    /// A Proof recorded on one connection is useless on the next (fresh acceptor nonce).
    #[test]
    fn a_replayed_proof_is_refused() {
        let (d, a) = (node(1, K), node(2, K));
        let h = hello(&d, 0, random_nonce().expect("nonce"));
        let (c1, _) = challenge(&a, &h, random_nonce().expect("nonce"), None);
        let proof = answer_challenge(&d.key, &h, 2, &c1, None).expect("valid");
        let (_, t2) = challenge(&a, &h, random_nonce().expect("nonce"), None);
        assert!(check_proof(&a.key, &t2, &proof, 1).is_err());
    }

    #[test]
    fn tampering_with_any_challenge_field_is_caught() {
        let (d, a) = (node(1, K), node(2, K));
        let h = hello(&d, 0, random_nonce().expect("nonce"));
        let (c, _) = challenge(&a, &h, random_nonce().expect("nonce"), None);
        let mut addr = c.clone();
        addr.client_addr = "10.0.0.66:7700".into();
        assert!(answer_challenge(&d.key, &h, 2, &addr, None).is_err());
        let mut nonce = c.clone();
        nonce.nonce[0] ^= 1;
        assert!(answer_challenge(&d.key, &h, 2, &nonce, None).is_err());
        let mut other_hello = h.clone();
        other_hello.shard = 1;
        assert!(answer_challenge(&d.key, &other_hello, 2, &c, None).is_err());
        let err = answer_challenge(&d.key, &h, 3, &c, None).expect_err("wrong node");
        assert_eq!(RefuseReason(err.reason), RefuseReason::WRONG_NODE);
    }

    /// With TLS both MACs cover the session's exporter value: a Challenge
    /// made for one TLS session (a relay's) does not verify on another, and
    /// a Proof made on another session is refused.
    #[test]
    fn macs_are_bound_to_the_tls_session() {
        let (d, a) = (node(1, K), node(2, K));
        let h = hello(&d, 0, random_nonce().expect("nonce"));
        let (c, transcript) = challenge(&a, &h, random_nonce().expect("nonce"), Some(&[1; 32]));
        assert!(answer_challenge(&d.key, &h, 2, &c, Some(&[2; 32])).is_err(), "other session");
        assert!(answer_challenge(&d.key, &h, 2, &c, None).is_err(), "no session");
        let proof = answer_challenge(&d.key, &h, 2, &c, Some(&[1; 32])).expect("same session");
        assert_eq!(check_proof(&a.key, &transcript, &proof, 1), Ok(()));
        let (_, plain) = challenge(&a, &h, c.nonce, None);
        assert!(check_proof(&a.key, &plain, &proof, 1).is_err());
    }

    #[test]
    fn hello_checks_refuse_with_reasons() {
        let a = node(2, K);
        let ok = hello(&node(1, K), 1, [0; 32]);
        let reason = |h: &Hello| check_hello(&a, |id| id == 1, h).map_err(|r| RefuseReason(r.reason));
        assert_eq!(reason(&ok), Ok(()));
        assert_eq!(reason(&Hello { version: 2, ..ok.clone() }), Err(RefuseReason::VERSION));
        assert_eq!(reason(&Hello { shard_count: 3, ..ok.clone() }), Err(RefuseReason::SHARD_COUNT));
        assert_eq!(reason(&Hello { shard: 2, ..ok.clone() }), Err(RefuseReason::BAD_SHARD));
        assert_eq!(reason(&Hello { node_id: 9, ..ok.clone() }), Err(RefuseReason::UNKNOWN_NODE));
        assert_eq!(reason(&Hello { node_id: 2, ..ok }), Err(RefuseReason::UNKNOWN_NODE));
    }

    #[test]
    fn keys_are_bounded_and_never_printed() {
        assert_eq!(ClusterKey::new(b"short").map(|_| ()), Err(KeyError::TooShort(5)));
        assert!(ClusterKey::new(&[0; CLUSTER_KEY_BYTES_MIN]).is_ok());
        assert_eq!(ClusterKey::new(&[0; CLUSTER_KEY_BYTES_MAX + 1]).map(|_| ()), Err(KeyError::TooLong(4097)));
        let key = ClusterKey::from_file_contents(b"  secret-secret-secret\n").expect("trimmed key");
        assert_eq!(&*key.0, b"secret-secret-secret");
        let shown = format!("{:?}", node(1, b"super-secret-value!"));
        assert!(!shown.contains("super-secret") && shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(random_nonce().expect("nonce"), random_nonce().expect("nonce"));
    }
}
