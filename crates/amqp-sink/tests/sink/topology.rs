//! Topology and the publisher's contract at its edges: what the sink
//! declares (or only checks), dead letters, messages that do not fit AMQP,
//! and a clean close.

use std::time::Duration;

use amqp_sink::{
    DeadLetterConfig, LinkError, MessageError, OutgoingMessage, PublishError, Publisher, SinkError,
    DEAD_LETTER_REASON_HEADER,
};
use e2e::amqp::BrokerScope;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;

use super::support::{config, message, publish_confirmed, Reader};

async fn exists(scope: &BrokerScope, exchange: Option<(&str, ExchangeKind)>, queue: Option<&str>) {
    let channel = scope.connection().create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if let Some((name, kind)) = exchange {
        channel
            .exchange_declare(name.into(), kind, passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("exchange {name} missing: {e}"));
    }
    if let Some(name) = queue {
        let queue = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {name} missing: {e}"));
        assert_eq!(queue.name().as_str(), name);
    }
    let _ = channel.close(200, "checked".into()).await;
}

#[tokio::test]
async fn the_exchange_and_the_dead_letter_topology_are_declared_and_dead_letters_arrive() {
    let scope = BrokerScope::connect().await.unwrap();
    let exchange = e2e::unique_name("sink-topo-x");
    let dlx = e2e::unique_name("sink-topo-dlx");
    let dlq = e2e::unique_name("sink-topo-dlq");
    scope.track_exchange(&exchange);
    scope.track_exchange(&dlx);
    scope.track_queue(&dlq);
    let mut config = config(&exchange);
    config.dead_letter = Some(DeadLetterConfig {
        exchange: dlx.clone(),
        queue: dlq.clone(),
        ..Default::default()
    });
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    exists(&scope, Some((&exchange, ExchangeKind::Topic)), None).await;
    exists(&scope, Some((&dlx, ExchangeKind::Fanout)), Some(&dlq)).await;

    // A row the relay cannot route goes to the dead-letter exchange, with
    // its reason, whatever the routing key.
    let dead = OutgoingMessage::dead_letter(&dlx, "routing column is NULL", "{\"id\":1}");
    publisher.publish(dead).await.unwrap();
    reader
        .wait("the dead letter confirmed", Duration::from_secs(10), |l| {
            l.confirmed() == vec![1]
        })
        .await;
    let mut collector = scope.consume(&dlq).await.unwrap();
    let got = collector.collect(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].data, b"{\"id\":1}");
    let headers = got[0].properties.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get(DEAD_LETTER_REASON_HEADER),
        Some(&AMQPValue::LongString("routing column is NULL".into()))
    );
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn passive_mode_only_checks_and_names_what_is_missing() {
    let scope = BrokerScope::connect().await.unwrap();
    let missing = e2e::unique_name("sink-passive-missing");
    let mut passive = config(&missing);
    passive.passive = true;
    match Publisher::connect(passive).await {
        Err(SinkError::Connect(errors)) => {
            let [LinkError::Topology { what, fix, .. }] = &errors[..] else {
                panic!("{errors:?}");
            };
            assert!(
                what.contains(&missing) && what.contains("checking"),
                "{what}"
            );
            assert!(fix.contains("passive"), "{fix}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("passive mode created the exchange"),
    }
    // Nothing was declared.
    let channel = scope.connection().create_channel().await.unwrap();
    assert!(channel
        .exchange_declare(
            missing.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_err());

    // An exchange managed elsewhere is used as it is.
    let (exchange, _queue) = scope.topic_with_queue("sink-passive").await.unwrap();
    let mut passive = config(&exchange);
    passive.passive = true;
    let (publisher, _outcomes) = Publisher::connect(passive).await.unwrap();
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn an_exchange_of_another_type_is_a_clear_topology_error() {
    let scope = BrokerScope::connect().await.unwrap();
    let exchange = e2e::unique_name("sink-fanout-x");
    scope
        .declare_exchange(&exchange, ExchangeKind::Fanout)
        .await
        .unwrap();
    match Publisher::connect(config(&exchange)).await {
        Err(SinkError::Connect(errors)) => {
            let [error @ LinkError::Topology { reply, .. }] = &errors[..] else {
                panic!("{errors:?}");
            };
            assert!(reply.contains("PRECONDITION_FAILED"), "{reply}");
            let text = error.to_string();
            assert!(
                text.contains(&exchange) && text.contains("another type"),
                "{text}"
            );
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("declared over an exchange of another type"),
    }
}

#[tokio::test]
async fn a_message_that_does_not_fit_amqp_is_an_error_not_a_panic() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-fit").await.unwrap();
    let (mut publisher, outcomes) = Publisher::connect(config(&exchange)).await.unwrap();
    let reader = Reader::spawn(outcomes);

    let long_key = message(&exchange, &"k".repeat(300), 1);
    assert!(matches!(
        publisher.publish(long_key).await,
        Err(PublishError::Invalid(MessageError::TooLong {
            field: "routing key",
            len: 300,
            ..
        }))
    ));
    let long_header = message(&exchange, "k", 1).with_header("h".repeat(256), 1_i64);
    assert!(matches!(
        publisher.publish(long_header).await,
        Err(PublishError::Invalid(MessageError::TooLong {
            field: "header name",
            ..
        }))
    ));
    let mut long_id = message(&exchange, "k", 1);
    long_id.properties.message_id = Some("i".repeat(256));
    assert!(publisher.publish(long_id).await.is_err());

    // Refused messages used no sequence number, and the sink goes on.
    assert_eq!(publisher.next_seq().get(), 1);
    let seq = publish_confirmed(&mut publisher, &reader, message(&exchange, "k", 1)).await;
    assert_eq!(seq, 1);
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn close_reports_an_outcome_for_every_accepted_message() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-close").await.unwrap();
    let (mut publisher, outcomes) = Publisher::connect(config(&exchange)).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=500 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    // Close at once, with most messages still in flight.
    publisher.close().await.unwrap();
    reader
        .wait(
            "the end of the outcome stream",
            Duration::from_secs(10),
            |l| l.ended,
        )
        .await;
    let ledger = reader.ledger();
    assert_eq!(ledger.reported, 500);
    assert_eq!(ledger.confirmed().len(), 500);
}
