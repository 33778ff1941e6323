//! Nacks: a message the broker refuses is reported failed, in order, and
//! the stream goes on.

use std::time::Duration;

use amqp_sink::{FailureReason, LinkError, PublishError, Publisher};
use e2e::amqp::BrokerScope;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;

use super::support::{config, message, publish_confirmed, Reader};

#[tokio::test]
async fn a_nack_from_a_full_reject_publish_queue_is_reported_failed() {
    let scope = BrokerScope::connect().await.unwrap();
    let exchange = e2e::unique_name("sink-nack-x");
    let queue = e2e::unique_name("sink-nack-q");
    scope
        .declare_exchange(&exchange, ExchangeKind::Topic)
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    scope.declare_queue(&queue, arguments).await.unwrap();
    scope.bind(&queue, &exchange, "#").await.unwrap();

    let (mut publisher, outcomes) = Publisher::connect(config(&exchange)).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=8 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("eight outcomes", Duration::from_secs(10), |l| {
            l.reported == 8
        })
        .await;
    {
        let ledger = reader.ledger();
        assert_eq!(ledger.confirmed(), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            ledger.failed(),
            vec![
                (6, FailureReason::Nacked),
                (7, FailureReason::Nacked),
                (8, FailureReason::Nacked)
            ]
        );
    }
    // A nack halts publishing as a link failure does: nothing sent after
    // the refused message may reach the broker before the caller rewinds.
    assert!(publisher.is_halted());
    match publisher.publish(message(&exchange, "k", 9)).await {
        Err(PublishError::Halted {
            cause: LinkError::Nacked { .. },
        }) => {}
        other => panic!("a publish after a nack must be refused as halted: {other:?}"),
    }
    let mut collector = scope.consume(&queue).await.unwrap();
    collector.collect(5, Duration::from_secs(5)).await.unwrap();
    publisher.resume();
    publish_confirmed(&mut publisher, &reader, message(&exchange, "k", 9)).await;
    publisher.close().await.unwrap();
}
