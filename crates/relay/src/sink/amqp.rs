//! The RabbitMQ sink: the seam's adapter over amqp-sink's [`Publisher`].
//!
//! It turns the relay's [`EventMessage`] into an AMQP message (persistent,
//! the contract's properties, `app_id = outbox-relay`), maps the core's
//! sequence numbers to amqp-sink's, and amqp-sink's outcomes and link
//! errors back to the seam's, telling a link that failed from a message
//! the broker refused.

use std::collections::VecDeque;

use std::time::Duration;

use amqp_sink::{
    DeadLetterConfig, FailureReason, LinkError, LinkState, Outcomes, OutgoingMessage, PublishError,
    Publisher, SinkConfig, SinkError, SinkEvent,
};

use super::{Failure, FaultCause, Handed, LinkFault, Outcome, Seq, Sink, SinkClosed};
use crate::config::Config;
use crate::mapping::{EventMessage, HeaderValue, Limits};

/// How long a rewind waits for the outcomes of the previous session's
/// messages still on a live channel.
const STALE_SETTLE: Duration = Duration::from_secs(30);

/// The `app_id` of every message.
pub const APP_ID: &str = "outbox-relay";

/// The RabbitMQ sink.
#[derive(Debug)]
pub struct AmqpSink {
    publisher: Publisher,
    outcomes: Outcomes,
    /// amqp-sink's number and the core's, for each message without an
    /// outcome yet, in publish order.
    inflight: VecDeque<(amqp_sink::Seq, Seq)>,
    limits: Limits,
}

/// The limits of a RabbitMQ link of `frame_max` with bodies up to
/// `max_body`.
pub fn limits(max_body: usize, frame_max: u32) -> Limits {
    Limits {
        max_body,
        max_properties: amqp_sink::properties_budget(frame_max),
        properties_len,
    }
}

/// The size of `message`'s properties and headers as AMQP encodes them
/// (what [`amqp_sink::MessageProperties::encoded_len`] counts for
/// [`outgoing`]'s result, without building it).
pub fn properties_len(message: &EventMessage) -> usize {
    let short = |s: Option<&str>| s.map_or(0, |s| 1 + s.len());
    // delivery_mode, then the timestamp and the short strings.
    let p = &message.properties;
    let mut len = 1
        + message.timestamp.map_or(0, |_| 8)
        + short(message.message_id.as_deref())
        + short(message.kind.as_deref())
        + short(Some(&message.content_type))
        + short(Some(p.app_id.as_deref().unwrap_or(APP_ID)))
        + short(p.correlation_id.as_deref())
        + short(p.reply_to.as_deref())
        + short(p.expiration.as_deref())
        + short(p.content_encoding.as_deref())
        + p.priority.map_or(0, |_| 1);
    if !message.headers.is_empty() {
        len += 4 + table_len(&message.headers);
    }
    len
}

/// The entries of a field table, encoded (after its length).
fn table_len(entries: &[(String, HeaderValue)]) -> usize {
    entries
        .iter()
        .map(|(name, value)| 1 + name.len() + 1 + value_len(value))
        .sum()
}

/// A field value, encoded (after its type tag).
fn value_len(value: &HeaderValue) -> usize {
    match value {
        HeaderValue::Text(s) => 4 + s.len(),
        HeaderValue::Int(_) | HeaderValue::Float(_) => 8,
        HeaderValue::Bytes(b) => 4 + b.len(),
        HeaderValue::Bool(_) => 1,
        HeaderValue::Table(entries) => 4 + table_len(entries),
        HeaderValue::Array(values) => 4 + values.iter().map(|v| 1 + value_len(v)).sum::<usize>(),
    }
}

/// A header value as amqp-sink sends it.
fn sink_value(value: &HeaderValue) -> amqp_sink::HeaderValue {
    match value {
        HeaderValue::Text(s) => amqp_sink::HeaderValue::String(s.clone()),
        HeaderValue::Int(i) => amqp_sink::HeaderValue::Int(*i),
        HeaderValue::Bytes(b) => amqp_sink::HeaderValue::Bytes(bytes::Bytes::from(b.clone())),
        HeaderValue::Bool(b) => amqp_sink::HeaderValue::Bool(*b),
        HeaderValue::Float(f) => amqp_sink::HeaderValue::Float(*f),
        HeaderValue::Table(entries) => amqp_sink::HeaderValue::Table(
            entries
                .iter()
                .map(|(n, v)| (n.clone(), sink_value(v)))
                .collect(),
        ),
        HeaderValue::Array(values) => {
            amqp_sink::HeaderValue::Array(values.iter().map(sink_value).collect())
        }
    }
}

/// The AMQP message for an event.
pub fn outgoing(event: &EventMessage) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(
        event.exchange.clone(),
        event.routing_key.clone(),
        event.body.clone(),
    );
    let p = &mut message.properties;
    p.message_id.clone_from(&event.message_id);
    p.message_type.clone_from(&event.kind);
    p.content_type = Some(event.content_type.clone());
    p.timestamp = event.timestamp;
    let from = &event.properties;
    p.app_id = Some(from.app_id.clone().unwrap_or_else(|| APP_ID.into()));
    p.correlation_id.clone_from(&from.correlation_id);
    p.reply_to.clone_from(&from.reply_to);
    p.expiration.clone_from(&from.expiration);
    p.priority = from.priority;
    p.content_encoding.clone_from(&from.content_encoding);
    p.headers = event
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), sink_value(value)))
        .collect();
    message
}

/// The sink's configuration for the relay's settings: the brokers, the
/// exchange when it is constant, the dead-letter exchange and queue, the
/// windows, heartbeat, backoff and the CA file (read here).
pub fn sink_config(config: &Config) -> Result<SinkConfig, String> {
    let brokers = config.brokers().map_err(|e| e.to_string())?;
    let mut sink = SinkConfig::new(brokers.to_vec());
    // Each table's constant exchange is declared (a per-row template's
    // exchanges cannot be known in advance).
    let mut exchanges = config.constant_exchanges().into_iter();
    sink.exchange.name = exchanges.next().unwrap_or_default();
    sink.extra_exchanges = exchanges.collect();
    sink.dead_letter = Some(DeadLetterConfig {
        exchange: config.mapping.dead_letter_exchange.clone(),
        queue: config.dead_letter_queue.clone(),
        queue_type: config.dead_letter_queue_type,
    });
    sink.passive = !config.declare_exchange;
    // The core bounds the window; the sink's own is as large, with room
    // for the names and headers it also counts.
    sink.window_messages = config.core.window_messages;
    sink.window_bytes = config
        .core
        .window_bytes
        .saturating_add(config.core.window_messages.saturating_mul(4096))
        .min(usize::try_from(u32::MAX).unwrap_or(usize::MAX));
    sink.max_message_bytes = config.max_payload_bytes;
    sink.heartbeat_timeout = config.heartbeat;
    sink.backoff = config.backoff.clone();
    sink.close_timeout = config.shutdown_timeout;
    sink.connect_timeout = Duration::from_secs(10);
    if let Some(path) = &config.amqp_ca_file {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "amqp_ca_file {}: {e}; give a PEM file of CA certificates",
                path.display()
            )
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "amqp_ca_file {}: no PEM certificate in it",
                path.display()
            ));
        }
        sink.tls_ca_pem = Some(pem);
    }
    sink.validate().map_err(|e| e.to_string())?;
    Ok(sink)
}

/// What the core needs to know of a link error.
pub fn fault(error: &LinkError) -> LinkFault {
    let cause = match error {
        LinkError::ExchangeNotFound { exchange, .. } => FaultCause::NoExchange(exchange.clone()),
        LinkError::ChannelClosed {
            reply_code: 403, ..
        } => FaultCause::AccessRefused,
        e if e.caused_by_message() => FaultCause::Message,
        _ => FaultCause::Link,
    };
    LinkFault {
        text: error.to_string(),
        cause,
    }
}

impl AmqpSink {
    /// Connects (one attempt per broker URL, in order) and declares the
    /// topology; see [`Publisher::connect`].
    pub async fn connect(config: SinkConfig, max_body: usize) -> Result<AmqpSink, SinkError> {
        let limits = limits(max_body, config.frame_max);
        let (publisher, outcomes) = Publisher::connect(config).await?;
        Ok(AmqpSink {
            publisher,
            outcomes,
            inflight: VecDeque::new(),
            limits,
        })
    }

    /// The link's state, as it changes.
    pub fn link_state(&self) -> tokio::sync::watch::Receiver<LinkState> {
        self.publisher.link_state()
    }

    /// The seam's view of one of amqp-sink's events; `None` if it says
    /// nothing new (a confirm of messages already failed).
    fn translate(&mut self, event: SinkEvent) -> Option<Outcome> {
        match event {
            SinkEvent::Confirmed { up_to } => {
                let mut last = None;
                while let Some(&(theirs, ours)) = self.inflight.front() {
                    if theirs > up_to {
                        break;
                    }
                    last = Some(ours);
                    self.inflight.pop_front();
                }
                last.map(|up_to| Outcome::Confirmed { up_to })
            }
            SinkEvent::Failed { seq, reason } => {
                let at = self
                    .inflight
                    .iter()
                    .position(|(theirs, _)| *theirs == seq)?;
                let (_, ours) = self.inflight.remove(at)?;
                let failure = match reason {
                    FailureReason::Returned {
                        reply_code,
                        reply_text,
                    } => Failure::Returned(format!("{reply_code} {reply_text}")),
                    FailureReason::Nacked => Failure::Nacked,
                    FailureReason::Unknown(error) => Failure::Lost(fault(&error)),
                };
                Some(Outcome::Failed { seq: ours, failure })
            }
            SinkEvent::LinkLost { error, .. } => Some(Outcome::LinkLost(fault(&error))),
            SinkEvent::Connected { broker } => Some(Outcome::LinkRestored { broker }),
            SinkEvent::Blocked { reason } => Some(Outcome::Blocked(reason)),
            SinkEvent::Unblocked => Some(Outcome::Unblocked),
            _ => None,
        }
    }
}

impl Sink for AmqpSink {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn publish(&mut self, seq: Seq, message: &EventMessage) -> Handed {
        // Held until the driver flushes (at the end of the transaction, or
        // before it waits for anything else): a transaction's rows reach
        // lapin together.
        match self.publisher.hold(outgoing(message)) {
            Ok(theirs) => {
                self.inflight.push_back((theirs, seq));
                Handed::Accepted
            }
            Err(PublishError::Full) => Handed::Full,
            Err(PublishError::Invalid(e)) => Handed::Invalid(e.to_string()),
            Err(e) => Handed::LinkDown(e.to_string()),
        }
    }

    fn flush(&mut self) {
        self.publisher.flush();
    }

    fn holding(&self) -> bool {
        self.publisher.held() > 0
    }

    async fn next_outcome(&mut self) -> Option<Outcome> {
        loop {
            let event = self.outcomes.recv().await?;
            if let Some(outcome) = self.translate(event) {
                return Some(outcome);
            }
        }
    }

    async fn recover(&mut self) -> Result<(), SinkClosed> {
        self.publisher.flush();
        // Outcomes of the dropped messages may still be queued: read them
        // (they release window room) without reporting them.
        while let Some(event) = self.outcomes.try_recv() {
            self.translate(event);
        }
        self.publisher.resume();
        let mut state = self.publisher.link_state();
        // Messages of the dropped session may still be on a live channel
        // (after a nack, or a drain that timed out): wait, bounded, for their
        // outcomes, so that none of them can close the channel under the next
        // session's first row and be blamed on it.
        let settle = tokio::time::Instant::now() + STALE_SETTLE;
        loop {
            let connected = matches!(
                *state.borrow_and_update(),
                LinkState::Connected { .. } | LinkState::Blocked { .. }
            );
            if connected && (self.inflight.is_empty() || tokio::time::Instant::now() >= settle) {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep_until(settle), if connected => {}
                changed = state.changed() => if changed.is_err() {
                    return Err(SinkClosed("the broker link task ended".into()));
                },
                event = self.outcomes.recv() => match event {
                    None => return Err(SinkClosed("the broker link task ended".into())),
                    Some(event) => { self.translate(event); }
                },
            }
        }
    }

    async fn close(self) -> Result<(), SinkClosed> {
        self.publisher
            .close()
            .await
            .map_err(|e| SinkClosed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Properties;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        let leaf = prop_oneof![
            ".{0,40}".prop_map(HeaderValue::Text),
            any::<i64>().prop_map(HeaderValue::Int),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(HeaderValue::Bytes),
            any::<bool>().prop_map(HeaderValue::Bool),
            any::<f64>().prop_map(HeaderValue::Float),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(("[a-z_]{1,12}", inner.clone()), 0..4)
                    .prop_map(HeaderValue::Table),
                proptest::collection::vec(inner, 0..4).prop_map(HeaderValue::Array),
            ]
        })
    }

    fn properties() -> impl Strategy<Value = Properties> {
        let short = || proptest::option::of("[ -~]{0,60}");
        (
            short(),
            short(),
            proptest::option::of("[0-9]{1,9}"),
            proptest::option::of(any::<u8>()),
            short(),
            short(),
        )
            .prop_map(
                |(correlation_id, reply_to, expiration, priority, app_id, content_encoding)| {
                    Properties {
                        correlation_id,
                        reply_to,
                        expiration,
                        priority,
                        app_id,
                        content_encoding,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn the_budgeted_size_is_what_amqp_sink_encodes(
            id in proptest::option::of("[a-z0-9-]{0,40}"),
            kind in proptest::option::of("[a-z]{0,20}"),
            timestamp in proptest::option::of(any::<u64>()),
            headers in proptest::collection::vec(("[a-z_]{1,20}", header_value()), 0..8),
            properties in properties(),
        ) {
            let event = EventMessage {
                exchange: "outbox".into(),
                routing_key: "order.created".into(),
                body: Bytes::from_static(b"{}"),
                message_id: id,
                kind,
                content_type: "application/json".into(),
                timestamp,
                headers,
                properties,
            };
            prop_assert_eq!(properties_len(&event), outgoing(&event).properties.encoded_len());
        }
    }

    #[test]
    fn link_faults_say_whether_a_message_caused_them() {
        let no_exchange = LinkError::ExchangeNotFound {
            exchange: "orders".into(),
            reply_text: "NOT_FOUND - no exchange 'orders' in vhost '/'".into(),
        };
        assert_eq!(
            fault(&no_exchange).cause,
            FaultCause::NoExchange("orders".into())
        );
        let lost = LinkError::ConnectionLost {
            broker: "amqp://u@h:5672/%2f".into(),
            cause: "reset".into(),
        };
        assert_eq!(fault(&lost).cause, FaultCause::Link);
    }
}
