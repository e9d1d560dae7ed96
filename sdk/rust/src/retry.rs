//! When and how long to wait before retrying a request: capped exponential backoff with full
//! jitter, overridden by the server's `Retry-After` when it sends one.
//!
//! Only idempotent requests are ever retried (reads, token minting, and publishes that carry an
//! idempotency key): retrying anything else could publish a message twice.

use std::time::Duration;

use rand::Rng;

/// How many times, and how patiently, a failed request is retried.
///
/// A request is retried after a connection error, a timeout, a 5xx answer, or a 429
/// `rate-limited` answer. Attempt `n` (from 0) waits a random duration in
/// `[0, min(max_backoff, initial_backoff * 2^n)]` ("full jitter", so that many clients failing
/// together don't retry in lockstep), or exactly the server's `Retry-After` when it sent one and
/// that is at most `max_retry_after`; a longer `Retry-After` ends the retries at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first; 1 disables retries.
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
    /// The longest `Retry-After` the client is willing to wait.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }
    }

    /// How long to wait before retry number `retry` (0 for the first retry), or `None` to give up:
    /// attempts are used up, or the server asked for a longer wait than `max_retry_after`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retry.saturating_add(1) >= self.max_attempts {
            return None;
        }
        if let Some(after) = retry_after {
            return (after <= self.max_retry_after).then_some(after);
        }
        let ceiling = self.initial_backoff.saturating_mul(1u32 << retry.min(20)).min(self.max_backoff);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(rand::thread_rng().gen_range(0..=millis)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_a_doubling_capped_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            max_retry_after: Duration::from_secs(1),
        };
        for _ in 0..100 {
            assert!(policy.delay(0, None).unwrap() <= Duration::from_millis(100));
            assert!(policy.delay(1, None).unwrap() <= Duration::from_millis(200));
            assert!(policy.delay(5, None).unwrap() <= Duration::from_millis(350));
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_limit_and_attempts_run_out() {
        let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        assert_eq!(policy.delay(0, Some(Duration::from_secs(1))), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay(0, Some(Duration::from_secs(60))), None, "too long a wait gives up");
        assert!(policy.delay(1, None).is_some());
        assert_eq!(policy.delay(2, None), None, "three attempts means two retries");
        assert_eq!(RetryPolicy::none().delay(0, None), None);
    }
}
