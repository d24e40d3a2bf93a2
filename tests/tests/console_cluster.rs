//! The console's cluster page in a real headless Chromium against a real
//! three-node cluster (tests/console/console_cluster.py): the page shows the
//! three nodes up, each shard's leader as the harness sees it and the
//! followers' lag; then the leader of a shard is killed with kill -9 and the
//! page shows that node down, the shard's new leader, and the dead node
//! falling behind. Screenshots: target/console-screenshots/cluster-*.png.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_integration_tests::console::{assert_screenshots, chromium, clear_screenshots, screenshots_dir};
use cmq_integration_tests::python::{Script, CONSOLE_VENV};
use cmq_integration_tests::{name_on_shard, poll_until, Cluster, ClusterSpec, NodeConn, Reply};
use cmq_protocol::*;

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
