//! State that must survive kill -9, and the data directory's guards (lock,
//! manifest). Every test here runs the real cmqd and kills it for real.

use std::time::Duration;

use cmq_client::{Client, ErrorCode, FlushPolicy, QueueAttributesUpdate};
use cmq_integration_tests::wal_files::run_cmqd_expecting_refusal;
use cmq_integration_tests::Broker;

/// Bounds every client call, so a hung broker fails the test instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn connect(b: &Broker) -> Client {
    Client::connect_with_timeout(b.addr, Some(CALL_TIMEOUT)).expect("connect to cmqd")
}

fn kill_and_restart(b: &mut Broker) -> Client {
    b.kill9();
    b.restart();
    connect(b)
}

fn visibility(secs: u32) -> QueueAttributesUpdate {
    QueueAttributesUpdate { visibility_timeout: Some(secs), ..Default::default() }
}

#[test]
fn dequeue_count_and_first_dequeue_time_survive_kill9() {
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = connect(&b);
    c.create_queue("dq", &visibility(1)).expect("create");
    let id = c.send("dq", "counted", 0).expect("send");

    let first = c.receive("dq", Some(0)).expect("receive").expect("a message");
    assert_eq!((first.msg_id, first.dequeue_count), (id, 1));
    assert!(first.first_dequeue_time_ms > 0, "firstDequeueTime not set: {first:?}");
    // The lease (1 s) ends on the broker's timer; the long poll is answered then.
    let second = c.receive("dq", Some(5)).expect("receive").expect("the message again after its lease");
    assert_eq!((second.msg_id, second.dequeue_count), (id, 2));
    assert_eq!(second.first_dequeue_time_ms, first.first_dequeue_time_ms);

    let mut c = kill_and_restart(&mut b);
    let third = c.receive("dq", Some(5)).expect("receive after restart").expect("the message after restart");
    assert_eq!(third.msg_id, id, "another message came back");
    assert_eq!(third.dequeue_count, 3, "dequeueCount did not survive kill -9: {third:?}");
    assert_eq!(third.first_dequeue_time_ms, first.first_dequeue_time_ms, "firstDequeueTime changed across restart");
    assert_eq!(third.enqueue_time_ms, first.enqueue_time_ms, "enqueueTime changed across restart");
    assert_eq!(&third.body[..], b"counted");
}

#[test]
fn queue_attributes_and_queue_deletion_survive_kill9() {
    let mut b = Broker::start(&["--shards", "2", "--flush", "sync"]);
    let mut c = connect(&b);
    let attrs = QueueAttributesUpdate {
        max_msg_heap_num: Some(1234),
        polling_wait_seconds: Some(3),
        visibility_timeout: Some(77),
        max_msg_size: Some(2048),
        msg_retention_seconds: Some(3600),
        rewind_seconds: Some(60),
        flush_policy: Some(FlushPolicy::Async),
        max_query_count: Some(9),
        ..Default::default()
    };
    let created_id = c.create_queue("attrs", &attrs).expect("create");
    // A later change is a separate record (QueueUpdated): it must survive too.
    c.set_queue_attributes("attrs", &visibility(99)).expect("update");
    c.create_queue("defaults", &QueueAttributesUpdate::default()).expect("create");
    c.create_queue("gone", &QueueAttributesUpdate::default()).expect("create");
    c.delete_queue("gone").expect("delete queue");
    let before = c.queue_info("attrs").expect("info");
    let defaults_before = c.queue_info("defaults").expect("info");
    assert_eq!(before.attributes.visibility_timeout, 99);

    let mut c = kill_and_restart(&mut b);
    let after = c.queue_info("attrs").expect("queue survives kill -9");
    assert_eq!(after.queue_id, created_id);
    assert_eq!(after.attributes, before.attributes, "attributes changed across kill -9");
    assert_eq!(after.create_time_ms, before.create_time_ms);
    assert_eq!(after.last_modify_time_ms, before.last_modify_time_ms);
    assert_eq!(after.attributes.flush_policy, FlushPolicy::Async);
    assert_eq!(after.attributes.max_msg_size, 2048);
    let defaults_after = c.queue_info("defaults").expect("queue survives kill -9");
    assert_eq!(defaults_after.attributes, defaults_before.attributes);
    assert_eq!(defaults_after.attributes.flush_policy, FlushPolicy::Sync, "--flush default not kept");
    let err = c.queue_info("gone").expect_err("a deleted queue came back after kill -9");
    assert_eq!(err.code(), Some(ErrorCode::QUEUE_NOT_FOUND), "{err}");
}

#[test]
fn receipt_handle_issued_before_kill9_still_deletes_within_its_lease() {
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = connect(&b);
    c.create_queue("lease", &visibility(120)).expect("create");
    c.send("lease", "held", 0).expect("send");
    c.send("lease", "other", 0).expect("send");
    let held = c.receive("lease", Some(0)).expect("receive").expect("a message");
    assert_eq!(&held.body[..], b"held");

    let mut c = kill_and_restart(&mut b);
    let info = c.queue_info("lease").expect("info");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (1, 1), "lease state not restored: {info:?}");
    c.delete_message("lease", held.receipt_handle)
        .expect("a handle issued before kill -9 must delete within its lease");
    let info = c.queue_info("lease").expect("info");
    assert_eq!((info.active_msg_num, info.inactive_msg_num), (1, 0), "{info:?}");
    // And the deletion itself is durable.
    let mut c = kill_and_restart(&mut b);
    let m = c.receive("lease", Some(0)).expect("receive").expect("the other message");
    assert_eq!(&m.body[..], b"other");
    assert!(c.receive("lease", Some(0)).expect("receive").is_none(), "the deleted message came back");
}

#[test]
fn delayed_messages_stay_delayed_across_kill9() {
    // A long delay (outlasts any restart, however slow the machine) and a
    // short one (its end, on the broker's timer, is awaited by a long poll).
    const LONG_S: u32 = 600;
    const SHORT_S: u32 = 2;
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = connect(&b);
    c.create_queue("later", &QueueAttributesUpdate::default()).expect("create");
    let long = c.send("later", "much later", LONG_S).expect("send");
    let short = c.send("later", "soon", SHORT_S).expect("send");

    let mut c = kill_and_restart(&mut b);
    let info = c.queue_info("later").expect("info");
    assert!(info.delay_msg_num >= 1 && info.active_msg_num <= 1, "delays not restored: {info:?}");
    let m = c.receive("later", Some(SHORT_S + 10)).expect("receive").expect("the short-delay message once due");
    assert_eq!(m.msg_id, short, "the wrong message became visible (long delay lost?)");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    assert!(
        now_ms + 50 >= m.enqueue_time_ms + u64::from(SHORT_S) * 1000,
        "delivered {} ms after enqueue, before its {SHORT_S} s delay",
        now_ms.saturating_sub(m.enqueue_time_ms)
    );
    let info = c.queue_info("later").expect("info");
    assert_eq!((info.delay_msg_num, info.active_msg_num), (1, 0), "the long delay was not kept: {info:?}");
    assert!(c.receive("later", Some(0)).expect("receive").is_none(), "message {long} became visible early");
}

#[test]
fn message_ids_keep_increasing_across_kill9() {
    use std::collections::{HashMap, HashSet};
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = connect(&b);
    // Ids are unique broker-wide and increase per shard (the shard sits in
    // the top bits), so track the highest id per shard.
    let names = ["ids-a", "ids-b", "ids-c", "ids-d"];
    for n in names {
        c.create_queue(n, &QueueAttributesUpdate::default()).expect("create");
    }
    let shard: HashMap<&str, u16> = names.iter().map(|n| (*n, c.shard_of(n))).collect();
    assert_eq!(shard.values().collect::<HashSet<_>>().len(), 2, "queue names do not cover both shards");
    let mut seen = HashSet::new();
    let mut max: HashMap<u16, u64> = HashMap::new();
    let note = |queue: &str, id: u64, seen: &mut HashSet<u64>, max: &mut HashMap<u16, u64>, when: &str| {
        assert!(seen.insert(id), "message id {id} reused ({when})");
        let m = max.entry(shard[queue]).or_insert(0);
        assert!(id > *m, "message id {id} on shard {} is not above {} issued earlier ({when})", shard[queue], *m);
        *m = id;
    };
    for i in 0..20 {
        let q = names[i % names.len()];
        let id = c.send(q, format!("m{i}"), 0).expect("send");
        note(q, id, &mut seen, &mut max, "before restart");
    }
    // Delete everything: the counter must not depend on surviving messages.
    for n in names {
        while let Some(m) = c.receive(n, Some(0)).expect("receive") {
            c.delete_message(n, m.receipt_handle).expect("delete");
        }
    }
    for round in 0..2 {
        c = kill_and_restart(&mut b);
        for (i, q) in names.iter().enumerate() {
            let id = c.send(q, format!("after-{round}-{i}"), 0).expect("send after restart");
            note(q, id, &mut seen, &mut max, &format!("after restart {round}"));
        }
    }
}

#[test]
fn second_cmqd_on_the_same_data_dir_is_refused() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = connect(&b);
    c.create_queue("locked", &QueueAttributesUpdate::default()).expect("create");
    let r = run_cmqd_expecting_refusal(&b.data_dir, &["--shards", "2"], Duration::from_secs(20));
    assert!(!r.started, "a second cmqd started on a locked data directory; its log:\n{}", r.stderr);
    let status = r.status.expect("second cmqd neither started nor exited");
    assert!(!status.success(), "second cmqd exited with success");
    let dir = b.data_dir.display().to_string();
    assert!(
        r.stderr.contains(&dir) && r.stderr.contains("in use"),
        "error does not name the locked directory {dir}:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains(&format!("pid {}", b.pid())), "error does not name the holder:\n{}", r.stderr);
    // The first broker is unaffected.
    c.send("locked", "still here", 0).expect("first broker still serves");
}

#[test]
fn restart_with_another_shard_count_is_refused() {
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = connect(&b);
    c.create_queue("fixed", &QueueAttributesUpdate::default()).expect("create");
    c.send("fixed", "kept", 0).expect("send");
    drop(c);
    b.kill9();
    for shards in ["1", "3"] {
        let r = run_cmqd_expecting_refusal(&b.data_dir, &["--shards", shards], Duration::from_secs(20));
        assert!(!r.started, "cmqd started with --shards {shards} on a 2-shard directory");
        assert!(r.status.is_some_and(|s| !s.success()), "cmqd did not fail: {:?}", r.status);
        let dir = b.data_dir.display().to_string();
        assert!(
            r.stderr.contains(&dir) && r.stderr.contains("2 shards") && r.stderr.contains(&format!("with {shards}")),
            "refusal does not say which directory and shard counts:\n{}",
            r.stderr
        );
    }
    // The refusals changed nothing: the original configuration still starts.
    b.restart();
    let mut c = connect(&b);
    let m = c.receive("fixed", Some(0)).expect("receive").expect("message kept");
    assert_eq!(&m.body[..], b"kept");
}
