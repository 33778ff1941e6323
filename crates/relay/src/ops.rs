//! `outbox-relay setup` and `outbox-relay status`: the two commands an
//! operator runs by hand around the daemon.
//!
//! `setup` creates what `run` needs (publication, slot) idempotently and
//! says what it did, or prints the SQL for a DBA; `status` reports where the
//! slot stands (confirmed position, lag, retained WAL, who holds it).

use serde::Serialize;

use crate::catalog::{self, quote_ident, quote_literal, TableName};
use crate::config::Settings;
use crate::pg;

/// A failure of `setup` or `status`, with the fix in its message.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// PostgreSQL is unreachable or refused the session.
    #[error("cannot connect to PostgreSQL: {0} (`outbox-relay check` tells more)")]
    Connect(#[source] walstream::Error),
    /// A catalog query or DDL failed.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// The outbox table does not exist.
    #[error("table {0} does not exist: create it (sql/outbox.sql) or set table (RELAY_TABLE)")]
    NoTable(String),
    /// The slot does not exist (status).
    #[error("slot {0} does not exist: `outbox-relay setup` or `run` creates it")]
    NoSlot(String),
    /// Creating the slot failed.
    #[error("creating slot {slot}: {source}")]
    CreateSlot {
        /// The slot.
        slot: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The SQL a DBA runs to prepare PostgreSQL for the relay with a
/// least-privilege role: REPLICATION and SELECT on the outbox only.
pub fn setup_sql(settings: &Settings, role: &str) -> Result<String, OpsError> {
    let table = TableName::parse(&settings.table)?;
    Ok(format!(
        "-- outbox-relay: PostgreSQL setup for table {table}, slot {slot}, publication {publication}
-- Run as a superuser. wal_level must be logical (ALTER SYSTEM SET wal_level = logical; then restart).

-- A role that may stream changes and read the outbox, and nothing else.
CREATE ROLE {role_q} WITH LOGIN REPLICATION PASSWORD 'change-me';
-- (replace mydb with the outbox's database)
GRANT CONNECT ON DATABASE mydb TO {role_q};
GRANT USAGE ON SCHEMA {schema_q} TO {role_q};
GRANT SELECT ON {table_q} TO {role_q};

-- The publication the slot streams: INSERTs of the outbox table only.
{publication_sql};

-- The slot: WAL is kept from here until the relay acknowledges it.
SELECT pg_create_logical_replication_slot({slot_l}, 'pgoutput');
",
        slot = settings.slot,
        publication = settings.publication,
        role_q = quote_ident(role),
        schema_q = quote_ident(&table.schema),
        table_q = table.quoted(),
        publication_sql = catalog::create_publication_sql(&settings.publication, &table),
        slot_l = quote_literal(&settings.slot),
    ))
}

/// Creates the publication and the slot if they are missing; returns one
/// line per thing, saying what was done or found.
pub async fn setup(settings: &Settings) -> Result<Vec<String>, OpsError> {
    let client = pg::connect_control(
        settings.pg_url.as_deref().unwrap_or(""),
        "outbox-relay setup",
    )
    .await
    .map_err(OpsError::Connect)?;
    let table = TableName::parse(&settings.table)?;
    if catalog::table_info(&client, &table).await?.is_none() {
        return Err(OpsError::NoTable(table.to_string()));
    }
    let mut done = Vec::new();
    match catalog::publication_info(&client, &settings.publication, &table).await? {
        Some(p) if p.covers_table => done.push(format!(
            "publication {} exists and covers {table}",
            settings.publication
        )),
        Some(_) => done.push(format!(
            "publication {} exists but does not cover {table}: left as is; \
             ALTER PUBLICATION {} ADD TABLE {} to fix",
            settings.publication,
            quote_ident(&settings.publication),
            table.quoted()
        )),
        None => {
            catalog::create_publication(&client, &settings.publication, &table).await?;
            done.push(format!(
                "created publication {} FOR TABLE {table} (inserts)",
                settings.publication
            ));
        }
    }
    match catalog::slot_info(&client, &settings.slot).await? {
        Some(s) => done.push(format!(
            "slot {} exists ({}), resumes at {}",
            settings.slot,
            s.plugin.as_deref().unwrap_or("physical"),
            s.confirmed_flush_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into())
        )),
        None => {
            let row = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&settings.slot],
                )
                .await
                .map_err(|source| OpsError::CreateSlot {
                    slot: settings.slot.clone(),
                    source,
                })?;
            let lsn: String = row.get(0);
            done.push(format!(
                "created slot {} (pgoutput) at {lsn}: WAL is kept from here until the relay \
                 acknowledges it",
                settings.slot
            ));
        }
    }
    Ok(done)
}

/// Where the slot stands.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// The slot's name.
    pub slot: String,
    /// Whether a process streams from it.
    pub active: bool,
    /// That process.
    pub active_pid: Option<i32>,
    /// Everything before this was acknowledged by the relay.
    pub confirmed_flush_lsn: Option<String>,
    /// The oldest WAL the slot keeps.
    pub restart_lsn: Option<String>,
    /// The server's current WAL position.
    pub current_wal_lsn: String,
    /// Bytes between confirmed_flush_lsn and the current position.
    pub lag_bytes: Option<u64>,
    /// Bytes of WAL the slot keeps (current position - restart_lsn).
    pub retained_wal_bytes: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

/// Reads [`SlotStatus`].
pub async fn status(settings: &Settings) -> Result<SlotStatus, OpsError> {
    let client = pg::connect_control(
        settings.pg_url.as_deref().unwrap_or(""),
        "outbox-relay status",
    )
    .await
    .map_err(OpsError::Connect)?;
    let slot = catalog::slot_info(&client, &settings.slot)
        .await?
        .ok_or_else(|| OpsError::NoSlot(settings.slot.clone()))?;
    let wal = catalog::wal_position(&client).await?;
    Ok(SlotStatus {
        slot: settings.slot.clone(),
        active: slot.active,
        active_pid: slot.active_pid,
        confirmed_flush_lsn: slot.confirmed_flush_lsn.map(|l| l.to_string()),
        restart_lsn: slot.restart_lsn.map(|l| l.to_string()),
        current_wal_lsn: wal.current.to_string(),
        lag_bytes: slot.confirmed_flush_lsn.map(|l| wal.current.bytes_since(l)),
        retained_wal_bytes: slot.restart_lsn.map(|l| wal.current.bytes_since(l)),
        wal_status: slot.wal_status,
    })
}

impl SlotStatus {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let bytes = |v: Option<u64>| v.map(human_bytes).unwrap_or_else(|| "-".into());
        let holder = match (self.active, self.active_pid) {
            (true, Some(pid)) => format!("yes, PID {pid}"),
            (true, None) => "yes".into(),
            _ => "no".into(),
        };
        format!(
            "slot                 {}\nactive               {holder}\nconfirmed_flush_lsn  {}\n\
             restart_lsn          {}\ncurrent_wal_lsn      {}\nlag                  {}\n\
             retained WAL         {}\nwal_status           {}\n",
            self.slot,
            opt(&self.confirmed_flush_lsn),
            opt(&self.restart_lsn),
            self.current_wal_lsn,
            bytes(self.lag_bytes),
            bytes(self.retained_wal_bytes),
            opt(&self.wal_status),
        )
    }
}

/// `1536` -> `1536 bytes (1.5 KiB)`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = None;
    let mut scaled = 0u64; // tenths
    for u in UNITS {
        if value < 1024 {
            break;
        }
        scaled = value * 10 / 1024;
        value /= 1024;
        unit = Some(*u);
    }
    match unit {
        None => format!("{n} bytes"),
        Some(u) => format!("{n} bytes ({}.{} {u})", scaled / 10, scaled % 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_read_them() {
        assert_eq!(human_bytes(12), "12 bytes");
        assert_eq!(human_bytes(1536), "1536 bytes (1.5 KiB)");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20971520 bytes (20.0 MiB)");
    }

    #[test]
    fn printed_sql_grants_replication_and_select_on_the_outbox_only() {
        let sql = setup_sql(&Settings::default(), "outbox_relay").unwrap();
        assert!(sql.contains("CREATE ROLE \"outbox_relay\" WITH LOGIN REPLICATION"));
        assert!(sql.contains("GRANT SELECT ON \"public\".\"outbox\" TO \"outbox_relay\""));
        assert!(sql.contains("pg_create_logical_replication_slot('outbox_relay', 'pgoutput')"));
        assert_eq!(sql.matches("GRANT SELECT").count(), 1);
    }
}
