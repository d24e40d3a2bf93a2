//! A fake broker on 127.0.0.1:0 for tests: real sockets, one thread per
//! connection, each driven by a test-supplied script, plus a tiny in-memory
//! broker for tests that need working queues.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame;
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
        loop {
            if let Some(total) = frame::check(&self.buf).expect("client sent a valid length") {
                let (header, payload) = frame::split(&mut self.buf, total);
                let req = Request::decode(header.opcode, payload).expect("client sent a decodable request");
                return Some((header.request_id, req));
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A working in-memory broker: enough of the semantics for client and CLI
/// tests (no long polling: an empty queue answers NO_MESSAGE at once).
#[derive(Default)]
pub struct BrokerState {
    queues: Vec<FakeQueue>,
    next_queue_id: u64,
    next_msg_id: u64,
    next_handle: u128,
    /// Every queue request as it arrived.
    pub routed: Vec<Routed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The shard the connection asked for in its handshake.
    pub hint: Option<u16>,
    /// The shard the broker said serves the connection.
    pub shard: u16,
    pub op: Opcode,
    pub queue: String,
}

struct FakeQueue {
    info: QueueInfo,
    ready: VecDeque<Stored>,
    leased: HashMap<ReceiptHandle, Stored>,
}

#[derive(Clone)]
struct Stored {
    id: u64,
    body: Bytes,
    enqueue_ms: u64,
    first_dequeue_ms: u64,
    dequeues: u32,
}

pub struct FakeBroker {
    pub server: FakeServer,
    pub state: Arc<Mutex<BrokerState>>,
}

impl FakeBroker {
    /// `shard_of_hint` decides which shard the broker claims to serve a
    /// connection from, given the client's hint.
    pub fn start(shard_count: u16, shard_of_hint: fn(Option<u16>) -> u16) -> FakeBroker {
        let state = Arc::new(Mutex::new(BrokerState { next_msg_id: 1 << 56, next_handle: 1000, ..Default::default() }));
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
            while let Some((id, req)) = peer.read_request() {
                let opcode = req.opcode();
                let result = shared.lock().expect("state lock").handle(hello.shard_hint, shard, req);
                match result {
                    Ok(resp) => peer.respond(id, &resp),
                    Err((code, message)) => peer.respond_error(id, opcode, code, &message),
                }
            }
        });
        FakeBroker { server, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

type Outcome = Result<Response, (ErrorCode, String)>;

impl BrokerState {
    fn queue(&mut self, name: &str) -> Result<&mut FakeQueue, (ErrorCode, String)> {
        self.queues
            .iter_mut()
            .find(|q| q.info.queue == name)
            .ok_or_else(|| (ErrorCode::QUEUE_NOT_FOUND, format!("queue {name:?} does not exist")))
    }

    fn handle(&mut self, hint: Option<u16>, shard: u16, req: Request) -> Outcome {
        let queue_name = match req.route() {
            cmq_protocol::Route::Queue(q) => Some(q.to_owned()),
            _ => None,
        };
        if let Some(queue) = queue_name {
            self.routed.push(Routed { hint, shard, op: req.opcode(), queue });
        }
        let now = now_ms();
        match req {
            Request::Handshake(_) => Err((ErrorCode::INVALID_PARAMETER, "second handshake".into())),
            Request::Ping(_) => Ok(Response::Ping(Empty {})),
            Request::RewindQueue(_)
            | Request::PeekMessages(_)
            | Request::QueryMessage(_)
            | Request::PurgeQueue(_)
            | Request::SendTransactionMessage(_)
            | Request::EndTransaction(_)
            | Request::RegisterChecker(_)
            | Request::TransactionCheck(_)
            | Request::StartRedrive(_)
            | Request::ListRedrives(_)
            | Request::CancelRedrive(_) => {
                Err((ErrorCode::UNKNOWN_OPCODE, "the fake server does not implement this".into()))
            }
            Request::CreateQueue(r) => {
                names::validate_name("queueName", &r.queue).map_err(|m| (ErrorCode::INVALID_PARAMETER, m))?;
                if self.queue(&r.queue).is_ok() {
                    return Err((ErrorCode::QUEUE_ALREADY_EXISTS, format!("queue {:?} exists", r.queue)));
                }
                let attributes = QueueAttributes::defaults(FlushPolicy::Sync)
                    .updated(&r.attributes)
                    .map_err(|m| (ErrorCode::INVALID_PARAMETER, m))?;
                self.next_queue_id += 1;
                let info = QueueInfo {
                    queue_id: self.next_queue_id,
                    queue: r.queue,
                    attributes,
                    create_time_ms: now,
                    last_modify_time_ms: now,
                    shard,
                    ..Default::default()
                };
                self.queues.push(FakeQueue { info, ready: VecDeque::new(), leased: HashMap::new() });
                Ok(Response::CreateQueue(CreateQueueOk { queue_id: self.next_queue_id }))
            }
            Request::DeleteQueue(r) => {
                self.queue(&r.queue)?;
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
                info.active_msg_num = q.ready.len() as u64;
                info.inactive_msg_num = q.leased.len() as u64;
                info.min_msg_time_ms = q.ready.iter().map(|m| m.enqueue_ms).min().unwrap_or(0);
                Ok(Response::GetQueueAttributes(info))
            }
            Request::SetQueueAttributes(r) => {
                let q = self.queue(&r.queue)?;
                q.info.attributes =
                    q.info.attributes.updated(&r.attributes).map_err(|m| (ErrorCode::INVALID_PARAMETER, m))?;
                q.info.last_modify_time_ms = now;
                Ok(Response::SetQueueAttributes(q.info.clone()))
            }
            Request::SendMessage(r) => {
                let id = self.enqueue(&r.queue, vec![r.body], now)?;
                Ok(Response::SendMessage(SendMessageOk { msg_id: id[0] }))
            }
            Request::BatchSendMessage(r) => {
                let msg_ids = self.enqueue(&r.queue, r.bodies, now)?;
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
                q.leased.remove(&r.receipt_handle).ok_or(invalid_handle())?;
                Ok(Response::DeleteMessage(Empty {}))
            }
            Request::BatchDeleteMessage(r) => {
                let q = self.queue(&r.queue)?;
                let results = r
                    .receipt_handles
                    .iter()
                    .map(|h| match q.leased.remove(h) {
                        Some(_) => ItemResult { code: 0, message: String::new() },
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
                if !q.leased.contains_key(&r.receipt_handle) {
                    return Err(invalid_handle());
                }
                Ok(Response::ChangeMessageVisibility(ChangeMessageVisibilityOk {
                    receipt_handle: r.receipt_handle,
                    next_visible_time_ms: now + u64::from(r.visibility_timeout) * 1000,
                }))
            }
        }
    }

    fn enqueue(&mut self, queue: &str, bodies: Vec<Bytes>, now: u64) -> Result<Vec<u64>, (ErrorCode, String)> {
        if bodies.is_empty() || bodies.len() > limits::BATCH_MSGS_MAX {
            return Err((ErrorCode::BATCH_TOO_LARGE, format!("{} messages", bodies.len())));
        }
        let first = self.next_msg_id;
        self.next_msg_id += bodies.len() as u64;
        let q = self.queue(queue)?;
        let mut ids = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let id = first + i as u64;
            q.ready.push_back(Stored { id, body, enqueue_ms: now, first_dequeue_ms: 0, dequeues: 0 });
            ids.push(id);
        }
        Ok(ids)
    }

    fn dequeue(&mut self, queue: &str, max: usize, now: u64) -> Result<Vec<ReceivedMessage>, (ErrorCode, String)> {
        let mut handle = self.next_handle;
        let q = self.queue(queue)?;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(mut m) = q.ready.pop_front() else { break };
            m.dequeues += 1;
            if m.first_dequeue_ms == 0 {
                m.first_dequeue_ms = now;
            }
            handle += 1;
            out.push(ReceivedMessage {
                origin: None,
                msg_id: m.id,
                receipt_handle: ReceiptHandle(handle),
                enqueue_time_ms: m.enqueue_ms,
                first_dequeue_time_ms: m.first_dequeue_ms,
                next_visible_time_ms: now + u64::from(q.info.attributes.visibility_timeout) * 1000,
                dequeue_count: m.dequeues,
                body: m.body.clone(),
            });
            q.leased.insert(ReceiptHandle(handle), m);
        }
        self.next_handle = handle;
        if out.is_empty() {
            return Err((ErrorCode::NO_MESSAGE, "no message".into()));
        }
        Ok(out)
    }
}

fn invalid_handle() -> (ErrorCode, String) {
    (ErrorCode::RECEIPT_HANDLE_INVALID, "handle invalid or expired".into())
}
