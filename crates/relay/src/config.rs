//! Settings: one struct with documented defaults, read from a TOML file and
//! RELAY_* environment variables (the environment wins).
//!
//! Pure code: [`resolve`] takes the file's text and the environment as
//! values, so every rule here is unit-tested without touching the process.
//! It also records where each value came from (default, file, env), for
//! `outbox-relay config`. The names and defaults of RELAY_PG_URL,
//! RELAY_AMQP_URL, RELAY_SLOT, RELAY_PUBLICATION, RELAY_TABLE,
//! RELAY_EXCHANGE and RELAY_METRICS_ADDR are a contract with users: keep
//! them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// The outbox table, schema-qualified.
    pub table: String,
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
    /// Larger payloads are dead-lettered (reason `oversize`).
    pub max_payload_bytes: u64,
    /// Prefix of pg_logical_emit_message events to publish (a table-less
    /// outbox); empty to ignore logical decoding messages.
    pub message_prefix: String,
    /// Messages in flight to the broker at most.
    pub window_messages: u64,
    /// Bytes of message bodies in flight to the broker at most.
    pub window_bytes: u64,
    /// If another process holds the slot, wait as a standby and take over
    /// when it frees (false = exit with the reason).
    pub standby: bool,
    /// How often a standby re-checks the slot, in milliseconds.
    pub standby_poll_ms: u64,
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
            table: "public.outbox".into(),
            exchange: "outbox".into(),
            routing_key: "{aggregate_type}.{event_type}".into(),
            declare_exchange: true,
            dead_letter_exchange: "outbox.dead-letter".into(),
            dead_letter_queue: "outbox.dead-letter".into(),
            on_unroutable: UnroutablePolicy::DeadLetter,
            id_column: "id".into(),
            payload_column: "payload".into(),
            type_column: "event_type".into(),
            timestamp_column: "created_at".into(),
            header_columns: Vec::new(),
            content_type: "application/json".into(),
            max_payload_bytes: 8 * 1024 * 1024,
            message_prefix: "outbox".into(),
            window_messages: 1024,
            window_bytes: 16 * 1024 * 1024,
            standby: true,
            standby_poll_ms: 2_000,
            shutdown_timeout_ms: 10_000,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            backoff_multiplier: 2.0,
            heartbeat_secs: 10,
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

/// What to do with a message the broker returns as unroutable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnroutablePolicy {
    /// Publish it to the dead-letter exchange with reason `unroutable`.
    DeadLetter,
    /// Count it and go on.
    Drop,
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
    ("on_unroutable", Kind::Str),
    ("id_column", Kind::Str),
    ("payload_column", Kind::Str),
    ("type_column", Kind::Str),
    ("timestamp_column", Kind::Str),
    ("header_columns", Kind::List),
    ("content_type", Kind::Str),
    ("max_payload_bytes", Kind::Int),
    ("message_prefix", Kind::Str),
    ("window_messages", Kind::Int),
    ("window_bytes", Kind::Int),
    ("standby", Kind::Bool),
    ("standby_poll_ms", Kind::Int),
    ("shutdown_timeout_ms", Kind::Int),
    ("backoff_initial_ms", Kind::Int),
    ("backoff_max_ms", Kind::Int),
    ("backoff_multiplier", Kind::Float),
    ("heartbeat_secs", Kind::Int),
    ("metrics_addr", Kind::Str),
    ("log_format", Kind::Str),
];

/// The largest `max_payload_bytes`: RabbitMQ 4's default
/// `max_message_size`, and the sink's own limit.
pub const MAX_PAYLOAD_LIMIT: u64 = 16 * 1024 * 1024;

/// RELAY_* variables that are not settings but are read elsewhere: the
/// config file's path, the log filter, and the test kit's own.
const OTHER_VARS: &[&str] = &["RELAY_CONFIG", "RELAY_LOG"];

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
    /// RELAY_* variables that name no setting (a typo, most likely).
    pub unknown_env: Vec<String>,
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
            message: e.to_string(),
        })?;
        for (key, _) in FIELDS {
            if table.contains_key(*key) {
                sources.insert(key, Source::File);
            }
        }
        // Check keys and types now, so that a file error names the file.
        Settings::deserialize(table.clone()).map_err(|e| ConfigError::File {
            path: path.to_string(),
            message: e.to_string(),
        })?;
    }
    let mut unknown_env = Vec::new();
    for (var, value) in env {
        let Some(key) = var.strip_prefix("RELAY_") else {
            continue;
        };
        let key = key.to_lowercase();
        let Some((name, kind)) = FIELDS.iter().find(|(k, _)| *k == key) else {
            if !var.starts_with("RELAY_TEST_") && !OTHER_VARS.contains(&var.as_str()) {
                unknown_env.push(var);
            }
            continue;
        };
        table.insert((*name).to_string(), env_value(&var, &value, *kind)?);
        sources.insert(name, Source::Env);
    }
    unknown_env.sort();
    let settings = Settings::deserialize(table).map_err(|e| ConfigError::File {
        path: "(environment)".into(),
        message: e.to_string(),
    })?;
    Ok(Resolved {
        settings,
        sources,
        unknown_env,
    })
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

impl Settings {
    /// Checks what the relay needs to run: required URLs, sane numbers,
    /// templates that parse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [("pg_url", &self.pg_url), ("amqp_url", &self.amqp_url)] {
            if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                return Err(ConfigError::Missing {
                    key,
                    env: env_name(key),
                });
            }
        }
        self.exchange_template()?;
        self.routing_key_template()?;
        let positive = [
            ("window_messages", self.window_messages),
            ("window_bytes", self.window_bytes),
            ("max_payload_bytes", self.max_payload_bytes),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("heartbeat_secs", self.heartbeat_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be greater than 0".into(),
                });
            }
        }
        if self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return Err(ConfigError::Invalid {
                key: "max_payload_bytes",
                message: format!(
                    "{} is over {MAX_PAYLOAD_LIMIT} (16 MiB, RabbitMQ's default max_message_size): \
                     larger messages would be refused by the broker, not dead-lettered",
                    self.max_payload_bytes
                ),
            });
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(ConfigError::Invalid {
                key: "backoff_max_ms",
                message: format!(
                    "{} is less than backoff_initial_ms ({})",
                    self.backoff_max_ms, self.backoff_initial_ms
                ),
            });
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return Err(ConfigError::Invalid {
                key: "backoff_multiplier",
                message: format!("{} must be at least 1.0", self.backoff_multiplier),
            });
        }
        for (key, value) in [
            ("slot", &self.slot),
            ("publication", &self.publication),
            ("table", &self.table),
            ("id_column", &self.id_column),
            ("payload_column", &self.payload_column),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must not be empty".into(),
                });
            }
        }
        if !self
            .slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConfigError::Invalid {
                key: "slot",
                message: format!(
                    "{:?}: slot names may contain only lower case letters, digits and underscores",
                    self.slot
                ),
            });
        }
        Ok(())
    }

    /// The parsed exchange template.
    pub fn exchange_template(&self) -> Result<Template, ConfigError> {
        Template::parse(&self.exchange).map_err(|source| ConfigError::Template {
            key: "exchange",
            source,
        })
    }

    /// The parsed routing key template.
    pub fn routing_key_template(&self) -> Result<Template, ConfigError> {
        Template::parse(&self.routing_key).map_err(|source| ConfigError::Template {
            key: "routing_key",
            source,
        })
    }

    /// The broker URLs, in the order they are tried.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.amqp_url
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
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
                    Some(toml::Value::String(s)) if SECRETS.contains(key) => redact_secret(s),
                    Some(toml::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                (*key, text)
            })
            .collect()
    }
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
        assert_eq!(s.table, "public.outbox");
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
        assert_eq!(s.amqp_urls().len(), 2);
        assert_eq!(r.sources["slot"], Source::Env);
        assert_eq!(r.sources["pg_url"], Source::File);
        assert_eq!(r.sources["window_messages"], Source::File);
        assert_eq!(r.sources["table"], Source::Default);
        s.validate().unwrap();
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
        assert_eq!(r.unknown_env, ["RELAY_PG_ULR"]);
        let err = resolve(Some(("relay.toml", "slott = 'x'")), env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("relay.toml") && msg.contains("slott"), "{msg}");
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
        let s = resolve(None, env(&[])).unwrap().settings;
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "pg_url is not set: set RELAY_PG_URL or `pg_url = \"...\"` in the config file"
        );
    }

    #[test]
    fn invalid_values_are_rejected_with_the_fix() {
        let base = Settings {
            pg_url: Some("postgres://x".into()),
            amqp_url: Some("amqp://y".into()),
            ..Settings::default()
        };
        let bad = Settings {
            slot: "Outbox-Relay".into(),
            ..base.clone()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("lower case"));
        let bad = Settings {
            routing_key: "{aggregate_type".into(),
            ..base.clone()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("routing_key:"));
        let bad = Settings {
            max_payload_bytes: MAX_PAYLOAD_LIMIT + 1,
            ..base.clone()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("16 MiB"));
        let bad = Settings {
            window_messages: 0,
            ..base
        };
        assert!(bad.validate().is_err());
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
