//! One binary-protocol connection from this node's HTTP thread to a
//! shard's leader, as any client makes it (PROTOCOL.md): authenticated as
//! the HTTP caller's key (every node holds the replicated key table, SecretKeys
//! included) or anonymous, then the handshake, then one request at a time.
//! The leader treats it as a client like any other: it checks the key's
//! policy again, counts it against the key's limits, and never forwards
//! what it receives (a connection's NOT_LEADER goes back to the connection).
//! Where the client ports serve TLS the connection is TLS 1.3 (`tls.rs`)
//! and authentication binds to the session (tls-exporter), as a client's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame::{self, FLAG_ERROR, FLAG_PUSH, HEADER_BYTES};
use cmq_protocol::handshake::IDEMPOTENCY_KEYS_VERSION;
use cmq_protocol::{auth, AuthChallenge, Authenticate, ErrorBody, ErrorCode, Handshake, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

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

/// How connections are made: plaintext or TLS, and the count of those
/// open (the `cmq_http_forward_connections` gauge), shared by every pool.
#[derive(Clone, Default)]
pub struct Dialer {
    /// Set where the client ports serve TLS.
    pub tls: Option<TlsConnector>,
    pub open: Arc<AtomicU64>,
}

/// One open connection in [`Dialer::open`]'s count, for as long as it lives.
struct Counted(Arc<AtomicU64>);

impl Counted {
    fn new(open: &Arc<AtomicU64>) -> Counted {
        open.fetch_add(1, Ordering::Relaxed);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket to the leader.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn connect(addr: &str, dialer: &Dialer) -> Result<Stream, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &dialer.tls else { return Ok(Stream::Plain(tcp)) };
        let name = super::tls::server_name(addr)?;
        let s = tls.connect(name, tcp).await.map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        Ok(Stream::Tls(Box::new(s)))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                // What rustls encrypted goes out now, not with the next write.
                s.flush().await
            }
        }
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// RFC 9266 tls-exporter of the session (empty over plaintext), for
    /// the authentication transcript.
    fn channel_binding(&self) -> Result<Vec<u8>, OpenError> {
        let Stream::Tls(s) = self else { return Ok(Vec::new()) };
        let out = [0u8; auth::TLS_EXPORTER_BYTES];
        let binding = s.get_ref().1.export_keying_material(out, auth::TLS_EXPORTER_LABEL, None);
        binding.map(|b| b.to_vec()).map_err(|e| OpenError::Io(format!("TLS channel binding: {e}")))
    }
}

pub struct LeaderConn {
    stream: Stream,
    inbuf: BytesMut,
    next_id: u64,
    pub identity: Identity,
    /// When it was last given back to the pool.
    pub idle_since: Instant,
    _counted: Counted,
}

impl LeaderConn {
    /// Connects to `addr` as `dialer` says, authenticates as `viewer`
    /// (anonymous: None) and shakes hands asking for `identity.shard`. The
    /// caller bounds the time.
    pub async fn open(
        addr: &str,
        dialer: &Dialer,
        viewer: &Viewer,
        identity: Identity,
    ) -> Result<LeaderConn, OpenError> {
        let stream = Stream::connect(addr, dialer).await.map_err(OpenError::Io)?;
        let mut c = LeaderConn {
            stream,
            inbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            next_id: 1,
            identity,
            idle_since: Instant::now(),
            _counted: Counted::new(&dialer.open),
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

    /// The challenge-response of PROTOCOL.md, "Authentication" (bound to
    /// the TLS session where there is one), checking the leader's proof as
    /// a client does.
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
        let binding = self.stream.channel_binding()?;
        let t = auth::transcript(&server_nonce, &client_nonce, secret_id, timestamp_ms, &binding);
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
    /// leader (its idle deadline, a restart) and holding no stray bytes
    /// (over TLS a close_notify is such bytes). A peek: nothing is taken
    /// from a TLS session's stream.
    pub fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        self.inbuf.is_empty()
            && matches!(rustix::net::recv(self.stream.tcp(), &mut probe, flags), Err(rustix::io::Errno::AGAIN))
    }
}
