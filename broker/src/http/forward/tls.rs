//! Forwarding where the client ports serve TLS (`--tls-cert`): every node
//! of a cluster does or none does, so a follower reaches the leader's
//! client port over TLS 1.3, as any client of it would.
//!
//! Trust: `--forward-tls-ca`, else `--peer-tls-ca` (the cluster's own CA
//! often signs both kinds of certificate); with neither, nothing is
//! forwarded ([`Setup::Off`]: the answer stays the NOT_LEADER naming the
//! leader, and the reason is logged once at start). The leader's
//! certificate must name the host of the client address it advertises (an
//! IP address as an IP subjectAltName), as `cmq --tls` checks the host it
//! dials. Where the leader requires client certificates
//! (`--tls-client-ca`), this node presents its `--peer-tls-cert`/`-key`
//! when it has them; without them the leader refuses the TLS handshake and
//! the caller gets 6000 saying the leader could not be reached.
//!
//! The PEM files are read once, at start, by `crate::tls`'s loaders (each
//! error names the flag and the file).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::config::Config;
use crate::tls::{load_root_store, read_certs, read_key};

/// How this node reaches the leaders' client ports.
pub enum Setup {
    /// No cluster: nothing is forwarded.
    Alone,
    /// Plaintext client ports.
    Plain,
    /// TLS client ports, with a CA to trust.
    Tls(TlsConnector),
    /// TLS client ports and no CA to trust: not forwarded; why.
    Off(&'static str),
}

/// Why forwarding is off on a TLS node without a CA (logged at start).
pub const OFF_NO_CA: &str = "the client ports serve TLS (--tls-cert) and this node has no CA to verify the \
     other nodes' client-port certificates (--forward-tls-ca or --peer-tls-ca): requests for shards other nodes \
     lead are answered 6000 naming the leader, not forwarded";

impl Setup {
    /// Reads `cfg`'s files (errors name the flag and file: cmqd stops at start).
    pub fn from_config(cfg: &Config) -> anyhow::Result<Setup> {
        let Some(cluster) = &cfg.cluster else { return Ok(Setup::Alone) };
        if cfg.tls.is_none() {
            return Ok(Setup::Plain);
        }
        let peer = cluster.tls.as_ref();
        let ca = match (&cfg.forward_tls_ca, peer) {
            (Some(ca), _) => (ca.as_path(), "--forward-tls-ca"),
            (None, Some(p)) => (p.ca.as_path(), "--peer-tls-ca"),
            (None, None) => return Ok(Setup::Off(OFF_NO_CA)),
        };
        let identity = peer.map(|p| (p.cert.as_path(), p.key.as_path()));
        Ok(Setup::Tls(TlsConnector::from(Arc::new(client_config(ca, identity)?))))
    }
}

/// TLS 1.3 (the client port's only version) trusting the CAs in `ca`,
/// presenting `identity` (certificate chain, key) when given.
fn client_config((ca, flag): (&Path, &str), identity: Option<(&Path, &Path)>) -> anyhow::Result<ClientConfig> {
    let roots = load_root_store(ca, flag)?;
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let Some((cert, key)) = identity else { return Ok(builder.with_no_client_auth()) };
    let chain = read_certs(cert, "--peer-tls-cert")?;
    let key = read_key(key, "--peer-tls-key")?;
    builder
        .with_client_auth_cert(chain, key)
        .with_context(|| format!("--peer-tls-cert {} as a client certificate", cert.display()))
}

/// The name the leader's certificate must carry: the host of its client
/// address ("host:port", "[v6]:port"), an IP address or a DNS name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("no TLS name in the leader's address {addr:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use cmq_integration_tests::tls::TestPki;

    use super::*;

    /// A cluster node's settings with `more` flags (a cluster key made here).
    fn config(dir: &Path, more: &[String]) -> anyhow::Result<Config> {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("cluster.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef").expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let base = ["--peer-listen", "127.0.0.1:7801", "--peers", "2=127.0.0.1:7802", "--cluster-key-file"];
        let mut args: Vec<String> = ["cmqd"].iter().chain(&base).map(|s| s.to_string()).collect();
        args.push(key.to_str().expect("utf-8").to_owned());
        args.extend(more.iter().cloned());
        Config::from_flags(crate::config::Flags::parse_from(args))
    }

    fn kind(setup: &Setup) -> &'static str {
        match setup {
            Setup::Alone => "alone",
            Setup::Plain => "plain",
            Setup::Tls(_) => "tls",
            Setup::Off(_) => "off",
        }
    }

    #[test]
    fn tls_client_ports_forward_with_a_ca_and_not_without_one() {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().expect("tmp");
        let setup = |more: &[String]| Setup::from_config(&config(dir.path(), more).expect("valid settings"));
        assert_eq!(kind(&setup(&[]).expect("plain")), "plain");
        assert_eq!(kind(&setup(&pki.server_args()).expect("no CA")), "off");
        let with_peer = [pki.server_args(), pki.peer_args()].concat();
        assert_eq!(kind(&setup(&with_peer).expect("peer CA")), "tls");
        let forward_ca = |ca: &Path| vec!["--forward-tls-ca".to_owned(), ca.to_str().expect("utf-8").to_owned()];
        let with_own = [pki.server_args(), forward_ca(&pki.ca)].concat();
        assert_eq!(kind(&setup(&with_own).expect("forward CA")), "tls");
        // Unreadable files stop cmqd at start, naming the flag.
        let missing = [pki.server_args(), forward_ca(&dir.path().join("none.pem"))].concat();
        let err = setup(&missing).err().expect("refused").to_string();
        assert!(err.contains("--forward-tls-ca"), "{err}");
        let not_a_cert = [pki.server_args(), forward_ca(&pki.server_key)].concat();
        let err = setup(&not_a_cert).err().expect("refused").to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let alone = Config::from_flags(crate::config::Flags::parse_from(["cmqd"])).expect("single node");
        assert_eq!(kind(&Setup::from_config(&alone).expect("alone")), "alone");
    }

    #[test]
    fn the_name_checked_is_the_host_of_the_address() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().expect("ip").into());
        assert_eq!(server_name("127.0.0.1:7700"), Ok(ip("127.0.0.1")));
        assert_eq!(server_name("[::1]:7700"), Ok(ip("::1")));
        assert_eq!(server_name("broker.example:7700"), Ok(ServerName::try_from("broker.example").expect("dns")));
        assert!(server_name("bad name:7700").is_err());
    }
}
