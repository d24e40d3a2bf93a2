//! RewindQueue against a real cmqd: deleted messages still within the
//! queue's rewindSeconds come back from a start time on, in enqueue order,
//! with exact rewindMsgNum / minMsgTime counts, durably; out-of-window
//! times are refused.
//!
//! Retention (msgRetentionSeconds) is not tested here: its minimum is 60 s,
//! too long for this suite; the engine's unit tests cover expiry. What is
//! covered is the rewind window itself (rewindSeconds may be as small as 1),
//! which uses the same expiry path for deleted messages.

use std::time::Duration;

use cmq_integration_tests::{backlog, now_ms, poll_until, Broker, RawConn};
use cmq_protocol::*;

fn rewindable(secs: u32) -> QueueAttributesUpdate {
    QueueAttributesUpdate { rewind_seconds: Some(secs), visibility_timeout: Some(30), ..Default::default() }
}

/// Enqueue times have millisecond resolution: make sure the next send gets a later one.
fn next_millisecond_after(t_ms: u64) {
    while now_ms() <= t_ms {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn rewind_after_deletes_redelivers_in_enqueue_order() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("rw", rewindable(600));
    // A, B, C: sent, received (for the broker's enqueue times), deleted.
    let mut got = Vec::new();
    for body in ["A", "B", "C"] {
        if let Some(prev) = got.last().map(|m: &ReceivedMessage| m.enqueue_time_ms) {
            next_millisecond_after(prev);
        }
        let id = c.send_ok("rw", body);
        let m = c.receive_ok("rw", Some(5));
        assert_eq!(m.msg_id, id);
        got.push(m);
    }
    let (a, b, cc) = (&got[0], &got[1], &got[2]);
    assert!(a.enqueue_time_ms < b.enqueue_time_ms && b.enqueue_time_ms < cc.enqueue_time_ms);
    for m in &got {
        c.delete_message("rw", m.receipt_handle).ok();
    }
    // D: sent after them and never received.
    next_millisecond_after(cc.enqueue_time_ms);
    let d = c.send_ok("rw", "D");
    let info = c.queue_info("rw");
    assert_eq!((info.rewind_msg_num, info.active_msg_num, info.inactive_msg_num), (3, 1, 0), "{info:?}");
    let d_time = info.min_msg_time_ms;
    assert!(d_time > cc.enqueue_time_ms, "minMsgTime is D's enqueue time: {info:?}");

    // From B's enqueue time on (inclusive): B and C come back, A stays deleted.
    assert_eq!(c.rewind_ok("rw", b.enqueue_time_ms), 2);
    let info = c.queue_info("rw");
    assert_eq!((info.rewind_msg_num, info.active_msg_num, info.inactive_msg_num), (1, 3, 0), "{info:?}");
    assert_eq!(info.min_msg_time_ms, b.enqueue_time_ms, "minMsgTime is now B's: {info:?}");

    // The rewind is durable.
    drop(c);
    broker.kill9();
    broker.restart();
    let mut c = RawConn::open(broker.addr);
    let after = c.queue_info("rw");
    assert_eq!(
        (after.rewind_msg_num, after.active_msg_num, after.min_msg_time_ms),
        (1, 3, b.enqueue_time_ms),
        "after kill -9: {after:?}"
    );

    let order: Vec<(u64, String)> = (0..3)
        .map(|_| {
            let m = c.receive_ok("rw", Some(0));
            c.delete_message("rw", m.receipt_handle).ok();
            (m.msg_id, String::from_utf8_lossy(&m.body).into_owned())
        })
        .collect();
    let want = vec![(b.msg_id, "B".to_owned()), (cc.msg_id, "C".to_owned()), (d, "D".to_owned())];
    assert_eq!(order, want, "redelivered in enqueue order, then the undeleted D");
    c.receive("rw", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    let info = c.queue_info("rw");
    assert_eq!((info.rewind_msg_num, backlog(&info), info.min_msg_time_ms), (4, 0, 0), "{info:?}");

    // Rewinding again from A's time brings back all four.
    assert_eq!(c.rewind_ok("rw", a.enqueue_time_ms), 4);
    let bodies: Vec<Vec<u8>> = c.drain("rw", 4, Duration::from_secs(5)).iter().map(|m| m.body.to_vec()).collect();
    assert_eq!(bodies, [b"A".to_vec(), b"B".to_vec(), b"C".to_vec(), b"D".to_vec()]);
}

#[test]
fn rewind_outside_the_window_is_invalid_parameter() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("norewind");
    c.create_queue_attrs("rw", rewindable(60));
    let now = now_ms();
    let e = c.rewind("norewind", now - 1000).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("rewindSeconds"), "rewindSeconds 0 disables rewind: {:?}", e.message);
    for (why, t) in [("in the future", now + 60_000), ("before the window", now - 120_000), ("epoch", 0)] {
        let e = c.rewind("rw", t).expect_err(ErrorCode::INVALID_PARAMETER);
        assert!(e.message.contains("startConsumeTime"), "{why}: {:?}", e.message);
    }
    c.rewind("missing", now).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    // Inside the window with nothing to bring back.
    assert_eq!(c.rewind_ok("rw", now - 30_000), 0);
}

#[test]
fn deleted_messages_leave_the_rewind_window() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("short", rewindable(1));
    c.send_ok("short", "x");
    let m = c.receive_ok("short", Some(0));
    c.delete_message("short", m.receipt_handle).ok();
    assert_eq!(c.queue_info("short").rewind_msg_num, 1);
    // The broker drops it once it is older than rewindSeconds.
    poll_until(Duration::from_secs(5), "the deleted message leaves the rewind window", || {
        let info = c.queue_info("short");
        if info.rewind_msg_num == 0 {
            Ok(())
        } else {
            Err(format!("{info:?}"))
        }
    });
    assert!(now_ms() >= m.enqueue_time_ms + 1000, "not before rewindSeconds passed");
    c.rewind("short", m.enqueue_time_ms).expect_err(ErrorCode::INVALID_PARAMETER);
    assert_eq!(c.rewind_ok("short", now_ms() - 500), 0);
    c.receive("short", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}
