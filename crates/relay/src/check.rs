//! `outbox-relay check`: the preflight. It tests every prerequisite of `run`
//! and reports one line each, pass or fail with the fix, without changing
//! anything on either server.
//!
//! The checks are data ([`CheckLine`]) so that tests and the printer share
//! them; [`preflight`] gathers them, [`render`] prints them.

use std::fmt::Write as _;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;

use crate::catalog::{self, TableName};
use crate::config::{redact_secret, Settings};
use crate::pg;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; what was found.
    Pass(String),
    /// Not fine: what is wrong and how to fix it.
    Fail {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// Not checked because an earlier check failed.
    Skipped(String),
}

/// One line of the preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// What was checked (`wal_level`, `rabbitmq`, ...).
    pub name: &'static str,
    /// How it went.
    pub outcome: Outcome,
}

impl CheckLine {
    fn pass(name: &'static str, what: impl Into<String>) -> CheckLine {
        CheckLine {
            name,
            outcome: Outcome::Pass(what.into()),
        }
    }

    fn fail(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> CheckLine {
        CheckLine {
            name,
            outcome: Outcome::Fail {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }

    fn skipped(name: &'static str, why: &str) -> CheckLine {
        CheckLine {
            name,
            outcome: Outcome::Skipped(why.to_string()),
        }
    }

    /// Whether this line failed.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }
}

/// Prints the lines, one per check: `ok`, `FAIL` (with the fix) or `skip`.
pub fn render(lines: &[CheckLine]) -> String {
    let mut out = String::new();
    for line in lines {
        let _ = match &line.outcome {
            Outcome::Pass(what) => writeln!(out, "ok    {:<13} {what}", line.name),
            Outcome::Fail { problem, fix } => {
                writeln!(out, "FAIL  {:<13} {problem}; fix: {fix}", line.name)
            }
            Outcome::Skipped(why) => writeln!(out, "skip  {:<13} {why}", line.name),
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

/// The payload column types the relay can publish.
pub const PAYLOAD_TYPES: &[&str] = &["jsonb", "json", "text", "bytea", "character varying"];

/// Runs every check.
pub async fn preflight(settings: &Settings) -> Vec<CheckLine> {
    let mut lines = postgres_checks(settings).await;
    lines.extend(broker_checks(settings).await);
    lines
}

async fn postgres_checks(settings: &Settings) -> Vec<CheckLine> {
    const PG_CHECKS: &[&str] = &[
        "wal_level",
        "slots",
        "wal_senders",
        "role",
        "table",
        "columns",
        "publication",
        "slot",
    ];
    let mut lines = Vec::new();
    let url = settings.pg_url.clone().unwrap_or_default();
    let client = match pg::connect_control(&url, "outbox-relay check").await {
        Ok(client) => client,
        Err(e) => {
            lines.push(CheckLine::fail(
                "postgres",
                format!("cannot connect to {}: {e}", redact_secret(&url)),
                "check pg_url (host, port, user, password, dbname), that PostgreSQL is running, \
                 and that pg_hba.conf admits this role from this host",
            ));
            lines.extend(
                PG_CHECKS
                    .iter()
                    .map(|n| CheckLine::skipped(n, "postgres is unreachable")),
            );
            return lines;
        }
    };
    let server = match catalog::server_settings(&client).await {
        Ok(s) => s,
        Err(e) => {
            lines.push(CheckLine::fail("postgres", e.to_string(), "see the error"));
            return lines;
        }
    };
    let role = catalog::role_rights(&client).await;
    let database = catalog::current_database(&client).await.unwrap_or_default();
    lines.push(CheckLine::pass(
        "postgres",
        format!(
            "connected to database {database} as {} (server_version_num {})",
            role.as_ref().map(|r| r.name.as_str()).unwrap_or("?"),
            server.version_num
        ),
    ));

    lines.push(if server.wal_level == "logical" {
        CheckLine::pass("wal_level", "logical")
    } else {
        CheckLine::fail(
            "wal_level",
            format!("wal_level is '{}'", server.wal_level),
            "set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) \
             and restart PostgreSQL",
        )
    });

    let slot = catalog::slot_info(&client, &settings.slot).await;
    let slot_exists = matches!(slot, Ok(Some(_)));
    lines.push(
        if slot_exists || server.used_slots < server.max_replication_slots {
            CheckLine::pass(
                "slots",
                format!(
                    "{} of max_replication_slots = {} in use",
                    server.used_slots, server.max_replication_slots
                ),
            )
        } else {
            CheckLine::fail(
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
    lines.push(if server.used_wal_senders < server.max_wal_senders {
        CheckLine::pass(
            "wal_senders",
            format!(
                "{} of max_wal_senders = {} in use",
                server.used_wal_senders, server.max_wal_senders
            ),
        )
    } else {
        CheckLine::fail(
            "wal_senders",
            format!("all {} walsenders are in use", server.max_wal_senders),
            "raise max_wal_senders in postgresql.conf and restart PostgreSQL",
        )
    });

    lines.push(match &role {
        Ok(r) if r.superuser => CheckLine::pass("role", format!("{} is a superuser", r.name)),
        Ok(r) if r.replication => CheckLine::pass("role", format!("{} has REPLICATION", r.name)),
        Ok(r) => CheckLine::fail(
            "role",
            format!("role {} lacks the REPLICATION attribute", r.name),
            format!(
                "ALTER ROLE {} WITH REPLICATION (as a superuser), or use the role that \
                 `outbox-relay setup --print-sql` creates",
                catalog::quote_ident(&r.name)
            ),
        ),
        Err(e) => CheckLine::fail("role", e.to_string(), "see the error"),
    });

    let table = match TableName::parse(&settings.table) {
        Ok(t) => t,
        Err(e) => {
            lines.push(CheckLine::fail(
                "table",
                e.to_string(),
                "set table to schema.table",
            ));
            return lines;
        }
    };
    let info = catalog::table_info(&client, &table).await;
    match &info {
        Ok(Some(info)) => {
            lines.push(if info.can_select {
                CheckLine::pass("table", format!("{table} exists and is readable"))
            } else {
                CheckLine::fail(
                    "table",
                    format!("the role may not SELECT from {table} (logical replication needs it)"),
                    format!(
                        "GRANT SELECT ON {} TO {}",
                        table.quoted(),
                        role.as_ref()
                            .map(|r| catalog::quote_ident(&r.name))
                            .unwrap_or_default()
                    ),
                )
            });
            lines.push(column_check(settings, info));
        }
        Ok(None) => {
            lines.push(CheckLine::fail(
                "table",
                format!("table {table} does not exist"),
                "create it (sql/outbox.sql), or set table (RELAY_TABLE) to your outbox table",
            ));
            lines.push(CheckLine::skipped("columns", "the table does not exist"));
        }
        Err(e) => {
            lines.push(CheckLine::fail("table", e.to_string(), "see the error"));
            lines.push(CheckLine::skipped("columns", "the table could not be read"));
        }
    }

    let can_create_publication =
        matches!(&info, Ok(Some(t)) if t.owned) || matches!(&role, Ok(r) if r.superuser);
    lines.push(
        match catalog::publication_info(&client, &settings.publication, &table).await {
            Ok(Some(p)) if p.covers_table && p.publishes_inserts => CheckLine::pass(
                "publication",
                format!("{} publishes inserts of {table}", settings.publication),
            ),
            Ok(Some(p)) if !p.covers_table => CheckLine::fail(
                "publication",
                format!(
                    "publication {} exists but does not cover {table}",
                    settings.publication
                ),
                format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    catalog::quote_ident(&settings.publication),
                    table.quoted()
                ),
            ),
            Ok(Some(_)) => CheckLine::fail(
                "publication",
                format!(
                    "publication {} does not publish inserts",
                    settings.publication
                ),
                format!(
                    "ALTER PUBLICATION {} SET (publish = 'insert')",
                    catalog::quote_ident(&settings.publication)
                ),
            ),
            Ok(None) if can_create_publication => CheckLine::pass(
                "publication",
                format!(
                    "{} does not exist yet: `outbox-relay setup` or `run` creates it",
                    settings.publication
                ),
            ),
            Ok(None) => CheckLine::fail(
                "publication",
                format!(
                    "{} does not exist, and the role cannot create it (it does not own {table})",
                    settings.publication
                ),
                format!(
                    "have the table's owner run: {}",
                    catalog::create_publication_sql(&settings.publication, &table)
                ),
            ),
            Err(e) => CheckLine::fail("publication", e.to_string(), "see the error"),
        },
    );

    lines.push(match slot {
        Ok(None) => CheckLine::pass(
            "slot",
            format!(
                "{} does not exist yet: `outbox-relay setup` or `run` creates it",
                settings.slot
            ),
        ),
        Ok(Some(s)) => slot_check(settings, &database, &s),
        Err(e) => CheckLine::fail("slot", e.to_string(), "see the error"),
    });
    lines
}

fn column_check(settings: &Settings, info: &catalog::TableInfo) -> CheckLine {
    let mut problems = Vec::new();
    let mut required: Vec<&str> = vec![
        settings.id_column.as_str(),
        settings.payload_column.as_str(),
    ];
    let exchange = settings.exchange_template();
    let routing = settings.routing_key_template();
    if let Ok(t) = &routing {
        required.extend(t.columns());
    }
    if let Ok(t) = &exchange {
        required.extend(t.columns());
    }
    if !settings.type_column.is_empty() {
        required.push(&settings.type_column);
    }
    if !settings.timestamp_column.is_empty() {
        required.push(&settings.timestamp_column);
    }
    for name in &required {
        if info.column(name).is_none() {
            problems.push(format!("no column {name}"));
        }
    }
    if let Some(c) = info.column(&settings.payload_column) {
        if !PAYLOAD_TYPES.contains(&c.type_name.as_str()) {
            problems.push(format!(
                "payload column {} is {} (expected jsonb, json, text or bytea)",
                c.name, c.type_name
            ));
        }
    }
    if let Some(c) = info.column(&settings.timestamp_column) {
        if !c.type_name.starts_with("timestamp") {
            problems.push(format!(
                "timestamp column {} is {} (expected timestamptz)",
                c.name, c.type_name
            ));
        }
    }
    if problems.is_empty() {
        CheckLine::pass(
            "columns",
            format!("{} present: {}", required.len(), required.join(", ")),
        )
    } else {
        let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
        CheckLine::fail(
            "columns",
            format!(
                "{} (the table has: {})",
                problems.join("; "),
                names.join(", ")
            ),
            "set id_column, payload_column, type_column, timestamp_column, exchange and \
             routing_key to the table's columns (see `outbox-relay config`)",
        )
    }
}

fn slot_check(settings: &Settings, database: &str, s: &catalog::SlotInfo) -> CheckLine {
    let name = &settings.slot;
    if s.slot_type != "logical" || s.plugin.as_deref() != Some("pgoutput") {
        return CheckLine::fail(
            "slot",
            format!(
                "slot {name} is a {} slot with plugin {}, not a pgoutput logical slot",
                s.slot_type,
                s.plugin.as_deref().unwrap_or("(none)")
            ),
            "set slot (RELAY_SLOT) to another name; the relay creates it",
        );
    }
    if s.database.as_deref() != Some(database) {
        return CheckLine::fail(
            "slot",
            format!(
                "slot {name} belongs to database {}, not {database}",
                s.database.as_deref().unwrap_or("?")
            ),
            "point pg_url at the slot's database or use another slot name",
        );
    }
    if s.wal_status.as_deref() == Some("lost") {
        return CheckLine::fail(
            "slot",
            format!("slot {name} has lost required WAL (wal_status = lost): events were lost"),
            "drop and recreate the slot, and recover the missed events from the outbox table",
        );
    }
    if let (true, Some(pid)) = (s.active, s.active_pid) {
        return CheckLine::fail(
            "slot",
            format!(
                "slot {name} is active for PID {pid}: another outbox-relay or Debezium is using it"
            ),
            "stop the other consumer, or let `run` wait as a standby (the default)",
        );
    }
    CheckLine::pass(
        "slot",
        format!(
            "{name} exists (pgoutput), resumes at {}",
            s.confirmed_flush_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into())
        ),
    )
}

async fn broker_checks(settings: &Settings) -> Vec<CheckLine> {
    let urls = settings.amqp_urls();
    let mut lines = Vec::new();
    let mut connection = None;
    for url in &urls {
        match lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await {
            Ok(c) => {
                lines.push(CheckLine::pass(
                    "rabbitmq",
                    format!("connected to {}", redact_secret(url)),
                ));
                connection = Some(c);
                break;
            }
            Err(e) => lines.push(CheckLine::fail(
                "rabbitmq",
                format!("cannot connect to {}: {e}", redact_secret(url)),
                "check amqp_url (host, port, user, password, vhost) and that RabbitMQ is running",
            )),
        }
    }
    if urls.is_empty() {
        lines.push(CheckLine::fail(
            "rabbitmq",
            "amqp_url is not set",
            "set RELAY_AMQP_URL or amqp_url in the config file",
        ));
    }
    let Some(connection) = connection else {
        lines.push(CheckLine::skipped("exchange", "rabbitmq is unreachable"));
        return lines;
    };
    lines.push(exchange_check(settings, &connection).await);
    let _ = connection.close(200, "check done".into()).await;
    lines
}

async fn exchange_check(settings: &Settings, connection: &lapin::Connection) -> CheckLine {
    let exchange = match settings.exchange_template() {
        Ok(t) if t.is_constant() => settings.exchange.clone(),
        Ok(_) => {
            return CheckLine::pass(
                "exchange",
                format!(
                    "{} is a per-row template: each exchange is checked when first used",
                    settings.exchange
                ),
            )
        }
        Err(e) => return CheckLine::fail("exchange", e.to_string(), "fix the exchange template"),
    };
    let channel = match connection.create_channel().await {
        Ok(c) => c,
        Err(e) => return CheckLine::fail("exchange", e.to_string(), "see the error"),
    };
    let passive = channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match passive {
        Ok(()) => CheckLine::pass("exchange", format!("{exchange} exists")),
        Err(_) if settings.declare_exchange => CheckLine::pass(
            "exchange",
            format!("{exchange} does not exist yet: `run` declares it (durable topic)"),
        ),
        Err(_) => CheckLine::fail(
            "exchange",
            format!("exchange {exchange} does not exist and declare_exchange is false"),
            "declare it on the broker, or set declare_exchange = true",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_says_pass_fail_and_the_fix() {
        let lines = vec![
            CheckLine::pass("wal_level", "logical"),
            CheckLine::fail(
                "role",
                "role app lacks REPLICATION",
                "ALTER ROLE app WITH REPLICATION",
            ),
            CheckLine::skipped("exchange", "rabbitmq is unreachable"),
        ];
        let text = render(&lines);
        assert!(text.contains("ok    wal_level     logical"), "{text}");
        assert!(
            text.contains("FAIL  role          role app lacks REPLICATION; fix: ALTER ROLE app"),
            "{text}"
        );
        assert!(text.contains("skip  exchange"), "{text}");
        assert!(text.ends_with("1 of 3 checks failed\n"), "{text}");
    }
}
