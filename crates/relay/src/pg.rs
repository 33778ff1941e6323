//! The control connection to PostgreSQL: an ordinary session with exactly
//! the settings of the replication connection (TLS, sslrootcert,
//! ~/.pgpass, keepalives), opened through walstream so that a URL that
//! works for `run` works for every command.
//!
//! It carries an application_name so that DBAs can tell the relay's
//! sessions apart in pg_stat_activity.

use tokio_postgres::Client;
use walstream::ReplicationConfig;

/// Connects a control session with `application_name` unless the URL
/// names one.
pub async fn connect_control(
    config: &ReplicationConfig,
    application_name: &str,
) -> Result<Client, walstream::Error> {
    let mut config = config.clone();
    if config.application_name().is_none() {
        config.set_application_name(application_name);
    }
    walstream::connect_control(&config).await
}
