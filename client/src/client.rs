//! A shard-aware, leader-following set of connections to a broker or a
//! cluster of brokers.
//!
//! The broker runs one event loop per shard and forwards a request that
//! reaches the wrong shard, paying a cross-CPU wakeup (~65 µs here) per hop.
//! So the client keeps one connection per shard, opened lazily with a
//! `shard_hint`, and sends each queue's requests to the connection of
//! `names::shard_for(queue, shard_count)`. Where a request goes is the
//! protocol's decision, [`Request::route`]: a queue's shard, a shard named by
//! an id (a redrive id carries its shard in its top bits), or any shard.
//!
//! In a cluster every shard is a Raft group led by one node, and only the
//! leader runs the shard's requests. A shard's connection therefore goes to
//! the node that leads it (`routes.rs` keeps the picture: the
//! handshake's cluster map, `NOT_LEADER` hints), so there are at most as
//! many connections as shards, spread over the leaders. When the
//! leadership moves, the shard's connection is replaced once it has
//! nothing in flight; [`Client::call`] follows `NOT_LEADER` answers and
//! failed nodes by itself ([`crate::retry`] says when a request is sent
//! again and for how long). A single node is a cluster of one that leads
//! every shard.
//!
//! Requests go out as [`Ticket`]s: submit several (to any mix of queues),
//! [`Client::flush`] once, then [`Client::wait`] for each in any order.
//! Responses that arrive while waiting for another are stashed, so a long
//! poll in flight never holds up a later request's answer. Tickets are not
//! retried: a `NOT_LEADER` answer reaches the caller (and the client learns
//! the leader from it, so the next submit goes there).

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use cmq_protocol::limits::POLLING_WAIT_SECONDS_MAX;
use cmq_protocol::names::shard_for;
use cmq_protocol::{ClusterMap, ErrorCode, GetClusterMap, HandshakeOk, Request, Response, Route};

use crate::connection::{Connection, Push};
use crate::credentials::Credentials;
use crate::error::ClientError;
use crate::retry::{self, RETRY_ATTEMPTS_MAX, RETRY_DEADLINE_DEFAULT};
use crate::routes::Routes;
use crate::seeds::{connect_first, ToSeeds};

/// A submitted request, to be redeemed with [`Client::wait`].
#[must_use = "pass every ticket to Client::wait, or its response stays stashed until the connection closes"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    shard: u16,
    /// Which connection of that shard: a reconnect must not be mistaken for
    /// the one the request went out on.
    generation: u64,
    request_id: u64,
    /// Seconds the broker may legitimately hold the request (long polling).
    hold_seconds: u32,
    /// The request is about this shard (not "any shard"): a `NOT_LEADER`
    /// answer is news about the shard's leader.
    routed: bool,
}

impl Ticket {
    /// The request id on the wire.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The shard whose connection carried the request.
    pub fn shard(&self) -> u16 {
        self.shard
    }
}

#[derive(Default)]
struct Slot {
    conn: Option<Connection>,
    /// The node the connection reached (from its handshake).
    node: u64,
    generation: u64,
    /// Responses read while waiting for another ticket of this connection.
    stash: HashMap<u64, Result<Response, ClientError>>,
}

impl Slot {
    /// Nothing would be lost by closing the connection now.
    fn idle(&self) -> bool {
        self.stash.is_empty() && self.conn.as_ref().is_none_or(|c| c.in_flight() == 0 && !c.has_unflushed())
    }
}

/// How one attempt of [`Client::call`] failed.
enum Failure {
    /// Not sent: no node to send it to could be reached.
    Unreachable(ClientError),
    /// Refused without being run: sending again is safe. `backoff`:
    /// nothing better is known yet; wait and look again first.
    NotApplied { err: ClientError, backoff: bool },
    /// Sent to `node`, then the connection was lost or timed out.
    Lost { err: ClientError, node: u64 },
    /// The request's own answer.
    Final(ClientError),
}

/// Blocking client for a broker or a cluster; see the crate docs for an example.
pub struct Client {
    timeout: Option<Duration>,
    retry_deadline: Duration,
    info: HandshakeOk,
    routes: Routes,
    /// The shard the first connection landed on; serves requests without a queue.
    home: u16,
    /// Indexed by shard id.
    slots: Vec<Slot>,
    next_generation: u64,
    /// The key every connection authenticates with (None: anonymous).
    credentials: Option<Credentials>,
    /// TLS settings of every connection (None: plaintext).
    tls: Option<crate::TlsOptions>,
}

impl Client {
    /// Connects without timeouts (calls may block forever if the broker
    /// stops answering). `seeds`: one address or several, comma-separated
    /// (see [`ToSeeds`]); they are tried in order.
    pub fn connect(seeds: impl ToSeeds) -> Result<Client, ClientError> {
        Client::connect_with_timeout(seeds, None)
    }

    /// Connects, bounding connect, writes and reads by `timeout`. A receive
    /// may additionally take as long as its polling wait. Each seed gets at
    /// most `seeds::NODE_CONNECT_TIMEOUT_MAX` before the next is tried.
    pub fn connect_with_timeout(seeds: impl ToSeeds, timeout: Option<Duration>) -> Result<Client, ClientError> {
        Client::connect_as(seeds, timeout, None)
    }

    /// [`Client::connect_with_timeout`], every connection authenticated with
    /// `credentials` (None: anonymous).
    pub fn connect_as(
        seeds: impl ToSeeds,
        timeout: Option<Duration>,
        credentials: Option<Credentials>,
    ) -> Result<Client, ClientError> {
        Client::connect_secure(seeds, timeout, credentials, None)
    }

    /// [`Client::connect_as`], every connection over TLS when `tls` is
    /// given (the broker's `--tls-cert`).
    pub fn connect_secure(
        seeds: impl ToSeeds,
        timeout: Option<Duration>,
        credentials: Option<Credentials>,
        tls: Option<crate::TlsOptions>,
    ) -> Result<Client, ClientError> {
        let seeds = seeds.to_seeds()?;
        let first = connect_first(&seeds, None, timeout, credentials.as_ref(), tls.as_ref())?;
        let info = first.handshake_info().clone();
        let shard_count = info.shard_count.max(1);
        // A broker reporting an impossible shard id still gets used: requests
        // reaching the wrong shard are forwarded, merely slower.
        let home = if info.shard_id < shard_count { info.shard_id } else { 0 };
        let mut client = Client {
            timeout,
            retry_deadline: RETRY_DEADLINE_DEFAULT,
            info,
            routes: Routes::new(seeds, shard_count),
            home,
            slots: (0..shard_count).map(|_| Slot::default()).collect(),
            next_generation: 1,
            credentials,
            tls,
        };
        client.install(home, first);
        Ok(client)
    }

    /// Shards the broker runs (at least 1).
    pub fn shard_count(&self) -> u16 {
        self.slots.len() as u16
    }

    /// The handshake answer of the first connection.
    pub fn server_info(&self) -> &HandshakeOk {
        &self.info
    }

    /// The open connection for `shard`, if any, for its stats and the shard
    /// that actually serves it.
    pub fn connection(&self, shard: u16) -> Option<&Connection> {
        self.slots.get(usize::from(shard)).and_then(|s| s.conn.as_ref())
    }

    /// The cluster as this client sees it now: the nodes (at the address
    /// this client reaches them at) and the leader of each shard it knows
    /// (0: none). Nothing is asked; see [`Client::cluster_map`] for that.
    pub fn known_cluster(&self) -> ClusterMap {
        self.routes.map()
    }

    /// The node this client believes leads `shard` (0: unknown).
    pub fn leader_of(&self, shard: u16) -> u64 {
        self.routes.leader(shard)
    }

    /// The seeds given to connect.
    pub fn seeds(&self) -> &[String] {
        self.routes.seeds()
    }

    /// The shard a request for `queue` is sent to.
    pub fn shard_of(&self, queue: &str) -> u16 {
        shard_for(queue, self.shard_count())
    }

    /// The shard whose connection carries `req`, per [`Request::route`].
    /// Requests for any shard use an open connection, preferring the first
    /// one's; a shard number beyond the broker's count (an id minted before
    /// it was restarted with fewer shards) is sent the same way, and the
    /// broker answers for it.
    pub fn shard_for_request(&self, req: &Request) -> u16 {
        self.route(req).0
    }

    /// The shard for `req`, and whether the request is about that shard.
    fn route(&self, req: &Request) -> (u16, bool) {
        match req.route() {
            Route::Queue(queue) => (self.shard_of(queue), true),
            Route::Shard(shard) if shard < self.shard_count() => (shard, true),
            Route::Shard(_) | Route::Any => (self.any_shard(), false),
        }
    }

    /// Removes and returns the pushes the broker sent on this client's
    /// connections, oldest first per connection. A `Client` only receives
    /// pushes if a `RegisterChecker` went through it; a checker wants its
    /// own connection ([`crate::TransactionChecker`]), since a `Client` closes
    /// and reopens connections (and with them the registration) on errors.
    pub fn take_pushes(&mut self) -> Vec<Push> {
        self.slots.iter_mut().filter_map(|s| s.conn.as_mut()).flat_map(Connection::take_pushes).collect()
    }

    /// Changes the timeout for connections opened from now on and for every
    /// wait; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The key this client authenticates with (None: anonymous).
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The TLS settings connections use (None: plaintext).
    pub fn tls(&self) -> Option<&crate::TlsOptions> {
        self.tls.as_ref()
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// How long one [`Client::call`] keeps retrying (default
    /// [`RETRY_DEADLINE_DEFAULT`]); `Duration::ZERO` makes one attempt.
    pub fn set_retry_deadline(&mut self, deadline: Duration) {
        self.retry_deadline = deadline;
    }

    pub fn retry_deadline(&self) -> Duration {
        self.retry_deadline
    }

    /// Queues `req` on its shard's connection (opening it, to the shard's
    /// leader, if needed). Nothing is sent until [`Client::flush`] or a
    /// [`Client::wait`] on that connection.
    pub fn submit(&mut self, req: &Request) -> Result<Ticket, ClientError> {
        self.submit_at(self.route(req), req)
    }

    fn submit_at(&mut self, (shard, routed): (u16, bool), req: &Request) -> Result<Ticket, ClientError> {
        let i = usize::from(shard);
        // A connection the broker closed while it sat idle (its idle
        // deadline) is replaced now rather than failing this request; so is
        // one to a node that no longer leads the shard.
        let stale = self.slots[i].conn.as_mut().is_some_and(Connection::closed_while_idle);
        // Requests for any shard go to a leader too: a follower answers
        // only after asking the leader (a ReadIndex round), one hop more.
        let moved = self.leader_moved(shard);
        if stale || moved {
            self.close(i);
        }
        self.open(shard)?;
        let slot = &mut self.slots[i];
        let Some(conn) = slot.conn.as_mut() else {
            return Err(ClientError::Disconnected);
        };
        let request_id = conn.submit(req);
        Ok(Ticket { shard, generation: slot.generation, request_id, hold_seconds: hold_seconds(req), routed })
    }

    /// Sends everything submitted, one write per connection. Tries every
    /// connection and reports the first failure.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        let mut first_err = None;
        for shard in 0..self.slots.len() {
            let Some(conn) = self.slots[shard].conn.as_mut() else { continue };
            if !conn.has_unflushed() {
                continue;
            }
            if let Err(e) = conn.flush() {
                self.close(shard);
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Blocks until the ticket's response arrives (flushing its connection
    /// first if needed). A `Server` error is the request's own; any other
    /// error means its connection was closed, failing all of its tickets,
    /// and the next request to that shard reconnects. A timeout also closes
    /// the connection, since its late answer would otherwise be stashed forever.
    /// A `NOT_LEADER` answer updates who leads the shard.
    pub fn wait(&mut self, ticket: Ticket) -> Result<Response, ClientError> {
        let result = self.wait_inner(ticket);
        if let Err(ClientError::Server { code, message }) = &result {
            if *code == ErrorCode::NOT_LEADER && ticket.routed {
                let from = self.slots[usize::from(ticket.shard)].node;
                self.routes.learn_not_leader(ticket.shard, from, message);
            }
        }
        result
    }

    fn wait_inner(&mut self, ticket: Ticket) -> Result<Response, ClientError> {
        let timeout = self.timeout.map(|t| t + Duration::from_secs(u64::from(ticket.hold_seconds)));
        let shard = usize::from(ticket.shard);
        let slot = self.slots.get_mut(shard).ok_or(ClientError::Disconnected)?;
        if slot.generation != ticket.generation {
            return Err(ClientError::Disconnected);
        }
        if let Some(result) = slot.stash.remove(&ticket.request_id) {
            return result;
        }
        let Some(conn) = slot.conn.as_mut() else {
            return Err(ClientError::Disconnected);
        };
        if !conn.is_pending(ticket.request_id) {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("request {} was already waited for", ticket.request_id),
            )));
        }
        let outcome = conn.set_read_timeout(timeout).and_then(|()| loop {
            let (id, result) = conn.recv()?;
            if id == ticket.request_id {
                break Ok(result);
            }
            slot.stash.insert(id, result);
        });
        match outcome {
            Ok(result) => result,
            Err(e) => {
                if !e.is_timeout() && !matches!(e, ClientError::Server { .. }) {
                    let node = slot.node;
                    self.routes.mark_down(node, Instant::now());
                }
                self.close(shard);
                Err(e)
            }
        }
    }

    /// Whether sends carry idempotency keys when the caller gave none: in
    /// a cluster (several nodes known, or several seeds), where a send that
    /// met a leader change is sent again. A single node never repeats a
    /// send, and a key costs the broker a dedup-window insert per message
    /// (about half of pipelined single-node throughput, docs/ARCHITECTURE.md
    /// "Idempotent sends"), so there sends carry only keys the caller chose.
    pub(crate) fn keys_by_default(&self) -> bool {
        self.routes.has_alternatives()
    }

    /// Sends one request and waits for its answer, following the shard's
    /// leader: a `NOT_LEADER` answer, a node that cannot be reached, an
    /// election under way are retried within [`Client::set_retry_deadline`]
    /// and [`RETRY_ATTEMPTS_MAX`] attempts, as [`crate::retry`] describes.
    /// A request that changes state and lost its connection after it was
    /// sent is not repeated, unless it is a send or publish whose messages
    /// all carry idempotency keys: that is [`ClientError::OutcomeUnknown`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.call_at(|c| c.route(req), req)
    }

    /// [`Client::call`] on the connection of `shard`'s leader, whatever
    /// the request's own route (cluster operations about one shard).
    pub(crate) fn call_for_shard(&mut self, shard: u16, req: &Request) -> Result<Response, ClientError> {
        self.call_at(|_| (shard, true), req)
    }

    /// `route` is asked again for every attempt: "any shard" may mean
    /// another connection once one was lost.
    fn call_at(&mut self, route: impl Fn(&Client) -> (u16, bool), req: &Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.retry_deadline;
        let mut backoffs = 0;
        // A lost attempt whose request may have been applied (repeatable ones only).
        let mut lost_on: Option<u64> = None;
        for attempt in 1.. {
            let (err, wait) = match self.attempt(route(self), req) {
                Ok(resp) => return Ok(resp),
                Err(Failure::Final(e)) => return Err(annotated(e, lost_on)),
                // One node that is gone: reported at once, as it is; a keyed
                // send whose answer was lost or late may have been stored.
                Err(Failure::Unreachable(err)) if !self.routes.has_alternatives() => return Err(err),
                Err(Failure::Lost { err, node }) if retry::keyed_send(req) && !self.routes.has_alternatives() => {
                    return Err(ClientError::OutcomeUnknown { op: req.opcode().name(), node, cause: Box::new(err) });
                }
                Err(Failure::Lost { err, node }) if retry::keyed_send(req) && err.is_timeout() => {
                    return Err(ClientError::OutcomeUnknown { op: req.opcode().name(), node, cause: Box::new(err) });
                }
                Err(Failure::Lost { err, .. }) if !self.routes.has_alternatives() && retry::safe_to_repeat(req) => {
                    return Err(err)
                }
                Err(Failure::Unreachable(err)) => (err, true),
                Err(Failure::Lost { err, node }) if !retry::safe_to_repeat(req) => {
                    return Err(ClientError::OutcomeUnknown { op: req.opcode().name(), node, cause: Box::new(err) });
                }
                Err(Failure::Lost { err, .. }) if err.is_timeout() => return Err(err),
                Err(Failure::Lost { err, node }) => {
                    lost_on = Some(node);
                    (err, true)
                }
                Err(Failure::NotApplied { err, backoff }) => (err, backoff),
            };
            let now = Instant::now();
            if attempt >= RETRY_ATTEMPTS_MAX || now >= deadline {
                return Err(annotated(err, lost_on));
            }
            if wait {
                std::thread::sleep(retry::backoff(backoffs).min(deadline - now));
                backoffs += 1;
                self.refresh_routes();
            }
        }
        unreachable!("the loop returns")
    }

    /// One attempt of [`Client::call`].
    fn attempt(&mut self, route: (u16, bool), req: &Request) -> Result<Response, Failure> {
        let ticket = self.submit_at(route, req).map_err(|err| match err {
            // A node that refuses the handshake (full, another version) says so.
            ClientError::Handshake { .. } => Failure::Final(err),
            err => Failure::Unreachable(err),
        })?;
        let node = self.slots[usize::from(ticket.shard)].node;
        let err = match self.wait(ticket) {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let ClientError::Server { code, .. } = &err else {
            return Err(Failure::Lost { err, node });
        };
        match *code {
            ErrorCode::NOT_LEADER => {
                // `wait` learned the hint: back off only if it named nobody new.
                let leader = self.routes.leader(ticket.shard);
                let moved = ticket.routed && leader != 0 && leader != node;
                Err(Failure::NotApplied { err, backoff: !moved })
            }
            // Closed for idleness before the request was read: it was not run.
            ErrorCode::IDLE_TIMEOUT => Err(Failure::NotApplied { err, backoff: false }),
            // Refused unrun for now (a full inbox, a change in progress).
            ErrorCode::BUSY => Err(Failure::NotApplied { err, backoff: true }),
            // Stopping: another node may serve; a single node is just gone.
            ErrorCode::SHUTTING_DOWN if !self.routes.has_alternatives() => Err(Failure::Final(err)),
            ErrorCode::SHUTTING_DOWN => {
                self.routes.mark_down(node, Instant::now());
                if ticket.routed {
                    self.routes.forget_leader(ticket.shard);
                }
                Err(Failure::NotApplied { err, backoff: true })
            }
            _ => Err(Failure::Final(err)),
        }
    }

    /// Asks a live node for the cluster map (best effort): on an open
    /// connection to a node not known to be down if there is one, else on a
    /// new connection to any node (its handshake carries the map).
    pub(crate) fn refresh_routes(&mut self) {
        let now = Instant::now();
        let open = (0..self.slots.len()).find(|&i| {
            let s = &self.slots[i];
            s.conn.as_ref().is_some_and(|c| !c.is_broken()) && s.idle() && !self.routes.is_down(s.node, now)
        });
        if let Some(i) = open {
            if let Ok(Response::GetClusterMap(map)) = self.call_on(i, &Request::GetClusterMap(GetClusterMap {})) {
                let via = self.slots[i].conn.as_ref().map(Connection::peer_addr);
                self.routes.learn_map(&map, via);
                return;
            }
        }
        if let Ok(conn) = connect_first(
            &self.routes.any_node(Instant::now()),
            None,
            self.timeout,
            self.credentials.as_ref(),
            self.tls.as_ref(),
        ) {
            self.routes.learn_map(&conn.handshake_info().cluster, Some(conn.peer_addr()));
        }
    }

    /// One request on slot `i`'s connection, whatever its route; no retries.
    pub(crate) fn call_on(&mut self, i: usize, req: &Request) -> Result<Response, ClientError> {
        let slot = &mut self.slots[i];
        let Some(conn) = slot.conn.as_mut() else { return Err(ClientError::Disconnected) };
        let request_id = conn.submit(req);
        let ticket =
            Ticket { shard: i as u16, generation: slot.generation, request_id, hold_seconds: 0, routed: false };
        self.wait(ticket)
    }

    /// Takes what a node's map says (no address learned).
    pub(crate) fn learn_map(&mut self, map: &ClusterMap) {
        self.routes.learn_map(map, None);
    }

    /// Where node `id` can be reached, best first.
    pub(crate) fn routes_addrs(&self, id: u64) -> Vec<String> {
        self.routes.addrs_of(id)
    }

    /// Whether `shard`'s connection goes to a node that no longer leads it
    /// and can be replaced without losing anything.
    fn leader_moved(&self, shard: u16) -> bool {
        let slot = &self.slots[usize::from(shard)];
        let leader = self.routes.leader(shard);
        slot.conn.is_some() && leader != 0 && slot.node != leader && slot.idle()
    }

    /// The shard whose connection serves requests for any shard: the
    /// first connection's, unless no leader is known for it while one is
    /// for another shard; among those, one already connected to its leader.
    fn any_shard(&self) -> u16 {
        let led = |k: u16| self.routes.leader(k) != 0;
        let at_leader = |k: u16| {
            let s = &self.slots[usize::from(k)];
            s.conn.is_some() && led(k) && s.node == self.routes.leader(k)
        };
        let shards = 0..self.shard_count();
        if at_leader(self.home) {
            return self.home;
        }
        if let Some(k) = shards.clone().find(|k| at_leader(*k)) {
            return k;
        }
        if led(self.home) || self.slots[usize::from(self.home)].conn.is_some() && !shards.clone().any(led) {
            return self.home;
        }
        shards.clone().find(|k| led(*k)).unwrap_or(self.home)
    }

    /// Opens `shard`'s connection if it has none: to the shard's leader if
    /// known, else to any node (which serves it, or names the leader).
    fn open(&mut self, shard: u16) -> Result<(), ClientError> {
        if self.slots[usize::from(shard)].conn.is_some() {
            return Ok(());
        }
        let leader = self.routes.leader(shard);
        let at_leader = if leader == 0 { Vec::new() } else { self.routes.addrs_of(leader) };
        let conn = if at_leader.is_empty() {
            connect_first(
                &self.routes.any_node(Instant::now()),
                Some(shard),
                self.timeout,
                self.credentials.as_ref(),
                self.tls.as_ref(),
            )?
        } else {
            connect_first(&at_leader, Some(shard), self.timeout, self.credentials.as_ref(), self.tls.as_ref())
                .inspect_err(|_| {
                    // Ask the others next: their replicas know who leads now.
                    self.routes.mark_down(leader, Instant::now());
                    self.routes.forget_leader(shard);
                })?
        };
        // If the broker served us from another shard than asked, keep the
        // connection anyway: it forwards, and asking again would not help.
        self.install(shard, conn);
        Ok(())
    }

    fn install(&mut self, shard: u16, conn: Connection) {
        self.routes.learn_map(&conn.handshake_info().cluster, Some(conn.peer_addr()));
        let slot = &mut self.slots[usize::from(shard)];
        slot.node = conn.handshake_info().cluster.node_id;
        slot.conn = Some(conn);
        slot.generation = self.next_generation;
        slot.stash.clear();
        self.next_generation += 1;
    }

    fn close(&mut self, shard: usize) {
        let slot = &mut self.slots[shard];
        slot.conn = None;
        slot.stash.clear();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.routes.seeds())
            .field("shard_count", &self.slots.len())
            .field("open", &self.slots.iter().filter(|s| s.conn.is_some()).count())
            .finish()
    }
}

/// A final error after an attempt that was lost with the request sent: the
/// answer may be about the lost attempt's doing (a delete whose handle it
/// already spent), so say so.
fn annotated(e: ClientError, lost_on: Option<u64>) -> ClientError {
    match (e, lost_on) {
        (ClientError::Server { code, message }, Some(node)) => ClientError::Server {
            code,
            message: format!(
                "{message} (after a retry: an earlier attempt was sent to node {node}, whose connection was lost \
                 before the answer; that attempt may have been applied)"
            ),
        },
        (e, _) => e,
    }
}

/// How long the broker may hold `req` before answering: a receive without
/// an explicit wait uses the queue's pollingWaitSeconds, which can be up to
/// the protocol maximum.
fn hold_seconds(req: &Request) -> u32 {
    match req {
        Request::ReceiveMessage(r) => r.polling_wait_seconds.unwrap_or(POLLING_WAIT_SECONDS_MAX),
        Request::BatchReceiveMessage(r) => r.polling_wait_seconds.unwrap_or(POLLING_WAIT_SECONDS_MAX),
        _ => 0,
    }
}
