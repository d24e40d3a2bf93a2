//! Encoding responses into the right place: a local connection's output
//! buffer, or this turn's batch for the peer shard that owns the connection.

use cmq_protocol::frame::{self, FLAG_RESPONSE};
use cmq_protocol::wire::Writer;
use cmq_protocol::{ErrorBody, ErrorCode, Opcode, Response};

use crate::engine::{suffix, Delivery};
use crate::shard::storage::ShardLog;

/// What a reply depends on before it may leave. Whoever sends a reply
/// says which (`Shard::reply_ok` and friends take it as a value); the shard
/// turns it into a [`Need`](super::release::Need) against the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyDep {
    /// Nothing: the reply states nothing about replicated queue state and
    /// depends on no record (about this node, NOT_LEADER, a failed log).
    Now,
    /// Records the request logged: all of them written, and the log
    /// durable up to this position (0: none of them was sync).
    Logged(u64),
    /// State the request read: everything logged so far, at its own
    /// durability, and in a group a ReadIndex round (the state is current
    /// only while this replica still leads).
    Read,
}

/// Appends a success response frame.
pub fn ok(out: &mut Vec<u8>, request_id: u64, resp: &Response) {
    resp.encode_frame(request_id, out);
}

/// Appends an error response frame.
pub fn err(out: &mut Vec<u8>, opcode: u16, request_id: u64, code: ErrorCode, message: &str) {
    ErrorBody::new(code, message).encode_frame(opcode, request_id, out);
}

/// Appends a ReceiveMessage (`batch == false`, exactly one delivery) or a
/// BatchReceiveMessage response, reading each body from the log. Bodies are
/// copied straight from the log into the frame.
pub fn deliveries(out: &mut Vec<u8>, log: &ShardLog, request_id: u64, batch: bool, items: &[Delivery]) {
    let opcode = if batch { Opcode::BatchReceiveMessage } else { Opcode::ReceiveMessage } as u16;
    let start = frame::begin(out, opcode, FLAG_RESPONSE, request_id);
    if batch {
        out.put_count(items.len());
    }
    for d in items {
        let origin = if d.origin { suffix::origin_bytes(log, d.body_pos, d.body_len).map(Some) } else { Ok(None) };
        match (log.read(d.body_pos, d.body_len), origin) {
            (Ok(body), Ok(origin)) => {
                let mut head = d.head;
                // A moved message keeps the id it was first given.
                if let Some(id) = origin.and_then(suffix::origin_msg_id) {
                    head.msg_id = id;
                }
                head.encode_with_body(body, origin, out)
            }
            (Err(e), _) | (_, Err(e)) => {
                out.truncate(start);
                log::error!("cannot read body of message {} at {}: {}", d.head.msg_id, d.body_pos, e.message);
                return err(out, opcode, request_id, ErrorCode::INTERNAL, "cannot read message body from the log");
            }
        }
    }
    frame::end(out, start);
}
