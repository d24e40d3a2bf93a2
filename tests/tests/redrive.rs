//! Redrive against a real cmqd with two shards: moving a dead-letter queue's
//! messages back to their source queues (or to a named queue) as a
//! rate-limited background task that is listed, survives kill -9, and can be
//! cancelled.
//!
//! Progress is watched with ListRedrives in bounded polls: the task runs on
//! the broker's clock, so there is no event a client could wait on instead.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cmq_integration_tests::{backlog, dead_letter_after, name_on_shard, poll_until, Broker, RawConn};
use cmq_protocol::ops::REDRIVE_ID_SHARD_SHIFT;
use cmq_protocol::*;

const SHARDS: u16 = 2;

/// Creates `dlq` and the sources (maxReceiveCount 1, visibilityTimeout 1),
/// dead-letters `per_source` messages from each, waits until all are in the
/// DLQ, then lengthens the sources' visibility timeout so that draining them
/// later cannot dead-letter anything again. Returns each source's ids.
fn fill_dlq(c: &mut RawConn, dlq: &str, sources: &[&str], per_source: usize) -> HashMap<String, Vec<u64>> {
    c.create_queue(dlq);
    let mut ids = HashMap::new();
    for src in sources {
        c.create_queue_attrs(src, dead_letter_after(dlq, 1, 1));
    }
    for src in sources {
        ids.insert(src.to_string(), c.send_and_poison(src, per_source, src));
    }
    let total = (per_source * sources.len()) as u64;
    poll_until(Duration::from_secs(30), "every poisoned message reaches the DLQ", || {
        let info = c.queue_info(dlq);
        if info.active_msg_num == total {
            Ok(())
        } else {
            Err(format!("{info:?}"))
        }
    });
    for src in sources {
        let info =
            c.set_attributes_ok(src, QueueAttributesUpdate { visibility_timeout: Some(30), ..Default::default() });
        assert_eq!(backlog(&info), 0, "{src} is empty once everything moved");
    }
    ids
}

/// Polls ListRedrives until task `id` is no longer running.
fn wait_finished(c: &mut RawConn, id: u64, within: Duration) -> RedriveInfo {
    poll_until(within, "the redrive finishes", || {
        let r = c.redrive_info(id);
        if r.state == RedriveState::Running {
            Err(format!("{r:?}"))
        } else {
            Ok(r)
        }
    })
}

/// Drains `queue` expecting exactly the messages `ids` (by original id),
/// each once; then checks nothing else arrives.
fn assert_drains_exactly(c: &mut RawConn, queue: &str, ids: &[u64], origin_queue: &str) {
    let got = c.drain(queue, ids.len(), Duration::from_secs(30));
    let mut seen = HashSet::new();
    let dups: Vec<u64> = got.iter().map(|m| m.msg_id).filter(|id| !seen.insert(*id)).collect();
    assert!(dups.is_empty(), "{queue}: {} messages delivered twice, e.g. {:?}", dups.len(), &dups[..dups.len().min(5)]);
    let want: HashSet<u64> = ids.iter().copied().collect();
    let missing: Vec<&u64> = want.difference(&seen).collect();
    let extra: Vec<&u64> = seen.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{queue}: {} missing (e.g. {:?}), {} unexpected (e.g. {:?})",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
    for m in &got {
        let o = m.origin.as_ref().unwrap_or_else(|| panic!("a redriven message keeps its origin: {m:?}"));
        assert_eq!((o.source_queue.as_str(), o.original_msg_id), (origin_queue, m.msg_id));
        assert_eq!(m.dequeue_count, 1, "a redriven message starts its count over");
    }
    c.receive(queue, Some(1)).expect_err(ErrorCode::NO_MESSAGE);
}

#[test]
fn a_redrive_at_100_per_second_moves_1000_back_surviving_kill9_midway() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    // One source on each shard; the DLQ on shard 1 (one move crosses shards, one does not).
    let src_a = name_on_shard("orders", 0, SHARDS);
    let src_b = name_on_shard("billing", 1, SHARDS);
    let dlq = name_on_shard("dead", 1, SHARDS);
    let ids = fill_dlq(&mut c, &dlq, &[&src_a, &src_b], 500);

    let started = c.start_redrive_ok(&dlq, "", 100);
    let t0 = Instant::now();
    assert_eq!(
        (started.state, started.moved, started.remaining, started.rate_per_second, started.dead_letter_queue.as_str()),
        (RedriveState::Running, 0, 1000, 100, dlq.as_str())
    );
    assert_eq!(started.id >> REDRIVE_ID_SHARD_SHIFT, 1, "the id carries the DLQ's shard");

    // Let it run about 3.5 s, then kill -9.
    let before = poll_until(Duration::from_secs(20), "the redrive moves 350 messages", || {
        let r = c.redrive_info(started.id);
        if r.moved >= 350 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let elapsed = t0.elapsed();
    assert_eq!(before.state, RedriveState::Running);
    assert_eq!(before.moved + before.remaining, 1000, "moved + remaining add up: {before:?}");
    let rate = before.moved as f64 / elapsed.as_secs_f64();
    assert!((40.0..=160.0).contains(&rate), "{} moved in {elapsed:?}: {rate:.0}/s, wanted about 100/s", before.moved);
    broker.kill9();
    broker.restart();

    let mut c = RawConn::open(broker.addr);
    let after = c.redrive_info(started.id);
    assert!(after.moved >= before.moved, "progress acknowledged before the crash survives: {before:?} -> {after:?}");
    assert_eq!(after.state, RedriveState::Running, "the task resumes after a restart: {after:?}");
    let done = wait_finished(&mut c, started.id, Duration::from_secs(30));
    let total = t0.elapsed();
    eprintln!(
        "redrive: {} moved in {elapsed:?} before kill -9, {} after restart, done after {total:?}",
        before.moved, after.moved
    );
    assert_eq!(done.state, RedriveState::Done, "{done:?}");
    assert_eq!((done.moved, done.remaining, done.failed), (1000, 0, 0), "{done:?}");
    assert!(done.finished_ms >= done.started_ms);
    assert!(
        total >= Duration::from_secs(7) && total <= Duration::from_secs(25),
        "1000 messages at 100/s took {total:?} (with a restart), wanted about 10 s"
    );

    assert_drains_exactly(&mut c, &src_a, &ids[&src_a], &src_a);
    assert_drains_exactly(&mut c, &src_b, &ids[&src_b], &src_b);
    let info = c.queue_info(&dlq);
    assert_eq!(backlog(&info), 0, "the DLQ is empty: {info:?}");
    c.receive(&dlq, Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}

#[test]
fn redrive_to_a_named_queue_leaves_later_arrivals_alone() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let src = name_on_shard("src", 0, SHARDS);
    let dlq = name_on_shard("dlq", 1, SHARDS);
    let to = name_on_shard("fixed", 0, SHARDS);
    let ids = fill_dlq(&mut c, &dlq, &[&src], 20);
    c.create_queue(&to);

    let r = c.start_redrive_ok(&dlq, &to, 40);
    assert_eq!((r.to.as_str(), r.remaining), (to.as_str(), 20));
    // Arrives after the start: not in the task's scope.
    let late = c.send_ok(&dlq, "late");
    let done = wait_finished(&mut c, r.id, Duration::from_secs(15));
    assert_eq!((done.state, done.moved, done.failed), (RedriveState::Done, 20, 0), "{done:?}");

    assert_drains_exactly(&mut c, &to, &ids[&src], &src);
    assert_eq!(backlog(&c.queue_info(&src)), 0, "nothing went back to the source");
    let left = c.receive_ok(&dlq, Some(0));
    assert_eq!((left.msg_id, &left.body[..]), (late, &b"late"[..]), "the later arrival stays in the DLQ");
    c.receive(&dlq, Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}

/// A redrive to a queue that does not exist is refused up front; one whose
/// messages' source queue is gone moves nothing, leaves them in the DLQ with
/// their ids, and says why in its status.
#[test]
fn redrive_to_a_missing_queue_leaves_the_messages_in_the_dlq() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let src = name_on_shard("src", 0, SHARDS);
    let dlq = name_on_shard("dlq", 1, SHARDS);
    let ids = fill_dlq(&mut c, &dlq, &[&src], 10);
    let nowhere = name_on_shard("nowhere", 0, SHARDS);

    let e = c.start_redrive(&dlq, &nowhere, 0).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    assert_eq!(e.message, format!("to: queue {nowhere:?} does not exist"));
    assert_eq!(c.queue_info(&dlq).active_msg_num, 10, "nothing moved");

    c.delete_queue(&src).ok();
    let r = c.start_redrive_ok(&dlq, "", 0);
    let done = wait_finished(&mut c, r.id, Duration::from_secs(15));
    assert_eq!(done.state, RedriveState::Done);
    // The task reports Done once every message has left the DLQ, which can be
    // before the refusals come back (then it shows moved 10, failed 0 for a
    // moment): wait for the final counts.
    let r = poll_until(Duration::from_secs(10), "the refusals are counted as failed", || {
        let r = c.redrive_info(r.id);
        if (r.moved, r.failed) == (0, 10) {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let why =
        format!("10 messages could not be moved (queue {src:?} does not exist); they stay in the dead-letter queue");
    assert_eq!(r.note, why);
    let info = poll_until(Duration::from_secs(10), "refused messages are back in the DLQ", || {
        let info = c.queue_info(&dlq);
        if info.active_msg_num == 10 {
            Ok(info)
        } else {
            Err(format!("{info:?}"))
        }
    });
    assert_eq!(backlog(&info), 10);
    let back: HashSet<u64> = c.drain(&dlq, 10, Duration::from_secs(5)).iter().map(|m| m.msg_id).collect();
    assert_eq!(back, ids[&src].iter().copied().collect(), "they keep their original ids");
}

#[test]
fn cancel_redrive_leaves_the_rest_in_the_dlq() {
    let mut broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let src = name_on_shard("src", 0, SHARDS);
    let dlq = name_on_shard("dlq", 1, SHARDS);
    fill_dlq(&mut c, &dlq, &[&src], 60);

    let r = c.start_redrive_ok(&dlq, "", 10);
    poll_until(Duration::from_secs(10), "the redrive moves a few", || {
        let r = c.redrive_info(r.id);
        if r.moved >= 5 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let cancelled = c.cancel_redrive_ok(r.id);
    assert_eq!(cancelled.state, RedriveState::Cancelled);
    assert!(cancelled.finished_ms > 0, "{cancelled:?}");
    let moved = cancelled.moved;
    assert!(moved < 60, "{cancelled:?}");

    // Moves already under way land; after that the counts hold still.
    let counts = |c: &mut RawConn| (backlog(&c.queue_info(&src)), backlog(&c.queue_info(&dlq)));
    poll_until(Duration::from_secs(10), "moves under way finish", || {
        let n = counts(&mut c);
        if n == (moved, 60 - moved) {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    });
    // At 10/s a task still running would move ~12 more in this time.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(counts(&mut c), (moved, 60 - moved), "nothing moves after the cancel");
    let listed = c.redrive_info(r.id);
    assert_eq!((listed.state, listed.moved), (RedriveState::Cancelled, moved));
    // Cancelling again is harmless.
    let again = c.cancel_redrive_ok(r.id);
    assert_eq!((again.state, again.moved), (RedriveState::Cancelled, moved));

    // Cancelled stays cancelled after a crash.
    drop(c);
    broker.kill9();
    broker.restart();
    let mut c = RawConn::open(broker.addr);
    assert_eq!(c.redrive_info(r.id).state, RedriveState::Cancelled);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(counts(&mut c), (moved, 60 - moved), "nothing moves after the restart either");
}

#[test]
fn cancel_unknown_redrive_is_redrive_not_found() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    // Ids on each shard, and one naming a shard this broker does not have.
    for id in [12_345, (1 << REDRIVE_ID_SHARD_SHIFT) | 7, (9 << REDRIVE_ID_SHARD_SHIFT) | 1, u64::MAX] {
        let e = c.cancel_redrive(id).expect_err(ErrorCode::REDRIVE_NOT_FOUND);
        assert!(e.message.contains(&id.to_string()), "{:?}", e.message);
    }
    assert!(c.list_redrives_ok().is_empty());
    c.ping().ok();
}

#[test]
fn start_redrive_errors_and_empty_dlq() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.start_redrive("missing", "", 0).expect_err(ErrorCode::QUEUE_NOT_FOUND);
    c.create_queue("dlq");
    let e = c.start_redrive("dlq", "9bad name", 0).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("to"), "{:?}", e.message);
    // An empty DLQ: the task is done at once.
    let r = c.start_redrive_ok("dlq", "", 0);
    let done = wait_finished(&mut c, r.id, Duration::from_secs(5));
    assert_eq!((done.state, done.moved, done.remaining, done.failed), (RedriveState::Done, 0, 0, 0));
}
