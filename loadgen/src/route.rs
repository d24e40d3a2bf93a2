//! Where each shard's pipes connect: the node that leads the shard.
//!
//! One `Router` per run, shared by the event-loop threads. It holds the
//! client library's picture of the cluster (`cmq_client::routes::Routes`):
//! fed by every pipe's handshake (the answering node's cluster map) and by
//! `NOT_LEADER` answers, which name the leader. A single node leads every
//! shard, so against one `cmqd` nothing changes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cmq_client::routes::{Learned, Routes};
use cmq_client::ClientError;
use cmq_client::ClusterMap;

use crate::pipe::RawPipe;

/// How long one node gets to accept a pipe and answer its handshake before
/// the next is tried: a dead or stopped node must not hold a thread (and
/// every pipe it drives) for long.
pub const PIPE_CONNECT_TIMEOUT: Duration = cmq_client::seeds::NODE_CONNECT_TIMEOUT_MAX;

pub struct Router {
    routes: Mutex<Routes>,
}

impl Router {
    /// Starts from the seeds and what the admin client learned.
    pub fn new(seeds: Vec<String>, shard_count: u16, known: &ClusterMap) -> Router {
        let mut routes = Routes::new(seeds, shard_count);
        routes.learn_map(known, None);
        Router { routes: Mutex::new(routes) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Routes) -> T) -> T {
        let mut r = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r)
    }

    /// A pipe to `shard`'s leader if known, else to any node (which serves
    /// the shard or names its leader). Blocks up to `PIPE_CONNECT_TIMEOUT`
    /// per address tried.
    pub fn connect(&self, shard: u16) -> Result<RawPipe, ClientError> {
        let (leader, addrs) = self.with(|r| {
            let leader = r.leader(shard);
            let at = if leader == 0 { Vec::new() } else { r.addrs_of(leader) };
            (leader, if at.is_empty() { r.any_node(Instant::now()) } else { at })
        });
        match RawPipe::connect_first(&addrs, shard, PIPE_CONNECT_TIMEOUT) {
            Ok(pipe) => {
                self.with(|r| r.learn_map(pipe.cluster(), Some(pipe.peer())));
                Ok(pipe)
            }
            Err(e) => {
                if leader != 0 {
                    self.lost(shard, leader);
                }
                Err(e)
            }
        }
    }

    /// Node `from` answered `NOT_LEADER` for `shard` with `message`; says
    /// whether it named the leader.
    pub fn not_leader(&self, shard: u16, from: u64, message: &str) -> Learned {
        self.with(|r| r.learn_not_leader(shard, from, message))
    }

    /// The connection to `node` for `shard` failed: look elsewhere.
    pub fn lost(&self, shard: u16, node: u64) {
        self.with(|r| {
            r.mark_down(node, Instant::now());
            r.forget_leader(shard);
        });
    }
}
