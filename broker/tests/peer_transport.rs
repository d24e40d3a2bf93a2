//! The peer transport over real loopback sockets: every node is a
//! `PeerAcceptor` plus one `PeerLinks` per shard, each on its own mio loop
//! in a thread, as the shards will run them. Strangers, restarts, cuts (also
//! through the cluster-test proxy), full links and malformed frames.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cmq_broker::cluster::acceptor::ACCEPT_PENDING_MAX;
use cmq_broker::cluster::auth::{self, ClusterKey, NodeIdentity};
use cmq_broker::cluster::transport::PEER_OUT_BYTES_MAX;
use cmq_broker::cluster::{
    AcceptorConfig, AuthenticatedStream, DataKind, LinkState, LinkStatus, PeerAcceptor, PeerLinks, SendError,
};
use cmq_broker::tls::peer::{PeerTls, PeerTlsFiles};
use cmq_integration_tests::proxy::Proxy;
use cmq_integration_tests::tls::TestPki;
use cmq_protocol::limits::{PEER_FRAME_BYTES_MAX, PEER_HANDSHAKE_FRAME_BYTES_MAX};
use cmq_protocol::peer::{self, AuthFrame, Challenge, DataFrame, Hello, PeerFrame, PeerKind, Proof, RefuseReason};
use mio::{Events, Poll, Token, Waker};

/// How long a test waits for something that should happen (never a timing assertion).
const WAIT: Duration = Duration::from_secs(20);
const KEY: &[u8] = b"test cluster key, 32 bytes long!";
const WAKER: Token = Token(0);
const TOKEN_BASE: usize = 10;

fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn identity(id: u64, shards: u16, key: &[u8]) -> NodeIdentity {
    NodeIdentity {
        node_id: id,
        shard_count: shards,
        client_addr: format!("127.0.0.1:{}", 7700 + id),
        key: ClusterKey::new(key).expect("key"),
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- test frames --------------------------------------------------------------

/// A frame payload that says who sent it and carries a checkable pattern.
fn payload(from: u64, shard: u16, seq: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + len);
    v.extend_from_slice(&from.to_le_bytes());
    v.extend_from_slice(&shard.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((0..len).map(|i| (seq as usize * 31 + i) as u8));
    v
}

/// (from, shard, seq) of a payload made by `payload`, checking its pattern.
fn parse(b: &[u8]) -> (u64, u16, u64) {
    let from = u64::from_le_bytes(b[..8].try_into().expect("from"));
    let shard = u16::from_le_bytes(b[8..10].try_into().expect("shard"));
    let seq = u64::from_le_bytes(b[10..18].try_into().expect("seq"));
    for (i, x) in b[18..].iter().enumerate() {
        assert_eq!(*x, (seq as usize * 31 + i) as u8, "payload of seq {seq} from {from} corrupted at {i}");
    }
    (from, shard, seq)
}

#[derive(Debug)]
enum Out {
    Data(DataKind, Vec<u8>),
    Ack(u64, u64),
}

// ---- one shard's loop -----------------------------------------------------------

/// The links' status and the client address each peer told.
type Status = (Vec<LinkStatus>, BTreeMap<u64, Option<String>>);

enum Cmd {
    /// Frames to send in order; retried while the link is down or full.
    Send(u64, Vec<Out>),
    /// Sends numbered frames of this many bytes until the link is full (or
    /// down), writes them, and answers how many it took.
    Fill(u64, usize, Sender<usize>),
    Status(Sender<Status>),
    SetPeers(BTreeMap<u64, SocketAddr>),
    Disconnect(u64),
    Inbound(AuthenticatedStream),
    /// Stops the loop (no reads, no writes) until the sender is used or dropped.
    Block(Receiver<()>),
    /// Closes every connection and ends the loop.
    Stop,
}

struct ShardLoop {
    tx: Option<Sender<Cmd>>,
    waker: Arc<Waker>,
    rx: Receiver<(u64, DataFrame)>,
    thread: Option<JoinHandle<()>>,
}

impl ShardLoop {
    fn cmd(&self, c: Cmd) {
        self.tx.as_ref().expect("running").send(c).expect("loop alive");
        self.waker.wake().expect("wake");
    }

    fn status(&self) -> Vec<LinkStatus> {
        let (tx, rx) = mpsc::channel();
        self.cmd(Cmd::Status(tx));
        rx.recv_timeout(WAIT).expect("status").0
    }

    fn client_addrs(&self) -> BTreeMap<u64, Option<String>> {
        let (tx, rx) = mpsc::channel();
        self.cmd(Cmd::Status(tx));
        rx.recv_timeout(WAIT).expect("status").1
    }

    fn link(&self, node: u64) -> LinkStatus {
        self.status().into_iter().find(|s| s.node_id == node).expect("a link to that node")
    }

    fn recv(&self, n: usize) -> Vec<(u64, DataFrame)> {
        let deadline = Instant::now() + WAIT;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.rx.recv_timeout(left).unwrap_or_else(|_| panic!("received {i} of {n} frames"))
            })
            .collect()
    }

    fn nothing_more(&self, for_: Duration) {
        if let Ok(f) = self.rx.recv_timeout(for_) {
            panic!("unexpected frame {f:?}");
        }
    }

    fn fill(&self, to: u64, bytes: usize) -> usize {
        let (tx, rx) = mpsc::channel();
        self.cmd(Cmd::Fill(to, bytes, tx));
        rx.recv_timeout(WAIT).expect("fill")
    }
}

impl Drop for ShardLoop {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Cmd::Stop);
        }
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            t.join().expect("shard loop panicked");
        }
    }
}

struct LoopState {
    links: PeerLinks,
    backlog: BTreeMap<u64, VecDeque<Out>>,
    fill_seq: u64,
}

impl LoopState {
    fn command(&mut self, poll: &Poll, cmd: Cmd, now: u64) {
        let registry = poll.registry();
        match cmd {
            Cmd::Send(to, frames) => self.backlog.entry(to).or_default().extend(frames),
            Cmd::Fill(to, bytes, reply) => {
                let mut n = 0;
                loop {
                    let p = payload(0, 0, self.fill_seq, bytes - 18);
                    match self.links.send(to, DataKind::Raft, &[&p]) {
                        Ok(()) => {
                            self.fill_seq += 1;
                            n += 1;
                        }
                        Err(SendError::Full | SendError::Down) => break,
                        Err(e) => panic!("fill: {e}"),
                    }
                }
                // Write before answering: the next Fill may arrive in this same turn.
                self.links.flush(registry, now);
                let _ = reply.send(n);
            }
            Cmd::Status(reply) => {
                let status = self.links.status();
                let addrs = status
                    .iter()
                    .map(|s| (s.node_id, self.links.peer_client_addr(s.node_id).map(str::to_owned)))
                    .collect();
                let _ = reply.send((status, addrs));
            }
            Cmd::SetPeers(peers) => self.links.set_peers(registry, &peers, now).expect("peers"),
            Cmd::Disconnect(node) => self.links.disconnect(registry, node, now),
            Cmd::Inbound(s) => {
                self.links.add_inbound(registry, s);
            }
            Cmd::Block(until) => {
                let _ = until.recv();
            }
            Cmd::Stop => unreachable!("handled by the loop"),
        }
    }

    /// Pushes queued frames in order while the links take them.
    fn push_backlog(&mut self) {
        for (to, q) in self.backlog.iter_mut() {
            while let Some(f) = q.front() {
                let r = match f {
                    Out::Data(kind, p) => self.links.send(*to, *kind, &[p]),
                    Out::Ack(term, index) => self.links.send_written_ack(*to, *term, *index),
                };
                match r {
                    Ok(()) => {
                        q.pop_front();
                    }
                    Err(SendError::Full | SendError::Down) => break,
                    Err(e) => panic!("send to {to}: {e}"),
                }
            }
        }
    }
}

fn run_loop(links: PeerLinks, mut poll: Poll, rx: Receiver<Cmd>, out: Sender<(u64, DataFrame)>) {
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64 + 1;
    let mut st = LoopState { links, backlog: BTreeMap::new(), fill_seq: 0 };
    let mut events = Events::with_capacity(256);
    let mut deliver = |from: u64, f: DataFrame| {
        let _ = out.send((from, f));
    };
    loop {
        let t = now();
        let mut timeout = st.links.next_deadline_ms().map(|d| d.saturating_sub(t));
        if st.backlog.values().any(|q| !q.is_empty()) {
            timeout = Some(timeout.map_or(2, |x| x.min(2)));
        }
        poll.poll(&mut events, timeout.map(Duration::from_millis)).expect("poll");
        let t = now();
        for ev in events.iter() {
            if st.links.owns(ev.token()) {
                st.links.handle_event(poll.registry(), ev, t, &mut deliver);
            }
        }
        loop {
            match rx.try_recv() {
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => {
                    st.links.close_all(poll.registry());
                    return;
                }
                Ok(cmd) => st.command(&poll, cmd, t),
                Err(TryRecvError::Empty) => break,
            }
        }
        st.links.tick(poll.registry(), t, &mut deliver);
        st.push_backlog();
        st.links.flush(poll.registry(), t);
    }
}

// ---- a node ---------------------------------------------------------------------

type Route = (Sender<Cmd>, Arc<Waker>);

/// A node: its acceptor and its shards' loops. The shards' mailboxes exist
/// before the acceptor starts, as in the broker, so no authenticated
/// connection is handed to a shard that is not there yet.
struct Node {
    id: u64,
    me: NodeIdentity,
    addr: SocketAddr,
    acceptor: Option<PeerAcceptor>,
    /// Peer TLS for the links it dials (the acceptor's is in its config).
    tls: Option<PeerTls>,
    shards: Vec<ShardLoop>,
    /// Loops created but not started: (poll, mailbox, route).
    ready: Vec<(Poll, Receiver<Cmd>, Route)>,
}

impl Node {
    fn listen(me: NodeIdentity, members: &[u64], addr: SocketAddr) -> Node {
        Node::listen_with(me, members, addr, |_| {})
    }

    fn listen_with(
        me: NodeIdentity,
        members: &[u64],
        addr: SocketAddr,
        tune: impl FnOnce(&mut AcceptorConfig),
    ) -> Node {
        let mut ready = Vec::new();
        for _ in 0..me.shard_count {
            let poll = Poll::new().expect("poll");
            let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("waker"));
            let (tx, rx) = mpsc::channel();
            ready.push((poll, rx, (tx, waker)));
        }
        let routes: Arc<Mutex<Vec<Route>>> = Arc::new(Mutex::new(ready.iter().map(|r| r.2.clone()).collect()));
        let handoff = move |shard: u16, s: AuthenticatedStream| {
            let routes = routes.lock().expect("routes");
            let (tx, waker) = &routes[usize::from(shard)];
            if tx.send(Cmd::Inbound(s)).is_ok() {
                let _ = waker.wake();
            }
        };
        let mut cfg = AcceptorConfig::new(me.clone(), members.iter().copied().filter(|m| *m != me.node_id).collect());
        tune(&mut cfg);
        let tls = cfg.tls.clone();
        let acceptor = PeerAcceptor::bind(addr, cfg, handoff).expect("bind the peer listener");
        let addr = acceptor.local_addr();
        Node { id: me.node_id, addr, me, acceptor: Some(acceptor), tls, shards: Vec::new(), ready }
    }

    fn run(&mut self, peers: &BTreeMap<u64, SocketAddr>) {
        let peers: BTreeMap<u64, SocketAddr> =
            peers.iter().filter(|(id, _)| **id != self.id).map(|(k, v)| (*k, *v)).collect();
        for (shard, (poll, rx, (tx, waker))) in std::mem::take(&mut self.ready).into_iter().enumerate() {
            let mut links = PeerLinks::new(self.me.clone(), shard as u16, TOKEN_BASE, &peers).expect("links");
            links.set_tls(self.tls.clone());
            let (out_tx, out_rx) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("node{}-shard{shard}", self.id))
                .spawn(move || run_loop(links, poll, rx, out_tx))
                .expect("spawn");
            self.shards.push(ShardLoop { tx: Some(tx), waker, rx: out_rx, thread: Some(thread) });
        }
    }

    fn acceptor(&self) -> &PeerAcceptor {
        self.acceptor.as_ref().expect("running")
    }

    fn stop(&mut self) {
        self.acceptor.take();
        self.shards.clear();
    }

    fn wait_up(&self, peer: u64) {
        for (k, s) in self.shards.iter().enumerate() {
            wait_for(&format!("node {} shard {k}: link to {peer} up both ways", self.id), || {
                let l = s.link(peer);
                l.state == LinkState::Up && l.inbound_connected
            });
        }
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `n` nodes (ids 1..=n) of `shards` shards, all linked and up.
fn cluster(n: u64, shards: u16) -> (Vec<Node>, BTreeMap<u64, SocketAddr>) {
    cluster_with(n, shards, None)
}

/// [`cluster`], with peer TLS when `tls` is given.
fn cluster_with(n: u64, shards: u16, tls: Option<PeerTls>) -> (Vec<Node>, BTreeMap<u64, SocketAddr>) {
    let ids: Vec<u64> = (1..=n).collect();
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|id| Node::listen_with(identity(*id, shards, KEY), &ids, any_port(), |c| c.tls = tls.clone()))
        .collect();
    let peers: BTreeMap<u64, SocketAddr> = nodes.iter().map(|n| (n.id, n.addr)).collect();
    for node in &mut nodes {
        node.run(&peers);
    }
    for a in &nodes {
        for b in &ids {
            if *b != a.id {
                a.wait_up(*b);
            }
        }
    }
    (nodes, peers)
}

/// Sends `count` numbered Raft frames from `from` to `to` on shard 0 and checks they arrive in order.
fn exchange(from: &Node, to: &Node, count: u64) {
    let frames = (0..count).map(|s| Out::Data(DataKind::Raft, payload(from.id, 0, s, 100))).collect();
    from.shards[0].cmd(Cmd::Send(to.id, frames));
    for (i, (sender, f)) in to.shards[0].recv(count as usize).into_iter().enumerate() {
        assert_eq!(sender, from.id);
        let DataFrame::Raft(b) = f else { panic!("not a Raft frame: {f:?}") };
        assert_eq!(parse(&b), (from.id, 0, i as u64));
    }
}

// ---- a raw peer, for what no honest node sends ------------------------------------

struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        Raw { s, buf: BytesMut::new() }
    }

    fn send(&mut self, f: AuthFrame) {
        let mut out = Vec::new();
        f.encode(&mut out);
        self.s.write_all(&out).expect("write");
    }

    /// The next frame, or None at the end of the stream.
    fn frame(&mut self) -> Option<PeerFrame> {
        loop {
            if let Some(total) = peer::check(&self.buf, PEER_FRAME_BYTES_MAX).expect("framing") {
                let (kind, payload) = peer::split(&mut self.buf, total);
                return Some(PeerFrame::decode(kind, payload).expect("decodes"));
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn expect_refusal(&mut self, reason: RefuseReason) {
        match self.frame() {
            Some(PeerFrame::Auth(AuthFrame::Refuse(r))) => assert_eq!(RefuseReason(r.reason), reason, "{}", r.message),
            other => panic!("expected a {} refusal, got {other:?}", reason.name()),
        }
        self.expect_closed();
    }

    fn expect_closed(&mut self) {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    panic!("connection still open after {WAIT:?}")
                }
                Err(_) => return,
            }
        }
    }

    /// Runs the dialer's side of the handshake as node `me` (with `me`'s key,
    /// right or wrong); returns the Hello and the Challenge.
    fn hello(&mut self, me: &NodeIdentity, shard: u16) -> (Hello, Challenge) {
        let h = auth::hello(me, shard, auth::random_nonce().expect("nonce"));
        self.send(AuthFrame::Hello(h.clone()));
        match self.frame() {
            Some(PeerFrame::Auth(AuthFrame::Challenge(c))) => (h, c),
            other => panic!("expected a Challenge, got {other:?}"),
        }
    }

    /// A whole handshake, then `after` written in the same write as the Proof.
    fn authenticate(addr: SocketAddr, me: &NodeIdentity, acceptor: u64, after: &[u8]) -> Raw {
        let mut raw = Raw::connect(addr);
        let (h, c) = raw.hello(me, 0);
        let proof = auth::answer_challenge(&me.key, &h, acceptor, &c, None).expect("the acceptor holds the key");
        let mut out = Vec::new();
        AuthFrame::Proof(proof).encode(&mut out);
        out.extend_from_slice(after);
        raw.s.write_all(&out).expect("write");
        raw
    }
}

// ---- tests ------------------------------------------------------------------------

/// Three nodes of two shards: every shard sends every peer's same shard a
/// mix of every data kind, small and large; all arrive in order, intact, on
/// the right shard, and every node learned every other's client address.
#[test]
fn three_nodes_exchange_every_kind_in_order_and_intact() {
    init_log();
    let (nodes, _) = cluster(3, 2);
    exchange_every_kind(&nodes);
}

/// The same over peer TLS (certificates from the tests' CA, for
/// 127.0.0.1): frames of up to 300 KB, bigger than what rustls holds
/// ahead of the socket, arrive in order and intact on every link.
#[test]
fn three_tls_nodes_exchange_every_kind_in_order_and_intact() {
    init_log();
    let pki = TestPki::new();
    let files = PeerTlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), ca: pki.ca.clone() };
    let (nodes, _) = cluster_with(3, 2, Some(files.load().expect("peer TLS")));
    exchange_every_kind(&nodes);
}

/// Every shard of every node sends 200 frames of every kind to every peer;
/// each arrives once, in order, intact.
fn exchange_every_kind(nodes: &[Node]) {
    const COUNT: u64 = 200;
    let kind_of = |seq: u64| [DataKind::Raft, DataKind::SnapshotChunk, DataKind::Forward][(seq % 3) as usize];
    let len_of = |seq: u64| if seq % 50 == 7 { 300_000 } else { (seq as usize * 37) % 3000 };
    for n in nodes {
        for (k, shard) in n.shards.iter().enumerate() {
            for peer in nodes.iter().filter(|p| p.id != n.id) {
                let frames = (0..COUNT)
                    .map(|s| match s % 4 {
                        3 => Out::Ack(k as u64, s),
                        _ => Out::Data(kind_of(s), payload(n.id, k as u16, s, len_of(s))),
                    })
                    .collect();
                shard.cmd(Cmd::Send(peer.id, frames));
            }
        }
    }
    for n in nodes {
        for (k, shard) in n.shards.iter().enumerate() {
            let mut next: BTreeMap<u64, u64> = BTreeMap::new();
            for (from, f) in shard.recv(2 * COUNT as usize) {
                let seq = next.entry(from).or_default();
                match f {
                    DataFrame::WrittenAck { term, index } => assert_eq!((term, index), (k as u64, *seq)),
                    DataFrame::Abstaining => panic!("node {} shard {k}: no Abstaining frame was sent", n.id),
                    DataFrame::Raft(b) | DataFrame::SnapshotChunk(b) | DataFrame::Forward(b) => {
                        assert_eq!(parse(&b), (from, k as u16, *seq), "node {} shard {k}", n.id);
                        assert_eq!(b.len(), 18 + len_of(*seq));
                        assert_eq!(DataFrame::Raft(b.clone()).kind(), PeerKind::Raft);
                    }
                }
                *seq += 1;
            }
            assert!(next.values().all(|s| *s == COUNT), "node {} shard {k}: {next:?}", n.id);
            shard.nothing_more(Duration::from_millis(50));
            let addrs = shard.client_addrs();
            for p in nodes.iter().filter(|p| p.id != n.id) {
                assert_eq!(addrs[&p.id].as_deref(), Some(p.me.client_addr.as_str()));
            }
            let sent: u64 = shard.status().iter().map(|l| l.frames_sent).sum();
            assert_eq!(sent, 2 * COUNT);
        }
    }
}

/// Nodes with different keys never link: each dialer finds that the other
/// side cannot prove it holds the key, and says so in its status.
#[test]
fn a_wrong_cluster_key_is_refused_both_ways() {
    init_log();
    let ids = [1, 2];
    let mut a = Node::listen(identity(1, 1, KEY), &ids, any_port());
    let mut b = Node::listen(identity(2, 1, b"some other cluster's key"), &ids, any_port());
    let peers = BTreeMap::from([(1, a.addr), (2, b.addr)]);
    a.run(&peers);
    b.run(&peers);
    for (n, peer) in [(&a, 2), (&b, 1)] {
        wait_for("two refused dials", || {
            let l = n.shards[0].link(peer);
            l.dials >= 2 && l.last_error.as_deref().is_some_and(|e| e.contains("AUTH_FAILED"))
        });
        let l = n.shards[0].link(peer);
        assert_ne!(l.state, LinkState::Up);
        assert_eq!((l.connects, l.inbound_connected), (0, false));
        assert_eq!(n.acceptor().stats().authenticated, 0);
    }
}

/// A dialer without the key that skips checking the Challenge is refused by
/// the acceptor's check of its Proof.
#[test]
fn an_acceptor_refuses_a_proof_made_without_the_key() {
    init_log();
    let node = Node::listen(identity(1, 1, KEY), &[1, 2], any_port());
    let mut raw = Raw::connect(node.addr);
    let stranger = identity(2, 1, b"a guess at the key, 16+");
    let (h, c) = raw.hello(&stranger, 0);
    let transcript = peer::auth_transcript(&h, c.node_id, &c.client_addr, &c.nonce);
    assert!(!transcript.is_empty());
    raw.send(AuthFrame::Proof(Proof { mac: [0; 32] }));
    raw.expect_refusal(RefuseReason::AUTH_FAILED);
    // Reflecting the acceptor's own MAC is refused too.
    let mut raw = Raw::connect(node.addr);
    let (_, c) = raw.hello(&stranger, 0);
    raw.send(AuthFrame::Proof(Proof { mac: c.mac }));
    raw.expect_refusal(RefuseReason::AUTH_FAILED);
    let st = node.acceptor().stats();
    assert_eq!((st.authenticated, st.refused), (0, 2));
}

/// A dialer refuses an acceptor that answers with a MAC it cannot have made
/// with the key (and one that answers as the wrong node).
#[test]
fn a_dialer_refuses_an_acceptor_without_the_key() {
    init_log();
    let fake = std::net::TcpListener::bind(any_port()).expect("bind");
    let mut node = Node::listen(identity(1, 1, KEY), &[1, 2], any_port());
    node.run(&BTreeMap::from([(2, fake.local_addr().expect("addr"))]));
    for (answer_as, reason) in [(2, RefuseReason::AUTH_FAILED), (3, RefuseReason::WRONG_NODE)] {
        let (s, _) = fake.accept().expect("the node dials");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut raw = Raw { s, buf: BytesMut::new() };
        let Some(PeerFrame::Auth(AuthFrame::Hello(h))) = raw.frame() else { panic!("expected a Hello") };
        assert_eq!((h.node_id, h.shard, h.shard_count, h.version), (1, 0, 1, peer::PEER_PROTOCOL_VERSION));
        raw.send(AuthFrame::Challenge(Challenge {
            node_id: answer_as,
            client_addr: "127.0.0.1:1".into(),
            nonce: [1; 32],
            mac: [2; 32],
        }));
        raw.expect_refusal(reason);
        wait_for("the refusal in the status", || {
            node.shards[0].link(2).last_error.as_deref().is_some_and(|e| e.contains(reason.name()))
        });
        assert_ne!(node.shards[0].link(2).state, LinkState::Up);
    }
}

/// Hellos that cannot be served are refused with the reason, and closed.
#[test]
fn an_acceptor_refuses_bad_hellos_with_reasons() {
    init_log();
    let node = Node::listen(identity(1, 2, KEY), &[1, 2], any_port());
    let good = auth::hello(&identity(2, 2, KEY), 1, [0; 32]);
    let cases = [
        (Hello { version: 9, ..good.clone() }, RefuseReason::VERSION),
        (Hello { shard_count: 3, ..good.clone() }, RefuseReason::SHARD_COUNT),
        (Hello { shard: 2, ..good.clone() }, RefuseReason::BAD_SHARD),
        (Hello { node_id: 9, ..good.clone() }, RefuseReason::UNKNOWN_NODE),
        (Hello { node_id: 1, ..good.clone() }, RefuseReason::UNKNOWN_NODE),
    ];
    for (h, reason) in cases {
        let mut raw = Raw::connect(node.addr);
        raw.send(AuthFrame::Hello(h));
        raw.expect_refusal(reason);
    }
    let mut raw = Raw::connect(node.addr);
    raw.send(AuthFrame::Proof(Proof { mac: [0; 32] }));
    raw.expect_refusal(RefuseReason::MALFORMED);
    let mut raw = Raw::connect(node.addr);
    let mut out = Vec::new();
    peer::put_frame(&mut out, PeerKind::Raft, &[b"sneaky"]);
    raw.s.write_all(&out).expect("write");
    raw.expect_refusal(RefuseReason::MALFORMED);
    assert_eq!(node.acceptor().stats().refused, 7);
}

/// Strangers that connect and say nothing, or send garbage, neither block
/// a real peer's handshake nor stay around: the oldest silent ones make
/// room, the rest time out, garbage is refused at once.
#[test]
fn strangers_do_not_block_real_peers() {
    init_log();
    let ids = [1, 2];
    let short = |c: &mut AcceptorConfig| c.handshake_timeout_ms = 1_500;
    let mut a = Node::listen(identity(1, 1, KEY), &ids, any_port());
    let mut b = Node::listen_with(identity(2, 1, KEY), &ids, any_port(), short);
    let mut silent: Vec<Raw> = (0..ACCEPT_PENDING_MAX + 4).map(|_| Raw::connect(b.addr)).collect();
    wait_for("the acceptor to take the silent connections", || b.acceptor().stats().accepted >= silent.len() as u64);
    let mut huge = Raw::connect(b.addr);
    huge.s.write_all(&u32::MAX.to_le_bytes()).expect("write");
    let mut junk = Raw::connect(b.addr);
    let mut bytes = vec![0xee; 64 * 1024];
    bytes[..4].copy_from_slice(&(PEER_HANDSHAKE_FRAME_BYTES_MAX - 4).to_le_bytes());
    let _ = junk.s.write_all(&bytes);
    let peers = BTreeMap::from([(1, a.addr), (2, b.addr)]);
    a.run(&peers);
    b.run(&peers);
    a.wait_up(2);
    b.wait_up(1);
    exchange(&a, &b, 50);
    exchange(&b, &a, 50);
    huge.expect_refusal(RefuseReason::MALFORMED);
    junk.expect_refusal(RefuseReason::MALFORMED);
    for s in &mut silent {
        s.expect_closed();
    }
    let st = b.acceptor().stats();
    assert!(st.evicted >= 4, "{st:?}");
    assert!(st.timed_out >= 1, "{st:?}");
    assert_eq!(st.authenticated, 1, "node 1's one shard: {st:?}");
}

/// A node that stops (links and listener gone) and comes back on the same
/// address is redialled, and traffic resumes both ways.
#[test]
fn links_come_back_after_the_remote_restarts() {
    init_log();
    let (mut nodes, peers) = cluster(2, 1);
    exchange(&nodes[0], &nodes[1], 20);
    let addr = nodes[1].addr;
    nodes[1].stop();
    wait_for("the link to go down and be redialled", || {
        let l = nodes[0].shards[0].link(2);
        l.state != LinkState::Up && !l.inbound_connected && l.dials >= 3
    });
    let mut back = Node::listen(identity(2, 1, KEY), &[1, 2], addr);
    back.run(&peers);
    nodes[0].wait_up(2);
    back.wait_up(1);
    assert_eq!(nodes[0].shards[0].link(2).connects, 2);
    exchange(&nodes[0], &back, 20);
    exchange(&back, &nodes[0], 20);
}

/// A link one side cuts (as it would after a peer sent garbage at the Raft
/// level) is redialled by both dialers.
#[test]
fn links_come_back_after_a_disconnect() {
    init_log();
    let (nodes, _) = cluster(2, 1);
    nodes[1].shards[0].cmd(Cmd::Disconnect(1));
    for (n, peer) in [(&nodes[0], 2), (&nodes[1], 1)] {
        wait_for("a second connection", || {
            let l = n.shards[0].link(peer);
            l.connects == 2 && l.state == LinkState::Up && l.inbound_connected
        });
    }
    exchange(&nodes[0], &nodes[1], 20);
    exchange(&nodes[1], &nodes[0], 20);
}

/// Through the cluster-test proxy: a cut link goes down and comes back
/// after the heal; a blackholed link forwards nothing until healed.
#[test]
fn links_survive_a_cut_and_a_blackhole_in_the_network() {
    init_log();
    let ids = [1, 2];
    let mut a = Node::listen(identity(1, 1, KEY), &ids, any_port());
    let mut b = Node::listen(identity(2, 1, KEY), &ids, any_port());
    let proxy = Proxy::start(b.addr);
    a.run(&BTreeMap::from([(2, proxy.addr())]));
    b.run(&BTreeMap::from([(1, a.addr)]));
    a.wait_up(2);
    exchange(&a, &b, 10);
    proxy.cut();
    wait_for("the cut link to go down", || a.shards[0].link(2).state != LinkState::Up);
    assert_eq!(a.shards[0].fill(2, 100), 0, "nothing is taken while the link is down");
    proxy.heal();
    wait_for("the healed link", || a.shards[0].link(2).connects == 2 && a.shards[0].link(2).state == LinkState::Up);
    wait_for("b to take the new connection", || b.shards[0].link(1).inbound_connected);
    exchange(&a, &b, 10);
    proxy.blackhole();
    let frames = (0..10).map(|s| Out::Data(DataKind::Forward, payload(1, 0, s, 10))).collect();
    a.shards[0].cmd(Cmd::Send(2, frames));
    b.shards[0].nothing_more(Duration::from_millis(300));
    proxy.heal();
    for (i, (from, f)) in b.shards[0].recv(10).into_iter().enumerate() {
        let DataFrame::Forward(p) = f else { panic!("{f:?}") };
        assert_eq!((from, parse(&p)), (1, (1, 0, i as u64)));
    }
}

/// A peer that stops reading fills its link: `send` refuses (bounded
/// memory) instead of growing, and once the peer reads again everything
/// taken arrives, in order, and the link takes frames again.
#[test]
fn a_full_link_refuses_and_recovers() {
    init_log();
    let (nodes, _) = cluster(2, 1);
    let (go, blocked) = mpsc::channel();
    nodes[1].shards[0].cmd(Cmd::Block(blocked));
    const FRAME: usize = 64 * 1024;
    let mut taken = 0;
    let mut zero_rounds = 0;
    while zero_rounds < 3 {
        let n = nodes[0].shards[0].fill(2, FRAME);
        taken += n;
        zero_rounds = if n == 0 { zero_rounds + 1 } else { 0 };
    }
    let l = nodes[0].shards[0].link(2);
    assert!(l.queued_bytes <= PEER_OUT_BYTES_MAX && l.queued_bytes > PEER_OUT_BYTES_MAX - FRAME - 5, "{l:?}");
    assert!(l.sends_refused_full >= 3 && l.state == LinkState::Up, "{l:?}");
    assert!(taken * FRAME > PEER_OUT_BYTES_MAX, "{taken} {l:?}");
    go.send(()).expect("unblock");
    for (i, (from, f)) in nodes[1].shards[0].recv(taken).into_iter().enumerate() {
        let DataFrame::Raft(p) = f else { panic!("{f:?}") };
        assert_eq!((from, parse(&p)), (1, (0, 0, i as u64)));
    }
    wait_for("the link to drain", || nodes[0].shards[0].link(2).queued_bytes == 0);
    assert!(nodes[0].shards[0].fill(2, FRAME) > 0);
}

/// An authenticated peer that sends a malformed frame is disconnected (and
/// counted); frames before it were delivered, bytes sent in the same write
/// as the Proof included.
#[test]
fn malformed_frames_disconnect_the_sender() {
    init_log();
    let gone = std::net::TcpListener::bind(any_port()).expect("bind").local_addr().expect("addr");
    let mut node = Node::listen(identity(1, 1, KEY), &[1, 2], any_port());
    node.run(&BTreeMap::from([(2, gone)]));
    let me = identity(2, 1, KEY);
    let mut bad: Vec<Vec<u8>> = vec![
        vec![2, 0, 0, 0, 0x7f, 0],                         // unknown kind
        vec![16, 0, 0, 0, 0x11],                           // WrittenAck one byte short
        vec![0, 0, 0, 0],                                  // length 0
        (PEER_FRAME_BYTES_MAX - 3).to_le_bytes().to_vec(), // over the frame limit
    ];
    let mut hello = Vec::new();
    AuthFrame::Hello(auth::hello(&me, 0, [0; 32])).encode(&mut hello);
    bad.push(hello); // a handshake frame after the handshake
    bad[1].extend([0; 15]);
    for (i, junk) in bad.iter().enumerate() {
        let mut good = Vec::new();
        peer::put_frame(&mut good, PeerKind::Raft, &[b"before ", &[i as u8]]);
        let mut raw = Raw::authenticate(node.addr, &me, 1, &good);
        let (from, f) = node.shards[0].recv(1).remove(0);
        assert_eq!(
            (from, f),
            (2, DataFrame::Raft(bytes::Bytes::from(vec![b'b', b'e', b'f', b'o', b'r', b'e', b' ', i as u8])))
        );
        raw.s.write_all(junk).expect("write");
        raw.expect_closed();
        wait_for("the malformed count", || node.shards[0].link(2).malformed == i as u64 + 1);
        assert!(!node.shards[0].link(2).inbound_connected);
    }
    node.shards[0].nothing_more(Duration::from_millis(50));
}

/// Members come and go: a node outside the membership is refused; adding
/// it links it up; removing a node drops its links and refuses its dials.
#[test]
fn membership_changes_add_and_remove_links() {
    init_log();
    let (mut nodes, mut peers) = cluster(2, 1);
    let mut c = Node::listen(identity(3, 1, KEY), &[1, 2, 3], any_port());
    peers.insert(3, c.addr);
    c.run(&peers);
    wait_for("node 1 to refuse node 3", || {
        c.shards[0].link(1).last_error.as_deref().is_some_and(|e| e.contains("UNKNOWN_NODE"))
    });
    nodes[0].acceptor().set_members(BTreeSet::from([2, 3]));
    nodes[0].shards[0].cmd(Cmd::SetPeers(peers.iter().filter(|(id, _)| **id != 1).map(|(k, v)| (*k, *v)).collect()));
    nodes[0].wait_up(3);
    c.wait_up(1);
    exchange(&nodes[0], &c, 10);
    exchange(&c, &nodes[0], 10);
    assert_eq!(nodes[0].shards[0].client_addrs()[&3].as_deref(), Some("127.0.0.1:7703"));
    // Remove node 2 from node 1's view.
    nodes[0].acceptor().set_members(BTreeSet::from([3]));
    nodes[0].shards[0].cmd(Cmd::SetPeers(BTreeMap::from([(3, c.addr)])));
    let ids: Vec<u64> = nodes[0].shards[0].status().iter().map(|l| l.node_id).collect();
    assert_eq!(ids, [3]);
    wait_for("node 2's redial to be refused", || {
        let l = nodes[1].shards[0].link(1);
        l.state != LinkState::Up && l.last_error.as_deref().is_some_and(|e| e.contains("UNKNOWN_NODE"))
    });
    nodes[1].stop();
}
