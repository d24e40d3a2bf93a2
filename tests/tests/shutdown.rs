//! Graceful shutdown: SIGTERM/SIGINT stop the broker with exit status 0,
//! long polls waiting at the time are answered SHUTTING_DOWN, and open
//! connections are closed.

use cmq_integration_tests::{name_on_shard, Broker, RawConn};
use cmq_protocol::*;
use rustix::process::Signal;

#[test]
fn sigterm_with_nothing_in_flight_exits_0() {
    let mut broker = Broker::start(&["--shards", "2"]);
    RawConn::open(broker.addr).ping().ok();
    let status = broker.terminate();
    assert!(status.success(), "cmqd exited with {status:?}; its log:\n{}", broker.stderr());
}

#[test]
fn sigint_exits_0() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let status = broker.stop_with(Signal::INT);
    assert!(status.success(), "cmqd exited with {status:?}; its log:\n{}", broker.stderr());
}

#[test]
fn sigterm_closes_idle_connections_and_exits_0() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let mut conns: Vec<RawConn> = (0..4u16).map(|i| RawConn::open_on_shard(broker.addr, i % 2)).collect();
    conns[0].create_queue("q");
    conns[0].send_ok("q", "left behind");
    let status = broker.terminate();
    assert!(status.success(), "cmqd exited with {status:?}; its log:\n{}", broker.stderr());
    for c in &mut conns {
        assert!(c.read_until_closed().is_empty(), "an idle connection got a frame at shutdown");
    }
}

/// A long poll waiting when SIGTERM arrives is answered SHUTTING_DOWN, and
/// the broker still exits 0. `poller_on_owner` says whether the poller's
/// connection is served by the shard that owns the queue or by the other one.
fn long_poll_at_shutdown(shards: u16, poller_on_owner: bool) {
    let mut broker = Broker::start(&["--shards", &shards.to_string()]);
    let q = name_on_shard("bye", shards - 1, shards);
    let poller_shard = if poller_on_owner { shards - 1 } else { 0 };
    let mut c = RawConn::open_on_shard(broker.addr, poller_shard);
    c.create_queue(&q);
    let rid = c.send(&Request::ReceiveMessage(ReceiveMessage { queue: q.clone(), polling_wait_seconds: Some(30) }));
    c.barrier(&q);
    let status = broker.terminate();
    let r = c.read().unwrap_or_else(|| panic!("closed without answering the long poll; log:\n{}", broker.stderr()));
    assert_eq!(r.id(), rid);
    let e = r.expect_err(ErrorCode::SHUTTING_DOWN);
    assert!(!e.message.is_empty());
    assert!(c.read().is_none(), "the connection is closed after that");
    assert!(status.success(), "cmqd exited with {status:?}; its log:\n{}", broker.stderr());
}

#[test]
fn long_poll_gets_shutting_down_one_shard() {
    long_poll_at_shutdown(1, true);
}

#[test]
fn long_poll_gets_shutting_down_from_the_owner_shard() {
    long_poll_at_shutdown(2, true);
}

/// The SHUTTING_DOWN answer is made on the owner shard and travels to the
/// poller's shard while both are draining. Repeated because losing it is a race.
#[test]
fn long_poll_gets_shutting_down_across_shards() {
    for _ in 0..20 {
        long_poll_at_shutdown(2, false);
    }
}
