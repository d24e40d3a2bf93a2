//! The push delivery pool: worker threads doing blocking HTTP requests, so
//! no shard thread ever waits on a receiver.
//!
//! One pool serves every shard. Each shard submits through its own
//! [`PushHandle`] and gets its outcomes back on its own bounded queue, with a
//! wake-up of its mio `Poll` (coalesced: at most one wake between two
//! [`PushHandle::take_outcomes`] calls). Work is queued per endpoint
//! (scheme, host, port); an endpoint is scheduled only while fewer than
//! `endpoint_concurrency` of its pushes are in flight, so a slow receiver
//! holds at most that many workers and connections while other endpoints
//! keep flowing.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use super::http::{self, Deadline, RESPONSE_HEAD_BYTES_MAX};
use super::tls::{self, TlsStream};
use super::url::{self, Endpoint, Scheme, Target};
use super::{PushConfig, PushOutcome, PushTask};

/// Idle keep-alive connections the whole pool keeps; past this a finished
/// connection is closed instead (each holds a file descriptor).
pub const IDLE_CONNS_MAX: usize = 1024;

struct Job {
    shard: usize,
    task: PushTask,
    target: Target,
}

/// A connection to an endpoint, plain or TLS, with deadline-bound socket I/O.
enum Stream {
    Plain(Deadline<TcpStream>),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(d) => &d.inner,
            Stream::Tls(t) => &t.sock.inner,
        }
    }

    fn set_deadline(&mut self, deadline: Instant) {
        match self {
            Stream::Plain(d) => d.deadline = deadline,
            Stream::Tls(t) => t.sock.deadline = deadline,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(d) => d.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(d) => d.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(d) => d.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

struct Conn {
    stream: Stream,
    idle_since: Instant,
}

#[derive(Default)]
struct EndpointState {
    waiting: VecDeque<Job>,
    in_flight: usize,
    /// Most recently used last.
    idle: Vec<Conn>,
    /// In `State::ready`.
    scheduled: bool,
}

struct State {
    endpoints: HashMap<Endpoint, EndpointState>,
    /// Endpoints with waiting jobs and room for one more in flight, round robin.
    ready: VecDeque<Endpoint>,
    idle_total: usize,
    stop: bool,
    /// Per worker: a handle on the socket it is using, so shutdown can cut it short.
    active: Vec<Option<TcpStream>>,
}

/// One shard's side: its outcomes and how to wake it.
struct ShardQueue {
    tx: Sender<(u64, PushOutcome)>,
    rx: Receiver<(u64, PushOutcome)>,
    /// Tasks submitted and not yet taken back as outcomes (queued, in flight, or done).
    outstanding: AtomicUsize,
    waker: Arc<Waker>,
    /// A wake is pending; cleared by `take_outcomes`.
    notified: AtomicBool,
}

impl ShardQueue {
    fn push(&self, id: u64, outcome: PushOutcome) {
        // Cannot be full: admission keeps `outstanding` <= capacity.
        if self.tx.try_send((id, outcome)).is_err() {
            log::error!("push: outcome queue full or closed; outcome of push {id} lost");
            return;
        }
        // Pairs with the fence in `take_outcomes`: either the shard sees this
        // outcome in its drain, or we see the flag it cleared and wake it.
        fence(Ordering::SeqCst);
        if !self.notified.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// Counters since the pool started.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Connections opened.
    pub connects: AtomicU64,
    /// Pushes sent on a kept-alive connection.
    pub reuses: AtomicU64,
    /// Pushes resent on a fresh connection because a kept-alive one turned out closed.
    pub stale_retries: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

struct Inner {
    cfg: PushConfig,
    tls: Arc<rustls::ClientConfig>,
    state: Mutex<State>,
    work: Condvar,
    shards: Vec<ShardQueue>,
    stats: PushStats,
}

/// The pool: owns the worker threads. Shards use [`PushHandle`]s.
pub struct PushPool {
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

/// A shard's way into the pool: submit pushes, collect their outcomes.
#[derive(Clone)]
pub struct PushHandle {
    inner: Arc<Inner>,
    shard: usize,
}

impl PushPool {
    /// Starts `cfg.workers` threads. `notify[i]` wakes shard `i` when
    /// outcomes of its pushes are ready; there is one handle per waker.
    pub fn new(cfg: PushConfig, notify: Vec<Arc<Waker>>) -> io::Result<PushPool> {
        cfg.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tls::client_config(cfg.tls_ca_file.as_deref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shards = notify
            .into_iter()
            .map(|waker| {
                let (tx, rx) = crossbeam_channel::bounded(cfg.queue_len);
                ShardQueue { tx, rx, outstanding: AtomicUsize::new(0), waker, notified: AtomicBool::new(false) }
            })
            .collect();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                endpoints: HashMap::new(),
                ready: VecDeque::new(),
                idle_total: 0,
                stop: false,
                active: (0..cfg.workers).map(|_| None).collect(),
            }),
            work: Condvar::new(),
            shards,
            stats: PushStats::default(),
            tls,
            cfg,
        });
        let mut pool = PushPool { inner: inner.clone(), workers: Vec::new() };
        for i in 0..inner.cfg.workers {
            let inner = inner.clone();
            let worker = std::thread::Builder::new().name(format!("cmq-push-{i}")).spawn(move || inner.run(i))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// The handle of shard `shard` (the index of its waker in `new`).
    pub fn handle(&self, shard: usize) -> PushHandle {
        assert!(shard < self.inner.shards.len(), "push: no outcome queue for shard {shard}");
        PushHandle { inner: self.inner.clone(), shard }
    }

    pub fn stats(&self) -> &PushStats {
        &self.inner.stats
    }

    /// Stops the workers and joins them. Queued pushes are dropped (the
    /// topic engine still holds them as pending and pushes them again after
    /// a restart); pushes in flight are cut short by shutting their sockets
    /// down, and report a retryable failure. A connect in progress finishes
    /// or times out first (at most `connect_timeout`).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        {
            let mut st = self.inner.lock();
            st.stop = true;
            for s in st.active.iter().flatten() {
                let _ = s.shutdown(Shutdown::Both);
            }
            let queued: usize = st.endpoints.values().map(|e| e.waiting.len()).sum();
            if queued > 0 {
                log::info!("push: shutting down with {queued} queued pushes (they stay pending)");
            }
            st.endpoints.clear();
            st.ready.clear();
            st.idle_total = 0;
        }
        self.inner.work.notify_all();
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                log::error!("push: a worker thread panicked");
            }
        }
    }
}

impl Drop for PushPool {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl PushHandle {
    /// Queues a push without blocking. Gives the task back when this shard
    /// already has `queue_len` pushes outstanding (queued, in flight, or
    /// finished with the outcome not yet taken) or the pool is shutting
    /// down: the caller tries again later. A task that can never be sent
    /// (invalid URL) is accepted and fails at once with a
    /// non-retryable outcome.
    pub fn submit(&self, task: PushTask) -> Result<(), PushTask> {
        let q = &self.inner.shards[self.shard];
        let cap = self.inner.cfg.queue_len;
        if q.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).is_err() {
            return Err(task);
        }
        let target = match url::parse(&task.url) {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("invalid endpoint URL: {e}");
                self.inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                q.push(task.id, PushOutcome::Failed { status: None, reason, retryable: false });
                return Ok(());
            }
        };
        let mut st = self.inner.lock();
        if st.stop {
            drop(st);
            q.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(task);
        }
        let key = target.endpoint.clone();
        let e = st.endpoints.entry(key.clone()).or_default();
        e.waiting.push_back(Job { shard: self.shard, task, target });
        let schedule = !e.scheduled && e.in_flight < self.inner.cfg.endpoint_concurrency;
        if schedule {
            e.scheduled = true;
            st.ready.push_back(key);
        }
        drop(st);
        if schedule {
            self.inner.work.notify_one();
        }
        Ok(())
    }

    /// Moves this shard's finished pushes into `out`. Never blocks.
    pub fn take_outcomes(&self, out: &mut Vec<(u64, PushOutcome)>) {
        let q = &self.inner.shards[self.shard];
        q.notified.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let before = out.len();
        out.extend(q.rx.try_iter());
        q.outstanding.fetch_sub(out.len() - before, Ordering::AcqRel);
    }

    /// How many more pushes `submit` takes now. Only this shard adds to
    /// its count (and only `take_outcomes` lowers it), so that many submits
    /// succeed unless the pool stops: the shard builds no task the pool
    /// would refuse.
    pub fn room(&self) -> usize {
        self.inner.cfg.queue_len.saturating_sub(self.outstanding())
    }

    /// Pushes of this shard submitted and not yet taken back as outcomes.
    pub fn outstanding(&self) -> usize {
        self.inner.shards[self.shard].outstanding.load(Ordering::Acquire)
    }
}

/// What one exchange did with its connection.
enum Attempt {
    Done(PushOutcome, Option<Stream>),
    /// A kept-alive connection was found closed before any answer: send again on a fresh one.
    Stale,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked mid-update leaves counts that are at worst
        // off by one; keep serving rather than poisoning every shard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, worker: usize) {
        let mut head = Vec::with_capacity(1024);
        let mut rbuf = vec![0u8; RESPONSE_HEAD_BYTES_MAX];
        while let Some((job, conn)) = self.next_job() {
            let key = job.target.endpoint.clone();
            let (outcome, conn) =
                catch_unwind(AssertUnwindSafe(|| self.deliver(worker, &job, conn, &mut head, &mut rbuf)))
                    .unwrap_or_else(|_| {
                        // A bug, not the receiver's fault: report it and keep the worker.
                        // (Only where panics unwind: cmqd itself aborts on any panic.)
                        self.clear_active(worker);
                        let reason = "internal error in the push client (see the log)".to_string();
                        (PushOutcome::Failed { status: None, reason, retryable: true }, None)
                    });
            match &outcome {
                PushOutcome::Delivered { .. } => self.stats.delivered.fetch_add(1, Ordering::Relaxed),
                PushOutcome::Failed { .. } => self.stats.failed.fetch_add(1, Ordering::Relaxed),
            };
            self.finish(key, conn);
            self.shards[job.shard].push(job.task.id, outcome);
        }
    }

    /// Blocks until there is a job (with an idle connection to its endpoint,
    /// if one is kept), or returns None at shutdown.
    fn next_job(&self) -> Option<(Job, Option<Conn>)> {
        let limit = self.cfg.endpoint_concurrency;
        let mut st = self.lock();
        loop {
            if st.stop {
                return None;
            }
            if let Some(key) = st.ready.pop_front() {
                let st = &mut *st;
                let Some(e) = st.endpoints.get_mut(&key) else { continue };
                e.scheduled = false;
                let Some(job) = e.waiting.pop_front() else { continue };
                e.in_flight += 1;
                let conn = e.idle.pop();
                if conn.is_some() {
                    st.idle_total -= 1;
                }
                if !e.waiting.is_empty() && e.in_flight < limit {
                    e.scheduled = true;
                    st.ready.push_back(key);
                    self.work.notify_one();
                }
                return Some((job, conn));
            }
            self.sweep_idle(&mut st);
            st = if st.idle_total > 0 {
                self.work.wait_timeout(st, self.cfg.idle_keep()).unwrap_or_else(|p| p.into_inner()).0
            } else {
                self.work.wait(st).unwrap_or_else(|p| p.into_inner())
            };
        }
    }

    /// Closes idle connections kept too long; forgets endpoints with nothing left.
    fn sweep_idle(&self, st: &mut State) {
        let keep = self.cfg.idle_keep();
        let mut closed = 0;
        st.endpoints.retain(|_, e| {
            let before = e.idle.len();
            e.idle.retain(|c| c.idle_since.elapsed() < keep);
            closed += before - e.idle.len();
            !(e.waiting.is_empty() && e.in_flight == 0 && e.idle.is_empty())
        });
        st.idle_total -= closed;
    }

    /// A push of `key` finished: keep its connection, schedule the endpoint again.
    fn finish(&self, key: Endpoint, conn: Option<Stream>) {
        let limit = self.cfg.endpoint_concurrency;
        let mut st = self.lock();
        let st = &mut *st;
        if st.stop {
            return;
        }
        let keep = conn.is_some() && st.idle_total < IDLE_CONNS_MAX;
        let Some(e) = st.endpoints.get_mut(&key) else { return };
        e.in_flight -= 1;
        if let (true, Some(stream)) = (keep, conn) {
            e.idle.push(Conn { stream, idle_since: Instant::now() });
            st.idle_total += 1;
        }
        let mut notify = false;
        if !e.waiting.is_empty() && e.in_flight < limit && !e.scheduled {
            e.scheduled = true;
            st.ready.push_back(key);
            notify = true;
        } else if e.waiting.is_empty() && e.in_flight == 0 && e.idle.is_empty() {
            st.endpoints.remove(&key);
        }
        if notify {
            self.work.notify_one();
        }
    }

    /// One push: on a kept-alive connection if there is a live one, again on
    /// a fresh connection if the kept one turns out to be closed.
    fn deliver(
        &self,
        worker: usize,
        job: &Job,
        mut conn: Option<Conn>,
        head: &mut Vec<u8>,
        rbuf: &mut [u8],
    ) -> (PushOutcome, Option<Stream>) {
        let task = &job.task;
        if let Err(reason) = http::request_head(&job.target, task, head) {
            return (PushOutcome::Failed { status: None, reason, retryable: false }, None);
        }
        let head_len = head.len();
        let deadline = Instant::now() + task.timeout;
        loop {
            let reused = match conn.take() {
                Some(c) if c.idle_since.elapsed() < self.cfg.idle_keep() && still_open(c.stream.tcp()) => {
                    Some(c.stream)
                }
                _ => None,
            };
            let was_reused = reused.is_some();
            let stream = match reused {
                Some(mut s) => {
                    self.stats.reuses.fetch_add(1, Ordering::Relaxed);
                    s.set_deadline(deadline);
                    s
                }
                None => match self.connect(worker, &job.target.endpoint, deadline) {
                    Ok(s) => s,
                    Err(reason) => return (PushOutcome::Failed { status: None, reason, retryable: true }, None),
                },
            };
            if !self.set_active(worker, stream.tcp()) {
                let reason = "push pool shutting down".to_string();
                return (PushOutcome::Failed { status: None, reason, retryable: true }, None);
            }
            head.truncate(head_len);
            let attempt = exchange(stream, head, &task.body, rbuf, was_reused);
            self.clear_active(worker);
            match attempt {
                Attempt::Done(outcome, conn) => return (outcome, conn),
                Attempt::Stale => {
                    self.stats.stale_retries.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }
    }

    /// A new connection to `ep` (TLS set up for https), within `deadline`.
    fn connect(&self, worker: usize, ep: &Endpoint, deadline: Instant) -> Result<Stream, String> {
        let tcp = self.connect_tcp(ep, deadline)?;
        match ep.scheme {
            Scheme::Http => Ok(Stream::Plain(Deadline { inner: tcp, deadline })),
            Scheme::Https => {
                // The handshake is I/O that shutdown must be able to cut short too.
                if !self.set_active(worker, &tcp) {
                    return Err("push pool shutting down".into());
                }
                let tls = tls::handshake(&self.tls, &ep.host, tcp, deadline);
                self.clear_active(worker);
                Ok(Stream::Tls(Box::new(tls?)))
            }
        }
    }

    fn connect_tcp(&self, ep: &Endpoint, deadline: Instant) -> Result<TcpStream, String> {
        let addrs = (ep.host.as_str(), ep.port).to_socket_addrs().map_err(|e| format!("resolving {ep}: {e}"))?;
        let mut last = format!("resolving {ep}: no addresses");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now()).min(self.cfg.connect_timeout());
            if left.is_zero() {
                return Err(format!("connecting to {ep}: timed out"));
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    return Ok(s);
                }
                Err(e) if http::is_timeout(&e) => last = format!("connecting to {ep}: timed out"),
                Err(e) => last = format!("connecting to {ep}: {e}"),
            }
        }
        Err(last)
    }

    /// Lets shutdown cut this worker's I/O short; false if shutdown began.
    fn set_active(&self, worker: usize, stream: &TcpStream) -> bool {
        let mut st = self.lock();
        if st.stop {
            return false;
        }
        st.active[worker] = stream.try_clone().ok();
        true
    }

    fn clear_active(&self, worker: usize) {
        self.lock().active[worker] = None;
    }
}

/// Writes the request and reads the answer within `deadline`.
fn exchange(mut s: Stream, head: &mut Vec<u8>, body: &[u8], rbuf: &mut [u8], reused: bool) -> Attempt {
    if let Err(e) = http::write_request(&mut s, head, body) {
        if reused && !http::is_timeout(&e) {
            return Attempt::Stale;
        }
        let reason = if http::is_timeout(&e) {
            "timed out sending the request".to_string()
        } else {
            format!("sending the request: {e}")
        };
        return Attempt::Done(PushOutcome::Failed { status: None, reason, retryable: true }, None);
    }
    match http::read_response(&mut s, rbuf) {
        Ok(resp) => {
            let conn = resp.reusable.then_some(s);
            let outcome = if (200..300).contains(&resp.status) {
                PushOutcome::Delivered { status: resp.status }
            } else {
                // CMQ retries any answer but a 2xx.
                let reason = format!("HTTP {}", resp.status);
                PushOutcome::Failed { status: Some(resp.status), reason, retryable: true }
            };
            Attempt::Done(outcome, conn)
        }
        Err(e) if reused && e.nothing_received() => Attempt::Stale,
        Err(e) => Attempt::Done(PushOutcome::Failed { status: None, reason: e.reason(), retryable: true }, None),
    }
}

/// A kept-alive connection the server has not closed (and has sent nothing on).
fn still_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let open = matches!(s.peek(&mut b), Err(ref e) if e.kind() == io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).is_ok() && open
}
