//! What the relay asks PostgreSQL's catalog over the ordinary (control)
//! connection: server settings, the role's rights, the outbox table and its
//! columns, the publication and the slot; and the two things it may create
//! (the publication, the slot through SQL for `setup`).
//!
//! Used by start-up (`run`), the preflight (`check`), `setup` and `status`,
//! so that each states the same facts the same way. Every query returns
//! plain values (LSNs as text, parsed into [`Lsn`]) and every failure says
//! what to do.

use pgoutput::Lsn;
use tokio_postgres::Client;

use crate::names::TableName;

/// A catalog query failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The query itself failed.
    #[error("{what}: {source}")]
    Query {
        /// What the relay was asking.
        what: &'static str,
        /// The driver's error (carries SQLSTATE and message).
        #[source]
        source: tokio_postgres::Error,
    },
}

impl CatalogError {
    /// The server's message (SQLSTATE and text) without the driver's
    /// wrapping, for one-line reports.
    pub fn server_message(&self) -> String {
        match self {
            CatalogError::Query { source, .. } => match source.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => source.to_string(),
            },
        }
    }
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    move |source| CatalogError::Query { what, source }
}

/// The server settings logical replication depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `server_version_num`, e.g. 150019.
    pub version_num: i32,
    /// `wal_level`.
    pub wal_level: String,
    /// `max_replication_slots`.
    pub max_replication_slots: i64,
    /// Slots that exist.
    pub used_slots: i64,
    /// `max_wal_senders`.
    pub max_wal_senders: i64,
    /// walsenders running.
    pub used_wal_senders: i64,
    /// `wal_sender_timeout` in milliseconds (0 = disabled).
    pub wal_sender_timeout_ms: i64,
    /// `pg_is_in_recovery()`: the server is a standby.
    pub in_recovery: bool,
    /// `max_slot_wal_keep_size` in megabytes (-1 = unbounded).
    pub max_slot_wal_keep_size_mb: i64,
    /// `idle_replication_slot_timeout` as the server shows it
    /// (PostgreSQL 18; "0" = off).
    pub idle_replication_slot_timeout: Option<String>,
    /// `synchronized_standby_slots` (PostgreSQL 17).
    pub synchronized_standby_slots: Option<String>,
    /// The physical slots that exist, and whether a standby streams from
    /// each.
    pub physical_slots: Vec<(String, bool)>,
}

impl ServerSettings {
    /// The major version (17 of 170004).
    pub fn major(&self) -> i32 {
        self.version_num / 10_000
    }

    /// The names listed in `synchronized_standby_slots`.
    pub fn standby_slots(&self) -> Vec<String> {
        self.synchronized_standby_slots
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Reads [`ServerSettings`].
pub async fn server_settings(client: &Client) -> Result<ServerSettings, CatalogError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4,
                    current_setting('wal_level'),
                    current_setting('max_replication_slots')::int8,
                    (SELECT count(*) FROM pg_replication_slots),
                    current_setting('max_wal_senders')::int8,
                    (SELECT count(*) FROM pg_stat_replication),
                    (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'),
                    pg_is_in_recovery(),
                    (SELECT setting::int8 FROM pg_settings WHERE name = 'max_slot_wal_keep_size'),
                    current_setting('idle_replication_slot_timeout', true),
                    current_setting('synchronized_standby_slots', true),
                    ARRAY(SELECT slot_name::text FROM pg_replication_slots
                          WHERE slot_type = 'physical' ORDER BY 1),
                    ARRAY(SELECT active FROM pg_replication_slots
                          WHERE slot_type = 'physical' ORDER BY slot_name)",
            &[],
        )
        .await
        .map_err(query("reading server settings"))?;
    let names: Vec<String> = row.get(11);
    let active: Vec<bool> = row.get(12);
    Ok(ServerSettings {
        version_num: row.get(0),
        wal_level: row.get(1),
        max_replication_slots: row.get(2),
        used_slots: row.get(3),
        max_wal_senders: row.get(4),
        used_wal_senders: row.get(5),
        wal_sender_timeout_ms: row.get(6),
        in_recovery: row.get(7),
        max_slot_wal_keep_size_mb: row.get::<_, Option<i64>>(8).unwrap_or(-1),
        idle_replication_slot_timeout: row.get(9),
        synchronized_standby_slots: row.get(10),
        physical_slots: names.into_iter().zip(active).collect(),
    })
}

/// The connected role's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRights {
    /// `current_user`.
    pub name: String,
    /// rolsuper.
    pub superuser: bool,
    /// rolreplication.
    pub replication: bool,
}

/// Reads the connected role's rights.
pub async fn role_rights(client: &Client) -> Result<RoleRights, CatalogError> {
    let row = client
        .query_one(
            "SELECT rolname::text, rolsuper, rolreplication FROM pg_roles
             WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(query("reading the role's attributes"))?;
    Ok(RoleRights {
        name: row.get(0),
        superuser: row.get(1),
        replication: row.get(2),
    })
}

/// One column of the outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type, as `format_type` prints it (`jsonb`, `text`, `uuid`, ...).
    pub type_name: String,
    /// NOT NULL.
    pub not_null: bool,
}

/// The outbox table as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Its columns in order (dropped ones left out).
    pub columns: Vec<Column>,
    /// Whether the connected role may SELECT from it.
    pub can_select: bool,
    /// The replica identity: 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: char,
    /// Whether the connected role owns the table (or is a member of its
    /// owner): needed to create a publication for it.
    pub owned: bool,
}

impl TableInfo {
    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Reads the table's columns and privileges; `None` if it does not exist.
pub async fn table_info(
    client: &Client,
    table: &TableName,
) -> Result<Option<TableInfo>, CatalogError> {
    let rel = client
        .query_opt(
            "SELECT c.oid, has_table_privilege(c.oid, 'SELECT'), c.relreplident::text,
                    pg_has_role(c.relowner, 'USAGE')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(query("looking up the outbox table"))?;
    let Some(rel) = rel else {
        return Ok(None);
    };
    let oid: u32 = rel.get(0);
    let columns = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(query("reading the outbox table's columns"))?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
        })
        .collect();
    let replident: String = rel.get(2);
    Ok(Some(TableInfo {
        columns,
        can_select: rel.get(1),
        replica_identity: replident.chars().next().unwrap_or('d'),
        owned: rel.get(3),
    }))
}

/// A publication as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationInfo {
    /// Whether it publishes INSERTs.
    pub publishes_inserts: bool,
    /// Whether it covers each outbox table, in the mapping's order (FOR
    /// TABLE, FOR ALL TABLES or a schema).
    pub covers: Vec<bool>,
    /// Whether the connected role owns it (or is a member of its owner):
    /// needed to add a table to it.
    pub owned: bool,
}

impl PublicationInfo {
    /// Whether it covers every outbox table.
    pub fn covers_all(&self) -> bool {
        self.covers.iter().all(|c| *c)
    }
}

/// Reads a publication and whether it covers each of `tables`; `None` if
/// it does not exist.
pub async fn publication_info(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<Option<PublicationInfo>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT p.pubinsert, pg_has_role(p.pubowner, 'USAGE')
             FROM pg_publication p WHERE p.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query("looking up the publication"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut covers = Vec::with_capacity(tables.len());
    for table in tables {
        let covered = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables t
                                WHERE t.pubname = $1 AND t.schemaname = $2
                                  AND t.tablename = $3)",
                &[&publication, &table.schema, &table.name],
            )
            .await
            .map_err(query("looking up the publication's tables"))?;
        covers.push(covered.get(0));
    }
    Ok(Some(PublicationInfo {
        publishes_inserts: row.get(0),
        covers,
        owned: row.get(1),
    }))
}

/// Whether `publication` exists.
pub async fn publication_exists(client: &Client, publication: &str) -> Result<bool, CatalogError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .map_err(query("looking up the publication"))?;
    Ok(row.get(0))
}

/// Drops `publication`.
pub async fn drop_publication(client: &Client, publication: &str) -> Result<(), CatalogError> {
    client
        .batch_execute(&format!(
            "DROP PUBLICATION {}",
            crate::names::quote_ident(publication)
        ))
        .await
        .map_err(query("dropping the publication"))
}

/// Drops `slot` (PostgreSQL refuses, with 55006, while it is active).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), CatalogError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map(|_| ())
        .map_err(query("dropping the slot"))
}

/// Creates `publication` FOR TABLE the outbox tables (INSERTs only: the
/// relay ignores the rest, and not publishing them spares the walsender the
/// work).
pub async fn create_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<(), CatalogError> {
    client
        .batch_execute(&crate::sql::create_publication(publication, tables))
        .await
        .map_err(query("creating the publication"))
}

/// Adds outbox tables to an existing publication (a table added to the
/// relay's settings): their rows are events from this transaction's commit
/// on.
pub async fn add_to_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<(), CatalogError> {
    client
        .batch_execute(&crate::sql::add_to_publication(publication, tables))
        .await
        .map_err(query("adding tables to the publication"))
}

/// Creates the relay's slot through SQL (for `setup`); returns where it
/// starts.
///
/// With `failover` (PostgreSQL 17+), a failover slot: synced to standbys
/// that run with sync_replication_slots.
pub async fn create_slot(
    client: &Client,
    slot: &str,
    failover: bool,
) -> Result<String, CatalogError> {
    let sql = if failover {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    client
        .query_one(sql, &[&slot])
        .await
        .map(|r| r.get(0))
        .map_err(query("creating the slot"))
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The output plugin (`pgoutput` for ours; NULL for physical slots).
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// The database of a logical slot.
    pub database: Option<String>,
    /// Whether a process is streaming from it.
    pub active: bool,
    /// That process.
    pub active_pid: Option<i32>,
    /// Where a consumer resumes: everything before it was acknowledged.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The oldest WAL the slot keeps.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Whether the slot decodes prepared transactions at PREPARE time.
    pub two_phase: bool,
    /// The application_name of the process that holds it (when the role
    /// may see it): `outbox-relay` for a relay.
    pub holder: Option<String>,
    /// Whether it is a failover slot, synced to standbys (PostgreSQL 17+;
    /// `None` before).
    pub failover: Option<bool>,
    /// Whether it is a standby's copy of a primary's failover slot
    /// (PostgreSQL 17+).
    pub synced: Option<bool>,
    /// Why the server invalidated it (PostgreSQL 17+: `wal_removed`,
    /// `rows_removed`, `wal_level_insufficient`, `idle_timeout`), or on 16
    /// `conflict` for a slot invalidated by a recovery conflict.
    pub invalidation_reason: Option<String>,
    /// Bytes of WAL that can still be written before the slot is in danger
    /// of losing what it needs (`None`: unbounded, or lost).
    pub safe_wal_size: Option<i64>,
    /// A temporary slot (dropped when its session ends).
    pub temporary: bool,
}

impl SlotInfo {
    /// Why the slot can no longer be used, if it cannot: the server
    /// removed WAL or rows it needed, or invalidated it otherwise.
    pub fn lost_because(&self) -> Option<String> {
        let reason = self.invalidation_reason.as_deref().or(
            // PostgreSQL 16 and earlier show only the WAL status.
            (self.wal_status.as_deref() == Some("lost")).then_some("wal_removed"),
        )?;
        Some(walstream::invalidation_cause(reason))
    }
}

/// The walsender that streams a slot, as pg_stat_replication shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WalSender {
    /// The walsender's backend PID (pg_replication_slots.active_pid).
    pub pid: i32,
    /// The client's application_name (`outbox-relay` for a relay).
    pub application_name: Option<String>,
    /// The client's address (`None` over a Unix socket, or when the role
    /// may not see it).
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, `startup`, `backup` or `stopping`.
    pub state: Option<String>,
    /// How long the server last measured between writing WAL and the
    /// client acknowledging it (flush_lag, else replay_lag), seconds;
    /// `None` once the client has caught up and nothing new was written.
    pub lag_seconds: Option<f64>,
}

/// The walsender with this PID; `None` if it is gone (or invisible to the
/// role).
pub async fn walsender(client: &Client, pid: i32) -> Result<Option<WalSender>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT pid, application_name::text, host(client_addr), state::text,
                    extract(epoch FROM coalesce(flush_lag, replay_lag))::float8
             FROM pg_stat_replication WHERE pid = $1",
            &[&pid],
        )
        .await
        .map_err(query("reading pg_stat_replication"))?;
    Ok(row.map(|r| WalSender {
        pid: r.get(0),
        application_name: r.get(1),
        client_addr: r.get(2),
        state: r.get(3),
        lag_seconds: r.get(4),
    }))
}

/// The application_name of a running relay's slot-watch session for
/// `slot` (PostgreSQL keeps 63 bytes of it).
pub fn slot_watch_name(slot: &str) -> String {
    let mut name = format!("outbox-relay slot-watch {slot}");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// Sessions of a running relay that watches `slot`: (PID, client
/// address).
pub async fn relay_sessions(
    client: &Client,
    slot: &str,
) -> Result<Vec<(i32, Option<String>)>, CatalogError> {
    let rows = client
        .query(
            "SELECT pid, host(client_addr) FROM pg_stat_activity
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&slot_watch_name(slot)],
        )
        .await
        .map_err(query("reading pg_stat_activity"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Reads a slot; `None` if it does not exist.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT s.plugin::text, s.slot_type, s.database::text, s.active, s.active_pid,
                    s.confirmed_flush_lsn::text, s.restart_lsn::text, s.wal_status, s.two_phase,
                    a.application_name::text,
                    (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool,
                    coalesce(to_jsonb(s) ->> 'invalidation_reason',
                             CASE WHEN (to_jsonb(s) ->> 'conflicting')::bool THEN 'conflict' END),
                    s.safe_wal_size, s.temporary
             FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query("looking up the replication slot"))?;
    Ok(row.map(|r| {
        let lsn = |i: usize| {
            r.get::<_, Option<String>>(i)
                .and_then(|s| s.parse::<Lsn>().ok())
        };
        SlotInfo {
            plugin: r.get(0),
            slot_type: r.get(1),
            database: r.get(2),
            active: r.get(3),
            active_pid: r.get(4),
            confirmed_flush_lsn: lsn(5),
            restart_lsn: lsn(6),
            wal_status: r.get(7),
            two_phase: r.get(8),
            holder: r.get(9),
            failover: r.get(10),
            synced: r.get(11),
            invalidation_reason: r.get(12),
            safe_wal_size: r.get(13),
            temporary: r.get(14),
        }
    }))
}

/// The server's current WAL positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPosition {
    /// `pg_current_wal_lsn()`: written so far.
    pub current: Lsn,
    /// `pg_current_wal_insert_lsn()`: inserted so far (can be ahead of
    /// `current` with synchronous_commit off).
    pub insert: Lsn,
}

/// Reads the server's WAL positions (fails on a standby in recovery).
pub async fn wal_position(client: &Client) -> Result<WalPosition, CatalogError> {
    let row = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .map_err(query("reading the current WAL position"))?;
    let parse = |i: usize| row.get::<_, String>(i).parse::<Lsn>().unwrap_or(Lsn::ZERO);
    Ok(WalPosition {
        current: parse(0),
        insert: parse(1),
    })
}

/// The name of the database the client is connected to.
pub async fn current_database(client: &Client) -> Result<String, CatalogError> {
    client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map(|r| r.get(0))
        .map_err(query("reading the current database"))
}

/// Whether PUBLIC (any role that can connect) may call
/// pg_logical_emit_message, in any of its forms.
pub async fn emit_message_is_public(client: &Client) -> Result<bool, CatalogError> {
    client
        .query_one(
            "SELECT coalesce(bool_or(has_function_privilege('public', p.oid, 'EXECUTE')), false)
             FROM pg_proc p WHERE p.proname = 'pg_logical_emit_message'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .map_err(query("reading who may call pg_logical_emit_message"))
}

/// Everything the prerequisites are judged on, read once (see
/// `crate::prereq`).
#[derive(Debug, Clone)]
pub struct PgFacts {
    /// Server settings.
    pub server: ServerSettings,
    /// The connected role.
    pub role: RoleRights,
    /// The connected database.
    pub database: String,
    /// Each outbox table, in the mapping's order, if it exists.
    pub tables: Vec<Option<TableInfo>>,
    /// The publication, if it exists.
    pub publication: Option<PublicationInfo>,
    /// The slot, if it exists.
    pub slot: Option<SlotInfo>,
    /// Whether PUBLIC may call pg_logical_emit_message.
    pub emit_message_public: bool,
}

impl PgFacts {
    /// Those of `tables` (the mapping's, in its order) that the existing
    /// publication does not cover; empty when there is no publication.
    pub fn tables_missing_from_publication(&self, tables: &[TableName]) -> Vec<TableName> {
        let Some(publication) = &self.publication else {
            return Vec::new();
        };
        tables
            .iter()
            .zip(&publication.covers)
            .filter(|(_, covered)| !**covered)
            .map(|(table, _)| table.clone())
            .collect()
    }
}

/// Reads every fact the prerequisites are judged on.
pub async fn gather(
    client: &Client,
    tables: &[TableName],
    publication: &str,
    slot: &str,
) -> Result<PgFacts, CatalogError> {
    let mut infos = Vec::with_capacity(tables.len());
    for table in tables {
        infos.push(table_info(client, table).await?);
    }
    Ok(PgFacts {
        server: server_settings(client).await?,
        role: role_rights(client).await?,
        database: current_database(client).await?,
        tables: infos,
        publication: publication_info(client, publication, tables).await?,
        slot: slot_info(client, slot).await?,
        emit_message_public: emit_message_is_public(client).await?,
    })
}
