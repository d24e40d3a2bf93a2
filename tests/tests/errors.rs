//! Every error code the broker core can produce, provoked over real TCP.
//!
//! Where a code is covered in another file, [`every_error_code_is_accounted_for`]
//! says where, so adding a code without a test fails here.

use bytes::Bytes;
use cmq_integration_tests::{names_on_shard, raw_frame, request_frame, Broker, RawConn};
use cmq_protocol::handshake::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use cmq_protocol::limits::{FRAME_BYTES_MAX, MSG_BYTES_MAX};
use cmq_protocol::wire::Writer;
use cmq_protocol::*;

/// Where each code in `ErrorCode::ALL` is provoked, or why it cannot be from the core.
const COVERAGE: &[(ErrorCode, &str)] = &[
    (
        ErrorCode::INVALID_PARAMETER,
        "errors::invalid_parameter_*, queue_admin::create_queue_names_follow_cmq_rules, \
         topics::invalid_tags_routing_keys_and_bodies_are_refused",
    ),
    (ErrorCode::BATCH_TOO_LARGE, "errors::batch_too_large_*"),
    (
        ErrorCode::FRAME_TOO_LARGE,
        "errors::frame_too_large_*, malformed::oversized_length_prefix_*, conn_limits::maximum_size_frames_before_*",
    ),
    (ErrorCode::UNSUPPORTED_VERSION, "errors::unsupported_version_*"),
    (ErrorCode::UNKNOWN_OPCODE, "errors::unknown_opcode_*, malformed::unknown_opcode_*"),
    (ErrorCode::MALFORMED_FRAME, "errors::malformed_frame_*, malformed::*"),
    (ErrorCode::HANDSHAKE_REQUIRED, "errors::handshake_required_*"),
    (ErrorCode::HANDSHAKE_TIMEOUT, "conn_limits::a_partial_handshake_*, conn_limits::silent_connections_*"),
    (ErrorCode::FRAME_TIMEOUT, "conn_limits::partial_frames_after_the_handshake_*"),
    (ErrorCode::AUTH_FAILED, "auth_handshake::*, auth_keys::deleting_a_key_closes_*"),
    (ErrorCode::ACCESS_DENIED, "auth_permissions::*"),
    (ErrorCode::KEY_NOT_FOUND, "auth_keys::rotation_keeps_both_secrets_*"),
    (ErrorCode::KEY_ALREADY_EXISTS, "auth_keys::rotation_keeps_both_secrets_*"),
    (ErrorCode::TLS_REQUIRED, "tls::plaintext_and_tls_ends_refuse_each_other_clearly"),
    (ErrorCode::TOO_MANY_KEY_CONNECTIONS, "auth_limits::a_key_gets_at_most_its_connections_*"),
    (ErrorCode::REQUEST_RATE_EXCEEDED, "auth_limits::a_key_over_its_request_rate_*"),
    (ErrorCode::MESSAGE_TOO_LARGE, "errors::message_too_large_*, topics::invalid_tags_routing_keys_and_bodies_*"),
    (ErrorCode::QUEUE_FULL, "errors::queue_full_*, queue_admin::set_queue_attributes_takes_effect"),
    (ErrorCode::BUSY, "not provoked: needs a full 16k-message shard inbox"),
    (ErrorCode::RECEIPT_HANDLE_INVALID, "messages::stale_receipt_handles_are_rejected, messages::batch_delete_*"),
    (
        ErrorCode::QUEUE_NOT_FOUND,
        "errors::queue_not_found_*, long_poll::deleting_a_queue_ends_its_long_polls, \
         topics::topic_and_subscription_errors_have_their_codes (subscribe to a missing queue)",
    ),
    (ErrorCode::TOO_MANY_QUEUES, "errors::too_many_queues_*, errors::max_queues_*"),
    (ErrorCode::QUEUE_ALREADY_EXISTS, "errors::queue_already_exists, queue_admin::create_existing_queue_*"),
    (ErrorCode::QUEUE_IN_USE, "dead_letter::deleting_a_dead_letter_target_is_refused"),
    (ErrorCode::MESSAGE_NOT_FOUND, "transactions::*, inspection::* (EndTransaction of a resolved message)"),
    (ErrorCode::REDRIVE_NOT_FOUND, "redrive::cancel_unknown_redrive_*"),
    (ErrorCode::TOPIC_NOT_FOUND, "topics::topic_and_subscription_errors_have_their_codes, topics::deleting_a_topic_*"),
    (ErrorCode::TOPIC_ALREADY_EXISTS, "topics::topic_and_subscription_errors_*, topics::too_many_topics_*"),
    (ErrorCode::SUBSCRIPTION_NOT_FOUND, "topics::topic_and_subscription_errors_*, topics::unsubscribe_stops_*"),
    (ErrorCode::SUBSCRIPTION_ALREADY_EXISTS, "topics::topic_and_subscription_errors_have_their_codes"),
    (ErrorCode::TOO_MANY_TOPICS, "topics::too_many_topics_and_subscriptions (--max-topics, 100 subscriptions)"),
    (ErrorCode::INTERNAL, "not provoked: no way to make the core fail from outside"),
    (ErrorCode::STORAGE_UNAVAILABLE, "disk::* (ENOSPC through --fault-file)"),
    (ErrorCode::SHUTTING_DOWN, "shutdown::long_poll_gets_shutting_down_*"),
    (ErrorCode::TOO_MANY_CONNECTIONS, "connections::too_many_connections_*"),
    (ErrorCode::IDLE_TIMEOUT, "conn_limits::idle_connections_are_closed_*"),
    (ErrorCode::NOT_LEADER, "cluster::a_follower_answers_not_leader_*"),
    (ErrorCode::NO_MESSAGE, "errors::no_message_is_7000, long_poll::long_poll_times_out_with_no_message"),
];

#[test]
fn every_error_code_is_accounted_for() {
    for code in ErrorCode::ALL {
        assert!(COVERAGE.iter().any(|(c, _)| c == code), "{code:?} has no integration test: add one and list it");
    }
    assert_eq!(COVERAGE.len(), ErrorCode::ALL.len());
}

fn attrs(f: impl FnOnce(&mut QueueAttributesUpdate)) -> QueueAttributesUpdate {
    let mut u = QueueAttributesUpdate::default();
    f(&mut u);
    u
}

// ---- INVALID_PARAMETER ---------------------------------------------------------

#[test]
fn invalid_parameter_names_the_out_of_range_attribute() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("target");
    type Case = (&'static str, QueueAttributesUpdate);
    let cases: Vec<Case> = vec![
        ("maxMsgHeapNum", attrs(|u| u.max_msg_heap_num = Some(0))),
        ("maxMsgHeapNum", attrs(|u| u.max_msg_heap_num = Some(1_000_000_001))),
        ("pollingWaitSeconds", attrs(|u| u.polling_wait_seconds = Some(31))),
        ("visibilityTimeout", attrs(|u| u.visibility_timeout = Some(0))),
        ("visibilityTimeout", attrs(|u| u.visibility_timeout = Some(43_201))),
        ("maxMsgSize", attrs(|u| u.max_msg_size = Some(1023))),
        ("maxMsgSize", attrs(|u| u.max_msg_size = Some(1_048_577))),
        ("msgRetentionSeconds", attrs(|u| u.msg_retention_seconds = Some(59))),
        ("msgRetentionSeconds", attrs(|u| u.msg_retention_seconds = Some(1_296_001))),
        ("rewindSeconds", attrs(|u| u.rewind_seconds = Some(43_201))),
        (
            "rewindSeconds",
            attrs(|u| {
                u.msg_retention_seconds = Some(60);
                u.rewind_seconds = Some(61)
            }),
        ),
    ];
    for (i, (field, update)) in cases.into_iter().enumerate() {
        let e = c.create_queue_with(&format!("bad{i}"), update.clone()).expect_err(ErrorCode::INVALID_PARAMETER);
        assert!(e.message.contains(field), "create: message {:?} should name {field}", e.message);
        let e = c.set_attributes("target", update).expect_err(ErrorCode::INVALID_PARAMETER);
        assert!(e.message.contains(field), "set: message {:?} should name {field}", e.message);
    }
    assert_eq!(c.list_queues_ok("bad", "", 0, 0).total, 0, "no invalid queue was created");
    let a = c.queue_info("target").attributes;
    assert_eq!(a, QueueAttributes::defaults(FlushPolicy::Sync), "no invalid update was applied");
}

#[test]
fn invalid_parameter_rewind_cannot_exceed_retention_after_update() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("rw", attrs(|u| u.rewind_seconds = Some(600)));
    // Lowering retention below the queue's current rewindSeconds is refused too.
    let e =
        c.set_attributes("rw", attrs(|u| u.msg_retention_seconds = Some(300))).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("rewindSeconds"), "{:?}", e.message);
    assert_eq!(c.queue_info("rw").attributes.msg_retention_seconds, 345_600);
}

#[test]
fn invalid_parameter_for_bad_queue_names() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    for bad in ["", "9lives", "has space", "dot.ted", "ünï"] {
        let e = c.create_queue_with(bad, Default::default()).expect_err(ErrorCode::INVALID_PARAMETER);
        assert!(e.message.contains("queueName"), "{bad:?}: {:?}", e.message);
    }
    // 65 characters is refused by the decoder, still naming the field.
    let e = c.create_queue_with(&"q".repeat(65), Default::default()).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("queue"), "{:?}", e.message);
    c.ping().ok();
}

#[test]
fn invalid_parameter_polling_wait_over_30() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("pw");
    for wait in [31, 1000, u32::MAX] {
        let e = c.receive("pw", Some(wait)).expect_err(ErrorCode::INVALID_PARAMETER);
        assert!(e.message.contains("pollingWaitSeconds"), "{:?}", e.message);
    }
    c.receive("pw", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}

#[test]
fn invalid_parameter_for_undecodable_values_and_a_second_handshake() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("q");
    // A queue name that is not UTF-8.
    let mut p = Vec::new();
    p.put_u16(2);
    p.extend_from_slice(&[0xff, 0xfe]);
    c.write_raw(&raw_frame(Opcode::GetQueueAttributes as u16, 0, 77, &p));
    let e = c.read_reply(77).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("queue"), "{:?}", e.message);
    // An option tag that is neither 0 nor 1.
    let mut p = Vec::new();
    p.put_str("q");
    p.put_u8(2);
    c.write_raw(&raw_frame(Opcode::ReceiveMessage as u16, 0, 78, &p));
    let e = c.read_reply(78).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(e.message.contains("polling_wait_seconds"), "{:?}", e.message);
    // A second handshake.
    c.call(Request::Handshake(Handshake::new("again"))).expect_err(ErrorCode::INVALID_PARAMETER);
    c.assert_round_trip("q", "still fine");
}

// ---- BATCH_TOO_LARGE -------------------------------------------------------------

#[test]
fn batch_too_large_for_17_bodies_and_for_none() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("b");
    let seventeen: Vec<Bytes> = (0..17).map(|i| Bytes::from(format!("m{i}"))).collect();
    let e = c.batch_send("b", 0, seventeen).expect_err(ErrorCode::BATCH_TOO_LARGE);
    assert!(e.message.contains("17"), "{:?}", e.message);
    c.batch_send("b", 0, vec![]).expect_err(ErrorCode::BATCH_TOO_LARGE);
    assert_eq!(c.queue_info("b").active_msg_num, 0);
    let sixteen: Vec<Bytes> = (0..16).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(c.batch_send_ok("b", 0, sixteen).len(), 16);
}

/// The count is checked before the items are read: a frame that claims 17
/// (or 65535) bodies but carries none is BATCH_TOO_LARGE, not MALFORMED_FRAME
/// (which it would be if the decoder had tried to read, or allocate for, the items).
#[test]
fn batch_too_large_is_refused_from_the_count_alone() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("b");
    for (id, count) in [(100u64, 17u16), (101, u16::MAX)] {
        let mut p = Vec::new();
        p.put_str("b");
        p.put_u32(0);
        p.put_u16(count);
        c.write_raw(&raw_frame(Opcode::BatchSendMessage as u16, 0, id, &p));
        c.read_reply(id).expect_err(ErrorCode::BATCH_TOO_LARGE);

        let mut p = Vec::new();
        p.put_str("b");
        p.put_u16(count);
        c.write_raw(&raw_frame(Opcode::BatchDeleteMessage as u16, 0, id + 10, &p));
        c.read_reply(id + 10).expect_err(ErrorCode::BATCH_TOO_LARGE);
    }
    c.assert_round_trip("b", "after");
}

#[test]
fn batch_too_large_for_num_of_msg_0_and_17() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("b");
    c.send_ok("b", "x");
    for n in [0u16, 17, 1000] {
        let e = c.batch_receive("b", n, Some(0)).expect_err(ErrorCode::BATCH_TOO_LARGE);
        assert!(e.message.contains("numOfMsg"), "{:?}", e.message);
    }
    assert_eq!(c.queue_info("b").active_msg_num, 1, "nothing was received");
    assert_eq!(c.batch_receive_ok("b", 16, Some(0)).len(), 1);
}

#[test]
fn batch_too_large_for_0_and_17_receipt_handles() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("b");
    c.batch_delete("b", vec![]).expect_err(ErrorCode::BATCH_TOO_LARGE);
    c.batch_delete("b", vec![ReceiptHandle(1); 17]).expect_err(ErrorCode::BATCH_TOO_LARGE);
    let results = c.batch_delete_ok("b", vec![ReceiptHandle(1); 16]);
    assert_eq!(results.len(), 16);
}

// ---- frame-level errors -----------------------------------------------------------

#[test]
fn frame_too_large_closes_the_connection() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    // One byte over the limit, said by the length prefix alone (no payload follows).
    let len = FRAME_BYTES_MAX - 4 + 1;
    let mut header = raw_frame(Opcode::Ping as u16, 0, 9, &[]);
    header[..4].copy_from_slice(&len.to_le_bytes());
    c.write_raw(&header);
    let replies = c.read_until_closed();
    assert_eq!(replies.len(), 1, "one error, then the connection is closed: {replies:?}");
    let e = replies.into_iter().next().expect("one reply").expect_err(ErrorCode::FRAME_TOO_LARGE);
    assert!(e.message.contains(&FRAME_BYTES_MAX.to_string()), "the message states the limit: {:?}", e.message);
    // The broker still serves new connections.
    RawConn::open(broker.addr).ping().ok();
}

#[test]
fn frame_too_large_before_the_handshake() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::connect(broker.addr);
    c.write_raw(&u32::MAX.to_le_bytes());
    let replies = c.read_until_closed();
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies.into_iter().next().expect("one").expect_err(ErrorCode::FRAME_TOO_LARGE);
}

#[test]
fn unsupported_version_is_refused_and_the_connection_closed() {
    let broker = Broker::start(&["--shards", "2"]);
    for (lo, hi) in [(PROTOCOL_VERSION_MAX + 1, PROTOCOL_VERSION_MAX + 5), (0, 0)] {
        let hs = Handshake { version_min: lo, version_max: hi, ..Handshake::new("future") };
        let (mut c, r) = RawConn::open_with(broker.addr, hs);
        let e = r.expect_err(ErrorCode::UNSUPPORTED_VERSION);
        let speaks = format!("{PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}");
        assert!(e.message.contains(&speaks), "the message lists what the server speaks: {:?}", e.message);
        assert!(c.read().is_none(), "the connection is closed");
    }
    // A range that includes ours negotiates our highest.
    let hs = Handshake { version_min: 0, version_max: 99, ..Handshake::new("wide") };
    let (mut c, r) = RawConn::open_with(broker.addr, hs);
    let Response::Handshake(ok) = r.ok() else { panic!("wrong response type") };
    assert_eq!(ok.version, PROTOCOL_VERSION_MAX);
    assert_eq!(ok.shard_count, 2);
    assert_eq!(ok.frame_bytes_max, FRAME_BYTES_MAX);
    c.ping().ok();
}

#[test]
fn handshake_required_before_anything_else() {
    let broker = Broker::start(&["--shards", "2"]);
    for req in [Request::Ping(Ping {}), Request::CreateQueue(CreateQueue { queue: "q".into(), ..Default::default() })] {
        let mut c = RawConn::connect(broker.addr);
        let id = c.send(&req);
        let r = c.read().expect("an error before closing");
        assert_eq!(r.id(), id, "the error answers the request");
        r.expect_err(ErrorCode::HANDSHAKE_REQUIRED);
        assert!(c.read().is_none(), "the connection is closed");
    }
    assert_eq!(RawConn::open(broker.addr).list_queues_ok("", "", 0, 0).total, 0, "nothing was created");
}

#[test]
fn malformed_handshake_closes_the_connection() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::connect(broker.addr);
    c.write_raw(&raw_frame(Opcode::Handshake as u16, 0, 5, &[1, 0]));
    let replies = c.read_until_closed();
    assert_eq!(replies.len(), 1, "{replies:?}");
    replies.into_iter().next().expect("one").expect_err(ErrorCode::MALFORMED_FRAME);
}

#[test]
fn unknown_opcode_leaves_the_connection_usable() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("q");
    for (id, op) in [(500u64, 0x7777u16), (501, 0x0000), (502, 0xffff), (503, 0x020F)] {
        c.write_raw(&raw_frame(op, 0, id, b"whatever"));
        let e = c.read_reply(id).expect_err(ErrorCode::UNKNOWN_OPCODE);
        assert!(e.message.contains(&format!("{op:#06x}")), "the message names the opcode: {:?}", e.message);
    }
    c.assert_round_trip("q", "after unknown opcodes");
}

#[test]
fn malformed_frame_leaves_the_connection_usable() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("q");
    // Trailing bytes after a complete payload.
    c.write_raw(&raw_frame(Opcode::Ping as u16, 0, 600, &[0]));
    c.read_reply(600).expect_err(ErrorCode::MALFORMED_FRAME);
    // A payload cut short: a SendMessage frame whose body is missing its last bytes.
    let mut full = request_frame(
        601,
        &Request::SendMessage(SendMessage {
            queue: "q".into(),
            delay_seconds: 0,
            body: Bytes::from_static(b"0123456789"),
            ..Default::default()
        }),
    );
    let payload = full.split_off(16);
    c.write_raw(&raw_frame(Opcode::SendMessage as u16, 0, 601, &payload[..payload.len() - 3]));
    let e = c.read_reply(601).expect_err(ErrorCode::MALFORMED_FRAME);
    assert!(e.message.contains("body"), "the message names where it ended: {:?}", e.message);
    // An empty payload for an operation that needs one.
    c.write_raw(&raw_frame(Opcode::DeleteQueue as u16, 0, 602, &[]));
    c.read_reply(602).expect_err(ErrorCode::MALFORMED_FRAME);
    assert_eq!(c.queue_info("q").active_msg_num, 0, "the cut-short send did not enqueue anything");
    c.assert_round_trip("q", "after malformed frames");
}

// ---- MESSAGE_TOO_LARGE -------------------------------------------------------------

#[test]
fn message_too_large_for_the_queues_max_msg_size() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("small", attrs(|u| u.max_msg_size = Some(1024)));
    c.send_ok("small", vec![b'a'; 1024]);
    let e = c.send_message("small", 0, vec![b'a'; 1025]).expect_err(ErrorCode::MESSAGE_TOO_LARGE);
    assert!(e.message.contains("1025") && e.message.contains("1024"), "{:?}", e.message);
    // One oversized body fails the whole batch.
    let batch = vec![Bytes::from(vec![b'a'; 10]), Bytes::from(vec![b'a'; 1025])];
    c.batch_send("small", 0, batch).expect_err(ErrorCode::MESSAGE_TOO_LARGE);
    assert_eq!(c.queue_info("small").active_msg_num, 1);
    // The default maxMsgSize is 64 KiB.
    c.create_queue("dflt");
    c.send_ok("dflt", vec![b'a'; 65_536]);
    c.send_message("dflt", 0, vec![b'a'; 65_537]).expect_err(ErrorCode::MESSAGE_TOO_LARGE);
}

#[test]
fn message_too_large_over_1_mib_is_refused_by_the_decoder() {
    let broker = Broker::start(&["--shards", "1"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("max", attrs(|u| u.max_msg_size = Some(MSG_BYTES_MAX)));
    let over = vec![b'z'; MSG_BYTES_MAX as usize + 1];
    c.send_message("max", 0, over.clone()).expect_err(ErrorCode::MESSAGE_TOO_LARGE);
    c.batch_send("max", 0, vec![Bytes::from_static(b"ok"), Bytes::from(over)]).expect_err(ErrorCode::MESSAGE_TOO_LARGE);
    // A body length that claims more than 1 MiB is refused before the bytes are read.
    let mut p = Vec::new();
    p.put_str("max");
    p.put_u32(0);
    p.put_u32(u32::MAX);
    c.write_raw(&raw_frame(Opcode::SendMessage as u16, 0, 700, &p));
    c.read_reply(700).expect_err(ErrorCode::MESSAGE_TOO_LARGE);
    assert_eq!(c.queue_info("max").active_msg_num, 0);
    c.assert_round_trip("max", "after oversized bodies");
}

// ---- QUEUE_FULL ----------------------------------------------------------------------

#[test]
fn queue_full_at_max_msg_heap_num() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue_attrs("full", attrs(|u| u.max_msg_heap_num = Some(2)));
    c.send_ok("full", "1");
    c.send_ok("full", "2");
    let e = c.send_message("full", 0, "3").expect_err(ErrorCode::QUEUE_FULL);
    assert!(e.message.contains("maxMsgHeapNum"), "{:?}", e.message);
    // In-flight and delayed messages still count.
    let m = c.receive_ok("full", None);
    c.send_message("full", 0, "3").expect_err(ErrorCode::QUEUE_FULL);
    c.send_message("full", 5, "3").expect_err(ErrorCode::QUEUE_FULL);
    // Deleting makes room for exactly one.
    c.delete_message("full", m.receipt_handle).ok();
    c.batch_send("full", 0, vec![Bytes::from("a"), Bytes::from("b")]).expect_err(ErrorCode::QUEUE_FULL);
    c.send_ok("full", "3");
    c.send_message("full", 0, "4").expect_err(ErrorCode::QUEUE_FULL);
    let info = c.queue_info("full");
    assert_eq!(info.active_msg_num + info.inactive_msg_num + info.delay_msg_num, 2);
}

// ---- QUEUE_NOT_FOUND -------------------------------------------------------------------

#[test]
fn queue_not_found_for_every_queue_operation() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let q = "missing";
    let h = ReceiptHandle(1);
    let replies = [
        c.delete_queue(q),
        c.get_attributes(q),
        c.set_attributes(q, attrs(|u| u.visibility_timeout = Some(5))),
        c.send_message(q, 0, "x"),
        c.batch_send(q, 0, vec![Bytes::from("x")]),
        c.receive(q, Some(0)),
        c.receive(q, Some(5)),
        c.batch_receive(q, 4, Some(0)),
        c.delete_message(q, h),
        c.batch_delete(q, vec![h]),
        c.change_visibility(q, h, 5),
    ];
    for r in replies {
        let e = r.expect_err(ErrorCode::QUEUE_NOT_FOUND);
        assert!(e.message.contains(q), "the message names the queue: {:?}", e.message);
    }
}

// ---- TOO_MANY_QUEUES / QUEUE_ALREADY_EXISTS ----------------------------------------------

#[test]
fn too_many_queues_past_max_queues() {
    let broker = Broker::start(&["--shards", "1", "--max-queues", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("one");
    c.create_queue("two");
    c.create_queue_with("three", Default::default()).expect_err(ErrorCode::TOO_MANY_QUEUES);
    c.get_attributes("three").expect_err(ErrorCode::QUEUE_NOT_FOUND);
    // Deleting one makes room again.
    c.delete_queue("one").ok();
    c.create_queue("three");
}

/// `--max-queues` is documented as the number of queues on the broker; it must
/// not depend on which shard the names happen to hash to.
#[test]
fn max_queues_is_a_broker_wide_limit() {
    let broker = Broker::start(&["--shards", "2", "--max-queues", "3"]);
    let mut c = RawConn::open(broker.addr);
    for q in names_on_shard("same", 0, 2, 3) {
        c.create_queue(&q);
    }
    let q = names_on_shard("other", 1, 2, 1).remove(0);
    c.create_queue_with(&q, Default::default()).expect_err(ErrorCode::TOO_MANY_QUEUES);
    assert_eq!(c.list_queues_ok("", "", 0, 0).total, 3);
}

#[test]
fn queue_already_exists() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("twice");
    c.create_queue_with("twice", Default::default()).expect_err(ErrorCode::QUEUE_ALREADY_EXISTS);
    // Names are case-sensitive.
    c.create_queue("Twice");
}

// ---- NO_MESSAGE ----------------------------------------------------------------------------

#[test]
fn no_message_is_7000() {
    let broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    c.create_queue("none");
    let e = c.receive("none", None).expect_err(ErrorCode::NO_MESSAGE);
    assert_eq!(e.code, 7000);
    c.batch_receive("none", 16, None).expect_err(ErrorCode::NO_MESSAGE);
    // A delayed message is not a message yet.
    c.send_message("none", 60, "later").ok();
    c.receive("none", Some(0)).expect_err(ErrorCode::NO_MESSAGE);
}
