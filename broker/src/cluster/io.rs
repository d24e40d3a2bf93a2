//! Socket buffers of peer links: reads into spare capacity (no zeroing),
//! and an output buffer written with one syscall per loop turn.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::BytesMut;
use mio::net::TcpStream;

/// Bytes one read syscall may bring in (many frames per syscall).
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Capacity an output buffer always keeps. A burst may grow it up to
/// `PEER_OUT_BYTES_MAX`; that memory is handed back once a whole
/// `OUT_SHRINK_WINDOW_MS` used less than a quarter of it (shrinking after
/// every drain would reallocate, and fault in, megabytes every turn of a
/// busy link).
pub const OUT_RETAIN_BYTES: usize = 1024 * 1024;

/// How long the output buffer's peak use is watched before it is shrunk.
pub const OUT_SHRINK_WINDOW_MS: u64 = 1_000;

/// One `recv` into the spare capacity of `buf`, which grows by what was
/// read. Reading into uninitialised memory saves zeroing a whole read chunk
/// per call (the same reason as the client connections' reads).
pub fn read_into_spare(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let len = buf.len();
    let ((filled, _), _) = rustix::net::recv(stream, buf.spare_capacity_mut(), rustix::net::RecvFlags::empty())?;
    let n = filled.len();
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity
    // (`filled` is exactly that prefix), so `len + n` bytes are initialised
    // and within capacity.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// Frames waiting to be written: a ring, appended at the back and written
/// from the front with one `writev` of its (at most two) contiguous parts,
/// so a backed-up link never moves its unwritten bytes around.
#[derive(Default)]
pub struct OutBuf {
    buf: VecDeque<u8>,
    /// Most bytes held at a write in the current shrink window.
    window_peak: usize,
    window_end_ms: u64,
}

impl OutBuf {
    /// Bytes not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Appends `parts` (one frame, or a frame's header then its payload).
    pub fn push(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.buf.extend(part.iter());
        }
    }

    /// Drops everything (a connection ended: a half-written frame must never
    /// start the next connection's stream).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.shrink_to(OUT_RETAIN_BYTES);
    }

    /// Writes as much as the socket takes. Returns Ok(true) once everything
    /// is out. One syscall when it all fits, the usual case; a partial write
    /// is followed by one more that normally reports WouldBlock, so that the
    /// edge-triggered WRITABLE event is armed. `stream` is the socket or a
    /// TLS session over it (`PeerConn`): its `flush` then writes what TLS
    /// still holds, and Ok(true) means that went out too.
    pub fn write_to(&mut self, stream: &mut impl Write, now_ms: u64) -> io::Result<bool> {
        self.window_peak = self.window_peak.max(self.buf.len());
        while !self.buf.is_empty() {
            let (a, b) = self.buf.as_slices();
            match stream.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // Draining a front range of bytes only moves the ring's head.
                Ok(n) => drop(self.buf.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match stream.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        self.maybe_shrink(now_ms);
        Ok(true)
    }

    /// At the end of a window, an empty buffer much larger than the
    /// window's peak use gives the excess back.
    fn maybe_shrink(&mut self, now_ms: u64) {
        if now_ms < self.window_end_ms {
            return;
        }
        let keep = OUT_RETAIN_BYTES.max(2 * self.window_peak);
        if self.buf.capacity() > OUT_RETAIN_BYTES && self.buf.capacity() > 4 * self.window_peak {
            self.buf.shrink_to(keep);
        }
        self.window_peak = 0;
        self.window_end_ms = now_ms + OUT_SHRINK_WINDOW_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (std::net::TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (b, _) = listener.accept().expect("accept");
        b.set_nonblocking(true).expect("nonblocking");
        (a, TcpStream::from_std(b))
    }

    /// The bytes that `read_into_spare` makes visible are exactly the bytes
    /// sent, across reads that reuse and grow the buffer.
    #[test]
    fn reads_into_spare_capacity_keep_exactly_what_was_sent() {
        let (mut tx, rx) = pair();
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

    /// Partial writes, with frames appended meanwhile (the ring wraps
    /// around), keep the byte order; a drained buffer keeps its capacity
    /// through a busy window and hands it back after a quiet one.
    #[test]
    fn partial_writes_keep_order_and_memory_is_returned() {
        let (mut rx, tx) = pair();
        let mut tx = tx;
        let mut out = OutBuf::default();
        let sent: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).expect("read");
            got
        });
        let (mut pushed, mut partial, mut now_ms) = (0, false, 1);
        for piece in sent.chunks(3 * 1024 * 1024 + 7) {
            out.push(&[&piece[..piece.len() / 3], &piece[piece.len() / 3..]]);
            pushed += piece.len();
            partial |= !out.write_to(&mut tx, now_ms).expect("write");
            assert!(out.queued() <= pushed);
        }
        while !out.write_to(&mut tx, now_ms).expect("write") {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(partial, "24 MiB should not fit in one socket buffer");
        assert_eq!(out.queued(), 0);
        drop(tx);
        assert!(reader.join().expect("reader") == sent);
        assert!(out.buf.capacity() > OUT_RETAIN_BYTES, "not shrunk within the window of the burst");
        let (_keep_rx, mut tx) = pair();
        for _ in 0..2 {
            now_ms += OUT_SHRINK_WINDOW_MS;
            out.push(&[b"small"]);
            assert!(out.write_to(&mut tx, now_ms).expect("write"));
        }
        assert!(out.buf.capacity() <= OUT_RETAIN_BYTES, "{}", out.buf.capacity());
    }
}
