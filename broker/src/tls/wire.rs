//! The socket side both kinds of TLS connection share: the client port's
//! `ServerConnection` (`transport.rs`) and a peer link's `Connection`
//! (`cluster/conn.rs`), both sans-IO over a non-blocking mio socket.

use std::io::{self, Write};

use mio::net::TcpStream;
use rustls::{Connection, ConnectionCommon};

/// The first byte of every TLS connection (a handshake record); a
/// plaintext client's or peer's first byte is something else.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A rustls session's encrypted output. rustls gives a typed session
/// (`ConnectionCommon<D>`, what `ServerConnection` and `ClientConnection`
/// deref to) and the `Connection` enum of either the same two methods but
/// no trait for them, so this names them once.
pub trait Ciphertext {
    fn wants_write(&self) -> bool;
    fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize>;
}

impl<D> Ciphertext for ConnectionCommon<D> {
    fn wants_write(&self) -> bool {
        (**self).wants_write()
    }

    fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        ConnectionCommon::write_tls(self, wr)
    }
}

impl Ciphertext for Connection {
    fn wants_write(&self) -> bool {
        (**self).wants_write()
    }

    fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        Connection::write_tls(self, wr)
    }
}

/// Writes the session's encrypted output until it is all out (true) or
/// the socket would block (false).
pub fn write_pending(stream: &TcpStream, tls: &mut impl Ciphertext) -> io::Result<bool> {
    let mut s = stream;
    while tls.wants_write() {
        match tls.write_tls(&mut s) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A TLS protocol error (a certificate the CA did not sign, a name that
/// does not match, plaintext where a record was due…): the alert rustls
/// prepared goes out, best effort, and the error, InvalidData, says what
/// failed (the caller closes the connection).
pub fn fatal(stream: &TcpStream, tls: &mut impl Ciphertext, e: rustls::Error) -> io::Error {
    let _ = write_pending(stream, tls);
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// The first byte the other side sent, left on the socket (None: it
/// closed without sending anything; WouldBlock: nothing yet).
pub fn peek_first_byte(stream: &TcpStream) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        match rustix::net::recv(stream, &mut b, rustix::net::RecvFlags::PEEK) {
            Ok((0, _)) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use super::*;

    /// A non-blocking mio socket and the std socket at its other end.
    pub(crate) fn socket_pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("nonblocking");
        (TcpStream::from_std(ours), other)
    }

    fn client_session() -> ClientConnection {
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").expect("name")).expect("session")
    }

    /// Both session kinds write their pending output (a ClientHello) whole,
    /// and the other side sees a TLS handshake record first.
    #[test]
    fn typed_sessions_and_the_enum_write_their_output() {
        for enum_kind in [false, true] {
            let (ours, other) = socket_pair();
            let written = if enum_kind {
                write_pending(&ours, &mut Connection::from(client_session()))
            } else {
                write_pending(&ours, &mut *client_session())
            };
            assert!(written.expect("write"), "everything went out");
            let mut first = [0u8; 1];
            assert_eq!(other.peek(&mut first).expect("peek"), 1);
            assert_eq!(first[0], TLS_HANDSHAKE_RECORD);
            assert_eq!(peek_first_byte(&ours).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        }
    }

    /// A protocol error sends rustls's alert and reads as InvalidData naming TLS.
    #[test]
    fn a_protocol_error_sends_the_alert() {
        let (ours, mut other) = socket_pair();
        let mut session = client_session();
        assert!(write_pending(&ours, &mut *session).expect("hello"));
        session.read_tls(&mut &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..]).expect("feed");
        let e = session.process_new_packets().expect_err("plaintext is no TLS record");
        let e = fatal(&ours, &mut *session, e);
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().starts_with("TLS: "), "{e}");
        // The ClientHello, then the alert: read until the records end with it.
        other.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        let mut records = vec![0u8; 4096];
        let mut got = 0;
        while !ends_with_alert(&records[..got]) {
            let n = other.read(&mut records[got..]).expect("read the alert");
            assert!(n > 0, "closed before the alert");
            got += n;
        }
    }

    /// Whether `bytes` are whole TLS records, the last an alert (type 21).
    fn ends_with_alert(bytes: &[u8]) -> bool {
        let mut at = 0;
        let mut last = None;
        while at + 5 <= bytes.len() {
            let len = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
            if at + 5 + len > bytes.len() {
                return false;
            }
            last = Some(bytes[at]);
            at += 5 + len;
        }
        at == bytes.len() && last == Some(21)
    }
}
