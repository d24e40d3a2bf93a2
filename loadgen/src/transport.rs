//! A pipe's byte stream: the socket, or a TLS session over it (`--tls`),
//! both non-blocking. TLS is driven by hand (`read_tls` /
//! `process_new_packets` / `write_tls`) so that "would block" never loses
//! track of what was taken: plaintext handed to rustls counts as written,
//! and encrypted bytes still queued in rustls keep the pipe asking to write.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use cmq_client::rustls::{ClientConnection, StreamOwned};

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    pub fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    /// Encrypted bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        matches!(self, Transport::Tls(t) if t.conn.wants_write())
    }

    /// The authentication transcript's channel binding (empty without TLS).
    pub fn channel_binding(&self) -> Result<Vec<u8>, cmq_client::ClientError> {
        match self {
            Transport::Plain(_) => Ok(Vec::new()),
            Transport::Tls(t) => Ok(cmq_client::tls::channel_binding(&t.conn)?.to_vec()),
        }
    }

    /// Writes as much of `out` as goes without blocking; returns how much
    /// was taken (for TLS: encrypted; the rest of the ciphertext goes on
    /// the next call, see [`Transport::wants_write`]).
    pub fn write_some(&mut self, out: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => write_plain(s, out),
            Transport::Tls(t) => write_tls(t, out),
        }
    }

    /// One read's worth of plaintext into `buf`: Ok(0) at end of stream,
    /// WouldBlock when nothing is there.
    pub fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => read_tls(t, buf),
        }
    }
}

fn write_plain(s: &mut TcpStream, out: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < out.len() {
        match s.write(&out[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

fn write_tls(t: &mut StreamOwned<ClientConnection, TcpStream>, out: &[u8]) -> io::Result<usize> {
    let mut taken = 0;
    loop {
        while t.conn.wants_write() {
            match t.conn.write_tls(&mut t.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(taken),
                Err(e) => return Err(e),
            }
        }
        if taken == out.len() {
            return Ok(taken);
        }
        let n = t.conn.writer().write(&out[taken..])?;
        if n == 0 {
            return Ok(taken);
        }
        taken += n;
    }
}

fn read_tls(t: &mut StreamOwned<ClientConnection, TcpStream>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match t.conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Closed without close_notify: a close all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match t.conn.read_tls(&mut t.sock) {
            Ok(0) => return Ok(0),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        t.conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}
