//! Returns and channel loss: an unroutable message is failed, never
//! confirmed, even when the broker acks it in a batch with routable ones;
//! a missing exchange closes the channel, fails what was in flight, and is
//! named in the error.

use std::collections::BTreeSet;
use std::time::Duration;

use amqp_sink::{FailureReason, LinkError, PublishError, Publisher, SinkEvent};
use e2e::amqp::BrokerScope;
use lapin::ExchangeKind;

use super::support::{config, message, message_index, publish_confirmed, Reader};

#[tokio::test]
async fn an_unroutable_message_is_reported_failed_not_confirmed() {
    let scope = BrokerScope::connect().await.unwrap();
    let exchange = e2e::unique_name("sink-noroute-x");
    scope
        .declare_exchange(&exchange, ExchangeKind::Topic)
        .await
        .unwrap();
    let (mut publisher, outcomes) = Publisher::connect(config(&exchange)).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=3 {
        publisher
            .publish(message(&exchange, "nobody.listens", i))
            .await
            .unwrap();
    }
    reader
        .wait("three outcomes", Duration::from_secs(10), |l| {
            l.reported == 3
        })
        .await;
    {
        let ledger = reader.ledger();
        assert_eq!(ledger.confirmed(), Vec::<u64>::new());
        for (_, reason) in ledger.failed() {
            assert!(
                matches!(reason, FailureReason::Returned { reply_code: 312, ref reply_text } if reply_text.contains("NO_ROUTE")),
                "{reason:?}"
            );
        }
    }
    publisher.close().await.unwrap();
}

/// The broker acks an unroutable message in the same `multiple` ack as
/// routable ones, and lapin attaches the return to whichever confirm of the
/// batch it resolves first: attribution must not depend on that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_interleaved_with_routed_messages_are_attributed_exactly() {
    let scope = BrokerScope::connect().await.unwrap();
    let exchange = e2e::unique_name("sink-mixed-x");
    let queue = e2e::unique_name("sink-mixed-q");
    scope
        .declare_exchange(&exchange, ExchangeKind::Topic)
        .await
        .unwrap();
    scope
        .declare_queue(&queue, Default::default())
        .await
        .unwrap();
    scope.bind(&queue, &exchange, "routed.#").await.unwrap();

    let mut config = config(&exchange);
    config.window_messages = 4096;
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    const N: u64 = 6000;
    let mut lost = BTreeSet::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 1..=N {
        // Runs of routed messages with unroutable ones scattered among them.
        let key = if rng.u8(..) < 40 {
            lost.insert(i);
            "lost.here"
        } else {
            "routed.here"
        };
        let seq = publisher.publish(message(&exchange, key, i)).await.unwrap();
        assert_eq!(seq.get(), i);
    }
    reader
        .wait("every outcome", Duration::from_secs(60), |l| {
            l.reported == N
        })
        .await;
    let (failed, confirmed) = {
        let ledger = reader.ledger();
        let failed: BTreeSet<u64> = ledger
            .failed()
            .into_iter()
            .map(|(seq, reason)| {
                assert!(
                    matches!(
                        reason,
                        FailureReason::Returned {
                            reply_code: 312,
                            ..
                        }
                    ),
                    "{seq}: {reason:?}"
                );
                seq
            })
            .collect();
        let confirmed: BTreeSet<u64> = ledger.confirmed().into_iter().collect();
        (failed, confirmed)
    };
    assert_eq!(failed, lost, "exactly the unroutable messages fail");
    publisher.close().await.unwrap();

    let mut collector = scope.consume(&queue).await.unwrap();
    let routed = usize::try_from(N).unwrap() - lost.len();
    let deliveries = collector
        .collect(routed, Duration::from_secs(60))
        .await
        .unwrap();
    let enqueued: BTreeSet<u64> = deliveries.iter().map(message_index).collect();
    assert_eq!(enqueued, confirmed, "confirmed = enqueued");
    assert!(collector
        .drain(Duration::from_millis(300), Duration::from_secs(2))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_fails_the_channel_and_names_the_exchange() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-ghost").await.unwrap();
    let ghost = e2e::unique_name("sink-ghost-missing");
    let (mut publisher, outcomes) = Publisher::connect(config(&exchange)).await.unwrap();
    let reader = Reader::spawn(outcomes);

    for i in 1..=10 {
        publisher
            .publish(message(&exchange, "a.b", i))
            .await
            .unwrap();
    }
    let ghost_seq = publisher
        .publish(message(&ghost, "a.b", 11))
        .await
        .unwrap()
        .get();
    let mut after = Vec::new();
    for i in 12..=20 {
        match publisher.publish(message(&exchange, "a.b", i)).await {
            Ok(seq) => after.push(seq.get()),
            Err(PublishError::Halted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let last = after.last().copied().unwrap_or(ghost_seq);
    reader
        .wait("the channel loss", Duration::from_secs(10), |l| {
            l.reported >= last && l.saw(|e| matches!(e, SinkEvent::LinkLost { .. }))
        })
        .await;
    {
        let ledger = reader.ledger();
        let names_ghost = |e: &LinkError| {
            matches!(e, LinkError::ExchangeNotFound { exchange, .. } if *exchange == ghost)
                && e.to_string().contains(&ghost)
        };
        match ledger.outcomes.get(&ghost_seq) {
            Some(Some(FailureReason::Unknown(e))) => assert!(names_ghost(e), "{e}"),
            other => panic!("message to the missing exchange: {other:?}"),
        }
        for seq in &after {
            assert!(
                ledger.outcomes.get(seq).is_some_and(|o| o.is_some()),
                "{seq} was published after the failing message on a closed channel"
            );
        }
        assert!(ledger.saw(
            |e| matches!(e, SinkEvent::LinkLost { error, halted: true } if names_ghost(error))
        ));
    }
    assert!(publisher.is_halted());
    assert!(matches!(
        publisher.publish(message(&exchange, "a.b", 99)).await,
        Err(PublishError::Halted { .. })
    ));

    // The caller rewinds and goes on: publishing works again on a new
    // channel.
    publisher.resume();
    publish_confirmed(&mut publisher, &reader, message(&exchange, "a.b", 100)).await;
    assert!(reader
        .ledger()
        .saw(|e| matches!(e, SinkEvent::Connected { .. })));
    publisher.close().await.unwrap();
}
