//! What clients of a cluster were told, and the check that the cluster kept
//! its word.
//!
//! Load clients record here every send they attempted and every one that
//! was acknowledged, every delivery (receive reply) and every delete that
//! was acknowledged or whose outcome is unknown (the connection died, or
//! the node said it stopped leading mid-request). Every body is sent once
//! and never retried, so a body names one message: a body seen under two
//! message ids was enqueued twice.
//!
//! After the final drain (every queue received empty), [`Ledger::check`]
//! says whether:
//! * every acknowledged send that was not deleted was delivered by the
//!   drain (a lost message otherwise);
//! * no acknowledged delete came back: not in the drain, and not in a
//!   receive that was asked for after the delete was acknowledged;
//! * nothing was delivered that nobody sent, and no body became two messages;
//! * no two acknowledged receives leased one message with the same dequeue
//!   count (an acknowledged receive whose lease record was lost).
//!
//! Redeliveries (a message delivered again after its visibility timeout)
//! are counted separately: they are allowed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;

/// One delivery of a message to a client.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub msg_id: u64,
    pub dequeue_count: u32,
    /// When the receive that returned it was sent.
    pub asked_at: Instant,
    /// Returned by the final drain.
    pub drain: bool,
}

/// An acknowledged send, for failover timing.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub shard: u16,
    /// The node (index) that acknowledged it.
    pub node: usize,
    pub sent_at: Instant,
    pub acked_at: Instant,
}

#[derive(Default)]
struct State {
    /// Every body sent (acknowledged or not) and its queue.
    attempted: HashMap<Bytes, String>,
    /// Acknowledged sends: body and message id.
    acked: HashMap<Bytes, u64>,
    acks: Vec<Ack>,
    deliveries: HashMap<Bytes, Vec<Delivery>>,
    /// Acknowledged deletes: body and when the acknowledgement arrived.
    deleted: HashMap<Bytes, Instant>,
    /// Deletes whose outcome is unknown.
    delete_unknown: HashSet<Bytes>,
}

#[derive(Default)]
pub struct Ledger {
    st: Mutex<State>,
}

/// The outcome of [`Ledger::check`].
#[derive(Debug, Default)]
pub struct Report {
    pub attempted: usize,
    pub acked: usize,
    /// Sends without an acknowledgement whose message exists after all.
    pub unacked_delivered: usize,
    pub deleted: usize,
    pub delete_unknown: usize,
    /// Deliveries beyond the first of a message.
    pub redeliveries: usize,
    /// Messages the drain delivered.
    pub drained: usize,
    /// Acknowledged, not deleted, and not delivered by the drain.
    pub lost: Vec<String>,
    /// Acknowledged deletes that came back.
    pub resurrected: Vec<String>,
    /// Delivered but never sent.
    pub phantom: Vec<String>,
    /// One body under two message ids, or under another id than its send's.
    pub duplicated: Vec<String>,
    /// Two acknowledged receives with the same dequeue count.
    pub double_leases: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
            && self.resurrected.is_empty()
            && self.phantom.is_empty()
            && self.duplicated.is_empty()
            && self.double_leases.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} sends attempted, {} acknowledged ({} unacknowledged landed), {} deletes acknowledged, {} unknown, \
             {} drained, {} redeliveries; lost {}, resurrected {}, phantom {}, duplicated {}, double leases {}",
            self.attempted,
            self.acked,
            self.unacked_delivered,
            self.deleted,
            self.delete_unknown,
            self.drained,
            self.redeliveries,
            self.lost.len(),
            self.resurrected.len(),
            self.phantom.len(),
            self.duplicated.len(),
            self.double_leases.len()
        )
    }

    /// Panics with the details unless every check passed.
    #[track_caller]
    pub fn assert_ok(&self) {
        if self.is_ok() {
            return;
        }
        let mut s = format!("the ledger does not hold: {}\n", self.summary());
        for (what, list) in [
            ("lost", &self.lost),
            ("resurrected", &self.resurrected),
            ("phantom", &self.phantom),
            ("duplicated", &self.duplicated),
            ("double leases", &self.double_leases),
        ] {
            for item in list.iter().take(10) {
                let _ = writeln!(s, "  {what}: {item}");
            }
        }
        panic!("{s}");
    }
}

fn show(b: &Bytes) -> String {
    let text = String::from_utf8_lossy(b);
    text.split('|').take(3).collect::<Vec<_>>().join("|")
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bodies about to be sent to `queue`.
    pub fn attempt(&self, queue: &str, bodies: &[Bytes]) {
        let mut st = self.lock();
        for b in bodies {
            let old = st.attempted.insert(b.clone(), queue.to_owned());
            assert!(old.is_none(), "a load client reused a body: {}", show(b));
        }
    }

    /// A send of `bodies` was acknowledged with `ids`.
    pub fn acked(&self, ack: Ack, bodies: &[Bytes], ids: &[u64]) {
        let mut st = self.lock();
        for (b, id) in bodies.iter().zip(ids) {
            st.acked.insert(b.clone(), *id);
        }
        st.acks.push(ack);
    }

    /// A receive (asked at `asked_at`) returned these messages.
    pub fn delivered(&self, asked_at: Instant, drain: bool, msgs: &[(Bytes, u64, u32)]) {
        let mut st = self.lock();
        for (body, msg_id, dequeue_count) in msgs {
            let d = Delivery { msg_id: *msg_id, dequeue_count: *dequeue_count, asked_at, drain };
            st.deliveries.entry(body.clone()).or_default().push(d);
        }
    }

    /// Deletes of these messages were acknowledged.
    pub fn deleted(&self, bodies: &[Bytes]) {
        let now = Instant::now();
        let mut st = self.lock();
        for b in bodies {
            st.deleted.entry(b.clone()).or_insert(now);
        }
    }

    /// Deletes of these messages may or may not have happened.
    pub fn delete_unknown(&self, bodies: &[Bytes]) {
        let mut st = self.lock();
        st.delete_unknown.extend(bodies.iter().cloned());
    }

    /// Acknowledged sends so far.
    pub fn acked_count(&self) -> usize {
        self.lock().acked.len()
    }

    /// Acknowledged deletes so far.
    pub fn deleted_count(&self) -> usize {
        self.lock().deleted.len()
    }

    /// Every acknowledged send's record (for failover timing).
    pub fn acks(&self) -> Vec<Ack> {
        self.lock().acks.clone()
    }

    /// The first acknowledgement on `shard` by a node other than `not_node`
    /// that arrived after `after`.
    pub fn first_ack_after(&self, shard: u16, after: Instant, not_node: usize) -> Option<Instant> {
        self.lock()
            .acks
            .iter()
            .filter(|a| a.shard == shard && a.node != not_node && a.acked_at > after)
            .map(|a| a.acked_at)
            .min()
    }

    /// Whether `node` acknowledged a send on `shard` that was sent within `[from, to)`.
    pub fn acks_by_node_sent_within(&self, shard: u16, node: usize, from: Instant, to: Instant) -> usize {
        self.lock()
            .acks
            .iter()
            .filter(|a| a.shard == shard && a.node == node && a.sent_at >= from && a.sent_at < to)
            .count()
    }

    /// Checks every promise (see the module comment); call after the drain.
    pub fn check(&self) -> Report {
        let st = self.lock();
        let mut r = Report {
            attempted: st.attempted.len(),
            acked: st.acked.len(),
            deleted: st.deleted.len(),
            delete_unknown: st.delete_unknown.len(),
            ..Report::default()
        };
        for (body, ds) in &st.deliveries {
            check_deliveries(&st, body, ds, &mut r);
        }
        // Sorted, so a failure lists the same messages every run.
        let acked: BTreeMap<&Bytes, &u64> = st.acked.iter().collect();
        for (body, id) in acked {
            let gone = st.deleted.contains_key(body) || st.delete_unknown.contains(body);
            let drained = st.deliveries.get(body).is_some_and(|ds| ds.iter().any(|d| d.drain));
            if !gone && !drained {
                r.lost.push(format!("{} (msg {id})", show(body)));
            }
        }
        r
    }
}

fn check_deliveries(st: &State, body: &Bytes, ds: &[Delivery], r: &mut Report) {
    let name = show(body);
    if !st.attempted.contains_key(body) {
        r.phantom.push(name);
        return;
    }
    if !st.acked.contains_key(body) {
        r.unacked_delivered += 1;
    }
    if ds.iter().any(|d| d.drain) {
        r.drained += 1;
    }
    r.redeliveries += ds.len() - 1;
    let ids: HashSet<u64> = ds.iter().map(|d| d.msg_id).collect();
    let sent_as = st.acked.get(body);
    if ids.len() > 1 || sent_as.is_some_and(|id| !ids.contains(id)) {
        r.duplicated.push(format!("{name}: sent as {sent_as:?}, delivered as {ids:?}"));
    }
    let mut counts: Vec<u32> = ds.iter().map(|d| d.dequeue_count).collect();
    counts.sort_unstable();
    if counts.windows(2).any(|w| w[0] == w[1]) {
        r.double_leases.push(format!("{name}: dequeue counts {counts:?}"));
    }
    if let Some(acked_at) = st.deleted.get(body) {
        if ds.iter().any(|d| d.asked_at > *acked_at) {
            r.resurrected.push(format!("{name}: delivered after its delete was acknowledged"));
        }
    }
}
