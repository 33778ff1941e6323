//! A delivery as a handler sees it: the event's identity and body, where
//! it was first published, and which attempt this is.

use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// Header: the attempt that failed last (1-based), on a retried message.
pub const ATTEMPT_HEADER: &str = "x-inbox-attempt";
/// Header: why the last attempt failed.
pub const ERROR_HEADER: &str = "x-inbox-error";
/// Header: the exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-inbox-original-exchange";
/// Header: its first routing key.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-inbox-original-routing-key";
/// Header: on a parked message, how many attempts were made.
pub const ATTEMPTS_HEADER: &str = "x-inbox-attempts";
/// Header: on a parked message, the consumer that parked it.
pub const CONSUMER_HEADER: &str = "x-inbox-consumer";

/// One message, as delivered to a handler.
#[derive(Debug, Clone)]
pub struct Message {
    /// The event's id (the AMQP message_id that outbox-relay sets from the
    /// outbox row's id): the key the inbox deduplicates on.
    pub message_id: String,
    /// The event type (the AMQP `type` property), if any.
    pub kind: Option<String>,
    /// The exchange it was published to (the original one, on a retry).
    pub exchange: String,
    /// Its routing key (the original one, on a retry).
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
    /// Every property, headers included.
    pub properties: BasicProperties,
    /// Which attempt this is (1: the first delivery).
    pub attempt: u32,
    /// Whether the broker delivered it before (to a consumer that did not
    /// ack it: a crash, a lost link).
    pub redelivered: bool,
}

impl Message {
    /// Reads a delivery; `Err` with the reason if it cannot be deduplicated
    /// (no message_id).
    pub fn from_delivery(delivery: &Delivery) -> Result<Message, String> {
        let properties = delivery.properties.clone();
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .filter(|id| !id.is_empty() && !id.contains('\0'))
            .ok_or_else(|| {
                "the message has no message_id (or one with a NUL character, which PostgreSQL \
                 cannot store): the inbox cannot tell a duplicate from a new message \
                 (outbox-relay always sets it from the row's id)"
                    .to_string()
            })?;
        let headers = properties.headers().as_ref();
        let attempt = headers
            .and_then(|h| int_header(h, ATTEMPT_HEADER))
            .map_or(1, |failed| failed.saturating_add(1));
        let exchange = headers
            .and_then(|h| text_header(h, ORIGINAL_EXCHANGE_HEADER))
            .unwrap_or_else(|| delivery.exchange.to_string());
        let routing_key = headers
            .and_then(|h| text_header(h, ORIGINAL_ROUTING_KEY_HEADER))
            .unwrap_or_else(|| delivery.routing_key.to_string());
        Ok(Message {
            message_id,
            kind: properties.kind().as_ref().map(|k| k.to_string()),
            exchange,
            routing_key,
            body: delivery.data.clone(),
            attempt,
            redelivered: delivery.redelivered,
            properties,
        })
    }

    /// A header's value as text (strings as they are, other values in
    /// their debug form), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        text_header(self.properties.headers().as_ref()?, name)
    }
}

/// A header's text.
pub(crate) fn text_header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A header's whole number.
pub(crate) fn int_header(headers: &FieldTable, name: &str) -> Option<u32> {
    let n: i128 = match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongString(s) => s.to_string().trim().parse().ok()?,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Text cut to `max` characters (an error message in a header).
pub(crate) fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        out.push_str("...");
    }
    out
}
