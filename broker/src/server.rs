//! Starting and stopping the broker: listeners, shard threads, signals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::engine::{EngineConfig, ShardEngine};
use crate::shard::mailbox::{self, ShardMsg};
use crate::shard::storage::ShardLog;
use crate::shard::{Shard, Shared};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX - 2);

/// A running broker.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

impl Server {
    /// Binds the listeners and starts one thread per shard.
    pub fn start(cfg: Config) -> anyhow::Result<Server> {
        let n = cfg.shards;
        let listeners = bind_listeners(cfg.listen, n)?;
        let local_addr = listeners[0].local_addr()?;
        let secret = random_secret()?;
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
            shutdown: AtomicBool::new(false),
            drained: AtomicUsize::new(0),
        });
        let mut threads = Vec::with_capacity(n);
        for (id, ((poll, inbox), listener)) in polls.into_iter().zip(inboxes).zip(listeners).enumerate() {
            let engine = ShardEngine::new(EngineConfig {
                shard: id as u16,
                secret,
                default_flush: cfg.flush,
                queues_max: cfg.queues_per_shard(),
            });
            let log = ShardLog::open_in_memory();
            let listener = mio::net::TcpListener::from_std(listener);
            let shard = Shard::new(id as u16, poll, listener, engine, log, shared.clone(), inbox)
                .with_context(|| format!("starting shard {id}"))?;
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || shard.run())
                .context("spawning a shard thread")?;
            threads.push(t);
        }
        Ok(Server { shared, threads, local_addr })
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

    /// Waits for every shard thread to exit.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                log::error!("a shard thread panicked");
            }
        }
    }
}

/// One listening socket per shard on the same address (SO_REUSEPORT): the
/// kernel spreads incoming connections over the shards with no acceptor
/// thread and no hand-off. With port 0 the first socket picks the port and
/// the others join it.
fn bind_listeners(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
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

fn random_secret() -> anyhow::Result<[u8; 16]> {
    use std::io::Read;
    let mut secret = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .context("reading /dev/urandom for the receipt-handle key")?;
    Ok(secret)
}
