//! The inbox's errors: what a handler returns, and why a consumer stopped.

use std::fmt;

use crate::breaker::BreakerError;

/// Why a handler did not apply a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// It could not be applied this time: retried after the policy's
    /// delay, parked after its last attempt.
    Failed(String),
    /// It can never be applied (a malformed body, an unknown type): parked
    /// at once.
    Poison(String),
    /// A dependency is unavailable (its circuit breaker refused the call or
    /// counted the failure): not an attempt. The consumer rolls back, waits
    /// until the breaker lets a call through, and tries the same delivery
    /// again; no new message is taken meanwhile. Without a breaker on the
    /// consumer this counts as `Failed`.
    Unavailable(String),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Failed(why) => write!(f, "failed: {why}"),
            HandlerError::Poison(why) => write!(f, "poison: {why}"),
            HandlerError::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<tokio_postgres::Error> for HandlerError {
    fn from(e: tokio_postgres::Error) -> Self {
        HandlerError::Failed(format!("database: {e}"))
    }
}

impl<E: fmt::Display> From<BreakerError<E>> for HandlerError {
    fn from(e: BreakerError<E>) -> Self {
        HandlerError::Unavailable(e.to_string())
    }
}

/// Why a consumer stopped, or a session of it ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The settings are unusable (fatal).
    #[error("inbox settings: {0}")]
    Config(String),
    /// The broker refused something or the link failed (retried).
    #[error("broker: {0}")]
    Broker(String),
    /// PostgreSQL failed (retried).
    #[error("database: {0}")]
    Database(String),
}
