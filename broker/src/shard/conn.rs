//! One client connection: buffers, reading frames, writing what may be
//! released, and back-pressure.

use std::io::{self, Write};

use bytes::BytesMut;
use mio::net::TcpStream;

use super::release::{HoldQueue, Need};
use crate::storage::Progress;

/// Read buffer growth step: one read syscall can bring in this many bytes of
/// frames (many pipelined requests per syscall).
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Unwritten response bytes above which the connection stops reading
/// requests: a client that does not read its responses cannot make the
/// broker buffer without bound. It resumes below half of this.
pub const OUT_BYTES_HIGH: usize = 4 * 1024 * 1024;

/// Read syscalls one connection gets per loop turn before the others have
/// their turn (each brings up to READ_CHUNK_BYTES of frames).
pub const READS_PER_TURN_MAX: u32 = 4;

/// Requests one connection may have in flight (accepted, not yet answered:
/// forwarded, long-polling, or waiting for a flush). Past this the connection
/// stops reading until answers go out.
pub const CONN_IN_FLIGHT_MAX: usize = 4096;

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
    pub forwarded_to: [u64; 4],
    /// The last loop turn that appended output (dedupes the turn's touched list).
    pub touched_turn: u64,
    /// The peer closed its side (seen in a readiness event): read to the end.
    pub peer_closed: bool,
    /// Read syscalls this connection made in `reads_turn` (fairness between connections).
    pub reads: u32,
    pub reads_turn: u64,
    /// Registered as a transaction checker (its close is announced to every shard).
    pub checker: bool,
}

impl Conn {
    pub fn new(stream: TcpStream, gen: u32) -> Conn {
        Conn {
            stream,
            gen,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            out: Vec::new(),
            written: 0,
            releasable: 0,
            holds: HoldQueue::default(),
            waiting: false,
            handshaken: false,
            in_flight: 0,
            read_pending: true,
            closing: false,
            forwarded_to: [0; 4],
            touched_turn: 0,
            peer_closed: false,
            reads: 0,
            reads_turn: 0,
            checker: false,
        }
    }

    /// Whether reading more requests should wait for responses to drain.
    pub fn read_paused(&self) -> bool {
        self.out.len() - self.written > OUT_BYTES_HIGH || self.in_flight >= CONN_IN_FLIGHT_MAX
    }

    /// One read syscall, into a buffer grown to hold at least the frame
    /// being assembled (`want` bytes) and a read chunk. Returns Ok(false) at
    /// end of input. Clears `read_pending` when the socket is drained: a
    /// short read means so, unless the peer also closed (edge-triggered
    /// readiness reports data and the close together, and the close is only
    /// seen by reading on to the end).
    pub fn fill(&mut self, want: usize) -> io::Result<bool> {
        let len = self.rbuf.len();
        let room = READ_CHUNK_BYTES.max(want.saturating_sub(len));
        if self.rbuf.capacity() - len < room {
            self.rbuf.reserve(room);
        }
        let spare = self.rbuf.capacity() - len;
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
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.releasable {
            match self.stream.write(&self.out[self.written..self.releasable]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
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
        }
        Ok(true)
    }

    pub fn mark_forwarded(&mut self, shard: u16) {
        self.forwarded_to[usize::from(shard / 64)] |= 1 << (shard % 64);
    }

    pub fn forwarded_shards(&self) -> impl Iterator<Item = u16> + '_ {
        (0..256u16).filter(|s| self.forwarded_to[usize::from(s / 64)] & (1 << (s % 64)) != 0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
