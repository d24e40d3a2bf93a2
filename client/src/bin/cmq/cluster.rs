//! `cmq cluster ...`: status, leadership transfer, membership changes.

use anyhow::Result;
use cmq_client::{Client, ClusterView, ShardView};
use serde::Serialize;

use crate::args::ClusterCommand;
use crate::commands::Out;
use crate::render::table;

pub fn run(c: &mut Client, out: &mut Out, cmd: &ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let view = c.cluster_status()?;
            if out.json {
                out.json(&StatusJson::from(&view))?;
            } else {
                out.line(format_args!("{}\n{}", nodes_table(&view), shards_table(&view).trim_end()))?;
            }
        }
        ClusterCommand::TransferLeader { shard, to } => {
            c.transfer_leader(*shard, *to)?;
            eprintln!("shard {shard} is led by node {to}");
            out.done()?;
        }
        ClusterCommand::AddNode { id, peer_addr } => {
            c.add_node(*id, peer_addr)?;
            eprintln!("node {id} is a voter of every shard");
            out.done()?;
        }
        ClusterCommand::RemoveNode { id } => {
            c.remove_node(*id)?;
            eprintln!("node {id} is no longer a voter of any shard");
            out.done()?;
        }
    }
    Ok(())
}

/// One line per node: where it is and whether it answered.
pub fn nodes_table(view: &ClusterView) -> String {
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            let peer = view.map.nodes.iter().find(|m| m.id == n.id).map_or("", |m| m.peer_addr.as_str());
            let state = match &n.status {
                Ok(_) => "up".to_owned(),
                Err(e) => format!("unreachable: {e}"),
            };
            vec![n.id.to_string(), or_dash(&n.client_addr), or_dash(peer), state]
        })
        .collect();
    table(&["NODE", "CLIENT", "PEER", "STATE"], &rows)
}

/// One line per shard, as its leader reports it.
pub fn shards_table(view: &ClusterView) -> String {
    let rows: Vec<Vec<String>> = (0..view.shard_count())
        .map(|k| match view.shard(k) {
            Some(s) => shard_row(&s),
            None => vec![k.to_string(), "?".into(), "-".into(), "-".into(), "-".into(), "no node answered".into()],
        })
        .collect();
    table(&["SHARD", "LEADER", "TERM", "COMMIT", "FOLLOWERS (NODE:LAG)", "DIGEST"], &rows)
}

fn shard_row(s: &ShardView) -> Vec<String> {
    let st = &s.status;
    let leader = if st.leader == 0 { "none (election)".to_owned() } else { st.leader.to_string() };
    let followers = if s.reported_by != st.leader {
        format!("(the leader did not answer; as node {} sees it)", s.reported_by)
    } else if s.followers.is_empty() {
        "-".to_owned()
    } else {
        s.followers.iter().map(|f| format!("{}:{}", f.node, f.lag)).collect::<Vec<_>>().join(" ")
    };
    vec![
        s.shard.to_string(),
        leader,
        st.term.to_string(),
        st.commit.to_string(),
        followers,
        format!("{:016x} {}", st.digest, replicas_note(s)),
    ]
}

/// How the replicas' digests compare with the reporting node's.
fn replicas_note(s: &ShardView) -> String {
    let at = s.status.applied;
    let same = s.replicas.iter().filter(|r| r.1 == at && r.2 == s.status.digest).count();
    let behind = s.replicas.iter().filter(|r| r.1 < at).count();
    let ahead = s.replicas.iter().filter(|r| r.1 > at).count();
    let differ = s.replicas.len() - same - behind - ahead;
    let mut parts = vec![format!("({same} of {} same", s.replicas.len())];
    if behind + ahead > 0 {
        parts.push(format!("{} applying", behind + ahead));
    }
    if differ > 0 {
        parts.push(format!("{differ} DIFFERENT"));
    }
    format!("{})", parts.join(", "))
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson {
    /// The node that answered for the map.
    node_id: u64,
    nodes: Vec<NodeJson>,
    shards: Vec<ShardJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson {
    id: u64,
    client_addr: String,
    peer_addr: String,
    /// Why it did not answer; null when it did.
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShardJson {
    shard: u16,
    /// 0: no leader known (an election is under way).
    leader: u64,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    last_index: u64,
    voters: Vec<u64>,
    /// The node whose answer this is (the leader when it answered).
    reported_by: u64,
    followers: Vec<FollowerJson>,
    /// Hex, 16 digits: a u64 does not survive JSON readers that use doubles.
    digest: String,
    replicas: Vec<ReplicaJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FollowerJson {
    node: u64,
    matched_index: u64,
    lag: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplicaJson {
    node: u64,
    applied_index: u64,
    digest: String,
}

impl From<&ClusterView> for StatusJson {
    fn from(view: &ClusterView) -> Self {
        let nodes = view
            .nodes
            .iter()
            .map(|n| NodeJson {
                id: n.id,
                client_addr: n.client_addr.clone(),
                peer_addr: view
                    .map
                    .nodes
                    .iter()
                    .find(|m| m.id == n.id)
                    .map(|m| m.peer_addr.clone())
                    .unwrap_or_default(),
                error: n.status.as_ref().err().cloned(),
            })
            .collect();
        let shards = (0..view.shard_count()).filter_map(|k| view.shard(k)).map(ShardJson::from).collect();
        StatusJson { node_id: view.map.node_id, nodes, shards }
    }
}

impl From<ShardView> for ShardJson {
    fn from(s: ShardView) -> Self {
        let st = s.status;
        ShardJson {
            shard: s.shard,
            leader: st.leader,
            term: st.term,
            commit_index: st.commit,
            applied_index: st.applied,
            last_index: st.last_index,
            voters: st.voters,
            reported_by: s.reported_by,
            followers: s
                .followers
                .iter()
                .map(|f| FollowerJson { node: f.node, matched_index: f.matched, lag: f.lag })
                .collect(),
            digest: format!("{:016x}", st.digest),
            replicas: s
                .replicas
                .iter()
                .map(|r| ReplicaJson { node: r.0, applied_index: r.1, digest: format!("{:016x}", r.2) })
                .collect(),
        }
    }
}
