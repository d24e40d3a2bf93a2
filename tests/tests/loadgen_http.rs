//! `cmq-loadgen --http` against the real cmqd's CMQ API 2.0 gateway: every
//! request signed with the broker's key (both hashes), counts that add up
//! (every message sent is received and deleted exactly once).

use std::path::PathBuf;
use std::process::{Command, Output};

use cmq_integration_tests::auth::AdminBroker;
use cmq_integration_tests::broker::cmqd_path;
use serde_json::Value;

/// `$CMQ_LOADGEN_BIN`, else `cmq-loadgen` next to cmqd (`cargo build --bins` builds both).
fn loadgen_path() -> PathBuf {
    if let Ok(p) = std::env::var("CMQ_LOADGEN_BIN") {
        return PathBuf::from(p);
    }
    let p = cmqd_path().with_file_name("cmq-loadgen");
    assert!(p.exists(), "{} not found: run `cargo build --bins` first (make test does)", p.display());
    p
}

/// Runs `cmq-loadgen --http` against `b` as `key`, returning the output and the JSON report.
fn loadgen_http(b: &AdminBroker, key: (&str, &str), args: &[&str]) -> (Output, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let http = format!("http://{}", b.broker.http_addr.expect("the HTTP port is on"));
    let out = Command::new(loadgen_path())
        .args(["--server", &b.broker.addr_string(), "--http", &http, "--json"])
        .arg(&json)
        .args(["--secret-id", key.0, "--secret-key", key.1])
        .args(args)
        .output()
        .expect("run cmq-loadgen");
    let text =
        std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON report ({e}): {}", describe_out(&out)));
    (out, serde_json::from_str(&text).expect("the report is JSON"))
}

fn describe_out(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr (tail):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).lines().rev().take(20).collect::<Vec<_>>().join("\n")
    )
}

fn num(r: &Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or_else(|| panic!("report has no number {key:?}: {r:#}"))
}

fn assert_counts_add_up(out: &Output, r: &Value, messages: f64) {
    let why = format!("{}\nreport: {r:#}", describe_out(out));
    assert!(out.status.success(), "{why}");
    assert_eq!(num(r, "acked_total"), messages, "every send acknowledged: {why}");
    assert_eq!(num(r, "sent"), messages, "{why}");
    assert_eq!(num(r, "received"), messages, "each received once: {why}");
    assert_eq!(num(r, "deleted"), messages, "each deleted: {why}");
    assert_eq!((num(r, "lost"), num(r, "duplicated"), num(r, "foreign")), (0.0, 0.0, 0.0), "{why}");
    assert!(r["errors"].as_object().is_some_and(|e| e.is_empty()), "{why}");
    assert!(r["send_ack_us"]["p50"].as_f64().is_some_and(|v| v > 0.0), "{why}");
    assert!(r["e2e_us"]["p99"].as_f64().is_some_and(|v| v > 0.0), "{why}");
    assert_eq!((r["config"]["batch"].as_u64(), r["config"]["pipeline"].as_u64()), (Some(1), Some(1)), "{why}");
}

#[test]
fn signed_cycles_add_up_with_both_hashes() {
    let b = AdminBroker::start(&["--shards", "2"]);
    let key = (b.secret_id.as_str(), b.secret_key.as_str());
    let common = ["--mode", "cycle", "--messages", "400", "--producers", "2", "--consumers", "3", "--verify"];
    let (out, r) = loadgen_http(&b, key, &common);
    assert_counts_add_up(&out, &r, 400.0);
    assert_eq!(r["config"]["sha1"], false);

    let (out, r) = loadgen_http(&b, key, &[&common[..], &["--sha1", "--size", "300", "--flush", "async"]].concat());
    assert_counts_add_up(&out, &r, 400.0);
    assert_eq!(r["config"]["sha1"], true);
}
