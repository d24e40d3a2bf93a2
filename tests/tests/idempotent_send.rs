//! Idempotent sends (issue 11, item 6) against a real `cmqd`: a send
//! repeated with the same idempotency key is stored once and answered with
//! the first message's id, inside a batch too, across kill -9 and a
//! restart; a key over the limit is refused; a version 2 client's keyless
//! sends still work.

use bytes::Bytes;
use cmq_client::{Client, IdempotencyKey, SendOptions};
use cmq_integration_tests::{Broker, RawConn, Reply};
use cmq_protocol::limits::IDEMPOTENCY_KEY_BYTES_MAX;
use cmq_protocol::*;

fn keyed(key: u128) -> SendOptions {
    SendOptions { idempotency_key: Some(IdempotencyKey(key)), ..Default::default() }
}

fn sync_queue(c: &mut Client, name: &str) {
    let attrs = QueueAttributesUpdate { flush_policy: Some(FlushPolicy::Sync), ..Default::default() };
    c.create_queue(name, &attrs).expect("create queue");
}

/// Every body left in `queue`, received and deleted.
fn drain(c: &mut Client, queue: &str) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    loop {
        let got = c.receive_batch(queue, 16, Some(0)).expect("receive");
        if got.is_empty() {
            return out;
        }
        let handles: Vec<ReceiptHandle> = got.iter().map(|m| m.receipt_handle).collect();
        c.delete_batch(queue, &handles).expect("delete");
        out.extend(got.into_iter().map(|m| (m.msg_id, m.body)));
    }
}

#[test]
fn the_same_key_twice_stores_one_message_under_the_first_id() {
    let b = Broker::start(&["--shards", "2"]);
    let mut c = Client::connect(b.addr).expect("connect");
    sync_queue(&mut c, "idem");
    let first = c.send_with("idem", "first", &keyed(7)).expect("send");
    let again = c.send_with("idem", "retried", &keyed(7)).expect("send again");
    assert_eq!(again, first, "a repeat is answered with the first message's id");
    let other = c.send_with("idem", "other", &keyed(8)).expect("send");
    assert_ne!(other, first);
    // Sends without a chosen key get a fresh one each: never deduplicated.
    let a = c.send("idem", "plain", 0).expect("send");
    let b2 = c.send("idem", "plain", 0).expect("send");
    assert_ne!(a, b2);
    let mut got = drain(&mut c, "idem");
    got.sort();
    let bodies: Vec<&[u8]> = got.iter().map(|(_, b)| &b[..]).collect();
    assert_eq!(bodies, [&b"first"[..], b"other", b"plain", b"plain"]);
    assert_eq!(got[0].0, first);
}

#[test]
fn a_batch_stores_a_repeated_key_once() {
    let b = Broker::start(&["--shards", "1"]);
    let mut c = Client::connect(b.addr).expect("connect");
    sync_queue(&mut c, "batch");
    let key = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let req = |bodies: &[&str], keys: &[&str]| {
        Request::BatchSendMessage(BatchSendMessage {
            queue: "batch".into(),
            bodies: bodies.iter().map(|s| key(s)).collect(),
            idempotency_keys: keys.iter().map(|s| key(s)).collect(),
            ..Default::default()
        })
    };
    let ids = |r: Response| match r {
        Response::BatchSendMessage(ok) => ok.msg_ids,
        other => panic!("expected BatchSendMessage, got {other:?}"),
    };
    let first = ids(c.call(&req(&["a", "b", "a2"], &["ka", "kb", "ka"])).expect("batch"));
    assert_eq!(first[0], first[2], "the repeated key inside the batch");
    let second = ids(c.call(&req(&["b2", "c"], &["kb", "kc"])).expect("batch"));
    assert_eq!(second[0], first[1], "a key from the earlier batch");
    let got: Vec<Bytes> = drain(&mut c, "batch").into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, [key("a"), key("b"), key("c")]);
}

#[test]
fn keys_survive_kill9_and_restart() {
    let mut b = Broker::start(&["--shards", "2"]);
    let mut c = Client::connect(b.addr).expect("connect");
    sync_queue(&mut c, "durable");
    let ids: Vec<u64> =
        (0..20u128).map(|k| c.send_with("durable", format!("m{k}"), &keyed(1000 + k)).expect("send")).collect();
    drop(c);
    b.kill9();
    b.restart();
    let mut c = Client::connect(b.addr).expect("reconnect");
    for (k, id) in (0..20u128).zip(&ids) {
        let again = c.send_with("durable", format!("m{k} again"), &keyed(1000 + k)).expect("resend");
        assert_eq!(again, *id, "key {k} after the restart");
    }
    let got = drain(&mut c, "durable");
    assert_eq!(got.len(), 20, "nothing stored twice: {got:?}");
}

#[test]
fn a_key_over_the_limit_is_invalid_and_a_version_2_client_still_sends() {
    let b = Broker::start(&["--shards", "1"]);
    let (mut raw, ok) = RawConn::open_with(b.addr, Handshake { version_max: 2, ..Handshake::new("v2") });
    let Reply::Ok(_, Response::Handshake(ok)) = ok else { panic!("handshake: {ok:?}") };
    assert_eq!(ok.version, 2, "a version 2 client is still spoken to");
    raw.create_queue("q");
    let send = |key: Vec<u8>| {
        Request::SendMessage(SendMessage {
            queue: "q".into(),
            body: Bytes::from_static(b"x"),
            idempotency_key: Bytes::from(key),
            ..Default::default()
        })
    };
    let err = raw.call(send(vec![1; IDEMPOTENCY_KEY_BYTES_MAX + 1])).expect_err(ErrorCode::INVALID_PARAMETER);
    assert!(err.message.contains("idempotency_key"), "{}", err.message);
    let at_limit = |raw: &mut RawConn| match raw.call(send(vec![1; IDEMPOTENCY_KEY_BYTES_MAX])) {
        Reply::Ok(_, Response::SendMessage(ok)) => ok.msg_id,
        other => panic!("a key at the limit: {other:?}"),
    };
    assert_eq!(at_limit(&mut raw), at_limit(&mut raw));
    // A keyless (version 2) send is stored every time.
    let a = raw.send_ok("q", "plain");
    let b2 = raw.send_ok("q", "plain");
    assert_ne!(a, b2);
    assert_eq!(raw.queue_info("q").active_msg_num, 3);
}
