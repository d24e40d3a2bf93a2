//! Transaction checks in a three-node cluster: the broker asks a checker
//! connected to the node that leads the message's shard, so a checker
//! given one seed registers on every node and answers each check on the
//! connection it came from. Before, a checker connected to a follower
//! node was never asked and every half message fell to the queue's
//! transactionDefault.

use std::time::{Duration, Instant};

use cmq_client::{Client, TransactionChecker};
use cmq_integration_tests::cluster::{Cluster, ClusterSpec};
use cmq_integration_tests::name_on_shard;
use cmq_protocol::{QueueAttributesUpdate, TxDefault};

#[test]
fn a_checker_given_a_follower_as_seed_answers_the_leaders_checks() {
    let c = Cluster::start(&ClusterSpec::default());
    let queue = name_on_shard("orders", 0, c.shards);
    let leader = c.wait_leader(0, Duration::from_secs(20), |_| true);
    let follower = (0..c.len()).find(|&i| i != leader).expect("a follower");
    // Without an answer the half message is rolled back after two checks:
    // only the checker's commit makes it visible.
    c.create_queue(
        &queue,
        QueueAttributesUpdate {
            first_query_interval: Some(1),
            max_query_count: Some(2),
            transaction_default: Some(TxDefault::Rollback),
            ..Default::default()
        },
    );
    let seeds: Vec<String> = c.client_addrs().iter().map(ToString::to_string).collect();
    let mut client = Client::connect_with_timeout(seeds.join(","), Some(Duration::from_secs(10))).expect("client");

    let checker = TransactionChecker::connect_with_timeout(
        c.client_addrs()[follower].to_string(),
        "billing",
        Some(Duration::from_secs(10)),
    )
    .expect("checker");
    assert_eq!(checker.nodes(), c.len(), "the checker registers on every node");
    let checker = checker.spawn(|_| Some(true));

    let id = client.send_transaction_message(&queue, "billing", "charge 42").expect("half message");
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        if let Some(m) = client.receive(&queue, Some(1)).expect("receive") {
            break m;
        }
        assert!(Instant::now() < deadline, "the half message was never committed by the checker");
    };
    assert_eq!((got.msg_id, &got.body[..]), (id, &b"charge 42"[..]));
    // The commit's answer may still be on its way when the checker stops:
    // the delivery above is the proof of the commit, this of the check.
    let stats = checker.stop().expect("checker stats");
    assert!(stats.checks >= 1, "{stats:?}");
}
