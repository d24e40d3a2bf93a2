//! Shared by the topic test files (`mod topic_util;`): a client, exact
//! drains of subscription queues, and waiting for a topic's deliveries to
//! finish. Not every file uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cmq_client::{Client, ClientError};
use cmq_integration_tests::{backlog, poll_until, Broker};
use cmq_protocol::ErrorCode;

/// Longest a test waits for deliveries it expects.
pub const DELIVERY_WITHIN: Duration = Duration::from_secs(20);

/// A client with a timeout, so a hung broker fails the test instead of hanging it.
pub fn client(b: &Broker) -> Client {
    Client::connect_with_timeout(b.addr, Some(Duration::from_secs(30))).expect("connect to cmqd")
}

/// The server's error code of a failed call; panics on success or a non-server error.
#[track_caller]
pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("expected a server error, got {e}")),
        Ok(v) => panic!("expected an error, got success {v:?}"),
    }
}

/// Asserts that `r` failed with `want` and returns the server's message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, ClientError>, want: ErrorCode, what: &str) -> String {
    match r {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, want, "{what}: wrong code ({message})");
            message
        }
        Err(e) => panic!("{what}: expected {want:?}, got {e}"),
        Ok(v) => panic!("{what}: expected {want:?}, got success {v:?}"),
    }
}

/// Waits until every delivery of `topic` is finished (msgCount 0): each
/// queue subscription's queue then holds everything it will ever get.
#[track_caller]
pub fn settle(c: &mut Client, topic: &str) {
    poll_until(DELIVERY_WITHIN, &format!("deliveries of topic {topic} to finish"), || {
        let info = c.topic_info(topic).expect("topic info");
        if info.msg_count == 0 {
            Ok(())
        } else {
            Err(format!("msgCount {}", info.msg_count))
        }
    })
}

/// Receives (long-polling) and deletes `n` messages from `queue`; returns
/// their bodies as text in arrival order. Panics if fewer arrive within
/// [`DELIVERY_WITHIN`].
#[track_caller]
pub fn take(c: &mut Client, queue: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + DELIVERY_WITHIN;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(Instant::now() < deadline, "{queue}: only {} of {n} messages arrived: {out:?}", out.len());
        let want = (n - out.len()).min(16) as u16;
        let msgs = c.receive_batch(queue, want, Some(2)).expect("receive");
        if msgs.is_empty() {
            continue;
        }
        let handles: Vec<_> = msgs.iter().map(|m| m.receipt_handle).collect();
        for r in c.delete_batch(queue, &handles).expect("delete") {
            assert_eq!(r.code, 0, "{queue}: delete failed: {r:?}");
        }
        out.extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()));
    }
    out
}

/// Messages `queue` still holds (ready, in flight or delayed).
pub fn held(c: &mut Client, queue: &str) -> u64 {
    backlog(&c.queue_info(queue).expect("queue info"))
}

/// A multiset of strings, for comparing deliveries without caring about order.
pub fn counts<S: AsRef<str>>(items: &[S]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in items {
        *m.entry(s.as_ref().to_owned()).or_insert(0) += 1;
    }
    m
}

/// Drains `queue` of exactly the bodies `expected` (any order) once `topic`
/// has settled: each expected body once, and nothing else left behind.
#[track_caller]
pub fn expect_exactly<S: AsRef<str>>(c: &mut Client, topic: &str, queue: &str, expected: &[S]) {
    let got = take(c, queue, expected.len());
    settle(c, topic);
    let extra = held(c, queue);
    assert_eq!(counts(&got), counts(expected), "{queue}: wrong deliveries");
    assert_eq!(extra, 0, "{queue}: {extra} unexpected messages after the expected {}", expected.len());
}
