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
