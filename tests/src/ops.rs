//! Typed shorthands over [`RawConn`] for the operations tests use most,
//! plus helpers for building frames by hand and picking queue names by shard.
//!
//! Methods named after an operation return the raw [`Reply`] (so a test can
//! assert on an error); the `*_ok`-style ones unwrap the expected response
//! type and panic with the server's error otherwise.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};

use bytes::Bytes;
use cmq_protocol::frame;
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

use crate::raw::{RawConn, Reply};

impl Reply {
    /// Whether this is a success response.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok(..))
    }

    /// The error body; panics unless the reply is an error with `code`.
    #[track_caller]
    pub fn expect_err(self, code: ErrorCode) -> ErrorBody {
        match self {
            Reply::Err(_, e) if e.code() == code => e,
            Reply::Err(id, e) => panic!("request {id}: expected {code:?}, got {:?} {:?}", e.code(), e.message),
            Reply::Ok(id, r) => panic!("request {id}: expected {code:?}, got success {r:?}"),
        }
    }
}

/// Unwraps one variant of [`Response`] or panics naming what came instead.
macro_rules! expect_resp {
    ($reply:expr, $variant:ident) => {
        match $reply.ok() {
            Response::$variant(r) => r,
            other => panic!(concat!("expected ", stringify!($variant), ", got {:?}"), other),
        }
    };
}

impl RawConn {
    /// Connects and sends `hs`; returns the connection and the handshake's reply.
    pub fn open_with(addr: SocketAddr, hs: Handshake) -> (RawConn, Reply) {
        let mut c = RawConn::connect(addr);
        let r = c.call(Request::Handshake(hs));
        (c, r)
    }

    /// Connects with a `shard_hint`; returns the connection and the HandshakeOk.
    pub fn open_hint(addr: SocketAddr, hint: Option<u16>) -> (RawConn, HandshakeOk) {
        let hs = Handshake { shard_hint: hint, ..Handshake::new("itest") };
        let (c, r) = RawConn::open_with(addr, hs);
        (c, expect_resp!(r, Handshake))
    }

    /// Connects to the given shard (via `shard_hint`) and asserts it got there.
    pub fn open_on_shard(addr: SocketAddr, shard: u16) -> RawConn {
        let (c, ok) = RawConn::open_hint(addr, Some(shard));
        assert_eq!(ok.shard_id, shard, "shard_hint was not honoured: {ok:?}");
        c
    }

    pub fn ping(&mut self) -> Reply {
        self.call(Request::Ping(Ping {}))
    }

    // ---- queue management -------------------------------------------------

    pub fn create_queue_with(&mut self, queue: &str, attributes: QueueAttributesUpdate) -> Reply {
        self.call(Request::CreateQueue(CreateQueue { queue: queue.into(), attributes }))
    }

    /// Creates a queue with default attributes; returns its id.
    #[track_caller]
    pub fn create_queue(&mut self, queue: &str) -> u64 {
        expect_resp!(self.create_queue_with(queue, Default::default()), CreateQueue).queue_id
    }

    /// Creates a queue with the given attributes; returns its id.
    #[track_caller]
    pub fn create_queue_attrs(&mut self, queue: &str, attributes: QueueAttributesUpdate) -> u64 {
        expect_resp!(self.create_queue_with(queue, attributes), CreateQueue).queue_id
    }

    pub fn delete_queue(&mut self, queue: &str) -> Reply {
        self.call(Request::DeleteQueue(DeleteQueue { queue: queue.into() }))
    }

    pub fn get_attributes(&mut self, queue: &str) -> Reply {
        self.call(Request::GetQueueAttributes(GetQueueAttributes { queue: queue.into() }))
    }

    #[track_caller]
    pub fn queue_info(&mut self, queue: &str) -> QueueInfo {
        expect_resp!(self.get_attributes(queue), GetQueueAttributes)
    }

    pub fn set_attributes(&mut self, queue: &str, attributes: QueueAttributesUpdate) -> Reply {
        self.call(Request::SetQueueAttributes(SetQueueAttributes { queue: queue.into(), attributes }))
    }

    #[track_caller]
    pub fn set_attributes_ok(&mut self, queue: &str, attributes: QueueAttributesUpdate) -> QueueInfo {
        expect_resp!(self.set_attributes(queue, attributes), SetQueueAttributes)
    }

    pub fn list_queues(&mut self, prefix: &str, contains: &str, offset: u32, limit: u32) -> Reply {
        self.call(Request::ListQueues(ListQueues { prefix: prefix.into(), contains: contains.into(), offset, limit }))
    }

    #[track_caller]
    pub fn list_queues_ok(&mut self, prefix: &str, contains: &str, offset: u32, limit: u32) -> ListQueuesOk {
        expect_resp!(self.list_queues(prefix, contains, offset, limit), ListQueues)
    }

    // ---- messages -----------------------------------------------------------

    pub fn send_message(&mut self, queue: &str, delay_seconds: u32, body: impl Into<Bytes>) -> Reply {
        self.call(Request::SendMessage(SendMessage {
            queue: queue.into(),
            delay_seconds,
            body: body.into(),
            ..Default::default()
        }))
    }

    /// Sends one message with no delay; returns its id.
    #[track_caller]
    pub fn send_ok(&mut self, queue: &str, body: impl Into<Bytes>) -> u64 {
        expect_resp!(self.send_message(queue, 0, body), SendMessage).msg_id
    }

    pub fn batch_send(&mut self, queue: &str, delay_seconds: u32, bodies: Vec<Bytes>) -> Reply {
        self.call(Request::BatchSendMessage(BatchSendMessage {
            queue: queue.into(),
            delay_seconds,
            bodies,
            ..Default::default()
        }))
    }

    #[track_caller]
    pub fn batch_send_ok(&mut self, queue: &str, delay_seconds: u32, bodies: Vec<Bytes>) -> Vec<u64> {
        expect_resp!(self.batch_send(queue, delay_seconds, bodies), BatchSendMessage).msg_ids
    }

    pub fn receive(&mut self, queue: &str, polling_wait_seconds: Option<u32>) -> Reply {
        self.call(Request::ReceiveMessage(ReceiveMessage { queue: queue.into(), polling_wait_seconds }))
    }

    #[track_caller]
    pub fn receive_ok(&mut self, queue: &str, polling_wait_seconds: Option<u32>) -> ReceivedMessage {
        expect_resp!(self.receive(queue, polling_wait_seconds), ReceiveMessage)
    }

    pub fn batch_receive(&mut self, queue: &str, max_messages: u16, polling_wait_seconds: Option<u32>) -> Reply {
        self.call(Request::BatchReceiveMessage(BatchReceiveMessage {
            queue: queue.into(),
            max_messages,
            polling_wait_seconds,
        }))
    }

    #[track_caller]
    pub fn batch_receive_ok(&mut self, queue: &str, max: u16, wait: Option<u32>) -> Vec<ReceivedMessage> {
        expect_resp!(self.batch_receive(queue, max, wait), BatchReceiveMessage).messages
    }

    pub fn delete_message(&mut self, queue: &str, receipt_handle: ReceiptHandle) -> Reply {
        self.call(Request::DeleteMessage(DeleteMessage { queue: queue.into(), receipt_handle }))
    }

    pub fn batch_delete(&mut self, queue: &str, receipt_handles: Vec<ReceiptHandle>) -> Reply {
        self.call(Request::BatchDeleteMessage(BatchDeleteMessage { queue: queue.into(), receipt_handles }))
    }

    #[track_caller]
    pub fn batch_delete_ok(&mut self, queue: &str, receipt_handles: Vec<ReceiptHandle>) -> Vec<ItemResult> {
        expect_resp!(self.batch_delete(queue, receipt_handles), BatchDeleteMessage).results
    }

    pub fn change_visibility(&mut self, queue: &str, receipt_handle: ReceiptHandle, secs: u32) -> Reply {
        self.call(Request::ChangeMessageVisibility(ChangeMessageVisibility {
            queue: queue.into(),
            receipt_handle,
            visibility_timeout: secs,
        }))
    }

    #[track_caller]
    pub fn change_visibility_ok(
        &mut self,
        queue: &str,
        receipt_handle: ReceiptHandle,
        secs: u32,
    ) -> ChangeMessageVisibilityOk {
        expect_resp!(self.change_visibility(queue, receipt_handle, secs), ChangeMessageVisibility)
    }

    /// Sends `body`, receives it back, checks it and deletes it: proof that
    /// this connection and the broker behind it still work.
    #[track_caller]
    pub fn assert_round_trip(&mut self, queue: &str, body: &str) {
        let id = self.send_ok(queue, body.to_owned());
        let m = self.receive_ok(queue, Some(5));
        assert_eq!((m.msg_id, &m.body[..]), (id, body.as_bytes()), "round trip on {queue}");
        self.delete_message(queue, m.receipt_handle).ok();
    }

    /// Reads replies until the one for `id`; panics if another arrives first.
    #[track_caller]
    pub fn read_reply(&mut self, id: u64) -> Reply {
        let r = self.read().unwrap_or_else(|| panic!("connection closed while waiting for request {id}"));
        assert_eq!(r.id(), id, "expected the reply to request {id} next, got {r:?}");
        r
    }

    /// Asks for `queue`'s attributes and asserts that this is the next reply.
    ///
    /// Requests on one connection for one queue reach its owner shard in
    /// order, so when this returns, every earlier request on this connection
    /// for `queue` (a long-polling receive, say) has been registered there;
    /// and a long poll answered early would show up here instead.
    #[track_caller]
    pub fn barrier(&mut self, queue: &str) -> QueueInfo {
        let id = self.send(&Request::GetQueueAttributes(GetQueueAttributes { queue: queue.into() }));
        expect_resp!(self.read_reply(id), GetQueueAttributes)
    }

    // ---- raw bytes ------------------------------------------------------------

    /// Half-closes the connection: the broker sees end of input.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.flush();
        self.stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
    }

    /// Reads every frame until the broker closes the connection.
    pub fn read_until_closed(&mut self) -> Vec<Reply> {
        let mut out = Vec::new();
        while let Some(r) = self.read() {
            out.push(r);
        }
        out
    }
}

/// Encodes one request frame into a byte vector.
pub fn request_frame(request_id: u64, req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode_frame(request_id, &mut out);
    out
}

/// Builds a frame with any opcode, flags and payload bytes.
pub fn raw_frame(opcode: u16, flags: u8, request_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = frame::begin(&mut out, opcode, flags, request_id);
    out.extend_from_slice(payload);
    frame::end(&mut out, start);
    out
}

/// `n` queue names `{prefix}{i}` that the broker with `shards` shards places on `shard`.
pub fn names_on_shard(prefix: &str, shard: u16, shards: u16, n: usize) -> Vec<String> {
    (0..).map(|i| format!("{prefix}{i}")).filter(|q| shard_for(q, shards) == shard).take(n).collect()
}

/// One queue name for `shard`.
pub fn name_on_shard(prefix: &str, shard: u16, shards: u16) -> String {
    names_on_shard(prefix, shard, shards, 1).remove(0)
}

/// Every body of a batch, as `Bytes`.
pub fn bodies<S: AsRef<str>>(items: &[S]) -> Vec<Bytes> {
    items.iter().map(|s| Bytes::copy_from_slice(s.as_ref().as_bytes())).collect()
}
