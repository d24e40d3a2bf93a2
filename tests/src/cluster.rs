//! A cluster of real `cmqd` processes for replication tests.
//!
//! [`Cluster::start`] runs N nodes on 127.0.0.1, each with its own data
//! directory and fixed client and peer ports (a restarted node comes back
//! where it was), sharing one cluster key. Every peer link goes through a
//! [`Proxy`]: node `a` reaches node `b` at the proxy `links[a][b]`, so a
//! test can cut, delay or blackhole any direction of any pair. Nodes can be
//! killed (`kill -9`), restarted on the same data directory, paused
//! (SIGSTOP) and resumed. Waiting is polling `ClusterStatus` with a
//! deadline, never a bare sleep.
//!
//! Each node's stderr (its log) goes to `node<ID>.log` in the cluster's
//! temporary directory; when a test panics the harness prints the tail of
//! every log (`CMQ_CLUSTER_KEEP=1` keeps the directory and prints its path).
//! `CMQ_CLUSTER_ON_STUCK=<program>` runs that program with the nodes' pids
//! when they fail to converge, before they are killed (to attach gdb, or
//! take `ss` of their sockets).

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cmq_protocol::names::shard_for;
use cmq_protocol::*;

use crate::broker::cmqd_path;
use crate::node_conn::NodeConn;
use crate::ports::reserve_port;
use crate::proxy::Proxy;
use crate::raw::Reply;

/// How long a node may take to recover its log and listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one ClusterStatus round trip may take before the node counts
/// as unreachable for that poll.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between two polls of the cluster's state.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Log lines printed per node when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// The smallest segment cmqd accepts: keeps each node's disk use small.
const SEGMENT_BYTES: &str = "17825792";

/// A random number from the standard library's randomly keyed hasher.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub shards: u16,
    /// `--raft-tick-ms` (cmqd's default when None).
    pub raft_tick_ms: Option<u64>,
    /// More cmqd flags for every node.
    pub extra_args: Vec<String>,
    /// Where the nodes' client ports serve TLS (`--tls-cert` in
    /// `extra_args`): how the harness's own connections reach them.
    pub client_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for ClusterSpec {
    fn default() -> ClusterSpec {
        ClusterSpec { nodes: 3, shards: 2, raft_tick_ms: None, extra_args: Vec::new(), client_tls: None }
    }
}

struct Node {
    id: u64,
    client: SocketAddr,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// The HTTP port (bound at :0), once started.
    http: Option<SocketAddr>,
}

impl Node {
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open node log");
        let _ = writeln!(log, "==== harness: starting node {} ====", self.id);
        let mut child = Command::new(cmqd_path())
            .args(&self.args)
            .env("RUST_LOG", std::env::var("CMQD_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn cmqd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            // cmqd prints its HTTP port before the client address.
            let mut http = None;
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if let Some(addr) = line.trim().strip_prefix("cmqd http on ") {
                    http = addr.parse::<SocketAddr>().ok();
                }
                if line.starts_with("cmqd listening on ") {
                    let _ = tx.send(http);
                }
                line.clear();
            }
            // Keep draining so cmqd never blocks on a full pipe.
            let _ = r.read_to_end(&mut Vec::new());
        });
        let started = rx.recv_timeout(START_TIMEOUT);
        self.child = Some(child);
        self.paused = false;
        if let Ok(http) = started {
            self.http = http;
        }
        if started.is_err() {
            self.kill9();
            panic!("node {} did not start; its log:\n{}", self.id, tail(&self.log_path, LOG_TAIL_LINES));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    fn signal(&mut self, signal: rustix::process::Signal) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("node is running");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
        rustix::process::kill_process(pid, signal).expect("signal cmqd");
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One node's view of every shard, as `ClusterStatus` gave it.
pub type Status = ClusterStatusOk;

pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    pub shards: u16,
    nodes: Vec<Node>,
    /// `links[a][b]`: where node `a` dials node `b` (None on the diagonal).
    links: Vec<Vec<Option<Proxy>>>,
    /// `ClusterSpec::client_tls`.
    client_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Cluster {
    /// Starts every node and waits until every shard has a leader.
    pub fn start(spec: &ClusterSpec) -> Cluster {
        Cluster::start_with(spec, |_| Vec::new())
    }

    /// [`Cluster::start`], with `node_args(i)` appended to node `i`'s flags
    /// (after `spec.extra_args`): nodes configured differently.
    pub fn start_with(spec: &ClusterSpec, node_args: impl Fn(usize) -> Vec<String>) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("cluster.key");
        write_key(&key);
        let n = spec.nodes;
        let client: Vec<SocketAddr> = (0..n).map(|_| local(reserve_port())).collect();
        let peer: Vec<SocketAddr> = (0..n).map(|_| local(reserve_port())).collect();
        let links: Vec<Vec<Option<Proxy>>> =
            (0..n).map(|a| (0..n).map(|b| (a != b).then(|| Proxy::start(peer[b]))).collect()).collect();
        let nodes = (0..n)
            .map(|i| {
                let peers: Vec<String> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| format!("{}={}", j + 1, links[i][j].as_ref().expect("a link").addr()))
                    .collect();
                let mut args: Vec<String> = vec![
                    "--node-id".into(),
                    (i + 1).to_string(),
                    // Three nodes on one machine: no fixed HTTP port.
                    "--http-listen".into(),
                    "127.0.0.1:0".into(),
                    "--listen".into(),
                    client[i].to_string(),
                    "--peer-listen".into(),
                    peer[i].to_string(),
                    "--peers".into(),
                    peers.join(","),
                    "--data-dir".into(),
                    dir.path().join(format!("node{}", i + 1)).display().to_string(),
                    "--cluster-key-file".into(),
                    key.display().to_string(),
                    "--shards".into(),
                    spec.shards.to_string(),
                    "--segment-bytes".into(),
                    SEGMENT_BYTES.into(),
                ];
                if let Some(t) = spec.raft_tick_ms {
                    args.extend(["--raft-tick-ms".into(), t.to_string()]);
                }
                args.extend(spec.extra_args.iter().cloned());
                args.extend(node_args(i));
                let log_path = dir.path().join(format!("node{}.log", i + 1));
                Node { id: i as u64 + 1, client: client[i], args, log_path, child: None, paused: false, http: None }
            })
            .collect();
        let mut c = Cluster { dir: Some(dir), shards: spec.shards, nodes, links, client_tls: spec.client_tls.clone() };
        for node in &mut c.nodes {
            node.spawn();
        }
        for s in 0..c.shards {
            c.wait_leader(s, Duration::from_secs(20), |_| true);
        }
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Where clients reach each node (index `i` is node id `i + 1`).
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.client).collect()
    }

    /// The shard that owns `queue`.
    pub fn shard_of(&self, queue: &str) -> u16 {
        shard_for(queue, self.shards)
    }

    /// Running and not paused.
    /// Node `i`'s HTTP port (CMQ API, console), as it last started.
    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].http.expect("the node printed its HTTP port")
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some() && !self.nodes[i].paused
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].child.as_ref().map_or(0, |c| c.id())
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.as_ref().expect("the cluster's directory").path().join(format!("node{}", i + 1))
    }

    /// Disk space node `i`'s data directory takes (allocated blocks, so a
    /// preallocated segment counts in full and a sparse one does not).
    pub fn disk_bytes(&self, i: usize) -> u64 {
        dir_bytes(&self.data_dir(i))
    }

    /// Where node `i`'s log of `shard` starts now: the position of its
    /// oldest segment (segment files are named after their first position),
    /// 0 until it released one.
    pub fn log_start(&self, i: usize, shard: u16) -> u64 {
        let dir = self.data_dir(i).join(format!("shard-{shard}"));
        let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok()?.strip_suffix(".log")?.parse::<u64>().ok())
            .min()
            .unwrap_or(0)
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].log_path.clone()
    }

    /// Everything node `i` logged (every run of it).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default()
    }

    // ---- processes ------------------------------------------------------------

    /// `kill -9` node `i` (paused or not).
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// `kill -9` every node at once (every signal sent before waiting for any).
    pub fn kill9_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                let _ = c.kill();
            }
        }
        for n in &mut self.nodes {
            n.kill9();
        }
    }

    /// Starts node `i` again on its data directory and ports.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
    }

    /// Nodes that should be running but exited (crashed, or were stopped
    /// by someone else), with how they ended.
    pub fn exited(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(Ok(Some(status))) = n.child.as_mut().map(|c| c.try_wait()) {
                out.push((i, status));
            }
        }
        out
    }

    /// Panics if a node that should be running has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        let exited = self.exited();
        assert!(exited.is_empty(), "nodes exited on their own: {exited:?}");
    }

    /// Panics if a node logged a panic (a shard thread that died leaves the
    /// process running but that shard deaf, which a test might not notice).
    #[track_caller]
    pub fn assert_no_panics(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(&n.log_path).unwrap_or_default();
            if let Some(at) = log.find("panicked at") {
                let excerpt: String = log[at..].lines().take(4).collect::<Vec<_>>().join("\n");
                panic!("node {} panicked: {excerpt}", i + 1);
            }
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing runs.
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal(rustix::process::Signal::STOP);
        self.nodes[i].paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal(rustix::process::Signal::CONT);
        self.nodes[i].paused = false;
    }

    // ---- links ------------------------------------------------------------------

    /// The proxy node `from` reaches node `to` through.
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        self.links[from][to].as_ref().expect("no link from a node to itself")
    }

    fn links_of(&self, i: usize) -> impl Iterator<Item = &Proxy> {
        (0..self.len()).filter(move |&j| j != i).flat_map(move |j| [self.link(i, j), self.link(j, i)])
    }

    /// Blackholes every link to and from node `i` (a partition: nothing
    /// flows, connections stay open).
    pub fn isolate(&self, i: usize) {
        for p in self.links_of(i) {
            p.blackhole();
        }
    }

    /// Blackholes both directions between `a` and `b`.
    pub fn blackhole_pair(&self, a: usize, b: usize) {
        self.link(a, b).blackhole();
        self.link(b, a).blackhole();
    }

    /// Delays every chunk on every link to and from node `i` by `d`.
    pub fn delay(&self, i: usize, d: Duration) {
        for p in self.links_of(i) {
            p.delay(d);
        }
    }

    /// Every link forwards again.
    pub fn heal(&self) {
        for p in self.links.iter().flatten().flatten() {
            p.heal();
        }
    }

    // ---- status -------------------------------------------------------------------

    /// Node `i`'s ClusterStatus, or why it could not be had.
    pub fn status(&self, i: usize) -> Result<Status, String> {
        if !self.is_up(i) {
            return Err("down".into());
        }
        let (mut c, _) = self.node_conn(i, None).map_err(|e| e.to_string())?;
        match c.call(&Request::ClusterStatus(ClusterStatus {}), STATUS_TIMEOUT) {
            Ok(Reply::Ok(_, Response::ClusterStatus(s))) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    }

    /// Every node's status (errors for nodes that are down or silent).
    pub fn statuses(&self) -> Vec<Result<Status, String>> {
        (0..self.len()).map(|i| self.status(i)).collect()
    }

    /// The node that says it leads `shard`, if one does among those up.
    pub fn leader_of(&self, shard: u16) -> Option<usize> {
        (0..self.len()).find(|&i| self.status(i).is_ok_and(|s| self_leads(&s, i, shard)))
    }

    /// Waits until a node for which `accept` holds says it leads `shard`;
    /// returns it. Panics past `timeout`, showing what each node said.
    pub fn wait_leader(&self, shard: u16, timeout: Duration, accept: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.statuses();
            if let Some(i) =
                (0..self.len()).find(|&i| accept(i) && st[i].as_ref().is_ok_and(|s| self_leads(s, i, shard)))
            {
                return i;
            }
            if Instant::now() >= deadline {
                panic!("no acceptable leader of shard {shard} within {timeout:?}:\n{}", describe(&st));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Waits until every node is up and agrees on every shard: the same
    /// leader, the same commit index, everything in each log committed and
    /// applied; then returns each shard's digest, asserting every node has
    /// the same. Panics past `timeout`.
    pub fn wait_converged(&self, timeout: Duration) -> Vec<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.statuses();
            if let Some(digests) = converged(&st, self.shards) {
                return digests;
            }
            if Instant::now() >= deadline {
                if let Ok(cmd) = std::env::var("CMQ_CLUSTER_ON_STUCK") {
                    let pids: Vec<String> = (0..self.len()).map(|i| self.pid(i).to_string()).collect();
                    let _ = std::process::Command::new(cmd).args(&pids).status();
                }
                panic!("the nodes did not converge within {timeout:?}:\n{}", describe(&st));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    // ---- queues -----------------------------------------------------------------------

    /// Creates `queue` (following leaders; "already exists" after a retry
    /// of a creation whose reply was lost is fine). Panics past 20 s.
    pub fn create_queue(&self, queue: &str, attributes: QueueAttributesUpdate) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let shard = self.shard_of(queue);
        let req = Request::CreateQueue(CreateQueue { queue: queue.into(), attributes });
        let mut last = String::new();
        while Instant::now() < deadline {
            let leader = self.leader_of(shard).unwrap_or(0);
            let reply = self.node_conn(leader, Some(shard)).and_then(|(mut c, _)| c.call(&req, Duration::from_secs(5)));
            match reply {
                Ok(Reply::Ok(..)) => return,
                Ok(Reply::Err(_, e)) if e.code() == ErrorCode::QUEUE_ALREADY_EXISTS => return,
                other => last = format!("{other:?}"),
            }
            std::thread::sleep(POLL_EVERY);
        }
        panic!("could not create {queue}: {last}");
    }

    /// A protocol connection to node `i`'s client port (over TLS where
    /// the spec said so), asking for `shard_hint`'s event loop.
    pub fn node_conn(&self, i: usize, shard_hint: Option<u16>) -> std::io::Result<(NodeConn, HandshakeOk)> {
        NodeConn::open_with(self.nodes[i].client, shard_hint, self.client_tls.as_ref())
    }

    /// The tail of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!("---- node {} ({}) ----\n{}\n", n.id, n.log_path.display(), tail(&n.log_path, lines)));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let exited = self.exited();
        for n in &mut self.nodes {
            n.kill9();
        }
        if std::thread::panicking() {
            eprintln!("==== cluster logs (last {LOG_TAIL_LINES} lines each) ====\n{}", self.log_tails(LOG_TAIL_LINES));
            for (i, status) in exited {
                eprintln!("node {} had exited on its own: {status}", i + 1);
            }
        }
        if std::env::var_os("CMQ_CLUSTER_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("cluster data and logs kept in {}", d.keep().display());
            }
        }
    }
}

/// Disk space a directory tree takes (allocated blocks).
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0, // removed while we looked
        })
        .sum()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A fresh random key, readable by the owner only (cmqd refuses others).
fn write_key(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let key: String = (0..4).map(|_| format!("{:016x}", random_u64())).collect();
    let mut f: File =
        OpenOptions::new().create_new(true).write(true).mode(0o600).open(path).expect("create the cluster key file");
    f.write_all(key.as_bytes()).expect("write the cluster key");
}

fn self_leads(s: &Status, i: usize, shard: u16) -> bool {
    s.shards.get(usize::from(shard)).is_some_and(|sh| sh.leader == i as u64 + 1)
}

/// Each shard's digest if every node answered and they all agree.
fn converged(st: &[Result<Status, String>], shards: u16) -> Option<Vec<u64>> {
    let ok: Vec<&Status> = st.iter().map(|s| s.as_ref().ok()).collect::<Option<_>>()?;
    let mut digests = Vec::with_capacity(usize::from(shards));
    for k in 0..usize::from(shards) {
        let views: Vec<&ShardStatus> = ok.iter().map(|s| s.shards.get(k)).collect::<Option<_>>()?;
        let first = views[0];
        let settled = views.iter().all(|v| {
            v.leader != 0
                && v.leader == first.leader
                && v.commit == first.commit
                && v.applied == v.commit
                && v.last_index == v.commit
        });
        if !settled {
            return None;
        }
        let ds: Vec<u64> = views.iter().map(|v| v.digest).collect();
        assert!(
            ds.iter().all(|d| *d == ds[0]),
            "shard {k}: every node applied up to {} but the digests differ: {ds:x?}\n{}",
            first.commit,
            describe(st)
        );
        digests.push(ds[0]);
    }
    Some(digests)
}

/// One line per node and shard, for failure messages.
pub fn describe(st: &[Result<Status, String>]) -> String {
    let mut s = String::new();
    for (i, r) in st.iter().enumerate() {
        match r {
            Err(e) => s.push_str(&format!("  node {}: {e}\n", i + 1)),
            Ok(status) => {
                for (k, sh) in status.shards.iter().enumerate() {
                    let f: Vec<String> = sh.followers.iter().map(|f| format!("{}:{}", f.node, f.matched)).collect();
                    s.push_str(&format!(
                        "  node {} shard {k}: leader {} term {} commit {} applied {} last {} followers [{}] digest {:x}\n",
                        i + 1,
                        sh.leader,
                        sh.term,
                        sh.commit,
                        sh.applied,
                        sh.last_index,
                        f.join(" "),
                        sh.digest
                    ));
                }
            }
        }
    }
    s
}
