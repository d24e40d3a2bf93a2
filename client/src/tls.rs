//! TLS to the broker's client port (`cmqd --tls-cert`): the CLI's and
//! load generator's `--tls`, `--ca-file FILE`, and `--tls-cert/--tls-key`
//! for mutual TLS. TLS 1.3 only, as the broker's client port (its
//! authentication binds to the session with RFC 9266's tls-exporter).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::error::ClientError;

/// How to reach a TLS port: whom to trust, and the certificate to show.
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<ClientConfig>,
    /// Verify the broker's certificate for this name instead of the host
    /// of the address dialled.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Trusts the CAs in the PEM file `ca_file`, or without one Mozilla's
    /// root CAs (compiled in); `client_cert` is a PEM certificate chain and
    /// its PEM key, for a broker that asks for one (`--tls-client-ca`).
    pub fn new(ca_file: Option<&Path>, client_cert: Option<(&Path, &Path)>) -> Result<TlsOptions, ClientError> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in read_certs(path, "--ca-file")? {
                    roots.add(cert).map_err(|e| invalid(format!("--ca-file {}: {e}", path.display())))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert, "--tls-cert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| invalid(format!("--tls-key {}: no PEM private key ({e})", key.display())))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| invalid(format!("--tls-cert: {e}")))?
            }
        };
        Ok(TlsOptions { config: Arc::new(config), server_name: None })
    }

    /// Verifies the broker's certificate for `name` whatever address is dialled.
    pub fn with_server_name(mut self, name: &str) -> Result<TlsOptions, ClientError> {
        let name = ServerName::try_from(name.to_owned()).map_err(|e| invalid(format!("server name {name:?}: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The name to verify for a connection to `addr` ("host:port").
    fn name_for(&self, addr: &str) -> Result<ServerName<'static>, ClientError> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => addr,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| invalid(format!("server name {host:?}: {e}")))
    }

    /// Runs the TLS handshake over `tcp` (blocking, within its timeouts)
    /// with the broker at `addr` ("host:port", whose host is the name to
    /// verify unless [`TlsOptions::with_server_name`] set one).
    pub fn handshake(
        &self,
        addr: &str,
        mut tcp: TcpStream,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, ClientError> {
        let name = self.name_for(addr)?;
        let mut conn = ClientConnection::new(self.config.clone(), name).map_err(|e| invalid(format!("TLS: {e}")))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                return Err(handshake_failed(addr, e));
            }
        }
        Ok(StreamOwned::new(conn, tcp))
    }

    pub(crate) fn open(&self, addr: &str, tcp: TcpStream) -> Result<TlsStream, ClientError> {
        Ok(TlsStream(Box::new(self.handshake(addr, tcp)?)))
    }
}

/// A TLS session over a socket.
pub(crate) struct TlsStream(Box<StreamOwned<ClientConnection, TcpStream>>);

impl TlsStream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.0.sock
    }

    pub(crate) fn channel_binding(&self) -> Result<[u8; cmq_protocol::auth::TLS_EXPORTER_BYTES], ClientError> {
        channel_binding(&self.0.conn)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// RFC 9266 tls-exporter channel binding of a session, for the
/// authentication transcript (protocol/PROTOCOL.md, "Authentication").
pub fn channel_binding(conn: &ClientConnection) -> Result<[u8; cmq_protocol::auth::TLS_EXPORTER_BYTES], ClientError> {
    let out = [0u8; cmq_protocol::auth::TLS_EXPORTER_BYTES];
    conn.export_keying_material(out, cmq_protocol::auth::TLS_EXPORTER_LABEL, None)
        .map_err(|e| invalid(format!("TLS channel binding: {e}")))
}

/// A failed TLS handshake, saying what probably went wrong.
fn handshake_failed(addr: &str, e: io::Error) -> ClientError {
    let tls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let garbled = tls_error.is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
    let refused =
        tls_error.is_some_and(|r| matches!(r, rustls::Error::AlertReceived(rustls::AlertDescription::InternalError)));
    let hint = if refused {
        // What cmqd's TLS port answers a connection over its limit (PROTOCOL.md §4, "TLS").
        " (the broker refused the connection: it is probably at its connection limit (--max-connections) \
         or its buffer budget (--buffer-budget-bytes); retry later)"
    } else if garbled || e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::ConnectionReset {
        " (the server did not answer in TLS: is its port plaintext? then connect without --tls)"
    } else {
        ""
    };
    ClientError::Handshake { code: None, message: format!("TLS handshake with {addr} failed: {e}{hint}") }
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{flag} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{flag} {}: no PEM certificate in the file", path.display())));
    }
    Ok(certs)
}

fn invalid(message: String) -> ClientError {
    ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
}
