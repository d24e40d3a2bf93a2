//! The real `cmq-loadgen` binary against the real `cmqd`: small runs whose
//! JSON report must be complete and clean, and a broker that silently drops
//! messages, which `--verify` must catch.

use std::path::PathBuf;
use std::process::{Command, Output};

use cmq_integration_tests::broker::cmqd_path;
use cmq_integration_tests::Broker;
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

/// Runs cmq-loadgen against `broker` with `args` plus `--json`, returning the
/// process output and the parsed report.
fn loadgen(broker: &Broker, args: &[&str]) -> (Output, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let pid = broker.pid().to_string();
    let out = Command::new(loadgen_path())
        .args(["--server", &broker.addr_string(), "--server-pid", &pid, "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run cmq-loadgen");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); exit {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    (out, report)
}

fn describe(out: &Output, report: &Value) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr (tail):\n{}\nreport: {report:#}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).lines().rev().take(20).collect::<Vec<_>>().join("\n")
    )
}

fn num(report: &Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or_else(|| panic!("report has no number {key:?}: {report:#}"))
}

#[test]
fn cycle_run_reports_every_key_and_loses_nothing() {
    let broker = Broker::start(&["--shards", "2"]);
    let (out, r) = loadgen(
        &broker,
        &["--mode", "cycle", "--messages", "20000", "--producers", "2", "--consumers", "2", "--verify"],
    );
    let why = describe(&out, &r);
    assert!(out.status.success(), "{why}");
    for key in [
        "msgs_per_s",
        "send_ack_us",
        "e2e_us",
        "errors",
        "lost",
        "duplicated",
        "redelivered",
        "sent",
        "received",
        "deleted",
        "command",
        "duration_s",
        "config",
        "broker_cpu_s",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {why}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(r["send_ack_us"][key].as_f64().is_some_and(|v| v > 0.0), "send_ack_us.{key}: {why}");
        assert!(r["e2e_us"][key].as_f64().is_some_and(|v| v > 0.0), "e2e_us.{key}: {why}");
    }
    assert_eq!(num(&r, "lost"), 0.0, "{why}");
    assert_eq!(num(&r, "duplicated"), 0.0, "{why}");
    assert!(num(&r, "msgs_per_s") > 0.0, "{why}");
    assert_eq!(num(&r, "deleted"), 20000.0, "every message completes its cycle: {why}");
    assert_eq!(num(&r, "acked_total"), 20000.0, "{why}");
    assert!(r["errors"].as_object().is_some_and(|e| e.is_empty()), "{why}");
    assert!(r["command"].as_str().is_some_and(|c| c.contains("--verify")), "{why}");
}

#[test]
fn open_loop_single_message_requests_complete() {
    // --rate drives the producers' own non-blocking pipe; --batch 1 the
    // single-message operations.
    let broker = Broker::start(&["--shards", "2", "--flush", "async"]);
    let (out, r) = loadgen(
        &broker,
        &[
            "--mode",
            "cycle",
            "--flush",
            "async",
            "--rate",
            "4000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--batch",
            "1",
            "--pipeline",
            "8",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--verify",
        ],
    );
    let why = describe(&out, &r);
    assert!(out.status.success(), "{why}");
    assert_eq!(num(&r, "lost"), 0.0, "{why}");
    assert_eq!(num(&r, "duplicated"), 0.0, "{why}");
    // Offered 4,000/s for 1 s: the measured send rate is near it.
    let sent = num(&r, "sent_per_s");
    assert!((2_000.0..6_000.0).contains(&sent), "open loop should send about 4000/s: {why}");
    assert!(r["send_ack_us"]["count"].as_u64().is_some_and(|n| n > 0), "{why}");
}

#[test]
fn consume_mode_drains_a_preloaded_backlog() {
    let broker = Broker::start(&["--shards", "2"]);
    let (out, r) = loadgen(&broker, &["--mode", "consume", "--messages", "5000", "--batch", "8", "--verify"]);
    let why = describe(&out, &r);
    assert!(out.status.success(), "{why}");
    assert_eq!(num(&r, "lost"), 0.0, "{why}");
    assert_eq!(num(&r, "duplicated"), 0.0, "{why}");
    // Every preloaded message was delivered once. (Not `deleted`: that
    // counts deletes answered inside the measured window, which closes at
    // the 5,000th delivery; on a busy machine the last batches' deletes are
    // answered after it, flaking at 4,804.)
    assert_eq!(num(&r, "received"), 5000.0, "{why}");
    assert_eq!(num(&r, "delivered_unique"), 5000.0, "{why}");
}

#[test]
fn plain_mode_is_the_same_load_on_one_event_loop_or_a_thread_per_connection() {
    // --pipeline 1 --batch 1 over 4 + 4 connections, driven by one event
    // loop, two (the default), or one thread per connection (--threads 0):
    // every message completes its cycle either way.
    let broker = Broker::start(&["--shards", "2", "--flush", "async"]);
    for threads in ["1", "2", "0"] {
        let (out, r) = loadgen(
            &broker,
            &[
                "--mode",
                "cycle",
                "--flush",
                "async",
                "--messages",
                "3000",
                "--pipeline",
                "1",
                "--batch",
                "1",
                "--producers",
                "4",
                "--consumers",
                "4",
                "--threads",
                threads,
                "--verify",
            ],
        );
        let why = format!("--threads {threads}: {}", describe(&out, &r));
        assert!(out.status.success(), "{why}");
        assert_eq!(num(&r, "lost"), 0.0, "{why}");
        assert_eq!(num(&r, "duplicated"), 0.0, "{why}");
        assert_eq!(num(&r, "deleted"), 3000.0, "{why}");
        assert_eq!(r["config"]["threads"].as_u64(), Some(threads.parse().unwrap()), "{why}");
    }
}

/// Needs cmqd's hidden `--fault-drop-one-in N` (acknowledge every Nth send
/// without enqueueing it). Until the broker has that flag, cmqd refuses to
/// start and this test fails in `Broker::start`.
#[test]
fn verify_catches_a_broker_that_drops_messages() {
    let broker = Broker::start(&["--shards", "2", "--fault-drop-one-in", "100"]);
    let (out, r) = loadgen(
        &broker,
        &["--mode", "cycle", "--messages", "20000", "--verify", "--drain-timeout", "20", "--batch", "1"],
    );
    let why = describe(&out, &r);
    let lost = num(&r, "lost");
    assert!(lost > 0.0, "a broker dropping 1 in 100 sends must show lost messages: {why}");
    assert!(lost <= 20000.0 / 100.0 + 16.0, "about 1 in 100 lost, not more: {why}");
    assert_eq!(out.status.code(), Some(2), "--verify failures exit with status 2: {why}");
}

/// With a key (a credentials file), every connection of the run
/// authenticates; without one, a broker that requires keys refuses the run.
#[test]
fn an_authenticated_run_completes_and_an_anonymous_one_is_refused() {
    let b = cmq_integration_tests::AdminBroker::start(&["--shards", "2"]);
    let creds = b.creds_file.to_str().expect("utf-8");
    let args = ["--mode", "cycle", "--messages", "2000", "--producers", "2", "--consumers", "2", "--verify"];
    let (out, r) = loadgen(&b.broker, &[&args[..], &["--credentials", creds]].concat());
    let why = describe(&out, &r);
    assert!(out.status.success(), "{why}");
    // Deliveries, not `deleted` (deletes answered after the measured
    // window closes are not in it; flaked at 1,512 on a busy machine).
    assert_eq!(num(&r, "delivered_unique"), 2000.0, "{why}");
    assert_eq!(num(&r, "lost"), 0.0, "{why}");
    let anonymous = Command::new(loadgen_path())
        .args(["--server", &b.broker.addr_string(), "--messages", "10"])
        .env_remove("CMQ_SECRET_ID")
        .env_remove("CMQ_SECRET_KEY")
        .env("HOME", b.creds_file.parent().expect("dir"))
        .output()
        .expect("run cmq-loadgen");
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("AUTH_FAILED"), "{anonymous:?}");
}

/// `--tls-server-name NAME`: the certificate is checked for NAME, not the
/// IP address of --server (a name the certificate lacks fails the run, one
/// it has passes; --tls is implied).
#[test]
fn tls_server_name_is_the_name_checked() {
    let pki = cmq_integration_tests::tls::TestPki::new();
    let server_args = pki.server_args();
    let b = Broker::start(&server_args.iter().map(String::as_str).collect::<Vec<_>>());
    let ca = pki.ca.to_str().expect("utf-8");
    let run = |name: &str| {
        Command::new(loadgen_path())
            .args(["--server", &b.addr_string(), "--messages", "50", "--ca-file", ca, "--tls-server-name", name])
            .output()
            .expect("run cmq-loadgen")
    };
    let wrong = run("elsewhere.test");
    assert!(!wrong.status.success(), "{wrong:?}");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("elsewhere.test") || stderr.contains("NotValidForName"), "{stderr}");
    let right = run("localhost");
    assert!(right.status.success(), "{right:?}");
}
