//! Who an API request acts for, and whether it may: the session in its
//! cookie, its CSRF token on state-changing requests, and the key's policy
//! checked with the binary protocol's action names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cmq_protocol::Request;
use hyper::http::request::Parts;
use hyper::{header, Method, StatusCode};

use super::session::{cookie_id, same_secret, Holder, Session, CSRF_HEADER};
use super::Failure;
use crate::auth::actions::{need, Need};
use crate::auth::table::Principal;
use crate::http::HttpContext;

/// A request's caller: a key (held to its policy when `enforce`), or anonymous.
pub struct Caller {
    pub principal: Option<Arc<Principal>>,
    pub enforce: bool,
}

impl Caller {
    /// Whom lists are filtered for.
    pub fn viewer(&self) -> Option<Arc<Principal>> {
        self.principal.clone().filter(|_| self.enforce)
    }

    /// The key's policy decides, as for the binary protocol.
    pub fn permit(&self, request: &Request) -> Result<(), Failure> {
        let Some(p) = self.viewer() else { return Ok(()) };
        if let Need::Permission(action, resource) = need(request) {
            if !p.policy.allows(action.name(), &resource.path()) {
                let msg = format!("key {:?} may not {} on {}", p.name, action.name(), resource.path());
                return Err(Failure::broker(cmq_protocol::ErrorCode::ACCESS_DENIED, msg));
            }
        }
        Ok(())
    }
}

/// Whether this request may use the console without sign-in: where the
/// binary protocol serves anonymous clients, and only on a loopback HTTP
/// address (or with `--allow-anonymous`). On loopback the request must also
/// name a loopback host: a page whose own name was rebound to 127.0.0.1 (DNS
/// rebinding) sends its own name and gets no anonymous session.
pub fn anonymous_allowed(ctx: &HttpContext, parts: &Parts) -> bool {
    let cfg = &ctx.shared.cfg;
    let have_keys = !ctx.shared.auth.keys.table().is_empty();
    let local = cfg.http_listen.is_none_or(|a: SocketAddr| a.ip().is_loopback());
    cfg.auth.admits_anonymous(have_keys) && (cfg.allow_anonymous || (local && loopback_host(parts)))
}

/// Whether the Host header names this machine: `localhost` or a loopback address, any port.
fn loopback_host(parts: &Parts) -> bool {
    let Some(host) = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The live session this request's cookie names, with its id.
pub fn session_of(ctx: &HttpContext, parts: &Parts) -> Option<(String, Session)> {
    let cookies = parts.headers.get_all(header::COOKIE);
    let id = cookies.iter().filter_map(|v| v.to_str().ok()).find_map(cookie_id)?;
    let s = ctx.console.sessions.get(id, Instant::now())?;
    Some((id.to_owned(), s))
}

/// The header a sign-in must carry (a cross-site form cannot set it, so
/// another site cannot sign a browser in with its own key).
pub const SIGN_IN_HEADER: &str = "x-requested-with";

/// The caller of a request that needs a session; state-changing methods
/// must carry the session's CSRF token.
pub fn resolve(ctx: &HttpContext, parts: &Parts) -> Result<Caller, Failure> {
    let unauthorized = |m: &str| Failure::new(StatusCode::UNAUTHORIZED, "SIGN_IN_REQUIRED", m);
    let (_, session) = session_of(ctx, parts).ok_or_else(|| unauthorized("sign in first (POST /api/v1/session)"))?;
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let given = parts.headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if !same_secret(given, session.csrf.as_bytes()) {
            let msg = "missing or wrong X-CSRF-Token header (GET /api/v1/session gives it)";
            return Err(Failure::new(StatusCode::FORBIDDEN, "CSRF_TOKEN_INVALID", msg));
        }
    }
    let enforce = ctx.shared.cfg.auth.enforces();
    match session.holder {
        Holder::Key(id) => {
            let principal = ctx.shared.auth.keys.table().by_id.get(&id).cloned();
            let principal = principal.ok_or_else(|| unauthorized("the key of this session no longer exists"))?;
            Ok(Caller { principal: Some(principal), enforce })
        }
        Holder::Anonymous if anonymous_allowed(ctx, parts) => Ok(Caller { principal: None, enforce: false }),
        Holder::Anonymous => Err(unauthorized("anonymous access has ended (keys exist): sign in")),
    }
}
