//! The handshake that opens every connection.
//!
//! The client proposes a range of protocol versions; the server picks the
//! highest one both speak or answers UNSUPPORTED_VERSION. The layout of this
//! frame is frozen across versions so that negotiation itself always works.
//! `auth_method`/`auth_payload` will carry credentials; today only the empty
//! method (anonymous) is accepted, any other gets AUTH_FAILED. `shard_hint` asks the server to serve this
//! connection from that shard, so a shard-aware client can open one
//! connection per shard and send each request straight to the queue's owner.

use bytes::Bytes;

use crate::limits::{AUTH_PAYLOAD_BYTES_MAX, STRING_BYTES_MAX};

/// Protocol versions this build speaks.
/// Version 2 added the cluster map to `HandshakeOk` and the cluster
/// operations; version 1 is no longer spoken. (Sends carry no idempotency
/// key yet: that is still to come.)
pub const PROTOCOL_VERSION_MIN: u16 = 2;
pub const PROTOCOL_VERSION_MAX: u16 = 2;

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct Handshake {
        pub version_min: u16,
        pub version_max: u16,
        /// Free text identifying the client, for server logs.
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub client: String = string(STRING_BYTES_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub auth_method: String = string(STRING_BYTES_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(64)"))]
        pub auth_payload: Bytes = bytes(AUTH_PAYLOAD_BYTES_MAX),
        pub shard_hint: Option<u16>,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct HandshakeOk {
        /// The version both sides now speak.
        pub version: u16,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub server: String = string(STRING_BYTES_MAX),
        /// Number of shards; with `names::shard_for` the client can route by queue name.
        pub shard_count: u16,
        /// The shard serving this connection.
        pub shard_id: u16,
        /// The largest frame the server accepts.
        pub frame_bytes_max: u32,
        /// Who leads each shard, and where the nodes are (see `cluster.rs`).
        pub cluster: crate::cluster::ClusterMap,
    }
}

impl Handshake {
    /// A handshake proposing every version this build speaks.
    pub fn new(client: &str) -> Handshake {
        Handshake {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            client: client.to_owned(),
            ..Default::default()
        }
    }

    /// The version to speak, if the ranges overlap.
    pub fn negotiate(&self) -> Option<u16> {
        let hi = self.version_max.min(PROTOCOL_VERSION_MAX);
        let lo = self.version_min.max(PROTOCOL_VERSION_MIN);
        (lo <= hi).then_some(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_highest_common_version() {
        let mut h = Handshake::new("t");
        assert_eq!(h.negotiate(), Some(PROTOCOL_VERSION_MAX));
        h.version_min = PROTOCOL_VERSION_MAX + 1;
        h.version_max = PROTOCOL_VERSION_MAX + 5;
        assert_eq!(h.negotiate(), None);
        h.version_min = 0;
        h.version_max = 0;
        assert_eq!(h.negotiate(), None);
        h.version_max = 9;
        assert_eq!(h.negotiate(), Some(PROTOCOL_VERSION_MAX));
    }
}
