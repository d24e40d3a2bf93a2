//! Topics (`protocol/src/topics.rs`): topics, publishing, subscriptions
//! (ListTopics asks every shard: `coordination.rs`).

use std::sync::atomic::Ordering;

use cmq_protocol::*;

use super::limit::Kind;
use super::Handled;
use crate::shard::Shard;

impl Shard {
    /// CreateTopic within the broker-wide topic limit.
    pub(in crate::shard) fn create_topic(&mut self, now: u64, r: &CreateTopic) -> Handled {
        self.create_within(Kind::Topic, &r.topic, |s, seq| {
            let topic_id = s.engine.create_topic(&mut s.log, now, &r.topic, &r.attributes, seq)?;
            Ok(Response::CreateTopic(CreateTopicOk { topic_id }))
        })
    }

    pub(in crate::shard) fn delete_topic(&mut self, now: u64, r: &DeleteTopic) -> Handled {
        self.logging(|s| {
            s.engine.delete_topic(&mut s.log, now, &r.topic)?;
            s.shared.topic_count.fetch_sub(1, Ordering::SeqCst);
            Ok(Response::DeleteTopic(Empty {}))
        })
    }

    pub(in crate::shard) fn get_topic_attributes(&mut self, r: &GetTopicAttributes) -> Handled {
        self.logging(|s| s.engine.topic_info(&r.topic).map(Response::GetTopicAttributes))
    }

    pub(in crate::shard) fn set_topic_attributes(&mut self, now: u64, r: &SetTopicAttributes) -> Handled {
        self.logging(|s| {
            s.engine.set_topic_attributes(&mut s.log, now, &r.topic, r.max_msg_size).map(Response::SetTopicAttributes)
        })
    }

    pub(in crate::shard) fn publish_message(&mut self, now: u64, r: &PublishMessage) -> Handled {
        let (body, key) = (std::slice::from_ref(&r.body), std::slice::from_ref(&r.idempotency_key));
        self.logging(|s| {
            s.engine
                .publish_keyed(&mut s.log, now, &r.topic, body, key, &r.tags.0, &r.routing_key)
                .map(|ids| Response::PublishMessage(PublishMessageOk { msg_id: ids[0] }))
        })
    }

    pub(in crate::shard) fn batch_publish_message(&mut self, now: u64, r: &BatchPublishMessage) -> Handled {
        self.logging(|s| {
            s.engine
                .publish_keyed(&mut s.log, now, &r.topic, &r.bodies, &r.idempotency_keys, &r.tags.0, &r.routing_key)
                .map(|msg_ids| Response::BatchPublishMessage(BatchPublishMessageOk { msg_ids }))
        })
    }

    pub(in crate::shard) fn subscribe(&mut self, now: u64, r: &Subscribe) -> Handled {
        self.logging(|s| s.engine.subscribe(&mut s.log, now, r).map(Response::Subscribe))
    }

    pub(in crate::shard) fn unsubscribe(&mut self, now: u64, r: &Unsubscribe) -> Handled {
        self.logging(|s| {
            s.engine.unsubscribe(&mut s.log, now, &r.topic, &r.subscription).map(|()| Response::Unsubscribe(Empty {}))
        })
    }

    pub(in crate::shard) fn list_subscriptions(&mut self, r: &ListSubscriptions) -> Handled {
        self.logging(|s| {
            s.engine.list_subscriptions(&r.topic, &r.contains, r.offset, r.limit).map(Response::ListSubscriptions)
        })
    }

    pub(in crate::shard) fn get_subscription_attributes(&mut self, r: &GetSubscriptionAttributes) -> Handled {
        self.logging(|s| s.engine.subscription_info(&r.topic, &r.subscription).map(Response::GetSubscriptionAttributes))
    }

    pub(in crate::shard) fn set_subscription_attributes(&mut self, now: u64, r: &SetSubscriptionAttributes) -> Handled {
        self.logging(|s| {
            s.engine.set_subscription_attributes(&mut s.log, now, r).map(Response::SetSubscriptionAttributes)
        })
    }

    /// ClearSubscriptionFilterTags: SetSubscriptionAttributes with no filter tags.
    pub(in crate::shard) fn clear_subscription_filter_tags(
        &mut self,
        now: u64,
        r: ClearSubscriptionFilterTags,
    ) -> Handled {
        let clear = SetSubscriptionAttributes {
            topic: r.topic,
            subscription: r.subscription,
            filter_tags: Some(StrList::default()),
            ..Default::default()
        };
        self.logging(|s| {
            s.engine
                .set_subscription_attributes(&mut s.log, now, &clear)
                .map(|_| Response::ClearSubscriptionFilterTags(Empty {}))
        })
    }
}
