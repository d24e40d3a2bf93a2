//! The web console (docs/HTTP_API.md): pages at `/console/` and the JSON
//! API they call at `/api/v1/`, both on the HTTP port.
//!
//! The API runs the same protocol `Request`s as the binary protocol and
//! the CMQ gateway, through the same bridge to the owning shard, checked
//! against the caller's key with the same action names
//! (`auth::actions::need`); CMQ-shaped operations are even built and
//! answered by the gateway's own code (`gateway::actions`).
//!
//! * `session`: sign-in sessions, cookies, CSRF tokens.
//! * `caller`: who a request acts for, and the permission check.
//! * `api`: the route table, sign-in and the overview.
//! * `ops`: queues, messages, dead letters, topics and subscriptions.
//! * `cluster`: nodes, leaders and replication lag.
//! * `history`: the ring of samples behind the charts.
//! * `assets`: the embedded pages.

mod api;
mod assets;
mod caller;
mod cluster;
pub mod history;
mod ops;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{header, StatusCode};
use serde_json::{json, Value};

use crate::http::router::{self, Reply};
use crate::http::HttpContext;

/// Where the API lives.
pub const API_PREFIX: &str = "/api/v1/";

/// Where the pages live.
pub const CONSOLE_PREFIX: &str = "/console";

/// Largest request body the API reads (a test message and its form encoding).
pub const API_BODY_BYTES_MAX: usize = crate::gateway::params::BODY_BYTES_MAX;

/// A request body must arrive whole within this.
pub const API_BODY_READ_TIMEOUT: Duration = crate::gateway::BODY_READ_TIMEOUT;

/// The console's state on the HTTP thread.
#[derive(Default)]
pub struct Console {
    pub sessions: session::Sessions,
    pub history: Arc<history::History>,
}

/// Whether the console serves this path.
pub fn owns(path: &str) -> bool {
    path.starts_with(API_PREFIX) || path == CONSOLE_PREFIX || path.starts_with("/console/")
}

/// Serves a console page or an API request.
pub async fn serve(ctx: &HttpContext, parts: Parts, body: Incoming) -> Reply {
    ctx.console.history.ensure_started(&ctx.shared);
    let path = parts.uri.path().to_owned();
    let Some(rest) = path.strip_prefix(API_PREFIX) else {
        return assets::serve(&parts);
    };
    let body = match read_body(&parts, body).await {
        Ok(b) => b,
        Err(f) => return f.reply(),
    };
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    match api::handle(ctx, &parts, &segments, &body).await {
        Ok(done) => done,
        Err(f) => f.reply(),
    }
}

async fn read_body(parts: &Parts, body: Incoming) -> Result<Bytes, Failure> {
    let too_large = || {
        let msg = format!("request body over {API_BODY_BYTES_MAX} bytes");
        Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE", msg)
    };
    // A declared length over the limit is refused before anything is read.
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > API_BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(API_BODY_READ_TIMEOUT, Limited::new(body, API_BODY_BYTES_MAX).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Failure::bad_request(format!("unreadable request body: {e}"))),
        Err(_) => Err(Failure::new(StatusCode::REQUEST_TIMEOUT, "BODY_TIMEOUT", "request body not received in time")),
    }
}

/// An API error: the HTTP status and `{"error": {"code", "number", "message"}}`.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    /// A name: the broker's error code name (PROTOCOL.md) or one of the console's (HTTP_API.md).
    pub code: String,
    /// The broker's or CMQ's numeric code, where there is one.
    pub number: Option<u32>,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure { status, code: code.to_owned(), number: None, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", message)
    }

    pub fn not_found() -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such API endpoint")
    }

    /// The broker refused: its code, with the HTTP status that fits it.
    pub fn broker(code: cmq_protocol::ErrorCode, message: String) -> Failure {
        use cmq_protocol::ErrorCode as E;
        let name = code.name();
        let status = match code {
            E::ACCESS_DENIED => StatusCode::FORBIDDEN,
            E::AUTH_FAILED => StatusCode::UNAUTHORIZED,
            E::BUSY | E::SHUTTING_DOWN => StatusCode::SERVICE_UNAVAILABLE,
            // By name, so codes added later for other kinds of resource fit too.
            _ if name.ends_with("_NOT_FOUND") => StatusCode::NOT_FOUND,
            _ if name.ends_with("_EXISTS") => StatusCode::CONFLICT,
            _ if code.0 < 5000 => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure { status, code: code.name().to_owned(), number: Some(u32::from(code.0)), message }
    }

    /// A parameter the gateway's code refused.
    pub fn param(e: crate::gateway::errors::ApiError) -> Failure {
        Failure { number: Some(e.code), ..Failure::bad_request(e.text) }
    }

    pub fn reply(self) -> Reply {
        let body = json!({"error": {"code": self.code, "number": self.number, "message": self.message}});
        router::json(self.status, &body)
    }
}

/// A 200 with a JSON body that no cache keeps.
pub fn ok(value: &Value) -> Reply {
    let mut r = router::json(StatusCode::OK, value);
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}
