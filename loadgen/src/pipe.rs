//! `RawPipe`: one pipelined connection on a non-blocking socket, driven by
//! the event loop in `driver.rs` (which owns many of them per thread).
//!
//! Requests are encoded into an outgoing buffer by `submit` and written by
//! `write_some` as far as the socket takes them; `read_some` appends what the
//! socket holds and `take_frame` decodes one whole answer at a time. Nothing
//! here blocks except `next`, which waits with a nanosecond-precise deadline
//! (`ppoll`) and is used for the handshake before a connection joins a loop.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cmq_client::{ClientError, Reply};
use cmq_protocol::frame;
use cmq_protocol::handshake::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use cmq_protocol::{ErrorBody, Handshake, HandshakeOk, Opcode, Request, Response};

use crate::transport::Transport;

/// Bytes read per syscall: a full window of answers fits in one read.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// An outgoing buffer that grew past this (a burst of large batches) is
/// released once written instead of pinning that memory.
const OUT_RETAIN_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The key every pipe authenticates with (set once by `main`; none: anonymous).
static CREDENTIALS: std::sync::OnceLock<cmq_client::Credentials> = std::sync::OnceLock::new();

pub fn use_credentials(c: cmq_client::Credentials) {
    let _ = CREDENTIALS.set(c);
}

/// TLS settings of every pipe (set once by `main`; none: plaintext).
static TLS: std::sync::OnceLock<cmq_client::TlsOptions> = std::sync::OnceLock::new();

pub fn use_tls(t: cmq_client::TlsOptions) {
    let _ = TLS.set(t);
}

/// A non-blocking pipelined connection.
pub struct RawPipe {
    stream: Transport,
    peer: SocketAddr,
    /// What the node said in the handshake (its id and cluster map).
    hello: HandshakeOk,
    out: Vec<u8>,
    inbuf: BytesMut,
    scratch: Box<[u8]>,
    next_id: u64,
    /// (request id, opcode) of every request in flight; a window is small.
    in_flight: Vec<(u64, u16)>,
    broken: bool,
}

impl RawPipe {
    /// Connects to the first of `addrs` that answers, asking for `shard`;
    /// each address gets `within` for the connect and the handshake.
    pub fn connect_first(addrs: &[String], shard: u16, within: Duration) -> Result<RawPipe, ClientError> {
        let mut last = None;
        for addr in addrs {
            let resolved = match addr.to_socket_addrs() {
                Ok(r) => r,
                Err(e) => {
                    last = Some(ClientError::Io(e));
                    continue;
                }
            };
            for a in resolved {
                match RawPipe::connect(a, addr, shard, within) {
                    Ok(pipe) => return Ok(pipe),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last
            .unwrap_or_else(|| ClientError::Io(io::Error::new(io::ErrorKind::NotFound, "no address to connect to"))))
    }

    /// A pipe over a connected stream, before any handshake.
    pub(crate) fn over(stream: Transport, peer: SocketAddr) -> io::Result<RawPipe> {
        stream.socket().set_nonblocking(true)?;
        Ok(RawPipe {
            stream,
            peer,
            hello: HandshakeOk::default(),
            out: Vec::with_capacity(READ_CHUNK_BYTES),
            inbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scratch: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            next_id: 1,
            in_flight: Vec::with_capacity(1024),
            broken: false,
        })
    }

    /// Connects and handshakes (blocking, up to `within`), asking for
    /// `shard`; over TLS (`--tls`) the broker's certificate is checked for
    /// the host of `addr`.
    pub fn connect(server: SocketAddr, addr: &str, shard: u16, within: Duration) -> Result<RawPipe, ClientError> {
        let tcp = TcpStream::connect_timeout(&server, within)?;
        tcp.set_nodelay(true)?;
        let stream = match TLS.get() {
            Some(tls) => {
                tcp.set_read_timeout(Some(within))?;
                tcp.set_write_timeout(Some(within))?;
                Transport::Tls(Box::new(tls.handshake(addr, tcp)?))
            }
            None => Transport::Plain(tcp),
        };
        let mut pipe = RawPipe::over(stream, server)?;
        let deadline = Instant::now() + within;
        let mut hello = Handshake::new(cmq_client::CLIENT_NAME);
        hello.shard_hint = Some(shard);
        if let Some(c) = CREDENTIALS.get() {
            pipe.authenticate(c, deadline)?;
            hello.auth_method = cmq_protocol::auth::AUTH_METHOD_V1.to_owned();
        }
        let id = pipe.submit(&Request::Handshake(hello));
        loop {
            match pipe.next(deadline)? {
                Some((got, Ok(Response::Handshake(ok)))) if got == id => {
                    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&ok.version) {
                        return Err(ClientError::Handshake {
                            code: None,
                            message: format!("server chose protocol version {}", ok.version),
                        });
                    }
                    pipe.hello = ok;
                    return Ok(pipe);
                }
                Some((_, Err(ClientError::Server { code, message }))) => {
                    return Err(ClientError::Handshake { code: Some(code), message })
                }
                Some(_) => {
                    return Err(ClientError::Handshake { code: None, message: "unexpected handshake answer".into() })
                }
                None if Instant::now() >= deadline => {
                    return Err(ClientError::Io(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")))
                }
                None => {}
            }
        }
    }

    /// The challenge-response of PROTOCOL.md §4 "Authentication", checking the broker's proof.
    fn authenticate(&mut self, c: &cmq_client::Credentials, deadline: Instant) -> Result<(), ClientError> {
        use cmq_protocol::auth;
        let refused =
            |message: String| ClientError::Handshake { code: Some(cmq_protocol::ErrorCode::AUTH_FAILED), message };
        let server_nonce = match self.ask(Request::AuthChallenge(cmq_protocol::AuthChallenge {}), deadline)? {
            Response::AuthChallenge(ok) => ok.server_nonce,
            other => return Err(refused(format!("AuthChallenge answered {}", other.opcode().name()))),
        };
        let mut client_nonce = [0u8; auth::AUTH_NONCE_BYTES];
        getrandom::fill(&mut client_nonce).map_err(|e| refused(format!("no random nonce: {e}")))?;
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let binding = self.stream.channel_binding()?;
        let t = auth::transcript(&server_nonce, &client_nonce, &c.secret_id, ts, &binding);
        let mac = auth::mac(c.secret_key.as_bytes(), auth::CLIENT_MAC_LABEL, &t);
        let req = cmq_protocol::Authenticate {
            secret_id: c.secret_id.clone(),
            client_nonce: bytes::Bytes::copy_from_slice(&client_nonce),
            timestamp_ms: ts,
            mac: bytes::Bytes::copy_from_slice(&mac),
        };
        match self.ask(Request::Authenticate(req), deadline)? {
            Response::Authenticate(ok)
                if auth::verify(c.secret_key.as_bytes(), auth::SERVER_MAC_LABEL, &t, &ok.server_mac) =>
            {
                Ok(())
            }
            _ => Err(refused("the broker could not prove it holds this key".into())),
        }
    }

    /// One request before the handshake, and its answer (blocking up to `deadline`).
    fn ask(&mut self, req: Request, deadline: Instant) -> Result<Response, ClientError> {
        let id = self.submit(&req);
        loop {
            match self.next(deadline)? {
                Some((got, Ok(resp))) if got == id => return Ok(resp),
                Some((_, Err(ClientError::Server { code, message }))) => {
                    return Err(ClientError::Handshake { code: Some(code), message })
                }
                Some(_) => return Err(ClientError::Handshake { code: None, message: "unexpected answer".into() }),
                None if Instant::now() >= deadline => {
                    return Err(ClientError::Io(io::Error::new(io::ErrorKind::TimedOut, "authentication timed out")))
                }
                None => {}
            }
        }
    }

    /// The node this pipe reached (0 for a broker that gives no id).
    pub fn node(&self) -> u64 {
        self.hello.cluster.node_id
    }

    /// The cluster map the node sent in the handshake.
    pub fn cluster(&self) -> &cmq_protocol::ClusterMap {
        &self.hello.cluster
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Queues a request; it goes out with the next `write_some`.
    pub fn submit(&mut self, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        req.encode_frame(id, &mut self.out);
        self.in_flight.push((id, req.opcode() as u16));
        id
    }

    /// Requests submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether submitted bytes are still waiting to be written.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() || self.stream.wants_write()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.socket().as_fd()
    }

    fn fail(&mut self, e: ClientError) -> ClientError {
        self.broken = true;
        let _ = self.stream.socket().shutdown(std::net::Shutdown::Both);
        e
    }

    /// Writes as much of what was submitted as the socket takes without blocking.
    pub fn write_some(&mut self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        let written = match self.stream.write_some(&self.out) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WriteZero => return Err(self.fail(ClientError::Disconnected)),
            Err(e) => return Err(self.fail(disconnected(e))),
        };
        if written == self.out.len() {
            self.out.clear();
            if self.out.capacity() > OUT_RETAIN_BYTES_MAX {
                self.out = Vec::with_capacity(READ_CHUNK_BYTES);
            }
        } else {
            self.out.drain(..written);
        }
        Ok(())
    }

    /// Reads once whatever is there without blocking; false if nothing was.
    pub fn read_some(&mut self) -> Result<bool, ClientError> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        loop {
            match self.stream.read_some(&mut self.scratch) {
                Ok(0) => return Err(self.fail(ClientError::Disconnected)),
                Ok(n) => {
                    self.inbuf.extend_from_slice(&self.scratch[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(self.fail(disconnected(e))),
            }
        }
    }

    /// A buffered whole answer, decoded, if there is one. The outer error is
    /// about the connection (framing, an answer nobody asked for) and breaks
    /// it; the inner result is the request's own outcome.
    pub fn take_frame(&mut self) -> Result<Option<Reply>, ClientError> {
        let total = match frame::check(&self.inbuf) {
            Ok(Some(total)) => total,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(ClientError::Protocol(e.to_string()))),
        };
        let (header, payload) = frame::split(&mut self.inbuf, total);
        let id = header.request_id;
        let Some(pos) = self.in_flight.iter().position(|&(i, _)| i == id) else {
            return Err(self.fail(ClientError::Protocol(format!("answer to request {id}, which is not in flight"))));
        };
        let (_, asked) = self.in_flight.swap_remove(pos);
        let result = if header.is_error() {
            match ErrorBody::decode_payload(payload) {
                Ok(body) => Err(ClientError::Server { code: body.code(), message: body.message }),
                Err(e) => Err(ClientError::Protocol(format!("undecodable error frame: {e}"))),
            }
        } else if header.opcode != asked {
            Err(ClientError::Protocol(format!("request with opcode {asked:#06x} answered with {:#06x}", header.opcode)))
        } else {
            Response::decode(header.opcode, payload).map_err(|e| {
                let name = Opcode::from_u16(asked).map_or("unknown", Opcode::name);
                ClientError::Protocol(format!("undecodable {name} answer: {e}"))
            })
        };
        Ok(Some((id, result)))
    }

    /// The next answer, waiting until `deadline` at most; `Ok(None)` when
    /// the wait ended without one. Writes everything submitted first.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<Reply>, ClientError> {
        loop {
            if let Some(reply) = self.take_frame()? {
                return Ok(Some(reply));
            }
            if self.wants_write() {
                self.write_some()?;
            }
            if self.read_some()? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut flags = rustix::event::PollFlags::IN;
            if self.wants_write() {
                flags |= rustix::event::PollFlags::OUT;
            }
            let mut fds = [rustix::event::PollFd::from_borrowed_fd(self.stream.socket().as_fd(), flags)];
            match rustix::event::poll(&mut fds, Some(&timespec(deadline - now))) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.fail(ClientError::Io(e.into()))),
            }
        }
    }
}

pub fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ }
}

fn disconnected(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            ClientError::Disconnected
        }
        _ => ClientError::Io(e),
    }
}
