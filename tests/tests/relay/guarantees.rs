//! The relay's guarantees (docs/ARCHITECTURE.md invariants), one test each, against
//! the real binary, a private PostgreSQL cluster and the shared RabbitMQ.

use std::time::{Duration, Instant};

use e2e::FaultProxy;
use nix::sys::signal::Signal;

use super::broker_node::settled_confirms;
use super::fixture::{collect_all, committed_count, header, seq_of, verify, Fixture, Load};
use crate::operations::metrics_addr;

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
async fn concurrent_writers_with_rollbacks_lose_nothing_and_keep_per_aggregate_order() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let load = Load::start(&f.pg.url(), 4, 5, Duration::ZERO, 100);
    let written = load.finish().await;
    assert_eq!(committed_count(&written), 4 * 90 * 5);
    let got = collect_all(&mut consumer, &written, Duration::from_secs(90)).await;
    let verdict = verify(&got, &written);
    assert_eq!(verdict.duplicates, 0, "no fault, no duplicate: {verdict:?}");
    assert_eq!(verdict.delivered, verdict.unique);
    assert_eq!(verdict.unique, committed_count(&written));
    relay.kill().unwrap();
}

#[tokio::test]
async fn repeated_sigkill_under_load_loses_nothing() {
    sigkill_under_load(Fixture::new().await).await;
}

/// The guarantee of [`repeated_sigkill_under_load_loses_nothing`] on a fixture's cluster (run on every
/// supported PostgreSQL version by `super::versions`).
pub async fn sigkill_under_load(f: Fixture) {
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let load = Load::start(&f.pg.url(), 3, 10, Duration::from_millis(5), u64::MAX);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        relay.kill().unwrap();
        relay = f.start_relay(&[]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = load.stop().await;
    let got = collect_all(&mut consumer, &written, Duration::from_secs(120)).await;
    let verdict = verify(&got, &written);
    println!(
        "sigkill x3: {verdict:?} of {} committed",
        committed_count(&written)
    );
    relay.kill().unwrap();
}

#[tokio::test]
async fn broker_link_cut_or_stalled_never_acks_unconfirmed_work_and_loses_nothing() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let proxy = FaultProxy::start(e2e::amqp::amqp_addr()).unwrap();
    let via_proxy = e2e::amqp::amqp_url_via(proxy.addr());
    let mut relay = f.start_relay(&[("RELAY_AMQP_URL", &via_proxy)]);
    let addr = metrics_addr(&relay);
    let load = Load::start(&f.pg.url(), 2, 10, Duration::from_millis(5), u64::MAX);

    // Cut: nothing can be confirmed, so the slot must not move although
    // the writers go on (which makes keepalives advance). The baseline is
    // taken once the relay has ended its session on the lost link (having
    // acknowledged what was confirmed before the cut).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rewinds = relay.count_lines("publishing failed");
    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.count_lines("publishing failed") == rewinds {
        assert!(
            Instant::now() < deadline,
            "the cut went unnoticed:\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during_cut = f.confirmed_flush("outbox_relay").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.confirmed_flush("outbox_relay").unwrap(),
        during_cut,
        "the slot advanced while the broker link was cut"
    );
    proxy.restore();

    // Stall: heartbeats (3 s) must notice; again the slot must not move.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.stall();
    // Once the confirms that crossed before the stall are in and
    // acknowledged.
    settled_confirms(&addr).await;
    let during_stall = f.confirmed_flush("outbox_relay").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.confirmed_flush("outbox_relay").unwrap(),
        during_stall,
        "the slot advanced while the broker link was stalled"
    );
    // Crash the relay in the middle of the stall: only what the slot
    // acknowledged survives in PostgreSQL; a fresh relay must deliver the rest.
    relay.kill().unwrap();
    proxy.restore();
    let written = load.stop().await;
    let mut relay = f.start_relay(&[]);
    let got = collect_all(&mut consumer, &written, Duration::from_secs(120)).await;
    let verdict = verify(&got, &written);
    println!(
        "broker cut+stall: {verdict:?} of {} committed",
        committed_count(&written)
    );
    relay.kill().unwrap();
}

#[tokio::test]
async fn walsender_terminated_three_times_loses_nothing() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let load = Load::start(&f.pg.url(), 2, 10, Duration::from_millis(5), u64::MAX);
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // The relay may still be reconnecting from the previous round:
        // wait until this round's session streams (a walsender ended during
        // START_REPLICATION is a failed start, not a lost stream).
        let deadline = Instant::now() + Duration::from_secs(30);
        while relay.count_lines("replication started") < round {
            assert!(Instant::now() < deadline, "{}", relay.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while f
            .pg
            .psql(
                "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
                 WHERE slot_name = 'outbox_relay' AND active_pid IS NOT NULL",
            )
            .unwrap()
            != "1"
        {
            assert!(Instant::now() < deadline, "the walsender never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // This round's loss, not an earlier one's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while relay.count_lines("replication stream lost") < round {
            assert!(Instant::now() < deadline, "{}", relay.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let written = load.stop().await;
    let got = collect_all(&mut consumer, &written, Duration::from_secs(120)).await;
    let verdict = verify(&got, &written);
    println!(
        "walsender x3: {verdict:?} of {} committed",
        committed_count(&written)
    );
    assert!(
        relay.try_status().is_none(),
        "the relay must survive: {}",
        relay.output()
    );
    relay.kill().unwrap();
}

#[tokio::test]
async fn postgres_restart_loses_nothing() {
    let mut f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let load = Load::start(&f.pg.url(), 2, 10, Duration::from_millis(5), u64::MAX);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.pg.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.pg.crash().unwrap();
    f.pg.start_again().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written = load.stop().await;
    let got = collect_all(&mut consumer, &written, Duration::from_secs(120)).await;
    let verdict = verify(&got, &written);
    println!(
        "postgres restart+crash: {verdict:?} of {} committed",
        committed_count(&written)
    );
    assert!(
        relay.try_status().is_none(),
        "the relay must survive: {}",
        relay.output()
    );
    relay.kill().unwrap();
}

#[tokio::test]
async fn idle_outbox_does_not_pin_wal() {
    idle_wal_acked(Fixture::new().await).await;
}

/// The guarantee of [`idle_outbox_does_not_pin_wal`] on a fixture's cluster (run on every
/// supported PostgreSQL version by `super::versions`).
pub async fn idle_wal_acked(f: Fixture) {
    let mut relay = f.start_relay(&[]);
    f.insert_events("a", 0, 10);
    // 20 MB of WAL from another table: no outbox events at all.
    f.pg.psql(
        "CREATE TABLE filler (b text);
         INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000);",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag: i64 =
            f.pg.psql(
                "SELECT (pg_current_wal_insert_lsn() - confirmed_flush_lsn)::bigint
                 FROM pg_replication_slots WHERE slot_name = 'outbox_relay'",
            )
            .unwrap()
            .parse()
            .unwrap();
        if lag < 1024 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot still lags {lag} bytes after 30 s:\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    relay.kill().unwrap();
}

#[tokio::test]
async fn sigterm_drains_exits_zero_and_loses_nothing() {
    sigterm_drain(Fixture::new().await).await;
}

/// The guarantee of [`sigterm_drains_exits_zero_and_loses_nothing`] on a fixture's cluster (run on every
/// supported PostgreSQL version by `super::versions`).
pub async fn sigterm_drain(f: Fixture) {
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let load = Load::start(&f.pg.url(), 2, 10, Duration::from_millis(2), u64::MAX);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.signal(Signal::SIGTERM).unwrap();
    let status = relay.wait(Duration::from_secs(20)).unwrap();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        relay.output()
    );
    assert!(relay.output().contains("stopped"), "{}", relay.output());
    let written = load.stop().await;
    let mut relay = f.start_relay(&[]);
    let got = collect_all(&mut consumer, &written, Duration::from_secs(120)).await;
    let verdict = verify(&got, &written);
    println!(
        "sigterm: {verdict:?} of {} committed",
        committed_count(&written)
    );
    relay.kill().unwrap();
}

#[tokio::test]
async fn poison_rows_are_dead_lettered_and_the_stream_goes_on() {
    let f = Fixture::new().await;
    f.pg.psql("ALTER TABLE outbox ALTER aggregate_type DROP NOT NULL")
        .unwrap();
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[("RELAY_MAX_PAYLOAD_BYTES", "200")]);
    let mut dead = f.scope.consume(&f.dead_letter_queue).await.unwrap();
    f.pg.psql(&format!(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES
           ('order', 'p', 'created', '{{\"seq\": 0}}'),
           (NULL, 'p', 'created', '{{\"seq\": 1}}'),
           ('order', 'p', 'created', '{{\"seq\": 2}}'),
           ('order', 'p', 'created', '{{\"seq\": 3, \"big\": \"{}\"}}'),
           ('order', 'p', 'created', '{{\"seq\": 4}}')",
        "x".repeat(300)
    ))
    .unwrap();
    let good = consumer.collect(3, Duration::from_secs(30)).await.unwrap();
    let seqs: Vec<u64> = good.iter().map(|d| seq_of(&d.data)).collect();
    assert_eq!(seqs, [0, 2, 4]);
    let bad = dead.collect(2, Duration::from_secs(30)).await.unwrap();
    let reasons: Vec<String> = bad
        .iter()
        .map(|d| header(d, "x-relay-reason").unwrap_or_default())
        .collect();
    assert_eq!(reasons, ["unroutable_row", "oversize"]);
    for d in &bad {
        assert!(header(d, "x-relay-lsn").is_some_and(|l| l.contains('/')));
        assert_eq!(header(d, "aggregate_id").as_deref(), Some("p"));
    }
    assert_eq!(seq_of(&bad[0].data), 1);
    relay.kill().unwrap();
}

#[tokio::test]
async fn unroutable_events_go_to_the_dead_letter_queue_not_nowhere() {
    let f = Fixture::new().await;
    // A queue bound to order.# only: invoice events have no queue.
    let only_orders = e2e::unique_name("relay-orders-only");
    f.scope
        .declare_queue(&only_orders, lapin::types::FieldTable::default())
        .await
        .unwrap();
    let exchange = e2e::unique_name("relay-x");
    f.scope
        .declare_exchange(&exchange, lapin::ExchangeKind::Topic)
        .await
        .unwrap();
    f.scope
        .bind(&only_orders, &exchange, "order.#")
        .await
        .unwrap();
    let mut orders = f.scope.consume(&only_orders).await.unwrap();
    let mut relay = f.start_relay(&[("RELAY_EXCHANGE", &exchange)]);
    let mut dead = f.scope.consume(&f.dead_letter_queue).await.unwrap();
    f.pg.psql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES
           ('order', '1', 'created', '{\"seq\": 0}'),
           ('invoice', '1', 'created', '{\"seq\": 1}'),
           ('order', '1', 'created', '{\"seq\": 2}')",
    )
    .unwrap();
    let got = orders.collect(2, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        got.iter().map(|d| seq_of(&d.data)).collect::<Vec<_>>(),
        [0, 2]
    );
    let returned = dead.collect(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        header(&returned[0], "x-relay-reason").as_deref(),
        Some("no_route")
    );
    assert_eq!(
        header(&returned[0], "x-relay-original-routing-key").as_deref(),
        Some("invoice.created")
    );
    assert_eq!(seq_of(&returned[0].data), 1);
    relay.kill().unwrap();
}

#[tokio::test]
async fn debezium_style_outbox_table_works_by_configuration_alone() {
    let f = Fixture::new().await;
    f.pg.psql(
        "CREATE TABLE public.debezium_outbox (
             id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             aggregatetype varchar(255) NOT NULL,
             aggregateid varchar(255) NOT NULL,
             type varchar(255) NOT NULL,
             payload jsonb)",
    )
    .unwrap();
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[
        ("RELAY_TABLE", "public.debezium_outbox"),
        ("RELAY_TYPE_COLUMN", "type"),
        ("RELAY_TIMESTAMP_COLUMN", ""),
        ("RELAY_ROUTING_KEY", "{aggregatetype}.{type}"),
        ("RELAY_SLOT", "debezium_style"),
        ("RELAY_PUBLICATION", "debezium_style"),
    ]);
    f.pg.psql(
        "INSERT INTO debezium_outbox (aggregatetype, aggregateid, type, payload)
         VALUES ('Order', '123', 'OrderCreated', '{\"seq\": 7}')",
    )
    .unwrap();
    let got = consumer.collect(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got[0].routing_key.as_str(), "Order.OrderCreated");
    assert_eq!(
        got[0]
            .properties
            .kind()
            .as_ref()
            .map(|k| k.to_string())
            .as_deref(),
        Some("OrderCreated")
    );
    assert_eq!(header(&got[0], "aggregateid").as_deref(), Some("123"));
    assert_eq!(seq_of(&got[0].data), 7);
    relay.kill().unwrap();
}

#[tokio::test]
async fn takeover_of_a_slot_created_elsewhere_starts_exactly_at_its_position() {
    takeover_at_position(Fixture::new().await).await;
}

/// The guarantee of [`takeover_of_a_slot_created_elsewhere_starts_exactly_at_its_position`] on a fixture's cluster (run on every
/// supported PostgreSQL version by `super::versions`).
pub async fn takeover_at_position(f: Fixture) {
    // Someone else (Debezium, say) made the publication (all operations)
    // and the slot, and acknowledged the first ten events.
    f.pg.psql("CREATE PUBLICATION dbz_publication FOR TABLE public.outbox")
        .unwrap();
    f.pg.psql("SELECT pg_create_logical_replication_slot('dbz_slot', 'pgoutput')")
        .unwrap();
    f.insert_events("t", 0, 10);
    f.pg.psql("SELECT pg_replication_slot_advance('dbz_slot', pg_current_wal_insert_lsn())")
        .unwrap();
    f.insert_events("t", 10, 10);
    f.pg.psql(
        "UPDATE outbox SET payload = payload; DELETE FROM outbox WHERE payload->>'seq' = '0'",
    )
    .unwrap();
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[
        ("RELAY_SLOT", "dbz_slot"),
        ("RELAY_PUBLICATION", "dbz_publication"),
    ]);
    let got = consumer.collect(10, Duration::from_secs(30)).await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|d| seq_of(&d.data)).collect();
    assert_eq!(seqs, (10..20).collect::<Vec<u64>>());
    assert!(consumer
        .next(Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());
    relay.kill().unwrap();
}

#[tokio::test]
async fn a_standby_takes_over_within_ten_seconds_of_the_active_relay_dying() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut active = f.start_relay(&[]);
    let mut standby = f.spawn_relay(&["run"], &[]);
    standby
        .wait_for_line("waiting as a standby", Duration::from_secs(30))
        .unwrap();
    let load = Load::start(&f.pg.url(), 2, 10, Duration::from_millis(5), u64::MAX);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    active.kill().unwrap();
    standby
        .wait_for_line("streaming from the slot", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no takeover within 10 s: {e}"));
    println!("standby took over {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let written = load.stop().await;
    let got = collect_all(&mut consumer, &written, Duration::from_secs(120)).await;
    verify(&got, &written);
    standby.kill().unwrap();
}

#[tokio::test]
async fn a_dropped_slot_stops_the_relay_with_the_reason_instead_of_retrying() {
    let f = Fixture::new().await;
    // A long first backoff leaves time to drop the slot between connections.
    let mut relay = f.start_relay(&[
        ("RELAY_BACKOFF_INITIAL_MS", "3000"),
        ("RELAY_BACKOFF_MAX_MS", "3000"),
    ]);
    // Terminate its walsender once it streams (a walsender ended during
    // START_REPLICATION is a failed start, retried, not a lost stream).
    relay
        .wait_for_line("replication started", Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{}", relay.output()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while f
        .pg
        .psql(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
             WHERE slot_name = 'outbox_relay' AND active_pid IS NOT NULL",
        )
        .unwrap()
        != "1"
    {
        assert!(Instant::now() < deadline, "the slot never became active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay
        .wait_for_line("replication stream lost", Duration::from_secs(10))
        .unwrap();
    // Drop it while the relay is between connections, frozen there so that
    // its reconnect cannot win the race on a busy machine.
    relay.signal(Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f
        .pg
        .psql("SELECT pg_drop_replication_slot('outbox_relay')")
        .is_err()
    {
        assert!(Instant::now() < deadline, "the slot stayed busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.signal(Signal::SIGCONT).unwrap();
    let status = relay.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "{}", relay.output());
    let output = relay.output();
    assert!(
        output.contains("slot outbox_relay no longer exists"),
        "{output}"
    );
    assert!(output.contains("When the slot is lost"), "{output}");
}

#[tokio::test]
async fn no_standby_exits_with_the_reason_when_the_slot_is_held() {
    let f = Fixture::new().await;
    let mut active = f.start_relay(&[]);
    let mut second = f.spawn_relay(&["run", "--no-standby"], &[]);
    let status = second.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    assert!(
        second.output().contains("is held by PID"),
        "{}",
        second.output()
    );
    active.kill().unwrap();
}

#[tokio::test]
async fn emit_message_events_are_published_like_rows() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[("RELAY_MESSAGE_PREFIX", "outbox")]);
    f.pg.psql(
        r#"SELECT pg_logical_emit_message(true, 'outbox',
             '{"id": "m-1", "aggregate_type": "order", "aggregate_id": "9",
               "event_type": "created", "payload": {"seq": 1}}');
           SELECT pg_logical_emit_message(false, 'outbox',
             '{"aggregate_type": "order", "aggregate_id": "9",
               "event_type": "shipped", "payload": {"seq": 2}}');
           SELECT pg_logical_emit_message(true, 'audit', 'not for us');"#,
    )
    .unwrap();
    let got = consumer.collect(2, Duration::from_secs(30)).await.unwrap();
    let mut keys: Vec<String> = got.iter().map(|d| d.routing_key.to_string()).collect();
    keys.sort();
    assert_eq!(keys, ["order.created", "order.shipped"]);
    let ids: Vec<String> = got
        .iter()
        .filter_map(|d| d.properties.message_id().as_ref().map(|s| s.to_string()))
        .collect();
    assert!(ids.contains(&"m-1".to_string()), "{ids:?}");
    assert!(ids.iter().any(|i| i.starts_with("pg-message-")), "{ids:?}");
    assert!(consumer
        .next(Duration::from_millis(500))
        .await
        .unwrap()
        .is_none());
    relay.kill().unwrap();
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_million_row_transaction_streams_through_in_bounded_memory() {
    let f = Fixture::new().await;
    // A queue that keeps only the newest 10,000 messages: the broker takes
    // every event (persistent, confirmed) without holding a million.
    let exchange = e2e::unique_name("relay-big");
    let queue = e2e::unique_name("relay-big-q");
    f.scope
        .declare_exchange(&exchange, lapin::ExchangeKind::Topic)
        .await
        .unwrap();
    let mut capped = lapin::types::FieldTable::default();
    capped.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(10_000),
    );
    capped.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("drop-head".into()),
    );
    // Not durable: the broker confirms without writing a million messages
    // to disk (the relay's side is the same).
    f.scope.track_queue(&queue);
    f.scope
        .channel()
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            capped,
        )
        .await
        .unwrap();
    f.scope.bind(&queue, &exchange, "#").await.unwrap();
    let mut relay = f.start_relay(&[
        ("RELAY_EXCHANGE", &exchange),
        ("RELAY_WINDOW_MESSAGES", "1024"),
        ("RELAY_WINDOW_BYTES", "4194304"),
        // A loaded CI machine can delay heartbeats; a rewind would restart
        // the whole transaction.
        ("RELAY_HEARTBEAT_SECS", "30"),
    ]);
    f.pg.psql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'order', g::text, 'created', jsonb_build_object('seq', g)
         FROM generate_series(1, 1000000) g",
    )
    .unwrap();
    let end: i64 =
        f.pg.psql("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint")
            .unwrap()
            .parse()
            .unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(400);
    while f.confirmed_flush("outbox_relay").unwrap_or(0) < u64::try_from(end).unwrap() {
        assert!(
            Instant::now() < deadline,
            "the transaction did not stream through in time:\n{}",
            relay.output()
        );
        assert!(
            relay.try_status().is_none(),
            "the relay died:\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let peak_mib = peak_rss_kib(relay.pid()) / 1024;
    println!(
        "1,000,000-row transaction: {:?}, relay peak RSS {peak_mib} MiB",
        started.elapsed()
    );
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB");
    relay.kill().unwrap();
}

#[tokio::test]
async fn a_message_the_broker_client_refuses_is_dead_lettered_and_the_stream_goes_on() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[("RELAY_MESSAGE_PREFIX", "outbox")]);
    let mut dead = f.scope.consume(&f.dead_letter_queue).await.unwrap();
    // A header name over AMQP's 255 bytes: no AMQP message can carry it.
    f.pg.psql(&format!(
        r#"SELECT pg_logical_emit_message(true, 'outbox',
             '{{"aggregate_type": "order", "aggregate_id": "1", "event_type": "created",
               "payload": {{"seq": 1}}, "{}": "x"}}');
           INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
           VALUES ('order', '1', 'created', '{{"seq": 2}}');"#,
        "k".repeat(300)
    ))
    .unwrap();
    let good = consumer.collect(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(seq_of(&good[0].data), 2);
    let bad = dead.collect(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        header(&bad[0], "x-relay-reason").as_deref(),
        Some("refused_by_client")
    );
    assert_eq!(seq_of(&bad[0].data), 1);
    assert!(relay.try_status().is_none(), "{}", relay.output());
    relay.kill().unwrap();
}

#[tokio::test]
async fn sigterm_during_start_up_or_as_a_standby_exits_at_once() {
    let f = Fixture::new().await;
    // Start-up, waiting for a broker that is not there, with a backoff
    // (15 to 30 s) that a relay deaf to SIGTERM would sit out.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let waiting = f.spawn_relay(
        &["run"],
        &[
            ("RELAY_AMQP_URL", &nowhere),
            ("RELAY_BACKOFF_INITIAL_MS", "30000"),
            ("RELAY_BACKOFF_MAX_MS", "30000"),
        ],
    );
    waiting
        .wait_for_line("cannot reach the broker; retrying", Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{}", waiting.output()));
    let mut waiting = waiting;
    let asked = Instant::now();
    waiting.signal(Signal::SIGTERM).unwrap();
    let status = waiting.wait(Duration::from_secs(10)).unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "{}", waiting.output());
    // Within a second on a quiet machine; 3 s leaves room for a loaded one.
    assert!(
        took < Duration::from_secs(3),
        "start-up took {took:?} to stop"
    );

    // A standby: one connection, one log line, and a prompt stop.
    let mut active = f.start_relay(&[]);
    let mut standby = f.spawn_relay(&["run"], &[("RELAY_STANDBY_POLL_MS", "200")]);
    standby
        .wait_for_line("waiting as a standby", Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{}", standby.output()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sessions = |pg: &e2e::PgCluster| {
        pg.psql(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'outbox-relay' AND backend_type = 'client backend'",
        )
        .unwrap()
    };
    assert_eq!(sessions(&f.pg), "1", "the standby polls on one connection");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sessions(&f.pg), "1", "the standby polls on one connection");
    let announced = standby.count_lines("waiting as a standby");
    assert_eq!(announced, 1, "{}", standby.output());
    let asked = Instant::now();
    standby.signal(Signal::SIGTERM).unwrap();
    let status = standby.wait(Duration::from_secs(10)).unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "{}", standby.output());
    assert!(
        took < Duration::from_secs(3),
        "the standby took {took:?} to stop"
    );
    active.kill().unwrap();
}
