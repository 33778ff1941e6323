//! The control connection: an ordinary tokio-postgres session with the same
//! settings (TLS included) as the replication connection, for what the
//! replication protocol does not carry or some managed servers refuse on a
//! replication connection: `wal_sender_timeout`, `wal_level`, and the state
//! of a slot in `pg_replication_slots`.
//!
//! walstream opens its link (socket, keepalives, TLS: `connect::open_link`,
//! shared with the replication connection) and hands it to tokio-postgres
//! behind the authentication guard (`guard`), so that `require_auth` and
//! the rule against cleartext passwords over plain TCP hold here too:
//! tokio-postgres alone would answer any request the server makes.

use std::time::Duration;

use crate::config::{ChannelBinding, ReplicationConfig};
use crate::error::Error;
use crate::guard::{self, Established, Guarded};
use crate::{connect, hosts};
use pgoutput::Lsn;

/// Opens an ordinary (non-replication) session with the same settings as
/// the replication connection (TLS, `require_auth`, `connect_timeout`,
/// keepalives), and spawns its connection task on the current runtime. For
/// catalog checks, publications and the like.
///
/// walstream opens the socket itself, so the client's cancel token works
/// with `CancelToken::cancel_query_raw` (over a stream the caller opens),
/// not with `cancel_query`, which needs tokio-postgres's own socket
/// settings.
///
/// With several servers in the settings, the first that suits
/// `target_session_attrs` (see [`crate::TargetSessionAttrs`]).
pub async fn connect_control(config: &ReplicationConfig) -> Result<tokio_postgres::Client, Error> {
    hosts::open_suitable::<Control>(config)
        .await
        .map(|(control, _)| control.0)
}

/// A control connection, as [`hosts`] tries one per server.
struct Control(tokio_postgres::Client);

impl hosts::Session for Control {
    async fn open(config: &ReplicationConfig) -> Result<Control, Error> {
        connect::within_connect_timeout(config, open_control(config))
            .await
            .map(Control)
    }

    async fn state(&mut self) -> Result<hosts::ServerState, Error> {
        let row = self
            .0
            .query_one(hosts::STATE_QUERY, &[])
            .await
            .map_err(|e| Error::control("reading whether the server is a standby", e))?;
        let in_recovery: Option<String> = row.get(0);
        let read_only: Option<String> = row.get(1);
        Ok(hosts::parse_state(
            in_recovery.as_deref(),
            read_only.as_deref(),
        ))
    }

    async fn discard(self) {}
}

async fn open_control(config: &ReplicationConfig) -> Result<tokio_postgres::Client, Error> {
    use tokio_postgres::config::{ChannelBinding as PgCb, SslMode as PgSsl, SslNegotiation};
    let socket = connect::open_link(config).await?;
    let policy = connect::auth_policy(config, &socket);
    let (link, refusal) = Guarded::new(socket, policy);
    let mut pg = tokio_postgres::Config::new();
    pg.user(config.user())
        .dbname(config.dbname())
        .application_name(config.application_name().unwrap_or("walstream"));
    if let Some(password) = connect::password(config) {
        pg.password(password);
    }
    if let Some(options) = config.options() {
        pg.options(options);
    }
    pg.channel_binding(match config.channel_binding() {
        ChannelBinding::Disable => PgCb::Disable,
        ChannelBinding::Prefer => PgCb::Prefer,
        ChannelBinding::Require => PgCb::Require,
    });
    // TLS is already up (or not wanted): tokio-postgres sends no SSLRequest.
    if link.is_tls() {
        pg.ssl_mode(PgSsl::Require)
            .ssl_negotiation(SslNegotiation::Direct);
    } else {
        pg.ssl_mode(PgSsl::Disable);
    }
    match pg.connect_raw(link, Established).await {
        Ok((client, connection)) => Ok(spawn_connection(client, connection)),
        Err(e) => Err(guard::take_refusal(&refusal)
            .unwrap_or_else(|| Error::control("opening the control connection", e))),
    }
}

fn spawn_connection<S, T>(
    client: tokio_postgres::Client,
    connection: tokio_postgres::Connection<S, T>,
) -> tokio_postgres::Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "control connection ended");
        }
    });
    client
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    name: String,
    plugin: Option<String>,
    slot_type: String,
    database: Option<String>,
    active_pid: Option<i32>,
    confirmed_flush_lsn: Option<Lsn>,
    restart_lsn: Option<Lsn>,
    wal_status: Option<String>,
    invalidation_reason: Option<String>,
    synced_on_standby: bool,
    failover: Option<bool>,
}

impl SlotState {
    /// The slot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The output plugin (`pgoutput`), `None` for a physical slot.
    pub fn plugin(&self) -> Option<&str> {
        self.plugin.as_deref()
    }

    /// `logical` or `physical`.
    pub fn slot_type(&self) -> &str {
        &self.slot_type
    }

    /// The database a logical slot decodes.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The PID of the walsender streaming from it, if one is.
    pub fn active_pid(&self) -> Option<i32> {
        self.active_pid
    }

    /// Everything up to here is acknowledged; a stream resumes after it.
    pub fn confirmed_flush_lsn(&self) -> Option<Lsn> {
        self.confirmed_flush_lsn
    }

    /// The oldest WAL the slot keeps.
    pub fn restart_lsn(&self) -> Option<Lsn> {
        self.restart_lsn
    }

    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated).
    pub fn wal_status(&self) -> Option<&str> {
        self.wal_status.as_deref()
    }

    /// Why the server invalidated the slot (PostgreSQL 17+:
    /// `wal_removed`, `rows_removed`, `wal_level_insufficient`,
    /// `idle_timeout`; on 16, `conflict` for a recovery conflict).
    pub fn invalidation_reason(&self) -> Option<&str> {
        self.invalidation_reason.as_deref()
    }

    /// Whether this is a failover slot (PostgreSQL 17+; `None` before).
    pub fn failover(&self) -> Option<bool> {
        self.failover
    }

    /// Whether the server is a standby and the slot its synced copy of the
    /// primary's failover slot (never consumed there).
    pub fn is_synced_on_standby(&self) -> bool {
        self.synced_on_standby
    }

    /// Refuses a slot walstream cannot stream as pgoutput for `dbname`, or
    /// that another process is streaming from.
    pub fn check_usable(&self, dbname: &str) -> Result<(), Error> {
        let unusable = |reason: String| {
            Err(Error::SlotUnusable {
                slot: self.name.clone(),
                reason,
            })
        };
        if self.slot_type != "logical" {
            return unusable(format!(
                "it is a {} slot; walstream needs a logical slot with plugin pgoutput: create one \
                 (create_slot, or pg_create_logical_replication_slot('<name>', 'pgoutput'))",
                self.slot_type
            ));
        }
        if self.plugin.as_deref() != Some("pgoutput") {
            return unusable(format!(
                "its plugin is {:?}, not pgoutput; drop it and create it again with pgoutput, or \
                 use another slot",
                self.plugin.as_deref().unwrap_or("")
            ));
        }
        if let Some(db) = self.database.as_deref().filter(|db| *db != dbname) {
            return unusable(format!(
                "it decodes database {db:?}, not {dbname:?}; connect to {db:?} or use a slot of \
                 {dbname:?}"
            ));
        }
        if let Some(why) = self.lost_because() {
            return unusable(format!(
                "PostgreSQL invalidated it: {why}. Events committed since its last \
                 acknowledged position may be gone from the WAL; walstream never drops or \
                 recreates a slot by itself: drop it, create it again, and re-publish what was \
                 missed from the table"
            ));
        }
        if self.synced_on_standby {
            return unusable(
                "this server is a standby and the slot is its synced copy of the primary's \
                 failover slot, which is never consumed on a standby; connect to the primary \
                 (list every host with target_session_attrs=primary)"
                    .into(),
            );
        }
        if let Some(pid) = self.active_pid {
            return Err(Error::SlotActive {
                slot: self.name.clone(),
                pid,
            });
        }
        Ok(())
    }
}

impl SlotState {
    /// Why the slot can no longer stream, if it cannot.
    fn lost_because(&self) -> Option<String> {
        let reason = self.invalidation_reason.as_deref().or(
            // PostgreSQL 16 and earlier show only the WAL status.
            (self.wal_status.as_deref() == Some("lost")).then_some("wal_removed"),
        )?;
        Some(invalidation_cause(reason))
    }
}

/// What an `invalidation_reason` of pg_replication_slots means, in words
/// an operator can act on (`conflict` stands for PostgreSQL 16's
/// `conflicting`).
pub fn invalidation_cause(reason: &str) -> String {
    match reason {
        "wal_removed" => "the WAL it needed was removed (the slot fell further behind than \
                          max_slot_wal_keep_size allows)"
            .into(),
        "rows_removed" => "a recovery conflict: rows it needed were removed \
                           (hot_standby_feedback off, or a standby's slot)"
            .into(),
        // PostgreSQL 16's `conflicting` does not say which.
        "conflict" => "a recovery conflict (rows it needed were removed) or wal_level lowered \
                       below logical"
            .into(),
        "wal_level_insufficient" => "wal_level was lowered below logical".into(),
        "idle_timeout" => {
            "it was idle longer than idle_replication_slot_timeout (PostgreSQL 18)".into()
        }
        other => format!("invalidation reason {other}"),
    }
}

fn parse_lsn(during: &'static str, text: Option<String>) -> Result<Option<Lsn>, Error> {
    text.map(|t| {
        t.parse::<Lsn>()
            .map_err(|e| Error::protocol(during, e.to_string()))
    })
    .transpose()
}

/// The slot's row in `pg_replication_slots`, `None` if there is no such
/// slot.
pub(crate) async fn slot_state(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotState>, Error> {
    const DURING: &str = "reading pg_replication_slots";
    let row = client
        .query_opt(
            "SELECT slot_name::text, plugin::text, slot_type, database::text, active_pid, \
                    confirmed_flush_lsn::text, restart_lsn::text, wal_status, \
                    coalesce(to_jsonb(s) ->> 'invalidation_reason', \
                             CASE WHEN (to_jsonb(s) ->> 'conflicting')::bool \
                                  THEN 'conflict' END), \
                    pg_is_in_recovery() AND coalesce((to_jsonb(s) ->> 'synced')::bool, false), \
                    (to_jsonb(s) ->> 'failover')::bool \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::control(DURING, e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let get = |i: usize| -> Result<Option<String>, Error> {
        row.try_get::<_, Option<String>>(i)
            .map_err(|e| Error::control(DURING, e))
    };
    Ok(Some(SlotState {
        name: get(0)?.unwrap_or_default(),
        plugin: get(1)?,
        slot_type: get(2)?.unwrap_or_default(),
        database: get(3)?,
        active_pid: row
            .try_get::<_, Option<i32>>(4)
            .map_err(|e| Error::control(DURING, e))?,
        confirmed_flush_lsn: parse_lsn(DURING, get(5)?)?,
        restart_lsn: parse_lsn(DURING, get(6)?)?,
        wal_status: get(7)?,
        invalidation_reason: get(8)?,
        synced_on_standby: row
            .try_get::<_, Option<bool>>(9)
            .map_err(|e| Error::control(DURING, e))?
            .unwrap_or(false),
        failover: row
            .try_get::<_, Option<bool>>(10)
            .map_err(|e| Error::control(DURING, e))?,
    }))
}

/// The server's `wal_sender_timeout` (`None` when 0, i.e. disabled).
pub(crate) async fn wal_sender_timeout(
    client: &tokio_postgres::Client,
) -> Result<Option<Duration>, Error> {
    const DURING: &str = "reading wal_sender_timeout";
    let row = client
        .query_one(
            "SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await
        .map_err(|e| Error::control(DURING, e))?;
    let ms: String = row.try_get(0).map_err(|e| Error::control(DURING, e))?;
    let ms: u64 = ms.trim().parse().map_err(|_| {
        Error::protocol(
            DURING,
            format!("wal_sender_timeout is {ms:?}, not milliseconds"),
        )
    })?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// The server's `wal_level`.
pub(crate) async fn wal_level(client: &tokio_postgres::Client) -> Result<String, Error> {
    const DURING: &str = "reading wal_level";
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| Error::control(DURING, e))?;
    row.try_get(0).map_err(|e| Error::control(DURING, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SlotState {
        SlotState {
            name: "outbox".into(),
            plugin: Some("pgoutput".into()),
            slot_type: "logical".into(),
            database: Some("shop".into()),
            active_pid: None,
            confirmed_flush_lsn: Some(Lsn::from_u64(0x100)),
            restart_lsn: Some(Lsn::from_u64(0x80)),
            wal_status: Some("reserved".into()),
            invalidation_reason: None,
            synced_on_standby: false,
            failover: Some(true),
        }
    }

    #[test]
    fn only_an_idle_pgoutput_slot_of_this_database_is_usable() {
        assert!(slot().check_usable("shop").is_ok());
        let refused = |s: SlotState| s.check_usable("shop").unwrap_err();
        let e = refused(SlotState {
            plugin: Some("test_decoding".into()),
            ..slot()
        });
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("plugin is \"test_decoding\""), "{e}");
        let e = refused(SlotState {
            active_pid: Some(77),
            ..slot()
        });
        assert!(e.is_retryable());
        assert!(e.to_string().contains("is active for PID 77"), "{e}");
        let e = refused(SlotState {
            database: Some("other".into()),
            ..slot()
        });
        assert!(e.to_string().contains("decodes database \"other\""), "{e}");
        let e = refused(SlotState {
            wal_status: Some("lost".into()),
            ..slot()
        });
        assert!(e.to_string().contains("invalidated"), "{e}");
        assert!(e.to_string().contains("max_slot_wal_keep_size"), "{e}");
        assert!(!e.is_retryable());
        for (reason, says) in [
            ("idle_timeout", "idle_replication_slot_timeout"),
            ("rows_removed", "recovery conflict"),
            ("conflict", "recovery conflict"),
            ("wal_level_insufficient", "wal_level"),
        ] {
            let e = refused(SlotState {
                invalidation_reason: Some(reason.into()),
                ..slot()
            });
            assert!(e.to_string().contains(says), "{reason}: {e}");
            assert!(e.to_string().contains("never drops or recreates"), "{e}");
            assert!(!e.is_retryable());
        }
        let e = refused(SlotState {
            synced_on_standby: true,
            ..slot()
        });
        assert!(e.to_string().contains("synced copy"), "{e}");
        assert!(!e.is_retryable());
        let e = refused(SlotState {
            slot_type: "physical".into(),
            plugin: None,
            ..slot()
        });
        assert!(e.to_string().contains("physical slot"), "{e}");
    }
}
