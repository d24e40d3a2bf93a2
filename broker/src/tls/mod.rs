//! TLS for the client port and the HTTP port (`--tls-cert`, `--tls-key`,
//! optional `--tls-client-ca` for mutual TLS): the certificate files are
//! read once at start-up into rustls configurations (ring provider).
//!
//! The client port speaks TLS 1.3 only: the authentication handshake binds
//! its MAC to the TLS session with RFC 9266's tls-exporter, which is defined
//! for TLS 1.3 (TLS 1.2's exporter is only safe with extended master secret).
//! The HTTP port also accepts TLS 1.2, for older HTTP clients.

pub mod peer;
pub mod transport;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Where the certificate, its key and the client CA come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set: clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// The server configurations built from [`TlsFiles`].
#[derive(Clone)]
pub struct TlsConfigs {
    /// The binary client port (TLS 1.3).
    pub client_port: Arc<ServerConfig>,
    /// The HTTP port (TLS 1.3 and 1.2, ALPN http/1.1).
    pub http_port: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigs")
    }
}

impl TlsFiles {
    /// Reads the files and builds both configurations; errors name the file.
    pub fn load(&self) -> anyhow::Result<TlsConfigs> {
        let certs = read_certs(&self.cert, "--tls-cert")?;
        let key = read_key(&self.key, "--tls-key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |versions: &[&'static rustls::SupportedProtocolVersion]| -> anyhow::Result<ServerConfig> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .context("TLS protocol versions")?;
            let builder = match &self.client_ca {
                Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &provider)?),
                None => builder.with_no_client_auth(),
            };
            builder
                .with_single_cert(certs.clone(), key.clone_key())
                .with_context(|| format!("--tls-cert {} / --tls-key {}", self.cert.display(), self.key.display()))
        };
        let client_port = build(&[&rustls::version::TLS13])?;
        let mut http_port = build(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        http_port.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfigs { client_port: Arc::new(client_port), http_port: Arc::new(http_port) })
    }
}

/// The PEM certificates in `path` (at least one); errors name `flag` and the file.
pub(crate) fn read_certs(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no PEM certificate in the file", path.display());
    }
    Ok(certs)
}

/// The first PEM private key in `path`; errors name `flag` and the file.
pub(crate) fn read_key(path: &Path, flag: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{flag} {}: no PEM private key ({e})", path.display()))
}

/// A root store of every PEM certificate in the CA file `path` (at least
/// one, each a usable trust anchor); errors name `flag` and the file.
pub(crate) fn load_root_store(path: &Path, flag: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, flag)? {
        roots.add(cert).with_context(|| format!("{flag} {}", path.display()))?;
    }
    Ok(roots)
}

fn client_verifier(
    ca: &Path,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let roots = load_root_store(ca, "--tls-client-ca")?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .with_context(|| format!("--tls-client-ca {}", ca.display()))
}

#[cfg(test)]
mod tests {
    use cmq_integration_tests::tls::TestPki;

    use super::peer::PeerTlsFiles;
    use super::*;

    /// The error text of a failed load.
    fn error_of<T>(r: anyhow::Result<T>) -> String {
        match r {
            Ok(_) => panic!("the load succeeded"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn both_kinds_of_configuration_load_from_the_same_files() {
        let pki = TestPki::new();
        let files =
            TlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca: Some(pki.ca.clone()) };
        let configs = files.load().expect("client and HTTP port");
        assert_eq!(configs.http_port.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let peer = PeerTlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), ca: pki.ca.clone() };
        peer.load().expect("peer port");
        assert_eq!(load_root_store(&pki.ca, "--ca").expect("roots").len(), 1);
    }

    /// Each file's error names its flag, the file and what is wrong with it.
    #[test]
    fn errors_name_the_flag_and_the_file() {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().expect("tmp");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let missing = dir.path().join("missing.pem");
        let files = TlsFiles { cert: missing.clone(), key: pki.server_key.clone(), client_ca: None };
        let e = error_of(files.load());
        assert!(e.starts_with(&format!("--tls-cert {}: ", missing.display())), "{e}");
        // A certificate where the key belongs.
        let peer = PeerTlsFiles { cert: pki.server_cert.clone(), key: pki.server_cert.clone(), ca: pki.ca.clone() };
        let e = error_of(peer.load());
        assert!(e.starts_with(&format!("--peer-tls-key {}: no PEM private key", pki.server_cert.display())), "{e}");
        let peer = PeerTlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), ca: empty.clone() };
        let e = error_of(peer.load());
        assert_eq!(e, format!("--peer-tls-ca {}: no PEM certificate in the file", empty.display()));
        let e = error_of(load_root_store(&missing, "--gateway-ca"));
        assert!(e.starts_with(&format!("--gateway-ca {}: ", missing.display())), "{e}");
    }
}
