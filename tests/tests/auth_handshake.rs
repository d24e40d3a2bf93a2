//! Authentication on the binary protocol: the challenge-response before the
//! handshake, and every way an attempt can be wrong (each refused with
//! AUTH_FAILED and the connection closed, other clients unaffected).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{Client, ClientError, Credentials};
use cmq_integration_tests::auth::{authenticate_request, unix_ms};
use cmq_integration_tests::http::Metrics;
use cmq_integration_tests::{AdminBroker, RawConn};
use cmq_protocol::auth::AUTH_METHOD_V1;
use cmq_protocol::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The first reply is AUTH_FAILED and the server then closes.
fn assert_refused(c: &mut RawConn, req: Request, what: &str) -> String {
    c.send(&req);
    let replies = c.expect_closed();
    let first = replies.first().unwrap_or_else(|| panic!("{what}: closed without an answer"));
    assert_eq!(first.code(), ErrorCode::AUTH_FAILED, "{what}: {first:?}");
    match first {
        cmq_integration_tests::Reply::Err(_, e) => e.message.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn a_key_connects_and_anonymous_clients_are_refused() {
    let b = AdminBroker::start(&["--shards", "2"]);
    let creds = Credentials::new(&b.secret_id, &b.secret_key);
    let mut c = Client::connect_as(b.addr(), Some(Duration::from_secs(10)), Some(creds)).expect("authenticated");
    let me = c.who_am_i().expect("whoami");
    assert_eq!(
        (me.key_name.as_str(), me.secret_id.as_str(), me.auth_mode.as_str()),
        ("admin", &*b.secret_id, "required")
    );
    c.create_queue("q", &Default::default()).expect("admin may create");
    c.send("q", "hello", 0).expect("and send");
    // A queue on the other shard: the client's second connection authenticates too.
    for i in 0..4 {
        c.create_queue(&format!("q{i}"), &Default::default()).expect("every shard");
    }
    match Client::connect_with_timeout(b.addr(), Some(Duration::from_secs(10))) {
        Err(ClientError::Handshake { code: Some(ErrorCode::AUTH_FAILED), message }) => {
            assert!(message.contains("requires authentication"), "{message}")
        }
        Err(e) => panic!("anonymous client: {e}"),
        Ok(_) => panic!("anonymous client connected to a broker with keys"),
    }
    let mut raw = RawConn::connect_from(b.addr(), ip(20));
    assert_refused(&mut raw, Request::Handshake(Handshake::new("anon")), "anonymous handshake");
    let stderr = b.broker.stderr();
    assert!(stderr.contains("authentication failed from 127.0.0.20"), "logged with the address:\n{stderr}");
    assert!(!stderr.contains(&b.secret_key), "a SecretKey never reaches the log");
}

#[test]
fn every_bad_attempt_is_refused_and_others_are_unaffected() {
    let b = AdminBroker::start(&[]);
    let (id, key) = (b.secret_id.clone(), b.secret_key.clone());
    let mut good = RawConn::open_as(b.addr(), &id, &key);
    let now = unix_ms();
    let mut n = 30u8;
    let mut fresh = || {
        n += 1;
        RawConn::connect_from(b.addr(), ip(n))
    };
    let failures = std::cell::Cell::new(0u32);
    let tamper = |what: &str, f: &dyn Fn(&Bytes) -> Request, c: &mut RawConn| {
        let nonce = c.challenge();
        let msg = assert_refused(c, f(&nonce), what);
        failures.set(failures.get() + 1);
        msg
    };
    tamper("wrong SecretKey", &|n| Request::Authenticate(authenticate_request(n, &id, "wrong", now).0), &mut fresh());
    tamper(
        "unknown SecretId",
        &|n| Request::Authenticate(authenticate_request(n, "AKIDnobody", &key, now).0),
        &mut fresh(),
    );
    let msg = tamper(
        "stale timestamp",
        &|n| Request::Authenticate(authenticate_request(n, &id, &key, now - 10 * 60 * 1000).0),
        &mut fresh(),
    );
    assert!(msg.contains("timestamp"), "{msg}");
    let truncated = |n: &Bytes| {
        let mut r = authenticate_request(n, &id, &key, now).0;
        r.mac = r.mac.slice(..31);
        Request::Authenticate(r)
    };
    tamper("truncated MAC", &truncated, &mut fresh());
    // Oversized: a 33-byte MAC fails to decode (its limit is 32) and closes the connection too.
    let oversized = |n: &Bytes| {
        let mut r = authenticate_request(n, &id, &key, now).0;
        r.mac = Bytes::from(vec![0u8; 33]);
        Request::Authenticate(r)
    };
    tamper("oversized MAC", &oversized, &mut fresh());
    // A replayed Authenticate: recorded from a successful attempt, sent on a
    // new connection (a new nonce) and again on its own connection.
    let mut victim = fresh();
    let nonce = victim.challenge();
    let (recorded, _) = authenticate_request(&nonce, &id, &key, unix_ms());
    victim.call(Request::Authenticate(recorded.clone())).ok();
    let msg = assert_refused(&mut victim, Request::Authenticate(recorded.clone()), "replay on the same connection");
    assert!(msg.contains("AuthChallenge"), "{msg}");
    failures.set(failures.get() + 1);
    tamper("replay on another connection", &|_| Request::Authenticate(recorded.clone()), &mut fresh());
    // Authenticate with no challenge, and a second challenge.
    assert_refused(&mut fresh(), Request::Authenticate(recorded.clone()), "no challenge");
    failures.set(failures.get() + 1);
    let mut twice = fresh();
    twice.challenge();
    assert_refused(&mut twice, Request::AuthChallenge(AuthChallenge {}), "second challenge");
    failures.set(failures.get() + 1);
    // The method claimed without authenticating.
    let mut hs = Handshake::new("liar");
    hs.auth_method = AUTH_METHOD_V1.into();
    assert_refused(&mut fresh(), Request::Handshake(hs), "cmq-auth-v1 without authenticating");
    failures.set(failures.get() + 1);
    // An oversized frame before the handshake is cut off at the handshake frame limit.
    let mut big = fresh();
    let mut frame = Vec::new();
    let huge = Authenticate { secret_id: "x".into(), mac: Bytes::from(vec![0u8; 20_000]), ..Default::default() };
    Request::Authenticate(huge).encode_frame(1, &mut frame);
    big.write_raw(&frame);
    let replies = big.expect_closed();
    assert_eq!(replies.first().map(|r| r.code()), Some(ErrorCode::FRAME_TOO_LARGE));
    // Nothing leaked: the broker still serves the authenticated client.
    good.create_queue("still-fine");
    assert!(good.ping().is_ok());
    let m = Metrics::scrape(b.broker.http_addr.expect("http"));
    assert_eq!(m.value("cmq_auth_failures_total", &[]), f64::from(failures.get()));
    let open: f64 = m.values("cmq_connections", &[]).iter().sum();
    assert_eq!(open, 1.0, "only the good connection is left");
}

#[test]
fn a_guessing_address_is_slowed_down() {
    let b = AdminBroker::start(&[]);
    let guesser = ip(60);
    let mut c = RawConn::connect_from(b.addr(), guesser);
    let nonce = c.challenge();
    let wrong = authenticate_request(&nonce, &b.secret_id, "guess", unix_ms()).0;
    assert_refused(&mut c, Request::Authenticate(wrong), "a wrong guess");
    // Right away, even the right key is refused from that address...
    let mut again = RawConn::connect_from(b.addr(), guesser);
    let msg = assert_refused(&mut again, Request::AuthChallenge(AuthChallenge {}), "during the backoff");
    assert!(msg.contains("retry in"), "{msg}");
    // ...while another address is not slowed.
    RawConn::connect_from(b.addr(), ip(61)).authenticate(&b.secret_id, &b.secret_key);
    // Once the wait is over the guesser's address may try again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = RawConn::connect_from(b.addr(), guesser);
        c.send(&Request::AuthChallenge(AuthChallenge {}));
        match c.read() {
            Some(r) if r.code() == ErrorCode(0) => break,
            other => assert!(Instant::now() < deadline, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
