//! One TCP connection to a broker, driven in pipelined fashion.
//!
//! On this machine class a loopback round trip costs ~70 µs while a frame
//! costs well under 1 µs to handle, so throughput comes from keeping many
//! requests in flight and moving many frames per syscall: [`Connection::submit`]
//! only encodes, [`Connection::flush`] writes everything queued at once, and
//! [`Connection::recv`] decodes as many frames as one read returned before
//! reading again.
//!
//! The broker may also send frames of its own, flagged PUSH (request id 0,
//! never an answer): today only `TransactionCheck`, to a connection that
//! registered as a transaction checker. They are kept apart from replies so
//! that request/response matching never sees them: [`Connection::recv`]
//! queues every push it reads past and returns only replies, to be collected
//! with [`Connection::take_pushes`]; [`Connection::recv_event`] returns
//! replies and pushes alike, in arrival order, and may wait for a push with
//! no request in flight.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cmq_protocol::auth;
use cmq_protocol::frame::{self, FrameHeader};
use cmq_protocol::handshake::{IDEMPOTENCY_KEYS_VERSION, PROTOCOL_VERSION_MAX};
use cmq_protocol::{
    AuthChallenge, Authenticate, ErrorBody, ErrorCode, Handshake, HandshakeOk, Opcode, Request, Response,
    TransactionCheck,
};

use crate::credentials::Credentials;
use crate::tls::{TlsOptions, TlsStream};

use crate::error::{from_io, is_timeout_kind, ClientError};
use crate::id_hash::{id_map, IdMap};

/// Bytes asked of the kernel per read. A full pipeline window of small
/// responses (64 in flight x ~100 bytes) fits in one read; large bodies take
/// a few reads, which is noise next to their copy cost.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// An outgoing buffer that grew past this (a burst of large batches) is
/// released after flushing instead of pinning that memory for the
/// connection's lifetime.
const OUT_RETAIN_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Silence after which a connection with nothing in flight checks, before
/// its next request, whether the broker closed it meanwhile (the broker's
/// idle deadline is at least 500 ms; see [`Connection::closed_while_idle`]).
const IDLE_CHECK_AFTER: Duration = Duration::from_millis(250);

/// Outstanding requests a connection expects to hold at once before its
/// in-flight table has to grow; sized for a load generator's window.
const IN_FLIGHT_CAPACITY: usize = 256;

/// The name this library gives itself in the handshake.
pub const CLIENT_NAME: &str = concat!("cmq-client/", env!("CARGO_PKG_VERSION"));

/// Counters for judging how well requests are batched: frames per syscall
/// is the number that matters on loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// `read` calls that returned data.
    pub reads: u64,
    /// `write` calls (a flush may take several for a large buffer).
    pub writes: u64,
    pub frames_sent: u64,
    /// Every frame read, pushes included.
    pub frames_received: u64,
    /// Push frames read (a subset of `frames_received`).
    pub pushes_received: u64,
}

/// What [`Connection::recv`] yields: a request id and that request's outcome.
pub type Reply = (u64, Result<Response, ClientError>);

/// A frame the broker sent on its own (PUSH flag), not in answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Push {
    /// "Is this half message committed?" Sent to connections registered as
    /// the producer group's checker; answer with an `EndTransaction` request
    /// (or not at all, to be asked again later). See `TransactionChecker`.
    TransactionCheck(TransactionCheck),
    /// A push this client cannot decode: an opcode it does not know (a newer
    /// broker) or a payload that does not parse. Frames are self-delimiting,
    /// so the connection stays usable; the caller may log and ignore it.
    Unrecognised { opcode: u16, payload: Bytes, reason: String },
}

/// What [`Connection::recv_event`] yields.
#[derive(Debug)]
pub enum Event {
    /// The answer to a request, as [`Connection::recv`] returns it.
    Reply(Reply),
    /// A frame the broker pushed.
    Push(Push),
}

/// Closes a connection from another thread, waking a blocked
/// [`Connection::recv`] or [`Connection::recv_event`] (which then fails with
/// `Disconnected`). Obtained from [`Connection::closer`].
#[derive(Debug)]
pub struct Closer(TcpStream);

impl Closer {
    /// Shuts the socket down in both directions. Idempotent; errors (the
    /// socket already closed) are ignored.
    pub fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// A single connection, handshake done. Not thread-safe by design: one
/// owner drives it, which is what keeps it allocation- and lock-free.
pub struct Connection {
    stream: Stream,
    peer: SocketAddr,
    handshake: HandshakeOk,
    out: Vec<u8>,
    inbuf: BytesMut,
    /// Reads land here and only the bytes actually read are copied into
    /// `inbuf`; reading straight into `inbuf` would need either `unsafe`
    /// (uninitialised memory) or zeroing a whole chunk per read.
    scratch: Box<[u8]>,
    next_id: u64,
    /// Request id -> opcode of every request sent and not yet answered.
    in_flight: IdMap<u16>,
    /// Pushes read by `recv` while looking for a reply, oldest first.
    pushes: VecDeque<Push>,
    read_timeout: Option<Duration>,
    /// Set after any error that leaves the byte stream in an unknown state.
    broken: bool,
    stats: ConnectionStats,
    /// The last write or read that moved bytes.
    last_io: Instant,
    /// The key this connection authenticated as.
    key_name: Option<String>,
}

impl Connection {
    /// Connects and handshakes, waiting as long as the OS allows.
    /// `shard_hint` asks the broker to serve this connection from that shard.
    pub fn connect(addr: impl ToSocketAddrs, shard_hint: Option<u16>) -> Result<Connection, ClientError> {
        Connection::connect_with_timeout(addr, shard_hint, None)
    }

    /// Connects and handshakes; `timeout` bounds the TCP connect (per
    /// address) and every read and write, and stays set as the read timeout.
    pub fn connect_with_timeout(
        addr: impl ToSocketAddrs,
        shard_hint: Option<u16>,
        timeout: Option<Duration>,
    ) -> Result<Connection, ClientError> {
        let mut conn = Connection::open(addr, timeout, None)?;
        conn.handshake(shard_hint)?;
        Ok(conn)
    }

    /// Connects and handshakes within `within` (the TCP connect per
    /// address, and every read and write of the handshake), then bounds
    /// reads and writes by `timeout`. For trying one node of several: a
    /// stopped node must not hold the caller for its whole timeout.
    pub fn connect_within(
        addr: impl ToSocketAddrs,
        shard_hint: Option<u16>,
        within: Duration,
        timeout: Option<Duration>,
    ) -> Result<Connection, ClientError> {
        Connection::connect_as(addr, shard_hint, within, timeout, None)
    }

    /// [`Connection::connect_within`], authenticating with `credentials`
    /// first (None: anonymously). Fails with `Handshake { code: AUTH_FAILED }`
    /// if the broker refuses the key, and also if the broker cannot prove it
    /// holds the key (it is not the broker the key belongs to).
    pub fn connect_as(
        addr: impl ToSocketAddrs,
        shard_hint: Option<u16>,
        within: Duration,
        timeout: Option<Duration>,
        credentials: Option<&Credentials>,
    ) -> Result<Connection, ClientError> {
        Connection::connect_secure(addr, shard_hint, within, timeout, credentials, None)
    }

    /// [`Connection::connect_as`] over TLS when `tls` is given: the options
    /// and the host name (of the address dialled) to verify the broker's
    /// certificate for. Authentication then binds to the TLS session.
    pub fn connect_secure(
        addr: impl ToSocketAddrs,
        shard_hint: Option<u16>,
        within: Duration,
        timeout: Option<Duration>,
        credentials: Option<&Credentials>,
        tls: Option<(&TlsOptions, &str)>,
    ) -> Result<Connection, ClientError> {
        let mut conn = Connection::open(addr, Some(within), tls)?;
        if let Some(c) = credentials {
            conn.authenticate(c)?;
        }
        conn.handshake(shard_hint)?;
        conn.stream.tcp().set_write_timeout(timeout)?;
        conn.set_read_timeout(timeout)?;
        Ok(conn)
    }

    /// A connected socket, not yet handshaken, with `timeout` on the
    /// connect and on reads and writes.
    fn open(
        addr: impl ToSocketAddrs,
        timeout: Option<Duration>,
        tls: Option<(&TlsOptions, &str)>,
    ) -> Result<Connection, ClientError> {
        let stream = connect_any(addr, timeout)?;
        // Requests are already batched by `flush`; Nagle would only add latency.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        let peer = stream.peer_addr()?;
        let stream = match tls {
            Some((options, host)) => Stream::Tls(options.open(host, stream)?),
            None => Stream::Plain(stream),
        };
        Ok(Connection {
            stream,
            peer,
            handshake: HandshakeOk::default(),
            out: Vec::with_capacity(READ_CHUNK_BYTES),
            inbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scratch: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            next_id: 1,
            in_flight: id_map(IN_FLIGHT_CAPACITY),
            pushes: VecDeque::new(),
            read_timeout: timeout,
            broken: false,
            stats: ConnectionStats::default(),
            last_io: Instant::now(),
            key_name: None,
        })
    }

    /// The challenge-response of PROTOCOL.md, "Authentication": the
    /// SecretKey never leaves this process; the broker's answer must carry
    /// its own MAC over the same transcript.
    fn authenticate(&mut self, c: &Credentials) -> Result<(), ClientError> {
        let failed = |this: &mut Connection, message: String| {
            this.broken = true;
            ClientError::Handshake { code: Some(ErrorCode::AUTH_FAILED), message }
        };
        let server_nonce = match self.ask(Request::AuthChallenge(AuthChallenge {}))? {
            Response::AuthChallenge(ok) if ok.server_nonce.len() == auth::AUTH_NONCE_BYTES => ok.server_nonce,
            other => return Err(failed(self, format!("unexpected answer to AuthChallenge: {other:?}"))),
        };
        let mut client_nonce = [0u8; auth::AUTH_NONCE_BYTES];
        getrandom::fill(&mut client_nonce).map_err(|e| failed(self, format!("no random nonce: {e}")))?;
        let timestamp_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let binding = match &self.stream {
            Stream::Tls(s) => s.channel_binding()?.to_vec(),
            Stream::Plain(_) => Vec::new(),
        };
        let t = auth::transcript(&server_nonce, &client_nonce, &c.secret_id, timestamp_ms, &binding);
        let mac = auth::mac(c.secret_key.as_bytes(), auth::CLIENT_MAC_LABEL, &t);
        let req = Authenticate {
            secret_id: c.secret_id.clone(),
            client_nonce: Bytes::copy_from_slice(&client_nonce),
            timestamp_ms,
            mac: Bytes::copy_from_slice(&mac),
        };
        match self.ask(Request::Authenticate(req))? {
            Response::Authenticate(ok)
                if auth::verify(c.secret_key.as_bytes(), auth::SERVER_MAC_LABEL, &t, &ok.server_mac) =>
            {
                self.key_name = Some(ok.key_name);
                Ok(())
            }
            Response::Authenticate(_) => {
                Err(failed(self, "the broker could not prove it holds this key (wrong server?)".into()))
            }
            other => Err(failed(self, format!("unexpected answer to Authenticate: {}", other.opcode().name()))),
        }
    }

    /// One request before the handshake, and its answer.
    fn ask(&mut self, req: Request) -> Result<Response, ClientError> {
        let id = self.submit(&req);
        let (got, result) = self.recv().map_err(refused_handshake)?;
        let resp = result.map_err(refused_handshake)?;
        if got != id {
            self.broken = true;
            return Err(ClientError::Handshake { code: None, message: format!("answer to request {got}, asked {id}") });
        }
        Ok(resp)
    }

    /// The key this connection authenticated as (None: anonymous).
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    fn handshake(&mut self, shard_hint: Option<u16>) -> Result<(), ClientError> {
        let mut hello = Handshake::new(CLIENT_NAME);
        // This client's sends carry idempotency keys: an older server must
        // refuse the connection, not each send.
        hello.version_min = IDEMPOTENCY_KEYS_VERSION;
        hello.shard_hint = shard_hint;
        if self.key_name.is_some() {
            hello.auth_method = auth::AUTH_METHOD_V1.to_owned();
        }
        let id = self.submit(&Request::Handshake(hello));
        let (got, result) = self.recv().map_err(refused_handshake)?;
        let ok = match result.map_err(refused_handshake)? {
            Response::Handshake(ok) if got == id => ok,
            other => {
                self.broken = true;
                return Err(ClientError::Handshake {
                    code: None,
                    message: format!("expected a Handshake answer, got {}", other.opcode().name()),
                });
            }
        };
        if !(IDEMPOTENCY_KEYS_VERSION..=PROTOCOL_VERSION_MAX).contains(&ok.version) {
            self.broken = true;
            return Err(ClientError::Handshake {
                code: None,
                message: format!(
                    "server chose protocol version {}, this client speaks {IDEMPOTENCY_KEYS_VERSION}..={PROTOCOL_VERSION_MAX}",
                    ok.version
                ),
            });
        }
        self.handshake = ok;
        Ok(())
    }

    /// What the broker said in the handshake.
    pub fn handshake_info(&self) -> &HandshakeOk {
        &self.handshake
    }

    pub fn shard_count(&self) -> u16 {
        self.handshake.shard_count
    }

    /// The shard serving this connection (which may differ from the hint).
    pub fn shard_id(&self) -> u16 {
        self.handshake.shard_id
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Requests submitted and not yet returned by [`Connection::recv`].
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether `request_id` was submitted here and not yet returned by `recv`.
    pub fn is_pending(&self, request_id: u64) -> bool {
        self.in_flight.contains_key(&request_id)
    }

    /// Whether submitted requests are waiting for [`Connection::flush`].
    pub fn has_unflushed(&self) -> bool {
        !self.out.is_empty()
    }

    /// False once an error has left the byte stream unusable; every later
    /// call then fails with `Disconnected`.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn stats(&self) -> ConnectionStats {
        self.stats
    }

    /// Bounds each blocking read; `None` waits forever. A timeout does not
    /// break the connection. Cheap to call repeatedly with the same value.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        if timeout != self.read_timeout {
            self.stream.tcp().set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }

    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    /// Queues `req` for the next flush and returns its request id. Nothing
    /// is written yet; on a broken connection the following flush reports it.
    pub fn submit(&mut self, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        req.encode_frame(id, &mut self.out);
        self.in_flight.insert(id, req.opcode() as u16);
        self.stats.frames_sent += 1;
        id
    }

    /// Writes everything submitted since the last flush, in as few write
    /// calls as the kernel allows.
    ///
    /// Writes block until done. The caller bounds what it has in flight so
    /// that the broker never has to stop reading to finish writing answers
    /// (a few MiB, the socket buffers, is plenty of room).
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]) {
                Ok(0) => return Err(self.fail(ClientError::Disconnected)),
                Ok(n) => {
                    written += n;
                    self.stats.writes += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A half-written frame cannot be taken back: the stream is lost.
                Err(e) => return Err(self.fail(from_io(e))),
            }
        }
        if written > 0 {
            self.last_io = Instant::now();
        }
        self.out.clear();
        if self.out.capacity() > OUT_RETAIN_BYTES_MAX {
            self.out = Vec::with_capacity(READ_CHUNK_BYTES);
        }
        Ok(())
    }

    /// Returns the next response to arrive, with its request id.
    ///
    /// The outer `Err` is about the connection (I/O, timeout, framing, a
    /// response nobody asked for) and carries no request id; the inner
    /// `Result` is the request's own outcome (`ClientError::Server` for an
    /// error frame). Flushes queued requests before blocking, so a forgotten
    /// `flush` cannot deadlock. With nothing in flight and nothing buffered
    /// it fails at once with `InvalidInput` instead of blocking forever.
    ///
    /// Push frames read on the way are queued, never returned here: collect
    /// them with [`Connection::take_pushes`] (or [`Connection::recv_event`]).
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        loop {
            match self.next_frame(false)? {
                Event::Reply(reply) => return Ok(reply),
                Event::Push(push) => self.pushes.push_back(push),
            }
        }
    }

    /// Returns the next reply or push, in arrival order (pushes queued by an
    /// earlier [`Connection::recv`] first). Unlike `recv` it blocks even with
    /// nothing in flight, since a push may come at any time: bound the wait
    /// with [`Connection::set_read_timeout`] (a timeout is not fatal).
    pub fn recv_event(&mut self) -> Result<Event, ClientError> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(Event::Push(push));
        }
        self.next_frame(true)
    }

    /// Whether the broker closed this connection while nothing was in
    /// flight on it (its idle deadline, a restart): checked without
    /// blocking, and only after [`IDLE_CHECK_AFTER`] of silence, so a busy
    /// connection pays nothing. A closed connection is marked broken, so
    /// its owner can reconnect before sending instead of losing the next
    /// request to the closed socket. Pushes that arrived meanwhile are
    /// queued as `recv` would queue them.
    pub fn closed_while_idle(&mut self) -> bool {
        if self.broken {
            return true;
        }
        if !self.in_flight.is_empty() || !self.out.is_empty() || self.last_io.elapsed() < IDLE_CHECK_AFTER {
            return false;
        }
        if self.stream.tcp().set_nonblocking(true).is_err() {
            return false;
        }
        let mut closed = false;
        loop {
            match self.stream.read(&mut self.scratch) {
                Ok(0) => closed = true,
                Ok(n) => {
                    self.inbuf.extend_from_slice(&self.scratch[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => closed = true,
            }
            break;
        }
        if self.stream.tcp().set_nonblocking(false).is_err() {
            closed = true;
        }
        // With nothing in flight the only frames that can have arrived are
        // pushes and an error about the connection sent just before a close.
        while let Ok(Some(total)) = frame::check(&self.inbuf) {
            let (header, payload) = frame::split(&mut self.inbuf, total);
            match self.complete(header, payload) {
                Ok(Event::Push(push)) => self.pushes.push_back(push),
                Ok(Event::Reply(_)) | Err(_) => closed = true,
            }
        }
        if closed {
            let _ = self.fail(ClientError::Disconnected);
        }
        self.last_io = Instant::now();
        closed
    }

    /// Removes and returns the pushes `recv` has queued, oldest first.
    pub fn take_pushes(&mut self) -> Vec<Push> {
        self.pushes.drain(..).collect()
    }

    /// Pushes queued by `recv` and not yet taken.
    pub fn queued_pushes(&self) -> usize {
        self.pushes.len()
    }

    /// A handle that closes this connection from another thread.
    pub fn closer(&self) -> Result<Closer, ClientError> {
        Ok(Closer(self.stream.tcp().try_clone()?))
    }

    /// The next frame, decoded; reads when none is buffered. `idle_ok`: a
    /// read may wait with no request in flight (for a push).
    fn next_frame(&mut self, idle_ok: bool) -> Result<Event, ClientError> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        loop {
            match frame::check(&self.inbuf) {
                Ok(Some(total)) => {
                    let (header, payload) = frame::split(&mut self.inbuf, total);
                    self.stats.frames_received += 1;
                    return self.complete(header, payload);
                }
                Ok(None) => self.fill(idle_ok)?,
                Err(e) => return Err(self.fail(e.into())),
            }
        }
    }

    /// Reads once, appending whatever arrived (often many frames).
    fn fill(&mut self, idle_ok: bool) -> Result<(), ClientError> {
        if !self.out.is_empty() {
            self.flush()?;
        }
        if self.in_flight.is_empty() && !idle_ok {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv() with no request in flight would wait forever",
            )));
        }
        loop {
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(self.fail(ClientError::Disconnected)),
                Ok(n) => {
                    self.stats.reads += 1;
                    self.last_io = Instant::now();
                    self.inbuf.extend_from_slice(&self.scratch[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The OS says "Resource temporarily unavailable (os error 11)";
                // say what actually happened instead.
                Err(e) if is_timeout_kind(e.kind()) => {
                    let waited = self.read_timeout.map_or_else(|| "its timeout".to_owned(), seconds_text);
                    let what = format!("timed out after {waited} waiting for an answer from {}", self.peer);
                    return Err(ClientError::Io(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                Err(e) => return Err(self.fail(from_io(e))),
            }
        }
    }

    fn complete(&mut self, header: FrameHeader, payload: Bytes) -> Result<Event, ClientError> {
        let id = header.request_id;
        if header.is_push() {
            // A push that also claims to be a response cannot be told apart
            // from a reply reliably: the stream is not to be trusted.
            if header.is_response() || header.is_error() {
                return Err(self.fail(ClientError::Protocol(format!(
                    "frame flagged both PUSH and RESPONSE/ERROR (opcode {:#06x}, flags {:#04x})",
                    header.opcode, header.flags
                ))));
            }
            self.stats.pushes_received += 1;
            return Ok(Event::Push(decode_push(header.opcode, payload)));
        }
        if !header.is_response() {
            return Err(self.fail(ClientError::Protocol(format!(
                "server sent a frame without the RESPONSE flag (opcode {:#06x}, request id {id})",
                header.opcode
            ))));
        }
        let Some(asked) = self.in_flight.remove(&id) else {
            // A broker sends an error it cannot pin on a request (too many
            // connections, shutting down) just before closing: surface it.
            let err = match header.is_error().then(|| ErrorBody::decode_payload(payload)) {
                Some(Ok(body)) => ClientError::Server { code: body.code(), message: body.message },
                _ => ClientError::Protocol(format!("response to request id {id}, which is not in flight")),
            };
            return Err(self.fail(err));
        };
        // Error frames are exempt from the opcode check: the body's layout
        // does not depend on it, and a broker that could not decode the
        // request may not know what it was.
        let result = if header.is_error() {
            match ErrorBody::decode_payload(payload) {
                Ok(body) => Err(ClientError::Server { code: body.code(), message: body.message }),
                Err(e) => Err(ClientError::Protocol(format!("undecodable error frame: {e}"))),
            }
        } else if header.opcode != asked {
            Err(ClientError::Protocol(format!(
                "{} request answered with opcode {:#06x}",
                opcode_name(asked),
                header.opcode
            )))
        } else {
            Response::decode(header.opcode, payload)
                .map_err(|e| ClientError::Protocol(format!("undecodable {} response: {e}", opcode_name(asked))))
        };
        Ok(Event::Reply((id, result)))
    }

    fn fail(&mut self, err: ClientError) -> ClientError {
        self.broken = true;
        // Closing now tells the broker at once instead of when we are dropped.
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
        err
    }
}

/// The connection's byte stream: the socket, or a TLS session over it.
enum Stream {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.tcp(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            // A broker closing without close_notify (after an error frame,
            // a deleted key) is a close, as on a plaintext connection.
            Stream::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("shard_id", &self.handshake.shard_id)
            .field("shard_count", &self.handshake.shard_count)
            .field("in_flight", &self.in_flight.len())
            .field("queued_pushes", &self.pushes.len())
            .field("broken", &self.broken)
            .finish()
    }
}

fn connect_any(addr: impl ToSocketAddrs, timeout: Option<Duration>) -> Result<TcpStream, ClientError> {
    let Some(timeout) = timeout else {
        return Ok(TcpStream::connect(addr)?);
    };
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) if is_timeout_kind(e.kind()) => {
                let what = format!("timed out after {} connecting to {a}", seconds_text(timeout));
                last = Some(io::Error::new(io::ErrorKind::TimedOut, what));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ClientError::Io(
        last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing")),
    ))
}

/// A timeout for people: whole seconds as "5 s", anything finer in ms.
pub(crate) fn seconds_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A server error during the handshake is a refused handshake; I/O errors
/// stay what they are so callers can still tell "refused" from "unreachable".
fn refused_handshake(e: ClientError) -> ClientError {
    match e {
        ClientError::Server { code, message } => ClientError::Handshake { code: Some(code), message },
        ClientError::Protocol(message) => ClientError::Handshake { code: None, message },
        other => other,
    }
}

fn decode_push(opcode: u16, payload: Bytes) -> Push {
    let unrecognised = |payload, reason| Push::Unrecognised { opcode, payload, reason };
    match Opcode::from_u16(opcode) {
        Some(Opcode::TransactionCheck) => match Request::decode(opcode, payload.clone()) {
            Ok(Request::TransactionCheck(check)) => Push::TransactionCheck(check),
            Ok(other) => unrecognised(payload, format!("decoded as {}", other.opcode().name())),
            Err(e) => unrecognised(payload, format!("undecodable TransactionCheck: {e}")),
        },
        Some(op) => unrecognised(payload, format!("{} is not an operation the broker pushes", op.name())),
        None => unrecognised(payload, format!("unknown opcode {opcode:#06x}")),
    }
}

fn opcode_name(op: u16) -> &'static str {
    Opcode::from_u16(op).map_or("unknown", Opcode::name)
}
