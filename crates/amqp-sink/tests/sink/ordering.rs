//! Order and completeness: many messages go out, in order, every one
//! confirmed and consumed with the properties it was published with.

use std::time::Duration;

use amqp_sink::Publisher;
use e2e::amqp::BrokerScope;
use lapin::types::{AMQPValue, ByteArray};

use super::support::{config, message, message_index, Reader};

const N: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_arrive_in_order_with_their_properties() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, queue) = scope.topic_with_queue("sink-order").await.unwrap();
    let mut collector = scope.consume(&queue).await.unwrap();
    let consumed =
        tokio::spawn(async move { collector.collect(100_000, Duration::from_secs(240)).await });

    let mut config = config(&exchange);
    config.window_messages = 2048;
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=N {
        let seq = publisher
            .publish(message(&exchange, "order.created", i))
            .await
            .unwrap();
        assert_eq!(seq.get(), i);
    }
    reader
        .wait("every message confirmed", Duration::from_secs(240), |l| {
            l.reported == N
        })
        .await;
    {
        let ledger = reader.ledger();
        assert_eq!(ledger.failed(), vec![], "no message may fail");
        assert_eq!(ledger.confirmed().len(), 100_000);
    }
    publisher.close().await.unwrap();

    let deliveries = consumed.await.unwrap().unwrap();
    for (n, delivery) in (1..=N).zip(&deliveries) {
        assert_eq!(message_index(delivery), n, "delivery order");
        let expected = message(&exchange, "order.created", n);
        assert_eq!(delivery.data, expected.body.as_ref());
        assert_eq!(delivery.routing_key.as_str(), "order.created");
        let p = &delivery.properties;
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("created"));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.timestamp(), &Some(1_700_000_000 + n));
        let correlation = format!("c-{}", n % 7);
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.as_str()),
            Some(correlation.as_str())
        );
        let headers = p.headers().as_ref().expect("headers").inner();
        assert_eq!(
            headers.get("aggregate_type"),
            Some(&AMQPValue::LongString("order".into()))
        );
        assert_eq!(
            headers.get("seq"),
            Some(&AMQPValue::LongLongInt(i64::try_from(n).unwrap()))
        );
        assert_eq!(
            headers.get("even"),
            Some(&AMQPValue::Boolean(n.is_multiple_of(2)))
        );
        assert_eq!(
            headers.get("raw"),
            Some(&AMQPValue::ByteArray(ByteArray::from(
                n.to_be_bytes().to_vec()
            )))
        );
    }
    assert_eq!(u64::try_from(deliveries.len()).unwrap(), N);
}

/// `hold` keeps messages in the handle: nothing of them reaches the broker
/// before a flush (explicit, at `HOLD_MAX`, before a `try_publish`, or at
/// close), and whatever way they go out, they go out in sequence order,
/// each confirmed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_go_out_only_when_flushed_and_in_order() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, queue) = scope.topic_with_queue("sink-hold").await.unwrap();
    let mut collector = scope.consume(&queue).await.unwrap();
    let total = 10 + 5 + 1 + u64::try_from(amqp_sink::HOLD_MAX).unwrap() + 3;
    let expected = usize::try_from(total).unwrap();
    let consumed =
        tokio::spawn(async move { collector.collect(expected, Duration::from_secs(60)).await });

    let mut config = config(&exchange);
    config.window_messages = 1024;
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    let mut i = 0;
    let mut next = || {
        i += 1;
        message(&exchange, "order.created", i)
    };

    // Held: numbered at once, not published.
    for n in 1..=10 {
        assert_eq!(publisher.hold(next()).unwrap().get(), n);
    }
    assert_eq!(publisher.held(), 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reader.ledger().reported, 0, "a held message was published");
    publisher.flush();
    assert_eq!(publisher.held(), 0);
    reader
        .wait("the flushed ten confirmed", Duration::from_secs(30), |l| {
            l.reported == 10
        })
        .await;

    // A try_publish after held messages sends them first.
    for _ in 0..5 {
        publisher.hold(next()).unwrap();
    }
    assert_eq!(publisher.try_publish(next()).unwrap().get(), 16);
    assert_eq!(publisher.held(), 0);
    reader
        .wait(
            "the held five and the next confirmed",
            Duration::from_secs(30),
            |l| l.reported == 16,
        )
        .await;

    // HOLD_MAX held messages flush themselves.
    for _ in 0..amqp_sink::HOLD_MAX {
        publisher.hold(next()).unwrap();
    }
    assert_eq!(publisher.held(), 0, "HOLD_MAX messages must flush");
    let through = 16 + u64::try_from(amqp_sink::HOLD_MAX).unwrap();
    reader
        .wait(
            "HOLD_MAX held messages confirmed",
            Duration::from_secs(30),
            |l| l.reported == through,
        )
        .await;

    // Close sends what is held.
    for _ in 0..3 {
        publisher.hold(next()).unwrap();
    }
    publisher.close().await.unwrap();
    reader
        .wait("the stream to end", Duration::from_secs(30), |l| l.ended)
        .await;
    {
        let ledger = reader.ledger();
        assert_eq!(ledger.failed(), vec![], "no message may fail");
        assert_eq!(ledger.confirmed(), (1..=total).collect::<Vec<_>>());
    }
    let deliveries = consumed.await.unwrap().unwrap();
    let order: Vec<u64> = deliveries.iter().map(message_index).collect();
    assert_eq!(order, (1..=total).collect::<Vec<_>>(), "delivery order");
}

/// A `publish` that waits for room sends the held messages first: with the
/// window full of held messages it would otherwise wait for room only they
/// can give back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_behind_held_messages_that_fill_the_window_does_not_wait_forever() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, queue) = scope.topic_with_queue("sink-hold-full").await.unwrap();
    let mut collector = scope.consume(&queue).await.unwrap();
    let consumed = tokio::spawn(async move { collector.collect(5, Duration::from_secs(30)).await });
    let mut config = config(&exchange);
    config.window_messages = 4;
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=4 {
        publisher
            .hold(message(&exchange, "order.created", i))
            .unwrap();
    }
    assert!(
        matches!(
            publisher.try_publish(message(&exchange, "order.created", 5)),
            Err(amqp_sink::PublishError::Full)
        ),
        "four held messages fill a window of four"
    );
    let seq = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.publish(message(&exchange, "order.created", 5)),
    )
    .await
    .expect("publish waited for room only the held messages could give back")
    .unwrap();
    assert_eq!(seq.get(), 5);
    reader
        .wait("five confirmed", Duration::from_secs(30), |l| {
            l.reported == 5
        })
        .await;
    publisher.close().await.unwrap();
    let order: Vec<u64> = consumed
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(message_index)
        .collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5]);
}
