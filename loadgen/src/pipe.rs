//! A pipelined request stream: the client library's `Connection`, or (for
//! open-loop producers) `RawPipe`, a non-blocking socket that can wait for
//! answers until a precise deadline.
//!
//! Why two: `Connection` waits in a blocking `read` bounded by SO_RCVTIMEO,
//! which Linux rounds up to whole scheduler ticks — measured here, any
//! timeout below a few ms became 8 ms. An open-loop producer must wake at
//! each request's due time, so it polls a non-blocking socket with `ppoll`
//! (nanosecond timeout) instead. Closed-loop threads only need a coarse
//! timeout (to notice the end of the run) and use `Connection`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cmq_client::{ClientError, Connection, Reply};
use cmq_protocol::frame;
use cmq_protocol::handshake::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use cmq_protocol::{ErrorBody, Handshake, Opcode, Request, Response};

/// How long a closed-loop thread blocks in one read before it looks at the
/// run's phase again (the kernel rounds this up to its tick).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes read per syscall: a full window of answers fits in one read.
const READ_CHUNK_BYTES: usize = 256 * 1024;

pub trait Pipe {
    /// Queues a request; it goes out with the next flush or wait.
    fn submit(&mut self, req: &Request) -> u64;
    /// Requests submitted and not yet answered.
    fn in_flight(&self) -> usize;
    /// The next answer, waiting until `deadline` at most (`None`: the pipe's
    /// own polling interval). `Ok(None)` when the wait ended without one.
    /// Sends everything submitted before blocking.
    fn next(&mut self, deadline: Option<Instant>) -> Result<Option<Reply>, ClientError>;
}

impl Pipe for Connection {
    fn submit(&mut self, req: &Request) -> u64 {
        Connection::submit(self, req)
    }

    fn in_flight(&self) -> usize {
        Connection::in_flight(self)
    }

    fn next(&mut self, _deadline: Option<Instant>) -> Result<Option<Reply>, ClientError> {
        if Connection::in_flight(self) == 0 {
            return Ok(None);
        }
        match self.recv() {
            Ok(reply) => Ok(Some(reply)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Opens a client-library connection for a closed-loop thread.
pub fn connect(server: SocketAddr, shard: u16) -> Result<Connection, ClientError> {
    let mut conn = Connection::connect_with_timeout(server, Some(shard), Some(Duration::from_secs(10)))?;
    conn.set_read_timeout(Some(POLL_INTERVAL))?;
    Ok(conn)
}

/// A non-blocking pipelined connection with deadline-precise waits.
pub struct RawPipe {
    stream: TcpStream,
    out: Vec<u8>,
    inbuf: BytesMut,
    scratch: Box<[u8]>,
    next_id: u64,
    /// (request id, opcode) of every request in flight; a window is small.
    in_flight: Vec<(u64, u16)>,
    broken: bool,
}

impl RawPipe {
    pub fn connect(server: SocketAddr, shard: u16) -> Result<RawPipe, ClientError> {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut pipe = RawPipe {
            stream,
            out: Vec::with_capacity(READ_CHUNK_BYTES),
            inbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scratch: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            next_id: 1,
            in_flight: Vec::with_capacity(1024),
            broken: false,
        };
        let mut hello = Handshake::new(cmq_client::CLIENT_NAME);
        hello.shard_hint = Some(shard);
        let id = pipe.submit(&Request::Handshake(hello));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match pipe.next(Some(deadline))? {
                Some((got, Ok(Response::Handshake(ok)))) if got == id => {
                    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&ok.version) {
                        return Err(ClientError::Handshake {
                            code: None,
                            message: format!("server chose protocol version {}", ok.version),
                        });
                    }
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

    fn fail(&mut self, e: ClientError) -> ClientError {
        self.broken = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        e
    }

    /// Writes as much of `out` as the socket takes without blocking.
    fn write_some(&mut self) -> Result<(), ClientError> {
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]) {
                Ok(0) => return Err(self.fail(ClientError::Disconnected)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.fail(disconnected(e))),
            }
        }
        self.out.drain(..written);
        Ok(())
    }

    /// Reads whatever is there without blocking; false if nothing was.
    fn read_some(&mut self) -> Result<bool, ClientError> {
        loop {
            match self.stream.read(&mut self.scratch) {
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

    /// A buffered whole frame, decoded, if there is one.
    fn take_frame(&mut self) -> Result<Option<Reply>, ClientError> {
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
}

impl Pipe for RawPipe {
    fn submit(&mut self, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        req.encode_frame(id, &mut self.out);
        self.in_flight.push((id, req.opcode() as u16));
        id
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn next(&mut self, deadline: Option<Instant>) -> Result<Option<Reply>, ClientError> {
        if self.broken {
            return Err(ClientError::Disconnected);
        }
        let deadline = deadline.unwrap_or_else(|| Instant::now() + POLL_INTERVAL);
        loop {
            if let Some(reply) = self.take_frame()? {
                return Ok(Some(reply));
            }
            if !self.out.is_empty() {
                self.write_some()?;
            }
            if self.read_some()? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = deadline - now;
            let timeout = rustix::event::Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos() as _ };
            let mut flags = rustix::event::PollFlags::IN;
            if !self.out.is_empty() {
                flags |= rustix::event::PollFlags::OUT;
            }
            let mut fds = [rustix::event::PollFd::from_borrowed_fd(self.stream.as_fd(), flags)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(self.fail(ClientError::Io(e.into()))),
            }
        }
    }
}

fn disconnected(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            ClientError::Disconnected
        }
        _ => ClientError::Io(e),
    }
}
