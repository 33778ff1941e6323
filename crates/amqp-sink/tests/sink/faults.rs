//! Link failures, made with the kit's fault proxy: a cut fails what was in
//! flight as unknown (and what was confirmed was enqueued), a stall is
//! caught by heartbeats in time, the window makes publishing wait, brokers
//! are tried in turn, and the circuit breaker fails fast.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use amqp_sink::{
    FailureReason, LinkError, LinkState, PublishError, Publisher, SinkConfig, SinkError, SinkEvent,
};
use e2e::amqp::{amqp_addr, amqp_url_via, BrokerScope};
use e2e::FaultProxy;

use super::support::{config_for, message, message_index, publish_confirmed, Reader};

fn via(proxy: &FaultProxy, exchange: &str) -> SinkConfig {
    config_for(&amqp_url_via(proxy.addr()), exchange)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn wait_state(
    publisher: &Publisher,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&LinkState) -> bool,
) {
    let mut state = publisher.link_state();
    let waited = tokio::time::timeout(timeout, state.wait_for(|s| pred(s))).await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "timed out waiting for {what}; state {:?}",
        *publisher.link_state().borrow()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_fails_the_unconfirmed_as_unknown_and_confirmed_ones_were_enqueued() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, queue) = scope.topic_with_queue("sink-cut").await.unwrap();
    let proxy = FaultProxy::start(amqp_addr()).unwrap();
    let mut config = via(&proxy, &exchange);
    config.window_messages = 512;
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);

    // seq -> message index, for everything accepted.
    let mut sent = BTreeMap::new();
    let mut i = 0;
    loop {
        i += 1;
        if i == 1500 {
            reader
                .wait("1000 confirms", Duration::from_secs(30), |l| {
                    l.confirmed().len() >= 1000
                })
                .await;
            proxy.cut();
        }
        match publisher.publish(message(&exchange, "k", i)).await {
            Ok(seq) => {
                sent.insert(seq.get(), i);
            }
            Err(PublishError::Halted { cause }) => {
                assert!(matches!(cause, LinkError::ConnectionLost { .. }), "{cause}");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(i < 100_000, "the cut was never noticed");
    }
    let last = *sent.keys().last().unwrap();
    reader
        .wait("an outcome for everything", Duration::from_secs(10), |l| {
            l.reported == last && l.saw(|e| matches!(e, SinkEvent::LinkLost { .. }))
        })
        .await;
    let (confirmed_before, unknown) = {
        let ledger = reader.ledger();
        let unknown: Vec<u64> = ledger
            .failed()
            .into_iter()
            .map(|(seq, reason)| {
                assert!(
                    matches!(
                        reason,
                        FailureReason::Unknown(LinkError::ConnectionLost { .. })
                    ),
                    "{seq}: {reason:?}"
                );
                seq
            })
            .collect();
        (ledger.confirmed(), unknown)
    };
    assert!(confirmed_before.len() >= 1000);
    assert!(!unknown.is_empty(), "something was in flight at the cut");
    // Every failure comes after every confirm.
    assert!(confirmed_before.last() < unknown.first());

    // Back up: the sink reconnects by itself; the caller rewinds and goes on.
    proxy.restore();
    reader
        .wait("the reconnect", Duration::from_secs(15), |l| {
            l.saw(|e| matches!(e, SinkEvent::Connected { .. }))
        })
        .await;
    publisher.resume();
    for _ in 0..100 {
        i += 1;
        let seq = publisher.publish(message(&exchange, "k", i)).await.unwrap();
        sent.insert(seq.get(), i);
    }
    let last = *sent.keys().last().unwrap();
    reader
        .wait("the resumed messages", Duration::from_secs(15), |l| {
            l.reported == last
        })
        .await;
    let confirmed: Vec<u64> = reader.ledger().confirmed();
    assert_eq!(confirmed.len(), confirmed_before.len() + 100);
    publisher.close().await.unwrap();

    // What was reported confirmed is in the queue (unknown ones may or may
    // not be: they count as not delivered).
    let mut collector = scope.consume(&queue).await.unwrap();
    let enqueued: BTreeSet<u64> = collector
        .drain(Duration::from_millis(500), Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(message_index)
        .collect();
    for seq in confirmed {
        let index = sent[&seq];
        assert!(
            enqueued.contains(&index),
            "message {index} (seq {seq}) was confirmed but is not in the queue"
        );
    }
}

#[tokio::test]
async fn a_stalled_link_is_detected_by_heartbeats_within_the_timeout() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-stall").await.unwrap();
    let proxy = FaultProxy::start(amqp_addr()).unwrap();
    let mut config = via(&proxy, &exchange);
    let timeout = Duration::from_secs(3);
    config.heartbeat_timeout = timeout;
    config.connect_timeout = Duration::from_secs(2);
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=5 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("5 confirms", Duration::from_secs(10), |l| l.reported == 5)
        .await;

    proxy.stall();
    let stalled_at = Instant::now();
    for i in 6..=8 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("the stall detected", Duration::from_secs(15), |l| {
            l.saw(|e| matches!(e, SinkEvent::LinkLost { .. }))
        })
        .await;
    let detected_after = stalled_at.elapsed();
    assert!(
        detected_after <= timeout,
        "stall detected after {detected_after:?}, configured {timeout:?}"
    );
    {
        let ledger = reader.ledger();
        assert!(ledger.saw(|e| matches!(
            e,
            SinkEvent::LinkLost {
                error: LinkError::HeartbeatTimeout { .. },
                halted: true
            }
        )));
        for seq in 6..=8 {
            assert!(
                matches!(
                    ledger.outcomes.get(&seq),
                    Some(Some(FailureReason::Unknown(
                        LinkError::HeartbeatTimeout { .. }
                    )))
                ),
                "{seq}: {:?}",
                ledger.outcomes.get(&seq)
            );
        }
    }

    proxy.restore();
    reader
        .wait("the reconnect", Duration::from_secs(15), |l| {
            l.saw(|e| matches!(e, SinkEvent::Connected { .. }))
        })
        .await;
    publisher.resume();
    publish_confirmed(&mut publisher, &reader, message(&exchange, "k", 9)).await;
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn publish_waits_only_when_the_window_is_full() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-window").await.unwrap();
    let proxy = FaultProxy::start(amqp_addr()).unwrap();
    let mut config = via(&proxy, &exchange);
    config.window_messages = 4;
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);

    // Nothing comes back while stalled: four messages fill the window.
    proxy.stall();
    for i in 1..=4 {
        tokio::time::timeout(
            Duration::from_millis(500),
            publisher.publish(message(&exchange, "k", i)),
        )
        .await
        .expect("room in the window: no wait")
        .unwrap();
    }
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            publisher.publish(message(&exchange, "k", 5))
        )
        .await
        .is_err(),
        "the fifth message must wait for room"
    );
    proxy.restore();
    let seq = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.publish(message(&exchange, "k", 5)),
    )
    .await
    .expect("room once confirms come back")
    .unwrap();
    assert_eq!(
        seq.get(),
        5,
        "the cancelled attempt used no sequence number"
    );
    reader
        .wait("five confirms", Duration::from_secs(10), |l| {
            l.confirmed().len() == 5
        })
        .await;
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn brokers_are_tried_in_turn() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-brokers").await.unwrap();
    let a = FaultProxy::start(amqp_addr()).unwrap();
    let b = FaultProxy::start(amqp_addr()).unwrap();
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let mut config =
        SinkConfig::for_urls(&[dead, amqp_url_via(a.addr()), amqp_url_via(b.addr())]).unwrap();
    let template = config_for(&amqp_url_via(a.addr()), &exchange);
    config.exchange = template.exchange;
    config.dead_letter = None;
    config.backoff = template.backoff;
    config.connect_timeout = template.connect_timeout;

    // The first broker is down: connect moves on to the second.
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    let a_port = format!(":{}/", a.port());
    let b_port = format!(":{}/", b.port());
    assert!(matches!(
        &*publisher.link_state().borrow(),
        LinkState::Connected { broker } if broker.contains(&a_port)
    ));
    for i in 1..=10 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("10 confirms", Duration::from_secs(10), |l| l.reported == 10)
        .await;

    // The second fails: the sink moves on to the third at once.
    a.cut();
    reader
        .wait(
            "a connection to the next broker",
            Duration::from_secs(10),
            |l| l.saw(|e| matches!(e, SinkEvent::Connected { broker } if broker.contains(&b_port))),
        )
        .await;
    publisher.resume();
    for i in 11..=20 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("10 more confirms", Duration::from_secs(10), |l| {
            l.confirmed().len() == 20
        })
        .await;
    assert!(b.accepted() >= 1);
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn the_circuit_breaker_fails_fast_while_the_broker_stays_down() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-breaker").await.unwrap();
    let proxy = FaultProxy::start(amqp_addr()).unwrap();
    let mut config = via(&proxy, &exchange);
    config.breaker_after_attempts = 2;
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    publish_confirmed(&mut publisher, &reader, message(&exchange, "k", 1)).await;

    proxy.cut();
    wait_state(
        &publisher,
        "the breaker to open",
        Duration::from_secs(10),
        |s| matches!(s, LinkState::Unavailable { .. }),
    )
    .await;
    let started = Instant::now();
    let refused = publisher.publish(message(&exchange, "k", 2)).await;
    assert!(started.elapsed() < Duration::from_millis(100), "fails fast");
    match refused {
        Err(PublishError::Unavailable { cause }) => {
            assert!(
                cause.to_string().contains(&proxy.port().to_string()),
                "names the broker: {cause}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    proxy.restore();
    wait_state(&publisher, "the reconnect", Duration::from_secs(10), |s| {
        matches!(s, LinkState::Connected { .. })
    })
    .await;
    let seq = publish_confirmed(&mut publisher, &reader, message(&exchange, "k", 3)).await;
    assert_eq!(seq, 2, "the refused message used no sequence number");
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn connect_fails_naming_every_broker_when_none_answers() {
    let urls = [
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port()),
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port()),
    ];
    let config = SinkConfig::for_urls(&urls).unwrap();
    match Publisher::connect(config).await {
        Err(SinkError::Connect(errors)) => {
            assert_eq!(errors.len(), 2);
            for (error, url) in errors.iter().zip(&urls) {
                let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
                assert!(
                    matches!(error, LinkError::Unreachable { .. })
                        && error.to_string().contains(&format!("127.0.0.1:{port}")),
                    "{error}"
                );
            }
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}
