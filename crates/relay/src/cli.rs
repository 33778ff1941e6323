//! The command line: what a user types, parsed with clap.
//!
//! Every subcommand is listed here with help text a newcomer understands;
//! the code behind each lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The version and the commit it was built from (`--version`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OUTBOX_RELAY_COMMIT"),
    ")"
);

/// The commit the binary was built from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("OUTBOX_RELAY_COMMIT");

/// outbox-relay streams the rows your application INSERTs into a
/// transactional outbox table in PostgreSQL to RabbitMQ, through logical
/// replication (a pgoutput slot), with publisher confirms: the slot advances
/// only after RabbitMQ confirmed every event up to it.
///
/// Settings come from a TOML file (--config) and RELAY_* environment
/// variables, which win. The least you set: RELAY_PG_URL and RELAY_AMQP_URL.
/// `outbox-relay config` shows every setting and where its value came from.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version = VERSION, about, long_about)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// A TOML settings file; RELAY_* environment variables override it.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        global = true,
        env = "RELAY_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// Log format: human-readable text, or one JSON object per line for log
    /// shippers (overrides the log_format setting).
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormatArg>,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream the outbox to RabbitMQ until stopped (SIGTERM or Ctrl-C).
    ///
    /// Creates the publication and slot if missing, then streams from the
    /// slot's confirmed position. If another process holds the slot, waits
    /// as a standby and takes over when it frees.
    Run {
        /// Exit with the reason instead of waiting when another process
        /// holds the slot.
        #[arg(long)]
        no_standby: bool,
    },
    /// Test every prerequisite (PostgreSQL, wal_level, rights, table,
    /// publication, slot, RabbitMQ, exchange) and print one line each, with
    /// the fix for what fails. Changes nothing. Exits 0 only if all pass.
    Check,
    /// Create the publication and the slot if they are missing, and say
    /// what was done.
    Setup {
        /// Print the SQL for a DBA instead (publication, slot and a
        /// least-privilege role), and change nothing.
        #[arg(long)]
        print_sql: bool,
        /// The role --print-sql creates (default: the user of pg_url, else
        /// outbox_relay).
        #[arg(long, requires = "print_sql")]
        role: Option<String>,
    },
    /// Show where the slot stands: confirmed position, lag behind the
    /// server's WAL, retained WAL, and who holds it.
    Status {
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective settings, secrets redacted, and where each value
    /// came from (default, file, env).
    Config {
        /// Instead, convert a Debezium connector or Debezium Server
        /// properties file (PostgreSQL source, outbox event router,
        /// RabbitMQ sink) into the relay's settings, printed as TOML with a
        /// comment on every option the relay cannot honour.
        #[arg(long, value_name = "FILE")]
        from_debezium: Option<PathBuf>,
    },
    /// Drop the slot and the publication (after confirmation), releasing
    /// the WAL the slot keeps. Refuses while a relay streams from the slot.
    /// Leaves the outbox table and everything on the broker alone.
    Teardown {
        /// Do not ask: needed when stdin is not a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Look into the dead-letter queue, count it by reason, and publish
    /// selected dead letters again once their cause is fixed.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Publish rows still in the outbox table again (a consumer's queue was
    /// lost), through the same mapping and confirms as `run`, each marked
    /// with the x-relay-replay header. Never reads or moves the slot: runs
    /// beside a live relay. Conditions combine (AND). Exits non-zero if any
    /// row failed.
    Replay {
        /// This event id (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// Rows created at or after this time (a PostgreSQL timestamp,
        /// e.g. '2026-11-30 08:00:00+00', or -infinity for every row).
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        since: Option<String>,
        /// Rows created before this time.
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        until: Option<String>,
        /// Rows of this aggregate.
        #[arg(long, value_name = "ID")]
        aggregate: Option<String>,
        /// The column --aggregate looks in.
        #[arg(long, default_value = "aggregate_id", value_name = "COLUMN")]
        aggregate_column: String,
        /// The outbox table to read (schema.table), when several are
        /// configured.
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `outbox-relay completions bash >
    /// /etc/bash_completion.d/outbox-relay`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `outbox-relay dead-letters ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// One line per dead letter (reason, id, LSN, where it was going, why),
    /// then the count by reason. Changes nothing: every message goes back
    /// to the queue.
    List {
        /// Read at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The count by reason. Changes nothing.
    Count {
        /// Read at most this many.
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
    },
    /// Publish the selected dead letters again to their original exchange
    /// and routing key, with confirms; each leaves the dead-letter queue
    /// only once the broker confirmed its new copy. Marked with the
    /// x-relay-republished header. Exits non-zero if any selected one
    /// could not be published.
    Republish {
        /// Those dead-lettered for this reason (repeatable), e.g. no_route.
        #[arg(long = "reason", value_name = "REASON")]
        reasons: Vec<String>,
        /// The one with this event id (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// Every one.
        #[arg(long, conflicts_with_all = ["reasons", "ids"])]
        all: bool,
        /// Read at most this many.
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
    },
}
