//! A shard: one event-loop thread with its own mio `Poll`, its own listener
//! socket (SO_REUSEPORT), its connections, the queues it owns and its log.
//!
//! One loop turn: poll; read every readable connection and handle its frames
//! (queue operations run here if this shard owns the queue, otherwise they
//! are batched for the owner); handle messages from other shards; run
//! timers; then end the turn: send batched forwards, submit this turn's log
//! records as one write (group commit), and release responses (and messages
//! to other shards) whose log records are as safe as they need to be
//! (`release.rs`). See docs/ARCHITECTURE.md.

mod authn;
mod budget;
mod conn;
mod coordination;
mod cross_shard;
mod dispatch;
mod exchange;
pub mod external;
mod forward;
mod handlers;
pub mod mailbox;
mod release;
pub mod replication;
mod reply;
mod shutdown;
mod stats;
pub mod storage;
mod turns;
mod waits;
mod wheel;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmq_protocol::frame::{self, FrameError};
use cmq_protocol::{ErrorCode, Opcode};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::ShardEngine;
use crate::metrics::shard::TurnReport;
pub use budget::ConnCounters;
use budget::{Budget, LogLimiter};
use cmq_protocol::limits::HANDSHAKE_FRAME_BYTES_MAX;
use conn::{
    Conn, Deadlines, Expired, ReadRoom, CONN_IN_FLIGHT_MAX, CONN_OUT_BYTES_MAX, OUT_BYTES_HIGH, READS_PER_TURN_MAX,
};
use cross_shard::{reply_bytes, FORWARDED_REPLY_BYTES_MAX};
use mailbox::{ConnRef, Inbox, ReplyBatch, ReplyTo, ShardHandle, ShardMsg};
use release::{HoldQueue, Need};
use reply::ReplyDep;
pub use stats::STALL_MS_MAX;
use storage::ShardLog;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
pub const STORAGE: Token = Token(usize::MAX - 3);

/// Readiness events handled per poll call.
const EVENTS_MAX: usize = 1024;

/// How often log space is checked for release and compaction.
const HOUSEKEEP_EVERY_MS: u64 = 1000;

/// How often a shard waiting for buffer budget (freed by other shards,
/// which do not signal it) looks again.
const BUDGET_RETRY_MS: u64 = 10;

/// How often a shard over the buffer budget looks for slow consumers to shed.
const SHED_CHECK_EVERY_MS: u64 = 100;

/// Over budget, a connection is shed only if its output made no progress
/// for this long: a client busy reading a 16 MiB answer is not a slow consumer.
const SHED_STALLED_MS: u64 = 1000;

/// State every shard shares: configuration, peers, broker-wide counters.
pub struct Shared {
    pub cfg: Config,
    pub peers: Vec<ShardHandle>,
    pub conn_count: AtomicUsize,
    /// Queues on the whole broker (for `--max-queues`).
    pub queue_count: AtomicUsize,
    /// Topics on the whole broker (for `--max-topics`).
    pub topic_count: AtomicUsize,
    /// Broker-wide creation order of queues (ListQueues sorts by it).
    pub next_create_seq: AtomicU64,
    pub shutdown: AtomicBool,
    /// Shards that finished draining during shutdown.
    pub drained: AtomicUsize,
    /// Where clients reach this node (the bound listen address).
    pub client_addr: String,
    /// Connection-buffer bytes the shards hold, broker-wide (against
    /// `cfg.buffer_budget_bytes`; see `budget.rs`).
    pub buffer_bytes: AtomicUsize,
    /// Refusals and closes by connection limits and deadlines, per shard.
    pub conn_counters: Vec<ConnCounters>,
    /// Per shard: the node this node believes leads it, and the term
    /// (alone: this node, term 1). Written by each shard when it changes.
    pub leaders: Vec<(AtomicU64, AtomicU64)>,
    /// The cluster's nodes: id -> (client address once known, peer address).
    pub nodes: std::sync::Mutex<std::collections::BTreeMap<u64, (String, String)>>,
    /// In a cluster: the peer listener (it admits the group's members).
    pub acceptor: std::sync::OnceLock<crate::cluster::PeerAcceptor>,
    /// Client keys (published by shard 0), failure backoff and counts.
    pub auth: crate::auth::Auth,
    /// Requests from the HTTP gateway awaiting their answers (`external.rs`).
    pub external: external::Registry,
    /// `--tls-cert`: the client and HTTP ports serve TLS with these.
    pub tls: Option<crate::tls::TlsConfigs>,
    /// `--peer-tls-*`: the peer links are TLS with these (None: plaintext).
    pub peer_tls: Option<crate::tls::peer::PeerTls>,
}

impl Shared {
    /// Where clients reach node `id`, if known.
    pub fn node_client_addr(&self, id: u64) -> Option<String> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(&id).map(|(c, _)| c.clone()).filter(|c| !c.is_empty())
    }

    /// A peer told us where it serves clients.
    pub fn learn_node_addr(&self, id: u64, client_addr: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(&id) {
            if n.0 != client_addr {
                n.0 = client_addr.to_owned();
            }
        }
    }

    /// A node joined: where its peers reach it.
    pub fn learn_peer_addr(&self, id: u64, peer_addr: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.entry(id).or_insert_with(|| (String::new(), String::new())).1 = peer_addr.to_owned();
    }

    /// The group's voters changed: nodes no longer in it are forgotten, and
    /// the peer listener admits exactly the others.
    pub fn set_members(&self, voters: &[u64]) {
        let me = self.cfg.node_id;
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.retain(|id, _| *id == me || voters.contains(id));
        }
        if let Some(a) = self.acceptor.get() {
            a.set_members(voters.iter().copied().filter(|v| *v != me).collect());
        }
    }

    /// Where this node's peers (`voters` but `me`) listen, as far as known.
    pub fn peer_addrs(&self, voters: &[u64], me: u64) -> std::collections::BTreeMap<u64, std::net::SocketAddr> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        voters.iter().filter(|v| **v != me).filter_map(|v| Some((*v, nodes.get(v)?.1.parse().ok()?))).collect()
    }

    /// The cluster map as this node sees it.
    pub fn cluster_map(&self) -> cmq_protocol::ClusterMap {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = nodes
            .iter()
            .map(|(id, (c, p))| cmq_protocol::ClusterNode { id: *id, client_addr: c.clone(), peer_addr: p.clone() })
            .collect();
        let leaders = self
            .leaders
            .iter()
            .map(|(l, t)| cmq_protocol::ShardLeader {
                leader: l.load(Ordering::Relaxed),
                term: t.load(Ordering::Relaxed),
            })
            .collect();
        cmq_protocol::ClusterMap { node_id: self.cfg.node_id, nodes, leaders }
    }
}

/// One shard's event loop, in parts with one job each: a change to how
/// connections are read touches `clients` (`conn.rs`), to when answers may
/// leave `durability` (`storage.rs`, `release.rs`), to work for other
/// shards `cross` (`cross_shard.rs`), and so on.
pub struct Shard {
    id: u16,
    shared: Arc<Shared>,
    poll: Poll,
    clock: Clock,
    turn: u64,
    /// The queues this shard owns (I/O free: fed requests, records, time).
    engine: ShardEngine,
    /// The shard's log (group commit, fdatasync, log space).
    log: ShardLog,
    /// Durability and the log: what the log made safe, what output waits
    /// for it, log-space upkeep (`storage.rs`, `release.rs`).
    durability: storage::LogState,
    /// Client connections: the listener, the open connections, those to
    /// write or read again this turn (`conn.rs`).
    clients: conn::Clients,
    /// Connection limits: deadlines, the clock they run on, the buffer budget.
    limits: ConnLimits,
    /// Messages from the other shards of this node (`mailbox.rs`).
    inbox: Inbox,
    /// Cross-shard exchange: what goes to the other shards, and when
    /// (`cross_shard.rs`).
    cross: cross_shard::CrossShard,
    /// Scatter/gather requests under way (`coordination.rs`).
    coord: coordination::Coordination,
    /// Messages between queues of different shards, transaction checkers,
    /// HTTP pushes (`exchange.rs`).
    exchange: exchange::Exchange,
    /// This shard's part of its Raft group (None: a single node).
    repl: Option<Box<replication::Replication>>,
    /// Frames other nodes' shards forwarded this turn (see `forward.rs`).
    forwarded: Vec<(u64, bytes::Bytes)>,
    /// Keys: publishing shard 0's, sweeping sessions whose key went (`authn.rs`).
    keys: authn::KeySync,
    /// Shutdown under way (`shutdown.rs`).
    drain: shutdown::Drain,
    /// How long each loop turn took (`turns.rs`).
    turn_times: turns::TurnTimes,
    /// Answers, latency and loop turns, counted on this thread (`stats.rs`).
    metrics: crate::metrics::shard::ShardMetrics<Need>,
    /// Testing only (`--fault-drop-one-in`): acknowledge every Nth send
    /// without storing it.
    faults: handlers::messages::FaultDrop,
}

/// This shard's side of the connection limits (docs/ARCHITECTURE.md,
/// "Connection limits and deadlines").
struct ConnLimits {
    deadlines: Deadlines,
    /// Connection times are on a monotonic clock (a wall-clock step must not
    /// close every connection): milliseconds since `started`, from 1.
    started: Instant,
    now_ms: u64,
    wheel: wheel::Wheel,
    expired: Vec<(ConnRef, u64)>,
    budget: Budget,
    /// Connections waiting for budget to grow their read buffer, smallest
    /// partial frame first (those holding the largest wait longest).
    starved: BinaryHeap<Reverse<(usize, usize, u32)>>,
    /// The one connection per shard that may finish its frame beyond the
    /// budget, so that a budget used up by partial frames cannot stop every
    /// one of them from completing.
    overdraft: Option<ConnRef>,
    /// Connections over their output bound, closed at the end of the turn.
    shed: Vec<ConnRef>,
    next_shed_check_ms: u64,
    log: [LogLimiter; LOG_KINDS],
}

/// Kinds of connection refusals logged (rate-limited) separately.
#[derive(Clone, Copy)]
enum Refusal {
    HandshakeFrameTooLarge,
    HandshakeTimeout,
    FrameTimeout,
    Idle,
    SlowConsumer,
    BudgetWait,
    TooManyConnections,
}
const LOG_KINDS: usize = 7;

impl ConnLimits {
    fn new(cfg: &Config) -> ConnLimits {
        ConnLimits {
            deadlines: Deadlines {
                handshake_ms: cfg.handshake_timeout_ms,
                idle_ms: cfg.idle_timeout_ms,
                frame_ms: cfg.frame_timeout_ms,
            },
            started: Instant::now(),
            now_ms: 1,
            wheel: wheel::Wheel::new(1),
            expired: Vec::new(),
            budget: Budget::new(usize::try_from(cfg.buffer_budget_bytes).unwrap_or(usize::MAX)),
            starved: BinaryHeap::new(),
            overdraft: None,
            shed: Vec::new(),
            next_shed_check_ms: 0,
            log: Default::default(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.now_ms = self.started.elapsed().as_millis() as u64 + 1;
        self.now_ms
    }
}

/// What a shard is built from (its own event loop, listener, recovered
/// engine and log, inbox, and push queue).
pub struct ShardParts {
    pub poll: Poll,
    pub listener: TcpListener,
    pub engine: ShardEngine,
    pub log: ShardLog,
    pub inbox: Inbox,
    pub push: crate::push::PushHandle,
    /// In a cluster: the shard's replica and peer links.
    pub repl: Option<Box<replication::Replication>>,
}

impl Shard {
    pub fn new(id: u16, parts: ShardParts, shared: Arc<Shared>) -> io::Result<Shard> {
        let ShardParts { poll, listener, engine, log, inbox, push, repl } = parts;
        let peers = shared.cfg.shards;
        let fault_drop_one_in = shared.cfg.fault_drop_one_in;
        let limits = ConnLimits::new(&shared.cfg);
        let mut shard = Shard {
            id,
            repl,
            forwarded: Vec::new(),
            poll,
            engine,
            log,
            shared,
            inbox,
            clock: Clock::default(),
            turn: 0,
            limits,
            turn_times: turns::TurnTimes::default(),
            metrics: Default::default(),
            cross: cross_shard::CrossShard {
                remote_out: (0..peers).map(|_| ReplyBatch::default()).collect(),
                remote_need: Need::NONE,
                push_out: (0..peers).map(|_| ReplyBatch::default()).collect(),
                external_out: ReplyBatch::default(),
                turn_msgs: Vec::new(),
                staged: HoldQueue::default(),
                forward_out: (0..peers).map(|_| Vec::new()).collect(),
                unsent: Vec::new(),
                deferred: std::collections::VecDeque::new(),
                forwarded_reply_bytes: 0,
                staged_reply_bytes: 0,
            },
            coord: coordination::Coordination { gathers: HashMap::new(), next_gather: 1 },
            exchange: exchange::Exchange {
                checkers: HashMap::new(),
                next_checker: 0,
                push,
                transfers_in: exchange::TransfersIn::default(),
            },
            keys: authn::KeySync { keys_published: 0, keys_swept: 0, admin_key_pending: false },
            drain: shutdown::Drain { draining: false, drain_deadline_ms: 0, reported_drained: false },
            durability: storage::LogState {
                progress: release::Progress::default(),
                waiting: Vec::new(),
                engine_suspect: false,
                compacting: false,
                next_housekeep_ms: 0,
            },
            clients: conn::Clients {
                listener: Some(listener),
                conns: Slab::new(),
                next_gen: 0,
                touched: Vec::new(),
                read_again: Vec::new(),
                scratch: Vec::with_capacity(64 * 1024),
            },
            faults: handlers::messages::FaultDrop { fault_drop_one_in, fault_sends: 0 },
        };
        shard.keys.admin_key_pending = shard.shared.cfg.init_admin_key.is_some();
        // Shard 0's recovered keys are published before any shard serves.
        shard.publish_keys();
        shard.durability.progress = release::Progress::solo(shard.log.progress());
        shard.publish_leader();
        shard.log.register(shard.poll.registry(), STORAGE)?;
        if let Some(l) = shard.clients.listener.as_mut() {
            shard.poll.registry().register(l, LISTENER, Interest::READABLE)?;
        }
        Ok(shard)
    }

    fn shard_count(&self) -> u16 {
        self.shared.cfg.shards as u16
    }

    /// Runs the event loop until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_MAX);
        loop {
            let now = self.clock.now_ms();
            let mut timeout = self.poll_timeout(now);
            if timeout != Some(Duration::ZERO) && !self.inbox.about_to_sleep() {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            let turn_start = Instant::now();
            self.inbox.awake();
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("shard {}: poll failed: {e}", self.id);
                    return;
                }
            }
            self.turn += 1;
            self.metrics.begin_turn(self.turn);
            let now = self.clock.now_ms();
            let conn_now = self.limits.tick();
            if self.shared.shutdown.load(Ordering::Relaxed) && !self.drain.draining {
                self.begin_drain(now);
            }
            self.handle_events(&events, now);
            self.repl_receive(now);
            self.take_forwarded(now);
            self.drain_inbox(now);
            self.run_timers(now);
            self.run_conn_deadlines(conn_now);
            self.resume_starved();
            self.close_shed();
            self.housekeep(now);
            self.init_admin_key(now);
            self.publish_keys();
            self.sweep_sessions();
            self.end_turn(now);
            self.turn_times.record(self.id, turn_start);
            turns::fault_panic(self.id, self.turn, self.shared.cfg.fault_panic_after_turns);
            if let Some(slow) = self.metrics.end_turn() {
                let report = TurnReport { events: events.iter().count(), connections: self.clients.conns.len() };
                self.metrics.log_slow_turn(self.id, slow, report);
            }
            if self.drain.draining && self.drain_step(now) {
                log::info!("shard {}: {}", self.id, self.turn_times.summary());
                return;
            }
        }
    }

    /// Readiness events: accepts, log completions, peer links, and
    /// connections' reads and writes (then those with input left over).
    fn handle_events(&mut self, events: &Events, now: u64) {
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept(),
                STORAGE => self.poll_log(),
                WAKER => {}
                t if self.owns_peer_token(t) => self.peer_event(ev, now),
                Token(t) => {
                    if ev.is_writable() {
                        self.write_conn(t);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        if let Some(c) = self.clients.conns.get_mut(t) {
                            c.read_pending = true;
                            c.peer_closed |= ev.is_read_closed() || ev.is_error();
                        }
                        self.read_conn(t, now);
                    }
                }
            }
        }
        for c in std::mem::take(&mut self.clients.read_again) {
            if self.clients.conns.get(c.token).is_some_and(|x| x.gen == c.gen) {
                self.read_conn(c.token, now);
            }
        }
    }

    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        if !self.clients.read_again.is_empty()
            || !self.cross.unsent.is_empty()
            || self.durability.compacting
            || !self.limits.shed.is_empty()
        {
            return Some(Duration::ZERO);
        }
        if self.exchange.transfers_in.is_waiting() {
            return Some(Duration::ZERO);
        }
        // Deferred forwarded requests go on next turn, unless they wait for
        // answers held for the log (whose completion wakes the loop).
        if !self.cross.deferred.is_empty() && self.cross.staged_reply_bytes < FORWARDED_REPLY_BYTES_MAX {
            return Some(Duration::ZERO);
        }
        let mut deadline = self.engine.next_deadline(now).unwrap_or(u64::MAX).min(self.durability.next_housekeep_ms);
        if self.drain.draining {
            deadline = deadline.min(now + 10);
        }
        if let Some(d) = self.log.periodic_sync_due() {
            deadline = deadline.min(d);
        }
        if let Some(d) = self.repl_deadline() {
            deadline = deadline.min(d);
        }
        let mut wait = deadline.saturating_sub(now);
        // Connection deadlines run on their own (monotonic) clock.
        if let Some(t) = self.limits.wheel.next_due() {
            wait = wait.min(t.saturating_sub(self.limits.now_ms));
        }
        if !self.limits.starved.is_empty() {
            wait = wait.min(BUDGET_RETRY_MS);
        }
        Some(Duration::from_millis(wait))
    }

    // ---- connections ------------------------------------------------------

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.clients.listener.as_ref() else { return };
            let (stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: log and try again next readiness event.
                    log::warn!("shard {}: accept failed: {e}", self.id);
                    return;
                }
            };
            let count = self.shared.conn_count.fetch_add(1, Ordering::Relaxed);
            if count >= self.shared.cfg.max_connections {
                self.shared.conn_count.fetch_sub(1, Ordering::Relaxed);
                refuse(stream, self.shared.cfg.max_connections, self.shared.tls.is_some());
                ConnCounters::bump(&self.counters().connections_refused);
                if let Some(skipped) = self.limits.log[Refusal::TooManyConnections as usize].allow(self.limits.now_ms) {
                    log::warn!("refused connection from {peer}: {count} connections open ({skipped} more not logged)");
                }
                continue;
            }
            let _ = stream.set_nodelay(true);
            if let Some(me) = self.add_conn(stream, false) {
                self.start_tls(me);
            }
        }
    }

    fn add_conn(&mut self, mut stream: mio::net::TcpStream, handshaken: bool) -> Option<ConnRef> {
        self.clients.next_gen = self.clients.next_gen.wrapping_add(1);
        let entry = self.clients.conns.vacant_entry();
        let token = entry.key();
        if let Err(e) =
            self.poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("shard {}: cannot register connection: {e}", self.id);
            self.shared.conn_count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let mut conn = Conn::new(stream, self.clients.next_gen, self.limits.now_ms);
        conn.handshaken = handshaken;
        entry.insert(conn);
        let me = ConnRef { token, gen: self.clients.next_gen };
        self.arm_deadline(me);
        self.recharge(token);
        Some(me)
    }

    /// On a TLS port, a new connection starts with a TLS session.
    fn start_tls(&mut self, me: ConnRef) {
        use crate::tls::transport::{TlsSession, TLS_SESSION_BYTES_MAX};
        let Some(config) = self.shared.tls.as_ref().map(|t| t.client_port.clone()) else { return };
        // What rustls may hold is charged before it can hold it
        // (transport.rs); a session the budget has no room for is refused.
        if !self.limits.budget.try_take(&self.shared.buffer_bytes, TLS_SESSION_BYTES_MAX) {
            return self.refuse_tls_session(me);
        }
        let Some(conn) = self.clients.conns.get_mut(me.token) else {
            self.limits.budget.adjust(&self.shared.buffer_bytes, TLS_SESSION_BYTES_MAX, 0);
            return;
        };
        conn.charged += TLS_SESSION_BYTES_MAX;
        match TlsSession::new(&config) {
            Ok(session) => conn.tls = Some(Box::new(session)),
            Err(e) => {
                log::warn!("shard {}: cannot start a TLS session: {e}", self.id);
                self.close_conn(me.token);
            }
        }
        self.publish_buffer_bytes();
    }

    /// A TLS connection the buffer budget has no room for: refused as one
    /// over `--max-connections` is (a TLS alert), and closed.
    fn refuse_tls_session(&mut self, me: ConnRef) {
        if let Some(conn) = self.clients.conns.get(me.token) {
            refuse_tls(&conn.stream);
        }
        ConnCounters::bump(&self.counters().tls_budget_refusals);
        if let Some(skipped) = self.limits.log[Refusal::BudgetWait as usize].allow(self.limits.now_ms) {
            log::warn!(
                "shard {}: connection buffer budget ({} bytes) used up; refused a TLS connection \
                 ({} bytes each) ({skipped} more not logged)",
                self.id,
                self.shared.cfg.buffer_budget_bytes,
                crate::tls::transport::TLS_SESSION_BYTES_MAX
            );
        }
        self.close_conn(me.token);
    }

    fn close_conn(&mut self, token: usize) {
        let Some(mut conn) = self.clients.conns.try_remove(token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.shared.conn_count.fetch_sub(1, Ordering::Relaxed);
        self.uncharge(&conn);
        let reply_to = ReplyTo { shard: self.id, conn: ConnRef { token, gen: conn.gen } };
        if self.limits.overdraft == Some(reply_to.conn) {
            self.limits.overdraft = None;
        }
        self.forget_conn(reply_to);
        let tell: Vec<u16> = if conn.checker {
            (0..self.shard_count()).filter(|s| *s != self.id).collect()
        } else {
            conn.forwarded_shards().collect()
        };
        for shard in tell {
            self.send_to(shard, ShardMsg::ConnClosed { reply_to });
        }
    }

    /// Reads and handles frames until the socket is drained, the connection
    /// is paused by back-pressure, or it has had its fair share this turn;
    /// then charges what its buffers hold to the budget.
    fn read_conn(&mut self, token: usize, now: u64) {
        self.read_frames(token, now);
        self.recharge(token);
    }

    fn read_frames(&mut self, token: usize, now: u64) {
        let Some(conn) = self.clients.conns.get(token) else { return };
        if conn.starved {
            // Resumed by resume_starved when the budget has room.
            return;
        }
        let me = ConnRef { token, gen: conn.gen };
        loop {
            let Some(completed) = self.handle_buffered(me, now) else { return };
            self.note_partial_frame(me, completed);
            if !self.read_more(me) {
                return;
            }
        }
    }

    /// Handles every complete frame already buffered. Returns whether any
    /// was, or None when the connection must not be read further now.
    fn handle_buffered(&mut self, me: ConnRef, now: u64) -> Option<bool> {
        let token = me.token;
        let mut completed = false;
        loop {
            if self.entry_full() {
                // This turn's entry is as large as a replica sends at
                // once: the rest waits for the next turn.
                self.clients.read_again.push(me);
                return None;
            }
            let conn = self.clients.conns.get_mut(token)?;
            if conn.closing || conn.shed {
                return None;
            }
            if conn.read_paused() {
                // Resumed by write_conn or a reply once it drains; no
                // polling meanwhile. The frame deadline runs only while
                // the broker is reading.
                conn.partial_since_ms = 0;
                return None;
            }
            match frame::check(&conn.rbuf) {
                Ok(Some(total)) => {
                    let (header, payload) = frame::split(&mut conn.rbuf, total);
                    completed = true;
                    let handshake_sized = !conn.handshaken || header.opcode == Opcode::Handshake as u16;
                    if handshake_sized && total > HANDSHAKE_FRAME_BYTES_MAX as usize {
                        self.refuse_handshake_frame(token, total as u64);
                        return None;
                    }
                    self.handle_frame(me, header, payload, now);
                }
                Ok(None) => {
                    if let Some(total) = over_handshake_limit(&conn.rbuf, conn.handshaken) {
                        self.refuse_handshake_frame(token, total);
                        return None;
                    }
                    return Some(completed);
                }
                Err(e) => {
                    let code = match e {
                        FrameError::TooLarge(_) => ErrorCode::FRAME_TOO_LARGE,
                        FrameError::TooShort(_) => ErrorCode::MALFORMED_FRAME,
                    };
                    self.fail_conn(token, 0, code, &e.to_string());
                    return None;
                }
            }
        }
    }

    /// Reads more input into connection `me`'s buffer, within its fair
    /// share of reads this turn and the buffer budget. Returns whether
    /// there may be frames to handle.
    fn read_more(&mut self, me: ConnRef) -> bool {
        let (token, turn) = (me.token, self.turn);
        let Some(conn) = self.clients.conns.get_mut(token) else { return false };
        if !conn.read_pending {
            return false;
        }
        if conn.reads_turn != turn {
            conn.reads_turn = turn;
            conn.reads = 0;
        }
        if conn.reads >= READS_PER_TURN_MAX {
            // Fair share used: the rest waits for the next turn.
            self.clients.read_again.push(me);
            return false;
        }
        conn.reads += 1;
        match conn.read_room(pending_frame_len(&conn.rbuf)) {
            ReadRoom::Chunk => conn.reserve_chunk(),
            ReadRoom::Ready => {}
            ReadRoom::Grow(capacity) => {
                if !self.grow_read_buffer(me, capacity) {
                    return false;
                }
            }
        }
        let Some(conn) = self.clients.conns.get_mut(token) else { return false };
        match conn.fill() {
            Ok(true) => {
                conn.active_ms = self.limits.now_ms;
                true
            }
            Ok(false) => {
                // End of input: the client is done sending. Answer nothing more and close.
                self.close_conn(token);
                false
            }
            Err(e) if crate::tls::transport::is_plaintext_on_tls_port(&e) => {
                // Answered in plaintext, so a plaintext client can say what went wrong.
                conn.tls = None;
                crate::tls::transport::discard_unread(&conn.stream);
                let msg = "this port serves TLS only: connect with TLS (cmq --tls)";
                self.fail_conn(token, 0, ErrorCode::TLS_REQUIRED, msg);
                false
            }
            Err(e) => {
                log::debug!("shard {}: connection read error: {e}", self.id);
                self.close_conn(token);
                false
            }
        }
    }

    /// After handling the complete frames: an incomplete one left at the
    /// front of the buffer has until its first byte plus the frame deadline
    /// to arrive whole.
    fn note_partial_frame(&mut self, me: ConnRef, completed: bool) {
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return };
        if completed && self.limits.overdraft == Some(me) {
            // The frame allowed past the budget is in: another may go.
            self.limits.overdraft = None;
        }
        if conn.rbuf.is_empty() {
            conn.partial_since_ms = 0;
        } else if completed || conn.partial_since_ms == 0 {
            conn.partial_since_ms = self.limits.now_ms;
            self.arm_deadline(me);
        }
    }

    /// Before the handshake nothing larger than a handshake is buffered;
    /// a Handshake frame is held to that size at any time.
    fn refuse_handshake_frame(&mut self, token: usize, total: u64) {
        ConnCounters::bump(&self.counters().handshake_frames_too_large);
        let peer = self.clients.conns.get(token).and_then(|c| c.stream.peer_addr().ok());
        if let Some(skipped) = self.limits.log[Refusal::HandshakeFrameTooLarge as usize].allow(self.limits.now_ms) {
            log::warn!(
                "shard {}: refused a {total}-byte frame from {peer:?} before or as its handshake \
                 (limit {HANDSHAKE_FRAME_BYTES_MAX}); connection closed ({skipped} more not logged)",
                self.id
            );
        }
        let msg = format!(
            "frame of {total} bytes exceeds the {HANDSHAKE_FRAME_BYTES_MAX}-byte limit for a handshake \
             (and for any frame before the handshake completes)"
        );
        self.fail_conn(token, 0, ErrorCode::FRAME_TOO_LARGE, &msg);
    }

    /// Room to read more of a frame larger than a read chunk: grows the
    /// buffer if the budget allows, else parks the connection (it is not
    /// read until resume_starved finds room). Returns whether to read.
    fn grow_read_buffer(&mut self, me: ConnRef, capacity: usize) -> bool {
        let Some(conn) = self.clients.conns.get(me.token) else { return false };
        let extra = capacity.saturating_sub(conn.rbuf.capacity());
        let buffered = conn.rbuf.len();
        if self.take_for_read(me, extra) {
            if let Some(conn) = self.clients.conns.get_mut(me.token) {
                conn.charged += extra;
                conn.grow_to(capacity);
            }
            return true;
        }
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return false };
        conn.starved = true;
        let want = pending_frame_len(&conn.rbuf);
        self.limits.starved.push(Reverse((buffered, me.token, me.gen)));
        ConnCounters::bump(&self.counters().budget_read_waits);
        if let Some(skipped) = self.limits.log[Refusal::BudgetWait as usize].allow(self.limits.now_ms) {
            log::warn!(
                "shard {}: connection buffer budget ({} bytes) used up; a connection with {buffered} of a \
                 {want}-byte frame waits for memory ({skipped} more waits not logged)",
                self.id,
                self.shared.cfg.buffer_budget_bytes
            );
        }
        false
    }

    /// Takes `extra` bytes of budget for connection `me`'s read buffer. When
    /// the budget is used up, one connection per shard may still finish its
    /// frame (the overdraft), so partial frames filling the budget cannot
    /// keep every one of them from completing.
    fn take_for_read(&mut self, me: ConnRef, extra: usize) -> bool {
        let total = &self.shared.buffer_bytes;
        if self.limits.budget.try_take(total, extra) {
            return true;
        }
        let held = self
            .limits
            .overdraft
            .is_some_and(|o| o != me && self.clients.conns.get(o.token).is_some_and(|c| c.gen == o.gen));
        if held {
            return false;
        }
        self.limits.overdraft = Some(me);
        self.limits.budget.adjust(total, 0, extra);
        true
    }

    /// Connections waiting for budget read again, smallest partial frame
    /// first, as far as the budget (or the free overdraft) allows.
    fn resume_starved(&mut self) {
        while let Some(&Reverse((_, token, gen))) = self.limits.starved.peek() {
            let me = ConnRef { token, gen };
            let Some(conn) = self.clients.conns.get(token).filter(|c| c.gen == gen && c.starved) else {
                self.limits.starved.pop();
                continue;
            };
            if let ReadRoom::Grow(capacity) = conn.read_room(pending_frame_len(&conn.rbuf)) {
                let extra = capacity.saturating_sub(conn.rbuf.capacity());
                if !self.take_for_read(me, extra) {
                    return;
                }
                if let Some(conn) = self.clients.conns.get_mut(token) {
                    conn.charged += extra;
                    conn.grow_to(capacity);
                }
            }
            if let Some(conn) = self.clients.conns.get_mut(token) {
                conn.starved = false;
            }
            self.limits.starved.pop();
            self.clients.read_again.push(me);
        }
    }

    /// Charges the budget with what connection `token`'s buffers hold now.
    fn recharge(&mut self, token: usize) {
        let Some(conn) = self.clients.conns.get_mut(token) else { return };
        let now = conn.buffer_bytes();
        if now != conn.charged {
            self.limits.budget.adjust(&self.shared.buffer_bytes, conn.charged, now);
            conn.charged = now;
            self.publish_buffer_bytes();
        }
    }

    fn uncharge(&mut self, conn: &Conn) {
        self.limits.budget.adjust(&self.shared.buffer_bytes, conn.charged, 0);
        self.publish_buffer_bytes();
    }

    fn publish_buffer_bytes(&self) {
        self.counters().buffer_bytes.store(self.limits.budget.used() as u64, Ordering::Relaxed);
    }

    fn counters(&self) -> &ConnCounters {
        &self.shared.conn_counters[usize::from(self.id)]
    }

    /// Files connection `c`'s current deadline in the timer wheel, unless an
    /// entry at or before it is filed already.
    fn arm_deadline(&mut self, c: ConnRef) {
        let Some(conn) = self.clients.conns.get_mut(c.token) else { return };
        let at = next_check(conn, &self.limits);
        if self.limits.wheel.slot_time(at) < conn.timer_at {
            conn.timer_at = self.limits.wheel.insert(at, c);
        }
    }

    /// Connections whose wheel entry came due: each closes if it missed its
    /// deadline, and otherwise is filed again at its current one.
    fn run_conn_deadlines(&mut self, now: u64) {
        if self.limits.wheel.next_due().is_none_or(|t| t > now) {
            return;
        }
        let mut due = std::mem::take(&mut self.limits.expired);
        self.limits.wheel.expire(now, &mut due);
        for (c, at) in due.drain(..) {
            let Some(conn) = self.clients.conns.get_mut(c.token).filter(|x| x.gen == c.gen && x.timer_at == at) else {
                // Closed, or superseded by an earlier entry.
                continue;
            };
            conn.timer_at = u64::MAX;
            match conn.deadline(&self.limits.deadlines) {
                Some((t, why)) if t <= now => {
                    self.expire_conn(c.token, why);
                    continue;
                }
                _ => {}
            }
            if conn.is_idle() {
                conn.release_idle_buffers();
                self.recharge(c.token);
            }
            self.arm_deadline(c);
        }
        self.limits.expired = due;
    }

    /// Closes a connection that missed a deadline, saying why where it can.
    fn expire_conn(&mut self, token: usize, why: Expired) {
        let d = self.limits.deadlines;
        let (kind, code, message) = match why {
            Expired::Handshake => (
                Refusal::HandshakeTimeout,
                Some(ErrorCode::HANDSHAKE_TIMEOUT),
                format!("no handshake within {} ms", d.handshake_ms),
            ),
            Expired::Frame => (
                Refusal::FrameTimeout,
                Some(ErrorCode::FRAME_TIMEOUT),
                format!("a request frame did not arrive whole within {} ms", d.frame_ms),
            ),
            Expired::Idle => (Refusal::Idle, Some(ErrorCode::IDLE_TIMEOUT), format!("idle for {} ms", d.idle_ms)),
            // Output the client does not take cannot carry an error either.
            Expired::Output => {
                (Refusal::SlowConsumer, None, format!("unsent output made no progress for {} ms", d.frame_ms))
            }
        };
        let counters = self.counters();
        ConnCounters::bump(match kind {
            Refusal::HandshakeTimeout => &counters.handshake_timeouts,
            Refusal::FrameTimeout => &counters.frame_timeouts,
            Refusal::Idle => &counters.idle_timeouts,
            _ => &counters.slow_consumer_closes,
        });
        let peer = self.clients.conns.get(token).and_then(|c| c.stream.peer_addr().ok());
        match code {
            Some(code) => self.fail_conn(token, 0, code, &message),
            None => self.close_conn(token),
        }
        // Logged once the close is under way (tests wait for this line).
        if let Some(skipped) = self.limits.log[kind as usize].allow(self.limits.now_ms) {
            let text =
                format!("shard {}: closed connection from {peer:?}: {message} ({skipped} more not logged)", self.id);
            match why {
                Expired::Idle => log::info!("{text}"),
                _ => log::warn!("{text}"),
            }
        }
    }

    /// Output appended for local connection `c` took it past its bound:
    /// its further answers are dropped and it closes at the end of the turn.
    fn shed_conn(&mut self, c: ConnRef) {
        if let Some(conn) = self.clients.conns.get_mut(c.token).filter(|x| x.gen == c.gen && !x.shed) {
            conn.shed = true;
            self.limits.shed.push(c);
        }
    }

    /// Closes the connections shed this turn, and, while the broker is over
    /// its buffer budget, those holding the most output they do not take.
    fn close_shed(&mut self) {
        let now = self.limits.now_ms;
        if now >= self.limits.next_shed_check_ms && self.limits.budget.is_over(&self.shared.buffer_bytes) {
            self.limits.next_shed_check_ms = now + SHED_CHECK_EVERY_MS;
            self.shed_for_budget();
        }
        for c in std::mem::take(&mut self.limits.shed) {
            let Some(conn) = self.clients.conns.get(c.token).filter(|x| x.gen == c.gen) else { continue };
            let unsent = conn.unsent();
            let peer = conn.stream.peer_addr().ok();
            ConnCounters::bump(&self.counters().slow_consumer_closes);
            if let Some(skipped) = self.limits.log[Refusal::SlowConsumer as usize].allow(now) {
                log::warn!(
                    "shard {}: closed connection from {peer:?} as a slow consumer: {unsent} bytes unsent \
                     (per-connection bound {CONN_OUT_BYTES_MAX}, buffer budget {}) ({skipped} more not logged)",
                    self.id,
                    self.shared.cfg.buffer_budget_bytes
                );
            }
            self.close_conn(c.token);
        }
    }

    /// Over budget: shed connections with more than OUT_BYTES_HIGH of
    /// releasable output they have not taken any of for SHED_STALLED_MS,
    /// largest first, until this shard has given back the excess (or has no
    /// such connection).
    fn shed_for_budget(&mut self) {
        let excess = self.shared.buffer_bytes.load(Ordering::Relaxed).saturating_sub(self.budget_limit());
        let stalled_since = self.limits.now_ms.saturating_sub(SHED_STALLED_MS);
        let mut stuck: Vec<(usize, ConnRef)> = self
            .clients
            .conns
            .iter()
            .filter(|(_, c)| !c.shed && c.releasable - c.written > OUT_BYTES_HIGH && c.wrote_ms <= stalled_since)
            .map(|(t, c)| (c.out.capacity(), ConnRef { token: t, gen: c.gen }))
            .collect();
        stuck.sort_unstable_by_key(|(bytes, _)| Reverse(*bytes));
        let mut freed = 0;
        for (bytes, c) in stuck {
            if freed >= excess {
                break;
            }
            freed += bytes;
            self.shed_conn(c);
        }
    }

    fn budget_limit(&self) -> usize {
        usize::try_from(self.shared.cfg.buffer_budget_bytes).unwrap_or(usize::MAX)
    }

    /// A paused connection whose output or in-flight count dropped reads again.
    fn maybe_resume(&mut self, c: ConnRef) {
        if let Some(conn) = self.clients.conns.get(c.token) {
            if conn.gen == c.gen && !conn.read_paused() && (conn.read_pending || !conn.rbuf.is_empty()) {
                self.clients.read_again.push(c);
            }
        }
    }

    /// Sends a final error frame and closes the connection once it is
    /// written. Answers still waiting for the log keep waiting: the error
    /// goes out after them, never ahead of their durability.
    fn fail_conn(&mut self, token: usize, request_id: u64, code: ErrorCode, message: &str) {
        self.fail_conn_answering(token, 0, request_id, code, message)
    }

    /// As [`Shard::fail_conn`], for an error that answers one frame: it
    /// carries that frame's opcode (PROTOCOL.md §3), so a client can tell
    /// "your Handshake failed" from "the connection failed".
    pub(super) fn fail_conn_answering(
        &mut self,
        token: usize,
        opcode: u16,
        request_id: u64,
        code: ErrorCode,
        message: &str,
    ) {
        let Some(conn) = self.clients.conns.get_mut(token) else { return };
        reply::err(&mut conn.out, opcode, request_id, code, message);
        conn.closing = true;
        conn.rbuf.clear();
        conn.partial_since_ms = 0;
        if conn.holds.is_empty() {
            conn.release_all_now();
        } else {
            let gen = conn.gen;
            self.hold_conn(ConnRef { token, gen }, Need::NONE);
        }
        self.write_conn(token);
    }

    fn write_conn(&mut self, token: usize) {
        let Some(conn) = self.clients.conns.get_mut(token) else { return };
        let was_paused = conn.read_paused();
        let gen = conn.gen;
        match conn.flush(self.limits.now_ms) {
            Ok(done) => {
                if done && conn.closing && conn.releasable == conn.out.len() {
                    self.close_conn(token);
                    return;
                }
                if !done {
                    // The client is not taking its output: the stall deadline runs.
                    self.arm_deadline(ConnRef { token, gen });
                }
                if was_paused {
                    self.maybe_resume(ConnRef { token, gen });
                }
                self.recharge(token);
            }
            Err(e) => {
                log::debug!("shard {}: connection write error: {e}", self.id);
                self.close_conn(token);
            }
        }
    }

    /// Marks a local connection as having output in this turn.
    fn touch(&mut self, c: ConnRef) {
        if let Some(conn) = self.clients.conns.get_mut(c.token) {
            if conn.gen == c.gen && conn.touched_turn != self.turn {
                conn.touched_turn = self.turn;
                self.clients.touched.push(c);
            }
        }
    }

    /// One request of `c` was answered.
    fn answered(&mut self, c: ConnRef) {
        let Some(conn) = self.clients.conns.get_mut(c.token) else { return };
        if conn.gen != c.gen {
            return;
        }
        let was_full = conn.in_flight >= CONN_IN_FLIGHT_MAX;
        conn.in_flight = conn.in_flight.saturating_sub(1);
        self.touch(c);
        if was_full {
            self.maybe_resume(c);
        }
    }

    // ---- handing connections between shards -------------------------------

    fn accept_handover(&mut self, h: mailbox::Handover) {
        let Some(me) = self.add_conn(h.stream, true) else { return };
        let resp = self.handshake_ok(h.version);
        if let Some(conn) = self.clients.conns.get_mut(me.token) {
            conn.session = h.session;
            conn.tls = h.tls;
            conn.rbuf = h.pending;
            reply::ok(&mut conn.out, h.handshake_request_id, &resp);
            conn.release_all_now();
        }
        self.write_conn(me.token);
        self.recharge(me.token);
        self.clients.read_again.push(me);
    }

    fn handshake_ok(&self, version: u16) -> cmq_protocol::Response {
        cmq_protocol::Response::Handshake(cmq_protocol::HandshakeOk {
            version,
            server: format!("cmqd/{}", env!("CARGO_PKG_VERSION")),
            shard_count: self.shard_count(),
            shard_id: self.id,
            frame_bytes_max: cmq_protocol::limits::FRAME_BYTES_MAX,
            cluster: self.cluster_map(),
        })
    }

    fn cluster_map(&self) -> cmq_protocol::ClusterMap {
        self.shared.cluster_map()
    }

    // ---- messages from other shards ---------------------------------------

    fn drain_inbox(&mut self, now: u64) {
        self.run_deferred(now);
        while let Ok(msg) = self.inbox.rx.try_recv() {
            match msg {
                ShardMsg::Requests(reqs) => self.run_forwarded(reqs, now),
                ShardMsg::Replies(batch) => self.deliver_remote(batch, true),
                ShardMsg::Push(batch) => self.deliver_remote(batch, false),
                ShardMsg::Handover(h) => self.accept_handover(*h),
                ShardMsg::Query { from, gather, query } => self.take_query(from, gather, query, now),
                ShardMsg::Answer { gather, answer } => self.gather_answer(gather, answer, now),
                m
                @ (ShardMsg::Transfers { .. } | ShardMsg::TransferResults { .. } | ShardMsg::TransferPrune { .. }) => {
                    self.handle_transfer_msg(m, now)
                }
                ShardMsg::Remote { node, to, msg } => self.send_to_node(node, to, *msg),
                ShardMsg::PeerConn(stream) => self.add_peer_conn(*stream),
                ShardMsg::CheckerRegistered { group, reply_to } => self.add_checker(group, reply_to),
                ShardMsg::ConnClosed { reply_to } => self.forget_conn(reply_to),
                ShardMsg::Shutdown => {
                    if !self.drain.draining {
                        self.begin_drain(now);
                    }
                }
                ShardMsg::Stats(req) => self.answer_stats(req, now),
                ShardMsg::Stall { ms } => self.stall(ms),
                ShardMsg::External(rs) => rs.into_iter().for_each(|r| self.take_external(r, now)),
            }
        }
    }

    // ---- timers -------------------------------------------------------------

    fn run_timers(&mut self, now: u64) {
        if !self.may_serve() {
            self.apply_transfers_in(now);
            // A follower's clock moves leases and delays; the moves and
            // checks they lead to are the leader's to log.
            self.engine.tick_passive(now);
            return;
        }
        self.engine.tick(&mut self.log, now);
        self.expire_waiters(now);
        self.serve_waiters(now);
        self.send_transfers(now);
        self.push_checks();
        self.collect_push_outcomes(now);
        self.send_pushes(now);
    }

    /// A connection is gone: its long polls and checker registrations go too.
    fn forget_conn(&mut self, reply_to: ReplyTo) {
        self.cancel_waits_of(reply_to);
        for list in self.exchange.checkers.values_mut() {
            list.retain(|r| *r != reply_to);
        }
        if !self.cross.deferred.is_empty() {
            self.cross.deferred.retain(|f| f.reply_to != reply_to);
        }
        self.exchange.checkers.retain(|_, l| !l.is_empty());
    }

    // ---- end of turn: forwards, group commit, release ----------------------

    /// Log-space housekeeping about once a second, and compaction steps.
    fn housekeep(&mut self, now: u64) {
        if now >= self.durability.next_housekeep_ms {
            self.durability.next_housekeep_ms = now + HOUSEKEEP_EVERY_MS;
            if self.log.try_recover(now) && self.durability.engine_suspect {
                self.rebuild_engine();
            }
            self.set_consensus_floor();
            if !self.durability.compacting {
                self.durability.compacting = self.log.housekeep(&mut self.engine) && self.may_serve();
            }
        }
        if self.durability.compacting {
            // In a group, relocated messages are proposed like any record.
            self.durability.compacting = self.may_serve() && self.log.compact_step(&mut self.engine);
        }
    }

    fn end_turn(&mut self, now: u64) {
        // Forward requests to their owners, one message per owner.
        for owner in 0..self.cross.forward_out.len() {
            if self.cross.forward_out[owner].is_empty() {
                continue;
            }
            let reqs = std::mem::take(&mut self.cross.forward_out[owner]);
            if let Err(ShardMsg::Requests(reqs)) = self.shared.peers[owner].send(ShardMsg::Requests(reqs)) {
                for f in reqs {
                    let op = f.request.opcode() as u16;
                    self.reply_err(
                        f.reply_to,
                        op,
                        f.request_id,
                        ErrorCode::BUSY,
                        "shard inbox full; retry",
                        ReplyDep::Read,
                    );
                }
            }
        }
        // Retry messages refused by full inboxes.
        for (shard, msg) in std::mem::take(&mut self.cross.unsent) {
            self.send_to(shard, msg);
        }
        // Output appended without a need of its own (pushes to checkers)
        // waits for everything logged so far.
        let everything = self.need_everything();
        let touched = std::mem::take(&mut self.clients.touched);
        for c in &touched {
            self.hold_conn(*c, everything);
        }
        // This turn's messages to peers wait for what they depend on.
        let mut need = std::mem::replace(&mut self.cross.remote_need, Need::NONE);
        let mut msgs = std::mem::take(&mut self.cross.turn_msgs);
        if !msgs.is_empty() {
            need = need.max(everything);
        }
        for peer in 0..self.cross.remote_out.len() {
            if !self.cross.remote_out[peer].parts.is_empty() {
                msgs.push((peer as u16, ShardMsg::Replies(std::mem::take(&mut self.cross.remote_out[peer]))));
            }
            if !self.cross.push_out[peer].parts.is_empty() {
                need = need.max(everything);
                msgs.push((peer as u16, ShardMsg::Push(std::mem::take(&mut self.cross.push_out[peer]))));
            }
        }
        msgs.extend(self.external_turn_msg());
        if !msgs.is_empty() {
            self.cross.staged_reply_bytes += reply_bytes(&msgs);
            self.cross.staged.push(need, msgs);
        }
        self.cross.forwarded_reply_bytes = 0;
        // In a group the turn's records become one proposed entry.
        self.repl_before_submit();
        // Group commit: everything this turn logged goes out as one write.
        self.log.submit(now);
        self.log.periodic_sync(now);
        self.poll_log();
        self.repl_after_submit();
        for c in touched {
            if self.clients.conns.get(c.token).is_some_and(|x| x.gen == c.gen && x.written < x.releasable) {
                self.write_conn(c.token);
            }
        }
    }

    /// Collects log completions and lets out what they made safe.
    fn poll_log(&mut self) {
        if let Some((batch, e)) = self.log.poll_failure() {
            // Output that depends on records of this batch must not go
            // out. Closing the connections that wait on the log tells
            // clients the outcome is unknown; the log refuses writes
            // until it recovers.
            log::error!("shard {}: log batch {batch} failed: {e}; failing connections awaiting it", self.id);
            if self.repl.is_some() {
                // A replica whose log dropped written entries cannot tell
                // Raft which of them it still holds: start over from the
                // disk (the group serves meanwhile, and catches it up).
                log::error!("shard {}: a replica's log failed; cmqd must restart", self.id);
                std::process::abort();
            }
            self.fail_unreleased();
            self.durability.engine_suspect = true;
        }
        if self.repl.is_some() && !self.log.entries_ref().has_open() {
            // Completions let Raft's readies go on (never with an entry
            // half built: its records would interleave with Raft's writes).
            self.repl_pump();
        }
        self.durability.progress =
            self.group_progress().unwrap_or_else(|| release::Progress::solo(self.log.progress()));
        self.release_ready();
    }

    /// Lets out held output whose needs the log's progress meets.
    fn release_ready(&mut self) {
        let p = self.durability.progress;
        let mut i = 0;
        while i < self.durability.waiting.len() {
            let c = self.durability.waiting[i];
            let still = match self.clients.conns.get_mut(c.token) {
                Some(conn) if conn.gen == c.gen => {
                    let before = conn.releasable;
                    let still = conn.release(p);
                    conn.waiting = still;
                    if conn.releasable != before {
                        self.write_conn(c.token);
                    }
                    still
                }
                _ => false,
            };
            if still {
                i += 1;
            } else {
                self.durability.waiting.swap_remove(i);
            }
        }
        self.time_released();
        while let Some(msgs) = self.cross.staged.pop_met(p) {
            self.cross.staged_reply_bytes -= reply_bytes(&msgs);
            for (peer, msg) in msgs {
                match msg {
                    ShardMsg::Remote { node, to, msg } => self.send_to_node(node, to, *msg),
                    msg => self.send_to(peer, msg),
                }
            }
        }
    }

    /// Output just appended to local connection `c` may go out once `need` is met.
    fn hold_conn(&mut self, c: ConnRef, need: Need) {
        let Some(conn) = self.clients.conns.get_mut(c.token) else { return };
        if conn.gen != c.gen {
            return;
        }
        if conn.hold(need, self.durability.progress) && !conn.waiting {
            conn.waiting = true;
            self.durability.waiting.push(c);
        }
        if conn.unsent() > CONN_OUT_BYTES_MAX {
            self.shed_conn(c);
        }
    }

    /// A need covering every record logged so far (at its durability).
    fn need_everything(&self) -> Need {
        Need { written: self.log.end(), durable: self.log.sync_mark(), read: 0 }
    }

    /// What a reply that depends on `dep` needs: everything logged so far
    /// written (output leaves each connection in order), and durable as
    /// far as `dep` says.
    fn need_for(&mut self, dep: ReplyDep) -> Need {
        let (durable, read) = match dep {
            ReplyDep::Now => return Need::NONE,
            ReplyDep::Logged(pos) => {
                self.log.require_durable(pos);
                (pos, 0)
            }
            ReplyDep::Read => (self.log.sync_mark(), self.read_need()),
        };
        Need { written: self.log.end(), durable, read }
    }

    fn fail_unreleased(&mut self) {
        let tokens: Vec<usize> = self.durability.waiting.drain(..).map(|c| c.token).collect();
        for t in tokens {
            self.close_conn(t);
        }
        // Transfers of the failed turns are resent from the outbox (or were
        // never applied); replies to other shards' clients are lost with the
        // outcome unknown, as for local ones.
        self.cross.staged.clear();
        self.cross.staged_reply_bytes = 0;
    }

    /// After a failed log batch, once the log is writable again: the engine
    /// is rebuilt from what the log holds, so state that never reached the
    /// disk (and log positions about to be reused) is forgotten. Waiting
    /// receives are answered: they would otherwise wait on the old engine.
    fn rebuild_engine(&mut self) {
        let mut fresh = self.engine.fresh();
        match self.log.replay_into(&mut fresh, None) {
            Ok(()) => {
                // Output produced from the old state since the failure may
                // depend on records that were never written.
                self.fail_unreleased();
                log::warn!("shard {}: rebuilt queue state from the log after a storage error", self.id);
                self.durability.engine_suspect = false;
                let waits = std::mem::replace(&mut self.engine, fresh).take_waiters();
                let msg = "the broker recovered from a storage error; receive again";
                self.end_waits(waits, ErrorCode::STORAGE_UNAVAILABLE, msg, ReplyDep::Read);
            }
            Err(e) => {
                // The log cannot be read back: serving from a state that does
                // not match it would hand out wrong messages. Stop instead.
                log::error!("shard {}: cannot rebuild state from the log: {e:#}; cmqd must restart", self.id);
                std::process::abort();
            }
        }
    }
}

/// Bytes needed to complete the frame at the front of `buf` (for sizing the next read).
fn pending_frame_len(buf: &[u8]) -> usize {
    if buf.len() < frame::LENGTH_PREFIX_BYTES {
        return frame::HEADER_BYTES;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    len.saturating_add(frame::LENGTH_PREFIX_BYTES).min(cmq_protocol::limits::FRAME_BYTES_MAX as usize)
}

/// The length of the frame at the front of `buf` if it is over the
/// handshake limit and the limit applies: before the handshake, or when the
/// frame is a Handshake (known once its opcode has arrived).
fn over_handshake_limit(buf: &[u8], handshaken: bool) -> Option<u64> {
    if buf.len() < frame::LENGTH_PREFIX_BYTES {
        return None;
    }
    let total = u64::from(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]])) + frame::LENGTH_PREFIX_BYTES as u64;
    if total <= u64::from(HANDSHAKE_FRAME_BYTES_MAX) {
        return None;
    }
    let is_handshake = buf.len() >= 6 && u16::from_le_bytes([buf[4], buf[5]]) == Opcode::Handshake as u16;
    (!handshaken || is_handshake).then_some(total)
}

/// When connection `conn`'s deadlines must next be looked at: its earliest
/// deadline, or, with none running (requests in flight), after at most the
/// idle deadline (it cannot become idle and expire sooner) or the wheel's span.
fn next_check(conn: &Conn, limits: &ConnLimits) -> u64 {
    match conn.deadline(&limits.deadlines) {
        Some((t, _)) => t,
        None => {
            let idle = limits.deadlines.idle_ms;
            limits.now_ms + if idle == 0 { wheel::WHEEL_SPAN_MS } else { idle.min(wheel::WHEEL_SPAN_MS) }
        }
    }
}

/// A TLS fatal alert `internal_error` record (RFC 8446 §6.2): what a TLS
/// port sends a connection over `--max-connections` in place of the
/// plaintext TOO_MANY_CONNECTIONS frame, which a TLS client would read as
/// garbage (PROTOCOL.md §4, "TLS"). Cheap: no TLS session is set up for it.
const TLS_ALERT_INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// Best effort: tell a client it is over the connection limit
/// (`--max-connections`, `limit`), then drop it.
fn refuse(mut stream: mio::net::TcpStream, limit: usize, tls: bool) {
    use std::io::Write;
    if tls {
        return refuse_tls(&stream);
    }
    let mut out = Vec::new();
    let msg = format!("connection limit of {limit} reached");
    reply::err(&mut out, Opcode::Handshake as u16, 0, ErrorCode::TOO_MANY_CONNECTIONS, &msg);
    let _ = stream.write(&out);
    // What it sent already (a Handshake) is read first, so the close is
    // not a reset that could overtake the refusal.
    crate::tls::transport::discard_unread(&stream);
}

/// Refuses a connection on the TLS port before any session: the alert,
/// then (as in `refuse`) what the client sent is read so the close is no reset.
fn refuse_tls(stream: &mio::net::TcpStream) {
    use std::io::Write;
    let _ = (&*stream).write(&TLS_ALERT_INTERNAL_ERROR);
    crate::tls::transport::discard_unread(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(total: u32, opcode: Option<Opcode>) -> Vec<u8> {
        let mut b = (total - frame::LENGTH_PREFIX_BYTES as u32).to_le_bytes().to_vec();
        if let Some(op) = opcode {
            b.extend_from_slice(&(op as u16).to_le_bytes());
        }
        b
    }

    #[test]
    fn handshake_limit_applies_before_the_handshake_and_to_handshake_frames() {
        let max = HANDSHAKE_FRAME_BYTES_MAX;
        assert_eq!(over_handshake_limit(&prefix(max, None), false), None, "at the limit");
        assert_eq!(over_handshake_limit(&prefix(max + 1, None), false), Some(u64::from(max) + 1));
        assert_eq!(over_handshake_limit(&[0xff, 0xff, 0xff], false), None, "prefix not in yet");
        assert_eq!(over_handshake_limit(&prefix(max + 1, None), true), None, "opcode not in yet");
        assert_eq!(over_handshake_limit(&prefix(max + 1, Some(Opcode::SendMessage)), true), None);
        let big = cmq_protocol::limits::FRAME_BYTES_MAX;
        assert_eq!(over_handshake_limit(&prefix(big, Some(Opcode::Handshake)), true), Some(u64::from(big)));
    }
}
