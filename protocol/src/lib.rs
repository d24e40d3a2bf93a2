//! The cmq binary protocol: frame format, codec, request and response types,
//! error codes and limits. No I/O: the broker and the client drive sockets
//! themselves. `PROTOCOL.md` documents every byte.

pub mod auth;
pub mod cluster;
pub mod dead_letter;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod inspection;
pub mod limits;
pub mod messages;
pub mod names;
pub mod ops;
pub mod peer;
pub mod queue_admin;
pub mod queue_attributes;
pub mod stats;
pub mod topics;
pub mod transactions;
pub mod wire;

#[cfg(test)]
mod doc_tables;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use auth::{
    AuthChallenge, AuthChallengeOk, Authenticate, AuthenticateOk, CreateKey, DeleteKey, GetPolicy, GetPolicyOk,
    KeySecret, KeySummary, ListKeys, ListKeysOk, RotateKey, SetPolicy, WhoAmI, WhoAmIOk,
};
pub use cluster::*;
pub use dead_letter::*;
pub use error::{DecodeError, ErrorCode};
pub use handshake::{Handshake, HandshakeOk};
pub use inspection::*;
pub use messages::*;
pub use ops::{ErrorBody, Opcode, Request, Response, Route};
pub use queue_admin::*;
pub use queue_attributes::{FlushPolicy, QueueAttributes, QueueAttributesUpdate, TxDefault};
pub use stats::*;
pub use topics::*;
pub use transactions::*;
