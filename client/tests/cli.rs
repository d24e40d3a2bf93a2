//! The `cmq` binary end to end against the fake broker.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use cmq_client::Client;
use cmq_protocol::{Opcode, QueueAttributesUpdate};
use serde_json::Value;
use support::{FakeBroker, CLIENT_TIMEOUT};

fn cmq(addr: SocketAddr, args: &[&str]) -> Output {
    cmq_with_stdin(addr, args, "")
}

fn cmq_with_stdin(addr: SocketAddr, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cmq"))
        .arg("--server")
        .arg(addr.to_string())
        .args(["--timeout", "5"])
        .args(args)
        .env_remove("CMQ_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmq");
    let mut pipe = child.stdin.take().expect("stdin piped");
    pipe.write_all(stdin.as_bytes()).expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("cmq finished")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "exit {:?}, stderr: {}", o.status.code(), stderr(&o));
    stdout(&o)
}

fn json(o: Output) -> Value {
    serde_json::from_str(&ok(o)).expect("stdout is one JSON document")
}

fn broker_with_queue(name: &str) -> FakeBroker {
    let broker = FakeBroker::start(2, |hint| hint.unwrap_or(0));
    ok(cmq(broker.addr(), &["create-queue", name]));
    broker
}

#[test]
fn create_queue_prints_the_id_and_queue_info_uses_cmq_names() {
    let broker = FakeBroker::start(2, |hint| hint.unwrap_or(0));
    let id = ok(cmq(broker.addr(), &["create-queue", "jobs", "--visibility-timeout", "60", "--flush", "async"]));
    let id = id.trim();
    assert!(id.parse::<u64>().is_ok(), "{id:?}");

    let info = json(cmq(broker.addr(), &["--json", "queue-info", "jobs"]));
    let expected_keys = [
        "queueName",
        "queueId",
        "maxMsgHeapNum",
        "pollingWaitSeconds",
        "visibilityTimeout",
        "maxMsgSize",
        "msgRetentionSeconds",
        "rewindSeconds",
        "flushPolicy",
        "createTime",
        "lastModifyTime",
        "activeMsgNum",
        "inactiveMsgNum",
        "delayMsgNum",
        "rewindMsgNum",
        "minMsgTime",
        "shard",
    ];
    let obj = info.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = expected_keys.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(info["queueName"], "jobs");
    assert_eq!(info["queueId"], id);
    assert_eq!(info["visibilityTimeout"], 60);
    assert_eq!(info["flushPolicy"], "async");
    // Unix seconds, not milliseconds.
    let created = info["createTime"].as_u64().expect("number");
    assert!((1_600_000_000..4_000_000_000).contains(&created), "{created}");

    let table = ok(cmq(broker.addr(), &["queue-info", "jobs"]));
    assert!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["visibilityTimeout", "60"]), "{table}");
    assert!(table.contains("UTC"), "{table}");
}

#[test]
fn send_receive_delete_round_trip() {
    let broker = broker_with_queue("q");
    let addr = broker.addr();
    let msg_id = ok(cmq(addr, &["send", "q", "hello world"]));
    let sent = json(cmq(addr, &["--json", "send", "q", "second", "--delay", "0"]));
    assert!(sent["msgId"].as_str().is_some_and(|s| s.parse::<u64>().is_ok()), "{sent}");

    let got = json(cmq(addr, &["--json", "receive", "q", "--wait", "0"]));
    let m = &got.as_array().expect("an array")[0];
    assert_eq!(m["msgBody"], "hello world");
    assert_eq!(m["msgId"], msg_id.trim());
    assert_eq!(m["dequeueCount"], 1);
    for key in ["enqueueTime", "firstDequeueTime", "nextVisibleTime"] {
        assert!(m[key].as_u64().is_some_and(|t| t < 4_000_000_000), "{key} in seconds: {m}");
    }
    let receipt = m["receiptHandle"].as_str().expect("handle is a string");

    let vis = json(cmq(addr, &["--json", "change-visibility", "q", receipt, "30"]));
    assert_eq!(vis["receiptHandle"], receipt);
    assert!(vis["nextVisibleTime"].as_u64().is_some());

    // Nothing to report: silence, or `{}` so a JSON reader always gets a document.
    assert_eq!(json(cmq(addr, &["--json", "delete", "q", receipt])), serde_json::json!({}));
    let again = cmq(addr, &["delete", "q", receipt]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).starts_with("error: 4430 RECEIPT_HANDLE_INVALID: "), "{}", stderr(&again));
    let info = json(cmq(addr, &["--json", "queue-info", "q"]));
    assert_eq!((info["activeMsgNum"].as_u64(), info["inactiveMsgNum"].as_u64()), (Some(1), Some(0)));

    assert_eq!(ok(cmq(addr, &["receive", "q"])), "second\n");
}

#[test]
fn an_empty_queue_exits_zero_with_no_message_on_stderr() {
    let broker = broker_with_queue("empty");
    let out = cmq(broker.addr(), &["receive", "empty", "--wait", "0"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out).trim(), "no message");
    let out = cmq(broker.addr(), &["--json", "receive", "empty", "--max", "16"]);
    assert_eq!(json(out), serde_json::json!([]));
}

#[test]
fn server_errors_exit_one_with_code_name_and_message() {
    let broker = FakeBroker::start(1, |_| 0);
    let out = cmq(broker.addr(), &["queue-info", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: 4440 QUEUE_NOT_FOUND: queue \"x\" does not exist\n");
    assert_eq!(stdout(&out), "");

    let out = cmq(broker.addr(), &["--json", "delete-queue", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let body: Value = serde_json::from_str(&stdout(&out)).expect("error JSON on stdout");
    assert_eq!(
        body,
        serde_json::json!({"code": 4440, "name": "QUEUE_NOT_FOUND", "message": "queue \"x\" does not exist"})
    );
}

#[test]
fn connection_refused_names_the_address() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    }; // closed again: nothing listens there now
    let out = cmq(addr, &["ping"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("error: cannot connect to {addr}: ")), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");

    let out = cmq(addr, &["--json", "ping"]);
    let body: Value = serde_json::from_str(&stdout(&out)).expect("error JSON");
    assert_eq!(body["code"], Value::Null);
    assert_eq!(body["name"], "CONNECTION_REFUSED");
}

#[test]
fn send_batch_sends_sixteen_per_request_in_line_order() {
    let broker = broker_with_queue("bulk");
    let lines: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
    let input = format!("{}\n\r\n\n", lines.join("\r\n")); // CRLF, and empty lines to skip
    let ids = ok(cmq_with_stdin(broker.addr(), &["send-batch", "bulk"], &input));
    let ids: Vec<u64> = ids.lines().map(|l| l.parse().expect("msgId")).collect();
    assert_eq!(ids.len(), 40);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in line order");

    let state = broker.state.lock().expect("lock");
    let batches = state.routed.iter().filter(|r| r.op == Opcode::BatchSendMessage).count();
    assert_eq!(batches, 3, "16 + 16 + 8");
    drop(state);

    let got = json(cmq(broker.addr(), &["--json", "receive", "bulk", "--max", "16"]));
    let bodies: Vec<&str> = got.as_array().expect("array").iter().map(|m| m["msgBody"].as_str().expect("s")).collect();
    assert_eq!(bodies, lines[..16].iter().map(String::as_str).collect::<Vec<_>>());

    let ids = json(cmq_with_stdin(broker.addr(), &["--json", "send-batch", "bulk"], "x\ny\n"));
    assert_eq!(ids.as_array().map(Vec::len), Some(2));
}

#[test]
fn receive_delete_removes_what_it_printed() {
    let broker = broker_with_queue("work");
    ok(cmq_with_stdin(broker.addr(), &["send-batch", "work"], "a\nb\nc\nd\ne\nf\n"));
    let printed = ok(cmq(broker.addr(), &["receive", "work", "--max", "5", "--delete"]));
    assert_eq!(printed, "a\nb\nc\nd\ne\n");
    let info = json(cmq(broker.addr(), &["--json", "queue-info", "work"]));
    assert_eq!((info["activeMsgNum"].as_u64(), info["inactiveMsgNum"].as_u64()), (Some(1), Some(0)));
    assert_eq!(ok(cmq(broker.addr(), &["receive", "work", "--delete"])), "f\n");
    let info = json(cmq(broker.addr(), &["--json", "queue-info", "work"]));
    assert_eq!(info["inactiveMsgNum"].as_u64(), Some(0));
}

#[test]
fn binary_bodies_are_escaped_not_fatal() {
    let broker = broker_with_queue("bin");
    let mut c = Client::connect_with_timeout(broker.addr(), Some(CLIENT_TIMEOUT)).expect("connect");
    c.send("bin", Bytes::from_static(b"ok\xff\x00end"), 0).expect("send");
    c.send("bin", Bytes::from_static(b"\xc3("), 0).expect("send");
    assert_eq!(ok(cmq(broker.addr(), &["receive", "bin"])), "ok\\xFF\0end\n");
    let got = json(cmq(broker.addr(), &["--json", "receive", "bin"]));
    assert_eq!(got[0]["msgBody"], "\\xC3(");
}

#[test]
fn set_queue_changes_attributes_and_requires_one() {
    let broker = broker_with_queue("cfg");
    let info = json(cmq(broker.addr(), &["--json", "set-queue", "cfg", "--polling-wait-seconds", "7"]));
    assert_eq!(info["pollingWaitSeconds"], 7);
    let out = cmq(broker.addr(), &["set-queue", "cfg"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    let out = cmq(broker.addr(), &["set-queue", "cfg", "--visibility-timeout", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: 4000 INVALID_PARAMETER: visibilityTimeout"), "{}", stderr(&out));
}

#[test]
fn list_queues_filters_and_pages() {
    let broker = FakeBroker::start(2, |hint| hint.unwrap_or(0));
    let mut c = Client::connect_with_timeout(broker.addr(), Some(CLIENT_TIMEOUT)).expect("connect");
    for name in ["alpha", "alpine", "beta"] {
        c.create_queue(name, &QueueAttributesUpdate::default()).expect("create");
    }
    assert_eq!(ok(cmq(broker.addr(), &["list-queues", "--prefix", "al"])), "alpha\nalpine\n");
    let page = json(cmq(broker.addr(), &["--json", "list-queues", "--offset", "1", "--limit", "1"]));
    assert_eq!(page["totalCount"], 3);
    assert_eq!(page["queueList"][0]["queueName"], "alpine");
    assert!(page["queueList"][0]["queueId"].is_string());
    let out = cmq(broker.addr(), &["list-queues", "--limit", "2"]);
    assert_eq!(stdout(&out), "alpha\nalpine\n");
    assert!(stderr(&out).contains("2 of 3"), "{}", stderr(&out));
}

#[test]
fn ping_and_the_server_environment_variable() {
    let broker = FakeBroker::start(3, |hint| hint.unwrap_or(1));
    let out = Command::new(env!("CARGO_BIN_EXE_cmq"))
        .args(["--json", "ping"])
        .env("CMQ_SERVER", broker.addr().to_string())
        .output()
        .expect("run cmq");
    assert!(out.status.success(), "{}", stderr(&out));
    let pong: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((pong["shardCount"].as_u64(), pong["shardId"].as_u64()), (Some(3), Some(1)));
    assert_eq!(pong["server"], "fake-cmqd/0");
    assert!(ok(cmq(broker.addr(), &["ping"])).starts_with("pong from fake-cmqd/0"));
}

#[test]
fn help_documents_every_flag() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cmq")).args(args).output().expect("run cmq");
        assert!(out.status.success());
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let top = help(&["--help"]);
    for flag in ["--server", "CMQ_SERVER", "127.0.0.1:7700", "--json", "--timeout"] {
        assert!(top.contains(flag), "top-level help lacks {flag}");
    }
    let attrs = [
        "--max-msg-heap-num",
        "--polling-wait-seconds",
        "--visibility-timeout",
        "--max-msg-size",
        "--msg-retention-seconds",
        "--rewind-seconds",
        "--flush",
    ];
    let cases: &[(&str, &[&str])] = &[
        ("create-queue", &attrs),
        ("set-queue", &attrs),
        ("list-queues", &["--prefix", "--contains", "--offset", "--limit"]),
        ("send", &["--delay"]),
        ("send-batch", &["--delay"]),
        ("receive", &["--wait", "--max", "--delete"]),
        ("delete", &["<RECEIPT>"]),
        ("change-visibility", &["<RECEIPT>", "<SECONDS>"]),
        ("ping", &[]),
    ];
    for (sub, flags) in cases {
        let text = help(&[sub, "--help"]);
        for flag in *flags {
            assert!(text.contains(flag), "{sub} --help lacks {flag}");
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let flag_line = line.trim_start();
            if !flag_line.starts_with("--") {
                continue;
            }
            // The description follows on the same line, or on the next one
            // when clap wraps long help.
            let same_line = flag_line.split_once("  ").is_some_and(|(_, rest)| !rest.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|l| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with('-') && l.len() - t.len() > line.len() - flag_line.len()
            });
            assert!(same_line || next_line, "{sub}: flag without a description: {line}");
        }
    }
    assert!(help(&["create-queue", "--help"]).contains("[default: 30]"), "visibility timeout default shown");
}
