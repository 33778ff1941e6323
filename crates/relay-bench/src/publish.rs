//! What the bench's own publishers (the broker ceiling, the latency floor,
//! the polling publisher) share: a confirm-mode channel on a connection of
//! its own, the publish options, and the properties the relay gives an
//! event, so that every peer sends the messages the relay sends.

use anyhow::{bail, Context as _};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};

/// Mandatory, as the relay publishes: an unroutable message comes back.
pub const OPTIONS: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

/// A connection of its own with one channel in confirm mode; `what` names
/// the publisher in errors.
pub async fn confirming_channel(what: &str) -> anyhow::Result<(Connection, Channel)> {
    confirming_channel_at(&e2e::amqp::amqp_url(), what).await
}

/// [`confirming_channel`] on the broker at `url`.
pub async fn confirming_channel_at(url: &str, what: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = e2e::amqp::connect_to(url)
        .await
        .with_context(|| format!("{what}: connecting to RabbitMQ"))?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// One event as the relay maps it: persistent, message id, type, JSON
/// content type, app id, timestamp and the aggregate headers.
pub struct Event<'a> {
    pub id: String,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    pub timestamp: u64,
    pub app_id: &'a str,
}

impl Event<'_> {
    /// The AMQP properties of the event.
    pub fn properties(self) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("aggregate_type", self.aggregate_type),
            ("aggregate_id", self.aggregate_id),
            ("event_type", self.event_type),
        ] {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(self.id.into())
            .with_type(self.event_type.into())
            .with_content_type("application/json".into())
            .with_app_id(self.app_id.into())
            .with_timestamp(self.timestamp)
            .with_headers(headers)
    }
}

/// The properties of the synthetic event `seq` (the ceiling's and the
/// latency floor's messages).
pub fn synthetic(seq: u64) -> BasicProperties {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Event {
        id: format!("00000000-0000-0000-0000-{seq:012}"),
        aggregate_type: "order",
        aggregate_id: &format!("ord-{seq}"),
        event_type: "created",
        timestamp: now,
        app_id: "relay-bench",
    }
    .properties()
}

/// Waits for a publish's confirm; fails unless the broker acked it.
pub async fn acked(confirm: PublisherConfirm, what: &str) -> anyhow::Result<()> {
    if !confirm.await?.is_ack() {
        bail!("the broker did not ack a message of the {what}");
    }
    Ok(())
}

/// Closes a connection, waiting at most 5 s: lapin's close can wait
/// forever on a connection whose I/O loop has already ended, and a bench
/// phase must not hang on its cleanup.
pub async fn close(connection: &lapin::Connection, why: &str) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connection.close(200, why.into()),
    )
    .await;
}
