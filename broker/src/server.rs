//! Starting and stopping the broker: data directory, listeners, shard
//! threads (each recovers its own log in parallel), shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context};
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, IoBackend};
use crate::engine::{EngineConfig, ShardEngine};
use crate::push::{PushHandle, PushPool};
use crate::shard::mailbox::{self, Inbox, ShardMsg};
use crate::shard::storage::{Mode, ShardLog};
use crate::shard::{Shard, ShardParts, Shared};
use crate::storage::{Backend, DataDirLock, Manifest, WalConfig};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX - 2);

/// A running broker.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    pub local_addr: SocketAddr,
    push: Option<PushPool>,
    _lock: DataDirLock,
}

impl Server {
    /// Locks the data directory, binds the listeners, and starts one thread
    /// per shard; returns once every shard has recovered its log.
    pub fn start(cfg: Config) -> anyhow::Result<Server> {
        let n = cfg.shards;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
        let lock = DataDirLock::acquire(&cfg.data_dir)?;
        let manifest = Manifest::load_or_create(&cfg.data_dir, n as u32)?;
        let listeners = bind_listeners(cfg.listen, n)?;
        let local_addr = listeners[0].local_addr()?;
        let mut polls = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = Poll::new().context("creating an event loop")?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN).context("creating a waker")?);
            let (handle, inbox) = mailbox::channel(waker);
            polls.push(poll);
            handles.push(handle);
            inboxes.push(inbox);
        }
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            peers: handles,
            conn_count: AtomicUsize::new(0),
            queue_count: AtomicUsize::new(0),
            topic_count: AtomicUsize::new(0),
            next_create_seq: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            drained: AtomicUsize::new(0),
            client_addr: local_addr.to_string(),
            buffer_bytes: AtomicUsize::new(0),
            conn_counters: (0..n).map(|_| Default::default()).collect(),
        });
        let push_cfg = cfg.push_config();
        push_cfg.validate().map_err(|e| anyhow!("push settings: {e}"))?;
        let push = PushPool::new(push_cfg, shared.peers.iter().map(|p| p.waker()).collect())
            .context("starting the HTTP push pool")?;
        // Two phases: every shard recovers its log, then (only if all did)
        // they all start serving, so broker-wide counters are complete
        // before the first request.
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, anyhow::Result<()>)>();
        let mut go = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (id, ((poll, inbox), listener)) in polls.into_iter().zip(inboxes).zip(listeners).enumerate() {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let (go_tx, go_rx) = mpsc::channel::<bool>();
            go.push(go_tx);
            let secret = manifest.secret;
            let pusher = push.handle(id);
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || match open_shard(id, poll, inbox, listener, shared, secret, pusher) {
                    Ok(shard) => {
                        let _ = ready.send((id, Ok(())));
                        if go_rx.recv() == Ok(true) {
                            shard.run();
                        }
                    }
                    Err(e) => {
                        let _ = ready.send((id, Err(e)));
                    }
                })
                .context("spawning a shard thread")?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(e))) => {
                    failure.get_or_insert(e.context(format!("shard {id} failed to start")));
                }
                Err(_) => {
                    failure.get_or_insert(anyhow!("a shard thread exited during start-up"));
                    break;
                }
            }
        }
        let ok = failure.is_none();
        for g in &go {
            let _ = g.send(ok);
        }
        let server = Server { shared, threads, local_addr, push: Some(push), _lock: lock };
        if let Some(e) = failure {
            server.join();
            return Err(e);
        }
        Ok(server)
    }

    /// Asks every shard to stop accepting work and finish what is in flight.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for p in &self.shared.peers {
            if p.send(ShardMsg::Shutdown).is_err() {
                p.wake();
            }
        }
    }

    /// Waits for every shard thread to exit, then stops the push workers
    /// (undelivered pushes stay in the shards' logs).
    pub fn join(mut self) {
        for t in std::mem::take(&mut self.threads) {
            if t.join().is_err() {
                log::error!("a shard thread panicked");
            }
        }
        if let Some(p) = self.push.take() {
            p.shutdown();
        }
    }
}

/// Recovers one shard's log into a fresh engine and builds the shard.
fn open_shard(
    id: usize,
    poll: Poll,
    inbox: Inbox,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    secret: [u8; 16],
    push: PushHandle,
) -> anyhow::Result<Shard> {
    let cfg = &shared.cfg;
    let started = Instant::now();
    let mut engine = ShardEngine::new(EngineConfig {
        shard: id as u16,
        shard_count: cfg.shards as u16,
        secret,
        default_flush: cfg.flush,
        // The broker-wide limit is enforced by the shards (Shared::queue_count).
        queues_max: usize::MAX,
    });
    let wal_cfg = WalConfig {
        segment_bytes: cfg.segment_bytes,
        backend: match cfg.io_backend {
            IoBackend::Auto => Backend::Auto,
            IoBackend::IoUring => Backend::IoUring,
            IoBackend::Thread => Backend::Thread,
        },
        repair: cfg.repair,
        fault_file: cfg.fault_file.clone(),
    };
    let dir = cfg.data_dir.join(format!("shard-{id}"));
    let (log, report, _scanned) = ShardLog::open(&dir, wal_cfg, cfg.flush_interval_ms, &mut engine, Mode::Solo)?;
    if let Some(note) = &report.backend_note {
        log::info!("shard {id}: {note}");
    }
    log::info!(
        "shard {id}: recovered {} records from {} segments in {:.1?}: {} queues, {} MiB of log, I/O backend {:?}",
        report.records,
        report.segments,
        started.elapsed(),
        engine.queue_count(),
        log.disk_bytes() >> 20,
        report.backend
    );
    shared.queue_count.fetch_add(engine.queue_count(), Ordering::SeqCst);
    shared.topic_count.fetch_add(engine.topic_count(), Ordering::SeqCst);
    let max_seq = engine.max_create_seq().max(engine.max_topic_create_seq());
    shared.next_create_seq.fetch_max(max_seq + 1, Ordering::SeqCst);
    let listener = mio::net::TcpListener::from_std(listener);
    let parts = ShardParts { poll, listener, engine, log, inbox, push };
    Shard::new(id as u16, parts, shared).with_context(|| format!("starting shard {id}"))
}

/// One listening socket per shard on the same address (SO_REUSEPORT): the
/// kernel spreads incoming connections over the shards with no acceptor
/// thread and no hand-off. With port 0 the first socket picks the port and
/// the others join it.
fn bind_listeners(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // Another cmqd's SO_REUSEPORT group would silently share the port
        // with us: probe with a plain bind first so that is an error.
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding {addr} (is another cmqd or program listening there?)"))?;
    }
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut bind_to = addr;
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bind_to.into()).with_context(|| format!("binding {bind_to}"))?;
        socket.listen(LISTEN_BACKLOG)?;
        let l: std::net::TcpListener = socket.into();
        if out.is_empty() {
            bind_to = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}
