//! `/api/v1/...`: the route table, sign-in and the overview. Queue, topic and
//! dead-letter endpoints are in `ops`, the cluster in `cluster`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_protocol::frame::{FLAG_ERROR, HEADER_BYTES};
use cmq_protocol::{ErrorBody, Request, Response};
use hyper::http::request::Parts;
use hyper::{header, Method, StatusCode};
use serde_json::{json, Value};

use super::caller::{anonymous_allowed, resolve, session_of, Caller, SIGN_IN_HEADER};
use super::session::{same_secret, set_cookie, Holder};
use super::{ok, ops, Failure};
use crate::gateway::params::Params;
use crate::http::router::Reply;
use crate::http::{HttpContext, Unanswered};

/// How long an API request waits for the broker (no page hangs on a slow one).
pub const BROKER_WAIT: Duration = Duration::from_secs(8);

pub type Answer = Result<Reply, Failure>;

/// Routes `segments` (the path after `/api/v1/`, decoded).
pub async fn handle(ctx: &HttpContext, parts: &Parts, segments: &[String], body: &Bytes) -> Answer {
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    if seg == ["session"] {
        return session(ctx, parts, body);
    }
    let caller = resolve(ctx, parts)?;
    let m = &parts.method;
    let query = parts.uri.query().unwrap_or("").as_bytes();
    let r = Ctx { ctx, caller: &caller };
    match (m, seg.as_slice()) {
        (&Method::GET, ["overview"]) => overview(&r).await,
        (&Method::GET, ["cluster"]) => super::cluster::cluster(&r).await,
        _ => ops::handle(&r, m, &seg, query, body).await,
    }
}

/// What every endpoint works with.
pub struct Ctx<'a> {
    pub ctx: &'a HttpContext,
    pub caller: &'a Caller,
}

impl Ctx<'_> {
    /// Runs `request` on the shard that owns it, if the caller may.
    pub async fn run(&self, request: Request, within: Duration) -> Result<Response, Failure> {
        self.caller.permit(&request)?;
        let opcode = request.opcode() as u16;
        let ctx = self.ctx;
        let frame =
            crate::http::forward::execute(ctx, request, self.caller.viewer(), within).await.map_err(unanswered)?;
        decode(opcode, frame)
    }
}

fn unanswered(e: Unanswered) -> Failure {
    let (code, msg) = match e {
        Unanswered::Busy => ("BUSY", "the shard's inbox is full; retry"),
        Unanswered::Dropped => ("SHUTTING_DOWN", "the broker is shutting down"),
        Unanswered::TimedOut => ("TIMED_OUT", "no answer from the broker in time; the outcome is unknown"),
    };
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, code, msg)
}

/// The answer frame: the response, or the broker's error.
fn decode(opcode: u16, frame: Bytes) -> Result<Response, Failure> {
    let bad = |what: String| Failure::new(StatusCode::BAD_GATEWAY, "BAD_ANSWER", format!("undecodable answer: {what}"));
    if frame.len() < HEADER_BYTES {
        return Err(bad("short frame".into()));
    }
    let payload = frame.slice(HEADER_BYTES..);
    if frame[6] & FLAG_ERROR != 0 {
        let e = ErrorBody::decode_payload(payload).map_err(|e| bad(e.to_string()))?;
        return Err(Failure::broker(e.code(), e.message));
    }
    Response::decode(opcode, payload).map_err(|e| bad(e.to_string()))
}

/// `GET` (who am I; starts an anonymous session where allowed), `POST`
/// (sign in with `secretId` and `secretKey`, form-encoded), `DELETE` (sign out).
fn session(ctx: &HttpContext, parts: &Parts, body: &Bytes) -> Answer {
    let ttl = ctx.shared.cfg.console_session_secs;
    match parts.method {
        Method::GET => match session_of(ctx, parts) {
            Some((_, s)) => Ok(ok(&describe(ctx, &s.holder, &s.csrf))),
            None if anonymous_allowed(ctx, parts) => start(ctx, Holder::Anonymous, ttl),
            None => Ok(ok(&json!({"signedIn": false, "anonymous": false}))),
        },
        Method::POST if parts.headers.contains_key(SIGN_IN_HEADER) => sign_in(ctx, parts, body, ttl),
        Method::POST => Err(Failure::new(
            StatusCode::FORBIDDEN,
            "CSRF_TOKEN_INVALID",
            "a sign-in must carry the X-Requested-With header",
        )),
        Method::DELETE => {
            // Signing out needs the token too: another site must not end a session.
            resolve(ctx, parts)?;
            if let Some((id, _)) = session_of(ctx, parts) {
                ctx.console.sessions.remove(&id);
            }
            let mut r = ok(&json!({"signedIn": false}));
            insert_cookie(&mut r, &set_cookie("", 0, ctx.shared.tls.is_some()));
            Ok(r)
        }
        _ => Err(Failure::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "GET, POST or DELETE")),
    }
}

/// Names the sign-in check in the authentication log.
const VIA: &str = "console sign-in";

/// A sign-in is an authentication attempt in the per-address backoff
/// (`auth::attempts`): refused unchecked (429) while the address must wait.
fn sign_in(ctx: &HttpContext, parts: &Parts, body: &Bytes, ttl: u64) -> Answer {
    let p = Params::parse(body).map_err(Failure::param)?;
    let id = p.required("secretId").map_err(Failure::param)?;
    let key = p.required("secretKey").map_err(Failure::param)?;
    let (auth, peer) = (&ctx.shared.auth, crate::http::peer_ip(parts));
    if let Err(wait) = auth.admit_attempt(peer, VIA) {
        return Ok(must_wait(wait));
    }
    let table = ctx.shared.auth.keys.table();
    let known = table.by_id.get(id).filter(|pr| pr.secrets.iter().any(|s| same_secret(s, key.as_bytes())));
    if known.is_none() {
        auth.attempt_failed(peer, VIA, &format!("unknown SecretId {id:?} or wrong SecretKey"));
        let msg = "unknown SecretId or wrong SecretKey";
        return Err(Failure::broker(cmq_protocol::ErrorCode::AUTH_FAILED, msg.into()));
    }
    auth.attempt_succeeded(peer);
    start(ctx, Holder::Key(id.to_owned()), ttl)
}

/// 429 `TOO_MANY_FAILED_ATTEMPTS` with `Retry-After` (whole seconds, rounded up).
fn must_wait(wait_ms: u64) -> Reply {
    let msg = crate::auth::attempts::must_wait_message(wait_ms);
    let f = Failure::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_FAILED_ATTEMPTS", msg);
    let mut r = Failure { number: Some(u32::from(cmq_protocol::ErrorCode::AUTH_FAILED.0)), ..f }.reply();
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(wait_ms.div_ceil(1000)));
    r
}

fn start(ctx: &HttpContext, holder: Holder, ttl: u64) -> Answer {
    let made = ctx.console.sessions.create(holder, Duration::from_secs(ttl), Instant::now());
    let (id, s) = made.map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    let mut r = ok(&describe(ctx, &s.holder, &s.csrf));
    insert_cookie(&mut r, &set_cookie(&id, ttl, ctx.shared.tls.is_some()));
    Ok(r)
}

fn insert_cookie(r: &mut Reply, cookie: &str) {
    if let Ok(v) = header::HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}

fn describe(ctx: &HttpContext, holder: &Holder, csrf: &str) -> Value {
    let (anonymous, key) = match holder {
        Holder::Anonymous => (true, Value::Null),
        Holder::Key(id) => {
            let name = ctx.shared.auth.keys.table().by_id.get(id).map(|p| p.name.clone());
            (false, json!({"secretId": id, "name": name}))
        }
    };
    json!({"signedIn": true, "anonymous": anonymous, "key": key, "csrfToken": csrf,
           "authMode": ctx.shared.cfg.auth.name()})
}

/// Health, per-shard load, rates and disk use, from the history ring.
async fn overview(r: &Ctx<'_>) -> Answer {
    r.caller.permit(&Request::GetStats(Default::default()))?;
    let h = &r.ctx.console.history;
    let latest = h.latest();
    let shards = r.ctx.bridge.shard_count();
    let healthy = latest.as_ref().is_some_and(|s| s.missing == 0);
    Ok(ok(&json!({
        "shards": shards,
        "health": if latest.is_none() { "starting" } else if healthy { "ok" } else { "degraded" },
        "clustered": r.ctx.shared.cfg.cluster.is_some(),
        "nodeId": r.ctx.shared.cfg.node_id,
        "sampleEveryMs": super::history::SAMPLE_EVERY.as_millis() as u64,
        "history": h.broker_series(),
    })))
}
