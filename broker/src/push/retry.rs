//! Retry schedules of failed pushes (CMQ `notifyStrategy`), as pure functions.
//!
//! The topic engine owns retry state (attempt counts, next attempt times,
//! logged and replayed); it asks [`next_retry`] how long to wait after a
//! failed attempt. The random part of `BACKOFF_RETRY` is a hash of the
//! delivery's id and the attempt number, so a replayed log computes the same
//! schedule and tests can pin it.

use std::time::Duration;

pub use cmq_protocol::NotifyStrategy;

/// BACKOFF_RETRY: retries after the first attempt (CMQ: 3).
pub const BACKOFF_RETRIES_MAX: u32 = 3;
/// BACKOFF_RETRY: shortest wait before a retry (CMQ: 10 s).
pub const BACKOFF_INTERVAL_MIN_MS: u64 = 10_000;
/// BACKOFF_RETRY: longest wait before a retry (CMQ: 20 s).
pub const BACKOFF_INTERVAL_MAX_MS: u64 = 20_000;

/// EXPONENTIAL_DECAY_RETRY: retries after the first attempt (CMQ: 176, which
/// is what fits in a day: 1 + 2 + … + 256 = 511 s, then 167 × 512 s).
pub const EXPONENTIAL_RETRIES_MAX: u32 = 176;
/// EXPONENTIAL_DECAY_RETRY: the wait doubles from 1 s up to this cap (CMQ: 512 s).
pub const EXPONENTIAL_INTERVAL_CAP_S: u64 = 512;
/// EXPONENTIAL_DECAY_RETRY: how long a push is retried at most (one day).
pub const EXPONENTIAL_SPAN_S: u64 = 86_400;

/// Total wait of the whole exponential schedule, in seconds.
const fn exponential_total_s() -> u64 {
    let mut total = 0;
    let mut attempt = 1;
    while attempt <= EXPONENTIAL_RETRIES_MAX {
        total += exponential_interval_s(attempt);
        attempt += 1;
    }
    total
}

const fn exponential_interval_s(attempt: u32) -> u64 {
    // attempt >= 1; 2^(attempt-1), capped (the cap is reached at attempt 10).
    let shift = if attempt - 1 > 9 { 9 } else { attempt - 1 };
    let s = 1u64 << shift;
    if s > EXPONENTIAL_INTERVAL_CAP_S {
        EXPONENTIAL_INTERVAL_CAP_S
    } else {
        s
    }
}

// The schedule fits in its day, and one more retry would not.
const _: () = assert!(exponential_total_s() <= EXPONENTIAL_SPAN_S);
const _: () = assert!(exponential_total_s() + EXPONENTIAL_INTERVAL_CAP_S > EXPONENTIAL_SPAN_S);
const _: () = assert!(1u64 << 9 == EXPONENTIAL_INTERVAL_CAP_S);
const _: () = assert!(BACKOFF_INTERVAL_MIN_MS <= BACKOFF_INTERVAL_MAX_MS);

/// How long to wait before retrying a push that has failed `attempt` times
/// (1 = the first delivery attempt failed), or `None` when the strategy gives
/// up (the push is dropped or dead-lettered). `task_id` is the delivery's
/// stable id (the same for every attempt): it seeds the random part.
pub fn next_retry(strategy: NotifyStrategy, attempt: u32, task_id: u64) -> Option<Duration> {
    next_retry_scaled(strategy, attempt, task_id, 1.0)
}

/// [`next_retry`] with every interval multiplied by `time_scale` (tests run
/// whole schedules in milliseconds with, say, 0.001; production uses 1.0).
/// Scaled intervals are rounded to the nearest microsecond.
pub fn next_retry_scaled(strategy: NotifyStrategy, attempt: u32, task_id: u64, time_scale: f64) -> Option<Duration> {
    if attempt == 0 {
        // Nothing failed yet: deliver now.
        return Some(Duration::ZERO);
    }
    let base = match strategy {
        NotifyStrategy::BackoffRetry => {
            if attempt > BACKOFF_RETRIES_MAX {
                return None;
            }
            let span = BACKOFF_INTERVAL_MAX_MS - BACKOFF_INTERVAL_MIN_MS + 1;
            let jitter = mix(task_id ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15)) % span;
            Duration::from_millis(BACKOFF_INTERVAL_MIN_MS + jitter)
        }
        NotifyStrategy::ExponentialDecayRetry => {
            if attempt > EXPONENTIAL_RETRIES_MAX {
                return None;
            }
            Duration::from_secs(exponential_interval_s(attempt))
        }
    };
    Some(scale(base, time_scale))
}

/// Retries the strategy makes before giving up.
pub fn retries_max(strategy: NotifyStrategy) -> u32 {
    match strategy {
        NotifyStrategy::BackoffRetry => BACKOFF_RETRIES_MAX,
        NotifyStrategy::ExponentialDecayRetry => EXPONENTIAL_RETRIES_MAX,
    }
}

fn scale(d: Duration, time_scale: f64) -> Duration {
    if time_scale == 1.0 {
        return d;
    }
    if !time_scale.is_finite() || time_scale <= 0.0 {
        return Duration::ZERO;
    }
    let us = (d.as_micros() as f64 * time_scale).round();
    Duration::from_micros(us.min(u64::MAX as f64) as u64)
}

/// SplitMix64's finaliser: a well-spread 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_table() {
        let want: Vec<u64> = [1, 2, 4, 8, 16, 32, 64, 128, 256].into_iter().chain([512; 167]).collect();
        assert_eq!(want.len(), 176);
        let got: Vec<u64> = (1..=176)
            .map(|a| next_retry(NotifyStrategy::ExponentialDecayRetry, a, 7).expect("within schedule").as_secs())
            .collect();
        assert_eq!(got, want);
        assert_eq!(next_retry(NotifyStrategy::ExponentialDecayRetry, 177, 7), None);
        assert_eq!(next_retry(NotifyStrategy::ExponentialDecayRetry, u32::MAX, 7), None);
        let total: u64 = want.iter().sum();
        assert_eq!(total, 86_015);
        assert!(total <= 86_400 && total + 512 > 86_400);
    }

    #[test]
    fn exponential_ignores_task_id() {
        for a in 1..=176 {
            assert_eq!(
                next_retry(NotifyStrategy::ExponentialDecayRetry, a, 1),
                next_retry(NotifyStrategy::ExponentialDecayRetry, a, u64::MAX)
            );
        }
    }

    #[test]
    fn backoff_bounds_and_determinism() {
        let mut distinct = std::collections::HashSet::new();
        for id in 0..2000u64 {
            for a in 1..=3 {
                let d = next_retry(NotifyStrategy::BackoffRetry, a, id).expect("within schedule");
                assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(20), "{d:?}");
                assert_eq!(Some(d), next_retry(NotifyStrategy::BackoffRetry, a, id), "deterministic");
                distinct.insert(d.as_millis());
            }
            assert_eq!(next_retry(NotifyStrategy::BackoffRetry, 4, id), None);
        }
        // Spread over the range, not a constant.
        assert!(distinct.len() > 1000, "{} distinct intervals", distinct.len());
        let lows = distinct.iter().filter(|ms| **ms < 15_000).count();
        assert!(lows > distinct.len() / 3 && lows < distinct.len() * 2 / 3, "{lows} below 15 s");
    }

    #[test]
    fn attempt_zero_is_immediate() {
        assert_eq!(next_retry(NotifyStrategy::BackoffRetry, 0, 1), Some(Duration::ZERO));
        assert_eq!(next_retry(NotifyStrategy::ExponentialDecayRetry, 0, 1), Some(Duration::ZERO));
    }

    #[test]
    fn scale_factor() {
        let e = NotifyStrategy::ExponentialDecayRetry;
        assert_eq!(next_retry_scaled(e, 1, 0, 0.001), Some(Duration::from_millis(1)));
        assert_eq!(next_retry_scaled(e, 4, 0, 0.001), Some(Duration::from_millis(8)));
        assert_eq!(next_retry_scaled(e, 176, 0, 0.001), Some(Duration::from_millis(512)));
        assert_eq!(next_retry_scaled(e, 177, 0, 0.001), None);
        assert_eq!(next_retry_scaled(e, 3, 0, 1.0), Some(Duration::from_secs(4)));
        assert_eq!(next_retry_scaled(e, 3, 0, 0.0), Some(Duration::ZERO));
        // Rounded, not truncated: 10,486,000 us x 0.7 is 7,340,199.999999999 in floating point.
        assert_eq!(scale(Duration::from_millis(10_486), 0.7), Duration::from_micros(7_340_200));
        for id in 0..100 {
            let full = next_retry(NotifyStrategy::BackoffRetry, 2, id).unwrap();
            let small = next_retry_scaled(NotifyStrategy::BackoffRetry, 2, id, 0.001).unwrap();
            assert_eq!(small, Duration::from_micros(full.as_millis() as u64), "same jitter, scaled");
            assert!(small >= Duration::from_millis(10) && small <= Duration::from_millis(20));
        }
    }

    #[test]
    fn names() {
        for s in [NotifyStrategy::BackoffRetry, NotifyStrategy::ExponentialDecayRetry] {
            assert_eq!(s.as_str().parse::<NotifyStrategy>().ok(), Some(s));
            assert_eq!(s.as_str().to_lowercase().parse::<NotifyStrategy>().ok(), Some(s));
        }
        assert_eq!("NOPE".parse::<NotifyStrategy>().ok(), None);
        assert_eq!(NotifyStrategy::default(), NotifyStrategy::ExponentialDecayRetry);
        assert_eq!(retries_max(NotifyStrategy::BackoffRetry), 3);
        assert_eq!(retries_max(NotifyStrategy::ExponentialDecayRetry), 176);
    }
}
