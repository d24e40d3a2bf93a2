//! Issue 9, case 7: a backlog of HTTP pushes to an endpoint that never
//! answers must not make the shard redo work that grows with the backlog.
//!
//! The endpoint accepts connections and never answers, so the push pool
//! fills up (4 pushes in flight, its per-shard queue full) and refuses more.
//! Before the fix the shard copied and signed every due push every 100 ms
//! only to have the pool refuse it: a core kept busy, and every loop turn
//! as long as the backlog. Now it hands the pool what it has room for and
//! stops; while the pool is full it looks again every 100 ms at the cost
//! of one comparison. The test reads cmqd's CPU time (from /proc) second
//! by second, once with the backlog built by publishing and once after a
//! restart (when every pending push is due at once), and asserts that cmqd
//! goes quiet (a second in which it uses under a tenth of a core) once it
//! has filled the pool, the legitimate work: a resource figure with a wide
//! margin, not a timing (a loaded machine only makes the filling take
//! longer). Before the fix it never went quiet. The test prints the
//! shard's loop-turn summary (p50, p99, max) logged at shutdown.
//!
//! `CMQ_PUSH_BACKLOG=100000` runs it with the 100,000 pushes (the
//! default is 20,000, to keep the suite fast); with `CMQD_BIN` pointing at
//! a release build it is the measurement reported in the issue.

mod topic_util;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_client::{Client, SubscribeBuilder};
use cmq_integration_tests::Broker;
use cmq_protocol::{BatchPublishMessage, Request, Response, Subscribe, TopicAttributesUpdate};
use topic_util::*;

/// Pending pushes by default (`CMQ_PUSH_BACKLOG` overrides).
const BACKLOG_DEFAULT: usize = 20_000;
const BODIES_PER_PUBLISH: usize = 16;
/// CPU time is read over windows this long.
const WINDOW: Duration = Duration::from_secs(1);
/// A quiet window: cmqd used less CPU than this (a tenth of a core).
/// Redoing the backlog every 100 ms keeps a core busy; a full pool costs
/// next to nothing (about 3 ms a second, debug build).
const QUIET_CPU_MAX: Duration = Duration::from_millis(100);
/// How long cmqd may take to fill the pool (4,096 pushes built once, the
/// legitimate work) and go quiet, on a loaded machine.
const QUIET_WITHIN: Duration = Duration::from_secs(30);

/// An HTTP endpoint that accepts connections and never answers (every push
/// to it waits for its full timeout).
fn black_hole() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for s in l.incoming().flatten() {
            // Keep reading so the pushes' bytes never stall the sender;
            // never answer.
            if let Ok(mut r) = s.try_clone() {
                std::thread::spawn(move || while r.read(&mut [0u8; 65536]).is_ok_and(|n| n > 0) {});
            }
            held.push(s);
        }
    });
    format!("http://{addr}/hook")
}

/// User plus system CPU time of process `pid` so far (/proc/PID/stat,
/// fields 14 and 15, in clock ticks of 10 ms on Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // `rest` starts at field 3, so utime (14) and stime (15) are at 11 and 12.
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

/// CPU time cmqd used in each one-second window until one is quiet (or
/// [`QUIET_WITHIN`] passed); the last is the quiet one if any was.
fn windows_until_quiet(b: &Broker) -> Vec<Duration> {
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < QUIET_WITHIN {
        let before = cpu_time(b.pid());
        std::thread::sleep(WINDOW);
        let used = cpu_time(b.pid()) - before;
        seen.push(used);
        if used < QUIET_CPU_MAX {
            break;
        }
    }
    seen
}

fn quiet(windows: &[Duration]) -> bool {
    windows.last().is_some_and(|w| *w < QUIET_CPU_MAX)
}

fn publish(c: &mut Client, topic: &str, messages: usize) {
    let tickets: Vec<_> = (0..messages.div_ceil(BODIES_PER_PUBLISH))
        .map(|p| {
            let n = BODIES_PER_PUBLISH.min(messages - p * BODIES_PER_PUBLISH);
            let bodies = (0..n).map(|i| Bytes::from(format!("push {p}-{i}"))).collect();
            let req = Request::BatchPublishMessage(BatchPublishMessage {
                topic: topic.to_owned(),
                bodies,
                tags: Default::default(),
                routing_key: String::new(),
                ..Default::default()
            });
            c.submit(&req).expect("submit publish")
        })
        .collect();
    c.flush().expect("flush");
    for t in tickets {
        assert!(matches!(c.wait(t).expect("publish"), Response::BatchPublishMessage(_)));
    }
}

/// The shard's loop-turn summary cmqd logs when it stops.
fn turn_summary(log: &str) -> String {
    log.lines().filter(|l| l.contains("loop turns; busy time per turn")).collect::<Vec<_>>().join("\n")
}

#[test]
fn pushes_to_a_dead_endpoint_cost_nothing_while_the_pool_is_full() {
    let backlog: usize = std::env::var("CMQ_PUSH_BACKLOG").ok().and_then(|v| v.parse().ok()).unwrap_or(BACKLOG_DEFAULT);
    let url = black_hole();
    let mut b = Broker::start(&["--shards", "1"]);
    let mut c = client(&b);
    c.create_topic("dead-pushes", &TopicAttributesUpdate::default()).expect("create topic");
    c.subscribe(&Subscribe::to_http("dead-pushes", "hook", &url)).expect("subscribe");
    publish(&mut c, "dead-pushes", backlog);
    let pending = c.topic_info("dead-pushes").expect("topic info").msg_count;
    assert_eq!(pending, backlog as u64, "nothing can have been delivered");
    let running = windows_until_quiet(&b);
    eprintln!("{backlog} pushes pending: cmqd's CPU time per second until quiet: {running:?}");

    // After a restart every pending push is due at once.
    b.kill9();
    b.restart();
    let restarted = windows_until_quiet(&b);
    let status = b.terminate();
    eprintln!("after a restart: cmqd's CPU time per second until quiet: {restarted:?}");
    eprintln!("{}", turn_summary(&b.stderr()));
    assert!(status.success(), "cmqd stopped cleanly: {status:?}");
    assert!(quiet(&running), "with the pool full cmqd never went quiet: {running:?} of CPU a second");
    assert!(quiet(&restarted), "after a restart cmqd never went quiet: {restarted:?} of CPU a second");
}
