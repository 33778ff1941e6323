//! The window benchmark: the sink publishing N persistent 300-byte messages
//! with windows of 1, 64, 1024 and 8192 messages, against a bare lapin loop
//! with the same window (with publisher confirms) and without confirms.
//!
//! `cargo bench -p amqp-sink` (release). Needs the test broker on
//! 127.0.0.1:5672 (or `RELAY_TEST_AMQP_URL`). `BENCH_N` (default 200000) and
//! `BENCH_WINDOWS` (default `1,64,1024,8192`) change the run. Every run
//! publishes to a fresh durable topic exchange bound to a fresh classic
//! queue, deleted afterwards. The figure is messages per second from the
//! first publish to the last confirm (to the last frame written, without
//! confirms). On a shared two-core machine the broker is the ceiling and
//! the ratios, not the absolute numbers, are what the run measures.
//!
//! One run on the 2-core development machine (RabbitMQ 3.10, other builds
//! and tests running beside it), messages/s:
//!
//! | window | amqp-sink | bare lapin, confirms | sink / lapin | bare lapin, no confirms |
//! |---:|---:|---:|---:|---:|
//! | 1 | 886 | 407 | 218% | 15817 |
//! | 64 | 8286 | 6196 | 134% | 14543 |
//! | 1024 | 8136 | 7645 | 106% | 13091 |
//! | 8192 | 9501 | 9845 | 97% | 19949 |

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use amqp_sink::{MessageProperties, OutgoingMessage, Publisher, SinkEvent};
use bytes::Bytes;
use e2e::amqp::BrokerScope;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::BasicProperties;

const BODY_BYTES: usize = 300;

fn main() {
    let n: u64 = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let windows: Vec<usize> = std::env::var("BENCH_WINDOWS")
        .unwrap_or_else(|_| "1,64,1024,8192".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let mut rows = Vec::new();
    for &window in &windows {
        let sink = runtime.block_on(sink_run(n, window, body.clone()));
        eprintln!("window {window}: sink {sink:.0} msg/s");
        let confirms = runtime.block_on(lapin_run(n, window, true, body.clone()));
        eprintln!("window {window}: lapin with confirms {confirms:.0} msg/s");
        let no_confirms = runtime.block_on(lapin_run(n, window, false, body.clone()));
        eprintln!("window {window}: lapin without confirms {no_confirms:.0} msg/s");
        rows.push((window, sink, confirms, no_confirms));
    }
    println!();
    println!("N = {n} persistent {BODY_BYTES}-byte messages, classic durable queue");
    println!();
    println!(
        "| window | amqp-sink | bare lapin, confirms | sink / lapin | bare lapin, no confirms |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (window, sink, confirms, no_confirms) in rows {
        println!(
            "| {window} | {sink:.0} | {confirms:.0} | {:.0}% | {no_confirms:.0} |",
            100.0 * sink / confirms
        );
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    // n is at most a few million: exact in an f64.
    let n = u32::try_from(n).map(f64::from).unwrap_or(f64::MAX);
    n / elapsed.as_secs_f64()
}

async fn sink_run(n: u64, window: usize, body: Bytes) -> f64 {
    let scope = BrokerScope::connect().await.expect("the test broker");
    let (exchange, _queue) = scope.topic_with_queue("bench-sink").await.unwrap();
    let mut config = amqp_sink::SinkConfig::for_urls(&[e2e::amqp::amqp_url()]).expect("broker URL");
    config.exchange.name = exchange.clone();
    config.dead_letter = None;
    config.window_messages = window;
    config.window_bytes = 256 << 20;
    let (mut publisher, mut outcomes) = Publisher::connect(config).await.expect("connect");
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        while let Some(event) = outcomes.recv().await {
            match event {
                SinkEvent::Confirmed { up_to } if up_to.get() == n => return Ok(()),
                SinkEvent::Failed { seq, reason } => return Err(format!("{seq}: {reason}")),
                _ => {}
            }
        }
        Err("the outcome stream ended".to_string())
    });
    for i in 0..n {
        let message = OutgoingMessage {
            exchange: exchange.clone(),
            routing_key: "bench.message".into(),
            body: body.clone(),
            properties: MessageProperties {
                message_id: Some(i.to_string()),
                content_type: Some("application/json".into()),
                ..Default::default()
            },
        };
        publisher.publish(message).await.expect("publish");
    }
    reader
        .await
        .expect("reader")
        .expect("every message confirmed");
    let elapsed = started.elapsed();
    publisher.close().await.expect("close");
    rate(n, elapsed)
}

async fn lapin_run(n: u64, window: usize, confirms: bool, body: Bytes) -> f64 {
    let scope = BrokerScope::connect().await.expect("the test broker");
    let (exchange, _queue) = scope.topic_with_queue("bench-lapin").await.unwrap();
    let connection = e2e::amqp::connect().await.expect("connect");
    let channel = connection.create_channel().await.unwrap();
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
    }
    let exchange: ShortString = exchange.as_str().into();
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    for i in 0..n {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(i.to_string().into())
            .with_content_type("application/json".into());
        let confirm = channel
            .basic_publish(
                exchange.clone(),
                "bench.message".into(),
                options,
                &body,
                properties,
            )
            .await
            .unwrap();
        if confirms {
            pending.push_back(confirm);
            if pending.len() >= window {
                if let Some(oldest) = pending.pop_front() {
                    assert!(oldest.await.unwrap().is_ack());
                }
            }
        }
    }
    while let Some(confirm) = pending.pop_front() {
        assert!(confirm.await.unwrap().is_ack());
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "bench done".into()).await;
    rate(n, elapsed)
}
