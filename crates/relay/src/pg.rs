//! The control connection to PostgreSQL: an ordinary (non-replication)
//! session for catalog queries, publication and slot management.
//!
//! It carries an application_name so that DBAs can tell the relay's
//! sessions apart in pg_stat_activity, and its connection task ends with
//! the client.

use tokio_postgres::{Client, NoTls};

/// Connects a control session to `url` (a libpq-style URL or keyword/value
/// string).
pub async fn connect_control(
    url: &str,
    application_name: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "control connection ended");
        }
    });
    Ok(client)
}
