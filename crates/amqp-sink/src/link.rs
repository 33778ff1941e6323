//! One connection to one broker: connect (TCP or TLS, credentials through
//! an auth provider, heartbeats negotiated), declare or check the topology,
//! open the confirm-mode publishing channel.
//!
//! lapin's automatic recovery stays off: a [`Link`] that fails is dropped
//! and the driver makes a new one (see `driver.rs`).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Event, ExchangeKind};

use crate::broker::BrokerUrl;
use crate::config::SinkConfig;
use crate::error::LinkError;

/// A live connection and its publishing channel.
pub(crate) struct Link {
    pub(crate) connection: Arc<Connection>,
    pub(crate) channel: Arc<Channel>,
    pub(crate) events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    /// The broker, redacted.
    pub(crate) broker: String,
    /// The frame size negotiated with the broker.
    pub(crate) frame_max: u32,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("broker", &self.broker)
            .finish()
    }
}

impl Link {
    /// Whether the broker has blocked publishing on this connection.
    pub(crate) fn blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// Whether the connection itself is still up.
    pub(crate) fn connection_up(&self) -> bool {
        self.connection.status().connected()
    }

    /// Whether the publishing channel is still open.
    pub(crate) fn channel_up(&self) -> bool {
        self.channel.status().connected()
    }

    /// Opens a new confirm-mode publishing channel on this connection,
    /// within the connect timeout; [`replace_channel`](Self::replace_channel)
    /// puts it in place.
    ///
    /// After a nack the channel that carried it is not trusted again: a
    /// RabbitMQ channel can keep the leader of a quorum queue that was on a
    /// node that died (seen with 3.10: every later publish on that channel
    /// is nacked, for as long as the channel lives, while a new channel on
    /// the same connection is confirmed at once).
    pub(crate) fn fresh_channel(
        &self,
        config: &SinkConfig,
    ) -> impl std::future::Future<Output = Result<Channel, LinkError>> + Send + 'static {
        let connection = Arc::clone(&self.connection);
        let broker = self.broker.clone();
        let heartbeat = config.heartbeat_timeout;
        let timeout = config.connect_timeout;
        async move {
            let lost = |e: lapin::Error| LinkError::from_lapin(&broker, &e, heartbeat);
            let open = async {
                let channel = connection.create_channel().await.map_err(lost)?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(lost)?;
                Ok(channel)
            };
            match tokio::time::timeout(timeout, open).await {
                Ok(result) => result,
                Err(_) => Err(LinkError::ConnectTimeout {
                    broker: broker.clone(),
                    timeout,
                }),
            }
        }
    }

    /// Publishes on `channel` from now on; the old channel (nothing in
    /// flight on it any more) is closed in the background.
    pub(crate) fn replace_channel(&mut self, channel: Channel) {
        let old = std::mem::replace(&mut self.channel, Arc::new(channel));
        tokio::spawn(async move {
            if old.status().connected() {
                let wait = std::time::Duration::from_secs(2);
                let _ = tokio::time::timeout(wait, old.close(200, "renewed".into())).await;
            }
        });
    }

    /// Closes the channel and the connection, without waiting long for a
    /// broker that may be gone.
    pub(crate) async fn close(self) {
        let wait = std::time::Duration::from_secs(2);
        if self.channel.status().connected() {
            let _ = tokio::time::timeout(wait, self.channel.close(200, "closing".into())).await;
        }
        if self.connection.status().connected() {
            let _ = tokio::time::timeout(
                wait,
                self.connection.close(200, "outbox-relay closing".into()),
            )
            .await;
        }
    }
}

/// Connects to `broker`, declares the topology and opens the publishing
/// channel, all within the configured connect timeout.
pub(crate) async fn connect(config: &SinkConfig, broker: &BrokerUrl) -> Result<Link, LinkError> {
    let redacted = broker.redacted().to_string();
    match tokio::time::timeout(config.connect_timeout, connect_inner(config, broker)).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::ConnectTimeout {
            broker: redacted,
            timeout: config.connect_timeout,
        }),
    }
}

async fn connect_inner(config: &SinkConfig, broker: &BrokerUrl) -> Result<Link, LinkError> {
    let redacted = broker.redacted().to_string();
    let connection = open(config, broker).await?;
    let events = Box::pin(connection.events_listener());
    let lost = |e: lapin::Error| LinkError::from_lapin(&redacted, &e, config.heartbeat_timeout);

    declare_topology(&connection, config, &redacted).await?;

    let channel = connection.create_channel().await.map_err(lost)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(lost)?;
    let frame_max = connection.configuration().frame_max();
    Ok(Link {
        connection: Arc::new(connection),
        channel: Arc::new(channel),
        events,
        broker: redacted,
        frame_max,
    })
}

/// Opens a connection to `broker` (TCP or TLS, credentials through an auth
/// provider, heartbeat and frame_max negotiated): the sink's links and the
/// inspector both start here.
pub(crate) async fn open(config: &SinkConfig, broker: &BrokerUrl) -> Result<Connection, LinkError> {
    let redacted = broker.redacted().to_string();
    let mut uri = broker.lapin_uri(config.heartbeat_secs());
    uri.query.frame_max = Some(config.frame_max);
    let mut properties =
        ConnectionProperties::default().with_connection_name(config.connection_name.clone().into());
    if let Some(auth) = broker.auth() {
        properties = properties.with_auth_provider(auth);
    }
    let connected = match &config.tls_ca_pem {
        Some(pem) if broker.is_tls() => {
            let runtime = lapin::runtime::default_runtime().map_err(|e| LinkError::Other {
                broker: redacted.clone(),
                cause: e.to_string(),
            })?;
            let tls = OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem.clone()),
            };
            Connection::connect_uri_with_config(uri, properties, tls, runtime).await
        }
        _ => Connection::connect_uri(uri, properties).await,
    };
    connected.map_err(|e| LinkError::from_connect(&redacted, broker.user(), &e))
}

/// Declares (or, passive, checks) the exchange, the dead-letter exchange
/// and its queue, on a channel of its own (a refused declaration closes the
/// channel it was made on).
async fn declare_topology(
    connection: &Connection,
    config: &SinkConfig,
    broker: &str,
) -> Result<(), LinkError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| LinkError::from_lapin(broker, &e, config.heartbeat_timeout))?;
    let exchange = &config.exchange;
    let names = std::iter::once(&exchange.name).chain(&config.extra_exchanges);
    for exchange_name in names.filter(|n| !n.is_empty()) {
        // `amq.*` exchanges exist on every broker and may not be declared.
        let passive = config.passive || exchange_name.starts_with("amq.");
        let what = format!(
            "exchange '{}' ({:?}, {})",
            exchange_name,
            exchange.kind,
            if exchange.durable {
                "durable"
            } else {
                "transient"
            }
        );
        let declare = ExchangeDeclareOptions {
            passive,
            durable: exchange.durable,
            ..Default::default()
        };
        let kind = exchange.kind.lapin();
        let declared = channel.exchange_declare(name(exchange_name)?, kind, declare, no_args());
        check(declared.await, broker, &what, passive)?;
    }
    if let Some(dead_letter) = &config.dead_letter {
        let passive = config.passive;
        let what = format!(
            "dead-letter exchange '{}' (fanout, durable)",
            dead_letter.exchange
        );
        let declare = ExchangeDeclareOptions {
            passive,
            durable: true,
            ..Default::default()
        };
        let dlx = name(&dead_letter.exchange)?;
        let declared =
            channel.exchange_declare(dlx.clone(), ExchangeKind::Fanout, declare, no_args());
        check(declared.await, broker, &what, passive)?;

        let what = format!(
            "dead-letter queue '{}' (durable{})",
            dead_letter.queue,
            if dead_letter.queue_type == crate::QueueType::Quorum {
                ", quorum"
            } else {
                ""
            }
        );
        let declare = QueueDeclareOptions {
            passive,
            durable: true,
            ..Default::default()
        };
        let dlq = name(&dead_letter.queue)?;
        let declared =
            channel.queue_declare(dlq.clone(), declare, dead_letter.queue_type.arguments());
        check(declared.await.map(drop), broker, &what, passive)?;

        if !passive {
            let what = format!(
                "the binding of '{}' to '{}'",
                dead_letter.queue, dead_letter.exchange
            );
            let options = QueueBindOptions::default();
            let bound = channel.queue_bind(dlq, dlx, ShortString::default(), options, no_args());
            check(bound.await, broker, &what, passive)?;
        }
    }
    let _ = channel.close(200, "topology done".into()).await;
    Ok(())
}

fn no_args() -> FieldTable {
    FieldTable::default()
}

/// A declaration's result, its refusal explained.
fn check(
    result: lapin::Result<()>,
    broker: &str,
    what: &str,
    passive: bool,
) -> Result<(), LinkError> {
    let verb = if passive { "checking" } else { "declaring" };
    result.map_err(|e| topology_error(broker, format!("{verb} {what}"), passive, &e))
}

fn name(value: &str) -> Result<ShortString, LinkError> {
    ShortString::try_new(value).map_err(|_| LinkError::Topology {
        what: format!(
            "the name '{}...'",
            value.chars().take(40).collect::<String>()
        ),
        reply: "longer than 255 bytes".into(),
        fix: "use a name of at most 255 bytes",
    })
}

fn topology_error(broker: &str, what: String, passive: bool, error: &lapin::Error) -> LinkError {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return LinkError::ConnectionLost {
            broker: broker.to_string(),
            cause: format!("{what}: {error}"),
        };
    };
    let fix = match amqp.get_id() {
        404 if passive => "create it on the broker (passive mode only checks that it exists)",
        406 => {
            "one of that name exists with another type, durability or arguments: delete it, or \
             use another name"
        }
        403 => "grant the user configure permission on it, or create it on the broker beforehand",
        _ => "check the broker log for details",
    };
    LinkError::Topology {
        what,
        reply: amqp.get_message().to_string(),
        fix,
    }
}
