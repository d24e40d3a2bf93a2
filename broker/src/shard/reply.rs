//! Encoding responses into the right place (a local connection's output
//! buffer, or this turn's batch for the peer shard that owns the
//! connection), with what each depends on before it may leave.

use cmq_protocol::frame::{self, FLAG_RESPONSE};
use cmq_protocol::wire::Writer;
use cmq_protocol::{ErrorBody, ErrorCode, Opcode, Response};

use super::mailbox::ReplyTo;
use super::release::Need;
use super::Shard;
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

impl Shard {
    pub(super) fn reply_ok(&mut self, to: ReplyTo, id: u64, resp: &Response, dep: ReplyDep) {
        if to.shard == self.id {
            if let Some(blank) = self.redacted(to, resp) {
                return self.reply_ok(to, id, &blank, dep);
            }
        }
        let start = self.reply_start(to);
        ok(self.reply_buf(to), id, resp);
        let need = self.reply_done(to, start, dep);
        self.count_answer(resp.opcode() as u16, ErrorCode(0), need);
    }

    /// A reply about this node itself (Ping, the cluster map, its replicas'
    /// status): it states nothing about replicated queue state, so it waits
    /// for no record and no ReadIndex round. A node cut off from its group
    /// still answers it (a health check pings; an operator asks the
    /// partitioned node what it sees).
    pub(super) fn reply_ok_about_node(&mut self, to: ReplyTo, id: u64, resp: &Response) {
        let start = self.reply_start(to);
        ok(self.reply_buf(to), id, resp);
        let need = self.reply_done(to, start, ReplyDep::Now);
        self.count_answer(resp.opcode() as u16, ErrorCode(0), need);
    }

    pub(super) fn reply_err(&mut self, to: ReplyTo, op: u16, id: u64, code: ErrorCode, msg: &str, dep: ReplyDep) {
        let start = self.reply_start(to);
        err(self.reply_buf(to), op, id, code, msg);
        // NOT_LEADER says nothing about queue state and depends on no
        // record: it must not wait for a log (or a leadership) this replica
        // lacks. A failed log writes nothing more, so nothing logged after
        // the failure would ever let a STORAGE_UNAVAILABLE out.
        let dep = if code == ErrorCode::NOT_LEADER || (code == ErrorCode::STORAGE_UNAVAILABLE && self.log.is_failed()) {
            ReplyDep::Now
        } else {
            dep
        };
        let need = self.reply_done(to, start, dep);
        self.count_answer(op, code, need);
    }

    pub(super) fn reply_deliveries(&mut self, to: ReplyTo, id: u64, batch: bool, d: &[Delivery]) {
        // A consumer sees only messages a crash cannot take back.
        let dep = ReplyDep::Logged(d.iter().map(|d| d.sync_end).max().unwrap_or(0));
        let start = self.reply_start(to);
        let mut out = std::mem::take(self.reply_buf(to));
        deliveries(&mut out, &self.log, id, batch, d);
        *self.reply_buf(to) = out;
        let need = self.reply_done(to, start, dep);
        let op = if batch { Opcode::BatchReceiveMessage } else { Opcode::ReceiveMessage };
        self.count_answer(op as u16, ErrorCode(0), need);
    }

    /// Where the reply to `to` starts in its buffer.
    fn reply_start(&mut self, to: ReplyTo) -> usize {
        self.reply_buf(to).len()
    }

    /// The buffer a reply to `to` is appended to: the local connection's
    /// output, or this turn's batch for the peer that owns the connection.
    /// A reply for a connection that has gone goes to a scratch buffer.
    fn reply_buf(&mut self, to: ReplyTo) -> &mut Vec<u8> {
        if to.shard == super::external::EXTERNAL_SHARD {
            return self.external_buf();
        }
        if to.shard == self.id {
            match self.clients.conns.get_mut(to.conn.token) {
                // A connection over its output bound (shed) gets no more answers.
                Some(conn) if conn.gen == to.conn.gen && !conn.shed => &mut conn.out,
                _ => {
                    self.clients.scratch.clear();
                    &mut self.clients.scratch
                }
            }
        } else {
            &mut self.cross.remote_out[usize::from(to.shard)].buf
        }
    }

    fn reply_done(&mut self, to: ReplyTo, start: usize, dep: ReplyDep) -> Need {
        let need = self.need_for(dep);
        if to.shard == super::external::EXTERNAL_SHARD {
            self.external_done(to, start, need);
        } else if to.shard == self.id {
            self.hold_conn(to.conn, need);
            self.answered(to.conn);
        } else {
            let batch = &mut self.cross.remote_out[usize::from(to.shard)];
            let end = batch.buf.len();
            batch.parts.push((to.conn, start, end));
            self.cross.remote_need = self.cross.remote_need.max(need);
        }
        need
    }
}
