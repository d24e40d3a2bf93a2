//! A shard-aware set of connections to one broker.
//!
//! The broker runs one event loop per shard and forwards a request that
//! reaches the wrong shard, paying a cross-CPU wakeup (~65 µs here) per hop.
//! So the client keeps one connection per shard, opened lazily with a
//! `shard_hint`, and sends each queue's requests to the connection of
//! `names::shard_for(queue, shard_count)`. Where a request goes is the
//! protocol's decision, [`Request::route`]: a queue's shard, a shard named by
//! an id (a redrive id carries its shard in its top bits), or any shard.
//!
//! Requests go out as [`Ticket`]s: submit several (to any mix of queues),
//! [`Client::flush`] once, then [`Client::wait`] for each in any order.
//! Responses that arrive while waiting for another are stashed, so a long
//! poll in flight never holds up a later request's answer.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use cmq_protocol::limits::POLLING_WAIT_SECONDS_MAX;
use cmq_protocol::names::shard_for;
use cmq_protocol::{ErrorCode, HandshakeOk, Request, Response, Route};

use crate::connection::{Connection, Push};
use crate::error::ClientError;

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
    generation: u64,
    /// Responses read while waiting for another ticket of this connection.
    stash: HashMap<u64, Result<Response, ClientError>>,
}

/// Blocking client for one broker; see the crate docs for an example.
pub struct Client {
    addrs: Vec<SocketAddr>,
    timeout: Option<Duration>,
    info: HandshakeOk,
    /// The shard the first connection landed on; serves requests without a queue.
    home: u16,
    /// Indexed by shard id.
    slots: Vec<Slot>,
    next_generation: u64,
}

impl Client {
    /// Connects to the broker without timeouts (calls may block forever if
    /// the broker stops answering).
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Client::connect_with_timeout(addr, None)
    }

    /// Connects, bounding connect, writes and reads by `timeout`. A receive
    /// may additionally take as long as its polling wait.
    pub fn connect_with_timeout(addr: impl ToSocketAddrs, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let first = Connection::connect_with_timeout(&addrs[..], None, timeout)?;
        let info = first.handshake_info().clone();
        let shard_count = info.shard_count.max(1);
        // A broker reporting an impossible shard id still gets used: requests
        // reaching the wrong shard are forwarded, merely slower.
        let home = if info.shard_id < shard_count { info.shard_id } else { 0 };
        let mut client = Client {
            addrs,
            timeout,
            info,
            home,
            slots: (0..shard_count).map(|_| Slot::default()).collect(),
            next_generation: 1,
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
        match req.route() {
            Route::Queue(queue) => self.shard_of(queue),
            Route::Shard(shard) if shard < self.shard_count() => shard,
            Route::Shard(_) | Route::Any => self.any_open_shard(),
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

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Queues `req` on its shard's connection (opening it if needed). Nothing
    /// is sent until [`Client::flush`] or a [`Client::wait`] on that connection.
    pub fn submit(&mut self, req: &Request) -> Result<Ticket, ClientError> {
        let shard = self.shard_for_request(req);
        // A connection the broker closed while it sat idle (its idle
        // deadline) is replaced now rather than failing this request.
        if self.slots[usize::from(shard)].conn.as_mut().is_some_and(Connection::closed_while_idle) {
            self.close(usize::from(shard));
        }
        self.open(shard)?;
        let slot = &mut self.slots[usize::from(shard)];
        let Some(conn) = slot.conn.as_mut() else {
            return Err(ClientError::Disconnected);
        };
        let request_id = conn.submit(req);
        Ok(Ticket { shard, generation: slot.generation, request_id, hold_seconds: hold_seconds(req) })
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
    pub fn wait(&mut self, ticket: Ticket) -> Result<Response, ClientError> {
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
                self.close(shard);
                Err(e)
            }
        }
    }

    /// Sends one request and waits for its answer. If the broker closed the
    /// connection for being idle just as the request went out (IDLE_TIMEOUT:
    /// it closes only a connection with nothing unread, so the request was
    /// not run), it is sent once more on a new connection.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let ticket = self.submit(req)?;
        match self.wait(ticket) {
            Err(ClientError::Server { code, .. }) if code == ErrorCode::IDLE_TIMEOUT => {
                let ticket = self.submit(req)?;
                self.wait(ticket)
            }
            other => other,
        }
    }

    fn any_open_shard(&self) -> u16 {
        if self.slots[usize::from(self.home)].conn.is_some() {
            return self.home;
        }
        self.slots.iter().position(|s| s.conn.is_some()).map_or(self.home, |i| i as u16)
    }

    fn open(&mut self, shard: u16) -> Result<(), ClientError> {
        if self.slots[usize::from(shard)].conn.is_none() {
            let conn = Connection::connect_with_timeout(&self.addrs[..], Some(shard), self.timeout)?;
            // If the broker served us from another shard than asked, keep the
            // connection anyway: it forwards, and asking again would not help.
            self.install(shard, conn);
        }
        Ok(())
    }

    fn install(&mut self, shard: u16, conn: Connection) {
        let slot = &mut self.slots[usize::from(shard)];
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
            .field("addrs", &self.addrs)
            .field("shard_count", &self.slots.len())
            .field("open", &self.slots.iter().filter(|s| s.conn.is_some()).count())
            .finish()
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
