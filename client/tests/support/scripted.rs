//! A scripted server on 127.0.0.1:0 for tests that need a broker to
//! misbehave (garbage frames, answers out of order or never, a close in the
//! middle of a frame, a handshake refused): real sockets, one thread per
//! connection, each driven by the test's script. Everything about queue
//! semantics is tested against the real cmqd instead.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame;
use cmq_protocol::*;

/// How long a server thread waits on a silent client before giving up, so a
/// broken test fails instead of hanging.
pub const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ScriptedServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Serves every accepted connection on its own thread with `script`.
    pub fn start(script: impl Fn(Peer) + Send + Sync + 'static) -> ScriptedServer {
        ScriptedServer::start_on(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"), script)
    }

    /// As [`ScriptedServer::start`], on a listener the test bound itself.
    pub fn start_on(listener: TcpListener, script: impl Fn(Peer) + Send + Sync + 'static) -> ScriptedServer {
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let acceptor = {
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let script = script.clone();
                    thread::spawn(move || script(Peer::new(stream)));
                }
            })
        };
        ScriptedServer { addr, stop, acceptor: Some(acceptor) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor out of accept() so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// The server side of one connection.
pub struct Peer {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        stream.set_read_timeout(Some(SERVER_READ_TIMEOUT)).expect("set timeout");
        stream.set_nodelay(true).expect("nodelay");
        Peer { stream, buf: BytesMut::new() }
    }

    /// The next request, or None when the client closed the connection.
    pub fn read_request(&mut self) -> Option<(u64, Request)> {
        let (id, _, req) = self.read_frame()?;
        Some((id, req.expect("client sent a decodable request")))
    }

    /// The next frame's request id, opcode and decoded request (or why it
    /// does not decode, which a broker answers like any refusal), or None
    /// when the client closed the connection.
    pub fn read_frame(&mut self) -> Option<(u64, u16, Result<Request, DecodeError>)> {
        loop {
            if let Some(total) = frame::check(&self.buf).expect("client sent a valid length") {
                let (header, payload) = frame::split(&mut self.buf, total);
                return Some((header.request_id, header.opcode, Request::decode(header.opcode, payload)));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads the handshake and accepts it; returns what the client sent.
    pub fn accept_handshake(&mut self, shard_count: u16, shard_id: u16) -> Handshake {
        self.accept_handshake_in(shard_count, shard_id, ClusterMap::default())
    }

    /// As [`Peer::accept_handshake`], answering as a node of `cluster`.
    pub fn accept_handshake_in(&mut self, shard_count: u16, shard_id: u16, cluster: ClusterMap) -> Handshake {
        let (id, req) = self.read_request().expect("a handshake");
        let Request::Handshake(hello) = req else { panic!("first frame was {:?}", req.opcode()) };
        let ok = HandshakeOk {
            version: cmq_protocol::handshake::PROTOCOL_VERSION_MAX,
            server: "fake-cmqd/0".into(),
            shard_count,
            shard_id,
            frame_bytes_max: limits::FRAME_BYTES_MAX,
            cluster,
        };
        self.respond(id, &Response::Handshake(ok));
        hello
    }

    pub fn respond(&mut self, id: u64, resp: &Response) {
        let mut out = Vec::new();
        resp.encode_frame(id, &mut out);
        self.write_raw(&out);
    }

    pub fn respond_error(&mut self, id: u64, opcode: Opcode, code: ErrorCode, message: &str) {
        let mut out = Vec::new();
        ErrorBody::new(code, message).encode_frame(opcode as u16, id, &mut out);
        self.write_raw(&out);
    }

    /// Sends `req` as a PUSH frame (request id 0).
    pub fn push(&mut self, req: &Request) {
        self.write_raw(&push_frame(req));
    }

    /// Best effort: the client may already have gone, which some tests intend.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }
}

/// A response frame as bytes, for tests that batch or cut frames.
pub fn response_frame(id: u64, resp: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    resp.encode_frame(id, &mut out);
    out
}

/// A push frame as bytes.
pub fn push_frame(req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode_push(&mut out);
    out
}

/// A TransactionCheck push for `msg_id`.
pub fn check(queue: &str, msg_id: u64, group: &str) -> Request {
    Request::TransactionCheck(TransactionCheck {
        queue: queue.into(),
        msg_id,
        producer_group: group.into(),
        check_count: 1,
        enqueue_time_ms: 1_700_000_000_000,
        body: Bytes::from_static(b"half"),
    })
}

/// A server that reads the handshake and never answers (not a cmqd, or a
/// hung one) until the returned sender is dropped.
pub fn silent_server() -> (ScriptedServer, Sender<()>) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let server = ScriptedServer::start(move |mut peer| {
        peer.read_request();
        let _ = release_rx.lock().expect("lock").recv();
    });
    (server, release_tx)
}
