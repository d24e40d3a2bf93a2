//! The CMQ API 2.0 HTTP gateway (spec: `cmq-http-api.md`, docs/CMQ_API.md):
//! `/v2/index.php` on the HTTP port. Each request is authenticated with the
//! broker's own keys, turned into the protocol `Request` the binary
//! protocol sends (`actions`), checked against the key's policy with the
//! same action names (`auth::actions::need`), and run by the owning shard
//! through the HTTP bridge; the answer frame becomes the JSON envelope.
//!
//! * `params`: form/query decoding and its limits, indexed lists.
//! * `signature`: the HMAC signature and the replay guard.
//! * `actions`: action -> Request, Response -> JSON fields.
//! * `errors`: our codes -> CMQ's.

pub mod actions;
pub mod errors;
pub mod params;
pub mod signature;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cmq_protocol::frame::{FLAG_ERROR, HEADER_BYTES};
use cmq_protocol::{ErrorBody, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{header, Method, StatusCode};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::auth::actions::{need, Need};
use crate::auth::table::Principal;
use crate::http::router::{self, Reply};
use crate::http::HttpContext;
use errors::{module, ApiError};
use params::{Params, BODY_BYTES_MAX};
use signature::{Replay, ReplayGuard};

/// A POST body must arrive whole within this (a slow client gets 408).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of request bodies held at once, over every connection: each of
/// `HTTP_CONNECTIONS_MAX` connections may send [`BODY_BYTES_MAX`], and all
/// of them at once would be GiBs. A request whose body does not fit waits
/// (within [`BODY_READ_TIMEOUT`]) before it is read: back-pressure, not an
/// error. Ordinary requests (a few hundred bytes) never notice it.
pub const BODY_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// What one permit of the body budget stands for.
const BODY_BUDGET_UNIT_BYTES: usize = 1024;

const _: () = assert!(BODY_BYTES_MAX <= BODY_BUDGET_BYTES, "the largest body must fit the budget");
const _: () = assert!(BODY_BUDGET_BYTES / BODY_BUDGET_UNIT_BYTES <= tokio::sync::Semaphore::MAX_PERMITS);

/// The gateway's state: the replay guard, the body budget and the request id counter.
pub struct Gateway {
    replay: Mutex<ReplayGuard>,
    clock: Mutex<crate::clock::Clock>,
    next_request: AtomicU64,
    body_budget: Semaphore,
}

impl Default for Gateway {
    fn default() -> Gateway {
        Gateway {
            replay: Default::default(),
            clock: Default::default(),
            next_request: AtomicU64::new(0),
            body_budget: Semaphore::new(BODY_BUDGET_BYTES / BODY_BUDGET_UNIT_BYTES),
        }
    }
}

/// Who is calling: a key (held to its policy when `enforce`), or anonymous.
struct Caller {
    principal: Option<Arc<Principal>>,
    enforce: bool,
}

/// Serves one `/v2/index.php` request: HTTP 200 with the JSON envelope for
/// every CMQ-level outcome; 400/408/413 for a body that cannot be read.
pub async fn serve(ctx: &HttpContext, parts: Parts, body: Incoming) -> Reply {
    let request_id = ctx.gateway.next_request.fetch_add(1, Ordering::Relaxed).to_string();
    // Held until the reply is built: the body and what is decoded from it live that long.
    let (raw, _room) = match read_params(&ctx.gateway.body_budget, &parts, body).await {
        Ok(read) => read,
        Err(reply) => return reply,
    };
    let (outcome, extra) = match run(ctx, &parts, &raw).await {
        Ok(fields) => (Ok(()), fields),
        Err((e, fields)) => (Err(e), fields),
    };
    envelope(&request_id, outcome, extra)
}

async fn run(ctx: &HttpContext, parts: &Parts, raw: &[u8]) -> actions::Answer {
    let bare = |e: ApiError| (e, Map::new());
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(bare(ApiError::param(module::METHOD, "only GET and POST are supported")));
    }
    let p = Params::parse(raw).map_err(bare)?;
    let action = actions::find(p.get("Action").ok_or_else(|| bare(missing("Action")))?).map_err(bare)?;
    let caller = authenticate(ctx, parts, &p).map_err(bare)?;
    let call = actions::build(action, &p).map_err(bare)?;
    let viewer = permit(&caller, &call.request).map_err(bare)?;
    if let Some(answer) = call.answer_here() {
        return answer;
    }
    let (within, opcode) = (call.answer_within(), call.request.opcode() as u16);
    let frame =
        crate::http::forward::execute(ctx, call.request, viewer, within).await.map_err(|e| bare(unanswered(e)))?;
    match decode(opcode, frame) {
        Ok(resp) => actions::answer(&call.handles, resp),
        Err(e) => Err(bare(e)),
    }
}

/// The POST body or the GET query, within [`BODY_BYTES_MAX`] and
/// [`BODY_READ_TIMEOUT`], and its share of the body budget (a body of
/// unknown length is charged the largest).
async fn read_params<'a>(
    budget: &'a Semaphore,
    parts: &Parts,
    body: Incoming,
) -> Result<(Bytes, Option<SemaphorePermit<'a>>), Reply> {
    if parts.method != Method::POST {
        return Ok((Bytes::copy_from_slice(parts.uri.query().unwrap_or("").as_bytes()), None));
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let read = async {
        let room = budget.acquire_many(budget_permits(declared)).await.ok();
        (Limited::new(body, BODY_BYTES_MAX).collect().await, room)
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok((Ok(collected), room)) => Ok((collected.to_bytes(), room)),
        Ok((Err(e), _)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok((Err(e), _)) => Err(router::text(StatusCode::BAD_REQUEST, &format!("unreadable request body: {e}\n"))),
        Err(_) => {
            let mut r = router::text(StatusCode::REQUEST_TIMEOUT, "request body not received in time\n");
            r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

/// Permits of the body budget a body of `declared` length takes (unknown:
/// the largest allowed); at least one, so every body waits its turn.
fn budget_permits(declared: Option<u64>) -> u32 {
    let bytes = declared.map_or(BODY_BYTES_MAX, |n| (n as usize).min(BODY_BYTES_MAX));
    bytes.div_ceil(BODY_BUDGET_UNIT_BYTES).max(1) as u32
}

fn too_large() -> Reply {
    let mut r = router::text(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body over {BODY_BYTES_MAX} bytes\n"));
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

fn missing(name: &str) -> ApiError {
    ApiError::param(module::MISSING_COMMON, format!("missing parameter {name}"))
}

/// Names the CMQ API's check in the authentication log.
const VIA: &str = "CMQ API";

/// Checks SecretId, Timestamp, Nonce and Signature. An address slowed down
/// by failed attempts (unknown SecretId, bad signature) is refused before
/// any of it (`auth::attempts`). A known key must sign
/// correctly, within the freshness window, never twice. An unknown
/// SecretId is served anonymously (every permission, signature not
/// checked: there is no key to check it with) only where the binary
/// protocol serves anonymous clients (`AuthMode::admits_anonymous`).
fn authenticate(ctx: &HttpContext, parts: &Parts, p: &Params) -> Result<Caller, ApiError> {
    let secret_id = p.get("SecretId").ok_or_else(|| missing("SecretId"))?;
    let signature = p.get("Signature").ok_or_else(|| missing("Signature"))?;
    let timestamp = p.int("Timestamp", 0, u64::MAX).map_err(|_| ApiError::auth("Timestamp is not a number"))?;
    let timestamp = timestamp.ok_or_else(|| missing("Timestamp"))?;
    let nonce = p.int("Nonce", 0, u64::MAX).map_err(|_| ApiError::auth("Nonce is not a number"))?;
    let nonce = nonce.ok_or_else(|| missing("Nonce"))?;
    let (auth, peer) = (&ctx.shared.auth, crate::http::peer_ip(parts));
    auth.admit_attempt(peer, VIA).map_err(|wait| ApiError::auth(crate::auth::attempts::must_wait_message(wait)))?;
    let mode = ctx.shared.cfg.auth;
    let table = ctx.shared.auth.keys.table();
    let Some(principal) = table.by_id.get(secret_id).cloned() else {
        if mode.admits_anonymous(!table.is_empty()) {
            return Ok(Caller { principal: None, enforce: false });
        }
        auth.attempt_failed(peer, VIA, "unknown SecretId");
        return Err(ApiError::auth("unknown SecretId"));
    };
    let now = ctx.gateway.clock.lock().unwrap_or_else(|e| e.into_inner()).now_ms() / 1000;
    if !signature::fresh(timestamp, now) {
        ctx.shared.auth.count_failure();
        return Err(ApiError::auth(format!(
            "Timestamp {timestamp} is more than {} s from the server's clock",
            signature::TIMESTAMP_SKEW_SECS_MAX
        )));
    }
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !signature::verify(parts.method.as_str(), host, 80, p, &principal.secrets, signature) {
        auth.attempt_failed(peer, VIA, &format!("signature mismatch for SecretId {secret_id}"));
        return Err(ApiError::auth("signature mismatch"));
    }
    let admitted = ctx.gateway.replay.lock().unwrap_or_else(|e| e.into_inner()).admit(secret_id, nonce, timestamp, now);
    match admitted {
        Ok(()) => {
            auth.attempt_succeeded(peer);
            Ok(Caller { principal: Some(principal), enforce: mode.enforces() })
        }
        Err(Replay::Repeated) => {
            ctx.shared.auth.count_failure();
            Err(ApiError::auth("replayed request (SecretId, Nonce, Timestamp seen before)"))
        }
        Err(Replay::Full) => {
            Err(ApiError::broker(cmq_protocol::ErrorCode::BUSY, "too many recent requests to check for replays"))
        }
    }
}

/// The key's policy decides, with the binary protocol's action names; the
/// viewer lists are filtered for.
fn permit(caller: &Caller, request: &cmq_protocol::Request) -> Result<Option<Arc<Principal>>, ApiError> {
    let Some(principal) = caller.principal.as_ref().filter(|_| caller.enforce) else { return Ok(None) };
    if let Need::Permission(action, resource) = need(request) {
        if !principal.policy.allows(action.name(), &resource.path()) {
            return Err(ApiError::broker(
                cmq_protocol::ErrorCode::ACCESS_DENIED,
                &format!("key {:?} may not {} on {}", principal.name, action.name(), resource.path()),
            ));
        }
    }
    Ok(Some(principal.clone()))
}

fn unanswered(e: crate::http::Unanswered) -> ApiError {
    use crate::http::Unanswered as U;
    match e {
        U::Busy => ApiError::broker(cmq_protocol::ErrorCode::BUSY, "shard inbox full; retry"),
        U::Dropped => ApiError::internal("the broker is shutting down"),
        U::TimedOut => ApiError::internal("no answer from the broker in time; the outcome is unknown"),
    }
}

/// The answer frame: the response, or the broker's error mapped to CMQ's.
fn decode(opcode: u16, frame: Bytes) -> Result<Response, ApiError> {
    let bad = |what: &str| ApiError::internal(format!("undecodable answer from the broker: {what}"));
    if frame.len() < HEADER_BYTES {
        return Err(bad("short frame"));
    }
    let flags = frame[6];
    let payload = frame.slice(HEADER_BYTES..);
    if flags & FLAG_ERROR != 0 {
        let e = ErrorBody::decode_payload(payload).map_err(|e| bad(&e.to_string()))?;
        return Err(ApiError::broker(e.code(), &e.message));
    }
    Response::decode(opcode, payload).map_err(|e| bad(&e.to_string()))
}

/// `{"code", "message", "requestId", ...fields}`.
fn envelope(request_id: &str, outcome: Result<(), ApiError>, fields: Map<String, Value>) -> Reply {
    let mut m = Map::new();
    match &outcome {
        Ok(()) => {
            m.insert("code".into(), Value::from(0));
            m.insert("message".into(), Value::from(""));
        }
        Err(e) => {
            m.insert("code".into(), Value::from(e.code));
            m.insert("message".into(), Value::from(e.message()));
        }
    }
    m.insert("requestId".into(), Value::from(request_id));
    m.extend(fields);
    router::json(StatusCode::OK, &Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_charged_to_the_budget_by_size() {
        assert_eq!(budget_permits(Some(0)), 1);
        assert_eq!(budget_permits(Some(1)), 1);
        assert_eq!(budget_permits(Some(BODY_BUDGET_UNIT_BYTES as u64)), 1);
        assert_eq!(budget_permits(Some(BODY_BUDGET_UNIT_BYTES as u64 + 1)), 2);
        let largest = (BODY_BYTES_MAX / BODY_BUDGET_UNIT_BYTES) as u32;
        assert_eq!(budget_permits(Some(BODY_BYTES_MAX as u64)), largest);
        assert_eq!(budget_permits(None), largest, "unknown length: the largest");
        // Every connection's largest body at once does not fit: the budget binds.
        let all = crate::http::HTTP_CONNECTIONS_MAX * largest as usize;
        assert!(all > BODY_BUDGET_BYTES / BODY_BUDGET_UNIT_BYTES);
        let gw = Gateway::default();
        assert_eq!(gw.body_budget.available_permits(), BODY_BUDGET_BYTES / BODY_BUDGET_UNIT_BYTES);
    }
}
