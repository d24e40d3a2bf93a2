//! Asking the shards from the HTTP thread: a `ShardMsg::Stats` into each
//! shard's inbox (which wakes it if it sleeps), answered from the shard's
//! own thread through a oneshot channel. The shards never run the runtime;
//! a shard that does not answer in time is reported missing, not waited for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cmq_protocol::names::shard_for;
use cmq_protocol::{Request, Route};

use tokio::sync::{oneshot, Mutex};
use tokio::time::Instant;

use crate::metrics::snapshot::{ShardSnapshot, StatsRequest};
use crate::shard::external::{ExternalRequest, Registry, Viewer};
use crate::shard::mailbox::{ShardHandle, ShardMsg};

/// One shard's answer and how long it took.
pub struct Answered {
    pub snapshot: ShardSnapshot,
    pub took: Duration,
}

/// Why an external request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The shard's inbox was full (or it has exited).
    Busy,
    /// The shard dropped the request (shutting down).
    Dropped,
    /// No answer in time.
    TimedOut,
}

pub struct ShardBridge {
    shards: Vec<ShardHandle>,
    /// Spreads requests any shard may run.
    next_any: AtomicUsize,
    /// One round of questions at a time: concurrent scrapes queue here
    /// instead of multiplying the work they ask of the shards.
    round: Mutex<()>,
}

impl ShardBridge {
    pub fn new(shards: Vec<ShardHandle>) -> ShardBridge {
        ShardBridge { shards, next_any: AtomicUsize::new(0), round: Mutex::new(()) }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every shard's snapshot, by shard id; None for a shard whose inbox
    /// was full or that did not answer `within`.
    pub async fn gather(&self, top_queues: Option<usize>, within: Duration) -> Vec<Option<Answered>> {
        let _round = self.round.lock().await;
        let started = Instant::now();
        let deadline = started + within;
        let pending: Vec<Option<oneshot::Receiver<ShardSnapshot>>> = self
            .shards
            .iter()
            .map(|h| {
                let (tx, rx) = oneshot::channel();
                let reply = Box::new(move |s: ShardSnapshot| {
                    let _ = tx.send(s);
                });
                h.send(ShardMsg::Stats(StatsRequest { top_queues, reply })).ok().map(|()| rx)
            })
            .collect();
        let mut out = Vec::with_capacity(pending.len());
        for rx in pending {
            let answer = match rx {
                Some(rx) => tokio::time::timeout_at(deadline, rx).await.ok().and_then(Result::ok),
                None => None,
            };
            out.push(answer.map(|snapshot| Answered { snapshot, took: started.elapsed() }));
        }
        out
    }

    /// Runs `request` on the shard that owns its queue or topic (any shard
    /// for the rest, in turn) and awaits the answer frame, at most `within`.
    /// `viewer`: whom lists are filtered for. The waiter is forgotten when
    /// this future ends, answered or not (a client that went away).
    pub async fn execute(
        &self,
        registry: &Registry,
        request: Request,
        viewer: Viewer,
        within: Duration,
    ) -> Result<Bytes, Unanswered> {
        let n = self.shards.len() as u16;
        let shard = match request.route() {
            Route::Queue(q) => shard_for(q, n),
            Route::Shard(s) if s < n => s,
            _ => (self.next_any.fetch_add(1, Ordering::Relaxed) % usize::from(n.max(1))) as u16,
        };
        let (token, rx) = registry.register(viewer);
        struct Forget<'a>(&'a Registry, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.cancel(self.1);
            }
        }
        let _forget = Forget(registry, token);
        let msg = ShardMsg::External(Box::new(ExternalRequest { token, request }));
        if self.shards.get(usize::from(shard)).is_none_or(|h| h.send(msg).is_err()) {
            return Err(Unanswered::Busy);
        }
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(Unanswered::Dropped),
            Err(_) => Err(Unanswered::TimedOut),
        }
    }

    /// Testing only: blocks shard `shard`'s loop for `ms`.
    pub fn stall(&self, shard: usize, ms: u64) -> bool {
        self.shards.get(shard).is_some_and(|h| h.send(ShardMsg::Stall { ms }).is_ok())
    }
}
