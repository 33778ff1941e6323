//! The outbox row -> message mapping: the message contract of
//! docs/ARCHITECTURE.md, and every rule that keeps a message within what the
//! broker accepts (invariants 7 and 8).
//!
//! Pure code. For each Relation message of the outbox table the mapper
//! builds a [`Plan`] (which position holds which column, by name, so ALTER
//! TABLE that adds, drops or reorders columns is followed), and maps each
//! Insert through it: exchange and routing key from templates, body = the
//! payload column's value (json/jsonb/text as text, bytea as raw bytes),
//! message_id = id, type = event type, timestamp = created_at, headers =
//! every other column (or the configured ones).
//!
//! A row that cannot be published as configured is never dropped: it maps
//! to a [`Mapped::DeadLetter`] with a [`DeadLetterReason`], the LSN and the
//! row. Every message built here, dead-letter copies included, fits the
//! sink's [`Limits`]: names of at most 255 bytes without control
//! characters, a body of at most max_payload_bytes, and properties plus
//! headers within one broker frame. A dead-letter copy never carries the
//! payload as a header; one whose headers would not fit is reduced to the
//! reason, the detail, the LSN and the id.
//!
//! `pg_logical_emit_message` with the configured prefix is a second, opt-in
//! source: its content is a JSON envelope whose fields stand for the outbox
//! columns (see [`Mapper::logical_message`]).

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use pgoutput::{Column, Insert, Lsn, Message, Oid, Relation, RelationCache};

use crate::names::TableName;
use crate::pgtext;
use crate::template::{ColumnValue, RenderError, Template, MAX_SHORT_STRING};

/// Type Oids the mapping reads specially.
const BYTEA_OID: u32 = 17;

/// The longest `x-relay-detail` text, in characters.
const MAX_DETAIL_CHARS: usize = 500;

/// A header value.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    /// Text (most columns, in PostgreSQL's text output format).
    Text(String),
    /// An integer (x-relay-payload-size, a JSON integer).
    Int(i64),
    /// Raw bytes (a column that is not valid UTF-8).
    Bytes(Vec<u8>),
    /// A boolean (from the headers column's JSON).
    Bool(bool),
    /// A float (a JSON number that is not an integer).
    Float(f64),
    /// A nested table (a JSON object).
    Table(Vec<(String, HeaderValue)>),
    /// An array (a JSON array).
    Array(Vec<HeaderValue>),
}

impl HeaderValue {
    /// The value's length in bytes (an integer counts 8).
    pub fn len(&self) -> usize {
        match self {
            HeaderValue::Text(s) => s.len(),
            HeaderValue::Int(_) | HeaderValue::Float(_) => 8,
            HeaderValue::Bytes(b) => b.len(),
            HeaderValue::Bool(_) => 1,
            HeaderValue::Table(entries) => entries.iter().map(|(n, v)| n.len() + v.len()).sum(),
            HeaderValue::Array(values) => values.iter().map(HeaderValue::len).sum(),
        }
    }

    /// Whether the value is empty text or bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// AMQP properties taken from columns (see [`PropertyColumns`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `expiration`: milliseconds, decimal digits.
    pub expiration: Option<String>,
    /// `priority`.
    pub priority: Option<u8>,
    /// `app_id` (else the relay's own).
    pub app_id: Option<String>,
    /// `content_encoding`.
    pub content_encoding: Option<String>,
}

/// The columns that AMQP properties and extra headers come from ("" for
/// none). Such a column is not also sent as a header of its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyColumns {
    /// `correlation_id`.
    pub correlation_id: String,
    /// `reply_to`.
    pub reply_to: String,
    /// `expiration`, milliseconds.
    pub expiration: String,
    /// `priority`, 0 to 255.
    pub priority: String,
    /// `app_id`.
    pub app_id: String,
    /// `content_encoding`.
    pub content_encoding: String,
    /// A jsonb column whose object is merged into the headers.
    pub headers: String,
}

impl PropertyColumns {
    fn names(&self) -> [&str; 7] {
        [
            &self.correlation_id,
            &self.reply_to,
            &self.expiration,
            &self.priority,
            &self.app_id,
            &self.content_encoding,
            &self.headers,
        ]
    }

    /// Whether `column` feeds a property or the merged headers.
    pub fn contains(&self, column: &str) -> bool {
        !column.is_empty() && self.names().contains(&column)
    }
}

/// The properties of a row from its columns' text (`value` looks a column
/// up by name), and the headers its headers column adds; or why a value
/// cannot be what it should (the row is dead-lettered with it).
pub fn properties_of(
    columns: &PropertyColumns,
    value: impl Fn(&str) -> Option<String>,
) -> Result<(Properties, Vec<(String, HeaderValue)>), String> {
    let get = |column: &str| {
        if column.is_empty() {
            None
        } else {
            value(column)
        }
    };
    let short = |column: &str, what: &str| -> Result<Option<String>, String> {
        match get(column) {
            Some(v) if v.len() > MAX_SHORT_STRING => Err(format!(
                "column {column} holds {} bytes; AMQP's {what} holds at most 255",
                v.len()
            )),
            Some(v) => Ok(Some(v)),
            None => Ok(None),
        }
    };
    let expiration = match get(&columns.expiration) {
        Some(v) if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) => {
            match v.parse::<u32>() {
                Ok(ms) => Some(ms.to_string()),
                Err(_) => {
                    return Err(format!(
                        "column {} holds expiration {v:?}: milliseconds up to 4294967295",
                        columns.expiration
                    ))
                }
            }
        }
        Some(v) => {
            return Err(format!(
                "column {} holds expiration {:?}: a number of milliseconds (0 or more) is needed",
                columns.expiration,
                shown(&v, 40)
            ))
        }
        None => None,
    };
    let priority = match get(&columns.priority) {
        Some(v) => match v.trim().parse::<u8>() {
            Ok(p) => Some(p),
            Err(_) => {
                return Err(format!(
                    "column {} holds priority {:?}: 0 to 255 is needed",
                    columns.priority,
                    shown(&v, 40)
                ))
            }
        },
        None => None,
    };
    let properties = Properties {
        correlation_id: short(&columns.correlation_id, "correlation_id")?,
        reply_to: short(&columns.reply_to, "reply_to")?,
        expiration,
        priority,
        app_id: short(&columns.app_id, "app_id")?,
        content_encoding: short(&columns.content_encoding, "content_encoding")?,
    };
    let headers = match get(&columns.headers) {
        None => Vec::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(map)) => json_table(map, &columns.headers)?,
            Ok(_) => {
                return Err(format!(
                    "column {} is not a JSON object: its fields become headers",
                    columns.headers
                ))
            }
            Err(e) => return Err(format!("column {} is not JSON: {e}", columns.headers)),
        },
    };
    Ok((properties, headers))
}

/// A JSON object as headers: strings as text, integers as 64-bit
/// integers, other numbers as floats, booleans, objects as nested tables,
/// arrays as arrays; null fields are left out.
fn json_table(
    map: serde_json::Map<String, serde_json::Value>,
    column: &str,
) -> Result<Vec<(String, HeaderValue)>, String> {
    let mut out = Vec::new();
    for (name, value) in map {
        if name.len() > MAX_SHORT_STRING {
            return Err(format!(
                "column {column} has a field name of {} bytes; a header name holds at most 255",
                name.len()
            ));
        }
        if let Some(v) = json_value(value, column)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

fn json_value(value: serde_json::Value, column: &str) -> Result<Option<HeaderValue>, String> {
    use serde_json::Value;
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Bool(b) => HeaderValue::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => HeaderValue::Int(i),
            None => HeaderValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => HeaderValue::Text(s),
        Value::Array(values) => HeaderValue::Array(
            values
                .into_iter()
                .filter_map(|v| json_value(v, column).transpose())
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => HeaderValue::Table(json_table(map, column)?),
    }))
}

/// A message ready for the sink.
#[derive(Debug, Clone, PartialEq)]
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
    /// Properties from columns.
    pub properties: Properties,
}

/// What every message must fit, as the sink sees it (see
/// `crate::sink`): the mapping checks each message against it before
/// the sink ever sees the message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest body (max_payload_bytes).
    pub max_body: usize,
    /// How many bytes of properties and headers one message may carry.
    pub max_properties: usize,
    /// A message's properties and headers as the sink encodes them.
    pub properties_len: fn(&EventMessage) -> usize,
}

impl Limits {
    /// Whether `message`'s properties and headers fit.
    pub fn properties_fit(&self, message: &EventMessage) -> bool {
        (self.properties_len)(message) <= self.max_properties
    }

    /// Checks everything a message must fit: names of at most 255 bytes
    /// without control characters, an id and type of at most 255 bytes, a
    /// body within max_body, properties and headers within one frame.
    pub fn check(&self, message: &EventMessage) -> Result<(), String> {
        for (what, name) in [
            ("exchange", &message.exchange),
            ("routing key", &message.routing_key),
        ] {
            if name.len() > MAX_SHORT_STRING || name.chars().any(char::is_control) {
                return Err(format!("{what} {name:?} is not a valid AMQP name"));
            }
        }
        for value in [&message.message_id, &message.kind].into_iter().flatten() {
            if value.len() > MAX_SHORT_STRING {
                return Err(format!("a property of {} bytes", value.len()));
            }
        }
        if let Some((name, _)) = message
            .headers
            .iter()
            .find(|(n, _)| n.len() > MAX_SHORT_STRING)
        {
            return Err(format!("a header name of {} bytes", name.len()));
        }
        if message.body.len() > self.max_body {
            return Err(format!("a body of {} bytes", message.body.len()));
        }
        if !self.properties_fit(message) {
            return Err(format!(
                "{} bytes of properties and headers",
                (self.properties_len)(message)
            ));
        }
        Ok(())
    }
}

/// Why a row goes to the dead-letter exchange: the `x-relay-reason` header
/// and the `reason` label of `outbox_relay_events_dead_lettered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// A routing column is NULL or missing, or a template rendered empty.
    UnroutableRow,
    /// The payload is larger than max_payload_bytes.
    Oversize,
    /// A value could not be decoded (bad bytea, invalid UTF-8 in a routing
    /// column, an envelope that is not a JSON object).
    Undecodable,
    /// The payload column is NULL or missing.
    MissingColumn,
    /// The row's headers do not fit one broker frame.
    HeadersTooLarge,
    /// The exchange or routing key is longer than 255 bytes or holds a
    /// control character.
    InvalidName,
    /// The id or type is longer than AMQP's 255 bytes.
    InvalidProperty,
    /// The broker returned the message: no queue is bound for its routing
    /// key (on_unroutable = dead-letter).
    NoRoute,
    /// The broker closed the channel because the exchange does not exist,
    /// every time the row was published.
    NoExchange,
    /// The broker refused the message (closed the channel or connection
    /// over it), every time it was published.
    RejectedByBroker,
    /// The broker client refused the message as it was (a limit the
    /// mapping did not foresee).
    RefusedByClient,
}

impl DeadLetterReason {
    /// Every reason, for metrics that start at 0 and for the docs.
    pub const ALL: [DeadLetterReason; 11] = [
        DeadLetterReason::UnroutableRow,
        DeadLetterReason::Oversize,
        DeadLetterReason::Undecodable,
        DeadLetterReason::MissingColumn,
        DeadLetterReason::HeadersTooLarge,
        DeadLetterReason::InvalidName,
        DeadLetterReason::InvalidProperty,
        DeadLetterReason::NoRoute,
        DeadLetterReason::NoExchange,
        DeadLetterReason::RejectedByBroker,
        DeadLetterReason::RefusedByClient,
    ];

    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::UnroutableRow => "unroutable_row",
            DeadLetterReason::Oversize => "oversize",
            DeadLetterReason::Undecodable => "undecodable",
            DeadLetterReason::MissingColumn => "missing_column",
            DeadLetterReason::HeadersTooLarge => "headers_too_large",
            DeadLetterReason::InvalidName => "invalid_name",
            DeadLetterReason::InvalidProperty => "invalid_property",
            DeadLetterReason::NoRoute => "no_route",
            DeadLetterReason::NoExchange => "no_exchange",
            DeadLetterReason::RejectedByBroker => "rejected_by_broker",
            DeadLetterReason::RefusedByClient => "refused_by_client",
        }
    }
}

/// The result of mapping one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Publish this.
    Publish(EventMessage),
    /// Publish this to the dead-letter exchange instead (it already carries
    /// the dead-letter exchange, the reason and the row).
    DeadLetter(EventMessage, DeadLetterReason),
}

/// The mapping's settings, parsed (see `crate::config`): one mapping per
/// outbox table, and what every table shares.
#[derive(Debug, Clone)]
pub struct MappingConfig {
    /// The outbox tables, each with its mapping; at least one. The first
    /// one's mapping also reads pg_logical_emit_message envelopes.
    pub tables: Vec<TableMapping>,
    /// The prefix of pg_logical_emit_message events ("" = none).
    pub message_prefix: String,
    /// Where rows that cannot be published go.
    pub dead_letter_exchange: String,
}

impl MappingConfig {
    /// The first table's mapping (the only one, unless `[[table]]` lists
    /// several).
    pub fn first(&self) -> &TableMapping {
        // Settings::parse never builds a mapping without a table.
        &self.tables[0]
    }

    /// The outbox tables' names.
    pub fn table_names(&self) -> impl Iterator<Item = &TableName> {
        self.tables.iter().map(|t| &t.table)
    }
}

/// One outbox table and how its rows become messages.
#[derive(Debug, Clone)]
pub struct TableMapping {
    /// The outbox table.
    pub table: TableName,
    /// The exchange template.
    pub exchange: Template,
    /// The routing key template.
    pub routing_key: Template,
    /// Column holding the event id.
    pub id_column: String,
    /// Column holding the payload.
    pub payload_column: String,
    /// Column holding the event type ("" for none).
    pub type_column: String,
    /// Column holding the creation time ("" for none).
    pub timestamp_column: String,
    /// Columns sent as headers; empty = every column but id, payload and
    /// timestamp.
    pub header_columns: Vec<String>,
    /// The messages' content_type.
    pub content_type: String,
    /// The CloudEvents attributes to add, if asked for.
    pub cloudevents: Option<crate::enrich::CloudEvents>,
    /// The columns of AMQP properties and merged headers.
    pub property_columns: PropertyColumns,
}

/// What the mapper knows of the outbox table's current shape: each
/// column, and the positions of the columns the mapping reads (looked up
/// once per Relation message, not per row).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which of the configured tables (an index into
    /// [`MappingConfig::tables`]).
    table: usize,
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

/// A dead-letter copy being built: the reason, the detail, where the row
/// was, and what of it the copy carries if it fits.
struct DeadLetter<'a> {
    reason: DeadLetterReason,
    detail: String,
    lsn: Lsn,
    headers: Vec<(String, HeaderValue)>,
    body: Bytes,
    id: Option<&'a str>,
    kind: Option<&'a str>,
    timestamp: Option<u64>,
    content_type: &'a str,
}

/// Maps outbox rows and envelope messages to broker messages.
#[derive(Debug, Clone)]
pub struct Mapper {
    config: MappingConfig,
    limits: Limits,
    constant_exchanges: Vec<String>,
    plans: HashMap<Oid, Plan>,
}

impl Mapper {
    /// A mapper for these settings and the sink's limits.
    pub fn new(config: MappingConfig, limits: Limits) -> Mapper {
        let mut constant_exchanges: Vec<String> = config
            .tables
            .iter()
            .filter_map(|t| t.exchange.as_constant())
            .collect();
        constant_exchanges.sort();
        constant_exchanges.dedup();
        Mapper {
            constant_exchanges,
            config,
            limits,
            plans: HashMap::new(),
        }
    }

    /// Whether `exchange` is a table's configured exchange (not the
    /// rendering of a per-row template): a fault there is the setup's, not
    /// a row's.
    pub fn is_constant_exchange(&self, exchange: &str) -> bool {
        self.constant_exchanges.iter().any(|x| x == exchange)
    }

    /// Which configured table a relation is (an index into
    /// [`MappingConfig::tables`]), as far as the Relation messages seen so
    /// far tell.
    pub fn table_of(&self, rel: Oid) -> Option<usize> {
        self.plans.get(&rel).map(|p| p.table)
    }

    /// The sink's limits the mapper keeps to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Reads a Relation message: if it is an outbox table, (re)builds its
    /// plan and returns true. Call it for every Relation, in stream order.
    pub fn relation(&mut self, relation: &Relation) -> bool {
        let Some((table, c)) = self
            .config
            .tables
            .iter()
            .enumerate()
            .find(|(_, t)| relation.is(&t.table.schema, &t.table.name))
        else {
            self.plans.remove(&relation.oid);
            return false;
        };
        let columns: Vec<PlanColumn> = relation
            .columns
            .iter()
            .map(|col| PlanColumn {
                name: col.name.clone(),
                type_oid: col.type_oid,
                header: !c.property_columns.contains(&col.name)
                    && if c.header_columns.is_empty() {
                        col.name != c.id_column
                            && col.name != c.payload_column
                            && col.name != c.timestamp_column
                    } else {
                        c.header_columns.contains(&col.name)
                    },
            })
            .collect();
        let index: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, col)| (col.name.clone(), i))
            .collect();
        let routing = c
            .exchange
            .columns()
            .chain(c.routing_key.columns())
            .map(|name| (name.to_string(), index.get(name).copied()))
            .collect();
        let at = |name: &str| {
            if name.is_empty() {
                None
            } else {
                index.get(name).copied()
            }
        };
        let plan = Plan {
            table,
            payload: at(&c.payload_column),
            id: at(&c.id_column),
            kind: at(&c.type_column),
            timestamp: at(&c.timestamp_column),
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
        let c = self.config.tables.get(plan.table)?;
        // The row's columns, parsed once (each is a slice of the message).
        let row: Vec<Column> = insert.tuple.iter().collect();
        let text = |at: Option<usize>| -> Result<Option<&str>, ()> {
            match at.and_then(|i| row.get(i)) {
                Some(Column::Text(b)) => std::str::from_utf8(b).map(Some).map_err(|_| ()),
                Some(Column::Binary(_)) => Err(()),
                _ => Ok(None),
            }
        };
        let id = text(plan.id).ok().flatten();
        let kind = text(plan.kind).ok().flatten();
        let timestamp = text(plan.timestamp)
            .ok()
            .flatten()
            .and_then(pgtext::parse_timestamp)
            .and_then(|s| u64::try_from(s).ok());
        // Every column but the payload: what a dead-letter copy carries
        // (if it fits).
        let row_headers = || -> Vec<(String, HeaderValue)> {
            row.iter()
                .zip(&plan.columns)
                .enumerate()
                .filter(|(i, _)| Some(*i) != plan.payload)
                .filter_map(|(_, (value, col))| {
                    Some((col.name.clone(), header_value(value.value()?)))
                })
                .collect()
        };
        let dead = |reason: DeadLetterReason, detail: String, body: Bytes| {
            Mapped::DeadLetter(
                self.dead_letter(DeadLetter {
                    reason,
                    detail,
                    lsn,
                    headers: row_headers(),
                    body,
                    id,
                    kind,
                    timestamp,
                    content_type: &c.content_type,
                }),
                reason,
            )
        };

        // The payload: required, within the limit (checked before any copy),
        // decodable.
        let payload = plan
            .payload
            .and_then(|i| row.get(i).map(|v| (v, plan.columns.get(i))));
        let body = match payload {
            Some((Column::Text(b), Some(col))) if col.type_oid.0 == BYTEA_OID => {
                let size = b.len().saturating_sub(2) / 2;
                if size > self.limits.max_body {
                    return Some(self.oversize(dead, size));
                }
                match pgtext::decode_bytea_hex(b) {
                    Some(raw) => Bytes::from(raw),
                    None => {
                        return Some(dead(
                            DeadLetterReason::Undecodable,
                            format!("bytea column {} is not in hex format", c.payload_column),
                            Bytes::new(),
                        ))
                    }
                }
            }
            // A copy of the value, not a slice: a slice would keep the whole
            // read buffer it came from alive while the message is in flight,
            // and the window counts only the body.
            Some((Column::Text(b) | Column::Binary(b), _)) => {
                if b.len() > self.limits.max_body {
                    return Some(self.oversize(dead, b.len()));
                }
                Bytes::copy_from_slice(b)
            }
            _ => {
                return Some(dead(
                    DeadLetterReason::MissingColumn,
                    format!("payload column {} is NULL or missing", c.payload_column),
                    Bytes::new(),
                ))
            }
        };

        // Routing: the template columns' values, read once.
        let mut values: Vec<(&str, Option<usize>, Option<&str>)> =
            Vec::with_capacity(plan.routing.len());
        for (name, at) in &plan.routing {
            match text(*at) {
                Ok(value) => values.push((name, *at, value)),
                Err(()) => {
                    return Some(dead(
                        DeadLetterReason::Undecodable,
                        format!("routing column {name} is not valid UTF-8 text"),
                        body,
                    ))
                }
            }
        }
        let lookup = |name: &str| match values.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, Some(t))) => ColumnValue::Text(t),
            Some((_, Some(_), None)) => ColumnValue::Null,
            _ => ColumnValue::Missing,
        };
        let (exchange, routing_key) =
            match (c.exchange.render(lookup), c.routing_key.render(lookup)) {
                (Ok(x), Ok(k)) => (x, k),
                (Err(e), _) | (_, Err(e)) => {
                    return Some(dead(render_reason(&e), e.to_string(), body))
                }
            };
        if let Some(detail) = property_problem(c, id, kind) {
            return Some(dead(DeadLetterReason::InvalidProperty, detail, body));
        }
        let mut headers: Vec<(String, HeaderValue)> = row
            .iter()
            .zip(&plan.columns)
            .filter(|(_, col)| col.header)
            .filter_map(|(value, col)| Some((col.name.clone(), header_value(value.value()?))))
            .collect();
        let column_text = |name: &str| -> Option<String> {
            let at = plan.columns.iter().position(|col| col.name == name);
            text(at).ok().flatten().map(str::to_string)
        };
        let (properties, merged) = match properties_of(&c.property_columns, column_text) {
            Ok(found) => found,
            Err(detail) => return Some(dead(DeadLetterReason::InvalidProperty, detail, body)),
        };
        headers.extend(merged);
        crate::enrich::trace_context(&mut headers);
        if let Some(ce) = &c.cloudevents {
            let at = plan
                .columns
                .iter()
                .position(|col| col.name == ce.subject_column);
            let subject = text(at).ok().flatten();
            headers.extend(crate::enrich::cloudevents_headers(
                ce,
                id.map_or_else(|| lsn.to_string(), str::to_string).as_str(),
                kind.unwrap_or(&routing_key),
                timestamp,
                subject,
            ));
        }
        let message = EventMessage {
            exchange,
            routing_key,
            body,
            message_id: id.map(str::to_string),
            kind: kind.map(str::to_string),
            content_type: c.content_type.clone(),
            timestamp,
            headers,
            properties,
        };
        if !self.limits.properties_fit(&message) {
            let detail = self.headers_detail(&message);
            return Some(dead(
                DeadLetterReason::HeadersTooLarge,
                detail,
                message.body,
            ));
        }
        Some(Mapped::Publish(message))
    }

    /// The dead letter of a payload over the limit: no body, its size in
    /// a header.
    fn oversize(
        &self,
        dead: impl Fn(DeadLetterReason, String, Bytes) -> Mapped,
        size: usize,
    ) -> Mapped {
        let mut mapped = dead(
            DeadLetterReason::Oversize,
            format!(
                "payload of {size} bytes is over max_payload_bytes ({})",
                self.limits.max_body
            ),
            Bytes::new(),
        );
        if let Mapped::DeadLetter(message, _) = &mut mapped {
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            message
                .headers
                .push(("x-relay-payload-size".into(), HeaderValue::Int(size)));
        }
        mapped
    }

    /// Says which headers made a message too large.
    fn headers_detail(&self, message: &EventMessage) -> String {
        let mut largest: Vec<(&str, usize)> = message
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.len()))
            .collect();
        largest.sort_by_key(|b| std::cmp::Reverse(b.1));
        let mut detail = format!(
            "properties and headers take {} bytes; one broker frame holds {} (largest:",
            (self.limits.properties_len)(message),
            self.limits.max_properties
        );
        for (name, len) in largest.iter().take(3) {
            let _ = write!(detail, " {name} {len} bytes,");
        }
        detail.pop();
        detail.push(')');
        detail
    }

    /// Maps a logical decoding message: `None` unless its prefix is the
    /// configured one (none by default: any role may call
    /// pg_logical_emit_message). The content is a JSON object whose fields
    /// stand for the outbox columns (the configured names), e.g.
    /// `{"id": "...", "aggregate_type": "order", "aggregate_id": "42",
    /// "event_type": "created", "payload": {"total": 1999}}`; `payload` may be
    /// any JSON value (its JSON text is the body); other string, number or
    /// boolean fields become headers. Without an id, message_id is
    /// `pg-message-<lsn>` (stable across re-sends). Content larger than
    /// max_payload_bytes plus one frame is dead-lettered unparsed.
    pub fn logical_message(&self, message: &Message) -> Option<Mapped> {
        let prefix = &self.config.message_prefix;
        if prefix.is_empty() || message.prefix != *prefix {
            return None;
        }
        let c = self.config.tables.first()?;
        let lsn = message.lsn;
        let prefix_header = || {
            vec![(
                "x-relay-message-prefix".to_string(),
                HeaderValue::Text(message.prefix.clone()),
            )]
        };
        let dead = |reason: DeadLetterReason,
                    detail: String,
                    headers: Vec<(String, HeaderValue)>,
                    body: Bytes| {
            Mapped::DeadLetter(
                self.dead_letter(DeadLetter {
                    reason,
                    detail,
                    lsn,
                    headers,
                    body,
                    id: None,
                    kind: None,
                    timestamp: None,
                    content_type: &c.content_type,
                }),
                reason,
            )
        };
        let cap = self
            .limits
            .max_body
            .saturating_add(self.limits.max_properties);
        if message.content.len() > cap {
            return Some(dead(
                DeadLetterReason::Oversize,
                format!(
                    "logical message of {} bytes is over max_payload_bytes ({}) plus one frame \
                     of metadata; not parsed",
                    message.content.len(),
                    self.limits.max_body
                ),
                prefix_header(),
                Bytes::new(),
            ));
        }
        let envelope: serde_json::Map<String, serde_json::Value> =
            match serde_json::from_slice(&message.content) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    let body = if message.content.len() <= self.limits.max_body {
                        message.content.clone()
                    } else {
                        Bytes::new()
                    };
                    return Some(dead(
                        DeadLetterReason::Undecodable,
                        "logical message content is not a JSON object".into(),
                        prefix_header(),
                        body,
                    ));
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
                .filter(|(k, _)| **k != c.payload_column)
                .filter_map(|(k, _)| Some((k.clone(), HeaderValue::Text(field_text(k)?))))
                .collect()
        };
        let body = match envelope.get(&c.payload_column) {
            None | Some(serde_json::Value::Null) => {
                return Some(dead(
                    DeadLetterReason::MissingColumn,
                    format!("envelope has no {} field", c.payload_column),
                    all_headers(),
                    Bytes::new(),
                ))
            }
            Some(serde_json::Value::String(s)) if c.content_type != "application/json" => {
                Bytes::from(s.clone().into_bytes())
            }
            Some(v) => Bytes::from(v.to_string().into_bytes()),
        };
        if body.len() > self.limits.max_body {
            return Some(dead(
                DeadLetterReason::Oversize,
                format!(
                    "payload of {} bytes is over max_payload_bytes ({})",
                    body.len(),
                    self.limits.max_body
                ),
                all_headers(),
                Bytes::new(),
            ));
        }
        let texts: HashMap<&str, Option<String>> = c
            .exchange
            .columns()
            .chain(c.routing_key.columns())
            .map(|col| (col, field_text(col)))
            .collect();
        let lookup = |name: &str| match texts.get(name) {
            Some(Some(t)) => ColumnValue::Text(t.as_str()),
            Some(None) => ColumnValue::Null,
            None => ColumnValue::Missing,
        };
        let (exchange, routing_key) =
            match (c.exchange.render(lookup), c.routing_key.render(lookup)) {
                (Ok(x), Ok(k)) => (x, k),
                (Err(e), _) | (_, Err(e)) => {
                    return Some(dead(render_reason(&e), e.to_string(), all_headers(), body))
                }
            };
        let id = field_text(&c.id_column);
        let kind = field_text(&c.type_column);
        if let Some(detail) = property_problem(c, id.as_deref(), kind.as_deref()) {
            return Some(dead(
                DeadLetterReason::InvalidProperty,
                detail,
                all_headers(),
                body,
            ));
        }
        let mut headers: Vec<(String, HeaderValue)> = envelope
            .iter()
            .filter(|(k, _)| {
                if c.header_columns.is_empty() {
                    **k != c.id_column && **k != c.payload_column && **k != c.timestamp_column
                } else {
                    c.header_columns.contains(k)
                }
            })
            .filter(|(k, _)| !c.property_columns.contains(k))
            .filter_map(|(k, _)| Some((k.clone(), HeaderValue::Text(field_text(k)?))))
            .collect();
        let (properties, merged) = match properties_of(&c.property_columns, field_text) {
            Ok(found) => found,
            Err(detail) => {
                return Some(dead(
                    DeadLetterReason::InvalidProperty,
                    detail,
                    all_headers(),
                    body,
                ))
            }
        };
        headers.extend(merged);
        crate::enrich::trace_context(&mut headers);
        let message_id = id.unwrap_or_else(|| format!("pg-message-{lsn}"));
        let timestamp = field_text(&c.timestamp_column)
            .as_deref()
            .and_then(pgtext::parse_timestamp)
            .and_then(|s| u64::try_from(s).ok());
        if let Some(ce) = &c.cloudevents {
            let subject = field_text(&ce.subject_column);
            headers.extend(crate::enrich::cloudevents_headers(
                ce,
                &message_id,
                kind.as_deref().unwrap_or(&routing_key),
                timestamp,
                subject.as_deref(),
            ));
        }
        let message = EventMessage {
            exchange,
            routing_key,
            body,
            message_id: Some(message_id),
            kind,
            content_type: c.content_type.clone(),
            timestamp,
            headers,
            properties,
        };
        if !self.limits.properties_fit(&message) {
            let detail = self.headers_detail(&message);
            let headers = all_headers();
            return Some(dead(
                DeadLetterReason::HeadersTooLarge,
                detail,
                headers,
                message.body,
            ));
        }
        Some(Mapped::Publish(message))
    }

    /// The dead-letter copy of a message that could not be delivered as it
    /// was (`reason`: the broker returned it, refused it, or has no such
    /// exchange; or the broker client refused it): same body, properties
    /// and headers, to the dead-letter exchange, with the reason and where
    /// it was going; reduced if that does not fit.
    pub fn copy_of(
        &self,
        original: &EventMessage,
        lsn: Lsn,
        reason: DeadLetterReason,
        detail: &str,
    ) -> EventMessage {
        let mut headers: Vec<(String, HeaderValue)> = original
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("x-relay-"))
            .cloned()
            .collect();
        push_destination(&mut headers, original);
        self.dead_letter(DeadLetter {
            reason,
            detail: detail.to_string(),
            lsn,
            headers,
            body: original.body.clone(),
            id: original.message_id.as_deref(),
            kind: original.kind.as_deref(),
            timestamp: original.timestamp,
            content_type: &original.content_type,
        })
    }

    /// The smallest dead-letter copy of a message: reason, detail, LSN and
    /// id only, no body. For a copy that was itself refused.
    pub fn minimal_copy_of(
        &self,
        original: &EventMessage,
        lsn: Lsn,
        reason: DeadLetterReason,
        detail: &str,
    ) -> EventMessage {
        self.dead_letter(DeadLetter {
            reason,
            detail: detail.to_string(),
            lsn,
            headers: Vec::new(),
            body: Bytes::new(),
            id: original.message_id.as_deref(),
            kind: None,
            timestamp: None,
            content_type: &original.content_type,
        })
    }

    /// Builds a dead-letter copy that fits the limits: the given headers
    /// and body if they fit, else only the relay's own headers (reason,
    /// detail, LSN, id and the names of the dropped headers).
    fn dead_letter(&self, parts: DeadLetter<'_>) -> EventMessage {
        let fits_short = |s: &&str| s.len() <= MAX_SHORT_STRING;
        let id = parts.id.filter(fits_short);
        let detail = shown(&parts.detail, MAX_DETAIL_CHARS);
        let own = |extra: Vec<(String, HeaderValue)>| {
            let mut headers = vec![
                (
                    "x-relay-reason".to_string(),
                    HeaderValue::Text(parts.reason.as_str().into()),
                ),
                (
                    "x-relay-detail".to_string(),
                    HeaderValue::Text(detail.clone()),
                ),
                (
                    "x-relay-lsn".to_string(),
                    HeaderValue::Text(parts.lsn.to_string()),
                ),
            ];
            if let Some(id) = parts.id {
                headers.push((
                    "x-relay-id".to_string(),
                    HeaderValue::Text(shown(id, MAX_SHORT_STRING)),
                ));
            }
            headers.extend(extra);
            headers
        };
        let body = if parts.body.len() <= self.limits.max_body {
            parts.body
        } else {
            Bytes::new()
        };
        let mut headers: Vec<(String, HeaderValue)> = parts
            .headers
            .into_iter()
            .filter(|(name, _)| name.len() <= MAX_SHORT_STRING)
            .collect();
        let carried: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
        headers.extend(own(Vec::new()));
        let mut message = EventMessage {
            exchange: self.config.dead_letter_exchange.clone(),
            routing_key: parts.reason.as_str().to_string(),
            body,
            message_id: id.map(str::to_string),
            kind: parts.kind.filter(fits_short).map(str::to_string),
            content_type: parts.content_type.to_string(),
            timestamp: parts.timestamp,
            headers,
            properties: Properties::default(),
        };
        if !self.limits.properties_fit(&message) {
            let mut dropped = String::new();
            for name in &carried {
                if dropped.len() + name.len() > MAX_DETAIL_CHARS {
                    dropped.push_str(",...");
                    break;
                }
                if !dropped.is_empty() {
                    dropped.push(',');
                }
                dropped.push_str(name);
            }
            message.headers = own(vec![(
                "x-relay-dropped-headers".to_string(),
                HeaderValue::Text(dropped),
            )]);
            message.kind = None;
            if !self.limits.properties_fit(&message) {
                // Only a content_type near the frame size gets here.
                message.content_type = "application/octet-stream".into();
                message.headers.truncate(3);
            }
        }
        message
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

/// Why an id or type cannot be an AMQP property, if it cannot.
fn property_problem(c: &TableMapping, id: Option<&str>, kind: Option<&str>) -> Option<String> {
    for (column, value) in [(&c.id_column, id), (&c.type_column, kind)] {
        if let Some(v) = value.filter(|v| v.len() > MAX_SHORT_STRING) {
            return Some(format!(
                "column {column} holds {} bytes; AMQP's message_id and type hold at most 255",
                v.len()
            ));
        }
    }
    None
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
            DeadLetterReason::UnroutableRow
        }
        RenderError::TooLong { .. } | RenderError::ControlChar { .. } => {
            DeadLetterReason::InvalidName
        }
    }
}

/// A value from a row or a server made safe to print: control characters
/// escaped, at most `max` characters kept.
pub fn shown(value: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i >= max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
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
    use crate::config::Settings;
    use crate::test_support::{insert_bytes, relation_bytes};
    use pgoutput::{decode, LogicalMessage};

    fn mapper(settings: &Settings) -> Mapper {
        let config = settings.parse().unwrap();
        let limits = crate::sink::amqp::limits(config.max_payload_bytes, 131_072);
        Mapper::new(config.mapping, limits)
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
    fn properties_from_columns_are_validated_and_a_json_object_becomes_typed_headers() {
        let columns = PropertyColumns {
            correlation_id: "corr".into(),
            expiration: "ttl".into(),
            priority: "prio".into(),
            headers: "extra".into(),
            ..PropertyColumns::default()
        };
        let row = |ttl: &str, prio: &str, extra: &str| {
            let values: HashMap<&str, String> = [
                ("corr", "c-1".to_string()),
                ("ttl", ttl.to_string()),
                ("prio", prio.to_string()),
                ("extra", extra.to_string()),
            ]
            .into_iter()
            .collect();
            properties_of(&columns, |name| values.get(name).cloned())
        };
        let (p, headers) = row(
            "60000",
            "9",
            r#"{"tenant": "acme", "n": 3, "ratio": 0.5, "ok": true, "gone": null,
                "nested": {"a": [1, "x"]}}"#,
        )
        .unwrap();
        assert_eq!(p.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(p.expiration.as_deref(), Some("60000"));
        assert_eq!(p.priority, Some(9));
        // A null field is left out; the rest in name order.
        assert_eq!(
            headers,
            [
                ("n".to_string(), HeaderValue::Int(3)),
                (
                    "nested".to_string(),
                    HeaderValue::Table(vec![(
                        "a".to_string(),
                        HeaderValue::Array(vec![
                            HeaderValue::Int(1),
                            HeaderValue::Text("x".into())
                        ])
                    )])
                ),
                ("ok".to_string(), HeaderValue::Bool(true)),
                ("ratio".to_string(), HeaderValue::Float(0.5)),
                ("tenant".to_string(), HeaderValue::Text("acme".into())),
            ]
        );
        for (ttl, prio, extra, says) in [
            ("-1", "1", "{}", "expiration"),
            ("1e3", "1", "{}", "expiration"),
            ("99999999999", "1", "{}", "expiration"),
            ("1", "256", "{}", "priority"),
            ("1", "high", "{}", "priority"),
            ("1", "1", "[1]", "not a JSON object"),
            ("1", "1", "{", "not JSON"),
        ] {
            let why = row(ttl, prio, extra).unwrap_err();
            assert!(why.contains(says), "{ttl} {prio} {extra}: {why}");
        }
    }

    #[test]
    fn an_outbox_insert_maps_to_the_documented_message() {
        let mut m = mapper(&Settings::default());
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
        let mut m = mapper(&Settings::default());
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
    fn each_outbox_table_maps_through_its_own_entry() {
        let file = r#"
            exchange = "events"
            routing_key = "{aggregate_type}.{event_type}"
            [[table]]
            name = "public.outbox"
            [[table]]
            name = "billing.events"
            exchange = "billing"
            routing_key = "invoice.{kind}"
            id_column = "event_id"
            payload_column = "body"
            type_column = "kind"
            timestamp_column = ""
            content_type = "text/plain"
            header_columns = ["tenant"]
        "#;
        let settings = crate::config::resolve(Some(("relay.toml", file)), Vec::new())
            .unwrap()
            .settings;
        let mut m = mapper(&settings);
        assert!(m.relation(&relation(1, STANDARD)));
        let billing: &[(&str, u32)] =
            &[("event_id", 20), ("tenant", 25), ("kind", 25), ("body", 25)];
        let rel = match decode(relation_bytes(2, "billing", "events", billing)).unwrap() {
            LogicalMessage::Relation(r) => r,
            _ => unreachable!(),
        };
        assert!(m.relation(&rel));
        assert_eq!((m.table_of(Oid(1)), m.table_of(Oid(2))), (Some(0), Some(1)));
        let row = standard_row(Some(b"order"), b"{}");
        let Some(Mapped::Publish(order)) = m.insert(&insert(1, &row), lsn()) else {
            panic!("the outbox row is not published");
        };
        assert_eq!(
            (order.exchange.as_str(), order.routing_key.as_str()),
            ("events", "order.created")
        );
        let row: Vec<Option<&[u8]>> = vec![
            Some(b"7"),
            Some(b"acme"),
            Some(b"paid"),
            Some(b"invoice 7 paid"),
        ];
        let Some(Mapped::Publish(invoice)) = m.insert(&insert(2, &row), lsn()) else {
            panic!("the billing row is not published");
        };
        assert_eq!(invoice.exchange, "billing");
        assert_eq!(invoice.routing_key, "invoice.paid");
        assert_eq!(invoice.message_id.as_deref(), Some("7"));
        assert_eq!(invoice.kind.as_deref(), Some("paid"));
        assert_eq!(invoice.content_type, "text/plain");
        assert_eq!(&invoice.body[..], b"invoice 7 paid");
        assert_eq!(invoice.timestamp, None);
        let names: Vec<&str> = invoice.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tenant"]);
        assert!(m.is_constant_exchange("events") && m.is_constant_exchange("billing"));
        assert!(!m.is_constant_exchange("outbox"));
    }

    #[test]
    fn rows_of_other_tables_are_not_outbox_events() {
        let mut m = mapper(&Settings::default());
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
        let mut m = mapper(&Settings::default());
        m.relation(&relation(1, STANDARD));
        let row = standard_row(None, b"{}");
        let Some(Mapped::DeadLetter(msg, reason)) = m.insert(&insert(1, &row), lsn()) else {
            panic!("not dead-lettered");
        };
        assert_eq!(reason, DeadLetterReason::UnroutableRow);
        assert_eq!(msg.exchange, "outbox.dead-letter");
        let header = |n: &str| {
            msg.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("x-relay-reason"),
            Some(HeaderValue::Text("unroutable_row".into()))
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
        let mut m = mapper(&settings);
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
        let mut m = mapper(&Settings {
            content_type: "application/octet-stream".into(),
            ..Settings::default()
        });
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
        let mut m = mapper(&settings);
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
        // The table-less outbox is opt-in.
        let off = mapper(&Settings::default());
        let msg = logical("outbox", r#"{"id": "forged", "payload": 1}"#);
        assert_eq!(off.logical_message(&msg), None);
        let m = mapper(&Settings {
            message_prefix: "outbox".into(),
            ..Settings::default()
        });
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
            Some(Mapped::DeadLetter(_, DeadLetterReason::UnroutableRow))
        ));
    }

    #[test]
    fn a_message_the_client_refuses_gets_a_copy_that_fits() {
        let m = mapper(&Settings::default());
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
            properties: Properties::default(),
        };
        let copy = m.copy_of(
            &original,
            lsn(),
            DeadLetterReason::RefusedByClient,
            "header name too long",
        );
        assert_eq!(copy.exchange, "outbox.dead-letter");
        assert_eq!(copy.message_id, None);
        assert_eq!(copy.kind.as_deref(), Some("created"));
        assert!(copy.headers.iter().all(|(n, _)| n.len() <= 255));
        assert!(copy
            .headers
            .contains(&("tenant".into(), HeaderValue::Text("acme".into()))));
        assert!(copy.headers.contains(&(
            "x-relay-reason".into(),
            HeaderValue::Text("refused_by_client".into())
        )));
        assert_eq!(&copy.body[..], b"{}");
    }

    #[test]
    fn returned_messages_keep_their_identity_on_the_dead_letter_copy() {
        let mut m = mapper(&Settings::default());
        m.relation(&relation(1, STANDARD));
        let row = standard_row(Some(b"order"), b"{}");
        let Some(Mapped::Publish(msg)) = m.insert(&insert(1, &row), lsn()) else {
            panic!();
        };
        let copy = m.copy_of(&msg, lsn(), DeadLetterReason::NoRoute, "NO_ROUTE");
        assert_eq!(copy.exchange, "outbox.dead-letter");
        assert_eq!(copy.message_id, msg.message_id);
        assert!(copy.headers.contains(&(
            "x-relay-original-routing-key".into(),
            HeaderValue::Text("order.created".into())
        )));
        assert!(copy.headers.contains(&(
            "x-relay-reason".into(),
            HeaderValue::Text("no_route".into())
        )));
    }

    fn fits(m: &Mapper, message: &EventMessage) {
        let limits = m.limits();
        assert!(
            limits.properties_fit(message),
            "{} bytes of properties",
            (limits.properties_len)(message)
        );
        assert!(message.body.len() <= limits.max_body);
        for name in [&message.exchange, &message.routing_key] {
            assert!(name.len() <= MAX_SHORT_STRING && !name.chars().any(char::is_control));
        }
        for value in [&message.message_id, &message.kind].into_iter().flatten() {
            assert!(value.len() <= MAX_SHORT_STRING);
        }
        assert!(message
            .headers
            .iter()
            .all(|(n, _)| n.len() <= MAX_SHORT_STRING));
    }

    fn header<'a>(message: &'a EventMessage, name: &str) -> Option<&'a HeaderValue> {
        message
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn a_huge_extra_column_is_dead_lettered_as_headers_too_large_in_a_copy_that_fits() {
        let mut cols = STANDARD.to_vec();
        cols.push(("note", 25));
        let mut m = mapper(&Settings::default());
        m.relation(&relation(1, &cols));
        let huge = "n".repeat(200_000);
        let mut row = standard_row(Some(b"order"), b"{\"a\": 1}");
        row.push(Some(huge.as_bytes()));
        let Some(Mapped::DeadLetter(copy, DeadLetterReason::HeadersTooLarge)) =
            m.insert(&insert(1, &row), lsn())
        else {
            panic!("not dead-lettered as headers_too_large");
        };
        fits(&m, &copy);
        assert_eq!(&copy.body[..], b"{\"a\": 1}");
        assert_eq!(
            header(&copy, "x-relay-id"),
            Some(&HeaderValue::Text(
                "6f1c0a52-58f3-4d3b-9a36-7d3c1c0b9a10".into()
            ))
        );
        let Some(HeaderValue::Text(dropped)) = header(&copy, "x-relay-dropped-headers") else {
            panic!("no list of dropped headers: {:?}", copy.headers);
        };
        assert!(dropped.contains("note"), "{dropped}");
        let Some(HeaderValue::Text(detail)) = header(&copy, "x-relay-detail") else {
            panic!();
        };
        assert!(detail.contains("note 200000 bytes"), "{detail}");
    }

    #[test]
    fn an_oversize_payload_never_travels_as_a_header_of_its_dead_letter_copy() {
        let mut m = mapper(&Settings::default());
        m.relation(&relation(1, STANDARD));
        let payload = format!("{{\"x\": \"{}\"}}", "p".repeat(9 << 20));
        let row = standard_row(Some(b"order"), payload.as_bytes());
        let Some(Mapped::DeadLetter(copy, DeadLetterReason::Oversize)) =
            m.insert(&insert(1, &row), lsn())
        else {
            panic!("not dead-lettered as oversize");
        };
        fits(&m, &copy);
        assert!(copy.body.is_empty());
        assert!(header(&copy, "payload").is_none());
        assert!(header(&copy, "aggregate_type").is_some());
    }

    #[test]
    fn an_id_longer_than_amqp_allows_is_an_invalid_property() {
        let mut m = mapper(&Settings::default());
        m.relation(&relation(1, STANDARD));
        let id = "i".repeat(300);
        let mut row = standard_row(Some(b"order"), b"{}");
        row[0] = Some(id.as_bytes());
        let Some(Mapped::DeadLetter(copy, DeadLetterReason::InvalidProperty)) =
            m.insert(&insert(1, &row), lsn())
        else {
            panic!("not an invalid property");
        };
        fits(&m, &copy);
        assert_eq!(copy.message_id, None);
    }

    #[test]
    fn a_control_character_in_a_routing_value_is_an_invalid_name() {
        let mut m = mapper(&Settings::default());
        m.relation(&relation(1, STANDARD));
        let row = standard_row(Some(b"order\r\nx"), b"{}");
        let Some(Mapped::DeadLetter(copy, DeadLetterReason::InvalidName)) =
            m.insert(&insert(1, &row), lsn())
        else {
            panic!("not an invalid name");
        };
        fits(&m, &copy);
        let Some(HeaderValue::Text(detail)) = header(&copy, "x-relay-detail") else {
            panic!();
        };
        assert!(!detail.chars().any(char::is_control), "{detail:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever a row holds, its message and its dead-letter copies fit
        /// what the broker accepts.
        #[test]
        fn every_message_and_every_copy_fits_the_limits(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![0usize..64, 100usize..5_000, 60_000usize..140_000, 1usize..(17 << 20)],
                6..12,
            ),
            nulls in proptest::collection::vec(proptest::bool::weighted(0.1), 12),
            control in proptest::bool::weighted(0.2),
        ) {
            let mut cols: Vec<(String, u32)> = STANDARD.iter().map(|(n, t)| (n.to_string(), *t)).collect();
            for i in cols.len()..sizes.len() {
                cols.push((format!("extra_{i}"), 25));
            }
            let col_refs: Vec<(&str, u32)> = cols.iter().map(|(n, t)| (n.as_str(), *t)).collect();
            let mut m = mapper(&Settings::default());
            m.relation(&relation(1, &col_refs));
            let values: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut v = vec![b'a' + u8::try_from(i % 26).unwrap(); *n];
                    if control && !v.is_empty() {
                        v[0] = b'\n';
                    }
                    v
                })
                .collect();
            let row: Vec<Option<&[u8]>> = values
                .iter()
                .zip(&nulls)
                .map(|(v, null)| if *null { None } else { Some(v.as_slice()) })
                .collect();
            match m.insert(&insert(1, &row), lsn()) {
                Some(Mapped::Publish(message)) => {
                    fits(&m, &message);
                    for reason in [DeadLetterReason::NoRoute, DeadLetterReason::NoExchange] {
                        fits(&m, &m.copy_of(&message, lsn(), reason, "x"));
                    }
                }
                Some(Mapped::DeadLetter(copy, _)) => {
                    fits(&m, &copy);
                    fits(&m, &m.minimal_copy_of(&copy, lsn(), DeadLetterReason::RefusedByClient, "x"));
                }
                None => panic!("an outbox row maps to something"),
            }
        }
    }
}
