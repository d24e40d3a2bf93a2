//! `PeerLinks`: one shard's links to the same shard of every other node,
//! driven from inside that shard's mio event loop.
//!
//! Each link is two TCP connections: the one this shard dialled (it sends
//! on it and reads only the handshake answer or a refusal) and the one the
//! peer dialled (handed over by the node's [`super::PeerAcceptor`] after
//! authentication; this shard only reads it). One direction per connection
//! means no dial races and no tie-breaking between simultaneous connects.
//!
//! The shard calls, every loop turn:
//! * `handle_event` for each readiness event whose token `owns` says is ours;
//! * `tick` once (dials whose backoff ran out, handshake deadlines, reads a
//!   fairness limit cut short);
//! * `send`/`send_written_ack` while it works (frames are only buffered);
//! * `flush` at the end: one write per peer for everything the turn produced.
//!
//! and folds `next_deadline_ms` into its poll timeout.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use cmq_protocol::limits::{PEER_FRAME_BYTES_MAX, PEER_HANDSHAKE_FRAME_BYTES_MAX};
use cmq_protocol::peer::{self, AuthFrame, DataFrame, Hello, PeerFrame, PeerKind, RefuseReason};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rand::Rng;

use super::acceptor::AuthenticatedStream;
use super::auth::{self, NodeIdentity};
use super::conn::PeerConn;
use super::io::{OutBuf, READ_CHUNK_BYTES};
use crate::tls::peer::PeerTls;

/// Most peers one node links to (a 5-node cluster has 4; replacing a node
/// briefly adds one; room beyond that for larger clusters).
pub const PEERS_MAX: usize = 8;

/// Tokens a `PeerLinks` uses, from its `token_base`: two per peer (the
/// connection it dialled, the connection it accepted).
pub const PEER_TOKENS: usize = 2 * PEERS_MAX;

/// Unwritten bytes one link may hold. Past it `send` refuses with
/// [`SendError::Full`] instead of growing: Raft retransmits what it could
/// not send. About 15 ms of loopback bandwidth, 160 ms at 1 Gbit/s: enough
/// to ride out a slow turn on the other side, small enough that a stalled
/// peer costs a bounded amount of memory. One frame larger than this (up
/// to `PEER_FRAME_BYTES_MAX`) is taken when nothing else is queued, so any
/// legal frame can be sent.
pub const PEER_OUT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Read syscalls (of up to `READ_CHUNK_BYTES` each) one accepted
/// connection gets per loop turn before the shard's other work has its
/// turn: 1 MiB of replication traffic per peer per turn.
pub const PEER_READS_PER_TURN_MAX: u32 = 16;

/// First delay before redialling a peer after a failure.
pub const RECONNECT_DELAY_MIN_MS: u64 = 50;

/// Longest delay between dials (the backoff doubles up to it).
pub const RECONNECT_DELAY_MAX_MS: u64 = 2_000;

/// How long a dial may take from `connect` to an answered challenge.
pub const DIAL_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// How long data this node sent may stay unacknowledged before the kernel
/// drops the connection (`TCP_USER_TIMEOUT`). Without it a peer that
/// vanished without a FIN or RST (power loss, a pulled cable) would keep
/// its link "up" until TCP gives up after about 15 minutes; a live leader
/// sends heartbeats far more often than this.
pub const PEER_TCP_USER_TIMEOUT_MS: u64 = 20_000;

const _: () = assert!(PEER_OUT_BYTES_MAX >= READ_CHUNK_BYTES);
const _: () = assert!(PEER_TCP_USER_TIMEOUT_MS > DIAL_HANDSHAKE_TIMEOUT_MS);
const _: () = assert!(PEER_OUT_BYTES_MAX <= PEER_FRAME_BYTES_MAX as usize);
const _: () = assert!(RECONNECT_DELAY_MIN_MS <= RECONNECT_DELAY_MAX_MS);

/// Why `send` did not take a frame. Every case means "dropped": Raft
/// resends (the caller may tell it the peer is unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("not a peer")]
    UnknownPeer,
    #[error("link is not connected")]
    Down,
    #[error("link output is full")]
    Full,
    #[error("frame exceeds PEER_FRAME_BYTES_MAX")]
    TooLarge,
}

/// Why a peer set was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeersError {
    #[error("{0} peers; at most {PEERS_MAX} are supported")]
    TooMany(usize),
    #[error("node {0} is this node; it cannot be its own peer")]
    SelfListed(u64),
}

/// The opaque data kinds `send` carries (WrittenAck has its own method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Raft,
    SnapshotChunk,
    Forward,
}

impl DataKind {
    fn wire(self) -> PeerKind {
        match self {
            DataKind::Raft => PeerKind::Raft,
            DataKind::SnapshotChunk => PeerKind::SnapshotChunk,
            DataKind::Forward => PeerKind::Forward,
        }
    }
}

/// The state of the connection this shard dialled to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting for the next dial (backoff).
    Down,
    /// TCP connect in progress.
    Connecting,
    /// Hello sent, waiting for the Challenge.
    Handshaking,
    /// Authenticated: `send` takes frames.
    Up,
}

/// One link as `cmq cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub node_id: u64,
    /// The peer's `--peer-listen` address this shard dials.
    pub peer_addr: SocketAddr,
    /// Where the peer serves clients, once a handshake told us.
    pub client_addr: Option<String>,
    /// The connection this shard sends on.
    pub state: LinkState,
    /// Whether the peer's connection to this shard (what it sends on) is open.
    pub inbound_connected: bool,
    /// Bytes buffered and not yet written.
    pub queued_bytes: usize,
    /// Dials started, and how many of them authenticated (`connects - 1`
    /// is the number of reconnects).
    pub dials: u64,
    pub connects: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Frames `send` refused because the link was full.
    pub sends_refused_full: u64,
    /// Accepted connections closed because the peer sent a malformed frame.
    pub malformed: u64,
    /// Why the link last failed (never cleared, so a flapping link shows why).
    pub last_error: Option<String>,
}

/// Exponential reconnect delay: `RECONNECT_DELAY_MIN_MS` doubling up to
/// `RECONNECT_DELAY_MAX_MS`, each draw jittered into [d/2, d] so that the
/// shards of a restarted node do not all dial in lockstep.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay_ms(&mut self) -> u64 {
        let d = RECONNECT_DELAY_MIN_MS.saturating_mul(1 << self.failures.min(16)).min(RECONNECT_DELAY_MAX_MS);
        self.failures = self.failures.saturating_add(1);
        rand::rng().random_range(d / 2..=d)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[derive(Debug)]
enum Phase {
    Idle,
    Connecting,
    AwaitChallenge(Box<Hello>),
    Up,
}

/// The connection this shard dialled.
struct Outbound {
    stream: Option<PeerConn>,
    phase: Phase,
    buf: OutBuf,
    /// Only a Challenge or a Refuse is ever read here.
    rbuf: BytesMut,
    backoff: Backoff,
    retry_at_ms: u64,
    deadline_ms: u64,
}

/// The connection the peer dialled (after authentication).
struct Inbound {
    stream: PeerConn,
    rbuf: BytesMut,
    /// The socket may hold unread bytes (readiness is edge-triggered).
    read_pending: bool,
    /// The peer closed its side: read on to the end.
    peer_closed: bool,
    /// Read syscalls this turn (fairness).
    reads: u32,
}

struct Link {
    node_id: u64,
    addr: SocketAddr,
    out: Outbound,
    inbound: Option<Inbound>,
    client_addr: Option<String>,
    status: LinkStatus,
}

impl Link {
    fn new(node_id: u64, addr: SocketAddr) -> Link {
        Link {
            node_id,
            addr,
            out: Outbound {
                stream: None,
                phase: Phase::Idle,
                buf: OutBuf::default(),
                rbuf: BytesMut::new(),
                backoff: Backoff::default(),
                retry_at_ms: 0,
                deadline_ms: 0,
            },
            inbound: None,
            client_addr: None,
            status: LinkStatus {
                node_id,
                peer_addr: addr,
                client_addr: None,
                state: LinkState::Down,
                inbound_connected: false,
                queued_bytes: 0,
                dials: 0,
                connects: 0,
                frames_sent: 0,
                bytes_sent: 0,
                frames_received: 0,
                bytes_received: 0,
                sends_refused_full: 0,
                malformed: 0,
                last_error: None,
            },
        }
    }

    /// Logs a failure at warning level when it differs from the last one
    /// (a peer that stays down does not flood the log), else at debug.
    fn note_error(&mut self, shard: u16, what: String) {
        if self.status.last_error.as_deref() != Some(&what) {
            log::warn!("shard {shard}: peer link to node {} ({}): {what}", self.node_id, self.addr);
        } else {
            log::debug!("shard {shard}: peer link to node {} ({}): {what}", self.node_id, self.addr);
        }
        self.status.last_error = Some(what);
    }

    fn close_outbound(&mut self, registry: &Registry) {
        if let Some(mut s) = self.out.stream.take() {
            let _ = registry.deregister(&mut s.stream);
        }
        self.out.phase = Phase::Idle;
        self.out.buf.clear();
        self.out.rbuf.clear();
    }

    fn close_inbound(&mut self, registry: &Registry) {
        if let Some(mut inb) = self.inbound.take() {
            let _ = registry.deregister(&mut inb.stream.stream);
        }
    }
}

/// Where a token points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Out,
    In,
}

pub struct PeerLinks {
    me: NodeIdentity,
    shard: u16,
    token_base: usize,
    slots: Vec<Option<Link>>,
    by_node: BTreeMap<u64, usize>,
    /// Some accepted connection has input left over (fairness limit, or
    /// bytes handed over with it): `tick` reads on.
    reads_pending: bool,
    /// `--peer-tls-*`: every dial is TLS (None: plaintext links).
    tls: Option<PeerTls>,
}

impl PeerLinks {
    /// Links for shard `shard` of node `me` to shard `shard` of every peer
    /// (`node id -> peer-listen address`), using tokens
    /// `token_base..token_base + PEER_TOKENS`. Nothing is dialled until
    /// the first `tick`.
    pub fn new(
        me: NodeIdentity,
        shard: u16,
        token_base: usize,
        peers: &BTreeMap<u64, SocketAddr>,
    ) -> Result<PeerLinks, PeersError> {
        check_peers(me.node_id, peers)?;
        let mut links = PeerLinks {
            me,
            shard,
            token_base,
            slots: (0..PEERS_MAX).map(|_| None).collect(),
            by_node: BTreeMap::new(),
            reads_pending: false,
            tls: None,
        };
        for (&node, &addr) in peers {
            links.insert(node, addr);
        }
        Ok(links)
    }

    /// Dials every peer over TLS with `tls` from the next dial on (None:
    /// plaintext). Set once, before the first `tick`.
    pub fn set_tls(&mut self, tls: Option<PeerTls>) {
        self.tls = tls;
    }

    fn insert(&mut self, node: u64, addr: SocketAddr) {
        let slot = self.slots.iter().position(Option::is_none).expect("peer count checked against PEERS_MAX");
        self.slots[slot] = Some(Link::new(node, addr));
        self.by_node.insert(node, slot);
    }

    /// Whether `token` belongs to these links.
    pub fn owns(&self, token: Token) -> bool {
        (self.token_base..self.token_base + PEER_TOKENS).contains(&token.0)
    }

    fn token(&self, slot: usize, side: Side) -> Token {
        Token(self.token_base + 2 * slot + usize::from(side == Side::In))
    }

    fn slot_of(&self, token: Token) -> Option<(usize, Side)> {
        let i = token.0.checked_sub(self.token_base).filter(|i| *i < PEER_TOKENS)?;
        Some((i / 2, if i % 2 == 0 { Side::Out } else { Side::In }))
    }

    fn link(&mut self, slot: usize) -> Option<&mut Link> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    // ---- sending -----------------------------------------------------------

    /// Buffers a frame of `kind` whose payload is the concatenation of
    /// `parts`, to go out at the next `flush`. Refuses rather than grows.
    pub fn send(&mut self, to: u64, kind: DataKind, parts: &[&[u8]]) -> Result<(), SendError> {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        let buf = self.reserve(to, peer::frame_bytes(payload))?;
        buf.push(&[&peer::header(kind.wire(), payload)]);
        buf.push(parts);
        Ok(())
    }

    /// Buffers a WrittenAck (this node has written the log up to `index`).
    pub fn send_written_ack(&mut self, to: u64, term: u64, index: u64) -> Result<(), SendError> {
        let buf = self.reserve(to, peer::frame_bytes(peer::WRITTEN_ACK_BYTES))?;
        let header = peer::header(PeerKind::WrittenAck, peer::WRITTEN_ACK_BYTES);
        buf.push(&[&header, &peer::written_ack_payload(term, index)]);
        Ok(())
    }

    /// Buffers an Abstaining announcement (this replica's machine restarted).
    pub fn send_abstaining(&mut self, to: u64) -> Result<(), SendError> {
        let buf = self.reserve(to, peer::frame_bytes(0))?;
        buf.push(&[&peer::header(PeerKind::Abstaining, 0)]);
        Ok(())
    }

    /// The output buffer of `to`'s link if a frame of `bytes` may be added.
    fn reserve(&mut self, to: u64, bytes: usize) -> Result<&mut OutBuf, SendError> {
        let slot = *self.by_node.get(&to).ok_or(SendError::UnknownPeer)?;
        let link = self.slots[slot].as_mut().ok_or(SendError::UnknownPeer)?;
        if !matches!(link.out.phase, Phase::Up) {
            return Err(SendError::Down);
        }
        if bytes > PEER_FRAME_BYTES_MAX as usize {
            return Err(SendError::TooLarge);
        }
        let queued = link.out.buf.queued();
        if queued > 0 && queued + bytes > PEER_OUT_BYTES_MAX {
            link.status.sends_refused_full += 1;
            return Err(SendError::Full);
        }
        link.status.frames_sent += 1;
        link.status.bytes_sent += bytes as u64;
        Ok(&mut link.out.buf)
    }

    /// Writes what each link buffered: one write per peer (at the end of
    /// every loop turn). Also starts the next turn's read budgets.
    pub fn flush(&mut self, registry: &Registry, now_ms: u64) {
        for slot in 0..PEERS_MAX {
            let Some(link) = self.link(slot) else { continue };
            if let Some(inb) = link.inbound.as_mut() {
                inb.reads = 0;
            }
            if matches!(link.out.phase, Phase::Idle | Phase::Connecting) {
                continue;
            }
            let Some(stream) = link.out.stream.as_mut() else { continue };
            if link.out.buf.queued() == 0 && !stream.has_pending_output() {
                continue;
            }
            if let Err(e) = link.out.buf.write_to(stream, now_ms) {
                self.fail_outbound(slot, registry, now_ms, format!("write failed: {e}"));
            }
        }
    }

    // ---- events and timers --------------------------------------------------

    /// Handles a readiness event for one of our tokens; data frames that
    /// arrived are passed to `deliver` with the sending node's id.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        now_ms: u64,
        deliver: &mut impl FnMut(u64, DataFrame),
    ) {
        let Some((slot, side)) = self.slot_of(event.token()) else { return };
        match side {
            Side::Out => {
                // A WRITABLE edge only matters to `flush`; reading then would
                // cost a syscall per edge on a busy link for nothing.
                let read = event.is_readable() || event.is_read_closed() || event.is_error();
                self.outbound_ready(slot, registry, now_ms, read)
            }
            Side::In => {
                let Some(inb) = self.link(slot).and_then(|l| l.inbound.as_mut()) else { return };
                inb.read_pending = true;
                inb.peer_closed |= event.is_read_closed() || event.is_error();
                self.read_inbound(slot, registry, deliver);
            }
        }
    }

    /// Dials whose backoff has run out, handshakes past their deadline, and
    /// reads a fairness limit cut short. Call once per loop turn.
    pub fn tick(&mut self, registry: &Registry, now_ms: u64, deliver: &mut impl FnMut(u64, DataFrame)) {
        for slot in 0..PEERS_MAX {
            let Some(link) = self.link(slot) else { continue };
            match link.out.phase {
                Phase::Idle if now_ms >= link.out.retry_at_ms => self.dial(slot, registry, now_ms),
                Phase::Connecting | Phase::AwaitChallenge(_) if now_ms >= link.out.deadline_ms => {
                    let what = format!("handshake timed out after {DIAL_HANDSHAKE_TIMEOUT_MS} ms");
                    self.fail_outbound(slot, registry, now_ms, what);
                }
                _ => {}
            }
        }
        if std::mem::take(&mut self.reads_pending) {
            for slot in 0..PEERS_MAX {
                let pending = self
                    .link(slot)
                    .and_then(|l| l.inbound.as_ref())
                    .is_some_and(|inb| inb.read_pending || !inb.rbuf.is_empty());
                if pending {
                    self.read_inbound(slot, registry, deliver);
                }
            }
        }
    }

    /// The earliest time `tick` has work (a dial, a handshake deadline); a
    /// time in the past (0) when input is waiting to be read.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.reads_pending {
            return Some(0);
        }
        self.slots
            .iter()
            .flatten()
            .filter_map(|l| match l.out.phase {
                Phase::Idle => Some(l.out.retry_at_ms),
                Phase::Connecting | Phase::AwaitChallenge(_) => Some(l.out.deadline_ms),
                Phase::Up => None,
            })
            .min()
    }

    fn dial(&mut self, slot: usize, registry: &Registry, now_ms: u64) {
        let token = self.token(slot, Side::Out);
        let tls = self.tls.clone();
        let Some(link) = self.link(slot) else { return };
        link.status.dials += 1;
        let result = TcpStream::connect(link.addr).and_then(|mut s| {
            registry.register(&mut s, token, Interest::READABLE | Interest::WRITABLE)?;
            match &tls {
                // The peer's certificate must name the address dialled.
                Some(tls) => Ok(PeerConn::tls(s, tls.dial(link.addr.ip()).map_err(io::Error::other)?)),
                None => Ok(PeerConn::plain(s)),
            }
        });
        match result {
            Ok(s) => {
                link.out.stream = Some(s);
                link.out.phase = Phase::Connecting;
                link.out.deadline_ms = now_ms + DIAL_HANDSHAKE_TIMEOUT_MS;
            }
            Err(e) => self.fail_outbound(slot, registry, now_ms, format!("connect failed: {e}")),
        }
    }

    /// Closes the dialled connection after a failure and schedules the next
    /// dial. Whatever was buffered is dropped (a half-written frame must not
    /// start the next connection; Raft resends).
    fn fail_outbound(&mut self, slot: usize, registry: &Registry, now_ms: u64, what: String) {
        let shard = self.shard;
        let Some(link) = self.link(slot) else { return };
        link.close_outbound(registry);
        let delay = link.out.backoff.next_delay_ms();
        link.out.retry_at_ms = now_ms + delay;
        link.note_error(shard, format!("{what} (next dial in {delay} ms)"));
    }

    fn outbound_ready(&mut self, slot: usize, registry: &Registry, now_ms: u64, read: bool) {
        let Some(link) = self.link(slot) else { return };
        if let Phase::Connecting = link.out.phase {
            let Some(stream) = link.out.stream.as_ref() else { return };
            match connect_result(&stream.stream) {
                Ok(false) => return,
                Ok(true) => {
                    if let Err(e) = self.start_handshake(slot) {
                        self.fail_outbound(slot, registry, now_ms, format!("handshake failed: {e}"));
                        return;
                    }
                }
                Err(e) => {
                    self.fail_outbound(slot, registry, now_ms, format!("connect failed: {e}"));
                    return;
                }
            }
        }
        if !read {
            return;
        }
        if let Err(what) = self.read_outbound(slot) {
            self.fail_outbound(slot, registry, now_ms, what);
        }
    }

    fn start_handshake(&mut self, slot: usize) -> io::Result<()> {
        let hello = auth::hello(&self.me, self.shard, auth::random_nonce()?);
        let Some(link) = self.slots[slot].as_mut() else { return Ok(()) };
        if let Some(s) = link.out.stream.as_ref().map(|c| &c.stream) {
            s.set_nodelay(true)?;
            socket2::SockRef::from(s).set_tcp_user_timeout(Some(Duration::from_millis(PEER_TCP_USER_TIMEOUT_MS)))?;
        }
        queue_auth(&mut link.out.buf, AuthFrame::Hello(hello.clone()));
        link.out.phase = Phase::AwaitChallenge(Box::new(hello));
        Ok(())
    }

    /// Reads the dialled connection to its end for now: the Challenge while
    /// handshaking; afterwards only a Refuse or the close can come. Returns
    /// why the connection must be dropped.
    fn read_outbound(&mut self, slot: usize) -> Result<(), String> {
        loop {
            while let Some(frame) = self.next_outbound_frame(slot)? {
                self.outbound_frame(slot, frame)?;
            }
            let Some(link) = self.link(slot) else { return Ok(()) };
            let Some(stream) = link.out.stream.as_mut() else { return Ok(()) };
            link.out.rbuf.reserve(PEER_HANDSHAKE_FRAME_BYTES_MAX as usize);
            match stream.read_into_spare(&mut link.out.rbuf) {
                Ok(0) => return Err(closed_by_peer(stream, &link.out.phase)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_failed(stream, &link.out.phase, &e)),
            }
        }
    }

    fn next_outbound_frame(&mut self, slot: usize) -> Result<Option<PeerFrame>, String> {
        let Some(link) = self.link(slot) else { return Ok(None) };
        let Some(total) = peer::check(&link.out.rbuf, PEER_HANDSHAKE_FRAME_BYTES_MAX).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let (kind, payload) = peer::split(&mut link.out.rbuf, total);
        PeerFrame::decode(kind, payload).map(Some).map_err(|e| format!("malformed frame from the peer: {e}"))
    }

    fn outbound_frame(&mut self, slot: usize, frame: PeerFrame) -> Result<(), String> {
        let shard = self.shard;
        let key = self.me.key.clone();
        let Some(link) = self.link(slot) else { return Ok(()) };
        let binding = link.out.stream.as_ref().and_then(PeerConn::channel_binding);
        match (frame, &link.out.phase) {
            (PeerFrame::Auth(AuthFrame::Challenge(c)), Phase::AwaitChallenge(hello)) => {
                match auth::answer_challenge(&key, hello, link.node_id, &c, binding.as_ref().map(|b| &b[..])) {
                    Ok(proof) => {
                        queue_auth(&mut link.out.buf, AuthFrame::Proof(proof));
                        link.out.phase = Phase::Up;
                        link.out.backoff.reset();
                        link.status.connects += 1;
                        log::info!("shard {shard}: peer link to node {} ({}) is up", link.node_id, link.addr);
                        link.client_addr = Some(c.client_addr);
                        Ok(())
                    }
                    Err(refuse) => {
                        let reason = RefuseReason(refuse.reason).name();
                        let what = format!("refused the peer: {reason}: {}", refuse.message);
                        queue_auth(&mut link.out.buf, AuthFrame::Refuse(refuse));
                        if let Some(s) = link.out.stream.as_mut() {
                            let _ = link.out.buf.write_to(s, 0);
                        }
                        Err(what)
                    }
                }
            }
            (PeerFrame::Auth(AuthFrame::Refuse(r)), _) => {
                Err(format!("refused by the peer: {}: {}", RefuseReason(r.reason).name(), r.message))
            }
            (other, phase) => Err(format!("unexpected {:?} frame while {phase:?}", kind_of(&other))),
        }
    }

    /// Reads an accepted connection: delivers every whole frame, then reads
    /// more, within the turn's read budget. A malformed frame closes it.
    fn read_inbound(&mut self, slot: usize, registry: &Registry, deliver: &mut impl FnMut(u64, DataFrame)) {
        let shard = self.shard;
        let Some(link) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return };
        let node = link.node_id;
        loop {
            let Some(inb) = link.inbound.as_mut() else { return };
            match peer::check(&inb.rbuf, PEER_FRAME_BYTES_MAX) {
                Ok(Some(total)) => {
                    let (kind, payload) = peer::split(&mut inb.rbuf, total);
                    match PeerFrame::decode(kind, payload) {
                        Ok(PeerFrame::Data(frame)) => {
                            link.status.frames_received += 1;
                            link.status.bytes_received += total as u64;
                            deliver(node, frame);
                        }
                        Ok(PeerFrame::Auth(a)) => {
                            return malformed(
                                link,
                                shard,
                                registry,
                                &format!("{:?} frame after the handshake", a.kind()),
                            )
                        }
                        Err(e) => return malformed(link, shard, registry, &e.to_string()),
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return malformed(link, shard, registry, &e.to_string()),
            }
            if !inb.read_pending {
                return;
            }
            if inb.reads >= PEER_READS_PER_TURN_MAX {
                self.reads_pending = true;
                return;
            }
            inb.reads += 1;
            match fill(inb) {
                Ok(true) => {}
                Ok(false) => {
                    log::info!("shard {shard}: node {node} closed its peer connection to this node");
                    return link.close_inbound(registry);
                }
                Err(e) => {
                    log::info!("shard {shard}: peer connection from node {node}: read failed: {e}");
                    return link.close_inbound(registry);
                }
            }
        }
    }

    // ---- membership and handover --------------------------------------------

    /// Takes over a connection the acceptor authenticated (`stream.buffered`
    /// holds what was read past the handshake). A newer connection from the
    /// same node replaces the older one. Returns false (and drops the
    /// connection) if it is not for this shard or not from a peer.
    pub fn add_inbound(&mut self, registry: &Registry, s: AuthenticatedStream) -> bool {
        let AuthenticatedStream { mut conn, node_id, shard, client_addr, remote, buffered } = s;
        let Some(&slot) = self.by_node.get(&node_id).filter(|_| shard == self.shard) else {
            log::warn!("shard {}: dropped a peer connection from node {node_id} ({remote}) for shard {shard}: not a peer of this shard", self.shard);
            return false;
        };
        let token = self.token(slot, Side::In);
        let Some(link) = self.link(slot) else { return false };
        link.close_inbound(registry);
        if let Err(e) = registry.register(&mut conn.stream, token, Interest::READABLE) {
            log::warn!("shard {shard}: cannot register the peer connection from node {node_id}: {e}");
            return false;
        }
        log::info!("shard {shard}: peer connection from node {node_id} ({remote}) taken over");
        link.inbound = Some(Inbound { stream: conn, rbuf: buffered, read_pending: true, peer_closed: false, reads: 0 });
        link.client_addr = Some(client_addr);
        self.reads_pending = true;
        true
    }

    /// Applies a new peer set (a membership change): removed nodes' links
    /// close, new nodes are dialled at the next `tick`, a node whose address
    /// changed is redialled there.
    pub fn set_peers(
        &mut self,
        registry: &Registry,
        peers: &BTreeMap<u64, SocketAddr>,
        now_ms: u64,
    ) -> Result<(), PeersError> {
        check_peers(self.me.node_id, peers)?;
        let gone: Vec<u64> = self.by_node.keys().filter(|n| !peers.contains_key(n)).copied().collect();
        for node in gone {
            if let Some(slot) = self.by_node.remove(&node) {
                if let Some(mut link) = self.slots[slot].take() {
                    link.close_outbound(registry);
                    link.close_inbound(registry);
                }
            }
        }
        for (&node, &addr) in peers {
            match self.by_node.get(&node).copied() {
                None => self.insert(node, addr),
                Some(slot) => {
                    let Some(link) = self.link(slot) else { continue };
                    if link.addr != addr {
                        link.close_outbound(registry);
                        link.addr = addr;
                        link.status.peer_addr = addr;
                        link.out.backoff.reset();
                        link.out.retry_at_ms = now_ms;
                    }
                }
            }
        }
        Ok(())
    }

    /// Closes both connections with `node` (for example after it sent a
    /// message that does not decode); the dialled one is redialled after
    /// the backoff.
    pub fn disconnect(&mut self, registry: &Registry, node: u64, now_ms: u64) {
        let Some(&slot) = self.by_node.get(&node) else { return };
        if let Some(link) = self.link(slot) {
            link.close_inbound(registry);
        }
        self.fail_outbound(slot, registry, now_ms, "disconnected by this node".into());
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&mut self, registry: &Registry) {
        for link in self.slots.iter_mut().flatten() {
            link.close_outbound(registry);
            link.close_inbound(registry);
        }
    }

    // ---- introspection ------------------------------------------------------

    /// Whether frames can be sent to `node` now.
    pub fn is_up(&self, node: u64) -> bool {
        self.by_node.get(&node).and_then(|s| self.slots[*s].as_ref()).is_some_and(|l| matches!(l.out.phase, Phase::Up))
    }

    /// Bytes buffered for `node` and not yet written (0 for a non-peer):
    /// lets the caller hold back work for a link that is backed up.
    pub fn queued_bytes(&self, node: u64) -> usize {
        self.by_node.get(&node).and_then(|s| self.slots[*s].as_ref()).map_or(0, |l| l.out.buf.queued())
    }

    /// Where `node` serves clients, as its handshake said.
    pub fn peer_client_addr(&self, node: u64) -> Option<&str> {
        self.by_node.get(&node).and_then(|s| self.slots[*s].as_ref()).and_then(|l| l.client_addr.as_deref())
    }

    /// Every link, by node id.
    pub fn status(&self) -> Vec<LinkStatus> {
        let mut out: Vec<LinkStatus> =
            self.by_node.values().filter_map(|s| self.slots[*s].as_ref()).map(link_status).collect();
        out.sort_by_key(|s| s.node_id);
        out
    }
}

fn link_status(l: &Link) -> LinkStatus {
    LinkStatus {
        state: match l.out.phase {
            Phase::Idle => LinkState::Down,
            Phase::Connecting => LinkState::Connecting,
            Phase::AwaitChallenge(_) => LinkState::Handshaking,
            Phase::Up => LinkState::Up,
        },
        client_addr: l.client_addr.clone(),
        inbound_connected: l.inbound.is_some(),
        queued_bytes: l.out.buf.queued(),
        ..l.status.clone()
    }
}

fn check_peers(me: u64, peers: &BTreeMap<u64, SocketAddr>) -> Result<(), PeersError> {
    if peers.len() > PEERS_MAX {
        return Err(PeersError::TooMany(peers.len()));
    }
    if peers.contains_key(&me) {
        return Err(PeersError::SelfListed(me));
    }
    Ok(())
}

/// A peer sent something that is not a well-formed data frame: the stream
/// cannot be trusted past it, so the connection is closed (the peer redials).
fn malformed(link: &mut Link, shard: u16, registry: &Registry, what: &str) {
    log::warn!("shard {shard}: closing the peer connection from node {}: {what}", link.node_id);
    link.status.malformed += 1;
    link.close_inbound(registry);
}

/// Whether a non-blocking connect has completed (Ok(false): not yet).
fn connect_result(s: &TcpStream) -> io::Result<bool> {
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    match s.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// One read into an accepted connection's buffer, grown to hold the frame
/// being assembled (known from its length prefix) or a read chunk.
/// Ok(false) at end of input. Clears `read_pending` once the socket is
/// drained (a short read says so, unless the peer also closed: then only
/// reading on finds the end).
fn fill(inb: &mut Inbound) -> io::Result<bool> {
    let len = inb.rbuf.len();
    let want = peer::pending_len(&inb.rbuf, PEER_FRAME_BYTES_MAX).ok().flatten().unwrap_or(0);
    let room = READ_CHUNK_BYTES.max(want.saturating_sub(len));
    if inb.rbuf.capacity() - len < room {
        inb.rbuf.reserve(room);
    }
    let spare = inb.rbuf.capacity() - len;
    loop {
        match inb.stream.read_into_spare(&mut inb.rbuf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                // A short plaintext read drained the socket; a TLS read may
                // stop short with ciphertext left, so only WouldBlock says so.
                if n < spare && !inb.peer_closed && !inb.stream.is_tls() {
                    inb.read_pending = false;
                }
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                inb.read_pending = false;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Why the dialled connection ended: with TLS, an end during its handshake
/// most likely means the peer does not speak TLS on its peer port.
fn closed_by_peer(conn: &PeerConn, phase: &Phase) -> String {
    if conn.is_tls() && matches!(phase, Phase::AwaitChallenge(_)) && conn.channel_binding().is_none() {
        return "connection closed by the peer during the TLS handshake (does it have peer TLS on: --peer-tls-cert?)"
            .into();
    }
    "connection closed by the peer".into()
}

/// A read error on the dialled connection. During the TLS handshake it
/// says what is likely wrong: an untrusted or misnamed certificate (the
/// error names it), or a peer without TLS (it resets the connection).
fn read_failed(conn: &PeerConn, phase: &Phase, e: &io::Error) -> String {
    if conn.is_tls() && matches!(phase, Phase::AwaitChallenge(_)) && conn.channel_binding().is_none() {
        return format!(
            "peer TLS handshake failed: {e} (is peer TLS on at the peer, with a certificate from --peer-tls-ca \
             that names the address dialled?)"
        );
    }
    format!("read failed: {e}")
}

/// Queues a handshake frame (rare: the small allocation does not matter).
fn queue_auth(buf: &mut OutBuf, f: AuthFrame) {
    let mut frame = Vec::new();
    f.encode(&mut frame);
    buf.push(&[&frame]);
}

fn kind_of(f: &PeerFrame) -> PeerKind {
    match f {
        PeerFrame::Auth(a) => a.kind(),
        PeerFrame::Data(d) => d.kind(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let mut ceiling = RECONNECT_DELAY_MIN_MS;
        for _ in 0..12 {
            let d = b.next_delay_ms();
            assert!((ceiling / 2..=ceiling).contains(&d), "{d} not in [{}, {ceiling}]", ceiling / 2);
            ceiling = (ceiling * 2).min(RECONNECT_DELAY_MAX_MS);
        }
        b.reset();
        assert!(b.next_delay_ms() <= RECONNECT_DELAY_MIN_MS);
        b.failures = u32::MAX;
        assert!(b.next_delay_ms() <= RECONNECT_DELAY_MAX_MS);
    }

    fn me() -> NodeIdentity {
        NodeIdentity {
            node_id: 1,
            shard_count: 1,
            client_addr: "127.0.0.1:7701".into(),
            key: auth::ClusterKey::new(b"0123456789abcdef").expect("key"),
        }
    }

    fn peers(ids: &[u64]) -> BTreeMap<u64, SocketAddr> {
        ids.iter().map(|id| (*id, SocketAddr::from(([127, 0, 0, 1], 7800 + *id as u16)))).collect()
    }

    #[test]
    fn tokens_map_to_slots_and_back() {
        let links = PeerLinks::new(me(), 0, 100, &peers(&[2, 3])).expect("peers");
        assert!(!links.owns(Token(99)) && links.owns(Token(100)) && links.owns(Token(100 + PEER_TOKENS - 1)));
        assert!(!links.owns(Token(100 + PEER_TOKENS)));
        for slot in 0..PEERS_MAX {
            for side in [Side::Out, Side::In] {
                assert_eq!(links.slot_of(links.token(slot, side)), Some((slot, side)));
            }
        }
        assert_eq!(links.slot_of(Token(5)), None);
    }

    #[test]
    fn peer_sets_are_checked() {
        assert_eq!(PeerLinks::new(me(), 0, 0, &peers(&[1, 2])).err(), Some(PeersError::SelfListed(1)));
        let many: Vec<u64> = (2..2 + PEERS_MAX as u64 + 1).collect();
        assert_eq!(PeerLinks::new(me(), 0, 0, &peers(&many)).err(), Some(PeersError::TooMany(PEERS_MAX + 1)));
        let full: Vec<u64> = (2..2 + PEERS_MAX as u64).collect();
        assert!(PeerLinks::new(me(), 0, 0, &peers(&full)).is_ok());
    }

    #[test]
    fn sends_before_the_link_is_up_are_refused() {
        let mut links = PeerLinks::new(me(), 0, 0, &peers(&[2])).expect("peers");
        assert_eq!(links.send(2, DataKind::Raft, &[b"x"]), Err(SendError::Down));
        assert_eq!(links.send(9, DataKind::Raft, &[b"x"]), Err(SendError::UnknownPeer));
        assert_eq!(links.send_written_ack(2, 1, 1), Err(SendError::Down));
        assert_eq!(links.next_deadline_ms(), Some(0), "first dial is due at once");
        let st = links.status();
        assert_eq!(st.len(), 1);
        assert_eq!((st[0].node_id, st[0].state, st[0].queued_bytes), (2, LinkState::Down, 0));
    }

    /// A dialled connection that answers gets TCP_NODELAY and the user
    /// timeout before its Hello goes out.
    #[test]
    fn dialled_sockets_get_nodelay_and_a_user_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut links = PeerLinks::new(me(), 0, 0, &BTreeMap::from([(2, addr)])).expect("peers");
        let mut poll = mio::Poll::new().expect("poll");
        let mut events = mio::Events::with_capacity(8);
        let mut deliver = |_: u64, _: DataFrame| {};
        links.tick(poll.registry(), 1, &mut deliver);
        let _accepted = listener.accept().expect("dialled");
        while links.status()[0].state != LinkState::Handshaking {
            poll.poll(&mut events, Some(Duration::from_secs(5))).expect("poll");
            for ev in events.iter() {
                links.handle_event(poll.registry(), ev, 1, &mut deliver);
            }
        }
        let slot = links.by_node[&2];
        let s = links.slots[slot].as_ref().and_then(|l| l.out.stream.as_ref()).map(|c| &c.stream).expect("stream");
        let sock = socket2::SockRef::from(s);
        assert!(sock.nodelay().expect("nodelay"));
        assert_eq!(
            sock.tcp_user_timeout().expect("user timeout"),
            Some(Duration::from_millis(PEER_TCP_USER_TIMEOUT_MS))
        );
    }

    /// Bounded output: past PEER_OUT_BYTES_MAX a send is refused (not
    /// grown), one frame larger than the bound fits an empty buffer, and
    /// nothing above PEER_FRAME_BYTES_MAX is ever taken.
    #[test]
    fn output_is_bounded() {
        let mut links = PeerLinks::new(me(), 0, 0, &peers(&[2])).expect("peers");
        let slot = links.by_node[&2];
        links.slots[slot].as_mut().expect("link").out.phase = Phase::Up;
        let chunk = vec![7u8; 1024 * 1024 - peer::PEER_HEADER_BYTES];
        let mut sent = 0;
        while links.send(2, DataKind::Raft, &[&chunk]).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, PEER_OUT_BYTES_MAX / (1024 * 1024));
        assert_eq!(links.send(2, DataKind::Raft, &[&chunk]), Err(SendError::Full));
        assert_eq!(links.status()[0].queued_bytes, PEER_OUT_BYTES_MAX);
        assert_eq!(links.status()[0].sends_refused_full, 2);
        let link = links.slots[slot].as_mut().expect("link");
        link.out.buf.clear();
        let big = vec![0u8; PEER_OUT_BYTES_MAX * 2];
        assert_eq!(links.send(2, DataKind::SnapshotChunk, &[&big]), Ok(()));
        assert_eq!(links.send(2, DataKind::Raft, &[b"x"]), Err(SendError::Full));
        links.slots[slot].as_mut().expect("link").out.buf.clear();
        let over = vec![0u8; PEER_FRAME_BYTES_MAX as usize - peer::PEER_HEADER_BYTES + 1];
        assert_eq!(links.send(2, DataKind::Raft, &[&over[..1], &over[1..]]), Err(SendError::TooLarge));
        assert_eq!(links.send(2, DataKind::Raft, &[&over[1..]]), Ok(()));
    }
}
