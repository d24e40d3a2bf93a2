//! Turning decoded frames into engine calls and responses.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use cmq_protocol::frame::FrameHeader;
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

use super::mailbox::{ConnRef, Forwarded, Handover, ReplyTo, ShardMsg};
use super::{reply, Shard, Wait};
use crate::engine::{Delivery, EngineError, ReceiveOutcome};

impl Shard {
    pub(super) fn handle_frame(&mut self, me: ConnRef, header: FrameHeader, payload: Bytes, now: u64) {
        if header.is_response() || header.is_push() {
            return self.fail_conn_answering(
                me.token,
                header.opcode,
                header.request_id,
                ErrorCode::MALFORMED_FRAME,
                "clients send requests only",
            );
        }
        let Some(conn) = self.conns.get_mut(me.token) else { return };
        if !conn.handshaken {
            if self.pre_handshake(me, header, payload.clone(), now) {
                return;
            }
            return self.handshake(me, header, payload);
        }
        let request = match Request::decode(header.opcode, payload) {
            Ok(Request::TransactionCheck(_)) => {
                reply::err(
                    &mut conn.out,
                    header.opcode,
                    header.request_id,
                    ErrorCode::UNKNOWN_OPCODE,
                    "push-only frame",
                );
                return self.touch(me);
            }
            Ok(r) => r,
            Err(e) => {
                // The frame was well delimited, so the stream is intact: answer and go on.
                reply::err(&mut conn.out, header.opcode, header.request_id, e.code(), &e.to_string());
                return self.touch(me);
            }
        };
        if !self.permitted(me, &header, &request) {
            return;
        }
        let Some(conn) = self.conns.get_mut(me.token) else { return };
        conn.in_flight += 1;
        let reply_to = ReplyTo { shard: self.id, conn: me };
        if self.draining {
            let op = request.opcode() as u16;
            return self.reply_err(reply_to, op, header.request_id, ErrorCode::SHUTTING_DOWN, "server shutting down");
        }
        if let Some(request) = self.precheck(reply_to, header.request_id, request, now) {
            self.route_to_owner(reply_to, header.request_id, request, now);
        }
    }

    fn handshake(&mut self, me: ConnRef, header: FrameHeader, payload: Bytes) {
        if header.opcode != Opcode::Handshake as u16 {
            return self.fail_conn_answering(
                me.token,
                header.opcode,
                header.request_id,
                ErrorCode::HANDSHAKE_REQUIRED,
                "the first frame on a connection must be a Handshake",
            );
        }
        let op = header.opcode;
        let hs = match Request::decode(op, payload) {
            Ok(Request::Handshake(h)) => h,
            Ok(_) | Err(_) => {
                return self.fail_conn_answering(
                    me.token,
                    op,
                    header.request_id,
                    ErrorCode::MALFORMED_FRAME,
                    "malformed handshake",
                )
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
            return self.fail_conn_answering(me.token, op, header.request_id, ErrorCode::UNSUPPORTED_VERSION, &msg);
        };
        if !self.admit(me, header.request_id, &hs.auth_method) {
            return;
        }
        if let Some(target) = hs.shard_hint.filter(|s| *s != self.id && *s < self.shard_count()) {
            return self.hand_over(me, target, header.request_id, version);
        }
        let resp = self.handshake_ok(version);
        let Some(conn) = self.conns.get_mut(me.token) else { return };
        conn.handshaken = true;
        reply::ok(&mut conn.out, header.request_id, &resp);
        conn.release_all_now();
        self.write_conn(me.token);
        // From now on the frame, output and idle deadlines apply.
        self.arm_deadline(me);
    }

    /// Moves the connection (and any bytes it already sent) to the shard it asked for.
    fn hand_over(&mut self, me: ConnRef, target: u16, request_id: u64, version: u16) {
        let Some(mut conn) = self.conns.try_remove(me.token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.uncharge(&conn);
        let h = Handover {
            stream: conn.stream,
            pending: conn.rbuf,
            handshake_request_id: request_id,
            version,
            session: conn.session,
        };
        if let Err(ShardMsg::Handover(h)) = self.shared.peers[usize::from(target)].send(ShardMsg::Handover(Box::new(h)))
        {
            // Keep serving it here rather than drop it.
            if let Some(me) = self.add_conn(h.stream, true) {
                self.shared.conn_count.fetch_sub(1, Ordering::Relaxed);
                let resp = self.handshake_ok(version);
                if let Some(conn) = self.conns.get_mut(me.token) {
                    conn.session = h.session;
                    conn.rbuf = h.pending;
                    reply::ok(&mut conn.out, request_id, &resp);
                    conn.release_all_now();
                }
                self.write_conn(me.token);
                self.recharge(me.token);
                self.read_again.push(me);
            }
        }
    }

    /// Runs a request here or forwards it to the shard that owns its queue.
    pub(super) fn route_to_owner(&mut self, reply_to: ReplyTo, request_id: u64, request: Request, now: u64) {
        let owner = match request.route() {
            Route::Any => return self.execute_anywhere(reply_to, request_id, request, now),
            Route::Shard(s) if s < self.shard_count() => s,
            Route::Shard(_) => self.id,
            Route::Queue(q) => shard_for(q, self.shard_count()),
        };
        if owner == self.id {
            self.execute(reply_to, request_id, request, now);
        } else {
            if let Some(conn) = self.conns.get_mut(reply_to.conn.token).filter(|_| reply_to.shard == self.id) {
                conn.mark_forwarded(owner);
            }
            self.forward_out[usize::from(owner)].push(Forwarded { reply_to, request_id, request });
        }
    }

    /// Requests that are not about one queue.
    fn execute_anywhere(&mut self, to: ReplyTo, id: u64, request: Request, now: u64) {
        match request {
            Request::Handshake(_) => {
                let msg = "the handshake is already done";
                self.reply_err(to, Opcode::Handshake as u16, id, ErrorCode::INVALID_PARAMETER, msg)
            }
            Request::Ping(_) => self.reply_ok_about_node(to, id, &Response::Ping(Empty {})),
            Request::GetClusterMap(_) => {
                let map = self.cluster_map();
                self.reply_ok_about_node(to, id, &Response::GetClusterMap(map))
            }
            Request::ClusterStatus(_) => self.start_cluster_status(to, id, now),
            Request::TransferLeader(_) | Request::AddNode(_) | Request::RemoveNode(_) => {
                self.start_membership(to, id, request, now)
            }
            Request::ListQueues(l) => self.start_list(to, id, l, now),
            Request::ListTopics(l) => self.start_list_topics(to, id, l, now),
            Request::ListRedrives(_) => self.start_list_redrives(to, id, now),
            Request::GetStats(g) => self.start_stats(to, id, g.top_queues, now),
            Request::AuthChallenge(_) | Request::Authenticate(_) => {
                let op = request_op(&request);
                let msg = "authentication comes before the handshake";
                self.reply_err(to, op, id, ErrorCode::INVALID_PARAMETER, msg)
            }
            Request::WhoAmI(_) => {
                let me = self.who_am_i(to);
                self.reply_ok(to, id, &Response::WhoAmI(me))
            }
            Request::ListKeys(_) => {
                let keys = self.list_keys(to);
                self.reply_ok(to, id, &Response::ListKeys(keys))
            }
            Request::RegisterChecker(r) => {
                if let Err(e) = names::validate_name("producerGroup", &r.producer_group) {
                    return self.reply_err(to, Opcode::RegisterChecker as u16, id, ErrorCode::INVALID_PARAMETER, &e);
                }
                self.register_checker(r.producer_group, to);
                self.reply_ok(to, id, &Response::RegisterChecker(Empty {}));
            }
            other => {
                let op = other.opcode() as u16;
                self.reply_err(to, op, id, ErrorCode::INVALID_PARAMETER, "not a client request")
            }
        }
    }

    /// Runs a request against this shard's engine (this shard owns the queue).
    pub(super) fn execute(&mut self, to: ReplyTo, id: u64, request: Request, now: u64) {
        let op = request.opcode() as u16;
        if !self.may_serve() && request.route() != Route::Any {
            // Nothing ran: the client may send it to the leader.
            let msg = self.not_leader_message();
            return self.reply_err(to, op, id, ErrorCode::NOT_LEADER, &msg);
        }
        if let Some(fake) = self.fault_drop(&request) {
            return self.reply_ok(to, id, &fake);
        }
        let (end_before, sync_before) = (self.log.end(), self.log.sync_mark());
        let result: Result<Response, EngineError> = match request {
            Request::CreateQueue(r) => self.create_queue(now, &r),
            Request::DeleteQueue(r) => self.delete_queue(now, &r.queue),
            Request::GetQueueAttributes(r) => self.engine.queue_info(now, &r.queue).map(Response::GetQueueAttributes),
            Request::SetQueueAttributes(r) => self
                .engine
                .set_queue_attributes(&mut self.log, now, &r.queue, &r.attributes)
                .map(Response::SetQueueAttributes),
            Request::SendMessage(r) => {
                let (body, key) = (std::slice::from_ref(&r.body), std::slice::from_ref(&r.idempotency_key));
                self.engine
                    .send_keyed(&mut self.log, now, &r.queue, r.delay_seconds, body, key)
                    .map(|ids| Response::SendMessage(SendMessageOk { msg_id: ids[0] }))
            }
            Request::BatchSendMessage(r) => self
                .engine
                .send_keyed(&mut self.log, now, &r.queue, r.delay_seconds, &r.bodies, &r.idempotency_keys)
                .map(|msg_ids| Response::BatchSendMessage(BatchSendMessageOk { msg_ids })),
            Request::ReceiveMessage(r) => {
                return self.receive(to, id, false, &r.queue, 1, r.polling_wait_seconds, now);
            }
            Request::BatchReceiveMessage(r) => {
                let max = usize::from(r.max_messages);
                return self.receive(to, id, true, &r.queue, max, r.polling_wait_seconds, now);
            }
            Request::DeleteMessage(r) => self
                .engine
                .delete(&mut self.log, now, &r.queue, &[r.receipt_handle])
                .and_then(|mut results| match results.pop() {
                    Some(Err(err)) => Err(err),
                    _ => Ok(Response::DeleteMessage(Empty {})),
                }),
            Request::BatchDeleteMessage(r) => {
                self.engine.delete(&mut self.log, now, &r.queue, &r.receipt_handles).map(|results| {
                    let results = results
                        .into_iter()
                        .map(|r| match r {
                            Ok(()) => ItemResult { code: 0, message: String::new() },
                            Err(e) => ItemResult { code: e.code.0, message: e.message },
                        })
                        .collect();
                    Response::BatchDeleteMessage(BatchDeleteMessageOk { results })
                })
            }
            Request::ChangeMessageVisibility(r) => self
                .engine
                .change_visibility(&mut self.log, now, &r.queue, r.receipt_handle, r.visibility_timeout)
                .map(|(receipt_handle, next_visible_time_ms)| {
                    Response::ChangeMessageVisibility(ChangeMessageVisibilityOk {
                        receipt_handle,
                        next_visible_time_ms,
                    })
                }),
            Request::RewindQueue(r) => self
                .engine
                .rewind(&mut self.log, now, &r.queue, r.start_consume_time_ms)
                .map(|rewound| Response::RewindQueue(RewindQueueOk { rewound })),
            Request::PeekMessages(r) => {
                self.engine.peek(&self.log, &r.queue, r.cursor, r.max, r.include_body).map(Response::PeekMessages)
            }
            Request::QueryMessage(r) => {
                self.engine.query_message(&self.log, &r.queue, r.msg_id).map(Response::QueryMessage)
            }
            Request::PurgeQueue(r) => self
                .engine
                .purge(&mut self.log, now, &r.queue)
                .map(|purged| Response::PurgeQueue(PurgeQueueOk { purged })),
            Request::SendTransactionMessage(r) => self
                .engine
                .send_half(&mut self.log, now, &r.queue, &r.producer_group, &r.body)
                .map(|msg_id| Response::SendTransactionMessage(SendMessageOk { msg_id })),
            Request::EndTransaction(r) => self
                .engine
                .end_transaction(&mut self.log, now, &r.queue, r.msg_id, r.commit)
                .map(|()| Response::EndTransaction(Empty {})),
            Request::StartRedrive(r) => self
                .engine
                .start_redrive(&mut self.log, now, &r.dead_letter_queue, &r.to, r.rate_per_second)
                .map(Response::StartRedrive),
            Request::CancelRedrive(r) => {
                self.engine.cancel_redrive(&mut self.log, now, r.id).map(Response::CancelRedrive)
            }
            Request::Handshake(_)
            | Request::Ping(_)
            | Request::ListQueues(_)
            | Request::ListRedrives(_)
            | Request::ListTopics(_)
            | Request::RegisterChecker(_)
            | Request::TransactionCheck(_)
            | Request::GetClusterMap(_)
            | Request::ClusterStatus(_)
            | Request::TransferLeader(_)
            | Request::AddNode(_)
            | Request::RemoveNode(_)
            | Request::GetStats(_)
            | Request::AuthChallenge(_)
            | Request::Authenticate(_)
            | Request::WhoAmI(_)
            | Request::ListKeys(_) => {
                return self.execute_anywhere(to, id, request, now);
            }
            Request::CreateKey(r) => crate::auth::secrets::new_key_pair()
                .map_err(|e| EngineError::new(ErrorCode::INTERNAL, format!("no random key available: {e}")))
                .and_then(|(sid, key)| self.engine.create_key(&mut self.log, now, &r, sid, key))
                .map(Response::CreateKey),
            Request::RotateKey(r) => crate::auth::secrets::new_secret_key()
                .map_err(|e| EngineError::new(ErrorCode::INTERNAL, format!("no random key available: {e}")))
                .and_then(|key| self.engine.rotate_key(&mut self.log, now, &r.name, key))
                .map(Response::RotateKey),
            Request::DeleteKey(r) => {
                self.engine.delete_key(&mut self.log, now, &r).map(|()| Response::DeleteKey(Empty {}))
            }
            Request::SetPolicy(r) => {
                self.engine.set_policy(&mut self.log, now, &r).map(|()| Response::SetPolicy(Empty {}))
            }
            Request::GetPolicy(r) => self.engine.get_policy(&r.name).map(Response::GetPolicy),
            Request::CreateTopic(r) => self.create_topic(now, &r),
            Request::DeleteTopic(r) => self.engine.delete_topic(&mut self.log, now, &r.topic).map(|()| {
                self.shared.topic_count.fetch_sub(1, Ordering::SeqCst);
                Response::DeleteTopic(Empty {})
            }),
            Request::GetTopicAttributes(r) => self.engine.topic_info(&r.topic).map(Response::GetTopicAttributes),
            Request::SetTopicAttributes(r) => self
                .engine
                .set_topic_attributes(&mut self.log, now, &r.topic, r.max_msg_size)
                .map(Response::SetTopicAttributes),
            Request::PublishMessage(r) => {
                let (body, key) = (std::slice::from_ref(&r.body), std::slice::from_ref(&r.idempotency_key));
                self.engine
                    .publish_keyed(&mut self.log, now, &r.topic, body, key, &r.tags.0, &r.routing_key)
                    .map(|ids| Response::PublishMessage(PublishMessageOk { msg_id: ids[0] }))
            }
            Request::BatchPublishMessage(r) => self
                .engine
                .publish_keyed(&mut self.log, now, &r.topic, &r.bodies, &r.idempotency_keys, &r.tags.0, &r.routing_key)
                .map(|msg_ids| Response::BatchPublishMessage(BatchPublishMessageOk { msg_ids })),
            Request::Subscribe(r) => self.engine.subscribe(&mut self.log, now, &r).map(Response::Subscribe),
            Request::Unsubscribe(r) => self
                .engine
                .unsubscribe(&mut self.log, now, &r.topic, &r.subscription)
                .map(|()| Response::Unsubscribe(Empty {})),
            Request::ListSubscriptions(r) => self
                .engine
                .list_subscriptions(&r.topic, &r.contains, r.offset, r.limit)
                .map(Response::ListSubscriptions),
            Request::GetSubscriptionAttributes(r) => {
                self.engine.subscription_info(&r.topic, &r.subscription).map(Response::GetSubscriptionAttributes)
            }
            Request::SetSubscriptionAttributes(r) => {
                self.engine.set_subscription_attributes(&mut self.log, now, &r).map(Response::SetSubscriptionAttributes)
            }
            Request::ClearSubscriptionFilterTags(r) => {
                let clear = SetSubscriptionAttributes {
                    topic: r.topic,
                    subscription: r.subscription,
                    filter_tags: Some(StrList::default()),
                    ..Default::default()
                };
                self.engine
                    .set_subscription_attributes(&mut self.log, now, &clear)
                    .map(|_| Response::ClearSubscriptionFilterTags(Empty {}))
            }
        };
        // A request that logged records depends on them (durable if any
        // was sync, else written); one that logged nothing may have read
        // state that is not durable yet, and waits for all of it.
        self.reply_dep = if self.log.sync_mark() > sync_before {
            Some(self.log.sync_mark())
        } else if self.log.end() > end_before {
            Some(0)
        } else {
            None
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

    /// CreateQueue within the broker-wide queue limit, numbered in broker-wide creation order.
    fn create_queue(&mut self, now: u64, r: &CreateQueue) -> Result<Response, EngineError> {
        let max = self.shared.cfg.max_queues;
        if self.shared.queue_count.fetch_add(1, Ordering::SeqCst) >= max {
            self.shared.queue_count.fetch_sub(1, Ordering::SeqCst);
            if self.engine.queue_exists(&r.queue) {
                let msg = format!("queue {:?} already exists", r.queue);
                return Err(EngineError::new(ErrorCode::QUEUE_ALREADY_EXISTS, msg));
            }
            return Err(EngineError::new(
                ErrorCode::TOO_MANY_QUEUES,
                format!("the broker holds its limit of {max} queues"),
            ));
        }
        let seq = self.shared.next_create_seq.fetch_add(1, Ordering::SeqCst);
        let created = self.engine.create_queue(&mut self.log, now, &r.queue, &r.attributes, seq);
        if created.is_err() {
            self.shared.queue_count.fetch_sub(1, Ordering::SeqCst);
        }
        created.map(|queue_id| Response::CreateQueue(CreateQueueOk { queue_id }))
    }

    /// CreateTopic within the broker-wide topic limit.
    fn create_topic(&mut self, now: u64, r: &CreateTopic) -> Result<Response, EngineError> {
        let max = self.shared.cfg.max_topics;
        if self.shared.topic_count.fetch_add(1, Ordering::SeqCst) >= max {
            self.shared.topic_count.fetch_sub(1, Ordering::SeqCst);
            if self.engine.topic_exists(&r.topic) {
                let msg = format!("topic {:?} already exists", r.topic);
                return Err(EngineError::new(ErrorCode::TOPIC_ALREADY_EXISTS, msg));
            }
            return Err(EngineError::new(
                ErrorCode::TOO_MANY_TOPICS,
                format!("the broker holds its limit of {max} topics"),
            ));
        }
        let seq = self.shared.next_create_seq.fetch_add(1, Ordering::SeqCst);
        let created = self.engine.create_topic(&mut self.log, now, &r.topic, &r.attributes, seq);
        if created.is_err() {
            self.shared.topic_count.fetch_sub(1, Ordering::SeqCst);
        }
        created.map(|topic_id| Response::CreateTopic(CreateTopicOk { topic_id }))
    }

    fn delete_queue(&mut self, now: u64, queue: &str) -> Result<Response, EngineError> {
        let orphans = self.engine.delete_queue(&mut self.log, now, queue)?;
        self.shared.queue_count.fetch_sub(1, Ordering::SeqCst);
        for w in orphans {
            if let Some(wait) = self.waits.remove(&w) {
                let msg = format!("queue {queue:?} was deleted");
                let op = if wait.batch { Opcode::BatchReceiveMessage } else { Opcode::ReceiveMessage };
                self.pending_errors.push((wait.reply_to, op as u16, wait.request_id, ErrorCode::QUEUE_NOT_FOUND, msg));
            }
        }
        Ok(Response::DeleteQueue(Empty {}))
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
            Ok(ReceiveOutcome::Empty) => {
                self.reply_dep = Some(0);
                self.reply_err(to, op, id, ErrorCode::NO_MESSAGE, "no message")
            }
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

    // ---- replies ------------------------------------------------------------

    pub(super) fn reply_ok(&mut self, to: ReplyTo, id: u64, resp: &Response) {
        if to.shard == self.id {
            if let Some(blank) = self.redacted(to, resp) {
                return self.reply_ok(to, id, &blank);
            }
        }
        let start = self.reply_start(to);
        reply::ok(self.reply_buf(to), id, resp);
        let need = self.reply_done(to, start);
        self.count_answer(resp.opcode() as u16, ErrorCode(0), need);
    }

    /// A reply about this node itself (Ping, the cluster map, its replicas'
    /// status): it states nothing about replicated queue state, so it waits
    /// for no record and no ReadIndex round. A node cut off from its group
    /// still answers it (a health check pings; an operator asks the
    /// partitioned node what it sees).
    pub(super) fn reply_ok_about_node(&mut self, to: ReplyTo, id: u64, resp: &Response) {
        let start = self.reply_start(to);
        reply::ok(self.reply_buf(to), id, resp);
        self.reply_dep = None;
        self.reply_done_with(to, start, crate::shard::release::Need::NONE);
        self.count_answer(resp.opcode() as u16, ErrorCode(0), crate::shard::release::Need::NONE);
    }

    pub(super) fn reply_err(&mut self, to: ReplyTo, op: u16, id: u64, code: ErrorCode, msg: &str) {
        let start = self.reply_start(to);
        reply::err(self.reply_buf(to), op, id, code, msg);
        let need = if code == ErrorCode::NOT_LEADER {
            // Says nothing about queue state and depends on no record: it
            // must not wait for a log (or a leadership) this replica lacks.
            self.reply_dep = None;
            self.reply_done_with(to, start, crate::shard::release::Need::NONE);
            crate::shard::release::Need::NONE
        } else if code == ErrorCode::STORAGE_UNAVAILABLE && self.log.is_failed() {
            // A failed log writes nothing more, so nothing logged after the
            // failure would ever let this refusal out; it states nothing
            // about queue state and depends on no record.
            self.reply_dep = None;
            self.reply_done_with(to, start, crate::shard::release::Need::NONE);
            crate::shard::release::Need::NONE
        } else {
            self.reply_done(to, start)
        };
        self.count_answer(op, code, need);
    }

    fn reply_deliveries(&mut self, to: ReplyTo, id: u64, batch: bool, d: &[Delivery]) {
        // A consumer sees only messages a crash cannot take back.
        self.reply_dep = Some(d.iter().map(|d| d.sync_end).max().unwrap_or(0));
        let start = self.reply_start(to);
        let mut out = std::mem::take(self.reply_buf(to));
        reply::deliveries(&mut out, &self.log, id, batch, d);
        *self.reply_buf(to) = out;
        let need = self.reply_done(to, start);
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
            match self.conns.get_mut(to.conn.token) {
                // A connection over its output bound (shed) gets no more answers.
                Some(conn) if conn.gen == to.conn.gen && !conn.shed => &mut conn.out,
                _ => {
                    self.scratch.clear();
                    &mut self.scratch
                }
            }
        } else {
            &mut self.remote_out[usize::from(to.shard)].buf
        }
    }

    fn reply_done(&mut self, to: ReplyTo, start: usize) -> crate::shard::release::Need {
        let need = self.reply_need();
        self.reply_done_with(to, start, need);
        need
    }

    fn reply_done_with(&mut self, to: ReplyTo, start: usize, need: crate::shard::release::Need) {
        if to.shard == super::external::EXTERNAL_SHARD {
            self.external_done(to, start, need);
        } else if to.shard == self.id {
            self.hold_conn(to.conn, need);
            self.answered(to.conn);
        } else {
            let batch = &mut self.remote_out[usize::from(to.shard)];
            let end = batch.buf.len();
            batch.parts.push((to.conn, start, end));
            self.remote_need = self.remote_need.max(need);
        }
    }
}

fn request_op(r: &Request) -> u16 {
    r.opcode() as u16
}
