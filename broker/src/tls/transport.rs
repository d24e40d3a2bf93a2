//! A client connection's bytes through TLS, sans-IO: rustls's
//! `ServerConnection` sits between the socket and the connection's own
//! buffers (`read_tls` / `process_new_packets` / `reader`, and `writer` /
//! `write_tls`), so a shard's mio loop never blocks on it.
//!
//! Bounds: rustls holds at most one TLS record being assembled (about
//! 16 KiB; 64 KiB for a handshake message) and the plaintext of what it
//! decrypted and we have not taken yet (`read_tls` refuses more past 16 KiB);
//! on the way out it encrypts at most [`TLS_OUT_BYTES_MAX`] ahead of the
//! socket. What it may hold at most, [`TLS_SESSION_BYTES_MAX`], is charged
//! to the connection buffer budget for the session's life (rustls does not
//! say what it holds now), so TLS connections count against
//! `--buffer-budget-bytes` like their own buffers do.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use mio::net::TcpStream;
use rustls::ServerConnection;

use super::wire::{fatal, peek_first_byte, write_pending, TLS_HANDSHAKE_RECORD};

/// Ciphertext read from the socket per fill: rustls reads at most 4 KiB
/// per `read_tls`, so a fill makes up to this over 4 KiB syscalls (the
/// plaintext port reads 64 KiB in one).
pub const TLS_READ_BYTES_PER_FILL: usize = 64 * 1024;

/// Encrypted output rustls may hold ahead of the socket for one connection.
pub const TLS_OUT_BYTES_MAX: usize = 64 * 1024;

/// What one connection's rustls session may hold, charged to the buffer
/// budget while it lives (rustls 0.23's buffers, worst cases):
/// * incoming ciphertext: up to 64 KiB while a handshake message is joined
///   (16 KiB + 2 KiB records after the handshake), in a `Vec` whose capacity
///   may double as it grows: 128 KiB;
/// * decrypted plaintext not yet taken: `read_tls` stops past 16 KiB, and
///   one read's records add up to 18 KiB more: 34 KiB;
/// * outgoing ciphertext: [`TLS_OUT_BYTES_MAX`] plus record overhead: 66 KiB;
/// * keys, transcript and the session's own state: 12 KiB.
pub const TLS_SESSION_BYTES_MAX: usize = 128 * 1024 + 34 * 1024 + (TLS_OUT_BYTES_MAX + 2 * 1024) + 12 * 1024;

/// The connection's TLS session and whether its first byte was checked.
pub struct TlsSession {
    pub conn: ServerConnection,
    /// The first byte was a TLS handshake record.
    pub checked: bool,
}

impl TlsSession {
    pub fn new(config: &std::sync::Arc<rustls::ServerConfig>) -> Result<TlsSession, rustls::Error> {
        let mut conn = ServerConnection::new(config.clone())?;
        conn.set_buffer_limit(Some(TLS_OUT_BYTES_MAX));
        Ok(TlsSession { conn, checked: false })
    }

    /// RFC 9266 tls-exporter channel binding (None until the TLS handshake is done).
    pub fn channel_binding(&self) -> Option<[u8; cmq_protocol::auth::TLS_EXPORTER_BYTES]> {
        if self.conn.is_handshaking() {
            return None;
        }
        let out = [0u8; cmq_protocol::auth::TLS_EXPORTER_BYTES];
        self.conn.export_keying_material(out, cmq_protocol::auth::TLS_EXPORTER_LABEL, None).ok()
    }
}

/// A client spoke plaintext to the TLS port (its first byte is not 0x16).
#[derive(Debug)]
pub struct PlaintextOnTlsPort;

impl std::fmt::Display for PlaintextOnTlsPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plaintext on the TLS port")
    }
}

impl std::error::Error for PlaintextOnTlsPort {}

/// Whether `e` is [`PlaintextOnTlsPort`].
pub fn is_plaintext_on_tls_port(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<PlaintextOnTlsPort>())
}

/// What one [`fill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Plaintext may have been added; `drained`: the socket had no more.
    More { drained: bool },
    /// The peer closed (TCP end of input or TLS close_notify) and nothing
    /// was added this time.
    End,
}

/// Moves plaintext into `buf`'s spare capacity: first what rustls already
/// decrypted, then from up to [`TLS_READ_BYTES_PER_FILL`] of ciphertext
/// read from the socket. Pending handshake output is written on the way.
pub fn fill(stream: &TcpStream, tls: &mut TlsSession, buf: &mut BytesMut) -> io::Result<Filled> {
    let mut read = 0usize;
    let mut added = 0usize;
    loop {
        let state = tls.conn.process_new_packets().map_err(|e| fatal(stream, &mut *tls.conn, e))?;
        let avail = state.plaintext_bytes_to_read();
        let spare = buf.capacity() - buf.len();
        let n = avail.min(spare);
        if n > 0 {
            let len = buf.len();
            buf.resize(len + n, 0);
            tls.conn.reader().read_exact(&mut buf[len..])?;
            added += n;
        }
        if tls.conn.wants_write() {
            write_pending(stream, &mut *tls.conn)?;
        }
        if n < avail || buf.capacity() == buf.len() || read >= TLS_READ_BYTES_PER_FILL {
            return Ok(Filled::More { drained: false });
        }
        if state.peer_has_closed() {
            return Ok(if added > 0 { Filled::More { drained: false } } else { Filled::End });
        }
        if !tls.checked {
            match peek_first_byte(stream) {
                Ok(None) => return Ok(Filled::End),
                Ok(Some(TLS_HANDSHAKE_RECORD)) => tls.checked = true,
                Ok(Some(_)) => return Err(io::Error::other(PlaintextOnTlsPort)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Filled::More { drained: true }),
                Err(e) => return Err(e),
            }
        }
        let mut s = stream;
        match tls.conn.read_tls(&mut s) {
            Ok(0) => return Ok(if added > 0 { Filled::More { drained: false } } else { Filled::End }),
            Ok(got) => read += got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Filled::More { drained: true }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Encrypts `out` as far as rustls takes it and writes ciphertext until the
/// socket would block. Returns the plaintext bytes taken and whether all
/// of `out` and all ciphertext went out.
pub fn flush(stream: &TcpStream, tls: &mut TlsSession, out: &[u8]) -> io::Result<(usize, bool)> {
    let mut taken = 0;
    loop {
        if !write_pending(stream, &mut *tls.conn)? {
            return Ok((taken, false));
        }
        if taken == out.len() {
            return Ok((taken, true));
        }
        let n = tls.conn.writer().write(&out[taken..])?;
        if n == 0 {
            return Ok((taken, false));
        }
        taken += n;
    }
}

/// Bytes a client sent that would be read before its peeked first byte
/// (a plaintext handshake, at most [`PLAINTEXT_DISCARD_BYTES`]) are taken
/// off the socket before the connection is closed: closing with unread
/// input makes the kernel reset the connection, and a reset can overtake
/// the error frame the client should read.
pub fn discard_unread(stream: &TcpStream) {
    let mut sink = [0u8; PLAINTEXT_DISCARD_BYTES];
    let _ = rustix::net::recv(stream, &mut sink, rustix::net::RecvFlags::DONTWAIT);
}

/// What [`discard_unread`] takes at most: a handshake frame's limit.
pub const PLAINTEXT_DISCARD_BYTES: usize = cmq_protocol::limits::HANDSHAKE_FRAME_BYTES_MAX as usize;
