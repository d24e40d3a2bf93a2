//! Load clients for cluster tests: pipelined producers and consumers that
//! find each shard's leader themselves and record everything they were told
//! in a [`Ledger`], and the final drain.
//!
//! Leader following, kept here on purpose (independent of the Rust
//! client's): a `NOT_LEADER` reply moves the client to the node its hint
//! names, or to the next node when no leader is known yet; a connection
//! that fails or stays silent past [`REPLY_TIMEOUT`] moves it to the next
//! node. Requests in flight on a connection that is given up have an
//! unknown outcome: sends stay "attempted", deletes become "unknown". A send
//! is never retried: every body is sent once, so the ledger can tell a
//! message enqueued twice from one delivered twice.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_protocol::limits::BATCH_MSGS_MAX;
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

use crate::ledger::{Ack, Ledger};
use crate::node_conn::NodeConn;
use crate::raw::Reply;

/// How long a reply may take before the connection is given up (a paused
/// or partitioned node; a debug build's fsync on a busy machine takes far less).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause before trying again when no node leads a shard yet or a node
/// cannot be reached (an election takes hundreds of milliseconds).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Long-poll wait of the consumers' receives, in seconds.
const RECEIVE_WAIT_S: u32 = 1;

/// Messages per receive (the protocol's batch limit).
const RECEIVE_BATCH: u16 = BATCH_MSGS_MAX as u16;

/// Producer ids, unique in the test process, so bodies never collide.
static NEXT_PRODUCER: AtomicU64 = AtomicU64::new(1);

/// Which node a client talks to for one shard, and its connection.
pub struct Router {
    addrs: Vec<SocketAddr>,
    shard: u16,
    target: usize,
    /// Stay on `target` whatever it answers (a client on one side of a partition).
    pinned: bool,
    conn: Option<NodeConn>,
}

impl Router {
    pub fn new(addrs: Vec<SocketAddr>, shard: u16, start: usize) -> Router {
        let target = start % addrs.len();
        Router { addrs, shard, target, pinned: false, conn: None }
    }

    /// A router that never leaves node `node`.
    pub fn pinned(addrs: Vec<SocketAddr>, shard: u16, node: usize) -> Router {
        Router { addrs, shard, target: node, pinned: true, conn: None }
    }

    /// The node (index) requests go to now.
    pub fn node(&self) -> usize {
        self.target
    }

    /// The open connection, connecting first if needed; None (after a short
    /// pause, having moved on) when the node cannot be reached.
    pub fn conn(&mut self) -> Option<&mut NodeConn> {
        if self.conn.is_none() {
            match NodeConn::open(self.addrs[self.target], Some(self.shard)) {
                Ok((c, _)) => self.conn = Some(c),
                Err(_) => {
                    self.lost();
                    std::thread::sleep(RETRY_PAUSE);
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    /// The node answered `NOT_LEADER` with `message`: go where it points.
    pub fn not_leader(&mut self, message: &str) {
        self.conn = None;
        if self.pinned {
            std::thread::sleep(RETRY_PAUSE);
            return;
        }
        match parse_leader_hint(message) {
            Some((id, _)) if (1..=self.addrs.len() as u64).contains(&id) && id as usize - 1 != self.target => {
                self.target = id as usize - 1;
            }
            _ => {
                self.target = (self.target + 1) % self.addrs.len();
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }

    /// The connection failed or went silent: try the next node.
    pub fn lost(&mut self) {
        self.conn = None;
        if !self.pinned {
            self.target = (self.target + 1) % self.addrs.len();
        }
    }
}

/// A `NOT_LEADER` that says the request did not run (as opposed to "stopped
/// leading; retry", whose request may have been committed after all).
pub fn nothing_ran(message: &str) -> bool {
    message.contains("does not lead")
}

/// What to run: every queue gets its producers and consumers.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub queues: Vec<String>,
    pub shards: u16,
    pub producers_per_queue: usize,
    pub consumers_per_queue: usize,
    /// Requests a producer keeps in flight on its connection.
    pub window: usize,
    /// Bodies per send (1: SendMessage, more: BatchSendMessage).
    pub batch: usize,
    pub body_bytes: usize,
}

impl LoadSpec {
    pub fn new(queues: &[String], shards: u16) -> LoadSpec {
        LoadSpec {
            queues: queues.to_vec(),
            shards,
            producers_per_queue: 1,
            // Two consumers keep up with one producer, so the backlog (and
            // the drain at the end) stays small.
            consumers_per_queue: 2,
            window: 4,
            batch: 2,
            body_bytes: 100,
        }
    }
}

/// Running load; [`Load::stop`] ends it.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the producers and consumers of `spec` against the nodes at `addrs`.
    pub fn start(addrs: &[SocketAddr], ledger: &Arc<Ledger>, spec: &LoadSpec) -> Load {
        let mut load = Load { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new() };
        for (qi, queue) in spec.queues.iter().enumerate() {
            let shard = shard_for(queue, spec.shards);
            for i in 0..spec.producers_per_queue {
                let router = Router::new(addrs.to_vec(), shard, qi + i);
                load.producer(router, queue, ledger, spec);
            }
            for i in 0..spec.consumers_per_queue {
                let router = Router::new(addrs.to_vec(), shard, qi + i + 1);
                load.consumer(router, queue, ledger);
            }
        }
        load
    }

    /// An empty set of workers, to add pinned ones to.
    pub fn empty() -> Load {
        Load { stop: Arc::new(AtomicBool::new(false)), threads: Vec::new() }
    }

    /// Adds a producer on `queue` that uses `router`.
    pub fn producer(&mut self, router: Router, queue: &str, ledger: &Arc<Ledger>, spec: &LoadSpec) {
        let mut p = Producer {
            router,
            queue: queue.to_owned(),
            ledger: ledger.clone(),
            id: NEXT_PRODUCER.fetch_add(1, Ordering::Relaxed),
            seq: 0,
            window: spec.window.max(1),
            batch: spec.batch.clamp(1, BATCH_MSGS_MAX),
            body_bytes: spec.body_bytes,
            inflight: VecDeque::new(),
        };
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || p.run(&stop)));
    }

    /// Adds a consumer on `queue` that uses `router`.
    pub fn consumer(&mut self, router: Router, queue: &str, ledger: &Arc<Ledger>) {
        let mut c = Consumer { router, queue: queue.to_owned(), ledger: ledger.clone(), recv: None, del: None };
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || c.run(&stop)));
    }

    /// Stops every worker and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Producer {
    router: Router,
    queue: String,
    ledger: Arc<Ledger>,
    id: u64,
    seq: u64,
    window: usize,
    batch: usize,
    body_bytes: usize,
    /// (request id, bodies, sent at)
    inflight: VecDeque<(u64, Vec<Bytes>, Instant)>,
}

impl Producer {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if !self.fill() {
                continue;
            }
            let deadline = self.inflight.front().map_or_else(Instant::now, |f| f.2) + REPLY_TIMEOUT;
            let Some(conn) = self.router.conn() else { continue };
            match conn.read(deadline) {
                Ok(reply) => self.on_reply(reply),
                Err(_) => self.give_up(),
            }
        }
    }

    /// Sends until the window is full; false if the connection failed.
    fn fill(&mut self) -> bool {
        while self.inflight.len() < self.window {
            let bodies = self.bodies();
            let req = if bodies.len() == 1 {
                Request::SendMessage(SendMessage {
                    queue: self.queue.clone(),
                    delay_seconds: 0,
                    body: bodies[0].clone(),
                    ..Default::default()
                })
            } else {
                Request::BatchSendMessage(BatchSendMessage {
                    queue: self.queue.clone(),
                    delay_seconds: 0,
                    bodies: bodies.clone(),
                    ..Default::default()
                })
            };
            let Some(conn) = self.router.conn() else { return false };
            self.ledger.attempt(&self.queue, &bodies);
            match conn.send(&req) {
                Ok(id) => self.inflight.push_back((id, bodies, Instant::now())),
                Err(_) => {
                    self.give_up();
                    return false;
                }
            }
        }
        true
    }

    fn bodies(&mut self) -> Vec<Bytes> {
        (0..self.batch)
            .map(|_| {
                self.seq += 1;
                let mut b = format!("{}|p{}|{}|", self.queue, self.id, self.seq).into_bytes();
                b.resize(self.body_bytes.max(b.len()), b'.');
                Bytes::from(b)
            })
            .collect()
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(pos) = self.inflight.iter().position(|f| f.0 == reply.id()) else { return };
        let (_, bodies, sent_at) = self.inflight.remove(pos).expect("position is in range");
        let ids = match reply {
            Reply::Ok(_, Response::SendMessage(ok)) => vec![ok.msg_id],
            Reply::Ok(_, Response::BatchSendMessage(ok)) => ok.msg_ids,
            Reply::Ok(_, other) => panic!("a send was answered with {other:?}"),
            Reply::Err(_, e) if e.code() == ErrorCode::NOT_LEADER => {
                // The rest of the window goes to the same node: unknown.
                self.inflight.clear();
                return self.router.not_leader(&e.message);
            }
            Reply::Err(..) => return,
        };
        let ack = Ack { shard: self.router.shard, node: self.router.node(), sent_at, acked_at: Instant::now() };
        self.ledger.acked(ack, &bodies, &ids);
    }

    fn give_up(&mut self) {
        self.inflight.clear();
        self.router.lost();
    }
}

struct Consumer {
    router: Router,
    queue: String,
    ledger: Arc<Ledger>,
    /// The receive in flight: (request id, asked at).
    recv: Option<(u64, Instant)>,
    /// The delete in flight: (request id, bodies in handle order).
    del: Option<(u64, Vec<Bytes>)>,
}

impl Consumer {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if !self.ask() {
                continue;
            }
            let deadline = Instant::now() + REPLY_TIMEOUT + Duration::from_secs(RECEIVE_WAIT_S.into());
            let Some(conn) = self.router.conn() else { continue };
            match conn.read(deadline) {
                Ok(reply) => self.on_reply(reply),
                Err(_) => self.give_up(),
            }
        }
        // A delete in flight: wait for its answer rather than call it unknown.
        while self.del.is_some() {
            let deadline = Instant::now() + REPLY_TIMEOUT;
            match self.router.conn().map(|c| c.read(deadline)) {
                Some(Ok(reply)) => self.on_reply(reply),
                _ => self.give_up(),
            }
        }
    }

    /// Sends a receive unless one is in flight; false if the connection failed.
    fn ask(&mut self) -> bool {
        if self.recv.is_some() {
            return true;
        }
        let req = Request::BatchReceiveMessage(BatchReceiveMessage {
            queue: self.queue.clone(),
            max_messages: RECEIVE_BATCH,
            polling_wait_seconds: Some(RECEIVE_WAIT_S),
        });
        let Some(conn) = self.router.conn() else { return false };
        match conn.send(&req) {
            Ok(id) => {
                self.recv = Some((id, Instant::now()));
                true
            }
            Err(_) => {
                self.give_up();
                false
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        if self.recv.is_some_and(|(id, _)| id == reply.id()) {
            let (_, asked_at) = self.recv.take().expect("checked");
            return self.on_received(reply, asked_at);
        }
        if self.del.as_ref().is_some_and(|(id, _)| *id == reply.id()) {
            let (_, bodies) = self.del.take().expect("checked");
            self.on_deleted(reply, &bodies);
        }
    }

    fn on_received(&mut self, reply: Reply, asked_at: Instant) {
        let msgs = match reply {
            Reply::Ok(_, Response::BatchReceiveMessage(ok)) => ok.messages,
            Reply::Ok(_, other) => panic!("a receive was answered with {other:?}"),
            Reply::Err(_, e) if e.code() == ErrorCode::NOT_LEADER => return self.moved(&e.message),
            // NO_MESSAGE after the long poll, or a refusal: ask again.
            Reply::Err(..) => return,
        };
        let seen: Vec<(Bytes, u64, u32)> = msgs.iter().map(|m| (m.body.clone(), m.msg_id, m.dequeue_count)).collect();
        self.ledger.delivered(asked_at, false, &seen);
        if msgs.is_empty() {
            return;
        }
        let req = Request::BatchDeleteMessage(BatchDeleteMessage {
            queue: self.queue.clone(),
            receipt_handles: msgs.iter().map(|m| m.receipt_handle).collect(),
        });
        let bodies: Vec<Bytes> = msgs.into_iter().map(|m| m.body).collect();
        let Some(conn) = self.router.conn() else {
            // The connection was just used; a failure here is a lost one.
            return self.ledger.delete_unknown(&bodies);
        };
        match conn.send(&req) {
            Ok(id) => self.del = Some((id, bodies)),
            Err(_) => {
                self.ledger.delete_unknown(&bodies);
                self.give_up();
            }
        }
    }

    fn on_deleted(&mut self, reply: Reply, bodies: &[Bytes]) {
        match reply {
            Reply::Ok(_, Response::BatchDeleteMessage(ok)) => {
                let done: Vec<Bytes> =
                    bodies.iter().zip(&ok.results).filter(|(_, r)| r.code == 0).map(|(b, _)| b.clone()).collect();
                self.ledger.deleted(&done);
            }
            Reply::Ok(_, other) => panic!("a delete was answered with {other:?}"),
            Reply::Err(_, e) if e.code() == ErrorCode::NOT_LEADER && nothing_ran(&e.message) => self.moved(&e.message),
            Reply::Err(_, e) => {
                self.ledger.delete_unknown(bodies);
                if e.code() == ErrorCode::NOT_LEADER {
                    self.moved(&e.message);
                }
            }
        }
    }

    /// NOT_LEADER: whatever else is in flight here has an unknown outcome.
    fn moved(&mut self, message: &str) {
        self.forget_inflight();
        self.router.not_leader(message);
    }

    fn give_up(&mut self) {
        self.forget_inflight();
        self.router.lost();
    }

    fn forget_inflight(&mut self) {
        self.recv = None;
        if let Some((_, bodies)) = self.del.take() {
            self.ledger.delete_unknown(&bodies);
        }
    }
}

/// Receives and deletes every message of `queues` (following leaders; one
/// thread per queue) until each reports nothing left, recording the deliveries as the drain's;
/// panics past `timeout`. Returns the messages drained.
pub fn drain(addrs: &[SocketAddr], shards: u16, queues: &[String], ledger: &Ledger, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    std::thread::scope(|s| {
        let drains: Vec<_> = queues
            .iter()
            .map(|q| s.spawn(move || drain_queue(addrs, shard_for(q, shards), q, ledger, deadline)))
            .collect();
        drains.into_iter().map(|d| d.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).sum()
    })
}

fn drain_queue(addrs: &[SocketAddr], shard: u16, queue: &str, ledger: &Ledger, deadline: Instant) -> usize {
    let mut router = Router::new(addrs.to_vec(), shard, 0);
    let mut drained = 0;
    let mut last = String::from("nothing yet");
    while Instant::now() < deadline {
        let Some(conn) = router.conn() else { continue };
        let asked_at = Instant::now();
        let req = Request::BatchReceiveMessage(BatchReceiveMessage {
            queue: queue.into(),
            max_messages: RECEIVE_BATCH,
            polling_wait_seconds: Some(RECEIVE_WAIT_S),
        });
        let msgs = match conn.call(&req, REPLY_TIMEOUT + Duration::from_secs(RECEIVE_WAIT_S.into())) {
            Ok(Reply::Ok(_, Response::BatchReceiveMessage(ok))) => ok.messages,
            Ok(Reply::Err(_, e)) if e.code() == ErrorCode::NOT_LEADER => {
                router.not_leader(&e.message);
                continue;
            }
            Ok(Reply::Err(_, e)) if e.code() == ErrorCode::NO_MESSAGE => Vec::new(),
            Ok(other) => {
                last = format!("receive: {other:?}");
                continue;
            }
            Err(e) => {
                last = format!("receive: {e}");
                router.lost();
                continue;
            }
        };
        let seen: Vec<(Bytes, u64, u32)> = msgs.iter().map(|m| (m.body.clone(), m.msg_id, m.dequeue_count)).collect();
        ledger.delivered(asked_at, true, &seen);
        drained += msgs.len();
        if msgs.is_empty() {
            match queue_left(conn, queue) {
                Ok(0) => return drained,
                Ok(n) => last = format!("{n} messages left (leased or delayed)"),
                Err(e) => last = e,
            }
            continue;
        }
        let bodies: Vec<Bytes> = msgs.iter().map(|m| m.body.clone()).collect();
        let req = Request::BatchDeleteMessage(BatchDeleteMessage {
            queue: queue.into(),
            receipt_handles: msgs.iter().map(|m| m.receipt_handle).collect(),
        });
        match conn.call(&req, REPLY_TIMEOUT) {
            Ok(Reply::Ok(_, Response::BatchDeleteMessage(ok))) => {
                let done: Vec<Bytes> =
                    bodies.iter().zip(&ok.results).filter(|(_, r)| r.code == 0).map(|(b, _)| b.clone()).collect();
                ledger.deleted(&done);
            }
            _ => {
                ledger.delete_unknown(&bodies);
                router.lost();
            }
        }
    }
    panic!("draining {queue} did not finish in time (drained {drained}); last: {last}");
}

/// Messages of `queue` still there (ready, leased or delayed).
fn queue_left(conn: &mut NodeConn, queue: &str) -> Result<u64, String> {
    let req = Request::GetQueueAttributes(GetQueueAttributes { queue: queue.into() });
    match conn.call(&req, REPLY_TIMEOUT) {
        Ok(Reply::Ok(_, Response::GetQueueAttributes(i))) => {
            Ok(i.active_msg_num + i.inactive_msg_num + i.delay_msg_num)
        }
        other => Err(format!("queue info: {other:?}")),
    }
}
