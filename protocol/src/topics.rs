//! The topic model: topics, publishing, and subscriptions that fan messages
//! out to queues or HTTP endpoints, filtered by tags or routing keys.
//! Names, ranges and defaults follow CMQ (HTTP contract §5.3, §5.4, §7.2, §7.3, §8).

use bytes::Bytes;

use crate::limits::{
    BATCH_MSGS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, LIST_PAGE_MAX, MSG_BYTES_MAX, NAME_CHARS_MAX, STRING_BYTES_MAX,
    TOPIC_FILTERS_MAX, TOPIC_TAGS_MAX, URL_BYTES_MAX,
};
use crate::queue_attributes::AttrRange;
use crate::wire::{Reader, Wire, Writer};
use crate::DecodeError;

pub const TOPIC_MAX_MSG_SIZE: AttrRange = AttrRange { name: "maxMsgSize", min: 1024, max: 1_048_576, default: 65_536 };
pub const TOPIC_MSG_RETENTION_SECONDS: AttrRange =
    AttrRange { name: "msgRetentionSeconds", min: 60, max: 86_400, default: 86_400 };

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:literal, $s:literal;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum $name {
            #[default]
            $($(#[$vm])* $v,)*
        }

        impl $name {
            pub fn as_u8(self) -> u8 {
                match self { $($name::$v => $n,)* }
            }
            pub fn from_u8(v: u8) -> Option<$name> {
                match v { $($n => Some($name::$v),)* _ => None }
            }
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $(x if x.eq_ignore_ascii_case($s) => Ok($name::$v),)*
                    other => Err(format!("{}: {other:?} is not one of {}", stringify!($name), [$($s),*].join(", "))),
                }
            }
        }

        impl Wire for $name {
            fn encode(&self, w: &mut Vec<u8>) {
                w.put_u8(self.as_u8())
            }
            fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
                $name::from_u8(r.u8(field)?).ok_or(DecodeError::Invalid(field))
            }
        }
    };
}

wire_enum! {
    /// How a topic's subscriptions select messages (CMQ filterType).
    FilterType {
        /// 1: message tags against subscription filter tags.
        Tag = 1, "tag";
        /// 2: the message routing key against subscription binding keys.
        RoutingKey = 2, "routing-key";
    }
}

wire_enum! {
    /// Where a subscription delivers.
    SubscriptionProtocol {
        /// Into a queue of this broker (the endpoint is its name).
        Queue = 1, "queue";
        Http = 2, "http";
        Https = 3, "https";
    }
}

wire_enum! {
    /// How failed HTTP pushes are retried (CMQ notifyStrategy).
    NotifyStrategy {
        /// 1, 2, 4 … s capped at 512 s, for up to a day.
        ExponentialDecayRetry = 2, "EXPONENTIAL_DECAY_RETRY";
        /// 3 retries at random 10-20 s intervals, then dropped.
        BackoffRetry = 1, "BACKOFF_RETRY";
    }
}

wire_enum! {
    /// What an HTTP push carries (CMQ notifyContentFormat).
    NotifyContentFormat {
        /// A JSON document with the body and its metadata.
        Json = 1, "JSON";
        /// The raw message body.
        Simplified = 2, "SIMPLIFIED";
    }
}

/// Tags, filter tags or binding keys: at most TOPIC_FILTERS_MAX strings of
/// at most 64 bytes on the wire (the broker applies CMQ's tighter rules).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StrList(
    #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(\"[a-z.*#]{0,12}\", 0..5)"))] pub Vec<String>,
);

impl Wire for StrList {
    fn encode(&self, w: &mut Vec<u8>) {
        crate::wire::encode_list(&self.0, w)
    }
    fn decode(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        crate::wire::decode_strs(r, field, TOPIC_FILTERS_MAX.max(TOPIC_TAGS_MAX), NAME_CHARS_MAX).map(StrList)
    }
}

crate::wire_struct! {
    /// Topic settings; `None` keeps the current (or default) value.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct TopicAttributesUpdate {
        pub max_msg_size: Option<u32>,
        /// Create only.
        pub msg_retention_seconds: Option<u32>,
        /// Create only.
        pub filter_type: Option<FilterType>,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct CreateTopic {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        pub attributes: TopicAttributesUpdate,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct CreateTopicOk {
        pub topic_id: u64,
    }
}

crate::wire_struct! {
    /// Delete a topic and all its subscriptions (pending deliveries are dropped).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct DeleteTopic {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListTopics {
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub prefix: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub contains: String = string(NAME_CHARS_MAX),
        pub offset: u32,
        pub limit: u32,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct TopicSummary {
        pub topic_id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListTopicsOk {
        pub total: u32,
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub topics: Vec<TopicSummary> = list(LIST_PAGE_MAX as usize),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetTopicAttributes {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    /// Only maxMsgSize can change after creation.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SetTopicAttributes {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        pub max_msg_size: Option<u32>,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct TopicInfo {
        pub topic_id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        pub max_msg_size: u32,
        pub msg_retention_seconds: u32,
        pub filter_type: FilterType,
        pub create_time_ms: u64,
        pub last_modify_time_ms: u64,
        /// Deliveries still pending, over all subscriptions (CMQ msgCount).
        pub msg_count: u64,
        pub subscription_count: u32,
        pub shard: u16,
    }
}

crate::wire_struct! {
    /// Publish one message; `tags` (tag topics) or `routing_key` (routing-key
    /// topics, "" = none) select the subscriptions it reaches.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct PublishMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::bytes(64)"))]
        pub body: Bytes = bytes(MSG_BYTES_MAX as usize),
        pub tags: StrList,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub routing_key: String = string(NAME_CHARS_MAX),
        /// As SendMessage's: deduplicated per topic (protocol version 3).
        #[cfg_attr(test, proptest(strategy = "crate::testing::key()"))]
        pub idempotency_key: Bytes = key(IDEMPOTENCY_KEY_BYTES_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct PublishMessageOk {
        pub msg_id: u64,
    }
}

crate::wire_struct! {
    /// Publish 1-16 bodies sharing one tag set and routing key.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchPublishMessage {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::bodies()"))]
        pub bodies: Vec<Bytes> = bytes_list(BATCH_MSGS_MAX, MSG_BYTES_MAX as usize),
        pub tags: StrList,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub routing_key: String = string(NAME_CHARS_MAX),
        /// As BatchSendMessage's: none, or one per body.
        #[cfg_attr(test, proptest(strategy = "crate::testing::keys()"))]
        pub idempotency_keys: Vec<Bytes> = keys(BATCH_MSGS_MAX, IDEMPOTENCY_KEY_BYTES_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct BatchPublishMessageOk {
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(16)"))]
        pub msg_ids: Vec<u64> = list(BATCH_MSGS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct Subscribe {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub subscription: String = string(NAME_CHARS_MAX),
        pub protocol: SubscriptionProtocol,
        /// A queue name, or an http(s) URL.
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub endpoint: String = string(URL_BYTES_MAX),
        pub notify_strategy: NotifyStrategy,
        pub notify_content_format: NotifyContentFormat,
        pub filter_tags: StrList,
        pub binding_keys: StrList,
        /// HTTP subscriptions: pushes that exhaust their retries go to this queue ("" = dropped).
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub dead_letter_queue: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SubscribeOk {
        pub subscription_id: u64,
        /// HTTP subscriptions: the key pushes are signed with (HMAC-SHA256), hex.
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub push_secret: String = string(STRING_BYTES_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct Unsubscribe {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub subscription: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListSubscriptions {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub contains: String = string(NAME_CHARS_MAX),
        pub offset: u32,
        pub limit: u32,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SubscriptionSummary {
        pub subscription_id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub subscription: String = string(NAME_CHARS_MAX),
        pub protocol: SubscriptionProtocol,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub endpoint: String = string(URL_BYTES_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ListSubscriptionsOk {
        pub total: u32,
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub subscriptions: Vec<SubscriptionSummary> = list(LIST_PAGE_MAX as usize),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetSubscriptionAttributes {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub subscription: String = string(NAME_CHARS_MAX),
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SubscriptionInfo {
        pub subscription_id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub subscription: String = string(NAME_CHARS_MAX),
        pub protocol: SubscriptionProtocol,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub endpoint: String = string(URL_BYTES_MAX),
        pub notify_strategy: NotifyStrategy,
        pub notify_content_format: NotifyContentFormat,
        pub filter_tags: StrList,
        pub binding_keys: StrList,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub dead_letter_queue: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub push_secret: String = string(STRING_BYTES_MAX),
        pub create_time_ms: u64,
        pub last_modify_time_ms: u64,
        /// Deliveries pending for this subscription (CMQ msgCount).
        pub msg_count: u64,
        /// Deliveries completed: into the queue, or accepted (2xx) by the
        /// endpoint; a push moved to the dead-letter queue is not one. Kept
        /// across restarts.
        pub delivered: u64,
        /// Deliveries given up on and discarded (retries exhausted, no
        /// dead-letter queue to move them to). Kept across restarts.
        pub dropped: u64,
    }
}

crate::wire_struct! {
    /// Lists that are present replace the stored ones; absent ones are kept.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct SetSubscriptionAttributes {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub subscription: String = string(NAME_CHARS_MAX),
        pub notify_strategy: Option<NotifyStrategy>,
        pub notify_content_format: Option<NotifyContentFormat>,
        pub filter_tags: Option<StrList>,
        pub binding_keys: Option<StrList>,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ClearSubscriptionFilterTags {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub topic: String = string(NAME_CHARS_MAX),
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub subscription: String = string(NAME_CHARS_MAX),
    }
}
