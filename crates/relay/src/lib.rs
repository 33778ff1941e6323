//! outbox-relay: the daemon that joins walstream, pgoutput and amqp-sink.
//!
//! It owns configuration, the outbox row -> message mapping, the LSN ack
//! tracker, the pipeline, the CLI, metrics and health endpoints, and
//! shutdown.
//!
//! Pure decision logic lives in plain modules with unit and property tests:
//! settings (`config`), names and SQL (`names`, `sql`), routing templates
//! (`template`), the mapping (`mapping`), the ack tracker (`tracker`), the
//! session state machine (`core`) and the judge of prerequisites
//! (`prereq`). The I/O around it stays thin: `catalog` and `probe` read,
//! `sink` publishes, `pipeline` drives, `check` and `ops` print.
//! docs/ARCHITECTURE.md says which module keeps which invariant.

pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod core;
pub mod dead_letters;
pub mod debezium;
pub mod enrich;
pub mod error;
pub mod exposition;
pub mod mapping;
pub mod metrics;
pub mod names;
pub mod ops;
pub mod pg;
pub mod pgtext;
pub mod pipeline;
pub mod prereq;
pub mod probe;
pub mod process;
pub mod redact;
pub mod replay;
pub mod servers;
pub mod sink;
pub mod sql;
pub mod template;
#[cfg(test)]
mod test_support;
pub mod tracker;
