//! The `cmq` binary end to end against the real cmqd.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;

use bytes::Bytes;
use cmq_protocol::{MessageState, Opcode, QueueAttributesUpdate};
use serde_json::Value;
use support::cli::{broker_with_queue, cmq, cmq_with_stdin, json, ok, stderr, stdout, CloneOutput, Running};
use support::tap::Tap;
use support::{broker, client, wait_until, Broker, EVENT_TIMEOUT};

#[test]
fn create_queue_prints_the_id_and_queue_info_uses_cmq_names() {
    let broker = broker(2);
    let id = ok(cmq(broker.addr, &["create-queue", "jobs", "--visibility-timeout", "60", "--flush", "async"]));
    let id = id.trim();
    assert!(id.parse::<u64>().is_ok(), "{id:?}");

    let info = json(cmq(broker.addr, &["--json", "queue-info", "jobs"]));
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

    let table = ok(cmq(broker.addr, &["queue-info", "jobs"]));
    assert!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["visibilityTimeout", "60"]), "{table}");
    assert!(table.contains("UTC"), "{table}");
}

#[test]
fn send_receive_delete_round_trip() {
    let broker = broker_with_queue("q");
    let addr = broker.addr;
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
    let out = cmq(broker.addr, &["receive", "empty", "--wait", "0"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out).trim(), "no message");
    let out = cmq(broker.addr, &["--json", "receive", "empty", "--max", "16"]);
    assert_eq!(json(out), serde_json::json!([]));
}

#[test]
fn server_errors_exit_one_with_code_name_and_message() {
    let broker = broker(1);
    let out = cmq(broker.addr, &["queue-info", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: 4440 QUEUE_NOT_FOUND: queue \"x\" does not exist\n");
    assert_eq!(stdout(&out), "");

    let out = cmq(broker.addr, &["--json", "delete-queue", "x"]);
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
    assert_eq!(err, format!("error: cannot connect to {addr}: connection refused (is cmqd running?)\n"));

    let out = cmq(addr, &["--json", "ping"]);
    let body: Value = serde_json::from_str(&stdout(&out)).expect("error JSON");
    assert_eq!(body["code"], Value::Null);
    assert_eq!(body["name"], "CONNECTION_REFUSED");
}

#[test]
fn send_batch_sends_sixteen_per_request_in_line_order() {
    let broker = broker_with_queue("bulk");
    let tap = Tap::start(broker.addr);
    let lines: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
    let input = format!("{}\n\r\n\n", lines.join("\r\n")); // CRLF, and empty lines to skip
    let ids = ok(cmq_with_stdin(tap.addr, &["send-batch", "bulk"], &input));
    let ids: Vec<u64> = ids.lines().map(|l| l.parse().expect("msgId")).collect();
    assert_eq!(ids.len(), 40);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in line order");
    assert_eq!(tap.count(Opcode::BatchSendMessage), 3, "16 + 16 + 8");

    let got = json(cmq(broker.addr, &["--json", "receive", "bulk", "--max", "16"]));
    let bodies: Vec<&str> = got.as_array().expect("array").iter().map(|m| m["msgBody"].as_str().expect("s")).collect();
    assert_eq!(bodies, lines[..16].iter().map(String::as_str).collect::<Vec<_>>());

    let ids = json(cmq_with_stdin(broker.addr, &["--json", "send-batch", "bulk"], "x\ny\n"));
    assert_eq!(ids.as_array().map(Vec::len), Some(2));
}

#[test]
fn receive_delete_removes_what_it_printed() {
    let broker = broker_with_queue("work");
    ok(cmq_with_stdin(broker.addr, &["send-batch", "work"], "a\nb\nc\nd\ne\nf\n"));
    let printed = ok(cmq(broker.addr, &["receive", "work", "--max", "5", "--delete"]));
    assert_eq!(printed, "a\nb\nc\nd\ne\n");
    let info = json(cmq(broker.addr, &["--json", "queue-info", "work"]));
    assert_eq!((info["activeMsgNum"].as_u64(), info["inactiveMsgNum"].as_u64()), (Some(1), Some(0)));
    assert_eq!(ok(cmq(broker.addr, &["receive", "work", "--delete"])), "f\n");
    let info = json(cmq(broker.addr, &["--json", "queue-info", "work"]));
    assert_eq!(info["inactiveMsgNum"].as_u64(), Some(0));
}

#[test]
fn binary_bodies_are_escaped_not_fatal() {
    let broker = broker_with_queue("bin");
    let mut c = client(broker.addr);
    c.send("bin", Bytes::from_static(b"ok\xff\x00end"), 0).expect("send");
    c.send("bin", Bytes::from_static(b"\xc3("), 0).expect("send");
    assert_eq!(ok(cmq(broker.addr, &["receive", "bin"])), "ok\\xFF\\x00end\n");
    let got = json(cmq(broker.addr, &["--json", "receive", "bin"]));
    assert_eq!(got[0]["msgBody"], "\\xC3(");
}

#[test]
fn set_queue_changes_attributes_and_requires_one() {
    let broker = broker_with_queue("cfg");
    let info = json(cmq(broker.addr, &["--json", "set-queue", "cfg", "--polling-wait-seconds", "7"]));
    assert_eq!(info["pollingWaitSeconds"], 7);
    let out = cmq(broker.addr, &["set-queue", "cfg"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    let out = cmq(broker.addr, &["set-queue", "cfg", "--visibility-timeout", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error: 4000 INVALID_PARAMETER: visibilityTimeout"), "{}", stderr(&out));
}

#[test]
fn list_queues_filters_and_pages() {
    let broker = broker(2);
    let mut c = client(broker.addr);
    for name in ["alpha", "alpine", "beta"] {
        c.create_queue(name, &QueueAttributesUpdate::default()).expect("create");
    }
    assert_eq!(ok(cmq(broker.addr, &["list-queues", "--prefix", "al"])), "alpha\nalpine\n");
    let page = json(cmq(broker.addr, &["--json", "list-queues", "--offset", "1", "--limit", "1"]));
    assert_eq!(page["totalCount"], 3);
    assert_eq!(page["queueList"][0]["queueName"], "alpine");
    assert!(page["queueList"][0]["queueId"].is_string());
    let out = cmq(broker.addr, &["list-queues", "--limit", "2"]);
    assert_eq!(stdout(&out), "alpha\nalpine\n");
    assert!(stderr(&out).contains("2 of 3"), "{}", stderr(&out));
}

#[test]
fn ping_and_the_server_environment_variable() {
    let broker = broker(3);
    let out = Command::new(env!("CARGO_BIN_EXE_cmq"))
        .args(["--json", "ping"])
        .env("CMQ_SERVER", broker.addr.to_string())
        .output()
        .expect("run cmq");
    assert!(out.status.success(), "{}", stderr(&out));
    let pong: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(pong["shardCount"].as_u64(), Some(3));
    assert!(pong["shardId"].as_u64().is_some_and(|s| s < 3), "{pong}");
    let server = pong["server"].as_str().expect("server name");
    assert!(server.starts_with("cmqd/"), "{server}");
    assert!(ok(cmq(broker.addr, &["ping"])).starts_with(&format!("pong from {server} (protocol v")));
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
        ("send", &["--delay", "--file", "--base64", "stdin"]),
        ("send-batch", &["--delay", "--base64"]),
        ("receive", &["--wait", "--max", "--delete", "--follow", "--print", "--base64", "exactly one message"]),
        ("delete", &["<RECEIPT>"]),
        ("change-visibility", &["<RECEIPT>", "<SECONDS>"]),
        ("peek", &["--max", "--all", "--body", "[default: 20]", "lease expires"]),
        ("message", &["<MSG_ID>"]),
        ("rewind", &["--since", "Unix seconds", "RFC 3339", "2026-11-25T10:00:00Z", "-10m", "-2h"]),
        ("purge", &["--yes"]),
        ("delete-queue", &["--force"]),
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
        ("publish", &["--file", "--base64"]),
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

/// A queue `src` whose messages go to `dlq` after one receive, holding
/// `bodies` already moved there.
fn broker_with_dead_letters(bodies: &[&str]) -> (Broker, Vec<u64>) {
    let broker = broker(2);
    let mut c = client(broker.addr);
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
    wait_until("the moves to the dead-letter queue", || {
        c.queue_info("dlq").expect("info").active_msg_num == bodies.len() as u64
    });
    (broker, ids)
}

#[test]
fn dead_letter_and_transaction_attributes_on_create_set_and_info() {
    let broker = broker_with_queue("dlq");
    let addr = broker.addr;
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
    let addr = broker.addr;
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
    let addr = broker.addr;
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

    let tap = Tap::start(addr);
    let all = json(cmq(tap.addr, &["--json", "peek", "q", "--all", "--body"]));
    assert_eq!(tap.count(Opcode::PeekMessages), 3, "100 + 100 + 50");
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
    let out = cmq(empty.addr, &["--json", "peek", "e"]);
    assert_eq!(json(out.clone_output()), serde_json::json!([]));
    assert!(stderr(&out).contains("no messages"));
}

#[test]
fn message_shows_one_messages_state() {
    let broker = broker(2);
    let addr = broker.addr;
    ok(cmq(addr, &["create-queue", "q", "--rewind-seconds", "600"]));
    let id = ok(cmq(addr, &["send", "q", "x"])).trim().to_owned();
    ok(cmq(addr, &["receive", "q", "--delete"]));
    let table = ok(cmq(addr, &["message", "q", &id]));
    assert!(table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["state", "deleted"]), "{table}");
    assert!(table.contains("enqueueTime") && table.contains("UTC"), "{table}");
    let status = json(cmq(addr, &["--json", "message", "q", &id]));
    assert_eq!((status["msgId"].as_str(), status["state"].as_str()), (Some(id.as_str()), Some("deleted")));
    assert_eq!(status["dequeueCount"], 1);
    assert!(status["enqueueTime"].as_u64().is_some_and(|t| t > 1_600_000_000));
}

/// An id of another queue, on this queue's shard or another, and an id
/// never issued: one answer shape, the one a forgotten delete gets.
#[test]
fn message_answers_the_same_for_another_queues_id_as_for_an_unknown_one() {
    let broker = broker(2);
    let addr = broker.addr;
    let [q, same_shard] = &names_on_shard("q", 0, 2)[..] else { unreachable!() };
    let other_shard = &names_on_shard("other", 1, 1)[0];
    for name in [q, same_shard, other_shard] {
        ok(cmq(addr, &["create-queue", name]));
    }
    let ids = [
        ok(cmq(addr, &["send", same_shard, "x"])).trim().to_owned(),
        ok(cmq(addr, &["send", other_shard, "y"])).trim().to_owned(),
        "42".to_owned(),
    ];
    let answers: Vec<Value> = ids.iter().map(|id| json(cmq(addr, &["--json", "message", q, id]))).collect();
    for (answer, id) in answers.iter().zip(&ids) {
        let mut shape = answer.clone();
        assert_eq!(shape["msgId"].as_str(), Some(id.as_str()));
        shape["msgId"] = Value::Null;
        let mut first = answers[0].clone();
        first["msgId"] = Value::Null;
        assert_eq!(shape, first, "the same answer for {id} as for {}", ids[0]);
    }
    assert_eq!(answers[2]["state"], "gone");
    assert!(answers[2]["detail"].as_str().is_some_and(|d| d.contains("never sent to it")), "{}", answers[2]);
}

#[test]
fn rewind_takes_relative_absolute_and_unix_times() {
    let broker = broker(2);
    let addr = broker.addr;
    ok(cmq(addr, &["create-queue", "q", "--rewind-seconds", "7200"]));
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
    // Beyond rewindSeconds the broker refuses, saying how far back the time parsed to.
    let out = cmq(addr, &["--json", "rewind", "q", "--since=2020-01-01T08:00:00+08:00"]);
    let message = json_error(&out);
    let ago: u64 = message
        .strip_prefix("startConsumeTime: ")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(ago.abs_diff(support::now_ms() / 1000 - 1_577_836_800) < 60, "2020-01-01T00:00:00Z: {message}");

    let out = cmq(addr, &["rewind", "q", "--since", "2099-01-01T00:00:00Z"]);
    assert!(stderr(&out).starts_with("error: 4000 INVALID_PARAMETER"), "the broker judges: {}", stderr(&out));
    let out = cmq(addr, &["rewind", "q", "--since", "last tuesday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
}

#[test]
fn purge_asks_and_refuses_to_guess_without_a_terminal() {
    let broker = broker_with_queue("q");
    let addr = broker.addr;
    ok(cmq_with_stdin(addr, &["send-batch", "q"], "a\nb\nc\n"));
    // The tests' stdin is a pipe: there is nobody to ask.
    let tap = Tap::start(addr);
    let out = cmq_with_stdin(tap.addr, &["purge", "q"], "y\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(tap.count(Opcode::PurgeQueue), 0);

    assert_eq!(ok(cmq(addr, &["purge", "q", "--yes"])), "3\n");
    assert_eq!(json(cmq(addr, &["--json", "purge", "q", "-y"])), serde_json::json!({ "purged": 0 }));
    let out = cmq(addr, &["receive", "q"]);
    assert_eq!(stderr(&out).trim(), "no message");
}

#[test]
fn transaction_messages_commit_and_roll_back() {
    let broker = broker_with_queue("tx");
    let addr = broker.addr;
    let keep: u64 = ok(cmq(addr, &["send-tx", "tx", "keep", "--group", "shop"])).trim().parse().expect("msgId");
    let sent = json(cmq(addr, &["--json", "send-tx", "tx", "drop", "--group", "shop"]));
    let drop = sent["msgId"].as_str().expect("msgId string").to_owned();
    assert_eq!(stderr(&cmq(addr, &["receive", "tx"])).trim(), "no message", "half messages are invisible");

    assert_eq!(ok(cmq(addr, &["commit", "tx", &keep.to_string()])), "");
    assert_eq!(json(cmq(addr, &["--json", "rollback", "tx", &drop])), serde_json::json!({}));
    assert_eq!(ok(cmq(addr, &["receive", "tx"])), "keep\n");
    assert_eq!(json(cmq(addr, &["--json", "message", "tx", &drop]))["state"], "rolled-back");
    let out = cmq(addr, &["commit", "tx", &drop]);
    assert!(stderr(&out).starts_with("error: 4480 MESSAGE_NOT_FOUND"), "{}", stderr(&out));
    let out = cmq(addr, &["send-tx", "tx", "x"]);
    assert_eq!(out.status.code(), Some(2), "--group is required");
}

/// `n` queue names that shard `shard` of 2 owns.
fn names_on_shard(prefix: &str, shard: u16, n: usize) -> Vec<String> {
    (0..).map(|i| format!("{prefix}{i}")).filter(|q| cmq_protocol::names::shard_for(q, 2) == shard).take(n).collect()
}

/// A queue whose unresolved half messages are checked after one second.
fn broker_with_tx_queue() -> Broker {
    let broker = broker(2);
    ok(cmq(broker.addr, &["create-queue", "tx", "--first-query-interval", "1", "--max-query-count", "1000"]));
    broker
}

#[test]
fn tx_checker_commits_what_it_is_asked_about() {
    let broker = broker_with_tx_queue();
    let checker = Running::start(broker.addr, &["tx-checker", "--group", "shop", "--commit"]);
    checker.stderr_with("answering transaction checks for group shop", EVENT_TIMEOUT);
    let mut c = client(broker.addr);
    let id = c.send_transaction_message("tx", "shop", "order 1").expect("half");
    let line = checker.line(EVENT_TIMEOUT);
    assert!(line.starts_with(&format!("msgId {id} in queue tx (group shop, check 1, enqueued ")), "{line}");
    assert!(line.ends_with("body \"order 1\" -> commit"), "{line}");
    let mut got = None;
    wait_until("the committed message", || {
        got = c.receive("tx", Some(1)).expect("receive");
        got.is_some()
    });
    assert_eq!(got.map(|m| m.msg_id), Some(id));
}

#[test]
fn tx_checker_ask_reads_one_answer_a_line_and_stops_at_the_end_of_input() {
    let broker = broker_with_tx_queue();
    let mut checker = Running::start(broker.addr, &["--json", "tx-checker", "--group", "shop", "--ask"]);
    checker.stderr_with("answering transaction checks for group shop", EVENT_TIMEOUT);
    let mut stdin = checker.child.stdin.take().expect("stdin piped");
    let mut c = client(broker.addr);
    // Roll back the first; the second gets a bad answer, is asked again, and skipped.
    let first = c.send_transaction_message("tx", "shop", "one").expect("half");
    checker.stderr_with(&format!("msgId {first} in queue tx"), EVENT_TIMEOUT);
    stdin.write_all(b"r\n").expect("answer");
    let second = c.send_transaction_message("tx", "shop", "two").expect("half");
    checker.stderr_with(&format!("msgId {second} in queue tx"), EVENT_TIMEOUT);
    stdin.write_all(b"maybe\n").expect("answer");
    checker.stderr_with("\"maybe\": answer c, r or s", EVENT_TIMEOUT);
    stdin.write_all(b"s\n").expect("answer");
    // Asked again about the second, the checker finds its input ended and stops.
    drop(stdin);
    let (status, out, err) = checker.finish();
    assert!(status.success(), "{err:?}");
    let lines: Vec<Value> = out.iter().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        (lines[0]["msgId"].as_str(), lines[0]["decision"].as_str()),
        (Some(&*first.to_string()), Some("rollback"))
    );
    assert_eq!((lines[1]["msgId"].as_str(), lines[1]["decision"].as_str()), (Some(&*second.to_string()), Some("none")));
    assert_eq!((lines[0]["queueName"].as_str(), lines[0]["msgBody"].as_str()), (Some("tx"), Some("one")));
    assert_eq!(lines[0]["error"], Value::Null);
    let summary = err.last().expect("a summary");
    assert!(summary.contains("0 committed, 1 rolled back") && summary.contains("0 refused"), "{summary}");
    assert_eq!(c.query_message("tx", first).expect("query").state, MessageState::RolledBack);
    assert_eq!(c.query_message("tx", second).expect("query").state, MessageState::Half);
}

#[test]
fn redrive_status_and_cancel() {
    let bodies: Vec<String> = (0..16).map(|i| format!("m{i}")).collect();
    let (broker, _) = broker_with_dead_letters(&bodies.iter().map(String::as_str).collect::<Vec<_>>());
    let addr = broker.addr;
    let out = cmq(addr, &["redrive", "dlq", "--rate", "1"]);
    let id = ok(out.clone_output()).trim().to_owned();
    assert!(id.parse::<u64>().is_ok(), "the id alone, for task=$(cmq redrive ...): {id:?}");
    let note = stderr(&out);
    assert!(note.starts_with(&format!("redrive {id} running: moving 16 messages from dlq")), "{note}");

    let table = ok(cmq(addr, &["redrive-status"]));
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["ID", "DLQ", "TO", "STATE", "MOVED", "REMAINING", "FAILED", "NOTE"]);
    assert_eq!(rows[1][..5], [id.as_str(), "dlq", "(source", "queues)", "running"]);
    let one = json(cmq(addr, &["--json", "redrive-status", &id]));
    assert_eq!(one[0]["redriveId"], id.as_str());
    assert_eq!((one[0]["to"].as_str(), one[0]["ratePerSecond"].as_u64()), (Some(""), Some(1)));

    assert_eq!(ok(cmq(addr, &["redrive-cancel", &id])), format!("{id} cancelled\n"));
    let cancelled = json(cmq(addr, &["--json", "redrive-cancel", &id]));
    let moved = cancelled["moved"].as_u64().expect("moved");
    assert!(cancelled["state"] == "cancelled" && moved < 16, "at 1/s, not all 16 by now: {cancelled}");
    let out = cmq(addr, &["redrive-status", "12345"]);
    assert!(stderr(&out).starts_with("error: 4490 REDRIVE_NOT_FOUND"), "{}", stderr(&out));
    let out = cmq(addr, &["redrive-cancel", "12345"]);
    assert!(stderr(&out).starts_with("error: 4490 REDRIVE_NOT_FOUND"), "{}", stderr(&out));
    let mut c = client(addr);
    wait_until("the moved ones in src", || c.queue_info("src").expect("info").active_msg_num == moved);
    let info = c.queue_info("dlq").expect("info");
    assert_eq!(info.active_msg_num, 16 - moved, "the rest stay in the dead-letter queue");
}

#[test]
fn redrive_status_watch_follows_a_task_until_it_is_done() {
    let (broker, _) = broker_with_dead_letters(&["a", "b"]);
    let addr = broker.addr;
    let none = cmq(broker_with_queue("unused").addr, &["redrive-status", "--watch"]);
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
    assert_eq!(states.last(), Some(&"done"), "{text}");
    assert!(states[..states.len() - 1].iter().all(|s| *s == "running"), "{text}");
    assert!(!text.contains('\x1b'), "no screen control codes into a pipe");
    let lines: Vec<Value> = ok(cmq(addr, &["--json", "redrive-status", "--watch"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON array a line"))
        .collect();
    assert_eq!(lines.len(), 1, "nothing running: one listing");
    assert_eq!((lines[0][0]["moved"].as_u64(), lines[0][0]["to"].as_str()), (Some(2), Some("dlq-copy")));
    assert_eq!(ok(cmq(addr, &["receive", "dlq-copy", "--max", "16"])), "a\nb\n");
}

#[test]
fn a_redrive_to_a_missing_queue_is_refused_and_a_failed_one_says_why() {
    let (broker, _) = broker_with_dead_letters(&["a", "b"]);
    let addr = broker.addr;
    let tap = Tap::start(addr);
    let out = cmq(tap.addr, &["redrive", "dlq", "--to", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: 4440 QUEUE_NOT_FOUND: to: queue \"nowhere\" does not exist\n");
    assert_eq!(ok(cmq(addr, &["redrive-status"])), "", "no task started");

    // Back to the source queue, which no longer exists: the task fails, and says why.
    ok(cmq(addr, &["set-queue", "src", "--no-dead-letter"]));
    ok(cmq(addr, &["delete-queue", "src", "--force"]));
    let id = ok(cmq(addr, &["redrive", "dlq"])).trim().to_owned();
    let table = ok(cmq(addr, &["redrive-status", &id, "--watch"]));
    let last = table.lines().last().expect("a row");
    let note = "2 messages could not be moved (queue \"src\" does not exist); they stay in the dead-letter queue";
    assert!(last.starts_with(&id) && last.contains(" done ") && last.ends_with(note), "{table}");
    let task = json(cmq(addr, &["--json", "redrive-status", &id]));
    assert_eq!((task[0]["failed"].as_u64(), task[0]["note"].as_str()), (Some(2), Some(note)));
}

/// The message of a failure printed with --json.
fn json_error(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let body: Value = serde_json::from_str(&stdout(out)).expect("error JSON");
    body["message"].as_str().expect("message").to_owned()
}
