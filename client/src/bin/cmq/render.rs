//! Output: JSON shapes (CMQ's field names; ids as decimal strings because
//! msgIds carry the shard in their top bits and exceed what a JSON number
//! reader using doubles keeps exactly), human tables, body escaping.

use std::borrow::Cow;
use std::fmt::Write as _;

use cmq_client::{
    ClientError, ListQueuesOk, ListSubscriptionsOk, ListTopicsOk, MessageOrigin, MessageState, MessageStatus,
    PeekedMessage, QueueInfo, ReceivedMessage, RedriveInfo, SubscriptionInfo, TopicInfo, TransactionCheck,
};
use serde::Serialize;

use crate::time::{utc, utc_short};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfoJson<'a> {
    queue_name: &'a str,
    queue_id: String,
    max_msg_heap_num: u64,
    polling_wait_seconds: u32,
    visibility_timeout: u32,
    max_msg_size: u32,
    msg_retention_seconds: u32,
    rewind_seconds: u32,
    flush_policy: &'static str,
    dead_letter_queue_name: &'a str,
    max_receive_count: u32,
    max_time_to_live: u32,
    first_query_interval: u32,
    max_query_count: u32,
    transaction_default: &'static str,
    create_time: u64,
    last_modify_time: u64,
    active_msg_num: u64,
    inactive_msg_num: u64,
    delay_msg_num: u64,
    rewind_msg_num: u64,
    min_msg_time: u64,
    shard: u16,
}

impl<'a> From<&'a QueueInfo> for QueueInfoJson<'a> {
    fn from(q: &'a QueueInfo) -> Self {
        let a = &q.attributes;
        QueueInfoJson {
            queue_name: &q.queue,
            queue_id: q.queue_id.to_string(),
            max_msg_heap_num: a.max_msg_heap_num,
            polling_wait_seconds: a.polling_wait_seconds,
            visibility_timeout: a.visibility_timeout,
            max_msg_size: a.max_msg_size,
            msg_retention_seconds: a.msg_retention_seconds,
            rewind_seconds: a.rewind_seconds,
            flush_policy: a.flush_policy.as_str(),
            dead_letter_queue_name: &a.dead_letter_queue,
            max_receive_count: a.max_receive_count,
            max_time_to_live: a.max_time_to_live,
            first_query_interval: a.first_query_interval,
            max_query_count: a.max_query_count,
            transaction_default: a.transaction_default.as_str(),
            create_time: secs(q.create_time_ms),
            last_modify_time: secs(q.last_modify_time_ms),
            active_msg_num: q.active_msg_num,
            inactive_msg_num: q.inactive_msg_num,
            delay_msg_num: q.delay_msg_num,
            rewind_msg_num: q.rewind_msg_num,
            min_msg_time: secs(q.min_msg_time_ms),
            shard: q.shard,
        }
    }
}

/// Two aligned columns, in the same order and with the same names as the JSON.
pub fn queue_info_table(q: &QueueInfo) -> String {
    let a = &q.attributes;
    let rows: [(&str, String); 23] = [
        ("queueName", q.queue.clone()),
        ("queueId", q.queue_id.to_string()),
        ("maxMsgHeapNum", a.max_msg_heap_num.to_string()),
        ("pollingWaitSeconds", a.polling_wait_seconds.to_string()),
        ("visibilityTimeout", a.visibility_timeout.to_string()),
        ("maxMsgSize", a.max_msg_size.to_string()),
        ("msgRetentionSeconds", a.msg_retention_seconds.to_string()),
        ("rewindSeconds", a.rewind_seconds.to_string()),
        ("flushPolicy", a.flush_policy.as_str().to_owned()),
        ("deadLetterQueueName", a.dead_letter_queue.clone()),
        ("maxReceiveCount", a.max_receive_count.to_string()),
        ("maxTimeToLive", a.max_time_to_live.to_string()),
        ("firstQueryInterval", a.first_query_interval.to_string()),
        ("maxQueryCount", a.max_query_count.to_string()),
        ("transactionDefault", a.transaction_default.as_str().to_owned()),
        ("createTime", time_cell(q.create_time_ms)),
        ("lastModifyTime", time_cell(q.last_modify_time_ms)),
        ("activeMsgNum", q.active_msg_num.to_string()),
        ("inactiveMsgNum", q.inactive_msg_num.to_string()),
        ("delayMsgNum", q.delay_msg_num.to_string()),
        ("rewindMsgNum", q.rewind_msg_num.to_string()),
        ("minMsgTime", time_cell(q.min_msg_time_ms)),
        ("shard", q.shard.to_string()),
    ];
    key_value_table(&rows)
}

/// Names left, values right, one pair a line.
fn key_value_table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0).max(19);
    let mut out = String::new();
    for (name, value) in rows {
        let line = format!("{name:<width$} {value}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// Columns padded to their widest cell, two spaces apart; the last column
/// is not padded, so a long body does not drag trailing blanks along.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueListJson<'a> {
    total_count: u32,
    queue_list: Vec<QueueSummaryJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueSummaryJson<'a> {
    queue_id: String,
    queue_name: &'a str,
}

impl<'a> From<&'a ListQueuesOk> for QueueListJson<'a> {
    fn from(l: &'a ListQueuesOk) -> Self {
        QueueListJson {
            total_count: l.total,
            queue_list: l
                .queues
                .iter()
                .map(|q| QueueSummaryJson { queue_id: q.queue_id.to_string(), queue_name: &q.queue })
                .collect(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicInfoJson<'a> {
    topic_name: &'a str,
    topic_id: String,
    max_msg_size: u32,
    msg_retention_seconds: u32,
    /// CMQ's number: 1 tags, 2 routing key.
    filter_type: u8,
    filter_type_name: &'static str,
    create_time: u64,
    last_modify_time: u64,
    msg_count: u64,
    subscription_count: u32,
    shard: u16,
}

impl<'a> From<&'a TopicInfo> for TopicInfoJson<'a> {
    fn from(t: &'a TopicInfo) -> Self {
        TopicInfoJson {
            topic_name: &t.topic,
            topic_id: t.topic_id.to_string(),
            max_msg_size: t.max_msg_size,
            msg_retention_seconds: t.msg_retention_seconds,
            filter_type: t.filter_type.as_u8(),
            filter_type_name: t.filter_type.as_str(),
            create_time: secs(t.create_time_ms),
            last_modify_time: secs(t.last_modify_time_ms),
            msg_count: t.msg_count,
            subscription_count: t.subscription_count,
            shard: t.shard,
        }
    }
}

/// The same names and order as the JSON.
pub fn topic_info_table(t: &TopicInfo) -> String {
    let rows = [
        ("topicName", t.topic.clone()),
        ("topicId", t.topic_id.to_string()),
        ("maxMsgSize", t.max_msg_size.to_string()),
        ("msgRetentionSeconds", t.msg_retention_seconds.to_string()),
        ("filterType", t.filter_type.as_u8().to_string()),
        ("filterTypeName", t.filter_type.as_str().to_owned()),
        ("createTime", time_cell(t.create_time_ms)),
        ("lastModifyTime", time_cell(t.last_modify_time_ms)),
        ("msgCount", t.msg_count.to_string()),
        ("subscriptionCount", t.subscription_count.to_string()),
        ("shard", t.shard.to_string()),
    ];
    key_value_table(&rows)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicListJson<'a> {
    total_count: u32,
    topic_list: Vec<TopicSummaryJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicSummaryJson<'a> {
    topic_id: String,
    topic_name: &'a str,
}

impl<'a> From<&'a ListTopicsOk> for TopicListJson<'a> {
    fn from(l: &'a ListTopicsOk) -> Self {
        TopicListJson {
            total_count: l.total,
            topic_list: l
                .topics
                .iter()
                .map(|t| TopicSummaryJson { topic_id: t.topic_id.to_string(), topic_name: &t.topic })
                .collect(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionListJson<'a> {
    total_count: u32,
    subscription_list: Vec<SubscriptionSummaryJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionSummaryJson<'a> {
    subscription_id: String,
    subscription_name: &'a str,
    protocol: &'static str,
    endpoint: &'a str,
}

impl<'a> From<&'a ListSubscriptionsOk> for SubscriptionListJson<'a> {
    fn from(l: &'a ListSubscriptionsOk) -> Self {
        SubscriptionListJson {
            total_count: l.total,
            subscription_list: l
                .subscriptions
                .iter()
                .map(|s| SubscriptionSummaryJson {
                    subscription_id: s.subscription_id.to_string(),
                    subscription_name: &s.subscription,
                    protocol: s.protocol.as_str(),
                    endpoint: &s.endpoint,
                })
                .collect(),
        }
    }
}

pub fn subscription_table(l: &ListSubscriptionsOk) -> String {
    let rows: Vec<Vec<String>> = l
        .subscriptions
        .iter()
        .map(|s| vec![s.subscription.clone(), s.protocol.as_str().to_owned(), s.endpoint.clone()])
        .collect();
    table(&["NAME", "PROTOCOL", "ENDPOINT"], &rows)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionInfoJson<'a> {
    subscription_name: &'a str,
    subscription_id: String,
    topic_name: &'a str,
    protocol: &'static str,
    endpoint: &'a str,
    notify_strategy: &'static str,
    notify_content_format: &'static str,
    filter_tag: &'a [String],
    binding_key: &'a [String],
    dead_letter_queue_name: &'a str,
    push_secret: &'a str,
    create_time: u64,
    last_modify_time: u64,
    msg_count: u64,
    delivered: u64,
    dropped: u64,
}

impl<'a> From<&'a SubscriptionInfo> for SubscriptionInfoJson<'a> {
    fn from(s: &'a SubscriptionInfo) -> Self {
        SubscriptionInfoJson {
            subscription_name: &s.subscription,
            subscription_id: s.subscription_id.to_string(),
            topic_name: &s.topic,
            protocol: s.protocol.as_str(),
            endpoint: &s.endpoint,
            notify_strategy: s.notify_strategy.as_str(),
            notify_content_format: s.notify_content_format.as_str(),
            filter_tag: &s.filter_tags.0,
            binding_key: &s.binding_keys.0,
            dead_letter_queue_name: &s.dead_letter_queue,
            push_secret: &s.push_secret,
            create_time: secs(s.create_time_ms),
            last_modify_time: secs(s.last_modify_time_ms),
            msg_count: s.msg_count,
            delivered: s.delivered,
            dropped: s.dropped,
        }
    }
}

/// The same names and order as the JSON; lists comma-separated.
pub fn subscription_info_table(s: &SubscriptionInfo) -> String {
    let rows = [
        ("subscriptionName", s.subscription.clone()),
        ("subscriptionId", s.subscription_id.to_string()),
        ("topicName", s.topic.clone()),
        ("protocol", s.protocol.as_str().to_owned()),
        ("endpoint", s.endpoint.clone()),
        ("notifyStrategy", s.notify_strategy.as_str().to_owned()),
        ("notifyContentFormat", s.notify_content_format.as_str().to_owned()),
        ("filterTag", s.filter_tags.0.join(", ")),
        ("bindingKey", s.binding_keys.0.join(", ")),
        ("deadLetterQueueName", s.dead_letter_queue.clone()),
        ("pushSecret", s.push_secret.clone()),
        ("createTime", time_cell(s.create_time_ms)),
        ("lastModifyTime", time_cell(s.last_modify_time_ms)),
        ("msgCount", s.msg_count.to_string()),
        ("delivered", s.delivered.to_string()),
        ("dropped", s.dropped.to_string()),
    ];
    key_value_table(&rows)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson<'a> {
    msg_id: String,
    receipt_handle: String,
    msg_body: Cow<'a, str>,
    enqueue_time: u64,
    first_dequeue_time: u64,
    next_visible_time: u64,
    dequeue_count: u32,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    origin: Option<OriginJson<'a>>,
}

/// Where a dead-lettered (or redriven) message came from; flattened into
/// the message's object, absent for other messages.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginJson<'a> {
    source_queue: &'a str,
    original_msg_id: String,
    first_enqueue_time: u64,
}

impl<'a> From<&'a MessageOrigin> for OriginJson<'a> {
    fn from(o: &'a MessageOrigin) -> Self {
        OriginJson {
            source_queue: &o.source_queue,
            original_msg_id: o.original_msg_id.to_string(),
            first_enqueue_time: secs(o.first_enqueue_time_ms),
        }
    }
}

/// One line on where a dead-lettered message came from.
pub fn origin_note(msg_id: u64, o: &MessageOrigin) -> String {
    format!(
        "msgId {msg_id} came from queue {:?} (original msgId {}, first enqueued {})",
        o.source_queue,
        o.original_msg_id,
        utc(secs(o.first_enqueue_time_ms))
    )
}

impl<'a> MessageJson<'a> {
    /// `base64`: msgBody carries the body's exact bytes in base64 instead of as text.
    pub fn new(m: &'a ReceivedMessage, base64: bool) -> Self {
        MessageJson {
            msg_id: m.msg_id.to_string(),
            receipt_handle: m.receipt_handle.to_string(),
            msg_body: if base64 { Cow::Owned(crate::body::encode_base64(&m.body)) } else { body_text(&m.body) },
            enqueue_time: secs(m.enqueue_time_ms),
            first_dequeue_time: secs(m.first_dequeue_time_ms),
            next_visible_time: secs(m.next_visible_time_ms),
            dequeue_count: m.dequeue_count,
            origin: m.origin.as_ref().map(OriginJson::from),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeekedJson<'a> {
    msg_id: String,
    state: &'static str,
    enqueue_time: u64,
    first_dequeue_time: u64,
    dequeue_count: u32,
    /// In flight: the lease expiry; delayed: when it becomes ready; else 0.
    next_visible_time: u64,
    body_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_body: Option<Cow<'a, str>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    origin: Option<OriginJson<'a>>,
}

impl<'a> PeekedJson<'a> {
    pub fn new(m: &'a PeekedMessage, with_body: bool) -> Self {
        PeekedJson {
            msg_id: m.msg_id.to_string(),
            state: m.state.as_str(),
            enqueue_time: secs(m.enqueue_time_ms),
            first_dequeue_time: secs(m.first_dequeue_time_ms),
            dequeue_count: m.dequeue_count,
            next_visible_time: secs(shown_next_visible(m.state, m.next_visible_time_ms)),
            body_size: m.body_len,
            msg_body: with_body.then(|| body_text(&m.body)),
            origin: m.origin.as_ref().map(OriginJson::from),
        }
    }
}

/// Only in flight and delayed messages have a meaningful next visible time.
fn shown_next_visible(state: MessageState, ms: u64) -> u64 {
    match state {
        MessageState::InFlight | MessageState::Delayed => ms,
        _ => 0,
    }
}

/// The peek table streams (a queue may be long), so its columns have fixed
/// widths: ids up to u64::MAX, every state name, full dates, 1 MiB sizes.
/// FROM (a dead-lettered message's source queue) grows past 16 if it must.
const PEEK_COLUMNS: [(&str, usize); 7] = [
    ("MSGID", 20),
    ("STATE", 13),
    ("DEQUEUED", 8),
    ("ENQUEUED (UTC)", 19),
    ("NEXT VISIBLE (UTC)", 19),
    ("SIZE", 7),
    ("FROM", 16),
];

pub fn peek_header(with_body: bool) -> String {
    let cells: Vec<String> = PEEK_COLUMNS.iter().map(|(h, _)| (*h).to_owned()).collect();
    peek_line(cells, with_body.then(|| "BODY".to_owned()))
}

pub fn peek_row(m: &PeekedMessage, with_body: bool) -> String {
    let cells = vec![
        m.msg_id.to_string(),
        m.state.as_str().to_owned(),
        m.dequeue_count.to_string(),
        date_cell(m.enqueue_time_ms),
        date_cell(shown_next_visible(m.state, m.next_visible_time_ms)),
        m.body_len.to_string(),
        m.origin.as_ref().map_or_else(|| "-".to_owned(), |o| o.source_queue.clone()),
    ];
    peek_line(cells, with_body.then(|| cell_text(&m.body)))
}

fn peek_line(cells: Vec<String>, body: Option<String>) -> String {
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(PEEK_COLUMNS) {
        let _ = write!(line, "{cell:<width$}  ");
    }
    if let Some(body) = body {
        line.push_str(&body);
    }
    line.truncate(line.trim_end().len());
    line
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatusJson<'a> {
    msg_id: String,
    state: &'static str,
    enqueue_time: u64,
    first_dequeue_time: u64,
    dequeue_count: u32,
    next_visible_time: u64,
    state_time: u64,
    detail: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    origin: Option<OriginJson<'a>>,
}

impl<'a> From<&'a MessageStatus> for MessageStatusJson<'a> {
    fn from(m: &'a MessageStatus) -> Self {
        MessageStatusJson {
            msg_id: m.msg_id.to_string(),
            state: m.state.as_str(),
            enqueue_time: secs(m.enqueue_time_ms),
            first_dequeue_time: secs(m.first_dequeue_time_ms),
            dequeue_count: m.dequeue_count,
            next_visible_time: secs(shown_next_visible(m.state, m.next_visible_time_ms)),
            state_time: secs(m.state_time_ms),
            detail: &m.detail,
            origin: m.origin.as_ref().map(OriginJson::from),
        }
    }
}

/// The same names and order as the JSON.
pub fn message_status_table(m: &MessageStatus) -> String {
    let mut rows = vec![
        ("msgId", m.msg_id.to_string()),
        ("state", m.state.as_str().to_owned()),
        ("enqueueTime", time_cell(m.enqueue_time_ms)),
        ("firstDequeueTime", time_cell(m.first_dequeue_time_ms)),
        ("dequeueCount", m.dequeue_count.to_string()),
        ("nextVisibleTime", time_cell(shown_next_visible(m.state, m.next_visible_time_ms))),
        ("stateTime", time_cell(m.state_time_ms)),
        ("detail", m.detail.clone()),
    ];
    if let Some(o) = &m.origin {
        rows.push(("sourceQueue", o.source_queue.clone()));
        rows.push(("originalMsgId", o.original_msg_id.to_string()));
        rows.push(("firstEnqueueTime", time_cell(o.first_enqueue_time_ms)));
    }
    key_value_table(&rows)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveJson<'a> {
    redrive_id: String,
    dead_letter_queue_name: &'a str,
    /// Empty: each message goes back to its source queue.
    to: &'a str,
    rate_per_second: u32,
    state: &'static str,
    moved: u64,
    remaining: u64,
    failed: u64,
    start_time: u64,
    finish_time: u64,
    note: &'a str,
}

impl<'a> From<&'a RedriveInfo> for RedriveJson<'a> {
    fn from(r: &'a RedriveInfo) -> Self {
        RedriveJson {
            redrive_id: r.id.to_string(),
            dead_letter_queue_name: &r.dead_letter_queue,
            to: &r.to,
            rate_per_second: r.rate_per_second,
            state: r.state.as_str(),
            moved: r.moved,
            remaining: r.remaining,
            failed: r.failed,
            start_time: secs(r.started_ms),
            finish_time: secs(r.finished_ms),
            note: &r.note,
        }
    }
}

/// Where a redrive sends messages, for people.
pub fn redrive_target(r: &RedriveInfo) -> &str {
    if r.to.is_empty() {
        "(source queues)"
    } else {
        &r.to
    }
}

/// One row per task; NOTE (last, so a long one does not push the others
/// apart) says why messages could not be moved, if any could not.
pub fn redrive_table(tasks: &[RedriveInfo]) -> String {
    let headers = ["ID", "DLQ", "TO", "STATE", "MOVED", "REMAINING", "FAILED", "NOTE"];
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.dead_letter_queue.clone(),
                redrive_target(r).to_owned(),
                r.state.as_str().to_owned(),
                r.moved.to_string(),
                r.remaining.to_string(),
                r.failed.to_string(),
                r.note.clone(),
            ]
        })
        .collect();
    table(&headers, &rows)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckJson<'a> {
    queue_name: &'a str,
    msg_id: String,
    producer_group: &'a str,
    check_count: u32,
    enqueue_time: u64,
    msg_body: Cow<'a, str>,
    /// "commit", "rollback" or "none" (not answered).
    decision: &'static str,
    /// The broker's refusal of the decision, if it refused.
    error: Option<ErrorJson<'a>>,
}

impl<'a> CheckJson<'a> {
    pub fn new(c: &'a TransactionCheck, decision: Option<bool>, error: Option<ErrorJson<'a>>) -> Self {
        CheckJson {
            queue_name: &c.queue,
            msg_id: c.msg_id.to_string(),
            producer_group: &c.producer_group,
            check_count: c.check_count,
            enqueue_time: secs(c.enqueue_time_ms),
            msg_body: body_text(&c.body),
            decision: decision_text(decision),
            error,
        }
    }
}

pub fn decision_text(decision: Option<bool>) -> &'static str {
    match decision {
        Some(true) => "commit",
        Some(false) => "rollback",
        None => "none",
    }
}

/// One line per check, for people.
pub fn check_line(c: &TransactionCheck) -> String {
    format!(
        "msgId {} in queue {} (group {}, check {}, enqueued {}) body {:?}",
        c.msg_id,
        c.queue,
        c.producer_group,
        c.check_count,
        date_cell(c.enqueue_time_ms),
        body_text(&c.body)
    )
}

/// The `--json` form of a failure.
#[derive(Serialize)]
pub struct ErrorJson<'a> {
    /// The broker's code; null when the failure is the client's or the network's.
    pub code: Option<u16>,
    pub name: &'a str,
    pub message: String,
}

/// Names for failures that never reached the broker, in the style of its codes.
pub fn client_error_name(e: &ClientError) -> &'static str {
    match e {
        ClientError::Server { code, .. } => code.name(),
        ClientError::Handshake { code: Some(code), .. } => code.name(),
        ClientError::Handshake { code: None, .. } => "HANDSHAKE_FAILED",
        ClientError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "CONNECTION_REFUSED",
        ClientError::Io(_) if e.is_timeout() => "TIMEOUT",
        ClientError::Io(_) => "IO_ERROR",
        ClientError::Protocol(_) => "PROTOCOL_ERROR",
        ClientError::Disconnected => "DISCONNECTED",
        ClientError::OutcomeUnknown { .. } => "OUTCOME_UNKNOWN",
    }
}

/// A body as text: valid UTF-8 unchanged, each invalid byte as `\xNN`.
/// Never fails, so a binary body cannot crash the tool.
pub fn body_text(body: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(body) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(body.len() + 16);
    for chunk in body.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// Protocol milliseconds to CMQ's Unix seconds.
pub fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// A table cell's date, `-` for CMQ's 0 ("none").
fn date_cell(ms: u64) -> String {
    match secs(ms) {
        0 => "-".to_owned(),
        s => utc_short(s),
    }
}

/// A body on one table line: escaped as `receive` prints it, so control
/// characters (newlines, tabs…) cannot break the row and nothing is ambiguous.
pub fn cell_text(body: &[u8]) -> String {
    crate::body::line_text(body).into_owned()
}

/// Unix seconds plus a readable UTC date; 0 (CMQ's "none") stays bare.
pub fn time_cell(ms: u64) -> String {
    match secs(ms) {
        0 => "0".to_owned(),
        s => format!("{s} ({})", utc(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_escaped_and_valid_text_untouched() {
        assert!(matches!(body_text("héllo".as_bytes()), Cow::Borrowed("héllo")));
        assert_eq!(body_text(b"a\xffb\xc3"), "a\\xFFb\\xC3");
        assert_eq!(body_text(b""), "");
    }

    #[test]
    fn table_cells_cannot_break_rows() {
        assert_eq!(cell_text(b"a\nb\tc\x01\xff\\"), "a\\nb\\tc\\x01\\xFF\\\\");
        let t = table(&["ID", "BODY"], &[vec!["1".into(), "x".into()], vec!["12345".into(), "y z".into()]]);
        assert_eq!(t, "ID     BODY\n1      x\n12345  y z\n");
    }

    #[test]
    fn peek_rows_line_up_under_the_header() {
        let m = PeekedMessage {
            msg_id: u64::MAX,
            state: MessageState::DeadLettered,
            enqueue_time_ms: 1_700_000_000_000,
            next_visible_time_ms: 1_700_000_030_000,
            body_len: 1_048_576,
            body: bytes::Bytes::from_static(b"a\nb"),
            ..Default::default()
        };
        let header = peek_header(true);
        let row = peek_row(&m, true);
        assert_eq!(header.find("BODY"), row.find("a\\nb"), "{header}\n{row}");
        assert_eq!(header.find("SIZE"), row.find("1048576"));
        assert!(row.contains("2023-11-14 22:13:20  -"), "delayed/in-flight only: {row}");
        assert!(!peek_header(false).ends_with(' '));
    }

    #[test]
    fn zero_times_stay_bare() {
        assert_eq!(time_cell(0), "0");
        assert_eq!(time_cell(999), "0");
        assert_eq!(time_cell(1_700_000_000_123), "1700000000 (2023-11-14 22:13:20 UTC)");
    }
}
