//! A stream queue (x-queue-type=stream) bound to the relay's exchange
//! receives every event with publisher confirms, in commit order, and a
//! consumer reads it as the README says: from an offset, with a prefetch
//! and manual acks (on the shared broker; the queue is deleted at the end).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::fixture::{committed_count, header, seq_of, verify, Fixture, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_queue_bound_to_the_exchange_receives_every_event() {
    let f = Fixture::new().await;
    let stream = e2e::unique_name("relay-stream");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    f.scope.track_queue(&stream);
    f.scope
        .channel()
        .queue_declare(
            stream.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("declare a stream queue");
    f.scope.bind(&stream, &f.exchange, "#").await.unwrap();
    let mut relay = f.start_relay(&[]);
    let load = Load::start(&f.pg.url(), 3, 5, Duration::from_millis(2), 60);
    let written = load.finish().await;

    // A stream consumer: prefetch, manual acks, and where to start.
    let conn = e2e::amqp::connect_to(&e2e::amqp::amqp_url()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut from_first = FieldTable::default();
    from_first.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            stream.as_str().into(),
            "stream-reader".into(),
            BasicConsumeOptions::default(),
            from_first,
        )
        .await
        .expect("consume the stream");
    let wanted = committed_count(&written);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < wanted && Instant::now() < deadline {
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        {
            d.ack(BasicAckOptions::default()).await.unwrap();
            got.push(d);
        }
    }
    let verdict = verify(&got, &written);
    assert_eq!(verdict.unique, wanted, "{verdict:?}");
    // The stream keeps commit order: per aggregate, ascending.
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for d in &got {
        let agg = header(d, "aggregate_id").unwrap();
        let seq = seq_of(&d.data);
        if let Some(prev) = last.insert(agg.clone(), seq) {
            assert!(prev < seq, "{agg}: {seq} after {prev}");
        }
    }
    let _ = conn.close(200, "done".into()).await;
    relay.kill().unwrap();
}
