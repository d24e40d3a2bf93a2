//! Errors the engine answers requests with: a protocol code and a message.

use cmq_protocol::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    pub code: ErrorCode,
    pub message: String,
}

impl EngineError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> EngineError {
        EngineError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> EngineError {
        EngineError::new(ErrorCode::INVALID_PARAMETER, message)
    }

    pub fn queue_not_found(name: &str) -> EngineError {
        EngineError::new(ErrorCode::QUEUE_NOT_FOUND, format!("queue {name:?} does not exist"))
    }

    pub fn receipt_invalid() -> EngineError {
        EngineError::new(
            ErrorCode::RECEIPT_HANDLE_INVALID,
            "receipt handle is invalid, superseded by a later receive, or its visibility timeout expired",
        )
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for EngineError {}
