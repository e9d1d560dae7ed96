//! [`FailureLimiter`]: how many failed credential checks one source address may cause.
//!
//! Checking a wrong API key costs an argon2 run (tens of milliseconds of a core). Request rate
//! limits alone let one address burn a core on guesses, so each front end that verifies keys
//! also charges every *failed* verification to the source address, and refuses (429) an
//! address whose budget is spent before hashing anything for it. Successful checks cost
//! nothing (the charge is given back), so a backend that presents its right key is never
//! limited by this.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Failed API key verifications one source address may cause per second, after a burst of
/// [`FAILURES_BURST`]; beyond, its requests are refused (429) before any hashing. The control
/// plane's key verifier and a node's remote key authority charge the same budget.
pub const FAILURES_PER_S: u32 = 2;
/// Burst of failed verifications per source address.
pub const FAILURES_BURST: u32 = 20;

/// Most addresses tracked; beyond it, buckets that are full again are forgotten first.
const CAPACITY: usize = 100_000;

/// A token bucket of failures per source address.
#[derive(Debug)]
pub struct FailureLimiter {
    burst: f64,
    per_s: f64,
    buckets: DashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl FailureLimiter {
    /// `burst` failures at once, refilled at `per_s` per second. A `per_s` of 0 switches the
    /// limiter off.
    pub fn new(per_s: u32, burst: u32) -> Self {
        FailureLimiter { burst: f64::from(burst.max(1)), per_s: f64::from(per_s), buckets: DashMap::new() }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.per_s).min(self.burst);
        Bucket { tokens, at: now }
    }

    /// Takes one failure from `source`'s budget before a check that may fail, or
    /// `Err(retry_after)` when none is left. Give it back with [`Self::give_back`] when the
    /// check succeeds: charging up front means concurrent guesses cannot overdraw the budget.
    pub fn try_take(&self, source: IpAddr) -> Result<(), Duration> {
        if self.per_s == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        if self.buckets.len() >= CAPACITY {
            self.buckets.retain(|_, b| self.refilled(*b, now).tokens < self.burst);
        }
        let mut bucket = self.buckets.entry(source).or_insert(Bucket { tokens: self.burst, at: now });
        let refilled = self.refilled(*bucket, now);
        if refilled.tokens < 1.0 {
            *bucket = refilled;
            return Err(Duration::from_secs_f64((1.0 - refilled.tokens) / self.per_s).max(Duration::from_secs(1)));
        }
        *bucket = Bucket { tokens: refilled.tokens - 1.0, at: now };
        Ok(())
    }

    /// Returns what [`Self::try_take`] took: the check succeeded (or failed for another
    /// reason than the credential).
    pub fn give_back(&self, source: IpAddr) {
        if self.per_s == 0.0 {
            return;
        }
        if let Some(mut bucket) = self.buckets.get_mut(&source) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_past_the_burst_are_refused_and_other_addresses_are_not() {
        let limiter = FailureLimiter::new(1, 3);
        let attacker = IpAddr::from([127, 0, 0, 2]);
        let me = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..3 {
            assert!(limiter.try_take(attacker).is_ok());
        }
        assert!(limiter.try_take(attacker).is_err());
        for _ in 0..10 {
            assert!(limiter.try_take(me).is_ok(), "successes cost nothing");
            limiter.give_back(me);
        }
        assert!(FailureLimiter::new(0, 0).try_take(attacker).is_ok(), "0/s switches it off");
    }
}
