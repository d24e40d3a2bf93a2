//! Turning decoded frames into engine calls and responses.

use bytes::Bytes;
use cmq_protocol::frame::FrameHeader;
use cmq_protocol::limits::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

use super::mailbox::{ConnRef, Forwarded, Handover, ReplyTo, ShardMsg};
use super::{reply, Gather, Shard, Wait};
use crate::engine::{Delivery, EngineError, ReceiveOutcome};

impl Shard {
    pub(super) fn handle_frame(&mut self, me: ConnRef, header: FrameHeader, payload: Bytes, now: u64) {
        if header.is_response() {
            return self.fail_conn(
                me.token,
                header.request_id,
                ErrorCode::MALFORMED_FRAME,
                "clients send requests only",
            );
        }
        let Some(conn) = self.conns.get_mut(me.token) else { return };
        if !conn.handshaken {
            return self.handshake(me, header, payload);
        }
        let request = match Request::decode(header.opcode, payload) {
            Ok(r) => r,
            Err(e) => {
                // The frame was well delimited, so the stream is intact: answer and go on.
                reply::err(&mut conn.out, header.opcode, header.request_id, e.code(), &e.to_string());
                if conn.touched_turn != self.turn {
                    conn.touched_turn = self.turn;
                    self.touched.push(me);
                }
                return;
            }
        };
        conn.in_flight += 1;
        let reply_to = ReplyTo { shard: self.id, conn: me };
        if self.draining {
            let op = request.opcode() as u16;
            return self.reply_err(reply_to, op, header.request_id, ErrorCode::SHUTTING_DOWN, "server shutting down");
        }
        self.route(reply_to, header.request_id, request, now);
    }

    fn handshake(&mut self, me: ConnRef, header: FrameHeader, payload: Bytes) {
        if header.opcode != Opcode::Handshake as u16 {
            return self.fail_conn(
                me.token,
                header.request_id,
                ErrorCode::HANDSHAKE_REQUIRED,
                "the first frame on a connection must be a Handshake",
            );
        }
        let hs = match Request::decode(header.opcode, payload) {
            Ok(Request::Handshake(h)) => h,
            Ok(_) | Err(_) => {
                return self.fail_conn(me.token, header.request_id, ErrorCode::MALFORMED_FRAME, "malformed handshake")
            }
        };
        let Some(version) = hs.negotiate() else {
            let msg = format!(
                "client speaks versions {}..={}, server speaks {}..={}",
                hs.version_min,
                hs.version_max,
                handshake::PROTOCOL_VERSION_MIN,
                handshake::PROTOCOL_VERSION_MAX
            );
            return self.fail_conn(me.token, header.request_id, ErrorCode::UNSUPPORTED_VERSION, &msg);
        };
        if let Some(target) = hs.shard_hint.filter(|s| *s != self.id && *s < self.shard_count()) {
            return self.hand_over(me, target, header.request_id, version);
        }
        let resp = self.handshake_ok(version);
        let Some(conn) = self.conns.get_mut(me.token) else { return };
        conn.handshaken = true;
        reply::ok(&mut conn.out, header.request_id, &resp);
        conn.release_all_now();
        self.write_conn(me.token);
    }

    /// Moves the connection (and any bytes it already sent) to the shard it asked for.
    fn hand_over(&mut self, me: ConnRef, target: u16, request_id: u64, version: u16) {
        let Some(mut conn) = self.conns.try_remove(me.token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let h = Handover { stream: conn.stream, pending: conn.rbuf, handshake_request_id: request_id, version };
        if let Err(ShardMsg::Handover(h)) = self.shared.peers[usize::from(target)].send(ShardMsg::Handover(Box::new(h)))
        {
            // Keep serving it here rather than drop it.
            if let Some(me) = self.add_conn(h.stream, true) {
                self.shared.conn_count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let resp = self.handshake_ok(version);
                if let Some(conn) = self.conns.get_mut(me.token) {
                    conn.rbuf = h.pending;
                    reply::ok(&mut conn.out, request_id, &resp);
                    conn.release_all_now();
                }
                self.write_conn(me.token);
                self.read_again.push(me);
            }
        }
    }

    /// Runs a request here or forwards it to the shard that owns its queue.
    fn route(&mut self, reply_to: ReplyTo, request_id: u64, request: Request, now: u64) {
        let queue = match request.route() {
            Route::Any => return self.execute_anywhere(reply_to, request_id, request, now),
            Route::Shard(s) if s == self.id || s >= self.shard_count() => {
                return self.execute(reply_to, request_id, request, now)
            }
            Route::Shard(s) => {
                if let Some(conn) = self.conns.get_mut(reply_to.conn.token) {
                    conn.mark_forwarded(s);
                }
                return self.forward_out[usize::from(s)].push(Forwarded { reply_to, request_id, request });
            }
            Route::Queue(q) => q,
        };
        let owner = shard_for(queue, self.shard_count());
        if owner == self.id {
            self.execute(reply_to, request_id, request, now);
        } else {
            if let Some(conn) = self.conns.get_mut(reply_to.conn.token) {
                conn.mark_forwarded(owner);
            }
            self.forward_out[usize::from(owner)].push(Forwarded { reply_to, request_id, request });
        }
    }

    /// Requests that are not about one queue.
    fn execute_anywhere(&mut self, reply_to: ReplyTo, request_id: u64, request: Request, _now: u64) {
        match request {
            Request::Handshake(_) => {
                let msg = "the handshake is already done";
                self.reply_err(reply_to, Opcode::Handshake as u16, request_id, ErrorCode::INVALID_PARAMETER, msg)
            }
            Request::Ping(_) => self.reply_ok(reply_to, request_id, &Response::Ping(Empty {})),
            Request::ListQueues(l) => self.start_list(reply_to, request_id, &l),
            other => {
                let op = other.opcode() as u16;
                self.reply_err(reply_to, op, request_id, ErrorCode::INTERNAL, "operation not available in this build")
            }
        }
    }

    /// Runs a request against this shard's engine (this shard owns the queue).
    pub(super) fn execute(&mut self, to: ReplyTo, id: u64, request: Request, now: u64) {
        let op = request.opcode() as u16;
        if let Some(fake) = self.fault_drop(&request) {
            return self.reply_ok(to, id, &fake);
        }
        let log = &mut self.log;
        let e = &mut self.engine;
        let result: Result<Response, EngineError> = match request {
            Request::CreateQueue(r) => e
                .create_queue(log, now, &r.queue, &r.attributes)
                .map(|queue_id| Response::CreateQueue(CreateQueueOk { queue_id })),
            Request::DeleteQueue(r) => e.delete_queue(log, now, &r.queue).map(|orphans| {
                for w in orphans {
                    if let Some(wait) = self.waits.remove(&w) {
                        let msg = format!("queue {:?} was deleted", r.queue);
                        let op = if wait.batch { Opcode::BatchReceiveMessage } else { Opcode::ReceiveMessage };
                        self.pending_errors.push((
                            wait.reply_to,
                            op as u16,
                            wait.request_id,
                            ErrorCode::QUEUE_NOT_FOUND,
                            msg,
                        ));
                    }
                }
                Response::DeleteQueue(Empty {})
            }),
            Request::GetQueueAttributes(r) => e.queue_info(now, &r.queue).map(Response::GetQueueAttributes),
            Request::SetQueueAttributes(r) => {
                e.set_queue_attributes(log, now, &r.queue, &r.attributes).map(Response::SetQueueAttributes)
            }
            Request::SendMessage(r) => e
                .send(log, now, &r.queue, r.delay_seconds, std::slice::from_ref(&r.body))
                .map(|ids| Response::SendMessage(SendMessageOk { msg_id: ids[0] })),
            Request::BatchSendMessage(r) => e
                .send(log, now, &r.queue, r.delay_seconds, &r.bodies)
                .map(|msg_ids| Response::BatchSendMessage(BatchSendMessageOk { msg_ids })),
            Request::ReceiveMessage(r) => {
                return self.receive(to, id, false, &r.queue, 1, r.polling_wait_seconds, now);
            }
            Request::BatchReceiveMessage(r) => {
                let max = usize::from(r.max_messages);
                return self.receive(to, id, true, &r.queue, max, r.polling_wait_seconds, now);
            }
            Request::DeleteMessage(r) => {
                e.delete(log, now, &r.queue, &[r.receipt_handle]).and_then(|mut results| match results.pop() {
                    Some(Err(err)) => Err(err),
                    _ => Ok(Response::DeleteMessage(Empty {})),
                })
            }
            Request::BatchDeleteMessage(r) => e.delete(log, now, &r.queue, &r.receipt_handles).map(|results| {
                let results = results
                    .into_iter()
                    .map(|r| match r {
                        Ok(()) => ItemResult { code: 0, message: String::new() },
                        Err(e) => ItemResult { code: e.code.0, message: e.message },
                    })
                    .collect();
                Response::BatchDeleteMessage(BatchDeleteMessageOk { results })
            }),
            Request::ChangeMessageVisibility(r) => e
                .change_visibility(log, now, &r.queue, r.receipt_handle, r.visibility_timeout)
                .map(|(receipt_handle, next_visible_time_ms)| {
                    Response::ChangeMessageVisibility(ChangeMessageVisibilityOk {
                        receipt_handle,
                        next_visible_time_ms,
                    })
                }),
            _ => Err(EngineError::new(ErrorCode::INTERNAL, "operation not available in this build")),
        };
        match result {
            Ok(resp) => self.reply_ok(to, id, &resp),
            Err(err) => self.reply_err(to, op, id, err.code, &err.message),
        }
        for (to, op, id, code, msg) in std::mem::take(&mut self.pending_errors) {
            self.reply_err(to, op, id, code, &msg);
        }
        self.serve_waiters(now);
    }

    /// Testing only (`--fault-drop-one-in N`): the send carrying every Nth
    /// message is acknowledged with made-up ids and not stored.
    fn fault_drop(&mut self, request: &Request) -> Option<Response> {
        if self.fault_drop_one_in == 0 {
            return None;
        }
        let n = match request {
            Request::SendMessage(_) => 1,
            Request::BatchSendMessage(r) => r.bodies.len() as u64,
            _ => return None,
        };
        let before = self.fault_sends / self.fault_drop_one_in;
        self.fault_sends += n;
        if self.fault_sends / self.fault_drop_one_in == before {
            return None;
        }
        let fake = u64::MAX - self.fault_sends;
        Some(match request {
            Request::SendMessage(_) => Response::SendMessage(SendMessageOk { msg_id: fake }),
            _ => Response::BatchSendMessage(BatchSendMessageOk { msg_ids: (0..n).map(|i| fake - i).collect() }),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn receive(&mut self, to: ReplyTo, id: u64, batch: bool, queue: &str, max: usize, wait: Option<u32>, now: u64) {
        let op = if batch { Opcode::BatchReceiveMessage } else { Opcode::ReceiveMessage } as u16;
        match self.engine.receive(&mut self.log, now, queue, max, wait) {
            Ok(ReceiveOutcome::Delivered(d)) => self.reply_deliveries(to, id, batch, &d),
            Ok(ReceiveOutcome::Empty) => self.reply_err(to, op, id, ErrorCode::NO_MESSAGE, "no message"),
            Ok(ReceiveOutcome::Waiting(w)) => {
                self.waits.insert(w, Wait { reply_to: to, request_id: id, batch });
            }
            Err(e) => self.reply_err(to, op, id, e.code, &e.message),
        }
    }

    /// Answers long polls that messages arrived for.
    pub(super) fn serve_waiters(&mut self, now: u64) {
        for (w, result) in self.engine.serve_waiters(&mut self.log, now) {
            let Some(wait) = self.waits.remove(&w) else { continue };
            match result {
                Ok(d) => self.reply_deliveries(wait.reply_to, wait.request_id, wait.batch, &d),
                Err(e) => {
                    let op = if wait.batch { Opcode::BatchReceiveMessage } else { Opcode::ReceiveMessage };
                    self.reply_err(wait.reply_to, op as u16, wait.request_id, e.code, &e.message)
                }
            }
        }
    }

    // ---- ListQueues: scatter to every shard, gather, page ------------------

    fn start_list(&mut self, to: ReplyTo, id: u64, l: &ListQueues) {
        let limit = if l.limit == 0 { LIST_PAGE_DEFAULT } else { l.limit };
        if limit > LIST_PAGE_MAX {
            let msg = format!("limit: {limit} exceeds {LIST_PAGE_MAX}");
            return self.reply_err(to, Opcode::ListQueues as u16, id, ErrorCode::INVALID_PARAMETER, &msg);
        }
        let gather = self.next_gather;
        self.next_gather += 1;
        let take = l.offset as usize + limit as usize;
        self.gathers.insert(
            gather,
            Gather {
                reply_to: to,
                request_id: id,
                offset: l.offset as usize,
                limit: limit as usize,
                parts_left: usize::from(self.shard_count()),
                total: 0,
                items: Vec::new(),
            },
        );
        for shard in 0..self.shard_count() {
            if shard == self.id {
                let (total, items) = self.engine.list_queues(&l.prefix, &l.contains, take);
                self.list_part(gather, total, items);
            } else {
                let msg = ShardMsg::ListRequest {
                    from: self.id,
                    gather,
                    prefix: l.prefix.clone(),
                    contains: l.contains.clone(),
                    take,
                };
                self.send_to(shard, msg);
            }
        }
    }

    pub(super) fn list_part(&mut self, gather: u64, total: u32, items: Vec<crate::engine::ListedQueue>) {
        let Some(g) = self.gathers.get_mut(&gather) else { return };
        g.total += total;
        g.items.extend(items);
        g.parts_left -= 1;
        if g.parts_left > 0 {
            return;
        }
        let Some(mut g) = self.gathers.remove(&gather) else { return };
        g.items.sort_by_key(|q| (q.created_ms, q.queue_id));
        let queues = g
            .items
            .into_iter()
            .skip(g.offset)
            .take(g.limit)
            .map(|q| QueueSummary { queue_id: q.queue_id, queue: q.name });
        let resp = Response::ListQueues(ListQueuesOk { total: g.total, queues: queues.collect() });
        self.reply_ok(g.reply_to, g.request_id, &resp);
    }

    // ---- replies ------------------------------------------------------------

    pub(super) fn reply_ok(&mut self, to: ReplyTo, id: u64, resp: &Response) {
        let out = self.reply_buf(to);
        reply::ok(out, id, resp);
        self.reply_done(to);
    }

    pub(super) fn reply_err(&mut self, to: ReplyTo, op: u16, id: u64, code: ErrorCode, msg: &str) {
        let out = self.reply_buf(to);
        reply::err(out, op, id, code, msg);
        self.reply_done(to);
    }

    fn reply_deliveries(&mut self, to: ReplyTo, id: u64, batch: bool, d: &[Delivery]) {
        let mut out = std::mem::take(self.reply_buf(to));
        reply::deliveries(&mut out, &self.log, id, batch, d);
        *self.reply_buf(to) = out;
        self.reply_done(to);
    }

    /// The buffer a reply to `to` is appended to: the local connection's
    /// output, or this turn's batch for the peer that owns the connection.
    /// A reply for a connection that has gone goes to a scratch buffer.
    fn reply_buf(&mut self, to: ReplyTo) -> &mut Vec<u8> {
        if to.shard == self.id {
            match self.conns.get_mut(to.conn.token) {
                Some(conn) if conn.gen == to.conn.gen => &mut conn.out,
                _ => {
                    self.scratch.clear();
                    &mut self.scratch
                }
            }
        } else {
            let batch = &mut self.remote_out[usize::from(to.shard)];
            batch.parts.push((to.conn, batch.buf.len() as u32, 0));
            &mut batch.buf
        }
    }

    fn reply_done(&mut self, to: ReplyTo) {
        if to.shard == self.id {
            if let Some(conn) = self.conns.get_mut(to.conn.token) {
                if conn.gen == to.conn.gen {
                    conn.in_flight = conn.in_flight.saturating_sub(1);
                    if conn.touched_turn != self.turn {
                        conn.touched_turn = self.turn;
                        self.touched.push(to.conn);
                    }
                }
            }
        } else {
            let batch = &mut self.remote_out[usize::from(to.shard)];
            let end = batch.buf.len() as u32;
            if let Some(last) = batch.parts.last_mut() {
                last.2 = end;
            }
        }
    }
}
