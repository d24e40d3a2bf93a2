//! `cmq cluster ...` and `--server` seed lists against a single real cmqd
//! (a cluster of one: it leads every shard). Three real nodes are in
//! tests/tests/cluster_client.rs.

mod support;

use std::net::TcpListener;

use support::cli::{cmq, cmq_bare, json, ok, stderr};
use support::{broker, client};

#[test]
fn status_of_a_single_node_shows_it_leading_every_shard() {
    let broker = broker(2);
    client(broker.addr).create_queue("q", &Default::default()).expect("create");
    let out = ok(cmq(broker.addr, &["cluster", "status"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NODE") && lines[0].contains("STATE"), "{out}");
    assert!(lines[1].contains(&broker.addr.to_string()) && lines[1].ends_with("up"), "{out}");
    let header = lines.iter().position(|l| l.starts_with("SHARD")).expect("shard table");
    let shards: Vec<Vec<&str>> = lines[header + 1..].iter().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(shards.len(), 2, "{out}");
    for (k, row) in shards.iter().enumerate() {
        assert_eq!(row[0], k.to_string());
        assert_eq!(row[1], lines[1].split_whitespace().next().expect("node id"), "the node leads: {out}");
        assert!(out.contains("(1 of 1 same)"), "{out}");
    }

    let v = json(cmq(broker.addr, &["--json", "cluster", "status"]));
    let shards = v["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    let leader = v["nodes"][0]["id"].clone();
    for s in shards {
        assert_eq!(s["leader"], leader);
        assert_eq!(s["digest"].as_str().map(str::len), Some(16), "{s}");
        assert_eq!(s["followers"], serde_json::json!([]));
    }
}

#[test]
fn changes_are_refused_by_a_single_node() {
    let broker = broker(1);
    let out = cmq(broker.addr, &["cluster", "add-node", "--id", "4", "--peer-addr", "127.0.0.1:7804"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("single node"), "{}", stderr(&out));
    let out = cmq(broker.addr, &["cluster", "transfer-leader", "--shard", "0", "--to", "2"]);
    assert!(stderr(&out).contains("single node"), "{}", stderr(&out));
    let out = cmq(broker.addr, &["cluster", "remove-node", "--id", "0"]);
    assert_eq!(out.status.code(), Some(2), "node ids start at 1");
}

#[test]
fn a_seed_list_skips_dead_seeds() {
    let broker = broker(1);
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let seeds = format!("{dead},{}", broker.addr);
    let out = ok(cmq_bare(&["--server", &seeds, "ping"]));
    assert!(out.starts_with("pong from cmqd/"), "{out}");

    let other_dead = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let out = cmq_bare(&["--server", &format!("{dead},{other_dead}"), "--timeout", "2", "ping"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains(&dead.to_string()) && text.contains(&other_dead.to_string()), "{text}");
    assert!(text.contains("is cmqd running?"), "{text}");
    let out = cmq_bare(&["--server", &format!("{dead},,x"), "ping"]);
    assert_eq!(out.status.code(), Some(2), "an empty entry is a usage error");
}
