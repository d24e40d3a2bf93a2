//! The `cmq` binary end to end against the fake broker.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use cmq_client::Client;
use cmq_protocol::{MessageState, Opcode, QueueAttributesUpdate};
use serde_json::Value;
use support::cli::{cmq, cmq_with_stdin, json, ok, stderr, stdout, CloneOutput};
use support::{wait_until, FakeBroker, CLIENT_TIMEOUT};

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
        "deadLetterQueueName",
        "maxReceiveCount",
        "maxTimeToLive",
        "firstQueryInterval",
        "maxQueryCount",
        "transactionDefault",
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
    for flag in ["--server", "CMQ_SERVER", "127.0.0.1:7700", "--json", "--timeout", "cmq subscribe events orders"] {
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
        "--dead-letter-queue",
        "--max-receive-count",
        "--max-time-to-live",
        "--first-query-interval",
        "--max-query-count",
        "--transaction-default",
    ];
    let set_attrs = [&attrs[..], &["--no-dead-letter"]].concat();
    let cases: &[(&str, &[&str])] = &[
        ("create-queue", &attrs),
        ("set-queue", &set_attrs),
        ("list-queues", &["--prefix", "--contains", "--offset", "--limit"]),
        ("send", &["--delay"]),
        ("send-batch", &["--delay"]),
        ("receive", &["--wait", "--max", "--delete"]),
        ("delete", &["<RECEIPT>"]),
        ("change-visibility", &["<RECEIPT>", "<SECONDS>"]),
        ("peek", &["--max", "--all", "--body", "[default: 20]", "lease expires"]),
        ("message", &["<MSG_ID>"]),
        ("rewind", &["--since", "Unix seconds", "RFC 3339", "2026-11-25T10:00:00Z", "-10m", "-2h"]),
        ("purge", &["--yes"]),
        ("send-tx", &["--group"]),
        ("commit", &["<MSG_ID>"]),
        ("rollback", &["<MSG_ID>"]),
        ("tx-checker", &["--group", "--commit", "--rollback", "--ask"]),
        ("redrive", &["--to", "--rate", "[default: 0]"]),
        ("redrive-status", &["[ID]", "--watch"]),
        ("redrive-cancel", &["<ID>"]),
        (
            "create-topic",
            &[
                "--filter-type",
                "tag",
                "routing-key",
                "[default: tag]",
                "--max-msg-size",
                "(maxMsgSize: 1024-1048576 bytes) [default: 65536]",
                "--msg-retention-seconds",
                "(msgRetentionSeconds: 60-86400s) [default: 86400]",
            ],
        ),
        ("delete-topic", &["<NAME>"]),
        ("list-topics", &["--prefix", "--contains", "--offset", "--limit"]),
        ("topic-info", &["<NAME>"]),
        ("set-topic", &["--max-msg-size", "1024-1048576"]),
        ("publish", &["--tag", "--routing-key", "up to 5", "16 words"]),
        ("publish-batch", &["--tag", "--routing-key", "16 per request"]),
        (
            "subscribe",
            &[
                "--queue",
                "--http",
                "--tag",
                "--binding-key",
                "'*' matches exactly one word, '#' one or more",
                "--notify-strategy",
                "backoff",
                "exponential",
                "[default: exponential]",
                "--format",
                "json",
                "simplified",
                "[default: simplified for --queue, json for --http]",
                "--dead-letter-queue",
                "X-CMQ-Signature",
                "HMAC-SHA256",
            ],
        ),
        ("unsubscribe", &["<TOPIC>", "<NAME>"]),
        ("list-subscriptions", &["--contains", "--offset", "--limit"]),
        ("subscription-info", &["<TOPIC>", "<NAME>"]),
        (
            "set-subscription",
            &[
                "--tag",
                "--clear-tags",
                "--binding-key",
                "--clear-binding-keys",
                "--notify-strategy",
                "--format",
                "[default: unchanged]",
            ],
        ),
        ("clear-filter-tags", &["<TOPIC>", "<NAME>"]),
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
    let create = help(&["create-queue", "--help"]);
    assert!(create.contains("[default: 30]"), "visibility timeout default shown");
    assert!(create.contains("(maxReceiveCount: 1-1000)"), "dead-letter range shown");
    assert!(create.contains("(maxQueryCount: 1-1000) [default: 5]"), "transaction default shown");
}

fn client(broker: &FakeBroker) -> Client {
    Client::connect_with_timeout(broker.addr(), Some(CLIENT_TIMEOUT)).expect("connect")
}

fn requests(broker: &FakeBroker, op: Opcode) -> usize {
    broker.state.lock().expect("lock").routed.iter().filter(|r| r.op == op).count()
}

/// A queue `src` whose messages go to `dlq` after one receive, holding
/// `bodies` already moved there.
fn broker_with_dead_letters(bodies: &[&str]) -> (FakeBroker, Vec<u64>) {
    let broker = FakeBroker::start(2, |hint| hint.unwrap_or(0));
    let mut c = client(&broker);
    c.create_queue("dlq", &QueueAttributesUpdate::default()).expect("create");
    let policy = QueueAttributesUpdate {
        dead_letter_queue: Some("dlq".into()),
        max_receive_count: Some(1),
        ..Default::default()
    };
    c.create_queue("src", &policy).expect("create");
    let ids =
        c.send_batch("src", &bodies.iter().map(|b| Bytes::from(b.to_string())).collect::<Vec<_>>(), 0).expect("send");
    for m in c.receive_batch("src", 16, Some(0)).expect("receive") {
        c.change_visibility("src", m.receipt_handle, 0).expect("visible again");
    }
    assert_eq!(c.receive("src", Some(0)).expect("receive"), None, "moved on this receive");
    (broker, ids)
}

#[test]
fn dead_letter_and_transaction_attributes_on_create_set_and_info() {
    let broker = broker_with_queue("dlq");
    let addr = broker.addr();
    ok(cmq(
        addr,
        &[
            "create-queue",
            "q",
            "--dead-letter-queue",
            "dlq",
            "--max-receive-count",
            "3",
            "--first-query-interval",
            "20",
            "--max-query-count",
            "7",
            "--transaction-default",
            "commit",
        ],
    ));
    let info = json(cmq(addr, &["--json", "queue-info", "q"]));
    assert_eq!(info["deadLetterQueueName"], "dlq");
    assert_eq!((info["maxReceiveCount"].as_u64(), info["maxTimeToLive"].as_u64()), (Some(3), Some(0)));
    assert_eq!((info["firstQueryInterval"].as_u64(), info["maxQueryCount"].as_u64()), (Some(20), Some(7)));
    assert_eq!(info["transactionDefault"], "commit");

    // The other limit replaces the first.
    let info = json(cmq(addr, &["--json", "set-queue", "q", "--max-time-to-live", "600"]));
    assert_eq!((info["maxReceiveCount"].as_u64(), info["maxTimeToLive"].as_u64()), (Some(0), Some(600)));
    let table = ok(cmq(addr, &["queue-info", "q"]));
    for row in [["deadLetterQueueName", "dlq"], ["maxTimeToLive", "600"], ["transactionDefault", "commit"]] {
        assert!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == row), "{row:?} in {table}");
    }
    let out = cmq(addr, &["delete-queue", "dlq"]);
    assert!(stderr(&out).starts_with("error: 4470 QUEUE_IN_USE"), "{}", stderr(&out));

    let info = json(cmq(addr, &["--json", "set-queue", "q", "--no-dead-letter"]));
    assert_eq!(info["deadLetterQueueName"], "");
    assert_eq!((info["maxReceiveCount"].as_u64(), info["maxTimeToLive"].as_u64()), (Some(0), Some(0)));
    ok(cmq(addr, &["delete-queue", "dlq"]));

    let out = cmq(addr, &["set-queue", "q", "--max-receive-count", "2", "--max-time-to-live", "600"]);
    assert_eq!(out.status.code(), Some(2), "one limit or the other");
}

#[test]
fn receive_shows_where_a_dead_lettered_message_came_from() {
    let (broker, ids) = broker_with_dead_letters(&["poison", "also poison"]);
    let addr = broker.addr();
    let out = cmq(addr, &["receive", "dlq"]);
    assert_eq!(ok(out.clone_output()), "poison\n", "stdout stays bodies only");
    let note = stderr(&out);
    assert!(note.contains(&format!("msgId {} came from queue \"src\" (original msgId {}", ids[0], ids[0])), "{note}");

    let got = json(cmq(addr, &["--json", "receive", "dlq"]));
    let m = &got[0];
    assert_eq!(m["msgBody"], "also poison");
    assert_eq!(m["sourceQueue"], "src");
    assert_eq!(m["originalMsgId"], ids[1].to_string());
    assert!(m["firstEnqueueTime"].as_u64().is_some_and(|t| (1_600_000_000..4_000_000_000).contains(&t)), "{m}");

    ok(cmq(addr, &["send", "src", "fresh"]));
    let got = json(cmq(addr, &["--json", "receive", "src"]));
    assert!(got[0].get("sourceQueue").is_none(), "no origin keys on ordinary messages: {got}");
}

#[test]
fn peek_pages_through_the_queue_and_changes_nothing() {
    let broker = broker_with_queue("q");
    let addr = broker.addr();
    let lines: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    ok(cmq_with_stdin(addr, &["send-batch", "q"], &lines.join("\n")));
    let leased = json(cmq(addr, &["--json", "receive", "q"]));
    let info_before = json(cmq(addr, &["--json", "queue-info", "q"]));

    let out = cmq(addr, &["peek", "q", "--max", "3"]);
    let table = ok(out.clone_output());
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "header and 3 rows: {table}");
    assert!(rows[0].starts_with("MSGID") && rows[0].contains("NEXT VISIBLE (UTC)"), "{table}");
    assert!(rows[1].starts_with(leased[0]["msgId"].as_str().expect("id")), "{table}");
    assert!(rows[1].contains("in-flight") && rows[2].contains("ready"), "{table}");
    assert!(stderr(&out).contains("more follow"), "{}", stderr(&out));

    let before = requests(&broker, Opcode::PeekMessages);
    let all = json(cmq(addr, &["--json", "peek", "q", "--all", "--body"]));
    assert_eq!(requests(&broker, Opcode::PeekMessages) - before, 3, "100 + 100 + 50");
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 250);
    assert_eq!(all[0]["state"], "in-flight");
    assert_eq!(all[0]["nextVisibleTime"], leased[0]["nextVisibleTime"]);
    assert_eq!(all[0]["dequeueCount"], 1);
    assert_eq!((all[249]["msgBody"].as_str(), all[249]["bodySize"].as_u64()), (Some("m249"), Some(4)));
    assert_eq!(all[1]["nextVisibleTime"], 0);

    let bodies = ok(cmq(addr, &["peek", "q", "--all", "--body"]));
    assert_eq!(bodies.lines().count(), 251);
    assert!(bodies.lines().nth(250).is_some_and(|l| l.ends_with("  m249")), "body last");
    let without = json(cmq(addr, &["--json", "peek", "q"]));
    assert_eq!(without.as_array().map(Vec::len), Some(20), "default --max");
    assert!(without[0].get("msgBody").is_none());

    assert_eq!(json(cmq(addr, &["--json", "queue-info", "q"])), info_before, "peek changed nothing");
    let empty = broker_with_queue("e");
    let out = cmq(empty.addr(), &["--json", "peek", "e"]);
    assert_eq!(json(out.clone_output()), serde_json::json!([]));
    assert!(stderr(&out).contains("no messages"));
}

#[test]
fn message_shows_one_messages_state() {
    let broker = broker_with_queue("q");
    let addr = broker.addr();
    let id = ok(cmq(addr, &["send", "q", "x"])).trim().to_owned();
    ok(cmq(addr, &["receive", "q", "--delete"]));
    let table = ok(cmq(addr, &["message", "q", &id]));
    assert!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["state", "deleted"]), "{table}");
    assert!(table.contains("stateTime") && table.contains("UTC"), "{table}");
    let status = json(cmq(addr, &["--json", "message", "q", &id]));
    assert_eq!((status["msgId"].as_str(), status["state"].as_str()), (Some(id.as_str()), Some("deleted")));
    assert_eq!(status["dequeueCount"], 1);
    assert!(status["stateTime"].as_u64().is_some_and(|t| t > 1_600_000_000));

    let out = cmq(addr, &["message", "q", "42"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: 4480 MESSAGE_NOT_FOUND"), "{}", stderr(&out));
}

#[test]
fn rewind_takes_relative_absolute_and_unix_times() {
    let broker = broker_with_queue("q");
    let addr = broker.addr();
    ok(cmq_with_stdin(addr, &["send-batch", "q"], "a\nb\n"));
    assert_eq!(ok(cmq(addr, &["receive", "q", "--max", "2", "--delete"])), "a\nb\n");

    let out = cmq(addr, &["rewind", "q", "--since", "-1m"]);
    assert_eq!(ok(out.clone_output()), "2\n");
    assert!(stderr(&out).contains("receivable again"), "{}", stderr(&out));
    assert_eq!(ok(cmq(addr, &["receive", "q", "--max", "16"])), "a\nb\n", "in enqueue order");

    let an_hour_ago = (support::now_ms() / 1000 - 3600).to_string();
    let res = json(cmq(addr, &["--json", "rewind", "q", "--since", &an_hour_ago]));
    assert_eq!(res["rewound"], 0);
    assert_eq!(res["startConsumeTime"].as_u64(), an_hour_ago.parse().ok());
    let res = json(cmq(addr, &["--json", "rewind", "q", "--since=2020-01-01T08:00:00+08:00"]));
    assert_eq!(res["startConsumeTime"], 1_577_836_800);

    let out = cmq(addr, &["rewind", "q", "--since", "2099-01-01T00:00:00Z"]);
    assert!(stderr(&out).starts_with("error: 4000 INVALID_PARAMETER"), "the broker judges: {}", stderr(&out));
    let out = cmq(addr, &["rewind", "q", "--since", "last tuesday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
}

#[test]
fn purge_asks_and_refuses_to_guess_without_a_terminal() {
    let broker = broker_with_queue("q");
    let addr = broker.addr();
    ok(cmq_with_stdin(addr, &["send-batch", "q"], "a\nb\nc\n"));
    // The tests' stdin is a pipe: there is nobody to ask.
    let out = cmq_with_stdin(addr, &["purge", "q"], "y\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(requests(&broker, Opcode::PurgeQueue), 0);

    assert_eq!(ok(cmq(addr, &["purge", "q", "--yes"])), "3\n");
    assert_eq!(json(cmq(addr, &["--json", "purge", "q", "-y"])), serde_json::json!({ "purged": 0 }));
    let out = cmq(addr, &["receive", "q"]);
    assert_eq!(stderr(&out).trim(), "no message");
}

#[test]
fn transaction_messages_commit_and_roll_back() {
    let broker = broker_with_queue("tx");
    let addr = broker.addr();
    let keep: u64 = ok(cmq(addr, &["send-tx", "tx", "keep", "--group", "shop"])).trim().parse().expect("msgId");
    let sent = json(cmq(addr, &["--json", "send-tx", "tx", "drop", "--group", "shop"]));
    let drop = sent["msgId"].as_str().expect("msgId string").to_owned();
    assert_eq!(stderr(&cmq(addr, &["receive", "tx"])).trim(), "no message", "half messages are invisible");

    assert_eq!(ok(cmq(addr, &["commit", "tx", &keep.to_string()])), "");
    assert_eq!(json(cmq(addr, &["--json", "rollback", "tx", &drop])), serde_json::json!({}));
    assert_eq!(ok(cmq(addr, &["receive", "tx"])), "keep\n");
    assert_eq!(broker.message_state("tx", drop.parse().expect("id")), Some(MessageState::RolledBack));
    let out = cmq(addr, &["commit", "tx", &drop]);
    assert!(stderr(&out).starts_with("error: 4480 MESSAGE_NOT_FOUND"), "{}", stderr(&out));
    let out = cmq(addr, &["send-tx", "tx", "x"]);
    assert_eq!(out.status.code(), Some(2), "--group is required");
}

fn spawn_cmq(addr: SocketAddr, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cmq"))
        .arg("--server")
        .arg(addr.to_string())
        .args(["--timeout", "5"])
        .args(args)
        .env_remove("CMQ_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmq")
}

#[test]
fn tx_checker_commits_what_it_is_asked_about() {
    let broker = broker_with_queue("tx");
    let mut child = spawn_cmq(broker.addr(), &["tx-checker", "--group", "shop", "--commit"]);
    wait_until("the checker to register", || broker.checker_groups() == ["shop"]);
    let mut c = client(&broker);
    let id = c.send_transaction_message("tx", "shop", "order 1").expect("half");
    assert_eq!(broker.ask_checkers(), 1);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("one line per check");
    assert!(line.starts_with(&format!("msgId {id} in queue tx (group shop, check 1, enqueued ")), "{line}");
    assert!(line.trim_end().ends_with("body \"order 1\" -> commit"), "{line}");
    assert_eq!(broker.state.lock().expect("lock").ended, [(id, true)]);
    assert_eq!(c.receive("tx", Some(0)).expect("receive").map(|m| m.msg_id), Some(id));
    child.kill().expect("kill");
    let out = child.wait_with_output().expect("exited");
    assert!(stderr(&out).contains("answering transaction checks for group shop"), "{}", stderr(&out));
}

#[test]
fn tx_checker_ask_reads_one_answer_a_line_and_stops_at_the_end_of_input() {
    let broker = broker_with_queue("tx");
    let mut child = spawn_cmq(broker.addr(), &["--json", "tx-checker", "--group", "shop", "--ask"]);
    wait_until("the checker to register", || broker.checker_groups() == ["shop"]);
    let mut c = client(&broker);
    let first = c.send_transaction_message("tx", "shop", "one").expect("half");
    let second = c.send_transaction_message("tx", "shop", "two").expect("half");
    let mut stdin = child.stdin.take().expect("stdin piped");
    // Roll back the first; the second gets a bad answer, asked again, skipped.
    stdin.write_all(b"r\nmaybe\ns\n").expect("answers");
    drop(stdin);
    assert_eq!(broker.ask_checkers(), 2);
    wait_until("the rollback", || broker.state.lock().expect("lock").ended == [(first, false)]);
    // Asked again, the checker finds its input ended and stops.
    assert_eq!(broker.ask_checkers(), 1);
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (lines[0]["msgId"].as_str(), lines[0]["decision"].as_str()),
        (Some(&*first.to_string()), Some("rollback"))
    );
    assert_eq!((lines[1]["msgId"].as_str(), lines[1]["decision"].as_str()), (Some(&*second.to_string()), Some("none")));
    assert_eq!((lines[0]["queueName"].as_str(), lines[0]["msgBody"].as_str()), (Some("tx"), Some("one")));
    assert_eq!(lines[0]["error"], Value::Null);
    let err = stderr(&out);
    assert!(err.contains("\"maybe\": answer c, r or s"), "{err}");
    assert!(err.contains("stopped after 3 checks: 0 committed, 1 rolled back, 2 unanswered, 0 refused"), "{err}");
    assert_eq!(broker.message_state("tx", second), Some(MessageState::Half));
}

#[test]
fn redrive_status_and_cancel() {
    let (broker, _) = broker_with_dead_letters(&["a", "b", "c"]);
    let addr = broker.addr();
    let started = ok(cmq(addr, &["redrive", "dlq", "--rate", "1"]));
    let [id, state] = started.split_whitespace().collect::<Vec<_>>()[..] else { panic!("{started}") };
    assert_eq!(state, "running");

    // Each listing moves one message in the fake.
    let table = ok(cmq(addr, &["redrive-status"]));
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["ID", "DLQ", "TO", "STATE", "MOVED", "REMAINING", "FAILED"]);
    assert_eq!(rows[1], [id, "dlq", "(source", "queues)", "running", "1", "2", "0"]);
    let one = json(cmq(addr, &["--json", "redrive-status", id]));
    assert_eq!(one[0]["redriveId"], id);
    assert_eq!((one[0]["moved"].as_u64(), one[0]["remaining"].as_u64()), (Some(2), Some(1)));
    assert_eq!((one[0]["to"].as_str(), one[0]["ratePerSecond"].as_u64()), (Some(""), Some(1)));

    assert_eq!(ok(cmq(addr, &["redrive-cancel", id])), format!("{id} cancelled\n"));
    let cancelled = json(cmq(addr, &["--json", "redrive-cancel", id]));
    assert_eq!((cancelled["state"].as_str(), cancelled["moved"].as_u64()), (Some("cancelled"), Some(2)));
    let out = cmq(addr, &["redrive-status", "12345"]);
    assert!(stderr(&out).starts_with("error: 4490 REDRIVE_NOT_FOUND"), "{}", stderr(&out));
    let out = cmq(addr, &["redrive-cancel", "12345"]);
    assert!(stderr(&out).starts_with("error: 4490 REDRIVE_NOT_FOUND"), "{}", stderr(&out));
    assert_eq!(ok(cmq(addr, &["receive", "src", "--max", "16"])), "a\nb\n");
}

#[test]
fn redrive_status_watch_follows_a_task_until_it_is_done() {
    let (broker, _) = broker_with_dead_letters(&["a", "b"]);
    let addr = broker.addr();
    let none = cmq(broker_with_queue("unused").addr(), &["redrive-status", "--watch"]);
    assert_eq!((ok(none.clone_output()), stderr(&none)), (String::new(), "no redrive tasks\n".to_owned()));
    ok(cmq(addr, &["create-queue", "dlq-copy"]));
    let task = json(cmq(addr, &["--json", "redrive", "dlq", "--to", "dlq-copy", "--rate", "1"]));
    assert_eq!(task["state"], "running", "{task}");
    let id = task["redriveId"].as_str().expect("id");

    let out = cmq(addr, &["redrive-status", id, "--watch"]);
    let text = ok(out.clone_output());
    // Not a terminal: each listing that differs from the last, one after the other.
    let states: Vec<&str> =
        text.lines().filter(|l| l.starts_with(id)).map(|l| l.split_whitespace().nth(3).expect("state")).collect();
    assert_eq!(states, ["running", "done"], "{text}");
    assert!(!text.contains('\x1b'), "no screen control codes into a pipe");
    let lines: Vec<Value> = ok(cmq(addr, &["--json", "redrive-status", "--watch"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON array a line"))
        .collect();
    assert_eq!(lines.len(), 1, "nothing running: one listing");
    assert_eq!((lines[0][0]["moved"].as_u64(), lines[0][0]["to"].as_str()), (Some(2), Some("dlq-copy")));
    assert_eq!(ok(cmq(addr, &["receive", "dlq-copy", "--max", "16"])), "a\nb\n");
}
