//! The one error type of walstream, and the retry policy that goes with it.
//!
//! Every failure says what failed, why, and what to do about it, and
//! [`Error::is_retryable`] splits them in two: a broken network, a server
//! shutting down or an administrator terminating the walsender are worth a
//! reconnect (the slot resends from the last acknowledged position); a wrong
//! password, a missing slot or `wal_level` not being `logical` need an
//! operator, and retrying them only fills the log.
//!
//! Server errors keep their SQLSTATE, message, detail and hint in a
//! [`DbError`]. No variant ever holds a password or a URL with one.

use std::fmt;
use std::io;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, ErrorResponseBody};

/// An error or notice sent by the server (an `ErrorResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl DbError {
    /// Reads the fields of an `ErrorResponse` or `NoticeResponse`.
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> io::Result<DbError> {
        let mut error = DbError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                // 'V' is the non-localized severity (9.6+); prefer it.
                b'V' => error.severity = value,
                b'S' if error.severity.is_empty() => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        Ok(error)
    }

    /// Reads an ErrorResponse; a malformed one is a protocol error.
    pub(crate) fn from_response(
        body: &ErrorResponseBody,
        during: &'static str,
    ) -> Result<DbError, Error> {
        DbError::parse(body.fields()).map_err(|e| Error::protocol(during, e.to_string()))
    }

    /// Builds one from tokio-postgres's view of a server error.
    pub(crate) fn from_tokio_postgres(e: &tokio_postgres::error::DbError) -> DbError {
        DbError {
            severity: e.severity().to_string(),
            code: e.code().code().to_string(),
            message: e.message().to_string(),
            detail: e.detail().map(str::to_string),
            hint: e.hint().map(str::to_string),
        }
    }

    /// ERROR, FATAL, PANIC (or WARNING, NOTICE... for a notice).
    pub fn severity(&self) -> &str {
        &self.severity
    }

    /// The SQLSTATE, e.g. `28P01` for a wrong password.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The primary message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The optional detail.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The optional hint.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Whether reconnecting may succeed: connection exceptions (class 08),
    /// insufficient resources (53), operator intervention (57: admin
    /// shutdown or termination, crash shutdown, server starting up), system
    /// errors (58), transaction rollbacks (40), and an object in use (55006,
    /// a slot another process still holds for a moment).
    pub fn is_retryable(&self) -> bool {
        let class = self.code.get(..2).unwrap_or("");
        matches!(class, "08" | "40" | "53" | "57" | "58") || self.code == "55006"
    }

    /// What an operator should do, for the SQLSTATEs whose fix is known.
    fn advice(&self) -> Option<&'static str> {
        Some(match self.code.as_str() {
            // 28000 also says that a role does not exist: not a pg_hba.conf
            // matter.
            "28000" if self.message.contains("does not exist") => {
                "create the role, or fix the user in the connection settings"
            }
            "28P01" => {
                "check the password (in the connection URL, PGPASSWORD or ~/.pgpass) and the \
                 role's authentication method in pg_hba.conf"
            }
            "28000" => {
                "add a pg_hba.conf line that lets this role connect to this database from this \
                 host (logical replication connections match the database name, not the \
                 `replication` keyword), then reload PostgreSQL"
            }
            // 42501 at connection time is one of two refusals.
            "42501" if self.message.contains("permission denied for database") => {
                "grant the role CONNECT on the database (GRANT CONNECT ON DATABASE name TO role, \
                 as its owner or a superuser)"
            }
            "42501" => {
                "grant the role the REPLICATION attribute (ALTER ROLE name REPLICATION) or use a \
                 superuser"
            }
            "3D000" => "check the database name in the connection settings",
            "53300" => "raise max_connections or max_wal_senders, or close idle connections",
            "57P01" | "57P02" => "PostgreSQL ended the session; reconnect to resume from the slot",
            "57P03" => "PostgreSQL is starting up or shutting down; retry shortly",
            _ => return None,
        })
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        if let Some(advice) = self.advice() {
            write!(f, "; {advice}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong on a replication or control connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection settings are invalid (a bad URL, an unknown option).
    #[error("invalid PostgreSQL connection settings: {0}")]
    Config(String),

    /// The TCP (or Unix socket) connection could not be opened.
    #[error(
        "could not connect to PostgreSQL at {target}: {source}; check that the server is \
         running and listening there (listen_addresses, port) and that no firewall is in the way"
    )]
    Connect {
        /// host:port or socket path.
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Connecting, negotiating TLS and authenticating took longer than
    /// `connect_timeout`.
    #[error(
        "connecting to PostgreSQL at {target} took longer than {timeout:?} (connect_timeout); \
         check the network path to the server, or raise connect_timeout"
    )]
    ConnectTimeout {
        /// host:port or socket path.
        target: String,
        /// The limit that passed.
        timeout: Duration,
    },

    /// An established connection broke (reset, end of stream, write error).
    #[error("the connection to PostgreSQL broke while {during}: {source}; reconnect to resume")]
    Io {
        /// What walstream was doing.
        during: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The server sent nothing for longer than the receive timeout although
    /// walstream asked it to reply: the link is dead or stalled.
    #[error(
        "PostgreSQL sent nothing for {0:?} although walstream asked for a reply every second: \
         the network link is dead or stalled; reconnect to resume"
    )]
    ReceiveTimeout(Duration),

    /// TLS could not be set up or the server's certificate was refused.
    #[error("TLS with PostgreSQL at {target} failed: {reason}")]
    Tls {
        /// host:port.
        target: String,
        /// What failed and what to do.
        reason: String,
        /// Whether a reconnect may succeed (a handshake broken by the
        /// network) or not (a refused certificate, a server without TLS).
        retryable: bool,
    },

    /// Authentication cannot proceed on the client side (no password given,
    /// an unsupported method, channel binding required but not possible, a
    /// SCRAM exchange the server did not complete correctly).
    #[error("authentication of role {user:?} failed: {reason}")]
    Auth {
        /// The role.
        user: String,
        /// What failed and what to do.
        reason: String,
    },

    /// The server answered with an error.
    #[error("PostgreSQL refused {during}: {error}")]
    Server {
        /// The command or step the server refused.
        during: String,
        /// The server's error.
        error: Box<DbError>,
    },

    /// The server sent something the protocol does not allow here.
    #[error(
        "PostgreSQL sent an unexpected message while {during}: {detail}; this is a bug in \
         walstream or an incompatible server or proxy (PgBouncer cannot carry replication \
         connections)"
    )]
    Protocol {
        /// What walstream was doing.
        during: &'static str,
        /// What arrived.
        detail: String,
    },

    /// The replication slot does not exist.
    #[error(
        "replication slot {slot:?} does not exist; create it (walstream's create_slot, or \
         SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')) or fix the slot name"
    )]
    SlotMissing {
        /// The slot name.
        slot: String,
    },

    /// The slot exists but cannot be streamed by walstream as pgoutput.
    #[error("replication slot {slot:?} cannot be used: {reason}")]
    SlotUnusable {
        /// The slot name.
        slot: String,
        /// Why (wrong plugin, physical slot, other database, invalidated),
        /// and what to do.
        reason: String,
    },

    /// Another process is streaming from the slot.
    #[error(
        "replication slot {slot:?} is active for PID {pid}: another outbox-relay or Debezium is \
         using it; stop that consumer or use another slot (walstream retries: the slot frees \
         when the other consumer stops)"
    )]
    SlotActive {
        /// The slot name.
        slot: String,
        /// The walsender holding it.
        pid: i32,
    },

    /// The server's `wal_level` is not `logical`.
    #[error(
        "wal_level is {current:?}; set wal_level = logical in postgresql.conf and restart \
         PostgreSQL"
    )]
    WalLevel {
        /// The current setting.
        current: String,
    },

    /// Several servers were named and none is both reachable and of the
    /// kind `target_session_attrs` asks for (during a failover, say: the
    /// old primary is down and the standby not promoted yet).
    #[error(
        "no PostgreSQL server suits target_session_attrs={attrs}: {tried}; a server \
         restarting, or a standby being promoted, suits a later attempt"
    )]
    NoSuitableServer {
        /// What was asked for.
        attrs: String,
        /// Each server and why it was passed over.
        tried: String,
    },

    /// The server ended the replication stream without an error (a clean
    /// shutdown of the server, or a walsender that was told to stop).
    #[error(
        "PostgreSQL ended the replication stream ({reason}); reconnect to resume from the slot"
    )]
    StreamEnded {
        /// What the server sent.
        reason: String,
    },
}

impl Error {
    /// Whether reconnecting (with a backoff) can succeed without an operator:
    /// network failures, timeouts, a server shutting down or restarting, an
    /// administrator terminating the walsender, a slot another consumer still
    /// holds. Not: bad settings, authentication failures, a refused
    /// certificate, a missing or unusable slot, `wal_level` not `logical`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Io { .. }
            | Error::ReceiveTimeout(_)
            | Error::SlotActive { .. }
            | Error::NoSuitableServer { .. }
            | Error::StreamEnded { .. } => true,
            Error::Tls { retryable, .. } => *retryable,
            Error::Server { error, .. } => error.is_retryable(),
            Error::Config(_)
            | Error::Auth { .. }
            | Error::Protocol { .. }
            | Error::SlotMissing { .. }
            | Error::SlotUnusable { .. }
            | Error::WalLevel { .. } => false,
        }
    }

    /// The server's error, if the server sent one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Server { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The SQLSTATE of the server's error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.db_error().map(DbError::code)
    }

    pub(crate) fn io(during: &'static str, source: io::Error) -> Error {
        Error::Io { during, source }
    }

    pub(crate) fn protocol(during: &'static str, detail: impl Into<String>) -> Error {
        Error::Protocol {
            during,
            detail: detail.into(),
        }
    }

    pub(crate) fn server(during: impl Into<String>, error: DbError) -> Error {
        Error::Server {
            during: during.into(),
            error: Box::new(error),
        }
    }

    /// Maps an error of the tokio-postgres control connection.
    pub(crate) fn control(during: &str, e: tokio_postgres::Error) -> Error {
        if let Some(db) = e.as_db_error() {
            return Error::server(during.to_string(), DbError::from_tokio_postgres(db));
        }
        // tokio-postgres hides the kind of its other errors; its Display
        // names them (I/O, TLS, timeout, closed connection...). Nothing in
        // there is a server's verdict, so treat it as the network's.
        Error::Io {
            during: "using the control connection",
            source: io::Error::other(format!("{during}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str) -> DbError {
        DbError {
            severity: "FATAL".into(),
            code: code.into(),
            message: "m".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        }
    }

    #[test]
    fn server_errors_are_retryable_by_sqlstate_class() {
        for code in [
            "57P01", "57P02", "57P03", "08006", "53300", "58030", "40001", "55006",
        ] {
            assert!(db(code).is_retryable(), "{code}");
        }
        for code in [
            "28P01", "28000", "42704", "55000", "42501", "3D000", "42601", "XX000",
        ] {
            assert!(!db(code).is_retryable(), "{code}");
        }
    }

    #[test]
    fn errors_split_into_retryable_and_operator_needed() {
        let io = Error::io("reading", io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(io.is_retryable());
        assert!(Error::ReceiveTimeout(Duration::from_secs(3)).is_retryable());
        assert!(Error::SlotActive {
            slot: "s".into(),
            pid: 7
        }
        .is_retryable());
        assert!(!Error::SlotMissing { slot: "s".into() }.is_retryable());
        assert!(!Error::WalLevel {
            current: "replica".into()
        }
        .is_retryable());
        let wrong_password = Error::server("authentication", db("28P01"));
        assert!(!wrong_password.is_retryable());
        assert_eq!(wrong_password.sqlstate(), Some("28P01"));
        let terminated = Error::server("streaming", db("57P01"));
        assert!(terminated.is_retryable());
    }

    #[test]
    fn messages_name_the_thing_the_cause_and_the_fix() {
        let e = Error::SlotActive {
            slot: "outbox".into(),
            pid: 4242,
        };
        assert!(e
            .to_string()
            .contains("slot \"outbox\" is active for PID 4242: another outbox-relay or Debezium"));
        let e = Error::WalLevel {
            current: "replica".into(),
        };
        assert!(e.to_string().contains("set wal_level = logical"));
        let e = Error::server("authentication", db("28P01"));
        let text = e.to_string();
        assert!(text.contains("28P01") && text.contains("detail: d") && text.contains("hint: h"));
        assert!(text.contains("check the password"), "{text}");
    }
}
