//! amqp-sink: the broker side of outbox-relay.
//!
//! It publishes messages to RabbitMQ in order on one confirm-mode channel,
//! keeps a bounded window of publishes in flight (by count and bytes), and
//! reports, in order, which messages the broker took responsibility for:
//! nothing is reported done before the broker confirmed it, and a message
//! the broker returned (unroutable) or nacked is reported failed. It owns
//! the reconnect path (several brokers, backoff with jitter, a circuit
//! breaker, `connection.blocked` pauses), declares its topology, and knows
//! nothing of PostgreSQL.
//!
//! - [`Publisher::connect`] with a [`SinkConfig`] gives a [`Publisher`]
//!   and the [`Outcomes`] receiver.
//! - [`Publisher::publish`] takes an [`OutgoingMessage`] and returns its
//!   [`Seq`], waiting only when the window is full; [`Publisher::hold`]
//!   keeps messages that belong together until [`Publisher::flush`], so
//!   that they reach lapin in one hand-off.
//! - [`Outcomes`] yields [`SinkEvent`]s in order: `Confirmed { up_to }`,
//!   `Failed { seq, reason }` ([`FailureReason`]: nacked, returned, or
//!   unknown after a link failure), and link events (lost, connected,
//!   blocked, unblocked).
//! - After a link failure failed messages, or a nack, publishing halts
//!   until [`Publisher::resume`] (what was sent meanwhile fails), so that a
//!   rewinding caller never has later messages overtake earlier ones.
//! - [`Publisher::close`] flushes and closes.
//!
//! Logging: the sink logs with `tracing` (lowercase messages, a `broker`
//! field that never holds a password). lapin, underneath, traces every AMQP
//! frame at TRACE level, the login frame included, whose SASL response holds
//! the password (as bytes): a subscriber must keep lapin at DEBUG or above.
//! Append [`LOG_DIRECTIVES`] to the relay's filter, after the user's own
//! directives, so that even `RUST_LOG=trace` cannot show it.
//!
//! Module map: `config` (settings), `broker` (URLs and credentials),
//! `message` (what is published), `outcome` (what is reported), `window`
//! (the in-flight bound), `tracker` (confirm bookkeeping), `inflight`
//! (lapin futures, ordering, the return barrier), `link` (one connection),
//! `backoff` (reconnect policy), `driver` (the task tying them together),
//! `shared` (what the handle and the driver share), `inspect` (a preflight
//! look at the broker), `repeats` (which failures of a retry loop get a
//! log line), `publisher` (the handle), `error`.

mod backoff;
mod broker;
mod config;
mod driver;
mod error;
mod inflight;
mod inspect;
mod link;
mod message;
mod outcome;
mod publisher;
mod repeats;
mod shared;
mod tracker;
mod window;

pub use backoff::{Backoff, BackoffConfig};
pub use broker::BrokerUrl;
pub use config::{
    DeadLetterConfig, ExchangeConfig, ExchangeType, QueueType, SinkConfig, DEFAULT_FRAME_MAX,
    MIN_FRAME_MAX,
};
pub use error::{ConfigError, LinkError, MessageError, PublishError, SinkError};
pub use inspect::{Found, Inspector};
pub use message::{
    properties_budget, HeaderValue, MessageProperties, OutgoingMessage, DEAD_LETTER_REASON_HEADER,
};
pub use outcome::{FailureReason, Outcomes, Seq, SinkEvent};
pub use publisher::{Publisher, HOLD_MAX};
pub use repeats::{Repeats, Report};
pub use shared::LinkState;

/// `tracing` filter directives that keep credentials out of the logs:
/// lapin traces raw frames (the login frame holds the password) at TRACE.
/// Append them to an `EnvFilter` after any user-supplied directives.
pub const LOG_DIRECTIVES: &str = "lapin=debug";
