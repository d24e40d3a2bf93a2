//! TLS for `https://` endpoints: rustls with the ring provider, trusting
//! Mozilla's root certificates (compiled in from `webpki-roots`) plus the CA
//! certificates of an optional PEM file (`tls_ca_file`, for receivers behind
//! a private CA). TLS 1.2 and 1.3, rustls' safe defaults; the server name is
//! the URL's host (a DNS name or an IP address in the certificate's SAN).

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::http::Deadline;

/// A TLS connection whose socket I/O is bounded by a deadline.
pub type TlsStream = StreamOwned<ClientConnection, Deadline<TcpStream>>;

/// The client configuration shared by every push connection (and its session cache).
pub fn client_config(ca_file: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("push tls_ca_file {path}: {e}"))? {
            let cert = cert.map_err(|e| format!("push tls_ca_file {path}: {e}"))?;
            roots.add(cert).map_err(|e| format!("push tls_ca_file {path}: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("push tls_ca_file {path}: no certificates in it"));
        }
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("push TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Runs the TLS handshake with `host` on a connected socket, within `deadline`.
pub fn handshake(
    config: &Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<TlsStream, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name {host}: {e}"))?;
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS with {host}: {e}"))?;
    let mut s = StreamOwned::new(conn, Deadline { inner: tcp, deadline });
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            let what = if super::http::is_timeout(&e) { "timed out".to_string() } else { e.to_string() };
            return Err(format!("TLS handshake with {host}: {what}"));
        }
    }
    Ok(s)
}
