//! walstream: one streaming replication connection to PostgreSQL.
//!
//! It owns the replication protocol from the startup packet to standby status
//! updates: connect and authenticate (trust, password, md5, SCRAM-SHA-256
//! with channel binding over TLS), IDENTIFY_SYSTEM, slot creation, checks and
//! removal, START_REPLICATION, XLogData and keepalive frames, and the
//! feedback that tells the server which LSN is durable downstream. It yields
//! WAL frames (payloads undecoded: that is the `pgoutput` crate's job) and
//! takes flush-LSN acknowledgements; it knows nothing of RabbitMQ.
//!
//! ```no_run
//! # async fn run() -> Result<(), walstream::Error> {
//! use walstream::{Frame, ReplicationClient, ReplicationConfig, StartOptions};
//! let config: ReplicationConfig = "postgres://relay@db/shop?sslmode=verify-full".parse()?;
//! let client = ReplicationClient::connect(&config).await?;
//! let (mut stream, acks) = client
//!     .start_replication("outbox_relay", pgoutput::Lsn::ZERO, StartOptions::new(["outbox_relay"]))
//!     .await?;
//! loop {
//!     match stream.next().await? {
//!         Frame::XLogData(x) => { /* decode x.data; ack the commit's end_lsn once durable */ }
//!         Frame::Keepalive(k) => acks.ack(k.wal_end), // only with nothing in flight
//!     }
//! }
//! # }
//! ```
//!
//! # Security defaults
//!
//! Settings follow libpq, defaults included, and both connections (the
//! replication connection and the control connection of
//! [`connect_control`]) apply them alike.
//!
//! - `sslmode` defaults to `prefer`, as in libpq: walstream asks for TLS
//!   and, when the server declines or the handshake fails, goes on
//!   without it; the server's certificate is not checked. That keeps a
//!   passive eavesdropper out only when the server offers TLS, and an
//!   active attacker on the path not at all (it can decline TLS for the
//!   server, or present any certificate). Use `sslmode=verify-full`, with
//!   `sslrootcert` naming the CA file (or `system` for the system's roots),
//!   wherever the link leaves the machine;
//!   [`ReplicationConfig::is_verify_full`] tells whether a configuration
//!   does, so that a service can warn at start when it does not. Unix
//!   sockets never use TLS.
//! - `require_auth` (libpq's, e.g. `scram-sha-256` or `!md5,!password`)
//!   lists the authentication methods the server may use; a server asking
//!   for another is refused before anything is sent to it. By default every
//!   method is allowed, except that a cleartext password (pg_hba.conf
//!   method `password`) is never sent over plain TCP unless `require_auth`
//!   lists `password`; over TLS or a Unix socket it is.
//! - No password appears in the `Display` or `Debug` of a
//!   [`ReplicationConfig`] or of an [`Error`], however the connection
//!   string was written (see [`ReplicationConfig`] for the two rules that
//!   keep it so in ambiguous strings).
//!
//! Errors say whether a reconnect makes sense ([`Error::is_retryable`]);
//! reconnecting is the caller's choice, and a new stream resumes after the
//! last acked LSN.
//!
//! One thing to know about server shutdowns: a PostgreSQL walsender waits,
//! at a clean shutdown, until the client has flushed everything it sent. A
//! consumer that acks keepalives when it has nothing in flight lets the
//! server shut down promptly.

mod auth;
mod client;
mod config;
mod connect;
mod control;
mod error;
mod feedback;
mod guard;
mod hosts;
mod pgpass;
mod stream;
mod tls;
mod wire;

#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
mod secrecy_tests;

pub use auth::{AuthMethod, RequireAuth};
pub use client::{
    parse_timeline_history, switchpoint_of, CreateSlotOptions, CreatedSlot, ReplicationClient,
    SnapshotAction, StartOptions, SystemIdentity, TimelineSwitch,
};
pub use config::{ChannelBinding, Host, ReplicationConfig, SslMode, Target, TargetSessionAttrs};
pub use control::{connect_control, invalidation_cause, SlotState};
pub use error::{DbError, Error};
pub use feedback::AckHandle;
pub use hosts::ServerState;
pub use pgoutput::{Lsn, PgTimestamp};
pub use stream::{Frame, Keepalive, ReplicationStream, XLogData};
