//! [`Inspector`]: looks at the broker without changing it, for a
//! preflight. Is it reachable with these credentials; does an exchange or
//! queue exist; if it does, would the sink's own declaration of it be
//! accepted (same type, durability and arguments)?
//!
//! AMQP cannot read an exchange's type: the inspector asks passively
//! whether the name exists, and only then declares it as the sink would,
//! which changes nothing when the two agree and is refused
//! (PRECONDITION_FAILED, with the broker's account of the difference) when
//! they do not. Each question uses a channel of its own, since a refusal
//! closes the channel.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};

use crate::broker::BrokerUrl;
use crate::config::{ExchangeType, SinkConfig};
use crate::error::LinkError;
use crate::link;

/// What the broker says about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing of that name.
    Missing,
    /// It exists and (when compared) matches the sink's declaration.
    Matches,
    /// It exists but differs from the sink's declaration: the broker's
    /// words (they name the difference).
    Differs(String),
    /// The user may not see or declare it (ACCESS_REFUSED): the broker's
    /// words.
    Refused(String),
}

/// A connection for looking at the broker.
#[derive(Debug)]
pub struct Inspector {
    connection: Connection,
    broker: String,
    heartbeat: std::time::Duration,
}

impl Inspector {
    /// Connects to `broker` with `config`'s TLS, timeouts and credentials.
    pub async fn connect(config: &SinkConfig, broker: &BrokerUrl) -> Result<Inspector, LinkError> {
        let opened = tokio::time::timeout(config.connect_timeout, link::open(config, broker)).await;
        let connection = match opened {
            Ok(result) => result?,
            Err(_) => {
                return Err(LinkError::ConnectTimeout {
                    broker: broker.redacted().to_string(),
                    timeout: config.connect_timeout,
                })
            }
        };
        Ok(Inspector {
            connection,
            broker: broker.redacted().to_string(),
            heartbeat: config.heartbeat_timeout,
        })
    }

    /// The broker, redacted.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// The connection, for a caller that reads or publishes by hand (the
    /// dead-letter commands).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    async fn channel(&self) -> Result<Channel, LinkError> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| LinkError::from_lapin(&self.broker, &e, self.heartbeat))
    }

    /// Looks at exchange `name`; with `compare`, also whether a durable
    /// exchange of `kind` (the sink's declaration) would be accepted.
    pub async fn exchange(
        &self,
        name: &str,
        kind: ExchangeType,
        compare: bool,
    ) -> Result<Found, LinkError> {
        let Ok(short) = ShortString::try_new(name) else {
            return Ok(Found::Differs("the name is longer than 255 bytes".into()));
        };
        let declare = |channel: Channel, passive: bool| {
            let short = short.clone();
            async move {
                let options = ExchangeDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                };
                let result = channel
                    .exchange_declare(short, kind.lapin(), options, FieldTable::default())
                    .await;
                let _ = channel.close(200, "inspected".into()).await;
                result
            }
        };
        match answer(declare(self.channel().await?, true).await)? {
            Found::Matches if compare && !name.starts_with("amq.") => {
                answer(declare(self.channel().await?, false).await)
            }
            found => Ok(found),
        }
    }

    /// Looks at queue `name`; with `compare`, also whether a durable queue
    /// of `queue_type` (the sink's declaration) would be accepted.
    pub async fn queue(
        &self,
        name: &str,
        compare: bool,
        queue_type: crate::QueueType,
    ) -> Result<Found, LinkError> {
        let Ok(short) = ShortString::try_new(name) else {
            return Ok(Found::Differs("the name is longer than 255 bytes".into()));
        };
        let declare = |channel: Channel, passive: bool| {
            let short = short.clone();
            async move {
                let options = QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..Default::default()
                };
                let result = channel
                    .queue_declare(short, options, queue_type.arguments())
                    .await
                    .map(drop);
                let _ = channel.close(200, "inspected".into()).await;
                result
            }
        };
        match answer(declare(self.channel().await?, true).await)? {
            Found::Matches if compare => answer(declare(self.channel().await?, false).await),
            found => Ok(found),
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "inspection done".into()).await;
    }
}

/// Reads a declaration's answer: 404 is missing, 406 differs, 403 refused.
fn answer(result: lapin::Result<()>) -> Result<Found, LinkError> {
    let error = match result {
        Ok(()) => return Ok(Found::Matches),
        Err(error) => error,
    };
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            let text = amqp.get_message().to_string();
            Ok(match amqp.get_id() {
                404 => Found::Missing,
                403 => Found::Refused(text),
                _ => Found::Differs(text),
            })
        }
        _ => Err(LinkError::Other {
            broker: String::new(),
            cause: error.to_string(),
        }),
    }
}
