//! A follower's HTTP port serves the whole cluster: a request (CMQ API or
//! the console's JSON API) whose shard this node does not lead is run by
//! the leader and the leader's answer returned, so an SDK pointed at any
//! node works.
//!
//! The request runs here first, through the shard bridge as always; only
//! when the shard answers NOT_LEADER naming a leader (nothing ran) is the
//! same `Request` sent to the leader's client port as a binary-protocol
//! client authenticated as the HTTP caller's key ([`conn`]), over a bounded
//! pool of connections per leader ([`pool`]). No queue semantics live
//! here: the leader runs the request as it runs any client's, checking the
//! key's policy again; its answer frame is returned unchanged.
//!
//! Hops, within the request's own deadline (long polls included):
//! * the leader answers NOT_LEADER naming another node (leadership moved
//!   mid-request): one more hop to that node (run here if it is this
//!   node); its answer is final, whatever it is. The leader never forwards
//!   again (its client port answers NOT_LEADER to the connection), so
//!   there are no loops.
//! * the leader answers NOT_LEADER naming no one (it stepped down and the
//!   election is under way: a leadership transfer ends a parked long poll
//!   so, nothing having run): wait up to [`FORWARD_ELECTION_WAIT`] for
//!   this node to learn the new leader, then run it here or take the one
//!   more hop to it (a long poll goes on waiting there).
//! * the connection fails after the request was written: sends and
//!   publishes (which always carry idempotency keys when forwarded, so
//!   the leader stores a repeat once) ask this node's shard again and take
//!   one more hop to the leader it names now (or run here); any other
//!   request is answered "outcome unknown" (6000).
//! * the leader cannot be reached (nothing sent): NOT_LEADER (6000) at once.
//!
//! Where the client ports serve TLS (`--tls-cert`) the connections are TLS
//! too, trusting `--forward-tls-ca` or `--peer-tls-ca` ([`tls`]); a node
//! with neither does not forward: the answer stays the NOT_LEADER that
//! names the leader (counted as `off`).
//!
//! Each forwarded request counts once in `cmq_http_forwarded_total` by how
//! it ended ([`Outcome`]); `cmq_http_forward_connections` is the pools'
//! open connections.

mod conn;
pub mod pool;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cmq_protocol::cluster::parse_leader_hint;
use cmq_protocol::frame::{FLAG_ERROR, HEADER_BYTES};
use cmq_protocol::names::shard_for;
use cmq_protocol::{ErrorBody, ErrorCode, Request, Route};
use tokio::time::Instant;

use self::conn::{Dialer, Identity, Lost, OpenError};
use self::pool::Pool;
use self::tls::Setup;
use super::{HttpContext, Unanswered};
use crate::shard::external::Viewer;

/// Bytes of the idempotency key given to a forwarded send that has none
/// (as the Rust client: 16 random bytes; unique enough never to collide
/// within a queue's dedup window).
pub const FORWARD_IDEMPOTENCY_KEY_BYTES: usize = 16;

/// Leaders (client addresses) this node keeps pools for. A cluster has a
/// handful of nodes; past this, pools with no connection are dropped.
pub const FORWARD_LEADERS_MAX: usize = 64;

/// Longest wait for a leader's TCP connection and opening exchange, so
/// an unreachable leader (a partition drops packets) answers promptly
/// instead of at the request's deadline.
pub const FORWARD_OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a request waits for this node to learn a new leader after the
/// old one answered that it stepped down with no successor known: about
/// an election (a transfer's takes a few Raft ticks; one after a failure
/// about a second). Past it the caller gets the 6000 "retry".
pub const FORWARD_ELECTION_WAIT: Duration = Duration::from_secs(2);

/// How often that wait looks at the shard's published leader.
pub const FORWARD_ELECTION_POLL: Duration = Duration::from_millis(10);

const _: () = assert!(FORWARD_IDEMPOTENCY_KEY_BYTES <= cmq_protocol::limits::IDEMPOTENCY_KEY_BYTES_MAX);

/// The pools, by leader client address, and the counts the metrics show.
pub struct Forwarder {
    pools: Mutex<BTreeMap<String, Arc<Pool>>>,
    mode: Mode,
    dialer: Dialer,
    /// By [`Outcome`], in [`OUTCOMES`]' order.
    outcomes: [AtomicU64; OUTCOMES.len()],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No cluster: every request runs here.
    Alone,
    /// Forwarded (plaintext or TLS, as the dialer says).
    On,
    /// A TLS node without a CA: a leader named is not followed.
    Off,
}

/// How a forwarded request ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A leader's answer (whatever it says) was returned, after one or two
    /// hops (or served here, where leadership came back to this node).
    Answered,
    /// The leader refused the connection as the caller (its key unknown
    /// or rotated there): that refusal was returned.
    Refused,
    /// No connection to the leader in time (nothing was sent): 6000.
    Unreachable,
    /// Sent, and no answer came back: 6000, the outcome unknown.
    Lost,
    /// The request's own deadline passed while it was forwarded.
    TimedOut,
    /// Not forwarded: TLS client ports and no CA (6000 naming the leader).
    Off,
}

/// The `outcome` label values, in [`Outcome`]'s order.
pub const OUTCOMES: [&str; 6] = ["answered", "refused", "unreachable", "lost", "timed_out", "off"];

/// A leader as a NOT_LEADER answer names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Leader {
    id: u64,
    addr: String,
}

/// What one hop to a leader came to.
enum Hop {
    Answer(Bytes),
    /// The leader refused the connection: its refusal.
    Refused(Bytes),
    /// No connection: nothing was sent; the answer saying so.
    Unreachable(Bytes),
    /// The request was sent and no answer came: the outcome is unknown.
    Lost(Leader, String),
}

/// Runs `request` on the shard that owns it, here or, where another node
/// leads that shard, on the leader (see the module's comment). `within`:
/// the whole request's time, every hop included.
pub async fn execute(
    ctx: &HttpContext,
    request: Request,
    viewer: Viewer,
    within: Duration,
) -> Result<Bytes, Unanswered> {
    let forwarder = &ctx.forward;
    if forwarder.mode != Mode::On {
        let frame = ctx.bridge.execute(&ctx.shared.external, request, viewer, within).await?;
        if forwarder.mode == Mode::Off && leader_named(&frame).is_some() {
            forwarder.count(Outcome::Off);
        }
        return Ok(frame);
    }
    let deadline = Instant::now() + within;
    let spare = request.clone();
    let frame = ctx.bridge.execute(&ctx.shared.external, request, viewer.clone(), within).await?;
    let Some(leader) = leader_named(&frame) else { return Ok(frame) };
    let ended = forward(ctx, leader, with_idempotency_keys(spare), &viewer, deadline).await;
    forwarder.count(ended.as_ref().map_or(Outcome::TimedOut, |(outcome, _)| *outcome));
    ended.map(|(_, answer)| answer)
}

/// Sends `request` to `leader`, and once more where the module's comment
/// says; the answer and how it ended.
async fn forward(
    ctx: &HttpContext,
    leader: Leader,
    request: Request,
    viewer: &Viewer,
    deadline: Instant,
) -> Result<(Outcome, Bytes), Unanswered> {
    let next = match hop(ctx, &leader, &request, viewer, deadline).await? {
        Hop::Answer(answer) => match leader_named(&answer) {
            Some(next) if next.id != leader.id => next,
            None if error_code(&answer) == Some(ErrorCode::NOT_LEADER) => {
                // It stepped down and knows no successor yet (a transfer
                // ends its long polls so): nothing ran there.
                let again = after_election(ctx, &request, viewer, &leader, deadline).await?;
                match leader_named(&again) {
                    Some(next) => next,
                    None => return Ok((Outcome::Answered, again)),
                }
            }
            _ => return Ok((Outcome::Answered, answer)),
        },
        Hop::Lost(leader, why) if is_send(&request) => {
            // Ask this node again who leads (or serve it, if it now does).
            let again = local(ctx, request.clone(), viewer, deadline).await?;
            match leader_named(&again) {
                Some(next) if next.id != leader.id => next,
                // Served here (this node leads now), or refused for another reason.
                _ if error_code(&again) != Some(ErrorCode::NOT_LEADER) => return Ok((Outcome::Answered, again)),
                // No new leader known yet.
                _ => return Ok((Outcome::Lost, lost(&request, &leader, &why))),
            }
        }
        other => return Ok(ended(other, &request)),
    };
    if next.id == ctx.shared.cfg.node_id {
        return Ok((Outcome::Answered, local(ctx, request, viewer, deadline).await?));
    }
    Ok(ended(hop(ctx, &next, &request, viewer, deadline).await?, &request))
}

/// Waits until this node knows a leader of the request's shard other
/// than `old` (at most [`FORWARD_ELECTION_WAIT`], within the deadline),
/// then runs the request here: served where this node leads now, else the
/// NOT_LEADER naming the leader (or naming none, when the wait ran out).
async fn after_election(
    ctx: &HttpContext,
    request: &Request,
    viewer: &Viewer,
    old: &Leader,
    deadline: Instant,
) -> Result<Bytes, Unanswered> {
    if let Some(slot) = shard_of(ctx, request).and_then(|s| ctx.shared.leaders.get(usize::from(s))) {
        let until = deadline.min(Instant::now() + FORWARD_ELECTION_WAIT);
        // Nothing announces a new leader to this thread: look every few ms.
        let unknown = || matches!(slot.0.load(Ordering::Relaxed), id if id == 0 || id == old.id);
        while unknown() && Instant::now() + FORWARD_ELECTION_POLL <= until {
            tokio::time::sleep(FORWARD_ELECTION_POLL).await;
        }
    }
    local(ctx, request.clone(), viewer, deadline).await
}

/// A last hop's answer and outcome.
fn ended(hop: Hop, request: &Request) -> (Outcome, Bytes) {
    match hop {
        Hop::Answer(answer) => (Outcome::Answered, answer),
        Hop::Refused(answer) => (Outcome::Refused, answer),
        Hop::Unreachable(answer) => (Outcome::Unreachable, answer),
        Hop::Lost(leader, why) => (Outcome::Lost, lost(request, &leader, &why)),
    }
}

/// Runs `request` on this node's shard within what is left of the deadline.
async fn local(ctx: &HttpContext, request: Request, viewer: &Viewer, deadline: Instant) -> Result<Bytes, Unanswered> {
    let left = deadline.saturating_duration_since(Instant::now());
    ctx.bridge.execute(&ctx.shared.external, request, viewer.clone(), left).await
}

/// Sends `request` to `leader` over a pooled connection, within `deadline`.
async fn hop(
    ctx: &HttpContext,
    leader: &Leader,
    request: &Request,
    viewer: &Viewer,
    deadline: Instant,
) -> Result<Hop, Unanswered> {
    let pool = ctx.forward.pool(&leader.addr);
    let identity = Identity { secret_id: viewer.as_ref().map(|p| p.secret_id.clone()), shard: shard_of(ctx, request) };
    let open_by = deadline.min(Instant::now() + FORWARD_OPEN_TIMEOUT);
    let mut lease = match tokio::time::timeout_at(open_by, pool.lease(identity, viewer)).await {
        Err(_) if open_by < deadline => {
            return Ok(Hop::Unreachable(unreachable(request, leader, "no connection in time")))
        }
        Err(_) => return Err(Unanswered::TimedOut),
        Ok(Err(OpenError::Refused(e))) => return Ok(Hop::Refused(error_frame(request, &e))),
        Ok(Err(OpenError::Io(why))) => return Ok(Hop::Unreachable(unreachable(request, leader, &why))),
        Ok(Ok(lease)) => lease,
    };
    // Timed out, the lease is dropped: the connection closes, which the
    // leader takes as a client gone (a parked long poll is released).
    match tokio::time::timeout_at(deadline, lease.conn.call(request)).await {
        Err(_) => Err(Unanswered::TimedOut),
        Ok(Err(Lost(why))) => Ok(Hop::Lost(leader.clone(), why)),
        Ok(Ok(answer)) => {
            pool.give_back(lease);
            Ok(Hop::Answer(answer))
        }
    }
}

impl Forwarder {
    /// How this node forwards, from its settings (reads the TLS files: an
    /// error stops cmqd at start). Where forwarding is off, says why once.
    pub fn new(cfg: &crate::config::Config) -> anyhow::Result<Forwarder> {
        let (mode, tls) = match Setup::from_config(cfg)? {
            Setup::Alone => (Mode::Alone, None),
            Setup::Plain => (Mode::On, None),
            Setup::Tls(connector) => (Mode::On, Some(connector)),
            Setup::Off(why) => {
                log::warn!(target: "cmq::http", "not forwarding to shard leaders: {why}");
                (Mode::Off, None)
            }
        };
        let dialer = Dialer { tls, ..Dialer::default() };
        Ok(Forwarder { pools: Mutex::default(), mode, dialer, outcomes: Default::default() })
    }

    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Forwarded requests by outcome label, for `/metrics`.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES.iter().zip(&self.outcomes).map(|(label, n)| (*label, n.load(Ordering::Relaxed))).collect()
    }

    /// Connections to leaders open now (in use and idle), for `/metrics`.
    pub fn open_connections(&self) -> u64 {
        self.dialer.open.load(Ordering::Relaxed)
    }

    /// The pool for the leader at `addr`.
    fn pool(&self, addr: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get(addr) {
            return p.clone();
        }
        if pools.len() >= FORWARD_LEADERS_MAX {
            pools.retain(|_, p| !p.is_unused());
        }
        let dialer = &self.dialer;
        pools.entry(addr.to_owned()).or_insert_with(|| Arc::new(Pool::new(addr.to_owned(), dialer.clone()))).clone()
    }
}

/// The queue's shard, as the leader numbers it (every node runs the same
/// number of shards: Raft group k is shard k everywhere).
fn shard_of(ctx: &HttpContext, request: &Request) -> Option<u16> {
    let n = ctx.bridge.shard_count() as u16;
    match request.route() {
        Route::Queue(q) => Some(shard_for(q, n)),
        Route::Shard(s) if s < n => Some(s),
        _ => None,
    }
}

/// The leader a NOT_LEADER answer names; None for any other answer, and
/// for a NOT_LEADER that knows no leader (an election is under way: that
/// answer goes to the caller at once).
fn leader_named(frame: &[u8]) -> Option<Leader> {
    let e = error_of(frame).filter(|e| e.code() == ErrorCode::NOT_LEADER)?;
    parse_leader_hint(&e.message).map(|(id, addr)| Leader { id, addr: addr.to_owned() })
}

/// The error an answer frame carries, if it is an error.
fn error_of(frame: &[u8]) -> Option<ErrorBody> {
    if frame.len() < HEADER_BYTES || frame[6] & FLAG_ERROR == 0 {
        return None;
    }
    ErrorBody::decode_payload(Bytes::copy_from_slice(&frame[HEADER_BYTES..])).ok()
}

fn error_code(frame: &[u8]) -> Option<ErrorCode> {
    error_of(frame).map(|e| e.code())
}

fn is_send(request: &Request) -> bool {
    matches!(
        request,
        Request::SendMessage(_)
            | Request::BatchSendMessage(_)
            | Request::PublishMessage(_)
            | Request::BatchPublishMessage(_)
    )
}

/// `request` with an idempotency key on every message that has none, so
/// that a send repeated on another hop is stored once.
fn with_idempotency_keys(mut request: Request) -> Request {
    match &mut request {
        Request::SendMessage(r) => fill_key(&mut r.idempotency_key),
        Request::PublishMessage(r) => fill_key(&mut r.idempotency_key),
        Request::BatchSendMessage(r) => fill_keys(&mut r.idempotency_keys, r.bodies.len()),
        Request::BatchPublishMessage(r) => fill_keys(&mut r.idempotency_keys, r.bodies.len()),
        _ => {}
    }
    request
}

fn fill_keys(keys: &mut Vec<Bytes>, messages: usize) {
    keys.resize(messages, Bytes::new());
    keys.iter_mut().for_each(fill_key);
}

fn fill_key(key: &mut Bytes) {
    if key.is_empty() {
        let mut k = [0u8; FORWARD_IDEMPOTENCY_KEY_BYTES];
        // Without OS randomness (never seen on Linux), the key stays
        // empty: the send is forwarded without the repeat guard.
        if getrandom::fill(&mut k).is_ok() {
            *key = Bytes::copy_from_slice(&k);
        }
    }
}

/// An error answer frame for `request`, as a shard would encode it.
fn error_frame(request: &Request, e: &ErrorBody) -> Bytes {
    let mut out = Vec::new();
    e.encode_frame(request.opcode() as u16, 0, &mut out);
    Bytes::from(out)
}

/// The leader could not be reached: nothing was sent.
fn unreachable(request: &Request, leader: &Leader, why: &str) -> Bytes {
    let msg = format!("node {} leads this shard but could not be reached from this node ({why}); retry", leader.id);
    error_frame(request, &ErrorBody::new(ErrorCode::NOT_LEADER, msg))
}

/// The request went to the leader and no answer came back.
fn lost(request: &Request, leader: &Leader, why: &str) -> Bytes {
    let msg = format!("forwarded to node {}, which did not answer ({why}); the outcome is unknown", leader.id);
    error_frame(request, &ErrorBody::new(ErrorCode::NOT_LEADER, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmq_protocol::{BatchSendMessage, SendMessage};

    fn not_leader(message: &str) -> Bytes {
        error_frame(&Request::SendMessage(SendMessage::default()), &ErrorBody::new(ErrorCode::NOT_LEADER, message))
    }

    #[test]
    fn only_a_not_leader_that_names_a_leader_is_followed() {
        let hint = cmq_protocol::cluster::not_leader_message(1, Some((2, "127.0.0.1:7702")));
        assert_eq!(leader_named(&not_leader(&hint)), Some(Leader { id: 2, addr: "127.0.0.1:7702".into() }));
        let election = cmq_protocol::cluster::not_leader_message(1, None);
        assert_eq!(leader_named(&not_leader(&election)), None, "no leader known: answered at once");
        let other = error_frame(&Request::SendMessage(SendMessage::default()), &ErrorBody::new(ErrorCode::BUSY, &hint));
        assert_eq!(leader_named(&other), None, "only NOT_LEADER");
        let mut ok = Vec::new();
        cmq_protocol::Response::SendMessage(cmq_protocol::SendMessageOk { msg_id: 1 }).encode_frame(0, &mut ok);
        assert_eq!(leader_named(&ok), None);
        assert_eq!(leader_named(&ok[..HEADER_BYTES - 1]), None, "a short frame is no hint");
    }

    #[test]
    fn each_outcome_has_its_label() {
        let all =
            [Outcome::Answered, Outcome::Refused, Outcome::Unreachable, Outcome::Lost, Outcome::TimedOut, Outcome::Off];
        let labels: Vec<&str> = all.iter().map(|o| OUTCOMES[*o as usize]).collect();
        assert_eq!(labels, OUTCOMES, "in the enum's order");
    }

    #[test]
    fn forwarded_sends_carry_a_key_per_message_and_keep_given_ones() {
        let given = Bytes::from_static(b"mine");
        let one = with_idempotency_keys(Request::SendMessage(SendMessage {
            idempotency_key: given.clone(),
            ..Default::default()
        }));
        assert!(matches!(one, Request::SendMessage(ref r) if r.idempotency_key == given));
        let none = with_idempotency_keys(Request::SendMessage(SendMessage::default()));
        assert!(
            matches!(none, Request::SendMessage(ref r) if r.idempotency_key.len() == FORWARD_IDEMPOTENCY_KEY_BYTES)
        );
        let bodies = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b"), Bytes::from_static(b"c")];
        let batch =
            BatchSendMessage { bodies, idempotency_keys: vec![Bytes::new(), given.clone()], ..Default::default() };
        let Request::BatchSendMessage(b) = with_idempotency_keys(Request::BatchSendMessage(batch)) else { panic!() };
        assert_eq!(b.idempotency_keys.len(), 3, "one per body");
        assert_eq!(b.idempotency_keys[1], given);
        assert!(b.idempotency_keys[0] != b.idempotency_keys[2] && b.idempotency_keys[2].len() == 16, "fresh, distinct");
    }
}
