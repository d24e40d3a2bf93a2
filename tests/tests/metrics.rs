//! cmqd's HTTP port against the real binary: /metrics parsed with a real
//! Prometheus text parser moves by exactly what was done, per-queue series
//! stay at their cap, /healthz and /readyz answer as probes expect.

use std::time::Duration;

use bytes::Bytes;
use cmq_integration_tests::http::{self, Metrics};
use cmq_integration_tests::{poll_until, Broker, RawConn};
use cmq_protocol::*;

fn create(c: &mut RawConn, queue: &str) {
    c.call(Request::CreateQueue(CreateQueue { queue: queue.into(), attributes: Default::default() })).ok();
}

fn send(c: &mut RawConn, queue: &str, body: &str) {
    c.call(Request::SendMessage(SendMessage {
        queue: queue.into(),
        delay_seconds: 0,
        body: Bytes::from(body.to_owned()),
        ..Default::default()
    }))
    .ok();
}

fn info(c: &mut RawConn, queue: &str) -> QueueInfo {
    match c.call(Request::GetQueueAttributes(GetQueueAttributes { queue: queue.into() })).ok() {
        Response::GetQueueAttributes(i) => i,
        other => panic!("{other:?}"),
    }
}

fn http_addr(b: &Broker) -> std::net::SocketAddr {
    b.http_addr.expect("cmqd printed its HTTP port")
}

#[test]
fn counters_and_gauges_move_by_exactly_what_was_done() {
    let broker = Broker::start(&["--shards", "2"]);
    let web = http_addr(&broker);
    let mut c = RawConn::open(broker.addr);
    create(&mut c, "orders");
    create(&mut c, "idle");
    let before = Metrics::scrape(web);
    let q = [("queue", "orders")];

    for i in 0..5 {
        send(&mut c, "orders", &format!("m{i}"));
    }
    let bodies = vec![Bytes::from("b1"), Bytes::from("b2")];
    c.call(Request::BatchSendMessage(BatchSendMessage {
        queue: "orders".into(),
        delay_seconds: 0,
        bodies,
        ..Default::default()
    }))
    .ok();
    c.call(Request::SendMessage(SendMessage {
        queue: "orders".into(),
        delay_seconds: 60,
        body: Bytes::from("later"),
        ..Default::default()
    }))
    .ok();
    let got = match c.call(Request::BatchReceiveMessage(BatchReceiveMessage {
        queue: "orders".into(),
        max_messages: 3,
        polling_wait_seconds: Some(0),
    })) {
        cmq_integration_tests::Reply::Ok(_, Response::BatchReceiveMessage(r)) => r.messages,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 3);
    for m in &got[..2] {
        let del = DeleteMessage { queue: "orders".into(), receipt_handle: m.receipt_handle };
        c.call(Request::DeleteMessage(del)).ok();
    }
    let missing = c.call(Request::SendMessage(SendMessage {
        queue: "nope".into(),
        delay_seconds: 0,
        body: "x".into(),
        ..Default::default()
    }));
    assert_eq!(missing.code(), ErrorCode::QUEUE_NOT_FOUND);

    let after = Metrics::scrape(web);
    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value_or_zero(name, labels);
    assert_eq!(delta("cmq_messages_sent_total", &q), 8.0, "5 single sends, a batch of 2, one delayed");
    assert_eq!(delta("cmq_messages_received_total", &q), 3.0);
    assert_eq!(delta("cmq_messages_deleted_total", &q), 2.0);
    assert_eq!(delta("cmq_messages_dead_lettered_total", &q), 0.0);
    let ok = |op: &str| delta("cmq_requests_total", &[("op", op), ("code", "OK")]);
    assert_eq!(
        (ok("SendMessage"), ok("BatchSendMessage"), ok("BatchReceiveMessage"), ok("DeleteMessage")),
        (6.0, 1.0, 1.0, 2.0)
    );
    assert_eq!(delta("cmq_requests_total", &[("op", "SendMessage"), ("code", "QUEUE_NOT_FOUND")]), 1.0);

    // The depth gauges are what queue-info says.
    let i = info(&mut c, "orders");
    let state = |s: &str| after.value("cmq_queue_messages", &[("queue", "orders"), ("state", s)]) as u64;
    assert_eq!(
        (state("active"), state("inactive"), state("delayed")),
        (i.active_msg_num, i.inactive_msg_num, i.delay_msg_num)
    );
    assert_eq!((i.active_msg_num, i.inactive_msg_num, i.delay_msg_num), (4, 1, 1));
    assert_eq!(after.value("cmq_queue_messages", &[("queue", "idle"), ("state", "active")]), 0.0);
    assert_eq!(after.value("cmq_queues", &[]), 2.0);

    // Latency, the log and the loop moved; the connection is counted.
    let sends: f64 = after.values("cmq_request_latency_seconds", &[("kind", "send")]).iter().sum();
    let sends_before: f64 = before.values("cmq_request_latency_seconds", &[("kind", "send")]).iter().sum();
    assert_eq!(sends - sends_before, 8.0, "every send and batch send answer timed (6 + 1 + the failed one)");
    let fsyncs: f64 = after.values("cmq_wal_fsyncs_total", &[]).iter().sum();
    assert!(fsyncs >= 1.0, "sync queues fdatasync before acknowledging");
    let bytes: f64 = after.values("cmq_wal_appended_bytes_total", &[]).iter().sum();
    let bytes_before: f64 = before.values("cmq_wal_appended_bytes_total", &[]).iter().sum();
    assert!(bytes - bytes_before > 8.0 * 13.0, "8 records at least");
    assert!(after.values("cmq_connections", &[]).iter().sum::<f64>() >= 1.0);
    assert_eq!(after.values("cmq_shard_up", &[]), vec![1.0, 1.0]);
    assert_eq!(after.value("cmq_shard_leader", &[("shard", "0")]), 1.0, "alone, this node leads");
    assert!(after.value("cmq_process_resident_memory_bytes", &[]) > 0.0);
    assert!(after.value("cmq_disk_free_bytes", &[]) > 0.0);
    let version = after.label_values("cmq_build_info", "version");
    assert_eq!(version, vec![env!("CARGO_PKG_VERSION").to_owned()]);
    // Every family has help text.
    for name in ["cmq_messages_sent_total", "cmq_requests_total", "cmq_wal_fsync_seconds", "cmq_connections"] {
        assert!(after.scrape.docs.get(name).is_some_and(|h| !h.is_empty()), "{name} has no HELP");
    }
}

#[test]
fn openmetrics_is_served_when_asked_for_and_bad_requests_get_http_errors() {
    let broker = Broker::start(&["--shards", "1"]);
    let web = http_addr(&broker);
    let plain = http::get(web, "/metrics");
    assert!(plain.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    let om = http::request(web, "GET", "/metrics", &[("Accept", "application/openmetrics-text;version=1.0.0")]);
    assert_eq!(om.status, 200);
    assert!(om.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")));
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE cmq_requests counter"), "OpenMetrics names the counter family without _total");
    assert_eq!(http::get(web, "/nothing-here").status, 404);
    let post = http::request(web, "POST", "/metrics", &[]);
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));
    assert_eq!(http::request(web, "POST", "/debug/stall?shard=0&ms=1", &[]).status, 404, "test hooks are off");
}

#[test]
fn per_queue_series_stay_at_the_cap_with_ten_thousand_queues() {
    const QUEUES: usize = 10_000;
    const TOP: usize = 5;
    let broker = Broker::start(&["--shards", "2", "--flush", "async", "--metrics-top-queues", &TOP.to_string()]);
    let mut c = RawConn::open(broker.addr);
    // Pipelined in chunks: one round trip per thousand creates.
    for chunk in (0..QUEUES).collect::<Vec<_>>().chunks(1000) {
        for i in chunk {
            c.send(&Request::CreateQueue(CreateQueue { queue: format!("q{i:05}"), attributes: Default::default() }));
        }
        for _ in chunk {
            c.read().expect("reply").ok();
        }
    }
    // The deepest queues are named: q00007 gets 3 messages, q09999 2, q00100 1.
    for (q, n) in [("q00007", 3), ("q09999", 2), ("q00100", 1)] {
        for i in 0..n {
            send(&mut c, q, &format!("{q}-{i}"));
        }
    }
    let m = Metrics::scrape(broker.http_addr.expect("http"));
    let named = m.label_values("cmq_queue_messages", "queue");
    assert_eq!(named.len(), TOP + 1, "{TOP} queues and _other: {named:?}");
    assert!(named.contains(&"_other".to_owned()));
    for q in ["q00007", "q09999", "q00100"] {
        assert!(named.contains(&q.to_owned()), "{q} is among the deepest: {named:?}");
    }
    for family in ["cmq_messages_sent_total", "cmq_messages_received_total", "cmq_queue_oldest_message_age_seconds"] {
        assert_eq!(m.label_values(family, "queue").len(), TOP + 1, "{family}");
    }
    assert_eq!(m.value("cmq_queue_messages", &[("queue", "q00007"), ("state", "active")]), 3.0);
    assert_eq!(m.value("cmq_queues", &[]), QUEUES as f64);
    assert_eq!(m.value("cmq_queues_in_other", &[]), (QUEUES - TOP) as f64);
    let sent: f64 = m.values("cmq_messages_sent_total", &[]).iter().sum();
    assert_eq!(sent, 6.0, "the _other series sums the rest: nothing is lost");
    assert!(m.text.len() < 64 * 1024, "a scrape stays small: {} bytes", m.text.len());
}

#[test]
fn healthz_goes_unhealthy_while_a_shard_is_blocked_and_recovers() {
    let broker = Broker::start(&["--shards", "2", "--fault-http-hooks"]);
    let web = http_addr(&broker);
    let ok = http::get(web, "/healthz");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let j = ok.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["shards"].as_array().map(Vec::len), Some(2));
    assert_eq!(j["shards"][1]["alive"], true);

    assert_eq!(http::request(web, "POST", "/debug/stall?shard=1&ms=3000", &[]).status, 200);
    let sick = poll_until(Duration::from_secs(5), "/healthz reports shard 1 stalled", || {
        let r = http::get(web, "/healthz");
        if r.status == 503 {
            Ok(r)
        } else {
            Err(r.body)
        }
    });
    let j = sick.json();
    assert_eq!(
        (j["status"].as_str(), &j["shards"][0]["alive"], &j["shards"][1]["alive"]),
        (Some("unhealthy"), &true.into(), &false.into())
    );
    assert_eq!(http::get(web, "/readyz").status, 503, "a stalled shard is not ready either");
    let m = Metrics::scrape(web);
    if m.value("cmq_shard_up", &[("shard", "1")]) == 0.0 {
        assert_eq!(m.value("cmq_shard_up", &[("shard", "0")]), 1.0, "the other shard still reports");
    }
    poll_until(Duration::from_secs(10), "/healthz healthy again", || {
        let r = http::get(web, "/healthz");
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.body)
        }
    });
    // The stalled turn was logged as slow, with what it was doing.
    poll_until(Duration::from_secs(5), "a slow-turn log line", || {
        let log = broker.stderr();
        if log.contains("shard 1: slow loop turn") {
            Ok(())
        } else {
            Err(log)
        }
    });
}

#[test]
fn readyz_is_ready_alone_and_names_each_shards_leader() {
    let broker = Broker::start(&["--shards", "2"]);
    let r = http::get(http_addr(&broker), "/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!((j["status"].as_str(), j["clustered"].as_bool()), (Some("ready"), Some(false)));
    for k in 0..2 {
        assert_eq!((j["shards"][k]["leader"].as_u64(), j["shards"][k]["ready"].as_bool()), (Some(1), Some(true)));
    }
}

#[test]
fn the_http_port_can_be_turned_off_and_logs_can_be_json() {
    let broker = Broker::start(&["--http-listen", "off", "--log-format", "json"]);
    assert_eq!(broker.http_addr, None);
    let mut c = RawConn::open(broker.addr);
    create(&mut c, "q");
    let log = broker.stderr();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        for key in ["ts", "level", "target", "msg"] {
            assert!(l[key].as_str().is_some_and(|v| !v.is_empty()), "{key} missing: {l}");
        }
    }
    assert!(lines.iter().any(|l| l["msg"].as_str().is_some_and(|m| m.contains("listening on"))));
}

#[test]
fn readyz_waits_for_every_shard_to_have_a_leader_in_a_cluster() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = tmp.path().join("cluster.key");
    std::fs::write(&key, b"readyz-test-cluster-key-0123456789").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let key = key.to_str().expect("utf-8").to_owned();
    let ports = [cmq_integration_tests::reserve_port(), cmq_integration_tests::reserve_port()];
    let node = |id: usize| -> Vec<String> {
        let other = 1 - (id - 1);
        [
            "--shards",
            "2",
            "--node-id",
            &id.to_string(),
            "--peer-listen",
            &format!("127.0.0.1:{}", ports[id - 1]),
            "--peers",
            &format!("{}=127.0.0.1:{}", other + 1, ports[other]),
            "--cluster-key-file",
            &key,
            "--raft-tick-ms",
            "20",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args1 = node(1);
    let first = Broker::start(&args1.iter().map(String::as_str).collect::<Vec<_>>());
    // Alone, node 1 is half of its groups: no leader, not ready.
    let alone = http::get(http_addr(&first), "/readyz");
    assert_eq!(alone.status, 503, "{}", alone.body);
    let j = alone.json();
    assert_eq!((j["clustered"].as_bool(), j["status"].as_str()), (Some(true), Some("not_ready")));
    assert_eq!(j["shards"][0]["leader"].as_u64(), Some(0), "{j}");
    assert_eq!(http::get(http_addr(&first), "/healthz").status, 200, "alive, though not ready");

    let args2 = node(2);
    let second = Broker::start(&args2.iter().map(String::as_str).collect::<Vec<_>>());
    for b in [&first, &second] {
        let ready = poll_until(Duration::from_secs(15), "/readyz once the groups elect leaders", || {
            let r = http::get(http_addr(b), "/readyz");
            if r.status == 200 {
                Ok(r.json())
            } else {
                Err(r.body)
            }
        });
        for k in 0..2 {
            let leader = ready["shards"][k]["leader"].as_u64().unwrap_or(0);
            assert!(leader == 1 || leader == 2, "shard {k}: {ready}");
        }
        let m = Metrics::scrape(http_addr(b));
        assert!(m.value("cmq_shard_term", &[("shard", "0")]) >= 1.0);
    }
}

/// `cmq` built next to cmqd.
fn cmq(broker: &Broker, args: &[&str]) -> std::process::Output {
    let bin = cmq_integration_tests::broker::cmqd_path().with_file_name("cmq");
    let out =
        std::process::Command::new(bin).args(["--server", &broker.addr_string()]).args(args).output().expect("run cmq");
    assert!(out.status.success(), "cmq {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn cmq_stats_and_top_show_what_the_metrics_endpoint_shows_without_http() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    create(&mut c, "jobs");
    for i in 0..4 {
        send(&mut c, "jobs", &format!("j{i}"));
    }
    // Over the protocol: one answer from every shard.
    let Response::GetStats(s) = c.call(Request::GetStats(GetStats { top_queues: 5 })).ok() else { panic!() };
    assert_eq!(s.shards.len(), 2);
    let jobs = s.queues.iter().find(|q| q.queue == "jobs").expect("jobs is named");
    assert_eq!((jobs.active, jobs.sent), (4, 4));
    assert_eq!(s.queues.last().map(|q| q.queue.as_str()), Some("_other"));
    let too_many = c.call(Request::GetStats(GetStats { top_queues: 1001 }));
    assert_eq!(too_many.code(), ErrorCode::INVALID_PARAMETER);

    // `cmq stats --json` agrees with /metrics.
    let out = cmq(&broker, &["--json", "stats", "--top", "5"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let q = j["queues"].as_array().expect("queues").iter().find(|q| q["queue"] == "jobs").expect("jobs").clone();
    let m = Metrics::scrape(http_addr(&broker));
    assert_eq!(q["sent"].as_f64(), Some(m.value("cmq_messages_sent_total", &[("queue", "jobs")])));
    assert_eq!(q["active"].as_f64(), Some(m.value("cmq_queue_messages", &[("queue", "jobs"), ("state", "active")])));
    assert_eq!(j["shards"].as_array().map(Vec::len), Some(2));
    assert!(j["shards"][0]["send_p99_us"].is_u64() || j["shards"][1]["send_p99_us"].is_u64(), "{j}");

    // `cmq top` refreshes (here twice, not on a terminal: no screen clearing).
    let out = cmq(&broker, &["top", "--interval", "1", "--iterations", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("SHARD").count(), 2, "{text}");
    assert!(text.contains("jobs") && text.contains("SENT/s") && text.contains("FSYNC p99"), "{text}");
    assert!(!text.contains('\u{1b}'), "no escape codes when stdout is not a terminal");
}

#[test]
fn the_http_port_bounds_connections_and_header_size() {
    use std::io::{Read, Write};
    const HTTP_CONNECTIONS_MAX: usize = 1024; // broker/src/http/mod.rs
    let broker = Broker::start(&["--shards", "1"]);
    let web = http_addr(&broker);
    // Headers past HTTP_BUF_BYTES_MAX (16 KiB) are refused, not buffered.
    let big = "x".repeat(20 * 1024);
    let r = http::request(web, "GET", "/healthz", &[("X-Big", &big)]);
    assert_eq!(r.status, 431, "{r:?}");

    // HTTP_CONNECTIONS_MAX idle connections hold every slot: the next is closed at once.
    let held: Vec<std::net::TcpStream> =
        (0..HTTP_CONNECTIONS_MAX).map(|_| std::net::TcpStream::connect(web).expect("connect")).collect();
    poll_until(Duration::from_secs(5), "a connection past the limit is closed unanswered", || {
        let mut s = std::net::TcpStream::connect(web).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(0) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            other => Err(format!("{other:?}: {}", String::from_utf8_lossy(&buf))),
        }
    });
    drop(held);
    poll_until(Duration::from_secs(5), "slots free again once the idle connections close", || {
        let mut s = std::net::TcpStream::connect(web).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(text)
        }
    });
}
