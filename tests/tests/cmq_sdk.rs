//! The CMQ API 2.0 gateway driven by the real Python SDK
//! (`qcloud-cmq-sdk-py3`, installed by `make sdk-venv` into `.venv-cmq-sdk`):
//! tests/cmq_sdk/queues.py runs every queue action against a real cmqd
//! with keys, and this test checks the binary side of the mixed exchange.

use std::time::Duration;

use bytes::Bytes;
use cmq_client::{Client, Credentials};
use cmq_integration_tests::python::{Script, SDK_VENV};
use cmq_integration_tests::AdminBroker;
use cmq_protocol::*;

/// A key allowed everything but sending.
const NO_SEND_POLICY: &str = r#"{"version":"2.0","statement":[
    {"effect":"allow","action":["cmq:*"],"resource":["*"]},
    {"effect":"deny","action":["cmq:SendMessage"],"resource":["*"]}]}"#;

/// Runs an SDK script with these arguments; asserts it passed at least `checks` checks.
fn run_sdk_script(name: &str, args: &[&str], checks: usize) {
    let cwd = tempfile::tempdir().expect("tmp"); // the SDK writes its log file into the working directory
    Script::new(SDK_VENV, &format!("tests/cmq_sdk/{name}")).args(args).current_dir(cwd.path()).run(checks);
}

fn create_queue(c: &mut Client, name: &str) {
    let r = c.call(&Request::CreateQueue(CreateQueue { queue: name.into(), attributes: Default::default() }));
    assert!(matches!(r, Ok(Response::CreateQueue(_))), "{r:?}");
}

#[test]
fn python_sdk_queue_actions_conform() {
    let b = AdminBroker::start(&[]);
    let http = b.broker.http_addr.expect("HTTP port");
    let creds = Credentials::new(&b.secret_id, &b.secret_key);
    let mut admin = Client::connect_as(b.addr(), Some(Duration::from_secs(10)), Some(creds)).expect("admin");
    let key = CreateKey { name: "nosend".into(), policy: NO_SEND_POLICY.into() };
    let Ok(Response::CreateKey(limited)) = admin.call(&Request::CreateKey(key)) else { panic!("CreateKey") };
    create_queue(&mut admin, "mixin");
    create_queue(&mut admin, "mixout");
    let send = SendMessage { queue: "mixin".into(), body: Bytes::from_static(b"from-binary"), ..Default::default() };
    assert!(matches!(admin.call(&Request::SendMessage(send)), Ok(Response::SendMessage(_))));

    let endpoint = format!("http://{http}");
    let args = [endpoint.as_str(), &b.secret_id, &b.secret_key, &limited.secret_id, &limited.secret_key];
    run_sdk_script("queues.py", &args, 40);

    // HTTP -> binary.
    let recv = ReceiveMessage { queue: "mixout".into(), polling_wait_seconds: Some(0) };
    match admin.call(&Request::ReceiveMessage(recv)) {
        Ok(Response::ReceiveMessage(m)) => assert_eq!(&m.body[..], b"from-http"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn python_sdk_topic_and_subscription_actions_conform() {
    let b = AdminBroker::start(&[]);
    let endpoint = format!("http://{}", b.broker.http_addr.expect("HTTP port"));
    run_sdk_script("topics.py", &[&endpoint, &b.secret_id, &b.secret_key], 25);
}
