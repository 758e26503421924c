//! Which failures are retried, how often, and how long to wait between attempts.
//!
//! A failure is retried when repeating the call cannot do harm:
//! - the API refused without acting (`conflict`, `rate_limit_exceeded`, `locked`), or the
//!   connection could not even be made: every call is retried;
//! - the answer was lost or came from a gateway (`bad_gateway`, `timeout`, a bare 502 or 504, a
//!   connection that broke after the request went out): the API may have acted. GET, PUT and
//!   DELETE are retried (repeating them has the same effect). A POST is retried only when a
//!   duplicate is impossible: creating an SSH key, whose name and key are unique, so a repeat
//!   answers `uniqueness_error` and the client looks the key up instead. Other POSTs (a server,
//!   an action, a snapshot) are not retried after such a failure, because a second server or
//!   snapshot could be made; the error says `may_have_been_processed()`, and the caller, whose
//!   resources all carry a build label, finds what the first attempt made.
//! - everything else (`invalid_input`, `not_found`, `uniqueness_error`, `protected`,
//!   `server_error`, `unavailable`, `resource_unavailable`, ...) is final.

use std::time::Duration;

use super::types::ErrorCode;

/// Attempts per call, the first included: the Go client's number. With the backoff below the
/// waits add up to about 15 s, long enough to ride out a gateway hiccup or a busy lock, short
/// enough that a real outage is reported within half a minute.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The first backoff: a second, the Go client's base, long enough for a proxy to recover.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(1);

/// The longest backoff between two attempts: with 5 attempts it is never reached by doubling
/// (8 s at most); it bounds the rate-limit and lock waits.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);

/// Attempts for a call that hit `locked`, the first included. A lock is held by a running action
/// on the same resource (start, shutdown: seconds); with waits from 2 s doubling that is about a
/// minute, after which the holder is a long action (a snapshot) that the caller must wait for.
pub const DEFAULT_LOCKED_ATTEMPTS: u32 = 6;

/// The first wait after `locked`: most locking actions finish within a couple of seconds.
pub const DEFAULT_LOCKED_DELAY: Duration = Duration::from_secs(2);

/// How a client retries; [`Default`] holds the documented constants. Tests shrink the delays.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call for retryable failures, the first included (at least 1).
    pub max_attempts: u32,
    /// The first backoff; it doubles per retry.
    pub base_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// Attempts for a call that hit `locked`, the first included.
    pub locked_attempts: u32,
    /// The first wait after `locked`; it doubles per retry.
    pub locked_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            locked_attempts: DEFAULT_LOCKED_ATTEMPTS,
            locked_delay: DEFAULT_LOCKED_DELAY,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            locked_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (0 for the first retry) after a retryable failure.
    /// `unit_random` in `[0, 1)` supplies the jitter: the wait is half the doubled delay plus a
    /// random part of the other half ("equal jitter"), so concurrent builds that failed together
    /// do not retry together, yet every wait keeps a floor.
    pub fn backoff(&self, retry: u32, unit_random: f64) -> Duration {
        jittered(self.base_delay, retry, self.max_delay, unit_random)
    }

    /// The wait before retry number `retry` after `locked`.
    pub fn locked_backoff(&self, retry: u32, unit_random: f64) -> Duration {
        jittered(self.locked_delay, retry, self.max_delay, unit_random)
    }
}

fn jittered(base: Duration, retry: u32, cap: Duration, unit_random: f64) -> Duration {
    let doubled = base.saturating_mul(2u32.saturating_pow(retry.min(20)));
    let full = doubled.min(cap);
    let unit = unit_random.clamp(0.0, 1.0);
    full / 2 + (full / 2).mul_f64(unit)
}

/// How a call may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Repeating has the effect of sending once (GET, PUT, DELETE).
    Idempotent,
    /// Repeating may duplicate the effect (POST): only after failures that prove it did not act.
    OnlyIfUnprocessed,
    /// A POST that creates a uniquely named resource: a repeat cannot duplicate it.
    UniqueName,
}

/// What a failure says about the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The API did not act (`conflict`, connection refused): safe to repeat.
    NotProcessed,
    /// Over the rate limit: safe to repeat after the budget refills.
    RateLimited,
    /// The resource is locked by a running action: repeat this call after a wait.
    Locked,
    /// The answer was lost or came from a gateway: the API may have acted.
    Ambiguous,
    /// Not worth repeating.
    Final,
}

/// Classifies an error answer by its API code, falling back to the status for bodies that are
/// not API errors (a proxy's bare 502 or 504).
pub(crate) fn classify_answer(status: u16, code: Option<&ErrorCode>) -> Failure {
    match code {
        Some(ErrorCode::Conflict) => Failure::NotProcessed,
        Some(ErrorCode::RateLimitExceeded) => Failure::RateLimited,
        Some(ErrorCode::Locked | ErrorCode::ResourceLocked) => Failure::Locked,
        Some(ErrorCode::BadGateway | ErrorCode::Timeout) => Failure::Ambiguous,
        Some(_) => Failure::Final,
        None => match status {
            429 => Failure::RateLimited,
            502 | 504 => Failure::Ambiguous,
            _ => Failure::Final,
        },
    }
}

/// Whether a failure of a call with this replay rule is retried.
pub(crate) fn is_retried(failure: Failure, replay: Replay) -> bool {
    match failure {
        Failure::NotProcessed | Failure::RateLimited | Failure::Locked => true,
        Failure::Ambiguous => matches!(replay, Replay::Idempotent | Replay::UniqueName),
        Failure::Final => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_and_statuses() {
        let retried = [
            (409, "conflict"),
            (429, "rate_limit_exceeded"),
            (502, "bad_gateway"),
            (504, "timeout"),
            (423, "locked"),
            (423, "resource_locked"),
        ];
        for (status, code) in retried {
            let failure = classify_answer(status, Some(&ErrorCode::from_wire(code)));
            assert!(is_retried(failure, Replay::Idempotent), "{code}");
        }
        for status in [502, 504, 429] {
            assert!(
                is_retried(classify_answer(status, None), Replay::Idempotent),
                "{status}"
            );
        }
    }

    #[test]
    fn final_codes_and_statuses() {
        let final_codes = [
            (400, "invalid_input"),
            (400, "json_error"),
            (401, "unauthorized"),
            (403, "forbidden"),
            (403, "token_readonly"),
            (403, "resource_limit_exceeded"),
            (404, "not_found"),
            (409, "uniqueness_error"),
            (423, "protected"),
            (500, "server_error"),
            (503, "unavailable"),
            (503, "maintenance"),
            (412, "resource_unavailable"),
            (412, "placement_error"),
            (418, "something_new"),
        ];
        for (status, code) in final_codes {
            let failure = classify_answer(status, Some(&ErrorCode::from_wire(code)));
            assert_eq!(failure, Failure::Final, "{code}");
            assert!(!is_retried(failure, Replay::Idempotent), "{code}");
        }
        for status in [400, 404, 500, 503] {
            assert_eq!(classify_answer(status, None), Failure::Final, "{status}");
        }
    }

    #[test]
    fn post_is_not_repeated_when_it_may_have_acted() {
        let gateway = classify_answer(502, Some(&ErrorCode::BadGateway));
        assert!(!is_retried(gateway, Replay::OnlyIfUnprocessed));
        assert!(is_retried(gateway, Replay::UniqueName));
        let conflict = classify_answer(409, Some(&ErrorCode::Conflict));
        assert!(is_retried(conflict, Replay::OnlyIfUnprocessed));
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_a_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(policy.backoff(0, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(3, 0.0), Duration::from_secs(4));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_secs(8));
        assert_eq!(policy.backoff(30, 1.0), DEFAULT_MAX_DELAY);
        assert_eq!(policy.locked_backoff(1, 1.0), Duration::from_secs(4));
        let total: Duration = (0..DEFAULT_MAX_ATTEMPTS - 1)
            .map(|retry| policy.backoff(retry, 1.0))
            .sum();
        assert_eq!(total, Duration::from_secs(15));
    }
}
