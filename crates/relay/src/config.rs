//! Settings: one struct with documented defaults, read from a TOML file and
//! RELAY_* environment variables (the environment wins).
//!
//! Pure code: [`resolve`] takes the file's text and the environment as
//! values, so every rule here is unit-tested without touching the process.
//! It also records where each value came from (default, file, env), for
//! `outbox-relay config`, and suggests the setting a mistyped key or
//! variable probably meant. [`Settings::parse`] then turns the strings into
//! typed values once ([`Config`]: URLs, names, templates, durations), so no
//! other module parses a setting again. The names and defaults of RELAY_PG_URL,
//! RELAY_AMQP_URL, RELAY_SLOT, RELAY_PUBLICATION, RELAY_TABLE,
//! RELAY_EXCHANGE and RELAY_METRICS_ADDR are a contract with users: keep
//! them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use amqp_sink::{BackoffConfig, BrokerUrl};
use serde::{Deserialize, Serialize};
use walstream::ReplicationConfig;

use crate::core::CoreConfig;
pub use crate::core::UnroutablePolicy;
use crate::mapping::{MappingConfig, TableMapping};
use crate::names::{self, NameError, TableName};
use crate::template::{Template, TemplateError};

/// Every setting of the relay. Each field is also a key of the TOML file and
/// an environment variable `RELAY_<KEY in upper case>`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// PostgreSQL URL or keyword/value string (libpq style). Required.
    pub pg_url: Option<String>,
    /// RabbitMQ URL; several (the nodes of a cluster) separated by commas,
    /// tried in turn. Required.
    pub amqp_url: Option<String>,
    /// The logical replication slot (plugin pgoutput); created if missing.
    pub slot: String,
    /// The publication the slot streams; created FOR TABLE `table` if missing.
    pub publication: String,
    /// The outbox table, schema-qualified; or, in the file only, several
    /// `[[table]]` entries, each an outbox table with its own mapping (see
    /// [`TableEntry`]).
    pub table: Tables,
    /// Exchange for events: a name or a template over columns, e.g.
    /// `{aggregate_type}`.
    pub exchange: String,
    /// Routing key template over columns.
    pub routing_key: String,
    /// Declare the exchange (durable topic) if missing; false = it must
    /// already exist (managed elsewhere).
    pub declare_exchange: bool,
    /// Exchange for rows that cannot be routed or published.
    pub dead_letter_exchange: String,
    /// Queue bound to the dead-letter exchange (declared if missing).
    pub dead_letter_queue: String,
    /// Its type: `classic` (default) or `quorum` (replicated: a cluster
    /// keeps dead-lettering, and the relay keeps connecting, while the node
    /// a classic queue lives on is down).
    pub dead_letter_queue_type: QueueKind,
    /// What to do with a message the broker returns as unroutable:
    /// `dead-letter` (default) or `drop` (counted, the broker's plain
    /// semantics).
    pub on_unroutable: UnroutablePolicy,
    /// Column holding the event id (message_id).
    pub id_column: String,
    /// Column holding the payload (jsonb, json, text or bytea).
    pub payload_column: String,
    /// Column holding the event type (the message's `type`).
    pub type_column: String,
    /// Column holding the creation time (the message's timestamp); empty
    /// for none.
    pub timestamp_column: String,
    /// Columns sent as headers; empty = every column except id, payload and
    /// timestamp.
    pub header_columns: Vec<String>,
    /// The message's content_type.
    pub content_type: String,
    /// Column of the message's correlation_id ("" for none).
    pub correlation_id_column: String,
    /// Column of the message's reply_to ("" for none).
    pub reply_to_column: String,
    /// Column of the message's expiration, milliseconds ("" for none).
    pub expiration_column: String,
    /// Column of the message's priority, 0 to 255 ("" for none).
    pub priority_column: String,
    /// Column of the message's app_id ("" for outbox-relay).
    pub app_id_column: String,
    /// Column of the message's content_encoding ("" for none).
    pub content_encoding_column: String,
    /// A jsonb column whose object is merged into the headers ("" for
    /// none).
    pub headers_column: String,
    /// Larger payloads are dead-lettered (reason `oversize`).
    pub max_payload_bytes: u64,
    /// Prefix of pg_logical_emit_message events to publish (a table-less
    /// outbox); empty (the default) ignores logical decoding messages. Any
    /// role that can connect may call pg_logical_emit_message unless it is
    /// revoked from PUBLIC: see `outbox-relay setup --print-sql`.
    pub message_prefix: String,
    /// How many times a row the broker refuses (an exchange that does not
    /// exist, a message it closes the channel over) is published before it
    /// goes to the dead-letter exchange with the broker's reason.
    pub row_attempts: u64,
    /// Messages in flight to the broker at most.
    pub window_messages: u64,
    /// Bytes of message bodies in flight to the broker at most.
    pub window_bytes: u64,
    /// If another process holds the slot, wait as a standby and take over
    /// when it frees (false = exit with the reason).
    pub standby: bool,
    /// How often a standby re-checks the slot, in milliseconds.
    pub standby_poll_ms: u64,
    /// On PostgreSQL 17 and later, make the slot a failover slot (created
    /// with FAILOVER, or turned on for an existing one before streaming), so
    /// that standbys with sync_replication_slots keep a copy a promoted
    /// standby resumes from. false leaves the slot's flag as it is.
    pub failover_slot: bool,
    /// On SIGTERM, how long to wait for in-flight confirms, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// First reconnect delay, in milliseconds.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Factor between reconnect delays.
    pub backoff_multiplier: f64,
    /// AMQP heartbeat, in seconds (a stalled broker link is noticed within
    /// about twice this).
    pub heartbeat_secs: u64,
    /// A PEM file of CA certificates to trust for `amqps://` brokers, on
    /// top of the system's (a private CA); empty for the system's only.
    /// Certificates are always verified.
    pub amqp_ca_file: String,
    /// Add the CloudEvents 1.0 attributes (AMQP binding, binary content
    /// mode: `cloudEvents:`-prefixed headers).
    pub cloudevents: bool,
    /// The CloudEvents `source`; empty: `/outbox-relay/<table>`.
    pub cloudevents_source: String,
    /// The column whose value is the CloudEvents `subject` ("" for none).
    pub cloudevents_subject_column: String,
    /// Where events go: `amqp` (RabbitMQ). `null` confirms every event at
    /// once and throws it away: for measuring the relay alone
    /// (relay-bench), never for real events.
    pub sink: SinkKind,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    pub metrics_addr: String,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            pg_url: None,
            amqp_url: None,
            slot: "outbox_relay".into(),
            publication: "outbox_relay".into(),
            table: Tables::One("public.outbox".into()),
            exchange: "outbox".into(),
            routing_key: "{aggregate_type}.{event_type}".into(),
            declare_exchange: true,
            dead_letter_exchange: "outbox.dead-letter".into(),
            dead_letter_queue: "outbox.dead-letter".into(),
            dead_letter_queue_type: QueueKind::Classic,
            on_unroutable: UnroutablePolicy::DeadLetter,
            id_column: "id".into(),
            payload_column: "payload".into(),
            type_column: "event_type".into(),
            timestamp_column: "created_at".into(),
            header_columns: Vec::new(),
            content_type: "application/json".into(),
            correlation_id_column: String::new(),
            reply_to_column: String::new(),
            expiration_column: String::new(),
            priority_column: String::new(),
            app_id_column: String::new(),
            content_encoding_column: String::new(),
            headers_column: String::new(),
            max_payload_bytes: 8 * 1024 * 1024,
            message_prefix: String::new(),
            row_attempts: 3,
            window_messages: 1024,
            window_bytes: 16 * 1024 * 1024,
            standby: true,
            standby_poll_ms: 2_000,
            failover_slot: true,
            shutdown_timeout_ms: 10_000,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            backoff_multiplier: 2.0,
            heartbeat_secs: 10,
            amqp_ca_file: String::new(),
            cloudevents: false,
            cloudevents_source: String::new(),
            cloudevents_subject_column: "aggregate_id".into(),
            sink: SinkKind::Amqp,
            metrics_addr: "127.0.0.1:9187".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// Debug output goes through [`Settings::redacted`]: a settings value in a
/// log line never shows a password.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.redacted() {
            map.entry(&key, &value);
        }
        map.finish()
    }
}

/// The `table` setting: one outbox table, which the top-level mapping
/// settings describe; or several, each a `[[table]]` entry of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tables {
    /// One table, schema-qualified (`table = "public.outbox"` or
    /// RELAY_TABLE).
    One(String),
    /// `[[table]]` entries.
    Many(Vec<TableEntry>),
}

impl Tables {
    /// The entries: one for a single table (every mapping setting from the
    /// top level), or the `[[table]]` entries.
    pub fn entries(&self) -> Vec<TableEntry> {
        match self {
            Tables::One(name) => vec![TableEntry {
                name: name.clone(),
                ..TableEntry::default()
            }],
            Tables::Many(entries) => entries.clone(),
        }
    }
}

impl From<&str> for Tables {
    fn from(name: &str) -> Tables {
        Tables::One(name.to_string())
    }
}

/// One `[[table]]` entry: an outbox table and its mapping. `name` is
/// required; every other key is optional and defaults to the top-level
/// setting of the same name, so what the tables share is written once.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableEntry {
    /// The table, schema-qualified.
    pub name: String,
    /// Exchange template (default: the top-level `exchange`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// Routing key template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Column of the event id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// Column of the payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_column: Option<String>,
    /// Column of the event type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_column: Option<String>,
    /// Column of the creation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_column: Option<String>,
    /// Columns sent as headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_columns: Option<Vec<String>>,
    /// The messages' content_type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Column of correlation_id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id_column: Option<String>,
    /// Column of reply_to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to_column: Option<String>,
    /// Column of expiration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_column: Option<String>,
    /// Column of priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_column: Option<String>,
    /// Column of app_id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id_column: Option<String>,
    /// Column of content_encoding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding_column: Option<String>,
    /// The jsonb column merged into the headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers_column: Option<String>,
    /// Add the CloudEvents attributes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevents: Option<bool>,
    /// The CloudEvents `source`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevents_source: Option<String>,
    /// The CloudEvents `subject` column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloudevents_subject_column: Option<String>,
}

/// The keys of a `[[table]]` entry.
const TABLE_FIELDS: &[&str] = &[
    "name",
    "exchange",
    "routing_key",
    "id_column",
    "payload_column",
    "type_column",
    "timestamp_column",
    "header_columns",
    "content_type",
    "correlation_id_column",
    "reply_to_column",
    "expiration_column",
    "priority_column",
    "app_id_column",
    "content_encoding_column",
    "headers_column",
    "cloudevents",
    "cloudevents_source",
    "cloudevents_subject_column",
];

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// RabbitMQ.
    Amqp,
    /// Nowhere: every event is confirmed at once (benchmarks only).
    Null,
}

/// The type of a queue the relay declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// A classic queue, on one node.
    Classic,
    /// A quorum queue, replicated across a cluster.
    Quorum,
}

impl From<QueueKind> for amqp_sink::QueueType {
    fn from(kind: QueueKind) -> Self {
        match kind {
            QueueKind::Classic => amqp_sink::QueueType::Classic,
            QueueKind::Quorum => amqp_sink::QueueType::Quorum,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The type of a setting's value, for parsing environment variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    List,
}

/// Every setting's key and type, in the order of [`Settings`].
const FIELDS: &[(&str, Kind)] = &[
    ("pg_url", Kind::Str),
    ("amqp_url", Kind::Str),
    ("slot", Kind::Str),
    ("publication", Kind::Str),
    ("table", Kind::Str),
    ("exchange", Kind::Str),
    ("routing_key", Kind::Str),
    ("declare_exchange", Kind::Bool),
    ("dead_letter_exchange", Kind::Str),
    ("dead_letter_queue", Kind::Str),
    ("dead_letter_queue_type", Kind::Str),
    ("on_unroutable", Kind::Str),
    ("id_column", Kind::Str),
    ("payload_column", Kind::Str),
    ("type_column", Kind::Str),
    ("timestamp_column", Kind::Str),
    ("header_columns", Kind::List),
    ("content_type", Kind::Str),
    ("correlation_id_column", Kind::Str),
    ("reply_to_column", Kind::Str),
    ("expiration_column", Kind::Str),
    ("priority_column", Kind::Str),
    ("app_id_column", Kind::Str),
    ("content_encoding_column", Kind::Str),
    ("headers_column", Kind::Str),
    ("max_payload_bytes", Kind::Int),
    ("message_prefix", Kind::Str),
    ("row_attempts", Kind::Int),
    ("window_messages", Kind::Int),
    ("window_bytes", Kind::Int),
    ("standby", Kind::Bool),
    ("standby_poll_ms", Kind::Int),
    ("failover_slot", Kind::Bool),
    ("shutdown_timeout_ms", Kind::Int),
    ("backoff_initial_ms", Kind::Int),
    ("backoff_max_ms", Kind::Int),
    ("backoff_multiplier", Kind::Float),
    ("heartbeat_secs", Kind::Int),
    ("amqp_ca_file", Kind::Str),
    ("cloudevents", Kind::Bool),
    ("cloudevents_source", Kind::Str),
    ("cloudevents_subject_column", Kind::Str),
    ("sink", Kind::Str),
    ("metrics_addr", Kind::Str),
    ("log_format", Kind::Str),
];

/// The largest `max_payload_bytes`: RabbitMQ 4's default
/// `max_message_size`, and the sink's own limit.
pub const MAX_PAYLOAD_LIMIT: u64 = 16 * 1024 * 1024;

/// RELAY_* variables that are not settings but are read elsewhere: the
/// config file's path, the log filter, and the test kit's own.
const OTHER_VARS: &[&str] = &["RELAY_CONFIG", "RELAY_LOG", "RELAY_BIN"];

/// Prefixes of the project's own helper variables (the test kit's, the
/// benchmark's): not settings, not typos.
const OTHER_PREFIXES: &[&str] = &["RELAY_TEST_", "RELAY_BENCH_"];

/// Settings whose values are never printed whole (they carry passwords).
const SECRETS: &[&str] = &["pg_url", "amqp_url"];

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The built-in default.
    Default,
    /// The TOML file.
    File,
    /// A RELAY_* environment variable.
    Env,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
        })
    }
}

/// Settings with the origin of each value and anything worth a warning.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The effective settings.
    pub settings: Settings,
    /// Where each key's value came from.
    pub sources: BTreeMap<&'static str, Source>,
    /// RELAY_* variables that name no setting (a typo, most likely), each
    /// with the variable it probably meant.
    pub unknown_env: Vec<(String, Option<String>)>,
}

/// Why the settings are unusable. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has a wrong key or type.
    #[error("config file {path}: {message}")]
    File {
        /// The file's path as given.
        path: String,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// An environment variable's value has the wrong type.
    #[error("{var}={value:?}: expected {expected}")]
    Env {
        /// The variable.
        var: String,
        /// Its value (never a secret: secrets are strings).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A required setting is missing.
    #[error("{key} is not set: set {env} or `{key} = \"...\"` in the config file")]
    Missing {
        /// The file key.
        key: &'static str,
        /// The environment variable.
        env: String,
    },
    /// A setting's value is invalid.
    #[error("{key}: {message}")]
    Invalid {
        /// The file key.
        key: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
    /// The file has a key that names no setting.
    #[error("config file {path}: unknown key `{key}`{}", did_you_mean(.suggestion.as_deref()))]
    UnknownKey {
        /// The file's path as given.
        path: String,
        /// The key.
        key: String,
        /// The setting it probably meant.
        suggestion: Option<&'static str>,
    },
    /// A name setting is unusable.
    #[error("{key}: {source}")]
    Name {
        /// The file key.
        key: &'static str,
        /// What is wrong.
        #[source]
        source: NameError,
    },
    /// A `[[table]]` entry is unusable.
    #[error("[[table]] {table}: {source}")]
    InTable {
        /// The entry's name.
        table: String,
        /// What is wrong.
        #[source]
        source: Box<ConfigError>,
    },
    /// A routing template does not parse.
    #[error("{key}: {source}")]
    Template {
        /// The file key.
        key: &'static str,
        /// The syntax error.
        #[source]
        source: TemplateError,
    },
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

/// The setting a mistyped key probably meant: the closest by edit distance,
/// if close enough.
pub fn suggest(key: &str) -> Option<&'static str> {
    suggest_among(key, FIELDS.iter().map(|(k, _)| *k))
}

fn suggest_among(key: &str, keys: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    keys.map(|k| (k, strsim::levenshtein(&key, k)))
        .filter(|(k, d)| *d <= 2 || *d * 3 <= k.len())
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

/// A TOML error's message and line, without the source line it quotes (it
/// may hold a password).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// The environment variable of a settings key.
pub fn env_name(key: &str) -> String {
    format!("RELAY_{}", key.to_uppercase())
}

/// Resolves the settings from a config file's text (with its path, for
/// messages) and environment variables. The environment wins over the file,
/// the file over the defaults.
pub fn resolve<I>(file: Option<(&str, &str)>, env: I) -> Result<Resolved, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut table = toml::Table::new();
    let mut sources: BTreeMap<&'static str, Source> =
        FIELDS.iter().map(|(k, _)| (*k, Source::Default)).collect();
    if let Some((path, text)) = file {
        table = text.parse::<toml::Table>().map_err(|e| ConfigError::File {
            path: path.to_string(),
            message: toml_message(text, &e),
        })?;
        for key in table.keys() {
            match FIELDS.iter().find(|(k, _)| k == key) {
                Some((k, _)) => {
                    sources.insert(k, Source::File);
                }
                None => {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_string(),
                        key: key.clone(),
                        suggestion: suggest(key),
                    })
                }
            }
        }
        match table.get("table") {
            Some(toml::Value::Array(entries)) => check_table_entries(path, entries)?,
            Some(toml::Value::String(_)) | None => {}
            Some(other) => {
                return Err(ConfigError::File {
                    path: path.to_string(),
                    message: format!(
                        "table is a {}: write table = \"schema.name\" for one table, or \
                         [[table]] entries (double brackets) for several",
                        other.type_str()
                    ),
                })
            }
        }
        // Check types now, so that a file error names the file.
        Settings::deserialize(table.clone()).map_err(|e| ConfigError::File {
            path: path.to_string(),
            message: e.message().to_string(),
        })?;
    }
    let mut unknown_env = Vec::new();
    for (var, value) in env {
        let Some(key) = var.strip_prefix("RELAY_") else {
            continue;
        };
        let key = key.to_lowercase();
        let Some((name, kind)) = FIELDS.iter().find(|(k, _)| *k == key) else {
            let ours = OTHER_VARS.contains(&var.as_str())
                || OTHER_PREFIXES.iter().any(|p| var.starts_with(p));
            if !ours {
                let suggestion = suggest(&key).map(env_name);
                unknown_env.push((var, suggestion));
            }
            continue;
        };
        table.insert((*name).to_string(), env_value(&var, &value, *kind)?);
        sources.insert(name, Source::Env);
    }
    unknown_env.sort();
    let settings = Settings::deserialize(table).map_err(|e| ConfigError::File {
        path: "(environment)".into(),
        message: e.message().to_string(),
    })?;
    Ok(Resolved {
        settings,
        sources,
        unknown_env,
    })
}

/// Checks each `[[table]]` entry's keys and types, so that an error names
/// the entry and suggests the key a typo meant.
fn check_table_entries(path: &str, entries: &[toml::Value]) -> Result<(), ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_string(),
        message,
    };
    if entries.is_empty() {
        return Err(file_error(
            "table = [] names no table: give one name or [[table]] entries".into(),
        ));
    }
    for (i, entry) in entries.iter().enumerate() {
        let n = i + 1;
        let Some(keys) = entry.as_table() else {
            return Err(file_error(format!(
                "table entry {n} is not a table: write [[table]] entries with name = \"schema.table\""
            )));
        };
        for key in keys.keys() {
            if !TABLE_FIELDS.contains(&key.as_str()) {
                let suggestion = suggest_among(key, TABLE_FIELDS.iter().copied());
                return Err(file_error(format!(
                    "[[table]] entry {n}: unknown key `{key}`{} (an entry takes name and the \
                     mapping settings: {})",
                    did_you_mean(suggestion),
                    TABLE_FIELDS.join(", ")
                )));
            }
        }
        TableEntry::deserialize(entry.clone())
            .map_err(|e| file_error(format!("[[table]] entry {n}: {}", e.message())))?;
    }
    Ok(())
}

fn env_value(var: &str, value: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    let wrong = |expected| ConfigError::Env {
        var: var.to_string(),
        value: value.to_string(),
        expected,
    };
    let v = value.trim();
    Ok(match kind {
        Kind::Str => toml::Value::String(value.to_string()),
        Kind::Int => toml::Value::Integer(
            v.replace('_', "")
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| wrong("a non-negative integer"))?,
        ),
        Kind::Float => toml::Value::Float(
            v.parse::<f64>()
                .map_err(|_| wrong("a number such as 2.0"))?,
        ),
        Kind::Bool => toml::Value::Boolean(match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(wrong("true or false")),
        }),
        Kind::List => toml::Value::Array(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
    })
}

/// The settings, parsed once into typed values: what every command works
/// from. Built by [`Settings::parse`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The PostgreSQL connection (None if pg_url is not set; the commands
    /// that need it say so).
    pub pg: Option<ReplicationConfig>,
    /// The brokers, in the order they are tried (empty if amqp_url is not
    /// set).
    pub brokers: Vec<BrokerUrl>,
    /// The replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// The mapping: table, templates, columns, content type, prefix,
    /// dead-letter exchange.
    pub mapping: MappingConfig,
    /// Declare the exchange, the dead-letter exchange and queue (false:
    /// they must exist).
    pub declare_exchange: bool,
    /// The dead-letter queue.
    pub dead_letter_queue: String,
    /// Its type.
    pub dead_letter_queue_type: amqp_sink::QueueType,
    /// The core's window and policies.
    pub core: CoreConfig,
    /// The largest body.
    pub max_payload_bytes: usize,
    /// Wait as a standby while another process holds the slot.
    pub standby: bool,
    /// How often a standby looks at the slot.
    pub standby_poll: Duration,
    /// Make the slot a failover slot (PostgreSQL 17+).
    pub failover_slot: bool,
    /// How long a stop waits for confirms.
    pub shutdown_timeout: Duration,
    /// Reconnect delays (every reconnect loop).
    pub backoff: BackoffConfig,
    /// The AMQP heartbeat.
    pub heartbeat: Duration,
    /// A CA file for amqps:// brokers.
    pub amqp_ca_file: Option<PathBuf>,
    /// Where events go.
    pub sink: SinkKind,
    /// The metrics endpoint's address (None: off).
    pub metrics_addr: Option<SocketAddr>,
    /// The log format.
    pub log_format: LogFormat,
}

impl Config {
    /// The PostgreSQL connection, or the error that says how to set it.
    pub fn pg(&self) -> Result<&ReplicationConfig, ConfigError> {
        self.pg.as_ref().ok_or_else(|| ConfigError::Missing {
            key: "pg_url",
            env: env_name("pg_url"),
        })
    }

    /// The brokers, or the error that says how to set them.
    pub fn brokers(&self) -> Result<&[BrokerUrl], ConfigError> {
        if self.brokers.is_empty() {
            return Err(ConfigError::Missing {
                key: "amqp_url",
                env: env_name("amqp_url"),
            });
        }
        Ok(&self.brokers)
    }

    /// The exchange's name when it is the same for every event of every
    /// table (not a per-row template).
    pub fn constant_exchange(&self) -> Option<String> {
        let mut names = self.constant_exchanges();
        match (names.pop(), names.is_empty()) {
            (Some(name), true)
                if self
                    .mapping
                    .tables
                    .iter()
                    .all(|t| t.exchange.as_constant().is_some()) =>
            {
                Some(name)
            }
            _ => None,
        }
    }

    /// The tables' exchanges that are constants (not per-row templates),
    /// each once, sorted.
    pub fn constant_exchanges(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .mapping
            .tables
            .iter()
            .filter_map(|t| t.exchange.as_constant())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The relay streams from the primary: with several hosts it asks for
/// the primary (what libpq's `any` would leave to the order of the list);
/// asking for a standby is refused, as a slot on a standby is the
/// primary's synced copy and is never consumed.
fn primary_only(mut pg: ReplicationConfig) -> Result<ReplicationConfig, ConfigError> {
    use walstream::TargetSessionAttrs as Attrs;
    match pg.target_session_attrs() {
        Attrs::Any if pg.targets().len() > 1 => {
            pg.set_target_session_attrs(Attrs::Primary);
            Ok(pg)
        }
        Attrs::Any | Attrs::Primary | Attrs::ReadWrite => Ok(pg),
        other => Err(ConfigError::Invalid {
            key: "pg_url",
            message: format!(
                "target_session_attrs={other} would stream from a standby; the relay streams \
                 from the primary (a standby's copy of a failover slot is never consumed): use \
                 target_session_attrs=primary or read-write, or leave it out"
            ),
        }),
    }
}

impl Settings {
    /// Parses and checks every setting once: URLs, names, templates,
    /// numbers. Each error names the setting and what would be right.
    pub fn parse(&self) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let name = |key: &'static str| move |source: NameError| ConfigError::Name { key, source };
        let pg = match self.pg_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(primary_only(
                url.parse::<ReplicationConfig>()
                    .map_err(|e| invalid("pg_url", e.to_string()))?,
            )?),
        };
        let brokers = crate::redact::split_amqp_urls(self.amqp_url.as_deref().unwrap_or(""))
            .into_iter()
            .map(|url| url.parse::<BrokerUrl>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("amqp_url", e.to_string()))?;
        names::check_slot(&self.slot).map_err(name("slot"))?;
        names::check_name("publication", &self.publication).map_err(name("publication"))?;
        let tables = self.table_mappings()?;
        amqp_name("dead_letter_exchange", &self.dead_letter_exchange, false)?;
        amqp_name("dead_letter_queue", &self.dead_letter_queue, false)?;
        amqp_name("content_type", &self.content_type, false)?;
        let positive = [
            ("window_messages", self.window_messages),
            ("window_bytes", self.window_bytes),
            ("max_payload_bytes", self.max_payload_bytes),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("heartbeat_secs", self.heartbeat_secs),
            ("row_attempts", self.row_attempts),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return Err(invalid(
                "max_payload_bytes",
                format!(
                    "{} is over {MAX_PAYLOAD_LIMIT} (16 MiB, RabbitMQ's default max_message_size): \
                     larger messages would be refused by the broker, not dead-lettered",
                    self.max_payload_bytes
                ),
            ));
        }
        if self.window_messages > 1 << 20 {
            return Err(invalid(
                "window_messages",
                format!("{} is over 1048576", self.window_messages),
            ));
        }
        if self.window_bytes > u64::from(u32::MAX) / 2 {
            return Err(invalid(
                "window_bytes",
                format!("{} is over 2 GiB", self.window_bytes),
            ));
        }
        if self.row_attempts > 100 {
            return Err(invalid(
                "row_attempts",
                format!(
                    "{} is over 100: a refused row would hold the stream back for long",
                    self.row_attempts
                ),
            ));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                "backoff_max_ms",
                format!(
                    "{} is less than backoff_initial_ms ({})",
                    self.backoff_max_ms, self.backoff_initial_ms
                ),
            ));
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return Err(invalid(
                "backoff_multiplier",
                format!("{} must be at least 1.0", self.backoff_multiplier),
            ));
        }
        let metrics_addr = match self.metrics_addr.trim() {
            "" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics_addr",
                    format!("{addr:?} is not host:port (e.g. 127.0.0.1:9187); empty disables it"),
                )
            })?),
        };
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(Config {
            pg,
            brokers,
            slot: self.slot.clone(),
            publication: self.publication.clone(),
            mapping: MappingConfig {
                tables,
                message_prefix: self.message_prefix.clone(),
                dead_letter_exchange: self.dead_letter_exchange.clone(),
            },
            declare_exchange: self.declare_exchange,
            dead_letter_queue: self.dead_letter_queue.clone(),
            dead_letter_queue_type: self.dead_letter_queue_type.into(),
            core: CoreConfig {
                window_messages: size(self.window_messages),
                window_bytes: size(self.window_bytes),
                on_unroutable: self.on_unroutable,
                row_attempts: u32::try_from(self.row_attempts).unwrap_or(u32::MAX),
            },
            max_payload_bytes: size(self.max_payload_bytes),
            standby: self.standby,
            standby_poll: Duration::from_millis(self.standby_poll_ms),
            failover_slot: self.failover_slot,
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            backoff: BackoffConfig {
                initial: Duration::from_millis(self.backoff_initial_ms),
                max: Duration::from_millis(self.backoff_max_ms),
                multiplier: self.backoff_multiplier,
            },
            heartbeat: Duration::from_secs(self.heartbeat_secs.max(3)),
            amqp_ca_file: match self.amqp_ca_file.trim() {
                "" => None,
                path => Some(PathBuf::from(path)),
            },
            sink: self.sink,
            metrics_addr,
            log_format: self.log_format,
        })
    }

    /// Every table's mapping: one per `[[table]]` entry (each key it leaves
    /// out taken from the top level), or the one table of `table`. Names
    /// must be distinct.
    fn table_mappings(&self) -> Result<Vec<TableMapping>, ConfigError> {
        let entries = self.table.entries();
        let many = matches!(self.table, Tables::Many(_));
        let mut tables: Vec<TableMapping> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if many && entry.name.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: "table",
                    message: format!(
                        "[[table]] entry {} has no name: give it name = \"schema.table\"",
                        i + 1
                    ),
                });
            }
            let mapping = self.table_mapping(entry).map_err(|source| {
                if many {
                    ConfigError::InTable {
                        table: entry.name.clone(),
                        source: Box::new(source),
                    }
                } else {
                    source
                }
            })?;
            if tables.iter().any(|t| t.table == mapping.table) {
                return Err(ConfigError::Invalid {
                    key: "table",
                    message: format!(
                        "{} is listed twice: give each outbox table one [[table]] entry",
                        mapping.table
                    ),
                });
            }
            tables.push(mapping);
        }
        if tables.is_empty() {
            return Err(ConfigError::Invalid {
                key: "table",
                message: "names no table".into(),
            });
        }
        Ok(tables)
    }

    /// One table's mapping: the entry's keys over the top-level settings.
    fn table_mapping(&self, entry: &TableEntry) -> Result<TableMapping, ConfigError> {
        let name = |key: &'static str| move |source: NameError| ConfigError::Name { key, source };
        let or = |value: &Option<String>, default: &String| -> String {
            value.clone().unwrap_or_else(|| default.clone())
        };
        let table = TableName::parse(&entry.name).map_err(name("table"))?;
        let id_column = or(&entry.id_column, &self.id_column);
        let payload_column = or(&entry.payload_column, &self.payload_column);
        let type_column = or(&entry.type_column, &self.type_column);
        let timestamp_column = or(&entry.timestamp_column, &self.timestamp_column);
        let header_columns = entry
            .header_columns
            .clone()
            .unwrap_or_else(|| self.header_columns.clone());
        for (key, column, required) in [
            ("id_column", &id_column, true),
            ("payload_column", &payload_column, true),
            ("type_column", &type_column, false),
            ("timestamp_column", &timestamp_column, false),
        ] {
            if required || !column.is_empty() {
                names::check_name("column", column).map_err(name(key))?;
            }
        }
        for column in &header_columns {
            names::check_name("column", column).map_err(name("header_columns"))?;
        }
        let template = |key: &'static str, text: &str| {
            Template::parse(text).map_err(|source| ConfigError::Template { key, source })
        };
        let exchange = template("exchange", &or(&entry.exchange, &self.exchange))?;
        let routing_key = template("routing_key", &or(&entry.routing_key, &self.routing_key))?;
        for column in exchange.columns().chain(routing_key.columns()) {
            names::check_name("column", column).map_err(name("routing_key"))?;
        }
        if let Some(constant) = exchange.as_constant() {
            amqp_name("exchange", &constant, true)?;
        }
        let content_type = or(&entry.content_type, &self.content_type);
        amqp_name("content_type", &content_type, false)?;
        let property_columns = crate::mapping::PropertyColumns {
            correlation_id: or(&entry.correlation_id_column, &self.correlation_id_column),
            reply_to: or(&entry.reply_to_column, &self.reply_to_column),
            expiration: or(&entry.expiration_column, &self.expiration_column),
            priority: or(&entry.priority_column, &self.priority_column),
            app_id: or(&entry.app_id_column, &self.app_id_column),
            content_encoding: or(
                &entry.content_encoding_column,
                &self.content_encoding_column,
            ),
            headers: or(&entry.headers_column, &self.headers_column),
        };
        let source = or(&entry.cloudevents_source, &self.cloudevents_source);
        let cloudevents =
            entry
                .cloudevents
                .unwrap_or(self.cloudevents)
                .then(|| crate::enrich::CloudEvents {
                    // The name as written (what one table's source has
                    // always been), not its normalised form.
                    source: if source.is_empty() {
                        format!("/outbox-relay/{}", entry.name.trim())
                    } else {
                        source
                    },
                    subject_column: or(
                        &entry.cloudevents_subject_column,
                        &self.cloudevents_subject_column,
                    ),
                });
        Ok(TableMapping {
            table,
            exchange,
            routing_key,
            id_column,
            payload_column,
            type_column,
            timestamp_column,
            header_columns,
            content_type,
            cloudevents,
            property_columns,
        })
    }

    /// Each key with its value as text, secrets redacted (passwords in URLs
    /// and `password=` pairs replaced by `***`).
    pub fn redacted(&self) -> Vec<(&'static str, String)> {
        let value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(toml::Table::new()));
        let table = value.as_table().cloned().unwrap_or_default();
        FIELDS
            .iter()
            .map(|(key, _)| {
                let text = match table.get(*key) {
                    None => "(not set)".to_string(),
                    Some(toml::Value::Array(_)) if *key == "table" => match &self.table {
                        Tables::Many(entries) => format!(
                            "{} [[table]] entries: {}",
                            entries.len(),
                            entries
                                .iter()
                                .map(|e| e.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Tables::One(name) => name.clone(),
                    },
                    Some(toml::Value::String(s)) if SECRETS.contains(key) => redact_secret(s),
                    Some(toml::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                (*key, text)
            })
            .collect()
    }
}

/// Checks a name the relay gives the broker: at most 255 bytes (AMQP's
/// short strings), no control characters, not empty unless allowed.
fn amqp_name(key: &'static str, value: &str, empty_ok: bool) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { key, message };
    if value.is_empty() && !empty_ok {
        return Err(invalid("must not be empty".into()));
    }
    if value.len() > crate::template::MAX_SHORT_STRING {
        return Err(invalid(format!(
            "{} bytes; AMQP names hold at most 255",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{value:?} holds a control character")));
    }
    Ok(())
}

/// Replaces every password in a pg_url or amqp_url value with `***`: a list
/// of amqp:// URLs by [`crate::redact::amqp_urls`], anything else as a libpq
/// connection string by [`crate::redact::pg_conninfo`].
pub fn redact_secret(value: &str) -> String {
    if crate::redact::is_amqp_url(value) {
        crate::redact::amqp_urls(value)
    } else {
        crate::redact::pg_conninfo(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let r = resolve(None, env(&[])).unwrap();
        let s = r.settings;
        assert_eq!(s.slot, "outbox_relay");
        assert_eq!(s.publication, "outbox_relay");
        assert_eq!(s.table, Tables::from("public.outbox"));
        assert_eq!(s.exchange, "outbox");
        assert_eq!(s.metrics_addr, "127.0.0.1:9187");
        assert_eq!(s.routing_key, "{aggregate_type}.{event_type}");
        assert!(r.sources.values().all(|s| *s == Source::Default));
    }

    #[test]
    fn every_setting_has_an_env_name_and_a_type() {
        let value = toml::Value::try_from(Settings {
            pg_url: Some("x".into()),
            amqp_url: Some("y".into()),
            ..Settings::default()
        })
        .unwrap();
        let keys: Vec<&String> = value.as_table().unwrap().keys().collect();
        assert_eq!(keys.len(), FIELDS.len());
        for key in keys {
            assert!(
                FIELDS.iter().any(|(k, _)| k == key),
                "{key} missing from FIELDS"
            );
        }
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let file = r#"
            pg_url = "postgres://file@db/app"
            slot = "from_file"
            window_messages = 64
        "#;
        let r = resolve(
            Some(("relay.toml", file)),
            env(&[
                ("RELAY_SLOT", "from_env"),
                (
                    "RELAY_AMQP_URL",
                    "amqp://a:secret@b1:5672/%2f, amqp://a:secret@b2",
                ),
                ("RELAY_STANDBY", "false"),
                ("RELAY_HEADER_COLUMNS", "tenant, trace_id"),
                ("RELAY_BACKOFF_MULTIPLIER", "1.5"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        let s = &r.settings;
        assert_eq!(s.slot, "from_env");
        assert_eq!(s.pg_url.as_deref(), Some("postgres://file@db/app"));
        assert_eq!(s.window_messages, 64);
        assert!(!s.standby);
        assert_eq!(s.header_columns, ["tenant", "trace_id"]);
        assert_eq!(s.backoff_multiplier, 1.5);
        assert_eq!(r.sources["slot"], Source::Env);
        assert_eq!(r.sources["pg_url"], Source::File);
        assert_eq!(r.sources["window_messages"], Source::File);
        assert_eq!(r.sources["table"], Source::Default);
        let config = s.parse().unwrap();
        assert_eq!(config.brokers.len(), 2);
        assert_eq!(config.core.window_messages, 64);
        assert_eq!(config.mapping.first().table.to_string(), "public.outbox");
    }

    #[test]
    fn table_entries_take_their_own_keys_and_inherit_the_rest() {
        let file = r#"
            exchange = "events"
            header_columns = ["tenant"]
            cloudevents = true
            [[table]]
            name = "orders.outbox"
            [[table]]
            name = "Billing.Outbox"
            exchange = "{aggregate_type}"
            payload_column = "body"
            header_columns = []
            cloudevents_source = "/billing"
        "#;
        let r = resolve(Some(("relay.toml", file)), env(&[])).unwrap();
        assert_eq!(r.sources["table"], Source::File);
        let config = r.settings.parse().unwrap();
        let [orders, billing] = &config.mapping.tables[..] else {
            panic!("two tables");
        };
        assert_eq!(orders.table.to_string(), "orders.outbox");
        assert_eq!(orders.exchange.as_constant().as_deref(), Some("events"));
        assert_eq!(orders.payload_column, "payload");
        assert_eq!(orders.header_columns, ["tenant"]);
        assert_eq!(
            orders.cloudevents.as_ref().map(|c| c.source.as_str()),
            Some("/outbox-relay/orders.outbox"),
            "the name as written"
        );
        // Unquoted, a name is folded to lower case, as SQL does.
        assert_eq!(billing.table.schema, "billing");
        assert_eq!(billing.exchange.as_constant(), None);
        assert_eq!(billing.payload_column, "body");
        assert!(billing.header_columns.is_empty());
        assert_eq!(
            billing.cloudevents.as_ref().map(|c| c.source.as_str()),
            Some("/billing")
        );
        assert_eq!(config.constant_exchanges(), ["events"]);
        assert_eq!(config.constant_exchange(), None);
        // RELAY_TABLE (the environment wins) means one table again.
        let r = resolve(
            Some(("relay.toml", file)),
            env(&[("RELAY_TABLE", "public.outbox")]),
        )
        .unwrap();
        let config = r.settings.parse().unwrap();
        assert_eq!(config.mapping.tables.len(), 1);
        assert_eq!(config.constant_exchange().as_deref(), Some("events"));
    }

    #[test]
    fn a_wrong_table_entry_is_named_with_what_would_be_right() {
        let typo =
            "[[table]]\nname = \"a.outbox\"\n[[table]]\nname = \"b.outbox\"\nexchnage = \"b\"\n";
        let e = resolve(Some(("relay.toml", typo)), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[[table]] entry 2: unknown key `exchnage`; did you mean `exchange`?"),
            "{e}"
        );
        let no_name = "[[table]]\nexchange = \"b\"\n";
        let e = resolve(Some(("relay.toml", no_name)), env(&[]))
            .unwrap()
            .settings
            .parse()
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[table]] entry 1 has no name"), "{e}");
        let twice = "[[table]]\nname = \"a.outbox\"\n[[table]]\nname = \"a.outbox\"\n";
        let e = resolve(Some(("relay.toml", twice)), env(&[]))
            .unwrap()
            .settings
            .parse()
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.outbox is listed twice"), "{e}");
        let bad_template = "[[table]]\nname = \"a.outbox\"\nrouting_key = \"{x\"\n";
        let e = resolve(Some(("relay.toml", bad_template)), env(&[]))
            .unwrap()
            .settings
            .parse()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("[[table]] a.outbox: routing_key:"), "{e}");
        let wrong_type = "[[table]]\nname = \"a.outbox\"\nheader_columns = \"x\"\n";
        let e = resolve(Some(("relay.toml", wrong_type)), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[table]] entry 1:"), "{e}");
        let single_brackets = "[table]\nname = \"a.outbox\"\n";
        let e = resolve(Some(("relay.toml", single_brackets)), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[table]] entries (double brackets)"), "{e}");
        let empty = "table = []\n";
        assert!(resolve(Some(("relay.toml", empty)), env(&[])).is_err());
    }

    #[test]
    fn typos_are_reported_not_ignored() {
        let r = resolve(
            None,
            env(&[
                ("RELAY_PG_ULR", "x"),
                ("RELAY_TEST_BIN", "y"),
                ("RELAY_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(
            r.unknown_env,
            [("RELAY_PG_ULR".to_string(), Some("RELAY_PG_URL".to_string()))]
        );
        let r = resolve(
            None,
            env(&[
                ("RELAY_BIN", "/x"),
                ("RELAY_BENCH_DUMP", "1"),
                ("RELAY_TEST_AMQP_URL", "amqp://h"),
                ("RELAY_NOTHING_LIKE_IT", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(r.unknown_env, [("RELAY_NOTHING_LIKE_IT".to_string(), None)]);
        let err = resolve(Some(("relay.toml", "slott = 'x'")), env(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file relay.toml: unknown key `slott`; did you mean `slot`?"
        );
        let err = resolve(Some(("relay.toml", "exchage = 'x'")), env(&[])).unwrap_err();
        assert!(
            err.to_string().ends_with("did you mean `exchange`?"),
            "{err}"
        );
    }

    #[test]
    fn a_toml_error_never_quotes_the_line_with_the_password() {
        let file = "pg_url = \"postgres://relay:s3cret-pw@db/app\nslot = 'x'\n";
        let err = resolve(Some(("relay.toml", file)), env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("s3cret-pw"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn wrong_types_name_the_variable_and_what_was_expected() {
        let err = resolve(None, env(&[("RELAY_WINDOW_MESSAGES", "lots")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "RELAY_WINDOW_MESSAGES=\"lots\": expected a non-negative integer"
        );
        let err = resolve(None, env(&[("RELAY_ON_UNROUTABLE", "retry")])).unwrap_err();
        assert!(err.to_string().contains("dead-letter"), "{err}");
    }

    #[test]
    fn missing_urls_say_how_to_set_them() {
        let config = resolve(None, env(&[])).unwrap().settings.parse().unwrap();
        assert_eq!(
            config.pg().unwrap_err().to_string(),
            "pg_url is not set: set RELAY_PG_URL or `pg_url = \"...\"` in the config file"
        );
        assert!(config
            .brokers()
            .unwrap_err()
            .to_string()
            .contains("RELAY_AMQP_URL"));
    }

    #[test]
    fn broker_lists_split_only_where_a_url_starts() {
        assert_eq!(
            crate::redact::split_amqp_urls("amqp://u:p,w@h1/%2f, amqps://u:x@h2 ,amqp://h3"),
            ["amqp://u:p,w@h1/%2f", "amqps://u:x@h2", "amqp://h3"]
        );
        assert_eq!(crate::redact::split_amqp_urls(""), Vec::<&str>::new());
    }

    #[test]
    fn a_constant_exchange_reads_its_braces_once() {
        let config = Settings {
            exchange: "events.{{v2}}".into(),
            ..Settings::default()
        }
        .parse()
        .unwrap();
        assert_eq!(config.constant_exchange().as_deref(), Some("events.{v2}"));
    }

    #[test]
    fn invalid_values_are_rejected_with_the_fix() {
        let base = Settings {
            pg_url: Some("postgres://relay@x/app".into()),
            amqp_url: Some("amqp://y".into()),
            ..Settings::default()
        };
        let bad = Settings {
            slot: "Outbox-Relay".into(),
            ..base.clone()
        };
        let err = bad.parse().unwrap_err().to_string();
        assert!(err.contains("lower case"), "{err}");
        let bad = Settings {
            routing_key: "{aggregate_type".into(),
            ..base.clone()
        };
        assert!(bad
            .parse()
            .unwrap_err()
            .to_string()
            .starts_with("routing_key:"));
        for (key, bad) in [
            (
                "table",
                Settings {
                    table: "a.b.c".into(),
                    ..base.clone()
                },
            ),
            (
                "publication",
                Settings {
                    publication: "p\nq".into(),
                    ..base.clone()
                },
            ),
            (
                "exchange",
                Settings {
                    exchange: "ex\tchange".into(),
                    ..base.clone()
                },
            ),
            (
                "dead_letter_queue",
                Settings {
                    dead_letter_queue: String::new(),
                    ..base.clone()
                },
            ),
            (
                "metrics_addr",
                Settings {
                    metrics_addr: "localhost".into(),
                    ..base.clone()
                },
            ),
            (
                "row_attempts",
                Settings {
                    row_attempts: 0,
                    ..base.clone()
                },
            ),
        ] {
            let err = bad.parse().unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}:")), "{key}: {err}");
        }
        let bad = Settings {
            max_payload_bytes: MAX_PAYLOAD_LIMIT + 1,
            ..base.clone()
        };
        assert!(bad.parse().unwrap_err().to_string().contains("16 MiB"));
        let bad = Settings {
            window_messages: 0,
            ..base
        };
        assert!(bad.parse().is_err());
    }

    #[test]
    fn secrets_are_redacted_in_every_form() {
        assert_eq!(
            redact_secret("postgres://relay:s3cret@db:5432/app"),
            "postgres://relay:***@db:5432/app"
        );
        assert_eq!(
            redact_secret("host=db user=relay password=s3cret dbname=app"),
            "host=db user=relay password=*** dbname=app"
        );
        assert_eq!(
            redact_secret("amqp://u:p1@b1/%2f,amqp://u:p2@b2/%2f"),
            "amqp://u:***@b1/%2f,amqp://u:***@b2/%2f"
        );
        assert_eq!(redact_secret("amqp://b1/%2f"), "amqp://b1/%2f");
        // What the first version showed: the end of a quoted password with
        // a space, a password's comma-separated tail.
        assert_eq!(
            redact_secret("host=db password='s3 cret' dbname=app"),
            "host=db password=*** dbname=app"
        );
        assert_eq!(
            redact_secret("amqp://u:p,w@b1/%2f, amqps://u:q@b2"),
            "amqp://u:***@b1/%2f, amqps://u:***@b2"
        );
        let s = Settings {
            pg_url: Some("postgres://relay:s3cret@db/app".into()),
            ..Settings::default()
        };
        let shown = format!("{:?} {s:?}", s.redacted());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("relay:***@db"), "{shown}");
    }
}
