//! Cluster operations: the map, every node's status, leadership transfer
//! and membership changes.
//!
//! A node answers `ClusterStatus` with its own view: only a shard's leader
//! knows how far each follower has the log. [`Client::cluster_status`]
//! therefore asks every node (at most `CLUSTER_NODES_MAX`, one short-lived
//! connection each) and keeps each answer; [`ClusterView::shard`] reads a
//! shard from its leader's answer.
//!
//! A node carries out `TransferLeader`, `AddNode` and `RemoveNode` for the
//! shards it leads, and answers "done" for the others (their leaders'
//! business). The client sends them to the leaders, then watches the
//! cluster until the change shows, sending again to a shard's new leader if
//! the leadership moved meanwhile, within the retry deadline.

use std::io;
use std::time::{Duration, Instant};

use cmq_protocol::{
    AddNode, ClusterMap, ClusterStatus, ClusterStatusOk, GetClusterMap, RemoveNode, Request, Response, ShardStatus,
    TransferLeader,
};

use crate::client::Client;
use crate::error::ClientError;
use crate::seeds::{connect_first, node_connect_timeout};

/// How often a change in progress is looked at.
pub const CHANGE_POLL: Duration = Duration::from_millis(50);

/// How long a change sent to a shard's leader may take to show before it
/// is sent again (the leader may have been deposed before carrying it out).
/// A leadership transfer completes in an election round; a membership
/// change in one commit.
pub const CHANGE_RESEND_AFTER: Duration = Duration::from_secs(2);

/// One node's answer to `ClusterStatus`, or why there is none.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: u64,
    /// Where this client asked it.
    pub client_addr: String,
    /// Its status, or the error that kept it from answering.
    pub status: Result<ClusterStatusOk, String>,
}

/// The cluster as every node reports it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// The map of the node that answered `GetClusterMap`.
    pub map: ClusterMap,
    /// One entry per node of the map, in id order.
    pub nodes: Vec<NodeStatus>,
}

/// A follower's place behind its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerLag {
    pub node: u64,
    /// The highest index the leader knows the follower holds.
    pub matched: u64,
    /// Entries of the leader's log the follower lacks.
    pub lag: u64,
}

/// One shard, as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub shard: u16,
    /// The node whose answer this is: the leader when it answered, else
    /// the answering node with the highest term.
    pub reported_by: u64,
    pub status: ShardStatus,
    /// Empty unless `reported_by` leads the shard.
    pub followers: Vec<FollowerLag>,
    /// `(node, applied index, digest)` of every node that answered.
    pub replicas: Vec<(u64, u64, u64)>,
}

impl ShardView {
    /// Whether every replica that applied as far as the reporting node has
    /// the same digest (replicas behind it may differ for now).
    pub fn digests_agree(&self) -> bool {
        self.replicas.iter().filter(|r| r.1 == self.status.applied).all(|r| r.2 == self.status.digest)
    }
}

impl ClusterView {
    /// Shards in the map (the answering node's shard count).
    pub fn shard_count(&self) -> u16 {
        self.map.leaders.len() as u16
    }

    /// Shard `k`, from its leader's answer when the leader answered.
    pub fn shard(&self, k: u16) -> Option<ShardView> {
        let answers: Vec<(u64, &ShardStatus)> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n.id, n.status.as_ref().ok()?.shards.get(usize::from(k))?)))
            .collect();
        // A deposed leader cut off from the others may still believe it
        // leads, in an older term: the latest term's claim wins.
        let by_term = |(id, st): &&(u64, &ShardStatus)| (st.term, std::cmp::Reverse(*id));
        let (by, st) = answers
            .iter()
            .filter(|(id, st)| st.leader == *id)
            .max_by_key(by_term)
            .or_else(|| answers.iter().max_by_key(by_term))
            .copied()?;
        let followers = if st.leader == by {
            st.followers
                .iter()
                .map(|f| FollowerLag { node: f.node, matched: f.matched, lag: st.last_index.saturating_sub(f.matched) })
                .collect()
        } else {
            Vec::new()
        };
        let replicas = answers.iter().map(|(id, s)| (*id, s.applied, s.digest)).collect();
        Some(ShardView { shard: k, reported_by: by, status: st.clone(), followers, replicas })
    }
}

impl Client {
    /// The cluster map as a node sees it now (any node; the client's own
    /// routes learn from it too).
    pub fn cluster_map(&mut self) -> Result<ClusterMap, ClientError> {
        let map = expect!(self.call(&Request::GetClusterMap(GetClusterMap {}))?, GetClusterMap)?;
        self.learn_map(&map);
        Ok(map)
    }

    /// Every node's `ClusterStatus`. A node that cannot be reached is
    /// listed with the error; only if none answers is it an error.
    pub fn cluster_status(&mut self) -> Result<ClusterView, ClientError> {
        let map = self.cluster_map()?;
        if map.nodes.is_empty() {
            // A broker that lists no nodes: its own answer is all there is.
            let st = expect!(self.call(&Request::ClusterStatus(ClusterStatus {}))?, ClusterStatus)?;
            let node = NodeStatus { id: map.node_id, client_addr: self.seeds().join(","), status: Ok(st) };
            return Ok(ClusterView { map, nodes: vec![node] });
        }
        let nodes: Vec<NodeStatus> = map.nodes.iter().map(|n| self.node_status(n.id)).collect();
        if nodes.iter().all(|n| n.status.is_err()) {
            let why: Vec<String> =
                nodes.iter().filter_map(|n| Some(format!("node {}: {}", n.id, n.status.as_ref().err()?))).collect();
            let msg = format!("no node answered ClusterStatus ({})", why.join("; "));
            return Err(ClientError::Io(io::Error::new(io::ErrorKind::NotConnected, msg)));
        }
        Ok(ClusterView { map, nodes })
    }

    /// Asks node `id` (on a connection of its own) for its status.
    fn node_status(&mut self, id: u64) -> NodeStatus {
        let addrs = self.routes_addrs(id);
        let client_addr = addrs.first().cloned().unwrap_or_default();
        let status = if addrs.is_empty() {
            Err("its client address is not known yet".to_owned())
        } else {
            // On a shard it leads, if any: a follower shard answers only
            // after a ReadIndex round with its leader.
            let hint = (0..self.shard_count()).find(|k| self.leader_of(*k) == id);
            ask(&addrs, hint, self.timeout(), self.credentials(), self.tls(), &Request::ClusterStatus(ClusterStatus {}))
                .and_then(|r| expect!(r, ClusterStatus))
                .map_err(|e| e.to_string())
        };
        NodeStatus { id, client_addr, status }
    }

    /// Makes node `to` the leader of `shard`, and waits (within the retry
    /// deadline) until node `to` reports leading it.
    pub fn transfer_leader(&mut self, shard: u16, to: u64) -> Result<(), ClientError> {
        let req = Request::TransferLeader(TransferLeader { shard: Some(shard), to });
        if shard >= self.shard_count() {
            // The broker explains (INVALID_PARAMETER).
            return expect!(self.call(&req)?, TransferLeader).map(drop);
        }
        // The new leader knows first; other nodes' maps may lag.
        let done = |c: &mut Client| {
            let st = c.node_status(to).status;
            Ok(st.is_ok_and(|st| st.shards.get(usize::from(shard)).is_some_and(|s| s.leader == to)))
        };
        let send = |c: &mut Client| expect!(c.call_for_shard(shard, &req)?, TransferLeader).map(drop);
        self.change_until(&format!("node {to} to lead shard {shard}"), done, send)
    }

    /// Adds node `id`, which its peers reach at `peer_addr`, to every
    /// shard's group, and waits until every shard's leader counts it as a
    /// voter. The new node catches up by itself.
    pub fn add_node(&mut self, id: u64, peer_addr: &str) -> Result<(), ClientError> {
        let req = Request::AddNode(AddNode { id, peer_addr: peer_addr.to_owned() });
        self.change_membership(&req, id, true)
    }

    /// Removes node `id` from every shard's group, and waits until no
    /// shard's leader counts it as a voter.
    pub fn remove_node(&mut self, id: u64) -> Result<(), ClientError> {
        self.change_membership(&Request::RemoveNode(RemoveNode { id }), id, false)
    }

    fn change_membership(&mut self, req: &Request, id: u64, member: bool) -> Result<(), ClientError> {
        let what =
            if member { format!("node {id} to join every shard") } else { format!("node {id} to leave every shard") };
        let done = |c: &mut Client| Ok(c.membership_pending(id, member)?.is_empty());
        let send = |c: &mut Client| {
            // One request per leader: a node carries it out for every shard it leads.
            let mut asked: Vec<u64> = Vec::new();
            for k in c.membership_pending(id, member)? {
                let leader = c.leader_of(k);
                if leader != 0 && asked.contains(&leader) {
                    continue;
                }
                asked.push(leader);
                let resp = c.call_for_shard(k, req)?;
                if !matches!(resp, Response::AddNode(_) | Response::RemoveNode(_)) {
                    let msg = format!("{} answered with {}", req.opcode().name(), resp.opcode().name());
                    return Err(ClientError::Protocol(msg));
                }
            }
            Ok(())
        };
        self.change_until(&what, done, send)
    }

    /// The shards whose leader does not yet count node `id` as a voter
    /// (`member`) or still does (not `member`).
    fn membership_pending(&mut self, id: u64, member: bool) -> Result<Vec<u16>, ClientError> {
        let view = self.cluster_status()?;
        Ok((0..view.shard_count())
            .filter(|k| view.shard(*k).is_none_or(|s| s.status.voters.contains(&id) != member))
            .collect())
    }

    /// Sends a change until `done` says it shows: again after
    /// [`CHANGE_RESEND_AFTER`] without it, looking every [`CHANGE_POLL`],
    /// for the retry deadline (at least one resend interval).
    fn change_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Client) -> Result<bool, ClientError>,
        mut send: impl FnMut(&mut Client) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let patience = self.retry_deadline().max(CHANGE_RESEND_AFTER);
        let deadline = Instant::now() + patience;
        loop {
            if done(self)? {
                return Ok(());
            }
            send(self)?;
            let resend_at = Instant::now() + CHANGE_RESEND_AFTER;
            loop {
                std::thread::sleep(CHANGE_POLL);
                if done(self)? {
                    return Ok(());
                }
                let now = Instant::now();
                if now >= deadline {
                    let msg = format!("waited {} s for {what}; it has not happened", patience.as_secs());
                    return Err(ClientError::Io(io::Error::new(io::ErrorKind::TimedOut, msg)));
                }
                if now >= resend_at {
                    break;
                }
            }
        }
    }
}

/// One request on a connection of its own to the first of `addrs` that
/// answers; the wait for the answer is bounded like a connect.
fn ask(
    addrs: &[String],
    hint: Option<u16>,
    timeout: Option<Duration>,
    credentials: Option<&crate::Credentials>,
    tls: Option<&crate::TlsOptions>,
    req: &Request,
) -> Result<Response, ClientError> {
    let mut conn = connect_first(addrs, hint, timeout, credentials, tls)?;
    conn.set_read_timeout(Some(node_connect_timeout(timeout)))?;
    let id = conn.submit(req);
    let (got, result) = conn.recv()?;
    if got != id {
        return Err(ClientError::Protocol(format!("answer to request {got}, asked {id}")));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmq_protocol::FollowerProgress;

    fn answer(id: u64, leader: u64, term: u64, applied: u64, digest: u64) -> NodeStatus {
        let st = ShardStatus {
            leader,
            term,
            commit: applied,
            applied,
            last_index: 10,
            voters: vec![1, 2, 3],
            followers: vec![FollowerProgress { node: 9, matched: 7 }],
            digest,
        };
        NodeStatus {
            id,
            client_addr: String::new(),
            status: Ok(ClusterStatusOk { map: ClusterMap::default(), shards: vec![st] }),
        }
    }

    fn view(nodes: Vec<NodeStatus>) -> ClusterView {
        let map = ClusterMap { leaders: vec![Default::default()], ..Default::default() };
        ClusterView { map, nodes }
    }

    #[test]
    fn a_shard_is_read_from_its_leader_of_the_latest_term() {
        // Node 1 was deposed in term 3 but has not heard; node 2 leads term 4.
        let v = view(vec![answer(1, 1, 3, 9, 5), answer(2, 2, 4, 10, 6), answer(3, 2, 4, 10, 6)]);
        let s = v.shard(0).expect("shard 0");
        assert_eq!((s.reported_by, s.status.term), (2, 4));
        assert_eq!(s.followers, vec![FollowerLag { node: 9, matched: 7, lag: 3 }]);
        assert_eq!(s.replicas.len(), 3);
        assert!(s.digests_agree(), "node 1 is behind, not different");
        assert!(v.shard(1).is_none());
    }

    #[test]
    fn without_the_leader_the_latest_term_reports_and_digests_are_compared() {
        let mut down = answer(2, 2, 4, 10, 6);
        down.status = Err("refused".into());
        let v = view(vec![answer(1, 2, 4, 10, 6), down, answer(3, 2, 4, 10, 7)]);
        let s = v.shard(0).expect("shard 0");
        assert_eq!(s.reported_by, 1, "the lowest id among the latest term's answers");
        assert!(s.followers.is_empty(), "only a leader knows its followers");
        assert!(!s.digests_agree(), "node 3 applied as far and differs");
    }
}
