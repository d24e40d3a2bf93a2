//! Answering the broker's transaction checks.
//!
//! A producer sends a half message ([`crate::Client::send_transaction_message`])
//! and later commits or rolls it back ([`crate::Client::end_transaction`]).
//! When neither arrives within the queue's firstQueryInterval, the broker
//! asks a connection registered as the producer group's checker, by pushing
//! a `TransactionCheck` frame, and keeps asking up to maxQueryCount times
//! before applying the queue's transactionDefault.
//!
//! A [`TransactionChecker`] is that connection: it registers for one group,
//! then calls a callback for every check and answers with `EndTransaction`.
//!
//! In a cluster, a check comes from the node leading the message's shard,
//! to a checker connected to that node. So the checker connects to every
//! node the cluster map names (those reachable when it connects), registers
//! on each, and answers each check on the connection it arrived on, which
//! reaches the leader that asked. Checks from all nodes go to one callback,
//! one at a time.
//!
//! ```no_run
//! use cmq_client::TransactionChecker;
//!
//! # fn committed_locally(_msg_id: u64) -> Option<bool> { Some(true) }
//! # fn main() -> Result<(), cmq_client::ClientError> {
//! let checker = TransactionChecker::connect("127.0.0.1:7700", "orders-producer")?
//!     // Some(true): commit, Some(false): roll back, None: not known yet (ask again later).
//!     .spawn(|check| committed_locally(check.msg_id));
//! // ... produce ...
//! let stats = checker.stop()?;
//! println!("answered {} checks", stats.checks);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use cmq_protocol::{EndTransaction, Ping, RegisterChecker, Request, Response, TransactionCheck};

use crate::connection::{Closer, Connection, Event, Push};
use crate::error::ClientError;
use crate::seeds::{connect_first, node_connect_timeout, resolve, ToSeeds};

/// How long a checker's connection may be silent before it pings the broker
/// to find out whether it is still there.
pub const CHECKER_HEARTBEAT_DEFAULT: Duration = Duration::from_secs(30);

/// Registered checker connections, one per node; see the module docs.
pub struct TransactionChecker {
    /// The seed's connection first, then one per other reachable node.
    conns: Vec<Connection>,
    producer_group: String,
    stopper: CheckerStopper,
    /// Bounds each wait for an answer (EndTransaction, heartbeat ping).
    reply_timeout: Option<Duration>,
    heartbeat: Duration,
}

/// Stops a running [`TransactionChecker`] from any thread (or from inside
/// its callback). Cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckerStopper {
    stopped: Arc<AtomicBool>,
    closers: Arc<Vec<Closer>>,
}

impl CheckerStopper {
    /// Makes `run` return `Ok` promptly, even from a blocking read: the
    /// connection is shut down, which also ends the registration. Final.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for closer in self.closers.iter() {
            closer.close();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// What a checker has done. Every check ends up in exactly one of
/// `committed`, `rolled_back`, `undecided` and `refused`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckerStats {
    /// TransactionCheck pushes received.
    pub checks: u64,
    /// Commits the broker accepted.
    pub committed: u64,
    /// Rollbacks the broker accepted.
    pub rolled_back: u64,
    /// Checks not answered: the callback returned `None`, or the checker was
    /// stopped before the answer went out.
    pub undecided: u64,
    /// EndTransaction requests the broker refused (e.g. MESSAGE_NOT_FOUND:
    /// the producer resolved it meanwhile, or the default was applied).
    pub refused: u64,
    /// Pushes of other kinds, ignored.
    pub ignored_pushes: u64,
}

/// One handled check, for [`TransactionChecker::run_with_report`].
#[derive(Debug)]
pub struct CheckOutcome<'a> {
    pub check: &'a TransactionCheck,
    /// The callback's answer: `Some(true)` commit, `Some(false)` roll back,
    /// `None` undecided (then nothing was sent and `result` is `Ok`).
    pub decision: Option<bool>,
    /// The broker's answer to the EndTransaction.
    pub result: Result<(), ClientError>,
}

impl TransactionChecker {
    /// Connects and registers as `producer_group`'s checker, without
    /// timeouts on the connect and the registration.
    pub fn connect(seeds: impl ToSeeds, producer_group: &str) -> Result<TransactionChecker, ClientError> {
        TransactionChecker::connect_with_timeout(seeds, producer_group, None)
    }

    /// Connects and registers; `timeout` bounds the connect, the
    /// registration and later every wait for an answer (EndTransaction,
    /// heartbeat). Waiting for checks is unbounded: silence is normal.
    pub fn connect_with_timeout(
        seeds: impl ToSeeds,
        producer_group: &str,
        timeout: Option<Duration>,
    ) -> Result<TransactionChecker, ClientError> {
        TransactionChecker::connect_as(seeds, producer_group, timeout, None)
    }

    /// [`TransactionChecker::connect_with_timeout`], authenticated with
    /// `credentials` (None: anonymously) on every node.
    pub fn connect_as(
        seeds: impl ToSeeds,
        producer_group: &str,
        timeout: Option<Duration>,
        credentials: Option<&crate::Credentials>,
    ) -> Result<TransactionChecker, ClientError> {
        TransactionChecker::connect_secure(seeds, producer_group, timeout, credentials, None)
    }

    /// [`TransactionChecker::connect_as`], over TLS when `tls` is given.
    pub fn connect_secure(
        seeds: impl ToSeeds,
        producer_group: &str,
        timeout: Option<Duration>,
        credentials: Option<&crate::Credentials>,
        tls: Option<&crate::TlsOptions>,
    ) -> Result<TransactionChecker, ClientError> {
        let first = register(connect_first(&seeds.to_seeds()?, None, timeout, credentials, tls)?, producer_group)?;
        let mut conns = vec![first];
        // A node down now is skipped: its shards are led elsewhere; when it
        // is back, a reconnect registers there too.
        for addr in other_nodes(&conns[0]) {
            let within = node_connect_timeout(timeout);
            let tls = tls.map(|t| (t, addr.as_str()));
            let conn = resolve(&addr)
                .and_then(|a| Connection::connect_secure(&a[..], None, within, timeout, credentials, tls));
            if let Ok(conn) = conn {
                conns.push(register(conn, producer_group)?);
            }
        }
        let closers = conns.iter().map(Connection::closer).collect::<Result<Vec<_>, _>>()?;
        let stopper = CheckerStopper { stopped: Arc::new(AtomicBool::new(false)), closers: Arc::new(closers) };
        Ok(TransactionChecker {
            conns,
            producer_group: producer_group.to_owned(),
            stopper,
            reply_timeout: timeout,
            heartbeat: CHECKER_HEARTBEAT_DEFAULT,
        })
    }

    pub fn producer_group(&self) -> &str {
        &self.producer_group
    }

    /// How long the connection may be idle before a ping checks that the
    /// broker is alive (default [`CHECKER_HEARTBEAT_DEFAULT`]). A ping not
    /// answered within the timeout (or, without one, another interval) ends
    /// `run` with an error: a dead broker is noticed instead of waited on forever.
    pub fn set_heartbeat(&mut self, interval: Duration) {
        self.heartbeat = interval.max(Duration::from_millis(1));
    }

    /// A handle that stops [`TransactionChecker::run`] from anywhere.
    pub fn stopper(&self) -> CheckerStopper {
        self.stopper.clone()
    }

    /// The first (the seed's) connection, and its counters.
    pub fn connection(&self) -> &Connection {
        &self.conns[0]
    }

    /// How many nodes it is registered on (1 for a single broker).
    pub fn nodes(&self) -> usize {
        self.conns.len()
    }

    /// Answers checks until stopped (`Ok`, with what was done) or until a
    /// connection fails (`Err`; the registrations are gone with it, so
    /// reconnect to go on). `decide` returns `Some(true)` to commit,
    /// `Some(false)` to roll back, `None` when it does not know yet (the
    /// broker asks again later, up to the queue's maxQueryCount).
    pub fn run(
        &mut self,
        decide: impl FnMut(&TransactionCheck) -> Option<bool> + Send,
    ) -> Result<CheckerStats, ClientError> {
        self.run_with_report(decide, |_| {})
    }

    /// [`TransactionChecker::run`], calling `report` after each check with the
    /// decision and the broker's answer to it. A refused EndTransaction
    /// (a `Server` error) is reported and counted, and the checker goes on.
    /// With several nodes, each connection is served by a thread of its own
    /// for the duration of the call; the callbacks run one at a time.
    pub fn run_with_report(
        &mut self,
        decide: impl FnMut(&TransactionCheck) -> Option<bool> + Send,
        report: impl FnMut(&CheckOutcome<'_>) + Send,
    ) -> Result<CheckerStats, ClientError> {
        let callbacks = Mutex::new((decide, report));
        let wait = Waits { heartbeat: self.heartbeat, reply: self.reply_timeout.unwrap_or(self.heartbeat) };
        let stopper = &self.stopper;
        let (last, rest) = self.conns.split_last_mut().expect("at least the seed's connection");
        let results: Vec<Result<CheckerStats, ClientError>> = std::thread::scope(|scope| {
            let threads: Vec<_> =
                rest.iter_mut().map(|conn| scope.spawn(|| serve_link(conn, stopper, wait, &callbacks))).collect();
            let mut results = vec![serve_link(last, stopper, wait, &callbacks)];
            results.extend(threads.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))));
            results
        });
        let mut total = CheckerStats::default();
        for r in results {
            total.add(&r?);
        }
        Ok(total)
    }

    /// Runs the checker on a thread of its own. Dropping the returned handle
    /// stops it too.
    pub fn spawn(mut self, decide: impl FnMut(&TransactionCheck) -> Option<bool> + Send + 'static) -> CheckerThread {
        let stopper = self.stopper();
        let thread = thread::Builder::new()
            .name(format!("cmq-checker-{}", self.producer_group))
            .spawn(move || self.run(decide))
            .expect("spawning a thread");
        CheckerThread { stopper, thread: Some(thread) }
    }
}

/// Registers `conn` as `group`'s checker.
fn register(mut conn: Connection, group: &str) -> Result<Connection, ClientError> {
    let id = conn.submit(&Request::RegisterChecker(RegisterChecker { producer_group: group.to_owned() }));
    let (got, result) = conn.recv()?;
    match result? {
        Response::RegisterChecker(_) if got == id => Ok(conn),
        other => Err(ClientError::Protocol(format!(
            "RegisterChecker answered with {} for request {got}",
            other.opcode().name()
        ))),
    }
}

/// Client addresses of the cluster's other nodes, from the handshake.
fn other_nodes(conn: &Connection) -> Vec<String> {
    let map = &conn.handshake_info().cluster;
    map.nodes
        .iter()
        .filter(|n| n.id != map.node_id && !n.client_addr.is_empty())
        .map(|n| n.client_addr.clone())
        .collect()
}

/// How long a link waits: silence before a heartbeat, and for an answer.
#[derive(Clone, Copy)]
struct Waits {
    heartbeat: Duration,
    reply: Duration,
}

impl CheckerStats {
    fn add(&mut self, o: &CheckerStats) {
        self.checks += o.checks;
        self.committed += o.committed;
        self.rolled_back += o.rolled_back;
        self.undecided += o.undecided;
        self.refused += o.refused;
        self.ignored_pushes += o.ignored_pushes;
    }
}

/// Serves one node's connection until stopped or until it fails; a failure
/// stops the other links too (the caller reconnects them all).
fn serve_link<D, R>(
    conn: &mut Connection,
    stopper: &CheckerStopper,
    wait: Waits,
    callbacks: &Mutex<(D, R)>,
) -> Result<CheckerStats, ClientError>
where
    D: FnMut(&TransactionCheck) -> Option<bool>,
    R: FnMut(&CheckOutcome<'_>),
{
    let result = serve_checks(conn, stopper, wait, callbacks);
    if result.is_err() {
        // Not `stop()`: the caller sees the error, not a quiet stop.
        for closer in stopper.closers.iter() {
            closer.close();
        }
    }
    result
}

fn serve_checks<D, R>(
    conn: &mut Connection,
    stopper: &CheckerStopper,
    wait: Waits,
    callbacks: &Mutex<(D, R)>,
) -> Result<CheckerStats, ClientError>
where
    D: FnMut(&TransactionCheck) -> Option<bool>,
    R: FnMut(&CheckOutcome<'_>),
{
    let mut stats = CheckerStats::default();
    // The heartbeat ping in flight, if any.
    let mut ping: Option<u64> = None;
    let ended = |stats: CheckerStats, e: ClientError| if stopper.is_stopped() { Ok(stats) } else { Err(e) };
    loop {
        if stopper.is_stopped() {
            return Ok(stats);
        }
        let timeout = if ping.is_some() { wait.reply } else { wait.heartbeat };
        let event = match conn.set_read_timeout(Some(timeout)).and_then(|()| conn.recv_event()) {
            Ok(event) => event,
            Err(_) if stopper.is_stopped() => return Ok(stats),
            Err(e) if e.is_timeout() && ping.is_none() => {
                ping = Some(conn.submit(&Request::Ping(Ping {})));
                if let Err(e) = conn.flush() {
                    return ended(stats, e);
                }
                continue;
            }
            Err(e) if e.is_timeout() => {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the broker did not answer a heartbeat ping within {timeout:?}"),
                )))
            }
            Err(e) => return ended(stats, e),
        };
        let check = match event {
            Event::Reply((id, _)) => {
                // The ping's answer, or a late one to a request given up on.
                if ping == Some(id) {
                    ping = None;
                }
                continue;
            }
            Event::Push(Push::TransactionCheck(check)) => check,
            Event::Push(_) => {
                stats.ignored_pushes += 1;
                continue;
            }
        };
        stats.checks += 1;
        // One callback at a time, however many nodes ask.
        let mut cb = callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let decision = (cb.0)(&check);
        if stopper.is_stopped() {
            // Stopped by (or during) the callback: nothing is sent.
            stats.undecided += 1;
            return Ok(stats);
        }
        let result = match decision {
            None => {
                stats.undecided += 1;
                Ok(())
            }
            Some(commit) => end_transaction(conn, wait, &check, commit, &mut ping),
        };
        if result.is_err() && stopper.is_stopped() {
            return Ok(stats);
        }
        // Not the broker refusing this one request: the connection is gone
        // (or silent), and the registration with it.
        if matches!(&result, Err(e) if e.is_timeout() || conn.is_broken()) {
            return result.map(|()| stats);
        }
        match (&result, decision) {
            (Ok(()), Some(true)) => stats.committed += 1,
            (Ok(()), Some(false)) => stats.rolled_back += 1,
            (Ok(()), None) => {}
            (Err(_), _) => stats.refused += 1,
        }
        (cb.1)(&CheckOutcome { check: &check, decision, result });
    }
}

/// Sends EndTransaction and waits for its answer. Pushes arriving
/// meanwhile stay queued for the main loop; the ping's answer is noted.
fn end_transaction(
    conn: &mut Connection,
    wait: Waits,
    check: &TransactionCheck,
    commit: bool,
    ping: &mut Option<u64>,
) -> Result<(), ClientError> {
    let req = Request::EndTransaction(EndTransaction { queue: check.queue.clone(), msg_id: check.msg_id, commit });
    let id = conn.submit(&req);
    conn.set_read_timeout(Some(wait.reply))?;
    loop {
        let (got, result) = conn.recv()?;
        if got == id {
            return match result? {
                Response::EndTransaction(_) => Ok(()),
                other => Err(ClientError::Protocol(format!("EndTransaction answered with {}", other.opcode().name()))),
            };
        }
        if *ping == Some(got) {
            *ping = None;
        }
    }
}

impl std::fmt::Debug for TransactionChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionChecker")
            .field("producer_group", &self.producer_group)
            .field("conns", &self.conns)
            .field("stopped", &self.stopper.is_stopped())
            .finish()
    }
}

/// A checker running on its own thread, from [`TransactionChecker::spawn`].
/// Dropping it stops the checker without waiting for the thread.
#[derive(Debug)]
pub struct CheckerThread {
    stopper: CheckerStopper,
    thread: Option<JoinHandle<Result<CheckerStats, ClientError>>>,
}

impl CheckerThread {
    pub fn stopper(&self) -> CheckerStopper {
        self.stopper.clone()
    }

    /// Whether the checker has ended (stopped, or its connection failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the checker and returns what it did.
    pub fn stop(self) -> Result<CheckerStats, ClientError> {
        self.stopper.stop();
        self.join()
    }

    /// Waits for the checker to end on its own (its connection failing, or a
    /// stop from a [`CheckerStopper`]). A panic in the callback is resumed here.
    pub fn join(mut self) -> Result<CheckerStats, ClientError> {
        let thread = self.thread.take().expect("joined once: join takes self");
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for CheckerThread {
    fn drop(&mut self) {
        self.stopper.stop();
    }
}
