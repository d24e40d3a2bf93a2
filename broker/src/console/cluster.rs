//! `GET /api/v1/cluster`: the nodes, whether each answers, and per shard
//! its leader and each follower's replication lag.
//!
//! Leaders and lag are this node's `ClusterStatus`: every shard's leader as
//! this node knows it, and follower progress for the shards this node
//! leads (only a leader tracks it). Whether a node is up is asked of the
//! node itself: its client port must answer an `AuthChallenge` within
//! [`NODE_PROBE_TIMEOUT`], every node at once, so a dead node costs the
//! page one timeout at most (a killed node's port refuses at once). An
//! `AuthChallenge` rather than a handshake: every node answers it, with
//! keys or without, and a node requiring authentication would count an
//! anonymous handshake as a failed authentication (and log it).

use std::time::Duration;

use cmq_protocol::frame::HEADER_BYTES;
use cmq_protocol::{AuthChallenge, ClusterNode, ClusterStatusOk, Request, Response};
use futures_util::future::join_all;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::api::{Answer, Ctx, BROKER_WAIT};
use super::{ok, Failure};

/// How long the page waits for another node to answer its probe.
pub const NODE_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Nodes, leaders and replication lag; `clustered: false` alone.
pub async fn cluster(r: &Ctx<'_>) -> Answer {
    let cfg = &r.ctx.shared.cfg;
    if cfg.cluster.is_none() {
        return Ok(ok(&json!({"clustered": false, "nodeId": cfg.node_id})));
    }
    let Response::ClusterStatus(s) = r.run(Request::ClusterStatus(Default::default()), BROKER_WAIT).await? else {
        return Err(Failure::new(StatusCode::BAD_GATEWAY, "BAD_ANSWER", "not a ClusterStatus answer"));
    };
    let tls = cfg.tls.is_some();
    let probes = join_all(s.map.nodes.iter().map(|n| probe(n, s.map.node_id, tls))).await;
    Ok(ok(&cluster_json(&s, &probes)))
}

/// Whether node `n` answers: this node does; another when its client port
/// answers an `AuthChallenge` in time (a TLS client port: accepts a connection,
/// as this node holds no client certificate for it). `Err`: why not.
async fn probe(n: &ClusterNode, me: u64, tls: bool) -> Result<(), String> {
    if n.id == me {
        return Ok(());
    }
    if n.client_addr.is_empty() {
        return Err("not heard from since this node started".into());
    }
    match tokio::time::timeout(NODE_PROBE_TIMEOUT, ask(&n.client_addr, tls)).await {
        Ok(answered) => answered,
        Err(_) => Err(format!("no answer within {} ms", NODE_PROBE_TIMEOUT.as_millis())),
    }
}

/// Connects to `addr` and reads the frame header of the answer to an
/// `AuthChallenge` (any answer, an error included, shows the node's loop runs).
async fn ask(addr: &str, tls: bool) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    if tls {
        return Ok(());
    }
    let mut challenge = Vec::new();
    Request::AuthChallenge(AuthChallenge {}).encode_frame(1, &mut challenge);
    stream.write_all(&challenge).await.map_err(|e| format!("write to {addr}: {e}"))?;
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).await.map_err(|e| format!("no answer from {addr}: {e}"))?;
    Ok(())
}

/// Nodes (with `probes[k]`, node k's probe), and per shard its leader and
/// each follower's lag behind the leader's log.
fn cluster_json(s: &ClusterStatusOk, probes: &[Result<(), String>]) -> Value {
    let me = s.map.node_id;
    let nodes: Vec<Value> = s
        .map
        .nodes
        .iter()
        .zip(probes)
        .map(|(n, p)| {
            json!({"id": n.id, "clientAddr": n.client_addr, "peerAddr": n.peer_addr, "self": n.id == me,
                   "up": p.is_ok(), "down": p.as_ref().err()})
        })
        .collect();
    let shards: Vec<Value> = s
        .shards
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let lag: Vec<Value> = g
                .followers
                .iter()
                .map(|f| json!({"node": f.node, "matched": f.matched, "lag": g.last_index.saturating_sub(f.matched)}))
                .collect();
            json!({"shard": k, "leader": g.leader, "term": g.term, "commit": g.commit, "applied": g.applied,
                   "lastIndex": g.last_index, "followers": lag})
        })
        .collect();
    json!({"clustered": true, "nodeId": me, "nodes": nodes, "shards": shards})
}

#[cfg(test)]
mod tests {
    use cmq_protocol::*;

    #[test]
    fn cluster_status_shows_leaders_lag_and_nodes_down() {
        let node = |id| ClusterNode { id, client_addr: format!("c{id}"), peer_addr: format!("p{id}") };
        let shard = ShardStatus {
            leader: 2,
            term: 3,
            commit: 90,
            applied: 90,
            last_index: 100,
            followers: vec![FollowerProgress { node: 1, matched: 100 }, FollowerProgress { node: 3, matched: 60 }],
            ..Default::default()
        };
        let s = ClusterStatusOk {
            map: ClusterMap { node_id: 1, nodes: vec![node(1), node(2), node(3)], ..Default::default() },
            shards: vec![shard],
        };
        let v = super::cluster_json(&s, &[Ok(()), Ok(()), Err("refused".into())]);
        assert_eq!(v["nodes"][2]["peerAddr"], "p3");
        assert_eq!((v["nodes"][0]["self"].as_bool(), v["nodes"][1]["self"].as_bool()), (Some(true), Some(false)));
        assert_eq!((v["nodes"][1]["up"].as_bool(), v["nodes"][1]["down"].is_null()), (Some(true), true));
        assert_eq!((v["nodes"][2]["up"].as_bool(), v["nodes"][2]["down"].as_str()), (Some(false), Some("refused")));
        assert_eq!(v["shards"][0]["leader"], 2);
        assert_eq!(v["shards"][0]["followers"][0]["lag"], 0);
        assert_eq!(v["shards"][0]["followers"][1]["lag"], 40);
    }

    #[tokio::test]
    async fn a_node_whose_port_refuses_is_down_and_one_that_answers_is_up() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let gone = ClusterNode { id: 2, client_addr: addr, peer_addr: String::new() };
        assert!(super::probe(&gone, 1, false).await.is_err_and(|e| e.contains("connect")));
        let unknown = ClusterNode { id: 3, ..Default::default() };
        assert!(super::probe(&unknown, 1, false).await.is_err());
        assert!(super::probe(&unknown, 3, false).await.is_ok(), "this node is up");

        // A peer that answers the challenge with any frame is up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let mut out = Vec::new();
            ErrorBody::new(ErrorCode::AUTH_FAILED, "wait").encode_frame(Opcode::AuthChallenge as u16, 1, &mut out);
            s.write_all(&out).await.expect("answer");
        });
        let alive = ClusterNode { id: 2, client_addr: addr, peer_addr: String::new() };
        assert_eq!(super::probe(&alive, 1, false).await, Ok(()));

        // One that accepts (the kernel does, for a stopped process) but never answers is down.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let stopped =
            ClusterNode { id: 2, client_addr: silent.local_addr().expect("addr").to_string(), ..Default::default() };
        assert!(super::probe(&stopped, 1, false).await.is_err_and(|e| e.contains("no answer within")));
    }
}
