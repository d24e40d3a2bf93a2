//! One peer connection's byte stream: the TCP socket itself, or TLS over it
//! (`--peer-tls-*`), sans-IO like the client port (`tls/transport.rs`):
//! rustls sits between the socket and the link's own buffers, and nothing
//! here ever blocks.
//!
//! Bounds with TLS: rustls holds at most one TLS record being assembled,
//! the plaintext it decrypted and the link has not taken yet (it refuses to
//! read more past 16 KiB of that), and at most [`PEER_TLS_OUT_BYTES_MAX`]
//! of encrypted output ahead of the socket. The link's own buffers
//! (`PEER_OUT_BYTES_MAX`, the read buffers) bound everything else, as
//! without TLS.

use std::io::{self, IoSlice, Read, Write};

use bytes::BytesMut;
use mio::net::TcpStream;
use rustls::Connection;

use super::io::{read_into_spare, READ_CHUNK_BYTES};
use crate::tls::wire::{fatal, write_pending};

/// Encrypted output rustls may hold ahead of the socket for one connection
/// (plaintext written past it waits in the link's output buffer).
pub const PEER_TLS_OUT_BYTES_MAX: usize = 64 * 1024;

/// Ciphertext one [`PeerConn::read_into_spare`] reads from the socket at
/// most: rustls reads a few KiB per `read_tls`, so one call makes several
/// syscalls, up to about what one plaintext read takes.
pub const PEER_TLS_READ_BYTES_PER_CALL: usize = READ_CHUNK_BYTES;

/// A plaintext peer's first byte is the top byte of a small length prefix, 0.
pub use crate::tls::wire::TLS_HANDSHAKE_RECORD;

/// A peer connection: the socket and, with peer TLS, its session.
pub struct PeerConn {
    pub stream: TcpStream,
    tls: Option<Box<Connection>>,
}

impl PeerConn {
    pub fn plain(stream: TcpStream) -> PeerConn {
        PeerConn { stream, tls: None }
    }

    pub fn tls(stream: TcpStream, session: impl Into<Connection>) -> PeerConn {
        let mut session: Connection = session.into();
        session.set_buffer_limit(Some(PEER_TLS_OUT_BYTES_MAX));
        PeerConn { stream, tls: Some(Box::new(session)) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Drops the TLS session and speaks plaintext from here on (only to
    /// send a plaintext peer a Refuse it can read).
    pub fn drop_tls(&mut self) {
        self.tls = None;
    }

    /// RFC 9266 tls-exporter value of the session (None without TLS or
    /// before its handshake completed): both ends derive the same bytes, a
    /// man in the middle with two sessions gets two different values.
    pub fn channel_binding(&self) -> Option<[u8; cmq_protocol::auth::TLS_EXPORTER_BYTES]> {
        let tls = self.tls.as_ref().filter(|t| !t.is_handshaking())?;
        let out = [0u8; cmq_protocol::auth::TLS_EXPORTER_BYTES];
        tls.export_keying_material(out, cmq_protocol::auth::TLS_EXPORTER_LABEL, None).ok()
    }

    /// One read into `buf`'s spare capacity (growing it by what was read).
    /// Ok(0) at the end of the stream; WouldBlock once the socket is
    /// drained and nothing was decrypted. With TLS, handshake answers are
    /// written on the way and a protocol error is an InvalidData error
    /// (after the alert rustls prepared was sent, best effort).
    pub fn read_into_spare(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else { return read_into_spare(&self.stream, buf) };
        let mut read = 0usize;
        let mut added = 0usize;
        loop {
            let state = tls.process_new_packets().map_err(|e| fatal(&self.stream, tls, e))?;
            let spare = buf.capacity() - buf.len();
            let n = state.plaintext_bytes_to_read().min(spare);
            if n > 0 {
                let len = buf.len();
                buf.resize(len + n, 0);
                tls.reader().read_exact(&mut buf[len..])?;
                added += n;
            }
            if tls.wants_write() {
                write_pending(&self.stream, tls)?;
            }
            if added > 0 && (buf.capacity() == buf.len() || read >= PEER_TLS_READ_BYTES_PER_CALL) {
                return Ok(added);
            }
            if state.peer_has_closed() {
                return Ok(added);
            }
            let mut s = &self.stream;
            match tls.read_tls(&mut s) {
                Ok(0) => return Ok(added),
                Ok(got) => read += got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && added > 0 => return Ok(added),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Encrypted output not yet written to the socket.
    pub fn has_pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// The first byte the other side sent, left on the socket (None: it
    /// closed without sending anything; WouldBlock: nothing yet).
    pub fn peek_first_byte(&self) -> io::Result<Option<u8>> {
        crate::tls::wire::peek_first_byte(&self.stream)
    }
}

/// Plaintext out, at most `out.len()` bytes (the acceptor's bounded
/// handshake buffer): Ok(0) at the end, WouldBlock when nothing is there.
impl Read for PeerConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else { return (&self.stream).read(out) };
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let state = tls.process_new_packets().map_err(|e| fatal(&self.stream, tls, e))?;
            if tls.wants_write() {
                write_pending(&self.stream, tls)?;
            }
            if state.plaintext_bytes_to_read() > 0 {
                return tls.reader().read(out);
            }
            if state.peer_has_closed() {
                return Ok(0);
            }
            let mut s = &self.stream;
            match tls.read_tls(&mut s) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Plaintext in: with TLS, encrypted into rustls (as far as its output
/// bound lets it) and written on as far as the socket takes it. `flush`
/// writes the rest, WouldBlock if the socket is full.
impl Write for PeerConn {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else { return (&self.stream).write_vectored(parts) };
        write_pending(&self.stream, tls)?;
        let n = tls.writer().write_vectored(parts)?;
        write_pending(&self.stream, tls)?;
        if n == 0 && parts.iter().any(|p| !p.is_empty()) {
            // rustls holds its bound of ciphertext and the socket is full:
            // the socket's next WRITABLE edge is armed.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else { return Ok(()) };
        if write_pending(&self.stream, tls)? {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without TLS the connection is the socket: bytes pass unchanged.
    #[test]
    fn plain_connections_pass_bytes_through() {
        let (b, mut a) = crate::tls::wire::tests::socket_pair();
        let mut conn = PeerConn::plain(b);
        assert!(!conn.is_tls() && conn.channel_binding().is_none());
        let mut buf = BytesMut::with_capacity(64);
        assert_eq!(conn.read_into_spare(&mut buf).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        a.write_all(b"\0\0\0\x01\x10").expect("send");
        while conn.peek_first_byte().map_err(|e| e.kind()) == Err(io::ErrorKind::WouldBlock) {
            std::thread::yield_now();
        }
        assert_eq!(conn.peek_first_byte().expect("peek"), Some(0));
        assert_eq!(conn.read_into_spare(&mut buf).expect("read"), 5);
        assert_eq!(&buf[..], b"\0\0\0\x01\x10");
        assert_eq!(conn.write(b"xy").expect("write"), 2);
        conn.flush().expect("nothing pending");
        let mut got = [0u8; 2];
        a.read_exact(&mut got).expect("read back");
        assert_eq!(&got, b"xy");
    }
}
