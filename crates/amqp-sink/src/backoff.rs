//! The reconnect policy, as plain logic: which broker to try next, how long
//! to wait (exponential backoff with jitter), and when the circuit breaker
//! opens.
//!
//! After a connection is lost, the next broker is tried at once. Each failed
//! attempt moves to the next broker and waits `initial * multiplier^(n-1)`
//! (capped at `max`), jittered down by up to half so that relays restarted
//! together do not reconnect in lockstep. After `breaker_after` consecutive
//! failed attempts the breaker is open: the publisher fails fast instead of
//! queueing, while attempts go on at the capped pace. One success closes it.
//! While it waits after brokers refused connections, the driver also
//! probes their TCP ports and connects as soon as one answers: a breaker
//! sheds load, it must not keep the relay away from a broker that is back.

use std::time::Duration;

use crate::error::ConfigError;

/// Reconnect delays: the usual retry-policy knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Growth factor per failed attempt (at least 1).
    pub multiplier: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl BackoffConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::OutOfRange {
                setting: "backoff.multiplier",
                value: self.multiplier.to_string(),
                expected: "a finite number of at least 1",
            });
        }
        if self.initial.is_zero() || self.max < self.initial {
            return Err(ConfigError::OutOfRange {
                setting: "backoff.initial/max",
                value: format!("{:?}/{:?}", self.initial, self.max),
                expected: "0 < initial <= max",
            });
        }
        Ok(())
    }

    /// The delay after the `failures`-th consecutive failed attempt
    /// (1-based), before jitter.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exponent = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.powi(exponent);
        let max = self.max.as_secs_f64();
        let secs = (self.initial.as_secs_f64() * factor).min(max);
        if secs.is_finite() {
            Duration::from_secs_f64(secs.max(0.0))
        } else {
            self.max
        }
    }
}

/// Jitter: a delay somewhere in `[delay/2, delay]`; `sample` is uniform in
/// `[0, 1)`.
pub(crate) fn jittered(delay: Duration, sample: f64) -> Duration {
    delay.mul_f64(1.0 - 0.5 * sample.clamp(0.0, 1.0))
}

/// A backoff in use: the delay before each next attempt, growing by the
/// multiplier up to the maximum, jittered; back to the initial delay after
/// [`reset`](Self::reset). Every reconnect loop of the relay uses this one.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// A backoff that starts at `config.initial`.
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff {
            config,
            failures: 0,
        }
    }

    /// The delay before the next attempt (somewhere in `[d/2, d]` of the
    /// un-jittered delay `d`); the following one grows.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jittered(self.config.delay(self.failures), fastrand::f64())
    }

    /// Progress was made: the next delay is the initial one again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Which broker to try, how long to wait, whether the breaker is open.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    backoff: BackoffConfig,
    brokers: usize,
    next: usize,
    failures: u32,
    breaker_after: u32,
}

impl Retry {
    pub(crate) fn new(backoff: BackoffConfig, brokers: usize, breaker_after: u32) -> Retry {
        Retry {
            backoff,
            brokers: brokers.max(1),
            next: 0,
            failures: 0,
            breaker_after,
        }
    }

    /// The index of the broker to try next.
    pub(crate) fn broker(&self) -> usize {
        self.next
    }

    /// An attempt failed: move on to the next broker; returns the delay
    /// before the next attempt (before jitter).
    pub(crate) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.next = (self.next + 1) % self.brokers;
        self.backoff.delay(self.failures)
    }

    /// The next attempt goes to broker `index` (one found answering).
    pub(crate) fn try_next(&mut self, index: usize) {
        if index < self.brokers {
            self.next = index;
        }
    }

    /// An attempt succeeded: the breaker closes.
    pub(crate) fn connected(&mut self) {
        self.failures = 0;
    }

    /// An established connection was lost: try the next broker, at once.
    pub(crate) fn lost(&mut self) {
        self.next = (self.next + 1) % self.brokers;
    }

    /// Consecutive failed attempts.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether publishing should fail fast.
    pub(crate) fn breaker_open(&self) -> bool {
        self.failures >= self.breaker_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 3.0,
        }
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_max() {
        let b = knobs();
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(300));
        assert_eq!(b.delay(3), Duration::from_millis(900));
        assert_eq!(b.delay(4), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        let d = Duration::from_secs(1);
        assert_eq!(jittered(d, 0.0), d);
        assert_eq!(jittered(d, 1.0), Duration::from_millis(500));
        for _ in 0..1000 {
            let j = jittered(d, fastrand::f64());
            assert!(j >= Duration::from_millis(500) && j <= d);
        }
    }

    #[test]
    fn a_backoff_grows_until_reset() {
        let mut b = Backoff::new(knobs());
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let second = b.next_delay();
        assert!(second >= Duration::from_millis(150) && second <= Duration::from_millis(300));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn brokers_are_tried_in_turn_and_the_breaker_opens_after_n_failures() {
        let mut r = Retry::new(knobs(), 3, 4);
        assert_eq!(r.broker(), 0);
        r.failed();
        assert_eq!(r.broker(), 1);
        r.failed();
        r.failed();
        assert_eq!(r.broker(), 0);
        assert!(!r.breaker_open());
        r.failed();
        assert!(r.breaker_open());
        assert_eq!(r.failures(), 4);
        r.connected();
        assert!(!r.breaker_open());
        assert_eq!(r.broker(), 1);
        r.lost();
        assert_eq!(r.broker(), 2);
    }
}
