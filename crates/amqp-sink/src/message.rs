//! What the caller publishes ([`OutgoingMessage`]) and its checked
//! conversion to what lapin sends.
//!
//! AMQP limits names (exchange, routing key, message id, header names, ...)
//! to 255 bytes, and lapin's `ShortString` conversions panic past that.
//! These values come from outbox rows, so every conversion here is the
//! fallible one and a message that does not fit is a [`MessageError`] the
//! caller dead-letters, never a panic. Every message goes out persistent
//! (delivery_mode 2).

use std::hash::{Hash, Hasher};

use bytes::Bytes;
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::error::MessageError;

/// Header name under which [`OutgoingMessage::dead_letter`] puts the reason.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-outbox-relay-reason";

/// A message to publish: where it goes, its body and its properties.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutgoingMessage {
    /// The exchange ("" is the default exchange).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body, sent unchanged.
    pub body: Bytes,
    /// The AMQP properties and headers.
    pub properties: MessageProperties,
}

/// The AMQP properties the relay sets. `delivery_mode` is always 2
/// (persistent) and is not a choice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageProperties {
    /// `message_id`.
    pub message_id: Option<String>,
    /// `type`.
    pub message_type: Option<String>,
    /// `content_type`, e.g. `application/json`.
    pub content_type: Option<String>,
    /// `content_encoding`.
    pub content_encoding: Option<String>,
    /// `timestamp`, in seconds since the Unix epoch (the AMQP unit).
    pub timestamp: Option<u64>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `app_id`.
    pub app_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `expiration`: the message's time to live in milliseconds, as
    /// decimal digits (RabbitMQ's per-message TTL).
    pub expiration: Option<String>,
    /// `priority`, 0 to 255 (a priority queue uses what it was declared
    /// for).
    pub priority: Option<u8>,
    /// Headers, in order (a later entry with the same name wins).
    pub headers: Vec<(String, HeaderValue)>,
}

/// A header value.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    /// A string (sent as an AMQP long string).
    String(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Raw bytes (sent as an AMQP byte array).
    Bytes(Bytes),
    /// No value (AMQP void), for a NULL column.
    Null,
    /// A double-precision float.
    Float(f64),
    /// A nested field table, in order.
    Table(Vec<(String, HeaderValue)>),
    /// A field array.
    Array(Vec<HeaderValue>),
}

impl From<&str> for HeaderValue {
    fn from(v: &str) -> Self {
        HeaderValue::String(v.to_string())
    }
}

impl From<String> for HeaderValue {
    fn from(v: String) -> Self {
        HeaderValue::String(v)
    }
}

impl From<i64> for HeaderValue {
    fn from(v: i64) -> Self {
        HeaderValue::Int(v)
    }
}

impl From<bool> for HeaderValue {
    fn from(v: bool) -> Self {
        HeaderValue::Bool(v)
    }
}

impl From<Bytes> for HeaderValue {
    fn from(v: Bytes) -> Self {
        HeaderValue::Bytes(v)
    }
}

impl OutgoingMessage {
    /// A message to `exchange` with `routing_key` and `body`, no properties.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Self {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            properties: MessageProperties::default(),
        }
    }

    /// A message for the dead-letter exchange: the original body, the
    /// reason in the [`DEAD_LETTER_REASON_HEADER`] header (cut to fit), and
    /// whatever properties the caller adds. The routing key is empty (the
    /// dead-letter exchange is a fanout).
    pub fn dead_letter(
        dead_letter_exchange: impl Into<String>,
        reason: &str,
        body: impl Into<Bytes>,
    ) -> Self {
        let mut message = OutgoingMessage::new(dead_letter_exchange, "", body);
        message.properties.headers.push((
            DEAD_LETTER_REASON_HEADER.to_string(),
            HeaderValue::String(reason.to_string()),
        ));
        message
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.properties.headers.push((name.into(), value.into()));
        self
    }
}

/// A message converted for lapin, with what the window and the return
/// matching need.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) body: Bytes,
    pub(crate) properties: BasicProperties,
    /// Identifies the message among those in flight when the broker returns
    /// it (see [`fingerprint`]).
    pub(crate) fingerprint: u64,
    /// What the message weighs in the byte window.
    pub(crate) bytes: usize,
}

impl Prepared {
    /// Checks and converts `message`; `max_body` is the configured maximum
    /// message size, `frame_max` the negotiated frame size (the properties
    /// and headers travel in one frame of it).
    pub(crate) fn new(
        message: OutgoingMessage,
        max_body: usize,
        frame_max: u32,
    ) -> Result<Prepared, MessageError> {
        let OutgoingMessage {
            exchange,
            routing_key,
            body,
            properties,
        } = message;
        if body.len() > max_body {
            return Err(MessageError::TooLarge {
                len: body.len(),
                max: max_body,
            });
        }
        let encoded = properties.encoded_len();
        let budget = properties_budget(frame_max);
        if encoded > budget {
            return Err(MessageError::PropertiesTooLarge {
                len: encoded,
                max: budget,
            });
        }
        let mut bytes = body.len() + exchange.len() + routing_key.len();
        let fingerprint = fingerprint(
            &exchange,
            &routing_key,
            properties.message_id.as_deref(),
            &body,
        );
        let exchange = short("exchange name", exchange)?;
        let routing_key = short("routing key", routing_key)?;
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(v) = properties.message_id {
            bytes += v.len();
            props = props.with_message_id(short("message id", v)?);
        }
        if let Some(v) = properties.message_type {
            bytes += v.len();
            props = props.with_type(short("message type", v)?);
        }
        if let Some(v) = properties.content_type {
            bytes += v.len();
            props = props.with_content_type(short("content type", v)?);
        }
        if let Some(v) = properties.content_encoding {
            bytes += v.len();
            props = props.with_content_encoding(short("content encoding", v)?);
        }
        if let Some(v) = properties.timestamp {
            props = props.with_timestamp(v);
        }
        if let Some(v) = properties.correlation_id {
            bytes += v.len();
            props = props.with_correlation_id(short("correlation id", v)?);
        }
        if let Some(v) = properties.app_id {
            bytes += v.len();
            props = props.with_app_id(short("app id", v)?);
        }
        if let Some(v) = properties.reply_to {
            bytes += v.len();
            props = props.with_reply_to(short("reply to", v)?);
        }
        if let Some(v) = properties.expiration {
            bytes += v.len();
            props = props.with_expiration(short("expiration", v)?);
        }
        if let Some(v) = properties.priority {
            props = props.with_priority(v);
        }
        if !properties.headers.is_empty() {
            props = props.with_headers(field_table(properties.headers, &mut bytes)?);
        }
        Ok(Prepared {
            exchange,
            routing_key,
            body,
            properties: props,
            fingerprint,
            bytes,
        })
    }
}

impl MessageProperties {
    /// The size of these properties and headers as AMQP encodes them in a
    /// content header frame (delivery_mode included): what must fit
    /// [`properties_budget`].
    pub fn encoded_len(&self) -> usize {
        let short = |v: &Option<String>| v.as_ref().map_or(0, |s| 1 + s.len());
        // delivery_mode (always set) and the timestamp.
        let mut len = 1 + self.timestamp.map_or(0, |_| 8);
        len += short(&self.message_id)
            + short(&self.message_type)
            + short(&self.content_type)
            + short(&self.content_encoding)
            + short(&self.correlation_id)
            + short(&self.app_id)
            + short(&self.reply_to)
            + short(&self.expiration)
            + self.priority.map_or(0, |_| 1);
        if !self.headers.is_empty() {
            // The table's length, then per entry a short-string name, a type
            // tag and the value.
            len += 4;
            for (name, value) in &self.headers {
                len += 1 + name.len() + 1 + value.encoded_len();
            }
        }
        len
    }
}

impl HeaderValue {
    /// The value's size in an AMQP field table, after its type tag.
    pub fn encoded_len(&self) -> usize {
        match self {
            HeaderValue::String(s) => 4 + s.len(),
            HeaderValue::Int(_) => 8,
            HeaderValue::Bool(_) => 1,
            HeaderValue::Bytes(b) => 4 + b.len(),
            HeaderValue::Null => 0,
            HeaderValue::Float(_) => 8,
            HeaderValue::Table(entries) => {
                4 + entries
                    .iter()
                    .map(|(name, v)| 1 + name.len() + 1 + v.encoded_len())
                    .sum::<usize>()
            }
            HeaderValue::Array(values) => {
                4 + values.iter().map(|v| 1 + v.encoded_len()).sum::<usize>()
            }
        }
    }
}

/// Bytes of a content header frame that are not properties: the frame's
/// own header and end octet (8), class id, weight, body size and property
/// flags (14).
const CONTENT_HEADER_OVERHEAD: usize = 22;

/// How many bytes of properties and headers ([`MessageProperties::encoded_len`])
/// fit in one frame of `frame_max` bytes.
pub fn properties_budget(frame_max: u32) -> usize {
    usize::try_from(frame_max)
        .unwrap_or(usize::MAX)
        .saturating_sub(CONTENT_HEADER_OVERHEAD)
}

/// The longest AMQP short string, in bytes.
const MAX_SHORT_STRING: usize = 255;

/// Headers as an AMQP field table (nested tables and arrays too); counts
/// their names and variable-length values into `bytes`.
fn field_table(
    entries: Vec<(String, HeaderValue)>,
    bytes: &mut usize,
) -> Result<FieldTable, MessageError> {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        *bytes += name.len();
        let value = field_value(value, bytes)?;
        table.insert(short("header name", name)?, value);
    }
    Ok(table)
}

fn field_value(value: HeaderValue, bytes: &mut usize) -> Result<AMQPValue, MessageError> {
    Ok(match value {
        HeaderValue::String(s) => {
            *bytes += s.len();
            AMQPValue::LongString(LongString::from(s))
        }
        HeaderValue::Int(i) => AMQPValue::LongLongInt(i),
        HeaderValue::Bool(b) => AMQPValue::Boolean(b),
        HeaderValue::Bytes(b) => {
            *bytes += b.len();
            AMQPValue::ByteArray(ByteArray::from(b.as_ref()))
        }
        HeaderValue::Null => AMQPValue::Void,
        HeaderValue::Float(f) => AMQPValue::Double(f),
        HeaderValue::Table(entries) => AMQPValue::FieldTable(field_table(entries, bytes)?),
        HeaderValue::Array(values) => {
            let mut array = lapin::types::FieldArray::default();
            for v in values {
                array.push(field_value(v, bytes)?);
            }
            AMQPValue::FieldArray(array)
        }
    })
}

/// The fallible `ShortString` conversion (lapin's `From` panics past 255
/// bytes); the error's preview of the value is built only when it is too
/// long.
fn short(field: &'static str, value: String) -> Result<ShortString, MessageError> {
    if value.len() > MAX_SHORT_STRING {
        let len = value.len();
        let start: String = value.chars().take(40).collect();
        return Err(MessageError::TooLong { field, len, start });
    }
    ShortString::try_new(value).map_err(|_| MessageError::TooLong {
        field,
        len: MAX_SHORT_STRING + 1,
        start: String::new(),
    })
}

/// What identifies a message when the broker returns it: basic.return
/// carries no delivery tag, only the message (exchange, routing key,
/// properties, body), so a return is matched to the messages in flight by
/// this hash. A collision can only make the sink fail more messages than
/// were returned (never report a returned one as confirmed).
pub(crate) fn fingerprint(
    exchange: &str,
    routing_key: &str,
    message_id: Option<&str>,
    body: &[u8],
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    exchange.hash(&mut hasher);
    routing_key.hash(&mut hasher);
    message_id.hash(&mut hasher);
    body.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> OutgoingMessage {
        OutgoingMessage {
            exchange: "outbox".into(),
            routing_key: "order.created".into(),
            body: Bytes::from_static(b"{\"a\":1}"),
            properties: MessageProperties {
                message_id: Some("0d4f".into()),
                message_type: Some("created".into()),
                content_type: Some("application/json".into()),
                content_encoding: None,
                timestamp: Some(1_700_000_000),
                correlation_id: Some("c-1".into()),
                app_id: None,
                reply_to: Some("amq.rabbitmq.reply-to".into()),
                expiration: Some("60000".into()),
                priority: Some(7),
                headers: vec![
                    ("ratio".into(), HeaderValue::Float(0.5)),
                    (
                        "nested".into(),
                        HeaderValue::Table(vec![
                            ("a".into(), HeaderValue::Int(1)),
                            (
                                "list".into(),
                                HeaderValue::Array(vec![
                                    HeaderValue::String("x".into()),
                                    HeaderValue::Bool(true),
                                    HeaderValue::Table(vec![]),
                                ]),
                            ),
                        ]),
                    ),
                    ("aggregate_type".into(), "order".into()),
                    ("version".into(), HeaderValue::Int(3)),
                    ("replay".into(), HeaderValue::Bool(false)),
                    (
                        "raw".into(),
                        HeaderValue::Bytes(Bytes::from_static(b"\x00\x01")),
                    ),
                    ("gone".into(), HeaderValue::Null),
                ],
            },
        }
    }

    #[test]
    fn every_property_is_carried_and_the_message_is_persistent() {
        let p = Prepared::new(full(), 1 << 20, 131_072).unwrap();
        assert_eq!(p.exchange.as_str(), "outbox");
        assert_eq!(p.routing_key.as_str(), "order.created");
        let props = &p.properties;
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "0d4f");
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "created");
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(props.timestamp(), &Some(1_700_000_000));
        assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), "c-1");
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("aggregate_type"),
            Some(&AMQPValue::LongString("order".into()))
        );
        assert_eq!(headers.get("version"), Some(&AMQPValue::LongLongInt(3)));
        assert_eq!(headers.get("replay"), Some(&AMQPValue::Boolean(false)));
        assert_eq!(
            headers.get("raw"),
            Some(&AMQPValue::ByteArray(ByteArray::from(&b"\x00\x01"[..])))
        );
        assert_eq!(headers.get("gone"), Some(&AMQPValue::Void));
        assert_eq!(headers.get("ratio"), Some(&AMQPValue::Double(0.5)));
        assert!(matches!(
            headers.get("nested"),
            Some(AMQPValue::FieldTable(_))
        ));
        assert_eq!(
            props.reply_to().as_ref().unwrap().as_str(),
            "amq.rabbitmq.reply-to"
        );
        assert_eq!(props.expiration().as_ref().unwrap().as_str(), "60000");
        assert_eq!(props.priority(), &Some(7));
    }

    #[test]
    fn names_over_255_bytes_are_errors_not_panics() {
        let long = "k".repeat(256);
        let mut m = full();
        m.routing_key = long.clone();
        assert!(matches!(
            Prepared::new(m, 1 << 20, 131_072),
            Err(MessageError::TooLong {
                field: "routing key",
                len: 256,
                ..
            })
        ));
        let mut m = full();
        m.properties.message_id = Some(long.clone());
        assert!(matches!(
            Prepared::new(m, 1 << 20, 131_072),
            Err(MessageError::TooLong {
                field: "message id",
                ..
            })
        ));
        let mut m = full();
        m.properties
            .headers
            .push((long.clone(), HeaderValue::Int(1)));
        assert!(matches!(
            Prepared::new(m, 1 << 20, 131_072),
            Err(MessageError::TooLong {
                field: "header name",
                ..
            })
        ));
        let mut m = full();
        m.exchange = "x".repeat(255);
        assert!(Prepared::new(m, 1 << 20, 131_072).is_ok());
        // A multi-byte character counts in bytes.
        let mut m = full();
        m.routing_key = "é".repeat(128);
        assert!(Prepared::new(m, 1 << 20, 131_072).is_err());
        // Long header *values* are fine (long strings).
        let mut m = full();
        m.properties
            .headers
            .push(("note".into(), HeaderValue::String("v".repeat(10_000))));
        assert!(Prepared::new(m, 1 << 20, 131_072).is_ok());
    }

    #[test]
    fn headers_that_do_not_fit_one_frame_are_refused_before_sending() {
        let mut m = full();
        m.properties
            .headers
            .push(("note".into(), HeaderValue::String("v".repeat(200_000))));
        assert!(matches!(
            Prepared::new(m, 1 << 20, 131_072),
            Err(MessageError::PropertiesTooLarge { max: 131_050, .. })
        ));
        // Exactly at the budget is fine; one byte more is not.
        let mut m = OutgoingMessage::new("x", "k", "{}");
        let fixed = m.properties.encoded_len() + 4 + 1 + 4 + 1 + 4;
        let fill = properties_budget(4096) - fixed;
        m.properties
            .headers
            .push(("note".into(), HeaderValue::String("v".repeat(fill))));
        assert_eq!(m.properties.encoded_len(), properties_budget(4096));
        assert!(Prepared::new(m.clone(), 1 << 20, 4096).is_ok());
        m.properties.headers[0].1 = HeaderValue::String("v".repeat(fill + 1));
        assert!(Prepared::new(m, 1 << 20, 4096).is_err());
    }

    #[test]
    fn the_encoded_length_matches_what_lapin_serialises() {
        // lapin's serialiser writes the 2-byte property flags, then the
        // properties: the rest of the content header is fixed.
        let p = Prepared::new(full(), 1 << 20, 131_072).unwrap();
        let serialise = lapin::protocol::basic::gen_properties(&p.properties);
        let buf = cookie_factory::gen_simple(serialise, Vec::new()).unwrap();
        assert_eq!(buf.len(), 2 + full().properties.encoded_len());
    }

    #[test]
    fn a_body_over_the_limit_is_refused() {
        let m = OutgoingMessage::new("x", "k", vec![0u8; 11]);
        assert_eq!(
            Prepared::new(m, 10, 131_072).unwrap_err(),
            MessageError::TooLarge { len: 11, max: 10 }
        );
    }

    #[test]
    fn a_dead_letter_carries_its_reason() {
        let m = OutgoingMessage::dead_letter("dlx", "routing key is NULL", "{}");
        assert_eq!(m.exchange, "dlx");
        assert_eq!(
            m.properties.headers,
            vec![(
                DEAD_LETTER_REASON_HEADER.to_string(),
                HeaderValue::String("routing key is NULL".into())
            )]
        );
    }
}
