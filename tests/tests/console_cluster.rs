//! The console's cluster page in a real headless Chromium against a real
//! three-node cluster (tests/console/console_cluster.py): the page shows the
//! three nodes up, each shard's leader as the harness sees it and the
//! followers' lag; then the leader of a shard is killed with kill -9 and the
//! page shows that node down, the shard's new leader, and the dead node
//! falling behind. Screenshots: target/console-screenshots/cluster-*.png.
//! And through the API: a stopped node (SIGSTOP) shows down and no request
//! hangs on it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_integration_tests::console::{assert_screenshots, chromium, clear_screenshots, screenshots_dir, Console};
use cmq_integration_tests::python::{Script, CONSOLE_VENV};
use cmq_integration_tests::{name_on_shard, poll_until, Cluster, ClusterSpec, NodeConn, Reply};
use cmq_protocol::*;
use serde_json::Value;

/// Longest wait for a leader (an election after a kill included).
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// How often a leadership transfer is asked for again.
const TRANSFER_RETRY: Duration = Duration::from_secs(2);

/// Longest wait for the page to show what the script checks before the kill.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The screenshots the script leaves: before the kill and after.
const SHOTS: &[&str] = &["cluster-nodes", "cluster-failover"];

/// Messages written to shard 0 after the kill, which the dead node misses.
const WRITES_AFTER_KILL: usize = 5;

fn call(c: &Cluster, node: usize, shard: u16, req: &Request) -> Response {
    let (mut conn, _) = NodeConn::open(c.client_addrs()[node], Some(shard)).expect("connect");
    match conn.call(req, Duration::from_secs(10)).expect("answered") {
        Reply::Ok(_, r) => r,
        Reply::Err(_, e) => panic!("{req:?}: {e:?}"),
    }
}

/// Makes a node other than `not` lead `shard` (asking `not` to hand it
/// over while it leads, again every [`TRANSFER_RETRY`]: a transfer to a
/// node that is not caught up is dropped); returns it.
fn lead_elsewhere(c: &Cluster, shard: u16, not: usize) -> usize {
    let to = (not + 1) % c.len() + 1;
    let mut asked: Option<Instant> = None;
    poll_until(LEADER_TIMEOUT, "another node leads the shard", || match c.leader_of(shard) {
        Some(l) if l != not => Ok(l),
        Some(_) if asked.is_none_or(|t| t.elapsed() >= TRANSFER_RETRY) => {
            asked = Some(Instant::now());
            let transfer = TransferLeader { shard: Some(shard), to: to as u64 };
            call(c, not, shard, &Request::TransferLeader(transfer));
            Err(format!("asked node {} to hand shard {shard} to node {to}", not + 1))
        }
        other => Err(format!("leader {other:?}")),
    })
}

#[test]
fn the_cluster_page_shows_nodes_leaders_lag_and_a_failover() {
    let mut c = Cluster::start(&ClusterSpec { nodes: 3, shards: 2, ..ClusterSpec::default() });
    // The console's node leads shard 0; another node leads shard 1, so the kill leaves the console up.
    let console = c.wait_leader(0, LEADER_TIMEOUT, |_| true);
    let doomed = lead_elsewhere(&c, 1, console);
    let queue = name_on_shard("lag", 0, c.shards);
    c.create_queue(&queue, Default::default());

    clear_screenshots(SHOTS);
    let leaders = format!("0={},1={}", console + 1, doomed + 1);
    let mut page = Script::new(CONSOLE_VENV, "tests/console/console_cluster.py")
        .arg(format!("http://{}", c.http_addr(console)))
        .arg(screenshots_dir())
        .arg(chromium())
        .args([(console + 1).to_string(), leaders])
        .spawn();
    page.expect_line("kill", PAGE_TIMEOUT);

    c.kill9(doomed);
    let successor = c.wait_leader(1, LEADER_TIMEOUT, |i| i != doomed);
    for k in 0..WRITES_AFTER_KILL {
        let body = Bytes::from(format!("after the kill {k}"));
        let send = SendMessage { queue: queue.clone(), body, ..Default::default() };
        call(&c, console, 0, &Request::SendMessage(send));
    }
    page.send_line(&format!("{} {}", doomed + 1, successor + 1));
    page.finish(6);
    assert_screenshots(SHOTS);
}

/// Harness node `i` (node id `i + 1`) in a `/api/v1/cluster` answer.
fn node(v: &Value, i: usize) -> Value {
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    nodes.into_iter().find(|n| n["id"].as_u64() == Some(i as u64 + 1)).unwrap_or_default()
}

fn up(v: &Value, i: usize) -> Option<bool> {
    node(v, i)["up"].as_bool()
}

/// The console's longest wait for the broker (`console::api::BROKER_WAIT`), plus a margin.
const ANSWER_WITHIN: Duration = Duration::from_secs(8 + 2);

/// No page hangs on a node that stopped answering (SIGSTOP: its port still
/// accepts connections, nothing answers): the cluster endpoint shows it
/// down within its probe timeout, and a request for a queue it led is
/// answered in bounded time, then served by the shard's new leader.
#[test]
fn a_stopped_node_shows_down_and_the_console_still_answers_in_time() {
    let mut c = Cluster::start(&ClusterSpec { nodes: 3, shards: 2, ..ClusterSpec::default() });
    let console = c.wait_leader(0, LEADER_TIMEOUT, |_| true);
    let stopped = lead_elsewhere(&c, 1, console);
    let queue = name_on_shard("slow", 1, c.shards);
    c.create_queue(&queue, Default::default());
    let mut web = Console::new(c.http_addr(console));
    web.anonymous();
    poll_until(LEADER_TIMEOUT, "every node up", || {
        let v = web.ok("GET", "/api/v1/cluster", &[]);
        (0..c.len()).all(|i| up(&v, i) == Some(true)).then_some(()).ok_or(v.to_string())
    });

    c.pause(stopped);
    let v = poll_until(LEADER_TIMEOUT, "the stopped node shown down", || {
        let asked = Instant::now();
        let v = web.ok("GET", "/api/v1/cluster", &[]);
        assert!(asked.elapsed() < ANSWER_WITHIN, "the cluster page took {:?}", asked.elapsed());
        (up(&v, stopped) == Some(false)).then_some(v.clone()).ok_or(v.to_string())
    });
    let why = node(&v, stopped)["down"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("no answer within"), "{v}");
    assert_eq!((up(&v, console), node(&v, console)["self"].as_bool()), (Some(true), Some(true)), "{v}");

    let path = format!("/api/v1/queues/{queue}");
    let asked = Instant::now();
    let r = web.call("GET", &path, &[]);
    assert!(asked.elapsed() < ANSWER_WITHIN, "{path} took {:?}", asked.elapsed());
    assert!(r.status == 200 || r.json()["error"]["code"].as_str().is_some_and(|e| !e.is_empty()), "{}", r.body);
    poll_until(LEADER_TIMEOUT, "the queue served by its shard's new leader", || {
        let r = web.call("GET", &path, &[]);
        (r.status == 200).then_some(()).ok_or(r.body)
    });
    c.resume(stopped);
}
