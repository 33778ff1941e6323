//! amqp-sink: the broker side of outbox-relay.
//!
//! It owns publishing to RabbitMQ: one confirm-mode channel, a bounded window
//! of in-flight publishes, confirm/return/nack tracking, and the reconnect
//! path. It reports, in order, which messages the broker has taken
//! responsibility for. It knows nothing of PostgreSQL.
//!
//! The publisher lands with its own issue; this crate is the place it lives.
