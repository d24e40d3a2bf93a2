//! The HTTP port (`--http-listen`): `/metrics`, `/healthz`, `/readyz`, and
//! the CMQ API 2.0 at `/v2/index.php` (`crate::gateway`).
//!
//! hyper serves it on a tokio runtime of its own threads (`cmq-http`,
//! [`http_worker_threads`] of them), never on a shard's event loop: the
//! shards stay free of any runtime and are reached only through their
//! inboxes (`bridge.rs`, in batches per runtime turn: `lane.rs`). With the
//! CMQ API on it, this port carries messages, and its threads are most of
//! the broker's CPU per gateway request (docs/BENCHMARKS.md, "CMQ API
//! gateway"). What it may cost is bounded: at most
//! [`HTTP_CONNECTIONS_MAX`] connections, headers within
//! [`HEADER_READ_TIMEOUT`] and [`HTTP_BUF_BYTES_MAX`], idle keep-alive
//! connections closed after `deadline::KEEP_ALIVE_IDLE_MAX`, one round of
//! questions to the shards at a time.

mod bridge;
pub mod deadline;
pub mod forward;
pub mod health;
mod lane;
pub mod router;
pub mod scrape;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

use crate::metrics::process::ProcessStart;
use crate::shard::Shared;
pub use bridge::{ShardBridge, Unanswered};
use router::{AllowAll, Endpoint, Reply, Router};

/// HTTP connections served at once; more are closed at accept. Every CMQ
/// SDK client keeps one keep-alive connection open, and with one request in
/// flight on each, connections are what carries the gateway's load (about
/// 50 are needed for 50,000 cycles/s here: docs/BENCHMARKS.md). An idle one
/// costs a task and a small read buffer; bodies are bounded all together by
/// `gateway::BODY_BUDGET_BYTES`, heads by [`HTTP_BUF_BYTES_MAX`] each.
pub const HTTP_CONNECTIONS_MAX: usize = 1024;

/// Most threads the HTTP runtime runs (one per two CPUs up to this):
/// beyond a few, the shards, not HTTP parsing, are the limit, and each
/// thread is one more to wake.
pub const HTTP_WORKER_THREADS_MAX: usize = 4;

/// Threads of the HTTP runtime on a machine with `cpus` CPUs: one per two,
/// since the shards (one per CPU) need the rest. On 2 CPUs one thread cost
/// 117 µs of broker CPU per gateway cycle against 149 µs with two: one
/// thread collects more ready connections per wake-up and wakes no sibling
/// (futex calls per cycle 0.1-0.5 against 1.0; docs/BENCHMARKS.md).
pub fn http_worker_threads(cpus: usize) -> usize {
    (cpus / 2).clamp(1, HTTP_WORKER_THREADS_MAX)
}

/// A request's headers must arrive within this of their first byte (an
/// idle keep-alive connection may wait `deadline::KEEP_ALIVE_IDLE_MAX`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head hyper buffers (our routes need no more).
pub const HTTP_BUF_BYTES_MAX: usize = 16 * 1024;

/// What the handlers share.
pub struct HttpContext {
    pub shared: Arc<Shared>,
    pub bridge: ShardBridge,
    pub start: ProcessStart,
    pub router: Router,
    /// The CMQ API 2.0 gateway (`/v2/index.php`).
    pub gateway: crate::gateway::Gateway,
    /// The web console's sessions and history (`/console/`, `/api/v1/`).
    pub console: crate::console::Console,
    /// Connections to other nodes' client ports for requests they lead (`forward`).
    pub forward: forward::Forwarder,
}

/// The running HTTP port.
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (an error here stops cmqd at start) and starts serving.
    pub fn start(addr: SocketAddr, shared: Arc<Shared>, start: ProcessStart) -> anyhow::Result<HttpServer> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the HTTP port --http-listen {addr} (use `off` to disable it)"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(http_worker_threads(cpus))
            .thread_name("cmq-http")
            .enable_io()
            .enable_time()
            .build()
            .context("starting the HTTP runtime")?;
        let router = Router::new(shared.cfg.fault_http_hooks, Arc::new(AllowAll));
        let bridge = ShardBridge::new(shared.peers.clone());
        let forward = forward::Forwarder::new(&shared.cfg)?;
        let ctx = Arc::new(HttpContext {
            shared,
            bridge,
            start,
            router,
            gateway: Default::default(),
            console: Default::default(),
            forward,
        });
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("cmq-http".into())
            .spawn(move || runtime.block_on(accept_loop(listener, ctx, stopped)))
            .context("spawning the HTTP thread")?;
        Ok(HttpServer { local_addr, stop, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, drops open connections, joins the thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!(target: "cmq::http", "the HTTP thread panicked");
            }
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, ctx: Arc<HttpContext>, mut stopped: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!(target: "cmq::http", "HTTP port unusable: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        log::debug!(target: "cmq::http", "refused HTTP connection from {peer}: {HTTP_CONNECTIONS_MAX} open");
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, peer, ctx).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // EMFILE and the like: try again shortly rather than spin.
                    log::warn!(target: "cmq::http", "HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The client's address, in every request's extensions (`serve_http`): the
/// per-address authentication backoff needs it (`auth::attempts`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The IP address a request came from (None only where no connection put it there).
pub fn peer_ip(parts: &hyper::http::request::Parts) -> Option<IpAddr> {
    parts.extensions.get::<PeerAddr>().map(|p| p.0.ip())
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, ctx: Arc<HttpContext>) {
    // The head and idle deadlines are the socket wrapper's (`deadline.rs`), not hyper's.
    let activity = Arc::new(deadline::Activity::default());
    let io = deadline::Deadlines::new(stream, activity.clone(), HEADER_READ_TIMEOUT, deadline::KEEP_ALIVE_IDLE_MAX);
    // HTTPS with the client port's certificate (`--tls-cert`); the TLS
    // handshake reads through the deadlines too.
    let Some(tls) = ctx.shared.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.http_port.clone())) else {
        return serve_http(io, peer, ctx, activity).await;
    };
    match tls.accept(io).await {
        Ok(io) => serve_http(io, peer, ctx, activity).await,
        Err(e) => log::debug!(target: "cmq::http", "HTTPS handshake failed: {e}"),
    }
}

async fn serve_http<I>(io: I, peer: SocketAddr, ctx: Arc<HttpContext>, activity: Arc<deadline::Activity>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let ctx = ctx.clone();
        let serving = activity.serve();
        async move {
            let reply = handle(&ctx, req).await;
            drop(serving);
            Ok::<_, Infallible>(reply)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(HTTP_BUF_BYTES_MAX)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        log::debug!(target: "cmq::http", "HTTP connection ended: {e}");
    }
}

async fn handle(ctx: &HttpContext, req: Request<Incoming>) -> Reply {
    // Only the CMQ API reads a body.
    let (parts, body) = req.into_parts();
    match ctx.router.route(&parts) {
        Err(reply) => *reply,
        Ok(Endpoint::CmqApi) => crate::gateway::serve(ctx, parts, body).await,
        Ok(Endpoint::Console) => crate::console::serve(ctx, parts, body).await,
        Ok(Endpoint::Metrics) => scrape::metrics(ctx, &parts).await,
        Ok(Endpoint::Healthz) => health::healthz(ctx).await,
        Ok(Endpoint::Readyz) => health::readyz(ctx).await,
        Ok(Endpoint::DebugStall) => debug_stall(ctx, parts.uri.query().unwrap_or("")),
    }
}

/// `POST /debug/stall?shard=K&ms=M` (testing only).
fn debug_stall(ctx: &HttpContext, query: &str) -> Reply {
    let param = |name: &str| -> Option<u64> {
        let (_, v) = query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name)?;
        v.parse().ok()
    };
    let (Some(shard), Some(ms)) = (param("shard"), param("ms")) else {
        return router::text(StatusCode::BAD_REQUEST, "shard=K&ms=M required\n");
    };
    let ms = ms.min(crate::shard::STALL_MS_MAX);
    if !ctx.bridge.stall(shard as usize, ms) {
        return router::text(StatusCode::BAD_REQUEST, "no such shard, or its inbox is full\n");
    }
    router::text(StatusCode::OK, "stalling\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_a_thread_per_two_cpus_up_to_the_limit() {
        assert_eq!(http_worker_threads(0), 1);
        assert_eq!(http_worker_threads(1), 1);
        assert_eq!(http_worker_threads(2), 1);
        assert_eq!(http_worker_threads(4), 2);
        assert_eq!(http_worker_threads(2 * HTTP_WORKER_THREADS_MAX), HTTP_WORKER_THREADS_MAX);
        assert_eq!(http_worker_threads(2 * HTTP_WORKER_THREADS_MAX + 2), HTTP_WORKER_THREADS_MAX);
    }
}
