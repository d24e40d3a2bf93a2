//! Which handler serves a request, and who may call it. The same port will
//! carry the CMQ HTTP API and the web console: each route declares its
//! methods and whether it needs authentication, and one [`Authenticator`]
//! (shared by every authenticated route) decides. Health checks stay
//! public so that probes need no credentials.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{header, Method, Response, StatusCode};

pub type Reply = Response<Full<Bytes>>;

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Metrics,
    Healthz,
    Readyz,
    /// Testing only (`--fault-http-hooks`): block a shard's loop.
    DebugStall,
    /// The CMQ API 2.0 (`crate::gateway`), which authenticates each request itself.
    CmqApi,
    /// The web console's pages and JSON API (`crate::console`), which authenticates itself.
    Console,
}

/// Whether a route asks the [`Authenticator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    Authenticated,
}

/// Decides whether a request may use an authenticated route.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, req: &Parts) -> Result<(), Denied>;
}

/// Why a request was refused, as the client is told.
#[derive(Debug)]
pub struct Denied {
    pub status: StatusCode,
    pub message: String,
}

/// No credentials yet (the broker has no users until authentication
/// lands): every request is allowed.
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _: &Parts) -> Result<(), Denied> {
        Ok(())
    }
}

struct Route {
    path: &'static str,
    methods: &'static [Method],
    endpoint: Endpoint,
    access: Access,
}

const READ: &[Method] = &[Method::GET, Method::HEAD];
const ANY: &[Method] =
    &[Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD, Method::OPTIONS];

pub struct Router {
    routes: Vec<Route>,
    auth: Arc<dyn Authenticator>,
}

impl Router {
    pub fn new(test_hooks: bool, auth: Arc<dyn Authenticator>) -> Router {
        let mut routes = vec![
            Route { path: "/metrics", methods: READ, endpoint: Endpoint::Metrics, access: Access::Authenticated },
            Route { path: "/healthz", methods: READ, endpoint: Endpoint::Healthz, access: Access::Public },
            Route { path: "/readyz", methods: READ, endpoint: Endpoint::Readyz, access: Access::Public },
            // Every method reaches the gateway: it answers the ones CMQ
            // refuses with CMQ's error (4000, module 10410) in a 200.
            Route {
                path: crate::gateway::signature::API_PATH,
                methods: ANY,
                endpoint: Endpoint::CmqApi,
                access: Access::Public,
            },
        ];
        if test_hooks {
            let stall = Route {
                path: "/debug/stall",
                methods: &[Method::POST],
                endpoint: Endpoint::DebugStall,
                access: Access::Authenticated,
            };
            routes.push(stall);
        }
        Router { routes, auth }
    }

    /// The endpoint for this request, or the error reply (404 unknown
    /// path, 405 wrong method, or the authenticator's refusal).
    pub fn route(&self, req: &Parts) -> Result<Endpoint, Box<Reply>> {
        if crate::console::owns(req.uri.path()) {
            return Ok(Endpoint::Console);
        }
        let Some(route) = self.routes.iter().find(|r| r.path == req.uri.path()) else {
            return Err(Box::new(text(StatusCode::NOT_FOUND, "not found\n")));
        };
        if !route.methods.contains(&req.method) {
            let allow: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
            let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            if let Ok(v) = allow.join(", ").parse() {
                reply.headers_mut().insert(header::ALLOW, v);
            }
            return Err(Box::new(reply));
        }
        if route.access == Access::Authenticated {
            self.auth.authenticate(req).map_err(|d| Box::new(text(d.status, &format!("{}\n", d.message))))?;
        }
        Ok(route.endpoint)
    }
}

/// A reply with a body and its content type.
pub fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

pub fn text(status: StatusCode, body: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.to_owned())
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    // Straight into the body's buffer (`Display` would go through a formatter).
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str) -> Parts {
        hyper::Request::builder().method(method).uri(uri).body(()).expect("request").into_parts().0
    }

    struct DenyAll;
    impl Authenticator for DenyAll {
        fn authenticate(&self, _: &Parts) -> Result<(), Denied> {
            Err(Denied { status: StatusCode::UNAUTHORIZED, message: "credentials required".into() })
        }
    }

    #[test]
    fn paths_methods_and_access_are_checked() {
        let r = Router::new(false, Arc::new(AllowAll));
        assert_eq!(r.route(&parts(Method::GET, "/metrics?x=1")).ok(), Some(Endpoint::Metrics));
        assert_eq!(r.route(&parts(Method::HEAD, "/healthz")).ok(), Some(Endpoint::Healthz));
        assert_eq!(r.route(&parts(Method::GET, "/nope")).err().map(|e| e.status()), Some(StatusCode::NOT_FOUND));
        let wrong = r.route(&parts(Method::POST, "/readyz")).expect_err("405");
        assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.headers()[header::ALLOW], "GET, HEAD");
        assert!(r.route(&parts(Method::POST, "/debug/stall")).is_err(), "test hooks are off");

        let locked = Router::new(true, Arc::new(DenyAll));
        let denied = locked.route(&parts(Method::GET, "/metrics")).expect_err("denied");
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        assert!(locked.route(&parts(Method::POST, "/debug/stall")).is_err());
        assert_eq!(locked.route(&parts(Method::GET, "/healthz")).ok(), Some(Endpoint::Healthz), "probes stay public");
    }
}
