//! One rate-limit budget shared by every clone of a client: paces requests before the API's
//! token bucket runs dry, instead of running into `429 rate_limit_exceeded`.
//!
//! The API keeps a token bucket per project (3600 or 7200 requests, refilled at about one per
//! second) and reports it on every answer: `RateLimit-Limit` (capacity), `RateLimit-Remaining`
//! (tokens left) and `RateLimit-Reset` (Unix time when the bucket will be full again). From these
//! the budget mirrors the bucket: capacity, tokens, and the refill rate
//! `(limit - remaining) / (reset - now)`. Each request takes a token from the mirror first; while
//! the mirror holds more than a reserve, requests go at once; below it, each request waits until
//! the refill has put a token back, so the client settles at the refill rate and never empties
//! the bucket. Concurrent builds share one mirror (it lives behind an `Arc`), so together they
//! pace, rather than each believing it has the whole budget.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The refill rate assumed until an answer tells otherwise: the documented one request per second.
const DEFAULT_REFILL_PER_SECOND: f64 = 1.0;

/// The lowest refill rate the budget will believe. A clock skew between us and the API can make
/// `reset - now` look too long; this floor (half the documented rate) keeps such an error from
/// stalling the client for long.
const MIN_REFILL_PER_SECOND: f64 = 0.5;

/// The share of the capacity kept in reserve: pacing starts when fewer tokens than this are left.
/// 10% leaves room for requests in flight that the last answer did not count yet, for other
/// clients of the same project (a `gc` run, a second machine) and for cleanup after an error.
const RESERVE_FRACTION: f64 = 0.1;

/// The smallest reserve in tokens, so that tiny buckets (as in tests) still keep a margin for
/// one request in flight and one cleanup call.
const MIN_RESERVE_TOKENS: f64 = 2.0;

/// The largest reserve in tokens: 20 covers the requests in flight of a handful of concurrent
/// builds plus their cleanup calls; a larger reserve on a 3600-token bucket would only make the
/// client pause longer after a 429 (it waits until the reserve has refilled).
const MAX_RESERVE_TOKENS: f64 = 20.0;

/// The longest a single request waits for the budget. Longer estimates come from odd headers;
/// past this wait the request is sent anyway and a real 429 is handled by the retry loop.
const MAX_PACING_WAIT: Duration = Duration::from_secs(60);

/// The rate-limit state last reported by the API, as seen by every clone of a client.
#[derive(Debug, Clone, Default)]
pub struct RateBudget {
    state: Arc<Mutex<Option<Bucket>>>,
}

/// A mirror of the API's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    refill_per_second: f64,
    at: Instant,
}

impl Bucket {
    fn refill_to(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(self.capacity);
        self.at = now.max(self.at);
    }

    fn reserve_tokens(&self) -> f64 {
        (self.capacity * RESERVE_FRACTION).clamp(MIN_RESERVE_TOKENS, MAX_RESERVE_TOKENS)
    }
}

/// The rate-limit headers of one answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitHeaders {
    /// `RateLimit-Limit`.
    pub limit: u64,
    /// `RateLimit-Remaining`.
    pub remaining: u64,
    /// `RateLimit-Reset`: Unix seconds when the bucket will be full.
    pub reset: u64,
    /// Our clock at the answer, in fractional Unix seconds.
    pub now: f64,
}

/// What the budget currently believes, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetEstimate {
    /// The bucket's capacity.
    pub capacity: f64,
    /// Tokens estimated left now (negative when requests are queued).
    pub tokens: f64,
    /// Estimated refill rate in tokens per second.
    pub refill_per_second: f64,
}

impl RateBudget {
    /// A budget that knows nothing yet (no pacing until the first answer).
    pub fn new() -> Self {
        RateBudget::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Bucket>> {
        // The state is plain numbers; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a token for one request and says how long to wait before sending it.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.lock();
        let Some(bucket) = state.as_mut() else {
            return Duration::ZERO;
        };
        bucket.refill_to(now);
        let floor = bucket.reserve_tokens();
        // The token is taken now, even when the request has to wait for it: later callers then
        // queue behind it instead of all waking at the same moment.
        let wait = if bucket.tokens - 1.0 >= floor {
            Duration::ZERO
        } else {
            let missing = floor + 1.0 - bucket.tokens;
            Duration::from_secs_f64(missing / bucket.refill_per_second).min(MAX_PACING_WAIT)
        };
        bucket.tokens -= 1.0;
        wait
    }

    /// Updates the mirror from an answer's headers.
    pub fn observe(&self, headers: RateLimitHeaders, now: Instant) {
        let capacity = headers.limit.max(1) as f64;
        let remaining = headers.remaining.min(headers.limit) as f64;
        let mut state = self.lock();
        let previous_rate = state.as_ref().map(|b| b.refill_per_second);
        let deficit = capacity - remaining;
        // `reset` is rounded to whole seconds, so this overestimates the time by up to a second
        // and the rate errs on the slow (safe) side; on real buckets (an hour) that is noise.
        let until_full = headers.reset as f64 - headers.now;
        let refill_per_second = if deficit >= 1.0 && until_full >= 1.0 {
            (deficit / until_full).max(MIN_REFILL_PER_SECOND)
        } else {
            previous_rate.unwrap_or(DEFAULT_REFILL_PER_SECOND)
        };
        *state = Some(Bucket {
            capacity,
            tokens: remaining,
            refill_per_second,
            at: now,
        });
    }

    /// Records that the API refused a request for the rate limit, without usable headers.
    pub fn observe_exhausted(&self, now: Instant) {
        let mut state = self.lock();
        match state.as_mut() {
            Some(bucket) => {
                bucket.tokens = 0.0;
                bucket.at = now;
            }
            None => {
                // Nothing known: assume a bucket as small as the reserve so requests get paced
                // at the default rate until an answer says more.
                *state = Some(Bucket {
                    capacity: MIN_RESERVE_TOKENS,
                    tokens: 0.0,
                    refill_per_second: DEFAULT_REFILL_PER_SECOND,
                    at: now,
                });
            }
        }
    }

    /// The current estimate, if any answer was seen.
    pub fn estimate(&self, now: Instant) -> Option<BudgetEstimate> {
        let mut state = self.lock();
        let bucket = state.as_mut()?;
        bucket.refill_to(now);
        Some(BudgetEstimate {
            capacity: bucket.capacity,
            tokens: bucket.tokens,
            refill_per_second: bucket.refill_per_second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(limit: u64, remaining: u64, reset_in: u64) -> RateLimitHeaders {
        RateLimitHeaders {
            limit,
            remaining,
            reset: 1_000 + reset_in,
            now: 1_000.0,
        }
    }

    #[test]
    fn no_pacing_before_any_answer_or_with_plenty_left() {
        let budget = RateBudget::new();
        let now = Instant::now();
        assert_eq!(budget.reserve(now), Duration::ZERO);
        budget.observe(headers(3600, 3000, 600), now);
        for _ in 0..100 {
            assert_eq!(budget.reserve(now), Duration::ZERO);
        }
    }

    #[test]
    fn paces_at_the_refill_rate_below_the_reserve() {
        let budget = RateBudget::new();
        let now = Instant::now();
        // 100 capacity, 13 left, full again in 87 s: one token per second, reserve 10.
        budget.observe(headers(100, 13, 87), now);
        let waits: Vec<Duration> = (0..6).map(|_| budget.reserve(now)).collect();
        assert_eq!(&waits[..3], &[Duration::ZERO; 3]);
        // 10 left after three: the fourth would go below the reserve and waits for refill.
        for (index, wait) in waits[3..].iter().enumerate() {
            let expected = (index + 1) as f64;
            assert!((wait.as_secs_f64() - expected).abs() < 1e-6, "{waits:?}");
        }
        // After the waits have passed, the queue has drained.
        let later = now + Duration::from_secs(10);
        let estimate = budget.estimate(later).unwrap();
        assert!((estimate.tokens - 17.0).abs() < 1e-6, "{estimate:?}");
    }

    #[test]
    fn shared_between_clones() {
        let budget = RateBudget::new();
        let clone = budget.clone();
        let now = Instant::now();
        clone.observe(headers(10, 0, 10), now);
        assert!(budget.reserve(now) > Duration::ZERO);
    }

    #[test]
    fn exhausted_without_headers_paces_at_the_default_rate() {
        let budget = RateBudget::new();
        let now = Instant::now();
        budget.observe_exhausted(now);
        let wait = budget.reserve(now);
        assert!(
            wait >= Duration::from_secs(2) && wait <= MAX_PACING_WAIT,
            "{wait:?}"
        );
    }
}
