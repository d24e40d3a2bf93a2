//! Issue 9, case 8: a panicked shard ends cmqd. A shard thread that dies
//! while the others serve on is a silent partial outage; an exit is
//! something a supervisor sees and acts on, and recovery then rebuilds
//! every acknowledged message from the log.
//!
//! cmqd's hidden `--fault-panic-after-turns N` makes shard 0 panic on its
//! Nth loop turn while a client sends to queues on both shards. The test
//! asserts that the process exits promptly with a failure status (SIGABRT:
//! the panic hook aborts in debug builds as `panic = "abort"` does in
//! release), that the log says why, and that a restart (without the fault)
//! holds every acknowledged message.

mod topic_util;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use bytes::Bytes;
use cmq_client::Client;
use cmq_integration_tests::{name_on_shard, poll_until, Broker};
use topic_util::*;

const SHARDS: u16 = 2;
/// Loop turns of shard 0 before it panics: enough to set up and send a while.
const PANIC_AT_TURN: &str = "300";
/// How soon after the panic the process must be gone.
const EXIT_WITHIN: Duration = Duration::from_secs(10);
/// A bound on the sending loop (the panic ends it long before).
const SENDS_MAX: usize = 100_000;

/// Whether process `pid` has exited (a zombie not yet reaped, or gone).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()) == Some('Z'),
        Err(_) => true,
    }
}

/// Receives and deletes everything in `queue`; returns the bodies.
fn drain(c: &mut Client, queue: &str) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    loop {
        let msgs = c.receive_batch(queue, 16, Some(1)).expect("receive");
        if msgs.is_empty() {
            return got;
        }
        let handles: Vec<_> = msgs.iter().map(|m| m.receipt_handle).collect();
        c.delete_batch(queue, &handles).expect("delete");
        got.extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
    }
}

#[test]
fn a_panicked_shard_ends_cmqd_and_a_restart_recovers_every_acknowledged_message() {
    let mut b = Broker::start(&["--shards", "2", "--fault-panic-after-turns", PANIC_AT_TURN]);
    let queues: Vec<String> = (0..SHARDS).map(|s| name_on_shard("panic-q-", s, SHARDS)).collect();
    let mut c = client(&b);
    for q in &queues {
        c.create_queue(q, &Default::default()).expect("create queue");
    }
    // Send (acknowledged one at a time) until the broker goes away.
    let mut acked: Vec<BTreeSet<String>> = vec![BTreeSet::new(); queues.len()];
    let mut failure = None;
    for i in 0..SENDS_MAX {
        let q = i % queues.len();
        let body = format!("m{i}");
        match c.send(&queues[q], Bytes::from(body.clone()), 0) {
            Ok(_) => {
                acked[q].insert(body);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("shard 0 panicked while the client was sending");
    let per_queue: Vec<usize> = acked.iter().map(BTreeSet::len).collect();
    eprintln!("{per_queue:?} sends acknowledged per queue before the broker went away ({failure})");
    assert!(per_queue.iter().all(|n| *n > 0), "both shards served sends first: {per_queue:?}");

    let pid = b.pid();
    poll_until(EXIT_WITHIN, "cmqd to exit after the shard panic", || {
        if exited(pid) {
            Ok(())
        } else {
            Err("still running".to_owned())
        }
    });
    let status = b.terminate(); // reaps it (the signal goes to a process that is already gone)
    assert!(!status.success(), "cmqd exited with a failure status: {status:?}");
    assert_eq!(status.signal(), Some(6), "aborted (SIGABRT): {status:?}");
    let log = b.stderr();
    assert!(log.contains("fault injected by --fault-panic-after-turns"), "the panic is in the log:\n{log}");
    assert!(log.contains("cmqd aborts"), "the log says cmqd aborts:\n{log}");

    // A restart (without the fault) recovers every acknowledged message.
    let again = Broker::start_in(&b.data_dir, &["--shards", "2"]);
    let mut c = client(&again);
    for (q, want) in queues.iter().zip(&acked) {
        let got = drain(&mut c, q);
        let missing: Vec<&String> = want.difference(&got).collect();
        assert!(missing.is_empty(), "{q}: acknowledged messages lost: {missing:?}");
    }
}
