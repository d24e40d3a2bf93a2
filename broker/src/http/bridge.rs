//! Asking the shards from the HTTP thread: a `ShardMsg::Stats` into each
//! shard's inbox (which wakes it if it sleeps), answered from the shard's
//! own thread through a oneshot channel. The shards never run the runtime;
//! a shard that does not answer in time is reported missing, not waited for.
//! Gateway requests reach their shard gathered per runtime turn (`lane.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cmq_protocol::names::shard_for;
use cmq_protocol::{Request, Route};

use tokio::sync::{oneshot, Mutex};
use tokio::time::Instant;

use super::lane::{FlushOnDrop, Lane};
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
    /// Gateway requests not yet sent, by shard.
    lanes: Vec<Lane>,
    /// Spreads requests any shard may run.
    next_any: AtomicUsize,
    /// One round of questions at a time: concurrent scrapes queue here
    /// instead of multiplying the work they ask of the shards.
    round: Mutex<()>,
}

impl ShardBridge {
    pub fn new(shards: Vec<ShardHandle>) -> ShardBridge {
        let lanes = shards.iter().map(|_| Lane::default()).collect();
        ShardBridge { shards, lanes, next_any: AtomicUsize::new(0), round: Mutex::new(()) }
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
    /// this future ends, answered or not. Unanswered (the HTTP client went
    /// away, or the wait timed out), the shard is told as it is told of a
    /// closed binary connection (`ShardMsg::ConnClosed`): a parked long
    /// poll is released instead of being served a message nobody receives
    /// (which would stay invisible until its visibility timeout).
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
        let (Some(handle), Some(lane)) = (self.shards.get(usize::from(shard)), self.lanes.get(usize::from(shard)))
        else {
            return Err(Unanswered::Busy);
        };
        let (token, rx) = registry.register(viewer);
        let _forget = Forget { registry, token, lane, shard: handle };
        if lane.push(ExternalRequest { token, request }) {
            // Dropped after the yield, or with this future during it: either way the lane goes out.
            let _flush = FlushOnDrop { lane, shard: handle, registry };
            tokio::task::yield_now().await;
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

/// Forgets an external request's waiter when its future ends; takes the
/// request back if it never left its lane, else tells the shard when no
/// answer had come (see `execute`).
struct Forget<'a> {
    registry: &'a Registry,
    token: u64,
    lane: &'a Lane,
    shard: &'a ShardHandle,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        // The shard hears of it before the registry forgets the token, so
        // anything that sees the waiter gone (a scrape's
        // `cmq_http_requests_waiting`) knows the shard's inbox holds the news.
        if !self.registry.is_waiting(self.token) || self.lane.withdraw(self.token) {
            self.registry.cancel(self.token);
            return;
        }
        let reply_to = crate::shard::external::reply_to(self.token);
        if self.shard.send(ShardMsg::ConnClosed { reply_to }).is_err() {
            // Inbox full: the long poll stays parked until its wait ends.
            log::debug!(target: "cmq::http", "could not release abandoned request {}: shard inbox full", self.token);
        }
        self.registry.cancel(self.token);
    }
}
