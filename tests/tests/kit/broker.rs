//! The RabbitMQ helpers: unique names, a collecting consumer, cleanup of
//! what a test declared, and a broker link that the proxy really cuts.

use std::time::{Duration, Instant};

use e2e::amqp::{self, BrokerScope};
use e2e::FaultProxy;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn messages_round_trip_in_order_and_the_scope_deletes_what_it_declared() {
    let queue;
    {
        let scope = BrokerScope::connect().await.expect("broker reachable");
        let (exchange, q) = scope.topic_with_queue("kit").await.unwrap();
        queue = q;
        let mut consumer = scope.consume(&queue).await.unwrap();
        let ch = scope.channel();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..20u32 {
            ch.basic_publish(
                exchange.as_str().into(),
                format!("order.{i}").as_str().into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        let got = consumer.collect(20, Duration::from_secs(10)).await.unwrap();
        let bodies: Vec<String> = got
            .iter()
            .map(|d| String::from_utf8(d.data.clone()).unwrap())
            .collect();
        let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(bodies, expected);
        assert!(consumer
            .next(Duration::from_millis(200))
            .await
            .unwrap()
            .is_none());
    }
    // The scope is gone: so is its queue (a passive declare fails with 404).
    let conn = amqp::connect().await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let passive = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "queue {queue} survived its scope");
}

#[test]
fn unique_names_do_not_repeat() {
    let names: std::collections::HashSet<String> =
        (0..1000).map(|_| e2e::unique_name("x")).collect();
    assert_eq!(names.len(), 1000);
    let ident = e2e::unique_ident("Slot-Name");
    assert!(ident
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
}

#[tokio::test]
async fn cut_broker_link_fails_the_channel_within_a_second() {
    let proxy = FaultProxy::start(amqp::amqp_addr()).unwrap();
    let url = amqp::amqp_url_via(proxy.addr());
    let conn = amqp::connect_to(&url).await.expect("broker through proxy");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    proxy.cut();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(1),
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("an operation on a cut broker link must fail within a second");
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_secs(1));

    proxy.restore();
    let conn = amqp::connect_to(&url)
        .await
        .expect("reconnect after restore");
    conn.create_channel().await.unwrap();
}
