//! A client of the web console's JSON API (`/api/v1/`, docs/HTTP_API.md)
//! that behaves as the console's page does: it keeps the session cookie and
//! CSRF token it is given and sends them back, form-encodes parameters, and
//! signs in the one way every console test does ([`Console::sign_in`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::http::{send, HttpReply};
use crate::queue_model::poll_until;

/// How long a sign-in waits out the per-address backoff (429) that failed
/// sign-ins from the same address leave (docs/SECURITY.md).
pub const SIGN_IN_BACKOFF_DEADLINE: Duration = Duration::from_secs(12);

/// A browser-like client of one node's console: its session cookie and CSRF token.
pub struct Console {
    pub http: SocketAddr,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

impl Console {
    pub fn new(http: SocketAddr) -> Console {
        Console { http, cookie: None, csrf: None }
    }

    /// One API call, sending the session's cookie and CSRF token (if any)
    /// and keeping any new ones the answer carries.
    pub fn call(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> HttpReply {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        let body = body.finish();
        let mut headers = vec![
            ("Content-Type", "application/x-www-form-urlencoded".to_owned()),
            ("X-Requested-With", "cmq-console".to_owned()),
        ];
        if let Some(c) = &self.cookie {
            headers.push(("Cookie", c.clone()));
        }
        if let Some(t) = &self.csrf {
            headers.push(("X-CSRF-Token", t.clone()));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = send(self.http, method, path, &headers, body.as_bytes());
        if let Some(set) = reply.header("set-cookie") {
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        if let Some(t) =
            serde_json::from_str::<Value>(&reply.body).ok().and_then(|v| v["csrfToken"].as_str().map(str::to_owned))
        {
            self.csrf = Some(t);
        }
        reply
    }

    /// A call that must succeed: its JSON.
    #[track_caller]
    pub fn ok(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> Value {
        let r = self.call(method, path, form);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r.json()
    }

    /// A call that must fail with `status` and error code `code`: its JSON.
    #[track_caller]
    pub fn refused(&mut self, method: &str, path: &str, form: &[(&str, &str)], status: u16, code: &str) -> Value {
        let r = self.call(method, path, form);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{}", r.body);
        v
    }

    /// Signs in with a key, waiting out (within [`SIGN_IN_BACKOFF_DEADLINE`])
    /// the backoff that earlier failed sign-ins from this address may have left.
    #[track_caller]
    pub fn sign_in(&mut self, id: &str, key: &str) -> Value {
        poll_until(SIGN_IN_BACKOFF_DEADLINE, "a sign-in past the backoff", || {
            let r = self.call("POST", "/api/v1/session", &[("secretId", id), ("secretKey", key)]);
            if r.status == 429 {
                return Err(r.body);
            }
            assert_eq!(r.status, 200, "sign-in: {}", r.body);
            Ok(r.json())
        })
    }

    /// Starts an anonymous session (a broker without keys, on loopback).
    #[track_caller]
    pub fn anonymous(&mut self) -> Value {
        let s = self.ok("GET", "/api/v1/session", &[]);
        assert_eq!((s["signedIn"].as_bool(), s["anonymous"].as_bool()), (Some(true), Some(true)), "{s}");
        s
    }
}

/// Debian's chromium, which the browser tests drive (`CHROMIUM` overrides).
pub fn chromium() -> std::path::PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), std::path::PathBuf::from);
    assert!(path.exists(), "{} is missing: run `make console-venv` (make test does)", path.display());
    path
}

/// Where the browser tests leave their screenshots (test artifacts).
pub fn screenshots_dir() -> std::path::PathBuf {
    crate::python::repo_root().join("target/console-screenshots")
}

/// Removes these screenshots (`NAME.png` in [`screenshots_dir`]), so that a
/// later [`assert_screenshots`] sees only what this run took.
pub fn clear_screenshots(names: &[&str]) {
    for name in names {
        let _ = std::fs::remove_file(screenshots_dir().join(format!("{name}.png")));
    }
}

#[track_caller]
pub fn assert_screenshots(names: &[&str]) {
    for name in names {
        let path = screenshots_dir().join(format!("{name}.png"));
        assert!(path.metadata().is_ok_and(|m| m.len() > 0), "no screenshot {}", path.display());
    }
}
