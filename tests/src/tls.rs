//! A certificate authority made by the tests themselves (rcgen), so no
//! private key is ever committed: a CA, a server certificate for
//! `localhost` and 127.0.0.1, a client certificate for mutual TLS, and an
//! unrelated CA (for "untrusted" cases), written as PEM files to a
//! temporary directory that lives as long as the value.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: trusting only it fails verification.
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca` (refused under mTLS).
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
    /// A node certificate for `localhost`/127.0.0.1 signed by `other_ca`
    /// (a node from another cluster: refused under peer TLS).
    pub stranger_node_cert: PathBuf,
    pub stranger_node_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tmp");
        let path = |name: &str| dir.path().join(name);
        let ca = make_ca("cmq test CA");
        let other = make_ca("unrelated CA");
        write(&path("ca.pem"), &ca.pem());
        write(&path("other-ca.pem"), &other.pem());
        let (cert, key) = leaf(&ca, &["localhost", "127.0.0.1"], "cmqd");
        write(&path("server.pem"), &cert);
        write(&path("server.key"), &key);
        let (cert, key) = leaf(&ca, &["client.test"], "client");
        write(&path("client.pem"), &cert);
        write(&path("client.key"), &key);
        let (cert, key) = leaf(&other, &["stranger.test"], "stranger");
        write(&path("stranger.pem"), &cert);
        write(&path("stranger.key"), &key);
        let (cert, key) = leaf(&other, &["localhost", "127.0.0.1"], "stranger node");
        write(&path("stranger-node.pem"), &cert);
        write(&path("stranger-node.key"), &key);
        TestPki {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
            other_ca: path("other-ca.pem"),
            stranger_cert: path("stranger.pem"),
            stranger_key: path("stranger.key"),
            stranger_node_cert: path("stranger-node.pem"),
            stranger_node_key: path("stranger-node.key"),
            _dir: dir,
        }
    }

    /// `cmqd` flags serving TLS with the server certificate.
    pub fn server_args(&self) -> Vec<String> {
        vec!["--tls-cert".into(), s(&self.server_cert), "--tls-key".into(), s(&self.server_key)]
    }

    /// `cmqd` flags serving mutual TLS (clients need a certificate from the CA).
    pub fn mtls_server_args(&self) -> Vec<String> {
        let mut args = self.server_args();
        args.extend(["--tls-client-ca".into(), s(&self.ca)]);
        args
    }
}

impl TestPki {
    /// `cmqd` flags for TLS on the peer links: the server certificate (it
    /// names 127.0.0.1, where the cluster harness's nodes dial each other)
    /// both ways, and the test CA for the other nodes' certificates.
    pub fn peer_args(&self) -> Vec<String> {
        peer_flags(&self.server_cert, &self.server_key, &self.ca)
    }

    /// Peer TLS flags of a node from another cluster: its certificate and
    /// the CA it trusts are `other_ca`'s.
    pub fn stranger_peer_args(&self) -> Vec<String> {
        peer_flags(&self.stranger_node_cert, &self.stranger_node_key, &self.other_ca)
    }
}

fn peer_flags(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    ["--peer-tls-cert", &s(cert), "--peer-tls-key", &s(key), "--peer-tls-ca", &s(ca)].map(String::from).to_vec()
}

impl TestPki {
    /// A TLS 1.3 client configuration trusting the test CA, presenting the
    /// client certificate when `with_cert` (for `--tls-client-ca`).
    pub fn client_config(&self, with_cert: bool) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("CA file") {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        let builder = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots);
        let config = if with_cert {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.client_cert)
                .expect("client cert")
                .collect::<Result<_, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_file(&self.client_key).expect("client key");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        } else {
            builder.with_no_client_auth()
        };
        std::sync::Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> TestPki {
        TestPki::new()
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A certificate for `names` signed by `ca`, and its key (PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str], cn: &str) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write PEM");
}
