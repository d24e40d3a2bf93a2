//! Socket buffers of peer links: reads into spare capacity (no zeroing),
//! and an output buffer written with one syscall per loop turn.

use std::io::{self, Write};

use bytes::BytesMut;
use mio::net::TcpStream;

/// Bytes one read syscall may bring in (many frames per syscall).
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Capacity an output buffer keeps once it has drained: a burst may grow it
/// to `PEER_OUT_BYTES_MAX`, and that memory is handed back afterwards.
pub const OUT_RETAIN_BYTES: usize = 1024 * 1024;

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

/// Frames waiting to be written: appended at the back, written from the
/// front. Everything is written at once in the common case; after a partial
/// write the rest stays and is moved to the front only once it is the
/// smaller part (amortised: no memmove of a large buffer per turn).
#[derive(Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    written: usize,
}

impl OutBuf {
    /// Bytes not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Where frames are appended.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Drops everything (a connection ended: a half-written frame must never
    /// start the next connection's stream).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.written = 0;
        self.buf.shrink_to(OUT_RETAIN_BYTES);
    }

    /// Writes as much as the socket takes. Returns Ok(true) once everything
    /// is out. One syscall when it all fits, the usual case; a partial write
    /// is followed by one more that normally reports WouldBlock, so that the
    /// edge-triggered WRITABLE event is armed.
    pub fn write_to(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        while self.written < self.buf.len() {
            match stream.write(&self.buf[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
            if self.buf.capacity() > OUT_RETAIN_BYTES {
                self.buf.shrink_to(OUT_RETAIN_BYTES);
            }
            return Ok(true);
        }
        if self.written >= self.buf.len() / 2 {
            self.buf.drain(..self.written);
            self.written = 0;
        }
        Ok(false)
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

    /// Partial writes keep the byte order across compaction, and a drained
    /// buffer hands back memory beyond what it retains.
    #[test]
    fn partial_writes_keep_order_and_memory_is_returned() {
        let (mut rx, tx) = pair();
        let mut tx = tx;
        let mut out = OutBuf::default();
        let sent: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        out.tail().extend_from_slice(&sent);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).expect("read");
            got
        });
        let mut partial = false;
        while !out.write_to(&mut tx).expect("write") {
            partial = true;
            assert!(out.queued() > 0);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(partial, "24 MiB should not fit in one socket buffer");
        assert_eq!(out.queued(), 0);
        assert!(out.buf.capacity() <= OUT_RETAIN_BYTES);
        drop(tx);
        assert!(reader.join().expect("reader") == sent);
    }
}
