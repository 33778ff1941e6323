//! The outbox-relay test kit: the real parts every test of the workspace
//! runs against.
//!
//! - [`PgCluster`]: a private PostgreSQL cluster per test (wal_level=logical,
//!   its own port and data directory), that can be stopped, crashed and
//!   restarted on the same data.
//! - [`amqp`]: the shared RabbitMQ on 127.0.0.1:5672, with unique names per
//!   test, a collecting consumer and cleanup of what a test declared.
//! - [`RabbitNode`]: a private RabbitMQ node that a test may kill, restart
//!   or stop, never the shared broker.
//! - [`FaultProxy`]: a TCP proxy that cuts, stalls or delays a link, so that a
//!   test fails the broker or the Postgres link without touching the shared
//!   services.
//! - [`RelayProcess`]: the real `outbox-relay` binary, started as a user
//!   would, its output kept for assertions and shown when a test fails.
//! - [`tls::TlsFront`]: `amqps://` in front of the shared broker, with a
//!   certificate made by the test.
//! - [`secrets`]: the forms a password takes in connection strings and
//!   output, for tests that prove none of them shows.
//!
//! Nothing here mocks a database or a broker: a test that claims a guarantee
//! runs against the real thing.

pub mod amqp;
mod error;
mod pg;
mod proxy;
mod rabbit;
mod relay;
pub mod secrets;
pub mod tls;

pub use error::KitError;
pub use pg::{pinned_root, PgCluster, PgClusterBuilder, COMPAT_VERSIONS};
pub use proxy::{FaultProxy, ProxyMode};
pub use rabbit::{RabbitCluster, RabbitNode};
pub use relay::{relay_binary, workspace_binary, RelayProcess};

/// The project's outbox table (sql/outbox.sql), as every test loads it.
pub const OUTBOX_SQL: &str = include_str!("../../sql/outbox.sql");

/// A name no other test (in this process or another) uses at the same time:
/// `<prefix>-<pid>-<counter>-<nanos>`. For exchanges, queues, slots (slot
/// names take `[a-z0-9_]`: use [`unique_ident`] there).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Like [`unique_name`], in the character set of SQL identifiers and
/// replication slot names (lowercase letters, digits, underscores).
pub fn unique_ident(prefix: &str) -> String {
    unique_name(prefix).replace('-', "_").to_lowercase()
}
