//! The CLI over TLS (`cmq --tls --ca-file`, and `--tls-cert/--tls-key` for a
//! broker requiring client certificates), with a CA the test makes itself,
//! and the clear refusals between plaintext and TLS ends.

mod support;

use cmq_integration_tests::tls::TestPki;
use support::cli::{cmq, ok, stderr};
use support::Broker;

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_cli_sends_and_receives_over_tls_and_mutual_tls() {
    let pki = TestPki::new();
    let b = Broker::start(&args(&pki.server_args()));
    let tls = ["--tls", "--ca-file", s(&pki.ca)];
    ok(cmq(b.addr, &[&tls[..], &["create-queue", "q"]].concat()));
    ok(cmq(b.addr, &[&tls[..], &["send", "q", "hello over tls"]].concat()));
    let got = ok(cmq(b.addr, &[&tls[..], &["receive", "q", "--json"]].concat()));
    assert!(got.contains("hello over tls"), "{got}");

    let m = Broker::start(&args(&pki.mtls_server_args()));
    let with_cert = [&tls[..], &["--tls-cert", s(&pki.client_cert), "--tls-key", s(&pki.client_key)]].concat();
    ok(cmq(m.addr, &[&with_cert[..], &["create-queue", "m"]].concat()));
    let refused = cmq(m.addr, &[&tls[..], &["create-queue", "n"]].concat());
    assert_eq!(refused.status.code(), Some(1), "no client certificate: {}", stderr(&refused));
}

#[test]
fn the_cli_says_why_plaintext_and_tls_do_not_meet() {
    let pki = TestPki::new();
    let b = Broker::start(&args(&pki.server_args()));
    let plain_to_tls = cmq(b.addr, &["list-queues"]);
    assert_eq!(plain_to_tls.status.code(), Some(1));
    assert!(stderr(&plain_to_tls).contains("TLS_REQUIRED"), "{}", stderr(&plain_to_tls));

    let p = Broker::start(&[]);
    let tls_to_plain = cmq(p.addr, &["--tls", "--ca-file", s(&pki.ca), "list-queues"]);
    assert_eq!(tls_to_plain.status.code(), Some(1));
    assert!(stderr(&tls_to_plain).contains("without --tls"), "{}", stderr(&tls_to_plain));

    let untrusted = cmq(b.addr, &["--tls", "--ca-file", s(&pki.other_ca), "list-queues"]);
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(stderr(&untrusted).contains("certificate"), "{}", stderr(&untrusted));
}
