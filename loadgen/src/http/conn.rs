//! One keep-alive HTTP/1.1 connection to the gateway (hyper's client
//! connection API: one request in flight, as every CMQ SDK uses it) and the
//! CMQ envelope of its answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::sign::{Signer, API_PATH};

/// Longest answer read (a received message's body, JSON-escaped, fits
/// many times over; anything longer is a broken gateway).
pub const ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The gateway's answer: a CMQ code other than 0.
    Cmq { code: i64, message: String },
    /// The connection broke: whether the request took effect is unknown.
    Transport(String),
    /// Not HTTP 200, or not the JSON envelope.
    Protocol(String),
    /// No answer within the call's deadline.
    Timeout,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Cmq { code, message } => write!(f, "CMQ code {code}: {message}"),
            CallError::Transport(e) => write!(f, "connection: {e}"),
            CallError::Protocol(e) => write!(f, "bad answer: {e}"),
            CallError::Timeout => f.write_str("no answer in time"),
        }
    }
}

/// A connected client.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    signer: Signer,
}

impl Conn {
    /// Connects to `authority` (`host:port`), signing with `signer`.
    pub async fn connect(authority: &str, signer: Signer) -> Result<Conn, CallError> {
        let stream =
            tokio::net::TcpStream::connect(authority).await.map_err(|e| CallError::Transport(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|e| CallError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = HeaderValue::from_str(authority).map_err(|e| CallError::Protocol(e.to_string()))?;
        Ok(Conn { send, host, signer })
    }

    /// POSTs the signed `params`, waits at most `within` for the answer,
    /// and returns the envelope's fields when its code is 0.
    pub async fn call(&mut self, params: &[(&str, &str)], within: Duration) -> Result<Value, CallError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let form = Bytes::from(self.signer.form(params, now));
        let mut req = Request::new(Full::new(form.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = hyper::Uri::from_static(API_PATH);
        req.headers_mut().insert(HOST, self.host.clone());
        req.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(form.len()));
        match tokio::time::timeout(within, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<Value, CallError> {
        let transport = |e: hyper::Error| CallError::Transport(e.to_string());
        self.send.ready().await.map_err(transport)?;
        let resp = self.send.send_request(req).await.map_err(transport)?;
        if resp.status() != StatusCode::OK {
            return Err(CallError::Protocol(format!("HTTP {}", resp.status())));
        }
        let body = http_body_util::Limited::new(resp.into_body(), ANSWER_BYTES_MAX);
        let bytes = body.collect().await.map_err(|e| CallError::Transport(e.to_string()))?.to_bytes();
        envelope(&bytes)
    }
}

/// The fields of a `{"code": 0, ...}` envelope, or its error.
pub fn envelope(bytes: &[u8]) -> Result<Value, CallError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| CallError::Protocol(format!("not JSON: {e}")))?;
    match v.get("code").and_then(Value::as_i64) {
        Some(0) => Ok(v),
        Some(code) => {
            let message = v.get("message").and_then(Value::as_str).unwrap_or_default().to_owned();
            Err(CallError::Cmq { code, message })
        }
        None => Err(CallError::Protocol("no code in the envelope".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_read_and_errors_kept() {
        let ok = envelope(br#"{"code":0,"message":"","requestId":"1","msgId":"9"}"#).expect("ok");
        assert_eq!(ok["msgId"], "9");
        match envelope(br#"{"code":7000,"message":"no message","requestId":"2"}"#) {
            Err(CallError::Cmq { code: 7000, message }) => assert_eq!(message, "no message"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(envelope(b"<html>"), Err(CallError::Protocol(_))));
        assert!(matches!(envelope(br#"{"message":""}"#), Err(CallError::Protocol(_))));
    }
}
