//! The topic model: one blocking method per topic, publish and subscription
//! operation, and builders for subscriptions.
//!
//! Every topic operation is routed by the topic's name (the shard that owns
//! the topic serves its subscriptions too); only `list_topics` goes to any shard.

use bytes::Bytes;
use cmq_protocol::{
    BatchPublishMessage, ClearSubscriptionFilterTags, CreateTopic, DeleteTopic, GetSubscriptionAttributes,
    GetTopicAttributes, ListSubscriptions, ListSubscriptionsOk, ListTopics, ListTopicsOk, NotifyContentFormat,
    NotifyStrategy, PublishMessage, Request, Response, SetSubscriptionAttributes, SetTopicAttributes, StrList,
    Subscribe, SubscribeOk, SubscriptionInfo, SubscriptionProtocol, TopicAttributesUpdate, TopicInfo, Unsubscribe,
};

use crate::client::Client;
use crate::error::ClientError;
use crate::idempotency::random_keys;
use crate::ops::IdempotencyKey;

/// No tags, for `publish(topic, body, NO_TAGS, "")` (an empty `&[]` leaves
/// the tag type to guess).
pub const NO_TAGS: &[&str] = &[];

/// Tags, filter tags or binding keys as the protocol carries them.
pub fn str_list<S: AsRef<str>>(items: &[S]) -> StrList {
    StrList(items.iter().map(|s| s.as_ref().to_owned()).collect())
}

impl Client {
    /// Creates a topic; attributes left `None` take the broker's defaults
    /// (maxMsgSize 65536, msgRetentionSeconds 86400, tag filtering).
    /// Returns the topic id.
    pub fn create_topic(&mut self, topic: &str, attributes: &TopicAttributesUpdate) -> Result<u64, ClientError> {
        let req = Request::CreateTopic(CreateTopic { topic: topic.to_owned(), attributes: attributes.clone() });
        expect!(self.call(&req)?, CreateTopic).map(|ok| ok.topic_id)
    }

    /// Deletes a topic and all its subscriptions; deliveries still pending are dropped.
    pub fn delete_topic(&mut self, topic: &str) -> Result<(), ClientError> {
        let req = Request::DeleteTopic(DeleteTopic { topic: topic.to_owned() });
        expect!(self.call(&req)?, DeleteTopic).map(drop)
    }

    /// One page of the topics whose name starts with `prefix` and contains
    /// `contains` (either may be empty); `limit` 0 asks for the broker's
    /// default page size.
    pub fn list_topics(
        &mut self,
        prefix: &str,
        contains: &str,
        offset: u32,
        limit: u32,
    ) -> Result<ListTopicsOk, ClientError> {
        let req =
            Request::ListTopics(ListTopics { prefix: prefix.to_owned(), contains: contains.to_owned(), offset, limit });
        expect!(self.call(&req)?, ListTopics)
    }

    /// A topic's attributes, its subscription count and the deliveries pending (msgCount).
    pub fn topic_info(&mut self, topic: &str) -> Result<TopicInfo, ClientError> {
        let req = Request::GetTopicAttributes(GetTopicAttributes { topic: topic.to_owned() });
        expect!(self.call(&req)?, GetTopicAttributes)
    }

    /// Changes the topic's maxMsgSize (the only attribute that can change
    /// after creation); returns the topic's new state.
    pub fn set_topic_attributes(&mut self, topic: &str, max_msg_size: u32) -> Result<TopicInfo, ClientError> {
        let req = Request::SetTopicAttributes(SetTopicAttributes {
            topic: topic.to_owned(),
            max_msg_size: Some(max_msg_size),
        });
        expect!(self.call(&req)?, SetTopicAttributes)
    }

    /// Publishes one message and returns its id. `tags` select subscriptions
    /// on a tag topic, `routing_key` on a routing-key topic ("" = none). The
    /// acknowledgement means the message is durable and will reach every
    /// subscription that matches now; with no matching subscription it is dropped.
    pub fn publish<S: AsRef<str>>(
        &mut self,
        topic: &str,
        body: impl Into<Bytes>,
        tags: &[S],
        routing_key: &str,
    ) -> Result<u64, ClientError> {
        let req = Request::PublishMessage(PublishMessage {
            topic: topic.to_owned(),
            body: body.into(),
            tags: str_list(tags),
            routing_key: routing_key.to_owned(),
            idempotency_key: if self.keys_by_default() { IdempotencyKey::random().to_bytes() } else { Bytes::new() },
        });
        expect!(self.call(&req)?, PublishMessage).map(|ok| ok.msg_id)
    }

    /// Publishes up to `limits::BATCH_MSGS_MAX` bodies sharing one tag set
    /// and routing key, all or none; returns their ids in order. Larger
    /// batches are refused by the broker, not split.
    pub fn publish_batch<S: AsRef<str>>(
        &mut self,
        topic: &str,
        bodies: &[Bytes],
        tags: &[S],
        routing_key: &str,
    ) -> Result<Vec<u64>, ClientError> {
        let req = Request::BatchPublishMessage(BatchPublishMessage {
            topic: topic.to_owned(),
            bodies: bodies.to_vec(),
            tags: str_list(tags),
            routing_key: routing_key.to_owned(),
            idempotency_keys: if self.keys_by_default() { random_keys(bodies.len()) } else { Vec::new() },
        });
        let ids = expect!(self.call(&req)?, BatchPublishMessage)?.msg_ids;
        if ids.len() != bodies.len() {
            return Err(ClientError::Protocol(format!(
                "published {} messages, got {} ids back",
                bodies.len(),
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Creates a subscription (see [`SubscribeBuilder`] for the usual
    /// shapes). Returns its id and, for HTTP endpoints, the secret its pushes
    /// are signed with.
    pub fn subscribe(&mut self, subscription: &Subscribe) -> Result<SubscribeOk, ClientError> {
        expect!(self.call(&Request::Subscribe(subscription.clone()))?, Subscribe)
    }

    /// Removes a subscription; deliveries still pending for it are dropped.
    pub fn unsubscribe(&mut self, topic: &str, subscription: &str) -> Result<(), ClientError> {
        let req = Request::Unsubscribe(Unsubscribe { topic: topic.to_owned(), subscription: subscription.to_owned() });
        expect!(self.call(&req)?, Unsubscribe).map(drop)
    }

    /// One page of a topic's subscriptions whose name contains `contains`
    /// (may be empty); `limit` 0 asks for the broker's default page size.
    pub fn list_subscriptions(
        &mut self,
        topic: &str,
        contains: &str,
        offset: u32,
        limit: u32,
    ) -> Result<ListSubscriptionsOk, ClientError> {
        let req = Request::ListSubscriptions(ListSubscriptions {
            topic: topic.to_owned(),
            contains: contains.to_owned(),
            offset,
            limit,
        });
        expect!(self.call(&req)?, ListSubscriptions)
    }

    /// A subscription's settings and delivery counters.
    pub fn subscription_info(&mut self, topic: &str, subscription: &str) -> Result<SubscriptionInfo, ClientError> {
        let req = Request::GetSubscriptionAttributes(GetSubscriptionAttributes {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
        });
        expect!(self.call(&req)?, GetSubscriptionAttributes)
    }

    /// Changes the settings that are `Some`: a list given replaces the stored
    /// one (an empty list clears it). Returns the subscription's new state.
    pub fn set_subscription_attributes(
        &mut self,
        update: &SetSubscriptionAttributes,
    ) -> Result<SubscriptionInfo, ClientError> {
        expect!(self.call(&Request::SetSubscriptionAttributes(update.clone()))?, SetSubscriptionAttributes)
    }

    /// Removes every filter tag: on a tag topic the subscription then receives every message.
    pub fn clear_subscription_filter_tags(&mut self, topic: &str, subscription: &str) -> Result<(), ClientError> {
        let req = Request::ClearSubscriptionFilterTags(ClearSubscriptionFilterTags {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
        });
        expect!(self.call(&req)?, ClearSubscriptionFilterTags).map(drop)
    }
}

/// Constructors for the usual subscriptions. [`Subscribe`] belongs to the
/// protocol crate, so these come as a trait: bring it into scope and write
/// `Subscribe::to_queue("orders", "billing", "billing-in")`. Every field
/// stays public for anything the builders do not cover.
pub trait SubscribeBuilder: Sized {
    /// Delivers each matching message's raw body into `queue` (a new msgId
    /// there). Format SIMPLIFIED, as CMQ requires for queue endpoints.
    fn to_queue(topic: &str, subscription: &str, queue: &str) -> Self;

    /// POSTs each matching message to `url` (`https://` URLs use protocol
    /// https, anything else http), as JSON, retrying with
    /// EXPONENTIAL_DECAY_RETRY.
    fn to_http(topic: &str, subscription: &str, url: &str) -> Self;

    /// Receive only messages carrying one of these tags (tag topics).
    fn with_filter_tags<S: AsRef<str>>(self, tags: &[S]) -> Self;

    /// Receive only messages whose routing key one of these matches (routing-key topics).
    fn with_binding_keys<S: AsRef<str>>(self, keys: &[S]) -> Self;

    fn with_notify_strategy(self, strategy: NotifyStrategy) -> Self;

    fn with_format(self, format: NotifyContentFormat) -> Self;

    /// HTTP: where pushes that exhaust their retries go instead of being dropped.
    fn with_dead_letter_queue(self, queue: &str) -> Self;
}

impl SubscribeBuilder for Subscribe {
    fn to_queue(topic: &str, subscription: &str, queue: &str) -> Subscribe {
        Subscribe {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            protocol: SubscriptionProtocol::Queue,
            endpoint: queue.to_owned(),
            notify_content_format: NotifyContentFormat::Simplified,
            ..Default::default()
        }
    }

    fn to_http(topic: &str, subscription: &str, url: &str) -> Subscribe {
        let https = url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        Subscribe {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            protocol: if https { SubscriptionProtocol::Https } else { SubscriptionProtocol::Http },
            endpoint: url.to_owned(),
            notify_content_format: NotifyContentFormat::Json,
            ..Default::default()
        }
    }

    fn with_filter_tags<S: AsRef<str>>(mut self, tags: &[S]) -> Subscribe {
        self.filter_tags = str_list(tags);
        self
    }

    fn with_binding_keys<S: AsRef<str>>(mut self, keys: &[S]) -> Subscribe {
        self.binding_keys = str_list(keys);
        self
    }

    fn with_notify_strategy(mut self, strategy: NotifyStrategy) -> Subscribe {
        self.notify_strategy = strategy;
        self
    }

    fn with_format(mut self, format: NotifyContentFormat) -> Subscribe {
        self.notify_content_format = format;
        self
    }

    fn with_dead_letter_queue(mut self, queue: &str) -> Subscribe {
        self.dead_letter_queue = queue.to_owned();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_subscriptions_are_simplified_and_http_ones_json() {
        let q = Subscribe::to_queue("t", "s", "q");
        assert_eq!((q.protocol, q.endpoint.as_str()), (SubscriptionProtocol::Queue, "q"));
        assert_eq!(q.notify_content_format, NotifyContentFormat::Simplified);
        assert_eq!(q.notify_strategy, NotifyStrategy::ExponentialDecayRetry, "CMQ's default");
        assert!(q.filter_tags.0.is_empty() && q.binding_keys.0.is_empty() && q.dead_letter_queue.is_empty());

        let h = Subscribe::to_http("t", "s", "http://127.0.0.1:8080/hook");
        assert_eq!((h.protocol, h.notify_content_format), (SubscriptionProtocol::Http, NotifyContentFormat::Json));
        assert_eq!(Subscribe::to_http("t", "s", "HTTPS://example.com/").protocol, SubscriptionProtocol::Https);
        // Not ours to judge: the broker refuses what is not a URL.
        assert_eq!(Subscribe::to_http("t", "s", "ftp://x").protocol, SubscriptionProtocol::Http);
        assert_eq!(Subscribe::to_http("t", "s", "").protocol, SubscriptionProtocol::Http);
    }

    #[test]
    fn builders_set_filters_and_retry_policy() {
        let s = Subscribe::to_http("t", "s", "https://h/")
            .with_filter_tags(&["a", "b"])
            .with_binding_keys(&[String::from("order.*")])
            .with_notify_strategy(NotifyStrategy::BackoffRetry)
            .with_format(NotifyContentFormat::Simplified)
            .with_dead_letter_queue("dead");
        assert_eq!(s.filter_tags.0, ["a", "b"]);
        assert_eq!(s.binding_keys.0, ["order.*"]);
        assert_eq!(
            (s.notify_strategy, s.notify_content_format),
            (NotifyStrategy::BackoffRetry, NotifyContentFormat::Simplified)
        );
        assert_eq!(s.dead_letter_queue, "dead");
        assert_eq!(str_list(NO_TAGS), StrList::default());
    }
}
