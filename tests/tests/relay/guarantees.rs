//! The relay's guarantees, one test each.

use std::time::Duration;

use super::fixture::{header, seq_of, Fixture};

#[tokio::test]
async fn committed_outbox_rows_arrive_with_the_documented_contract() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    f.pg.psql(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at)
         VALUES ('6f1c0a52-58f3-4d3b-9a36-7d3c1c0b9a10', 'order', '42', 'created',
                 '{\"total\": 1999}', '2026-11-28 21:04:52+00')",
    )
    .unwrap();
    let got = consumer.collect(1, Duration::from_secs(30)).await.unwrap();
    let d = &got[0];
    assert_eq!(d.routing_key.as_str(), "order.created");
    assert_eq!(d.exchange.as_str(), f.exchange);
    assert_eq!(String::from_utf8_lossy(&d.data), r#"{"total": 1999}"#);
    let p = &d.properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.to_string()).as_deref(),
        Some("6f1c0a52-58f3-4d3b-9a36-7d3c1c0b9a10")
    );
    assert_eq!(
        p.kind().as_ref().map(|s| s.to_string()).as_deref(),
        Some("created")
    );
    assert_eq!(
        p.content_type().as_ref().map(|s| s.to_string()).as_deref(),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.timestamp(), Some(1_795_899_892));
    assert_eq!(header(d, "aggregate_type").as_deref(), Some("order"));
    assert_eq!(header(d, "aggregate_id").as_deref(), Some("42"));
    assert_eq!(header(d, "event_type").as_deref(), Some("created"));
    relay.kill().unwrap();
}

#[tokio::test]
async fn events_of_one_aggregate_arrive_in_commit_order_and_rollbacks_never() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    for batch in 0..20 {
        f.insert_events("a1", batch * 50, 50);
        f.pg.psql(
            "BEGIN; INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('order', 'a1', 'rolled_back', '{\"seq\": -1}'); ROLLBACK;",
        )
        .unwrap();
    }
    let got = consumer
        .collect(1000, Duration::from_secs(60))
        .await
        .unwrap();
    let seqs: Vec<u64> = got.iter().map(|d| seq_of(&d.data)).collect();
    assert_eq!(seqs, (0..1000).collect::<Vec<u64>>());
    assert!(consumer
        .next(Duration::from_millis(500))
        .await
        .unwrap()
        .is_none());
    relay.kill().unwrap();
}
