//! When a failed message is tried again: exponential backoff with jitter,
//! as plain values (pure code).
//!
//! Attempt `n` (the `n`-th retry, 1-based) waits a delay drawn uniformly
//! from [`RetryPolicy::range`]: the nominal delay `initial * multiplier^(n-1)`
//! (capped at `max`) scaled by `1 - jitter ..= 1`. Jitter spreads the
//! retries of messages that failed together (a dependency that went down
//! for all of them), so they do not come back as one wave.
//!
//! The wait itself is the broker's, never a sleep in the consumer: each
//! retry goes to the attempt's delay queue with the drawn delay as its
//! per-message TTL and dead-letters back to the work queue when it expires
//! (see `crate::topology`). A message waits at least its own delay and at
//! most the largest delay of its attempt: a queue expires messages from its
//! head, and every message ahead of it was queued earlier with a delay from
//! the same range.

use std::time::Duration;

/// How often and how late a failing message is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first delivery included; after the last one
    /// fails the message is parked. At least 1 (1: never retried).
    pub max_attempts: u32,
    /// The first retry's nominal delay.
    pub initial: Duration,
    /// The longest nominal delay.
    pub max: Duration,
    /// Growth between attempts (at least 1.0).
    pub multiplier: f64,
    /// How much of the delay is random, from 0.0 (none) to 1.0 (anything
    /// from 0 to the nominal delay).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

/// Why a policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry policy: {0}")]
pub struct PolicyError(String);

impl RetryPolicy {
    /// Checks the numbers; each error says what would be right.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError(
                "max_attempts must be at least 1 (1: park at the first failure)".into(),
            ));
        }
        if self.max_attempts > 100 {
            return Err(PolicyError(format!(
                "max_attempts {} is over 100 (each retry has a delay queue)",
                self.max_attempts
            )));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(PolicyError(format!(
                "multiplier {} must be a number of at least 1.0",
                self.multiplier
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(PolicyError(format!(
                "jitter {} must be from 0.0 to 1.0",
                self.jitter
            )));
        }
        if self.initial.is_zero() || self.max < self.initial {
            return Err(PolicyError(format!(
                "initial ({:?}) must be above zero and at most max ({:?})",
                self.initial, self.max
            )));
        }
        // An AMQP per-message TTL is a 32-bit number of milliseconds.
        if self.max > Duration::from_millis(u64::from(u32::MAX)) {
            return Err(PolicyError(format!(
                "max ({:?}) is over what a message TTL holds (about 49 days)",
                self.max
            )));
        }
        Ok(())
    }

    /// How many retries there are (one delay queue each).
    pub fn retries(&self) -> u32 {
        self.max_attempts.saturating_sub(1)
    }

    /// The nominal delay before retry `attempt` (1-based), capped at `max`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::from_secs_f64(secs)
    }

    /// The range a retry's delay is drawn from: `nominal * (1 - jitter)`
    /// to `nominal`.
    pub fn range(&self, attempt: u32) -> (Duration, Duration) {
        let nominal = self.nominal(attempt);
        (nominal.mul_f64(1.0 - self.jitter), nominal)
    }

    /// A delay for retry `attempt`, `unit` a uniform draw from [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let (low, high) = self.range(attempt);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        low + (high - low).mul_f64(unit)
    }

    /// The delay in whole milliseconds, as a per-message TTL (at least 1).
    pub fn ttl_millis(delay: Duration) -> u32 {
        u32::try_from(delay.as_millis()).unwrap_or(u32::MAX).max(1)
    }
}

/// What to do with a message whose handler failed on attempt `attempt`
/// (1-based: the first delivery is attempt 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Retry it: publish to this retry's delay queue (1-based).
    Retry(u32),
    /// No attempt left: park it.
    Park,
}

impl RetryPolicy {
    /// What follows a failed attempt.
    pub fn after_failure(&self, attempt: u32) -> Next {
        if attempt >= self.max_attempts {
            Next::Park
        } else {
            Next::Retry(attempt.max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
            multiplier: 3.0,
            jitter: 0.5,
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.nominal(1), Duration::from_millis(500));
        assert_eq!(p.nominal(2), Duration::from_millis(1500));
        assert_eq!(p.nominal(3), Duration::from_secs(3));
        assert_eq!(p.nominal(40), Duration::from_secs(3));
        assert_eq!(
            p.range(2),
            (Duration::from_millis(750), Duration::from_millis(1500))
        );
    }

    #[test]
    fn the_last_failed_attempt_parks_the_message() {
        let p = policy();
        assert_eq!(p.after_failure(1), Next::Retry(1));
        assert_eq!(p.after_failure(3), Next::Retry(3));
        assert_eq!(p.after_failure(4), Next::Park);
        assert_eq!(p.after_failure(9), Next::Park);
        assert_eq!(p.retries(), 3);
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(once.after_failure(1), Next::Park);
    }

    #[test]
    fn unusable_policies_say_what_would_be_right() {
        for bad in [
            RetryPolicy {
                max_attempts: 0,
                ..policy()
            },
            RetryPolicy {
                multiplier: 0.5,
                ..policy()
            },
            RetryPolicy {
                jitter: 1.5,
                ..policy()
            },
            RetryPolicy {
                initial: Duration::ZERO,
                ..policy()
            },
            RetryPolicy {
                max: Duration::from_millis(100),
                ..policy()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(policy().validate().is_ok());
    }

    proptest! {
        #[test]
        fn every_drawn_delay_falls_in_its_attempts_range(
            attempt in 1u32..60,
            unit in proptest::num::f64::ANY,
            jitter in 0.0f64..=1.0,
        ) {
            let p = RetryPolicy { jitter, ..policy() };
            let (low, high) = p.range(attempt);
            let d = p.delay(attempt, unit);
            prop_assert!(low <= d && d <= high, "{low:?} <= {d:?} <= {high:?}");
            prop_assert!(high <= p.max);
            prop_assert!(RetryPolicy::ttl_millis(d) >= 1);
        }
    }
}
