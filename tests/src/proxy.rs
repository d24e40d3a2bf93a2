//! A controllable TCP proxy for cluster tests: put one in front of every
//! node's peer listener (one per direction of every pair) and a test can
//! cut, delay or blackhole any link while real processes run.
//!
//! * [`Proxy::cut`]: closes every connection through it and closes new ones
//!   at once (the peer sees its connection end, as when a node dies).
//! * [`Proxy::blackhole`]: keeps connections open (and accepts new ones) but
//!   forwards nothing in either direction, as in a network partition: the
//!   bytes sent meanwhile are held, as TCP would keep retransmitting them,
//!   and flow after [`Proxy::heal`] (held in bounded buffers; past them the
//!   sender sees TCP back-pressure). `cut` then `heal` for a clean slate.
//! * [`Proxy::delay`]: every chunk is forwarded that long after it arrived
//!   (latency without a throughput cap).
//! * [`Proxy::heal`]: back to forwarding at once, with no delay.
//! * [`Proxy::watch`]: counts the chunks in which a byte pattern crosses
//!   the proxy (either direction, also across chunk boundaries), to check
//!   what a listener on the wire would see.
//!
//! Thread based: an accept thread, and per connection a reader and a
//! writer thread per direction. Dropping the proxy closes everything and
//! joins its threads.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes one read takes from a socket (one forwarded chunk).
const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks held per direction of a connection (read, not yet written): 4 MiB
/// at most; past it the reader stops and TCP pushes back on the sender.
const HELD_CHUNKS_MAX: usize = 64;

/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a waiting writer sleeps before looking at the mode again (it is
/// also woken on every change).
const RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Blackhole,
    Cut,
}

struct Conn {
    closed: Arc<AtomicBool>,
    sockets: Vec<TcpStream>,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

struct State {
    mode: Mode,
    delay: Duration,
    conns: Vec<Conn>,
    threads: Vec<JoinHandle<()>>,
}

/// What [`Proxy::watch`] looks for, and what it saw.
#[derive(Default)]
struct Tap {
    pattern: Mutex<Vec<u8>>,
    hits: AtomicU64,
    bytes: AtomicU64,
}

impl Tap {
    /// Counts `data`; `carry` holds the previous chunk's last bytes (one
    /// fewer than the pattern), so a pattern split between chunks is found.
    fn see(&self, carry: &mut Vec<u8>, data: &[u8]) {
        self.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        let pattern = self.pattern.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if pattern.is_empty() {
            return;
        }
        carry.extend_from_slice(data);
        if carry.windows(pattern.len()).any(|w| w == pattern.as_slice()) {
            self.hits.fetch_add(1, Ordering::SeqCst);
        }
        let keep = carry.len().saturating_sub(pattern.len() - 1);
        carry.drain(..keep);
    }
}

struct Shared {
    tap: Tap,
    target: SocketAddr,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    accepted: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// From now on, counts the chunks carrying `pattern` (see `watch_hits`).
    pub fn watch(&self, pattern: &[u8]) {
        *self.shared.tap.pattern.lock().unwrap_or_else(|e| e.into_inner()) = pattern.to_vec();
    }

    /// Chunks in which the watched pattern was seen.
    pub fn watch_hits(&self) -> u64 {
        self.shared.tap.hits.load(Ordering::SeqCst)
    }

    /// Bytes read from either side since the proxy started.
    pub fn bytes_seen(&self) -> u64 {
        self.shared.tap.bytes.load(Ordering::SeqCst)
    }

    /// A proxy listening on 127.0.0.1 (ephemeral port) forwarding to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind");
        let addr = listener.local_addr().expect("proxy: local address");
        let shared = Arc::new(Shared {
            tap: Tap::default(),
            target,
            state: Mutex::new(State {
                mode: Mode::Forward,
                delay: Duration::ZERO,
                conns: Vec::new(),
                threads: Vec::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, s))
            .expect("proxy: spawn");
        Proxy { addr, shared, accept_thread: Some(accept_thread) }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted since start (including ones closed at once).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().conns.iter().filter(|c| !c.closed.load(Ordering::SeqCst)).count()
    }

    pub fn mode(&self) -> Mode {
        self.shared.lock().mode
    }

    /// Closes every connection and closes new ones at once, until `heal`.
    pub fn cut(&self) {
        let mut st = self.shared.lock();
        st.mode = Mode::Cut;
        for c in st.conns.drain(..) {
            c.close();
        }
        self.shared.changed.notify_all();
    }

    /// Forwards nothing (bytes are held) until `heal`; connections stay open.
    pub fn blackhole(&self) {
        self.set(|st| st.mode = Mode::Blackhole);
    }

    /// Forwards every chunk `d` after it arrived.
    pub fn delay(&self, d: Duration) {
        self.set(|st| st.delay = d);
    }

    /// Forwards everything at once again (held bytes flow, no delay).
    pub fn heal(&self) {
        self.set(|st| {
            st.mode = Mode::Forward;
            st.delay = Duration::ZERO;
        });
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.shared.lock());
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut self.shared.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.lock().mode == Mode::Cut {
            drop(client);
            continue;
        }
        let s = shared.clone();
        let t = std::thread::Builder::new().name("proxy-conn".into()).spawn(move || connect_and_pump(client, s));
        if let Ok(t) = t {
            let mut st = shared.lock();
            st.threads.retain(|t| !t.is_finished());
            st.threads.push(t);
        }
    }
}

/// Waits while blackholed (a partitioned SYN goes nowhere), then connects
/// to the target and starts the four pump threads.
fn connect_and_pump(client: TcpStream, shared: Arc<Shared>) {
    let closed = Arc::new(AtomicBool::new(false));
    {
        let mut st = shared.lock();
        st.conns.push(Conn { closed: closed.clone(), sockets: client.try_clone().into_iter().collect() });
        while st.mode == Mode::Blackhole && !closed.load(Ordering::SeqCst) {
            st = shared.changed.wait_timeout(st, RECHECK).unwrap_or_else(|e| e.into_inner()).0;
        }
        if closed.load(Ordering::SeqCst) || st.mode == Mode::Cut {
            return;
        }
    }
    let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
        // The target is down: the client sees its connection end at once (as
        // it would without the proxy), not an open one that never answers.
        closed.store(true, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let mut st = shared.lock();
    if closed.load(Ordering::SeqCst) {
        return;
    }
    if let Some(c) = st.conns.iter_mut().find(|c| Arc::ptr_eq(&c.closed, &closed)) {
        c.sockets.extend(server.try_clone());
    }
    for (from, to) in [(&client, &server), (&server, &client)] {
        let (tx, rx) = sync_channel(HELD_CHUNKS_MAX);
        let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else { continue };
        let (c1, c2, s1, s2) = (closed.clone(), closed.clone(), shared.clone(), shared.clone());
        st.threads
            .extend(std::thread::Builder::new().name("proxy-read".into()).spawn(move || read_pump(from, tx, c1, s1)));
        st.threads
            .extend(std::thread::Builder::new().name("proxy-write".into()).spawn(move || write_pump(to, rx, s2, c2)));
    }
}

/// A chunk and when it arrived; `None` data is the end of the stream.
type Chunk = (Instant, Option<Vec<u8>>);

fn read_pump(mut from: TcpStream, tx: SyncSender<Chunk>, closed: Arc<AtomicBool>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut carry = Vec::new();
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send((Instant::now(), None));
                return;
            }
            Ok(n) => {
                shared.tap.see(&mut carry, &buf[..n]);
                if closed.load(Ordering::SeqCst) || tx.send((Instant::now(), Some(buf[..n].to_vec()))).is_err() {
                    return;
                }
            }
        }
    }
}

fn write_pump(mut to: TcpStream, rx: Receiver<Chunk>, shared: Arc<Shared>, closed: Arc<AtomicBool>) {
    while let Ok((at, data)) = rx.recv() {
        if !wait_to_forward(&shared, &closed, at) {
            return;
        }
        match data {
            Some(d) => {
                if to.write_all(&d).is_err() {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            None => {
                // End of stream one way: pass the half-close on.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}

/// Blocks until a chunk that arrived at `at` may be written (forwarding and
/// its delay passed). False if the connection was closed meanwhile.
fn wait_to_forward(shared: &Shared, closed: &AtomicBool, at: Instant) -> bool {
    let mut st = shared.lock();
    loop {
        if closed.load(Ordering::SeqCst) || st.mode == Mode::Cut {
            return false;
        }
        let due = at + st.delay;
        let now = Instant::now();
        if st.mode == Mode::Forward && now >= due {
            return true;
        }
        let wait = if st.mode == Mode::Forward { (due - now).min(RECHECK) } else { RECHECK };
        st = shared.changed.wait_timeout(st, wait).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// Reads until `want` bytes arrived, the stream ends, or `timeout` passes.
pub fn read_for(stream: &mut TcpStream, want: usize, timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that echoes everything back on every connection.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().expect("clone");
                    let mut w = s;
                    let _ = io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        c.write_all(msg).expect("write");
        read_for(c, msg.len(), WAIT).expect("read")
    }

    /// The stream has ended (EOF or reset) within the wait.
    fn ended(c: &mut TcpStream) -> bool {
        let _ = c.set_read_timeout(Some(WAIT));
        let mut b = [0u8; 64];
        loop {
            match c.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }

    #[test]
    fn forwards_both_ways_and_in_order() {
        let p = Proxy::start(echo_server());
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = c.try_clone().expect("clone");
        let reader = std::thread::spawn(move || read_for(&mut r, 3_000_000, WAIT).expect("read"));
        c.write_all(&big).expect("write");
        assert!(reader.join().expect("reader") == big);
        assert_eq!(p.open_connections(), 1);
    }

    #[test]
    fn cut_closes_connections_and_refuses_new_ones_until_healed() {
        let p = Proxy::start(echo_server());
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        assert_eq!(round_trip(&mut c, b"ping"), b"ping");
        p.cut();
        assert!(ended(&mut c), "existing connection closed");
        let mut d = TcpStream::connect(p.addr()).expect("the listener still accepts");
        assert!(ended(&mut d), "new connection closed at once");
        p.heal();
        let mut e = TcpStream::connect(p.addr()).expect("connect");
        assert_eq!(round_trip(&mut e, b"back"), b"back");
    }

    #[test]
    fn blackhole_forwards_nothing_until_healed_then_held_bytes_flow() {
        let p = Proxy::start(echo_server());
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        assert_eq!(round_trip(&mut c, b"a"), b"a");
        p.blackhole();
        c.write_all(b"held").expect("write");
        assert_eq!(read_for(&mut c, 4, Duration::from_millis(300)).expect("read"), b"", "nothing forwarded");
        let mut late = TcpStream::connect(p.addr()).expect("accepted while blackholed");
        late.write_all(b"new").expect("write");
        assert_eq!(read_for(&mut late, 3, Duration::from_millis(300)).expect("read"), b"");
        p.heal();
        assert_eq!(read_for(&mut c, 4, WAIT).expect("read"), b"held");
        assert_eq!(read_for(&mut late, 3, WAIT).expect("read"), b"new");
    }

    #[test]
    fn delay_holds_each_chunk_back() {
        let p = Proxy::start(echo_server());
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        assert_eq!(round_trip(&mut c, b"warm"), b"warm");
        p.delay(Duration::from_millis(150));
        let t = Instant::now();
        assert_eq!(round_trip(&mut c, b"slow"), b"slow");
        assert!(t.elapsed() >= Duration::from_millis(300), "both directions delayed: {:?}", t.elapsed());
        p.heal();
        assert_eq!(round_trip(&mut c, b"fast"), b"fast");
    }

    #[test]
    fn a_target_that_is_down_ends_the_connection_at_once() {
        let down = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let p = Proxy::start(down);
        let mut c = TcpStream::connect(p.addr()).expect("the proxy accepts");
        let t = Instant::now();
        assert!(ended(&mut c), "closed, as a refused connection would be");
        assert!(t.elapsed() < Duration::from_secs(2), "closed at once, not after a timeout: {:?}", t.elapsed());
    }

    #[test]
    fn end_of_stream_passes_through_and_drop_closes_everything() {
        let p = Proxy::start(echo_server());
        let mut c = TcpStream::connect(p.addr()).expect("connect");
        assert_eq!(round_trip(&mut c, b"x"), b"x");
        c.shutdown(Shutdown::Write).expect("half close");
        assert!(ended(&mut c), "the echo server saw EOF and closed, and that came back");
        let mut d = TcpStream::connect(p.addr()).expect("connect");
        assert_eq!(round_trip(&mut d, b"y"), b"y");
        drop(p);
        assert!(ended(&mut d));
    }
}
