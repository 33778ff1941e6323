//! `outbox-relay replay`: publishes rows still in the outbox table again,
//! selected by id, by creation time or by aggregate, through the same
//! mapping, window and publisher confirms as `run`, each marked with the
//! `x-relay-replay` header. It reads the table with SQL (a cursor, in
//! batches) and never opens a replication connection: the slot is neither
//! read nor moved, so it runs beside a live relay.
//!
//! Rows are read as text (`column::text`, PostgreSQL's output format, as
//! pgoutput sends them) and mapped exactly as streamed rows are. Replay
//! order is the timestamp column's, then insertion order (the inserting
//! transaction's id, then the row's place in the table): commit order
//! itself is not known to SQL.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use amqp_sink::{FailureReason, Publisher, SinkEvent};
use pgoutput::{Insert, Lsn, Oid, Relation, RelationColumn, ReplicaIdentity, Tuple};

use crate::config::Config;
use crate::mapping::{HeaderValue, Mapped, Mapper, TableMapping};
use crate::names::{quote_ident, TableName};
use crate::sink::amqp;

/// The header that marks a replayed message (its value: when, RFC 3339).
pub const REPLAY_HEADER: &str = "x-relay-replay";

/// Which rows to replay (all given conditions hold).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// These event ids.
    pub ids: Vec<String>,
    /// Created at or after this time (a PostgreSQL timestamptz literal).
    pub since: Option<String>,
    /// Created before this time.
    pub until: Option<String>,
    /// Of this aggregate ...
    pub aggregate: Option<String>,
    /// ... in this column.
    pub aggregate_column: String,
    /// The outbox table to read (`schema.table`); needed when several are
    /// configured.
    pub table: Option<String>,
}

impl Selection {
    /// Whether anything was selected at all (replaying a whole table takes
    /// a condition that says so, e.g. an early `since`).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.since.is_none()
            && self.until.is_none()
            && self.aggregate.is_none()
    }
}

/// The query that reads the selected rows, every column as text, and its
/// parameters. Pure.
pub fn query(
    m: &TableMapping,
    columns: &[String],
    selection: &Selection,
) -> Result<(String, Vec<String>), String> {
    let mut conditions = Vec::new();
    let mut params: Vec<String> = Vec::new();
    if !selection.ids.is_empty() {
        params.push(format!(
            "{{{}}}",
            selection
                .ids
                .iter()
                .map(|id| format!("\"{}\"", id.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(",")
        ));
        conditions.push(format!(
            "{}::text = ANY(${}::text::text[])",
            quote_ident(&m.id_column),
            params.len()
        ));
    }
    for (bound, op) in [(&selection.since, ">="), (&selection.until, "<")] {
        if let Some(time) = bound {
            if m.timestamp_column.is_empty() {
                return Err("--since/--until need the timestamp_column setting".into());
            }
            params.push(time.clone());
            conditions.push(format!(
                "{} {op} ${}::text::timestamptz",
                quote_ident(&m.timestamp_column),
                params.len()
            ));
        }
    }
    if let Some(aggregate) = &selection.aggregate {
        if !columns.contains(&selection.aggregate_column) {
            return Err(format!(
                "the table has no column {} (--aggregate-column)",
                selection.aggregate_column
            ));
        }
        params.push(aggregate.clone());
        conditions.push(format!(
            "{}::text = ${}",
            quote_ident(&selection.aggregate_column),
            params.len()
        ));
    }
    if conditions.is_empty() {
        return Err("say which rows: --id, --since/--until or --aggregate".into());
    }
    let select = columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut order = Vec::new();
    if !m.timestamp_column.is_empty() && columns.contains(&m.timestamp_column) {
        order.push(quote_ident(&m.timestamp_column));
    }
    // Then insertion order: the inserting transaction, then the row's
    // place in the heap (rows of one transaction share its timestamp).
    order.push("xmin::text::bigint".to_string());
    order.push("ctid".to_string());
    let order = format!(" ORDER BY {}", order.join(", "));
    Ok((
        format!(
            "SELECT {select} FROM {}.{} WHERE {}{order}",
            quote_ident(&m.table.schema),
            quote_ident(&m.table.name),
            conditions.join(" AND ")
        ),
        params,
    ))
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Rows read.
    pub rows: u64,
    /// Messages the broker confirmed.
    pub confirmed: u64,
    /// Rows that failed, each with why (not published, returned, nacked,
    /// lost).
    pub failed: Vec<(String, String)>,
    /// How long it took.
    pub elapsed: Duration,
}

/// The configured table a replay reads: the one `--table` names, or the
/// only one. Pure.
pub fn table_of<'a>(config: &'a Config, selection: &Selection) -> Result<&'a TableMapping, String> {
    let tables = &config.mapping.tables;
    let names = || crate::names::list(&config.mapping.table_names().cloned().collect::<Vec<_>>());
    match &selection.table {
        Some(given) => {
            let wanted = TableName::parse(given).map_err(|e| format!("--table: {e}"))?;
            tables.iter().find(|t| t.table == wanted).ok_or_else(|| {
                format!(
                    "--table {given} is not a configured outbox table ({})",
                    names()
                )
            })
        }
        None => match &tables[..] {
            [one] => Ok(one),
            _ => Err(format!(
                "several outbox tables are configured: say which with --table ({})",
                names()
            )),
        },
    }
}

/// Rows fetched per round trip.
const BATCH: i32 = 500;

/// Replays the selected rows (see the module documentation).
pub async fn replay(config: &Config, selection: &Selection) -> Result<Summary, String> {
    let started = Instant::now();
    let pg = config.pg().map_err(|e| e.to_string())?;
    let mut client = crate::pg::connect_control(pg, "outbox-relay replay")
        .await
        .map_err(|e| {
            let (problem, fix) = crate::prereq::connection_failure(config, &e);
            format!("{problem}; fix: {fix}")
        })?;
    let mapping = table_of(config, selection)?;
    let table = &mapping.table;
    let described = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8 FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&format!(
                "{}.{}",
                quote_ident(&table.schema),
                quote_ident(&table.name)
            )],
        )
        .await
        .map_err(|e| format!("reading the columns of {table}: {e}"))?;
    if described.is_empty() {
        return Err(format!(
            "table {table} does not exist (or the role may not see it)"
        ));
    }
    let columns: Vec<(String, u32)> = described
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            )
        })
        .collect();
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let (sql, params) = query(mapping, &names, selection)?;

    let limits = amqp::limits(config.max_payload_bytes, amqp_sink::DEFAULT_FRAME_MAX);
    let mut mapper = Mapper::new(config.mapping.clone(), limits);
    let rel = Oid(1);
    mapper.relation(&Relation {
        xid: None,
        oid: rel,
        namespace: table.schema.clone(),
        name: table.name.clone(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|(name, oid)| RelationColumn {
                key: false,
                name: name.clone(),
                type_oid: Oid(*oid),
                type_modifier: -1,
            })
            .collect(),
    });

    let sink_config = amqp::sink_config(config)?;
    let (mut publisher, mut outcomes) = Publisher::connect(sink_config)
        .await
        .map_err(|e| e.to_string())?;
    // Outcomes are read beside the publishing: they free the window.
    let reader = tokio::spawn(async move {
        let mut failed: HashMap<u64, String> = HashMap::new();
        while let Some(event) = outcomes.recv().await {
            if let SinkEvent::Failed { seq, reason } = event {
                let why = match reason {
                    FailureReason::Returned {
                        reply_code,
                        reply_text,
                    } => format!(
                        "returned by the broker ({reply_code} {reply_text}): no queue bound"
                    ),
                    FailureReason::Nacked => "nacked by the broker (a queue refused it)".into(),
                    FailureReason::Unknown(e) => format!("not confirmed: {e}"),
                };
                failed.insert(seq.get(), why);
            }
        }
        failed
    });

    let replayed_at = crate::enrich::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let progress = std::io::stderr().is_terminal();
    let mut last_report = Instant::now();
    let mut summary = Summary::default();
    let mut ids: HashMap<u64, String> = HashMap::new();
    let id_at = names.iter().position(|n| *n == mapping.id_column);
    let tx = client
        .transaction()
        .await
        .map_err(|e| format!("opening a transaction: {e}"))?;
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| -> &(dyn tokio_postgres::types::ToSql + Sync) { p })
        .collect();
    let portal = tx
        .bind(sql.as_str(), &params)
        .await
        .map_err(|e| format!("selecting the rows: {e}"))?;
    // A failure mid-way still closes the publisher and reports what went
    // out: the summary carries it.
    let mut stopped: Option<String> = None;
    'rows: loop {
        let rows = match tx.query_portal(&portal, BATCH).await {
            Ok(rows) => rows,
            Err(e) => {
                stopped = Some(format!("reading the rows: {e}"));
                break;
            }
        };
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            summary.rows += 1;
            let values: Vec<Option<String>> = (0..names.len()).map(|i| row.get(i)).collect();
            let what = id_at
                .and_then(|i| values.get(i).cloned().flatten())
                .unwrap_or_else(|| format!("row {}", summary.rows));
            if id_at
                .and_then(|i| values.get(i))
                .is_none_or(Option::is_none)
            {
                summary.failed.push((
                    what,
                    "no id: a consumer could not tell its replay from a new event".into(),
                ));
                continue;
            }
            let Some(tuple) =
                Tuple::from_text(values.iter().map(|v| v.as_deref().map(str::as_bytes)))
            else {
                stopped = Some("a row too wide for the format".into());
                break 'rows;
            };
            let insert = Insert {
                xid: None,
                rel,
                tuple,
            };
            let mut message = match mapper.insert(&insert, Lsn::ZERO) {
                Some(Mapped::Publish(message)) => message,
                Some(Mapped::DeadLetter(_, reason)) => {
                    summary.failed.push((
                        what,
                        format!(
                            "not published: it maps to a dead letter ({})",
                            reason.as_str()
                        ),
                    ));
                    continue;
                }
                None => {
                    summary.failed.push((what, "not mapped".into()));
                    continue;
                }
            };
            message.headers.push((
                REPLAY_HEADER.to_string(),
                HeaderValue::Text(replayed_at.clone()),
            ));
            if !mapper.limits().properties_fit(&message) {
                summary.failed.push((
                    what,
                    "with the replay header its properties no longer fit one frame".into(),
                ));
                continue;
            }
            match publisher.publish(amqp::outgoing(&message)).await {
                Ok(seq) => {
                    ids.insert(seq.get(), what);
                }
                Err(e) => {
                    summary.failed.push((what, e.to_string()));
                    publisher.resume();
                }
            }
            if progress && last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                let rate = count(summary.rows) / started.elapsed().as_secs_f64().max(0.001);
                eprint!(
                    "\rreplaying: {} rows read, {rate:.0} rows/s   ",
                    summary.rows
                );
                let _ = std::io::stderr().flush();
            }
        }
    }
    drop(portal);
    let _ = tx.commit().await;
    let published = u64::try_from(ids.len()).unwrap_or(u64::MAX);
    let close = publisher.close().await;
    let failed = reader.await.unwrap_or_default();
    if progress {
        eprintln!();
    }
    for (seq, why) in &failed {
        let what = ids
            .get(seq)
            .cloned()
            .unwrap_or_else(|| format!("message {seq}"));
        summary.failed.push((what, why.clone()));
    }
    summary.confirmed = published.saturating_sub(u64::try_from(failed.len()).unwrap_or(0));
    if let Err(e) = close {
        if failed.is_empty() {
            summary
                .failed
                .push(("the publisher".into(), format!("closing: {e}")));
        }
    }
    if let Some(error) = stopped {
        summary
            .failed
            .push(("the replay".into(), format!("stopped: {error}")));
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn count(n: u64) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn config() -> Config {
        Settings {
            pg_url: Some("postgres://u@h/db".into()),
            amqp_url: Some("amqp://h".into()),
            ..Settings::default()
        }
        .parse()
        .unwrap()
    }

    fn columns() -> Vec<String> {
        [
            "id",
            "aggregate_type",
            "aggregate_id",
            "event_type",
            "payload",
            "created_at",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn the_query_reads_every_column_as_text_with_the_conditions_as_parameters() {
        let selection = Selection {
            ids: vec!["a\"b".into(), "c".into()],
            since: Some("2026-11-30 00:00+00".into()),
            until: None,
            aggregate: Some("42".into()),
            aggregate_column: "aggregate_id".into(),
            table: None,
        };
        let (sql, params) = query(config().mapping.first(), &columns(), &selection).unwrap();
        assert_eq!(
            sql,
            "SELECT \"id\"::text, \"aggregate_type\"::text, \"aggregate_id\"::text, \
             \"event_type\"::text, \"payload\"::text, \"created_at\"::text FROM \
             \"public\".\"outbox\" WHERE \"id\"::text = ANY($1::text::text[]) AND \"created_at\" >= \
             $2::text::timestamptz AND \"aggregate_id\"::text = $3 ORDER BY \"created_at\", \
             xmin::text::bigint, ctid"
        );
        assert_eq!(params, ["{\"a\\\"b\",\"c\"}", "2026-11-30 00:00+00", "42"]);
    }

    #[test]
    fn nothing_selected_or_a_missing_column_is_refused() {
        assert!(query(config().mapping.first(), &columns(), &Selection::default()).is_err());
        let selection = Selection {
            aggregate: Some("x".into()),
            aggregate_column: "tenant".into(),
            ..Selection::default()
        };
        assert!(query(config().mapping.first(), &columns(), &selection)
            .unwrap_err()
            .contains("tenant"));
    }
}
