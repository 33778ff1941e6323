//! outbox-relay: the daemon that joins walstream, pgoutput and amqp-sink.
//!
//! It owns configuration, the outbox row -> message mapping, the LSN ack
//! tracker, the pipeline, the CLI, metrics and health endpoints, and
//! shutdown.
//!
//! Pure decision logic (settings resolution, routing templates, the ack
//! tracker) lives in plain modules with unit and property tests; the I/O
//! around it stays thin.

pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod mapping;
pub mod metrics;
pub mod ops;
pub mod pg;
pub mod pgtext;
pub mod pipeline;
pub mod redact;
pub mod template;
pub mod tracker;
