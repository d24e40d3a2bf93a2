//! What a push carries: the body in either format, and CMQ's request headers.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::sign::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::PushTask;

pub use cmq_protocol::NotifyContentFormat;

/// Content type of JSON pushes. CMQ documents `text/plain` for its JSON
/// pushes; we keep it so receivers written for CMQ work unchanged.
pub const CONTENT_TYPE_JSON: &str = "text/plain";
/// Content type of SIMPLIFIED pushes (the raw body; CMQ: `text/plain`).
pub const CONTENT_TYPE_SIMPLIFIED: &str = "text/plain";

/// CMQ's header naming the push (one id per attempt: a retry gets a new one).
pub const REQUEST_ID_HEADER: &str = "x-cmq-request-id";
/// CMQ's header carrying the message id.
pub const MESSAGE_ID_HEADER: &str = "x-cmq-message-id";
/// CMQ's header carrying the message's tags, joined with `", "` (absent when untagged).
pub const MESSAGE_TAG_HEADER: &str = "x-cmq-message-tag";

/// One message as pushed to one subscription.
#[derive(Debug, Clone)]
pub struct PushMessage<'a> {
    /// CMQ `TopicOwner` (an account id in Tencent's service; whatever the broker calls the owner).
    pub topic_owner: &'a str,
    pub topic: &'a str,
    pub subscription: &'a str,
    pub msg_id: u64,
    pub body: Bytes,
    pub tags: &'a [String],
    /// Empty when the message has none.
    pub routing_key: &'a str,
    /// Unix time of the publish, in milliseconds.
    pub publish_time_ms: u64,
}

/// The JSON push document. Field names and order follow CMQ's documented
/// push (`TopicOwner` … `publishTime`); `msgTag` and `routingKey` are ours.
#[derive(Serialize)]
struct JsonPush<'a> {
    #[serde(rename = "TopicOwner")]
    topic_owner: &'a str,
    #[serde(rename = "topicName")]
    topic_name: &'a str,
    #[serde(rename = "subscriptionName")]
    subscription_name: &'a str,
    #[serde(rename = "msgId")]
    msg_id: String,
    #[serde(rename = "msgBody")]
    msg_body: Cow<'a, str>,
    #[serde(rename = "msgTag")]
    msg_tag: &'a [String],
    #[serde(rename = "routingKey")]
    routing_key: &'a str,
    #[serde(rename = "publishTime")]
    publish_time: u64,
}

/// The HTTP body of a push and its content type. SIMPLIFIED shares the
/// message's buffer (no copy). JSON carries the body as a string: bytes that
/// are not valid UTF-8 are replaced by U+FFFD (CMQ bodies are text; use
/// SIMPLIFIED for binary payloads).
pub fn render_body(format: NotifyContentFormat, msg: &PushMessage<'_>) -> (Bytes, &'static str) {
    match format {
        NotifyContentFormat::Simplified => (msg.body.clone(), CONTENT_TYPE_SIMPLIFIED),
        NotifyContentFormat::Json => {
            let doc = JsonPush {
                topic_owner: msg.topic_owner,
                topic_name: msg.topic,
                subscription_name: msg.subscription,
                msg_id: msg.msg_id.to_string(),
                msg_body: String::from_utf8_lossy(&msg.body),
                msg_tag: msg.tags,
                routing_key: msg.routing_key,
                publish_time: msg.publish_time_ms / 1000,
            };
            let json = serde_json::to_vec(&doc).expect("serialising strings and numbers cannot fail");
            (Bytes::from(json), CONTENT_TYPE_JSON)
        }
    }
}

/// A header value with control characters (CR, LF, NUL, …) removed, so
/// message metadata can never split or inject a header.
pub fn header_value(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Everything the engine needs to hand one push attempt to the pool.
#[derive(Debug, Clone)]
pub struct PushRequest<'a> {
    /// Names the task's outcome; unique among this shard's tasks in flight.
    pub id: u64,
    /// `x-cmq-request-id`: names this attempt for the receiver.
    pub request_id: &'a str,
    pub url: &'a str,
    pub format: NotifyContentFormat,
    /// The subscription's push secret (HMAC key: the secret's bytes as given to the subscriber).
    pub secret: &'a [u8],
    /// Unix time in seconds, signed along with the body.
    pub timestamp_s: u64,
    pub timeout: Duration,
}

/// Renders, signs and addresses one push attempt: body in the subscription's
/// format, CMQ's `x-cmq-*` headers, `X-CMQ-Timestamp` and `X-CMQ-Signature`.
pub fn build_task(req: &PushRequest<'_>, msg: &PushMessage<'_>) -> PushTask {
    let (body, content_type) = render_body(req.format, msg);
    let mut headers = vec![
        (REQUEST_ID_HEADER.to_string(), header_value(req.request_id)),
        (MESSAGE_ID_HEADER.to_string(), msg.msg_id.to_string()),
    ];
    if !msg.tags.is_empty() {
        headers.push((MESSAGE_TAG_HEADER.to_string(), header_value(&msg.tags.join(", "))));
    }
    headers.push((TIMESTAMP_HEADER.to_string(), req.timestamp_s.to_string()));
    headers.push((SIGNATURE_HEADER.to_string(), sign(req.secret, req.timestamp_s, &body)));
    PushTask { id: req.id, url: req.url.to_string(), body, content_type, headers, timeout: req.timeout }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::sign::verify;

    fn msg<'a>(tags: &'a [String], body: &'static [u8]) -> PushMessage<'a> {
        PushMessage {
            topic_owner: "cmq",
            topic: "orders",
            subscription: "billing",
            msg_id: 42,
            body: Bytes::from_static(body),
            tags,
            routing_key: "order.created",
            publish_time_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn json_golden() {
        let tags = vec!["a".to_string(), "b\"".to_string()];
        let (body, ct) = render_body(NotifyContentFormat::Json, &msg(&tags, b"hi \"there\"\n"));
        assert_eq!(ct, "text/plain");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"TopicOwner":"cmq","topicName":"orders","subscriptionName":"billing","msgId":"42","msgBody":"hi \"there\"\n","msgTag":["a","b\""],"routingKey":"order.created","publishTime":1700000000}"#
        );
    }

    #[test]
    fn json_non_utf8_body_is_replaced() {
        let (body, _) = render_body(NotifyContentFormat::Json, &msg(&[], b"a\xffb"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["msgBody"], "a\u{fffd}b");
        assert_eq!(v["msgTag"], serde_json::json!([]));
    }

    #[test]
    fn simplified_is_the_raw_body_without_copy() {
        let m = msg(&[], b"raw\x00\xff");
        let (body, ct) = render_body(NotifyContentFormat::Simplified, &m);
        assert_eq!(&body[..], b"raw\x00\xff");
        assert_eq!(body.as_ptr(), m.body.as_ptr());
        assert_eq!(ct, "text/plain");
    }

    #[test]
    fn task_headers_and_signature() {
        let tags = vec!["a".to_string(), "b\r\nX-Evil: 1".to_string()];
        let req = PushRequest {
            id: 9,
            request_id: "0-9-1",
            url: "http://127.0.0.1:1/hook",
            format: NotifyContentFormat::Json,
            secret: b"k",
            timestamp_s: 1_700_000_000,
            timeout: Duration::from_secs(1),
        };
        let t = build_task(&req, &msg(&tags, b"x"));
        let h = |name: &str| t.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        assert_eq!(h("x-cmq-request-id"), Some("0-9-1"));
        assert_eq!(h("x-cmq-message-id"), Some("42"));
        assert_eq!(h("x-cmq-message-tag"), Some("a, bX-Evil: 1"));
        assert_eq!(h("X-CMQ-Timestamp"), Some("1700000000"));
        assert!(verify(b"k", 1_700_000_000, &t.body, h("X-CMQ-Signature").unwrap()));
        assert_eq!(t.id, 9);
        assert_eq!(t.content_type, "text/plain");
        let untagged = build_task(&req, &msg(&[], b"x"));
        assert!(untagged.headers.iter().all(|(n, _)| n != "x-cmq-message-tag"));
    }

    #[test]
    fn names() {
        for f in [NotifyContentFormat::Json, NotifyContentFormat::Simplified] {
            assert_eq!(f.as_str().parse::<NotifyContentFormat>().ok(), Some(f));
            assert_eq!(f.as_str().to_lowercase().parse::<NotifyContentFormat>().ok(), Some(f));
        }
        assert_eq!("XML".parse::<NotifyContentFormat>().ok(), None);
    }
}
