//! Cluster plumbing that is independent of consensus: the peer transport.
//!
//! * [`auth`]: the cluster key and the HMAC-SHA256 challenge/response every
//!   peer connection opens with.
//! * [`acceptor`]: [`PeerAcceptor`], the node's `--peer-listen` listener on a
//!   thread of its own; it authenticates inbound connections and hands each
//!   to its shard.
//! * [`transport`]: [`PeerLinks`], one per shard, living in the shard's event
//!   loop: it dials the same shard of every peer (reconnecting with backoff),
//!   sends batched frames on the connections it dialled, and delivers the
//!   frames that arrive on the connections handed to it.
//!
//! * [`conn`]: [`conn::PeerConn`], a connection's bytes: the socket, or TLS
//!   over it with `--peer-tls-*` (rustls sans-IO, never blocking).
//!
//! The wire format is `cmq_protocol::peer` (PROTOCOL.md, "Peer protocol").
//! See docs/ARCHITECTURE.md ("Replication") for how replication uses it.

pub mod acceptor;
pub mod auth;
pub mod conn;
mod io;
pub mod transport;

pub use acceptor::{AcceptorConfig, AcceptorStats, AuthenticatedStream, PeerAcceptor};
pub use auth::{ClusterKey, KeyError, NodeIdentity};
pub use transport::{DataKind, LinkState, LinkStatus, PeerLinks, PeersError, SendError, PEERS_MAX, PEER_TOKENS};
