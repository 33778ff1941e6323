//! The outbox row -> message mapping: the message contract of DESIGN.md.
//!
//! Pure code. For each Relation message of the outbox table the mapper
//! builds a [`Plan`] (which position holds which column, by name, so ALTER
//! TABLE that adds, drops or reorders columns is followed), and maps each
//! Insert through it:
//! exchange and routing key from templates, body = the payload column's
//! value (json/jsonb/text as text, bytea as raw bytes), message_id = id,
//! type = event type, timestamp = created_at, headers = every other column
//! (or the configured ones).
//!
//! A row that cannot be published as configured (NULL routing column, a
//! template that renders empty, a payload over the size limit, bytes that
//! do not decode) is not dropped: it maps to a [`Mapped::DeadLetter`] with
//! the reason, the LSN and the row's columns as headers.
//!
//! `pg_logical_emit_message` with the configured prefix is a second source:
//! its content is a JSON envelope whose fields stand for the outbox
//! columns (see [`Mapper::logical_message`]).

use std::collections::HashMap;

use bytes::Bytes;
use pgoutput::{Column, Insert, Lsn, Message, Oid, Relation, RelationCache};

use crate::catalog::TableName;
use crate::config::{ConfigError, Settings};
use crate::pgtext;
use crate::template::{ColumnValue, RenderError, Template};

/// Type Oids the mapping reads specially.
const BYTEA_OID: u32 = 17;

/// A header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Text (most columns, in PostgreSQL's text output format).
    Text(String),
    /// An integer (x-relay-payload-size).
    Int(i64),
    /// Raw bytes (a column that is not valid UTF-8).
    Bytes(Vec<u8>),
}

/// A message ready for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// The exchange.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body.
    pub body: Bytes,
    /// message_id (the event id; consumers deduplicate on it).
    pub message_id: Option<String>,
    /// type (the event type).
    pub kind: Option<String>,
    /// content_type.
    pub content_type: String,
    /// timestamp, seconds since the UNIX epoch.
    pub timestamp: Option<u64>,
    /// Headers, in column order.
    pub headers: Vec<(String, HeaderValue)>,
}

/// Why a row goes to the dead-letter exchange (the `x-relay-reason`
/// header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// A routing column is NULL or missing, or a template rendered empty or
    /// too long.
    Unroutable,
    /// The payload is larger than max_payload_bytes.
    Oversize,
    /// A value could not be decoded (bad bytea, invalid UTF-8 in a routing
    /// column, an envelope that is not JSON).
    Undecodable,
    /// The payload or id column is NULL or missing.
    MissingColumn,
    /// The broker returned the message: no queue is bound for its routing
    /// key.
    Returned,
    /// The broker client refused the message as it was (a name over 255
    /// bytes, a body over the broker's limit).
    Invalid,
}

impl DeadLetterReason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Unroutable => "unroutable-row",
            DeadLetterReason::Oversize => "oversize",
            DeadLetterReason::Undecodable => "undecodable",
            DeadLetterReason::MissingColumn => "missing-column",
            DeadLetterReason::Returned => "unroutable",
            DeadLetterReason::Invalid => "invalid-message",
        }
    }
}

/// The result of mapping one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Publish this.
    Publish(EventMessage),
    /// Publish this to the dead-letter exchange instead (it already carries
    /// the dead-letter exchange, the reason and the row).
    DeadLetter(EventMessage, DeadLetterReason),
}

/// What the mapper knows of the outbox table's current shape: each
/// column, and the positions of the columns the mapping reads (looked up
/// once per Relation message, not per row).
#[derive(Debug, Clone)]
pub struct Plan {
    columns: Vec<PlanColumn>,
    payload: Option<usize>,
    id: Option<usize>,
    kind: Option<usize>,
    timestamp: Option<usize>,
    /// The columns the exchange and routing key templates name, with their
    /// positions (None: no such column).
    routing: Vec<(String, Option<usize>)>,
}

#[derive(Debug, Clone)]
struct PlanColumn {
    name: String,
    type_oid: Oid,
    header: bool,
}

/// Maps outbox rows and envelope messages to broker messages.
#[derive(Debug, Clone)]
pub struct Mapper {
    table: TableName,
    exchange: Template,
    routing_key: Template,
    id_column: String,
    payload_column: String,
    type_column: String,
    timestamp_column: String,
    header_columns: Vec<String>,
    content_type: String,
    max_payload_bytes: usize,
    message_prefix: String,
    dead_letter_exchange: String,
    plans: HashMap<Oid, Plan>,
}

impl Mapper {
    /// A mapper for these settings.
    pub fn new(settings: &Settings) -> Result<Mapper, ConfigError> {
        let table = TableName::parse(&settings.table).map_err(|e| ConfigError::Invalid {
            key: "table",
            message: e.to_string(),
        })?;
        Ok(Mapper {
            table,
            exchange: settings.exchange_template()?,
            routing_key: settings.routing_key_template()?,
            id_column: settings.id_column.clone(),
            payload_column: settings.payload_column.clone(),
            type_column: settings.type_column.clone(),
            timestamp_column: settings.timestamp_column.clone(),
            header_columns: settings.header_columns.clone(),
            content_type: settings.content_type.clone(),
            max_payload_bytes: usize::try_from(settings.max_payload_bytes).unwrap_or(usize::MAX),
            message_prefix: settings.message_prefix.clone(),
            dead_letter_exchange: settings.dead_letter_exchange.clone(),
            plans: HashMap::new(),
        })
    }

    /// Reads a Relation message: if it is the outbox table, (re)builds its
    /// plan and returns true. Call it for every Relation, in stream order.
    pub fn relation(&mut self, relation: &Relation) -> bool {
        if !relation.is(&self.table.schema, &self.table.name) {
            self.plans.remove(&relation.oid);
            return false;
        }
        let columns: Vec<PlanColumn> = relation
            .columns
            .iter()
            .map(|c| PlanColumn {
                name: c.name.clone(),
                type_oid: c.type_oid,
                header: if self.header_columns.is_empty() {
                    c.name != self.id_column
                        && c.name != self.payload_column
                        && c.name != self.timestamp_column
                } else {
                    self.header_columns.contains(&c.name)
                },
            })
            .collect();
        let index: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let routing = self
            .exchange
            .columns()
            .chain(self.routing_key.columns())
            .map(|name| (name.to_string(), index.get(name).copied()))
            .collect();
        let plan = Plan {
            payload: index.get(&self.payload_column).copied(),
            id: index.get(&self.id_column).copied(),
            kind: index.get(&self.type_column).copied(),
            timestamp: index.get(&self.timestamp_column).copied(),
            routing,
            columns,
        };
        self.plans.insert(relation.oid, plan);
        true
    }

    /// Whether this relation is the outbox table (as far as the Relation
    /// messages seen so far tell).
    pub fn is_outbox(&self, rel: Oid) -> bool {
        self.plans.contains_key(&rel)
    }

    /// Maps an Insert; `None` if it is not into the outbox table.
    pub fn insert(&self, insert: &Insert, lsn: Lsn) -> Option<Mapped> {
        let plan = self.plans.get(&insert.rel)?;
        // The row's columns, parsed once (each is a slice of the message).
        let row: Vec<Column> = insert.tuple.iter().collect();
        let text = |at: Option<usize>| -> Result<Option<&str>, DeadLetterReason> {
            match at.and_then(|i| row.get(i)) {
                Some(Column::Text(b)) => std::str::from_utf8(b)
                    .map(Some)
                    .map_err(|_| DeadLetterReason::Undecodable),
                Some(Column::Binary(_)) => Err(DeadLetterReason::Undecodable),
                _ => Ok(None),
            }
        };
        let row_headers = || -> Vec<(String, HeaderValue)> {
            row.iter()
                .zip(&plan.columns)
                .filter_map(|(value, col)| {
                    let bytes = value.value()?;
                    Some((col.name.clone(), header_value(bytes)))
                })
                .collect()
        };
        let dead = |reason: DeadLetterReason, detail: String, body: Bytes| {
            Some(self.dead_letter(reason, &detail, lsn, row_headers(), body))
        };

        // The payload: required, within the limit, decodable.
        let payload = plan
            .payload
            .and_then(|i| row.get(i).map(|v| (v, plan.columns.get(i))));
        let body = match payload {
            Some((Column::Text(b), Some(col))) if col.type_oid.0 == BYTEA_OID => {
                match pgtext::decode_bytea_hex(b) {
                    Some(raw) => Bytes::from(raw),
                    None => {
                        return dead(
                            DeadLetterReason::Undecodable,
                            format!("bytea column {} is not in hex format", self.payload_column),
                            Bytes::new(),
                        )
                    }
                }
            }
            // A copy of the value, not a slice: a slice would keep the whole
            // read buffer it came from alive while the message is in flight,
            // and the window counts only the body.
            Some((Column::Text(b), _)) => Bytes::copy_from_slice(b),
            Some((Column::Binary(b), _)) => Bytes::copy_from_slice(b),
            _ => {
                return dead(
                    DeadLetterReason::MissingColumn,
                    format!("payload column {} is NULL or missing", self.payload_column),
                    Bytes::new(),
                )
            }
        };
        if body.len() > self.max_payload_bytes {
            let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
            let mut headers = row_headers();
            headers.push(("x-relay-payload-size".into(), HeaderValue::Int(size)));
            return Some(self.dead_letter(
                DeadLetterReason::Oversize,
                &format!(
                    "payload of {} bytes is over max_payload_bytes ({})",
                    body.len(),
                    self.max_payload_bytes
                ),
                lsn,
                headers,
                Bytes::new(),
            ));
        }

        // Routing: the template columns' values, read once.
        let mut values: Vec<(&str, Option<usize>, Option<&str>)> =
            Vec::with_capacity(plan.routing.len());
        for (name, at) in &plan.routing {
            match text(*at) {
                Ok(value) => values.push((name, *at, value)),
                Err(_) => {
                    return dead(
                        DeadLetterReason::Undecodable,
                        format!("routing column {name} is not valid UTF-8 text"),
                        body,
                    )
                }
            }
        }
        let lookup = |name: &str| match values.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, Some(t))) => ColumnValue::Text(t),
            Some((_, Some(_), None)) => ColumnValue::Null,
            _ => ColumnValue::Missing,
        };
        let exchange = self.exchange.render(lookup);
        let routing_key = self.routing_key.render(lookup);
        let (exchange, routing_key) = match (exchange, routing_key) {
            (Ok(x), Ok(k)) => (x, k),
            (Err(e), _) | (_, Err(e)) => {
                return dead(render_reason(&e), e.to_string(), body);
            }
        };

        let message_id = text(plan.id).ok().flatten().map(str::to_string);
        let kind = text(plan.kind).ok().flatten().map(str::to_string);
        let timestamp = text(plan.timestamp)
            .ok()
            .flatten()
            .and_then(pgtext::parse_timestamp)
            .and_then(|s| u64::try_from(s).ok());
        let headers = row
            .iter()
            .zip(&plan.columns)
            .filter(|(_, col)| col.header)
            .filter_map(|(value, col)| Some((col.name.clone(), header_value(value.value()?))))
            .collect();
        Some(Mapped::Publish(EventMessage {
            exchange,
            routing_key,
            body,
            message_id,
            kind,
            content_type: self.content_type.clone(),
            timestamp,
            headers,
        }))
    }

    /// Maps a logical decoding message: `None` unless its prefix is the
    /// configured one. The content is a JSON object whose fields stand for
    /// the outbox columns (the configured names), e.g.
    /// `{"id": "...", "aggregate_type": "order", "aggregate_id": "42",
    /// "event_type": "created", "payload": {"total": 1999}}`; `payload` may be
    /// any JSON value (its JSON text is the body); other string, number or
    /// boolean fields become headers. Without an id, message_id is
    /// `pg-message-<lsn>` (stable across re-sends).
    pub fn logical_message(&self, message: &Message) -> Option<Mapped> {
        if self.message_prefix.is_empty() || message.prefix != self.message_prefix {
            return None;
        }
        let lsn = message.lsn;
        let prefix_header = || {
            vec![(
                "x-relay-message-prefix".to_string(),
                HeaderValue::Text(message.prefix.clone()),
            )]
        };
        let envelope: serde_json::Map<String, serde_json::Value> =
            match serde_json::from_slice(&message.content) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    return Some(self.dead_letter(
                        DeadLetterReason::Undecodable,
                        "logical message content is not a JSON object",
                        lsn,
                        prefix_header(),
                        message.content.clone(),
                    ))
                }
            };
        let field_text = |name: &str| -> Option<String> {
            match envelope.get(name)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            }
        };
        let all_headers = || -> Vec<(String, HeaderValue)> {
            envelope
                .iter()
                .filter(|(k, _)| **k != self.payload_column)
                .filter_map(|(k, _)| Some((k.clone(), HeaderValue::Text(field_text(k)?))))
                .collect()
        };
        let body = match envelope.get(&self.payload_column) {
            None | Some(serde_json::Value::Null) => {
                return Some(self.dead_letter(
                    DeadLetterReason::MissingColumn,
                    &format!("envelope has no {} field", self.payload_column),
                    lsn,
                    all_headers(),
                    message.content.clone(),
                ))
            }
            Some(serde_json::Value::String(s)) if self.content_type != "application/json" => {
                Bytes::from(s.clone().into_bytes())
            }
            Some(v) => Bytes::from(v.to_string().into_bytes()),
        };
        if body.len() > self.max_payload_bytes {
            return Some(self.dead_letter(
                DeadLetterReason::Oversize,
                &format!("payload of {} bytes is over max_payload_bytes", body.len()),
                lsn,
                all_headers(),
                Bytes::new(),
            ));
        }
        let texts: HashMap<&str, Option<String>> = self
            .exchange
            .columns()
            .chain(self.routing_key.columns())
            .map(|c| (c, field_text(c)))
            .collect();
        let lookup = |name: &str| match texts.get(name) {
            Some(Some(t)) => ColumnValue::Text(t.as_str()),
            Some(None) => ColumnValue::Null,
            None => ColumnValue::Missing,
        };
        let (exchange, routing_key) = match (
            self.exchange.render(lookup),
            self.routing_key.render(lookup),
        ) {
            (Ok(x), Ok(k)) => (x, k),
            (Err(e), _) | (_, Err(e)) => {
                return Some(self.dead_letter(
                    render_reason(&e),
                    &e.to_string(),
                    lsn,
                    all_headers(),
                    body,
                ))
            }
        };
        let headers = envelope
            .iter()
            .filter(|(k, _)| {
                if self.header_columns.is_empty() {
                    **k != self.id_column
                        && **k != self.payload_column
                        && **k != self.timestamp_column
                } else {
                    self.header_columns.contains(k)
                }
            })
            .filter_map(|(k, _)| Some((k.clone(), HeaderValue::Text(field_text(k)?))))
            .collect();
        Some(Mapped::Publish(EventMessage {
            exchange,
            routing_key,
            body,
            message_id: Some(
                field_text(&self.id_column).unwrap_or_else(|| format!("pg-message-{lsn}")),
            ),
            kind: field_text(&self.type_column),
            content_type: self.content_type.clone(),
            timestamp: field_text(&self.timestamp_column)
                .as_deref()
                .and_then(pgtext::parse_timestamp)
                .and_then(|s| u64::try_from(s).ok()),
            headers,
        }))
    }

    /// The dead-letter copy of a message the broker returned as unroutable:
    /// same body, properties and headers, to the dead-letter exchange, with
    /// the reason and where it was going.
    pub fn returned(&self, original: &EventMessage, lsn: Lsn, reply_text: &str) -> EventMessage {
        let mut headers = original.headers.clone();
        push_destination(&mut headers, original);
        let mut message = match self.dead_letter(
            DeadLetterReason::Returned,
            &format!("returned by the broker: {reply_text}"),
            lsn,
            headers,
            original.body.clone(),
        ) {
            Mapped::DeadLetter(m, _) | Mapped::Publish(m) => m,
        };
        message.message_id.clone_from(&original.message_id);
        message.kind.clone_from(&original.kind);
        message.timestamp = original.timestamp;
        message.content_type.clone_from(&original.content_type);
        message
    }

    /// The dead-letter copy of a message the broker client refused as it
    /// is (a name, id or type over AMQP's 255 bytes, a body over the
    /// broker's limit): only what surely fits is kept, so that the copy
    /// itself can be published.
    pub fn unpublishable(&self, original: &EventMessage, lsn: Lsn, why: &str) -> EventMessage {
        let fits = |s: &str| s.len() <= crate::template::MAX_SHORT_STRING;
        let mut headers: Vec<(String, HeaderValue)> = original
            .headers
            .iter()
            .filter(|(name, _)| fits(name) && !name.starts_with("x-relay-"))
            .cloned()
            .collect();
        push_destination(&mut headers, original);
        let body = if original.body.len() <= self.max_payload_bytes {
            original.body.clone()
        } else {
            Bytes::new()
        };
        let detail: String = format!("the broker client refused the message: {why}")
            .chars()
            .take(1000)
            .collect();
        let mut message =
            match self.dead_letter(DeadLetterReason::Invalid, &detail, lsn, headers, body) {
                Mapped::DeadLetter(m, _) | Mapped::Publish(m) => m,
            };
        message.message_id = original.message_id.clone().filter(|s| fits(s));
        message.kind = original.kind.clone().filter(|s| fits(s));
        message.timestamp = original.timestamp;
        message
    }

    fn dead_letter(
        &self,
        reason: DeadLetterReason,
        detail: &str,
        lsn: Lsn,
        mut headers: Vec<(String, HeaderValue)>,
        body: Bytes,
    ) -> Mapped {
        headers.push((
            "x-relay-reason".into(),
            HeaderValue::Text(reason.as_str().into()),
        ));
        headers.push((
            "x-relay-detail".into(),
            HeaderValue::Text(detail.to_string()),
        ));
        headers.push(("x-relay-lsn".into(), HeaderValue::Text(lsn.to_string())));
        Mapped::DeadLetter(
            EventMessage {
                exchange: self.dead_letter_exchange.clone(),
                routing_key: reason.as_str().to_string(),
                body,
                message_id: None,
                kind: None,
                content_type: self.content_type.clone(),
                timestamp: None,
                headers,
            },
            reason,
        )
    }

    /// The relation cache's view of a row, for tests and diagnostics.
    pub fn plan(&self, rel: Oid) -> Option<&Plan> {
        self.plans.get(&rel)
    }

    /// Rebuilds the plans from a relation cache (after a restart of the
    /// stream, the server re-sends Relation messages anyway; this is for
    /// callers that keep their own cache).
    pub fn rebuild(&mut self, cache: &RelationCache) {
        self.plans.clear();
        for relation in cache.iter() {
            self.relation(relation);
        }
    }
}

fn header_value(bytes: &Bytes) -> HeaderValue {
    match std::str::from_utf8(bytes) {
        Ok(s) => HeaderValue::Text(s.to_string()),
        Err(_) => HeaderValue::Bytes(bytes.to_vec()),
    }
}

fn render_reason(e: &RenderError) -> DeadLetterReason {
    match e {
        RenderError::Null(_) | RenderError::Missing(_) | RenderError::Empty(_) => {
            DeadLetterReason::Unroutable
        }
        RenderError::TooLong { .. } => DeadLetterReason::Unroutable,
    }
}

/// Records in a dead-letter copy's headers where the original was going.
fn push_destination(headers: &mut Vec<(String, HeaderValue)>, original: &EventMessage) {
    headers.push((
        "x-relay-original-exchange".into(),
        HeaderValue::Text(original.exchange.clone()),
    ));
    headers.push((
        "x-relay-original-routing-key".into(),
        HeaderValue::Text(original.routing_key.clone()),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgoutput::{decode, LogicalMessage};

    /// Encodes a Relation message by hand (the documented format).
    fn relation_bytes(oid: u32, schema: &str, table: &str, cols: &[(&str, u32)]) -> Bytes {
        let mut b = vec![b'R'];
        b.extend_from_slice(&oid.to_be_bytes());
        for s in [schema, table] {
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        }
        b.push(b'd');
        b.extend_from_slice(&u16::try_from(cols.len()).unwrap().to_be_bytes());
        for (name, type_oid) in cols {
            b.push(0);
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&type_oid.to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
        }
        Bytes::from(b)
    }

    /// Encodes an Insert with text values (None = NULL).
    fn insert_bytes(oid: u32, values: &[Option<&[u8]>]) -> Bytes {
        let mut b = vec![b'I'];
        b.extend_from_slice(&oid.to_be_bytes());
        b.push(b'N');
        b.extend_from_slice(&u16::try_from(values.len()).unwrap().to_be_bytes());
        for v in values {
            match v {
                None => b.push(b'n'),
                Some(v) => {
                    b.push(b't');
                    b.extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        Bytes::from(b)
    }

    fn relation(oid: u32, cols: &[(&str, u32)]) -> Relation {
        match decode(relation_bytes(oid, "public", "outbox", cols)).unwrap() {
            LogicalMessage::Relation(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn insert(oid: u32, values: &[Option<&[u8]>]) -> Insert {
        match decode(insert_bytes(oid, values)).unwrap() {
            LogicalMessage::Insert(i) => i,
            other => panic!("{other:?}"),
        }
    }

    const STANDARD: &[(&str, u32)] = &[
        ("id", 2950),
        ("aggregate_type", 25),
        ("aggregate_id", 25),
        ("event_type", 25),
        ("payload", 3802),
        ("created_at", 1184),
    ];

    fn standard_row<'a>(agg: Option<&'a [u8]>, payload: &'a [u8]) -> Vec<Option<&'a [u8]>> {
        vec![
            Some(b"6f1c0a52-58f3-4d3b-9a36-7d3c1c0b9a10"),
            agg,
            Some(b"42"),
            Some(b"created"),
            Some(payload),
            Some(b"2026-11-28 21:04:52.5+00"),
        ]
    }

    fn lsn() -> Lsn {
        "0/16B3748".parse().unwrap()
    }

    #[test]
    fn an_outbox_insert_maps_to_the_documented_message() {
        let mut m = Mapper::new(&Settings::default()).unwrap();
        assert!(m.relation(&relation(16384, STANDARD)));
        let row = standard_row(Some(b"order"), br#"{"total": 1999}"#);
        let Some(Mapped::Publish(msg)) = m.insert(&insert(16384, &row), lsn()) else {
            panic!("not published");
        };
        assert_eq!(msg.exchange, "outbox");
        assert_eq!(msg.routing_key, "order.created");
        assert_eq!(&msg.body[..], br#"{"total": 1999}"#);
        assert_eq!(
            msg.message_id.as_deref(),
            Some("6f1c0a52-58f3-4d3b-9a36-7d3c1c0b9a10")
        );
        assert_eq!(msg.kind.as_deref(), Some("created"));
        assert_eq!(msg.content_type, "application/json");
        assert_eq!(msg.timestamp, Some(1_795_899_892));
        let names: Vec<&str> = msg.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["aggregate_type", "aggregate_id", "event_type"]);
    }

    #[test]
    fn columns_are_found_by_name_after_alter_table_reorders_them() {
        let mut m = Mapper::new(&Settings::default()).unwrap();
        m.relation(&relation(16384, STANDARD));
        // ALTER TABLE: a column added, one dropped; the server re-sends the
        // Relation with the new order before the next row.
        let altered: &[(&str, u32)] = &[
            ("id", 2950),
            ("tenant", 25),
            ("event_type", 25),
            ("aggregate_type", 25),
            ("payload", 3802),
            ("aggregate_id", 25),
        ];
        m.relation(&relation(16384, altered));
        let row: Vec<Option<&[u8]>> = vec![
            Some(b"id-1"),
            Some(b"acme"),
            Some(b"shipped"),
            Some(b"order"),
            Some(b"{}"),
            Some(b"7"),
        ];
        let Some(Mapped::Publish(msg)) = m.insert(&insert(16384, &row), lsn()) else {
            panic!("not published");
        };
        assert_eq!(msg.routing_key, "order.shipped");
        assert_eq!(msg.timestamp, None);
        assert!(msg
            .headers
            .contains(&("tenant".into(), HeaderValue::Text("acme".into()))));
    }

    #[test]
    fn rows_of_other_tables_are_not_outbox_events() {
        let mut m = Mapper::new(&Settings::default()).unwrap();
        let other = match decode(relation_bytes(5, "public", "orders", STANDARD)).unwrap() {
            LogicalMessage::Relation(r) => r,
            _ => unreachable!(),
        };
        assert!(!m.relation(&other));
        let row = standard_row(Some(b"order"), b"{}");
        assert_eq!(m.insert(&insert(5, &row), lsn()), None);
    }

    #[test]
    fn a_null_routing_column_is_dead_lettered_with_the_reason_and_row() {
        let mut m = Mapper::new(&Settings::default()).unwrap();
        m.relation(&relation(1, STANDARD));
        let row = standard_row(None, b"{}");
        let Some(Mapped::DeadLetter(msg, reason)) = m.insert(&insert(1, &row), lsn()) else {
            panic!("not dead-lettered");
        };
        assert_eq!(reason, DeadLetterReason::Unroutable);
        assert_eq!(msg.exchange, "outbox.dead-letter");
        let header = |n: &str| {
            msg.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("x-relay-reason"),
            Some(HeaderValue::Text("unroutable-row".into()))
        );
        assert_eq!(
            header("x-relay-lsn"),
            Some(HeaderValue::Text("0/16B3748".into()))
        );
        assert_eq!(
            header("x-relay-detail"),
            Some(HeaderValue::Text("column aggregate_type is NULL".into()))
        );
        assert_eq!(
            header("id"),
            Some(HeaderValue::Text(
                "6f1c0a52-58f3-4d3b-9a36-7d3c1c0b9a10".into()
            ))
        );
        assert_eq!(&msg.body[..], b"{}");
    }

    #[test]
    fn oversize_payloads_are_dead_lettered_without_their_body() {
        let settings = Settings {
            max_payload_bytes: 10,
            ..Settings::default()
        };
        let mut m = Mapper::new(&settings).unwrap();
        m.relation(&relation(1, STANDARD));
        let row = standard_row(Some(b"order"), br#"{"big": "0123456789"}"#);
        let Some(Mapped::DeadLetter(msg, DeadLetterReason::Oversize)) =
            m.insert(&insert(1, &row), lsn())
        else {
            panic!("not dead-lettered as oversize");
        };
        assert!(msg.body.is_empty());
        assert!(msg
            .headers
            .contains(&("x-relay-payload-size".into(), HeaderValue::Int(21))));
    }

    #[test]
    fn bytea_payloads_pass_raw_bytes_and_bad_hex_is_undecodable() {
        let cols: &[(&str, u32)] = &[
            ("id", 25),
            ("aggregate_type", 25),
            ("event_type", 25),
            ("payload", 17),
        ];
        let mut m = Mapper::new(&Settings {
            content_type: "application/octet-stream".into(),
            ..Settings::default()
        })
        .unwrap();
        m.relation(&relation(1, cols));
        let row: Vec<Option<&[u8]>> =
            vec![Some(b"1"), Some(b"blob"), Some(b"put"), Some(b"\\x00ff10")];
        let Some(Mapped::Publish(msg)) = m.insert(&insert(1, &row), lsn()) else {
            panic!("not published");
        };
        assert_eq!(&msg.body[..], &[0x00, 0xff, 0x10]);
        assert_eq!(msg.content_type, "application/octet-stream");
        let bad: Vec<Option<&[u8]>> = vec![Some(b"1"), Some(b"blob"), Some(b"put"), Some(b"\\x0")];
        assert!(matches!(
            m.insert(&insert(1, &bad), lsn()),
            Some(Mapped::DeadLetter(_, DeadLetterReason::Undecodable))
        ));
    }

    #[test]
    fn debezium_style_table_maps_by_configuration_alone() {
        let settings = Settings {
            id_column: "id".into(),
            payload_column: "payload".into(),
            type_column: "type".into(),
            timestamp_column: String::new(),
            routing_key: "{aggregatetype}.{type}".into(),
            ..Settings::default()
        };
        let cols: &[(&str, u32)] = &[
            ("id", 2950),
            ("aggregatetype", 1043),
            ("aggregateid", 1043),
            ("type", 1043),
            ("payload", 3802),
        ];
        let mut m = Mapper::new(&settings).unwrap();
        m.relation(&relation(9, cols));
        let row: Vec<Option<&[u8]>> = vec![
            Some(b"u-1"),
            Some(b"Order"),
            Some(b"123"),
            Some(b"OrderCreated"),
            Some(b"{\"a\": 1}"),
        ];
        let Some(Mapped::Publish(msg)) = m.insert(&insert(9, &row), lsn()) else {
            panic!("not published");
        };
        assert_eq!(msg.routing_key, "Order.OrderCreated");
        assert_eq!(msg.kind.as_deref(), Some("OrderCreated"));
        let names: Vec<&str> = msg.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["aggregatetype", "aggregateid", "type"]);
    }

    fn logical(prefix: &str, content: &str) -> Message {
        Message {
            xid: None,
            transactional: true,
            lsn: lsn(),
            prefix: prefix.into(),
            content: Bytes::from(content.to_string()),
        }
    }

    #[test]
    fn emit_message_envelopes_are_events_too() {
        let m = Mapper::new(&Settings::default()).unwrap();
        let msg = logical(
            "outbox",
            r#"{"id": "e-1", "aggregate_type": "order", "aggregate_id": "42",
                "event_type": "created", "payload": {"total": 5}, "tenant": "acme"}"#,
        );
        let Some(Mapped::Publish(out)) = m.logical_message(&msg) else {
            panic!("not published");
        };
        assert_eq!(out.routing_key, "order.created");
        assert_eq!(&out.body[..], br#"{"total":5}"#);
        assert_eq!(out.message_id.as_deref(), Some("e-1"));
        assert!(out
            .headers
            .contains(&("tenant".into(), HeaderValue::Text("acme".into()))));
        // Other prefixes are not ours.
        assert_eq!(m.logical_message(&logical("audit", "{}")), None);
        // Without an id, the LSN names the event, stably.
        let Some(Mapped::Publish(out)) = m.logical_message(&logical(
            "outbox",
            r#"{"aggregate_type": "a", "event_type": "b", "payload": 1}"#,
        )) else {
            panic!("not published");
        };
        assert_eq!(out.message_id.as_deref(), Some("pg-message-0/16B3748"));
        // Not JSON: dead-lettered, with the content as body.
        assert!(matches!(
            m.logical_message(&logical("outbox", "not json")),
            Some(Mapped::DeadLetter(_, DeadLetterReason::Undecodable))
        ));
        assert!(matches!(
            m.logical_message(&logical("outbox", r#"{"event_type": "b", "payload": 1}"#)),
            Some(Mapped::DeadLetter(_, DeadLetterReason::Unroutable))
        ));
    }

    #[test]
    fn a_message_the_client_refuses_gets_a_copy_that_fits() {
        let m = Mapper::new(&Settings::default()).unwrap();
        let long = "k".repeat(300);
        let original = EventMessage {
            exchange: "outbox".into(),
            routing_key: "order.created".into(),
            body: Bytes::from_static(b"{}"),
            message_id: Some(long.clone()),
            kind: Some("created".into()),
            content_type: "application/json".into(),
            timestamp: Some(1),
            headers: vec![
                (long.clone(), HeaderValue::Text("v".into())),
                ("tenant".into(), HeaderValue::Text("acme".into())),
            ],
        };
        let copy = m.unpublishable(&original, lsn(), "header name too long");
        assert_eq!(copy.exchange, "outbox.dead-letter");
        assert_eq!(copy.message_id, None);
        assert_eq!(copy.kind.as_deref(), Some("created"));
        assert!(copy.headers.iter().all(|(n, _)| n.len() <= 255));
        assert!(copy
            .headers
            .contains(&("tenant".into(), HeaderValue::Text("acme".into()))));
        assert!(copy.headers.contains(&(
            "x-relay-reason".into(),
            HeaderValue::Text("invalid-message".into())
        )));
        assert_eq!(&copy.body[..], b"{}");
    }

    #[test]
    fn returned_messages_keep_their_identity_on_the_dead_letter_copy() {
        let mut m = Mapper::new(&Settings::default()).unwrap();
        m.relation(&relation(1, STANDARD));
        let row = standard_row(Some(b"order"), b"{}");
        let Some(Mapped::Publish(msg)) = m.insert(&insert(1, &row), lsn()) else {
            panic!();
        };
        let copy = m.returned(&msg, lsn(), "NO_ROUTE");
        assert_eq!(copy.exchange, "outbox.dead-letter");
        assert_eq!(copy.message_id, msg.message_id);
        assert!(copy.headers.contains(&(
            "x-relay-original-routing-key".into(),
            HeaderValue::Text("order.created".into())
        )));
        assert!(copy.headers.contains(&(
            "x-relay-reason".into(),
            HeaderValue::Text("unroutable".into())
        )));
    }
}
