//! A histogram a single thread records into with no atomics: bucket `i`
//! counts values up to `2^i` (in the histogram's own unit), the last one
//! everything larger. Finding a bucket is one `leading_zeros`, so recording
//! costs a few instructions; the power-of-two bounds are the same for every
//! shard, so histograms merge by adding counts and Prometheus can aggregate
//! across shards and nodes.

/// Buckets with an upper bound (`le = 2^0 ..= 2^(BOUNDED - 1)`); one more
/// (`+Inf`) counts larger values. In microseconds the last bound is about
/// 16.8 s; in records, 16.8 million.
pub const BOUNDED: usize = 25;

// GetStats sends these counts as they are.
const _: () = assert!(BOUNDED + 1 == cmq_protocol::STATS_HISTOGRAM_BUCKETS);

/// Counts of values by power-of-two bucket, their sum and their count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BOUNDED + 1],
    sum: u64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: [0; BOUNDED + 1], sum: 0, count: 0 }
    }
}

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    /// Records `n` values equal to `v`.
    #[inline]
    pub fn record_n(&mut self, v: u64, n: u64) {
        self.counts[bucket(v)] += n;
        self.sum = self.sum.saturating_add(v.saturating_mul(n));
        self.count += n;
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Counts by bucket, each with its upper bound (`le`) scaled by `unit`
    /// (e.g. 1e-6 for microseconds shown in seconds), the last one `+Inf`.
    /// Not cumulative: the text encoder adds them up.
    pub fn buckets(&self, unit: f64) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> =
            self.counts[..BOUNDED].iter().enumerate().map(|(i, c)| ((1u64 << i) as f64 * unit, *c)).collect();
        out.push((f64::INFINITY, self.counts[BOUNDED]));
        out
    }

    /// Counts by bucket (not cumulative), the overflow bucket last: the
    /// layout of GetStats' histograms (`STATS_HISTOGRAM_BUCKETS`).
    pub fn counts(&self) -> Vec<u64> {
        self.counts.to_vec()
    }

    /// An upper bound on the `q` quantile (0..=1): the bound of the bucket
    /// it falls in (for the overflow bucket, the largest bound). 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= rank {
                return 1u64 << i.min(BOUNDED - 1);
            }
        }
        1u64 << (BOUNDED - 1)
    }
}

/// The bucket of `v`: the smallest `i` with `v <= 2^i`, or the overflow bucket.
#[inline]
fn bucket(v: u64) -> usize {
    if v <= 1 {
        return 0;
    }
    let i = (64 - (v - 1).leading_zeros()) as usize;
    i.min(BOUNDED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_smallest_bucket_that_holds_them() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 2);
        assert_eq!(bucket(5), 3);
        assert_eq!(bucket(1 << 24), 24);
        assert_eq!(bucket((1 << 24) + 1), BOUNDED, "past the last bound: +Inf");
        assert_eq!(bucket(u64::MAX), BOUNDED);
    }

    #[test]
    fn bucket_counts_and_quantiles_follow_the_buckets() {
        let mut h = Histogram::default();
        for v in [1, 3, 3, 100, 1 << 30] {
            h.record(v);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 107 + (1 << 30));
        let b = h.buckets(1.0);
        assert_eq!(b.len(), BOUNDED + 1);
        assert_eq!(b[0], (1.0, 1));
        assert_eq!(b[2], (4.0, 2));
        assert_eq!(b[7], (128.0, 1));
        assert_eq!(b[BOUNDED], (f64::INFINITY, 1), "the huge value is only in +Inf");
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 5);
        assert_eq!(h.quantile(0.5), 4);
        assert_eq!(h.quantile(0.8), 128);
        assert_eq!(h.quantile(1.0), 1 << (BOUNDED - 1));
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }

    #[test]
    fn merging_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record_n(10, 3);
        b.record(10);
        b.record(1000);
        a.merge(&b);
        assert_eq!((a.count(), a.sum()), (5, 1040));
        assert_eq!(a.buckets(1e-6)[4], (16.0 * 1e-6, 4));
    }
}
