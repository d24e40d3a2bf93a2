//! The push pool's settings as docs/HTTP_PUSH.md documents them
//! (`push_endpoint_concurrency`, `push_idle_keep_ms`, `push_tls_ca_file`),
//! set by cmqd flag or config-file key, reaching the pool that sends pushes.

use std::process::{Command, Stdio};
use std::time::Duration;

use cmq_client::{Client, Subscribe, SubscribeBuilder, NO_TAGS};
use cmq_integration_tests::broker::cmqd_path;
use cmq_integration_tests::{Broker, HttpSink};
use cmq_protocol::TopicAttributesUpdate;

const PUSH_WITHIN: Duration = Duration::from_secs(15);

/// A topic `t` with an HTTP subscription to `sink`.
fn subscribed(broker: &Broker, sink: &HttpSink) -> Client {
    let mut c = Client::connect_with_timeout(broker.addr, Some(Duration::from_secs(5))).expect("connect");
    c.create_topic("t", &TopicAttributesUpdate::default()).expect("topic");
    c.subscribe(&Subscribe::to_http("t", "hook", &sink.url("/in"))).expect("subscribe");
    c
}

/// One connection per endpoint, and it is kept: every push travels over it.
#[test]
fn endpoint_concurrency_one_sends_every_push_over_one_connection() {
    let sink = HttpSink::always(200);
    let broker = Broker::start(&["--shards", "2", "--push-endpoint-concurrency", "1"]);
    let mut c = subscribed(&broker, &sink);
    let bodies: Vec<bytes::Bytes> = (0..16).map(|i| bytes::Bytes::from(format!("m{i}"))).collect();
    c.publish_batch("t", &bodies, NO_TAGS, "").expect("publish");
    let pushes: Vec<_> = (0..16).map(|i| sink.next(PUSH_WITHIN, &format!("push {i}"))).collect();
    assert!(pushes.iter().all(|p| p.conn == 0), "{:?}", pushes.iter().map(|p| p.conn).collect::<Vec<_>>());
    assert_eq!(sink.connections(), 1);
}

/// `push_idle_keep_ms = 0` (from the config file): no connection is kept
/// for the next push.
#[test]
fn idle_keep_zero_opens_a_connection_per_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cmqd.toml");
    std::fs::write(&config, "push_idle_keep_ms = 0\n").expect("write");
    let sink = HttpSink::always(200);
    let broker = Broker::start(&["--shards", "2", "--config", config.to_str().expect("utf-8")]);
    let mut c = subscribed(&broker, &sink);
    for i in 0..3 {
        c.publish("t", format!("m{i}"), NO_TAGS, "").expect("publish");
        let push = sink.next(PUSH_WITHIN, "a push");
        assert_eq!(push.conn, i, "push {i} on a connection of its own");
    }
}

/// A CA file the pool cannot use stops cmqd at start-up, naming it, whether
/// given as a flag or in the config file.
#[test]
fn an_unusable_tls_ca_file_stops_cmqd_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("empty.pem");
    std::fs::write(&ca, "no certificates here\n").expect("write");
    let config = dir.path().join("cmqd.toml");
    std::fs::write(&config, format!("push_tls_ca_file = {:?}\n", ca.to_str().expect("utf-8"))).expect("write");
    let ca_flag = ["--push-tls-ca-file", ca.to_str().expect("utf-8")];
    let config_flag = ["--config", config.to_str().expect("utf-8")];
    for args in [&ca_flag[..], &config_flag[..]] {
        let out = Command::new(cmqd_path())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cmqd");
        assert!(!out.status.success(), "{args:?}: started anyway");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("tls_ca_file") && err.contains("empty.pem") && err.contains("no certificates"), "{err}");
    }
}
