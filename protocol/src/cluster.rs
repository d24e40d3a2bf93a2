//! Cluster operations: the cluster map clients route by, the status an
//! operator reads, leadership transfer and membership changes; and how a
//! `NOT_LEADER` error names the leader.
//!
//! In a cluster every shard is a Raft group with one replica on each node.
//! A request for a shard must reach the node that leads it; any other node
//! answers `NOT_LEADER` with the leader it knows of, in the error message
//! as `leader=<node id>@<client address>` (see [`not_leader_message`]).

use crate::limits::{CLUSTER_NODES_MAX, SHARDS_MAX, STRING_BYTES_MAX};

crate::wire_struct! {
    /// A node of the cluster.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ClusterNode {
        pub id: u64,
        /// Where clients connect to it (empty until it has been heard from).
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub client_addr: String = string(STRING_BYTES_MAX),
        /// Where its peers connect to it.
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub peer_addr: String = string(STRING_BYTES_MAX),
    }
}

crate::wire_struct! {
    /// Who leads one shard, as the answering node believes.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ShardLeader {
        /// The leading node's id; 0 when none is known (an election is under way).
        pub leader: u64,
        pub term: u64,
    }
}

crate::wire_struct! {
    /// The cluster as one node sees it: its nodes and each shard's leader
    /// (item `k` of `leaders` is shard `k`). A single node reports itself
    /// (id 0 when it runs without `--node-id`) as every shard's leader.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ClusterMap {
        /// The node that answered.
        pub node_id: u64,
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<ClusterNode>(), 0..4)"))]
        pub nodes: Vec<ClusterNode> = list(CLUSTER_NODES_MAX),
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<ShardLeader>(), 0..4)"))]
        pub leaders: Vec<ShardLeader> = list(SHARDS_MAX),
    }
}

impl ClusterMap {
    /// The client address of the node that leads `shard`, if known.
    pub fn leader_addr(&self, shard: u16) -> Option<&str> {
        let leader = self.leaders.get(usize::from(shard))?.leader;
        self.nodes.iter().find(|n| n.id == leader && !n.client_addr.is_empty()).map(|n| n.client_addr.as_str())
    }
}

crate::wire_struct! {
    /// ClusterMap: the cluster map, as in the handshake.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetClusterMap {}
}

crate::wire_struct! {
    /// ClusterStatus: the map plus each shard's replication state on the answering node.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ClusterStatus {}
}

crate::wire_struct! {
    /// How far one follower has the leader's log.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct FollowerProgress {
        pub node: u64,
        /// The highest log index the leader knows the follower holds.
        pub matched: u64,
    }
}

crate::wire_struct! {
    /// One shard's Raft group as the answering node sees it.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ShardStatus {
        pub leader: u64,
        pub term: u64,
        /// The highest index known committed here.
        pub commit: u64,
        /// The highest index applied to this node's queues.
        pub applied: u64,
        /// The last index in this node's log.
        pub last_index: u64,
        /// Voting members of the group.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<u64>(), 0..4)"))]
        pub voters: Vec<u64> = list(CLUSTER_NODES_MAX),
        /// Only when the answering node leads the shard.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<FollowerProgress>(), 0..4)"))]
        pub followers: Vec<FollowerProgress> = list(CLUSTER_NODES_MAX),
        /// A fingerprint of the shard's replicated state on this node (queues,
        /// messages, not log positions): replicas that applied the same entries
        /// report the same value.
        pub digest: u64,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ClusterStatusOk {
        pub map: ClusterMap,
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<ShardStatus>(), 0..4)"))]
        pub shards: Vec<ShardStatus> = list(SHARDS_MAX),
    }
}

crate::wire_struct! {
    /// Ask the leader of `shard` (every shard this node leads when absent)
    /// to hand leadership to node `to`.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct TransferLeader {
        pub shard: Option<u16>,
        pub to: u64,
    }
}

crate::wire_struct! {
    /// Add node `id`, reachable by its peers at `peer_addr`, to every
    /// shard's group (one node at a time; it catches up by snapshot).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct AddNode {
        pub id: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::text()"))]
        pub peer_addr: String = string(STRING_BYTES_MAX),
    }
}

crate::wire_struct! {
    /// Remove node `id` from every shard's group.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct RemoveNode {
        pub id: u64,
    }
}

/// The message of a `NOT_LEADER` error: what happened, then the leader if
/// known as `leader=<id>@<addr>` at the end.
pub fn not_leader_message(shard: u16, leader: Option<(u64, &str)>) -> String {
    match leader {
        Some((id, addr)) => format!("this node does not lead shard {shard}; leader={id}@{addr}"),
        None => {
            format!("this node does not lead shard {shard} and knows no leader yet (an election is under way); retry")
        }
    }
}

/// The leader a `NOT_LEADER` message names: `(node id, client address)`.
pub fn parse_leader_hint(message: &str) -> Option<(u64, &str)> {
    let hint = &message[message.rfind("leader=")? + "leader=".len()..];
    let (id, addr) = hint.split_once('@')?;
    Some((id.parse().ok()?, addr)).filter(|(_, a)| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hints_round_trip() {
        let m = not_leader_message(3, Some((2, "127.0.0.1:7702")));
        assert_eq!(parse_leader_hint(&m), Some((2, "127.0.0.1:7702")));
        assert_eq!(parse_leader_hint(&not_leader_message(3, None)), None);
        assert_eq!(parse_leader_hint("leader=x@y"), None);
        assert_eq!(parse_leader_hint("leader=1@"), None);
    }

    #[test]
    fn leader_addr_follows_the_map() {
        let map = ClusterMap {
            node_id: 1,
            nodes: vec![
                ClusterNode { id: 1, client_addr: "a:1".into(), peer_addr: "a:2".into() },
                ClusterNode { id: 2, client_addr: "b:1".into(), peer_addr: "b:2".into() },
            ],
            leaders: vec![ShardLeader { leader: 2, term: 5 }, ShardLeader { leader: 0, term: 5 }],
        };
        assert_eq!(map.leader_addr(0), Some("b:1"));
        assert_eq!(map.leader_addr(1), None);
        assert_eq!(map.leader_addr(7), None);
    }
}
