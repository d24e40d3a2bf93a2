//! `PeerAcceptor`: the node's `--peer-listen` listener, on a thread of its
//! own (a small mio loop), which authenticates every inbound peer
//! connection and hands it to the shard it is for.
//!
//! Nothing a stranger does here can hold up a real peer or cost unbounded
//! memory: at most `ACCEPT_PENDING_MAX` connections are in the handshake at
//! once (the oldest is dropped for a new one), each holds at most
//! `ACCEPT_BUFFER_BYTES` of input and frames of at most
//! `PEER_HANDSHAKE_FRAME_BYTES_MAX`, and each must finish the handshake
//! within its deadline. The loop never blocks on one connection.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cmq_protocol::limits::PEER_HANDSHAKE_FRAME_BYTES_MAX;
use cmq_protocol::peer::{self, AuthFrame, Hello, PeerFrame, Refuse, RefuseReason};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::auth::{self, NodeIdentity};
use super::conn::{PeerConn, TLS_HANDSHAKE_RECORD};
use crate::tls::peer::PeerTls;

/// Connections in the handshake at once. Real peers need one per shard
/// per peer at most, briefly; past this the oldest pending connection is
/// closed to make room, so strangers that connect and stay silent cannot
/// lock real peers out (they would have to keep up a connection flood).
pub const ACCEPT_PENDING_MAX: usize = 64;

/// How long an inbound connection has, from accept, to complete the
/// handshake (Hello, then Proof).
pub const ACCEPT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Input one pending connection may hold: a handshake frame (at most
/// `PEER_HANDSHAKE_FRAME_BYTES_MAX`) plus the start of what the dialer
/// sends right after its Proof, handed to the shard with the connection.
pub const ACCEPT_BUFFER_BYTES: usize = 4096;

/// How long a refused connection is kept open (reading and discarding) so
/// that the Refuse frame reaches the other side before the close.
pub const REFUSE_LINGER_MS: u64 = 1_000;

const _: () = assert!(ACCEPT_BUFFER_BYTES >= 2 * PEER_HANDSHAKE_FRAME_BYTES_MAX as usize);

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// A peer connection that completed the handshake, for shard `shard`.
pub struct AuthenticatedStream {
    /// The socket, with its TLS session when peer TLS is on.
    pub conn: PeerConn,
    /// The peer's node id, proven by its Proof.
    pub node_id: u64,
    /// The shard (of both nodes) the connection belongs to.
    pub shard: u16,
    /// Where the peer serves clients.
    pub client_addr: String,
    pub remote: SocketAddr,
    /// Bytes read past the Proof (the start of the peer's data frames).
    pub buffered: BytesMut,
}

/// What the acceptor checks inbound connections against.
#[derive(Debug, Clone)]
pub struct AcceptorConfig {
    pub identity: NodeIdentity,
    /// Node ids allowed to connect (the cluster's other members).
    pub members: BTreeSet<u64>,
    pub handshake_timeout_ms: u64,
    /// `--peer-tls-*`: inbound connections must be TLS with a certificate
    /// from the cluster's CA (None: plaintext, and TLS is refused).
    pub tls: Option<PeerTls>,
}

impl AcceptorConfig {
    pub fn new(identity: NodeIdentity, members: BTreeSet<u64>) -> AcceptorConfig {
        AcceptorConfig { identity, members, handshake_timeout_ms: ACCEPT_HANDSHAKE_TIMEOUT_MS, tls: None }
    }
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptorStats {
    pub accepted: u64,
    pub authenticated: u64,
    /// Refused with a Refuse frame (bad MAC, unknown node, wrong shard count, garbage…).
    pub refused: u64,
    /// Closed for not finishing the handshake in time.
    pub timed_out: u64,
    /// Closed to make room for a newer connection (`ACCEPT_PENDING_MAX`).
    pub evicted: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    authenticated: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    evicted: AtomicU64,
}

struct Shared {
    stop: AtomicBool,
    members: Mutex<BTreeSet<u64>>,
    counters: Counters,
}

pub struct PeerAcceptor {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl PeerAcceptor {
    /// Binds `addr` and starts the acceptor thread. Each authenticated
    /// connection is passed to `handoff` with its shard number (the broker
    /// sends it to that shard's mailbox; dropping it is safe: the peer
    /// redials).
    pub fn bind(
        addr: SocketAddr,
        cfg: AcceptorConfig,
        handoff: impl Fn(u16, AuthenticatedStream) + Send + 'static,
    ) -> io::Result<PeerAcceptor> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            members: Mutex::new(cfg.members),
            counters: Counters::default(),
        });
        let mut lp = AcceptLoop {
            poll,
            listener,
            pending: Slab::with_capacity(ACCEPT_PENDING_MAX),
            next_seq: 0,
            me: cfg.identity,
            timeout_ms: cfg.handshake_timeout_ms,
            tls: cfg.tls,
            shared: shared.clone(),
            handoff,
            start: Instant::now(),
        };
        let thread = std::thread::Builder::new().name("peer-acceptor".into()).spawn(move || lp.run())?;
        Ok(PeerAcceptor { local_addr, shared, waker, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the node ids allowed to connect (a membership change).
    /// Connections already handed over are the shards' business.
    pub fn set_members(&self, members: BTreeSet<u64>) {
        *self.shared.members.lock().unwrap_or_else(|e| e.into_inner()) = members;
    }

    pub fn stats(&self) -> AcceptorStats {
        let c = &self.shared.counters;
        AcceptorStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            authenticated: c.authenticated.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, closes the listener and every pending connection,
    /// and waits for the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PeerAcceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

enum State {
    AwaitHello,
    AwaitProof {
        hello: Hello,
        transcript: Vec<u8>,
    },
    /// Refused: the Refuse frame is being written; input is discarded until
    /// the peer closes or the linger deadline.
    Closing,
}

struct Pending {
    conn: PeerConn,
    /// Whether the first byte was looked at (TLS or plaintext, as this node speaks).
    checked: bool,
    remote: SocketAddr,
    state: State,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    deadline_ms: u64,
    /// Accept order (the oldest is evicted first).
    seq: u64,
}

/// What a pending connection needs next.
enum Step {
    Wait,
    Drop,
    Authenticated(Hello),
}

struct AcceptLoop<F> {
    poll: Poll,
    listener: TcpListener,
    pending: Slab<Pending>,
    next_seq: u64,
    me: NodeIdentity,
    timeout_ms: u64,
    tls: Option<PeerTls>,
    shared: Arc<Shared>,
    handoff: F,
    start: Instant,
}

impl<F: Fn(u16, AuthenticatedStream)> AcceptLoop<F> {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = self.now_ms();
            let timeout = self
                .pending
                .iter()
                .map(|(_, p)| p.deadline_ms)
                .min()
                .map(|d| Duration::from_millis(d.saturating_sub(now)));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("peer acceptor: poll failed: {e}; no more peer connections will be accepted");
                    return;
                }
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = self.now_ms();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(i) => self.drive(i, now),
                }
            }
            self.expire(self.now_ms());
        }
    }

    fn accept_all(&mut self, now: u64) {
        loop {
            let (mut stream, remote) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: try again at the next readiness event.
                    log::warn!("peer acceptor: accept failed: {e}");
                    return;
                }
            };
            self.shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
            if self.pending.len() >= ACCEPT_PENDING_MAX {
                self.evict_oldest();
            }
            let entry = self.pending.vacant_entry();
            if let Err(e) =
                self.poll.registry().register(&mut stream, Token(entry.key()), Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("peer acceptor: cannot register a connection from {remote}: {e}");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let conn = match &self.tls {
                None => PeerConn::plain(stream),
                Some(tls) => match tls.accept() {
                    Ok(session) => PeerConn::tls(stream, session),
                    Err(e) => {
                        log::warn!("peer acceptor: no TLS session for {remote}: {e}");
                        let _ = self.poll.registry().deregister(&mut stream);
                        continue;
                    }
                },
            };
            self.next_seq += 1;
            entry.insert(Pending {
                conn,
                checked: false,
                remote,
                state: State::AwaitHello,
                rbuf: Vec::with_capacity(ACCEPT_BUFFER_BYTES),
                out: Vec::new(),
                deadline_ms: now + self.timeout_ms,
                seq: self.next_seq,
            });
        }
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.pending.iter().min_by_key(|(_, p)| p.seq).map(|(i, _)| i) else { return };
        let p = self.close(oldest);
        self.shared.counters.evicted.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "peer acceptor: {ACCEPT_PENDING_MAX} connections in the handshake; closed the oldest, from {}",
            p.remote
        );
    }

    fn close(&mut self, i: usize) -> Pending {
        let mut p = self.pending.remove(i);
        let _ = self.poll.registry().deregister(&mut p.conn.stream);
        p
    }

    fn drive(&mut self, i: usize, now: u64) {
        let members = &self.shared.members;
        let Some(p) = self.pending.get_mut(i) else { return };
        let is_member = |id: u64| members.lock().unwrap_or_else(|e| e.into_inner()).contains(&id);
        let step = p.progress(&self.me, is_member, now, &self.shared.counters);
        match step {
            Step::Wait => {}
            Step::Drop => {
                self.close(i);
            }
            Step::Authenticated(hello) => {
                let p = self.close(i);
                self.shared.counters.authenticated.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "peer acceptor: node {} (shard {}) authenticated from {}",
                    hello.node_id,
                    hello.shard,
                    p.remote
                );
                let shard = hello.shard;
                (self.handoff)(
                    shard,
                    AuthenticatedStream {
                        conn: p.conn,
                        node_id: hello.node_id,
                        shard,
                        client_addr: hello.client_addr,
                        remote: p.remote,
                        buffered: BytesMut::from(&p.rbuf[..]),
                    },
                );
            }
        }
    }

    fn expire(&mut self, now: u64) {
        let late: Vec<usize> = self.pending.iter().filter(|(_, p)| p.deadline_ms <= now).map(|(i, _)| i).collect();
        for i in late {
            let p = self.close(i);
            if !matches!(p.state, State::Closing) {
                self.shared.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "peer acceptor: connection from {} did not complete the handshake in {} ms",
                    p.remote,
                    self.timeout_ms
                );
            }
        }
    }
}

impl Pending {
    /// Writes what is queued, then handles every buffered frame and reads
    /// more until the socket is drained or a decision is reached.
    fn progress(&mut self, me: &NodeIdentity, is_member: impl Fn(u64) -> bool, now: u64, c: &Counters) -> Step {
        if self.flush().is_err() {
            return Step::Drop;
        }
        self.shutdown_if_refused();
        if !self.checked {
            match self.check_first_byte(now, c) {
                Step::Wait if self.checked => {}
                step => return step,
            }
        }
        loop {
            loop {
                let frame = match peer::check(&self.rbuf, PEER_HANDSHAKE_FRAME_BYTES_MAX) {
                    Ok(Some(total)) => {
                        let payload = bytes::Bytes::copy_from_slice(&self.rbuf[peer::PEER_HEADER_BYTES..total]);
                        let kind = self.rbuf[peer::PEER_LENGTH_PREFIX_BYTES];
                        self.rbuf.drain(..total);
                        PeerFrame::decode(kind, payload).map_err(|e| e.to_string())
                    }
                    Ok(None) => break,
                    Err(e) => Err(e.to_string()),
                };
                if matches!(self.state, State::Closing) {
                    self.rbuf.clear();
                    break;
                }
                match self.on_frame(frame, me, &is_member, now, c) {
                    Step::Wait => {}
                    done => return done,
                }
            }
            let mut chunk = [0u8; ACCEPT_BUFFER_BYTES];
            let room = ACCEPT_BUFFER_BYTES - self.rbuf.len();
            match self.conn.read(&mut chunk[..room]) {
                Ok(0) => return Step::Drop,
                Ok(_) if matches!(self.state, State::Closing) => {} // refused: input is discarded
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData && self.conn.is_tls() => {
                    // An untrusted certificate, a TLS protocol error: rustls
                    // sent its alert; the dialer logs its side.
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    log::warn!("peer acceptor: refused the connection from {}: {e}", self.remote);
                    return Step::Drop;
                }
                Err(_) => return Step::Drop,
            }
        }
    }

    /// The first byte tells TLS (a handshake record) from a plaintext
    /// peer's frame; a peer speaking the other way than this node is
    /// refused with a log line, never left to time out. Step::Wait with
    /// `checked` set: go on.
    fn check_first_byte(&mut self, now: u64, c: &Counters) -> Step {
        let tls_here = self.conn.is_tls();
        match self.conn.peek_first_byte() {
            Ok(None) => Step::Drop,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait,
            Err(_) => Step::Drop,
            Ok(Some(b)) if (b == TLS_HANDSHAKE_RECORD) == tls_here => {
                self.checked = true;
                Step::Wait
            }
            Ok(Some(_)) if tls_here => {
                // A plaintext peer can read a plaintext Refuse: it logs why.
                self.conn.drop_tls();
                self.checked = true;
                let msg = "this node requires TLS on peer links (--peer-tls-cert, --peer-tls-key, --peer-tls-ca)";
                self.refuse(Refuse::new(RefuseReason::TLS_REQUIRED, msg), now, c)
            }
            Ok(Some(_)) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "peer acceptor: refused the connection from {}: it started a TLS handshake, but this node has no \
                     peer TLS (--peer-tls-cert): turn peer TLS on for every node or for none",
                    self.remote
                );
                Step::Drop
            }
        }
    }

    fn on_frame(
        &mut self,
        frame: Result<PeerFrame, String>,
        me: &NodeIdentity,
        is_member: impl Fn(u64) -> bool,
        now: u64,
        c: &Counters,
    ) -> Step {
        let frame = match frame {
            Ok(PeerFrame::Auth(AuthFrame::Refuse(r))) => {
                // The dialer found our Challenge wanting (most likely: it holds another key).
                let (reason, remote) = (RefuseReason(r.reason).name(), self.remote);
                log::warn!("peer acceptor: the dialer at {remote} refused this node: {reason}: {}", r.message);
                return Step::Drop;
            }
            Ok(PeerFrame::Auth(a)) => a,
            Ok(PeerFrame::Data(d)) => {
                return self.refuse(
                    Refuse::new(RefuseReason::MALFORMED, &format!("{:?} frame before authentication", d.kind())),
                    now,
                    c,
                )
            }
            Err(e) => return self.refuse(Refuse::new(RefuseReason::MALFORMED, &e), now, c),
        };
        match (frame, &self.state) {
            (AuthFrame::Hello(h), State::AwaitHello) => {
                if let Err(r) = auth::check_hello(me, is_member, &h) {
                    return self.refuse(r, now, c);
                }
                let Ok(nonce) = auth::random_nonce() else {
                    log::error!("peer acceptor: the OS random source failed; dropping a peer connection");
                    return Step::Drop;
                };
                // With TLS the Hello came over a finished TLS handshake.
                let binding = self.conn.channel_binding();
                if self.conn.is_tls() && binding.is_none() {
                    return Step::Drop;
                }
                let (challenge, transcript) = auth::challenge(me, &h, nonce, binding.as_ref().map(|b| &b[..]));
                AuthFrame::Challenge(challenge).encode(&mut self.out);
                self.state = State::AwaitProof { hello: h, transcript };
                if self.flush().is_err() {
                    return Step::Drop;
                }
                Step::Wait
            }
            (AuthFrame::Proof(p), State::AwaitProof { hello, transcript }) => {
                match auth::check_proof(&me.key, transcript, &p, hello.node_id) {
                    Ok(()) => Step::Authenticated(hello.clone()),
                    Err(r) => self.refuse(r, now, c),
                }
            }
            (f, _) => {
                self.refuse(Refuse::new(RefuseReason::MALFORMED, &format!("unexpected {:?} frame", f.kind())), now, c)
            }
        }
    }

    /// Sends `r`, stops writing, and lingers until the peer closes (so the
    /// frame is not lost to a reset) or `REFUSE_LINGER_MS` passes.
    fn refuse(&mut self, r: Refuse, now: u64, c: &Counters) -> Step {
        c.refused.fetch_add(1, Ordering::Relaxed);
        let claimed = match &self.state {
            State::AwaitProof { hello, .. } => format!(" (claiming node {})", hello.node_id),
            _ => String::new(),
        };
        log::warn!(
            "peer acceptor: refused the connection from {}{claimed}: {}: {}",
            self.remote,
            RefuseReason(r.reason).name(),
            r.message
        );
        AuthFrame::Refuse(r).encode(&mut self.out);
        self.state = State::Closing;
        self.rbuf.clear();
        self.deadline_ms = self.deadline_ms.min(now + REFUSE_LINGER_MS);
        if self.flush().is_err() {
            return Step::Drop;
        }
        self.shutdown_if_refused();
        Step::Wait
    }

    /// Once a Refuse is wholly written, says no more (FIN after it).
    fn shutdown_if_refused(&mut self) {
        if matches!(self.state, State::Closing) && self.out.is_empty() && !self.conn.has_pending_output() {
            let _ = self.conn.stream.shutdown(Shutdown::Write);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.conn.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match self.conn.flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }
}
