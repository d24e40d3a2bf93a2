//! The one error type every client call returns.

use std::fmt;
use std::io;

use cmq_protocol::frame::FrameError;
use cmq_protocol::{DecodeError, ErrorCode};

/// Why a request failed.
///
/// Only [`ClientError::Server`] leaves the connection usable; after any other
/// variant except a read timeout (see [`ClientError::is_timeout`]) the
/// connection is closed and later calls on it return `Disconnected`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with an error frame. Displays as
    /// `4440 QUEUE_NOT_FOUND: queue "x" does not exist`.
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },

    /// The socket failed (connect, read, write or timeout). Transparent so
    /// that error chains do not print the OS message twice.
    #[error(transparent)]
    Io(#[from] io::Error),

    /// The broker sent something this client cannot make sense of: an
    /// undecodable frame or payload, or a response that answers nothing asked.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The broker closed the connection (possibly mid-frame).
    #[error("connection closed by the server")]
    Disconnected,

    /// The broker refused the handshake or answered it with something else.
    #[error("handshake failed: {}", HandshakeText(code, message))]
    Handshake { code: Option<ErrorCode>, message: String },

    /// A request that changes state was sent, then its connection was lost
    /// (or timed out) before the answer came: it may or may not have been
    /// applied. [`crate::Client::call`] does not send such a request again
    /// by itself, since a second attempt could apply it twice (a send would
    /// store the message twice); the caller decides, for example by
    /// checking with a read. `cause` is what happened to the connection.
    #[error(
        "outcome unknown: {cause} (node {node}) after the {op} request was sent; it may or may not have been applied"
    )]
    OutcomeUnknown { op: &'static str, node: u64, cause: Box<ClientError> },
}

impl ClientError {
    /// The broker's error code, for `Server` errors and refused handshakes.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::Handshake { code, .. } => *code,
            _ => None,
        }
    }

    /// True for a read or write that hit its timeout. Such a connection is
    /// still intact (a partly received frame stays buffered), unlike after
    /// any other I/O error.
    pub fn is_timeout(&self) -> bool {
        match self {
            ClientError::Io(e) => is_timeout_kind(e.kind()),
            ClientError::OutcomeUnknown { cause, .. } => cause.is_timeout(),
            _ => false,
        }
    }

    /// True when the broker did not (yet) run the request and another node
    /// leads its shard; [`crate::Client::call`] follows it by itself.
    pub fn is_not_leader(&self) -> bool {
        self.code() == Some(ErrorCode::NOT_LEADER)
    }
}

pub(crate) fn is_timeout_kind(kind: io::ErrorKind) -> bool {
    // SO_RCVTIMEO surfaces as EAGAIN (WouldBlock) on Linux and as TimedOut elsewhere.
    matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Turns the many ways a peer can go away into `Disconnected`, so callers
/// need to handle one variant for "the broker is gone".
pub(crate) fn from_io(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ClientError::Disconnected,
        _ => ClientError::Io(e),
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> ClientError {
        ClientError::Protocol(e.to_string())
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> ClientError {
        ClientError::Protocol(e.to_string())
    }
}

struct HandshakeText<'a>(&'a Option<ErrorCode>, &'a String);

impl fmt::Display for HandshakeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(f, "{code}: {}", self.1),
            None => f.write_str(self.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_displays_code_name_and_message() {
        let e = ClientError::Server { code: ErrorCode::QUEUE_NOT_FOUND, message: "queue \"x\" does not exist".into() };
        assert_eq!(e.to_string(), "4440 QUEUE_NOT_FOUND: queue \"x\" does not exist");
        assert_eq!(e.code(), Some(ErrorCode::QUEUE_NOT_FOUND));
    }

    #[test]
    fn handshake_error_shows_code_when_known() {
        let e = ClientError::Handshake { code: Some(ErrorCode::UNSUPPORTED_VERSION), message: "speaks 2..=3".into() };
        assert_eq!(e.to_string(), "handshake failed: 4003 UNSUPPORTED_VERSION: speaks 2..=3");
        let e = ClientError::Handshake { code: None, message: "odd answer".into() };
        assert_eq!(e.to_string(), "handshake failed: odd answer");
        assert_eq!(e.code(), None);
    }

    #[test]
    fn peer_going_away_is_disconnected_and_timeouts_are_recognised() {
        assert!(matches!(from_io(io::ErrorKind::ConnectionReset.into()), ClientError::Disconnected));
        assert!(matches!(from_io(io::ErrorKind::PermissionDenied.into()), ClientError::Io(_)));
        assert!(from_io(io::ErrorKind::WouldBlock.into()).is_timeout());
        assert!(!ClientError::Disconnected.is_timeout());
    }
}
