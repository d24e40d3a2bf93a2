//! Queue administration in a cluster: queues that were used are deleted and
//! created again, on every shard, and no leader falls over. A DeleteQueue
//! first gathers the queues that name it as their dead-letter queue, and a
//! CreateQueue checks that no other shard holds the name; each shard answers
//! those reads once a ReadIndex round confirms its leadership, which happens
//! after the turn's entry is proposed. The leader's own answer completed the
//! gather right there and logged the deletion into an entry already
//! proposed: cmqd aborted ("submit with a reserved record not yet patched").

use std::time::Duration;

use cmq_client::Client;
use cmq_integration_tests::{name_on_shard, Cluster, ClusterSpec};
use cmq_protocol::QueueAttributesUpdate;

const ROUNDS: usize = 4;
const MESSAGES: usize = 5;

#[test]
fn used_queues_are_deleted_and_created_again_and_every_node_keeps_serving() {
    let mut c = Cluster::start(&ClusterSpec::default());
    let seeds: Vec<String> = c.client_addrs().iter().map(|a| a.to_string()).collect();
    let mut client = Client::connect(seeds.join(",").as_str()).expect("connect");
    client.set_retry_deadline(Duration::from_secs(20));
    for round in 0..ROUNDS {
        for shard in 0..c.shards {
            // The same names every round: deleted, then created again.
            let queue = name_on_shard("admin-", shard, c.shards);
            client
                .create_queue(&queue, &QueueAttributesUpdate::default())
                .unwrap_or_else(|e| panic!("round {round}: create {queue}: {e}"));
            for i in 0..MESSAGES {
                client.send(&queue, format!("m{i}"), 0).expect("send");
            }
            let got = client.receive(&queue, None).expect("receive").expect("a message");
            client.delete_message(&queue, got.receipt_handle).expect("delete message");
            client.delete_queue(&queue).unwrap_or_else(|e| panic!("round {round}: delete {queue}: {e}"));
        }
    }
    let listed = client.list_queues("admin-", "", 0, 100).expect("list");
    assert_eq!(listed.total, 0, "every queue deleted: {listed:?}");
    c.assert_running();
    c.assert_no_panics();
}
