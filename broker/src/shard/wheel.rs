//! A coarse timer wheel for connection deadlines (handshake, partial frame,
//! stalled output, idle).
//!
//! A shard may hold 10,000 connections: scanning them every loop turn would
//! cost more than the turn's real work. Instead each connection has one entry
//! here at the time its earliest deadline could fall. Entries are lazy: when
//! one fires the shard recomputes the connection's deadline from its current
//! state and either acts or files a new entry, so activity on a connection
//! (which moves its deadlines) costs nothing here. A turn with no slot due
//! costs one comparison; a due slot costs O(entries in it).

use super::mailbox::ConnRef;

/// Width of one slot: deadlines fire up to this late.
pub const WHEEL_TICK_MS: u64 = 250;

/// Slots in the wheel. A deadline further ahead than the wheel spans
/// (64 s) is filed in the last slot and re-filed when that fires.
pub const WHEEL_SLOTS: usize = 256;

/// How far ahead the wheel reaches.
pub const WHEEL_SPAN_MS: u64 = WHEEL_TICK_MS * (WHEEL_SLOTS as u64 - 1);

pub struct Wheel {
    slots: Vec<Vec<(ConnRef, u64)>>,
    /// The time of the next slot to fire (a multiple of the tick).
    next_ms: u64,
    len: usize,
}

impl Wheel {
    pub fn new(now_ms: u64) -> Wheel {
        Wheel { slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(), next_ms: round_up(now_ms + 1), len: 0 }
    }

    /// The slot time an entry for `at_ms` gets: rounded up to a tick, no
    /// earlier than the next slot and no later than the wheel reaches.
    pub fn slot_time(&self, at_ms: u64) -> u64 {
        round_up(at_ms).clamp(self.next_ms, self.next_ms + WHEEL_SPAN_MS)
    }

    /// Files `c` to fire at `slot_time(at_ms)`, which it returns.
    pub fn insert(&mut self, at_ms: u64, c: ConnRef) -> u64 {
        let t = self.slot_time(at_ms);
        self.slots[slot_index(t)].push((c, t));
        self.len += 1;
        t
    }

    /// When the next slot fires, if anything is filed.
    pub fn next_due(&self) -> Option<u64> {
        (self.len > 0).then_some(self.next_ms)
    }

    /// Moves every entry whose slot time has come (`<= now_ms`) into `out`,
    /// each with the slot time it was filed for.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<(ConnRef, u64)>) {
        // After a long stall every slot is due once; what was filed for
        // later than the stall comes out early and is simply re-filed.
        let mut turns = 0;
        while self.next_ms <= now_ms && turns < WHEEL_SLOTS {
            let slot = &mut self.slots[slot_index(self.next_ms)];
            self.len -= slot.len();
            out.append(slot);
            self.next_ms += WHEEL_TICK_MS;
            turns += 1;
        }
        if self.next_ms <= now_ms {
            self.next_ms = round_up(now_ms + 1);
        }
    }
}

fn round_up(ms: u64) -> u64 {
    ms.div_ceil(WHEEL_TICK_MS) * WHEEL_TICK_MS
}

fn slot_index(t: u64) -> usize {
    ((t / WHEEL_TICK_MS) % WHEEL_SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(token: usize) -> ConnRef {
        ConnRef { token, gen: 1 }
    }

    fn fired(w: &mut Wheel, now: u64) -> Vec<usize> {
        let mut out = Vec::new();
        w.expire(now, &mut out);
        let mut tokens: Vec<usize> = out.iter().map(|(c, _)| c.token).collect();
        tokens.sort_unstable();
        tokens
    }

    #[test]
    fn entries_fire_at_their_tick_never_early() {
        let mut w = Wheel::new(1_000);
        w.insert(1_100, c(1));
        w.insert(1_600, c(2));
        w.insert(10_000, c(3));
        assert_eq!(w.next_due(), Some(1_250));
        assert!(fired(&mut w, 1_249).is_empty());
        assert_eq!(fired(&mut w, 1_250), vec![1]);
        assert!(fired(&mut w, 1_700).is_empty());
        assert_eq!(fired(&mut w, 1_750), vec![2]);
        assert!(fired(&mut w, 9_999).is_empty());
        assert_eq!(fired(&mut w, 10_000), vec![3]);
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn far_deadlines_are_clamped_to_the_span_and_past_ones_fire_next() {
        let mut w = Wheel::new(0);
        let t = w.insert(10 * WHEEL_SPAN_MS, c(1));
        assert_eq!(t, WHEEL_TICK_MS + WHEEL_SPAN_MS);
        let t = w.insert(0, c(2));
        assert_eq!(t, WHEEL_TICK_MS);
        assert_eq!(fired(&mut w, WHEEL_TICK_MS), vec![2]);
        assert!(fired(&mut w, WHEEL_SPAN_MS).is_empty());
        assert_eq!(fired(&mut w, WHEEL_TICK_MS + WHEEL_SPAN_MS), vec![1]);
    }

    #[test]
    fn a_long_stall_fires_everything_once_and_the_wheel_keeps_working() {
        let mut w = Wheel::new(0);
        for i in 0..WHEEL_SLOTS {
            w.insert(i as u64 * WHEEL_TICK_MS, c(i));
        }
        assert_eq!(fired(&mut w, 1_000_000).len(), WHEEL_SLOTS);
        assert_eq!(w.next_due(), None);
        let t = w.insert(1_000_100, c(7));
        assert!(t >= 1_000_100);
        assert!(fired(&mut w, t - 1).is_empty());
        assert_eq!(fired(&mut w, t), vec![7]);
    }
}
