//! `outbox-relay config --from-debezium FILE`: reads a Debezium connector
//! (Kafka Connect) or Debezium Server properties file whose PostgreSQL
//! source feeds the outbox event router, and writes the relay's equivalent
//! settings as TOML, with a comment on every option it cannot honour and
//! why. Pure: text in, text out.
//!
//! What maps:
//!
//! - `database.hostname/port/user/dbname/sslmode/sslrootcert` -> `pg_url`
//!   (never the password: it belongs in RELAY_PG_URL or PGPASSWORD);
//!   `slot.name`, `publication.name`, `table.include.list` (one table, or
//!   a `[[table]]` entry per table).
//! - the EventRouter (`transforms.<name>.type =
//!   io.debezium.transforms.outbox.EventRouter`): `table.field.event.id`,
//!   `.payload`, `.type`, `.timestamp`; `route.by.field` with
//!   `route.topic.replacement` -> the topic as a template over the column
//!   (`outbox.event.{aggregatetype}`); `table.fields.additional.placement`
//!   entries placed as headers -> `header_columns`.
//! - Debezium Server's RabbitMQ sink (`debezium.sink.rabbitmq.*`): the
//!   connection -> `amqp_url` (no password), `exchange` and `routingKey`
//!   as it uses them: a set exchange is the exchange, else the topic is;
//!   a set routing key is the routing key, else the topic is when
//!   `routingKeyFromTopicName`, else Debezium sent an empty key, which the
//!   relay does not (it uses the topic and says so).
//! - A Kafka Connect file has no RabbitMQ side: the topic becomes the
//!   routing key on the relay's default exchange.

use std::collections::BTreeMap;

/// The EventRouter's class.
const EVENT_ROUTER: &str = "io.debezium.transforms.outbox.EventRouter";

/// Reads a Java properties file: `key=value`, `key: value` or `key value`;
/// `#` and `!` comments; a trailing backslash continues a line; `\t`, `\n`,
/// `\uXXXX` and escaped separators in values. Later keys win.
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim_start();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        // A line continues when it ends with an odd number of backslashes
        // (an even number is escaped backslashes).
        let trailing = line.bytes().rev().take_while(|b| *b == b'\\').count();
        let continued = trailing % 2 == 1;
        logical.push_str(if continued {
            &line[..line.len() - 1]
        } else {
            line
        });
        if continued {
            continue;
        }
        let entry = std::mem::take(&mut logical);
        let (key, value) = split_entry(&entry);
        out.insert(unescape(&key), unescape(value.trim_start()));
    }
    // A continuation cut off by the end of the file still counts.
    if !logical.is_empty() {
        let (key, value) = split_entry(&logical);
        out.insert(unescape(&key), unescape(value.trim_start()));
    }
    out
}

/// Whether an option holds a secret: its value is never written out.
fn secret(option: &str) -> bool {
    let o = option.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "credential",
        "authparams",
        "keystore.key",
    ]
    .iter()
    .any(|s| o.contains(s))
}

/// Text made safe for a TOML comment: control characters escaped, so a
/// value cannot end the comment and start a key.
fn comment_text(text: &str) -> String {
    crate::mapping::shown(text, 400)
}

/// A URL component, percent-encoded (RFC 3986 unreserved characters kept).
fn encoded(part: &str) -> String {
    part.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A host for a URL: IPv6 addresses in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Splits at the first unescaped `=`, `:` or whitespace.
fn split_entry(entry: &str) -> (String, &str) {
    let mut escaped = false;
    for (i, c) in entry.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' => return (entry[..i].to_string(), &entry[i + 1..]),
            c if c.is_whitespace() => {
                let rest = entry[i..].trim_start();
                let rest = rest
                    .strip_prefix('=')
                    .or_else(|| rest.strip_prefix(':'))
                    .unwrap_or(rest);
                return (entry[..i].to_string(), rest);
            }
            _ => {}
        }
    }
    (entry.to_string(), "")
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(c) => out.push(c),
                    None => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The relay settings a Debezium configuration becomes, and what of it
/// could not be carried over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// Settings, in output order: (key, TOML value, comment).
    pub settings: Vec<(String, String, Option<String>)>,
    /// Options the relay cannot honour: (option as written, value, why).
    pub not_honoured: Vec<(String, String, String)>,
    /// Remarks for the top of the file.
    pub notes: Vec<String>,
    /// Several tables (table.include.list): one `[[table]]` entry each,
    /// after the top-level settings.
    pub tables: Vec<String>,
}

impl Converted {
    fn set(&mut self, key: &str, value: toml::Value, comment: Option<String>) {
        self.settings.retain(|(k, _, _)| k != key);
        self.settings
            .push((key.to_string(), value.to_string(), comment));
    }

    fn skip(&mut self, option: &str, value: &str, why: impl Into<String>) {
        self.not_honoured
            .push((option.to_string(), value.to_string(), why.into()));
    }

    /// The TOML text.
    pub fn render(&self, source: &str) -> String {
        let mut out = format!(
            "# outbox-relay settings converted from the Debezium configuration {source}.\n\
             # Passwords are never copied: put them in RELAY_PG_URL / RELAY_AMQP_URL (or\n\
             # PGPASSWORD), then run `outbox-relay --config <this file> check`.\n"
        );
        for note in &self.notes {
            out.push_str(&format!("# {}\n", comment_text(note)));
        }
        out.push('\n');
        for (key, value, comment) in &self.settings {
            if let Some(comment) = comment {
                for line in comment.lines() {
                    out.push_str(&format!("# {}\n", comment_text(line)));
                }
            }
            out.push_str(&format!("{key} = {value}\n"));
        }
        if !self.tables.is_empty() {
            out.push_str(
                "\n# table.include.list: one [[table]] entry per table, each mapped as above\n\
                 # (an entry may set any mapping key of its own).\n",
            );
            for table in &self.tables {
                let name = toml::Value::String(table.clone());
                out.push_str(&format!("[[table]]\nname = {name}\n"));
            }
        }
        if !self.not_honoured.is_empty() {
            out.push_str("\n# Debezium options the relay does not honour:\n");
            for (option, value, why) in &self.not_honoured {
                let value = if secret(option) {
                    "(a secret: not copied)".to_string()
                } else {
                    comment_text(value)
                };
                out.push_str(&format!(
                    "#   {} = {value}\n#     {}\n",
                    comment_text(option),
                    comment_text(why)
                ));
            }
        }
        out
    }
}

/// The properties with a prefix removed (and only those).
fn under<'a>(props: &'a BTreeMap<String, String>, prefix: &str) -> BTreeMap<&'a str, &'a str> {
    props
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
        .collect()
}

/// A template over one column for a Debezium topic expression: literal
/// braces doubled, `${routedByValue}` -> `{column}`.
fn topic_template(replacement: &str, column: &str) -> String {
    replacement
        .replace('{', "{{")
        .replace('}', "}}")
        .replace("${{routedByValue}}", &format!("{{{column}}}"))
}

/// Converts a Debezium configuration (see the module documentation).
pub fn convert(props: &BTreeMap<String, String>) -> Converted {
    let mut c = Converted::default();
    // Debezium Server prefixes the source with `debezium.source.` and the
    // transforms with `debezium.`; a connector file has neither.
    let server = props.keys().any(|k| k.starts_with("debezium."));
    let source = if server {
        under(props, "debezium.source.")
    } else {
        props
            .iter()
            .filter(|(k, _)| *k != "transforms" && !k.starts_with("transforms."))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    };
    let transforms_prefix = if server {
        "debezium.transforms"
    } else {
        "transforms"
    };
    let mut used: Vec<String> = Vec::new();

    // The connector.
    match source.get("connector.class") {
        Some(class) if class.contains("PostgresConnector") => {}
        Some(class) => c.notes.push(format!(
            "connector.class is {class}: the relay reads PostgreSQL only; the settings below \
             assume a PostgreSQL source"
        )),
        None => {}
    }

    // PostgreSQL.
    let get = |k: &str| source.get(k).copied().filter(|v| !v.is_empty());
    let host = get("database.hostname").unwrap_or("localhost");
    let port = get("database.port").unwrap_or("5432");
    let user = get("database.user").unwrap_or("postgres");
    let dbname = get("database.dbname").unwrap_or("postgres");
    let mut query = Vec::new();
    if let Some(mode) = get("database.sslmode") {
        query.push(format!("sslmode={}", encoded(mode)));
    }
    if let Some(root) = get("database.sslrootcert") {
        query.push(format!("sslrootcert={}", encoded(root)));
    }
    let mut pg_url = format!(
        "postgres://{}@{}:{}/{}",
        encoded(user),
        url_host(host),
        encoded(port),
        encoded(dbname)
    );
    if !query.is_empty() {
        pg_url.push('?');
        pg_url.push_str(&query.join("&"));
    }
    let password_note = if get("database.password").is_some() {
        "\ndatabase.password was set: give it as RELAY_PG_URL (with the password) or PGPASSWORD"
    } else {
        ""
    };
    c.set(
        "pg_url",
        toml::Value::String(pg_url),
        Some(format!(
            "from database.hostname, port, user, dbname, sslmode, sslrootcert{password_note}"
        )),
    );
    for k in [
        "database.hostname",
        "database.port",
        "database.user",
        "database.dbname",
        "database.password",
        "database.sslmode",
        "database.sslrootcert",
        "connector.class",
    ] {
        used.push(k.to_string());
    }
    if let Some(slot) = get("slot.name") {
        c.set(
            "slot",
            toml::Value::String(slot.into()),
            Some("slot.name".into()),
        );
    } else {
        c.set(
            "slot",
            toml::Value::String("debezium".into()),
            Some("slot.name was not set: Debezium's default slot".into()),
        );
    }
    used.push("slot.name".into());
    if let Some(publication) = get("publication.name") {
        c.set(
            "publication",
            toml::Value::String(publication.into()),
            Some("publication.name".into()),
        );
    } else {
        c.set(
            "publication",
            toml::Value::String("dbz_publication".into()),
            Some("publication.name was not set: Debezium's default publication".into()),
        );
    }
    used.push("publication.name".into());
    match get("plugin.name") {
        None | Some("pgoutput") => {}
        Some(other) => c.skip(
            "plugin.name",
            other,
            "the relay decodes pgoutput only: a slot of another plugin cannot be taken over; \
             give the relay a slot of its own (a new slot starts at its creation)",
        ),
    }
    used.push("plugin.name".into());
    let tables: Vec<&str> = get("table.include.list")
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    used.push("table.include.list".into());
    let regex = tables
        .iter()
        .any(|t| t.contains(['*', '+', '?', '[', '(', '|', '\\']));
    match tables.as_slice() {
        [] => {}
        _ if regex => c.skip(
            "table.include.list",
            &tables.join(","),
            "a regular expression: the relay reads named tables; give each its [[table]] entry",
        ),
        [table] => c.set(
            "table",
            toml::Value::String((*table).into()),
            Some("table.include.list".into()),
        ),
        several => {
            // Debezium's router maps every listed table alike: one entry
            // each, with the top-level mapping.
            c.tables = several.iter().map(|t| (*t).to_string()).collect();
        }
    }

    // The outbox event router.
    let transforms = under(props, &format!("{transforms_prefix}."));
    let router = transforms
        .iter()
        .find(|(k, v)| k.ends_with(".type") && **v == EVENT_ROUTER)
        .and_then(|(k, _)| k.strip_suffix(".type"))
        .map(str::to_string);
    let options: BTreeMap<&str, &str> = match &router {
        Some(name) => under(props, &format!("{transforms_prefix}.{name}."))
            .into_iter()
            .filter(|(k, _)| *k != "type")
            .collect(),
        None => {
            c.notes.push(format!(
                "no {EVENT_ROUTER} transform found: the outbox columns below are Debezium's \
                 defaults"
            ));
            BTreeMap::new()
        }
    };
    let opt = |k: &str, default: &'static str| -> String {
        options
            .get(k)
            .copied()
            .filter(|v| !v.is_empty())
            .unwrap_or(default)
            .to_string()
    };
    c.set(
        "id_column",
        toml::Value::String(opt("table.field.event.id", "id")),
        Some("table.field.event.id".into()),
    );
    c.set(
        "payload_column",
        toml::Value::String(opt("table.field.event.payload", "payload")),
        Some("table.field.event.payload".into()),
    );
    // The type: an explicit field, else a column placed as the eventType
    // header, else Debezium's conventional column.
    let placements: Vec<(String, String, Option<String>)> = options
        .get("table.fields.additional.placement")
        .map(|p| {
            p.split(',')
                .filter_map(|entry| {
                    let mut parts = entry.trim().split(':');
                    let column = parts.next()?.trim().to_string();
                    let place = parts.next()?.trim().to_string();
                    let alias = parts.next().map(|a| a.trim().to_string());
                    Some((column, place, alias))
                })
                .collect()
        })
        .unwrap_or_default();
    let typed_by_header = placements
        .iter()
        .find(|(_, place, alias)| place == "header" && alias.as_deref() == Some("eventType"))
        .map(|(column, _, _)| column.clone());
    let type_column = options
        .get("table.field.event.type")
        .map(|v| v.to_string())
        .or(typed_by_header)
        .unwrap_or_else(|| "type".into());
    c.set(
        "type_column",
        toml::Value::String(type_column),
        Some("the message's `type`: table.field.event.type, or the column placed as the eventType header".into()),
    );
    match options.get("table.field.event.timestamp") {
        Some(column) => c.set(
            "timestamp_column",
            toml::Value::String((*column).into()),
            Some("table.field.event.timestamp".into()),
        ),
        None => c.set(
            "timestamp_column",
            toml::Value::String(String::new()),
            Some(
                "no table.field.event.timestamp: Debezium used the change's time; the relay \
                 sets a timestamp only from a column"
                    .into(),
            ),
        ),
    }
    let mut headers = Vec::new();
    for (column, place, alias) in &placements {
        match place.as_str() {
            "header" => {
                headers.push(column.clone());
                if alias
                    .as_deref()
                    .is_some_and(|a| a != column && a != "eventType")
                {
                    c.skip(
                        "table.fields.additional.placement",
                        &format!("{column}:{place}:{}", alias.as_deref().unwrap_or("")),
                        "header aliases: the relay names a header after its column",
                    );
                }
            }
            "envelope" => c.skip(
                "table.fields.additional.placement",
                &format!("{column}:{place}"),
                "the relay sends the payload column as the body, with no envelope; the column \
                 goes as a header instead",
            ),
            "partition" => c.skip(
                "table.fields.additional.placement",
                &format!("{column}:{place}"),
                "AMQP has no partitions; order is kept per table and aggregate anyway",
            ),
            other => c.skip(
                "table.fields.additional.placement",
                &format!("{column}:{other}"),
                "an unknown placement",
            ),
        }
    }
    if !headers.is_empty() {
        c.notes.push(format!(
            "headers: the relay sends every column but id, payload and timestamp as a header \
             by default, {} included",
            headers.join(", ")
        ));
    }

    // Where messages go: Debezium's topic, as a template.
    let route_by = opt("route.by.field", "aggregatetype");
    let replacement = opt("route.topic.replacement", "outbox.event.${routedByValue}");
    let topic = topic_template(&replacement, &route_by);
    if let Some(regex) = options.get("route.topic.regex") {
        if *regex != "(?<routedByValue>.*)" {
            c.skip(
                "route.topic.regex",
                regex,
                "the relay has templates, not regular expressions; the topic below assumes the \
                 default (the whole value)",
            );
        }
    }
    let sink_type = props.get("debezium.sink.type").map(String::as_str);
    let rabbit = under(props, "debezium.sink.rabbitmq.");
    let (exchange, routing_key, how) = if server && sink_type == Some("rabbitmq") {
        let exchange = rabbit.get("exchange").copied().filter(|e| !e.is_empty());
        let key = rabbit.get("routingKey").copied().filter(|k| !k.is_empty());
        let from_topic = rabbit
            .get("routingKeyFromTopicName")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let exchange_value = exchange
            .map(|e| e.replace('{', "{{").replace('}', "}}"))
            .unwrap_or_else(|| topic.clone());
        let (key_value, how) = match (key, from_topic) {
            (Some(k), _) => (
                k.replace('{', "{{").replace('}', "}}"),
                "debezium.sink.rabbitmq.routingKey".to_string(),
            ),
            (None, true) => (
                topic.clone(),
                "the topic (routingKeyFromTopicName)".to_string(),
            ),
            (None, false) => {
                c.notes.push(
                    "Debezium published with an empty routing key (no routingKey, \
                     routingKeyFromTopicName false); the relay uses the topic instead: bind \
                     with it, or with # on a topic exchange"
                        .into(),
                );
                (topic.clone(), "the topic".to_string())
            }
        };
        (exchange_value, key_value, how)
    } else {
        if let Some(other) = sink_type {
            c.notes.push(format!(
                "debezium.sink.type is {other}: the relay publishes to RabbitMQ instead; the \
                 topic becomes the routing key"
            ));
        }
        (
            "outbox".to_string(),
            topic.clone(),
            "the Kafka topic (route.by.field, route.topic.replacement)".to_string(),
        )
    };
    c.set(
        "exchange",
        toml::Value::String(exchange),
        Some("debezium.sink.rabbitmq.exchange, else the topic".into()),
    );
    c.set(
        "routing_key",
        toml::Value::String(routing_key),
        Some(format!("{how}; route.by.field = {route_by}")),
    );
    if server && sink_type == Some("rabbitmq") {
        let conn = |k: &str| rabbit.get(&*format!("connection.{k}")).copied();
        let host = conn("host").unwrap_or("localhost");
        let user = conn("username").unwrap_or("guest");
        let tls = conn("ssl.enabled").is_some_and(|v| v == "true");
        let port = conn("port").unwrap_or(if tls { "5671" } else { "5672" });
        let vhost = conn("virtual.host").unwrap_or("/");
        let vhost: String = vhost
            .bytes()
            .map(|b| match b {
                b'/' => "%2f".to_string(),
                b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => char::from(b).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect();
        let scheme = if tls { "amqps" } else { "amqp" };
        let note = if conn("password").is_some() {
            "\nthe connection's password was set: give it as RELAY_AMQP_URL"
        } else {
            ""
        };
        c.set(
            "amqp_url",
            toml::Value::String(format!(
                "{scheme}://{}@{}:{}/{vhost}",
                encoded(user),
                url_host(host),
                encoded(port)
            )),
            Some(format!("debezium.sink.rabbitmq.connection.*{note}")),
        );
        if let Some(mode) = rabbit.get("deliveryMode").filter(|m| **m != "2") {
            c.skip(
                "debezium.sink.rabbitmq.deliveryMode",
                mode,
                "the relay always publishes persistent messages (delivery mode 2)",
            );
        }
        for (k, v) in &rabbit {
            let known = k.starts_with("connection.")
                || [
                    "exchange",
                    "routingKey",
                    "routingKeyFromTopicName",
                    "deliveryMode",
                ]
                .contains(k);
            if known {
                continue;
            }
            let why = match *k {
                "ackTimeout" => {
                    "the relay waits for confirms without a batch deadline; \
                                 shutdown_timeout_ms bounds the wait at stop"
                }
                "autoCreateRoutingKey" | "routingKeyDurable" => {
                    "the relay declares no consumer queues: bind your queues to the exchange"
                }
                "null.value" => "the relay dead-letters a row whose payload is NULL",
                _ => "no equivalent in the relay",
            };
            c.skip(&format!("debezium.sink.rabbitmq.{k}"), v, why);
        }
    }

    // Everything else the router or the source was told.
    for (k, v) in &options {
        let known = [
            "table.field.event.id",
            "table.field.event.payload",
            "table.field.event.type",
            "table.field.event.timestamp",
            "table.fields.additional.placement",
            "route.by.field",
            "route.topic.replacement",
            "route.topic.regex",
        ]
        .contains(k);
        if known {
            continue;
        }
        let why = match *k {
            "table.field.event.key" => {
                "AMQP messages have no key: the column goes as a header (and per-aggregate order \
                 holds on one queue)"
            }
            "table.expand.json.payload" => {
                "the relay sends a jsonb payload as its JSON text: already expanded"
            }
            "route.tombstone.on.empty.payload" => "the relay never sends tombstones",
            "table.op.invalid.behavior" => {
                "the relay ignores updates and deletes of the outbox (counted in a metric)"
            }
            "tracing.span.context.field"
            | "tracing.operation.name"
            | "tracing.with.context.field.only" => "trace context columns are not carried yet",
            _ => "no equivalent in the relay",
        };
        c.skip(
            &format!(
                "{transforms_prefix}.{}.{k}",
                router.as_deref().unwrap_or("?")
            ),
            v,
            why,
        );
    }
    for (k, v) in &source {
        if used.iter().any(|u| u == k) {
            continue;
        }
        let why = match *k {
            k if k.starts_with("offset.") => {
                "the slot's confirmed position is the relay's offset: nothing to store"
            }
            "snapshot.mode" => {
                "the relay never snapshots: it publishes what is committed after its slot exists"
            }
            "topic.prefix" | "database.server.name" => "no Kafka topics",
            "publication.autocreate.mode" => {
                "the relay creates its publication FOR TABLE (inserts) when missing"
            }
            "schema.include.list" => "the relay reads one table: see table",
            "tombstones.on.delete" => "the relay ignores deletes",
            "key.converter" | "value.converter" => "no Kafka Connect converters",
            _ => "no equivalent in the relay",
        };
        c.skip(k, v, why);
    }
    if server {
        for (k, v) in props {
            let handled = k.starts_with("debezium.source.")
                || k.starts_with(&format!("{transforms_prefix}."))
                || k.starts_with("debezium.sink.rabbitmq.")
                || k == "debezium.sink.type"
                || k == transforms_prefix;
            if !handled {
                c.skip(
                    k,
                    v,
                    "a Debezium Server option with no equivalent in the relay",
                );
            }
        }
    } else {
        for (k, v) in props {
            if k.starts_with("transforms.")
                && !router
                    .as_ref()
                    .is_some_and(|r| k.starts_with(&format!("transforms.{r}.")))
            {
                c.skip(k, v, "a transform other than the outbox event router");
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Kafka Connect PostgreSQL connector with the outbox event router,
    /// as Debezium's outbox documentation configures one.
    const CONNECTOR: &str = r#"
name=outbox-connector
connector.class=io.debezium.connector.postgresql.PostgresConnector
database.hostname=db.internal
database.port=5433
database.user=debezium
database.password=dbz-secret
database.dbname=shop
database.sslmode=verify-full
topic.prefix=shop
plugin.name=pgoutput
slot.name=shop_outbox
publication.name=shop_outbox_pub
table.include.list=public.outbox
tombstones.on.delete=false
transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.table.field.event.id=id
transforms.outbox.table.field.event.key=aggregateid
transforms.outbox.table.field.event.payload=payload
transforms.outbox.table.fields.additional.placement=type:header:eventType,tenant:header,seq:partition
transforms.outbox.route.by.field=aggregatetype
transforms.outbox.route.topic.replacement=${routedByValue}.events
transforms.outbox.table.expand.json.payload=true
"#;

    /// Debezium Server with its RabbitMQ sink.
    const SERVER: &str = r#"
debezium.sink.type=rabbitmq
debezium.sink.rabbitmq.connection.host=rmq.internal
debezium.sink.rabbitmq.connection.port=5672
debezium.sink.rabbitmq.connection.username=dbz
debezium.sink.rabbitmq.connection.password=mq-secret
debezium.sink.rabbitmq.connection.virtual.host=/prod
debezium.sink.rabbitmq.exchange=events
debezium.sink.rabbitmq.routingKeyFromTopicName=true
debezium.sink.rabbitmq.ackTimeout=3000
debezium.source.connector.class=io.debezium.connector.postgresql.PostgresConnector
debezium.source.offset.storage.file.filename=data/offsets.dat
debezium.source.offset.flush.interval.ms=0
debezium.source.database.hostname=localhost
debezium.source.database.port=5432
debezium.source.database.user=postgres
debezium.source.database.password=postgres
debezium.source.database.dbname=postgres
debezium.source.topic.prefix=tutorial
debezium.source.table.include.list=public.outbox
debezium.source.plugin.name=pgoutput
debezium.transforms=outbox
debezium.transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
debezium.transforms.outbox.table.field.event.timestamp=created_at
debezium.format.value=json
"#;

    fn setting<'a>(c: &'a Converted, key: &str) -> &'a str {
        c.settings
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {c:?}"))
    }

    #[test]
    fn properties_parse_with_continuations_escapes_and_every_separator() {
        let p = parse_properties(
            "# comment\n! also\na=1\nb : two words\nc three\nd=x\\\n   y\ne=caf\\u00e9\\tz\nf\\=g=h\n",
        );
        assert_eq!(p["a"], "1");
        assert_eq!(p["b"], "two words");
        assert_eq!(p["c"], "three");
        assert_eq!(p["d"], "xy");
        assert_eq!(p["e"], "café\tz");
        assert_eq!(p["f=g"], "h");
    }

    #[test]
    fn a_connector_with_the_event_router_becomes_the_same_mapping() {
        let c = convert(&parse_properties(CONNECTOR));
        assert_eq!(
            setting(&c, "pg_url"),
            "\"postgres://debezium@db.internal:5433/shop?sslmode=verify-full\""
        );
        assert_eq!(setting(&c, "slot"), "\"shop_outbox\"");
        assert_eq!(setting(&c, "publication"), "\"shop_outbox_pub\"");
        assert_eq!(setting(&c, "table"), "\"public.outbox\"");
        assert_eq!(setting(&c, "id_column"), "\"id\"");
        assert_eq!(setting(&c, "payload_column"), "\"payload\"");
        assert_eq!(setting(&c, "type_column"), "\"type\"");
        assert_eq!(setting(&c, "timestamp_column"), "\"\"");
        assert_eq!(setting(&c, "exchange"), "\"outbox\"");
        assert_eq!(setting(&c, "routing_key"), "\"{aggregatetype}.events\"");
        let text = c.render("connector.properties");
        assert!(!text.contains("dbz-secret"), "{text}");
        for skipped in [
            "transforms.outbox.table.field.event.key",
            "transforms.outbox.table.expand.json.payload",
            "seq:partition",
            "topic.prefix",
            "tombstones.on.delete",
            "name = outbox-connector",
        ] {
            assert!(text.contains(skipped), "{skipped} not commented:\n{text}");
        }
        // The settings part parses as TOML.
        let table: toml::Table = text.parse().expect(&text);
        assert_eq!(
            table["routing_key"].as_str(),
            Some("{aggregatetype}.events")
        );
    }

    #[test]
    fn several_included_tables_become_table_entries_the_relay_reads() {
        let props = CONNECTOR.replace(
            "table.include.list=public.outbox",
            "table.include.list=orders.outbox, billing.outbox",
        );
        let c = convert(&parse_properties(&props));
        assert_eq!(c.tables, ["orders.outbox", "billing.outbox"]);
        assert!(c.settings.iter().all(|(k, _, _)| k != "table"));
        let text = c.render("connector.properties");
        let settings = crate::config::resolve(Some(("converted.toml", &text)), Vec::new())
            .expect(&text)
            .settings;
        let config = settings.parse().expect(&text);
        let names: Vec<String> = config
            .mapping
            .tables
            .iter()
            .map(|t| t.table.to_string())
            .collect();
        assert_eq!(names, ["orders.outbox", "billing.outbox"]);
        for t in &config.mapping.tables {
            assert_eq!(t.type_column, "type");
            assert_eq!(t.routing_key.to_string(), "{aggregatetype}.events");
        }
        let regex = CONNECTOR.replace(
            "table.include.list=public.outbox",
            "table.include.list=public.outbox_.*",
        );
        let c = convert(&parse_properties(&regex));
        assert!(c.tables.is_empty());
        assert!(c
            .not_honoured
            .iter()
            .any(|(o, _, _)| o == "table.include.list"));
    }

    #[test]
    fn debezium_server_with_the_rabbitmq_sink_keeps_its_exchange_and_routing() {
        let c = convert(&parse_properties(SERVER));
        assert_eq!(
            setting(&c, "amqp_url"),
            "\"amqp://dbz@rmq.internal:5672/%2fprod\""
        );
        assert_eq!(setting(&c, "exchange"), "\"events\"");
        // routingKeyFromTopicName: the default topic, over aggregatetype.
        assert_eq!(
            setting(&c, "routing_key"),
            "\"outbox.event.{aggregatetype}\""
        );
        assert_eq!(setting(&c, "timestamp_column"), "\"created_at\"");
        assert_eq!(setting(&c, "slot"), "\"debezium\"");
        let text = c.render("application.properties");
        assert!(
            !text.contains("mq-secret") && !text.contains("=postgres\n"),
            "{text}"
        );
        for skipped in [
            "debezium.sink.rabbitmq.ackTimeout",
            "offset.storage.file.filename",
            "debezium.format.value",
        ] {
            assert!(text.contains(skipped), "{skipped} not commented:\n{text}");
        }
        let _: toml::Table = text.parse().expect(&text);
    }

    #[test]
    fn secrets_never_reach_the_output_and_values_cannot_break_out_of_a_comment() {
        let mut props = parse_properties(CONNECTOR);
        props.insert("database.sslpassword".into(), "ssl-secret".into());
        props.insert(
            "offset.storage.jdbc.connection.password".into(),
            "jdbc-secret".into(),
        );
        props.insert("sneaky".into(), "a\nexchange = \"evil\"\r".into());
        props.insert("database.user".into(), "dbz@server".into());
        let text = convert(&props).render("x");
        assert!(
            !text.contains("ssl-secret") && !text.contains("jdbc-secret"),
            "{text}"
        );
        let table: toml::Table = text.parse().expect(&text);
        assert_eq!(table["exchange"].as_str(), Some("outbox"), "{text}");
        assert!(
            text.contains("postgres://dbz%40server@db.internal"),
            "{text}"
        );
    }

    #[test]
    fn a_continuation_cut_by_the_end_and_escaped_backslashes_are_read_right() {
        let p = parse_properties("a=x\\\\\nb=y\\\\\\\n  z\nc=end\\");
        assert_eq!(p["a"], "x\\");
        assert_eq!(p["b"], "y\\z");
        assert_eq!(p["c"], "end");
    }

    #[test]
    fn an_empty_routing_key_and_a_custom_regex_are_said_not_silently_changed() {
        let mut props = parse_properties(SERVER);
        props.remove("debezium.sink.rabbitmq.routingKeyFromTopicName");
        props.remove("debezium.sink.rabbitmq.exchange");
        props.insert(
            "debezium.transforms.outbox.route.topic.regex".into(),
            "(?<routedByValue>[a-z]+)".into(),
        );
        let c = convert(&props);
        assert_eq!(setting(&c, "exchange"), "\"outbox.event.{aggregatetype}\"");
        let text = c.render("x");
        assert!(text.contains("empty routing key"), "{text}");
        assert!(text.contains("route.topic.regex"), "{text}");
    }
}
