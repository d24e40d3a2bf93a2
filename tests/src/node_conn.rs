//! A protocol connection to one node of a cluster that never panics: a
//! node that was killed, paused or partitioned away shows up as an
//! `io::Error` (closed, timed out), which the cluster harness and the load
//! clients turn into "outcome unknown" instead of a failed test.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame::{self, FrameHeader};
use cmq_protocol::{ErrorBody, Handshake, HandshakeOk, Request, Response};

use crate::raw::Reply;

/// How long connecting and the handshake may take together (a paused node
/// accepts the TCP connection in the kernel but never answers).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a write may block (a paused node stops reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket: plaintext, or TLS to a node whose client port serves it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
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

pub struct NodeConn {
    stream: Stream,
    buf: BytesMut,
    next_id: u64,
}

impl NodeConn {
    /// Connects and completes the handshake, optionally asking for `shard`'s
    /// event loop (saves the hop between shards inside the node).
    pub fn open(addr: SocketAddr, shard_hint: Option<u16>) -> io::Result<(NodeConn, HandshakeOk)> {
        NodeConn::open_with(addr, shard_hint, None)
    }

    /// [`NodeConn::open`] over TLS with `tls` where given (the node's
    /// certificate checked for the address's IP).
    pub fn open_with(
        addr: SocketAddr,
        shard_hint: Option<u16>,
        tls: Option<&Arc<ClientConfig>>,
    ) -> io::Result<(NodeConn, HandshakeOk)> {
        let deadline = Instant::now() + OPEN_TIMEOUT;
        let tcp = TcpStream::connect_timeout(&addr, OPEN_TIMEOUT)?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                // The TLS handshake's reads are bounded like the rest of the opening.
                tcp.set_read_timeout(Some(OPEN_TIMEOUT))?;
                let name = ServerName::IpAddress(addr.ip().into());
                let mut conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
                let mut tcp = tcp;
                while conn.is_handshaking() {
                    conn.complete_io(&mut tcp)?;
                }
                Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
            }
        };
        let mut c = NodeConn { stream, buf: BytesMut::new(), next_id: 1 };
        let hs = Handshake { shard_hint, ..Handshake::new("cluster-test") };
        match c.call_until(&Request::Handshake(hs), deadline)? {
            Reply::Ok(_, Response::Handshake(ok)) => Ok((c, ok)),
            other => Err(io::Error::other(format!("handshake refused: {other:?}"))),
        }
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, req: &Request) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        req.encode_frame(id, &mut out);
        self.stream.write_all(&out)?;
        Ok(id)
    }

    /// The next reply, waiting until `deadline` at most.
    pub fn read(&mut self, deadline: Instant) -> io::Result<Reply> {
        loop {
            if let Some(reply) = self.take_frame()? {
                return Ok(reply);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply before the deadline"));
            }
            self.stream.tcp().set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the node closed the connection")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply before the deadline"))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `req` and reads until its reply (others are dropped).
    pub fn call(&mut self, req: &Request, timeout: Duration) -> io::Result<Reply> {
        self.call_until(req, Instant::now() + timeout)
    }

    fn call_until(&mut self, req: &Request, deadline: Instant) -> io::Result<Reply> {
        let id = self.send(req)?;
        loop {
            let r = self.read(deadline)?;
            if r.id() == id {
                return Ok(r);
            }
        }
    }

    fn take_frame(&mut self) -> io::Result<Option<Reply>> {
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let Some(total) = frame::check(&self.buf).map_err(|e| bad(format!("bad frame from the node: {e:?}")))? else {
            return Ok(None);
        };
        let (h, payload): (FrameHeader, Bytes) = frame::split(&mut self.buf, total);
        if !h.is_response() {
            return Err(bad("the node sent a request frame".into()));
        }
        let reply = if h.is_error() {
            Reply::Err(h.request_id, ErrorBody::decode_payload(payload).map_err(|e| bad(format!("{e:?}")))?)
        } else {
            Reply::Ok(h.request_id, Response::decode(h.opcode, payload).map_err(|e| bad(format!("{e:?}")))?)
        };
        Ok(Some(reply))
    }
}
