//! Peer link throughput over loopback: one shard's `PeerLinks` sending
//! 1 KiB frames to another node's, each on its own thread and mio loop as
//! in the broker (authenticated link, batching per turn, bounded output).
//! The figure is frames (and bytes) delivered to the receiver's callback.
//! `1KiB_frames_tls`: the same over peer TLS (certificates from the tests'
//! own CA, `tests/src/tls.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmq_broker::cluster::{
    AcceptorConfig, AuthenticatedStream, ClusterKey, DataKind, NodeIdentity, PeerAcceptor, PeerLinks, SendError,
};
use cmq_broker::tls::peer::{PeerTls, PeerTlsFiles};
use cmq_integration_tests::tls::TestPki;
use cmq_protocol::peer::DataFrame;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mio::{Events, Poll, Token, Waker};

const FRAME_PAYLOAD_BYTES: usize = 1024;
const WAKER: Token = Token(0);
const TOKEN_BASE: usize = 10;

fn identity(id: u64) -> NodeIdentity {
    NodeIdentity {
        node_id: id,
        shard_count: 1,
        client_addr: format!("127.0.0.1:{}", 7700 + id),
        key: ClusterKey::new(b"benchmark cluster key").expect("key"),
    }
}

struct Counters {
    /// Frames the sender should have sent in total.
    target: AtomicU64,
    received: AtomicU64,
    up: AtomicBool,
    stop: AtomicBool,
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64 + 1
}

/// The receiving node's shard: counts frames, tells the bench when `goal` is reached.
fn receiver(
    mut links: PeerLinks,
    mut poll: Poll,
    inbound: Receiver<AuthenticatedStream>,
    c: Arc<Counters>,
    goal: Receiver<(u64, Sender<()>)>,
) {
    let start = Instant::now();
    let mut events = Events::with_capacity(256);
    let mut waiting: Option<(u64, Sender<()>)> = None;
    while !c.stop.load(Ordering::Relaxed) {
        let t = now_ms(start);
        let timeout = links.next_deadline_ms().map(|d| Duration::from_millis(d.saturating_sub(t)));
        poll.poll(&mut events, timeout.or(Some(Duration::from_millis(100)))).expect("poll");
        let t = now_ms(start);
        let mut n = 0;
        let mut deliver = |_: u64, f: DataFrame| {
            if let DataFrame::Raft(b) = f {
                debug_assert_eq!(b.len(), FRAME_PAYLOAD_BYTES);
                n += 1;
            }
        };
        for ev in events.iter() {
            if links.owns(ev.token()) {
                links.handle_event(poll.registry(), ev, t, &mut deliver);
            }
        }
        while let Ok(s) = inbound.try_recv() {
            links.add_inbound(poll.registry(), s);
        }
        links.tick(poll.registry(), t, &mut deliver);
        links.flush(poll.registry(), t);
        let total = c.received.fetch_add(n, Ordering::Relaxed) + n;
        if waiting.is_none() {
            waiting = goal.try_recv().ok();
        }
        if waiting.as_ref().is_some_and(|(g, _)| total >= *g) {
            let (_, done) = waiting.take().expect("waiting");
            let _ = done.send(());
        }
    }
}

/// The sending node's shard: sends until `target`, as much per turn as the link takes.
fn sender(mut links: PeerLinks, mut poll: Poll, c: Arc<Counters>) {
    let start = Instant::now();
    let mut events = Events::with_capacity(256);
    let payload = vec![7u8; FRAME_PAYLOAD_BYTES];
    let mut sent = 0u64;
    let mut full = false;
    while !c.stop.load(Ordering::Relaxed) {
        let t = now_ms(start);
        let more = sent < c.target.load(Ordering::Relaxed);
        let timeout = if more && !full {
            Some(Duration::ZERO)
        } else {
            links
                .next_deadline_ms()
                .map(|d| Duration::from_millis(d.saturating_sub(t)))
                .or(Some(Duration::from_millis(100)))
        };
        poll.poll(&mut events, timeout).expect("poll");
        let t = now_ms(start);
        let mut ignore = |_: u64, _: DataFrame| {};
        for ev in events.iter() {
            if links.owns(ev.token()) {
                links.handle_event(poll.registry(), ev, t, &mut ignore);
            }
        }
        links.tick(poll.registry(), t, &mut ignore);
        c.up.store(links.is_up(2), Ordering::Relaxed);
        full = false;
        let target = c.target.load(Ordering::Relaxed);
        while sent < target {
            match links.send(2, DataKind::Raft, &[&payload]) {
                Ok(()) => sent += 1,
                Err(SendError::Full | SendError::Down) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        links.flush(poll.registry(), t);
        // Still backed up after the write: wait for the socket (WRITABLE event).
        full &= links.queued_bytes(2) > 0;
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_link");
    g.throughput(Throughput::Bytes(FRAME_PAYLOAD_BYTES as u64));
    bench_link(&mut g, "1KiB_frames", None);
    let pki = TestPki::new();
    let files = PeerTlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), ca: pki.ca.clone() };
    bench_link(&mut g, "1KiB_frames_tls", Some(files.load().expect("peer TLS")));
    g.finish();
}

/// One link from node 1 to node 2 (over TLS when `tls` is given), measured as `name`.
fn bench_link(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    tls: Option<PeerTls>,
) {
    let counters = Arc::new(Counters {
        target: AtomicU64::new(0),
        received: AtomicU64::new(0),
        up: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let rx_poll = Poll::new().expect("poll");
    let rx_waker = Arc::new(Waker::new(rx_poll.registry(), WAKER).expect("waker"));
    let (in_tx, in_rx) = mpsc::channel();
    let w = rx_waker.clone();
    let handoff = move |_shard: u16, s: AuthenticatedStream| {
        let _ = in_tx.send(s);
        let _ = w.wake();
    };
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let config = |id: u64, peer: u64| {
        let mut cfg = AcceptorConfig::new(identity(id), BTreeSet::from([peer]));
        cfg.tls = tls.clone();
        cfg
    };
    let acc2 = PeerAcceptor::bind(any, config(2, 1), handoff).expect("bind");
    let acc1 = PeerAcceptor::bind(any, config(1, 2), |_, _| {}).expect("bind");
    let mut l1 = PeerLinks::new(identity(1), 0, TOKEN_BASE, &BTreeMap::from([(2, acc2.local_addr())])).expect("links");
    let mut l2 = PeerLinks::new(identity(2), 0, TOKEN_BASE, &BTreeMap::from([(1, acc1.local_addr())])).expect("links");
    l1.set_tls(tls.clone());
    l2.set_tls(tls);
    let tx_poll = Poll::new().expect("poll");
    let tx_waker = Arc::new(Waker::new(tx_poll.registry(), WAKER).expect("waker"));
    let (goal_tx, goal_rx) = mpsc::channel();
    let cr = counters.clone();
    let rx_thread = std::thread::spawn(move || receiver(l2, rx_poll, in_rx, cr, goal_rx));
    let cs = counters.clone();
    let tx_thread = std::thread::spawn(move || sender(l1, tx_poll, cs));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !counters.up.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the link did not come up");
        std::thread::sleep(Duration::from_millis(5));
    }

    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let goal = counters.received.load(Ordering::Relaxed) + iters;
            let (done_tx, done_rx) = mpsc::channel();
            goal_tx.send((goal, done_tx)).expect("receiver alive");
            let t = Instant::now();
            counters.target.fetch_add(iters, Ordering::Relaxed);
            tx_waker.wake().expect("wake");
            rx_waker.wake().expect("wake");
            done_rx.recv_timeout(Duration::from_secs(60)).expect("frames arrive");
            t.elapsed()
        })
    });
    counters.stop.store(true, Ordering::Relaxed);
    let _ = tx_waker.wake();
    let _ = rx_waker.wake();
    tx_thread.join().expect("sender");
    rx_thread.join().expect("receiver");
    drop((acc1, acc2));
}

criterion_group!(benches, bench);
criterion_main!(benches);
