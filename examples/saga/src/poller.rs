//! The alternative the relay replaces: a polling publisher. Every
//! `interval` it takes each outbox's oldest rows (FOR UPDATE SKIP LOCKED,
//! in insertion order), publishes them with confirms, deletes them and
//! commits; when a poll finds rows it polls again at once. For the saga's
//! latency comparison (`saga poll` instead of outbox-relay).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio_postgres::Client;

use crate::schema::{exchange, SERVICES};

/// Rows per poll and table.
const BATCH: i64 = 200;

/// Declares the saga's exchanges (durable topic, as outbox-relay does).
pub async fn declare_exchanges(amqp_url: &str, prefix: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for service in SERVICES {
        channel
            .exchange_declare(
                exchange(prefix, service).as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "declared".into()),
    )
    .await;
    Ok(())
}

/// Polls the three outboxes until the process is stopped.
pub async fn run(
    client: &mut Client,
    amqp_url: &str,
    prefix: &str,
    interval: Duration,
) -> anyhow::Result<()> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    loop {
        let mut found = 0;
        for service in SERVICES {
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    format!(
                        "SELECT seq, id::text, aggregate_type, aggregate_id, event_type, \
                         payload::text FROM {service}.outbox ORDER BY seq LIMIT $1 \
                         FOR UPDATE SKIP LOCKED"
                    )
                    .as_str(),
                    &[&BATCH],
                )
                .await?;
            let mut confirms = Vec::with_capacity(rows.len());
            let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
            for row in &rows {
                seqs.push(row.get(0));
                let id: String = row.get(1);
                let aggregate_type: String = row.get(2);
                let aggregate_id: String = row.get(3);
                let event_type: String = row.get(4);
                let payload: String = row.get(5);
                let mut headers = FieldTable::default();
                headers.insert(
                    "aggregate_id".into(),
                    AMQPValue::LongString(aggregate_id.as_str().into()),
                );
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(id.as_str().into())
                    .with_type(event_type.as_str().into())
                    .with_content_type("application/json".into())
                    .with_headers(headers);
                let key = format!("{aggregate_type}.{event_type}");
                confirms.push(
                    channel
                        .basic_publish(
                            exchange(prefix, service).as_str().into(),
                            key.as_str().into(),
                            BasicPublishOptions::default(),
                            payload.as_bytes(),
                            properties,
                        )
                        .await?,
                );
            }
            for confirm in confirms {
                if !confirm.await?.is_ack() {
                    anyhow::bail!("the broker refused an event");
                }
            }
            tx.execute(
                format!("DELETE FROM {service}.outbox WHERE seq = ANY($1)").as_str(),
                &[&seqs],
            )
            .await?;
            tx.commit().await?;
            found += rows.len();
        }
        if found == 0 {
            tokio::time::sleep(interval).await;
        }
    }
}
