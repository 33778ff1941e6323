//! `outbox-relay replay`: rows still in the outbox are published again,
//! selected by aggregate, id or time, with confirms and the x-relay-replay
//! header, beside a live relay whose slot it never touches; a row the
//! broker cannot route fails the command, and nothing selected is refused.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::fixture::{header, seq_of, Fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_republishes_selected_rows_beside_a_live_relay_without_touching_the_slot() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    f.insert_events("a", 0, 5);
    f.insert_events("b", 5, 5);
    // Three rows created in a past hour, for a time-range replay.
    f.pg.psql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
         SELECT 'order', 'old', 'created', jsonb_build_object('seq', g),
                '2020-01-01 10:00:00+00'::timestamptz + g * interval '1 minute'
         FROM generate_series(20, 22) g",
    )
    .unwrap();
    let first = consumer.collect(13, Duration::from_secs(30)).await.unwrap();
    let id_of = |seq: u64| {
        first
            .iter()
            .find(|d| seq_of(&d.data) == seq)
            .and_then(|d| d.properties.message_id().as_ref().map(|m| m.to_string()))
            .unwrap()
    };
    // The live relay is frozen (its walsender still holds the slot) while
    // the replays run: an idle relay acknowledges the server's keepalive
    // positions, and any WAL the server writes meanwhile (a running-xacts
    // record every 15 s) would move the slot without replay's doing.
    relay.signal(Signal::SIGSTOP).unwrap();
    let slot_before = f.confirmed_flush("outbox_relay");

    // A consumer that lost its queue: a new one, bound to everything.
    let fresh = e2e::unique_name("relay-fresh");
    f.scope
        .declare_queue_with(&fresh, true, lapin::types::FieldTable::default())
        .await
        .unwrap();
    f.scope.bind(&fresh, &f.exchange, "#").await.unwrap();
    let (ok, out) = f.run_to_end(&["replay", "--aggregate", "a"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("replayed 5 rows") && out.contains("5 confirmed, 0 failed"),
        "{out}"
    );
    let (ok, out) = f.run_to_end(&["replay", "--id", &id_of(7)], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("replayed 1 rows"), "{out}");
    let (ok, out) = f.run_to_end(
        &[
            "replay",
            "--since",
            "2020-01-01 10:00:00+00",
            "--until",
            "2020-01-01 11:00:00+00",
        ],
        &[],
    );
    assert!(ok && out.contains("replayed 3 rows"), "{out}");
    let (ok, out) = f.run_to_end(&["replay", "--since", "2999-01-01 00:00:00+00"], &[]);
    assert!(ok && out.contains("replayed 0 rows"), "{out}");

    let mut again = f.scope.consume(&fresh).await.unwrap();
    let got = again.collect(9, Duration::from_secs(30)).await.unwrap();
    let mut seqs: Vec<u64> = got.iter().map(|d| seq_of(&d.data)).collect();
    seqs.sort_unstable();
    // Each selected row once more, nothing else.
    assert_eq!(seqs, [0, 1, 2, 3, 4, 7, 20, 21, 22]);
    for d in &got {
        assert!(header(d, "x-relay-replay").is_some(), "no replay mark");
        let seq = seq_of(&d.data);
        assert_eq!(
            d.properties.message_id().as_ref().map(|m| m.to_string()),
            Some(id_of(seq)),
            "a replay keeps the event's id"
        );
        assert_eq!(d.routing_key.as_str(), "order.created");
    }
    // Replays of one aggregate arrive in their order.
    let a: Vec<u64> = got
        .iter()
        .filter(|d| header(d, "aggregate_id").as_deref() == Some("a"))
        .map(|d| seq_of(&d.data))
        .collect();
    assert_eq!(a, [0, 1, 2, 3, 4]);
    // The slot did not move, and the live relay is untouched.
    assert_eq!(f.confirmed_flush("outbox_relay"), slot_before);
    relay.signal(Signal::SIGCONT).unwrap();
    assert!(relay.try_status().is_none(), "{}", relay.output());
    f.insert_events("c", 10, 1);
    consumer.collect(1, Duration::from_secs(30)).await.unwrap();

    // Nothing selected: refused. Nowhere to go: failed, non-zero.
    let (ok, out) = f.run_to_end(&["replay"], &[]);
    assert!(!ok && out.contains("say which rows"), "{out}");
    let nowhere = f.exchange_without_queues().await;
    let (ok, out) = f.run_to_end(
        &["replay", "--aggregate", "b"],
        &[("RELAY_EXCHANGE", nowhere.as_str())],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("0 confirmed, 5 failed"), "{out}");
    assert!(out.contains("returned by the broker"), "{out}");
    relay.kill().unwrap();
}
