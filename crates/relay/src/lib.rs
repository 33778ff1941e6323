//! outbox-relay: the daemon that joins walstream, pgoutput and amqp-sink.
//!
//! It owns configuration, the outbox row -> message mapping, the LSN ack
//! tracker, the pipeline, the CLI, metrics and health endpoints, and
//! shutdown. Each lands with its own issue; `cli` holds the command line that
//! users see today.

pub mod cli;
