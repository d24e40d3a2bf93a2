//! Queue, message, dead-letter, topic and subscription endpoints. Where the
//! CMQ API has the operation, its request is built and its answer turned
//! into JSON by the gateway's code (`gateway::actions`), with the same
//! parameter names (form-encoded bodies); the rest (peek, purge, redrive)
//! build the protocol request here.

use cmq_protocol::*;
use futures_util::future::join_all;
use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::api::{Answer, Ctx, BROKER_WAIT};
use super::{ok, Failure};
use crate::gateway::actions;
use crate::gateway::params::Params;

/// Queues (and topics) one list request shows: CMQ's largest page.
pub const LIST_PAGE: u32 = actions::LIST_LIMIT_MAX as u32;

/// Messages one peek shows, at most.
pub const PEEK_MAX: u16 = 20;

/// Bytes of each peeked body shown.
pub const PREVIEW_BYTES: usize = 512;

/// Queues the dead-letter page scans for their dead-letter settings.
pub const DLQ_SCAN_QUEUES_MAX: u32 = 200;

pub async fn handle(r: &Ctx<'_>, m: &Method, seg: &[&str], query: &[u8], body: &[u8]) -> Answer {
    let q = |name: &str| vec![("queueName", name.to_owned())];
    let t = |name: &str| vec![("topicName", name.to_owned())];
    match (m, seg) {
        (&Method::GET, ["queues"]) => list_queues(r, &parse(query, &[])?).await,
        (&Method::POST, ["queues"]) => queue_action(r, "CreateQueue", &parse(body, &[])?).await,
        (&Method::GET, ["queues", name]) => queue_detail(r, name).await,
        (&Method::PUT, ["queues", name]) => queue_action(r, "SetQueueAttributes", &parse(body, &q(name))?).await,
        (&Method::DELETE, ["queues", name]) => action(r, "DeleteQueue", &parse(&[], &q(name))?).await,
        (&Method::POST, ["queues", name, "purge"]) => purge(r, name).await,
        (&Method::GET, ["queues", name, "messages"]) => peek(r, name, &parse(query, &[])?).await,
        (&Method::POST, ["queues", name, "messages"]) => action(r, "SendMessage", &parse(body, &q(name))?).await,
        (&Method::GET, ["deadletters"]) => dead_letters(r).await,
        (&Method::GET, ["redrives"]) => redrives(r).await,
        (&Method::POST, ["redrives"]) => start_redrive(r, &parse(body, &[])?).await,
        (&Method::DELETE, ["redrives", id]) => cancel_redrive(r, id).await,
        (&Method::GET, ["topics"]) => list_topics(r, &parse(query, &[])?).await,
        (&Method::POST, ["topics"]) => action(r, "CreateTopic", &parse(body, &[])?).await,
        (&Method::DELETE, ["topics", name]) => action(r, "DeleteTopic", &parse(&[], &t(name))?).await,
        (&Method::POST, ["topics", name, "messages"]) => action(r, "PublishMessage", &parse(body, &t(name))?).await,
        (&Method::GET, ["topics", name, "subscriptions"]) => subscriptions(r, name).await,
        (&Method::POST, ["topics", name, "subscriptions"]) => action(r, "Subscribe", &parse(body, &t(name))?).await,
        (&Method::DELETE, ["topics", name, "subscriptions", sub]) => {
            let p = parse(&[], &[("topicName", (*name).to_owned()), ("subscriptionName", (*sub).to_owned())])?;
            action(r, "Unsubscribe", &p).await
        }
        _ => Err(Failure::not_found()),
    }
}

/// Form-encoded `raw` plus the parameters the path gives.
fn parse(raw: &[u8], path: &[(&str, String)]) -> Result<Params, Failure> {
    let mut all = raw.to_vec();
    let mut extra = form_urlencoded::Serializer::new(String::new());
    for (k, v) in path {
        extra.append_pair(k, v);
    }
    let extra = extra.finish();
    if !extra.is_empty() {
        if !all.is_empty() {
            all.push(b'&');
        }
        all.extend_from_slice(extra.as_bytes());
    }
    Params::parse(&all).map_err(Failure::param)
}

/// A CMQ action, built and answered by the gateway's code.
async fn action(r: &Ctx<'_>, name: &str, p: &Params) -> Answer {
    Ok(ok(&Value::Object(cmq(r, name, p).await?)))
}

async fn cmq(r: &Ctx<'_>, name: &str, p: &Params) -> Result<Map<String, Value>, Failure> {
    run_call(r, actions::build(name, p).map_err(Failure::param)?).await
}

async fn run_call(r: &Ctx<'_>, call: actions::Call) -> Result<Map<String, Value>, Failure> {
    let within = call.answer_within().min(BROKER_WAIT);
    let resp = r.run(call.request, within).await?;
    actions::answer(&call.handles, resp).map_err(|(e, _)| Failure::param(e))
}

/// CreateQueue or SetQueueAttributes, with the console's `flushPolicy`
/// (`sync` or `async`: the protocol's per-queue flush policy, which the
/// CMQ API has no parameter for) added to the gateway's request.
async fn queue_action(r: &Ctx<'_>, name: &str, p: &Params) -> Answer {
    let mut call = actions::build(name, p).map_err(Failure::param)?;
    let flush = match p.get("flushPolicy") {
        Some(text) => Some(text.parse::<FlushPolicy>().map_err(Failure::bad_request)?),
        None => None,
    };
    match &mut call.request {
        Request::CreateQueue(c) => c.attributes.flush_policy = flush,
        Request::SetQueueAttributes(s) => s.attributes.flush_policy = flush,
        _ => {}
    }
    Ok(ok(&Value::Object(run_call(r, call).await?)))
}

/// A queue's attributes and counts (the gateway's fields), its flush
/// policy and shard, and its latest rates from the history.
async fn queue_info(r: &Ctx<'_>, name: &str) -> Result<Map<String, Value>, Failure> {
    let resp = r.run(Request::GetQueueAttributes(GetQueueAttributes { queue: name.to_owned() }), BROKER_WAIT).await?;
    let Response::GetQueueAttributes(info) = &resp else { return Err(unexpected()) };
    let (flush, shard) = (info.attributes.flush_policy.as_str(), info.shard);
    let mut m = actions::answer(&Vec::new(), resp.clone()).map_err(|(e, _)| Failure::param(e))?;
    let (rate_in, rate_out) = r.ctx.console.history.queue_rates(name).unwrap_or((0.0, 0.0));
    m.insert("flushPolicy".into(), json!(flush));
    m.insert("shard".into(), json!(shard));
    m.insert("inPerSec".into(), json!(rate_in));
    m.insert("outPerSec".into(), json!(rate_out));
    Ok(m)
}

fn unexpected() -> Failure {
    Failure::new(StatusCode::BAD_GATEWAY, "BAD_ANSWER", "the broker answered with another operation")
}

/// A page of queues (`search`, `offset`), each with its attributes.
async fn list_queues(r: &Ctx<'_>, p: &Params) -> Answer {
    let offset = p.int("offset", 0, u64::from(u32::MAX)).map_err(Failure::param)?.unwrap_or(0) as u32;
    let contains = p.get("search").unwrap_or_default().to_owned();
    let (total, names) = queue_names(r, contains, offset).await?;
    let mut queues = Vec::with_capacity(names.len());
    for info in queue_infos(r, &names).await {
        match info {
            Ok(m) => queues.push(Value::Object(m)),
            // Deleted since it was listed.
            Err(f) if f.status == StatusCode::NOT_FOUND => {}
            Err(f) => return Err(f),
        }
    }
    Ok(ok(&json!({"total": total, "offset": offset, "queues": queues})))
}

/// Every named queue's [`queue_info`], in the order named. The requests go
/// out at once (at most [`LIST_PAGE`] of them), so a page takes about one
/// round trip to the slowest shard, not one per queue in turn.
async fn queue_infos(r: &Ctx<'_>, names: &[String]) -> Vec<Result<Map<String, Value>, Failure>> {
    join_all(names.iter().map(|name| queue_info(r, name))).await
}

async fn queue_names(r: &Ctx<'_>, contains: String, offset: u32) -> Result<(u32, Vec<String>), Failure> {
    let list = ListQueues { prefix: String::new(), contains, offset, limit: LIST_PAGE };
    let Response::ListQueues(l) = r.run(Request::ListQueues(list), BROKER_WAIT).await? else {
        return Err(unexpected());
    };
    Ok((l.total, l.queues.into_iter().map(|q| q.queue).collect()))
}

async fn queue_detail(r: &Ctx<'_>, name: &str) -> Answer {
    let mut m = queue_info(r, name).await?;
    m.insert("history".into(), Value::Array(r.ctx.console.history.queue_series(name)));
    Ok(ok(&Value::Object(m)))
}

async fn purge(r: &Ctx<'_>, name: &str) -> Answer {
    let req = Request::PurgeQueue(PurgeQueue { queue: name.to_owned() });
    let Response::PurgeQueue(p) = r.run(req, BROKER_WAIT).await? else { return Err(unexpected()) };
    Ok(ok(&json!({"purged": p.purged})))
}

/// `max` (1..=[`PEEK_MAX`]) messages from `cursor`, bodies cut to [`PREVIEW_BYTES`].
async fn peek(r: &Ctx<'_>, name: &str, p: &Params) -> Answer {
    let max = p.int("max", 1, u64::from(PEEK_MAX)).map_err(Failure::param)?.unwrap_or(u64::from(PEEK_MAX)) as u16;
    let cursor = p.int("cursor", 0, u64::MAX).map_err(Failure::param)?.unwrap_or(0);
    let req = Request::PeekMessages(PeekMessages { queue: name.to_owned(), cursor, max, include_body: true });
    let Response::PeekMessages(page) = r.run(req, BROKER_WAIT).await? else { return Err(unexpected()) };
    let messages: Vec<Value> = page
        .messages
        .iter()
        .map(|m| {
            let shown = &m.body[..m.body.len().min(PREVIEW_BYTES)];
            json!({"msgId": m.msg_id.to_string(), "state": m.state.as_str(), "enqueueTime": m.enqueue_time_ms,
                   "dequeueCount": m.dequeue_count, "nextVisibleTime": m.next_visible_time_ms,
                   "bodyLength": m.body_len, "bodyPreview": String::from_utf8_lossy(shown),
                   "truncated": (m.body_len as usize) > shown.len(),
                   "sourceQueue": m.origin.as_ref().map(|o| o.source_queue.clone())})
        })
        .collect();
    Ok(ok(&json!({"messages": messages, "nextCursor": page.next_cursor})))
}

/// Every dead-letter queue named by the first [`DLQ_SCAN_QUEUES_MAX`]
/// queues: its depth and the queues that send to it; and the redrives.
async fn dead_letters(r: &Ctx<'_>) -> Answer {
    let mut infos = Vec::new();
    let mut offset = 0;
    while offset < DLQ_SCAN_QUEUES_MAX {
        let (total, names) = queue_names(r, String::new(), offset).await?;
        infos.extend(queue_infos(r, &names).await.into_iter().flatten());
        offset += LIST_PAGE;
        if names.is_empty() || offset >= total {
            break;
        }
    }
    let field = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut dlqs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for m in &infos {
        let target = field(m, "deadLetterQueueName");
        if !target.is_empty() {
            dlqs.entry(target).or_default().push(field(m, "queueName"));
        }
    }
    let list: Vec<Value> = dlqs
        .into_iter()
        .map(|(dlq, sources)| {
            let info = infos.iter().find(|m| field(m, "queueName") == dlq);
            let count = |k: &str| info.and_then(|m| m.get(k)).and_then(Value::as_u64).unwrap_or(0);
            json!({"queueName": dlq, "exists": info.is_some(), "activeMsgNum": count("activeMsgNum"),
                   "inactiveMsgNum": count("inactiveMsgNum"), "sources": sources})
        })
        .collect();
    Ok(ok(&json!({"deadLetterQueues": list, "redrives": redrive_list(r).await?})))
}

fn redrive_json(d: &RedriveInfo) -> Value {
    json!({"id": d.id.to_string(), "deadLetterQueue": d.dead_letter_queue, "to": d.to,
           "ratePerSecond": d.rate_per_second, "state": d.state.as_str(), "moved": d.moved,
           "remaining": d.remaining, "failed": d.failed, "startedMs": d.started_ms,
           "finishedMs": d.finished_ms, "note": d.note})
}

async fn redrive_list(r: &Ctx<'_>) -> Result<Vec<Value>, Failure> {
    let req = Request::ListRedrives(ListRedrives {});
    let Response::ListRedrives(l) = r.run(req, BROKER_WAIT).await? else { return Err(unexpected()) };
    Ok(l.redrives.iter().map(redrive_json).collect())
}

async fn redrives(r: &Ctx<'_>) -> Answer {
    Ok(ok(&json!({"redrives": redrive_list(r).await?})))
}

/// `deadLetterQueue`, `to` (empty: back to each message's source), `ratePerSecond` (0: unlimited).
async fn start_redrive(r: &Ctx<'_>, p: &Params) -> Answer {
    let dead_letter_queue = p.required("deadLetterQueue").map_err(Failure::param)?.to_owned();
    let to = p.get("to").unwrap_or_default().to_owned();
    let rate_per_second = p.u32("ratePerSecond").map_err(Failure::param)?.unwrap_or(0);
    let req = Request::StartRedrive(StartRedrive { dead_letter_queue, to, rate_per_second });
    let Response::StartRedrive(d) = r.run(req, BROKER_WAIT).await? else { return Err(unexpected()) };
    Ok(ok(&redrive_json(&d)))
}

async fn cancel_redrive(r: &Ctx<'_>, id: &str) -> Answer {
    let id = id.parse().map_err(|_| Failure::bad_request(format!("redrive id {id:?} is not a number")))?;
    let Response::CancelRedrive(d) = r.run(Request::CancelRedrive(CancelRedrive { id }), BROKER_WAIT).await? else {
        return Err(unexpected());
    };
    Ok(ok(&redrive_json(&d)))
}

/// A page of topics (`search`, `offset`), each with its attributes.
async fn list_topics(r: &Ctx<'_>, p: &Params) -> Answer {
    let offset = p.int("offset", 0, u64::from(u32::MAX)).map_err(Failure::param)?.unwrap_or(0) as u32;
    let contains = p.get("search").unwrap_or_default().to_owned();
    let list = ListTopics { prefix: String::new(), contains, offset, limit: LIST_PAGE };
    let Response::ListTopics(l) = r.run(Request::ListTopics(list), BROKER_WAIT).await? else {
        return Err(unexpected());
    };
    let asks = l.topics.iter().map(|t| {
        let req = Request::GetTopicAttributes(GetTopicAttributes { topic: t.topic.clone() });
        r.run(req, BROKER_WAIT)
    });
    let mut topics = Vec::new();
    for answer in join_all(asks).await {
        match answer {
            Ok(Response::GetTopicAttributes(info)) => {
                let subs = info.subscription_count;
                let mut m = actions::answer(&Vec::new(), Response::GetTopicAttributes(info))
                    .map_err(|(e, _)| Failure::param(e))?;
                m.insert("subscriptionCount".into(), json!(subs));
                topics.push(Value::Object(m));
            }
            Ok(_) => return Err(unexpected()),
            Err(f) if f.status == StatusCode::NOT_FOUND => {}
            Err(f) => return Err(f),
        }
    }
    Ok(ok(&json!({"total": l.total, "offset": offset, "topics": topics})))
}

/// How long the subscription page waits for the shards' push failure tables.
pub const PUSH_FAILURES_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Every shard's table of last push failures (a shard that does not answer in time is left out).
async fn push_failures(r: &Ctx<'_>) -> Vec<crate::metrics::push_failures::PushFailures> {
    let answers = r.ctx.bridge.gather(None, PUSH_FAILURES_WAIT).await;
    answers.into_iter().flatten().map(|a| a.snapshot.push_failures).collect()
}

/// A topic's subscriptions, each with its attributes, delivered/dropped
/// counters and last push failure.
async fn subscriptions(r: &Ctx<'_>, topic: &str) -> Answer {
    let list = ListSubscriptions { topic: topic.to_owned(), contains: String::new(), offset: 0, limit: LIST_PAGE };
    let Response::ListSubscriptions(l) = r.run(Request::ListSubscriptions(list), BROKER_WAIT).await? else {
        return Err(unexpected());
    };
    let asks = l.subscriptions.iter().map(|s| {
        let req = Request::GetSubscriptionAttributes(GetSubscriptionAttributes {
            topic: topic.to_owned(),
            subscription: s.subscription.clone(),
        });
        r.run(req, BROKER_WAIT)
    });
    let (answers, failures) = tokio::join!(join_all(asks), push_failures(r));
    let mut subs = Vec::new();
    for (s, answer) in l.subscriptions.iter().zip(answers) {
        let Response::GetSubscriptionAttributes(info) = answer? else {
            return Err(unexpected());
        };
        let (delivered, dropped) = (info.delivered, info.dropped);
        let mut m = actions::answer(&Vec::new(), Response::GetSubscriptionAttributes(info))
            .map_err(|(e, _)| Failure::param(e))?;
        m.insert("delivered".into(), json!(delivered));
        m.insert("dropped".into(), json!(dropped));
        let failure = failures.iter().find_map(|f| f.get(topic, &s.subscription));
        let failure =
            failure.map(|f| json!({"reason": f.reason, "atMs": f.at_ms, "count": f.count, "rejected": f.rejected}));
        m.insert("lastFailure".into(), failure.unwrap_or(Value::Null));
        subs.push(Value::Object(m));
    }
    Ok(ok(&json!({"total": l.total, "subscriptions": subs})))
}
