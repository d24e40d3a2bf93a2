//! Authentication helpers: a broker started with an administrator key, and
//! the challenge-response done by hand on a raw connection (for tests that
//! tamper with it), from a chosen loopback source address (so one test's
//! failures do not put another's address in the broker's backoff).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cmq_protocol::auth::{self, AUTH_METHOD_V1, CLIENT_MAC_LABEL, SERVER_MAC_LABEL};
use cmq_protocol::{AuthChallenge, Authenticate, Handshake, Request, Response};

use crate::broker::Broker;
use crate::raw::{RawConn, Reply, READ_TIMEOUT};

/// A broker started with `--init-admin-key`, and that key.
pub struct AdminBroker {
    pub broker: Broker,
    pub creds_file: PathBuf,
    pub secret_id: String,
    pub secret_key: String,
    _dir: tempfile::TempDir,
}

impl AdminBroker {
    pub fn start(args: &[&str]) -> AdminBroker {
        let dir = tempfile::tempdir().expect("tmp");
        let creds_file = dir.path().join("admin.creds");
        let file = creds_file.to_str().expect("utf-8 path");
        let broker = Broker::start(&[&["--init-admin-key", file][..], args].concat());
        let (secret_id, secret_key) = read_credentials(&creds_file);
        AdminBroker { broker, creds_file, secret_id, secret_key, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.broker.addr
    }
}

/// The `secret_id = "..."` and `secret_key = "..."` lines of a credentials file.
pub fn read_credentials(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).expect("credentials file");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('=')?.trim().strip_prefix('"')?.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_owned()
    };
    (field("secret_id"), field("secret_key"))
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An Authenticate for `nonce` under this key, and the transcript it covers.
pub fn authenticate_request(
    nonce: &[u8],
    secret_id: &str,
    secret_key: &str,
    timestamp_ms: u64,
) -> (Authenticate, Vec<u8>) {
    let client_nonce = [7u8; auth::AUTH_NONCE_BYTES];
    let t = auth::transcript(nonce, &client_nonce, secret_id, timestamp_ms, b"");
    let mac = auth::mac(secret_key.as_bytes(), CLIENT_MAC_LABEL, &t);
    let req = Authenticate {
        secret_id: secret_id.to_owned(),
        client_nonce: Bytes::copy_from_slice(&client_nonce),
        timestamp_ms,
        mac: Bytes::copy_from_slice(&mac),
    };
    (req, t)
}

impl RawConn {
    /// Connects from `source` (any 127.0.0.0/8 address works on Linux loopback).
    pub fn connect_from(addr: SocketAddr, source: IpAddr) -> RawConn {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.bind(&SocketAddr::new(source, 0).into()).expect("bind source");
        socket.connect(&addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        RawConn::from_stream(stream)
    }

    /// AuthChallenge: the server nonce.
    pub fn challenge(&mut self) -> Bytes {
        match self.call(Request::AuthChallenge(AuthChallenge {})).ok() {
            Response::AuthChallenge(c) => c.server_nonce,
            other => panic!("AuthChallenge answered {other:?}"),
        }
    }

    /// Challenge and Authenticate; panics unless the server's proof checks out.
    pub fn authenticate(&mut self, secret_id: &str, secret_key: &str) {
        let nonce = self.challenge();
        let (req, t) = authenticate_request(&nonce, secret_id, secret_key, unix_ms());
        match self.call(Request::Authenticate(req)).ok() {
            Response::Authenticate(ok) => {
                assert!(auth::verify(secret_key.as_bytes(), SERVER_MAC_LABEL, &t, &ok.server_mac), "server proof");
            }
            other => panic!("Authenticate answered {other:?}"),
        }
    }

    /// Authenticates and handshakes.
    pub fn open_as(addr: SocketAddr, secret_id: &str, secret_key: &str) -> RawConn {
        let mut c = RawConn::connect(addr);
        c.authenticate(secret_id, secret_key);
        let mut hs = Handshake::new("raw-auth-test");
        hs.auth_method = AUTH_METHOD_V1.to_owned();
        c.call(Request::Handshake(hs)).ok();
        c
    }

    /// Reads until the server closes the connection (a test's expectation
    /// that it does, within the read timeout).
    pub fn expect_closed(&mut self) -> Vec<Reply> {
        let mut seen = Vec::new();
        while let Some(r) = self.read() {
            seen.push(r);
            assert!(seen.len() < 1000, "the server keeps answering instead of closing");
        }
        seen
    }
}

/// `READ_TIMEOUT`, re-exported for tests that wait on a close.
pub const CLOSE_TIMEOUT: std::time::Duration = READ_TIMEOUT;
