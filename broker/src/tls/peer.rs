//! TLS on the peer port (`--peer-tls-cert`, `--peer-tls-key`,
//! `--peer-tls-ca`): mutual TLS 1.3 between the nodes of a cluster.
//!
//! Every node presents the same kind of certificate both ways: as a server
//! to the nodes that dial it, as a client to the nodes it dials. Both must
//! chain to `--peer-tls-ca`; a dialer also checks that the certificate
//! names the IP address it dialled (the address in `--peers`). The
//! cluster-key handshake still runs inside the TLS session, its MACs bound
//! to the session with the tls-exporter (so a node without the cluster key
//! cannot join even with a certificate from the CA, and a certificate alone
//! never authorises anything). TLS 1.3 only, no session resumption (peer
//! links are long-lived; every dial is a full handshake).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::{load_root_store, read_certs, read_key};

/// Where this node's peer certificate, its key and the cluster's CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Every node's certificate must chain to a CA in this file.
    pub ca: PathBuf,
}

/// The rustls configurations of both sides of a peer link.
#[derive(Clone)]
pub struct PeerTls {
    /// The acceptor's side (requires a client certificate from the CA).
    pub server: Arc<ServerConfig>,
    /// The dialer's side (presents this node's certificate).
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTlsFiles {
    /// Reads the files once and builds both configurations; errors name the flag and file.
    pub fn load(&self) -> anyhow::Result<PeerTls> {
        let certs = read_certs(&self.cert, "--peer-tls-cert")?;
        let key = read_key(&self.key, "--peer-tls-key")?;
        let roots = Arc::new(load_root_store(&self.ca, "--peer-tls-ca")?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = || format!("--peer-tls-cert {} / --peer-tls-key {}", self.cert.display(), self.key.display());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .with_context(|| format!("--peer-tls-ca {}", self.ca.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .with_context(pair)?;
        // Nothing resumes: no tickets to send, store or rotate.
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .with_context(pair)?;
        client.resumption = Resumption::disabled();
        Ok(PeerTls { server: Arc::new(server), client: Arc::new(client) })
    }
}

impl PeerTls {
    /// The dialer's session with the node at `ip` (its certificate must name that IP).
    pub fn dial(&self, ip: IpAddr) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.client.clone(), ServerName::IpAddress(ip.into()))
    }

    /// The acceptor's session for one inbound connection.
    pub fn accept(&self) -> Result<ServerConnection, rustls::Error> {
        ServerConnection::new(self.server.clone())
    }
}
