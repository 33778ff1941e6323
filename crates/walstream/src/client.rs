//! [`ReplicationClient`]: one authenticated replication connection and the
//! replication commands (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT,
//! DROP_REPLICATION_SLOT, START_REPLICATION), plus the slot checks that need
//! the control connection.
//!
//! START_REPLICATION turns the client into a [`ReplicationStream`] and an
//! [`AckHandle`], and spawns the feedback task.

use std::sync::Arc;
use std::time::Duration;

use pgoutput::Lsn;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::auth::AuthMethod;
use crate::config::ReplicationConfig;
use crate::connect;
use crate::control::{self, SlotState};
use crate::error::{DbError, Error};
use crate::feedback::{self, AckHandle, FeedbackState, Shared};
use crate::stream::{ReplicationStream, StreamSettings};
use crate::wire::{Backend, Wire};

/// What IDENTIFY_SYSTEM returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    system_id: String,
    timeline: u32,
    xlogpos: Lsn,
    dbname: Option<String>,
}

impl SystemIdentity {
    /// The cluster's unique system identifier.
    pub fn system_id(&self) -> &str {
        &self.system_id
    }

    /// The current timeline.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// The current WAL flush position.
    pub fn xlogpos(&self) -> Lsn {
        self.xlogpos
    }

    /// The database connected to.
    pub fn dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }
}

/// One line of a timeline history file: timeline `timeline` ended (a
/// standby was promoted) at `switchpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The timeline that ended.
    pub timeline: u32,
    /// Where it ended: WAL after this on that timeline is not in the
    /// history of later timelines.
    pub switchpoint: Lsn,
}

/// Where `old` ended in `history` (a later timeline's history), if it is
/// one of its ancestors.
pub fn switchpoint_of(history: &[TimelineSwitch], old: u32) -> Option<Lsn> {
    history
        .iter()
        .find(|s| s.timeline == old)
        .map(|s| s.switchpoint)
}

/// Parses a timeline history file (`<timeline>\t<switchpoint>\t<reason>`
/// per line; blank and `#` lines skipped).
pub fn parse_timeline_history(text: &str) -> Result<Vec<TimelineSwitch>, Error> {
    const DURING: &str = "reading a timeline history";
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let timeline = fields
                .next()
                .and_then(|t| t.parse::<u32>().ok())
                .ok_or_else(|| Error::protocol(DURING, format!("line {line:?}")))?;
            let switchpoint = fields
                .next()
                .and_then(|l| l.parse::<Lsn>().ok())
                .ok_or_else(|| Error::protocol(DURING, format!("line {line:?}")))?;
            Ok(TimelineSwitch {
                timeline,
                switchpoint,
            })
        })
        .collect()
}

/// What to do with the snapshot a new slot exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotAction {
    /// Export it: other sessions can `SET TRANSACTION SNAPSHOT` to its name
    /// (see [`CreatedSlot::snapshot_name`]) until this connection runs its
    /// next command, and read the data exactly as of the slot's start.
    Export,
    /// Use it in the current transaction of this connection (begin one with
    /// `BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ` through
    /// [`ReplicationClient::simple_query`] first).
    Use,
    /// No snapshot.
    #[default]
    Nothing,
}

/// Options of CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone, Default)]
pub struct CreateSlotOptions {
    temporary: bool,
    snapshot: SnapshotAction,
    failover: bool,
}

impl CreateSlotOptions {
    /// A permanent slot without a snapshot.
    pub fn new() -> CreateSlotOptions {
        CreateSlotOptions::default()
    }

    /// A slot dropped when this connection ends (tests, one-off tools).
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// What to do with the slot's initial snapshot.
    pub fn snapshot(mut self, action: SnapshotAction) -> Self {
        self.snapshot = action;
        self
    }

    /// A failover slot (PostgreSQL 17+): standbys running with
    /// sync_replication_slots keep a copy that a promoted standby streams
    /// from. Refused by older servers.
    pub fn failover(mut self, failover: bool) -> Self {
        self.failover = failover;
        self
    }
}

/// What CREATE_REPLICATION_SLOT returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    name: String,
    consistent_point: Lsn,
    snapshot_name: Option<String>,
    output_plugin: Option<String>,
}

impl CreatedSlot {
    /// The slot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first position the slot can stream: transactions committed after
    /// it are sent, earlier ones are in the snapshot.
    pub fn consistent_point(&self) -> Lsn {
        self.consistent_point
    }

    /// The exported snapshot's name ([`SnapshotAction::Export`]).
    pub fn snapshot_name(&self) -> Option<&str> {
        self.snapshot_name.as_deref()
    }

    /// The output plugin (`pgoutput`).
    pub fn output_plugin(&self) -> Option<&str> {
        self.output_plugin.as_deref()
    }
}

/// Options of START_REPLICATION and of the stream it starts.
#[derive(Debug, Clone)]
pub struct StartOptions {
    publications: Vec<String>,
    proto_version: u32,
    messages: bool,
    binary: bool,
    origin: Option<String>,
    status_interval: Option<Duration>,
    ack_coalesce: Duration,
    receive_timeout: Duration,
    check_slot: bool,
}

impl StartOptions {
    /// Stream the changes of these publications, pgoutput protocol version
    /// 1, with logical decoding messages, text column values, any origin.
    /// Streaming of in-progress transactions is never requested: only
    /// committed transactions arrive.
    pub fn new<I, S>(publications: I) -> StartOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StartOptions {
            publications: publications.into_iter().map(Into::into).collect(),
            proto_version: 1,
            messages: true,
            binary: false,
            origin: None,
            status_interval: None,
            ack_coalesce: Duration::from_millis(100),
            receive_timeout: Duration::from_secs(30),
            check_slot: true,
        }
    }

    /// pgoutput's `proto_version` (1 to 4; walstream never asks for
    /// streaming, so 1 is enough).
    pub fn proto_version(mut self, version: u32) -> Self {
        self.proto_version = version;
        self
    }

    /// Whether `pg_logical_emit_message` messages are sent (default true).
    pub fn messages(mut self, on: bool) -> Self {
        self.messages = on;
        self
    }

    /// Column values in binary instead of text (default false).
    pub fn binary(mut self, on: bool) -> Self {
        self.binary = on;
        self
    }

    /// pgoutput's `origin` filter: `any` or `none` (PostgreSQL 16+).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Overrides the feedback timer, which is otherwise
    /// min(1 s, wal_sender_timeout / 2).
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = Some(interval);
        self
    }

    /// The shortest time between two status updates caused by acks
    /// (default 100 ms).
    pub fn ack_coalesce(mut self, every: Duration) -> Self {
        self.ack_coalesce = every;
        self
    }

    /// How long the stream may receive nothing at all before it gives up
    /// with [`Error::ReceiveTimeout`] (default 30 s). The feedback timer asks
    /// the server for a keepalive every second, so silence means a dead link.
    pub fn receive_timeout(mut self, timeout: Duration) -> Self {
        self.receive_timeout = timeout;
        self
    }

    /// Whether to check the slot in pg_replication_slots first (default
    /// true): it must exist, be logical with pgoutput, belong to this
    /// database and not be in use. Its confirmed_flush_lsn becomes the floor
    /// of the flush positions sent.
    pub fn check_slot(mut self, on: bool) -> Self {
        self.check_slot = on;
        self
    }

    fn command(&self, slot: &str, start: Lsn) -> String {
        let publications = self
            .publications
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut options = vec![
            format!("proto_version '{}'", self.proto_version),
            format!("publication_names {}", quote_literal(&publications)),
        ];
        if self.messages {
            options.push("messages 'true'".into());
        }
        if self.binary {
            options.push("binary 'true'".into());
        }
        if let Some(origin) = &self.origin {
            options.push(format!("origin {}", quote_literal(origin)));
        }
        format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            quote_ident(slot),
            options.join(", ")
        )
    }
}

/// `"name"` with embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Slot names PostgreSQL accepts: 1-63 of `[a-z0-9_]`.
fn check_slot_name(slot: &str) -> Result<(), Error> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{slot:?} is not a valid replication slot name: use 1 to 63 lowercase letters, \
             digits and underscores"
        )))
    }
}

/// An authenticated replication connection (`replication=database`).
#[derive(Debug)]
pub struct ReplicationClient {
    config: ReplicationConfig,
    wire: Wire,
    auth: AuthMethod,
    control: Option<tokio_postgres::Client>,
}

impl ReplicationClient {
    /// Connects and authenticates (within the settings' connect_timeout).
    pub async fn connect(config: &ReplicationConfig) -> Result<ReplicationClient, Error> {
        let (established, config) =
            crate::hosts::open_suitable::<connect::Established>(config).await?;
        let config = &config;
        tracing::debug!(
            target_db = %config,
            pid = established.wire.backend_pid,
            auth = ?established.auth,
            tls = established.wire.socket.is_tls(),
            "replication connection established"
        );
        Ok(ReplicationClient {
            config: config.clone(),
            wire: established.wire,
            auth: established.auth,
            control: None,
        })
    }

    /// How the server authenticated this connection.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth
    }

    /// Whether the connection is encrypted with TLS.
    pub fn is_tls(&self) -> bool {
        self.wire.socket.is_tls()
    }

    /// The PID of the walsender serving this connection.
    pub fn backend_pid(&self) -> i32 {
        self.wire.backend_pid
    }

    /// The server's version string (`server_version`), e.g. "15.8".
    pub fn server_version(&self) -> Option<&str> {
        self.wire.params.get("server_version").map(String::as_str)
    }

    /// The major version, e.g. 15.
    pub fn server_major(&self) -> u32 {
        self.server_version()
            .and_then(|v| {
                let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .unwrap_or(0)
    }

    /// IDENTIFY_SYSTEM: system id, timeline, current WAL position, database.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        const DURING: &str = "running IDENTIFY_SYSTEM";
        let r = self.wire.simple_query("IDENTIFY_SYSTEM", DURING).await?;
        let text = |c: &str| -> Result<String, Error> {
            r.value(c)?
                .map(str::to_string)
                .ok_or_else(|| Error::protocol(DURING, format!("{c} is NULL")))
        };
        let timeline = text("timeline")?;
        let xlogpos = text("xlogpos")?;
        Ok(SystemIdentity {
            system_id: text("systemid")?,
            timeline: timeline
                .parse()
                .map_err(|_| Error::protocol(DURING, format!("timeline {timeline:?}")))?,
            xlogpos: xlogpos
                .parse()
                .map_err(|e: pgoutput::ParseLsnError| Error::protocol(DURING, e.to_string()))?,
            dbname: r.value("dbname")?.map(str::to_string),
        })
    }

    /// TIMELINE_HISTORY `timeline`: where each of its ancestors ended (empty
    /// for timeline 1, which has none).
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<Vec<TimelineSwitch>, Error> {
        if timeline <= 1 {
            return Ok(Vec::new());
        }
        let r = self
            .wire
            .simple_query(
                &format!("TIMELINE_HISTORY {timeline}"),
                "reading a timeline history",
            )
            .await?;
        parse_timeline_history(r.value("content")?.unwrap_or(""))
    }

    /// CREATE_REPLICATION_SLOT `slot` LOGICAL pgoutput.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        options: &CreateSlotOptions,
    ) -> Result<CreatedSlot, Error> {
        const DURING: &str = "creating a replication slot";
        check_slot_name(slot)?;
        let temporary = if options.temporary { " TEMPORARY" } else { "" };
        if options.failover && self.server_major() < 17 {
            return Err(Error::Config(format!(
                "failover slots need PostgreSQL 17 or later; this server is {}",
                self.server_version().unwrap_or("older")
            )));
        }
        let failover = if options.failover {
            ", FAILOVER true"
        } else {
            ""
        };
        let snapshot = if self.server_major() >= 15 {
            match options.snapshot {
                SnapshotAction::Export => format!(" (SNAPSHOT 'export'{failover})"),
                SnapshotAction::Use => format!(" (SNAPSHOT 'use'{failover})"),
                SnapshotAction::Nothing => format!(" (SNAPSHOT 'nothing'{failover})"),
            }
        } else {
            match options.snapshot {
                SnapshotAction::Export => " EXPORT_SNAPSHOT",
                SnapshotAction::Use => " USE_SNAPSHOT",
                SnapshotAction::Nothing => " NOEXPORT_SNAPSHOT",
            }
            .to_string()
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput{snapshot}",
            quote_ident(slot)
        );
        let r = match self.wire.simple_query(&sql, DURING).await {
            Ok(r) => r,
            Err(e) => return Err(self.explain(slot, e).await),
        };
        let consistent = r
            .value("consistent_point")?
            .ok_or_else(|| Error::protocol(DURING, "consistent_point is NULL"))?;
        tracing::info!(
            slot,
            consistent_point = consistent,
            "created replication slot"
        );
        Ok(CreatedSlot {
            name: r.value("slot_name")?.unwrap_or(slot).to_string(),
            consistent_point: consistent
                .parse()
                .map_err(|e: pgoutput::ParseLsnError| Error::protocol(DURING, e.to_string()))?,
            snapshot_name: r.value("snapshot_name")?.map(str::to_string),
            output_plugin: r.value("output_plugin")?.map(str::to_string),
        })
    }

    /// ALTER_REPLICATION_SLOT `slot` (FAILOVER `failover`), PostgreSQL 17+:
    /// turns a slot into a failover slot (or back). The server acquires the
    /// slot for the moment, so it fails while another process streams from
    /// it ([`Error::SlotActive`]).
    pub async fn set_slot_failover(&mut self, slot: &str, failover: bool) -> Result<(), Error> {
        check_slot_name(slot)?;
        if self.server_major() < 17 {
            return Err(Error::Config(format!(
                "failover slots need PostgreSQL 17 or later; this server is {}",
                self.server_version().unwrap_or("older")
            )));
        }
        let sql = format!(
            "ALTER_REPLICATION_SLOT {} (FAILOVER {failover})",
            quote_ident(slot)
        );
        match self
            .wire
            .simple_query(&sql, "altering a replication slot")
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.explain(slot, e).await),
        }
    }

    /// DROP_REPLICATION_SLOT; with `wait`, waits for a walsender using it to
    /// let go instead of failing.
    pub async fn drop_slot(&mut self, slot: &str, wait: bool) -> Result<(), Error> {
        check_slot_name(slot)?;
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(slot),
            if wait { " WAIT" } else { "" }
        );
        match self
            .wire
            .simple_query(&sql, "dropping a replication slot")
            .await
        {
            Ok(_) => {
                tracing::info!(slot, "dropped replication slot");
                Ok(())
            }
            Err(e) => Err(self.explain(slot, e).await),
        }
    }

    /// The slot's state in pg_replication_slots (over the control
    /// connection), `None` if it does not exist.
    pub async fn slot_state(&mut self, slot: &str) -> Result<Option<SlotState>, Error> {
        let client = self.control().await?;
        control::slot_state(client, slot).await
    }

    /// Runs SQL on the replication connection (simple query protocol) and
    /// returns the rows as text: for `BEGIN ... REPEATABLE READ` around a
    /// slot created with [`SnapshotAction::Use`], and reading in it.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        Ok(self.wire.simple_query(sql, "running a query").await?.rows)
    }

    /// Closes the connection (Terminate).
    pub async fn close(self) {
        self.wire.terminate().await;
    }

    /// The control connection, opened on first use.
    async fn control(&mut self) -> Result<&tokio_postgres::Client, Error> {
        if self.control.as_ref().is_none_or(|c| c.is_closed()) {
            self.control = Some(control::connect_control(&self.config).await?);
        }
        self.control
            .as_ref()
            .ok_or_else(|| Error::Config("the control connection is not open".into()))
    }

    /// Replaces a server error about `slot` by the typed error that says
    /// what to do.
    async fn explain(&mut self, slot: &str, e: Error) -> Error {
        let Some(db) = e.db_error() else {
            return e;
        };
        match db.code() {
            "42704" => Error::SlotMissing {
                slot: slot.to_string(),
            },
            "55006" => Error::SlotActive {
                slot: slot.to_string(),
                pid: active_pid_in(db).unwrap_or(0),
            },
            "55000" if db.message().contains("wal_level") => {
                let current = match self.control().await {
                    Ok(client) => control::wal_level(client)
                        .await
                        .unwrap_or_else(|_| "not logical".into()),
                    Err(_) => "not logical".into(),
                };
                Error::WalLevel { current }
            }
            _ => e,
        }
    }

    /// START_REPLICATION SLOT `slot` LOGICAL `start`: the stream of frames
    /// and the handle to ack with.
    ///
    /// Start at [`Lsn::ZERO`] (or the slot's confirmed_flush_lsn, the same)
    /// to resume after the last acked position: the server sends every
    /// transaction whose commit ends after it, and nothing before.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: StartOptions,
    ) -> Result<(ReplicationStream, AckHandle), Error> {
        const DURING: &str = "starting replication";
        check_slot_name(slot)?;
        if options.publications.is_empty() {
            return Err(Error::Config(
                "no publication given: pgoutput streams the tables of at least one publication \
                 (CREATE PUBLICATION name FOR TABLE ...)"
                    .into(),
            ));
        }
        let dbname = self.config.dbname().to_string();
        let client = self.control().await?;
        let wal_sender_timeout = control::wal_sender_timeout(client).await?;
        let mut floor = start;
        if options.check_slot {
            let state =
                control::slot_state(client, slot)
                    .await?
                    .ok_or_else(|| Error::SlotMissing {
                        slot: slot.to_string(),
                    })?;
            state.check_usable(&dbname)?;
            floor = floor.max(state.confirmed_flush_lsn().unwrap_or(Lsn::ZERO));
        }
        // The control connection's work is done.
        self.control = None;

        let status_interval = options.status_interval.unwrap_or_else(|| {
            let half = wal_sender_timeout.map_or(Duration::from_secs(1), |t| t / 2);
            half.min(Duration::from_secs(1))
                .max(Duration::from_millis(50))
        });
        let command = options.command(slot, start);
        frontend::query(&command, &mut self.wire.wbuf)
            .map_err(|e| Error::Config(format!("cannot send START_REPLICATION: {e}")))?;
        self.wire.flush(DURING).await?;
        match self.wire.recv(DURING).await? {
            Backend::CopyBothResponse => {}
            Backend::Message(Message::ErrorResponse(body)) => {
                let db = DbError::from_response(&body, DURING)?;
                let e = Error::server(format!("START_REPLICATION of slot {slot:?}"), db);
                return Err(self.explain(slot, e).await);
            }
            _ => return Err(Error::protocol(DURING, "expected CopyBothResponse")),
        }
        tracing::info!(
            slot,
            start = %start,
            floor = %floor,
            status_interval_ms = u64::try_from(status_interval.as_millis()).unwrap_or(u64::MAX),
            pid = self.wire.backend_pid,
            "replication started"
        );

        let shared = Arc::new(Shared::new(slot, floor));
        let Wire { socket, rbuf, .. } = self.wire;
        let (reader, writer) = tokio::io::split(socket);
        let (stop_tx, stop_rx) = oneshot::channel();
        let span = tracing::info_span!("walstream_feedback", slot, pid = self.wire.backend_pid);
        let task = tokio::spawn(
            feedback::run(
                writer,
                shared.clone(),
                FeedbackState::new(status_interval, options.ack_coalesce),
                stop_rx,
            )
            .instrument(span),
        );
        let stream = ReplicationStream::new(
            reader,
            rbuf,
            shared.clone(),
            task,
            stop_tx,
            StreamSettings {
                receive_timeout: options.receive_timeout,
            },
            slot,
        );
        Ok((stream, AckHandle::new(shared)))
    }
}

/// The PID in "replication slot \"x\" is active for PID 123".
fn active_pid_in(db: &DbError) -> Option<i32> {
    let tail = db.message().rsplit("PID ").next()?;
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_history_says_where_each_ancestor_ended() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    2\t0/5A00000\tbefore 2026-11-30 08:00:00+00\n";
        let history = parse_timeline_history(text).unwrap();
        assert_eq!(
            switchpoint_of(&history, 1),
            Some("0/3000158".parse().unwrap())
        );
        assert_eq!(
            switchpoint_of(&history, 2),
            Some("0/5A00000".parse().unwrap())
        );
        assert_eq!(switchpoint_of(&history, 3), None);
        assert!(parse_timeline_history("x\t0/1").is_err());
        assert!(parse_timeline_history("").unwrap().is_empty());
    }

    #[test]
    fn start_replication_command_quotes_names_and_never_streams() {
        let cmd = StartOptions::new(["outbox", "we\"ird's"])
            .binary(true)
            .origin("none")
            .command("slot_1", Lsn::from_u64(0x16_B374_D848));
        assert_eq!(
            cmd,
            "START_REPLICATION SLOT \"slot_1\" LOGICAL 16/B374D848 (proto_version '1', \
             publication_names '\"outbox\",\"we\"\"ird''s\"', messages 'true', binary 'true', \
             origin 'none')"
        );
        assert!(!cmd.contains("streaming"));
    }

    #[test]
    fn slot_names_are_checked_before_reaching_the_server() {
        assert!(check_slot_name("outbox_relay_1").is_ok());
        for bad in ["", "Outbox", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
    }
}
