//! Shutting down: no new connections, in-flight work finished (bounded by
//! a grace period), async data made durable, then the loop exits.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cmq_protocol::ErrorCode;

use super::reply::ReplyDep;
use super::Shard;

/// How long a shutting-down broker waits for in-flight work before exiting anyway.
const SHUTDOWN_GRACE_MS: u64 = 10_000;

/// How long shutdown waits for the final fdatasync.
const SHUTDOWN_SYNC_MS: u64 = 5_000;

/// Shutdown under way: since when, and whether this shard has drained.
pub(super) struct Drain {
    pub(super) draining: bool,
    pub(super) drain_deadline_ms: u64,
    pub(super) reported_drained: bool,
}

impl Shard {
    pub(super) fn begin_drain(&mut self, now: u64) {
        log::info!("shard {}: shutting down: no new connections, finishing in-flight work", self.id);
        self.drain.draining = true;
        self.drain.drain_deadline_ms = now + SHUTDOWN_GRACE_MS;
        if let Some(mut l) = self.clients.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let waits = self.engine.take_waiters();
        self.end_waits(waits, ErrorCode::SHUTTING_DOWN, "server shutting down", ReplyDep::Read);
    }

    /// One step of draining; returns true when the shard may exit.
    pub(super) fn drain_step(&mut self, now: u64) -> bool {
        let idle = self.durability.waiting.is_empty()
            && self.log.is_idle()
            && self.cross.unsent.is_empty()
            && self.cross.staged.is_empty()
            && self.cross.deferred.is_empty()
            && self.clients.conns.iter().all(|(_, c)| c.written == c.out.len() || c.releasable == 0);
        if idle && !self.drain.reported_drained {
            self.drain.reported_drained = true;
            self.shared.drained.fetch_add(1, Ordering::SeqCst);
        }
        let everyone = self.shared.drained.load(Ordering::SeqCst) >= self.shared.cfg.shards;
        if everyone || now >= self.drain.drain_deadline_ms {
            // Every shard has sent what it had for our connections: take in
            // the last of it, write it out, then close.
            self.drain_inbox(now);
            self.end_turn(now);
            let tokens: Vec<usize> = self.clients.conns.iter().map(|(t, _)| t).collect();
            for t in &tokens {
                self.write_conn(*t);
            }
            // Async data too is made durable before exiting.
            if !self.log.sync_and_wait(Duration::from_millis(SHUTDOWN_SYNC_MS)) {
                log::warn!("shard {}: final fdatasync did not finish in time", self.id);
            }
            if !everyone {
                log::warn!("shard {}: shutdown grace period over with work in flight", self.id);
            }
            for t in tokens {
                self.close_conn(t);
            }
            return true;
        }
        false
    }
}
