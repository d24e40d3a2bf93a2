//! Turning decoded frames into engine calls and responses.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use cmq_protocol::frame::FrameHeader;
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

use super::handlers::Receive;
use super::mailbox::{ConnRef, Forwarded, Handover, ReplyTo, ShardMsg};
use super::reply::{self, ReplyDep};
use super::Shard;
use crate::engine::Listed;

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
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return };
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
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return };
        conn.in_flight += 1;
        let reply_to = ReplyTo { shard: self.id, conn: me };
        if self.drain.draining {
            let op = request.opcode() as u16;
            return self.reply_err(
                reply_to,
                op,
                header.request_id,
                ErrorCode::SHUTTING_DOWN,
                "server shutting down",
                ReplyDep::Read,
            );
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
        let Some(conn) = self.clients.conns.get_mut(me.token) else { return };
        conn.handshaken = true;
        reply::ok(&mut conn.out, header.request_id, &resp);
        conn.release_all_now();
        self.write_conn(me.token);
        // From now on the frame, output and idle deadlines apply.
        self.arm_deadline(me);
    }

    /// Moves the connection (and any bytes it already sent) to the shard it asked for.
    fn hand_over(&mut self, me: ConnRef, target: u16, request_id: u64, version: u16) {
        let Some(mut conn) = self.clients.conns.try_remove(me.token) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.uncharge(&conn);
        let h = Handover {
            stream: conn.stream,
            pending: conn.rbuf,
            handshake_request_id: request_id,
            version,
            session: conn.session,
            tls: conn.tls,
        };
        if let Err(ShardMsg::Handover(h)) = self.shared.peers[usize::from(target)].send(ShardMsg::Handover(Box::new(h)))
        {
            // Keep serving it here rather than drop it.
            if let Some(me) = self.add_conn(h.stream, true) {
                self.shared.conn_count.fetch_sub(1, Ordering::Relaxed);
                let resp = self.handshake_ok(version);
                if let Some(conn) = self.clients.conns.get_mut(me.token) {
                    conn.session = h.session;
                    conn.tls = h.tls;
                    conn.rbuf = h.pending;
                    reply::ok(&mut conn.out, request_id, &resp);
                    conn.release_all_now();
                }
                self.write_conn(me.token);
                self.recharge(me.token);
                self.clients.read_again.push(me);
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
            if let Some(conn) = self.clients.conns.get_mut(reply_to.conn.token).filter(|_| reply_to.shard == self.id) {
                conn.mark_forwarded(owner);
            }
            self.cross.forward_out[usize::from(owner)].push(Forwarded { reply_to, request_id, request });
        }
    }

    /// Requests that are not about one queue.
    fn execute_anywhere(&mut self, to: ReplyTo, id: u64, request: Request, now: u64) {
        match request {
            Request::Handshake(_) => {
                let msg = "the handshake is already done";
                self.reply_err(to, Opcode::Handshake as u16, id, ErrorCode::INVALID_PARAMETER, msg, ReplyDep::Read)
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
            Request::ListQueues(l) => self.start_list(to, id, Listed::Queues, l.into(), now),
            Request::ListTopics(l) => self.start_list(to, id, Listed::Topics, l.into(), now),
            Request::ListRedrives(_) => self.start_list_redrives(to, id, now),
            Request::GetStats(g) => self.start_stats(to, id, g.top_queues, now),
            Request::AuthChallenge(_) | Request::Authenticate(_) => {
                let op = request_op(&request);
                let msg = "authentication comes before the handshake";
                self.reply_err(to, op, id, ErrorCode::INVALID_PARAMETER, msg, ReplyDep::Read)
            }
            Request::WhoAmI(_) => {
                let me = self.who_am_i(to);
                self.reply_ok(to, id, &Response::WhoAmI(me), ReplyDep::Read)
            }
            Request::ListKeys(_) => {
                let keys = self.list_keys(to);
                self.reply_ok(to, id, &Response::ListKeys(keys), ReplyDep::Read)
            }
            Request::RegisterChecker(r) => {
                if let Err(e) = names::validate_name("producerGroup", &r.producer_group) {
                    return self.reply_err(
                        to,
                        Opcode::RegisterChecker as u16,
                        id,
                        ErrorCode::INVALID_PARAMETER,
                        &e,
                        ReplyDep::Read,
                    );
                }
                self.register_checker(r.producer_group, to);
                self.reply_ok(to, id, &Response::RegisterChecker(Empty {}), ReplyDep::Read);
            }
            other => {
                let op = other.opcode() as u16;
                self.reply_err(to, op, id, ErrorCode::INVALID_PARAMETER, "not a client request", ReplyDep::Read)
            }
        }
    }

    /// Runs a request against this shard's engine (this shard owns the
    /// queue): one handler per command, grouped as in `protocol/src/`.
    pub(super) fn execute(&mut self, to: ReplyTo, id: u64, request: Request, now: u64) {
        let op = request.opcode() as u16;
        if !self.may_serve() && request.route() != Route::Any {
            // Nothing ran: the client may send it to the leader.
            let msg = self.not_leader_message();
            return self.reply_err(to, op, id, ErrorCode::NOT_LEADER, &msg, ReplyDep::Now);
        }
        if let Some(fake) = self.fault_drop(&request) {
            return self.reply_ok(to, id, &fake, ReplyDep::Read);
        }
        let handled = match request {
            Request::CreateQueue(r) => self.create_queue(now, &r),
            Request::DeleteQueue(r) => self.delete_queue(now, &r),
            Request::GetQueueAttributes(r) => self.get_queue_attributes(now, &r),
            Request::SetQueueAttributes(r) => self.set_queue_attributes(now, &r),
            Request::SendMessage(r) => self.send_message(now, &r),
            Request::BatchSendMessage(r) => self.batch_send_message(now, &r),
            Request::ReceiveMessage(r) => {
                let ask = Receive { queue: &r.queue, max: 1, polling_wait_seconds: r.polling_wait_seconds };
                let handled = self.receive(to, id, false, ask, now);
                // A receive only takes messages: no long poll became servable.
                return self.answer(to, op, id, handled);
            }
            Request::BatchReceiveMessage(r) => {
                let max = usize::from(r.max_messages);
                let ask = Receive { queue: &r.queue, max, polling_wait_seconds: r.polling_wait_seconds };
                let handled = self.receive(to, id, true, ask, now);
                return self.answer(to, op, id, handled);
            }
            Request::DeleteMessage(r) => self.delete_message(now, &r),
            Request::BatchDeleteMessage(r) => self.batch_delete_message(now, &r),
            Request::ChangeMessageVisibility(r) => self.change_message_visibility(now, &r),
            Request::RewindQueue(r) => self.rewind_queue(now, &r),
            Request::PeekMessages(r) => self.peek_messages(&r),
            Request::QueryMessage(r) => self.query_message(&r),
            Request::PurgeQueue(r) => self.purge_queue(now, &r),
            Request::SendTransactionMessage(r) => self.send_transaction_message(now, &r),
            Request::EndTransaction(r) => self.end_transaction(now, &r),
            Request::StartRedrive(r) => self.start_redrive(now, &r),
            Request::CancelRedrive(r) => self.cancel_redrive(now, &r),
            Request::CreateKey(r) => self.create_key(now, &r),
            Request::RotateKey(r) => self.rotate_key(now, &r),
            Request::DeleteKey(r) => self.delete_key(now, &r),
            Request::SetPolicy(r) => self.set_policy(now, &r),
            Request::GetPolicy(r) => self.get_policy(&r),
            Request::CreateTopic(r) => self.create_topic(now, &r),
            Request::DeleteTopic(r) => self.delete_topic(now, &r),
            Request::GetTopicAttributes(r) => self.get_topic_attributes(&r),
            Request::SetTopicAttributes(r) => self.set_topic_attributes(now, &r),
            Request::PublishMessage(r) => self.publish_message(now, &r),
            Request::BatchPublishMessage(r) => self.batch_publish_message(now, &r),
            Request::Subscribe(r) => self.subscribe(now, &r),
            Request::Unsubscribe(r) => self.unsubscribe(now, &r),
            Request::ListSubscriptions(r) => self.list_subscriptions(&r),
            Request::GetSubscriptionAttributes(r) => self.get_subscription_attributes(&r),
            Request::SetSubscriptionAttributes(r) => self.set_subscription_attributes(now, &r),
            Request::ClearSubscriptionFilterTags(r) => self.clear_subscription_filter_tags(now, r),
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
            | Request::ListKeys(_) => return self.execute_anywhere(to, id, request, now),
        };
        self.answer(to, op, id, handled);
        self.serve_waiters(now);
    }
}

fn request_op(r: &Request) -> u16 {
    r.opcode() as u16
}
