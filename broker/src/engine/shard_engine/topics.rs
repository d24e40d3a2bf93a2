//! The topic model: topics, subscriptions, publishing, and the deliveries
//! that fan a published message out to queues (as transfers, like
//! dead-lettering) and HTTP endpoints (as pushes with retry state).
//!
//! A publish is one `Published` record naming the subscriptions that matched
//! at publish time; applying it creates one outbox entry per (message,
//! subscription), so after a crash every acknowledged publish still reaches
//! every subscription it matched.

use std::sync::Arc;

use bytes::Bytes;
use cmq_protocol::names::validate_name;
use cmq_protocol::topics::{TOPIC_MAX_MSG_SIZE, TOPIC_MSG_RETENTION_SECONDS};
use cmq_protocol::*;

use super::ShardEngine;
use crate::engine::dedup;
use crate::engine::error::EngineError;
use crate::engine::filter;
use crate::engine::record::{
    transfer_kind, Published, PushGaveUp, PushRetry, Record, Subscribed, SubscriptionDef, SubscriptionUpdated,
    TopicCreated, TopicDeleted, TopicUpdated, Unsubscribed, RECORD_IDS_MAX,
};
use crate::engine::record_log::{Durability, Log};
use crate::engine::topic::{Subscription, Topic, SUBSCRIPTIONS_PER_TOPIC_MAX};
use crate::engine::transfers::{topic_target, Lane, OutboxEntry, PublishMeta};

/// How long a push handed to the pusher may take before it is handed out again.
const PUSH_IN_FLIGHT_MS: u64 = 60_000;

/// When the push pool is full, how long a delivery waits before trying again.
pub(super) const PUSH_POOL_FULL_RETRY_MS: u64 = 100;

/// An HTTP push the shard should hand to its push pool.
#[derive(Debug, Clone)]
pub struct OutPush {
    pub id: u64,
    pub url: String,
    pub subscription: String,
    pub format: NotifyContentFormat,
    pub secret: [u8; 16],
    pub body_pos: u64,
    pub body_len: u32,
    pub meta: Arc<PublishMeta>,
    pub attempt: u32,
}

/// What became of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    Delivered,
    /// Worth retrying (any non-2xx answer, timeouts, refused connections).
    Failed(String),
    /// No retry can succeed (an invalid URL): given up at once.
    Rejected(String),
}

fn topic_not_found(name: &str) -> EngineError {
    EngineError::new(ErrorCode::TOPIC_NOT_FOUND, format!("topic {name:?} does not exist"))
}

fn subscription_not_found(topic: &str, name: &str) -> EngineError {
    EngineError::new(ErrorCode::SUBSCRIPTION_NOT_FOUND, format!("topic {topic:?} has no subscription {name:?}"))
}

fn invalid(e: String) -> EngineError {
    EngineError::invalid(e)
}

fn filter_type(t: &Topic) -> filter::FilterType {
    match t.filter_type {
        FilterType::Tag => filter::FilterType::Tag,
        FilterType::RoutingKey => filter::FilterType::RoutingKey,
    }
}

impl ShardEngine {
    fn topic_uid(&self, name: &str) -> Result<u32, EngineError> {
        self.topic_by_name.get(name).copied().ok_or_else(|| topic_not_found(name))
    }

    fn topic_durability(&self) -> Durability {
        Self::data_durability(self.cfg.default_flush)
    }

    // ---- topics -------------------------------------------------------------

    pub fn create_topic(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        u: &TopicAttributesUpdate,
        create_seq: u64,
    ) -> Result<u64, EngineError> {
        validate_name("topicName", name).map_err(invalid)?;
        if self.topic_by_name.contains_key(name) {
            return Err(EngineError::new(ErrorCode::TOPIC_ALREADY_EXISTS, format!("topic {name:?} already exists")));
        }
        let max_msg_size = TOPIC_MAX_MSG_SIZE
            .check(u.max_msg_size.map_or(TOPIC_MAX_MSG_SIZE.default, u64::from))
            .map_err(invalid)? as u32;
        let retention_s = TOPIC_MSG_RETENTION_SECONDS
            .check(u.msg_retention_seconds.map_or(TOPIC_MSG_RETENTION_SECONDS.default, u64::from))
            .map_err(invalid)? as u32;
        let filter_type = u.filter_type.unwrap_or_default().as_u8();
        let uid = self.counters.next_uid;
        let rec = TopicCreated {
            uid,
            time_ms: now_ms,
            create_seq,
            max_msg_size,
            retention_s,
            filter_type,
            name: name.to_owned(),
        };
        self.log_record(log, &rec, Durability::Synced)?;
        self.apply_topic_created(rec);
        Ok(self.queue_id(uid))
    }

    pub(super) fn apply_topic_created(&mut self, rec: TopicCreated) {
        let TopicCreated { uid, time_ms, create_seq, max_msg_size, retention_s, filter_type, name } = rec;
        self.counters.next_uid = self.counters.next_uid.max(uid + 1);
        if self.topics.contains_key(&uid) {
            return;
        }
        self.topic_by_name.insert(name.clone(), uid);
        self.topics.insert(
            uid,
            Topic {
                uid,
                name,
                max_msg_size,
                retention_s,
                filter_type: FilterType::from_u8(filter_type).unwrap_or_default(),
                created_ms: time_ms,
                modified_ms: time_ms,
                create_seq,
                subscriptions: Vec::new(),
                dedup: Default::default(),
            },
        );
    }

    /// Deletes a topic, its subscriptions and their pending deliveries.
    pub fn delete_topic(&mut self, log: &mut impl Log, now_ms: u64, name: &str) -> Result<(), EngineError> {
        let uid = self.topic_uid(name)?;
        self.log_record(log, &Record::TopicDeleted(TopicDeleted { uid, time_ms: now_ms }), Durability::Synced)?;
        self.apply_topic_deleted(uid);
        Ok(())
    }

    pub(super) fn apply_topic_deleted(&mut self, uid: u32) {
        if let Some(t) = self.topics.remove(&uid) {
            self.dedup_order.window_dropped(t.dedup.len());
            self.topic_by_name.remove(&t.name);
            for id in self.exchange.outbox.deliveries_in(topic_target(uid, 0)..=topic_target(uid, u32::MAX)) {
                self.exchange.outbox.remove(id);
            }
        }
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// The topic and subscription names of push `id` (an outbox entry), if it is still known.
    pub fn push_subscription(&self, id: u64) -> Option<(&str, &str)> {
        let e = self.exchange.outbox.get(id)?;
        let (uid, sid) = ((e.redrive >> 32) as u32, e.redrive as u32);
        let t = self.topics.get(&uid)?;
        let s = t.subscriptions.iter().find(|s| s.sid == sid)?;
        Some((t.name.as_str(), s.def.name.as_str()))
    }

    pub fn topic_exists(&self, name: &str) -> bool {
        self.topic_by_name.contains_key(name)
    }

    pub fn max_topic_create_seq(&self) -> u64 {
        self.topics.values().map(|t| t.create_seq).max().unwrap_or(0)
    }

    pub fn topic_info(&self, name: &str) -> Result<TopicInfo, EngineError> {
        let t = &self.topics[&self.topic_uid(name)?];
        Ok(TopicInfo {
            topic_id: self.queue_id(t.uid),
            topic: t.name.clone(),
            max_msg_size: t.max_msg_size,
            msg_retention_seconds: t.retention_s,
            filter_type: t.filter_type,
            create_time_ms: t.created_ms,
            last_modify_time_ms: t.modified_ms,
            msg_count: t.pending(),
            subscription_count: t.subscriptions.len() as u32,
            shard: self.cfg.shard,
        })
    }

    pub fn set_topic_attributes(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        name: &str,
        max_msg_size: Option<u32>,
    ) -> Result<TopicInfo, EngineError> {
        let uid = self.topic_uid(name)?;
        if let Some(size) = max_msg_size {
            let size = TOPIC_MAX_MSG_SIZE.check(u64::from(size)).map_err(invalid)? as u32;
            self.log_record(
                log,
                &Record::TopicUpdated(TopicUpdated { uid, time_ms: now_ms, max_msg_size: size }),
                Durability::Synced,
            )?;
            self.apply_topic_updated(uid, now_ms, size);
        }
        self.topic_info(name)
    }

    pub(super) fn apply_topic_updated(&mut self, uid: u32, time_ms: u64, max_msg_size: u32) {
        if let Some(t) = self.topics.get_mut(&uid) {
            t.max_msg_size = max_msg_size;
            t.modified_ms = time_ms;
        }
    }

    // ---- subscriptions --------------------------------------------------------

    /// Subscribes. HTTP subscriptions get a key their pushes are signed
    /// with, derived from the broker's secret (unguessable without it).
    pub fn subscribe(&mut self, log: &mut impl Log, now_ms: u64, r: &Subscribe) -> Result<SubscribeOk, EngineError> {
        let uid = self.topic_uid(&r.topic)?;
        validate_name("subscriptionName", &r.subscription).map_err(invalid)?;
        let t = &self.topics[&uid];
        if t.subscription(&r.subscription).is_some() {
            return Err(EngineError::new(
                ErrorCode::SUBSCRIPTION_ALREADY_EXISTS,
                format!("topic {:?} already has a subscription {:?}", r.topic, r.subscription),
            ));
        }
        if t.subscriptions.len() >= SUBSCRIPTIONS_PER_TOPIC_MAX {
            return Err(EngineError::new(
                ErrorCode::TOO_MANY_TOPICS,
                format!("topic {:?} already has {SUBSCRIPTIONS_PER_TOPIC_MAX} subscriptions", r.topic),
            ));
        }
        validate_endpoint(r.protocol, &r.endpoint)?;
        filter::validate_tags("filterTag", &r.filter_tags.0).map_err(invalid)?;
        filter::validate_binding_keys("bindingKey", &r.binding_keys.0).map_err(invalid)?;
        if !r.dead_letter_queue.is_empty() {
            validate_name("deadLetterQueueName", &r.dead_letter_queue).map_err(invalid)?;
        }
        let sid = self.counters.next_sid;
        let secret = self.keys.derive_secret(uid, sid, now_ms);
        let def = SubscriptionDef {
            name: r.subscription.clone(),
            protocol: r.protocol.as_u8(),
            endpoint: r.endpoint.clone(),
            strategy: r.notify_strategy.as_u8(),
            format: r.notify_content_format.as_u8(),
            filter_tags: r.filter_tags.0.clone(),
            binding_keys: r.binding_keys.0.clone(),
            dead_letter_queue: r.dead_letter_queue.clone(),
            secret,
        };
        let rec = Record::Subscribed(Subscribed { uid, sid, time_ms: now_ms, def: def.clone() });
        self.log_record(log, &rec, Durability::Synced)?;
        self.apply_subscribed(uid, sid, now_ms, def);
        let push_secret = if r.protocol == SubscriptionProtocol::Queue { String::new() } else { hex(&secret) };
        Ok(SubscribeOk { subscription_id: self.subscription_id(sid), push_secret })
    }

    pub(super) fn apply_subscribed(&mut self, uid: u32, sid: u32, time_ms: u64, def: SubscriptionDef) {
        self.counters.next_sid = self.counters.next_sid.max(sid + 1);
        let Some(t) = self.topics.get_mut(&uid) else { return };
        if t.subscription_by_sid(sid).is_some() {
            return;
        }
        t.subscriptions.push(Subscription {
            sid,
            def,
            created_ms: time_ms,
            modified_ms: time_ms,
            pending: 0,
            delivered: 0,
            dropped: 0,
        });
    }

    /// Removes a subscription and drops its pending deliveries.
    pub fn unsubscribe(&mut self, log: &mut impl Log, now_ms: u64, topic: &str, name: &str) -> Result<(), EngineError> {
        let uid = self.topic_uid(topic)?;
        let sid = self.topics[&uid].subscription(name).ok_or_else(|| subscription_not_found(topic, name))?.sid;
        self.log_record(log, &Record::Unsubscribed(Unsubscribed { uid, sid, time_ms: now_ms }), Durability::Synced)?;
        self.apply_unsubscribed(uid, sid);
        Ok(())
    }

    pub(super) fn apply_unsubscribed(&mut self, uid: u32, sid: u32) {
        if let Some(t) = self.topics.get_mut(&uid) {
            t.subscriptions.retain(|s| s.sid != sid);
        }
        let target = topic_target(uid, sid);
        for id in self.exchange.outbox.deliveries_in(target..=target) {
            self.exchange.outbox.remove(id);
        }
    }

    pub fn list_subscriptions(
        &self,
        topic: &str,
        contains: &str,
        offset: u32,
        limit: u32,
    ) -> Result<ListSubscriptionsOk, EngineError> {
        let limit = if limit == 0 { cmq_protocol::limits::LIST_PAGE_DEFAULT } else { limit };
        if limit > cmq_protocol::limits::LIST_PAGE_MAX {
            return Err(invalid(format!("limit: {limit} exceeds {}", cmq_protocol::limits::LIST_PAGE_MAX)));
        }
        let uid = self.topic_uid(topic)?;
        let t = &self.topics[&uid];
        let matching: Vec<&Subscription> = t.subscriptions.iter().filter(|s| s.def.name.contains(contains)).collect();
        let subscriptions = matching
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|s| SubscriptionSummary {
                subscription_id: self.subscription_id(s.sid),
                subscription: s.def.name.clone(),
                protocol: s.protocol(),
                endpoint: s.def.endpoint.clone(),
            })
            .collect();
        Ok(ListSubscriptionsOk { total: matching.len() as u32, subscriptions })
    }

    pub fn subscription_info(&self, topic: &str, name: &str) -> Result<SubscriptionInfo, EngineError> {
        let uid = self.topic_uid(topic)?;
        let s = self.topics[&uid].subscription(name).ok_or_else(|| subscription_not_found(topic, name))?;
        Ok(SubscriptionInfo {
            subscription_id: self.subscription_id(s.sid),
            topic: topic.to_owned(),
            subscription: s.def.name.clone(),
            protocol: s.protocol(),
            endpoint: s.def.endpoint.clone(),
            notify_strategy: s.strategy(),
            notify_content_format: s.format(),
            filter_tags: StrList(s.def.filter_tags.clone()),
            binding_keys: StrList(s.def.binding_keys.clone()),
            dead_letter_queue: s.def.dead_letter_queue.clone(),
            push_secret: if s.is_queue() { String::new() } else { hex(&s.def.secret) },
            create_time_ms: s.created_ms,
            last_modify_time_ms: s.modified_ms,
            msg_count: s.pending,
            delivered: s.delivered,
            dropped: s.dropped,
        })
    }

    /// Lists that are given replace the stored ones.
    pub fn set_subscription_attributes(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        r: &SetSubscriptionAttributes,
    ) -> Result<SubscriptionInfo, EngineError> {
        let uid = self.topic_uid(&r.topic)?;
        let s = self.topics[&uid]
            .subscription(&r.subscription)
            .ok_or_else(|| subscription_not_found(&r.topic, &r.subscription))?;
        let filter_tags = r.filter_tags.as_ref().map_or_else(|| s.def.filter_tags.clone(), |l| l.0.clone());
        let binding_keys = r.binding_keys.as_ref().map_or_else(|| s.def.binding_keys.clone(), |l| l.0.clone());
        filter::validate_tags("filterTag", &filter_tags).map_err(invalid)?;
        filter::validate_binding_keys("bindingKey", &binding_keys).map_err(invalid)?;
        let rec = SubscriptionUpdated {
            uid,
            sid: s.sid,
            time_ms: now_ms,
            strategy: r.notify_strategy.map_or(s.def.strategy, NotifyStrategy::as_u8),
            format: r.notify_content_format.map_or(s.def.format, NotifyContentFormat::as_u8),
            filter_tags,
            binding_keys,
        };
        self.log_record(log, &rec, Durability::Synced)?;
        self.apply_subscription_updated(rec);
        self.subscription_info(&r.topic, &r.subscription)
    }

    pub(super) fn apply_subscription_updated(&mut self, rec: SubscriptionUpdated) {
        let SubscriptionUpdated { uid, sid, time_ms, strategy, format, filter_tags, binding_keys } = rec;
        if let Some(s) = self.topics.get_mut(&uid).and_then(|t| t.subscription_by_sid(sid)) {
            s.def.strategy = strategy;
            s.def.format = format;
            s.def.filter_tags = filter_tags;
            s.def.binding_keys = binding_keys;
            s.modified_ms = time_ms;
        }
    }

    // ---- publishing -----------------------------------------------------------

    /// Publishes bodies sharing tags and a routing key; returns their ids.
    /// Acknowledged = logged with the subscriptions it matched, so every one of
    /// them will get it, across crashes.
    pub fn publish(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        topic: &str,
        bodies: &[Bytes],
        tags: &[String],
        routing_key: &str,
    ) -> Result<Vec<u64>, EngineError> {
        self.publish_keyed(log, now_ms, topic, bodies, &[], tags, routing_key)
    }

    /// [`ShardEngine::publish`] with idempotency keys (none, or one per
    /// body), deduplicated per topic as sends are per queue (`dedup.rs`).
    #[allow(clippy::too_many_arguments)]
    pub fn publish_keyed(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        topic: &str,
        bodies: &[Bytes],
        keys: &[Bytes],
        tags: &[String],
        routing_key: &str,
    ) -> Result<Vec<u64>, EngineError> {
        super::check_batch(bodies, keys)?;
        let n = bodies.len();
        let uid = self.topic_uid(topic)?;
        let t = &self.topics[&uid];
        let fates = dedup::plan(&t.dedup, keys, bodies.len(), now_ms);
        let (fresh, fresh_keys) = dedup::fresh(&fates, bodies, keys);
        if fresh.is_empty() {
            return Ok(dedup::answer(&fates, n, 0));
        }
        let bodies = &fresh[..];
        for (i, b) in bodies.iter().enumerate() {
            if b.is_empty() {
                return Err(invalid(format!("msgBody[{i}]: must not be empty")));
            }
            if b.len() > t.max_msg_size as usize {
                return Err(EngineError::new(
                    ErrorCode::MESSAGE_TOO_LARGE,
                    format!("msgBody[{i}]: {} bytes exceeds the topic's maxMsgSize {}", b.len(), t.max_msg_size),
                ));
            }
        }
        filter::validate_tags("msgTag", tags).map_err(invalid)?;
        filter::validate_routing_key("routingKey", routing_key).map_err(invalid)?;
        let ft = filter_type(t);
        let targets: Vec<u32> = t
            .subscriptions
            .iter()
            .filter(|s| filter::subscription_matches(ft, &s.def.filter_tags, &s.def.binding_keys, tags, routing_key))
            .map(|s| s.sid)
            .collect();
        let durability = self.topic_durability();
        let first_msg_id = self.alloc_msg_ids(bodies.len() as u64);
        let first_transfer = self.exchange.outbox.next_id;
        let mut rec = Published {
            uid,
            first_msg_id,
            first_transfer,
            time_ms: now_ms,
            tags: tags.to_vec(),
            routing_key: routing_key.to_owned(),
            targets,
            bodies: bodies.to_vec(),
            keys: fresh_keys,
        };
        let (pos, first_offset) = self.log_record(log, &rec, durability)?;
        let mut offset = u64::from(first_offset);
        let spans: Vec<(u64, u32)> = bodies
            .iter()
            .map(|b| {
                let at = (pos + offset, b.len() as u32);
                offset += b.len() as u64 + 4;
                at
            })
            .collect();
        let keys = std::mem::take(&mut rec.keys);
        self.apply_published(rec, &spans);
        self.remember_published_keys(uid, first_msg_id, now_ms, &keys);
        Ok(dedup::answer(&fates, n, first_msg_id))
    }

    /// Puts a `Published` record's keys into its topic's dedup window.
    pub(super) fn remember_published_keys(&mut self, uid: u32, first_msg_id: u64, time_ms: u64, keys: &[Bytes]) {
        self.remember_keys((dedup::DedupOwner::Topic, uid), keys, first_msg_id, time_ms);
    }

    /// One outbox entry per (body, target), ids `first_transfer..` in that order.
    pub(super) fn apply_published<B>(&mut self, rec: Published<B>, bodies: &[(u64, u32)]) {
        let Published { uid, first_msg_id, first_transfer, time_ms, tags, routing_key, targets, .. } = rec;
        self.bump_msg_counter(first_msg_id + bodies.len().saturating_sub(1) as u64);
        let n = (bodies.len() * targets.len()) as u64;
        self.exchange.outbox.next_id = self.exchange.outbox.next_id.max(first_transfer + n);
        let Some(t) = self.topics.get_mut(&uid) else { return };
        let topic = t.name.clone();
        for (i, (body_pos, body_len)) in bodies.iter().enumerate() {
            let meta = Arc::new(PublishMeta {
                topic: topic.clone(),
                msg_id: first_msg_id + i as u64,
                tags: tags.clone(),
                routing_key: routing_key.clone(),
                publish_ms: time_ms,
            });
            for (j, sid) in targets.iter().enumerate() {
                let Some(s) = t.subscription_by_sid(*sid) else { continue };
                s.pending += 1;
                let (kind, dst_queue) = if s.is_queue() {
                    (transfer_kind::PUBLISH, s.def.endpoint.clone())
                } else {
                    (transfer_kind::PUSH, String::new())
                };
                let id = first_transfer + (i * targets.len() + j) as u64;
                self.exchange.outbox.insert(
                    id,
                    OutboxEntry {
                        kind,
                        redrive: topic_target(uid, *sid),
                        src_uid: uid,
                        dst_queue,
                        body_pos: *body_pos,
                        body_len: *body_len,
                        suffix_len: 0,
                        dequeue_count: 0,
                        next_send_ms: 0,
                        attempts: 0,
                        publish: Some(meta.clone()),
                        created_ms: time_ms,
                    },
                );
            }
        }
    }

    /// A topic delivery left the outbox: count it on its subscription.
    pub(super) fn topic_delivery_done(&mut self, e: &OutboxEntry, delivered: bool) {
        if !is_topic_delivery(e) {
            return;
        }
        let (uid, sid) = ((e.redrive >> 32) as u32, e.redrive as u32);
        if let Some(s) = self.topics.get_mut(&uid).and_then(|t| t.subscription_by_sid(sid)) {
            s.pending = s.pending.saturating_sub(1);
            // An HTTP subscription's delivery that ends as a queue transfer
            // was given up on and moved to its dead-letter queue: not delivered.
            let dead_lettered = !s.is_queue() && e.kind == transfer_kind::PUBLISH;
            match (delivered, dead_lettered) {
                (true, false) => s.delivered += 1,
                (true, true) => {}
                (false, _) => s.dropped += 1,
            }
        }
    }

    // ---- HTTP pushes ----------------------------------------------------------

    /// Up to `max` pushes due now (the room the push pool has, at most
    /// `OUTBOX_DUE_PER_TURN_MAX` and its byte bound); marks them handed out.
    pub fn pushes_to_send(&mut self, now_ms: u64, max: usize) -> Vec<OutPush> {
        self.exchange.pushes_paused_until = 0;
        let due = self.exchange.outbox.take_due(now_ms, Lane::Push, max, PUSH_IN_FLIGHT_MS);
        due.into_iter()
            .filter_map(|(id, e)| {
                let (uid, sid) = ((e.redrive >> 32) as u32, e.redrive as u32);
                let s = self.topics.get(&uid)?.subscriptions.iter().find(|s| s.sid == sid)?;
                Some(OutPush {
                    id,
                    url: s.def.endpoint.clone(),
                    subscription: s.def.name.clone(),
                    format: s.format(),
                    secret: s.def.secret,
                    body_pos: e.body_pos,
                    body_len: e.body_len,
                    meta: e.publish.clone()?,
                    attempt: e.attempts,
                })
            })
            .collect()
    }

    /// Outcomes of pushes. Delivered: done. Failed: retried after
    /// `schedule(strategy, attempt, id)` (logged, so a restart keeps it), or
    /// given up on when the schedule says no more.
    pub fn push_results(
        &mut self,
        log: &mut impl Log,
        now_ms: u64,
        results: &[(u64, PushResult)],
        schedule: impl Fn(NotifyStrategy, u32, u64) -> Option<std::time::Duration>,
    ) {
        let mut done = Vec::new();
        let mut retries = Vec::new();
        for (id, r) in results {
            let Some(e) = self.exchange.outbox.get(*id) else { continue };
            match r {
                PushResult::Delivered => done.push(*id),
                PushResult::Rejected(reason) => {
                    log::warn!("push {id} rejected ({reason}); giving up");
                    self.give_up_delivery(log, now_ms, *id);
                }
                PushResult::Failed(reason) => {
                    let (uid, sid) = ((e.redrive >> 32) as u32, e.redrive as u32);
                    let strategy = self
                        .topics
                        .get(&uid)
                        .and_then(|t| t.subscriptions.iter().find(|s| s.sid == sid))
                        .map(Subscription::strategy)
                        .unwrap_or_default();
                    let attempt = e.attempts + 1;
                    match schedule(strategy, attempt, *id) {
                        Some(delay) => {
                            log::debug!("push {id} failed ({reason}); retry {attempt} in {delay:?}");
                            retries.push((*id, attempt, now_ms + delay.as_millis() as u64));
                        }
                        None => {
                            log::warn!(
                                "push {id} to subscription {uid}/{sid} failed {attempt} times ({reason}); giving up"
                            );
                            self.give_up_delivery(log, now_ms, *id);
                        }
                    }
                }
            }
        }
        // Records of at most RECORD_IDS_MAX entries: one turn may take
        // every outcome of a full pool.
        for chunk in retries.chunks(RECORD_IDS_MAX) {
            match self.log_record(log, &Record::PushRetry(PushRetry { entries: chunk.to_vec() }), Durability::Written) {
                Ok(_) => self.apply_push_retry(chunk),
                Err(e) => log::warn!("cannot log push retries: {}", e.message),
            }
        }
        self.log_transfers_done(log, &done);
    }

    /// The push pool had no room for this push after all: it is due again
    /// (not an attempt), once the pool has room.
    pub fn push_not_sent(&mut self, id: u64, now_ms: u64) {
        self.exchange.outbox.send_at(id, now_ms);
        self.push_pool_full(now_ms);
    }

    /// The push pool is full: due pushes wait until an outcome frees room
    /// (it wakes the loop) or `PUSH_POOL_FULL_RETRY_MS` pass; nothing is
    /// done per push meanwhile.
    pub fn push_pool_full(&mut self, now_ms: u64) {
        self.exchange.pushes_paused_until = now_ms + PUSH_POOL_FULL_RETRY_MS;
    }

    pub(super) fn apply_push_retry(&mut self, entries: &[(u64, u32, u64)]) {
        for (id, attempt, next_ms) in entries {
            self.exchange.outbox.update(*id, |e| {
                e.attempts = *attempt;
                e.next_send_ms = *next_ms;
            });
        }
    }

    /// Retries are over (or the topic's retention passed): an HTTP delivery
    /// goes to the subscription's dead-letter queue if it has one, anything
    /// else is dropped and counted.
    fn give_up_delivery(&mut self, log: &mut impl Log, now_ms: u64, id: u64) {
        match self.log_record(log, &Record::PushGaveUp(PushGaveUp { id, time_ms: now_ms }), Durability::Written) {
            Ok(_) => self.apply_push_gave_up(id, now_ms),
            Err(e) => log::warn!("cannot log a dropped delivery: {}", e.message),
        }
    }

    pub(super) fn apply_push_gave_up(&mut self, id: u64, time_ms: u64) {
        let Some(e) = self.exchange.outbox.get(id) else { return };
        let (uid, sid) = ((e.redrive >> 32) as u32, e.redrive as u32);
        let dlq = self
            .topics
            .get(&uid)
            .and_then(|t| t.subscriptions.iter().find(|s| s.sid == sid))
            .map(|s| s.def.dead_letter_queue.clone())
            .unwrap_or_default();
        if e.kind == transfer_kind::PUSH && !dlq.is_empty() {
            self.exchange.outbox.update(id, |e| {
                e.kind = transfer_kind::PUBLISH;
                e.dst_queue = dlq;
                e.next_send_ms = time_ms;
                e.attempts = 0;
            });
            return;
        }
        if let Some(e) = self.exchange.outbox.remove(id) {
            self.topic_delivery_done(&e, false);
        }
    }

    /// Deliveries older than their topic's msgRetentionSeconds are given up.
    /// Only the expired ones are visited (topic by topic in uid order,
    /// subscription by subscription, oldest first), at most
    /// `REDRIVE_UNLIMITED_PER_TURN` a sweep.
    pub(super) fn expire_topic_deliveries(&mut self, log: &mut impl Log, now_ms: u64) {
        let max = crate::engine::redrive::REDRIVE_UNLIMITED_PER_TURN as usize;
        let mut uids: Vec<u32> = self.topics.keys().copied().collect();
        uids.sort_unstable();
        let mut expired = Vec::new();
        for uid in uids {
            let t = &self.topics[&uid];
            let Some(cutoff) = now_ms.checked_sub(u64::from(t.retention_s) * 1000) else { continue };
            for s in &t.subscriptions {
                let left = max - expired.len();
                expired.extend(self.exchange.outbox.deliveries_to(topic_target(uid, s.sid), cutoff, left));
            }
            if expired.len() >= max {
                break;
            }
        }
        for id in expired {
            log::warn!("delivery {id} passed its topic's msgRetentionSeconds; giving up");
            self.give_up_delivery(log, now_ms, id);
        }
    }

    /// Deliveries pending per shard (for metrics and tests).
    pub fn pending_deliveries(&self) -> usize {
        self.exchange.outbox.deliveries()
    }
}

pub(super) fn is_topic_delivery(e: &OutboxEntry) -> bool {
    e.publish.is_some()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn validate_endpoint(protocol: SubscriptionProtocol, endpoint: &str) -> Result<(), EngineError> {
    match protocol {
        SubscriptionProtocol::Queue => validate_name("endpoint", endpoint).map_err(invalid),
        SubscriptionProtocol::Http | SubscriptionProtocol::Https => {
            let scheme = if protocol == SubscriptionProtocol::Http { "http://" } else { "https://" };
            let lower = endpoint.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(invalid(format!("endpoint: {endpoint:?} must be an {scheme} URL")));
            }
            if endpoint.len() > cmq_protocol::limits::URL_BYTES_MAX || endpoint.chars().any(|c| c.is_whitespace()) {
                return Err(invalid("endpoint: not a valid URL".to_owned()));
            }
            Ok(())
        }
    }
}
