//! Per-key limits (`cmqd --key-connections-max N`, `--key-requests-per-second N`):
//! at the boundary, per key (another key is unaffected), and the places
//! and windows coming back. The exact window arithmetic is unit-tested in
//! broker/src/auth/limits.rs; here the real broker over real sockets.

use std::time::{Duration, Instant};

use cmq_client::{Client, Credentials};
use cmq_integration_tests::auth::{authenticate_request, unix_ms};
use cmq_integration_tests::{AdminBroker, RawConn};
use cmq_protocol::*;

const T: Option<Duration> = Some(Duration::from_secs(10));
const ALL: &str = r#"{"version":"2.0","statement":[{"effect":"allow","action":"cmq:*","resource":"*"}]}"#;

/// Challenge and Authenticate on a fresh connection; the broker's answer code (0: accepted).
fn try_authenticate(b: &AdminBroker, id: &str, key: &str) -> (RawConn, ErrorCode) {
    let mut c = RawConn::connect(b.addr());
    let nonce = c.challenge();
    let (req, _) = authenticate_request(&nonce, id, key, unix_ms());
    let code = c.call(Request::Authenticate(req)).code();
    (c, code)
}

#[test]
fn a_key_gets_at_most_its_connections_and_gets_them_back_on_close() {
    let b = AdminBroker::start(&["--shards", "2", "--key-connections-max", "2"]);
    let mut admin =
        Client::connect_as(b.addr(), T, Some(Credentials::new(&b.secret_id, &b.secret_key))).expect("admin");
    let k = admin.create_key("app", ALL).expect("key");
    let first = RawConn::open_as(b.addr(), &k.secret_id, &k.secret_key);
    let _second = RawConn::open_as(b.addr(), &k.secret_id, &k.secret_key);
    let (mut third, code) = try_authenticate(&b, &k.secret_id, &k.secret_key);
    assert_eq!(code, ErrorCode::TOO_MANY_KEY_CONNECTIONS, "the third of a 2-connection key");
    assert!(third.expect_closed().is_empty(), "and its connection is closed");
    // Another key counts on its own: the admin client (one connection per shard) still works.
    admin.ping().expect("another key is unaffected");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, code) = try_authenticate(&b, &k.secret_id, &k.secret_key);
        if code == ErrorCode(0) {
            break;
        }
        assert_eq!(code, ErrorCode::TOO_MANY_KEY_CONNECTIONS);
        assert!(Instant::now() < deadline, "a closed connection's place never came back");
        std::thread::yield_now();
    }
}

#[test]
fn a_key_over_its_request_rate_is_refused_until_the_next_second() {
    let b = AdminBroker::start(&["--key-requests-per-second", "50"]);
    let mut admin =
        Client::connect_as(b.addr(), T, Some(Credentials::new(&b.secret_id, &b.secret_key))).expect("admin");
    let k = admin.create_key("app", ALL).expect("key");
    let mut c = RawConn::open_as(b.addr(), &k.secret_id, &k.secret_key);
    // 300 pipelined pings: at most 50 per one-second window pass (at most
    // two windows are touched in the time they take), the rest are refused.
    let ids: Vec<u64> = (0..300).map(|_| c.send(&Request::Ping(Ping {}))).collect();
    let (mut ok, mut refused) = (0, 0);
    for _ in &ids {
        match c.read().expect("an answer").code() {
            ErrorCode(0) => ok += 1,
            ErrorCode::REQUEST_RATE_EXCEEDED => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((50..=100).contains(&ok), "{ok} passed of 300 at 50/s");
    assert_eq!(ok + refused, 300);
    // The connection stays open, and a later window admits requests again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.call(Request::Ping(Ping {})).code() != ErrorCode(0) {
        assert!(Instant::now() < deadline, "the next window never admitted a request");
        std::thread::sleep(Duration::from_millis(20));
    }
    admin.ping().expect("another key has its own window");
}
