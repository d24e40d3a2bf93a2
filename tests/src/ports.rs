//! Fixed ports for tests that must name a port before the process that
//! listens on it starts (a cluster's peer ports, a restarted node).
//!
//! A port taken with `bind(":0")` and released lies in the kernel's
//! ephemeral range, where any test's outgoing connection may take it
//! before cmqd binds it ("Address already in use"). So ports come from
//! below that range, and each one is claimed across every test process
//! (nextest runs each test in its own) by an exclusive `flock` on a file
//! named after it, held until this process exits: two tests never get the
//! same port, and a crashed test's claims vanish with it.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;

use rustix::fs::{flock, FlockOperation};

/// The ports handed out come from here: below the default ephemeral range
/// (32768..61000) and above well-known and registered-but-common ones.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// Random draws before giving up (the range has 12,000 ports).
const ATTEMPTS: usize = 10_000;

/// The lock files of the ports this process holds (kept open = claimed).
static CLAIMS: Mutex<Vec<(u16, File)>> = Mutex::new(Vec::new());

/// A loopback port no other test holds and nothing listens on now.
pub fn reserve_port() -> u16 {
    let dir = lock_dir();
    let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    let held: HashSet<u16> = claims.iter().map(|(p, _)| *p).collect();
    for _ in 0..ATTEMPTS {
        let span = (PORT_RANGE.end - PORT_RANGE.start) as u64;
        let port = PORT_RANGE.start + (crate::cluster::random_u64() % span) as u16;
        if held.contains(&port) {
            continue;
        }
        let Some(lock) = claim(&dir, port) else { continue };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            claims.push((port, lock));
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?}");
}

/// [`reserve_port`] on 127.0.0.1.
pub fn reserve_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], reserve_port()))
}

fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("cmq-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock directory");
    dir
}

/// The port's lock file, locked exclusively, or None when another process holds it.
fn claim(dir: &std::path::Path, port: u16) -> Option<File> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string())).ok()?;
    flock(&file, FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice_and_is_locked_against_other_processes() {
        let ports: Vec<u16> = (0..50).map(|_| reserve_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| PORT_RANGE.contains(p)));
        // A second open file description is another claimant, like another process.
        assert!(claim(&lock_dir(), ports[0]).is_none(), "the claim on {} is exclusive", ports[0]);
    }
}
