//! CMQ API 2.0 error answers: our error codes mapped to CMQ's (the spec's
//! §6 table extended with ours; docs/CMQ_API.md lists the mapping), and the
//! module codes CMQ puts in `message` as `(module)text`.

use cmq_protocol::ErrorCode;

/// CMQ's top-level codes the gateway answers with.
pub mod code {
    pub const INVALID_PARAMETER: u32 = 4000;
    pub const AUTH_FAILED: u32 = 4100;
    pub const INTERNAL: u32 = 6000;
    pub const BATCH_DELETE_PARTIAL: u32 = 6010;
    pub const BATCH_DELETE_FAILED: u32 = 6020;
    pub const RECEIPT_HANDLE_INVALID: u32 = 4430;
}

/// CMQ's module (sub-)codes under 4000, and ours for the rest.
pub mod module {
    pub const INVALID_REQUEST: u32 = 10000;
    pub const MISSING_PARAMETER: u32 = 10010;
    pub const VALUE_ERROR: u32 = 10110;
    pub const UNKNOWN_ACTION: u32 = 10280;
    pub const KEY_FORMAT: u32 = 10310;
    pub const NOT_REPEATABLE: u32 = 10330;
    pub const OUT_OF_RANGE: u32 = 10350;
    pub const WRONG_TYPE: u32 = 10360;
    pub const BATCH_SIZE: u32 = 10370;
    pub const NOT_CONSECUTIVE: u32 = 10380;
    pub const MISSING_COMMON: u32 = 10390;
    pub const METHOD: u32 = 10410;
    /// Ours: authentication (SecretId, signature, timestamp, replay).
    pub const AUTH: u32 = 10500;
    /// Ours: the key's policy refuses the action.
    pub const ACCESS: u32 = 10510;
    /// Ours: everything the broker itself answered (the name of our code follows).
    pub const BROKER: u32 = 10600;
}

/// An error answer: CMQ code, module code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u32,
    pub module: u32,
    pub text: String,
}

impl ApiError {
    pub fn new(code: u32, module: u32, text: impl Into<String>) -> ApiError {
        ApiError { code, module, text: text.into() }
    }

    /// A 4000 (invalid parameter) with this module code.
    pub fn param(module: u32, text: impl Into<String>) -> ApiError {
        ApiError::new(code::INVALID_PARAMETER, module, text)
    }

    pub fn auth(text: impl Into<String>) -> ApiError {
        ApiError::new(code::AUTH_FAILED, module::AUTH, text)
    }

    pub fn internal(text: impl Into<String>) -> ApiError {
        ApiError::new(code::INTERNAL, module::BROKER, text)
    }

    /// The broker answered `ours` (with its message).
    pub fn broker(ours: ErrorCode, message: &str) -> ApiError {
        let module = match ours {
            ErrorCode::BATCH_TOO_LARGE => module::BATCH_SIZE,
            ErrorCode::ACCESS_DENIED => module::ACCESS,
            ErrorCode::AUTH_FAILED => module::AUTH,
            _ => module::BROKER,
        };
        ApiError::new(cmq_code(ours), module, message)
    }

    /// The `message` field: `(module)text`.
    pub fn message(&self) -> String {
        format!("({}){}", self.module, self.text)
    }
}

/// The CMQ code for one of ours. Where CMQ has a code for the condition
/// the number is the same (our codes were chosen so); conditions CMQ has no
/// code for keep ours; topic and subscription codes follow the spec's
/// recommendation (the queue codes with the same meaning).
pub fn cmq_code(ours: ErrorCode) -> u32 {
    let c = match ours {
        // Binary-protocol framing conditions: only a parameter problem can reach them over HTTP.
        ErrorCode::BATCH_TOO_LARGE
        | ErrorCode::FRAME_TOO_LARGE
        | ErrorCode::UNSUPPORTED_VERSION
        | ErrorCode::UNKNOWN_OPCODE
        | ErrorCode::MALFORMED_FRAME
        | ErrorCode::HANDSHAKE_REQUIRED
        | ErrorCode::HANDSHAKE_TIMEOUT
        | ErrorCode::FRAME_TIMEOUT => ErrorCode::INVALID_PARAMETER,
        ErrorCode::TOPIC_NOT_FOUND | ErrorCode::SUBSCRIPTION_NOT_FOUND => ErrorCode::QUEUE_NOT_FOUND,
        ErrorCode::TOPIC_ALREADY_EXISTS | ErrorCode::SUBSCRIPTION_ALREADY_EXISTS => ErrorCode::QUEUE_ALREADY_EXISTS,
        ErrorCode::TOO_MANY_TOPICS => ErrorCode::TOO_MANY_QUEUES,
        // Binary-port conditions (TLS, per-key limits): the nearest CMQ meaning.
        ErrorCode::TLS_REQUIRED => ErrorCode::INVALID_PARAMETER,
        ErrorCode::TOO_MANY_KEY_CONNECTIONS | ErrorCode::REQUEST_RATE_EXCEEDED => ErrorCode::BUSY,
        ErrorCode::STORAGE_UNAVAILABLE
        | ErrorCode::SHUTTING_DOWN
        | ErrorCode::TOO_MANY_CONNECTIONS
        | ErrorCode::IDLE_TIMEOUT
        | ErrorCode::NOT_LEADER => ErrorCode::INTERNAL,
        other => other,
    };
    u32::from(c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_cmq_shares_pass_through_and_ours_map_to_cmqs() {
        for same in [4000, 4100, 4400, 4410, 4420, 4430, 4440, 4450, 4460, 6000, 7000] {
            assert_eq!(cmq_code(ErrorCode(same)), u32::from(same));
        }
        assert_eq!(cmq_code(ErrorCode::BATCH_TOO_LARGE), 4000);
        assert_eq!(cmq_code(ErrorCode::TOPIC_NOT_FOUND), 4440);
        assert_eq!(cmq_code(ErrorCode::SUBSCRIPTION_ALREADY_EXISTS), 4460);
        assert_eq!(cmq_code(ErrorCode::NOT_LEADER), 6000);
        assert_eq!(cmq_code(ErrorCode::ACCESS_DENIED), 4101, "ours, documented");
        let e = ApiError::broker(ErrorCode::BATCH_TOO_LARGE, "17 messages");
        assert_eq!((e.code, e.message()), (4000, "(10370)17 messages".to_owned()));
    }

    #[test]
    fn every_code_of_ours_maps_to_a_documented_cmq_code() {
        let documented = [4000, 4100, 4101, 4102, 4103, 4400, 4410, 4420, 4430, 4440, 4450, 4460, 4470, 4480, 4490];
        for c in ErrorCode::ALL {
            let m = cmq_code(*c);
            assert!(documented.contains(&m) || m == 6000 || m == 7000, "{c:?} -> {m}");
        }
    }
}
