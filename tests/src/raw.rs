//! A bare protocol connection: frames in, frames out, nothing hidden.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame::{self, FrameHeader};
use cmq_protocol::{ErrorBody, ErrorCode, Handshake, Request, Response};

/// How long a test waits for a response before failing (no test waits on a timer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
}

/// A decoded response frame.
#[derive(Debug)]
// Test harness: replies are short-lived; boxing would only add noise at every use.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Ok(u64, Response),
    Err(u64, ErrorBody),
}

impl Reply {
    pub fn id(&self) -> u64 {
        match self {
            Reply::Ok(id, _) | Reply::Err(id, _) => *id,
        }
    }
    pub fn code(&self) -> ErrorCode {
        match self {
            Reply::Ok(..) => ErrorCode(0),
            Reply::Err(_, e) => e.code(),
        }
    }
    pub fn ok(self) -> Response {
        match self {
            Reply::Ok(_, r) => r,
            Reply::Err(id, e) => panic!("request {id} failed: {:?} {}", e.code(), e.message),
        }
    }
}

impl RawConn {
    /// Connects without a handshake.
    pub fn connect(addr: SocketAddr) -> RawConn {
        RawConn::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// Wraps a connected socket (no handshake).
    pub fn from_stream(stream: TcpStream) -> RawConn {
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn { stream, buf: BytesMut::new(), next_id: 1 }
    }

    /// Connects and completes the handshake.
    pub fn open(addr: SocketAddr) -> RawConn {
        let mut c = RawConn::connect(addr);
        c.call(Request::Handshake(Handshake::new("raw-test"))).ok();
        c
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        req.encode_frame(id, &mut out);
        self.write_raw(&out);
        id
    }

    /// Reads the next response frame; None when the server closed the connection.
    pub fn read(&mut self) -> Option<Reply> {
        loop {
            if let Some(total) = frame::check(&self.buf).expect("server frames are valid") {
                let (h, payload): (FrameHeader, Bytes) = frame::split(&mut self.buf, total);
                assert!(h.is_response(), "server sent a request frame");
                return Some(if h.is_error() {
                    Reply::Err(h.request_id, ErrorBody::decode_payload(payload).expect("error body"))
                } else {
                    Reply::Ok(h.request_id, Response::decode(h.opcode, payload).expect("response decodes"))
                });
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    panic!("cmqd sent nothing and did not close the connection within {READ_TIMEOUT:?}")
                }
                Err(e) => panic!("read from cmqd: {e}"),
            }
        }
    }

    /// Sends a request and reads responses until its own arrives.
    pub fn call(&mut self, req: Request) -> Reply {
        let id = self.send(&req);
        loop {
            let r = self.read().expect("connection closed while waiting for a response");
            if r.id() == id {
                return r;
            }
        }
    }
}
