//! The web console in a real headless Chromium: tests/console/console_test.py
//! (Playwright for Python, installed by `make console-venv` into
//! `.venv-console`, driving Debian's `chromium`) signs in, creates a queue,
//! sends, peeks and purges from the pages, starts and cancels a redrive,
//! subscribes a queue to a topic and sees a published message arrive, and
//! sees a limited key's purge refused, an HTTP subscription's push failure
//! reason, and a broker without keys serving the console without sign-in
//! (and saying so). Screenshots of each page are left in
//! target/console-screenshots/.

use std::time::Duration;

use cmq_integration_tests::console::{assert_screenshots, chromium, clear_screenshots, screenshots_dir};
use cmq_integration_tests::python::{Script, CONSOLE_VENV};
use cmq_integration_tests::{dead_letter_after, poll_until, refused_url, AdminBroker, Broker, RawConn};
use cmq_protocol::*;

/// A key allowed everything but purging and deleting queues.
const NO_PURGE_POLICY: &str = r#"{"version":"2.0","statement":[
    {"effect":"allow","action":["cmq:*"],"resource":["*"]},
    {"effect":"deny","action":["cmq:PurgeQueue","cmq:DeleteQueue"],"resource":["*"]}]}"#;

/// The screenshot of each page the script leaves (`NAME.png`).
const PAGES: &[&str] =
    &["signin", "overview", "queues", "queue", "deadletters", "topics", "topic", "cluster", "denied", "anonymous"];

#[test]
fn console_pages_in_a_real_browser() {
    let b = AdminBroker::start(&[]);
    let http = b.broker.http_addr.expect("HTTP port");
    let mut admin = RawConn::open_as(b.addr(), &b.secret_id, &b.secret_key);
    let key = CreateKey { name: "nopurge".into(), policy: NO_PURGE_POLICY.into() };
    let Response::CreateKey(limited) = admin.call(Request::CreateKey(key)).ok() else { panic!("CreateKey") };

    // A dead-letter queue with messages for the redrive page.
    admin.create_queue("dlq");
    admin.create_queue_attrs("src", dead_letter_after("dlq", 1, 1));
    admin.send_and_poison("src", 5, "poison");
    poll_until(Duration::from_secs(30), "the poisoned messages reach the DLQ", || {
        let n = admin.queue_info("dlq").active_msg_num;
        if n == 5 {
            Ok(())
        } else {
            Err(format!("{n} in the DLQ"))
        }
    });

    // No keys, loopback: the console needs no sign-in there.
    let anonymous = Broker::start(&[]);
    let anonymous_base = format!("http://{}", anonymous.http_addr.expect("HTTP port"));

    let shots = screenshots_dir();
    let base = format!("http://{http}");
    clear_screenshots(PAGES);
    Script::new(CONSOLE_VENV, "tests/console/console_test.py")
        .args([&base, &b.secret_id, &b.secret_key, &limited.secret_id, &limited.secret_key])
        .arg(&shots)
        .arg(chromium())
        .args([refused_url("/hook"), anonymous_base])
        .run(15);
    assert_screenshots(PAGES);
}
