//! What `cmq` says when something is refused, unreachable or mistyped:
//! against the real cmqd, and a scripted server where one must stay silent.

mod support;

use std::net::TcpListener;

use cmq_protocol::{Empty, Opcode, Request, Response};
use serde_json::Value;
use support::cli::{broker_with_queue, cmq, cmq_bare, cmq_with_stdin, json, ok, stderr, stdout};
use support::scripted::{silent_server, ScriptedServer};
use support::tap::Tap;
use support::{broker, client, wait_until};

#[test]
fn deleting_a_queue_that_holds_messages_needs_force_without_a_terminal() {
    let broker = broker_with_queue("full");
    ok(cmq(broker.addr, &["create-queue", "empty"]));
    ok(cmq_with_stdin(broker.addr, &["send-batch", "full"], "a\nb\n"));
    let tap = Tap::start(broker.addr);

    // The tests' stdin is a pipe: nobody to ask, so nothing is deleted.
    let out = cmq_with_stdin(tap.addr, &["delete-queue", "full"], "y\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: queue full holds 2 messages (2 ready, 0 in flight, 0 delayed): refusing to delete it without \
         --force (stdin is not a terminal to confirm on)\n"
    );
    assert_eq!(tap.count(Opcode::DeleteQueue), 0, "refused before asking the broker to delete");
    assert_eq!(json(cmq(broker.addr, &["--json", "queue-info", "full"]))["activeMsgNum"], 2);

    assert_eq!(ok(cmq(tap.addr, &["delete-queue", "empty"])), "", "an empty queue goes without asking");
    assert_eq!(json(cmq(tap.addr, &["--json", "delete-queue", "full", "--force"])), serde_json::json!({}));
    assert_eq!(tap.count(Opcode::DeleteQueue), 2);
    let out = cmq(broker.addr, &["delete-queue", "full"]);
    assert!(stderr(&out).starts_with("error: 4440 QUEUE_NOT_FOUND"), "{}", stderr(&out));
}

#[test]
fn a_connect_timeout_says_what_happened() {
    let (server, release_tx) = silent_server();
    let addr = server.addr().to_string();
    let out = cmq_bare(&["--server", &addr, "--timeout", "1", "ping"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), format!("error: timed out after 1 s connecting to {addr} (is cmqd running?)\n"));
    let out = cmq_bare(&["--server", &addr, "--json", "--timeout", "1", "ping"]);
    let body: Value = serde_json::from_str(&stdout(&out)).expect("error JSON");
    assert_eq!((body["code"].clone(), body["name"].as_str()), (Value::Null, Some("TIMEOUT")));
    drop(release_tx);
}

/// `--server HOST` means HOST:7700. The test serves 127.0.0.2:7700 itself
/// when it can; when something else holds that port, the answer still
/// shows where cmq went.
#[test]
fn a_server_without_a_port_is_reached_on_7700() {
    let Ok(listener) = TcpListener::bind("127.0.0.2:7700") else {
        let out = cmq_bare(&["--server", "127.0.0.2", "--timeout", "1", "ping"]);
        assert!(stderr(&out).contains("127.0.0.2:7700") || stdout(&out).starts_with("pong"), "{out:?}");
        return;
    };
    let _server = ScriptedServer::start_on(listener, |mut peer| {
        peer.accept_handshake(1, 0);
        while let Some((id, req)) = peer.read_request() {
            assert!(matches!(req, Request::Ping(_)), "{req:?}");
            peer.respond(id, &Response::Ping(Empty {}));
        }
    });
    let out = cmq_bare(&["--server", "127.0.0.2", "ping"]);
    assert!(stdout(&out).starts_with("pong from fake-cmqd/0"), "{out:?}");
    let out = cmq_bare(&["--server", "localhost:", "ping"]);
    assert_eq!(out.status.code(), Some(2), "a bad address is a usage error");
    assert!(stderr(&out).contains("the port must be a number from 1 to 65535"), "{}", stderr(&out));
}

#[test]
fn negative_numbers_get_a_range_error() {
    let broker = broker_with_queue("q");
    for (args, range) in [
        (&["receive", "q", "--wait", "-5"][..], "-5 is not in 0..=30"),
        (&["send", "q", "x", "--delay", "-1"], "-1 is not in 0..=4294967295"),
        (&["message", "q", "-7"], "-7 is not in 0..=18446744073709551615"),
    ] {
        let out = cmq(broker.addr, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(range), "{args:?}: {err}");
        assert!(!err.contains("-- -"), "no `-- -5` tip: {err}");
    }
}

#[test]
fn a_refused_batch_says_nothing_was_sent() {
    let broker = broker(2);
    let lines: String = (0..40).map(|i| format!("m{i}\n")).collect();
    let out = cmq_with_stdin(broker.addr, &["send-batch", "missing"], &lines);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "note: no message was sent\nnote: lines 1-40: not sent\n\
         error: 4440 QUEUE_NOT_FOUND: queue \"missing\" does not exist\n"
    );
}

#[test]
fn a_batch_refused_in_the_middle_says_exactly_which_lines_went() {
    let broker = broker(2);
    ok(cmq(broker.addr, &["create-queue", "small", "--max-msg-size", "1024"]));
    // Lines 17-32 are one batch, refused whole for its one oversized body;
    // the batches before and after it are stored.
    let mut lines: Vec<String> = (1..=40).map(|i| format!("m{i}")).collect();
    lines[20] = "x".repeat(2000);
    let out = cmq_with_stdin(broker.addr, &["send-batch", "small"], &(lines.join("\n") + "\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 16, "the ids of lines 1-16, in order");
    let err = stderr(&out);
    let notes: Vec<&str> = err.lines().collect();
    assert_eq!(notes[0], "note: 16 messages were sent (lines 1-16, msgIds printed)");
    assert_eq!(notes[1], "note: lines 17-32: not sent");
    assert!(notes[2].starts_with("note: lines 33-40: sent after all, msgIds "), "{err}");
    assert!(notes[3].starts_with("error: 4400 MESSAGE_TOO_LARGE"), "{err}");
    assert!(!err.contains("may or may not"), "every outcome is known: {err}");
    let mut c = client(broker.addr);
    wait_until("24 messages", || c.queue_info("small").expect("info").active_msg_num == 24);
}
