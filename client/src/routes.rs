//! The client's picture of the cluster: which node leads each shard, and
//! where each node can be reached.
//!
//! It is fed by every handshake (each carries the answering node's cluster
//! map), by `GetClusterMap` answers, and by `NOT_LEADER` errors, which name
//! the leader the refusing node knows of (`leader=<id>@<addr>`). A map
//! replaces a shard's entry only when it is of a later term, or of the same
//! term and we knew no leader: an old map (from a node that has not heard of
//! the election yet) never undoes newer knowledge, nor names again a leader
//! this client just found down. A hint is taken as it comes: the refusing
//! node's Raft replica knows the leader now, while a node's map may lag
//! (a follower's map is not updated by an election it merely voted in), so
//! a shard whose leader cannot be reached is forgotten and asked of any
//! other node, whose `NOT_LEADER` names the new leader.
//!
//! A node is reached at the address this client last reached it at, when
//! there is one, before the map's: the map holds each node's listen address
//! as the node itself sees it (possibly 0.0.0.0, or behind a proxy the
//! client was told to use).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cmq_protocol::limits::CLUSTER_NODES_MAX;
use cmq_protocol::{ClusterMap, ClusterNode, ShardLeader};

/// How long a node that refused a connection, or lost one mid-request, is
/// tried last when any node will do. Long enough to skip it for the rest of
/// an election (a leader is replaced within about a second at the default
/// tick), short enough that a restarted node is soon used again.
pub const NODE_DOWN_HOLD: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone)]
struct Node {
    /// Its client address as the cluster map gives it ("" until known).
    map_addr: String,
    /// Where this client last reached it.
    seen: Option<SocketAddr>,
    down_until: Option<Instant>,
}

/// What a `NOT_LEADER` answer taught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// It names another node as the leader: go there now.
    Leader(u64),
    /// It knows no leader (an election is under way): wait, then ask again.
    NoLeader,
}

#[derive(Debug)]
pub struct Routes {
    seeds: Vec<String>,
    /// Item `k` is shard `k`'s leader (0: unknown) and the term it was learned for.
    leaders: Vec<ShardLeader>,
    /// At most `CLUSTER_NODES_MAX`, like the maps they come from.
    nodes: BTreeMap<u64, Node>,
}

impl Routes {
    pub fn new(seeds: Vec<String>, shard_count: u16) -> Routes {
        Routes { seeds, leaders: vec![ShardLeader::default(); usize::from(shard_count)], nodes: BTreeMap::new() }
    }

    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// Whether there is another node to turn to when one fails: the map
    /// names more than one, or more than one seed was given.
    pub fn has_alternatives(&self) -> bool {
        self.nodes.len() > 1 || self.seeds.len() > 1
    }

    /// The node believed to lead `shard`, 0 when none is known.
    pub fn leader(&self, shard: u16) -> u64 {
        self.leaders.get(usize::from(shard)).map_or(0, |l| l.leader)
    }

    /// Takes what a node's map says; `via` is where this client reached
    /// that node. A map for another shard count is someone else's cluster
    /// (or a broken node): its leaders are ignored.
    pub fn learn_map(&mut self, map: &ClusterMap, via: Option<SocketAddr>) {
        if !map.nodes.is_empty() {
            let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
            for n in map.nodes.iter().take(CLUSTER_NODES_MAX) {
                let mut node = self.nodes.remove(&n.id).unwrap_or_default();
                node.map_addr.clone_from(&n.client_addr);
                nodes.insert(n.id, node);
            }
            self.nodes = nodes;
        }
        if let Some(addr) = via {
            self.saw(map.node_id, addr);
        }
        if map.leaders.len() != self.leaders.len() {
            return;
        }
        let now = Instant::now();
        for k in 0..self.leaders.len() {
            let (mine, theirs) = (&self.leaders[k], &map.leaders[k]);
            // A leader this client found down is not taken back from a map
            // of the same term: a follower's map can lag an election.
            let same_term_news = theirs.term == mine.term && mine.leader == 0 && !self.is_down(theirs.leader, now);
            if theirs.term > mine.term || same_term_news {
                self.leaders[k] = theirs.clone();
            }
        }
    }

    /// This client reached node `id` at `addr`.
    pub fn saw(&mut self, id: u64, addr: SocketAddr) {
        if let Some(node) = self.node_entry(id) {
            node.seen = Some(addr);
            node.down_until = None;
        }
    }

    /// A `NOT_LEADER` answer for `shard` from node `from`, with its message.
    pub fn learn_not_leader(&mut self, shard: u16, from: u64, message: &str) -> Learned {
        let hint = cmq_protocol::parse_leader_hint(message).filter(|(id, _)| *id != from && *id != 0);
        let Some(slot) = self.leaders.get_mut(usize::from(shard)) else { return Learned::NoLeader };
        match hint {
            Some((id, addr)) => {
                slot.leader = id;
                if let Some(node) = self.node_entry(id) {
                    if node.map_addr.is_empty() || node.seen.is_none() {
                        addr.clone_into(&mut node.map_addr);
                    }
                }
                Learned::Leader(id)
            }
            None => {
                slot.leader = 0;
                Learned::NoLeader
            }
        }
    }

    /// Forgets who leads `shard` (its leader stopped answering).
    pub fn forget_leader(&mut self, shard: u16) {
        if let Some(l) = self.leaders.get_mut(usize::from(shard)) {
            l.leader = 0;
        }
    }

    pub fn mark_down(&mut self, id: u64, now: Instant) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.down_until = Some(now + NODE_DOWN_HOLD);
        }
    }

    pub fn is_down(&self, id: u64, now: Instant) -> bool {
        self.nodes.get(&id).and_then(|n| n.down_until).is_some_and(|t| now < t)
    }

    /// Where node `id` can be reached, best first (empty: unknown).
    pub fn addrs_of(&self, id: u64) -> Vec<String> {
        let Some(node) = self.nodes.get(&id) else { return Vec::new() };
        let mut out: Vec<String> = node.seen.iter().map(SocketAddr::to_string).collect();
        if !node.map_addr.is_empty() && !out.contains(&node.map_addr) {
            out.push(node.map_addr.clone());
        }
        out
    }

    /// Every address worth trying when any node will do: the nodes not
    /// down (those this client reached before first), then the ones down,
    /// then the seeds.
    pub fn any_node(&self, now: Instant) -> Vec<String> {
        let mut ids: Vec<u64> = self.nodes.keys().copied().collect();
        ids.sort_by_key(|id| (self.is_down(*id, now), self.nodes[id].seen.is_none()));
        let mut out: Vec<String> = Vec::new();
        for addr in ids.iter().flat_map(|id| self.addrs_of(*id)).chain(self.seeds.iter().cloned()) {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }

    /// The cluster as this client sees it now.
    pub fn map(&self) -> ClusterMap {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, n)| ClusterNode {
                id: *id,
                client_addr: n.seen.map_or_else(|| n.map_addr.clone(), |a| a.to_string()),
                peer_addr: String::new(),
            })
            .collect();
        ClusterMap { node_id: 0, nodes, leaders: self.leaders.clone() }
    }

    /// The entry for node `id`, created if there is room.
    fn node_entry(&mut self, id: u64) -> Option<&mut Node> {
        if !self.nodes.contains_key(&id) && self.nodes.len() >= CLUSTER_NODES_MAX {
            return None;
        }
        Some(self.nodes.entry(id).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(from: u64, leaders: &[(u64, u64)]) -> ClusterMap {
        ClusterMap {
            node_id: from,
            nodes: (1..=3)
                .map(|id| ClusterNode { id, client_addr: format!("127.0.0.1:770{id}"), peer_addr: String::new() })
                .collect(),
            leaders: leaders.iter().map(|&(leader, term)| ShardLeader { leader, term }).collect(),
        }
    }

    #[test]
    fn an_older_map_never_undoes_a_newer_one() {
        let mut r = Routes::new(vec!["s:1".into()], 2);
        r.learn_map(&map(1, &[(1, 5), (2, 5)]), None);
        assert_eq!((r.leader(0), r.leader(1)), (1, 2));
        r.learn_map(&map(3, &[(3, 4), (0, 6)]), None);
        assert_eq!((r.leader(0), r.leader(1)), (1, 0), "term 4 is older; term 6 knows no leader yet");
        r.learn_map(&map(3, &[(3, 6), (3, 6)]), None);
        assert_eq!((r.leader(0), r.leader(1)), (3, 3));
        r.learn_map(&map(3, &[(3, 9)]), None);
        assert_eq!(r.leader(0), 3, "another shard count is ignored");
        r.mark_down(3, Instant::now());
        r.forget_leader(0);
        r.learn_map(&map(1, &[(3, 6), (3, 6)]), None);
        assert_eq!(r.leader(0), 0, "a leader found down is not taken back at the same term");
        r.learn_map(&map(1, &[(3, 7), (3, 6)]), None);
        assert_eq!(r.leader(0), 3, "a later term may name it again");
    }

    #[test]
    fn hints_move_a_shard_and_no_hint_forgets_its_leader() {
        let mut r = Routes::new(vec![], 2);
        r.learn_map(&map(1, &[(1, 5), (1, 5)]), None);
        let msg = cmq_protocol::not_leader_message(0, Some((2, "127.0.0.1:7702")));
        assert_eq!(r.learn_not_leader(0, 1, &msg), Learned::Leader(2));
        assert_eq!(r.leader(0), 2);
        let msg = cmq_protocol::not_leader_message(1, None);
        assert_eq!(r.learn_not_leader(1, 1, &msg), Learned::NoLeader);
        assert_eq!(r.leader(1), 0);
        // A node naming itself cannot be right: it just refused.
        let msg = cmq_protocol::not_leader_message(0, Some((2, "127.0.0.1:7702")));
        assert_eq!(r.learn_not_leader(0, 2, &msg), Learned::NoLeader);
        assert_eq!(r.learn_not_leader(9, 1, "x"), Learned::NoLeader, "a shard out of range changes nothing");
    }

    #[test]
    fn a_node_is_reached_where_it_was_reached_before() {
        let mut r = Routes::new(vec!["seed:1".into()], 1);
        let via: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        r.learn_map(&map(2, &[(2, 1)]), Some(via));
        assert_eq!(r.addrs_of(2), vec!["10.0.0.1:9000".to_owned(), "127.0.0.1:7702".to_owned()]);
        assert_eq!(r.addrs_of(1), vec!["127.0.0.1:7701".to_owned()]);
        assert!(r.addrs_of(7).is_empty());
        // Reached first, the rest in id order, seeds last; a node down goes after the others.
        let any = r.any_node(Instant::now());
        assert_eq!(any[0], "10.0.0.1:9000");
        assert_eq!(any.last().map(String::as_str), Some("seed:1"));
        let now = Instant::now();
        r.mark_down(2, now);
        let any = r.any_node(now);
        assert_eq!(&any[..2], &["127.0.0.1:7701".to_owned(), "127.0.0.1:7703".to_owned()]);
        assert!(!r.is_down(2, now + NODE_DOWN_HOLD), "down only for a while");
    }

    #[test]
    fn nodes_stay_bounded() {
        let mut r = Routes::new(vec![], 1);
        for id in 1..=(CLUSTER_NODES_MAX as u64 + 5) {
            r.saw(id, "127.0.0.1:1".parse().unwrap());
        }
        assert_eq!(r.nodes.len(), CLUSTER_NODES_MAX);
    }
}
