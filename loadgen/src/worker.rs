//! Producers and consumers: state machines that the event loop
//! (`driver.rs`) steps, one per connection.
//!
//! Each owns one pipelined connection to the shard that owns its queues and
//! keeps `pipeline` requests in flight on it. `step` submits what may go out
//! now and says when it next wants to be looked at; `answer` books one
//! answer. The loop calls `step` after every answer, so a window is refilled
//! as answers come in, and writes what was submitted once per wake-up: a
//! window's worth of requests usually costs one write and its answers one read.
//!
//! Hot-path cost per message: a 24-byte header write into a reused arena
//! and a refcount for its `Bytes` (producers); a header parse and, with
//! `--verify`, a 32-byte log entry (consumers). Requests are built once per
//! queue and refilled in place.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cmq_client::idempotency::random_keys;
use cmq_client::{id_map, ClientError, ErrorCode, IdMap, IdempotencyKey, ReceiptHandle, Reply, Request, Response};
use cmq_protocol::{BatchDeleteMessage, BatchReceiveMessage, BatchSendMessage, DeleteMessage, ReceiveMessage};
use cmq_protocol::{ReceivedMessage, SendMessage};

use crate::body::{self, BodyArena};
use crate::pipe::RawPipe;
use crate::schedule::Schedule;
use crate::stats::{Counters, ErrKey, ErrorCounts, Phase, Run};
use crate::verify::{AckSet, Delivery, FOREIGN};

/// How long a thread keeps collecting answers after it stopped sending
/// (on top of the receive wait): a broker that takes longer is stuck.
const WIND_DOWN: Duration = Duration::from_secs(15);

/// A producer that has stopped sending and heard nothing for this long sends
/// a Ping: a broker that only answers when new input arrives (a missed
/// wake-up) then releases the held answers, which are counted as "stalled".
const NUDGE_AFTER: Duration = Duration::from_secs(2);

/// How long a producer with nothing in flight waits while the backlog is full,
/// unless the event loop wakes for something else first (it then looks again).
const BACKLOG_PAUSE: Duration = Duration::from_micros(200);

/// What every worker needs to know about the run's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub pipeline: usize,
    pub batch: usize,
    pub size: usize,
    pub wait_s: u32,
    pub verify: bool,
    /// Producers pause while this many acknowledged messages are unreceived (0: never).
    pub backlog_max: u64,
    /// Every message carries a fresh idempotency key (`--no-idempotency-keys`: none).
    pub keys: bool,
}

/// What a thread hands back when it ends.
#[derive(Debug, Default)]
pub struct Outcome {
    pub errors: ErrorCounts,
    /// Producers with `--verify`: acknowledged counters.
    pub acks: Option<AckSet>,
    /// Consumers with `--verify`: every delivery.
    pub deliveries: Vec<Delivery>,
    /// Why the thread ended early (its connection broke), if it did.
    pub broken: Option<String>,
}

impl Outcome {
    fn error(&mut self, counters: &Counters, e: &ClientError) {
        *self.errors.entry(ErrKey::of(e)).or_default() += 1;
        counters.errors.fetch_add(1, Relaxed);
    }

    fn item_error(&mut self, counters: &Counters, code: u16) {
        *self.errors.entry(ErrKey::Code(code)).or_default() += 1;
        counters.errors.fetch_add(1, Relaxed);
    }

    /// Files an event that is not a failure of the run (a request resent
    /// to a new leader) with the errors, without counting it as one.
    fn note(&mut self, key: &'static str, n: u64) {
        *self.errors.entry(ErrKey::Other(key)).or_default() += n;
    }

    fn broke(&mut self, counters: &Counters, e: ClientError, what: &str) {
        self.error(counters, &e);
        self.broken = Some(format!("{what}: {e}"));
    }
}

/// One producer: its index (part of every message id), the shard it talks
/// to, its queues, how many messages it may send, and its pace.
pub struct ProducerSpec {
    pub index: u32,
    pub shard: u16,
    pub queues: Vec<String>,
    /// `None`: until the run says stop.
    pub budget: Option<u64>,
    /// Open loop (`--rate`): messages/s this producer offers. Its schedule
    /// starts once its connection is up.
    pub rate: Option<f64>,
}

/// One consumer: the shard it talks to and its queues.
pub struct ConsumerSpec {
    pub index: u32,
    pub shard: u16,
    pub queues: Vec<String>,
}

/// A connection's job, before it connects.
pub enum Job {
    Produce(ProducerSpec),
    Consume(ConsumerSpec),
}

impl Job {
    pub fn shard(&self) -> u16 {
        match self {
            Job::Produce(s) => s.shard,
            Job::Consume(s) => s.shard,
        }
    }

    /// Starts the job on its freshly connected pipe.
    pub fn start(self, shape: &Shape, run: &Run) -> Agent {
        match self {
            Job::Produce(spec) => Agent::Producer(Box::new(Producer::new(spec, shape, run))),
            Job::Consume(spec) => Agent::Consumer(Box::new(Consumer::new(spec, shape))),
        }
    }

    /// The outcome of a job whose connection could not be opened.
    pub fn failed(self, run: &Run, c: &Counters, e: ClientError) -> Finished {
        let mut out = Outcome::default();
        match self {
            Job::Produce(spec) => {
                out.broke(c, e, &format!("producer {} could not connect", spec.index));
                run.producers_done.fetch_add(1, Relaxed);
                Finished { producer: Some(spec.index), out }
            }
            Job::Consume(spec) => {
                out.broke(c, e, &format!("consumer {} could not connect", spec.index));
                Finished { producer: None, out }
            }
        }
    }
}

/// What a finished job hands back.
pub struct Finished {
    /// The producer's index, or `None` for a consumer.
    pub producer: Option<u32>,
    pub out: Outcome,
}

/// What a job wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Look at me again when an answer arrives, or at this instant at the
    /// latest (`None`: the loop's own sweep, a coarse interval, is enough).
    Wait(Option<Instant>),
    /// Nothing in flight and waiting for something another job changes (the
    /// backlog to shrink): look at me on every wake-up, and at this instant
    /// at the latest.
    Paused(Instant),
    /// Finished: nothing left in flight, or given up. The connection can go.
    Done,
    /// Nothing in flight, and the connection's node does not lead the
    /// shard: connect to the leader and carry on there.
    Reroute,
}

/// Requests refused with `NOT_LEADER` and sent again on the leader's
/// connection (filed with the errors, not counted as failures).
pub const REROUTED: &str = "not leader, resent";

/// Requests whose connection was lost with the answer outstanding: sends
/// that may or may not be stored (not counted as acknowledged; if they
/// were stored, --verify counts their deliveries as unacknowledged) and
/// deletes that may or may not have happened (the message comes back
/// after its lease if not).
pub const OUTCOME_UNKNOWN: &str = "outcome unknown (connection lost)";

/// A running job. Boxed: the loop keeps a small vector of them.
pub enum Agent {
    Producer(Box<Producer>),
    Consumer(Box<Consumer>),
}

impl Agent {
    pub fn step(&mut self, pipe: &mut RawPipe, run: &Run, c: &Counters) -> Step {
        match self {
            Agent::Producer(p) => p.step(pipe, run, c),
            Agent::Consumer(k) => k.step(pipe, run, c),
        }
    }

    pub fn answer(&mut self, pipe: &mut RawPipe, reply: Reply, run: &Run, c: &Counters) {
        match self {
            Agent::Producer(p) => p.answer(reply, run, c),
            Agent::Consumer(k) => k.answer(pipe, reply, run, c),
        }
    }

    /// The latest `NOT_LEADER` message an answer brought, for the router.
    pub fn take_not_leader(&mut self) -> Option<String> {
        match self {
            Agent::Producer(p) => p.not_leader.take(),
            Agent::Consumer(k) => k.not_leader.take(),
        }
    }

    /// The connection was lost: what was in flight is booked as such, and
    /// the job carries on once reconnected.
    pub fn lost(&mut self, run: &Run, c: &Counters, e: &ClientError) {
        match self {
            Agent::Producer(p) => p.lost(run, c, e),
            Agent::Consumer(k) => k.lost(run, c, e),
        }
    }

    /// A new connection (to the shard's leader, as far as known) is up.
    pub fn connected(&mut self) {
        match self {
            Agent::Producer(p) => p.rerouting = false,
            Agent::Consumer(k) => k.rerouting = false,
        }
    }

    /// Whether the job, without a connection, has nothing left to do.
    pub fn done_without_connection(&self, run: &Run) -> bool {
        match self {
            Agent::Producer(p) => run.phase() >= Phase::Stop || (p.budget == 0 && p.resend.is_empty()),
            Agent::Consumer(_) => run.phase() >= Phase::Stop,
        }
    }

    /// The connection broke: the job ends here.
    pub fn broke(&mut self, c: &Counters, e: ClientError) {
        match self {
            Agent::Producer(p) => p.out.broke(c, e, &format!("producer {}", p.spec.index)),
            Agent::Consumer(k) => k.out.broke(c, e, &format!("consumer {}", k.spec.index)),
        }
    }

    pub fn finish(self, run: &Run) -> Finished {
        match self {
            Agent::Producer(p) => {
                run.producers_done.fetch_add(1, Relaxed);
                Finished { producer: Some(p.spec.index), out: p.out }
            }
            Agent::Consumer(k) => Finished { producer: None, out: k.out },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SendPending {
    /// When the request was submitted, or was due (open loop).
    t0_ns: u64,
    seq_start: u64,
    count: u16,
    /// Index of its queue in the producer's list.
    queue: usize,
}

fn send_template(queue: &str, batch: usize) -> Request {
    if batch == 1 {
        Request::SendMessage(SendMessage {
            queue: queue.to_owned(),
            delay_seconds: 0,
            body: Bytes::new(),
            ..Default::default()
        })
    } else {
        Request::BatchSendMessage(BatchSendMessage {
            queue: queue.to_owned(),
            delay_seconds: 0,
            bodies: Vec::with_capacity(batch),
            ..Default::default()
        })
    }
}

pub struct Producer {
    spec: ProducerSpec,
    shape: Shape,
    out: Outcome,
    templates: Vec<Request>,
    next_queue: usize,
    arena: BodyArena,
    pending: IdMap<SendPending>,
    /// Counter of the next message (part of its id).
    seq: u64,
    /// Messages this producer may still send.
    budget: u64,
    /// Index of the next request in the open-loop schedule.
    next_k: u64,
    schedule: Option<Schedule>,
    wind_down: Option<Instant>,
    last_answer: Instant,
    /// Requests up to this id were in flight when the nudge went out.
    nudged_below: Option<u64>,
    /// Sends refused with `NOT_LEADER`, to go out again (same messages).
    resend: VecDeque<SendPending>,
    /// The connection's node does not lead the shard: send nothing more
    /// on it; reconnect once it has nothing in flight.
    rerouting: bool,
    not_leader: Option<String>,
}

impl Producer {
    fn new(spec: ProducerSpec, shape: &Shape, run: &Run) -> Producer {
        Producer {
            templates: spec.queues.iter().map(|q| send_template(q, shape.batch)).collect(),
            next_queue: 0,
            arena: BodyArena::new(shape.size, run.nonce),
            pending: id_map(shape.pipeline * 2),
            seq: 0,
            budget: spec.budget.unwrap_or(u64::MAX),
            next_k: 0,
            schedule: spec.rate.map(|r| Schedule::new(run.now_ns(), r, shape.batch)),
            wind_down: None,
            last_answer: Instant::now(),
            nudged_below: None,
            resend: VecDeque::new(),
            rerouting: false,
            not_leader: None,
            shape: *shape,
            out: Outcome { acks: shape.verify.then(AckSet::default), ..Outcome::default() },
            spec,
        }
    }

    fn step(&mut self, pipe: &mut RawPipe, run: &Run, c: &Counters) -> Step {
        if self.rerouting {
            return if pipe.in_flight() == 0 { Step::Reroute } else { Step::Wait(None) };
        }
        if run.phase() < Phase::Stop {
            while pipe.in_flight() < self.shape.pipeline {
                let Some(p) = self.resend.pop_front() else { break };
                self.submit_send(pipe, p);
            }
        }
        let shape = self.shape;
        let sending = run.phase() <= Phase::Measure && self.budget > 0;
        if sending && shape.backlog_max > 0 && run.backlog() > shape.backlog_max {
            // Consumers are behind: let them catch up before sending more.
            if pipe.in_flight() == 0 {
                return Step::Paused(Instant::now() + BACKLOG_PAUSE);
            }
        } else if sending {
            let now_ns = run.now_ns();
            let due = self.schedule.map_or(u64::MAX, |s| s.due_by(now_ns));
            while pipe.in_flight() < shape.pipeline && self.budget > 0 && self.next_k < due {
                let t0_ns = self.schedule.map_or(now_ns, |s| s.due_ns(self.next_k));
                let n = self.budget.min(shape.batch as u64);
                let queue = self.next_queue;
                self.next_queue = (self.next_queue + 1) % self.spec.queues.len();
                self.submit_send(pipe, SendPending { t0_ns, seq_start: self.seq, count: n as u16, queue });
                self.seq += n;
                self.budget -= n;
                self.next_k += 1;
            }
        } else {
            if pipe.in_flight() == 0 {
                return Step::Done;
            }
            let deadline = *self.wind_down.get_or_insert_with(|| Instant::now() + WIND_DOWN);
            if self.nudged_below.is_none() && self.last_answer.elapsed() >= NUDGE_AFTER {
                let id = pipe.submit(&Request::Ping(cmq_protocol::Ping {}));
                self.nudged_below = Some(id);
                self.pending.insert(id, SendPending { t0_ns: 0, seq_start: 0, count: 0, queue: 0 });
            }
            if Instant::now() >= deadline {
                self.out.error(c, &ClientError::Io(std::io::ErrorKind::TimedOut.into()));
                self.out.broken =
                    Some(format!("producer {}: {} sends unanswered at the end", self.spec.index, self.pending.len()));
                return Step::Done;
            }
        }
        // Open loop: wake for the next due request unless the window is full.
        match self.schedule {
            Some(s) if sending && pipe.in_flight() < shape.pipeline => {
                Step::Wait(Some(run.instant_at(s.due_ns(self.next_k))))
            }
            _ => Step::Wait(None),
        }
    }

    /// Encodes the messages `p` names (their bodies are a function of their
    /// counters and due time, so a resend carries the same messages).
    fn submit_send(&mut self, pipe: &mut RawPipe, p: SendPending) {
        let n = usize::from(p.count);
        let req = &mut self.templates[p.queue];
        self.arena.prepare(n);
        match req {
            Request::SendMessage(r) => {
                r.body = self.arena.body(body::message_id(self.spec.index, p.seq_start), p.t0_ns);
                if self.shape.keys {
                    r.idempotency_key = IdempotencyKey::random().to_bytes();
                }
            }
            Request::BatchSendMessage(r) => {
                for i in 0..n as u64 {
                    r.bodies.push(self.arena.body(body::message_id(self.spec.index, p.seq_start + i), p.t0_ns));
                }
                if self.shape.keys {
                    r.idempotency_keys = random_keys(n);
                }
            }
            _ => unreachable!("send templates are sends"),
        }
        let id = pipe.submit(req);
        // Drop the bodies now that they are encoded, so the arena reclaims its buffer.
        match req {
            Request::SendMessage(r) => r.body = Bytes::new(),
            Request::BatchSendMessage(r) => r.bodies.clear(),
            _ => {}
        }
        self.pending.insert(id, p);
    }

    fn lost(&mut self, run: &Run, c: &Counters, e: &ClientError) {
        self.out.error(c, e);
        let sends = self.pending.values().filter(|p| p.count > 0).count() as u64;
        self.out.note(OUTCOME_UNKNOWN, sends);
        if sends > 0 {
            run.uncertain.store(true, Relaxed);
        }
        self.pending.clear();
        self.nudged_below = None;
        self.rerouting = false;
    }

    fn answer(&mut self, (id, result): Reply, run: &Run, c: &Counters) {
        self.last_answer = Instant::now();
        let Some(p) = self.pending.remove(&id) else { return };
        if let Err(ClientError::Server { code, message }) = &result {
            if *code == ErrorCode::NOT_LEADER {
                // Not run: the same messages go to the leader.
                if p.count > 0 {
                    self.resend.push_back(p);
                    self.out.note(REROUTED, 1);
                }
                self.not_leader = Some(message.clone());
                self.rerouting = true;
                return;
            }
        }
        if let Some(nudge) = self.nudged_below {
            if id < nudge {
                *self.out.errors.entry(ErrKey::Other("stalled")).or_default() += 1;
            }
        }
        let acked = match result {
            Ok(Response::Ping(_)) => return,
            Ok(Response::SendMessage(_)) => p.count == 1,
            Ok(Response::BatchSendMessage(ok)) => ok.msg_ids.len() == usize::from(p.count),
            Ok(_) => false,
            Err(e) => return self.out.error(c, &e),
        };
        if !acked {
            return self.out.error(c, &ClientError::Protocol(String::new()));
        }
        let now_ns = run.now_ns();
        let n = u64::from(p.count);
        c.sent.fetch_add(n, Relaxed);
        run.acked_total.fetch_add(n, Relaxed);
        if let Some(acks) = self.out.acks.as_mut() {
            acks.mark(p.seq_start, n);
        }
        if let Ok(mut h) = c.hists.lock() {
            h.send_ack.saturating_record(now_ns.saturating_sub(p.t0_ns).max(1));
        }
    }
}

enum RecvPending {
    Receive,
    /// The delete of one receive's messages.
    Delete(PendingDelete),
}

/// A receive's messages being deleted.
struct PendingDelete {
    /// Deliveries `rec_start..rec_start + count` of the log (with --verify).
    rec_start: usize,
    count: usize,
    /// Their handles (to delete them again on the leader after a `NOT_LEADER`).
    handles: Vec<ReceiptHandle>,
    /// First deliveries of this run's messages among them, counted in
    /// `Run::first_deliveries` once the delete is answered: the run ends
    /// when every acknowledged message had its first delivery and reads
    /// its counts then, so a first counted at receive could miss its
    /// delete from them (`--http` had the same race, fixed in dfe7cf9).
    firsts: u64,
}

struct QueueReqs {
    receive: Request,
    delete: Request,
}

fn consumer_templates(queue: &str, shape: &Shape) -> QueueReqs {
    let wait = Some(shape.wait_s);
    if shape.batch == 1 {
        QueueReqs {
            receive: Request::ReceiveMessage(ReceiveMessage { queue: queue.to_owned(), polling_wait_seconds: wait }),
            delete: Request::DeleteMessage(DeleteMessage {
                queue: queue.to_owned(),
                receipt_handle: ReceiptHandle::default(),
            }),
        }
    } else {
        QueueReqs {
            receive: Request::BatchReceiveMessage(BatchReceiveMessage {
                queue: queue.to_owned(),
                max_messages: shape.batch as u16,
                polling_wait_seconds: wait,
            }),
            delete: Request::BatchDeleteMessage(BatchDeleteMessage {
                queue: queue.to_owned(),
                receipt_handles: Vec::with_capacity(shape.batch),
            }),
        }
    }
}

pub struct Consumer {
    spec: ConsumerSpec,
    shape: Shape,
    out: Outcome,
    reqs: Vec<QueueReqs>,
    pending: IdMap<(usize, RecvPending)>,
    next_queue: usize,
    wind_down: Option<Instant>,
    /// Deletes refused with `NOT_LEADER`, by queue, to make again on the leader.
    redelete: VecDeque<(usize, PendingDelete)>,
    rerouting: bool,
    not_leader: Option<String>,
}

impl Consumer {
    fn new(spec: ConsumerSpec, shape: &Shape) -> Consumer {
        Consumer {
            reqs: spec.queues.iter().map(|q| consumer_templates(q, shape)).collect(),
            pending: id_map(shape.pipeline * 2),
            next_queue: 0,
            wind_down: None,
            redelete: VecDeque::new(),
            rerouting: false,
            not_leader: None,
            shape: *shape,
            out: Outcome::default(),
            spec,
        }
    }

    fn step(&mut self, pipe: &mut RawPipe, run: &Run, c: &Counters) -> Step {
        if self.rerouting && run.phase() < Phase::Stop {
            return if pipe.in_flight() == 0 { Step::Reroute } else { Step::Wait(None) };
        }
        if run.phase() < Phase::Stop {
            while let Some((q, del)) = self.redelete.pop_front() {
                self.submit_delete(pipe, q, del);
            }
            while pipe.in_flight() < self.shape.pipeline {
                let q = self.next_queue;
                self.next_queue = (self.next_queue + 1) % self.reqs.len();
                let id = pipe.submit(&self.reqs[q].receive);
                self.pending.insert(id, (q, RecvPending::Receive));
            }
        } else {
            if pipe.in_flight() == 0 {
                return Step::Done;
            }
            let wait = Duration::from_secs(u64::from(self.shape.wait_s));
            let deadline = *self.wind_down.get_or_insert_with(|| Instant::now() + WIND_DOWN + wait);
            if Instant::now() >= deadline {
                self.out.error(c, &ClientError::Io(std::io::ErrorKind::TimedOut.into()));
                self.out.broken = Some(format!(
                    "consumer {}: {} requests unanswered at the end",
                    self.spec.index,
                    self.pending.len()
                ));
                return Step::Done;
            }
        }
        Step::Wait(None)
    }

    fn submit_delete(&mut self, pipe: &mut RawPipe, q: usize, pending: PendingDelete) {
        let del = &mut self.reqs[q].delete;
        match del {
            Request::DeleteMessage(r) => r.receipt_handle = pending.handles[0],
            Request::BatchDeleteMessage(r) => {
                r.receipt_handles.clear();
                r.receipt_handles.extend_from_slice(&pending.handles);
            }
            _ => unreachable!("delete templates are deletes"),
        }
        let id = pipe.submit(del);
        self.pending.insert(id, (q, RecvPending::Delete(pending)));
    }

    fn lost(&mut self, run: &Run, c: &Counters, e: &ClientError) {
        self.out.error(c, e);
        let (mut deletes, mut firsts) = (0, 0);
        for (_, what) in self.pending.values() {
            if let RecvPending::Delete(d) = what {
                deletes += 1;
                firsts += d.firsts;
            }
        }
        self.out.note(OUTCOME_UNKNOWN, deletes);
        // No answer will come: the first deliveries happened, whatever
        // became of their deletes.
        run.first_deliveries.fetch_add(firsts, Relaxed);
        if deletes < self.pending.len() as u64 {
            run.uncertain.store(true, Relaxed);
        }
        self.pending.clear();
        self.rerouting = false;
    }

    fn answer(&mut self, pipe: &mut RawPipe, (id, result): Reply, run: &Run, c: &Counters) {
        let Some((q, what)) = self.pending.remove(&id) else { return };
        if let Err(ClientError::Server { code, message }) = &result {
            if *code == ErrorCode::NOT_LEADER {
                // Not run: receives are asked again, deletes made again, on the leader.
                if let RecvPending::Delete(d) = what {
                    self.redelete.push_back((q, d));
                    self.out.note(REROUTED, 1);
                }
                self.not_leader = Some(message.clone());
                self.rerouting = true;
                return;
            }
        }
        let out = &mut self.out;
        match what {
            RecvPending::Receive => {
                let delivered: &[ReceivedMessage] = match &result {
                    Ok(Response::ReceiveMessage(m)) => std::slice::from_ref(m),
                    Ok(Response::BatchReceiveMessage(ok)) => &ok.messages,
                    Ok(_) => {
                        out.error(c, &ClientError::Protocol(String::new()));
                        &[]
                    }
                    Err(ClientError::Server { code, .. }) if *code == ErrorCode::NO_MESSAGE => {
                        c.empty_receives.fetch_add(1, Relaxed);
                        &[]
                    }
                    Err(e) => {
                        out.error(c, e);
                        &[]
                    }
                };
                if delivered.is_empty() {
                    return;
                }
                let rec_start = out.deliveries.len();
                let firsts = on_delivery(delivered, &self.shape, run, c, out);
                let handles: Vec<ReceiptHandle> = delivered.iter().map(|m| m.receipt_handle).collect();
                self.submit_delete(pipe, q, PendingDelete { rec_start, count: delivered.len(), handles, firsts });
            }
            RecvPending::Delete(PendingDelete { rec_start, count, firsts, .. }) => {
                let mut ok_items = 0u64;
                match result {
                    Ok(Response::DeleteMessage(_)) => {
                        ok_items = 1;
                        if let Some(d) = out.deliveries.get_mut(rec_start) {
                            d.deleted = true;
                        }
                    }
                    Ok(Response::BatchDeleteMessage(ok)) => {
                        for (i, item) in ok.results.iter().enumerate().take(count) {
                            if item.code == 0 {
                                ok_items += 1;
                                if let Some(d) = out.deliveries.get_mut(rec_start + i) {
                                    d.deleted = true;
                                }
                            } else {
                                out.item_error(c, item.code);
                            }
                        }
                    }
                    Ok(_) => out.error(c, &ClientError::Protocol(String::new())),
                    Err(e) => out.error(c, &e),
                }
                c.deleted.fetch_add(ok_items, Relaxed);
                // After the deleted count, Release: whoever sees the firsts
                // (the monitor, Acquire) sees the deletes too.
                run.first_deliveries.fetch_add(firsts, Release);
            }
        }
    }
}

/// Books a receive's messages: counts, end-to-end latency, the verify log.
/// Returns how many are first deliveries of this run's messages (counted
/// in the run once their delete is answered).
fn on_delivery(msgs: &[ReceivedMessage], shape: &Shape, run: &Run, c: &Counters, out: &mut Outcome) -> u64 {
    let now_ns = run.now_ns();
    let recv_ms =
        if shape.verify { SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64) } else { 0 };
    let mut firsts = 0;
    if let Ok(mut h) = c.hists.lock() {
        for m in msgs {
            let ours = body::parse(&m.body).filter(|h| h.nonce == run.nonce);
            if let Some(head) = ours {
                h.e2e.saturating_record(now_ns.saturating_sub(head.sent_ns).max(1));
                if m.dequeue_count == 1 {
                    firsts += 1;
                }
            }
            if shape.verify {
                out.deliveries.push(Delivery {
                    id: ours.map_or(FOREIGN, |h| h.id),
                    recv_ms,
                    lease_end_ms: m.next_visible_time_ms,
                    dequeue_count: m.dequeue_count,
                    deleted: false,
                });
            }
        }
    }
    c.received.fetch_add(msgs.len() as u64, Relaxed);
    firsts
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use cmq_protocol::Empty;

    use super::*;
    use crate::transport::Transport;

    const NONCE: u32 = 7;

    /// A consumer of one queue with two receives in flight, on a pipe to a
    /// socket nobody answers (the test hands it the answers), after one of
    /// them brought the first delivery of message 1 (its delete in flight).
    struct Fixture {
        k: Consumer,
        pipe: RawPipe,
        run: Run,
        c: Counters,
        _listener: TcpListener,
    }

    impl Fixture {
        fn with_a_first_delivery() -> Fixture {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let stream = Transport::Plain(TcpStream::connect(addr).expect("connect"));
            let shape = Shape { pipeline: 2, batch: 1, size: 64, wait_s: 0, verify: true, backlog_max: 0, keys: false };
            let spec = ConsumerSpec { index: 0, shard: 0, queues: vec!["q".to_owned()] };
            let mut f = Fixture {
                k: Consumer::new(spec, &shape),
                pipe: RawPipe::over(stream, addr).expect("pipe"),
                run: Run::new(NONCE, Phase::Measure),
                c: Counters::new(),
                _listener: listener,
            };
            f.k.step(&mut f.pipe, &f.run, &f.c);
            f.answer(false, delivery(1, 1));
            f
        }

        /// Answers the oldest receive (or delete) in flight.
        fn answer(&mut self, delete: bool, result: Result<Response, ClientError>) {
            let id = in_flight(&self.k, delete);
            self.k.answer(&mut self.pipe, (id, result), &self.run, &self.c);
        }

        /// (messages deleted, first deliveries counted)
        fn counts(&self) -> (u64, u64) {
            (self.c.deleted.load(Relaxed), self.run.first_deliveries.load(Relaxed))
        }
    }

    /// The id of the oldest receive (or delete) in flight.
    fn in_flight(k: &Consumer, delete: bool) -> u64 {
        let ids = k.pending.iter().filter(|(_, (_, what))| matches!(what, RecvPending::Delete(_)) == delete);
        *ids.map(|(id, _)| id).min().expect("one in flight")
    }

    /// A delivery of message `id` of this run, for the `dequeue_count`th time.
    fn delivery(id: u64, dequeue_count: u32) -> Result<Response, ClientError> {
        let body = BodyArena::new(64, NONCE).body(id, 1);
        Ok(Response::ReceiveMessage(ReceivedMessage { dequeue_count, body, ..Default::default() }))
    }

    /// A first delivery counts once its delete is answered, after the
    /// deleted count: a run that ends when every acknowledged message had
    /// its first delivery then reads every delete.
    #[test]
    fn a_first_delivery_counts_when_its_delete_is_answered() {
        let mut f = Fixture::with_a_first_delivery();
        assert_eq!(f.c.received.load(Relaxed), 1);
        assert_eq!(f.counts(), (0, 0), "not before its delete is answered");
        f.answer(true, Ok(Response::DeleteMessage(Empty {})));
        assert_eq!(f.counts(), (1, 1));
        assert!(f.k.out.deliveries[0].deleted);
        // A redelivery is no first delivery, deleted or not.
        f.answer(false, delivery(2, 2));
        f.answer(true, Err(ClientError::Server { code: ErrorCode::RECEIPT_HANDLE_INVALID, message: String::new() }));
        assert_eq!(f.counts(), (1, 1));
    }

    /// A connection lost with a delete in flight: no answer will come, the
    /// first delivery counts then.
    #[test]
    fn a_lost_delete_still_counts_its_first_delivery() {
        let mut f = Fixture::with_a_first_delivery();
        f.k.lost(&f.run, &f.c, &ClientError::Io(std::io::ErrorKind::ConnectionReset.into()));
        assert_eq!(f.counts(), (0, 1));
        assert!(f.run.uncertain.load(Relaxed), "the other receive, lost with it, makes the run uncertain");
    }
}
