//! A circuit breaker around a handler's calls to a dependency: after
//! `failures_to_open` failures in a row it opens and refuses calls for
//! `open_for`; then one call goes through as a probe (half-open): its
//! success closes the breaker, its failure opens it again.
//!
//! [`BreakerState`] is the pure state machine (time passed in);
//! [`CircuitBreaker`] shares it between a consumer's workers and lets them
//! wait until a call would be let through. The consumer waits on it before
//! taking each delivery (see `crate::consumer`), so an open breaker stops
//! consumption: messages stay on the broker instead of burning their
//! retries against a dependency that is down.

use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that open it (at least 1).
    pub failures_to_open: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through; this many failed in a row.
    Closed {
        /// Failures in a row so far.
        failures: u32,
    },
    /// Calls are refused until this instant.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is under way; other calls wait for its outcome.
    HalfOpen,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Call.
    Call,
    /// Call: the probe (its outcome decides the state).
    Probe,
    /// Do not call; ask again at this instant (None: when the probe
    /// under way ends).
    Wait(Option<Instant>),
}

/// Which state a permit was given in: the outcome of a call counts only
/// if the breaker has not changed state since (a slow call let through
/// while closed does not close a breaker that opened meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The pure state machine.
#[derive(Debug, Clone)]
pub struct BreakerState {
    config: BreakerConfig,
    state: State,
    /// Bumped on every change between closed, open and half-open.
    generation: u64,
}

impl BreakerState {
    /// Closed, no failure yet.
    pub fn new(config: BreakerConfig) -> BreakerState {
        BreakerState {
            config: BreakerConfig {
                failures_to_open: config.failures_to_open.max(1),
                ..config
            },
            state: State::Closed { failures: 0 },
            generation: 0,
        }
    }

    fn set(&mut self, state: State) {
        if std::mem::discriminant(&state) != std::mem::discriminant(&self.state) {
            self.generation += 1;
        }
        self.state = state;
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call would be let through at `now`, without taking the
    /// probe.
    pub fn would_permit(&self, now: Instant) -> Permit {
        match self.state {
            State::Closed { .. } => Permit::Call,
            State::Open { until } if now >= until => Permit::Probe,
            State::Open { until } => Permit::Wait(Some(until)),
            State::HalfOpen => Permit::Wait(None),
        }
    }

    /// Asks to call at `now`; a `Probe` answer makes the breaker half-open.
    /// The ticket goes with the call's outcome.
    pub fn permit(&mut self, now: Instant) -> (Permit, Ticket) {
        let permit = self.would_permit(now);
        if permit == Permit::Probe {
            self.set(State::HalfOpen);
        }
        (permit, Ticket(self.generation))
    }

    /// A permitted call succeeded (ignored if the state changed since its
    /// permit).
    pub fn success(&mut self, ticket: Ticket) {
        if ticket.0 == self.generation {
            self.set(State::Closed { failures: 0 });
        }
    }

    /// A permitted call failed at `now` (ignored if the state changed
    /// since its permit).
    pub fn failure(&mut self, ticket: Ticket, now: Instant) {
        if ticket.0 != self.generation {
            return;
        }
        let next = match self.state {
            State::Closed { failures } if failures + 1 < self.config.failures_to_open => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            _ => State::Open {
                until: now + self.config.open_for,
            },
        };
        self.set(next);
    }
}

/// Why a call through the breaker did not succeed.
#[derive(Debug)]
pub enum BreakerError<E> {
    /// The breaker is open: the call was not made.
    Open,
    /// The call was made and failed (counted).
    Failed(E),
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerError::Open => f.write_str("the circuit breaker is open"),
            BreakerError::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for BreakerError<E> {}

/// A breaker shared by a consumer's workers and its handler.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    state: Mutex<BreakerState>,
    changed: Notify,
}

impl CircuitBreaker {
    /// A closed breaker named after the dependency it guards (for logs).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            name: name.into(),
            state: Mutex::new(BreakerState::new(config)),
            changed: Notify::new(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BreakerState) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.with(|s| s.state())
    }

    /// Whether calls are refused now (open, or half-open with a probe
    /// under way).
    pub fn is_open(&self) -> bool {
        !matches!(self.state(), State::Closed { .. })
    }

    /// Whether it is open and a probe may go now (no call has taken it).
    pub fn probe_due(&self) -> bool {
        self.with(|s| s.would_permit(Instant::now())) == Permit::Probe
    }

    /// Makes the call if the breaker lets it through, and counts its
    /// outcome.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let (permit, ticket) = self.with(|s| s.permit(Instant::now()));
        if let Permit::Wait(_) = permit {
            return Err(BreakerError::Open);
        }
        if permit == Permit::Probe {
            tracing::info!(breaker = %self.name, "circuit breaker half-open: probing");
        }
        // A probe whose call is dropped unfinished (its task aborted)
        // counts as failed, else the breaker would stay half-open with
        // nobody to end it.
        let mut pending = AbandonedProbe {
            breaker: self,
            ticket,
            armed: permit == Permit::Probe,
        };
        let result = call.await;
        pending.armed = false;
        let was = self.state();
        match &result {
            Ok(_) => self.with(|s| s.success(ticket)),
            Err(_) => self.with(|s| s.failure(ticket, Instant::now())),
        }
        let now = self.state();
        match (was, now) {
            (State::Closed { .. }, State::Open { .. }) => {
                tracing::warn!(breaker = %self.name, "circuit breaker open: consumption pauses")
            }
            (State::HalfOpen, State::Open { .. }) => {
                tracing::warn!(breaker = %self.name, "the probe failed: circuit breaker open again")
            }
            (State::HalfOpen, State::Closed { .. }) => {
                tracing::info!(breaker = %self.name, "the probe succeeded: circuit breaker closed")
            }
            _ => {}
        }
        self.changed.notify_waiters();
        result.map_err(BreakerError::Failed)
    }

    /// Waits until a call would be let through (closed, or open long
    /// enough for a probe). Does not take the probe: the call does.
    pub async fn ready(&self) {
        loop {
            // Registered before looking, so a change between the look and
            // the wait is not missed.
            let changed = self.changed.notified();
            match self.with(|s| s.would_permit(Instant::now())) {
                Permit::Call | Permit::Probe => return,
                Permit::Wait(Some(until)) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                Permit::Wait(None) => changed.await,
            }
        }
    }
}

/// Records a probe dropped before its outcome as a failure.
struct AbandonedProbe<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Ticket,
    armed: bool,
}

impl Drop for AbandonedProbe<'_> {
    fn drop(&mut self) {
        if self.armed {
            let ticket = self.ticket;
            self.breaker.with(|s| s.failure(ticket, Instant::now()));
            self.breaker.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(5),
        }
    }

    fn call(b: &mut BreakerState, now: Instant, ok: bool) -> Permit {
        let (permit, ticket) = b.permit(now);
        if !matches!(permit, Permit::Wait(_)) {
            if ok {
                b.success(ticket);
            } else {
                b.failure(ticket, now);
            }
        }
        permit
    }

    #[test]
    fn failures_in_a_row_open_it_and_a_success_resets_the_count() {
        let now = Instant::now();
        let mut b = BreakerState::new(config());
        call(&mut b, now, false);
        call(&mut b, now, false);
        call(&mut b, now, true);
        call(&mut b, now, false);
        call(&mut b, now, false);
        assert_eq!(b.state(), State::Closed { failures: 2 });
        call(&mut b, now, false);
        assert_eq!(
            b.state(),
            State::Open {
                until: now + Duration::from_secs(5)
            }
        );
        assert_eq!(
            b.permit(now).0,
            Permit::Wait(Some(now + Duration::from_secs(5)))
        );
    }

    #[test]
    fn after_open_for_one_probe_goes_and_its_outcome_decides() {
        let now = Instant::now();
        let mut b = BreakerState::new(config());
        for _ in 0..3 {
            call(&mut b, now, false);
        }
        let later = now + Duration::from_secs(5);
        let (permit, probe) = b.permit(later);
        assert_eq!(permit, Permit::Probe);
        assert_eq!(b.permit(later).0, Permit::Wait(None), "one probe at a time");
        b.failure(probe, later);
        assert_eq!(
            b.state(),
            State::Open {
                until: later + Duration::from_secs(5)
            }
        );
        let again = later + Duration::from_secs(5);
        assert_eq!(call(&mut b, again, true), Permit::Probe);
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert_eq!(b.permit(again).0, Permit::Call);
    }

    #[test]
    fn a_slow_call_from_before_a_change_does_not_decide_the_state() {
        let now = Instant::now();
        let mut b = BreakerState::new(BreakerConfig {
            failures_to_open: 1,
            open_for: Duration::from_secs(5),
        });
        let (_, slow) = b.permit(now);
        call(&mut b, now, false);
        assert!(matches!(b.state(), State::Open { .. }));
        // The slow call, let through while closed, succeeds late: the
        // breaker stays open until a probe says otherwise.
        b.success(slow);
        assert!(matches!(b.state(), State::Open { .. }));
        b.failure(slow, now + Duration::from_secs(1));
        assert_eq!(
            b.state(),
            State::Open {
                until: now + Duration::from_secs(5)
            },
            "nor does its late failure push the probe back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ready_waits_out_the_open_period_and_a_probe_closes_it() {
        let b = CircuitBreaker::new(
            "payments",
            BreakerConfig {
                failures_to_open: 1,
                open_for: Duration::from_secs(2),
            },
        );
        let failed: Result<(), BreakerError<&str>> = b.call(async { Err("down") }).await;
        assert!(matches!(failed, Err(BreakerError::Failed("down"))));
        assert!(b.is_open());
        let refused: Result<(), BreakerError<&str>> = b.call(async { Ok(()) }).await;
        assert!(matches!(refused, Err(BreakerError::Open)));
        let start = Instant::now();
        b.ready().await;
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert!(b.probe_due());
        let probe: Result<u8, BreakerError<&str>> = b.call(async { Ok(7) }).await;
        assert_eq!(probe.ok(), Some(7));
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unfinished_counts_as_failed_and_frees_the_next() {
        let b = CircuitBreaker::new(
            "stock",
            BreakerConfig {
                failures_to_open: 1,
                open_for: Duration::from_secs(1),
            },
        );
        let _: Result<(), BreakerError<&str>> = b.call(async { Err("down") }).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The probe's task is dropped mid-call.
        let probe = b.call(std::future::pending::<Result<(), &str>>());
        let timed_out = tokio::time::timeout(Duration::from_millis(10), probe).await;
        assert!(timed_out.is_err());
        assert!(
            matches!(b.state(), State::Open { .. }),
            "not stuck half-open"
        );
        b.ready().await;
        let probe: Result<(), BreakerError<&str>> = b.call(async { Ok(()) }).await;
        assert!(probe.is_ok());
        assert!(!b.is_open());
    }
}
