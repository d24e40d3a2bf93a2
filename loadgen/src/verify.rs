//! `--verify` bookkeeping: which sends were acknowledged, what every
//! consumer received, and the verdict (lost, duplicated, redelivered).
//!
//! Producers mark acknowledged message counters in a bitmap; consumers log
//! every delivery. At the end the logs are merged and sorted by message id,
//! and each message's deliveries are judged in the order they arrived:
//!
//! * an acknowledged message with no delivery is **lost**;
//! * a delivery after the previous one of the same message was deleted, or
//!   while the previous one's lease (`next_visible_time_ms`) was still valid,
//!   or without a higher `dequeue_count`, is a **duplicate** — the broker
//!   handed out a message it should not have;
//! * a delivery after the previous lease ended, with a higher
//!   `dequeue_count`, is a **redelivery**: at-least-once working as
//!   specified, counted apart. A first delivery with `dequeue_count > 1`
//!   (an earlier delivery went to a reply this run never saw) counts there too.

use crate::body::{message_id, split_id};

/// Acknowledged message counters of one producer.
#[derive(Debug, Default, Clone)]
pub struct AckSet {
    bits: Vec<u64>,
    count: u64,
}

impl AckSet {
    /// Marks counters `start..start + n` acknowledged.
    pub fn mark(&mut self, start: u64, n: u64) {
        for seq in start..start + n {
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if word >= self.bits.len() {
                self.bits.resize((word + 1).next_power_of_two(), 0);
            }
            if self.bits[word] & (1 << bit) == 0 {
                self.bits[word] |= 1 << bit;
                self.count += 1;
            }
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.bits.get((seq / 64) as usize).is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Acknowledged messages.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits
            .iter()
            .enumerate()
            .flat_map(|(w, &bits)| (0..64u64).filter(move |b| bits & (1 << b) != 0).map(move |b| w as u64 * 64 + b))
    }
}

/// Marker id for a delivered body this run did not write (another run's
/// leftovers on a reused queue, or not a load-generator body at all).
pub const FOREIGN: u64 = u64::MAX;

/// One delivery as a consumer saw it. 32 bytes; a run keeps one per delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// `body::message_id`, or `FOREIGN`.
    pub id: u64,
    /// Wall-clock Unix milliseconds when the receive's answer arrived.
    pub recv_ms: u64,
    /// The lease end the broker reported (`next_visible_time_ms`).
    pub lease_end_ms: u64,
    pub dequeue_count: u32,
    /// The delete of this delivery's receipt handle succeeded.
    pub deleted: bool,
}

/// The verdict of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Sends the broker acknowledged.
    pub acked: u64,
    /// Distinct messages of this run that were delivered.
    pub delivered_unique: u64,
    /// Acknowledged, never delivered.
    pub lost: u64,
    /// Deliveries that should not have happened (see the module docs).
    pub duplicated: u64,
    /// Deliveries after a lease expired (`dequeue_count > 1`).
    pub redelivered: u64,
    /// Messages of this run delivered whose send was never acknowledged
    /// (the send's answer was lost with a broken connection, or the send failed).
    pub unacked_delivered: u64,
    /// Deliveries of bodies this run did not write.
    pub foreign: u64,
    /// A few lost message ids, for debugging (filled by the caller).
    pub sample_lost: Vec<u64>,
}

/// Judges a run. `acks[p]` is producer `p`'s set; `deliveries` is every
/// consumer's log concatenated (sorted here).
pub fn judge(acks: &[AckSet], deliveries: &mut [Delivery]) -> Verdict {
    let mut v = Verdict { acked: acks.iter().map(AckSet::count).sum(), ..Verdict::default() };
    deliveries.sort_unstable_by_key(|d| (d.id, d.recv_ms, d.dequeue_count));
    let mut delivered: Vec<AckSet> = vec![AckSet::default(); acks.len()];
    let mut i = 0;
    while i < deliveries.len() {
        let id = deliveries[i].id;
        let mut end = i + 1;
        while end < deliveries.len() && deliveries[end].id == id {
            end += 1;
        }
        let group = &deliveries[i..end];
        i = end;
        if id == FOREIGN {
            v.foreign += group.len() as u64;
            continue;
        }
        v.delivered_unique += 1;
        let (producer, seq) = split_id(id);
        match acks.get(producer as usize) {
            Some(set) if set.contains(seq) => delivered[producer as usize].mark(seq, 1),
            _ => v.unacked_delivered += 1,
        }
        if group[0].dequeue_count > 1 {
            v.redelivered += 1;
        }
        for pair in group.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            let lease_over = next.recv_ms >= prev.lease_end_ms;
            if !prev.deleted && lease_over && next.dequeue_count > prev.dequeue_count {
                v.redelivered += 1;
            } else {
                v.duplicated += 1;
            }
        }
    }
    for (p, set) in acks.iter().enumerate() {
        v.lost += set.iter().filter(|&seq| !delivered[p].contains(seq)).count() as u64;
    }
    v
}

/// The ids of up to `n` lost messages, for the report (a lead for debugging).
pub fn some_lost(acks: &[AckSet], deliveries: &[Delivery], n: usize) -> Vec<u64> {
    let mut seen: Vec<u64> = deliveries.iter().map(|d| d.id).collect();
    seen.sort_unstable();
    let mut out = Vec::new();
    for (p, set) in acks.iter().enumerate() {
        for seq in set.iter() {
            let id = message_id(p as u32, seq);
            if seen.binary_search(&id).is_err() {
                out.push(id);
                if out.len() >= n {
                    return out;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(producer: u32, seq: u64, recv_ms: u64, lease_end_ms: u64, dequeue_count: u32, deleted: bool) -> Delivery {
        Delivery { id: message_id(producer, seq), recv_ms, lease_end_ms, dequeue_count, deleted }
    }

    fn acked(per_producer: &[u64]) -> Vec<AckSet> {
        per_producer
            .iter()
            .map(|&n| {
                let mut s = AckSet::default();
                s.mark(0, n);
                s
            })
            .collect()
    }

    #[test]
    fn clean_run_has_nothing_to_report() {
        let acks = acked(&[2, 1]);
        let mut log = vec![d(1, 0, 10, 40, 1, true), d(0, 1, 11, 41, 1, true), d(0, 0, 12, 42, 1, true)];
        let v = judge(&acks, &mut log);
        assert_eq!(v, Verdict { acked: 3, delivered_unique: 3, ..Verdict::default() });
    }

    #[test]
    fn acknowledged_but_never_delivered_is_lost() {
        let acks = acked(&[3]);
        let mut log = vec![d(0, 0, 10, 40, 1, true), d(0, 2, 10, 40, 1, true)];
        let v = judge(&acks, &mut log);
        assert_eq!((v.lost, v.duplicated, v.redelivered), (1, 0, 0));
        assert_eq!(some_lost(&acks, &log, 10), vec![message_id(0, 1)]);
    }

    #[test]
    fn second_delivery_within_the_lease_is_a_duplicate() {
        let acks = acked(&[1]);
        // Delivered twice, the second while the first lease (until 40) held.
        let mut log = vec![d(0, 0, 10, 40, 1, false), d(0, 0, 20, 50, 2, true)];
        let v = judge(&acks, &mut log);
        assert_eq!((v.lost, v.duplicated, v.redelivered), (0, 1, 0));
    }

    #[test]
    fn same_dequeue_count_twice_is_a_duplicate_even_after_the_lease() {
        let acks = acked(&[1]);
        let mut log = vec![d(0, 0, 10, 40, 1, false), d(0, 0, 60, 90, 1, true)];
        assert_eq!(judge(&acks, &mut log).duplicated, 1);
    }

    #[test]
    fn delivery_after_a_successful_delete_is_a_duplicate() {
        let acks = acked(&[1]);
        let mut log = vec![d(0, 0, 10, 40, 1, true), d(0, 0, 60, 90, 2, true)];
        let v = judge(&acks, &mut log);
        assert_eq!((v.duplicated, v.redelivered), (1, 0));
    }

    #[test]
    fn delivery_after_the_lease_expired_is_a_redelivery() {
        let acks = acked(&[1]);
        let mut log = vec![d(0, 0, 10, 40, 1, false), d(0, 0, 40, 70, 2, false), d(0, 0, 75, 100, 3, true)];
        let v = judge(&acks, &mut log);
        assert_eq!((v.lost, v.duplicated, v.redelivered, v.delivered_unique), (0, 0, 2, 1));
    }

    #[test]
    fn first_seen_with_a_high_dequeue_count_is_a_redelivery() {
        let acks = acked(&[1]);
        let mut log = vec![d(0, 0, 10, 40, 3, true)];
        assert_eq!(judge(&acks, &mut log).redelivered, 1);
    }

    #[test]
    fn order_of_the_logs_does_not_matter() {
        let acks = acked(&[1]);
        let mut log = vec![d(0, 0, 40, 70, 2, true), d(0, 0, 10, 40, 1, false)];
        let v = judge(&acks, &mut log);
        assert_eq!((v.duplicated, v.redelivered), (0, 1));
    }

    #[test]
    fn unacknowledged_and_foreign_deliveries_are_counted_apart() {
        let acks = acked(&[1]);
        let mut log = vec![
            d(0, 0, 10, 40, 1, true),
            d(0, 5, 10, 40, 1, true),
            Delivery { id: FOREIGN, recv_ms: 1, lease_end_ms: 2, dequeue_count: 1, deleted: true },
        ];
        let v = judge(&acks, &mut log);
        assert_eq!((v.lost, v.unacked_delivered, v.foreign, v.duplicated), (0, 1, 1, 0));
    }

    #[test]
    fn ack_set_marks_ranges_once() {
        let mut s = AckSet::default();
        s.mark(0, 16);
        s.mark(8, 16);
        s.mark(1000, 1);
        assert_eq!(s.count(), 25);
        assert!(s.contains(23) && s.contains(1000) && !s.contains(24) && !s.contains(1 << 30));
        assert_eq!(s.iter().count(), 25);
    }
}
