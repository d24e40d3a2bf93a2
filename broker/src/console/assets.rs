//! The console's pages, embedded in the binary (no build step, no CDN).

use hyper::http::request::Parts;
use hyper::{header, Method, StatusCode};

use crate::http::router::{self, Reply};

/// Path (under `/console/`), content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("", "text/html; charset=utf-8", include_bytes!("assets/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("assets/app.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("assets/style.css")),
];

/// A page or asset; `/console` redirects to `/console/`.
pub fn serve(parts: &Parts) -> Reply {
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return router::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let path = parts.uri.path();
    let Some(name) = path.strip_prefix("/console/") else {
        let mut r = router::text(StatusCode::MOVED_PERMANENTLY, "see /console/\n");
        r.headers_mut().insert(header::LOCATION, header::HeaderValue::from_static("/console/"));
        return r;
    };
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => {
            let mut r = router::reply(StatusCode::OK, kind, *bytes);
            let h = r.headers_mut();
            // The pages run only their own scripts, and no other site may frame them.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
                ),
            );
            h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
            h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
            r
        }
        None => router::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
