//! The one judge of the prerequisites: what `check` prints, what `setup`
//! acts on and what `run` refuses to start without.
//!
//! Pure code. The facts are read once (PostgreSQL's catalog by
//! `catalog::gather`, the broker by `check::probe_broker`) and judged here,
//! so that every command says the same thing in the same words with the
//! same fix: `run` refuses to start on what `check` fails, and `check`
//! fails on nothing that `run` handles (a missing publication or slot it
//! creates, a slot another process holds while `run` would wait as a
//! standby, a column it can do without). A [`Verdict::Warn`] is a pass
//! with something the operator should know.

use std::fmt::Write as _;

use crate::catalog::{PgFacts, ServerSettings, SlotInfo};
use crate::config::{env_name, Config};
use crate::mapping::TableMapping;
use crate::names::{quote_ident, TableName};
use crate::probe::BrokerFacts;
use amqp_sink::Found;

/// How one prerequisite stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fine; what was found.
    Pass(String),
    /// Fine for now, with something to know or do.
    Warn {
        /// What was found.
        found: String,
        /// What to do about it.
        advice: String,
    },
    /// Not fine: what is wrong and how to fix it.
    Fail {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// Not judged because an earlier line failed.
    Skipped(String),
}

/// One prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What was judged (`wal_level`, `exchange`, ...).
    pub name: &'static str,
    /// How it stands.
    pub verdict: Verdict,
}

impl Line {
    /// A pass.
    pub fn pass(name: &'static str, found: impl Into<String>) -> Line {
        Line {
            name,
            verdict: Verdict::Pass(found.into()),
        }
    }

    /// A pass with advice.
    pub fn warn(name: &'static str, found: impl Into<String>, advice: impl Into<String>) -> Line {
        Line {
            name,
            verdict: Verdict::Warn {
                found: found.into(),
                advice: advice.into(),
            },
        }
    }

    /// A failure with its fix.
    pub fn fail(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            name,
            verdict: Verdict::Fail {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }

    /// Not judged.
    pub fn skipped(name: &'static str, why: impl Into<String>) -> Line {
        Line {
            name,
            verdict: Verdict::Skipped(why.into()),
        }
    }

    /// Whether this line failed.
    pub fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Fail { .. })
    }
}

/// Prints lines one per prerequisite: `ok`, `warn` (with the advice),
/// `FAIL` (with the fix) or `skip`, then a summary.
pub fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        let _ = match &line.verdict {
            Verdict::Pass(what) => writeln!(out, "ok    {:<13} {what}", line.name),
            Verdict::Warn { found, advice } => {
                writeln!(out, "warn  {:<13} {found}; {advice}", line.name)
            }
            Verdict::Fail { problem, fix } => {
                writeln!(out, "FAIL  {:<13} {problem}; fix: {fix}", line.name)
            }
            Verdict::Skipped(why) => writeln!(out, "skip  {:<13} {why}", line.name),
        };
    }
    let failed = lines.iter().filter(|l| l.failed()).count();
    let _ = if failed == 0 {
        writeln!(out, "all {} checks passed", lines.len())
    } else {
        writeln!(out, "{failed} of {} checks failed", lines.len())
    };
    out
}

/// The failed lines, rendered, for an error that stops `run`.
pub fn failures(lines: &[Line]) -> Option<String> {
    let failed: Vec<Line> = lines.iter().filter(|l| l.failed()).cloned().collect();
    if failed.is_empty() {
        return None;
    }
    let mut text = String::from("prerequisites not met (`outbox-relay check` shows them all):\n");
    for line in &failed {
        if let Verdict::Fail { problem, fix } = &line.verdict {
            let _ = writeln!(text, "  FAIL  {:<13} {problem}; fix: {fix}", line.name);
        }
    }
    text.pop();
    Some(text)
}

/// The names of PostgreSQL's lines, in order (skipped together when
/// PostgreSQL cannot be reached).
pub const POSTGRES_LINES: &[&str] = &[
    "server",
    "wal_level",
    "slots",
    "wal_senders",
    "role",
    "table",
    "columns",
    "publication",
    "slot",
    "failover",
    "wal_retention",
    "emit_message",
];

/// Judges the PostgreSQL link's protection: a pass for verify-full (the
/// server's certificate and name checked) or a Unix socket, else a warning
/// that says what an attacker on the path could do and how to close it.
pub fn judge_tls(config: &Config) -> Line {
    let Some(pg) = config.pg.as_ref() else {
        return Line::skipped("tls", "pg_url is not set");
    };
    if pg.is_verify_full() {
        return Line::pass("tls", "sslmode=verify-full: the server is authenticated");
    }
    if matches!(pg.host(), walstream::Host::Unix(_)) {
        return Line::pass("tls", "a Unix socket: the link does not leave the machine");
    }
    Line::warn(
        "tls",
        format!(
            "sslmode={} to {}: the replication link is not verify-full",
            pg.sslmode(),
            pg.host()
        ),
        "anyone on the network path could read or change the change stream; use \
         sslmode=verify-full with sslrootcert (and require_auth=scram-sha-256)",
    )
}

/// The application_name the relay's own sessions carry.
pub fn application_name(config: &Config) -> &str {
    config
        .pg
        .as_ref()
        .and_then(|pg| pg.application_name())
        .unwrap_or("outbox-relay")
}

/// Judges PostgreSQL's prerequisites.
pub fn judge_postgres(config: &Config, facts: &PgFacts) -> Vec<Line> {
    let mut lines = Vec::new();
    let server = &facts.server;
    lines.push(judge_server(server));
    lines.push(if server.wal_level == "logical" {
        Line::pass("wal_level", "logical")
    } else {
        Line::fail(
            "wal_level",
            format!("wal_level is '{}'", server.wal_level),
            "set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) \
             and restart PostgreSQL",
        )
    });
    lines.push(
        if facts.slot.is_some() || server.used_slots < server.max_replication_slots {
            Line::pass(
                "slots",
                format!(
                    "{} of max_replication_slots = {} in use",
                    server.used_slots, server.max_replication_slots
                ),
            )
        } else {
            Line::fail(
                "slots",
                format!(
                    "all {} replication slots are in use",
                    server.max_replication_slots
                ),
                "raise max_replication_slots (restart needed) or drop an unused slot \
                 (SELECT pg_drop_replication_slot(name))",
            )
        },
    );
    let slot_active = facts.slot.as_ref().is_some_and(|s| s.active);
    lines.push(
        if server.used_wal_senders < server.max_wal_senders || slot_active {
            Line::pass(
                "wal_senders",
                format!(
                    "{} of max_wal_senders = {} in use",
                    server.used_wal_senders, server.max_wal_senders
                ),
            )
        } else {
            Line::fail(
                "wal_senders",
                format!("all {} walsenders are in use", server.max_wal_senders),
                "raise max_wal_senders in postgresql.conf and restart PostgreSQL",
            )
        },
    );
    let role = &facts.role;
    lines.push(if role.superuser {
        Line::pass("role", format!("{} is a superuser", role.name))
    } else if role.replication {
        Line::pass("role", format!("{} has REPLICATION", role.name))
    } else {
        Line::fail(
            "role",
            format!("role {} lacks the REPLICATION attribute", role.name),
            format!(
                "ALTER ROLE {} WITH REPLICATION (as a superuser), or use the role that \
                 `outbox-relay setup --print-sql` creates",
                quote_ident(&role.name)
            ),
        )
    });
    let many = config.mapping.tables.len() > 1;
    for (mapping, info) in config.mapping.tables.iter().zip(&facts.tables) {
        let table = &mapping.table;
        match info {
            Some(info) if info.can_select => {
                lines.push(Line::pass(
                    "table",
                    format!("{table} exists and is readable"),
                ));
                lines.push(judge_columns(mapping, info, many));
            }
            Some(info) => {
                lines.push(Line::fail(
                    "table",
                    format!("the role may not SELECT from {table} (logical replication needs it)"),
                    format!(
                        "GRANT SELECT ON {} TO {}",
                        table.quoted(),
                        quote_ident(&role.name)
                    ),
                ));
                lines.push(judge_columns(mapping, info, many));
            }
            None => {
                lines.push(Line::fail(
                    "table",
                    format!("table {table} does not exist"),
                    if many {
                        "create it (sql/outbox.sql), or fix the name of its [[table]] entry"
                            .to_string()
                    } else {
                        format!(
                            "create it (sql/outbox.sql), or set table ({}) to your outbox table",
                            env_name("table")
                        )
                    },
                ));
                lines.push(Line::skipped(
                    "columns",
                    format!("table {table} does not exist"),
                ));
            }
        }
    }
    lines.push(judge_publication(config, facts));
    lines.push(match &facts.slot {
        None => Line::pass(
            "slot",
            format!(
                "{} does not exist yet: `outbox-relay setup` or `run` creates it (`run` \
                 refuses on a promoted server where the publication exists: the slot may have \
                 been lost in a failover)",
                config.slot
            ),
        ),
        Some(s) => judge_slot(config, &facts.database, s),
    });
    lines.push(judge_failover(config, server, facts.slot.as_ref()));
    lines.push(judge_wal_retention(server));
    lines.push(judge_emit_message(config, facts.emit_message_public));
    lines
}

/// Judges one table's columns against its mapping; with several tables,
/// each line starts with the table's name.
fn judge_columns(m: &TableMapping, info: &crate::catalog::TableInfo, many: bool) -> Line {
    let mut line = judge_table_columns(m, info);
    if many {
        let table = &m.table;
        line.verdict = match line.verdict {
            Verdict::Pass(found) => Verdict::Pass(format!("{table}: {found}")),
            Verdict::Warn { found, advice } => Verdict::Warn {
                found: format!("{table}: {found}"),
                advice,
            },
            Verdict::Fail { problem, fix } => Verdict::Fail {
                problem: format!("{table}: {problem}"),
                fix,
            },
            other => other,
        };
    }
    line
}

fn judge_table_columns(m: &TableMapping, info: &crate::catalog::TableInfo) -> Line {
    let mut required: Vec<(&str, &str)> = vec![
        (m.id_column.as_str(), "id_column"),
        (m.payload_column.as_str(), "payload_column"),
    ];
    for column in m.exchange.columns() {
        required.push((column, "exchange"));
    }
    for column in m.routing_key.columns() {
        required.push((column, "routing_key"));
    }
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for (column, setting) in required {
        if seen.contains(&column) {
            continue;
        }
        seen.push(column);
        if info.column(column).is_none() {
            missing.push(format!("no column {column} ({setting})"));
        }
    }
    let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
    if !missing.is_empty() {
        return Line::fail(
            "columns",
            format!(
                "{} (the table has: {})",
                missing.join("; "),
                names.join(", ")
            ),
            "set id_column, payload_column, exchange and routing_key to the table's columns \
             (`outbox-relay config` shows them)",
        );
    }
    let mut notes = Vec::new();
    for (column, setting, what) in [
        (&m.type_column, "type_column", "the message's type"),
        (
            &m.timestamp_column,
            "timestamp_column",
            "the message's timestamp",
        ),
    ] {
        if !column.is_empty() {
            if info.column(column).is_some() {
                if !seen.contains(&column.as_str()) {
                    seen.push(column);
                }
            } else {
                notes.push(format!(
                    "no column {column}: {what} stays empty (set {setting} to the right column, \
                     or to \"\")"
                ));
            }
        }
    }
    let pc = &m.property_columns;
    for (column, setting) in [
        (&pc.correlation_id, "correlation_id_column"),
        (&pc.reply_to, "reply_to_column"),
        (&pc.expiration, "expiration_column"),
        (&pc.priority, "priority_column"),
        (&pc.app_id, "app_id_column"),
        (&pc.content_encoding, "content_encoding_column"),
        (&pc.headers, "headers_column"),
    ] {
        if column.is_empty() {
            continue;
        }
        match info.column(column) {
            Some(c) => {
                if !seen.contains(&column.as_str()) {
                    seen.push(column);
                }
                if setting == "headers_column"
                    && !["jsonb", "json", "text"].contains(&c.type_name.as_str())
                {
                    notes.push(format!(
                        "headers column {column} is {}: it must hold a JSON object",
                        c.type_name
                    ));
                }
            }
            None => notes.push(format!(
                "no column {column} ({setting}): that property stays unset"
            )),
        }
    }
    if let Some(c) = info.column(&m.payload_column) {
        const TEXT_TYPES: &[&str] = &["jsonb", "json", "text", "bytea", "character varying"];
        if !TEXT_TYPES.contains(&c.type_name.as_str()) {
            notes.push(format!(
                "payload column {} is {}: its text form is the body",
                c.name, c.type_name
            ));
        }
    }
    if let Some(c) = info.column(&m.timestamp_column) {
        if !c.type_name.starts_with("timestamp") {
            notes.push(format!(
                "timestamp column {} is {}, not a timestamp: the message's timestamp stays empty",
                c.name, c.type_name
            ));
        }
    }
    // The headers, as the mapping picks them: the listed columns, or every
    // column but the id, the payload and the timestamp.
    let headers: Vec<&str> = if m.header_columns.is_empty() {
        names
            .iter()
            .copied()
            .filter(|n| *n != m.id_column && *n != m.payload_column && *n != m.timestamp_column)
            .filter(|n| !m.property_columns.contains(n))
            .collect()
    } else {
        let mut listed = Vec::new();
        for column in &m.header_columns {
            if info.column(column).is_some() {
                listed.push(column.as_str());
            } else {
                notes.push(format!(
                    "no column {column} (header_columns): its header stays absent"
                ));
            }
        }
        listed
    };
    for column in &headers {
        if !seen.contains(column) {
            seen.push(column);
        }
    }
    let found = format!(
        "{} used: {}; headers: {}",
        seen.len(),
        seen.join(", "),
        if headers.is_empty() {
            "none".to_string()
        } else {
            headers.join(", ")
        }
    );
    if notes.is_empty() {
        Line::pass("columns", found)
    } else {
        Line::warn("columns", found, notes.join("; "))
    }
}

fn judge_publication(config: &Config, facts: &PgFacts) -> Line {
    let tables: Vec<TableName> = config.mapping.table_names().cloned().collect();
    let listed = crate::names::list(&tables);
    let name = &config.publication;
    // Creating a publication FOR TABLE, or adding a table to one, takes
    // owning the tables (and, to add, the publication).
    let owns_all = facts.role.superuser
        || facts
            .tables
            .iter()
            .all(|t| t.as_ref().is_some_and(|t| t.owned));
    let missing = facts.tables_missing_from_publication(&tables);
    // Adding a table takes owning the publication and that table.
    let owns = |these: &[TableName]| {
        these.iter().all(|t| {
            tables
                .iter()
                .zip(&facts.tables)
                .any(|(name, info)| name == t && info.as_ref().is_some_and(|i| i.owned))
        })
    };
    match &facts.publication {
        Some(p) if !p.publishes_inserts => Line::fail(
            "publication",
            format!("publication {name} does not publish inserts"),
            format!(
                "ALTER PUBLICATION {} SET (publish = 'insert')",
                quote_ident(name)
            ),
        ),
        Some(_) if missing.is_empty() => Line::pass(
            "publication",
            format!("{name} publishes inserts of {listed}"),
        ),
        Some(p) if facts.role.superuser || (p.owned && owns(&missing)) => Line::warn(
            "publication",
            format!(
                "publication {name} does not cover {}",
                crate::names::list(&missing)
            ),
            "`outbox-relay setup` or `run` adds it (its rows are events from then on, not \
             before)",
        ),
        Some(_) => Line::fail(
            "publication",
            format!(
                "publication {name} exists but does not cover {}",
                crate::names::list(&missing)
            ),
            format!(
                "have the owner of the publication and the tables run: {}",
                crate::sql::add_to_publication(name, &missing)
            ),
        ),
        None if owns_all => Line::pass(
            "publication",
            format!("{name} does not exist yet: `outbox-relay setup` or `run` creates it"),
        ),
        None => Line::fail(
            "publication",
            format!(
                "{name} does not exist, and the role cannot create it (it does not own {listed})"
            ),
            format!(
                "have the {} owner run: {}",
                if tables.len() == 1 {
                    "table's"
                } else {
                    "tables'"
                },
                crate::sql::create_publication(name, &tables)
            ),
        ),
    }
}

/// The server: its version, and that it is a primary (the relay streams
/// from the primary; a standby's synced slot is never consumed).
fn judge_server(server: &ServerSettings) -> Line {
    let version = version_text(server.version_num);
    if server.in_recovery {
        Line::fail(
            "server",
            format!("PostgreSQL {version} is a standby (in recovery)"),
            "point pg_url at the primary; with several hosts listed \
             (postgres://a:5432,b:5432/db) the relay picks the primary itself",
        )
    } else {
        Line::pass("server", format!("PostgreSQL {version}, primary"))
    }
}

/// One server of a multi-host pg_url: the primary passes; a standby
/// passes when its copy of the slot would let a promoted standby resume
/// (PostgreSQL 17+: synced, not temporary, not invalidated), and warns
/// with the settings that make it so when not.
pub fn judge_server_view(config: &Config, view: &crate::servers::ServerView) -> Line {
    let target = &view.target;
    let seen = match &view.seen {
        Err(e) => {
            return Line::warn(
                "host",
                format!("{target}: unreachable ({e})"),
                "a server that cannot be reached cannot take over; check it is up",
            )
        }
        Ok(seen) => seen,
    };
    let version = version_text(seen.version_num);
    if !seen.in_recovery {
        return Line::pass("host", format!("{target}: PostgreSQL {version}, primary"));
    }
    let slot = &config.slot;
    if seen.version_num < 170_000 {
        return Line::warn(
            "host",
            format!(
                "{target}: PostgreSQL {version}, standby: no slot sync before 17, so a failover \
                 to it loses slot {slot}"
            ),
            "use PostgreSQL 17 or later for failover slots",
        );
    }
    if seen.slot_ready() {
        let at = seen
            .slot
            .as_ref()
            .and_then(|s| s.confirmed_flush_lsn)
            .map(|l| l.to_string())
            .unwrap_or_else(|| "?".into());
        return Line::pass(
            "host",
            format!(
                "{target}: PostgreSQL {version}, standby; slot {slot} synced at {at} (a promotion \
                 keeps it)"
            ),
        );
    }
    let found = match &seen.slot {
        None => format!("has no copy of slot {slot}"),
        Some(s) => match (&s.invalidation_reason, s.synced, s.temporary) {
            (Some(reason), _, _) => format!("has an invalidated copy of slot {slot} ({reason})"),
            (None, _, true) => format!(
                "has only a temporary copy of slot {slot} (not yet synced past the primary's \
                 position)"
            ),
            _ => format!("has a slot {slot} that is not a synced copy"),
        },
    };
    Line::warn(
        "host",
        format!(
            "{target}: PostgreSQL {version}, standby; {found}: a failover to it loses the slot"
        ),
        "on the standby: sync_replication_slots = on, hot_standby_feedback = on, \
         primary_slot_name = '<its physical slot>', dbname in primary_conninfo; on the primary: \
         the slot a failover slot (run makes it one) and synchronized_standby_slots naming the \
         standby's physical slot",
    )
}

/// 17.4 of 170004, 15.19 of 150019.
pub fn version_text(version_num: i32) -> String {
    format!("{}.{}", version_num / 10_000, version_num % 10_000)
}

/// Whether a failover keeps the slot: a failover slot (17+) and
/// synchronized_standby_slots naming a standby's physical slot.
fn judge_failover(config: &Config, server: &ServerSettings, slot: Option<&SlotInfo>) -> Line {
    let major = server.major();
    if major < 17 {
        return Line::warn(
            "failover",
            format!(
                "PostgreSQL {major} has no failover slots: after a failover the new primary has \
                 no slot {}, and the relay stops there (the events stay in the outbox table)",
                config.slot
            ),
            "use PostgreSQL 17 or later for failover slots; until then see the README's \
             'High availability' for what to do after a failover",
        );
    }
    if !config.failover_slot {
        return Line::warn(
            "failover",
            "failover_slot = false: the relay leaves the slot's failover flag alone",
            "set failover_slot = true (the default) so that standbys keep a copy of the slot",
        );
    }
    let flag = match slot.and_then(|s| s.failover) {
        Some(true) => format!("slot {} is a failover slot", config.slot),
        Some(false) => format!(
            "slot {} is not a failover slot yet (run turns failover on before it streams)",
            config.slot
        ),
        None => format!("slot {} will be created as a failover slot", config.slot),
    };
    let named = server.standby_slots();
    if named.is_empty() {
        return Line::warn(
            "failover",
            format!(
                "{flag}, but synchronized_standby_slots is empty: a standby can be promoted \
                 without WAL the relay already published (events no longer on the new primary), \
                 and its copy of the slot may be behind"
            ),
            "on the primary: ALTER SYSTEM SET synchronized_standby_slots = '<the standby's \
             physical slot>'; SELECT pg_reload_conf(); on the standby: sync_replication_slots \
             = on, hot_standby_feedback = on, primary_slot_name, and dbname in primary_conninfo",
        );
    }
    let unknown: Vec<&String> = named
        .iter()
        .filter(|n| !server.physical_slots.iter().any(|(p, _)| p == *n))
        .collect();
    if !unknown.is_empty() {
        return Line::warn(
            "failover",
            format!(
                "{flag}; synchronized_standby_slots names {} that is not a physical slot here: \
                 decoding waits for a standby that does not exist",
                unknown
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "list the physical slots of the standbys that may be promoted \
             (SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical')",
        );
    }
    let idle: Vec<&str> = named
        .iter()
        .filter(|n| {
            !server
                .physical_slots
                .iter()
                .any(|(p, active)| p == *n && *active)
        })
        .map(String::as_str)
        .collect();
    let listed = named.join(", ");
    if !idle.is_empty() {
        return Line::warn(
            "failover",
            format!(
                "{flag}; synchronized_standby_slots = {listed}, but no standby streams from {}: \
                 decoding of a failover slot waits for it, so the relay stalls until it is back",
                idle.join(", ")
            ),
            "start that standby, or remove its slot from synchronized_standby_slots while it is \
             gone (ALTER SYSTEM SET synchronized_standby_slots = '...'; SELECT pg_reload_conf())",
        );
    }
    Line::pass(
        "failover",
        format!("{flag}; synchronized_standby_slots = {listed} (streaming)"),
    )
}

/// How much WAL the slot may pin while the relay is down, and whether an
/// idle slot is invalidated (PostgreSQL 18).
fn judge_wal_retention(server: &ServerSettings) -> Line {
    let idle = server
        .idle_replication_slot_timeout
        .as_deref()
        .filter(|t| *t != "0");
    if let Some(timeout) = idle {
        return Line::warn(
            "wal_retention",
            format!(
                "idle_replication_slot_timeout = {timeout}: a slot unused that long is \
                 invalidated, so a relay stopped longer than that loses its slot"
            ),
            "set idle_replication_slot_timeout = 0 on a server that runs the relay, or keep \
             a relay (or a standby relay) running",
        );
    }
    if server.max_slot_wal_keep_size_mb < 0 {
        Line::warn(
            "wal_retention",
            "max_slot_wal_keep_size = -1 (unbounded): while the relay is stopped, the slot keeps \
             every WAL segment until the disk fills",
            "bound it for the longest outage you accept: ALTER SYSTEM SET \
             max_slot_wal_keep_size = '64GB'; SELECT pg_reload_conf(); beyond it PostgreSQL \
             invalidates the slot and the relay stops with the cause (README: 'When the slot \
             is lost')",
        )
    } else {
        Line::pass(
            "wal_retention",
            format!(
                "max_slot_wal_keep_size = {} MB",
                server.max_slot_wal_keep_size_mb
            ),
        )
    }
}

fn judge_slot(config: &Config, database: &str, s: &SlotInfo) -> Line {
    let name = &config.slot;
    if s.slot_type != "logical" || s.plugin.as_deref() != Some("pgoutput") {
        return Line::fail(
            "slot",
            format!(
                "slot {name} is a {} slot with plugin {}, not a pgoutput logical slot",
                s.slot_type,
                s.plugin.as_deref().unwrap_or("(none)")
            ),
            format!(
                "set slot ({}) to another name; the relay creates it",
                env_name("slot")
            ),
        );
    }
    if s.database.as_deref() != Some(database) {
        return Line::fail(
            "slot",
            format!(
                "slot {name} belongs to database {}, not {database}",
                s.database.as_deref().unwrap_or("?")
            ),
            "point pg_url at the slot's database or use another slot name",
        );
    }
    if let Some(why) = s.lost_because() {
        return Line::fail(
            "slot",
            format!(
                "slot {name} was invalidated by PostgreSQL: {why}; events committed after its \
                 last acknowledged position may never be decoded"
            ),
            "the relay never drops or recreates a slot by itself: follow the README's \
             'When the slot is lost' (drop and recreate the slot, then re-publish what was \
             missed from the outbox table)",
        );
    }
    let resumes = s
        .confirmed_flush_lsn
        .map(|l| l.to_string())
        .unwrap_or_else(|| "?".into());
    match (s.active, s.active_pid) {
        (true, pid) => {
            let pid = pid
                .map(|p| format!("PID {p}"))
                .unwrap_or_else(|| "a process".into());
            let ours = s.holder.as_deref() == Some(application_name(config));
            if ours {
                Line::pass(
                    "slot",
                    format!("{name} is streaming to a running outbox-relay ({pid}), at {resumes}"),
                )
            } else if config.standby {
                let holder = s.holder.as_deref().unwrap_or("unknown application");
                Line::warn(
                    "slot",
                    format!("{name} is held by {pid} ({holder})"),
                    "`run` waits as a standby and takes over when it frees; stop the other \
                     consumer if it should not be streaming",
                )
            } else {
                Line::fail(
                    "slot",
                    format!("{name} is held by {pid}: another consumer is using it"),
                    "stop the other consumer, or set standby = true to let `run` wait",
                )
            }
        }
        _ => Line::pass(
            "slot",
            format!("{name} exists (pgoutput), resumes at {resumes}"),
        ),
    }
}

fn judge_emit_message(config: &Config, public: bool) -> Line {
    let prefix = &config.mapping.message_prefix;
    if prefix.is_empty() {
        return Line::pass(
            "emit_message",
            "message_prefix is empty: logical decoding messages are not events",
        );
    }
    if public {
        return Line::warn(
            "emit_message",
            format!("message_prefix is {prefix:?} and any role may call pg_logical_emit_message"),
            "any role that can connect can publish events with the relay's identity; revoke it \
             (`outbox-relay setup --print-sql` prints the REVOKE statements) or empty \
             message_prefix",
        );
    }
    Line::pass(
        "emit_message",
        format!("message_prefix is {prefix:?}; only granted roles may emit events"),
    )
}

/// What a failed connection to PostgreSQL means, and what to do.
pub fn connection_failure(config: &Config, error: &walstream::Error) -> (String, String) {
    let user = config.pg.as_ref().map(|pg| pg.user()).unwrap_or("?");
    let dbname = config.pg.as_ref().map(|pg| pg.dbname()).unwrap_or("?");
    let problem = format!("cannot connect: {error}");
    let message = error
        .db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_default();
    let fix = match error.sqlstate() {
        Some("28P01") => {
            format!("the password for role {user} is wrong: fix it in pg_url (or ~/.pgpass)")
        }
        Some("28000") if message.contains("does not exist") => format!(
            "role {user} does not exist: create it (`outbox-relay setup --print-sql` prints the \
             statements) or fix the user in pg_url"
        ),
        Some("28000") => format!(
            "pg_hba.conf admits no connection of role {user} to database {dbname} from this \
             host: add a line for it (the README shows one) and reload PostgreSQL"
        ),
        Some("3D000") => format!("database {dbname} does not exist: fix the dbname in pg_url"),
        Some("42501") if message.contains("permission denied for database") => format!(
            "role {user} may not connect to database {dbname}: GRANT CONNECT ON DATABASE \
             {} TO {} (as the database's owner or a superuser; `outbox-relay setup --print-sql` \
             prints it)",
            crate::names::quote_ident(dbname),
            crate::names::quote_ident(user)
        ),
        Some("42501") => format!(
            "role {user} lacks the REPLICATION attribute: ALTER ROLE {} WITH REPLICATION (as a \
             superuser)",
            crate::names::quote_ident(user)
        ),
        Some("53300") => "the server has no connection slot left: raise max_connections or \
                          close idle sessions"
            .to_string(),
        _ if error.is_retryable() => {
            "check that PostgreSQL runs at the host and port of pg_url; `run` keeps retrying"
                .to_string()
        }
        _ => "fix pg_url (host, port, user, password, dbname, sslmode)".to_string(),
    };
    (problem, fix)
}

/// Judges the broker's prerequisites: reachable, and the exchange, the
/// dead-letter exchange and queue either absent (`run` declares them),
/// present as the relay would declare them, or present and left as they
/// are (declare_exchange = false).
pub fn judge_broker(config: &Config, facts: &BrokerFacts) -> Vec<Line> {
    let mut lines = Vec::new();
    match &facts.reached {
        Ok(broker) => lines.push(Line::pass("rabbitmq", format!("connected to {broker}"))),
        Err(errors) => {
            let problem = if errors.is_empty() {
                "amqp_url names no broker".to_string()
            } else {
                errors.join("; ")
            };
            lines.push(Line::fail(
                "rabbitmq",
                problem,
                "check amqp_url (host, port, user, password, vhost) and that RabbitMQ is running",
            ));
            lines.push(Line::skipped(
                "exchange",
                "no session with rabbitmq (see the rabbitmq line)",
            ));
            lines.push(Line::skipped(
                "dead_letter",
                "no session with rabbitmq (see the rabbitmq line)",
            ));
            return lines;
        }
    }
    let exchange_setting = env_name("exchange");
    for (name, found) in &facts.exchanges {
        lines.push(judge_found(
            config,
            found,
            &format!("exchange {name}"),
            "(durable topic)",
            &format!(
                "delete it on the broker, set exchange ({exchange_setting}) to another name, or \
                 set declare_exchange = false to publish to it as it is"
            ),
        ));
    }
    for mapping in &config.mapping.tables {
        if mapping.exchange.as_constant().is_none() {
            lines.push(Line::pass(
                "exchange",
                format!(
                    "{}{} is a per-row template: a row whose exchange does not exist goes to \
                     the dead-letter queue (no_exchange) after row_attempts tries",
                    if config.mapping.tables.len() > 1 {
                        format!("{}: ", mapping.table)
                    } else {
                        String::new()
                    },
                    mapping.exchange
                ),
            ));
        }
    }
    let dlx = &config.mapping.dead_letter_exchange;
    let dlq = &config.dead_letter_queue;
    let line = judge_found(
        config,
        &facts.dead_letter_exchange,
        &format!("dead-letter exchange {dlx}"),
        "(durable fanout)",
        &format!(
            "delete it on the broker, set dead_letter_exchange ({}) to another name, or set \
             declare_exchange = false",
            env_name("dead_letter_exchange")
        ),
    );
    lines.push(match line.verdict {
        Verdict::Pass(_) | Verdict::Warn { .. } => {
            let mut queue = judge_found(
                config,
                &facts.dead_letter_queue,
                &format!("dead-letter queue {dlq}"),
                "(durable, bound to the dead-letter exchange)",
                &format!(
                    "delete it on the broker, set dead_letter_queue ({}) to another name, or set \
                     declare_exchange = false to use it as it is",
                    env_name("dead_letter_queue")
                ),
            );
            queue.name = "dead_letter";
            queue
        }
        _ => Line {
            name: "dead_letter",
            ..line
        },
    });
    lines
}

fn judge_found(
    config: &Config,
    found: &Result<Found, String>,
    what: &str,
    shape: &str,
    differs_fix: &str,
) -> Line {
    match found {
        Ok(Found::Matches) => Line::pass("exchange", format!("{what} exists")),
        Ok(Found::Missing) if config.declare_exchange => Line::pass(
            "exchange",
            format!("{what} does not exist yet: `run` declares it {shape}"),
        ),
        Ok(Found::Missing) => Line::fail(
            "exchange",
            format!("{what} does not exist and declare_exchange is false"),
            "declare it on the broker, or set declare_exchange = true",
        ),
        Ok(Found::Differs(broker)) => Line::fail(
            "exchange",
            format!(
                "{what} exists but not as the relay declares it {shape} (the broker: {})",
                shown_broker(broker)
            ),
            differs_fix,
        ),
        Ok(Found::Refused(broker)) => Line::fail(
            "exchange",
            format!(
                "the broker user may not declare {what} (the broker: {})",
                shown_broker(broker)
            ),
            "grant the user configure permission on it, or create it on the broker and set \
             declare_exchange = false",
        ),
        Err(e) => Line::fail(
            "exchange",
            format!("looking at {what}: {e}"),
            "see the error",
        ),
    }
}

fn shown_broker(text: &str) -> String {
    crate::mapping::shown(text, 300)
}
