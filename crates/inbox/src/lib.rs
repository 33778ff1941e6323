//! The consuming side of outbox-relay: an idempotent consumer that applies
//! each message's effects exactly once in PostgreSQL.
//!
//! outbox-relay delivers at least once: after a crash, a broker fault or a
//! failover, a consumer sees some messages twice. [`Inbox`] makes that
//! harmless. A handler applies a message inside a PostgreSQL transaction
//! that also claims the message id in an inbox table (sql/inbox.sql); a
//! duplicate finds its id claimed and is acked without effect; the delivery
//! is acked only after the commit. Failures are retried with exponential
//! backoff and jitter through delay queues ([`RetryPolicy`]; the broker
//! holds the message, the consumer never sleeps on it), parked after the
//! last attempt with the error, and a [`CircuitBreaker`] around a
//! dependency pauses consumption while the dependency is down instead of
//! spending retries on it. [`prune`] keeps the inbox table to a window.
//!
//! Modules: `consumer` (the worker loop), `store` (the inbox table's SQL),
//! `retry` and `breaker` (pure policy), `topology` (the queues),
//! `message` (what a handler sees), `error`.

mod breaker;
mod consumer;
mod error;
mod message;
mod retry;
mod store;
mod topology;

pub use breaker::{
    BreakerConfig, BreakerError, BreakerState, CircuitBreaker, Permit, State, Ticket,
};
pub use consumer::{Handler, Inbox, InboxConfig, Stats, StatsSnapshot};
pub use error::{HandlerError, InboxError};
pub use message::{
    Message, ATTEMPTS_HEADER, ATTEMPT_HEADER, CONSUMER_HEADER, ERROR_HEADER,
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER,
};
pub use retry::{Next, PolicyError, RetryPolicy};
pub use store::{migrate, prune, InboxTable, TableNameError};
pub use topology::{Binding, QueueKind, Topology};
