//! A node whose machine restarted (a new boot id in `<data>/BOOT_ID`) may
//! have lost writes it had acknowledged as written, so each of its replicas
//! abstains from elections until a leader has committed an entry of its own
//! term on it. The abstention is kept in `shard-N/ABSTAINING`, so a process
//! crash before the node is back in step does not end it (the simulator
//! found an acknowledged async delete coming back that way).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cmq_integration_tests::{Cluster, ClusterSpec};

fn markers(c: &Cluster, node: usize) -> Vec<PathBuf> {
    (0..c.shards).map(|s| c.data_dir(node).join(format!("shard-{s}")).join("ABSTAINING")).collect()
}

fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_rebooted_node_abstains_until_in_step_even_across_a_crash() {
    let mut c = Cluster::start(&ClusterSpec::default());
    let leader = c.wait_leader(0, Duration::from_secs(20), |_| true);
    let node = (0..c.len()).find(|&i| i != leader).expect("a follower");
    let marks = markers(&c, node);
    assert!(marks.iter().all(|m| !m.exists()), "no marker before any reboot");

    c.kill9(node);
    // As if its machine had restarted, and cut off so it cannot get in step.
    std::fs::write(c.data_dir(node).join("BOOT_ID"), "another boot\n").expect("boot id");
    c.isolate(node);
    c.restart(node);
    wait("the abstaining markers", Duration::from_secs(20), || marks.iter().all(|m| m.exists()));

    // A crash while it abstains: the boot id is the current one now, and
    // only the marker keeps it abstaining.
    c.kill9(node);
    c.restart(node);
    c.wait_leader(0, Duration::from_secs(20), |i| i != node);
    assert!(marks.iter().all(|m| m.exists()), "the abstention survives a process crash");

    // Back in step with a leader: it votes again and the markers go.
    c.heal();
    wait("the markers to go once a leader commits on it", Duration::from_secs(30), || {
        marks.iter().all(|m| !m.exists())
    });
    c.assert_no_panics();
}
