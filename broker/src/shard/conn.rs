//! One client connection: buffers, reading frames, writing what may be
//! released, back-pressure, and the deadlines it is subject to.

use std::io::{self, Write};

use bytes::BytesMut;
use cmq_protocol::limits::SHARDS_MAX;
use mio::net::TcpStream;

use super::release::{HoldQueue, Need, Progress};
use crate::tls::transport::Filled;

/// Read buffer growth step: one read syscall can bring in this many bytes of
/// frames (many pipelined requests per syscall). A frame up to this size is
/// read into the connection's base buffer; a larger one grows the buffer
/// with what arrives (at most doubling it per step), each step charged to the
/// buffer budget first.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Words of a bitset with one bit per possible shard.
const SHARD_BITSET_WORDS: usize = SHARDS_MAX.div_ceil(64);

/// Unwritten response bytes above which the connection stops reading
/// requests: a client that does not read its responses cannot make the
/// broker buffer without bound. It resumes once back at or below it
/// (checked before each request frame, so answers to requests already read
/// may go past it).
pub const OUT_BYTES_HIGH: usize = 4 * 1024 * 1024;

/// Unsent output one connection may hold at all. Requests already in flight
/// (long polls, requests forwarded to other shards) can still add answers
/// after reading stopped at [`OUT_BYTES_HIGH`]; past this bound the broker
/// drops the connection's further answers and closes it as a slow consumer
/// (what NATS calls `max_pending`, 64 MiB there too). Four maximum-size
/// responses.
pub const CONN_OUT_BYTES_MAX: usize = 4 * cmq_protocol::limits::FRAME_BYTES_MAX as usize;

/// An output buffer that grew past this is given back once it drains, so a
/// burst of large answers does not pin its memory for the connection's life.
pub const OUT_RETAIN_BYTES_MAX: usize = 1024 * 1024;

/// Read syscalls one connection gets per loop turn before the others have
/// their turn (each brings up to READ_CHUNK_BYTES of frames).
pub const READS_PER_TURN_MAX: u32 = 4;

/// Requests one connection may have in flight (accepted, not yet answered:
/// forwarded, long-polling, or waiting for a flush). Past this the connection
/// stops reading until answers go out.
pub const CONN_IN_FLIGHT_MAX: usize = 4096;

const _: () = assert!(cmq_protocol::limits::HANDSHAKE_FRAME_BYTES_MAX as usize <= READ_CHUNK_BYTES);
const _: () = assert!(OUT_BYTES_HIGH < CONN_OUT_BYTES_MAX);

/// The deadlines a connection is held to (milliseconds; `idle_ms` 0 = none).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub handshake_ms: u64,
    pub idle_ms: u64,
    pub frame_ms: u64,
}

/// Which deadline a connection missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No handshake within `handshake_ms` of being accepted.
    Handshake,
    /// A request frame still incomplete `frame_ms` after its first byte.
    Frame,
    /// Output the client could take but does not: no write progress for `frame_ms`.
    Output,
    /// Nothing in flight, nothing unsent, for `idle_ms`.
    Idle,
}

/// How the next read gets its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRoom {
    /// The base buffer (one read chunk) is enough: reserve it if needed.
    Chunk,
    /// The spare capacity already holds the rest of the frame, or a read chunk of it.
    Ready,
    /// A frame larger than a read chunk is being assembled: grow the buffer
    /// to this capacity (charged to the budget first).
    Grow(usize),
}

pub struct Conn {
    pub stream: TcpStream,
    pub gen: u32,
    pub rbuf: BytesMut,
    pub out: Vec<u8>,
    /// Bytes at the front of `out` already written to the socket.
    pub written: usize,
    /// Bytes at the front of `out` that may be written (what they depend on
    /// is safe in the log).
    pub releasable: usize,
    /// Ends (in `out`) of output waiting for the log, oldest first.
    pub holds: HoldQueue<usize>,
    /// On the shard's list of connections with holds.
    pub waiting: bool,
    pub handshaken: bool,
    pub in_flight: usize,
    /// The socket may hold unread bytes (readiness is edge-triggered).
    pub read_pending: bool,
    /// Close once everything releasable is written.
    pub closing: bool,
    /// Peer shards this connection forwarded requests to (bit per shard),
    /// told when the connection closes so they drop its long polls.
    pub forwarded_to: [u64; SHARD_BITSET_WORDS],
    /// The last loop turn that appended output (dedupes the turn's touched list).
    pub touched_turn: u64,
    /// The peer closed its side (seen in a readiness event): read to the end.
    pub peer_closed: bool,
    /// Read syscalls this connection made in `reads_turn` (fairness between connections).
    pub reads: u32,
    pub reads_turn: u64,
    /// Registered as a transaction checker (its close is announced to every shard).
    pub checker: bool,
    /// Times on the shard's monotonic connection clock (ms): accepted; last
    /// read, answer or write progress; last write progress (or caught up).
    pub accepted_ms: u64,
    pub active_ms: u64,
    pub wrote_ms: u64,
    /// When the incomplete frame at the front of `rbuf` began (0: none).
    pub partial_since_ms: u64,
    /// Bytes of `rbuf` and `out` capacity charged to the buffer budget.
    pub charged: usize,
    /// Waiting for the buffer budget before reading more of a large frame.
    pub starved: bool,
    /// Over [`CONN_OUT_BYTES_MAX`]: further answers are dropped and the
    /// connection is closed at the end of the turn.
    pub shed: bool,
    /// Slot time of this connection's earliest entry in the shard's timer wheel.
    pub timer_at: u64,
    /// An AuthChallenge was answered (one per connection).
    pub auth_challenged: bool,
    /// The server nonce of that challenge, until an Authenticate uses it up.
    pub auth_nonce: Option<Box<[u8; cmq_protocol::auth::AUTH_NONCE_BYTES]>>,
    /// The key this connection authenticated with (None: anonymous).
    pub session: Option<Box<crate::auth::session::Session>>,
    /// The TLS session, on a TLS port (`--tls-cert`); None: plaintext.
    pub tls: Option<Box<crate::tls::transport::TlsSession>>,
}

impl Conn {
    pub fn new(stream: TcpStream, gen: u32, now_ms: u64) -> Conn {
        Conn {
            stream,
            gen,
            // Allocated by the first read: a socket that sends nothing holds no buffer.
            rbuf: BytesMut::new(),
            out: Vec::new(),
            written: 0,
            releasable: 0,
            holds: HoldQueue::default(),
            waiting: false,
            handshaken: false,
            in_flight: 0,
            read_pending: true,
            closing: false,
            forwarded_to: [0; SHARD_BITSET_WORDS],
            touched_turn: 0,
            peer_closed: false,
            reads: 0,
            reads_turn: 0,
            checker: false,
            accepted_ms: now_ms,
            active_ms: now_ms,
            wrote_ms: now_ms,
            partial_since_ms: 0,
            charged: 0,
            starved: false,
            shed: false,
            timer_at: u64::MAX,
            auth_challenged: false,
            auth_nonce: None,
            session: None,
            tls: None,
        }
    }

    /// Output bytes not yet written (released or still held for the log).
    pub fn unsent(&self) -> usize {
        self.out.len() - self.written
    }

    /// What this connection's buffers hold, for the budget, and over TLS what
    /// its rustls session may hold (`TLS_SESSION_BYTES_MAX`).
    pub fn buffer_bytes(&self) -> usize {
        let tls = if self.tls.is_some() { crate::tls::transport::TLS_SESSION_BYTES_MAX } else { 0 };
        self.rbuf.capacity() + self.out.capacity() + tls
    }

    /// Nothing in flight, nothing to send, nothing half received, no
    /// standing registration: the state the idle deadline applies to.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.out.len() == self.written && self.rbuf.is_empty() && !self.checker
    }

    /// The earliest deadline this connection is held to in its current
    /// state, and what it would miss then; None when no deadline runs (a
    /// request in flight and nothing pending on either side).
    pub fn deadline(&self, d: &Deadlines) -> Option<(u64, Expired)> {
        if !self.handshaken {
            return Some((self.accepted_ms + d.handshake_ms, Expired::Handshake));
        }
        let mut next: Option<(u64, Expired)> = None;
        let mut consider = |at: u64, why: Expired| {
            if next.is_none_or(|(t, _)| at < t) {
                next = Some((at, why));
            }
        };
        if self.partial_since_ms != 0 {
            consider(self.partial_since_ms + d.frame_ms, Expired::Frame);
        }
        if self.releasable > self.written {
            consider(self.wrote_ms + d.frame_ms, Expired::Output);
        }
        if d.idle_ms != 0 && self.is_idle() {
            consider(self.active_ms + d.idle_ms, Expired::Idle);
        }
        next
    }

    /// How the next read gets room for `want` bytes (the frame being
    /// assembled, or a header when its length is not known yet): a frame
    /// that fits a read chunk reads into the base buffer; a larger one grows
    /// the buffer by what arrived so far (doubling), never past the frame's
    /// end, so an announced length alone allocates nothing.
    pub fn read_room(&self, want: usize) -> ReadRoom {
        let len = self.rbuf.len();
        if want <= READ_CHUNK_BYTES {
            return ReadRoom::Chunk;
        }
        let spare = self.rbuf.capacity() - len;
        let remaining = want - len;
        if spare >= remaining.min(READ_CHUNK_BYTES) {
            return ReadRoom::Ready;
        }
        ReadRoom::Grow(want.min((len + READ_CHUNK_BYTES).max(len.saturating_mul(2))))
    }

    /// Makes room for one read chunk in the base buffer.
    pub fn reserve_chunk(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK_BYTES {
            self.rbuf.reserve(READ_CHUNK_BYTES);
        }
    }

    /// Moves the buffered bytes into a buffer of exactly `capacity` bytes
    /// (`reserve` could allocate twice what is asked).
    pub fn grow_to(&mut self, capacity: usize) {
        let mut grown = BytesMut::with_capacity(capacity);
        grown.extend_from_slice(&self.rbuf);
        self.rbuf = grown;
    }

    /// Gives back the buffers of a connection with nothing in them (an idle
    /// connection costs its socket, not 64 KiB of buffers).
    pub fn release_idle_buffers(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = Vec::new();
        }
    }

    /// Whether reading more requests should wait for responses to drain.
    pub fn read_paused(&self) -> bool {
        self.out.len() - self.written > OUT_BYTES_HIGH || self.in_flight >= CONN_IN_FLIGHT_MAX
    }

    /// One read syscall into the buffer's spare capacity (made by
    /// `reserve_chunk` or `grow_to`). Returns Ok(false) at end of input.
    /// Clears `read_pending` when the socket is drained: a short read means
    /// so, unless the peer also closed (edge-triggered readiness reports data
    /// and the close together, and the close is only seen by reading on to
    /// the end).
    pub fn fill(&mut self) -> io::Result<bool> {
        if let Some(tls) = self.tls.as_deref_mut() {
            return match crate::tls::transport::fill(&self.stream, tls, &mut self.rbuf)? {
                Filled::End => Ok(false),
                Filled::More { drained } => {
                    if drained {
                        self.read_pending = false;
                    }
                    Ok(true)
                }
            };
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        loop {
            match read_into_spare(&self.stream, &mut self.rbuf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    if n < spare && !self.peer_closed {
                        self.read_pending = false;
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_pending = false;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Output appended since the last hold may go out once `need` is met
    /// (and everything before it went out). Returns whether the connection
    /// has output waiting for the log.
    pub fn hold(&mut self, need: Need, progress: Progress) -> bool {
        let end = self.out.len();
        let held_to = self.holds.back().copied().unwrap_or(self.releasable);
        if end > held_to {
            if self.holds.is_empty() && need.is_met(progress) {
                self.releasable = end;
            } else if let Some(last) = self.holds.back_covering(need) {
                *last = end;
            } else {
                self.holds.push(need, end);
            }
        }
        !self.holds.is_empty()
    }

    /// Lets out held output whose needs `progress` meets. Returns whether
    /// output still waits.
    pub fn release(&mut self, progress: Progress) -> bool {
        while let Some(end) = self.holds.pop_met(progress) {
            self.releasable = end;
        }
        !self.holds.is_empty()
    }

    /// Appends bytes that need no durability wait (errors about the
    /// connection itself, handshake answers) and releases them together with
    /// everything before them.
    pub fn release_all_now(&mut self) {
        self.holds.clear();
        self.releasable = self.out.len();
    }

    /// Writes releasable bytes. Returns Ok(true) when all of them are out.
    /// `now_ms` is when progress (or having nothing to write) is recorded.
    pub fn flush(&mut self, now_ms: u64) -> io::Result<bool> {
        let before = self.written;
        if let Some(tls) = self.tls.as_deref_mut() {
            let (taken, done) =
                crate::tls::transport::flush(&self.stream, tls, &self.out[self.written..self.releasable])?;
            self.written += taken;
            if !done {
                if self.written > before {
                    self.wrote_ms = now_ms;
                    self.active_ms = now_ms;
                }
                return Ok(false);
            }
        }
        while self.written < self.releasable {
            match self.stream.write(&self.out[self.written..self.releasable]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.written > before {
                        self.wrote_ms = now_ms;
                        self.active_ms = now_ms;
                    }
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wrote_ms = now_ms;
        if self.written > before {
            self.active_ms = now_ms;
        }
        if self.written > 0 {
            // Shift what is left (unreleased bytes) to the front; cheap when
            // everything was written, which is the common case.
            self.out.drain(..self.written);
            self.releasable -= self.written;
            for end in self.holds.iter_mut() {
                *end -= self.written;
            }
            self.written = 0;
            if self.out.capacity() > OUT_RETAIN_BYTES_MAX && self.out.len() <= self.out.capacity() / 4 {
                self.out.shrink_to(self.out.len().max(READ_CHUNK_BYTES));
            }
        }
        Ok(true)
    }

    pub fn mark_forwarded(&mut self, shard: u16) {
        self.forwarded_to[usize::from(shard / 64)] |= 1 << (shard % 64);
    }

    pub fn forwarded_shards(&self) -> impl Iterator<Item = u16> + '_ {
        (0..SHARDS_MAX as u16).filter(|s| self.forwarded_to[usize::from(s / 64)] & (1 << (s % 64)) != 0)
    }
}

/// One `recv` into the spare capacity of `buf`, which grows by what was
/// read. Reading into uninitialised memory saves zeroing up to a read
/// chunk per call, which profiling showed as about a tenth of the shard's
/// CPU with one small request per read.
fn read_into_spare(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let len = buf.len();
    let ((filled, _), _) = rustix::net::recv(stream, buf.spare_capacity_mut(), rustix::net::RecvFlags::empty())?;
    let n = filled.len();
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity
    // (`filled` is exactly that prefix), so `len + n` bytes are initialised
    // and within capacity.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// The shard's client connections: the listener, the open connections,
/// and those to write or read again this turn.
pub(super) struct Clients {
    pub(super) listener: Option<mio::net::TcpListener>,
    pub(super) conns: slab::Slab<Conn>,
    pub(super) next_gen: u32,
    /// Local connections that got output this turn.
    pub(super) touched: Vec<super::mailbox::ConnRef>,
    /// Connections with unread input left over (fairness limit, or resumed after back-pressure).
    pub(super) read_again: Vec<super::mailbox::ConnRef>,
    pub(super) scratch: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A connection over a real loopback socket, and the client's end.
    fn pair() -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tx = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (rx, _) = listener.accept().expect("accept");
        rx.set_nonblocking(true).expect("nonblocking");
        (Conn::new(TcpStream::from_std(rx), 1, 1_000), tx)
    }

    const D: Deadlines = Deadlines { handshake_ms: 10_000, idle_ms: 300_000, frame_ms: 30_000 };

    /// A large announced frame gets its buffer as its bytes arrive: each
    /// step at most doubles what is buffered, and never passes the frame's end.
    #[test]
    fn read_buffer_grows_with_what_arrives_not_with_what_is_announced() {
        let (mut c, _tx) = pair();
        let frame = 16 * 1024 * 1024;
        assert_eq!(c.read_room(16), ReadRoom::Chunk);
        assert_eq!(c.read_room(READ_CHUNK_BYTES), ReadRoom::Chunk);
        c.rbuf.extend_from_slice(&[0; 4]);
        // Four bytes in: the next step is about a read chunk, not 16 MiB.
        let ReadRoom::Grow(cap) = c.read_room(frame) else { panic!("must grow") };
        assert_eq!(cap, 4 + READ_CHUNK_BYTES);
        c.grow_to(cap);
        assert_eq!(c.rbuf.capacity(), cap, "exactly what was asked");
        assert_eq!(&c.rbuf[..], &[0; 4]);
        assert_eq!(c.read_room(frame), ReadRoom::Ready);
        c.rbuf.resize(cap, 1);
        let ReadRoom::Grow(next) = c.read_room(frame) else { panic!("must grow") };
        assert_eq!(next, 2 * cap);
        c.rbuf = BytesMut::with_capacity(frame - 50);
        c.rbuf.resize(frame - 100, 1);
        assert_eq!(c.read_room(frame), ReadRoom::Grow(frame), "growth stops at the frame's end");
        c.grow_to(frame);
        assert_eq!(c.read_room(frame), ReadRoom::Ready, "the rest of the frame fits");
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let (mut c, _tx) = pair();
        // Before the handshake only the handshake deadline runs.
        c.partial_since_ms = 1_500;
        assert_eq!(c.deadline(&D), Some((11_000, Expired::Handshake)));
        c.handshaken = true;
        assert_eq!(c.deadline(&D), Some((31_500, Expired::Frame)), "a partial frame");
        c.partial_since_ms = 0;
        assert_eq!(c.deadline(&D), Some((301_000, Expired::Idle)), "idle since accepted");
        c.active_ms = 5_000;
        assert_eq!(c.deadline(&D), Some((305_000, Expired::Idle)), "activity moves it");
        c.in_flight = 1;
        assert_eq!(c.deadline(&D), None, "a request in flight (a long poll) is not idle");
        c.out.extend_from_slice(b"answer");
        c.releasable = c.out.len();
        c.wrote_ms = 6_000;
        assert_eq!(c.deadline(&D), Some((36_000, Expired::Output)), "output not taken");
        c.in_flight = 0;
        c.checker = true;
        c.releasable = 0;
        assert_eq!(c.deadline(&D), None, "held output is the log's business; a checker waits for pushes");
        c.checker = false;
        assert_eq!(c.deadline(&Deadlines { idle_ms: 0, ..D }), None, "idle 0 = never");
    }

    #[test]
    fn idle_buffers_are_released_and_flushed_output_shrinks() {
        let (mut c, mut tx) = pair();
        tx.write_all(b"x").expect("send");
        c.reserve_chunk();
        while c.rbuf.is_empty() {
            c.fill().expect("read");
        }
        c.rbuf.clear();
        c.out = Vec::with_capacity(8 * OUT_RETAIN_BYTES_MAX);
        c.out.extend_from_slice(b"hello");
        c.releasable = 5;
        assert!(c.flush(2_000).expect("write"));
        assert!(c.out.capacity() <= READ_CHUNK_BYTES, "a drained large buffer is given back");
        assert_eq!(c.wrote_ms, 2_000);
        assert!(c.buffer_bytes() > 0);
        c.release_idle_buffers();
        assert_eq!(c.buffer_bytes(), 0);
    }

    /// The bytes that `read_into_spare` makes visible are exactly the bytes
    /// sent, across reads that reuse and grow the buffer.
    #[test]
    fn reads_into_spare_capacity_keep_exactly_what_was_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut tx = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (rx, _) = listener.accept().expect("accept");
        let rx = TcpStream::from_std(rx);
        let mut buf = BytesMut::with_capacity(8);
        buf.extend_from_slice(b"ab");
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).expect("send");
        drop(tx);
        loop {
            buf.reserve(4096);
            match read_into_spare(&rx, &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("recv: {e}"),
            }
        }
        assert_eq!(&buf[..2], b"ab");
        assert_eq!(&buf[2..], &sent[..]);
    }
}
