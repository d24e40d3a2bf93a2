//! Crash test for moves between queues (issue 5, done-when #2): kill -9
//! cmqd at random moments while messages are being dead-lettered and while
//! they are being redriven, restart it, let it settle, and check that every
//! message is in exactly one of the two queues: none lost, none in both,
//! none twice.
//!
//! Two sources feed one dead-letter queue: one on the other shard (the move
//! is a cross-shard transfer) and one on the same shard. Messages are found
//! by their original id with PeekMessages, which shows moved messages under
//! that id with their origin.
//!
//! The moments are drawn from a seeded RNG; the seed is printed, and
//! `CMQ_CRASH_SEED=<seed>` replays a run (`CMQ_CRASH_ROUNDS` runs more rounds).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cmq_integration_tests::{backlog, dead_letter_after, name_on_shard, poll_until, Broker, RawConn};
use cmq_protocol::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SHARDS: u16 = 2;
const PER_SOURCE: usize = 150;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

struct Setup {
    sources: Vec<String>,
    dlq: String,
    /// Original message id -> the source queue it was sent to.
    home: HashMap<u64, String>,
}

impl Setup {
    fn total(&self) -> u64 {
        self.home.len() as u64
    }

    /// Where each original id is now (queue names, one per copy found), by peeking every queue.
    fn locate(&self, c: &mut RawConn, ctx: &str) -> HashMap<u64, Vec<String>> {
        let mut at: HashMap<u64, Vec<String>> = HashMap::new();
        for q in self.sources.iter().chain([&self.dlq]) {
            for m in c.peek_all(q) {
                if let Some(o) = &m.origin {
                    assert_eq!(o.original_msg_id, m.msg_id, "{ctx}: peek shows the original id: {m:?}");
                    assert_eq!(Some(&o.source_queue), self.home.get(&m.msg_id), "{ctx}: origin of {m:?}");
                }
                at.entry(m.msg_id).or_default().push(q.clone());
            }
        }
        at
    }

    /// Every message is in exactly one queue, the one `expected` names for it.
    fn check(&self, c: &mut RawConn, ctx: &str, expected: impl Fn(&str) -> String) {
        let at = self.locate(c, ctx);
        let lost: Vec<&u64> = self.home.keys().filter(|id| !at.contains_key(id)).collect();
        let twice: Vec<(&u64, &Vec<String>)> = at.iter().filter(|(_, qs)| qs.len() > 1).collect();
        let strangers: Vec<&u64> = at.keys().filter(|id| !self.home.contains_key(id)).collect();
        assert!(lost.is_empty(), "{ctx}: {} messages lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
        assert!(
            twice.is_empty(),
            "{ctx}: {} messages in two places, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
        assert!(strangers.is_empty(), "{ctx}: unknown ids {:?}", &strangers[..strangers.len().min(5)]);
        for (id, home) in &self.home {
            assert_eq!(at[id][0], expected(home), "{ctx}: message {id} (from {home}) is in the wrong queue");
        }
    }
}

/// Waits until the sources hold `in_sources` each and the DLQ `in_dlq`
/// (moves under way after the restart have landed), failing if they do not.
fn settle(c: &mut RawConn, s: &Setup, in_sources: u64, in_dlq: u64, ctx: &str) {
    poll_until(Duration::from_secs(30), &format!("{ctx}: the queues settle"), || {
        let counts: Vec<u64> = s.sources.iter().chain([&s.dlq]).map(|q| backlog(&c.queue_info(q))).collect();
        let want: Vec<u64> = s.sources.iter().map(|_| in_sources).chain([in_dlq]).collect();
        if counts == want {
            Ok(())
        } else {
            Err(format!("sources..dlq = {counts:?}, want {want:?}"))
        }
    });
}

/// Receives every message of every source once (they are moved to the DLQ
/// when their 1 s leases end), spreading the receives over a few hundred ms
/// so the moves do too. Returns when the first receive happened.
fn poison_all(c: &mut RawConn, s: &Setup, rng: &mut StdRng) -> Instant {
    let mut first = None;
    for q in &s.sources {
        let mut got = 0;
        while got < PER_SOURCE {
            let batch = c.batch_receive_ok(q, 16, Some(1));
            first.get_or_insert_with(Instant::now);
            got += batch.len();
            // Deliberate pacing, not a wait for an event: spreads the lease ends.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        }
        assert_eq!(got, PER_SOURCE);
    }
    first.expect("received something")
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

#[test]
fn kill9_during_dead_letter_moves_and_redrives_loses_and_duplicates_nothing() {
    let seed = env_u64("CMQ_CRASH_SEED").unwrap_or_else(|| rand::rng().random());
    let rounds = env_u64("CMQ_CRASH_ROUNDS").unwrap_or(6);
    eprintln!("dlq_crash: seed {seed}, {rounds} rounds (replay with CMQ_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut broker = Broker::start(&["--shards", "2"]);
    let mut c = RawConn::open(broker.addr);
    let dlq = name_on_shard("dead", 1, SHARDS);
    let sources = vec![name_on_shard("far", 0, SHARDS), name_on_shard("near", 1, SHARDS)];
    c.create_queue(&dlq);
    let mut home = HashMap::new();
    for q in &sources {
        c.create_queue_attrs(q, dead_letter_after(&dlq, 1, 1));
        for chunk in 0..PER_SOURCE.div_ceil(16) {
            let n = (PER_SOURCE - chunk * 16).min(16);
            let bodies = (0..n).map(|i| Bytes::from(format!("{q}-{}", chunk * 16 + i))).collect();
            for id in c.batch_send_ok(q, 0, bodies) {
                home.insert(id, q.clone());
            }
        }
    }
    let s = Setup { sources, dlq, home };
    assert_eq!(s.total(), 2 * PER_SOURCE as u64);
    s.check(&mut c, "before any crash", |home| home.to_owned());

    for round in 0..rounds {
        let dead_letter_round = round % 2 == 0;
        let ctx;
        if dead_letter_round {
            let first = poison_all(&mut c, &s, &mut rng);
            // Leases end from 1 s after the first receive on.
            let at_ms = rng.random_range(950..1700);
            ctx = format!("seed {seed} round {round} (kill -9 {at_ms} ms after the first receive, dead-lettering)");
            sleep_until(first + Duration::from_millis(at_ms));
            let dlq_now = backlog(&c.queue_info(&s.dlq));
            eprintln!("{ctx}: {dlq_now} in the DLQ at the kill");
        } else {
            let rate = rng.random_range(150..400);
            let at_ms = rng.random_range(50..1000);
            ctx = format!("seed {seed} round {round} (kill -9 {at_ms} ms into a redrive at {rate}/s)");
            let r = c.start_redrive_ok(&s.dlq, "", rate);
            assert_eq!(r.remaining, s.total(), "{ctx}: {r:?}");
            std::thread::sleep(Duration::from_millis(at_ms));
            let r = c.redrive_info(r.id);
            eprintln!("{ctx}: {} moved at the kill", r.moved);
        }
        drop(c);
        broker.kill9();
        broker.restart();
        c = RawConn::open(broker.addr);
        if dead_letter_round {
            settle(&mut c, &s, 0, s.total(), &ctx);
            s.check(&mut c, &ctx, |_| s.dlq.clone());
        } else {
            let running: Vec<RedriveInfo> =
                c.list_redrives_ok().into_iter().filter(|r| r.state == RedriveState::Running).collect();
            assert!(running.len() <= 1, "{ctx}: {running:?}");
            for r in running {
                poll_until(Duration::from_secs(30), &format!("{ctx}: the redrive finishes"), || {
                    let now = c.redrive_info(r.id);
                    if now.state == RedriveState::Done {
                        Ok(())
                    } else {
                        Err(format!("{now:?}"))
                    }
                });
            }
            settle(&mut c, &s, PER_SOURCE as u64, 0, &ctx);
            s.check(&mut c, &ctx, |home| home.to_owned());
        }
    }
}
