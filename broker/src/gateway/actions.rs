//! Each CMQ action: its parameters turned into the protocol `Request` the
//! binary protocol executes, and the `Response` turned into the action's
//! JSON fields (spec §5). Ranges the broker checks itself (queue attributes,
//! names, body sizes) are left to it, so both protocols refuse the same way.

use std::time::Duration;

use cmq_protocol::limits::{BATCH_MSGS_MAX, POLLING_WAIT_SECONDS_MAX, TOPIC_FILTERS_MAX, TOPIC_TAGS_MAX};
use cmq_protocol::*;
use serde_json::{json, Map, Value};

use super::errors::{code, module, ApiError};
use super::params::{Params, LIST_ITEMS_MAX};

/// How long the gateway waits for an answer beyond a request's polling
/// wait (well within the SDK's own `pollingWaitSeconds + 10 s`).
pub const ANSWER_WAIT_MARGIN: Duration = Duration::from_secs(8);

/// `ListQueue`/`ListTopic` page size: default and largest (CMQ's).
pub const LIST_LIMIT_DEFAULT: u64 = 20;
pub const LIST_LIMIT_MAX: u64 = 50;

/// `ListSubscriptionByTopic`: largest offset and page (CMQ's).
pub const SUBSCRIPTION_OFFSET_MAX: u64 = 1000;
pub const SUBSCRIPTION_LIMIT_MAX: u64 = 100;

/// An action's JSON fields, or its error (with fields of its own: BatchDeleteMessage's `errorList`).
pub type Answer = Result<Map<String, Value>, (ApiError, Map<String, Value>)>;

/// Receipt handles as given, each with whether it parsed (and was sent).
pub type Handles = Vec<(String, bool)>;

/// A request ready for the broker, and what its answer needs.
pub struct Call {
    pub request: Request,
    /// Seconds the broker may park it (long poll).
    pub wait_secs: u32,
    /// BatchDeleteMessage: every handle as given, and which were sent.
    pub handles: Handles,
}

impl Call {
    fn plain(request: Request) -> Result<Call, ApiError> {
        Ok(Call { request, wait_secs: 0, handles: Vec::new() })
    }

    /// BatchDeleteMessage where no handle parses: answered without the broker.
    pub fn answer_here(&self) -> Option<Answer> {
        (!self.handles.is_empty() && self.handles.iter().all(|(_, sent)| !sent))
            .then(|| batch_delete(&self.handles, &[]))
    }

    /// How long to wait for the answer.
    pub fn answer_within(&self) -> Duration {
        Duration::from_secs(u64::from(self.wait_secs)) + ANSWER_WAIT_MARGIN
    }
}

/// The actions served, by their canonical names (matched case-insensitively).
pub const ACTIONS: &[&str] = &[
    "CreateQueue",
    "DeleteQueue",
    "ListQueue",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "RewindQueue",
    "SendMessage",
    "BatchSendMessage",
    "ReceiveMessage",
    "BatchReceiveMessage",
    "DeleteMessage",
    "BatchDeleteMessage",
    "ChangeMessageVisibility",
    "CreateTopic",
    "DeleteTopic",
    "ListTopic",
    "GetTopicAttributes",
    "SetTopicAttributes",
    "PublishMessage",
    "BatchPublishMessage",
    "Subscribe",
    "Unsubscribe",
    "ListSubscriptionByTopic",
    "GetSubscriptionAttributes",
    "SetSubscriptionAttributes",
    "ClearSubscriptionFilterTags",
];

/// The canonical name of action `name` (any case), or the unknown-action error.
pub fn find(name: &str) -> Result<&'static str, ApiError> {
    ACTIONS.iter().find(|a| a.eq_ignore_ascii_case(name)).copied().ok_or_else(|| {
        ApiError::param(module::UNKNOWN_ACTION, format!("action {name:?} does not exist or is not supported"))
    })
}

/// The request for `action` (a name from [`ACTIONS`]).
pub fn build(action: &str, p: &Params) -> Result<Call, ApiError> {
    let queue = || p.required("queueName").map(str::to_owned);
    match action {
        "CreateQueue" => Call::plain(Request::CreateQueue(CreateQueue { queue: queue()?, attributes: attributes(p)? })),
        "DeleteQueue" => Call::plain(Request::DeleteQueue(DeleteQueue { queue: queue()? })),
        "ListQueue" => {
            let (offset, limit) = page(p)?;
            let contains = p.get("searchWord").unwrap_or_default().to_owned();
            Call::plain(Request::ListQueues(ListQueues { prefix: String::new(), contains, offset, limit }))
        }
        "GetQueueAttributes" => Call::plain(Request::GetQueueAttributes(GetQueueAttributes { queue: queue()? })),
        "SetQueueAttributes" => {
            Call::plain(Request::SetQueueAttributes(SetQueueAttributes { queue: queue()?, attributes: attributes(p)? }))
        }
        "RewindQueue" => {
            let t = p.int("startConsumeTime", 0, u64::MAX / 1000)?;
            let t =
                t.ok_or_else(|| ApiError::param(module::MISSING_PARAMETER, "missing parameter startConsumeTime"))?;
            Call::plain(Request::RewindQueue(RewindQueue { queue: queue()?, start_consume_time_ms: t * 1000 }))
        }
        "SendMessage" => Call::plain(Request::SendMessage(SendMessage {
            queue: queue()?,
            delay_seconds: p.u32("delaySeconds")?.unwrap_or(0),
            body: body(p.required("msgBody")?)?,
            idempotency_key: Default::default(),
        })),
        "BatchSendMessage" => {
            let bodies = p.list("msgBody", LIST_ITEMS_MAX)?;
            if bodies.is_empty() {
                return Err(ApiError::param(module::MISSING_PARAMETER, "missing parameter msgBody.n"));
            }
            let bodies = bodies.into_iter().map(body).collect::<Result<_, _>>()?;
            Call::plain(Request::BatchSendMessage(BatchSendMessage {
                queue: queue()?,
                delay_seconds: p.u32("delaySeconds")?.unwrap_or(0),
                bodies,
                idempotency_keys: Vec::new(),
            }))
        }
        "ReceiveMessage" => {
            let wait = polling_wait(p)?;
            let r = Request::ReceiveMessage(ReceiveMessage { queue: queue()?, polling_wait_seconds: wait });
            Ok(Call { request: r, wait_secs: wait.unwrap_or(POLLING_WAIT_SECONDS_MAX), handles: Vec::new() })
        }
        "BatchReceiveMessage" => {
            let n = p.int("numOfMsg", 1, BATCH_MSGS_MAX as u64)?;
            let n = n.ok_or_else(|| ApiError::param(module::MISSING_PARAMETER, "missing parameter numOfMsg"))?;
            let wait = polling_wait(p)?;
            let r = Request::BatchReceiveMessage(BatchReceiveMessage {
                queue: queue()?,
                max_messages: n as u16,
                polling_wait_seconds: wait,
            });
            Ok(Call { request: r, wait_secs: wait.unwrap_or(POLLING_WAIT_SECONDS_MAX), handles: Vec::new() })
        }
        "DeleteMessage" => {
            let receipt_handle = handle(p.required("receiptHandle")?)?;
            Call::plain(Request::DeleteMessage(DeleteMessage { queue: queue()?, receipt_handle }))
        }
        "BatchDeleteMessage" => {
            let given = p.list("receiptHandle", LIST_ITEMS_MAX)?;
            if given.is_empty() {
                return Err(ApiError::param(module::MISSING_PARAMETER, "missing parameter receiptHandle.n"));
            }
            let parsed: Vec<Option<ReceiptHandle>> = given.iter().map(|h| h.parse().ok()).collect();
            let handles = given.iter().zip(&parsed).map(|(h, p)| ((*h).to_owned(), p.is_some())).collect();
            let receipt_handles = parsed.into_iter().flatten().collect();
            let r = Request::BatchDeleteMessage(BatchDeleteMessage { queue: queue()?, receipt_handles });
            Ok(Call { request: r, wait_secs: 0, handles })
        }
        "ChangeMessageVisibility" => {
            let receipt_handle = handle(p.required("receiptHandle")?)?;
            let t = p.int("visibilityTimeout", 0, u64::from(u32::MAX))?;
            let t =
                t.ok_or_else(|| ApiError::param(module::MISSING_PARAMETER, "missing parameter visibilityTimeout"))?;
            Call::plain(Request::ChangeMessageVisibility(ChangeMessageVisibility {
                queue: queue()?,
                receipt_handle,
                visibility_timeout: t as u32,
            }))
        }
        other => topic_action(other, p),
    }
}

/// Topic and subscription actions (spec §5.3, §5.4).
fn topic_action(action: &str, p: &Params) -> Result<Call, ApiError> {
    let topic = || p.required("topicName").map(str::to_owned);
    let subscription = || p.required("subscriptionName").map(str::to_owned);
    let tags = |name: &str| {
        p.list(name, TOPIC_TAGS_MAX.max(TOPIC_FILTERS_MAX)).map(|v| StrList(v.into_iter().map(str::to_owned).collect()))
    };
    match action {
        "CreateTopic" => {
            let filter_type = match p.int("filterType", 1, 2)? {
                None => None,
                Some(1) => Some(FilterType::Tag),
                Some(_) => Some(FilterType::RoutingKey),
            };
            let attributes = TopicAttributesUpdate {
                max_msg_size: p.u32("maxMsgSize")?,
                msg_retention_seconds: p.u32("msgRetentionSeconds")?,
                filter_type,
            };
            Call::plain(Request::CreateTopic(CreateTopic { topic: topic()?, attributes }))
        }
        "DeleteTopic" => Call::plain(Request::DeleteTopic(DeleteTopic { topic: topic()? })),
        "ListTopic" => {
            let (offset, limit) = page(p)?;
            let contains = p.get("searchWord").unwrap_or_default().to_owned();
            Call::plain(Request::ListTopics(ListTopics { prefix: String::new(), contains, offset, limit }))
        }
        "GetTopicAttributes" => Call::plain(Request::GetTopicAttributes(GetTopicAttributes { topic: topic()? })),
        "SetTopicAttributes" => Call::plain(Request::SetTopicAttributes(SetTopicAttributes {
            topic: topic()?,
            max_msg_size: p.u32("maxMsgSize")?,
        })),
        "PublishMessage" => Call::plain(Request::PublishMessage(PublishMessage {
            topic: topic()?,
            body: body(p.required("msgBody")?)?,
            tags: tags("msgTag")?,
            routing_key: p.get("routingKey").unwrap_or_default().to_owned(),
            idempotency_key: Default::default(),
        })),
        "BatchPublishMessage" => {
            let bodies = p.list("msgBody", LIST_ITEMS_MAX)?;
            if bodies.is_empty() {
                return Err(ApiError::param(module::MISSING_PARAMETER, "missing parameter msgBody.n"));
            }
            Call::plain(Request::BatchPublishMessage(BatchPublishMessage {
                topic: topic()?,
                bodies: bodies.into_iter().map(body).collect::<Result<_, _>>()?,
                tags: tags("msgTag")?,
                routing_key: p.get("routingKey").unwrap_or_default().to_owned(),
                idempotency_keys: Vec::new(),
            }))
        }
        "Subscribe" => Call::plain(Request::Subscribe(Subscribe {
            topic: topic()?,
            subscription: subscription()?,
            protocol: choice(p.required("protocol")?)?,
            endpoint: p.required("endpoint")?.to_owned(),
            notify_strategy: p.get("notifyStrategy").map(choice).transpose()?.unwrap_or_default(),
            notify_content_format: p.get("notifyContentFormat").map(choice).transpose()?.unwrap_or_default(),
            filter_tags: tags("filterTag")?,
            binding_keys: tags("bindingKey")?,
            dead_letter_queue: String::new(),
        })),
        "Unsubscribe" => {
            Call::plain(Request::Unsubscribe(Unsubscribe { topic: topic()?, subscription: subscription()? }))
        }
        "ListSubscriptionByTopic" => {
            let offset = p.int("offset", 0, SUBSCRIPTION_OFFSET_MAX)?.unwrap_or(0) as u32;
            let limit = p.int("limit", 0, SUBSCRIPTION_LIMIT_MAX)?.unwrap_or(LIST_LIMIT_DEFAULT) as u32;
            let contains = p.get("searchWord").unwrap_or_default().to_owned();
            Call::plain(Request::ListSubscriptions(ListSubscriptions { topic: topic()?, contains, offset, limit }))
        }
        "GetSubscriptionAttributes" => Call::plain(Request::GetSubscriptionAttributes(GetSubscriptionAttributes {
            topic: topic()?,
            subscription: subscription()?,
        })),
        "SetSubscriptionAttributes" => {
            let present = |l: StrList| (!l.0.is_empty()).then_some(l);
            Call::plain(Request::SetSubscriptionAttributes(SetSubscriptionAttributes {
                topic: topic()?,
                subscription: subscription()?,
                notify_strategy: p.get("notifyStrategy").map(choice).transpose()?,
                notify_content_format: p.get("notifyContentFormat").map(choice).transpose()?,
                filter_tags: present(tags("filterTag")?),
                binding_keys: present(tags("bindingKey")?),
            }))
        }
        "ClearSubscriptionFilterTags" => {
            Call::plain(Request::ClearSubscriptionFilterTags(ClearSubscriptionFilterTags {
                topic: topic()?,
                subscription: subscription()?,
            }))
        }
        other => Err(ApiError::param(module::UNKNOWN_ACTION, format!("action {other:?} is not supported"))),
    }
}

/// One of an enumeration's names (case-insensitive).
fn choice<T: std::str::FromStr<Err = String>>(v: &str) -> Result<T, ApiError> {
    v.parse().map_err(|e: String| ApiError::param(module::VALUE_ERROR, e))
}

/// A receipt handle; a malformed one is an invalid handle (4430), as CMQ answers.
fn handle(s: &str) -> Result<ReceiptHandle, ApiError> {
    s.parse().map_err(|e: String| ApiError::new(code::RECEIPT_HANDLE_INVALID, module::VALUE_ERROR, e))
}

fn body(s: &str) -> Result<bytes::Bytes, ApiError> {
    if s.is_empty() {
        return Err(ApiError::param(module::OUT_OF_RANGE, "msgBody: empty"));
    }
    Ok(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

fn polling_wait(p: &Params) -> Result<Option<u32>, ApiError> {
    Ok(p.int("pollingWaitSeconds", 0, u64::from(POLLING_WAIT_SECONDS_MAX))?.map(|n| n as u32))
}

fn page(p: &Params) -> Result<(u32, u32), ApiError> {
    let offset = p.int("offset", 0, u64::from(u32::MAX))?.unwrap_or(0) as u32;
    let limit = p.int("limit", 1, LIST_LIMIT_MAX)?.unwrap_or(LIST_LIMIT_DEFAULT) as u32;
    Ok((offset, limit))
}

/// The queue attributes given (absent: unchanged / the default). The
/// dead-letter extension of spec §7.1 is accepted under its lower-camel names.
fn attributes(p: &Params) -> Result<QueueAttributesUpdate, ApiError> {
    Ok(QueueAttributesUpdate {
        max_msg_heap_num: p.int("maxMsgHeapNum", 0, u64::MAX)?,
        polling_wait_seconds: p.u32("pollingWaitSeconds")?,
        visibility_timeout: p.u32("visibilityTimeout")?,
        max_msg_size: p.u32("maxMsgSize")?,
        msg_retention_seconds: p.u32("msgRetentionSeconds")?,
        rewind_seconds: p.u32("rewindSeconds")?,
        dead_letter_queue: p.get("deadLetterQueueName").map(str::to_owned),
        max_receive_count: p.u32("maxReceiveCount")?,
        max_time_to_live: p.u32("maxTimeToLive")?,
        ..Default::default()
    })
}

/// The action's fields for a successful `resp`, or the error it amounts to
/// (BatchDeleteMessage's partial failures).
/// `handles`: the call's (BatchDeleteMessage).
pub fn answer(handles: &Handles, resp: Response) -> Answer {
    let mut m = Map::new();
    match resp {
        Response::CreateQueue(r) => put(&mut m, "queueId", json!(queue_id(r.queue_id))),
        Response::ListQueues(r) => {
            let list: Vec<Value> =
                r.queues.iter().map(|q| json!({"queueId": queue_id(q.queue_id), "queueName": q.queue})).collect();
            put(&mut m, "totalCount", json!(r.total));
            put(&mut m, "queueList", Value::Array(list));
        }
        Response::GetQueueAttributes(q) => queue_info(&mut m, &q),
        Response::SendMessage(r) => put(&mut m, "msgId", json!(r.msg_id.to_string())),
        Response::BatchSendMessage(r) => {
            let list: Vec<Value> = r.msg_ids.iter().map(|id| json!({"msgId": id.to_string()})).collect();
            put(&mut m, "msgList", Value::Array(list));
        }
        Response::ReceiveMessage(msg) => m = received(&msg),
        Response::BatchReceiveMessage(r) => {
            let list: Vec<Value> = r.messages.iter().map(|msg| Value::Object(received(msg))).collect();
            put(&mut m, "msgInfoList", Value::Array(list));
        }
        Response::BatchDeleteMessage(r) => return batch_delete(handles, &r.results),
        Response::ChangeMessageVisibility(r) => {
            put(&mut m, "receiptHandle", json!(r.receipt_handle.to_string()));
            put(&mut m, "nextVisibleTime", json!(secs(r.next_visible_time_ms)));
        }
        Response::CreateTopic(r) => put(&mut m, "topicId", json!(topic_id(r.topic_id))),
        Response::ListTopics(r) => {
            let list: Vec<Value> =
                r.topics.iter().map(|t| json!({"topicId": topic_id(t.topic_id), "topicName": t.topic})).collect();
            put(&mut m, "totalCount", json!(r.total));
            put(&mut m, "topicList", Value::Array(list));
        }
        Response::GetTopicAttributes(t) => topic_info(&mut m, &t),
        Response::PublishMessage(r) => put(&mut m, "msgId", json!(r.msg_id.to_string())),
        Response::BatchPublishMessage(r) => {
            let list: Vec<Value> = r.msg_ids.iter().map(|id| json!({"msgId": id.to_string()})).collect();
            put(&mut m, "msgList", Value::Array(list));
        }
        Response::Subscribe(r) => put(&mut m, "subscriptionId", json!(subscription_id(r.subscription_id))),
        Response::ListSubscriptions(r) => {
            let list: Vec<Value> = r
                .subscriptions
                .iter()
                .map(|s| {
                    json!({
                        "subscriptionId": subscription_id(s.subscription_id),
                        "subscriptionName": s.subscription,
                        "protocol": s.protocol.as_str(),
                        "endpoint": s.endpoint,
                    })
                })
                .collect();
            put(&mut m, "totalCount", json!(r.total));
            put(&mut m, "subscriptionList", Value::Array(list));
        }
        Response::GetSubscriptionAttributes(s) => subscription_info(&mut m, &s),
        _ => {}
    }
    Ok(m)
}

fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    m.insert(k.to_owned(), v);
}

fn queue_id(id: u64) -> String {
    format!("queue-{id}")
}

fn topic_id(id: u64) -> String {
    format!("topic-{id}")
}

fn subscription_id(id: u64) -> String {
    format!("subscription-{id}")
}

fn topic_info(m: &mut Map<String, Value>, t: &TopicInfo) {
    extend(
        m,
        json!({
            "topicId": topic_id(t.topic_id),
            "topicName": t.topic,
            "msgCount": t.msg_count,
            "maxMsgSize": t.max_msg_size,
            "msgRetentionSeconds": t.msg_retention_seconds,
            "createTime": secs(t.create_time_ms),
            "lastModifyTime": secs(t.last_modify_time_ms),
            "filterType": t.filter_type.as_u8(),
        }),
    );
}

/// Both spellings the SDKs read: `protocol`/`protocal`, `filterTag`/`filterTags`.
fn subscription_info(m: &mut Map<String, Value>, s: &SubscriptionInfo) {
    extend(
        m,
        json!({
            "subscriptionId": subscription_id(s.subscription_id),
            "subscriptionName": s.subscription,
            "topicName": s.topic,
            "topicOwner": "",
            "msgCount": s.msg_count,
            "protocol": s.protocol.as_str(),
            "protocal": s.protocol.as_str(),
            "endpoint": s.endpoint,
            "notifyStrategy": s.notify_strategy.as_str(),
            "notifyContentFormat": s.notify_content_format.as_str(),
            "createTime": secs(s.create_time_ms),
            "lastModifyTime": secs(s.last_modify_time_ms),
            "filterTag": s.filter_tags.0,
            "filterTags": s.filter_tags.0,
            "bindingKey": s.binding_keys.0,
        }),
    );
}

fn extend(m: &mut Map<String, Value>, fields: Value) {
    if let Value::Object(f) = fields {
        m.extend(f);
    }
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

fn queue_info(m: &mut Map<String, Value>, q: &QueueInfo) {
    let a = &q.attributes;
    let fields = json!({
        "queueId": queue_id(q.queue_id),
        "queueName": q.queue,
        "maxMsgHeapNum": a.max_msg_heap_num,
        "pollingWaitSeconds": a.polling_wait_seconds,
        "visibilityTimeout": a.visibility_timeout,
        "maxMsgSize": a.max_msg_size,
        "msgRetentionSeconds": a.msg_retention_seconds,
        "rewindSeconds": a.rewind_seconds,
        "createTime": secs(q.create_time_ms),
        "lastModifyTime": secs(q.last_modify_time_ms),
        "activeMsgNum": q.active_msg_num,
        "inactiveMsgNum": q.inactive_msg_num,
        "delayMsgNum": q.delay_msg_num,
        "rewindMsgNum": q.rewind_msg_num,
        "rewindmsgNum": q.rewind_msg_num,
        "minMsgTime": secs(q.min_msg_time_ms),
        "deadLetterQueueName": a.dead_letter_queue,
        "maxReceiveCount": a.max_receive_count,
        "maxTimeToLive": a.max_time_to_live,
    });
    if let Value::Object(f) = fields {
        m.extend(f);
    }
}

fn received(msg: &ReceivedMessage) -> Map<String, Value> {
    let v = json!({
        "msgBody": String::from_utf8_lossy(&msg.body),
        "msgId": msg.msg_id.to_string(),
        "receiptHandle": msg.receipt_handle.to_string(),
        "enqueueTime": secs(msg.enqueue_time_ms),
        "nextVisibleTime": secs(msg.next_visible_time_ms),
        "firstDequeueTime": secs(msg.first_dequeue_time_ms),
        "dequeueCount": msg.dequeue_count,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// 0 when every handle was deleted, else 6010 (some failed) or 6020 (all
/// failed) with `errorList`, one entry per failed handle.
fn batch_delete(handles: &Handles, results: &[ItemResult]) -> Answer {
    let mut sent = results.iter();
    let mut errors = Vec::new();
    for (handle, was_sent) in handles {
        let failure = if *was_sent {
            match sent.next() {
                Some(r) if r.code == 0 => None,
                Some(r) => Some((super::errors::cmq_code(ErrorCode(r.code)), r.message.clone())),
                None => Some((code::INTERNAL, "no result for this handle".to_owned())),
            }
        } else {
            Some((code::RECEIPT_HANDLE_INVALID, format!("receiptHandle: {handle:?} is not a receipt handle")))
        };
        if let Some((c, msg)) = failure {
            errors.push(json!({"code": c, "message": msg, "receiptHandle": handle}));
        }
    }
    if errors.is_empty() {
        return Ok(Map::new());
    }
    let c = if errors.len() == handles.len() { code::BATCH_DELETE_FAILED } else { code::BATCH_DELETE_PARTIAL };
    let text = format!("{} of {} receipt handles were not deleted", errors.len(), handles.len());
    let mut m = Map::new();
    put(&mut m, "errorList", Value::Array(errors));
    Err((ApiError::new(c, module::BROKER, text), m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(raw: &str) -> Params {
        Params::parse(raw.as_bytes()).expect("parses")
    }

    #[test]
    fn action_names_match_case_insensitively() {
        assert_eq!(find("sendMessage").expect("found"), "SendMessage");
        assert_eq!(find("BATCHDELETEMESSAGE").expect("found"), "BatchDeleteMessage");
        assert_eq!(
            find("ClearSUbscriptionFIlterTags").expect("the Java SDK's spelling"),
            "ClearSubscriptionFilterTags"
        );
        assert_eq!(find("QueryQueueRoute").expect_err("unknown").module, module::UNKNOWN_ACTION);
    }

    #[test]
    fn requests_carry_the_parameters() {
        let c = build("SendMessage", &params("queueName=q&msgBody=hi&delaySeconds=5")).expect("builds");
        let Request::SendMessage(s) = c.request else { panic!("send") };
        assert_eq!((s.queue.as_str(), s.delay_seconds, &s.body[..]), ("q", 5, &b"hi"[..]));
        assert!(build("SendMessage", &params("queueName=q&msgBody=")).is_err(), "empty body");
        let c = build("ReceiveMessage", &params("queueName=q")).expect("builds");
        assert_eq!(c.answer_within(), Duration::from_secs(30) + ANSWER_WAIT_MARGIN, "queue default: up to 30 s");
        assert!(build("ReceiveMessage", &params("queueName=q&pollingWaitSeconds=31")).is_err());
        assert!(build("BatchReceiveMessage", &params("queueName=q&numOfMsg=17")).is_err());
        let c = build("ListQueue", &params("searchWord=ab&offset=2&limit=50")).expect("builds");
        assert_eq!(
            c.request,
            Request::ListQueues(ListQueues { prefix: "".into(), contains: "ab".into(), offset: 2, limit: 50 })
        );
        assert!(build("ListQueue", &params("limit=51")).is_err());
        let c = build("RewindQueue", &params("queueName=q&startConsumeTime=7")).expect("builds");
        assert_eq!(c.request, Request::RewindQueue(RewindQueue { queue: "q".into(), start_consume_time_ms: 7000 }));
        let e = build("DeleteMessage", &params("queueName=q&receiptHandle=x1")).err().expect("bad handle");
        assert_eq!(e.code, code::RECEIPT_HANDLE_INVALID);
    }

    #[test]
    fn batch_delete_reports_each_failed_handle() {
        let c =
            build("BatchDeleteMessage", &params("queueName=q&receiptHandle.1=5&receiptHandle.2=bad&receiptHandle.3=6"))
                .expect("builds");
        let Request::BatchDeleteMessage(b) = &c.request else { panic!("batch delete") };
        assert_eq!(b.receipt_handles, [ReceiptHandle(5), ReceiptHandle(6)]);
        let ok = ItemResult { code: 0, message: String::new() };
        let stale = ItemResult { code: 4430, message: "expired".into() };
        let (e, m) = batch_delete(&c.handles, &[ok.clone(), stale.clone()]).expect_err("partial");
        assert_eq!(e.code, code::BATCH_DELETE_PARTIAL);
        let list = m["errorList"].as_array().expect("list");
        assert_eq!(list.len(), 2);
        assert_eq!((list[0]["receiptHandle"].as_str(), list[0]["code"].as_u64()), (Some("bad"), Some(4430)));
        assert_eq!((list[1]["receiptHandle"].as_str(), list[1]["code"].as_u64()), (Some("6"), Some(4430)));
        let (e, _) = batch_delete(&c.handles, &[stale.clone(), stale]).expect_err("all");
        assert_eq!(e.code, code::BATCH_DELETE_FAILED);
        let all = build("BatchDeleteMessage", &params("queueName=q&receiptHandle.1=5")).expect("builds");
        assert!(batch_delete(&all.handles, &[ok]).expect("all deleted").is_empty());
    }
}
