//! Queue management against a real cmqd: CreateQueue (defaults and every
//! attribute), DeleteQueue, ListQueues, GetQueueAttributes (live counts),
//! SetQueueAttributes, and Ping.

use cmq_integration_tests::{bodies, name_on_shard, names_on_shard, Broker, RawConn};
use cmq_protocol::names::shard_for;
use cmq_protocol::*;

fn all_attrs() -> QueueAttributesUpdate {
    QueueAttributesUpdate {
        max_msg_heap_num: Some(1234),
        polling_wait_seconds: Some(7),
        visibility_timeout: Some(45),
        max_msg_size: Some(2048),
        msg_retention_seconds: Some(3600),
        rewind_seconds: Some(600),
        flush_policy: Some(FlushPolicy::Async),
        first_query_interval: Some(20),
        max_query_count: Some(7),
        transaction_default: Some(TxDefault::Commit),
        ..Default::default()
    }
}

#[test]
fn ping_answers() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let Response::Ping(_) = c.ping().ok() else { panic!("Ping answered with another response type") };
}

#[test]
fn create_queue_defaults_are_cmqs() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let id = c.create_queue("defaults");
    let info = c.queue_info("defaults");
    assert_eq!(info.queue_id, id);
    assert_eq!(info.queue, "defaults");
    let a = &info.attributes;
    assert_eq!(a.visibility_timeout, 30);
    assert_eq!(a.max_msg_size, 65_536);
    assert_eq!(a.msg_retention_seconds, 345_600);
    assert_eq!(a.polling_wait_seconds, 0);
    assert_eq!(a.rewind_seconds, 0);
    assert_eq!(a.max_msg_heap_num, 100_000_000);
    assert_eq!(a.flush_policy, FlushPolicy::Sync, "cmqd's default --flush is sync");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num, info.rewind_msg_num), (0, 0, 0, 0));
    assert_eq!(info.min_msg_time_ms, 0);
    assert!(info.create_time_ms > 1_600_000_000_000, "create time is Unix ms: {}", info.create_time_ms);
    assert_eq!(info.last_modify_time_ms, info.create_time_ms);
    assert_eq!(info.shard, shard_for("defaults", 2));
}

#[test]
fn create_queue_with_every_attribute() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("all", all_attrs());
    let a = c.queue_info("all").attributes;
    assert_eq!(
        a,
        QueueAttributes {
            max_msg_heap_num: 1234,
            polling_wait_seconds: 7,
            visibility_timeout: 45,
            max_msg_size: 2048,
            msg_retention_seconds: 3600,
            rewind_seconds: 600,
            flush_policy: FlushPolicy::Async,
            dead_letter_queue: String::new(),
            max_receive_count: 0,
            max_time_to_live: 0,
            first_query_interval: 20,
            max_query_count: 7,
            transaction_default: TxDefault::Commit,
        }
    );
    // Each attribute alone, the others keeping their defaults.
    let singles: [(&str, QueueAttributesUpdate); 6] = [
        ("heap", QueueAttributesUpdate { max_msg_heap_num: Some(1), ..Default::default() }),
        ("poll", QueueAttributesUpdate { polling_wait_seconds: Some(30), ..Default::default() }),
        ("vis", QueueAttributesUpdate { visibility_timeout: Some(43_200), ..Default::default() }),
        ("size", QueueAttributesUpdate { max_msg_size: Some(1_048_576), ..Default::default() }),
        ("ret", QueueAttributesUpdate { msg_retention_seconds: Some(60), ..Default::default() }),
        ("rew", QueueAttributesUpdate { rewind_seconds: Some(43_200), ..Default::default() }),
    ];
    let d = QueueAttributes::defaults(FlushPolicy::Sync);
    for (name, update) in singles {
        c.create_queue_attrs(name, update.clone());
        let got = c.queue_info(name).attributes;
        assert_eq!(got, d.updated(&update).expect("valid update"), "queue {name}");
    }
}

#[test]
fn create_queue_names_follow_cmq_rules() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    for good in ["a", "A-b_9", &"x".repeat(64)] {
        c.create_queue(good);
    }
    for bad in ["", "1abc", "-abc", "_abc", "a b", "a.b", "aé", &"x".repeat(65)] {
        let e = c.create_queue_with(bad, Default::default()).expect_err(ErrorCode::INVALID_PARAMETER);
        assert!(e.message.to_lowercase().contains("queue"), "message should name the field: {:?}", e.message);
    }
}

#[test]
fn create_existing_queue_is_refused_and_changes_nothing() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let id = c.create_queue_attrs("dup", QueueAttributesUpdate { visibility_timeout: Some(5), ..Default::default() });
    c.send_ok("dup", "kept");
    let e = c
        .create_queue_with("dup", QueueAttributesUpdate { visibility_timeout: Some(9), ..Default::default() })
        .expect_err(ErrorCode::QUEUE_ALREADY_EXISTS);
    assert!(e.message.contains("dup"), "{:?}", e.message);
    let info = c.queue_info("dup");
    assert_eq!((info.queue_id, info.attributes.visibility_timeout, info.active_msg_num), (id, 5, 1));
}

#[test]
fn delete_queue_removes_it_and_its_messages() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let old_id = c.create_queue("gone");
    c.send_ok("gone", "one");
    c.send_ok("gone", "two");
    let held = c.receive_ok("gone", None);
    let Response::DeleteQueue(_) = c.delete_queue("gone").ok() else { panic!("wrong response type") };
    c.get_attributes("gone").expect_err(ErrorCode::QUEUE_NOT_FOUND);
    c.delete_queue("gone").expect_err(ErrorCode::QUEUE_NOT_FOUND);
    assert_eq!(c.list_queues_ok("", "", 0, 0).total, 0);

    // A new queue by the same name starts empty, and handles from the old one do not work on it.
    let new_id = c.create_queue("gone");
    assert_ne!(new_id, old_id, "a recreated queue is a new incarnation");
    let info = c.queue_info("gone");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (0, 0, 0));
    c.receive("gone", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
    c.send_ok("gone", "fresh");
    c.delete_message("gone", held.receipt_handle).expect_err(ErrorCode::RECEIPT_HANDLE_INVALID);
    assert_eq!(&c.receive_ok("gone", None).body[..], b"fresh");
}

#[test]
fn get_queue_attributes_counts_ready_in_flight_and_delayed() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("counts");
    c.batch_send_ok("counts", 0, bodies(&["r1", "r2", "r3"]));
    c.batch_send_ok("counts", 600, bodies(&["d1", "d2"]));
    let info = c.queue_info("counts");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (3, 0, 2));
    let oldest = info.min_msg_time_ms;
    assert!(oldest > 0 && oldest >= info.create_time_ms, "minMsgTime {oldest} vs create {}", info.create_time_ms);

    let got = c.batch_receive_ok("counts", 2, None);
    assert_eq!(got.len(), 2);
    let info = c.queue_info("counts");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (1, 2, 2));
    assert_eq!(info.min_msg_time_ms, oldest);

    c.delete_message("counts", got[0].receipt_handle).ok();
    let info = c.queue_info("counts");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (1, 1, 2));

    // Returning a message to the queue moves it from in flight to ready.
    c.change_visibility_ok("counts", got[1].receipt_handle, 0);
    let info = c.queue_info("counts");
    assert_eq!((info.active_msg_num, info.inactive_msg_num, info.delay_msg_num), (2, 0, 2));
    c.get_attributes("nope").expect_err(ErrorCode::QUEUE_NOT_FOUND);
}

#[test]
fn set_queue_attributes_changes_only_what_is_given() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("setme");
    let before = c.queue_info("setme");
    let info =
        c.set_attributes_ok("setme", QueueAttributesUpdate { visibility_timeout: Some(99), ..Default::default() });
    assert_eq!(info.attributes.visibility_timeout, 99);
    assert_eq!(
        QueueAttributes { visibility_timeout: 30, ..info.attributes.clone() },
        before.attributes,
        "only visibilityTimeout changed"
    );
    assert_eq!(info.create_time_ms, before.create_time_ms);
    assert!(info.last_modify_time_ms >= before.last_modify_time_ms);
    assert_eq!(c.queue_info("setme"), info, "the response is the queue's new state");

    let info = c.set_attributes_ok("setme", all_attrs());
    assert_eq!(info.attributes, c.queue_info("setme").attributes);
    assert_eq!(info.attributes.max_msg_heap_num, 1234);
    assert_eq!(info.attributes.rewind_seconds, 600);
    assert_eq!(info.attributes.flush_policy, FlushPolicy::Async);

    // An empty update changes nothing.
    let again = c.set_attributes_ok("setme", Default::default());
    assert_eq!(again.attributes, info.attributes);
    c.set_attributes("nope", Default::default()).expect_err(ErrorCode::QUEUE_NOT_FOUND);
}

#[test]
fn set_queue_attributes_takes_effect() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("effect");
    // maxMsgSize: a body that fitted no longer does.
    c.send_ok("effect", vec![b'x'; 2000]);
    c.set_attributes_ok("effect", QueueAttributesUpdate { max_msg_size: Some(1024), ..Default::default() });
    c.send_message("effect", 0, vec![b'x'; 2000]).expect_err(ErrorCode::MESSAGE_TOO_LARGE);
    c.send_message("effect", 0, vec![b'x'; 1024]).ok();
    // visibilityTimeout: the next receive uses the new lease.
    c.set_attributes_ok("effect", QueueAttributesUpdate { visibility_timeout: Some(120), ..Default::default() });
    let m = c.receive_ok("effect", None);
    assert_eq!(m.next_visible_time_ms - m.first_dequeue_time_ms, 120_000);
    // maxMsgHeapNum: two messages are held, so a limit of 2 refuses a third.
    c.set_attributes_ok("effect", QueueAttributesUpdate { max_msg_heap_num: Some(2), ..Default::default() });
    c.send_message("effect", 0, "third").expect_err(ErrorCode::QUEUE_FULL);
}

#[test]
fn list_queues_filters_pages_and_totals_across_shards() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let mut created = Vec::new();
    for shard in [0, 1] {
        for name in names_on_shard(&format!("orders-s{shard}-"), shard, 2, 3) {
            c.create_queue(&name);
            created.push(name);
        }
    }
    c.create_queue("payments-1");
    c.create_queue("zz-orders");

    let all = c.list_queues_ok("", "", 0, 0);
    assert_eq!(all.total, 8);
    assert_eq!(all.queues.len(), 8);
    let shards: std::collections::BTreeSet<u16> = all.queues.iter().map(|q| shard_for(&q.queue, 2)).collect();
    assert_eq!(shards.len(), 2, "queues of both shards are listed: {:?}", all.queues);
    for q in &all.queues {
        assert_eq!(c.queue_info(&q.queue).queue_id, q.queue_id, "listed id of {}", q.queue);
    }

    let by_prefix = c.list_queues_ok("orders-", "", 0, 0);
    assert_eq!(by_prefix.total, 6);
    let mut names: Vec<String> = by_prefix.queues.iter().map(|q| q.queue.clone()).collect();
    names.sort();
    let mut want = created.clone();
    want.sort();
    assert_eq!(names, want);

    let by_contains = c.list_queues_ok("", "orders", 0, 0);
    assert_eq!(by_contains.total, 7, "contains matches anywhere in the name");
    assert!(by_contains.queues.iter().any(|q| q.queue == "zz-orders"));
    let both = c.list_queues_ok("orders-s1", "-s1-", 0, 0);
    assert_eq!(both.total, 3);

    // Pages: total is the filter's count, not the page's; pages do not overlap and cover everything.
    let mut paged = Vec::new();
    for offset in (0..8).step_by(3) {
        let page = c.list_queues_ok("", "", offset, 3);
        assert_eq!(page.total, 8);
        assert_eq!(page.queues.len(), (8 - offset as usize).min(3));
        paged.extend(page.queues);
    }
    assert_eq!(paged, all.queues, "paging walks the same order as one big page");
    let past = c.list_queues_ok("", "", 50, 10);
    assert_eq!((past.total, past.queues.len()), (8, 0));
    let none = c.list_queues_ok("nothing", "", 0, 0);
    assert_eq!((none.total, none.queues.len()), (0, 0));
}

#[test]
fn list_queues_default_page_is_20_and_limit_is_bounded() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    for i in 0..25 {
        c.create_queue(&format!("q{i:02}"));
    }
    let page = c.list_queues_ok("", "", 0, 0);
    assert_eq!((page.total, page.queues.len()), (25, 20));
    let page = c.list_queues_ok("", "", 0, 1000);
    assert_eq!(page.queues.len(), 25);
    let e = c.list_queues("", "", 0, 1001).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("limit"), "{:?}", e.message);
}

/// ListQueues promises creation order across shards. Queues created back to
/// back often share a millisecond; the order must still be creation order.
#[test]
fn list_queues_in_creation_order_across_shards() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let on0 = names_on_shard("ord-a", 0, 2, 10);
    let on1 = names_on_shard("ord-b", 1, 2, 10);
    // Alternate shards, starting with shard 1, so a tie broken by shard id would show.
    let mut created = Vec::new();
    for (b, a) in on1.iter().zip(&on0) {
        c.create_queue(b);
        c.create_queue(a);
        created.push(b.clone());
        created.push(a.clone());
    }
    let listed: Vec<String> = c.list_queues_ok("ord-", "", 0, 100).queues.into_iter().map(|q| q.queue).collect();
    assert_eq!(listed, created);
}

#[test]
fn queue_info_reports_the_owning_shard() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    for shard in [0u16, 1] {
        let q = name_on_shard("own", shard, 2);
        c.create_queue(&q);
        assert_eq!(c.queue_info(&q).shard, shard, "{q}");
    }
}
