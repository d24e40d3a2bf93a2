//! Requests that need other shards first: scatter a query to them, gather
//! the answers, then answer the client or go on with the request.

use cmq_protocol::limits::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

use super::authn::visible;
use super::mailbox::{Answer, Membership, Query, ReplyTo, ShardMsg};
use super::reply::ReplyDep;
use super::Shard;
use crate::auth::actions::Action;
use crate::engine::{Listed, ListedQueue};

pub(super) enum GatherKind {
    List {
        what: Listed,
        offset: usize,
        limit: usize,
        total: u32,
        items: Vec<ListedQueue>,
    },
    ListRedrives {
        items: Vec<RedriveInfo>,
    },
    /// DeleteQueue waits to learn no queue uses this one as its dead-letter queue.
    DeadLetterSources {
        names: Vec<String>,
        then: Request,
    },
    /// Create/SetQueueAttributes waits to learn the dead-letter queue exists.
    QueueExists {
        dlq: String,
        exists: bool,
        then: Request,
    },
    /// ClusterStatus: every shard's replica state on this node.
    ClusterStatus {
        shards: Vec<(u16, ShardStatus)>,
    },
    /// GetStats: every shard's metrics; `top` queues are named.
    Stats {
        top: usize,
        shards: Vec<crate::metrics::snapshot::ShardSnapshot>,
    },
    /// A membership change on the shards this node leads: the first refusal.
    Membership {
        op: u16,
        refusal: Option<(ErrorCode, String)>,
    },
}

/// One page of a listing, as ListQueues and ListTopics ask for it.
pub(super) struct ListPage {
    pub prefix: String,
    pub contains: String,
    pub offset: u32,
    pub limit: u32,
}

impl From<ListQueues> for ListPage {
    fn from(l: ListQueues) -> ListPage {
        ListPage { prefix: l.prefix, contains: l.contains, offset: l.offset, limit: l.limit }
    }
}

impl From<ListTopics> for ListPage {
    fn from(l: ListTopics) -> ListPage {
        ListPage { prefix: l.prefix, contains: l.contains, offset: l.offset, limit: l.limit }
    }
}

pub(super) struct Gather {
    reply_to: ReplyTo,
    request_id: u64,
    parts_left: usize,
    kind: GatherKind,
}

impl Shard {
    /// Asks `shards` (this one included, answered in place) and continues
    /// with `kind` when all have answered.
    fn scatter(&mut self, to: ReplyTo, id: u64, query: Query, shards: Vec<u16>, kind: GatherKind, now: u64) {
        let gather = self.coord.next_gather;
        self.coord.next_gather += 1;
        self.coord.gathers.insert(gather, Gather { reply_to: to, request_id: id, parts_left: shards.len(), kind });
        for shard in shards {
            if shard == self.id {
                // In a group this waits for a ReadIndex round like the others.
                self.take_query(self.id, gather, query.clone(), now);
            } else {
                self.send_to(shard, ShardMsg::Query { from: self.id, gather, query: query.clone() });
            }
        }
    }

    fn all_shards(&self) -> Vec<u16> {
        (0..self.shard_count()).collect()
    }

    pub(super) fn answer_query(&mut self, query: Query) -> Answer {
        match query {
            Query::List { what, prefix, contains, take, viewer } => {
                let (action, kind) = match what {
                    Listed::Queues => (Action::LIST_QUEUE, "queue"),
                    Listed::Topics => (Action::LIST_TOPIC, "topic"),
                };
                let see = |name: &str| visible(&viewer, action, kind, name);
                let (total, items) = self.engine.list(what, &prefix, &contains, take, see);
                Answer::Queues { total, items }
            }
            Query::Redrives => Answer::Redrives(self.engine.list_redrives()),
            Query::DeadLetterSources { name } => Answer::Names(self.engine.dead_letter_sources(&name)),
            Query::QueueExists { name } => Answer::Exists(self.engine.queue_exists(&name)),
            Query::ReplicaStatus => Answer::Status(self.id, self.shard_status()),
            Query::Membership(m) => Answer::Done(self.membership(m)),
        }
    }

    pub(super) fn gather_answer(&mut self, gather: u64, answer: Answer, now: u64) {
        let Some(g) = self.coord.gathers.get_mut(&gather) else { return };
        match (&mut g.kind, answer) {
            (GatherKind::List { total, items, .. }, Answer::Queues { total: t, items: i }) => {
                *total += t;
                items.extend(i);
            }
            (GatherKind::ListRedrives { items }, Answer::Redrives(r)) => items.extend(r),
            (GatherKind::DeadLetterSources { names, .. }, Answer::Names(n)) => names.extend(n),
            (GatherKind::QueueExists { exists, .. }, Answer::Exists(e)) => *exists |= e,
            (GatherKind::ClusterStatus { shards }, Answer::Status(k, st)) => shards.push((k, st)),
            (GatherKind::Stats { shards, .. }, Answer::Stats(s)) => shards.push(*s),
            (GatherKind::Membership { refusal, .. }, Answer::Done(r)) => {
                if let Err(e) = r {
                    refusal.get_or_insert(e);
                }
            }
            _ => log::error!("shard {}: answer does not match its question (gather {gather})", self.id),
        }
        g.parts_left -= 1;
        if g.parts_left > 0 {
            return;
        }
        if let Some(g) = self.coord.gathers.remove(&gather) {
            self.finish_gather(g, now);
        }
    }

    /// Every shard answered: answer the client, or go on with the request.
    fn finish_gather(&mut self, g: Gather, now: u64) {
        let (to, id) = (g.reply_to, g.request_id);
        match g.kind {
            GatherKind::List { what, offset, limit, total, mut items } => {
                items.sort_by_key(|q| (q.create_seq, q.created_ms, q.queue_id));
                let page = items.into_iter().skip(offset).take(limit);
                let response = match what {
                    Listed::Queues => {
                        let queues = page.map(|q| QueueSummary { queue_id: q.queue_id, queue: q.name }).collect();
                        Response::ListQueues(ListQueuesOk { total, queues })
                    }
                    Listed::Topics => {
                        let topics = page.map(|q| TopicSummary { topic_id: q.queue_id, topic: q.name }).collect();
                        Response::ListTopics(ListTopicsOk { total, topics })
                    }
                };
                self.reply_ok(to, id, &response, ReplyDep::Read);
            }
            GatherKind::ListRedrives { mut items } => {
                let viewer = self.viewer(to);
                items.retain(|r| visible(&viewer, Action::LIST_REDRIVES, "queue", &r.dead_letter_queue));
                items.sort_by_key(|r| (r.started_ms, r.id));
                self.reply_ok(to, id, &Response::ListRedrives(ListRedrivesOk { redrives: items }), ReplyDep::Read);
            }
            GatherKind::DeadLetterSources { names, then } if names.is_empty() => self.route_to_owner(to, id, then, now),
            GatherKind::DeadLetterSources { names, then } => {
                let msg = format!(
                    "queue is the dead-letter queue of {}; change their deadLetterQueueName first",
                    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
                );
                self.reply_err(to, then.opcode() as u16, id, ErrorCode::QUEUE_IN_USE, &msg, ReplyDep::Read);
            }
            GatherKind::QueueExists { exists: true, then, .. } => self.route_to_owner(to, id, then, now),
            GatherKind::Membership { op, refusal: Some((code, msg)) } => {
                self.reply_err(to, op, id, code, &msg, ReplyDep::Logged(0))
            }
            GatherKind::Membership { op, refusal: None } => {
                // The change was proposed (or the transfer started): that is
                // the answer, not a read of state, so no ReadIndex round
                // (a leader handing over leadership would never finish one).
                let empty = Empty {};
                let resp = match Opcode::from_u16(op) {
                    Some(Opcode::TransferLeader) => Response::TransferLeader(empty),
                    Some(Opcode::AddNode) => Response::AddNode(empty),
                    _ => Response::RemoveNode(empty),
                };
                self.reply_ok(to, id, &resp, ReplyDep::Logged(0));
            }
            GatherKind::Stats { top, shards } => self.finish_stats(to, id, top, shards),
            GatherKind::ClusterStatus { mut shards } => {
                shards.sort_by_key(|(k, _)| *k);
                let map = self.shared.cluster_map();
                let shards = shards.into_iter().map(|(_, st)| st).collect();
                self.reply_ok_about_node(to, id, &Response::ClusterStatus(ClusterStatusOk { map, shards }));
            }
            GatherKind::QueueExists { dlq, then, .. } => {
                let field = match then {
                    Request::Subscribe(_) => "endpoint",
                    Request::StartRedrive(_) => "to",
                    _ => "deadLetterQueueName",
                };
                let msg = format!("{field}: queue {dlq:?} does not exist");
                self.reply_err(to, then.opcode() as u16, id, ErrorCode::QUEUE_NOT_FOUND, &msg, ReplyDep::Read);
            }
        }
    }

    /// ListQueues, ListTopics: every shard lists its own; the pages merge
    /// in creation order.
    pub(super) fn start_list(&mut self, to: ReplyTo, id: u64, what: Listed, page: ListPage, now: u64) {
        let limit = if page.limit == 0 { LIST_PAGE_DEFAULT } else { page.limit };
        if limit > LIST_PAGE_MAX {
            let op = match what {
                Listed::Queues => Opcode::ListQueues,
                Listed::Topics => Opcode::ListTopics,
            };
            let msg = format!("limit: {limit} exceeds {LIST_PAGE_MAX}");
            return self.reply_err(to, op as u16, id, ErrorCode::INVALID_PARAMETER, &msg, ReplyDep::Read);
        }
        let take = page.offset as usize + limit as usize;
        let viewer = self.viewer(to);
        let query = Query::List { what, prefix: page.prefix, contains: page.contains, take, viewer };
        let (offset, limit) = (page.offset as usize, limit as usize);
        let kind = GatherKind::List { what, offset, limit, total: 0, items: Vec::new() };
        self.scatter(to, id, query, self.all_shards(), kind, now);
    }

    /// TransferLeader, AddNode, RemoveNode: every shard this node leads
    /// (or the one named) carries it out.
    pub(super) fn start_membership(&mut self, to: ReplyTo, id: u64, request: Request, now: u64) {
        let op = request.opcode() as u16;
        if self.repl.is_none() {
            let msg = "this broker runs as a single node (no --peers): there is no cluster to change";
            return self.reply_err(to, op, id, ErrorCode::INVALID_PARAMETER, msg, ReplyDep::Read);
        }
        let (m, shards) = match request {
            Request::TransferLeader(t) => {
                let shards = match t.shard {
                    Some(k) if k >= self.shard_count() => {
                        let msg = format!("shard: {k} is not below the shard count {}", self.shard_count());
                        return self.reply_err(to, op, id, ErrorCode::INVALID_PARAMETER, &msg, ReplyDep::Read);
                    }
                    Some(k) => vec![k],
                    None => self.all_shards(),
                };
                (Membership::TransferLeader { to: t.to }, shards)
            }
            Request::AddNode(a) => match a.peer_addr.parse() {
                Ok(peer_addr) if a.id != 0 => (Membership::AddNode { id: a.id, peer_addr }, self.all_shards()),
                _ => {
                    let msg =
                        format!("id {} / peer_addr {:?}: a node id (1..) and an IP:PORT are needed", a.id, a.peer_addr);
                    return self.reply_err(to, op, id, ErrorCode::INVALID_PARAMETER, &msg, ReplyDep::Read);
                }
            },
            Request::RemoveNode(r) => (Membership::RemoveNode { id: r.id }, self.all_shards()),
            _ => return,
        };
        let kind = GatherKind::Membership { op, refusal: None };
        self.scatter(to, id, Query::Membership(m), shards, kind, now);
    }

    pub(super) fn start_cluster_status(&mut self, to: ReplyTo, id: u64, now: u64) {
        let kind = GatherKind::ClusterStatus { shards: Vec::new() };
        self.scatter(to, id, Query::ReplicaStatus, self.all_shards(), kind, now);
    }

    /// GetStats: every shard (this one too) is asked through its inbox, as
    /// the HTTP port asks, and answers into this shard's inbox.
    pub(super) fn start_stats(&mut self, to: ReplyTo, id: u64, top: u16, now: u64) {
        use crate::metrics::snapshot::StatsRequest;
        let top = usize::from(top);
        if top > STATS_QUEUES_MAX {
            let msg = format!("top_queues: {top} exceeds {STATS_QUEUES_MAX}");
            return self.reply_err(to, Opcode::GetStats as u16, id, ErrorCode::INVALID_PARAMETER, &msg, ReplyDep::Read);
        }
        let gather = self.coord.next_gather;
        self.coord.next_gather += 1;
        let n = usize::from(self.shard_count());
        let kind = GatherKind::Stats { top, shards: Vec::with_capacity(n) };
        self.coord.gathers.insert(gather, Gather { reply_to: to, request_id: id, parts_left: n, kind });
        for shard in 0..self.shard_count() {
            let me = self.shared.peers[usize::from(self.id)].clone();
            let reply = Box::new(move |s| {
                if me.send(ShardMsg::Answer { gather, answer: Answer::Stats(Box::new(s)) }).is_err() {
                    log::warn!(target: "cmq::shard", "a GetStats answer was dropped: the asking shard's inbox is full");
                }
            });
            let req = StatsRequest { top_queues: Some(top), reply };
            if shard == self.id {
                self.answer_stats(req, now);
            } else {
                self.send_to(shard, ShardMsg::Stats(req));
            }
        }
    }

    pub(super) fn start_list_redrives(&mut self, to: ReplyTo, id: u64, now: u64) {
        let kind = GatherKind::ListRedrives { items: Vec::new() };
        self.scatter(to, id, Query::Redrives, self.all_shards(), kind, now);
    }

    /// Queue-management requests with cross-shard preconditions check them
    /// first; returns the request back if it has none.
    pub(super) fn precheck(&mut self, to: ReplyTo, id: u64, request: Request, now: u64) -> Option<Request> {
        match &request {
            Request::DeleteQueue(r) => {
                let query = Query::DeadLetterSources { name: r.queue.clone() };
                let kind = GatherKind::DeadLetterSources { names: Vec::new(), then: request };
                self.scatter(to, id, query, self.all_shards(), kind, now);
                None
            }
            Request::CreateQueue(CreateQueue { attributes, queue })
            | Request::SetQueueAttributes(SetQueueAttributes { attributes, queue })
                if attributes.dead_letter_queue.as_ref().is_some_and(|d| !d.is_empty() && d != queue) =>
            {
                let dlq = attributes.dead_letter_queue.clone().unwrap_or_default();
                if names::validate_name("deadLetterQueueName", &dlq).is_err() {
                    return Some(request); // the engine reports the bad name
                }
                let owner = shard_for(&dlq, self.shard_count());
                let query = Query::QueueExists { name: dlq.clone() };
                let kind = GatherKind::QueueExists { dlq, exists: false, then: request };
                self.scatter(to, id, query, vec![owner], kind, now);
                None
            }
            // A queue subscription's queue (or an HTTP subscription's
            // dead-letter queue) must exist.
            Request::Subscribe(r) if r.protocol == SubscriptionProtocol::Queue || !r.dead_letter_queue.is_empty() => {
                let queue = if r.protocol == SubscriptionProtocol::Queue {
                    r.endpoint.clone()
                } else {
                    r.dead_letter_queue.clone()
                };
                if names::validate_name("endpoint", &queue).is_err() {
                    return Some(request); // the engine reports the bad name
                }
                let owner = shard_for(&queue, self.shard_count());
                let query = Query::QueueExists { name: queue.clone() };
                let kind = GatherKind::QueueExists { dlq: queue, exists: false, then: request };
                self.scatter(to, id, query, vec![owner], kind, now);
                None
            }
            // A redrive to a queue that does not exist is refused up front,
            // not discovered message by message.
            Request::StartRedrive(r) if !r.to.is_empty() => {
                if names::validate_name("to", &r.to).is_err() {
                    return Some(request); // the engine reports the bad name
                }
                let owner = shard_for(&r.to, self.shard_count());
                let query = Query::QueueExists { name: r.to.clone() };
                let kind = GatherKind::QueueExists { dlq: r.to.clone(), exists: false, then: request };
                self.scatter(to, id, query, vec![owner], kind, now);
                None
            }
            _ => Some(request),
        }
    }
}

/// Scatter/gather requests under way, by number.
pub(super) struct Coordination {
    pub(super) gathers: std::collections::HashMap<u64, Gather>,
    pub(super) next_gather: u64,
}
