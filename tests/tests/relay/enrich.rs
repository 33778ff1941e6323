//! What travels beside the payload: a producer's W3C trace context (its
//! own columns, or Debezium's tracingspancontext) as traceparent and
//! tracestate headers, an invalid one left out without losing the event;
//! and, when asked, the CloudEvents attributes as the AMQP binding names
//! them.

use std::time::Duration;

use super::fixture::{header, Fixture};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn trace_context_travels_as_w3c_headers_and_an_invalid_one_is_left_out() {
    let f = Fixture::new().await;
    f.pg.psql(
        "ALTER TABLE outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text,
                            ADD COLUMN tracingspancontext text",
    )
    .unwrap();
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    f.pg.psql(&format!(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate)
         VALUES ('order', 'a', 'created', '{{\"seq\": 0}}', '{PARENT}', 'rojo=00f067aa0ba902b7');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate)
         VALUES ('order', 'b', 'created', '{{\"seq\": 1}}', 'not-a-traceparent', 'rojo=1');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, tracingspancontext)
         VALUES ('order', 'c', 'created', '{{\"seq\": 2}}',
                 E'#Thu Nov 30 12:00:00 UTC 2026\\ntraceparent={PARENT}\\ntracestate=congo\\\\=t61\\n')"
    ))
    .unwrap();
    let got = consumer.collect(3, Duration::from_secs(30)).await.unwrap();
    let by = |agg: &str| {
        got.iter()
            .find(|d| header(d, "aggregate_id").as_deref() == Some(agg))
            .unwrap_or_else(|| panic!("no event for {agg}"))
    };
    assert_eq!(header(by("a"), "traceparent").as_deref(), Some(PARENT));
    assert_eq!(
        header(by("a"), "tracestate").as_deref(),
        Some("rojo=00f067aa0ba902b7")
    );
    // Invalid: left out, with its state; the event itself arrives.
    assert_eq!(header(by("b"), "traceparent"), None);
    assert_eq!(header(by("b"), "tracestate"), None);
    // Debezium's span context becomes W3C headers.
    assert_eq!(header(by("c"), "traceparent").as_deref(), Some(PARENT));
    assert_eq!(header(by("c"), "tracestate").as_deref(), Some("congo=t61"));
    relay.kill().unwrap();
}

#[tokio::test]
async fn cloudevents_attributes_carry_the_names_of_the_amqp_binding() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[
        ("RELAY_CLOUDEVENTS", "true"),
        ("RELAY_CLOUDEVENTS_SOURCE", "/shop/orders"),
    ]);
    f.pg.psql(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at)
         VALUES ('0b7e1d2a-1c1f-4a53-9a3e-2f8b1c3d4e5f', 'order', '42', 'created',
                 '{\"total\": 1999}', '2026-11-30 12:34:56+00')",
    )
    .unwrap();
    let got = consumer.collect(1, Duration::from_secs(30)).await.unwrap();
    let d = &got[0];
    for (name, value) in [
        ("cloudEvents:specversion", "1.0"),
        ("cloudEvents:id", "0b7e1d2a-1c1f-4a53-9a3e-2f8b1c3d4e5f"),
        ("cloudEvents:source", "/shop/orders"),
        ("cloudEvents:type", "created"),
        ("cloudEvents:time", "2026-11-30T12:34:56Z"),
        ("cloudEvents:subject", "42"),
    ] {
        assert_eq!(header(d, name).as_deref(), Some(value), "{name}");
    }
    // datacontenttype is the content-type property in the AMQP binding.
    assert_eq!(
        d.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(&d.data[..], br#"{"total": 1999}"#);
    relay.kill().unwrap();
}

#[tokio::test]
async fn amqp_properties_and_json_headers_come_from_columns_and_a_bad_value_is_dead_lettered() {
    let f = Fixture::new().await;
    f.pg.psql(
        "ALTER TABLE outbox ADD COLUMN correlation text, ADD COLUMN reply text,
                            ADD COLUMN ttl_ms text, ADD COLUMN prio int, ADD COLUMN app text,
                            ADD COLUMN encoding text, ADD COLUMN extra jsonb",
    )
    .unwrap();
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[
        ("RELAY_CORRELATION_ID_COLUMN", "correlation"),
        ("RELAY_REPLY_TO_COLUMN", "reply"),
        ("RELAY_EXPIRATION_COLUMN", "ttl_ms"),
        ("RELAY_PRIORITY_COLUMN", "prio"),
        ("RELAY_APP_ID_COLUMN", "app"),
        ("RELAY_CONTENT_ENCODING_COLUMN", "encoding"),
        ("RELAY_HEADERS_COLUMN", "extra"),
    ]);
    let mut dead = f.scope.consume(&f.dead_letter_queue).await.unwrap();
    f.pg.psql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload,
                             correlation, reply, ttl_ms, prio, app, encoding, extra)
         VALUES ('order', 'p', 'created', '{\"seq\": 0}', 'corr-1', 'replies', '60000', 5,
                 'shop-api', 'identity',
                 '{\"tenant\": \"acme\", \"attempt\": 2, \"vip\": true, \"geo\": {\"lat\": 1.5}}');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, prio)
         VALUES ('order', 'p', 'created', '{\"seq\": 1}', 300);
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('order', 'p', 'created', '{\"seq\": 2}')",
    )
    .unwrap();
    let got = consumer.collect(2, Duration::from_secs(30)).await.unwrap();
    let d = &got[0];
    let p = &d.properties;
    assert_eq!(
        p.correlation_id().as_ref().map(|v| v.as_str()),
        Some("corr-1")
    );
    assert_eq!(p.reply_to().as_ref().map(|v| v.as_str()), Some("replies"));
    assert_eq!(p.expiration().as_ref().map(|v| v.as_str()), Some("60000"));
    assert_eq!(*p.priority(), Some(5));
    assert_eq!(p.app_id().as_ref().map(|v| v.as_str()), Some("shop-api"));
    assert_eq!(
        p.content_encoding().as_ref().map(|v| v.as_str()),
        Some("identity")
    );
    let headers = p.headers().as_ref().unwrap().inner();
    use lapin::types::AMQPValue;
    assert_eq!(
        headers.get("tenant"),
        Some(&AMQPValue::LongString("acme".into()))
    );
    assert_eq!(headers.get("attempt"), Some(&AMQPValue::LongLongInt(2)));
    assert_eq!(headers.get("vip"), Some(&AMQPValue::Boolean(true)));
    match headers.get("geo") {
        Some(AMQPValue::FieldTable(t)) => {
            assert_eq!(t.inner().get("lat"), Some(&AMQPValue::Double(1.5)));
        }
        other => panic!("geo: {other:?}"),
    }
    // The property columns are not headers of their own.
    for column in [
        "correlation",
        "reply",
        "ttl_ms",
        "prio",
        "app",
        "encoding",
        "extra",
    ] {
        assert!(headers.get(column).is_none(), "{column} sent as a header");
    }
    // A row without values gets no properties and the relay's app_id.
    let plain = &got[1].properties;
    assert_eq!(
        plain.app_id().as_ref().map(|v| v.as_str()),
        Some("outbox-relay")
    );
    assert_eq!(*plain.priority(), None);
    // Priority 300: dead-lettered with the reason, the stream went on.
    let bad = dead.collect(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        header(&bad[0], "x-relay-reason").as_deref(),
        Some("invalid_property")
    );
    assert!(
        header(&bad[0], "x-relay-detail").is_some_and(|d| d.contains("priority")),
        "{:?}",
        header(&bad[0], "x-relay-detail")
    );
    relay.kill().unwrap();
}
