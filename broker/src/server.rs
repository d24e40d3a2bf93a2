//! Starting and stopping the broker: data directory, listeners, shard
//! threads (each recovers its own log in parallel), shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context};
use mio::{Poll, Waker};
use raft::eraftpb::{ConfState, HardState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::cluster::{AcceptorConfig, AuthenticatedStream, NodeIdentity, PeerAcceptor, PeerLinks};
use crate::config::{ClusterConfig, Config, IoBackend};
use crate::consensus::scan::Scanned;
use crate::consensus::state_records::StateRecords;
use crate::consensus::store::RaftStore;
use crate::consensus::{conf_replay, readback};
use crate::consensus::{Replica, ReplicaConfig};
use crate::engine::{EngineConfig, ShardEngine};
use crate::push::{PushHandle, PushPool};
use crate::shard::mailbox::{self, Inbox, ShardMsg};
use crate::shard::replication::{Replication, PEER_TOKEN_BASE};
use crate::shard::storage::{Mode, ShardLog};
use crate::shard::{Shard, ShardParts, Shared};
use crate::storage::{Backend, DataDirLock, Manifest, WalConfig};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX - 2);

/// How long start-up waits for shard 0 to make the `--init-admin-key` key
/// (one loop turn and a file write; generous for a loaded machine).
const ADMIN_KEY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running broker.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    pub local_addr: SocketAddr,
    push: Option<PushPool>,
    /// The HTTP port (metrics, health), unless `--http-listen off`.
    http: Option<crate::http::HttpServer>,
    _lock: DataDirLock,
}

impl Server {
    /// Locks the data directory, binds the listeners, and starts one thread
    /// per shard; returns once every shard has recovered its log.
    pub fn start(cfg: Config) -> anyhow::Result<Server> {
        let process_start = crate::metrics::process::ProcessStart::now();
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
            leaders: (0..n).map(|_| (AtomicU64::new(cfg.node_id), AtomicU64::new(1))).collect(),
            nodes: std::sync::Mutex::new(initial_nodes(&cfg, &local_addr)),
            acceptor: std::sync::OnceLock::new(),
            buffer_bytes: AtomicUsize::new(0),
            conn_counters: (0..n).map(|_| Default::default()).collect(),
            auth: Default::default(),
            external: Default::default(),
            tls: cfg.tls.as_ref().map(|f| f.load()).transpose()?,
            peer_tls: cfg.cluster.as_ref().and_then(|c| c.tls.as_ref()).map(|f| f.load()).transpose()?,
        });
        let push_cfg = cfg.push_config();
        push_cfg.validate().map_err(|e| anyhow!("push settings: {e}"))?;
        let push = PushPool::new(push_cfg, shared.peers.iter().map(|p| p.waker()).collect())
            .context("starting the HTTP push pool")?;
        // A machine that restarted since the last run may have lost
        // unsynced writes: its replicas stay out of elections until caught up.
        let rebooted = cfg.cluster.is_some() && machine_restarted(&cfg.data_dir)?;
        // Peer connections go to shards whose mailboxes exist already.
        if let Some(c) = &cfg.cluster {
            let a = start_acceptor(c, &shared)?;
            let _ = shared.acceptor.set(a);
        }
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
            // Receipt handles must verify on whichever replica leads next.
            let secret = match &cfg.cluster {
                Some(c) => c.key.derive(b"cmq-receipt-v1")[..16].try_into().unwrap_or(manifest.secret),
                None => manifest.secret,
            };
            let pusher = push.handle(id);
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || match open_shard(id, poll, inbox, listener, shared, Boot { secret, rebooted }, pusher) {
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
        if failure.is_none() {
            // Shard 0 published its recovered keys before reporting ready.
            let have_keys = !shared.auth.keys.table().is_empty() || cfg.init_admin_key.is_some();
            if let Err(e) = crate::auth::startup_check(&cfg, have_keys) {
                failure = Some(e);
            }
        }
        let ok = failure.is_none();
        for g in &go {
            let _ = g.send(ok);
        }
        let mut server = Server { shared, threads, local_addr, push: Some(push), http: None, _lock: lock };
        if let Some(e) = failure {
            server.join();
            return Err(e);
        }
        // A single node makes its --init-admin-key on its first turn: report
        // ready (and the key file present) only after. A cluster node makes
        // it only once its shard 0 leads, which may take an election.
        if server.shared.cfg.init_admin_key.is_some()
            && server.shared.cfg.cluster.is_none()
            && !server.shared.auth.wait_admin_key(ADMIN_KEY_WAIT)
        {
            log::warn!("--init-admin-key: not done after {ADMIN_KEY_WAIT:?}; serving anyway");
        }
        // Serving: the HTTP port opens once every shard has recovered.
        if let Some(addr) = server.shared.cfg.http_listen {
            match crate::http::HttpServer::start(addr, server.shared.clone(), process_start) {
                Ok(h) => server.http = Some(h),
                Err(e) => {
                    server.shutdown();
                    server.join();
                    return Err(e);
                }
            }
        }
        Ok(server)
    }

    /// Where the HTTP port listens (None with `--http-listen off`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr())
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
        // Last: /readyz says "shutting down" while the shards drain.
        if let Some(h) = self.http.take() {
            h.stop();
        }
    }
}

/// Binds `--peer-listen`; authenticated connections go to their shard.
fn start_acceptor(c: &ClusterConfig, shared: &Arc<Shared>) -> anyhow::Result<PeerAcceptor> {
    let identity = node_identity(c, shared);
    let members = c.peers.iter().map(|p| p.id).collect();
    // The shards' inboxes, not `shared` (which holds the acceptor: no cycle).
    let to_shards = shared.peers.clone();
    let handoff = move |shard: u16, stream: AuthenticatedStream| {
        if let Some(h) = to_shards.get(usize::from(shard)) {
            if h.send(ShardMsg::PeerConn(Box::new(stream))).is_err() {
                log::warn!("shard {shard}'s inbox is full: a peer connection was dropped (it reconnects)");
            }
        }
    };
    let mut cfg = AcceptorConfig::new(identity, members);
    cfg.tls = shared.peer_tls.clone();
    let acceptor = PeerAcceptor::bind(c.peer_listen, cfg, handoff)
        .with_context(|| format!("binding the peer listener {}", c.peer_listen))?;
    let tls = if shared.peer_tls.is_some() { " (peer TLS: mutual TLS 1.3 on every peer link)" } else { "" };
    log::info!("node {}: peers connect to {}{tls}", c.node_id, acceptor.local_addr());
    Ok(acceptor)
}

fn node_identity(c: &ClusterConfig, shared: &Shared) -> NodeIdentity {
    NodeIdentity {
        node_id: c.node_id,
        shard_count: shared.cfg.shards as u16,
        client_addr: shared.client_addr.clone(),
        key: c.key.clone(),
    }
}

/// Compares the kernel's boot id with the one recorded at the last start
/// (and records the current one): a different one means the machine
/// restarted, so writes that were not fdatasync'd may be gone.
fn machine_restarted(data_dir: &Path) -> anyhow::Result<bool> {
    let now = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let path = data_dir.join("BOOT_ID");
    let before = std::fs::read_to_string(&path).ok();
    if before.as_deref() != Some(now.as_str()) {
        let tmp = data_dir.join("BOOT_ID.tmp");
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, now.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()?;
    }
    // No record yet: a new data directory, nothing written to lose.
    Ok(before.is_some_and(|b| b != now))
}

/// The nodes as configured: this one (its client address known) and its
/// peers (client addresses learned when their links come up).
fn initial_nodes(cfg: &Config, local: &SocketAddr) -> std::collections::BTreeMap<u64, (String, String)> {
    let mut nodes = std::collections::BTreeMap::new();
    let my_peer = cfg.cluster.as_ref().map(|c| c.peer_listen.to_string()).unwrap_or_default();
    nodes.insert(cfg.node_id, (local.to_string(), my_peer));
    for p in cfg.cluster.iter().flat_map(|c| c.peers.iter()) {
        nodes.insert(p.id, (String::new(), p.peer_addr.to_string()));
    }
    nodes
}

/// What every shard starts with besides its own parts.
struct Boot {
    /// The receipt-handle key.
    secret: [u8; 16],
    /// The machine restarted since the last run (see `machine_restarted`).
    rebooted: bool,
}

/// Recovers one shard's log into a fresh engine and builds the shard.
fn open_shard(
    id: usize,
    poll: Poll,
    inbox: Inbox,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    boot: Boot,
    push: PushHandle,
) -> anyhow::Result<Shard> {
    let Boot { secret, rebooted } = boot;
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
    let mode = if cfg.cluster.is_some() { Mode::Replicated } else { Mode::Solo };
    let (log, report, scanned) = ShardLog::open(&dir, wal_cfg, cfg.flush_interval_ms, &mut engine, mode)?;
    let repl = match &cfg.cluster {
        Some(c) => Some(Box::new(open_replication(id as u16, c, &shared, scanned, &log, rebooted)?)),
        None => None,
    };
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
    let parts = ShardParts { poll, listener, engine, log, inbox, push, repl };
    Shard::new(id as u16, parts, shared).with_context(|| format!("starting shard {id}"))
}

/// Shard `id`'s replica of Raft group `id`, from what its log holds: the
/// committed entries are applied already; the rest go to raft-rs's cache.
fn open_replication(
    id: u16,
    c: &ClusterConfig,
    shared: &Arc<Shared>,
    scanned: Scanned,
    log: &ShardLog,
    rebooted: bool,
) -> anyhow::Result<Replication> {
    let last = scanned.index.last_index();
    let commit = scanned.hard_state.commit.min(last);
    let hs = HardState { term: scanned.hard_state.term, vote: scanned.hard_state.vote, commit, ..Default::default() };
    let mut voters: Vec<u64> = c.peers.iter().map(|p| p.id).chain(std::iter::once(c.node_id)).collect();
    voters.sort_unstable();
    let mut cs = match scanned.conf {
        Some(rec) => ConfState {
            voters: rec.voters,
            learners: rec.learners,
            voters_outgoing: rec.voters_outgoing,
            learners_next: rec.learners_next,
            auto_leave: rec.auto_leave,
            ..Default::default()
        },
        // A node joining a running group starts knowing no members: it
        // learns them from the leader's snapshot, and never campaigns.
        None if c.join => ConfState::default(),
        None => ConfState { voters, ..Default::default() },
    };
    // The last record may predate a committed change (its record lost in a
    // torn tail): the committed changes the log holds are applied again.
    conf_replay::replay_conf_changes(&scanned.index, commit, &log.entries_ref().raw, &mut cs)
        .map_err(|e| anyhow!("shard {id}: reading configuration change {}: {}", e.index, e.msg))?;
    let base = scanned.snapshot;
    let state_records = StateRecords::found(scanned.hard_state_pos, scanned.conf_pos);
    let mut store = RaftStore::new(scanned.index, hs, cs);
    store.snapshot_for_empty_logs = true;
    for i in commit + 1..=last {
        let e = readback::read_entry(&store.index, i, &log.entries_ref().raw)
            .map_err(|e| anyhow!("shard {id}: reading entry {}: {}", e.index, e.msg))?;
        store.cache.put(i, e);
    }
    // A replica still abstaining when its process stopped abstains again:
    // a crash before it was back in step must not make a rebooted
    // machine's replica a voter (the boot id is already recorded by then).
    let marker = log.dir().join(crate::shard::replication::ABSTAIN_MARKER);
    let rebooted = rebooted || marker.exists();
    if rebooted {
        write_synced(&marker).with_context(|| format!("shard {id}: writing {}", marker.display()))?;
    }
    let mut rc = ReplicaConfig::new(c.node_id);
    rc.rebooted = rebooted;
    let mut replica = Replica::new(&rc, store, commit).map_err(|e| anyhow!("shard {id}: starting its replica: {e}"))?;
    replica.set_snapshot_base(base);
    replica.set_state_records(state_records);
    let peers = c.peers.iter().map(|p| (p.id, p.peer_addr)).collect();
    let mut links = PeerLinks::new(node_identity(c, shared), id, PEER_TOKEN_BASE, &peers)
        .map_err(|e| anyhow!("shard {id}: peer links: {e}"))?;
    links.set_tls(shared.peer_tls.clone());
    let mut repl = Replication::new(replica, links, c.node_id, c.raft_tick_ms, log.dir().to_owned());
    repl.abstain_marker = rebooted.then_some(marker);
    Ok(repl)
}

/// Creates an empty file and makes it and its name durable.
fn write_synced(path: &Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
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
