//! A fake broker on 127.0.0.1:0 for tests: real sockets, one thread per
//! connection, each driven by a test-supplied script, plus a tiny in-memory
//! broker for tests that need working queues.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod cli;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame;
use cmq_protocol::ops::REDRIVE_ID_SHARD_SHIFT;
use cmq_protocol::*;

/// How long a server thread waits on a silent client before giving up, so a
/// broken test fails instead of hanging.
pub const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long test clients wait on a silent server.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Serves every accepted connection on its own thread with `script`.
    pub fn start(script: impl Fn(Peer) + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let acceptor = {
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let script = script.clone();
                    thread::spawn(move || script(Peer::new(stream)));
                }
            })
        };
        FakeServer { addr, stop, acceptor: Some(acceptor) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor out of accept() so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// The server side of one connection.
pub struct Peer {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        stream.set_read_timeout(Some(SERVER_READ_TIMEOUT)).expect("set timeout");
        stream.set_nodelay(true).expect("nodelay");
        Peer { stream, buf: BytesMut::new() }
    }

    /// The next request, or None when the client closed the connection.
    pub fn read_request(&mut self) -> Option<(u64, Request)> {
        let (id, _, req) = self.read_frame()?;
        Some((id, req.expect("client sent a decodable request")))
    }

    /// The next frame's request id, opcode and decoded request (or why it
    /// does not decode, which a broker answers like any refusal), or None
    /// when the client closed the connection.
    pub fn read_frame(&mut self) -> Option<(u64, u16, Result<Request, DecodeError>)> {
        loop {
            if let Some(total) = frame::check(&self.buf).expect("client sent a valid length") {
                let (header, payload) = frame::split(&mut self.buf, total);
                return Some((header.request_id, header.opcode, Request::decode(header.opcode, payload)));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads the handshake and accepts it; returns what the client sent.
    pub fn accept_handshake(&mut self, shard_count: u16, shard_id: u16) -> Handshake {
        let (id, req) = self.read_request().expect("a handshake");
        let Request::Handshake(hello) = req else { panic!("first frame was {:?}", req.opcode()) };
        let ok = HandshakeOk {
            version: 1,
            server: "fake-cmqd/0".into(),
            shard_count,
            shard_id,
            frame_bytes_max: limits::FRAME_BYTES_MAX,
        };
        self.respond(id, &Response::Handshake(ok));
        hello
    }

    pub fn respond(&mut self, id: u64, resp: &Response) {
        let mut out = Vec::new();
        resp.encode_frame(id, &mut out);
        self.write_raw(&out);
    }

    pub fn respond_error(&mut self, id: u64, opcode: Opcode, code: ErrorCode, message: &str) {
        let mut out = Vec::new();
        ErrorBody::new(code, message).encode_frame(opcode as u16, id, &mut out);
        self.write_raw(&out);
    }

    /// Sends `req` as a PUSH frame (request id 0).
    pub fn push(&mut self, req: &Request) {
        self.write_raw(&push_frame(req));
    }

    /// Best effort: the client may already have gone, which some tests intend.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }
}

/// A response frame as bytes, for tests that batch or cut frames.
pub fn response_frame(id: u64, resp: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    resp.encode_frame(id, &mut out);
    out
}

/// A push frame as bytes.
pub fn push_frame(req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode_push(&mut out);
    out
}

/// A TransactionCheck push for `msg_id`.
pub fn check(queue: &str, msg_id: u64, group: &str) -> Request {
    Request::TransactionCheck(TransactionCheck {
        queue: queue.into(),
        msg_id,
        producer_group: group.into(),
        check_count: 1,
        enqueue_time_ms: 1_700_000_000_000,
        body: Bytes::from_static(b"half"),
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Polls `cond` until it holds or `CLIENT_TIMEOUT` passes; panics naming `what`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A working in-memory broker: enough of the semantics for client and CLI
/// tests. No long polling (an empty queue answers NO_MESSAGE at once),
/// visibility timeouts and delays are real, dead-lettering is by
/// maxReceiveCount only, transaction checks are pushed when the test calls
/// [`FakeBroker::ask_checkers`], and a running redrive moves `rate` messages
/// (all if 0) each time redrives are listed.
#[derive(Default)]
pub struct BrokerState {
    shard_count: u16,
    queues: Vec<FakeQueue>,
    next_queue_id: u64,
    next_msg_id: u64,
    next_handle: u128,
    next_conn: u64,
    /// Every request with a queue or shard route, as it arrived.
    pub routed: Vec<Routed>,
    /// Every EndTransaction accepted: (msgId, commit).
    pub ended: Vec<(u64, bool)>,
    checkers: Vec<CheckerConn>,
    redrives: Vec<FakeRedrive>,
    topics: Vec<FakeTopic>,
    next_topic_id: u64,
    next_subscription_id: u64,
    /// Every HTTP push the fake would have made (it makes none), in publish order.
    pub pushed: Vec<FakePush>,
}

/// A topic; deliveries happen during the publish, so nothing is ever pending.
struct FakeTopic {
    info: TopicInfo,
    subscriptions: Vec<SubscriptionInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePush {
    pub subscription: String,
    pub url: String,
    pub msg_id: u64,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The shard the connection asked for in its handshake.
    pub hint: Option<u16>,
    /// The shard the broker said serves the connection.
    pub shard: u16,
    pub op: Opcode,
    /// The queue of a queue-routed request, else empty.
    pub queue: String,
    /// The shard a shard-routed request (CancelRedrive) names.
    pub to_shard: Option<u16>,
}

/// One connection as the fake broker sees it.
struct ConnCtx {
    id: u64,
    hint: Option<u16>,
    shard: u16,
    /// Replies and pushes (from other connections' threads) share it.
    writer: Arc<Mutex<TcpStream>>,
}

struct CheckerConn {
    conn: u64,
    group: String,
    writer: Arc<Mutex<TcpStream>>,
}

struct FakeQueue {
    info: QueueInfo,
    /// Every message ever enqueued, in enqueue order, with its state.
    messages: Vec<Stored>,
}

#[derive(Clone)]
struct Stored {
    id: u64,
    body: Bytes,
    enqueue_ms: u64,
    first_dequeue_ms: u64,
    dequeues: u32,
    state: MessageState,
    handle: Option<ReceiptHandle>,
    /// In flight or delayed: when it becomes receivable.
    next_visible_ms: u64,
    state_ms: u64,
    detail: String,
    origin: Option<MessageOrigin>,
    /// Half messages: the producer group and how often it was asked.
    group: String,
    checks: u32,
}

impl Stored {
    fn new(id: u64, body: Bytes, now: u64) -> Stored {
        Stored {
            id,
            body,
            enqueue_ms: now,
            first_dequeue_ms: 0,
            dequeues: 0,
            state: MessageState::Ready,
            handle: None,
            next_visible_ms: 0,
            state_ms: 0,
            detail: String::new(),
            origin: None,
            group: String::new(),
            checks: 0,
        }
    }

    /// In flight and delayed messages whose time has come count as ready.
    fn state_at(&self, now: u64) -> MessageState {
        match self.state {
            MessageState::InFlight | MessageState::Delayed if self.next_visible_ms <= now => MessageState::Ready,
            s => s,
        }
    }
}

struct FakeRedrive {
    info: RedriveInfo,
    /// Message ids still to move, oldest first.
    pending: VecDeque<u64>,
}

pub struct FakeBroker {
    pub server: FakeServer,
    pub state: Arc<Mutex<BrokerState>>,
}

impl FakeBroker {
    /// `shard_of_hint` decides which shard the broker claims to serve a
    /// connection from, given the client's hint.
    pub fn start(shard_count: u16, shard_of_hint: fn(Option<u16>) -> u16) -> FakeBroker {
        let state = Arc::new(Mutex::new(BrokerState {
            shard_count,
            next_msg_id: 1 << 56,
            next_handle: 1000,
            ..Default::default()
        }));
        let shared = state.clone();
        let server = FakeServer::start(move |mut peer| {
            // The wake-up connection made when the server is dropped sends nothing.
            let Some((id, Request::Handshake(hello))) = peer.read_request() else { return };
            let shard = shard_of_hint(hello.shard_hint);
            let ok = HandshakeOk {
                version: 1,
                server: "fake-cmqd/0".into(),
                shard_count,
                shard_id: shard,
                frame_bytes_max: 0,
            };
            peer.respond(id, &Response::Handshake(ok));
            let writer = Arc::new(Mutex::new(peer.stream.try_clone().expect("clone stream")));
            let conn = {
                let mut state = shared.lock().expect("state lock");
                state.next_conn += 1;
                ConnCtx { id: state.next_conn, hint: hello.shard_hint, shard, writer: writer.clone() }
            };
            while let Some((id, opcode, req)) = peer.read_frame() {
                // As the broker: a well-delimited frame that does not decode is answered, not fatal.
                let result = req
                    .map_err(|e| (e.code(), e.to_string()))
                    .and_then(|req| shared.lock().expect("state lock").handle(&conn, req));
                let mut out = Vec::new();
                match result {
                    Ok(resp) => resp.encode_frame(id, &mut out),
                    Err((code, message)) => ErrorBody::new(code, message).encode_frame(opcode, id, &mut out),
                }
                let _ = writer.lock().expect("writer lock").write_all(&out);
            }
            // A checker's registration ends with its connection.
            shared.lock().expect("state lock").checkers.retain(|c| c.conn != conn.id);
        });
        FakeBroker { server, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Pushes a TransactionCheck for every half message to a checker
    /// registered for its producer group, as if firstQueryInterval had
    /// passed. Returns how many checks were pushed.
    pub fn ask_checkers(&self) -> usize {
        let mut state = self.state.lock().expect("state lock");
        let state = &mut *state;
        let mut pushed = 0;
        for q in &mut state.queues {
            for m in q.messages.iter_mut().filter(|m| m.state == MessageState::Half) {
                let Some(checker) = state.checkers.iter().find(|c| c.group == m.group) else { continue };
                m.checks += 1;
                let check = Request::TransactionCheck(TransactionCheck {
                    queue: q.info.queue.clone(),
                    msg_id: m.id,
                    producer_group: m.group.clone(),
                    check_count: m.checks,
                    enqueue_time_ms: m.enqueue_ms,
                    body: m.body.clone(),
                });
                let _ = checker.writer.lock().expect("writer lock").write_all(&push_frame(&check));
                pushed += 1;
            }
        }
        pushed
    }

    /// Producer groups with a registered checker connection.
    pub fn checker_groups(&self) -> Vec<String> {
        self.state.lock().expect("state lock").checkers.iter().map(|c| c.group.clone()).collect()
    }

    /// The state of message `msg_id` in `queue`, if it exists.
    pub fn message_state(&self, queue: &str, msg_id: u64) -> Option<MessageState> {
        let mut state = self.state.lock().expect("state lock");
        let q = state.queue(queue).ok()?;
        q.messages.iter().find(|m| m.id == msg_id).map(|m| m.state_at(now_ms()))
    }
}

type Failure = (ErrorCode, String);
type Outcome = Result<Response, Failure>;

fn invalid(message: impl Into<String>) -> Failure {
    (ErrorCode::INVALID_PARAMETER, message.into())
}

impl BrokerState {
    fn queue(&mut self, name: &str) -> Result<&mut FakeQueue, Failure> {
        self.queues
            .iter_mut()
            .find(|q| q.info.queue == name)
            .ok_or_else(|| (ErrorCode::QUEUE_NOT_FOUND, format!("queue {name:?} does not exist")))
    }

    fn exists(&self, name: &str) -> bool {
        self.queues.iter().any(|q| q.info.queue == name)
    }

    fn handle(&mut self, conn: &ConnCtx, req: Request) -> Outcome {
        let (queue, to_shard) = match req.route() {
            Route::Queue(q) => (Some(q.to_owned()), None),
            Route::Shard(s) => (Some(String::new()), Some(s)),
            Route::Any => (None, None),
        };
        if let Some(queue) = queue {
            self.routed.push(Routed { hint: conn.hint, shard: conn.shard, op: req.opcode(), queue, to_shard });
        }
        let now = now_ms();
        match req {
            Request::Handshake(_) => Err(invalid("second handshake")),
            Request::Ping(_) => Ok(Response::Ping(Empty {})),
            Request::CreateQueue(r) => {
                names::validate_name("queueName", &r.queue).map_err(invalid)?;
                if self.exists(&r.queue) {
                    return Err((ErrorCode::QUEUE_ALREADY_EXISTS, format!("queue {:?} exists", r.queue)));
                }
                let attributes =
                    QueueAttributes::defaults(FlushPolicy::Sync).updated(&r.attributes).map_err(invalid)?;
                self.check_dead_letter_target(&r.queue, &attributes)?;
                self.next_queue_id += 1;
                let info = QueueInfo {
                    queue_id: self.next_queue_id,
                    queue: r.queue,
                    attributes,
                    create_time_ms: now,
                    last_modify_time_ms: now,
                    shard: conn.shard,
                    ..Default::default()
                };
                self.queues.push(FakeQueue { info, messages: Vec::new() });
                Ok(Response::CreateQueue(CreateQueueOk { queue_id: self.next_queue_id }))
            }
            Request::DeleteQueue(r) => {
                self.queue(&r.queue)?;
                if let Some(user) = self.queues.iter().find(|q| q.info.attributes.dead_letter_queue == r.queue) {
                    return Err((
                        ErrorCode::QUEUE_IN_USE,
                        format!("queue {:?} is the dead-letter queue of {:?}", r.queue, user.info.queue),
                    ));
                }
                self.queues.retain(|q| q.info.queue != r.queue);
                Ok(Response::DeleteQueue(Empty {}))
            }
            Request::ListQueues(r) => {
                let matching: Vec<_> = self
                    .queues
                    .iter()
                    .filter(|q| q.info.queue.starts_with(&r.prefix) && q.info.queue.contains(&r.contains))
                    .collect();
                let limit = if r.limit == 0 { limits::LIST_PAGE_DEFAULT } else { r.limit } as usize;
                let queues = matching
                    .iter()
                    .skip(r.offset as usize)
                    .take(limit)
                    .map(|q| QueueSummary { queue_id: q.info.queue_id, queue: q.info.queue.clone() })
                    .collect();
                Ok(Response::ListQueues(ListQueuesOk { total: matching.len() as u32, queues }))
            }
            Request::GetQueueAttributes(r) => {
                let q = self.queue(&r.queue)?;
                let mut info = q.info.clone();
                for m in &q.messages {
                    match m.state_at(now) {
                        MessageState::Ready => info.active_msg_num += 1,
                        MessageState::InFlight => info.inactive_msg_num += 1,
                        MessageState::Delayed => info.delay_msg_num += 1,
                        MessageState::Deleted => info.rewind_msg_num += 1,
                        _ => continue,
                    }
                    if m.state != MessageState::Deleted
                        && (info.min_msg_time_ms == 0 || m.enqueue_ms < info.min_msg_time_ms)
                    {
                        info.min_msg_time_ms = m.enqueue_ms;
                    }
                }
                Ok(Response::GetQueueAttributes(info))
            }
            Request::SetQueueAttributes(r) => {
                let q = self.queue(&r.queue)?;
                let attributes = q.info.attributes.updated(&r.attributes).map_err(invalid)?;
                self.check_dead_letter_target(&r.queue, &attributes)?;
                let q = self.queue(&r.queue)?;
                q.info.attributes = attributes;
                q.info.last_modify_time_ms = now;
                Ok(Response::SetQueueAttributes(q.info.clone()))
            }
            Request::SendMessage(r) => {
                let id = self.enqueue(&r.queue, vec![r.body], r.delay_seconds, now)?;
                Ok(Response::SendMessage(SendMessageOk { msg_id: id[0] }))
            }
            Request::BatchSendMessage(r) => {
                let msg_ids = self.enqueue(&r.queue, r.bodies, r.delay_seconds, now)?;
                Ok(Response::BatchSendMessage(BatchSendMessageOk { msg_ids }))
            }
            Request::ReceiveMessage(r) => {
                let mut got = self.dequeue(&r.queue, 1, now)?;
                Ok(Response::ReceiveMessage(got.remove(0)))
            }
            Request::BatchReceiveMessage(r) => {
                let messages = self.dequeue(&r.queue, r.max_messages as usize, now)?;
                Ok(Response::BatchReceiveMessage(BatchReceiveMessageOk { messages }))
            }
            Request::DeleteMessage(r) => {
                let q = self.queue(&r.queue)?;
                delete(q, r.receipt_handle, now).ok_or_else(invalid_handle)?;
                Ok(Response::DeleteMessage(Empty {}))
            }
            Request::BatchDeleteMessage(r) => {
                let q = self.queue(&r.queue)?;
                let results = r
                    .receipt_handles
                    .iter()
                    .map(|h| match delete(q, *h, now) {
                        Some(()) => ItemResult { code: 0, message: String::new() },
                        None => ItemResult {
                            code: ErrorCode::RECEIPT_HANDLE_INVALID.0,
                            message: "handle invalid or expired".into(),
                        },
                    })
                    .collect();
                Ok(Response::BatchDeleteMessage(BatchDeleteMessageOk { results }))
            }
            Request::ChangeMessageVisibility(r) => {
                let q = self.queue(&r.queue)?;
                let m = leased(q, r.receipt_handle, now).ok_or_else(invalid_handle)?;
                m.next_visible_ms = now + u64::from(r.visibility_timeout) * 1000;
                Ok(Response::ChangeMessageVisibility(ChangeMessageVisibilityOk {
                    receipt_handle: r.receipt_handle,
                    next_visible_time_ms: m.next_visible_ms,
                }))
            }
            Request::RewindQueue(r) => {
                if r.start_consume_time_ms > now {
                    return Err(invalid("startConsumeTime: in the future"));
                }
                let q = self.queue(&r.queue)?;
                let mut rewound = 0;
                for m in q.messages.iter_mut().filter(|m| m.enqueue_ms >= r.start_consume_time_ms) {
                    match m.state {
                        MessageState::Deleted => rewound += 1,
                        MessageState::InFlight => {}
                        _ => continue,
                    }
                    m.state = MessageState::Ready;
                    m.handle = None;
                }
                Ok(Response::RewindQueue(RewindQueueOk { rewound }))
            }
            Request::PeekMessages(r) => {
                if r.max == 0 || usize::from(r.max) > limits::PEEK_MSGS_MAX {
                    return Err(invalid(format!("max: {} is out of range 1..=100", r.max)));
                }
                let q = self.queue(&r.queue)?;
                let peekable = |m: &Stored| {
                    matches!(
                        m.state,
                        MessageState::Ready
                            | MessageState::Delayed
                            | MessageState::InFlight
                            | MessageState::Half
                            | MessageState::Deleted
                    )
                };
                // The cursor is a position in the queue's history.
                let start = r.cursor as usize;
                let mut messages = Vec::new();
                let mut next_cursor = 0;
                for (i, m) in q.messages.iter().enumerate().skip(start).filter(|(_, m)| peekable(m)) {
                    if messages.len() == usize::from(r.max) {
                        next_cursor = i as u64;
                        break;
                    }
                    messages.push(PeekedMessage {
                        msg_id: m.id,
                        state: m.state_at(now),
                        enqueue_time_ms: m.enqueue_ms,
                        first_dequeue_time_ms: m.first_dequeue_ms,
                        dequeue_count: m.dequeues,
                        next_visible_time_ms: if m.state_at(now) == MessageState::Ready {
                            0
                        } else {
                            m.next_visible_ms
                        },
                        body_len: m.body.len() as u32,
                        body: if r.include_body { m.body.clone() } else { Bytes::new() },
                        origin: m.origin.clone(),
                    });
                }
                Ok(Response::PeekMessages(PeekMessagesOk { messages, next_cursor }))
            }
            Request::QueryMessage(r) => {
                let q = self.queue(&r.queue)?;
                let m = q.messages.iter().find(|m| m.id == r.msg_id).ok_or_else(|| {
                    (ErrorCode::MESSAGE_NOT_FOUND, format!("no message {} in queue {:?}", r.msg_id, r.queue))
                })?;
                Ok(Response::QueryMessage(MessageStatus {
                    msg_id: m.id,
                    state: m.state_at(now),
                    enqueue_time_ms: m.enqueue_ms,
                    first_dequeue_time_ms: m.first_dequeue_ms,
                    dequeue_count: m.dequeues,
                    next_visible_time_ms: m.next_visible_ms,
                    state_time_ms: m.state_ms,
                    detail: m.detail.clone(),
                    origin: m.origin.clone(),
                }))
            }
            Request::PurgeQueue(r) => {
                let q = self.queue(&r.queue)?;
                let mut purged = 0;
                for m in &mut q.messages {
                    if matches!(
                        m.state,
                        MessageState::Ready | MessageState::Delayed | MessageState::InFlight | MessageState::Half
                    ) {
                        m.state = MessageState::Purged;
                        m.state_ms = now;
                        m.handle = None;
                        purged += 1;
                    }
                }
                Ok(Response::PurgeQueue(PurgeQueueOk { purged }))
            }
            Request::SendTransactionMessage(r) => {
                names::validate_name("producerGroup", &r.producer_group).map_err(invalid)?;
                let id = self.enqueue(&r.queue, vec![r.body], 0, now)?[0];
                let q = self.queue(&r.queue)?;
                let m = q.messages.last_mut().expect("just enqueued");
                m.state = MessageState::Half;
                m.group = r.producer_group;
                Ok(Response::SendTransactionMessage(SendMessageOk { msg_id: id }))
            }
            Request::EndTransaction(r) => {
                let q = self.queue(&r.queue)?;
                let m = q.messages.iter_mut().find(|m| m.id == r.msg_id && m.state == MessageState::Half).ok_or_else(
                    || (ErrorCode::MESSAGE_NOT_FOUND, format!("no half message {} in queue {:?}", r.msg_id, r.queue)),
                )?;
                m.state = if r.commit { MessageState::Ready } else { MessageState::RolledBack };
                m.state_ms = now;
                self.ended.push((r.msg_id, r.commit));
                Ok(Response::EndTransaction(Empty {}))
            }
            Request::RegisterChecker(r) => {
                names::validate_name("producerGroup", &r.producer_group).map_err(invalid)?;
                self.checkers.push(CheckerConn { conn: conn.id, group: r.producer_group, writer: conn.writer.clone() });
                Ok(Response::RegisterChecker(Empty {}))
            }
            Request::TransactionCheck(_) => Err(invalid("TransactionCheck is pushed by the broker, not sent to it")),
            Request::StartRedrive(r) => {
                let dlq = self.queue(&r.dead_letter_queue)?;
                let pending: VecDeque<u64> =
                    dlq.messages.iter().filter(|m| m.state_at(now) == MessageState::Ready).map(|m| m.id).collect();
                if !r.to.is_empty() {
                    self.queue(&r.to)?;
                }
                let shard = names::shard_for(&r.dead_letter_queue, self.shard_count);
                let id = (u64::from(shard) << REDRIVE_ID_SHARD_SHIFT) | (self.redrives.len() as u64 + 1);
                let info = RedriveInfo {
                    id,
                    dead_letter_queue: r.dead_letter_queue,
                    to: r.to,
                    rate_per_second: r.rate_per_second,
                    state: if pending.is_empty() { RedriveState::Done } else { RedriveState::Running },
                    moved: 0,
                    remaining: pending.len() as u64,
                    failed: 0,
                    started_ms: now,
                    finished_ms: if pending.is_empty() { now } else { 0 },
                    note: String::new(),
                };
                self.redrives.push(FakeRedrive { info: info.clone(), pending });
                Ok(Response::StartRedrive(info))
            }
            Request::ListRedrives(_) => {
                self.advance_redrives(now);
                let redrives = self.redrives.iter().map(|r| r.info.clone()).collect();
                Ok(Response::ListRedrives(ListRedrivesOk { redrives }))
            }
            Request::CancelRedrive(r) => {
                let task = self
                    .redrives
                    .iter_mut()
                    .find(|t| t.info.id == r.id)
                    .ok_or_else(|| (ErrorCode::REDRIVE_NOT_FOUND, format!("no redrive task {}", r.id)))?;
                if task.info.state == RedriveState::Running {
                    task.info.state = RedriveState::Cancelled;
                    task.info.finished_ms = now;
                }
                Ok(Response::CancelRedrive(task.info.clone()))
            }
            Request::CreateTopic(r) => {
                names::validate_name("topicName", &r.topic).map_err(invalid)?;
                if self.topics.iter().any(|t| t.info.topic == r.topic) {
                    return Err((ErrorCode::TOPIC_ALREADY_EXISTS, format!("topic {:?} exists", r.topic)));
                }
                let a = &r.attributes;
                let max_msg_size = in_range(&topics::TOPIC_MAX_MSG_SIZE, a.max_msg_size)?;
                let retention = in_range(&topics::TOPIC_MSG_RETENTION_SECONDS, a.msg_retention_seconds)?;
                self.next_topic_id += 1;
                let info = TopicInfo {
                    topic_id: self.next_topic_id,
                    topic: r.topic,
                    max_msg_size,
                    msg_retention_seconds: retention,
                    filter_type: a.filter_type.unwrap_or_default(),
                    create_time_ms: now,
                    last_modify_time_ms: now,
                    msg_count: 0,
                    subscription_count: 0,
                    shard: conn.shard,
                };
                self.topics.push(FakeTopic { info, subscriptions: Vec::new() });
                Ok(Response::CreateTopic(CreateTopicOk { topic_id: self.next_topic_id }))
            }
            Request::DeleteTopic(r) => {
                self.topic(&r.topic)?;
                self.topics.retain(|t| t.info.topic != r.topic);
                Ok(Response::DeleteTopic(Empty {}))
            }
            Request::ListTopics(r) => {
                let matching: Vec<_> = self
                    .topics
                    .iter()
                    .filter(|t| t.info.topic.starts_with(&r.prefix) && t.info.topic.contains(&r.contains))
                    .collect();
                let topics = page(&matching, r.offset, r.limit)
                    .map(|t| TopicSummary { topic_id: t.info.topic_id, topic: t.info.topic.clone() })
                    .collect();
                Ok(Response::ListTopics(ListTopicsOk { total: matching.len() as u32, topics }))
            }
            Request::GetTopicAttributes(r) => Ok(Response::GetTopicAttributes(self.topic(&r.topic)?.info())),
            Request::SetTopicAttributes(r) => {
                let t = self.topic(&r.topic)?;
                if let Some(size) = r.max_msg_size {
                    t.info.max_msg_size = in_range(&topics::TOPIC_MAX_MSG_SIZE, Some(size))?;
                }
                t.info.last_modify_time_ms = now;
                Ok(Response::SetTopicAttributes(t.info()))
            }
            Request::PublishMessage(r) => {
                let ids = self.publish(&r.topic, vec![r.body], &r.tags.0, &r.routing_key, now)?;
                Ok(Response::PublishMessage(PublishMessageOk { msg_id: ids[0] }))
            }
            Request::BatchPublishMessage(r) => {
                let msg_ids = self.publish(&r.topic, r.bodies, &r.tags.0, &r.routing_key, now)?;
                Ok(Response::BatchPublishMessage(BatchPublishMessageOk { msg_ids }))
            }
            Request::Subscribe(r) => {
                names::validate_name("subscriptionName", &r.subscription).map_err(invalid)?;
                let scheme = match r.protocol {
                    SubscriptionProtocol::Queue => {
                        self.queue(&r.endpoint)?;
                        ""
                    }
                    SubscriptionProtocol::Http => "http://",
                    SubscriptionProtocol::Https => "https://",
                };
                if !r.endpoint.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)) {
                    return Err(invalid(format!("endpoint: {:?} is not an {scheme} URL", r.endpoint)));
                }
                check_filters(&r.filter_tags.0, &r.binding_keys.0)?;
                if !r.dead_letter_queue.is_empty() {
                    self.queue(&r.dead_letter_queue)?;
                }
                self.next_subscription_id += 1;
                let id = self.next_subscription_id;
                let push_secret = if r.protocol == SubscriptionProtocol::Queue {
                    String::new()
                } else {
                    format!("{:016x}", id.wrapping_mul(0x9e37_79b9_7f4a_7c15)).repeat(4)
                };
                let t = self.topic(&r.topic)?;
                if t.subscriptions.iter().any(|s| s.subscription == r.subscription) {
                    return Err((
                        ErrorCode::SUBSCRIPTION_ALREADY_EXISTS,
                        format!("subscription {:?} exists on topic {:?}", r.subscription, r.topic),
                    ));
                }
                t.subscriptions.push(SubscriptionInfo {
                    subscription_id: id,
                    topic: r.topic,
                    subscription: r.subscription,
                    protocol: r.protocol,
                    endpoint: r.endpoint,
                    notify_strategy: r.notify_strategy,
                    notify_content_format: r.notify_content_format,
                    filter_tags: r.filter_tags,
                    binding_keys: r.binding_keys,
                    dead_letter_queue: r.dead_letter_queue,
                    push_secret: push_secret.clone(),
                    create_time_ms: now,
                    last_modify_time_ms: now,
                    ..Default::default()
                });
                Ok(Response::Subscribe(SubscribeOk { subscription_id: id, push_secret }))
            }
            Request::Unsubscribe(r) => {
                let t = self.topic(&r.topic)?;
                subscription(t, &r.subscription)?;
                t.subscriptions.retain(|s| s.subscription != r.subscription);
                Ok(Response::Unsubscribe(Empty {}))
            }
            Request::ListSubscriptions(r) => {
                let t = self.topic(&r.topic)?;
                let matching: Vec<_> =
                    t.subscriptions.iter().filter(|s| s.subscription.contains(&r.contains)).collect();
                let subscriptions = page(&matching, r.offset, r.limit)
                    .map(|s| SubscriptionSummary {
                        subscription_id: s.subscription_id,
                        subscription: s.subscription.clone(),
                        protocol: s.protocol,
                        endpoint: s.endpoint.clone(),
                    })
                    .collect();
                Ok(Response::ListSubscriptions(ListSubscriptionsOk { total: matching.len() as u32, subscriptions }))
            }
            Request::GetSubscriptionAttributes(r) => {
                let t = self.topic(&r.topic)?;
                Ok(Response::GetSubscriptionAttributes(subscription(t, &r.subscription)?.clone()))
            }
            Request::SetSubscriptionAttributes(r) => {
                let t = self.topic(&r.topic)?;
                let s = subscription(t, &r.subscription)?;
                let tags = r.filter_tags.unwrap_or_else(|| s.filter_tags.clone());
                let keys = r.binding_keys.unwrap_or_else(|| s.binding_keys.clone());
                check_filters(&tags.0, &keys.0)?;
                s.filter_tags = tags;
                s.binding_keys = keys;
                s.notify_strategy = r.notify_strategy.unwrap_or(s.notify_strategy);
                s.notify_content_format = r.notify_content_format.unwrap_or(s.notify_content_format);
                s.last_modify_time_ms = now;
                Ok(Response::SetSubscriptionAttributes(s.clone()))
            }
            Request::ClearSubscriptionFilterTags(r) => {
                let t = self.topic(&r.topic)?;
                let s = subscription(t, &r.subscription)?;
                s.filter_tags = StrList::default();
                s.last_modify_time_ms = now;
                Ok(Response::ClearSubscriptionFilterTags(Empty {}))
            }
        }
    }

    fn topic(&mut self, name: &str) -> Result<&mut FakeTopic, Failure> {
        self.topics
            .iter_mut()
            .find(|t| t.info.topic == name)
            .ok_or_else(|| (ErrorCode::TOPIC_NOT_FOUND, format!("topic {name:?} does not exist")))
    }

    /// Checks and fans out at once: every matching queue subscription gets
    /// the bodies enqueued (skipped if its queue is gone), every matching
    /// HTTP one is recorded in `pushed`.
    fn publish(
        &mut self,
        topic: &str,
        bodies: Vec<Bytes>,
        tags: &[String],
        routing_key: &str,
        now: u64,
    ) -> Result<Vec<u64>, Failure> {
        if bodies.is_empty() || bodies.len() > limits::BATCH_MSGS_MAX {
            return Err((ErrorCode::BATCH_TOO_LARGE, format!("{} messages", bodies.len())));
        }
        let max = self.topic(topic)?.info.max_msg_size as usize;
        if let Some(b) = bodies.iter().find(|b| b.is_empty() || b.len() > max) {
            return Err((ErrorCode::MESSAGE_TOO_LARGE, format!("msgBody: {} bytes, 1-{max} allowed", b.len())));
        }
        if let Some(t) = tags.iter().find(|t| t.is_empty() || t.chars().count() > TAG_CHARS_MAX) {
            return Err(invalid(format!("msgTag: {t:?} must be 1-{TAG_CHARS_MAX} characters")));
        }
        if routing_key.split('.').count() > ROUTING_WORDS_MAX {
            return Err(invalid(format!("routingKey: more than {ROUTING_WORDS_MAX} words")));
        }
        let first = self.next_msg_id;
        self.next_msg_id += bodies.len() as u64;
        let ids: Vec<u64> = (first..self.next_msg_id).collect();
        let t = self.topics.iter_mut().find(|t| t.info.topic == topic).expect("checked above");
        let filter = t.info.filter_type;
        let mut into_queues = Vec::new();
        for s in t.subscriptions.iter_mut().filter(|s| matches(filter, s, tags, routing_key)) {
            s.delivered += bodies.len() as u64;
            for (id, body) in ids.iter().zip(&bodies) {
                if s.protocol == SubscriptionProtocol::Queue {
                    into_queues.push((s.endpoint.clone(), body.clone()));
                } else {
                    self.pushed.push(FakePush {
                        subscription: s.subscription.clone(),
                        url: s.endpoint.clone(),
                        msg_id: *id,
                        body: body.clone(),
                    });
                }
            }
        }
        for (queue, body) in into_queues {
            let _ = self.enqueue(&queue, vec![body], 0, now);
        }
        Ok(ids)
    }

    fn check_dead_letter_target(&self, queue: &str, a: &QueueAttributes) -> Result<(), Failure> {
        if a.dead_letter_queue == queue {
            return Err(invalid("deadLetterQueueName: a queue cannot be its own dead-letter queue"));
        }
        if a.has_dead_letter() && !self.exists(&a.dead_letter_queue) {
            return Err((ErrorCode::QUEUE_NOT_FOUND, format!("queue {:?} does not exist", a.dead_letter_queue)));
        }
        Ok(())
    }

    fn enqueue(&mut self, queue: &str, bodies: Vec<Bytes>, delay: u32, now: u64) -> Result<Vec<u64>, Failure> {
        if bodies.is_empty() || bodies.len() > limits::BATCH_MSGS_MAX {
            return Err((ErrorCode::BATCH_TOO_LARGE, format!("{} messages", bodies.len())));
        }
        let first = self.next_msg_id;
        self.next_msg_id += bodies.len() as u64;
        let q = self.queue(queue)?;
        let mut ids = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let id = first + i as u64;
            let mut m = Stored::new(id, body, now);
            if delay > 0 {
                m.state = MessageState::Delayed;
                m.next_visible_ms = now + u64::from(delay) * 1000;
            }
            q.messages.push(m);
            ids.push(id);
        }
        Ok(ids)
    }

    /// Hands out up to `max` receivable messages; one received
    /// maxReceiveCount times already goes to the dead-letter queue instead.
    fn dequeue(&mut self, queue: &str, max: usize, now: u64) -> Result<Vec<ReceivedMessage>, Failure> {
        let a = self.queue(queue)?.info.attributes.clone();
        let dlq = (a.has_dead_letter() && a.max_receive_count > 0 && self.exists(&a.dead_letter_queue))
            .then_some(a.dead_letter_queue);
        let mut handle = self.next_handle;
        let q = self.queue(queue)?;
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for m in &mut q.messages {
            if out.len() == max {
                break;
            }
            if m.state_at(now) != MessageState::Ready {
                continue;
            }
            if let Some(dlq) = dlq.as_ref().filter(|_| m.dequeues >= a.max_receive_count) {
                let mut moved = m.clone();
                moved.origin = Some(m.origin.clone().unwrap_or(MessageOrigin {
                    source_queue: queue.to_owned(),
                    original_msg_id: m.id,
                    first_enqueue_time_ms: m.enqueue_ms,
                }));
                moved.state = MessageState::Ready;
                moved.handle = None;
                moved.enqueue_ms = now;
                dead.push(moved);
                m.state = MessageState::DeadLettered;
                m.state_ms = now;
                m.detail = dlq.clone();
                m.handle = None;
                continue;
            }
            handle += 1;
            m.dequeues += 1;
            if m.first_dequeue_ms == 0 {
                m.first_dequeue_ms = now;
            }
            m.state = MessageState::InFlight;
            m.handle = Some(ReceiptHandle(handle));
            m.next_visible_ms = now + u64::from(a.visibility_timeout) * 1000;
            out.push(ReceivedMessage {
                msg_id: m.id,
                receipt_handle: ReceiptHandle(handle),
                enqueue_time_ms: m.enqueue_ms,
                first_dequeue_time_ms: m.first_dequeue_ms,
                next_visible_time_ms: m.next_visible_ms,
                dequeue_count: m.dequeues,
                body: m.body.clone(),
                origin: m.origin.clone(),
            });
        }
        self.next_handle = handle;
        if let Some(dlq) = dlq {
            self.queue(&dlq)?.messages.extend(dead);
        }
        if out.is_empty() {
            return Err((ErrorCode::NO_MESSAGE, "no message".into()));
        }
        Ok(out)
    }

    /// Moves `rate_per_second` messages (all if 0) of every running redrive.
    fn advance_redrives(&mut self, now: u64) {
        for t in 0..self.redrives.len() {
            if self.redrives[t].info.state != RedriveState::Running {
                continue;
            }
            let rate = self.redrives[t].info.rate_per_second;
            let step = if rate == 0 { usize::MAX } else { rate as usize };
            for _ in 0..step {
                let Some(id) = self.redrives[t].pending.pop_front() else { break };
                let info = &self.redrives[t].info;
                let (dlq_name, to) = (info.dead_letter_queue.clone(), info.to.clone());
                let Ok(dlq) = self.queue(&dlq_name) else { break };
                let Some(m) = dlq.messages.iter_mut().find(|m| m.id == id && m.state == MessageState::Ready) else {
                    continue;
                };
                let target = if to.is_empty() { m.origin.as_ref().map(|o| o.source_queue.clone()) } else { Some(to) };
                // The receive count starts over: kept, a source queue's maxReceiveCount
                // would send the message straight back.
                let moved =
                    Stored { state: MessageState::Ready, enqueue_ms: now, handle: None, dequeues: 0, ..m.clone() };
                let target = target.filter(|t| self.exists(t));
                let task = &mut self.redrives[t].info;
                task.remaining -= 1;
                let Some(target) = target else {
                    task.failed += 1;
                    continue;
                };
                task.moved += 1;
                let dlq = self.queue(&dlq_name).expect("checked above");
                let m = dlq.messages.iter_mut().find(|m| m.id == id).expect("found above");
                m.state = MessageState::Redriven;
                m.state_ms = now;
                m.detail = target.clone();
                self.queue(&target).expect("exists").messages.push(moved);
            }
            let task = &mut self.redrives[t];
            if task.pending.is_empty() {
                task.info.state = RedriveState::Done;
                task.info.finished_ms = now;
            }
        }
    }
}

/// CMQ: a message tag or filter tag is at most 16 characters.
const TAG_CHARS_MAX: usize = 16;

/// CMQ: a routing or binding key has at most 16 dot-separated words.
const ROUTING_WORDS_MAX: usize = 16;

impl FakeTopic {
    fn info(&self) -> TopicInfo {
        TopicInfo { subscription_count: self.subscriptions.len() as u32, ..self.info.clone() }
    }
}

fn subscription<'a>(t: &'a mut FakeTopic, name: &str) -> Result<&'a mut SubscriptionInfo, Failure> {
    let topic = &t.info.topic;
    t.subscriptions
        .iter_mut()
        .find(|s| s.subscription == name)
        .ok_or_else(|| (ErrorCode::SUBSCRIPTION_NOT_FOUND, format!("no subscription {name:?} on topic {topic:?}")))
}

/// `value`, or the range's default when absent, if within the range.
fn in_range(range: &queue_attributes::AttrRange, value: Option<u32>) -> Result<u32, Failure> {
    let v = range.check(value.map_or(range.default, u64::from)).map_err(invalid)?;
    Ok(v as u32)
}

fn check_filters(tags: &[String], keys: &[String]) -> Result<(), Failure> {
    if let Some(t) = tags.iter().find(|t| t.is_empty() || t.chars().count() > TAG_CHARS_MAX) {
        return Err(invalid(format!("filterTag: {t:?} must be 1-{TAG_CHARS_MAX} characters")));
    }
    if let Some(k) = keys.iter().find(|k| k.is_empty() || k.split('.').count() > ROUTING_WORDS_MAX) {
        return Err(invalid(format!("bindingKey: {k:?} must be 1-{ROUTING_WORDS_MAX} words")));
    }
    Ok(())
}

/// One page of a listing; `limit` 0 is the default page.
fn page<'a, T>(items: &'a [&'a T], offset: u32, limit: u32) -> impl Iterator<Item = &'a T> {
    let limit = if limit == 0 { limits::LIST_PAGE_DEFAULT } else { limit } as usize;
    items.iter().copied().skip(offset as usize).take(limit)
}

/// CMQ §8, naively: no filter tags takes everything, else the tags must
/// meet; a binding key matches word by word, `*` one word, `#` one or more.
fn matches(filter: FilterType, s: &SubscriptionInfo, tags: &[String], routing_key: &str) -> bool {
    match filter {
        FilterType::Tag => s.filter_tags.0.is_empty() || s.filter_tags.0.iter().any(|t| tags.contains(t)),
        FilterType::RoutingKey => {
            let key: Vec<&str> = routing_key.split('.').collect();
            !routing_key.is_empty()
                && s.binding_keys.0.iter().any(|b| words_match(&b.split('.').collect::<Vec<_>>(), &key))
        }
    }
}

fn words_match(binding: &[&str], key: &[&str]) -> bool {
    match binding.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (1..=key.len()).any(|n| words_match(rest, &key[n..])),
        Some((&"*", rest)) => !key.is_empty() && words_match(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && words_match(rest, &key[1..]),
    }
}

/// The in-flight message `handle` leases, if it is still valid.
fn leased(q: &mut FakeQueue, handle: ReceiptHandle, now: u64) -> Option<&mut Stored> {
    q.messages.iter_mut().find(|m| m.handle == Some(handle) && m.state_at(now) == MessageState::InFlight)
}

fn delete(q: &mut FakeQueue, handle: ReceiptHandle, now: u64) -> Option<()> {
    let m = leased(q, handle, now)?;
    m.state = MessageState::Deleted;
    m.state_ms = now;
    m.handle = None;
    Some(())
}

fn invalid_handle() -> Failure {
    (ErrorCode::RECEIPT_HANDLE_INVALID, "handle invalid or expired".into())
}
