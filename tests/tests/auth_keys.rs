//! Key lifecycle: rotation, deletion (which closes the key's connections),
//! policy changes reaching open connections, keys surviving kill -9, and
//! protected mode (no anonymous service beyond loopback).

use std::process::Command;
use std::time::{Duration, Instant};

use cmq_client::{Client, Credentials};
use cmq_integration_tests::broker::cmqd_path;
use cmq_integration_tests::{AdminBroker, Broker, RawConn};
use cmq_protocol::*;

const T: Option<Duration> = Some(Duration::from_secs(10));

fn connect(b: &AdminBroker, id: &str, key: &str) -> Result<Client, cmq_client::ClientError> {
    Client::connect_as(b.addr(), T, Some(Credentials::new(id, key)))
}

fn admin(b: &AdminBroker) -> Client {
    connect(b, &b.secret_id, &b.secret_key).expect("admin connects")
}

/// Connects, retrying while this address is in its failure backoff.
fn connect_after_backoff(b: &AdminBroker, id: &str, key: &str) -> Result<Client, cmq_client::ClientError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(b, id, key) {
            Err(e) if e.to_string().contains("retry in") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => return other,
        }
    }
}

const ALL: &str = r#"{"version":"2.0","statement":[{"effect":"allow","action":"cmq:*","resource":"*"}]}"#;

#[test]
fn rotation_keeps_both_secrets_until_the_old_one_is_deleted() {
    let b = AdminBroker::start(&[]);
    let mut a = admin(&b);
    let old = a.create_key("app", ALL).expect("create");
    assert_eq!(a.create_key("app", ALL).err().and_then(|e| e.code()), Some(ErrorCode::KEY_ALREADY_EXISTS));
    assert_eq!(a.rotate_key("nope").err().and_then(|e| e.code()), Some(ErrorCode::KEY_NOT_FOUND));
    let new = a.rotate_key("app").expect("rotate");
    assert_eq!(new.secret_id, old.secret_id, "same SecretId, second SecretKey");
    assert_ne!(new.secret_key, old.secret_key);
    assert_eq!(a.list_keys().expect("list").iter().find(|k| k.name == "app").map(|k| k.secrets), Some(2));
    let mut on_old = connect(&b, &old.secret_id, &old.secret_key).expect("old works");
    connect(&b, &new.secret_id, &new.secret_key).expect("new works");
    assert!(a.rotate_key("app").is_err(), "one rotation at a time");
    a.delete_key("app", true).expect("retire the old secret");
    let Err(err) = connect(&b, &old.secret_id, &old.secret_key) else { panic!("old refused") };
    assert_eq!(err.code(), Some(ErrorCode::AUTH_FAILED));
    // The refusal put this address in its backoff: the next attempt waits it out.
    let mut on_new = connect_after_backoff(&b, &new.secret_id, &new.secret_key).expect("new still works");
    // The retired SecretKey's connections are closed; the new one's stay.
    let Err(closed) = on_old.ping() else { panic!("a connection made with the retired secret must be closed") };
    assert!(matches!(closed.code(), Some(ErrorCode::AUTH_FAILED) | None), "{closed}");
    on_new.ping().expect("a connection made with the new secret stays");
}

#[test]
fn deleting_a_key_closes_its_connections_and_policy_changes_reach_open_ones() {
    let b = AdminBroker::start(&["--shards", "2"]);
    let mut a = admin(&b);
    a.create_queue("q", &Default::default()).expect("queue");
    let k = a.create_key("app", ALL).expect("create");
    // Idle connections on both shards.
    let mut idle: Vec<RawConn> = (0..4).map(|_| RawConn::open_as(b.addr(), &k.secret_id, &k.secret_key)).collect();
    let mut busy = RawConn::open_as(b.addr(), &k.secret_id, &k.secret_key);
    assert!(busy
        .call(Request::SendMessage(SendMessage { queue: "q".into(), body: "x".into(), ..Default::default() }))
        .is_ok());
    a.set_policy("app", "").expect("take everything away");
    let denied =
        busy.call(Request::SendMessage(SendMessage { queue: "q".into(), body: "x".into(), ..Default::default() }));
    assert_eq!(denied.code(), ErrorCode::ACCESS_DENIED, "the next request already sees the new policy");
    a.set_policy("app", ALL).expect("give it back");
    assert!(busy.call(Request::PurgeQueue(PurgeQueue { queue: "q".into() })).is_ok());
    let started = Instant::now();
    a.delete_key("app", false).expect("delete");
    for c in &mut idle {
        let replies = c.expect_closed();
        assert_eq!(replies.first().map(|r| r.code()), Some(ErrorCode::AUTH_FAILED), "told why: {replies:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(1), "closed within a second: {:?}", started.elapsed());
    busy.send(&Request::Ping(Ping {}));
    busy.expect_closed();
    let Err(refused) = connect(&b, &k.secret_id, &k.secret_key) else { panic!("a deleted key is refused") };
    assert_eq!(refused.code(), Some(ErrorCode::AUTH_FAILED));
    a.ping().expect("the admin is unaffected");
}

#[test]
fn keys_and_policies_survive_kill_9() {
    let mut b = AdminBroker::start(&["--shards", "2"]);
    let mut a = admin(&b);
    let doc = r#"{"version":"2.0","statement":[{"effect":"allow","action":"cmq:SendMessage","resource":"queue/q"}]}"#;
    let k = a.create_key("app", doc).expect("create");
    let rotated = a.rotate_key("app").expect("rotate");
    a.create_key("gone", "").expect("create");
    a.delete_key("gone", false).expect("delete");
    a.create_queue("q", &Default::default()).expect("queue");
    drop(a);
    b.broker.kill9();
    b.broker.restart();
    let mut a = admin(&b);
    let names: Vec<String> = a.list_keys().expect("list").into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["admin", "app"]);
    assert_eq!(a.get_policy("app").expect("policy"), doc);
    let mut app = connect(&b, &k.secret_id, &k.secret_key).expect("first secret survived");
    connect(&b, &rotated.secret_id, &rotated.secret_key).expect("rotated secret survived");
    app.send("q", "x", 0).expect("policy allows this");
    assert_eq!(app.purge_queue("q").err().and_then(|e| e.code()), Some(ErrorCode::ACCESS_DENIED));
    // --init-admin-key again on restart leaves the existing keys alone.
    assert!(b.broker.stderr().contains("has keys already"), "{}", b.broker.stderr());
}

#[test]
fn protected_mode_refuses_anonymous_service_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(cmqd_path())
        .args(["--listen", "0.0.0.0:0", "--http-listen", "off", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("run cmqd");
    assert!(!out.status.success(), "cmqd must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--init-admin-key") && stderr.contains("--allow-anonymous"), "says how: {stderr}");
    // With a key it starts (and requires it).
    let creds = dir.path().join("admin.creds");
    let b = Broker::start(&["--listen", "0.0.0.0:0", "--init-admin-key", creds.to_str().expect("utf-8")]);
    let port = b.addr.port();
    let (id, key) = cmq_integration_tests::auth::read_credentials(&creds);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&creds).expect("creds").permissions().mode() & 0o777, 0o600);
    assert!(b.stderr().contains("created administrator key"), "{}", b.stderr());
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    Client::connect_as(local, T, Some(Credentials::new(id, key))).expect("the key connects");
    assert!(Client::connect_with_timeout(local, T).is_err(), "anonymous is refused");
    // Loopback without keys keeps today's anonymous behaviour, with a warning.
    let open = Broker::start(&[]);
    Client::connect_with_timeout(open.addr, T).expect("anonymous on loopback").ping().expect("ping");
    assert!(open.stderr().contains("serving anonymous clients"), "{}", open.stderr());
}
