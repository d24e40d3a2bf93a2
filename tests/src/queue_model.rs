//! Helpers for the queue-model operations (issue 5): dead letters, redrive,
//! rewind, inspection, purge and transaction messages, plus a connection
//! that also takes the broker's push frames (transaction checks) and a
//! bounded poll for waiting on the broker's own timers.
//!
//! Like `ops.rs`, methods named after an operation return the raw [`Reply`];
//! the `*_ok` ones unwrap the expected response and panic otherwise.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use cmq_protocol::frame::{self, FrameHeader};
use cmq_protocol::limits::PEEK_MSGS_MAX;
use cmq_protocol::*;

use crate::raw::{RawConn, Reply};

macro_rules! expect_ok {
    ($reply:expr, $variant:ident) => {
        match $reply.ok() {
            Response::$variant(r) => r,
            other => panic!(concat!("expected ", stringify!($variant), ", got {:?}"), other),
        }
    };
}

/// Wall-clock milliseconds since the Unix epoch (the broker's time base).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// Calls `probe` every `POLL_EVERY` until it returns `Some`, or panics after
/// `within` saying what did not happen (and the last state it saw, as `Err` text). For
/// events driven by the broker's own timers (lease ends, moves, checks),
/// which a client cannot otherwise wait on.
#[track_caller]
pub fn poll_until<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    const POLL_EVERY: Duration = Duration::from_millis(50);
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("not within {within:?}: {what}; last seen: {last}"),
            Err(_) => std::thread::sleep(POLL_EVERY),
        }
    }
}

/// Messages a queue holds that are not deleted: ready + in flight + delayed.
pub fn backlog(info: &QueueInfo) -> u64 {
    info.active_msg_num + info.inactive_msg_num + info.delay_msg_num
}

/// A dead-letter policy by receive count.
pub fn dead_letter_after(dlq: &str, max_receive_count: u32, visibility_timeout: u32) -> QueueAttributesUpdate {
    QueueAttributesUpdate {
        dead_letter_queue: Some(dlq.into()),
        max_receive_count: Some(max_receive_count),
        visibility_timeout: Some(visibility_timeout),
        ..Default::default()
    }
}

impl RawConn {
    // ---- rewind, peek, query, purge -----------------------------------------

    pub fn rewind(&mut self, queue: &str, start_consume_time_ms: u64) -> Reply {
        self.call(Request::RewindQueue(RewindQueue { queue: queue.into(), start_consume_time_ms }))
    }

    /// Rewinds; returns how many deleted messages came back.
    #[track_caller]
    pub fn rewind_ok(&mut self, queue: &str, start_consume_time_ms: u64) -> u64 {
        expect_ok!(self.rewind(queue, start_consume_time_ms), RewindQueue).rewound
    }

    pub fn peek(&mut self, queue: &str, cursor: u64, max: u16, include_body: bool) -> Reply {
        self.call(Request::PeekMessages(PeekMessages { queue: queue.into(), cursor, max, include_body }))
    }

    #[track_caller]
    pub fn peek_ok(&mut self, queue: &str, cursor: u64, max: u16, include_body: bool) -> PeekMessagesOk {
        expect_ok!(self.peek(queue, cursor, max, include_body), PeekMessages)
    }

    /// Every message peek shows, following the cursor page by page (no bodies).
    #[track_caller]
    pub fn peek_all(&mut self, queue: &str) -> Vec<PeekedMessage> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self.peek_ok(queue, cursor, PEEK_MSGS_MAX as u16, false);
            out.extend(page.messages);
            if page.next_cursor == 0 {
                return out;
            }
            assert!(page.next_cursor > cursor, "peek cursor must advance: {cursor} -> {}", page.next_cursor);
            cursor = page.next_cursor;
        }
    }

    pub fn query(&mut self, queue: &str, msg_id: u64) -> Reply {
        self.call(Request::QueryMessage(QueryMessage { queue: queue.into(), msg_id }))
    }

    #[track_caller]
    pub fn query_ok(&mut self, queue: &str, msg_id: u64) -> MessageStatus {
        expect_ok!(self.query(queue, msg_id), QueryMessage)
    }

    pub fn purge(&mut self, queue: &str) -> Reply {
        self.call(Request::PurgeQueue(PurgeQueue { queue: queue.into() }))
    }

    /// Purges; returns how many undeleted messages went.
    #[track_caller]
    pub fn purge_ok(&mut self, queue: &str) -> u64 {
        expect_ok!(self.purge(queue), PurgeQueue).purged
    }

    // ---- transactions ---------------------------------------------------------

    pub fn send_tx(&mut self, queue: &str, producer_group: &str, body: impl Into<Bytes>) -> Reply {
        self.call(Request::SendTransactionMessage(SendTransactionMessage {
            queue: queue.into(),
            producer_group: producer_group.into(),
            body: body.into(),
        }))
    }

    /// Sends a half message; returns its id.
    #[track_caller]
    pub fn send_tx_ok(&mut self, queue: &str, producer_group: &str, body: impl Into<Bytes>) -> u64 {
        expect_ok!(self.send_tx(queue, producer_group, body), SendTransactionMessage).msg_id
    }

    pub fn end_tx(&mut self, queue: &str, msg_id: u64, commit: bool) -> Reply {
        self.call(Request::EndTransaction(EndTransaction { queue: queue.into(), msg_id, commit }))
    }

    pub fn register_checker(&mut self, producer_group: &str) -> Reply {
        self.call(Request::RegisterChecker(RegisterChecker { producer_group: producer_group.into() }))
    }

    // ---- redrive ----------------------------------------------------------------

    pub fn start_redrive(&mut self, dead_letter_queue: &str, to: &str, rate_per_second: u32) -> Reply {
        self.call(Request::StartRedrive(StartRedrive {
            dead_letter_queue: dead_letter_queue.into(),
            to: to.into(),
            rate_per_second,
        }))
    }

    #[track_caller]
    pub fn start_redrive_ok(&mut self, dead_letter_queue: &str, to: &str, rate_per_second: u32) -> RedriveInfo {
        expect_ok!(self.start_redrive(dead_letter_queue, to, rate_per_second), StartRedrive)
    }

    #[track_caller]
    pub fn list_redrives_ok(&mut self) -> Vec<RedriveInfo> {
        expect_ok!(self.call(Request::ListRedrives(ListRedrives {})), ListRedrives).redrives
    }

    /// The redrive task `id` as ListRedrives shows it; panics if it is not listed.
    #[track_caller]
    pub fn redrive_info(&mut self, id: u64) -> RedriveInfo {
        let all = self.list_redrives_ok();
        all.iter().find(|r| r.id == id).cloned().unwrap_or_else(|| panic!("redrive {id} not listed: {all:?}"))
    }

    pub fn cancel_redrive(&mut self, id: u64) -> Reply {
        self.call(Request::CancelRedrive(CancelRedrive { id }))
    }

    #[track_caller]
    pub fn cancel_redrive_ok(&mut self, id: u64) -> RedriveInfo {
        expect_ok!(self.cancel_redrive(id), CancelRedrive)
    }

    /// Sends `n` messages (bodies `{tag}-{i}`) to `queue`, which must have
    /// maxReceiveCount 1, and receives each once without deleting it: when
    /// the leases end they all go to the dead-letter queue. Returns the ids.
    #[track_caller]
    pub fn send_and_poison(&mut self, queue: &str, n: usize, tag: &str) -> Vec<u64> {
        let mut ids = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
            let bodies = chunk.iter().map(|i| Bytes::from(format!("{tag}-{i}"))).collect();
            ids.extend(self.batch_send_ok(queue, 0, bodies));
        }
        let mut received = 0;
        while received < n {
            match self.batch_receive(queue, 16, Some(1)) {
                Reply::Ok(_, Response::BatchReceiveMessage(b)) => {
                    assert!(b.messages.iter().all(|m| m.dequeue_count == 1), "received twice");
                    received += b.messages.len();
                }
                r => panic!("receiving {n} from {queue} (got {received}): {r:?}"),
            }
        }
        ids
    }

    // ---- draining -------------------------------------------------------------------

    /// Receives and deletes until `n` messages came out of `queue` or `within`
    /// passed; returns them in delivery order (duplicates included, so a test
    /// can count them).
    #[track_caller]
    pub fn drain(&mut self, queue: &str, n: usize, within: Duration) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + within;
        let mut out = Vec::with_capacity(n);
        while out.len() < n && Instant::now() < deadline {
            let max = (n - out.len()).min(16) as u16;
            let got = match self.batch_receive(queue, max, Some(1)) {
                Reply::Ok(_, Response::BatchReceiveMessage(b)) => b.messages,
                r if r.code() == ErrorCode::NO_MESSAGE => continue,
                r => panic!("batch receive from {queue}: {r:?}"),
            };
            let handles = got.iter().map(|m| m.receipt_handle).collect();
            let results = self.batch_delete_ok(queue, handles);
            assert!(results.iter().all(|r| r.code == 0), "delete from {queue}: {results:?}");
            out.extend(got);
        }
        out
    }
}

/// One frame from the broker: an answer to a request, or a push.
#[derive(Debug)]
pub enum Frame {
    Reply(Reply),
    Push(FrameHeader, Request),
}

/// A connection that, unlike [`RawConn`], accepts push frames (FLAG_PUSH,
/// request id 0) between replies: for transaction checkers. Pushes that
/// arrive while waiting for a reply are kept for [`PushConn::next_push`].
pub struct PushConn {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
    pushes: VecDeque<(FrameHeader, Request)>,
    pub handshake: HandshakeOk,
}

impl PushConn {
    /// Connects (to `shard` if given) and completes the handshake.
    pub fn open(addr: SocketAddr, shard: Option<u16>) -> PushConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = PushConn {
            stream,
            buf: BytesMut::new(),
            next_id: 1,
            pushes: VecDeque::new(),
            handshake: HandshakeOk::default(),
        };
        let hs = Handshake { shard_hint: shard, ..Handshake::new("itest-push") };
        c.handshake = match c.call(Request::Handshake(hs)).ok() {
            Response::Handshake(ok) => ok,
            other => panic!("handshake: {other:?}"),
        };
        if let Some(s) = shard {
            assert_eq!(c.handshake.shard_id, s, "shard_hint not honoured");
        }
        c
    }

    pub fn send(&mut self, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        req.encode_frame(id, &mut out);
        self.stream.write_all(&out).expect("write");
        id
    }

    /// The next frame, or None if none arrives within `within`. Panics if
    /// the broker closes the connection.
    pub fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(total) = frame::check(&self.buf).expect("server frames are valid") {
                let (h, payload): (FrameHeader, Bytes) = frame::split(&mut self.buf, total);
                if h.is_push() {
                    assert!(!h.is_response(), "a push is not a response: {h:?}");
                    let req = Request::decode(h.opcode, payload).expect("push payload decodes");
                    return Some(Frame::Push(h, req));
                }
                assert!(h.is_response(), "server sent a request frame without the PUSH flag: {h:?}");
                return Some(Frame::Reply(if h.is_error() {
                    Reply::Err(h.request_id, ErrorBody::decode_payload(payload).expect("error body"))
                } else {
                    Reply::Ok(h.request_id, Response::decode(h.opcode, payload).expect("response decodes"))
                }));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("cmqd closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("read from cmqd: {e}"),
            }
        }
    }

    /// Sends a request and waits for its reply, keeping pushes that come first.
    pub fn call(&mut self, req: Request) -> Reply {
        let id = self.send(&req);
        loop {
            match self.next_frame(crate::raw::READ_TIMEOUT) {
                Some(Frame::Reply(r)) if r.id() == id => return r,
                Some(Frame::Reply(r)) => panic!("unexpected reply {r:?} while waiting for {id}"),
                Some(Frame::Push(h, p)) => self.pushes.push_back((h, p)),
                None => panic!("no reply to request {id} within {:?}", crate::raw::READ_TIMEOUT),
            }
        }
    }

    /// The next push frame, waiting up to `within`.
    pub fn next_push(&mut self, within: Duration) -> Option<(FrameHeader, Request)> {
        if let Some(p) = self.pushes.pop_front() {
            return Some(p);
        }
        match self.next_frame(within)? {
            Frame::Push(h, p) => Some((h, p)),
            Frame::Reply(r) => panic!("unexpected reply {r:?} while waiting for a push"),
        }
    }

    /// The next transaction check, with its frame header checked (PUSH flag, request id 0).
    #[track_caller]
    pub fn next_check(&mut self, within: Duration) -> Option<TransactionCheck> {
        let (h, p) = self.next_push(within)?;
        assert_eq!(h.request_id, 0, "a push carries request id 0: {h:?}");
        assert_eq!(h.flags & frame::FLAG_PUSH, frame::FLAG_PUSH);
        assert_eq!(h.opcode, Opcode::TransactionCheck as u16, "{h:?}");
        match p {
            Request::TransactionCheck(c) => Some(c),
            other => panic!("expected a TransactionCheck push, got {other:?}"),
        }
    }

    pub fn register_checker(&mut self, producer_group: &str) -> Reply {
        self.call(Request::RegisterChecker(RegisterChecker { producer_group: producer_group.into() }))
    }

    pub fn end_tx(&mut self, queue: &str, msg_id: u64, commit: bool) -> Reply {
        self.call(Request::EndTransaction(EndTransaction { queue: queue.into(), msg_id, commit }))
    }
}
