//! A minimal consumer for trying outbox-relay out: binds an exclusive,
//! server-named queue to an exchange and prints each message (routing key,
//! properties, headers, body), then exits after `--count` messages.
//!
//! ```sh
//! cargo run -p outbox-relay --example consume -- --exchange outbox --binding 'order.#' --count 1
//! ```
//!
//! It prints `ready` once the queue is bound, so a script can wait for it
//! before producing events.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("RELAY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let exchange = arg("--exchange", "outbox");
    let binding = arg("--binding", "#");
    let count: usize = arg("--count", "1").parse()?;
    let timeout = Duration::from_secs(arg("--timeout-secs", "60").parse()?);

    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // Same declaration as the relay's: durable topic.
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "outbox-relay-example".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!(
        "ready: queue {} bound to {exchange} with {binding}",
        queue.name()
    );

    let mut seen = 0;
    while seen < count {
        let delivery = match tokio::time::timeout(timeout, consumer.next()).await {
            Ok(Some(d)) => d?,
            Ok(None) => break,
            Err(_) => return Err(format!("no message within {timeout:?}").into()),
        };
        let p = &delivery.properties;
        let text = |v: &Option<lapin::types::ShortString>| {
            v.as_ref().map(|s| s.to_string()).unwrap_or_default()
        };
        println!(
            "received routing_key={} message_id={} type={} content_type={} timestamp={} headers: {}",
            delivery.routing_key,
            text(p.message_id()),
            text(p.kind()),
            text(p.content_type()),
            p.timestamp().unwrap_or(0),
            p.headers()
                .as_ref()
                .map(|h| h
                    .inner()
                    .iter()
                    .map(|(k, v)| match v {
                        lapin::types::AMQPValue::LongString(s) => format!("{k}={s}"),
                        other => format!("{k}={other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default(),
        );
        println!("body {}", String::from_utf8_lossy(&delivery.data));
        delivery.ack(BasicAckOptions::default()).await?;
        seen += 1;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}
