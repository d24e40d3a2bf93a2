//! Seed addresses: where a client first looks for the broker or cluster.
//!
//! [`crate::Client::connect`] and `cmq --server` take one address or
//! several, comma-separated (`127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703`).
//! The client tries them in order, each within [`NODE_CONNECT_TIMEOUT_MAX`],
//! and learns the rest of the cluster from the first that answers: its
//! handshake carries the cluster map. The seeds stay the fallback for
//! finding the cluster again when every node the client knows fails.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use cmq_protocol::limits::CLUSTER_NODES_MAX;
use cmq_protocol::ErrorCode;

use crate::connection::Connection;
use crate::error::ClientError;

/// Seeds a list may name: a cluster has at most this many nodes, and
/// naming one node twice does not help.
pub const SEEDS_MAX: usize = CLUSTER_NODES_MAX;

/// The longest a client waits for one node to accept a connection and
/// answer its handshake before it tries the next (the caller's timeout when
/// shorter). A node that is down is refused at once; one that is stopped
/// (SIGSTOP) or cut off accepts nothing, and must not hold up the others.
pub const NODE_CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(3);

/// What [`crate::Client::connect`] accepts as seeds: an address string
/// (`"host:port"`, or several separated by commas), a `SocketAddr`, or a
/// list of either.
pub trait ToSeeds {
    /// The seeds, in the order to try them. An empty entry, an empty list or
    /// more than [`SEEDS_MAX`] entries is an `InvalidInput` error.
    fn to_seeds(&self) -> Result<Vec<String>, ClientError>;
}

impl ToSeeds for str {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        checked(self.split(',').map(|s| s.trim().to_owned()).collect())
    }
}

impl ToSeeds for String {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        self.as_str().to_seeds()
    }
}

impl ToSeeds for SocketAddr {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        Ok(vec![self.to_string()])
    }
}

impl ToSeeds for [SocketAddr] {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        checked(self.iter().map(SocketAddr::to_string).collect())
    }
}

impl ToSeeds for Vec<SocketAddr> {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        self.as_slice().to_seeds()
    }
}

impl ToSeeds for [String] {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        checked(self.iter().map(|s| s.trim().to_owned()).collect())
    }
}

impl ToSeeds for [&str] {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        checked(self.iter().map(|s| s.trim().to_owned()).collect())
    }
}

impl<T: ToSeeds + ?Sized> ToSeeds for &T {
    fn to_seeds(&self) -> Result<Vec<String>, ClientError> {
        (**self).to_seeds()
    }
}

fn checked(seeds: Vec<String>) -> Result<Vec<String>, ClientError> {
    let invalid = |msg: String| Err(ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg)));
    if seeds.len() > SEEDS_MAX {
        return invalid(format!("{} seed addresses given; at most {SEEDS_MAX}", seeds.len()));
    }
    if seeds.is_empty() || seeds.iter().any(String::is_empty) {
        return invalid(format!("seed list {:?} has an empty entry", seeds.join(",")));
    }
    Ok(seeds)
}

/// How long one node gets to connect and answer the handshake.
pub(crate) fn node_connect_timeout(timeout: Option<Duration>) -> Duration {
    timeout.map_or(NODE_CONNECT_TIMEOUT_MAX, |t| t.min(NODE_CONNECT_TIMEOUT_MAX))
}

/// Connects to the first of `addrs` that answers, asking for `shard_hint`.
/// Every address gets [`node_connect_timeout`]; `timeout` then bounds the
/// connection's reads and writes. The error of a single failed address is
/// returned as it is; with several, the last one's kind with every
/// address's failure in its message.
pub(crate) fn connect_first<A: AsRef<str>>(
    addrs: &[A],
    shard_hint: Option<u16>,
    timeout: Option<Duration>,
    credentials: Option<&crate::Credentials>,
    tls: Option<&crate::TlsOptions>,
) -> Result<Connection, ClientError> {
    let within = node_connect_timeout(timeout);
    let mut failures: Vec<(String, ClientError)> = Vec::new();
    for addr in addrs {
        let addr = addr.as_ref();
        let tls = tls.map(|t| (t, addr));
        match resolve(addr)
            .and_then(|a| Connection::connect_secure(&a[..], shard_hint, within, timeout, credentials, tls))
        {
            Ok(conn) => return Ok(conn),
            // Refusals every node of a cluster would repeat.
            Err(
                e @ ClientError::Handshake {
                    code: Some(ErrorCode::UNSUPPORTED_VERSION | ErrorCode::AUTH_FAILED), ..
                },
            ) => return Err(e),
            Err(e) => failures.push((addr.to_owned(), e)),
        }
    }
    Err(combined(failures))
}

pub(crate) fn resolve(addr: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} resolves to nothing"),
        )));
    }
    Ok(addrs)
}

fn combined(mut failures: Vec<(String, ClientError)>) -> ClientError {
    if failures.len() <= 1 {
        return failures.pop().map_or(ClientError::Disconnected, |(_, e)| e);
    }
    let text: Vec<String> = failures.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    let kind = match failures.last() {
        Some((_, ClientError::Io(e))) => e.kind(),
        _ => io::ErrorKind::NotConnected,
    };
    ClientError::Io(io::Error::new(kind, format!("no seed answered ({})", text.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_lists_split_and_trim() {
        assert_eq!("a:1, b:2,c:3".to_seeds().unwrap(), vec!["a:1", "b:2", "c:3"]);
        assert_eq!("a:1".to_seeds().unwrap(), vec!["a:1"]);
        let addr: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        assert_eq!(addr.to_seeds().unwrap(), vec!["127.0.0.1:7700"]);
        assert_eq!(vec![addr, addr].to_seeds().unwrap().len(), 2);
    }

    #[test]
    fn empty_entries_and_long_lists_are_refused() {
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2"] {
            let err = bad.to_seeds().expect_err(bad);
            assert!(matches!(&err, ClientError::Io(e) if e.kind() == io::ErrorKind::InvalidInput), "{err:?}");
        }
        let at_limit = vec!["h:1"; SEEDS_MAX].join(",");
        assert_eq!(at_limit.to_seeds().unwrap().len(), SEEDS_MAX);
        let over = vec!["h:1"; SEEDS_MAX + 1].join(",");
        assert!(over.to_seeds().is_err());
    }

    #[test]
    fn a_node_never_gets_more_than_the_cap() {
        assert_eq!(node_connect_timeout(None), NODE_CONNECT_TIMEOUT_MAX);
        assert_eq!(node_connect_timeout(Some(Duration::from_secs(60))), NODE_CONNECT_TIMEOUT_MAX);
        assert_eq!(node_connect_timeout(Some(Duration::from_millis(50))), Duration::from_millis(50));
    }

    #[test]
    fn one_failure_is_kept_as_is_and_several_are_listed() {
        let refused = || ClientError::Io(io::ErrorKind::ConnectionRefused.into());
        assert!(
            matches!(combined(vec![("a:1".into(), refused())]), ClientError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused)
        );
        let both = combined(vec![("a:1".into(), refused()), ("b:2".into(), refused())]);
        let text = both.to_string();
        assert!(text.contains("a:1") && text.contains("b:2"), "{text}");
        assert!(matches!(both, ClientError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused));
    }
}
