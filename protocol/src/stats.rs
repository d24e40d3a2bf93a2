//! GetStats: the numbers the broker's `/metrics` page shows, over the
//! binary protocol, so that `cmq top` and `cmq stats` work without the
//! HTTP port. Counters are totals since the broker started (a reader
//! computes rates from two answers); histograms are counts by power-of-two
//! bucket, bucket `i` counting values up to `2^i` microseconds and the last
//! one everything larger, so two answers subtract into the histogram of the
//! time between them.

use crate::limits::{NAME_CHARS_MAX, SHARDS_MAX};

/// Buckets of every histogram in a [`ShardStats`] (25 bounded, 2^0..=2^24
/// µs, plus one for larger values).
pub const STATS_HISTOGRAM_BUCKETS: usize = 26;

/// Most queues a GetStats answer names; the rest are summed in `other`.
pub const STATS_QUEUES_MAX: usize = 1000;

crate::wire_struct! {
    /// GetStats: the broker's metrics. `top_queues`: how many queues to
    /// name, the deepest first (0..=1000; more is INVALID_PARAMETER).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetStats {
        pub top_queues: u16,
    }
}

crate::wire_struct! {
    /// One shard's counters and histograms (microseconds).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct ShardStats {
        pub shard: u16,
        /// The node this node believes leads the shard (0: unknown).
        pub leader: u64,
        pub turns: u64,
        /// Longest loop turn in the last 10 to 20 seconds.
        pub longest_turn_us: u64,
        pub connections: u64,
        /// Messages waiting in the shard's cross-shard inbox.
        pub inbox_depth: u64,
        /// Requests answered, and how many of those were errors.
        pub answers: u64,
        pub errors: u64,
        pub wal_bytes: u64,
        pub wal_records: u64,
        pub fsyncs: u64,
        pub wal_disk_bytes: u64,
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub send_us: Vec<u64> = list(STATS_HISTOGRAM_BUCKETS),
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub receive_us: Vec<u64> = list(STATS_HISTOGRAM_BUCKETS),
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub delete_us: Vec<u64> = list(STATS_HISTOGRAM_BUCKETS),
        #[cfg_attr(test, proptest(strategy = "crate::testing::small_vec(4)"))]
        pub fsync_us: Vec<u64> = list(STATS_HISTOGRAM_BUCKETS),
    }
}

crate::wire_struct! {
    /// One queue (or, named `_other`, the sum of the queues not named).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct QueueStats {
        #[cfg_attr(test, proptest(strategy = "crate::testing::name()"))]
        pub queue: String = string(NAME_CHARS_MAX),
        pub active: u64,
        pub inactive: u64,
        pub delayed: u64,
        /// Enqueue time of the oldest unconsumed message (Unix ms), 0 if none.
        pub oldest_ms: u64,
        pub sent: u64,
        pub received: u64,
        pub deleted: u64,
        pub dead_lettered: u64,
    }
}

crate::wire_struct! {
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    pub struct GetStatsOk {
        /// The node that answered.
        pub node_id: u64,
        /// Every shard that answered in time, by shard id.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<ShardStats>(), 0..3)"))]
        pub shards: Vec<ShardStats> = list(SHARDS_MAX),
        /// The deepest queues, deepest first, then the `_other` sum.
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::prelude::any::<QueueStats>(), 0..3)"))]
        pub queues: Vec<QueueStats> = list(STATS_QUEUES_MAX + 1),
        /// Queues summed in `_other`.
        pub other_queues: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};

    /// The byte layout PROTOCOL.md documents for GetStats.
    #[test]
    fn golden_get_stats_request() {
        let mut out = Vec::new();
        Request::GetStats(GetStats { top_queues: 10 }).encode_frame(7, &mut out);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            14, 0, 0, 0,            // length: 12 header bytes + 2 payload bytes
            0x00, 0x06,             // opcode 0x0600 GetStats
            0, 0,                   // flags, reserved
            7, 0, 0, 0, 0, 0, 0, 0, // request id
            10, 0,                  // top_queues
        ];
        assert_eq!(&out[..], expected, "{out:?}");
    }

    #[test]
    fn every_truncation_of_an_answer_is_an_error() {
        let ok = GetStatsOk {
            node_id: 1,
            shards: vec![ShardStats { shard: 1, send_us: vec![0, 3], ..Default::default() }],
            queues: vec![QueueStats { queue: "orders".into(), active: 2, ..Default::default() }],
            other_queues: 4,
        };
        let mut frame = Vec::new();
        Response::GetStats(ok.clone()).encode_frame(9, &mut frame);
        let (header, payload) = frame.split_at(frame.len() - ok_len(&ok));
        assert!(header.len() >= 14);
        let payload = bytes::Bytes::copy_from_slice(payload);
        assert_eq!(Response::decode(0x0600, payload.clone()), Ok(Response::GetStats(ok)));
        for cut in 0..payload.len() {
            assert!(Response::decode(0x0600, payload.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    fn ok_len(ok: &GetStatsOk) -> usize {
        let mut w = Vec::new();
        crate::wire::Wire::encode(ok, &mut w);
        w.len()
    }
}
