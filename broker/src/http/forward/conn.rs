//! One binary-protocol connection from this node's HTTP thread to a
//! shard's leader, as any client makes it (PROTOCOL.md): authenticated as
//! the HTTP caller's key (every node holds the replicated key table, SecretKeys
//! included) or anonymous, then the handshake, then one request at a time.
//! The leader treats it as a client like any other: it checks the key's
//! policy again, counts it against the key's limits, and never forwards
//! what it receives (a connection's NOT_LEADER goes back to the connection).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame::{self, FLAG_ERROR, FLAG_PUSH, HEADER_BYTES};
use cmq_protocol::handshake::IDEMPOTENCY_KEYS_VERSION;
use cmq_protocol::{auth, AuthChallenge, Authenticate, ErrorBody, ErrorCode, Handshake, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::shard::external::Viewer;

/// Bytes read from the socket at a time (a frame larger than this is read
/// in several; `frame::check` bounds a frame before the buffer grows).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What a forwarded connection calls itself in the leader's logs.
const CLIENT_NAME: &str = concat!("cmqd-http-forward/", env!("CARGO_PKG_VERSION"));

/// Whom a connection is authenticated as and which of the leader's shards
/// serves it: a pooled connection is reused only for the same pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The caller's SecretId; None: anonymous.
    pub secret_id: Option<String>,
    /// The shard hint of the handshake (the queue's shard: the leader then
    /// serves it without a hop between its own shards).
    pub shard: Option<u16>,
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The leader answered with an error (e.g. AUTH_FAILED: the key was
    /// deleted or rotated there first): the caller gets that answer.
    Refused(ErrorBody),
    /// No connection (refused, reset, an unreadable answer).
    Io(String),
}

/// Why a call got no answer: the request may have been written (in part
/// or whole), so whether the leader ran it is unknown.
#[derive(Debug)]
pub struct Lost(pub String);

pub struct LeaderConn {
    stream: TcpStream,
    inbuf: BytesMut,
    next_id: u64,
    pub identity: Identity,
    /// When it was last given back to the pool.
    pub idle_since: Instant,
}

impl LeaderConn {
    /// Connects to `addr`, authenticates as `viewer` (anonymous: None) and
    /// shakes hands asking for `identity.shard`. The caller bounds the time.
    pub async fn open(addr: &str, viewer: &Viewer, identity: Identity) -> Result<LeaderConn, OpenError> {
        let stream = TcpStream::connect(addr).await.map_err(|e| OpenError::Io(format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut c = LeaderConn {
            stream,
            inbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            next_id: 1,
            identity,
            idle_since: Instant::now(),
        };
        let mut hello = Handshake::new(CLIENT_NAME);
        // Forwarded sends carry idempotency keys.
        hello.version_min = IDEMPOTENCY_KEYS_VERSION;
        hello.shard_hint = c.identity.shard;
        if let Some(principal) = viewer {
            c.authenticate(&principal.secret_id, principal.secrets.last().map_or(&[][..], Vec::as_slice)).await?;
            hello.auth_method = auth::AUTH_METHOD_V1.to_owned();
        }
        match c.ask(Request::Handshake(hello)).await? {
            Response::Handshake(_) => Ok(c),
            other => Err(OpenError::Io(format!("unexpected answer to Handshake: {}", other.opcode().name()))),
        }
    }

    /// The challenge-response of PROTOCOL.md, "Authentication" (plaintext:
    /// no channel binding), checking the leader's proof as a client does.
    async fn authenticate(&mut self, secret_id: &str, secret_key: &[u8]) -> Result<(), OpenError> {
        let server_nonce = match self.ask(Request::AuthChallenge(AuthChallenge {})).await? {
            Response::AuthChallenge(ok) if ok.server_nonce.len() == auth::AUTH_NONCE_BYTES => ok.server_nonce,
            other => {
                return Err(OpenError::Io(format!("unexpected answer to AuthChallenge: {}", other.opcode().name())))
            }
        };
        let mut client_nonce = [0u8; auth::AUTH_NONCE_BYTES];
        getrandom::fill(&mut client_nonce).map_err(|e| OpenError::Io(format!("no random nonce: {e}")))?;
        let timestamp_ms = crate::clock::Clock::default().now_ms();
        let t = auth::transcript(&server_nonce, &client_nonce, secret_id, timestamp_ms, &[]);
        let req = Authenticate {
            secret_id: secret_id.to_owned(),
            client_nonce: Bytes::copy_from_slice(&client_nonce),
            timestamp_ms,
            mac: Bytes::copy_from_slice(&auth::mac(secret_key, auth::CLIENT_MAC_LABEL, &t)),
        };
        match self.ask(Request::Authenticate(req)).await? {
            Response::Authenticate(ok) if auth::verify(secret_key, auth::SERVER_MAC_LABEL, &t, &ok.server_mac) => {
                Ok(())
            }
            _ => Err(OpenError::Refused(ErrorBody::new(
                ErrorCode::AUTH_FAILED,
                "the shard's leader could not prove it holds the caller's key",
            ))),
        }
    }

    /// A request of the opening exchange, and its decoded answer.
    async fn ask(&mut self, request: Request) -> Result<Response, OpenError> {
        let opcode = request.opcode() as u16;
        let answer = self.call(&request).await.map_err(|Lost(m)| OpenError::Io(m))?;
        let payload = answer.slice(HEADER_BYTES..);
        if answer[6] & FLAG_ERROR != 0 {
            let body = ErrorBody::decode_payload(payload).map_err(|e| OpenError::Io(e.to_string()))?;
            return Err(OpenError::Refused(body));
        }
        Response::decode(opcode, payload).map_err(|e| OpenError::Io(e.to_string()))
    }

    /// Sends `request` and returns the whole answer frame (header
    /// included, as the shard bridge returns it).
    pub async fn call(&mut self, request: &Request) -> Result<Bytes, Lost> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        request.encode_frame(id, &mut out);
        self.stream.write_all(&out).await.map_err(|e| Lost(format!("writing to the leader: {e}")))?;
        loop {
            let answer = self.next_frame().await?;
            // A forwarded connection subscribes to nothing; a push is skipped.
            if answer[6] & FLAG_PUSH == 0 {
                let got = u64::from_le_bytes(answer[8..16].try_into().expect("a frame has a 16-byte header"));
                if got != id {
                    return Err(Lost(format!("the leader answered request {got}, asked {id}")));
                }
                return Ok(answer);
            }
        }
    }

    async fn next_frame(&mut self) -> Result<Bytes, Lost> {
        loop {
            match frame::check(&self.inbuf) {
                Ok(Some(total)) => return Ok(self.inbuf.split_to(total).freeze()),
                Ok(None) => {}
                Err(e) => return Err(Lost(format!("the leader's answer: {e}"))),
            }
            self.inbuf.reserve(READ_CHUNK_BYTES);
            match self.stream.read_buf(&mut self.inbuf).await {
                Ok(0) => return Err(Lost("the leader closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(Lost(format!("reading from the leader: {e}"))),
            }
        }
    }

    /// Whether an idle connection still looks usable: not closed by the
    /// leader (its idle deadline, a restart) and holding no stray bytes.
    pub fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.inbuf.is_empty()
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}
