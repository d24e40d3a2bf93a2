//! The connections to one leader, bounded: at most
//! [`FORWARD_CONNECTIONS_PER_LEADER_MAX`] open at once, in use or idle. A
//! request takes an idle connection of its identity (key and shard), else
//! opens one, closing an idle connection of another identity when the
//! bound is reached, else waits for one to come back (within its deadline).
//! A connection whose request failed or timed out is closed, never pooled:
//! its stream may still carry the answer to the abandoned request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{Dialer, Identity, LeaderConn, OpenError};
use crate::shard::external::Viewer;

/// Connections one node keeps to one leader, in use and idle together.
/// A long poll holds one for its wait (up to 30 s), so this is also how
/// many requests for one leader a follower serves at once; more wait for a
/// connection within their own deadline. 64 fills the leader's shards with
/// pipelines of work on a 2-core machine while bounding the sockets.
pub const FORWARD_CONNECTIONS_PER_LEADER_MAX: usize = 64;

/// An idle connection older than this is closed instead of reused: well
/// under the leader's `--idle-timeout-ms` default (300 s), so the leader
/// rarely closes one under a request.
pub const FORWARD_IDLE_MAX: Duration = Duration::from_secs(60);

/// A connection and its place in the bound.
pub struct Lease {
    pub conn: LeaderConn,
    slot: OwnedSemaphorePermit,
}

pub struct Pool {
    addr: String,
    dialer: Dialer,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Lease>>,
}

impl Pool {
    pub fn new(addr: String, dialer: Dialer) -> Pool {
        let slots = Arc::new(Semaphore::new(FORWARD_CONNECTIONS_PER_LEADER_MAX));
        Pool { addr, dialer, slots, idle: Mutex::new(Vec::new()) }
    }

    /// A connection as `identity` (opened as `viewer` when none is idle).
    /// The caller bounds the wait.
    pub async fn lease(&self, identity: Identity, viewer: &Viewer) -> Result<Lease, OpenError> {
        if let Some(lease) = self.take_idle(&identity) {
            return Ok(lease);
        }
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match self.evict_idle() {
                Some(slot) => slot,
                None => self.slots.clone().acquire_owned().await.map_err(|e| OpenError::Io(e.to_string()))?,
            },
        };
        let conn = LeaderConn::open(&self.addr, &self.dialer, viewer, identity).await?;
        Ok(Lease { conn, slot })
    }

    /// Pools a connection whose last call was answered.
    pub fn give_back(&self, mut lease: Lease) {
        lease.conn.idle_since = Instant::now();
        self.lock().push(lease);
    }

    /// Whether no connection is in use or idle (the pool may be dropped).
    pub fn is_unused(&self) -> bool {
        self.slots.available_permits() == FORWARD_CONNECTIONS_PER_LEADER_MAX
    }

    /// The newest usable idle connection of `identity`. Those idle too
    /// long are closed; one the leader closed is found when it is next
    /// wanted (one non-blocking read each, not one per idle connection).
    fn take_idle(&self, identity: &Identity) -> Option<Lease> {
        let mut idle = self.lock();
        idle.retain(|l| l.conn.idle_since.elapsed() < FORWARD_IDLE_MAX);
        while let Some(at) = idle.iter().rposition(|l| &l.conn.identity == identity) {
            let lease = idle.remove(at);
            if lease.conn.is_usable() {
                return Some(lease);
            }
        }
        None
    }

    /// Closes the oldest idle connection and hands over its slot.
    fn evict_idle(&self) -> Option<OwnedSemaphorePermit> {
        let mut idle = self.lock();
        let oldest = (0..idle.len()).min_by_key(|&i| idle[i].conn.idle_since)?;
        Some(idle.remove(oldest).slot)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Lease>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use bytes::BytesMut;
    use cmq_protocol::frame;
    use cmq_protocol::{HandshakeOk, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    use super::*;

    /// A leader that accepts every handshake (anonymous), and closes the
    /// connection after it when `close`; counts connections.
    async fn fake_leader(close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        if let Ok(Some(total)) = frame::check(&buf) {
                            let (header, _) = frame::split(&mut buf, total);
                            let mut out = Vec::new();
                            Response::Handshake(HandshakeOk::default()).encode_frame(header.request_id, &mut out);
                            if s.write_all(&out).await.is_err() || close {
                                return;
                            }
                        } else if s.read_buf(&mut buf).await.map_or(true, |n| n == 0) {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn at_most_the_bound_is_open_and_idle_connections_make_room_for_other_identities() {
        let (addr, accepted) = fake_leader(false).await;
        let dialer = Dialer::default();
        let pool = Pool::new(addr, dialer.clone());
        let a = Identity { secret_id: None, shard: Some(0) };
        let mut held = Vec::new();
        for _ in 0..FORWARD_CONNECTIONS_PER_LEADER_MAX {
            held.push(pool.lease(a.clone(), &None).await.expect("lease"));
        }
        let waited = timeout(Duration::from_millis(100), pool.lease(a.clone(), &None)).await;
        assert!(waited.is_err(), "one past the bound waits");
        let open = || dialer.open.load(SeqCst) as usize;
        assert_eq!(open(), FORWARD_CONNECTIONS_PER_LEADER_MAX, "the gauge counts every open connection");
        // Given back: the same identity reuses it, no new connection.
        pool.give_back(held.pop().expect("held"));
        let again =
            timeout(Duration::from_secs(5), pool.lease(a.clone(), &None)).await.expect("in time").expect("lease");
        assert_eq!(accepted.load(SeqCst), FORWARD_CONNECTIONS_PER_LEADER_MAX);
        // Idle, it is closed to make room for another identity: still within the bound.
        pool.give_back(again);
        let b = Identity { shard: Some(1), ..a };
        let other = timeout(Duration::from_secs(5), pool.lease(b, &None)).await.expect("in time").expect("lease");
        assert_eq!(accepted.load(SeqCst), FORWARD_CONNECTIONS_PER_LEADER_MAX + 1);
        assert_eq!(pool.slots.available_permits(), 0);
        assert!(!pool.is_unused());
        assert_eq!(open(), FORWARD_CONNECTIONS_PER_LEADER_MAX, "the evicted one was closed");
        drop((held, other));
        assert!(pool.is_unused(), "every slot back once the leases end");
        assert_eq!(open(), 0, "closed connections leave the gauge");
    }

    #[tokio::test]
    async fn a_connection_the_leader_closed_is_not_reused() {
        let (addr, accepted) = fake_leader(true).await;
        let pool = Pool::new(addr, Dialer::default());
        let a = Identity { secret_id: Some("AKIDx".into()), shard: None };
        let lease = pool.lease(a.clone(), &None).await.expect("lease");
        let deadline = Instant::now() + Duration::from_secs(5);
        while lease.conn.is_usable() {
            assert!(Instant::now() < deadline, "the close never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pool.give_back(lease);
        let _fresh = pool.lease(a, &None).await.expect("lease");
        assert_eq!(accepted.load(SeqCst), 2, "a new connection, not the closed one");
        assert_eq!(
            pool.slots.available_permits(),
            FORWARD_CONNECTIONS_PER_LEADER_MAX - 1,
            "the closed one's slot came back"
        );
    }
}
