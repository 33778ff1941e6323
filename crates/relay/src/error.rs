//! Why a run stops for good, and whether waiting could have helped.
//!
//! Transient conditions (a server restarting, a broker down, a walsender
//! terminated) never reach here: the pipeline waits and retries them. What
//! does reach here needs an operator (settings, prerequisites, credentials,
//! a dropped slot) or is a bug, and each message says which and what to do.

use crate::config::ConfigError;

/// Why the relay stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A prerequisite is not met (the lines `check` would fail).
    #[error("{0}")]
    Prerequisites(String),
    /// PostgreSQL refused the relay in a way no retry fixes.
    #[error("postgres: {problem}; fix: {fix}")]
    Postgres {
        /// What happened.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The replication stream ended in a way no retry fixes (the slot was
    /// dropped or invalidated, wal_level changed).
    #[error("postgres: {e}{hint}", e = .0, hint = stream_hint(.0))]
    Stream(walstream::Error),
    /// The broker refused in a way no retry fixes.
    #[error("rabbitmq: {0}")]
    Broker(String),
    /// Another process holds the slot and the relay was told not to wait.
    #[error(
        "slot {slot} is held by PID {pid} (another outbox-relay or Debezium); not waiting for \
         it because standby is off (--no-standby or standby = false)"
    )]
    SlotHeld {
        /// The slot.
        slot: String,
        /// Who holds it.
        pid: i32,
    },
    /// The stream carried something the relay cannot read.
    #[error("decoding the replication stream: {0}; this is a bug, please report it")]
    Decode(#[from] pgoutput::DecodeError),
    /// The core stopped on something it cannot go on from (a bug or a
    /// protocol surprise).
    #[error("{0}")]
    Internal(String),
}

/// Where the README says what to do, for a stream error that needs the
/// operator.
fn stream_hint(e: &walstream::Error) -> &'static str {
    match e {
        walstream::Error::SlotUnusable { .. } => " (README: 'When the slot is lost')",
        _ => "",
    }
}
