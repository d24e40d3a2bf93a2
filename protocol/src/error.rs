//! Error codes carried in error responses, and decoding errors.
//!
//! Codes are numeric and stable. Where CMQ's HTTP API has a code for the same
//! condition we use the same number, so the HTTP gateway can pass codes
//! through unchanged; conditions CMQ has no code for get numbers of their own
//! in the same ranges. The full table is in PROTOCOL.md.

use std::fmt;

/// A numeric error code. A newtype (not an enum) so that a client can carry
/// codes from a newer server that it does not know by name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $text:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code this build knows, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's symbolic name, e.g. `QUEUE_NOT_FOUND`.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => stringify!($name),)*
                    _ => "UNKNOWN",
                }
            }

            /// A one-line description used when a more specific message is not needed.
            pub fn description(self) -> &'static str {
                match self.0 {
                    $($value => $text,)*
                    _ => "unknown error code",
                }
            }
        }
    };
}

error_codes! {
    /// A request field is missing, malformed or out of range; the message names the field.
    INVALID_PARAMETER = 4000, "invalid parameter";
    /// A batch has more than `BATCH_MSGS_MAX` items, or none.
    BATCH_TOO_LARGE = 4001, "batch size out of range";
    /// A frame's length prefix exceeds `FRAME_BYTES_MAX`, or `HANDSHAKE_FRAME_BYTES_MAX` before the
    /// handshake completes or for a Handshake frame. The connection is closed after this error.
    FRAME_TOO_LARGE = 4002, "frame too large";
    /// No protocol version in common; the message lists what the server speaks.
    UNSUPPORTED_VERSION = 4003, "unsupported protocol version";
    /// The frame's opcode is not one this server knows.
    UNKNOWN_OPCODE = 4004, "unknown opcode";
    /// The frame is well delimited but its payload does not decode.
    MALFORMED_FRAME = 4005, "malformed frame";
    /// A request arrived before the handshake completed; the error carries that
    /// frame's opcode and request id, and the connection is closed.
    HANDSHAKE_REQUIRED = 4006, "handshake required";
    /// The handshake did not complete within the broker's handshake deadline
    /// (`--handshake-timeout-ms`). Sent with opcode 0 and request id 0; the connection is closed.
    HANDSHAKE_TIMEOUT = 4007, "handshake timeout";
    /// A request frame was not received whole within the broker's frame deadline
    /// (`--frame-timeout-ms`). Sent with opcode 0 and request id 0; the connection is closed.
    FRAME_TIMEOUT = 4008, "frame timeout";
    /// Authentication failed: unknown SecretId, wrong SecretKey (bad MAC), a stale timestamp, a
    /// replayed or out-of-order attempt, an anonymous handshake where `--auth required`, or an address
    /// in its failure backoff. The connection is closed after this error.
    AUTH_FAILED = 4100, "authentication failed";
    /// The connection's key has no policy statement allowing this action on this resource (or one
    /// denies it). The message names both.
    ACCESS_DENIED = 4101, "access denied";
    /// No key by that name.
    KEY_NOT_FOUND = 4102, "key not found";
    /// A key by that name exists already.
    KEY_ALREADY_EXISTS = 4103, "key already exists";
    /// The port serves TLS only (`cmqd --tls-cert`) and the client spoke plaintext. Sent in
    /// plaintext with opcode 0 and request id 0; the connection is closed.
    TLS_REQUIRED = 4104, "TLS required";
    /// The key already has `--key-connections-max` connections open on this broker. Answers the
    /// Authenticate; the connection is closed.
    TOO_MANY_KEY_CONNECTIONS = 4105, "too many connections for this key";
    /// The connection's key is over `--key-requests-per-second` in this one-second window; the
    /// request was not run. The connection stays open: retry later.
    REQUEST_RATE_EXCEEDED = 4106, "request rate limit exceeded";
    /// The body is larger than the queue's `maxMsgSize` (or `MSG_BYTES_MAX`), or empty.
    MESSAGE_TOO_LARGE = 4400, "message too large";
    /// The queue holds `maxMsgHeapNum` messages; sends are refused until some are deleted.
    QUEUE_FULL = 4410, "queue full";
    /// The broker is overloaded (a shard's inbox is full); retry later.
    BUSY = 4420, "server busy";
    /// The receipt handle is malformed, superseded by a later receive, or its visibility window expired.
    RECEIPT_HANDLE_INVALID = 4430, "receipt handle invalid or expired";
    /// No queue by that name.
    QUEUE_NOT_FOUND = 4440, "queue not found";
    /// The broker's queue count limit is reached.
    TOO_MANY_QUEUES = 4450, "too many queues";
    /// A queue by that name exists already.
    QUEUE_ALREADY_EXISTS = 4460, "queue already exists";
    /// The queue is another queue's dead-letter queue and cannot be deleted.
    QUEUE_IN_USE = 4470, "queue in use";
    /// No message with that id in the queue (or it is no longer tracked).
    MESSAGE_NOT_FOUND = 4480, "message not found";
    /// No redrive task with that id.
    REDRIVE_NOT_FOUND = 4490, "redrive not found";
    /// No topic by that name.
    TOPIC_NOT_FOUND = 4500, "topic not found";
    /// A topic by that name exists already.
    TOPIC_ALREADY_EXISTS = 4510, "topic already exists";
    /// No subscription by that name on the topic.
    SUBSCRIPTION_NOT_FOUND = 4520, "subscription not found";
    /// A subscription by that name exists on the topic already.
    SUBSCRIPTION_ALREADY_EXISTS = 4530, "subscription already exists";
    /// The broker's topic limit, or the topic's subscription limit, is reached.
    TOO_MANY_TOPICS = 4540, "too many topics or subscriptions";
    /// An unexpected server-side failure.
    INTERNAL = 6000, "internal error";
    /// The write-ahead log cannot accept writes (disk full or I/O error); reads and deletes may still work.
    STORAGE_UNAVAILABLE = 6001, "storage unavailable";
    /// The broker is shutting down and takes no new requests.
    SHUTTING_DOWN = 6002, "server shutting down";
    /// The broker's connection limit is reached; sent once, then the connection is closed.
    TOO_MANY_CONNECTIONS = 6003, "too many connections";
    /// In a cluster: this node does not lead the queue's shard. The message ends with
    /// `leader=<node id>@<client address>` when the leader is known (see PROTOCOL.md).
    NOT_LEADER = 6005, "not the leader";
    /// The connection was idle (nothing in flight, nothing unsent) for longer than the broker's
    /// idle deadline (`--idle-timeout-ms`). Sent with opcode 0 and request id 0; the connection is closed.
    IDLE_TIMEOUT = 6004, "idle timeout";
    /// Receive found no message within its polling wait.
    NO_MESSAGE = 7000, "no message";
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.name())
    }
}

/// Why a payload failed to decode. Converted into an error response whose
/// code says which limit or rule was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{0} bytes left over after the payload")]
    TrailingBytes(usize),
    #[error("invalid value for {0}")]
    Invalid(&'static str),
    #[error("{field}: {got} items, at most {max} allowed")]
    TooMany { field: &'static str, got: usize, max: usize },
    #[error("{field}: {got} bytes, at most {max} allowed")]
    TooLong { field: &'static str, got: usize, max: usize },
    #[error("unknown opcode {0:#06x}")]
    UnknownOpcode(u16),
}

impl DecodeError {
    /// The error code a server answers with when a request fails to decode.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooMany { field, .. } if is_batch_field(field) => ErrorCode::BATCH_TOO_LARGE,
            DecodeError::TooLong { field, .. } if is_body_field(field) => ErrorCode::MESSAGE_TOO_LARGE,
            DecodeError::TooMany { .. } | DecodeError::TooLong { .. } | DecodeError::Invalid(_) => {
                ErrorCode::INVALID_PARAMETER
            }
            DecodeError::UnknownOpcode(_) => ErrorCode::UNKNOWN_OPCODE,
            DecodeError::Truncated(_) | DecodeError::TrailingBytes(_) => ErrorCode::MALFORMED_FRAME,
        }
    }
}

fn is_batch_field(field: &str) -> bool {
    matches!(field, "bodies" | "receipt_handles")
}

fn is_body_field(field: &str) -> bool {
    matches!(field, "body" | "bodies[]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate code {}", code.0);
            assert_ne!(code.name(), "UNKNOWN");
        }
        assert_eq!(ErrorCode(1).name(), "UNKNOWN");
    }

    #[test]
    fn decode_errors_map_to_codes() {
        let batch = DecodeError::TooMany { field: "bodies", got: 17, max: 16 };
        assert_eq!(batch.code(), ErrorCode::BATCH_TOO_LARGE);
        let body = DecodeError::TooLong { field: "body", got: 2, max: 1 };
        assert_eq!(body.code(), ErrorCode::MESSAGE_TOO_LARGE);
        assert_eq!(DecodeError::Truncated("x").code(), ErrorCode::MALFORMED_FRAME);
        assert_eq!(DecodeError::UnknownOpcode(9).code(), ErrorCode::UNKNOWN_OPCODE);
    }
}
