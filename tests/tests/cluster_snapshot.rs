//! Issue 11: a follower is down while 256 MiB is written (1 GiB with
//! `CMQ_CLUSTER_SNAPSHOT_MIB=1024`), with consumers deleting as they go;
//! when it comes back it catches up by snapshot (the leaders released the
//! log it missed), disk use on every node stays bounded by the live data
//! rather than by what was written, the ledger holds, and the replicas'
//! digests agree.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmq_integration_tests::{Cluster, ClusterSpec, Workload};
use cmq_protocol::FlushPolicy;

/// Written while the follower is down, unless `CMQ_CLUSTER_SNAPSHOT_MIB` says otherwise.
const DEFAULT_MIB: u64 = 256;

/// Bytes per message body: 16 of them make a 1 MiB batch.
const BODY_BYTES: usize = 64 * 1024;

/// Disk one node may use at any time: per shard (two) the open segment,
/// the spare one, and what a leader keeps for a lagging follower (two
/// segments) before it falls back to a snapshot, 17 MiB each, plus
/// catalogs and the live messages (a few MiB). Far below what is written.
const DISK_MAX: u64 = 2 * 5 * 17 * 1024 * 1024;

/// How long writing may take in a debug build on two busy cores.
const WRITE_TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn a_follower_down_while_much_is_written_catches_up_by_snapshot_with_bounded_disk() {
    let mib = std::env::var("CMQ_CLUSTER_SNAPSHOT_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_MIB);
    let mut c = Cluster::start(&ClusterSpec::default());
    let w = Workload::start_with(&c, "snap", &[FlushPolicy::Async], |s| {
        s.body_bytes = BODY_BYTES;
        s.batch = 16;
        s.window = 2;
    });
    w.wait_acks(64, Duration::from_secs(30));
    // A node that leads no shard (3 nodes, 2 shards: there is one).
    let follower =
        (0..c.len()).find(|&i| (0..c.shards).all(|s| c.leader_of(s) != Some(i))).expect("a node that leads nothing");
    c.kill9(follower);

    let peak = DiskWatch::start(&c);
    let messages = (mib << 20) as usize / BODY_BYTES;
    let t = Instant::now();
    w.wait_acks(messages, WRITE_TIMEOUT);
    eprintln!("{mib} MiB written in {:?} while node {} was down", t.elapsed(), follower + 1);

    let before = c.log(follower).len();
    c.restart(follower);
    w.finish(&c);
    let peaks = peak.stop();
    eprintln!("peak disk use per node: {:?} MiB", peaks.iter().map(|b| b >> 20).collect::<Vec<_>>());
    for (i, p) in peaks.iter().enumerate() {
        assert!(*p < DISK_MAX, "node {} used {} MiB of disk (bound {} MiB)", i + 1, p >> 20, DISK_MAX >> 20);
    }
    let since = c.log(follower)[before..].to_lowercase();
    assert!(since.contains("snapshot"), "node {} caught up without a snapshot", follower + 1);
}

/// Samples every node's disk use on its own thread, keeping the peaks.
struct DiskWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl DiskWatch {
    fn start(c: &Cluster) -> DiskWatch {
        let dirs: Vec<_> = (0..c.len()).map(|i| c.data_dir(i)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0u64; dirs.len()];
            while !s.load(Ordering::Relaxed) {
                for (p, d) in peaks.iter_mut().zip(&dirs) {
                    *p = (*p).max(cmq_integration_tests::cluster::dir_bytes(d));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            peaks
        });
        DiskWatch { stop, thread }
    }

    fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("disk watch")
    }
}
