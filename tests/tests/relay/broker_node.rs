//! A broker node that dies and comes back, on a private RabbitMQ node (the
//! kit's `RabbitNode`, never the shared broker): SIGKILLed under load and
//! started again on its data, then stopped and started cleanly. Nothing is
//! lost, first deliveries keep per-aggregate order, and the relay
//! publishes again within 2 s of the broker answering: its backoff may
//! space out attempts while the broker is down, but it watches the port
//! and does not keep away from a broker that is back.

use std::time::{Duration, Instant};

use e2e::RabbitNode;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;

use super::fixture::{committed_count, header, seq_of, verify, Fixture, Load};
use crate::operations::{http_get, metrics_addr};

/// A durable topic exchange and a durable queue with `arguments` bound to
/// every key, declared through the broker at `url`, named after `prefix`:
/// (exchange, queue).
pub(super) async fn topology_at(
    url: &str,
    prefix: &str,
    arguments: FieldTable,
) -> (String, String) {
    let exchange = e2e::unique_name(&format!("{prefix}-x"));
    let queue = e2e::unique_name(&format!("{prefix}-q"));
    let conn = e2e::amqp::connect_to(url).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        arguments,
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "declared".into()).await;
    (exchange, queue)
}

/// A durable topic exchange and a durable classic queue on the node.
async fn durable_topology(node: &RabbitNode) -> (String, String) {
    topology_at(&node.url(), "node", FieldTable::default()).await
}

/// Consumes the queue on the broker at `url` until every committed event
/// of `written` arrived (or two minutes pass), acking each.
pub(super) async fn everything_in(
    url: &str,
    queue: &str,
    written: &[super::fixture::Written],
) -> Vec<lapin::message::Delivery> {
    let conn = e2e::amqp::connect_to(url).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "check".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let wanted = committed_count(written);
    let mut got = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < wanted && Instant::now() < deadline {
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        {
            d.ack(BasicAckOptions::default()).await.unwrap();
            if let Some(agg) = header(&d, "aggregate_id") {
                seen.insert((agg, seq_of(&d.data)));
            }
            got.push(d);
        }
    }
    got
}

/// `outbox_relay_events_confirmed_total` as the relay reports it.
pub(super) async fn confirmed(addr: &str) -> u64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with("outbox_relay_events_confirmed_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// `outbox_relay_events_confirmed_total` once it has not changed for
/// 1.5 s (longer than the relay's 1 s status interval, so that the slot
/// has been told of the last confirm), within 30 s: where publishing
/// stopped, a baseline for "the slot does not move" from then on.
pub(super) async fn settled_confirms(addr: &str) -> u64 {
    let started = Instant::now();
    let mut last = confirmed(addr).await;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = confirmed(addr).await;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(1500) {
            return last;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "confirms still came in 30 s after publishing should have stopped"
        );
    }
}

/// Seconds from the broker answering again until the relay's first new
/// confirm.
pub(super) async fn back_within(addr: &str, before: u64) -> Duration {
    let answered = Instant::now();
    loop {
        if confirmed(addr).await > before {
            return answered.elapsed();
        }
        assert!(
            answered.elapsed() < Duration::from_secs(30),
            "the relay did not publish again within 30 s of the broker answering"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_node_killed_or_stopped_under_load_loses_nothing_and_is_used_again_within_two_seconds(
) {
    let mut node = RabbitNode::start().expect("a private RabbitMQ node");
    let (exchange, queue) = durable_topology(&node).await;
    let f = Fixture::new().await;
    let url = node.url();
    let mut relay = f.start_relay(&[
        ("RELAY_AMQP_URL", url.as_str()),
        ("RELAY_EXCHANGE", exchange.as_str()),
        ("RELAY_BACKOFF_INITIAL_MS", "200"),
        ("RELAY_BACKOFF_MAX_MS", "30000"),
    ]);
    let addr = metrics_addr(&relay);
    let load = Load::start(&f.pg.url(), 3, 5, Duration::from_millis(5), u64::MAX);

    // SIGKILL, down for long enough that the backoff grows, then back on
    // the same data.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill().expect("SIGKILL the node");
    let before = confirmed(&addr).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    node.start_again().expect("start the node again");
    let after_kill = back_within(&addr, before).await;

    // A clean stop and start of the broker application.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.stop_app().expect("stop_app");
    let before = confirmed(&addr).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.start_app().expect("start_app");
    let after_stop = back_within(&addr, before).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written = load.stop().await;

    // Everything committed is in the durable queue on the node.
    let got = everything_in(&node.url(), &queue, &written).await;
    let wanted = committed_count(&written);
    let verdict = verify(&got, &written);
    println!(
        "broker node: {verdict:?} of {wanted} committed; publishing again {:.2} s after a \
         SIGKILLed node answered, {:.2} s after start_app",
        after_kill.as_secs_f64(),
        after_stop.as_secs_f64()
    );
    assert!(
        after_kill < Duration::from_secs(2),
        "publishing resumed {after_kill:?} after the killed node answered:\n{}",
        relay.output()
    );
    assert!(
        after_stop < Duration::from_secs(2),
        "publishing resumed {after_stop:?} after start_app:\n{}",
        relay.output()
    );
    relay.kill().unwrap();
}

/// A gauge of the relay's /metrics.
async fn gauge(addr: &str, name: &str) -> Option<i64> {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A memory alarm on the node under load: publishing pauses (a metric and
/// a log line say so), the slot does not move, nothing is lost, and
/// publishing resumes when the alarm clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_pauses_publishing_without_moving_the_slot_and_loses_nothing() {
    let node = RabbitNode::start().expect("a private RabbitMQ node");
    let (exchange, queue) = durable_topology(&node).await;
    let f = Fixture::new().await;
    let url = node.url();
    let mut relay = f.start_relay(&[
        ("RELAY_AMQP_URL", url.as_str()),
        ("RELAY_EXCHANGE", exchange.as_str()),
    ]);
    let addr = metrics_addr(&relay);
    let load = Load::start(&f.pg.url(), 2, 5, Duration::from_millis(5), u64::MAX);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    node.ctl(&["set_vm_memory_high_watermark", "0"])
        .expect("raise the memory alarm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while gauge(&addr, "outbox_relay_broker_blocked").await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the blocked state never showed:\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay
        .wait_for_line("the broker blocks publishing", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    // Blocked: once what the broker took before the alarm is confirmed, no
    // confirm, and the slot stays where it is.
    let confirms = settled_confirms(&addr).await;
    let held = f.confirmed_flush("outbox_relay");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        f.confirmed_flush("outbox_relay"),
        held,
        "the slot moved while blocked"
    );
    assert_eq!(confirmed(&addr).await, confirms, "confirms while blocked");
    assert!(
        relay.try_status().is_none(),
        "the relay must wait, not exit"
    );

    node.ctl(&["set_vm_memory_high_watermark", "0.4"])
        .expect("clear the alarm");
    let resumed = back_within(&addr, confirms).await;
    assert_eq!(gauge(&addr, "outbox_relay_broker_blocked").await, Some(0));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let written = load.stop().await;
    let got = everything_in(&node.url(), &queue, &written).await;
    let verdict = verify(&got, &written);
    println!(
        "memory alarm: {verdict:?} of {} committed; publishing again {:.2} s after the alarm \
         cleared",
        committed_count(&written),
        resumed.as_secs_f64()
    );
    relay.kill().unwrap();
}
