//! `outbox-relay setup` and `outbox-relay status`: the two commands an
//! operator runs by hand around the daemon.
//!
//! `setup` creates what `run` needs (publication, slot) idempotently and
//! says what it did, or prints the SQL for a DBA; `status` reports where the
//! slot stands (confirmed position, lag, retained WAL, who holds it).

use serde::Serialize;

use crate::catalog::{self, CatalogError};
use crate::config::{Config, ConfigError};
use crate::names::{self, TableName};
use crate::prereq::{self, Verdict};
use crate::{pg, probe, sql};

/// A failure of `setup` or `status`, with the fix in its message.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The settings lack something the command needs.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// PostgreSQL is unreachable or refused the session.
    #[error("{problem}; fix: {fix}")]
    Connect {
        /// What happened.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// A catalog query or DDL failed.
    #[error("{what}: {message}; fix: {fix}")]
    Catalog {
        /// What the relay was doing.
        what: &'static str,
        /// The server's message.
        message: String,
        /// What to do.
        fix: String,
    },
    /// A prerequisite that setup cannot create is missing.
    #[error("{0}")]
    Prerequisites(String),
    /// A change that must wait until no process streams the slot.
    #[error("{0}")]
    SlotBusy(String),
    /// The slot does not exist (status).
    #[error("slot {0} does not exist: `outbox-relay setup` or `run` creates it")]
    NoSlot(String),
    /// Teardown refused: a process streams from the slot.
    #[error(
        "slot {slot} is in use by {holder}: stop that relay first (teardown never drops a slot \
         a relay streams from)"
    )]
    SlotActive {
        /// The slot.
        slot: String,
        /// Who holds it.
        holder: String,
    },
}

impl OpsError {
    fn catalog(what: &'static str, e: &CatalogError) -> OpsError {
        let message = e.server_message();
        let fix = if message.contains("42501") {
            "run this as a role that may do it (the table's owner or a superuser), or have a \
             DBA run `outbox-relay setup --print-sql`"
        } else {
            "see the server's message"
        };
        OpsError::Catalog {
            what,
            message,
            fix: fix.to_string(),
        }
    }
}

async fn connect(config: &Config, name: &str) -> Result<tokio_postgres::Client, OpsError> {
    pg::connect_control(config.pg()?, name).await.map_err(|e| {
        let (problem, fix) = prereq::connection_failure(config, &e);
        OpsError::Connect { problem, fix }
    })
}

/// The SQL a DBA runs to prepare PostgreSQL for the relay with a
/// least-privilege role (`role`, else pg_url's user, else outbox_relay).
pub fn setup_sql(config: &Config, role: Option<&str>) -> Result<String, OpsError> {
    let role = role
        .or(config.pg.as_ref().map(|pg| pg.user()))
        .filter(|r| !r.is_empty())
        .unwrap_or("outbox_relay");
    names::check_name("role", role).map_err(|source| ConfigError::Name {
        key: "role",
        source,
    })?;
    let database = config
        .pg
        .as_ref()
        .map(|pg| pg.dbname())
        .unwrap_or("postgres");
    names::check_name("database", database).map_err(|source| ConfigError::Name {
        key: "pg_url",
        source,
    })?;
    let tables: Vec<TableName> = config.mapping.table_names().cloned().collect();
    Ok(sql::setup_script(&sql::Script {
        role,
        database,
        tables: &tables,
        publication: &config.publication,
        slot: &config.slot,
    }))
}

/// Creates the publication and the slot if they are missing (after the
/// same judgement as `check` and `run`); returns one line per thing,
/// saying what was done or found.
pub async fn setup(config: &Config) -> Result<Vec<String>, OpsError> {
    let client = connect(config, "outbox-relay setup").await?;
    let facts = probe::postgres(&client, config)
        .await
        .map_err(|e| OpsError::catalog("reading the catalog", &e))?;
    let lines = prereq::judge_postgres(config, &facts);
    if let Some(failed) = prereq::failures(&lines) {
        return Err(OpsError::Prerequisites(failed));
    }
    let tables: Vec<TableName> = config.mapping.table_names().cloned().collect();
    let listed = crate::names::list(&tables);
    let mut done = Vec::new();
    for line in &lines {
        if let Verdict::Warn { found, advice } = &line.verdict {
            done.push(format!("warning: {}: {found}; {advice}", line.name));
        }
    }
    let missing = facts.tables_missing_from_publication(&tables);
    match &facts.publication {
        Some(_) if missing.is_empty() => done.push(format!(
            "publication {} exists and covers {listed}",
            config.publication
        )),
        Some(_) if facts.slot.as_ref().is_some_and(|s| s.active) => {
            return Err(OpsError::SlotBusy(format!(
                "publication {} does not cover {}, and slot {} is streamed by a running \
                 process: a relay running with settings that lack the table would skip its rows \
                 and acknowledge past them. Stop that relay (its replacement, started with the \
                 new settings, adds the table once it holds the slot), or run setup again when \
                 the slot is free",
                config.publication,
                crate::names::list(&missing),
                config.slot
            )));
        }
        Some(_) => {
            catalog::add_to_publication(&client, &config.publication, &missing)
                .await
                .map_err(|e| OpsError::catalog("adding tables to the publication", &e))?;
            done.push(format!(
                "added {} to publication {} (their inserts are events from here on)",
                crate::names::list(&missing),
                config.publication
            ));
        }
        None => {
            catalog::create_publication(&client, &config.publication, &tables)
                .await
                .map_err(|e| OpsError::catalog("creating the publication", &e))?;
            done.push(format!(
                "created publication {} FOR TABLE {listed} (inserts)",
                config.publication
            ));
        }
    }
    match &facts.slot {
        Some(s) => done.push(format!(
            "slot {} exists ({}), resumes at {}",
            config.slot,
            s.plugin.as_deref().unwrap_or("physical"),
            s.confirmed_flush_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into())
        )),
        None => {
            let failover = config.failover_slot && facts.server.major() >= 17;
            let lsn = catalog::create_slot(&client, &config.slot, failover)
                .await
                .map_err(|e| OpsError::catalog("creating the slot", &e))?;
            done.push(format!(
                "created {}slot {} (pgoutput) at {lsn}: WAL is kept from here until the relay \
                 acknowledges it",
                if failover { "failover " } else { "" },
                config.slot
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
    /// The walsender that streams it (the server's backend, not the
    /// client's process).
    pub active_pid: Option<i32>,
    /// Who holds the slot: that walsender's client, as
    /// pg_stat_replication shows it.
    pub holder: Option<crate::catalog::WalSender>,
    /// How far behind the holder is, in time: the server's last measured
    /// lag; `None` when nothing streams or nothing is behind.
    pub lag_seconds: Option<f64>,
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
    /// Bytes of WAL that can still be written before the slot is in
    /// danger (`None`: unbounded).
    pub safe_wal_size: Option<i64>,
    /// Why PostgreSQL invalidated the slot, if it did.
    pub invalidation_reason: Option<String>,
    /// Whether it is a failover slot (PostgreSQL 17+; `None` before).
    pub failover: Option<bool>,
    /// Each server of a multi-host pg_url (empty for one server).
    pub servers: Vec<ServerStatus>,
    /// Each outbox table the relay is configured for.
    pub tables: Vec<TableStatus>,
}

/// One configured outbox table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// `schema.table`.
    pub table: String,
    /// Whether it exists.
    pub exists: bool,
    /// Whether the publication covers it (its inserts reach the slot).
    pub published: bool,
}

/// One server of a multi-host pg_url, and its copy of the slot.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// `host:port`.
    pub server: String,
    /// `primary`, `standby` or `unreachable`.
    pub role: &'static str,
    /// The PostgreSQL version.
    pub version: Option<String>,
    /// On a standby (17+): whether its copy of the slot is synced and
    /// usable after a promotion.
    pub slot_synced: Option<bool>,
    /// Its copy's confirmed_flush_lsn.
    pub slot_confirmed_flush_lsn: Option<String>,
    /// Why it could not be reached.
    pub error: Option<String>,
}

impl ServerStatus {
    fn of(view: &crate::servers::ServerView) -> ServerStatus {
        match &view.seen {
            Err(e) => ServerStatus {
                server: view.target.clone(),
                role: "unreachable",
                version: None,
                slot_synced: None,
                slot_confirmed_flush_lsn: None,
                error: Some(e.clone()),
            },
            Ok(seen) => ServerStatus {
                server: view.target.clone(),
                role: if seen.in_recovery {
                    "standby"
                } else {
                    "primary"
                },
                version: Some(crate::prereq::version_text(seen.version_num)),
                slot_synced: seen.in_recovery.then(|| seen.slot_ready()),
                slot_confirmed_flush_lsn: seen
                    .slot
                    .as_ref()
                    .and_then(|s| s.confirmed_flush_lsn)
                    .map(|l| l.to_string()),
                error: None,
            },
        }
    }
}

/// What `teardown` will drop, for the confirmation prompt.
pub fn teardown_plan(config: &Config) -> String {
    let dbname = config.pg.as_ref().map(|pg| pg.dbname()).unwrap_or("?");
    format!(
        "This drops replication slot {} and publication {} in database {dbname}. Events \
         committed while no slot exists are never published, and a new slot starts from the \
         server's position at its creation. The outbox table and the broker's exchanges and \
         queues are left alone.",
        config.slot, config.publication
    )
}

/// Drops the slot (refusing while it is active) and the publication; says
/// what it did.
pub async fn teardown(config: &Config) -> Result<Vec<String>, OpsError> {
    let client = connect(config, "outbox-relay teardown").await?;
    let mut done = Vec::new();
    let slot = catalog::slot_info(&client, &config.slot)
        .await
        .map_err(|e| OpsError::catalog("reading the slot", &e))?;
    match slot {
        Some(slot) if slot.active => {
            let holder = match slot.active_pid {
                Some(pid) => match catalog::walsender(&client, pid).await.ok().flatten() {
                    Some(w) => format!(
                        "{} from {} (walsender PID {pid})",
                        w.application_name.unwrap_or_else(|| "a client".into()),
                        w.client_addr.unwrap_or_else(|| "a local socket".into())
                    ),
                    None => format!("walsender PID {pid}"),
                },
                None => "a process".into(),
            };
            return Err(OpsError::SlotActive {
                slot: config.slot.clone(),
                holder,
            });
        }
        Some(slot) => {
            // A relay between two sessions (a rewind, a reconnect) holds no
            // slot for a moment, but it runs: its slot-watch session says so.
            let running = catalog::relay_sessions(&client, &config.slot)
                .await
                .map_err(|e| OpsError::catalog("reading pg_stat_activity", &e))?;
            if let Some((pid, addr)) = running.first() {
                return Err(OpsError::SlotActive {
                    slot: config.slot.clone(),
                    holder: format!(
                        "a running relay from {} (its slot-watch session, PID {pid}; it is \
                         between two sessions)",
                        addr.as_deref().unwrap_or("a local socket")
                    ),
                });
            }
            let wal = catalog::wal_position(&client)
                .await
                .map_err(|e| OpsError::catalog("reading the WAL position", &e))?;
            let released = slot.restart_lsn.map(|l| wal.current.bytes_since(l));
            catalog::drop_slot(&client, &config.slot)
                .await
                .map_err(|e| {
                    if e.server_message().contains("55006") {
                        OpsError::SlotActive {
                            slot: config.slot.clone(),
                            holder: "a process that took it just now".into(),
                        }
                    } else {
                        OpsError::catalog("dropping the slot", &e)
                    }
                })?;
            done.push(format!(
                "dropped slot {}{}",
                config.slot,
                released
                    .map(|b| format!(" (released {})", human_bytes(b)))
                    .unwrap_or_default()
            ));
        }
        None => done.push(format!("slot {} does not exist", config.slot)),
    }
    let exists = catalog::publication_exists(&client, &config.publication)
        .await
        .map_err(|e| OpsError::catalog("reading the publication", &e))?;
    if exists {
        catalog::drop_publication(&client, &config.publication)
            .await
            .map_err(|e| OpsError::catalog("dropping the publication", &e))?;
        done.push(format!("dropped publication {}", config.publication));
    } else {
        done.push(format!("publication {} does not exist", config.publication));
    }
    Ok(done)
}

/// Reads [`SlotStatus`].
pub async fn status(config: &Config) -> Result<SlotStatus, OpsError> {
    let client = connect(config, "outbox-relay status").await?;
    let slot = catalog::slot_info(&client, &config.slot)
        .await
        .map_err(|e| OpsError::catalog("reading the slot", &e))?
        .ok_or_else(|| OpsError::NoSlot(config.slot.clone()))?;
    let wal = catalog::wal_position(&client)
        .await
        .map_err(|e| OpsError::catalog("reading the WAL position", &e))?;
    let holder = match slot.active_pid {
        Some(pid) => catalog::walsender(&client, pid)
            .await
            .map_err(|e| OpsError::catalog("reading the walsender", &e))?,
        None => None,
    };
    let lag_bytes = slot.confirmed_flush_lsn.map(|l| wal.current.bytes_since(l));
    let names: Vec<TableName> = config.mapping.table_names().cloned().collect();
    let publication = catalog::publication_info(&client, &config.publication, &names)
        .await
        .map_err(|e| OpsError::catalog("reading the publication", &e))?;
    let mut tables = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let exists = catalog::table_info(&client, name)
            .await
            .map_err(|e| OpsError::catalog("reading an outbox table", &e))?
            .is_some();
        tables.push(TableStatus {
            table: name.to_string(),
            exists,
            published: publication
                .as_ref()
                .and_then(|p| p.covers.get(i).copied())
                .unwrap_or(false),
        });
    }
    Ok(SlotStatus {
        tables,
        slot: config.slot.clone(),
        active: slot.active,
        active_pid: slot.active_pid,
        lag_seconds: holder.as_ref().and_then(|h| h.lag_seconds),
        holder,
        confirmed_flush_lsn: slot.confirmed_flush_lsn.map(|l| l.to_string()),
        restart_lsn: slot.restart_lsn.map(|l| l.to_string()),
        current_wal_lsn: wal.current.to_string(),
        lag_bytes,
        retained_wal_bytes: slot.restart_lsn.map(|l| wal.current.bytes_since(l)),
        wal_status: slot.wal_status,
        safe_wal_size: slot.safe_wal_size,
        invalidation_reason: slot.invalidation_reason,
        failover: slot.failover,
        servers: crate::servers::look(config)
            .await
            .iter()
            .map(ServerStatus::of)
            .collect(),
    })
}

impl SlotStatus {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let bytes = |v: Option<u64>| v.map(human_bytes).unwrap_or_else(|| "-".into());
        let human = bytes;
        let holder = match (self.active, self.active_pid, &self.holder) {
            (true, Some(pid), Some(h)) => format!(
                "yes: {} from {}, walsender PID {pid} ({})",
                h.application_name
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .unwrap_or("a client"),
                h.client_addr.as_deref().unwrap_or("a local socket"),
                h.state.as_deref().unwrap_or("?"),
            ),
            (true, Some(pid), None) => format!("yes, walsender PID {pid}"),
            (true, None, _) => "yes".into(),
            _ => "no".into(),
        };
        let lag = match (self.lag_bytes, self.lag_seconds, self.active) {
            (bytes, Some(secs), _) => format!("{}; about {secs:.1} s behind", human(bytes)),
            (bytes, None, true) => {
                format!(
                    "{}; the server has no recent time measurement",
                    human(bytes)
                )
            }
            (bytes, None, false) => format!("{}; time unknown (nothing streams)", human(bytes)),
        };
        let failover = match self.failover {
            Some(true) => "yes",
            Some(false) => "no",
            None => "- (PostgreSQL 17+)",
        };
        let safe = match (self.safe_wal_size, self.wal_status.as_deref()) {
            (Some(n), _) => human_bytes(u64::try_from(n).unwrap_or(0)),
            (None, Some("lost")) => "none (the slot is lost)".into(),
            (None, _) => "unbounded".into(),
        };
        let mut out = format!(
            "slot                 {}\nactive               {holder}\nconfirmed_flush_lsn  {}\n\
             restart_lsn          {}\ncurrent_wal_lsn      {}\nlag                  {}\n\
             retained WAL         {}\nwal_status           {}\nsafe_wal_size        {safe}\n\
             failover             {failover}\n",
            self.slot,
            opt(&self.confirmed_flush_lsn),
            opt(&self.restart_lsn),
            self.current_wal_lsn,
            lag,
            bytes(self.retained_wal_bytes),
            opt(&self.wal_status),
        );
        if let Some(reason) = &self.invalidation_reason {
            out.push_str(&format!("invalidated          {reason}\n"));
        }
        for t in &self.tables {
            let state = match (t.exists, t.published) {
                (true, true) => "published",
                (false, _) => "MISSING: the table does not exist",
                (true, false) => {
                    "NOT in the publication: its rows are not events (`outbox-relay setup` adds it)"
                }
            };
            out.push_str(&format!("table                {} {state}\n", t.table));
        }
        for s in &self.servers {
            let detail = match (s.role, s.slot_synced) {
                ("standby", Some(true)) => format!(
                    "slot synced at {}",
                    s.slot_confirmed_flush_lsn.as_deref().unwrap_or("?")
                ),
                ("standby", _) => "no usable copy of the slot".into(),
                ("unreachable", _) => s.error.clone().unwrap_or_default(),
                _ => String::new(),
            };
            out.push_str(&format!(
                "server               {} {} {} {detail}\n",
                s.server,
                s.role,
                s.version.as_deref().unwrap_or(""),
            ));
        }
        out
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
}
