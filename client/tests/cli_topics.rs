//! The `cmq` topic, publish and subscription commands against the real cmqd.

mod support;

use std::net::SocketAddr;

use cmq_protocol::Opcode;
use serde_json::{json as j, Value};
use support::cli::{cmq, cmq_with_stdin, json, ok, stderr, stdout};
use support::tap::Tap;
use support::{wait_until, Broker, HttpSink, EVENT_TIMEOUT};

fn broker() -> Broker {
    support::broker(2)
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}

/// Receives (and deletes) from `queue` until `n` lines arrived (topic
/// deliveries reach queues in the background); then checks nothing more waits.
fn receive_n(addr: SocketAddr, queue: &str, n: usize) -> String {
    let mut text = String::new();
    wait_until(&format!("{n} messages in {queue}"), || {
        text.push_str(&ok(cmq(addr, &["receive", queue, "--max", "16", "--wait", "1", "--delete"])));
        text.lines().count() >= n
    });
    assert_eq!(stderr(&cmq(addr, &["receive", queue])).trim(), "no message", "more than {n} in {queue}: {text}");
    text
}

/// Stderr of a command the broker refused (exit 1).
fn refusal(o: std::process::Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(&o));
    stderr(&o)
}

#[test]
fn topic_info_uses_cmq_names_and_numbers() {
    let broker = broker();
    let addr = broker.addr;
    let id = ok(cmq(addr, &["create-topic", "events", "--filter-type", "routing-key", "--max-msg-size", "2048"]));
    let id = id.trim();
    assert!(id.parse::<u64>().is_ok(), "{id:?}");
    let created = json(cmq(addr, &["--json", "create-topic", "plain", "--msg-retention-seconds", "600"]));
    assert!(created["topicId"].as_str().is_some_and(|s| s.parse::<u64>().is_ok()), "{created}");

    let info = json(cmq(addr, &["--json", "topic-info", "events"]));
    let want = [
        "topicName",
        "topicId",
        "maxMsgSize",
        "msgRetentionSeconds",
        "filterType",
        "filterTypeName",
        "createTime",
        "lastModifyTime",
        "msgCount",
        "subscriptionCount",
        "shard",
    ];
    assert_eq!(keys(&info), sorted(want.to_vec()));
    assert_eq!((info["topicName"].as_str(), info["topicId"].as_str()), (Some("events"), Some(id)));
    assert_eq!((info["filterType"].as_u64(), info["filterTypeName"].as_str()), (Some(2), Some("routing-key")));
    assert_eq!((info["maxMsgSize"].as_u64(), info["msgRetentionSeconds"].as_u64()), (Some(2048), Some(86_400)));
    assert!(info["createTime"].as_u64().is_some_and(|t| (1_600_000_000..4_000_000_000).contains(&t)), "seconds");
    let plain = json(cmq(addr, &["--json", "topic-info", "plain"]));
    assert_eq!((plain["filterType"].as_u64(), plain["filterTypeName"].as_str()), (Some(1), Some("tag")));
    assert_eq!((plain["maxMsgSize"].as_u64(), plain["msgRetentionSeconds"].as_u64()), (Some(65_536), Some(600)));

    let table = ok(cmq(addr, &["topic-info", "events"]));
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), want, "the JSON's names, in its order");
    assert!(rows.contains(&vec!["filterType", "2"]) && rows.contains(&vec!["filterTypeName", "routing-key"]));
    assert!(table.contains("UTC"), "{table}");

    let set = json(cmq(addr, &["--json", "set-topic", "events", "--max-msg-size", "4096"]));
    assert_eq!((set["maxMsgSize"].as_u64(), set["filterType"].as_u64()), (Some(4096), Some(2)));
    let err = refusal(cmq(addr, &["set-topic", "events", "--max-msg-size", "5"]));
    assert!(err.starts_with("error: 4000 INVALID_PARAMETER: maxMsgSize"), "{err}");
    let err = refusal(cmq(addr, &["create-topic", "events"]));
    assert!(err.starts_with("error: 4510 TOPIC_ALREADY_EXISTS"), "{err}");
    let out = cmq(addr, &["create-topic", "x", "--filter-type", "both"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[test]
fn list_topics_filters_and_pages_and_delete_topic_removes_one() {
    let broker = broker();
    let addr = broker.addr;
    for name in ["alpha", "alpine", "beta"] {
        ok(cmq(addr, &["create-topic", name]));
    }
    assert_eq!(ok(cmq(addr, &["list-topics"])), "alpha\nalpine\nbeta\n");
    assert_eq!(ok(cmq(addr, &["list-topics", "--prefix", "al"])), "alpha\nalpine\n");
    assert_eq!(ok(cmq(addr, &["list-topics", "--contains", "ta"])), "beta\n");
    let page = json(cmq(addr, &["--json", "list-topics", "--offset", "1", "--limit", "1"]));
    assert_eq!(page["totalCount"], 3);
    assert_eq!(page["topicList"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["topicList"][0]["topicName"], "alpine");
    assert!(page["topicList"][0]["topicId"].is_string());
    let out = cmq(addr, &["list-topics", "--limit", "2"]);
    assert_eq!(stdout(&out), "alpha\nalpine\n");
    assert!(stderr(&out).contains("2 of 3 matching topics shown; --offset 2"), "{}", stderr(&out));

    assert_eq!(json(cmq(addr, &["--json", "delete-topic", "alpine"])), j!({}));
    assert_eq!(ok(cmq(addr, &["delete-topic", "beta"])), "");
    assert_eq!(ok(cmq(addr, &["list-topics"])), "alpha\n");
    let err = refusal(cmq(addr, &["topic-info", "beta"]));
    assert_eq!(err, "error: 4500 TOPIC_NOT_FOUND: topic \"beta\" does not exist\n");
    let out = cmq(addr, &["--json", "delete-topic", "beta"]);
    let body: Value = serde_json::from_str(&stdout(&out)).expect("error JSON on stdout");
    assert_eq!((body["code"].as_u64(), body["name"].as_str()), (Some(4500), Some("TOPIC_NOT_FOUND")));
}

#[test]
fn publish_reaches_the_queues_whose_tags_match() {
    let broker = broker();
    let addr = broker.addr;
    ok(cmq(addr, &["create-topic", "news"]));
    for q in ["qa", "qb", "qall"] {
        ok(cmq(addr, &["create-queue", q]));
    }
    ok(cmq(addr, &["subscribe", "news", "on-a", "--queue", "qa", "--tag", "a"]));
    ok(cmq(addr, &["subscribe", "news", "on-b", "--queue", "qb", "--tag", "b", "--tag", "c"]));
    ok(cmq(addr, &["subscribe", "news", "all", "--queue", "qall"]));

    let id = ok(cmq(addr, &["publish", "news", "just a", "--tag", "a"]));
    assert!(id.trim().parse::<u64>().is_ok(), "{id:?}");
    let sent = json(cmq(addr, &["--json", "publish", "news", "a and c", "--tag", "a", "--tag", "c"]));
    assert!(sent["msgId"].as_str().is_some_and(|s| s.parse::<u64>().is_ok()), "{sent}");
    ok(cmq(addr, &["publish", "news", "untagged"]));

    assert_eq!(receive_n(addr, "qa", 2), "just a\na and c\n");
    assert_eq!(receive_n(addr, "qb", 1), "a and c\n");
    assert_eq!(receive_n(addr, "qall", 3), "just a\na and c\nuntagged\n");

    let err = refusal(cmq(addr, &["publish", "news", "x", "--tag", "seventeen-chars-x"]));
    assert!(err.starts_with("error: 4000 INVALID_PARAMETER: msgTag"), "the broker judges: {err}");
    let six: Vec<&str> = ["a", "b", "c", "d", "e", "f"].iter().flat_map(|t| ["--tag", *t]).collect();
    let err = refusal(cmq(addr, &[&["publish", "news", "x"][..], &six].concat()));
    assert!(err.starts_with("error: 4000 INVALID_PARAMETER: tags: 6 items, at most 5"), "{err}");
    let err = refusal(cmq(addr, &["publish", "nope", "x"]));
    assert!(err.starts_with("error: 4500 TOPIC_NOT_FOUND"), "{err}");
}

#[test]
fn publish_batch_sends_sixteen_per_request_with_one_routing_key() {
    let broker = broker();
    let addr = broker.addr;
    ok(cmq(addr, &["create-topic", "events", "--filter-type", "routing-key"]));
    ok(cmq(addr, &["create-queue", "orders"]));
    ok(cmq(addr, &["create-queue", "audit"]));
    ok(cmq(addr, &["subscribe", "events", "orders", "--queue", "orders", "--binding-key", "order.*"]));
    ok(cmq(addr, &["subscribe", "events", "audit", "--queue", "audit", "--binding-key", "audit.#"]));

    let lines: Vec<String> = (0..40).map(|i| format!("paid {i}")).collect();
    let input = format!("{}\n\r\n\n", lines.join("\r\n"));
    let tap = Tap::start(addr);
    let ids = ok(cmq_with_stdin(tap.addr, &["publish-batch", "events", "--routing-key", "order.paid"], &input));
    let ids: Vec<u64> = ids.lines().map(|l| l.parse().expect("msgId")).collect();
    assert_eq!(ids.len(), 40);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in line order");
    assert_eq!(tap.count(Opcode::BatchPublishMessage), 3, "16 + 16 + 8");

    let want = format!("{}\n", lines.join("\n"));
    assert_eq!(receive_n(addr, "orders", 40), want, "in publish order");

    let ids =
        json(cmq_with_stdin(addr, &["--json", "publish-batch", "events", "--routing-key", "audit.a.b"], "x\ny\n"));
    assert_eq!(ids.as_array().map(Vec::len), Some(2));
    assert!(ids[0].is_string());
    assert_eq!(receive_n(addr, "audit", 2), "x\ny\n", "only the audit.# ones");
}

#[test]
fn subscribing_an_http_endpoint_prints_the_push_secret_and_how_pushes_are_signed() {
    let broker = broker();
    let addr = broker.addr;
    ok(cmq(addr, &["create-topic", "t"]));
    ok(cmq(addr, &["create-queue", "dead"]));
    let out = cmq(addr, &["subscribe", "t", "hook", "--http", "https://example.com/in", "--dead-letter-queue", "dead"]);
    let text = ok(out.clone());
    let [id, secret] = text.lines().collect::<Vec<_>>()[..] else { panic!("id and secret: {text:?}") };
    assert!(id.parse::<u64>().is_ok(), "{id}");
    assert!(!secret.is_empty() && secret.chars().all(|c| c.is_ascii_hexdigit()), "{secret}");
    let note = stderr(&out);
    assert!(note.contains("X-CMQ-Signature") && note.contains("HMAC-SHA256"), "{note}");
    assert!(note.contains("https://example.com/in"), "{note}");

    let info = json(cmq(addr, &["--json", "subscription-info", "t", "hook"]));
    assert_eq!((info["pushSecret"].as_str(), info["subscriptionId"].as_str()), (Some(secret), Some(id)));
    assert_eq!((info["protocol"].as_str(), info["notifyContentFormat"].as_str()), (Some("https"), Some("JSON")));
    assert_eq!(info["deadLetterQueueName"], "dead");

    let sub = json(cmq(
        addr,
        &["--json", "subscribe", "t", "plain", "--http", "http://127.0.0.1:9/", "--format", "simplified"],
    ));
    assert_eq!(keys(&sub), ["pushSecret", "subscriptionId"]);
    let info = json(cmq(addr, &["--json", "subscription-info", "t", "plain"]));
    assert_eq!((info["protocol"].as_str(), info["notifyContentFormat"].as_str()), (Some("http"), Some("SIMPLIFIED")));

    ok(cmq(addr, &["create-queue", "q"]));
    let out = cmq(addr, &["--json", "subscribe", "t", "into-q", "--queue", "q"]);
    assert_eq!(json(out.clone())["pushSecret"], "", "queue deliveries are not signed");
    assert!(!stderr(&out).contains("X-CMQ-Signature"));
    assert_eq!(ok(cmq(addr, &["subscribe", "t", "into-q2", "--queue", "q"])).lines().count(), 1, "just the id");

    let sink = HttpSink::always(200);
    ok(cmq(addr, &["subscribe", "t", "local", "--http", &sink.url("/in"), "--format", "simplified"]));
    ok(cmq(addr, &["publish", "t", "ping"]));
    let push = sink.next(EVENT_TIMEOUT, "the push");
    assert_eq!((push.method.as_str(), push.target.as_str(), &push.body[..]), ("POST", "/in", &b"ping"[..]));
    assert!(push.header("X-CMQ-Signature").is_some_and(|s| s.starts_with("sha256=")), "{push:?}");

    let err = refusal(cmq(addr, &["subscribe", "t", "hook", "--queue", "q"]));
    assert!(err.starts_with("error: 4530 SUBSCRIPTION_ALREADY_EXISTS"), "{err}");
    let err = refusal(cmq(addr, &["subscribe", "t", "s", "--queue", "missing"]));
    assert!(err.starts_with("error: 4440 QUEUE_NOT_FOUND"), "{err}");
    let err = refusal(cmq(addr, &["subscribe", "t", "s", "--http", "ftp://x"]));
    assert!(err.starts_with("error: 4000 INVALID_PARAMETER: endpoint"), "the broker judges URLs: {err}");
    assert_eq!(cmq(addr, &["subscribe", "t", "s"]).status.code(), Some(2), "an endpoint is required");
}

#[test]
fn subscriptions_are_listed_shown_changed_and_removed() {
    let broker = broker();
    let addr = broker.addr;
    ok(cmq(addr, &["create-topic", "t"]));
    ok(cmq(addr, &["create-queue", "inbox"]));
    ok(cmq(addr, &["subscribe", "t", "to-inbox", "--queue", "inbox", "--tag", "x", "--tag", "y"]));
    ok(cmq(addr, &["subscribe", "t", "to-hook", "--http", "http://h/", "--notify-strategy", "backoff"]));

    let info = json(cmq(addr, &["--json", "subscription-info", "t", "to-inbox"]));
    let want = [
        "subscriptionName",
        "subscriptionId",
        "topicName",
        "protocol",
        "endpoint",
        "notifyStrategy",
        "notifyContentFormat",
        "filterTag",
        "bindingKey",
        "deadLetterQueueName",
        "pushSecret",
        "createTime",
        "lastModifyTime",
        "msgCount",
        "delivered",
        "dropped",
    ];
    assert_eq!(keys(&info), sorted(want.to_vec()));
    assert_eq!((info["subscriptionName"].as_str(), info["topicName"].as_str()), (Some("to-inbox"), Some("t")));
    assert_eq!((info["protocol"].as_str(), info["endpoint"].as_str()), (Some("queue"), Some("inbox")));
    assert_eq!(info["filterTag"], j!(["x", "y"]));
    assert_eq!(info["bindingKey"], j!([]));
    assert_eq!(info["notifyStrategy"], "EXPONENTIAL_DECAY_RETRY");
    assert_eq!(info["notifyContentFormat"], "SIMPLIFIED");
    assert_eq!((info["pushSecret"].as_str(), info["delivered"].as_u64()), (Some(""), Some(0)));
    let hook = json(cmq(addr, &["--json", "subscription-info", "t", "to-hook"]));
    assert_eq!(hook["notifyStrategy"], "BACKOFF_RETRY");

    let table = ok(cmq(addr, &["subscription-info", "t", "to-inbox"]));
    let names: Vec<&str> = table.lines().map(|l| l.split_whitespace().next().expect("name")).collect();
    assert_eq!(names, want, "the JSON's names, in its order");
    assert!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["filterTag", "x,", "y"]), "{table}");

    let list = ok(cmq(addr, &["list-subscriptions", "t"]));
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "PROTOCOL", "ENDPOINT"],
            vec!["to-inbox", "queue", "inbox"],
            vec!["to-hook", "http", "http://h/"]
        ]
    );
    let page = json(cmq(addr, &["--json", "list-subscriptions", "t", "--contains", "hook"]));
    assert_eq!(page["totalCount"], 1);
    let first = &page["subscriptionList"][0];
    assert_eq!(keys(first), ["endpoint", "protocol", "subscriptionId", "subscriptionName"]);
    assert_eq!(first["subscriptionId"], hook["subscriptionId"]);
    let out = cmq(addr, &["list-subscriptions", "t", "--offset", "1", "--limit", "0"]);
    assert_eq!(stdout(&out).lines().count(), 2, "header and one row");
    let out = cmq(addr, &["list-subscriptions", "t", "--limit", "1"]);
    assert!(stderr(&out).contains("1 of 2 matching subscriptions shown; --offset 1"), "{}", stderr(&out));

    // A list given replaces the stored one; what is not given stays.
    let set = json(cmq(addr, &["--json", "set-subscription", "t", "to-inbox", "--tag", "z"]));
    assert_eq!(
        (set["filterTag"].clone(), set["notifyStrategy"].as_str()),
        (j!(["z"]), Some("EXPONENTIAL_DECAY_RETRY"))
    );
    let set = json(cmq(addr, &["--json", "set-subscription", "t", "to-inbox", "--notify-strategy", "backoff"]));
    assert_eq!((set["filterTag"].clone(), set["notifyStrategy"].as_str()), (j!(["z"]), Some("BACKOFF_RETRY")));
    let set =
        json(cmq(addr, &["--json", "set-subscription", "t", "to-inbox", "--binding-key", "a.*", "--format", "json"]));
    assert_eq!((set["bindingKey"].clone(), set["notifyContentFormat"].as_str()), (j!(["a.*"]), Some("JSON")));
    let set = json(cmq(addr, &["--json", "set-subscription", "t", "to-inbox", "--clear-tags", "--clear-binding-keys"]));
    assert_eq!((set["filterTag"].clone(), set["bindingKey"].clone()), (j!([]), j!([])));
    assert!(ok(cmq(addr, &["set-subscription", "t", "to-inbox", "--tag", "q"])).contains("filterTag"), "a table");
    assert_eq!(cmq(addr, &["set-subscription", "t", "to-inbox"]).status.code(), Some(2), "nothing to change");

    ok(cmq(addr, &["publish", "t", "not for q", "--tag", "x"]));
    assert_eq!(json(cmq(addr, &["--json", "clear-filter-tags", "t", "to-inbox"])), j!({}));
    assert_eq!(json(cmq(addr, &["--json", "subscription-info", "t", "to-inbox"]))["filterTag"], j!([]));
    ok(cmq(addr, &["publish", "t", "for everyone", "--tag", "x"]));
    assert_eq!(receive_n(addr, "inbox", 1), "for everyone\n", "the first publish matched nothing in inbox");

    assert_eq!(ok(cmq(addr, &["unsubscribe", "t", "to-hook"])), "");
    let err = refusal(cmq(addr, &["subscription-info", "t", "to-hook"]));
    assert_eq!(err, "error: 4520 SUBSCRIPTION_NOT_FOUND: topic \"t\" has no subscription \"to-hook\"\n");
    for args in [&["unsubscribe", "t", "to-hook"][..], &["clear-filter-tags", "t", "to-hook"]] {
        assert!(refusal(cmq(addr, args)).starts_with("error: 4520 SUBSCRIPTION_NOT_FOUND"), "{args:?}");
    }
    let out = cmq(addr, &["--json", "set-subscription", "t", "to-hook", "--tag", "a"]);
    let body: Value = serde_json::from_str(&stdout(&out)).expect("error JSON");
    assert_eq!(body["name"], "SUBSCRIPTION_NOT_FOUND");
    assert_eq!(json(cmq(addr, &["--json", "list-subscriptions", "t"]))["totalCount"], 1);
    assert_eq!(json(cmq(addr, &["--json", "topic-info", "t"]))["subscriptionCount"], 1);
}

/// A push given up on and moved to the subscription's dead-letter queue was
/// not delivered: subscription-info counts it in neither delivered nor dropped.
#[test]
fn a_dead_lettered_push_is_not_counted_as_delivered() {
    // Retries 1000x faster than real: BACKOFF_RETRY's 3 retries take tens of ms.
    let broker = Broker::start(&["--shards", "2", "--push-retry-scale", "0.001"]);
    let addr = broker.addr;
    let sink = HttpSink::always(500);
    ok(cmq(addr, &["create-topic", "t"]));
    ok(cmq(addr, &["create-queue", "dead"]));
    let url = sink.url("/failing");
    let hook =
        ["subscribe", "t", "hook", "--http", &url, "--notify-strategy", "backoff", "--dead-letter-queue", "dead"];
    ok(cmq(addr, &hook));
    ok(cmq(addr, &["publish", "t", "doomed"]));
    assert_eq!(receive_n(addr, "dead", 1), "doomed\n", "moved to the dead-letter queue after its retries");
    let mut info = Value::Null;
    wait_until("the move to be confirmed", || {
        info = json(cmq(addr, &["--json", "subscription-info", "t", "hook"]));
        info["msgCount"] == 0
    });
    assert_eq!((info["delivered"].as_u64(), info["dropped"].as_u64()), (Some(0), Some(0)), "{info}");
    assert_eq!(sink.drain().len(), 4, "1 attempt + 3 retries, all answered 500");
}
