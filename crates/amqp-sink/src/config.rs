//! [`SinkConfig`]: everything the sink needs, field by field, with the
//! defaults the relay starts from, and its validation.

use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::broker::BrokerUrl;
use crate::error::ConfigError;

/// RabbitMQ's default `frame_max`, and the sink's.
pub const DEFAULT_FRAME_MAX: u32 = 131_072;

/// AMQP's smallest `frame_max`: every peer must accept frames this large.
pub const MIN_FRAME_MAX: u32 = 4096;

/// The sink's configuration. `Debug` shows broker URLs without passwords.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// The brokers, tried in turn (the nodes of a cluster). The sink moves
    /// to the next one whenever a connection attempt or a connection fails.
    pub brokers: Vec<BrokerUrl>,
    /// The exchange the relay publishes to, declared (or checked) on every
    /// connection.
    pub exchange: ExchangeConfig,
    /// Further exchanges declared (or checked) like `exchange`, of the same
    /// kind and durability: a publisher whose messages go to several
    /// exchanges (a relay with several outbox tables).
    pub extra_exchanges: Vec<String>,
    /// The dead-letter exchange and queue for messages the relay cannot
    /// route; `None` declares none.
    pub dead_letter: Option<DeadLetterConfig>,
    /// Only check that the exchanges and the queue exist (passive
    /// declarations), for brokers whose topology is managed elsewhere.
    pub passive: bool,
    /// Most messages published and not yet reported to the caller.
    pub window_messages: usize,
    /// Most bytes (bodies, names and header values) published and not yet
    /// reported to the caller. At most `u32::MAX`.
    pub window_bytes: usize,
    /// Largest body accepted; a larger one is a
    /// [`crate::MessageError::TooLarge`] to dead-letter (RabbitMQ refuses
    /// bodies over its `max_message_size`, 16 MiB by default on 4.x).
    pub max_message_bytes: usize,
    /// The largest AMQP frame to negotiate (RabbitMQ's default,
    /// 131072, unless the broker asks for less). A message's properties and
    /// headers travel in one frame: a message whose headers do not fit the
    /// negotiated size is a [`crate::MessageError::PropertiesTooLarge`],
    /// never sent (the broker would close the connection).
    pub frame_max: u32,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// After this many consecutive failed connection attempts, publishing
    /// fails fast ([`crate::PublishError::Unavailable`]) until a connection
    /// succeeds (the circuit breaker opens). Reconnecting goes on.
    pub breaker_after_attempts: u32,
    /// A link over which nothing arrives for this long is declared dead
    /// (heartbeats are negotiated from it). At least 3 seconds.
    pub heartbeat_timeout: Duration,
    /// Longest a single connection attempt (TCP, TLS, AMQP handshake,
    /// topology) may take.
    pub connect_timeout: Duration,
    /// How long [`crate::Publisher::close`] waits for outstanding confirms
    /// before failing the rest as unknown.
    pub close_timeout: Duration,
    /// The connection name shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// Extra CA certificates (PEM) to trust for `amqps://` brokers, on top
    /// of the system roots.
    pub tls_ca_pem: Option<String>,
}

/// The exchange messages are published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeConfig {
    /// Its name (`outbox` by default). Empty means the default exchange,
    /// which is never declared.
    pub name: String,
    /// Its type when the sink declares it.
    pub kind: ExchangeType,
    /// Whether a declared exchange survives a broker restart.
    pub durable: bool,
}

/// An exchange type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routing-key patterns (`order.*`): the default.
    Topic,
    /// Exact routing keys.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Header matching.
    Headers,
}

impl ExchangeType {
    pub(crate) fn lapin(self) -> lapin::ExchangeKind {
        match self {
            ExchangeType::Topic => lapin::ExchangeKind::Topic,
            ExchangeType::Direct => lapin::ExchangeKind::Direct,
            ExchangeType::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeType::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// Where undeliverable rows go: a durable fanout exchange and a durable
/// queue bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterConfig {
    /// The dead-letter exchange (`outbox.dead-letter` by default).
    pub exchange: String,
    /// The queue bound to it (`outbox.dead-letter` by default).
    pub queue: String,
    /// The queue's type.
    pub queue_type: QueueType,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            exchange: "outbox.dead-letter".into(),
            queue: "outbox.dead-letter".into(),
            queue_type: QueueType::Classic,
        }
    }
}

/// The type of a queue the sink declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A classic queue: it lives on one node, and while that node is down
    /// it cannot be used or declared from another.
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type = quorum`): replicated, usable while a
    /// majority of its nodes is up. For clusters.
    Quorum,
}

impl QueueType {
    /// The declaration's arguments.
    pub fn arguments(self) -> lapin::types::FieldTable {
        let mut arguments = lapin::types::FieldTable::default();
        if self == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            name: "outbox".into(),
            kind: ExchangeType::Topic,
            durable: true,
        }
    }
}

impl SinkConfig {
    /// The defaults, publishing to these brokers.
    pub fn new(brokers: Vec<BrokerUrl>) -> SinkConfig {
        SinkConfig {
            brokers,
            exchange: ExchangeConfig::default(),
            extra_exchanges: Vec::new(),
            dead_letter: Some(DeadLetterConfig::default()),
            passive: false,
            window_messages: 1024,
            window_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
            frame_max: DEFAULT_FRAME_MAX,
            backoff: BackoffConfig::default(),
            breaker_after_attempts: 5,
            heartbeat_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            connection_name: "outbox-relay".into(),
            tls_ca_pem: None,
        }
    }

    /// Parses broker URLs and returns the defaults for them.
    pub fn for_urls<S: AsRef<str>>(urls: &[S]) -> Result<SinkConfig, ConfigError> {
        let brokers = urls
            .iter()
            .map(|u| u.as_ref().parse())
            .collect::<Result<Vec<BrokerUrl>, _>>()?;
        Ok(SinkConfig::new(brokers))
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.is_empty() {
            return Err(ConfigError::NoBroker);
        }
        if self.window_messages == 0 || self.window_messages > (1 << 20) {
            return Err(out_of_range(
                "window_messages",
                self.window_messages,
                "between 1 and 1048576",
            ));
        }
        if self.window_bytes == 0 || u32::try_from(self.window_bytes).is_err() {
            return Err(out_of_range(
                "window_bytes",
                self.window_bytes,
                "between 1 and 4294967295",
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(out_of_range(
                "max_message_bytes",
                self.max_message_bytes,
                "at least 1",
            ));
        }
        if self.frame_max < MIN_FRAME_MAX {
            return Err(out_of_range(
                "frame_max",
                self.frame_max,
                "at least 4096 (AMQP's minimum frame size)",
            ));
        }
        if self.heartbeat_timeout < Duration::from_secs(3) {
            return Err(ConfigError::OutOfRange {
                setting: "heartbeat_timeout",
                value: format!("{:?}", self.heartbeat_timeout),
                expected: "at least 3s (heartbeats are whole seconds, and a link is declared \
                           dead after missing two)",
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::OutOfRange {
                setting: "connect_timeout",
                value: "0s".into(),
                expected: "more than zero",
            });
        }
        if self.breaker_after_attempts == 0 {
            return Err(out_of_range(
                "breaker_after_attempts",
                self.breaker_after_attempts,
                "at least 1",
            ));
        }
        self.backoff.validate()?;
        check_name("exchange.name", &self.exchange.name, true)?;
        for name in &self.extra_exchanges {
            check_name("extra_exchanges", name, false)?;
        }
        if let Some(dl) = &self.dead_letter {
            check_name("dead_letter.exchange", &dl.exchange, false)?;
            check_name("dead_letter.queue", &dl.queue, false)?;
        }
        Ok(())
    }

    /// The heartbeat interval to negotiate, in whole seconds: lapin declares
    /// the link dead after two intervals without a read and checks every
    /// half interval, so a dead link is noticed within 2.5 intervals.
    pub(crate) fn heartbeat_secs(&self) -> u16 {
        let ms = self.heartbeat_timeout.as_millis().saturating_mul(2) / 5_000;
        u16::try_from(ms).unwrap_or(u16::MAX).max(1)
    }
}

fn out_of_range(
    setting: &'static str,
    value: impl ToString,
    expected: &'static str,
) -> ConfigError {
    ConfigError::OutOfRange {
        setting,
        value: value.to_string(),
        expected,
    }
}

fn check_name(setting: &'static str, value: &str, empty_ok: bool) -> Result<(), ConfigError> {
    let shown = || value.chars().take(60).collect::<String>();
    if value.is_empty() && !empty_ok {
        return Err(ConfigError::BadName {
            setting,
            value: String::new(),
            reason: "it must not be empty",
        });
    }
    if value.len() > 255 {
        return Err(ConfigError::BadName {
            setting,
            value: shown(),
            reason: "AMQP names are at most 255 bytes",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SinkConfig {
        SinkConfig::for_urls(&["amqp://u:topsecret@h:5672/%2f"]).unwrap()
    }

    #[test]
    fn the_defaults_validate() {
        config().validate().unwrap();
    }

    #[test]
    fn debug_output_has_no_password() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("amqp://u@h:5672/"), "{shown}");
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut c = config();
        c.window_messages = 0;
        assert!(c.validate().is_err());
        let mut c = config();
        c.window_bytes = usize::try_from(u64::from(u32::MAX) + 1).unwrap_or(usize::MAX);
        assert!(c.validate().is_err());
        let mut c = config();
        c.heartbeat_timeout = Duration::from_secs(2);
        assert!(c.validate().is_err());
        let mut c = config();
        c.exchange.name = "x".repeat(256);
        assert!(c.validate().is_err());
        let mut c = config();
        c.brokers.clear();
        assert_eq!(c.validate(), Err(ConfigError::NoBroker));
        let mut c = config();
        c.backoff.multiplier = 0.5;
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_heartbeat_detects_a_dead_link_within_the_timeout() {
        let mut c = config();
        for (timeout, secs) in [(3, 1), (5, 2), (30, 12), (60, 24)] {
            c.heartbeat_timeout = Duration::from_secs(timeout);
            assert_eq!(c.heartbeat_secs(), secs);
            // Dead after 2 intervals, checked every half interval.
            assert!(u64::from(secs) * 5 / 2 <= timeout);
        }
    }
}
