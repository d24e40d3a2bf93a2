//! Message bodies through `cmq`: from stdin or a file as one message,
//! base64 in and out, one unambiguous line per received message, receipt
//! handles for scripts, and `receive --follow`. Against the real cmqd.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use support::cli::{cmq, cmq_with_bytes, cmq_with_stdin, json, ok, stderr, Running};
use support::{broker, client, wait_until, Broker, EVENT_TIMEOUT};

fn broker_with_queue(name: &str) -> Broker {
    let broker = broker(2);
    ok(cmq(broker.addr, &["create-queue", name, "--max-msg-size", "1048576"]));
    broker
}

/// The body of the one message waiting in `queue`, received and deleted.
fn only_body(broker: &Broker, queue: &str) -> Vec<u8> {
    let mut c = client(broker.addr);
    let got = c.receive_batch(queue, 16, Some(0)).expect("receive");
    assert_eq!(got.len(), 1, "exactly one message: {got:?}");
    c.delete_message(queue, got[0].receipt_handle).expect("delete");
    got[0].body.to_vec()
}

#[test]
fn send_takes_all_of_stdin_or_a_file_as_one_message() {
    let broker = broker_with_queue("q");
    let addr = broker.addr;
    let text = "line 1\nline 2\n\nline 4 after an empty one\n";
    let id = ok(cmq_with_stdin(addr, &["send", "q", "-"], text));
    assert!(id.trim().parse::<u64>().is_ok(), "one msgId: {id:?}");
    assert_eq!(only_body(&broker, "q"), text.as_bytes(), "byte for byte, newlines included");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("order.json");
    let doc = b"{\n  \"order\": 7,\n  \"lines\": [1, 2]\n}\n";
    std::fs::write(&path, doc).expect("write");
    let path = path.to_str().expect("utf-8 path");
    let sent = json(cmq(addr, &["--json", "send", "q", "--file", path]));
    assert!(sent["msgId"].is_string(), "{sent}");
    assert_eq!(only_body(&broker, "q"), doc);
}

#[test]
fn inputs_larger_than_a_message_are_refused_before_sending() {
    let broker = broker_with_queue("q");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big");
    std::fs::write(&path, vec![b'x'; 1024 * 1024 + 1]).expect("write");
    let out = cmq(broker.addr, &["send", "q", "--file", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("holds more than 1048576 bytes"), "{err}");
    let missing = cmq(broker.addr, &["send", "q", "--file", "/nonexistent/file"]);
    assert!(stderr(&missing).starts_with("error: cannot read /nonexistent/file"), "{}", stderr(&missing));
    // Read before connecting: the file is the problem reported, not the broker.
    let nowhere = support::cli::cmq_bare(&["--server", "127.0.0.1:1", "send", "q", "--file", "/nonexistent/file"]);
    assert!(stderr(&nowhere).starts_with("error: cannot read /nonexistent/file"), "{}", stderr(&nowhere));
    let info = json(cmq(broker.addr, &["--json", "queue-info", "q"]));
    assert_eq!(info["activeMsgNum"], 0, "nothing was sent");
}

#[test]
fn base64_carries_binary_bodies_in_and_out() {
    let broker = broker_with_queue("bin");
    let addr = broker.addr;
    let body: Vec<u8> = (0..=255u8).chain([b'\n', 0, b'\\']).collect();
    // As base64(1) writes it: wrapped at 76 columns.
    let encoded = STANDARD.encode(&body);
    let wrapped: String = encoded.as_bytes().chunks(76).map(|l| format!("{}\n", String::from_utf8_lossy(l))).collect();
    ok(cmq_with_stdin(addr, &["send", "bin", "-", "--base64"], &wrapped));
    let printed = ok(cmq(addr, &["receive", "bin", "--base64", "--print", "handle,body"]));
    let (handle, printed) = printed.split_once('\t').expect("two fields");
    assert_eq!(printed, format!("{encoded}\n"), "one line, the exact bytes");
    ok(cmq(addr, &["change-visibility", "bin", handle, "0"]));
    let got = json(cmq(addr, &["--json", "receive", "bin", "--base64", "--delete"]));
    assert_eq!(STANDARD.decode(got[0]["msgBody"].as_str().expect("msgBody")).expect("base64"), body);

    ok(cmq(addr, &["send", "bin", &STANDARD.encode(b"\xff\xfe"), "--base64"]));
    let lines = format!("{}\n{}\n", STANDARD.encode(b"\x00one"), STANDARD.encode(b"two\n"));
    ok(cmq_with_stdin(addr, &["send-batch", "bin", "--base64"], &lines));
    let all = ok(cmq(addr, &["receive", "bin", "--max", "16", "--base64", "--delete"]));
    let decoded: Vec<Vec<u8>> = all.lines().map(|l| STANDARD.decode(l).expect("base64")).collect();
    assert_eq!(decoded, [&b"\xff\xfe"[..], b"\x00one", b"two\n"]);

    let out = cmq(addr, &["send", "bin", "not base64!", "--base64"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: --base64: the body is not valid base64"), "{}", stderr(&out));
    let out = cmq_with_stdin(addr, &["send-batch", "bin", "--base64"], "QQ==\n!!\n");
    assert!(stderr(&out).contains("line 2 is not valid base64"), "{}", stderr(&out));
    assert!(stderr(&out).contains("note: no message was sent"), "{}", stderr(&out));
}

/// A receipt handle of the message waiting in `queue` (receives it).
fn receipt(broker: &Broker, queue: &str) -> String {
    let handle = ok(cmq(broker.addr, &["receive", queue, "--print", "handle"]));
    handle.trim().to_owned()
}

#[test]
fn plain_receive_prints_exactly_one_line_per_message() {
    let broker = broker_with_queue("q");
    let addr = broker.addr;
    let bodies: [&[u8]; 4] = [b"two\nlines", b"tab\there, cr\r", b"a \\n that is not a newline", b"bad \xff byte"];
    for body in bodies {
        ok(cmq_with_bytes(addr, &["send", "q", "-"], body));
    }
    let printed = ok(cmq(addr, &["receive", "q", "--max", "16"]));
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        ["two\\nlines", "tab\\there, cr\\r", "a \\\\n that is not a newline", "bad \\xFF byte"],
        "one line each, nothing ambiguous"
    );
}

#[test]
fn print_handle_lets_a_script_delete_what_it_received() {
    let broker = broker_with_queue("q");
    let addr = broker.addr;
    let id = ok(cmq(addr, &["send", "q", "hello"])).trim().to_owned();
    let handle = receipt(&broker, "q");
    assert!(handle.parse::<u128>().is_ok(), "{handle:?}");
    ok(cmq(addr, &["change-visibility", "q", &handle, "120"]));
    ok(cmq(addr, &["delete", "q", &handle]));
    assert_eq!(json(cmq(addr, &["--json", "queue-info", "q"]))["inactiveMsgNum"], 0, "deleted");

    ok(cmq_with_stdin(addr, &["send", "q", "-"], "multi\tpart\nbody"));
    let line = ok(cmq(addr, &["receive", "q", "--print", "id,handle,body"]));
    let fields: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
    let [got_id, got_handle, got_body] = fields[..] else { panic!("three tab-separated fields: {line:?}") };
    assert!(got_id.parse::<u64>().is_ok_and(|i| i.to_string() != id), "{line:?}");
    ok(cmq(addr, &["delete", "q", got_handle]));
    assert_eq!(got_body, "multi\\tpart\\nbody");
}

#[test]
fn follow_streams_messages_and_deletes_them_until_interrupted() {
    let broker = broker_with_queue("q");
    let follower = Running::start(broker.addr, &["receive", "q", "--follow", "--delete", "--wait", "1"]);
    let mut c = client(broker.addr);
    for round in [&["one", "two", "three"][..], &["four", "five"]] {
        for body in round {
            c.send("q", *body, 0).expect("send");
        }
        let got: Vec<String> = round.iter().map(|_| follower.line(EVENT_TIMEOUT)).collect();
        assert_eq!(got, round, "printed as they arrive, in order");
    }
    wait_until("every printed message to be deleted", || {
        let info = c.queue_info("q").expect("info");
        (info.active_msg_num, info.inactive_msg_num) == (0, 0)
    });
    drop(follower); // interrupted (killed)

    // Another queue: a long poll of the killed follower that the broker had
    // not yet seen end could take a message sent to q now (at least once:
    // it would come back only after its visibility timeout).
    c.create_queue("q2", &Default::default()).expect("create");
    let follower = Running::start(broker.addr, &["--json", "receive", "q2", "--follow", "--wait", "1"]);
    c.send("q2", "six", 0).expect("send");
    let object: Value = serde_json::from_str(&follower.line(EVENT_TIMEOUT)).expect("one JSON object a line");
    assert_eq!(object["msgBody"], "six");
    assert!(object["receiptHandle"].is_string(), "{object}");
}

/// `cmq receive --follow --delete | head -1`: once nobody reads, cmq ends
/// quietly, and the message it could not print is not deleted.
#[test]
fn follow_ends_when_its_reader_goes_away_without_deleting_unprinted_messages() {
    let broker = broker_with_queue("q");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cmq"))
        .args(["--server", &broker.addr.to_string(), "receive", "q", "--follow", "--delete", "--wait", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut c = client(broker.addr);
    c.send("q", "first", 0).expect("send");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line");
    assert_eq!(line, "first\n");
    drop(reader); // the reader goes away
    c.send("q", "second", 0).expect("send");
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success(), "a closed pipe ends the stream quietly: {}", stderr(&out));
    let info = c.queue_info("q").expect("info");
    assert_eq!(info.active_msg_num + info.inactive_msg_num, 1, "second was not printed, so not deleted");
}
