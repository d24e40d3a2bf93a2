//! The web console's JSON API (`/api/v1/`, docs/HTTP_API.md) against a real
//! cmqd: sign-in sessions (cookie, CSRF token, expiry, sign-out), anonymous
//! access, permissions checked like the binary protocol's, and the queue,
//! message, dead-letter, topic, overview and cluster endpoints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cmq_integration_tests::console::Console;
use cmq_integration_tests::http::send;
use cmq_integration_tests::{dead_letter_after, poll_until, AdminBroker, Broker, RawConn};
use cmq_protocol::*;
use serde_json::Value;

fn http_of(b: &Broker) -> SocketAddr {
    b.http_addr.expect("HTTP port")
}

#[test]
fn anonymous_console_manages_queues_and_messages_with_csrf() {
    let b = Broker::start(&[]);
    let mut c = Console::new(http_of(&b));
    c.refused("GET", "/api/v1/queues", &[], 401, "SIGN_IN_REQUIRED");
    c.anonymous();
    let cookie = c.cookie.clone().expect("a session cookie");
    assert!(cookie.starts_with("cmq_session="), "{cookie}");

    // State-changing requests need the session's CSRF token.
    let token = c.csrf.take();
    c.refused("POST", "/api/v1/queues", &[("queueName", "orders")], 403, "CSRF_TOKEN_INVALID");
    c.csrf = Some("wrong".into());
    c.refused("POST", "/api/v1/queues", &[("queueName", "orders")], 403, "CSRF_TOKEN_INVALID");
    c.csrf = token;
    c.ok("POST", "/api/v1/queues", &[("queueName", "orders"), ("visibilityTimeout", "40")]);
    c.refused("POST", "/api/v1/queues", &[("queueName", "orders")], 409, "QUEUE_ALREADY_EXISTS");
    c.refused("POST", "/api/v1/queues", &[("queueName", "bad name!")], 400, "INVALID_PARAMETER");

    let sent = c.ok("POST", "/api/v1/queues/orders/messages", &[("msgBody", "hello console")]);
    assert!(sent["msgId"].as_str().is_some(), "{sent}");
    let q = c.ok("GET", "/api/v1/queues/orders", &[]);
    assert_eq!((q["activeMsgNum"].as_u64(), q["visibilityTimeout"].as_u64()), (Some(1), Some(40)), "{q}");
    let list = c.ok("GET", "/api/v1/queues?search=ord", &[]);
    assert_eq!(list["queues"][0]["queueName"], "orders", "{list}");

    let peeked = c.ok("GET", "/api/v1/queues/orders/messages?max=5", &[]);
    let m = &peeked["messages"][0];
    assert_eq!((m["bodyPreview"].as_str(), m["state"].as_str()), (Some("hello console"), Some("ready")), "{peeked}");
    // PEEK_MAX (20) is the largest page.
    assert_eq!(c.ok("GET", "/api/v1/queues/orders/messages?max=20", &[])["messages"].as_array().map(Vec::len), Some(1));
    c.refused("GET", "/api/v1/queues/orders/messages?max=21", &[], 400, "INVALID_PARAMETER");

    c.ok("PUT", "/api/v1/queues/orders", &[("visibilityTimeout", "60")]);
    assert_eq!(c.ok("GET", "/api/v1/queues/orders", &[])["visibilityTimeout"], 60);
    assert_eq!(c.ok("POST", "/api/v1/queues/orders/purge", &[])["purged"], 1);
    assert_eq!(c.ok("GET", "/api/v1/queues/orders", &[])["activeMsgNum"], 0);
    c.ok("DELETE", "/api/v1/queues/orders", &[]);
    c.refused("GET", "/api/v1/queues/orders", &[], 404, "QUEUE_NOT_FOUND");
    c.refused("GET", "/api/v1/nothing", &[], 404, "NOT_FOUND");

    // Signing out ends the session.
    c.ok("DELETE", "/api/v1/session", &[]);
    c.refused("GET", "/api/v1/queues", &[], 401, "SIGN_IN_REQUIRED");
}

/// A key allowed everything but purging and deleting queues.
const NO_PURGE_POLICY: &str = r#"{"version":"2.0","statement":[
    {"effect":"allow","action":["cmq:*"],"resource":["*"]},
    {"effect":"deny","action":["cmq:PurgeQueue","cmq:DeleteQueue"],"resource":["*"]}]}"#;

#[test]
fn keys_sign_in_and_are_held_to_their_policy() {
    let b = AdminBroker::start(&[]);
    let mut admin = RawConn::open_as(b.addr(), &b.secret_id, &b.secret_key);
    let key = CreateKey { name: "nopurge".into(), policy: NO_PURGE_POLICY.into() };
    let Response::CreateKey(limited) = admin.call(Request::CreateKey(key)).ok() else { panic!("CreateKey") };

    let mut c = Console::new(http_of(&b.broker));
    let s = c.ok("GET", "/api/v1/session", &[]);
    assert_eq!(s["signedIn"], false, "keys exist: no anonymous session: {s}");
    assert!(c.cookie.is_none());
    c.refused("GET", "/api/v1/overview", &[], 401, "SIGN_IN_REQUIRED");
    c.refused("POST", "/api/v1/session", &[("secretId", &b.secret_id), ("secretKey", "wrong")], 401, "AUTH_FAILED");
    // The failure slows this address down (docs/SECURITY.md): the next
    // attempt, even with the right key, is refused unchecked until the wait ends.
    let good = [("secretId", b.secret_id.as_str()), ("secretKey", b.secret_key.as_str())];
    let r = c.call("POST", "/api/v1/session", &good);
    assert_eq!((r.status, r.header("set-cookie").is_none()), (429, true), "{}", r.body);
    let e = r.json();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["number"].as_u64()),
        (Some("TOO_MANY_FAILED_ATTEMPTS"), Some(4100))
    );
    assert_eq!(r.header("retry-after"), Some("1"), "the first wait is 200 ms, rounded up");
    poll_until(Duration::from_secs(12), "the unknown SecretId checked after the wait", || {
        let r = c.call("POST", "/api/v1/session", &[("secretId", "AKIDnobody"), ("secretKey", "x")]);
        (r.status == 401 && r.json()["error"]["code"] == "AUTH_FAILED").then_some(()).ok_or(r.body)
    });

    // Without X-Requested-With (what a cross-site form sends) a sign-in is refused.
    let form = format!("secretId={}&secretKey={}", b.secret_id, b.secret_key);
    let r = send(http_of(&b.broker), "POST", "/api/v1/session", &[], form.as_bytes());
    assert_eq!((r.status, r.header("set-cookie")), (403, None), "{}", r.body);

    let s = c.sign_in(&b.secret_id, &b.secret_key);
    assert_eq!((s["anonymous"].as_bool(), s["key"]["name"].as_str()), (Some(false), Some("admin")), "{s}");
    c.ok("POST", "/api/v1/queues", &[("queueName", "jobs")]);
    c.ok("POST", "/api/v1/queues/jobs/messages", &[("msgBody", "one")]);

    let mut l = Console::new(http_of(&b.broker));
    l.sign_in(&limited.secret_id, &limited.secret_key);
    assert_eq!(l.ok("GET", "/api/v1/queues/jobs", &[])["activeMsgNum"], 1);
    let e = l.refused("POST", "/api/v1/queues/jobs/purge", &[], 403, "ACCESS_DENIED");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("cmq:PurgeQueue")), "{e}");
    l.refused("DELETE", "/api/v1/queues/jobs", &[], 403, "ACCESS_DENIED");
    assert_eq!(l.ok("GET", "/api/v1/queues/jobs", &[])["activeMsgNum"], 1, "nothing was purged");

    // A deleted key's sessions end with it.
    admin.call(Request::DeleteKey(DeleteKey { name: "nopurge".into(), old_secret_only: false })).ok();
    l.refused("GET", "/api/v1/queues", &[], 401, "SIGN_IN_REQUIRED");
}

#[test]
fn sessions_expire() {
    let b = AdminBroker::start(&["--console-session-secs", "1"]);
    let mut c = Console::new(http_of(&b.broker));
    let r = c.call("POST", "/api/v1/session", &[("secretId", &b.secret_id), ("secretKey", &b.secret_key)]);
    assert_eq!(r.status, 200, "{}", r.body);
    // A server-side session id in an HttpOnly, SameSite=Strict cookie that expires with the session.
    let cookie = r.header("set-cookie").unwrap_or_default();
    for part in ["cmq_session=", "HttpOnly", "SameSite=Strict", "Max-Age=1", "Path=/"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    assert!(!r.body.contains(cookie.split(';').next().unwrap_or("?")), "the session id is not in the body");
    let first = c.call("GET", "/api/v1/queues", &[]);
    assert_eq!(first.status, 200, "{}", first.body);
    poll_until(Duration::from_secs(10), "the session expires", || {
        let r = c.call("GET", "/api/v1/queues", &[]);
        if r.status == 401 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
    c.refused("POST", "/api/v1/queues", &[("queueName", "late")], 401, "SIGN_IN_REQUIRED");
}

#[test]
fn dead_letters_redrive_topics_overview_and_cluster() {
    let mut b = Broker::start(&[]);
    let mut raw = RawConn::open(b.addr);
    raw.create_queue("dlq");
    raw.create_queue_attrs("src", dead_letter_after("dlq", 1, 1));
    raw.send_and_poison("src", 5, "poison");
    poll_until(Duration::from_secs(30), "the poisoned messages reach the DLQ", || {
        let n = raw.queue_info("dlq").active_msg_num;
        if n == 5 {
            Ok(())
        } else {
            Err(format!("{n} in the DLQ"))
        }
    });

    let mut c = Console::new(http_of(&b));
    c.anonymous();
    let d = c.ok("GET", "/api/v1/deadletters", &[]);
    let dlq = &d["deadLetterQueues"][0];
    assert_eq!((dlq["queueName"].as_str(), dlq["activeMsgNum"].as_u64()), (Some("dlq"), Some(5)), "{d}");
    assert_eq!(dlq["sources"][0], "src");

    // One a second: still running when cancelled.
    let started = c.ok("POST", "/api/v1/redrives", &[("deadLetterQueue", "dlq"), ("ratePerSecond", "1")]);
    assert_eq!(started["state"], "running", "{started}");
    let id = started["id"].as_str().expect("id").to_owned();
    let listed = c.ok("GET", "/api/v1/redrives", &[]);
    assert_eq!(listed["redrives"][0]["id"].as_str(), Some(id.as_str()), "{listed}");
    let cancelled = c.ok("DELETE", &format!("/api/v1/redrives/{id}"), &[]);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    c.refused("DELETE", "/api/v1/redrives/x", &[], 400, "INVALID_PARAMETER");
    c.refused("POST", "/api/v1/redrives", &[("deadLetterQueue", "nope")], 404, "QUEUE_NOT_FOUND");

    // A topic with a queue subscribed: a published message arrives.
    c.ok("POST", "/api/v1/topics", &[("topicName", "events")]);
    c.ok("POST", "/api/v1/queues", &[("queueName", "inbox")]);
    let sub = [("subscriptionName", "toinbox"), ("protocol", "queue"), ("endpoint", "inbox")];
    c.ok("POST", "/api/v1/topics/events/subscriptions", &sub);
    c.ok("POST", "/api/v1/topics/events/messages", &[("msgBody", "published")]);
    poll_until(Duration::from_secs(10), "the published message reaches the queue", || {
        let q = c.ok("GET", "/api/v1/queues/inbox", &[]);
        if q["activeMsgNum"] == 1 {
            Ok(())
        } else {
            Err(q.to_string())
        }
    });
    let subs = c.ok("GET", "/api/v1/topics/events/subscriptions", &[]);
    let s = &subs["subscriptions"][0];
    assert_eq!((s["subscriptionName"].as_str(), s["delivered"].as_u64()), (Some("toinbox"), Some(1)), "{subs}");
    let topics = c.ok("GET", "/api/v1/topics", &[]);
    assert_eq!(
        (topics["topics"][0]["topicName"].as_str(), topics["topics"][0]["subscriptionCount"].as_u64()),
        (Some("events"), Some(1))
    );
    c.ok("DELETE", "/api/v1/topics/events/subscriptions/toinbox", &[]);
    assert_eq!(c.ok("GET", "/api/v1/topics/events/subscriptions", &[])["total"], 0);

    // Routing keys: a subscription's binding key decides what reaches its queue.
    c.ok("POST", "/api/v1/topics", &[("topicName", "routed"), ("filterType", "2")]);
    c.ok("POST", "/api/v1/queues", &[("queueName", "eu")]);
    let sub = [("subscriptionName", "toeu"), ("protocol", "queue"), ("endpoint", "eu"), ("bindingKey.1", "eu.*")];
    c.ok("POST", "/api/v1/topics/routed/subscriptions", &sub);
    let subs = c.ok("GET", "/api/v1/topics/routed/subscriptions", &[]);
    assert_eq!(subs["subscriptions"][0]["bindingKey"][0], "eu.*", "{subs}");
    c.ok("POST", "/api/v1/topics/routed/messages", &[("msgBody", "us"), ("routingKey", "us.orders")]);
    c.ok("POST", "/api/v1/topics/routed/messages", &[("msgBody", "eu"), ("routingKey", "eu.orders")]);
    let peeked = poll_until(Duration::from_secs(10), "the eu message reaches its queue", || {
        let p = c.ok("GET", "/api/v1/queues/eu/messages", &[]);
        if p["messages"].as_array().is_some_and(|m| !m.is_empty()) {
            Ok(p)
        } else {
            Err(p.to_string())
        }
    });
    let bodies: Vec<&str> =
        peeked["messages"].as_array().into_iter().flatten().filter_map(|m| m["bodyPreview"].as_str()).collect();
    assert_eq!(bodies, ["eu"], "only the matching routing key");

    // The overview's history fills in, one sample a second, and shows traffic.
    poll_until(Duration::from_secs(15), "samples showing messages in", || {
        c.ok("POST", "/api/v1/queues/inbox/messages", &[("msgBody", "tick")]);
        let o = c.ok("GET", "/api/v1/overview", &[]);
        let history = o["history"].as_array().cloned().unwrap_or_default();
        let busy = history.iter().any(|p| p["inPerSec"].as_f64().is_some_and(|r| r > 0.0));
        let shards = history.last().and_then(|p| p["shards"].as_array().map(Vec::len));
        let disk = history.last().and_then(|p| p["diskBytes"].as_u64()).unwrap_or(0);
        if busy && disk > 0 && o["health"] == "ok" && shards == o["shards"].as_u64().map(|n| n as usize) {
            Ok(())
        } else {
            Err(o.to_string())
        }
    });
    let q = c.ok("GET", "/api/v1/queues/inbox", &[]);
    assert!(q["history"].as_array().is_some_and(|h| !h.is_empty()), "the queue's own history: {q}");
    assert_eq!(c.ok("GET", "/api/v1/cluster", &[])["clustered"], false);
    // The history sampler does not hold up a graceful shutdown.
    drop(raw);
    assert!(b.terminate().success(), "{}", b.stderr());
}

/// `API_BODY_BYTES_MAX` (the gateway's 4 MiB).
const API_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

#[test]
fn pages_are_embedded_and_bodies_are_bounded() {
    let b = Broker::start(&[]);
    let http = http_of(&b);
    let moved = send(http, "GET", "/console", &[], b"");
    assert_eq!((moved.status, moved.header("location")), (301, Some("/console/")));
    let page = send(http, "GET", "/console/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{:?}", page.headers);
    assert!(page.header("content-security-policy").is_some_and(|p| p.contains("default-src 'self'")));
    assert!(page.body.contains("/console/app.js"), "the page loads its script from the broker, no CDN");
    let js = send(http, "GET", "/console/app.js", &[], b"");
    assert!(js.status == 200 && js.body.contains("X-CSRF-Token"), "{}", js.status);
    assert_eq!(send(http, "GET", "/console/style.css", &[], b"").status, 200);
    assert_eq!(send(http, "GET", "/console/nope.js", &[], b"").status, 404);
    assert_eq!(send(http, "POST", "/console/", &[], b"x").status, 405);

    let mut c = Console::new(http);
    c.anonymous();
    // A body of exactly the limit is read (and refused for its content); one byte more is not read at all.
    let mut headers =
        vec![("Cookie", c.cookie.clone().expect("cookie")), ("X-CSRF-Token", c.csrf.clone().expect("csrf"))];
    let at_limit = format!("queueName=big&msgBody={}", "x".repeat(API_BODY_BYTES_MAX - 22));
    assert_eq!(at_limit.len(), API_BODY_BYTES_MAX);
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = send(http, "POST", "/api/v1/queues/big/messages", &h, at_limit.as_bytes());
    assert_ne!(r.status, 413, "{}", r.body);
    headers.push(("Content-Length", (API_BODY_BYTES_MAX + 1).to_string()));
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = send(http, "POST", "/api/v1/queues/big/messages", &h, b"");
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "BODY_TOO_LARGE");
}

#[test]
fn subscriptions_show_why_pushes_fail() {
    let b = Broker::start(&["--push-retry-scale", "0.01"]);
    let mut c = Console::new(http_of(&b));
    c.anonymous();
    c.ok("POST", "/api/v1/topics", &[("topicName", "alerts")]);
    let url = cmq_integration_tests::refused_url("/hook");
    let sub = [("subscriptionName", "pager"), ("protocol", "http"), ("endpoint", url.as_str())];
    c.ok("POST", "/api/v1/topics/alerts/subscriptions", &sub);
    let fresh = c.ok("GET", "/api/v1/topics/alerts/subscriptions", &[]);
    assert_eq!(fresh["subscriptions"][0]["lastFailure"], Value::Null, "no push yet: {fresh}");
    c.ok("POST", "/api/v1/topics/alerts/messages", &[("msgBody", "disk full")]);
    let failure = poll_until(Duration::from_secs(15), "the failed push's reason", || {
        let subs = c.ok("GET", "/api/v1/topics/alerts/subscriptions", &[]);
        match &subs["subscriptions"][0]["lastFailure"] {
            Value::Null => Err(subs.to_string()),
            f => Ok(f.clone()),
        }
    });
    let reason = failure["reason"].as_str().unwrap_or_default().to_ascii_lowercase();
    assert!(reason.contains("refused") || reason.contains("connect"), "{failure}");
    assert!(failure["count"].as_u64().is_some_and(|n| n >= 1), "{failure}");
}

/// `GET /api/v1/session` with this Host header: whether it started an anonymous session.
fn anonymous_session_for_host(http: SocketAddr, host: &str) -> bool {
    let mut s = TcpStream::connect(http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!("GET /api/v1/session HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply.contains("\"anonymous\":true") && reply.to_ascii_lowercase().contains("set-cookie: cmq_session=")
}

#[test]
fn anonymous_sessions_only_for_loopback_host_names() {
    let b = Broker::start(&[]);
    let http = http_of(&b);
    let port = http.port();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}"), "localhost".into()]
    {
        assert!(anonymous_session_for_host(http, &host), "{host}");
    }
    // A page whose name was rebound to 127.0.0.1 sends its own name.
    for host in [format!("evil.example:{port}"), "10.0.0.1".into(), format!("127.0.0.1.evil.example:{port}")] {
        assert!(!anonymous_session_for_host(http, &host), "{host}");
    }
}

#[test]
fn flush_policy_is_set_at_create_and_edited() {
    let b = Broker::start(&[]);
    let mut raw = RawConn::open(b.addr);
    let mut c = Console::new(http_of(&b));
    c.anonymous();
    c.ok("POST", "/api/v1/queues", &[("queueName", "fast"), ("flushPolicy", "async")]);
    c.ok("POST", "/api/v1/queues", &[("queueName", "plain")]);
    assert_eq!(raw.queue_info("fast").attributes.flush_policy, FlushPolicy::Async, "the engine's queue changed");
    assert_eq!(raw.queue_info("plain").attributes.flush_policy, FlushPolicy::Sync, "the broker's default");
    let flush_of = |c: &mut Console, q: &str| {
        let list = c.ok("GET", "/api/v1/queues", &[]);
        let queues = list["queues"].as_array().cloned().unwrap_or_default();
        queues.iter().find(|x| x["queueName"] == q).map(|x| x["flushPolicy"].clone()).unwrap_or_default()
    };
    assert_eq!(flush_of(&mut c, "fast"), "async");

    c.ok("PUT", "/api/v1/queues/fast", &[("flushPolicy", "sync"), ("visibilityTimeout", "50")]);
    assert_eq!(raw.queue_info("fast").attributes.flush_policy, FlushPolicy::Sync);
    assert_eq!(flush_of(&mut c, "fast"), "sync");
    // An edit that does not name it leaves it as it is.
    c.ok("PUT", "/api/v1/queues/plain", &[("flushPolicy", "async")]);
    c.ok("PUT", "/api/v1/queues/plain", &[("visibilityTimeout", "20")]);
    assert_eq!(c.ok("GET", "/api/v1/queues/plain", &[])["flushPolicy"], "async");

    let e = c.refused("PUT", "/api/v1/queues/fast", &[("flushPolicy", "later")], 400, "INVALID_PARAMETER");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("sync or async")), "{e}");
    c.refused("POST", "/api/v1/queues", &[("queueName", "x"), ("flushPolicy", "")], 400, "INVALID_PARAMETER");
    c.refused("GET", "/api/v1/queues/x", &[], 404, "QUEUE_NOT_FOUND");
    assert_eq!(raw.queue_info("fast").attributes.flush_policy, FlushPolicy::Sync, "a refused edit changes nothing");
}

/// Queues the paging test creates: more than one page, on every shard.
const MANY_QUEUES: usize = 60;

#[test]
fn a_list_page_has_every_queue_of_the_page_with_its_attributes_in_order() {
    let b = Broker::start(&["--shards", "4"]);
    let mut raw = RawConn::open(b.addr);
    let names: Vec<String> = (0..MANY_QUEUES).map(|k| format!("page{k:03}")).collect();
    for (k, q) in names.iter().enumerate() {
        raw.create_queue_attrs(
            q,
            QueueAttributesUpdate { visibility_timeout: Some(k as u32 + 1), ..Default::default() },
        );
    }
    let mut c = Console::new(http_of(&b));
    c.anonymous();
    let first = c.ok("GET", "/api/v1/queues", &[]);
    let second = c.ok("GET", "/api/v1/queues?offset=50", &[]);
    assert_eq!((first["total"].as_u64(), second["offset"].as_u64()), (Some(MANY_QUEUES as u64), Some(50)));
    let page: Vec<Value> =
        [first, second].iter().flat_map(|p| p["queues"].as_array().cloned().unwrap_or_default()).collect();
    let listed: Vec<&str> = page.iter().filter_map(|q| q["queueName"].as_str()).collect();
    assert_eq!(listed, names.iter().map(String::as_str).collect::<Vec<_>>(), "the broker's listing order, all of it");
    let mut shards = std::collections::BTreeSet::new();
    for q in &page {
        let name = q["queueName"].as_str().unwrap_or_default();
        let info = raw.queue_info(name);
        assert_eq!(q["visibilityTimeout"].as_u64(), Some(u64::from(info.attributes.visibility_timeout)), "{q}");
        assert_eq!(q["shard"].as_u64(), Some(u64::from(info.shard)), "{q}");
        shards.insert(info.shard);
    }
    assert_eq!(shards.len(), 4, "the page's queues came from every shard");
    let found = c.ok("GET", "/api/v1/queues?search=page05", &[]);
    let found: Vec<&str> =
        found["queues"].as_array().into_iter().flatten().filter_map(|q| q["queueName"].as_str()).collect();
    assert_eq!(
        found,
        (50..60).map(|k| format!("page{k:03}")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>()
    );
}
