//! The kit's one error type: what failed, and what to do about it.

use std::path::PathBuf;

/// A failure of the test kit itself (not of the code under test).
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked at `pg_config --bindir` and {searched}): \
         install postgresql (apt-get install postgresql) or set RELAY_TEST_PG_BINDIR to the \
         directory holding initdb, pg_ctl and postgres"
    )]
    NoPostgres {
        /// Where the kit looked.
        searched: String,
    },
    /// A command the kit ran failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed (stderr, stdout, and the server log when relevant).
        output: String,
    },
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the kit was doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kit runs PostgreSQL as the `postgres` OS user when it runs as root,
    /// and that user does not exist.
    #[error(
        "the tests run as root and PostgreSQL refuses to run as root, but there is no `postgres` \
         OS user to run it as: install postgresql (it creates the user) or run the tests as a \
         non-root user"
    )]
    NoPostgresUser,
    /// A database call of the kit failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A broker call of the kit failed.
    #[error("rabbitmq at {url}: {source}")]
    Amqp {
        /// The broker URL, without its password.
        url: String,
        /// The cause.
        #[source]
        source: lapin::Error,
    },
    /// Building the relay binary failed.
    #[error("building the outbox-relay binary: {0}")]
    Build(String),
    /// Something did not happen within the time a test allowed.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
}

impl KitError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KitError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
