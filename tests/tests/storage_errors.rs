//! A failing disk (issue 9, "Also"): an fdatasync or a write that fails
//! (injected through the hidden `--fault-file`: `eio-sync`, `eio`) makes the
//! log refuse further writes with a clear storage error and acknowledge
//! nothing that is not durable (the PostgreSQL fsync lesson); once the
//! fault is gone the broker recovers by itself, and a restart finds every
//! acknowledged message.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{Client, ClientError, ErrorCode, QueueAttributesUpdate};
use cmq_integration_tests::Broker;
use cmq_protocol::FlushPolicy;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The log retries recovery about once a second; this only bounds a hang.
const RECOVER_DEADLINE: Duration = Duration::from_secs(30);
const QUEUE: &str = "durable";

fn connect(b: &Broker) -> Client {
    Client::connect_with_timeout(b.addr, Some(CALL_TIMEOUT)).expect("connect to cmqd")
}

fn sync_queue() -> QueueAttributesUpdate {
    QueueAttributesUpdate { visibility_timeout: Some(600), flush_policy: Some(FlushPolicy::Sync), ..Default::default() }
}

/// Every message in the queue, each once; they are handed back
/// (visibility 0) afterwards, for the next look.
fn drain(c: &mut Client) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut handles = Vec::new();
    loop {
        let got = c.receive_batch(QUEUE, 16, Some(0)).expect("receive");
        if got.is_empty() {
            break;
        }
        for m in got {
            assert!(out.insert(String::from_utf8_lossy(&m.body).into_owned()), "delivered twice");
            handles.push(m.receipt_handle);
        }
    }
    for h in handles {
        c.change_visibility(QUEUE, h, 0).expect("hand back");
    }
    out
}

/// Sends until one succeeds (the log recovers in the background).
fn send_when_recovered(b: &Broker, body: &str) -> Duration {
    let start = Instant::now();
    loop {
        let r = connect(b).send(QUEUE, Bytes::from(body.to_owned()), 0);
        match r {
            Ok(_) => return start.elapsed(),
            Err(e) if start.elapsed() < RECOVER_DEADLINE => {
                assert!(
                    e.code() == Some(ErrorCode::STORAGE_UNAVAILABLE) || e.code().is_none(),
                    "while recovering: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("sends still fail {RECOVER_DEADLINE:?} after the fault was removed: {e}"),
        }
    }
}

/// Runs the scenario with `fault` (the fault file's content) injected
/// after a few acknowledged sends. `written_anyway`: whether the failing
/// send's record reaches the file (a failed fdatasync after a good write)
/// or not (a failed write).
fn failing_disk_case(fault_kind: &str, written_anyway: bool) {
    let faults = tempfile::tempdir().expect("temp dir");
    let fault = faults.path().join("fault");
    let arg = fault.to_str().expect("utf-8 path");
    let mut b = Broker::start(&["--shards", "1", "--io-backend", "thread", "--fault-file", arg]);
    let mut c = connect(&b);
    c.create_queue(QUEUE, &sync_queue()).expect("create");
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for i in 0..20 {
        let body = format!("before-{i:02}");
        c.send(QUEUE, Bytes::from(body.clone()), 0).expect("send before the fault");
        acked.insert(body);
    }

    std::fs::write(&fault, fault_kind).expect("inject the fault");
    let failing = c.send(QUEUE, "under-the-fault", 0);
    assert!(failing.is_err(), "{fault_kind}: a send whose log write failed was acknowledged: {failing:?}");
    // Later requests: a clear storage error, on any connection, as long as
    // the fault lasts (nothing is acknowledged).
    for i in 0..3 {
        let e = connect(&b).send(QUEUE, format!("refused-{i}"), 0).expect_err("a send with the log failed");
        assert_eq!(e.code(), Some(ErrorCode::STORAGE_UNAVAILABLE), "{fault_kind}: {e}");
        let text = e.to_string();
        assert!(text.contains("storage unavailable") && text.contains("failure"), "unclear error: {text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_fault_kept_failing(&b, fault_kind);

    std::fs::remove_file(&fault).expect("remove the fault");
    let took = send_when_recovered(&b, "after-00");
    eprintln!("{fault_kind}: sends resumed {took:.1?} after the fault was removed");
    acked.insert("after-00".into());
    let mut c = connect(&b);
    for i in 1..10 {
        let body = format!("after-{i:02}");
        c.send(QUEUE, Bytes::from(body.clone()), 0).expect("send after recovery");
        acked.insert(body);
    }
    check_contents(&mut c, &acked, written_anyway, "after recovery");
    drop(c);
    b.kill9();
    b.restart();
    let mut c = connect(&b);
    check_contents(&mut c, &acked, written_anyway, "after kill -9 and a restart");
}

/// What the queue holds: every acknowledged message, and the failed send
/// only if its record was written (its outcome was never reported).
fn check_contents(c: &mut Client, acked: &BTreeSet<String>, written_anyway: bool, when: &str) {
    let got = drain(c);
    let missing: Vec<&String> = acked.difference(&got).collect();
    assert!(missing.is_empty(), "{when}: acknowledged messages missing: {missing:?}");
    let extra: Vec<&String> = got.difference(acked).filter(|m| *m != "under-the-fault").collect();
    assert!(extra.is_empty(), "{when}: messages never acknowledged: {extra:?}");
    if !written_anyway {
        assert!(!got.contains("under-the-fault"), "{when}: a send whose write failed was stored");
    }
}

/// The log stays refused while the fault lasts: recovery (retried about
/// once a second) re-checks the fault and does not pretend to succeed.
fn assert_fault_kept_failing(b: &Broker, fault_kind: &str) {
    std::thread::sleep(Duration::from_millis(1500));
    let e = connect(b).send(QUEUE, "still-refused", 0).expect_err("the fault lasts");
    assert!(matches!(&e, ClientError::Server { .. }), "{fault_kind}: {e}");
    assert_eq!(e.code(), Some(ErrorCode::STORAGE_UNAVAILABLE), "{fault_kind}: {e}");
}

#[test]
fn a_failed_fdatasync_acknowledges_nothing_refuses_writes_and_recovers() {
    failing_disk_case("eio-sync", true);
}

#[test]
fn a_failed_write_acknowledges_nothing_refuses_writes_and_recovers() {
    failing_disk_case("eio", false);
}
