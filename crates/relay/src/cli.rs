//! The command line: what a user types, parsed with clap.
//!
//! Every subcommand is listed here with help text a newcomer understands;
//! the code behind each lives in its own module.

use clap::{Parser, Subcommand};

/// outbox-relay streams the rows your application INSERTs into a
/// transactional outbox table in PostgreSQL to RabbitMQ, through logical
/// replication (a pgoutput slot), with publisher confirms: the slot advances
/// only after RabbitMQ confirmed every event up to it.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream the outbox to RabbitMQ until stopped (SIGTERM or Ctrl-C).
    Run {
        /// A TOML settings file; RELAY_* environment variables override it.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
}
