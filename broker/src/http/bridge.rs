//! Asking the shards from the HTTP thread: a `ShardMsg::Stats` into each
//! shard's inbox (which wakes it if it sleeps), answered from the shard's
//! own thread through a oneshot channel. The shards never run the runtime;
//! a shard that does not answer in time is reported missing, not waited for.

use std::time::Duration;

use tokio::sync::{oneshot, Mutex};
use tokio::time::Instant;

use crate::metrics::snapshot::{ShardSnapshot, StatsRequest};
use crate::shard::mailbox::{ShardHandle, ShardMsg};

/// One shard's answer and how long it took.
pub struct Answered {
    pub snapshot: ShardSnapshot,
    pub took: Duration,
}

pub struct ShardBridge {
    shards: Vec<ShardHandle>,
    /// One round of questions at a time: concurrent scrapes queue here
    /// instead of multiplying the work they ask of the shards.
    round: Mutex<()>,
}

impl ShardBridge {
    pub fn new(shards: Vec<ShardHandle>) -> ShardBridge {
        ShardBridge { shards, round: Mutex::new(()) }
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

    /// Testing only: blocks shard `shard`'s loop for `ms`.
    pub fn stall(&self, shard: usize, ms: u64) -> bool {
        self.shards.get(shard).is_some_and(|h| h.send(ShardMsg::Stall { ms }).is_ok())
    }
}
