//! The web console in a real headless Chromium: tests/console/console_test.py
//! (Playwright for Python, installed by `make console-venv` into
//! `.venv-console`, driving Debian's `chromium`) signs in, creates a queue,
//! sends, peeks and purges from the pages, starts and cancels a redrive,
//! subscribes a queue to a topic and sees a published message arrive, and
//! sees a limited key's purge refused, an HTTP subscription's push failure
//! reason, and a broker without keys serving the console without sign-in
//! (and saying so). Screenshots of each page are left in
//! target/console-screenshots/.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cmq_integration_tests::{dead_letter_after, poll_until, refused_url, AdminBroker, Broker, RawConn};
use cmq_protocol::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python of the console's virtual environment (`make console-venv`).
fn python() -> PathBuf {
    let python = root().join(".venv-console/bin/python");
    assert!(python.exists(), "{} is missing: run `make console-venv` (make test does)", python.display());
    python
}

/// Debian's chromium (`CHROMIUM` overrides).
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(path.exists(), "{} is missing: run `make console-venv` (make test does)", path.display());
    path
}

/// A key allowed everything but purging and deleting queues.
const NO_PURGE_POLICY: &str = r#"{"version":"2.0","statement":[
    {"effect":"allow","action":["cmq:*"],"resource":["*"]},
    {"effect":"deny","action":["cmq:PurgeQueue","cmq:DeleteQueue"],"resource":["*"]}]}"#;

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

    let shots = root().join("target/console-screenshots");
    let base = format!("http://{http}");
    let out = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console/console_test.py"))
        .args([&base, &b.secret_id, &b.secret_key, &limited.secret_id, &limited.secret_key])
        .arg(&shots)
        .arg(chromium())
        .args([refused_url("/hook"), anonymous_base])
        .output()
        .expect("run the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "console browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 15, "{stdout}");
    for page in
        ["signin", "overview", "queues", "queue", "deadletters", "topics", "topic", "cluster", "denied", "anonymous"]
    {
        assert!(shots.join(format!("{page}.png")).exists(), "screenshot of {page}");
    }
}
