//! Rows built to break the relay, and roles that should not be able to
//! publish: each row reaches the dead-letter queue with its reason, the
//! normal rows after it arrive in order, the slot moves past it, and the
//! stream restarts no more than the bound (invariants 7, 8 and 9).

use std::time::{Duration, Instant};

use super::fixture::{header, seq_of, Fixture};

/// How many times the relay restarted its stream after a publish failure.
fn rewinds(relay: &e2e::RelayProcess) -> usize {
    relay.count_lines("publishing failed; streaming again")
}

/// Waits until the slot's confirmed position reaches everything committed
/// so far (pg_current_wal_insert_lsn at the call).
fn wait_for_slot_to_pass_everything(f: &Fixture, relay: &e2e::RelayProcess) {
    let target: u64 =
        f.pg.psql("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let acked = f.confirmed_flush("outbox_relay").unwrap_or(0);
        if acked >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the slot stays at {acked}, before {target}: a row holds it back\n{}",
            relay.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn huge_columns_and_payloads_are_dead_lettered_with_their_reason_and_the_stream_goes_on() {
    let f = Fixture::new().await;
    f.pg.psql("ALTER TABLE outbox ADD COLUMN note text")
        .unwrap();
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let mut dead = f.scope.consume(&f.dead_letter_queue).await.unwrap();
    // Between good rows: an extra column of 200,000 characters (over one
    // AMQP frame as a header), a 9 MiB payload (over max_payload_bytes) and
    // an aggregate_id of 200,000 characters.
    f.pg.psql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, note) VALUES
           ('order', 'h', 'created', '{\"seq\": 0}', NULL),
           ('order', 'h', 'created', '{\"seq\": 1}', repeat('n', 200000)),
           ('order', 'h', 'created', '{\"seq\": 2}', NULL),
           ('order', 'h', 'created', jsonb_build_object('seq', 3, 'big', repeat('p', 9 * 1024 * 1024)), NULL),
           ('order', 'h', 'created', '{\"seq\": 4}', NULL),
           ('order', repeat('a', 200000), 'created', '{\"seq\": 5}', NULL),
           ('order', 'h', 'created', '{\"seq\": 6}', NULL)",
    )
    .unwrap();
    let good = consumer.collect(4, Duration::from_secs(60)).await.unwrap();
    let seqs: Vec<u64> = good.iter().map(|d| seq_of(&d.data)).collect();
    assert_eq!(seqs, [0, 2, 4, 6], "{}", relay.output());
    let bad = dead.collect(3, Duration::from_secs(60)).await.unwrap();
    let reasons: Vec<String> = bad
        .iter()
        .map(|d| header(d, "x-relay-reason").unwrap_or_default())
        .collect();
    assert_eq!(
        reasons,
        ["headers_too_large", "oversize", "headers_too_large"]
    );
    for d in &bad {
        assert!(header(d, "x-relay-lsn").is_some_and(|l| l.contains('/')));
        assert!(
            header(d, "payload").is_none(),
            "the payload is never a header"
        );
        assert!(header(d, "x-relay-id").is_some());
    }
    // The copies keep the body when it fits, and say what they dropped.
    assert_eq!(seq_of(&bad[0].data), 1);
    assert!(bad[1].data.is_empty());
    assert!(header(&bad[0], "x-relay-dropped-headers").is_some_and(|d| d.contains("note")));
    wait_for_slot_to_pass_everything(&f, &relay);
    assert_eq!(rewinds(&relay), 0, "{}", relay.output());
    assert!(relay.try_status().is_none(), "{}", relay.output());
    relay.kill().unwrap();
}

#[tokio::test]
async fn a_row_naming_an_exchange_that_does_not_exist_is_dead_lettered_after_the_bound() {
    let f = Fixture::new().await;
    let missing = e2e::unique_name("no-such-exchange");
    let mut consumer = f.consumer().await;
    // Each row names its exchange in aggregate_type.
    let mut relay = f.start_relay(&[
        ("RELAY_EXCHANGE", "{aggregate_type}"),
        ("RELAY_ROW_ATTEMPTS", "3"),
    ]);
    let mut dead = f.scope.consume(&f.dead_letter_queue).await.unwrap();
    f.pg.psql(&format!(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES
           ('{x}', 'e', 'created', '{{\"seq\": 0}}'),
           ('{x}', 'e', 'created', '{{\"seq\": 1}}');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES
           ('{missing}', 'e', 'created', '{{\"seq\": 2}}');
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES
           ('{x}', 'e', 'created', '{{\"seq\": 3}}'),
           ('{x}', 'e', 'created', '{{\"seq\": 4}}')",
        x = f.exchange
    ))
    .unwrap();
    let bad = dead.collect(1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        header(&bad[0], "x-relay-reason").as_deref(),
        Some("no_exchange")
    );
    assert_eq!(
        header(&bad[0], "x-relay-original-exchange").as_deref(),
        Some(missing.as_str())
    );
    let detail = header(&bad[0], "x-relay-detail").unwrap_or_default();
    assert!(detail.contains("NOT_FOUND"), "{detail}");
    // As a deduplicating consumer sees them: in order, none missing (rows
    // in flight when the broker closed the channel come again: duplicates).
    let mut firsts: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while firsts.len() < 4 && Instant::now() < deadline {
        if let Some(d) = consumer.next(Duration::from_secs(1)).await.unwrap() {
            let seq = seq_of(&d.data);
            if !firsts.contains(&seq) {
                firsts.push(seq);
            }
        }
    }
    assert_eq!(firsts, [0, 1, 3, 4], "{}", relay.output());
    wait_for_slot_to_pass_everything(&f, &relay);
    // The row is refused exactly row_attempts times; a rewind of the link
    // itself (a publish racing the channel's close) may come on top.
    let refused = relay.count_lines("the broker refused a row");
    assert_eq!(refused, 3, "{}", relay.output());
    let rewinds = rewinds(&relay);
    assert!(
        (3..=4).contains(&rewinds),
        "{rewinds} rewinds for one bad row with row_attempts = 3\n{}",
        relay.output()
    );
    assert!(relay.try_status().is_none(), "{}", relay.output());
    relay.kill().unwrap();
}

#[tokio::test]
async fn a_role_without_grants_cannot_publish_an_event_with_default_settings() {
    let f = Fixture::new().await;
    f.pg.psql(
        "CREATE ROLE intruder LOGIN PASSWORD 'intruder-pw';
         GRANT CONNECT ON DATABASE postgres TO intruder;",
    )
    .unwrap();
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let intruder = f.pg.url_for("intruder", Some("intruder-pw"), "postgres");
    let (client, connection) = tokio_postgres::connect(&intruder, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            r#"SELECT pg_logical_emit_message(true, 'outbox',
                 '{"id": "forged", "aggregate_type": "order", "aggregate_id": "1",
                   "event_type": "refunded", "payload": {"amount": 1000000}}')"#,
        )
        .await
        .expect("PUBLIC may call pg_logical_emit_message");
    // A real event after it: the relay has read past the forged one.
    f.insert_events("after", 1, 1);
    let got = consumer.collect(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(header(&got[0], "aggregate_id").as_deref(), Some("after"));
    assert!(consumer
        .next(Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());
    relay.kill().unwrap();
}
