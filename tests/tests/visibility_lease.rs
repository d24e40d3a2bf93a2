//! ChangeMessageVisibility as a lease heartbeat, against a real cmqd: a
//! consumer that keeps extending a 1 s lease every ~0.4 s holds the message
//! for several seconds while another consumer long-polls for it in vain;
//! once the heartbeats stop, the other consumer gets it within a lease.
//!
//! The sleeps here are the heartbeat interval itself (the thing under
//! test), not waits for an event.

use std::time::{Duration, Instant};

use cmq_integration_tests::{now_ms, Broker, RawConn, Reply};
use cmq_protocol::*;

const HEARTBEAT: Duration = Duration::from_millis(400);
const HOLD: Duration = Duration::from_secs(4);

#[test]
fn a_consumer_that_keeps_extending_keeps_its_message() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut holder = RawConn::open_on_shard(broker.addr, 0);
    let mut rival = RawConn::open_on_shard(broker.addr, 1);
    holder.create_queue_attrs("lease", QueueAttributesUpdate { visibility_timeout: Some(1), ..Default::default() });
    let id = holder.send_ok("lease", "job");
    let m = holder.receive_ok("lease", Some(0));
    assert_eq!(m.next_visible_time_ms, m.first_dequeue_time_ms + 1000);

    // The rival waits for the message for the whole hold (and a bit).
    let wait = rival.send(&Request::ReceiveMessage(ReceiveMessage {
        queue: "lease".into(),
        polling_wait_seconds: Some(HOLD.as_secs() as u32 + 3),
    }));
    rival.barrier("lease");

    let start = Instant::now();
    let mut deadline = m.next_visible_time_ms;
    let mut beats = 0;
    while start.elapsed() < HOLD {
        std::thread::sleep(HEARTBEAT);
        let before = now_ms();
        let ok = holder.change_visibility_ok("lease", m.receipt_handle, 1);
        assert_eq!(ok.receipt_handle, m.receipt_handle, "the handle stays valid");
        assert!(
            ok.next_visible_time_ms >= before + 1000 && ok.next_visible_time_ms <= now_ms() + 1000,
            "the new lease ends a visibilityTimeout from now: {ok:?}"
        );
        assert!(ok.next_visible_time_ms > deadline, "each beat pushes the lease end out");
        deadline = ok.next_visible_time_ms;
        beats += 1;
    }
    assert!(beats >= 6, "{beats} heartbeats");
    let info = holder.queue_info("lease");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (0, 1), "still held: {info:?}");

    // Heartbeats stop: the lease runs out and the waiting rival gets it.
    let got = rival.read_reply(wait);
    let Reply::Ok(_, Response::ReceiveMessage(r)) = got else {
        panic!("the rival gets the message once the heartbeats stop (held {:?}): {got:?}", start.elapsed())
    };
    assert_eq!((r.msg_id, r.dequeue_count), (id, 2));
    assert!(now_ms() >= deadline, "not before the last extended lease ended");
    assert!(start.elapsed() >= HOLD, "nobody else received it while it was held");
    // The holder's handle died with its lease; the rival's works.
    holder.delete_message("lease", m.receipt_handle).expect_err(ErrorCode::RECEIPT_HANDLE_INVALID);
    rival.delete_message("lease", r.receipt_handle).ok();
}

#[test]
fn extending_then_deleting_never_redelivers() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("lease", QueueAttributesUpdate { visibility_timeout: Some(1), ..Default::default() });
    c.send_ok("lease", "job");
    let m = c.receive_ok("lease", Some(0));
    for _ in 0..4 {
        std::thread::sleep(HEARTBEAT);
        c.change_visibility_ok("lease", m.receipt_handle, 1);
    }
    // Held for ~2 s on a 1 s lease: the handle still deletes.
    c.delete_message("lease", m.receipt_handle).ok();
    c.receive("lease", Some(2)).expect_err(ErrorCode::NO_MESSAGE);
}
