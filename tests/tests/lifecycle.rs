//! The lifecycle commands, as the real binary against a private PostgreSQL
//! and the shared RabbitMQ: `teardown` refuses an active slot and drops
//! slot and publication once the relay is stopped; `dead-letters` lists and
//! counts without taking anything, and `republish` sends a dead letter to
//! its original destination and removes it from the dead-letter queue only
//! once the broker confirmed the new copy; `completions` and `--version`.

use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::relay::fixture::{header, Fixture};

/// Messages in `queue` now.
async fn depth(f: &Fixture, queue: &str) -> u32 {
    let channel = f.scope.connection().create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "ok".into()).await;
    declared.message_count()
}

async fn wait_depth(f: &Fixture, queue: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while depth(f, queue).await != n {
        assert!(
            Instant::now() < deadline,
            "{queue} holds {} messages, not {n}",
            depth(f, queue).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 30 s) until a walsender streams from the slot (`active`)
/// or until none does.
async fn slot_becomes(f: &Fixture, active: bool) {
    let want = if active { "t" } else { "f" };
    let deadline = Instant::now() + Duration::from_secs(30);
    while f
        .pg
        .psql("SELECT active FROM pg_replication_slots")
        .unwrap()
        != want
    {
        assert!(
            Instant::now() < deadline,
            "the slot's active stays not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn teardown_refuses_an_active_slot_and_drops_slot_and_publication_once_it_is_free() {
    let f = Fixture::new().await;
    let mut relay = f.start_relay(&[]);
    slot_becomes(&f, true).await;
    let slots = || {
        f.pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
    };
    let publications = || f.pg.psql("SELECT count(*) FROM pg_publication").unwrap();

    // No terminal and no --yes: nothing happens.
    let (ok, out) = f.run_to_end(&["teardown"], &[]);
    assert!(!ok && out.contains("--yes"), "{out}");
    // The relay streams from the slot: refused, with who holds it.
    let (ok, out) = f.run_to_end(&["teardown", "--yes"], &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("in use by outbox-relay from 127.0.0.1 (walsender PID"),
        "{out}"
    );
    assert_eq!((slots(), publications()), ("1".into(), "1".into()));

    relay.kill().unwrap();
    slot_becomes(&f, false).await;
    let (ok, out) = f.run_to_end(&["teardown", "--yes"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("dropped slot outbox_relay (released"), "{out}");
    assert!(out.contains("dropped publication outbox_relay"), "{out}");
    assert_eq!((slots(), publications()), ("0".into(), "0".into()));
    // Again: nothing left, and it says so.
    let (ok, out) = f.run_to_end(&["teardown", "--yes"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("slot outbox_relay does not exist"), "{out}");
}

#[tokio::test]
async fn dead_letters_are_listed_counted_and_republished_with_confirms_once_the_cause_is_fixed() {
    let f = Fixture::new().await;
    // The relay publishes to an exchange no queue is bound to: every event
    // is returned and dead-lettered (no_route).
    let nowhere = f.exchange_without_queues().await;
    let mut relay = f.start_relay(&[("RELAY_EXCHANGE", nowhere.as_str())]);
    f.insert_events("dl", 0, 5);
    wait_depth(&f, &f.dead_letter_queue, 5).await;
    relay.kill().unwrap();

    // list and count take nothing.
    let (ok, out) = f.run_to_end(&["dead-letters", "list"], &[]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("no_route ")).count(),
        5,
        "{out}"
    );
    assert!(
        out.contains(&format!("to {nowhere} order.created")),
        "{out}"
    );
    let (ok, out) = f.run_to_end(&["dead-letters", "count"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("5  no_route"), "{out}");
    assert!(out.contains("5  dead letters in"), "{out}");
    let (ok, out) = f.run_to_end(&["dead-letters", "list", "--json"], &[]);
    assert!(ok, "{out}");
    let start = out.find('{').unwrap();
    let listed: serde_json::Value = serde_json::from_str(&out[start..]).expect(&out);
    assert_eq!(listed["in_queue"], 5);
    assert_eq!(listed["by_reason"]["no_route"], 5);
    let ids: Vec<String> = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
    wait_depth(&f, &f.dead_letter_queue, 5).await;

    // The cause is not fixed yet: the broker returns each new copy, so
    // every dead letter stays, and the command says so and fails.
    let (ok, out) = f.run_to_end(&["dead-letters", "republish", "--all"], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("0 republished, 5 kept"), "{out}");
    assert!(out.contains("returned by the broker"), "{out}");
    wait_depth(&f, &f.dead_letter_queue, 5).await;

    // Fixed: a queue is bound. One by id, then the rest by reason.
    let queue = e2e::unique_name("relay-fixed");
    f.scope
        .declare_queue_with(&queue, true, FieldTable::default())
        .await
        .unwrap();
    f.scope.bind(&queue, &nowhere, "#").await.unwrap();
    let (ok, out) = f.run_to_end(&["dead-letters", "republish", "--id", &ids[0]], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("1 republished, 0 kept"), "{out}");
    wait_depth(&f, &f.dead_letter_queue, 4).await;
    wait_depth(&f, &queue, 1).await;
    let (ok, out) = f.run_to_end(&["dead-letters", "republish", "--reason", "no_route"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("4 republished, 0 kept"), "{out}");
    wait_depth(&f, &f.dead_letter_queue, 0).await;

    // What arrives is the event again: its id, type, body and headers,
    // marked as republished, without the relay's dead-letter headers.
    let mut consumer = f.scope.consume(&queue).await.unwrap();
    let got = consumer.collect(5, Duration::from_secs(10)).await.unwrap();
    let mut seen: Vec<String> = got
        .iter()
        .map(|d| {
            assert_eq!(
                header(d, "x-relay-republished").as_deref(),
                Some("no_route")
            );
            assert_eq!(header(d, "aggregate_id").as_deref(), Some("dl"));
            assert!(header(d, "x-relay-reason").is_none());
            assert_eq!(
                d.properties.kind().as_ref().map(|k| k.as_str()),
                Some("created")
            );
            assert_eq!(*d.properties.delivery_mode(), Some(2));
            assert!(crate::relay::fixture::seq_of(&d.data) < 5);
            d.properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str()
                .to_string()
        })
        .collect();
    seen.sort();
    let mut wanted = ids.clone();
    wanted.sort();
    assert_eq!(seen, wanted);
}

#[test]
fn completions_are_printed_for_each_shell_and_the_version_names_its_commit() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out) = e2e::RelayProcess::run_to_end(&["completions", shell], &[]);
        assert!(ok, "{shell}: {out}");
        assert!(out.contains("dead-letters"), "{shell}: {out}");
        assert!(out.contains("teardown"), "{shell}: {out}");
    }
    let (ok, out) = e2e::RelayProcess::run_to_end(&["--version"], &[]);
    assert!(ok, "{out}");
    let version = out.lines().next().unwrap_or_default();
    assert!(version.starts_with("outbox-relay "), "{version}");
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no commit in {version}"));
    assert!(
        commit == "unknown"
            || commit
                .trim_end_matches("-modified")
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
        "{version}"
    );
}

#[tokio::test]
async fn teardown_refuses_a_relay_between_two_sessions_whose_slot_is_inactive_for_a_moment() {
    let f = Fixture::new().await;
    let mut relay = f.start_relay(&[
        ("RELAY_BACKOFF_INITIAL_MS", "10000"),
        ("RELAY_BACKOFF_MAX_MS", "10000"),
    ]);
    let watching = || {
        f.pg.psql(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'outbox-relay slot-watch outbox_relay'",
        )
        .unwrap()
            == "1"
    };
    // The slot-watch session can be up before the stream is: wait for both
    // (terminating a walsender that is not there yet would do nothing).
    slot_becomes(&f, true).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !watching() {
        assert!(Instant::now() < deadline, "no slot-watch session");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The walsender ends: the relay waits out its backoff without a slot.
    f.pg.psql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots")
        .unwrap();
    slot_becomes(&f, false).await;
    let (ok, out) = f.run_to_end(&["teardown", "--yes"], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("between two sessions"), "{out}");
    assert_eq!(
        f.pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "1"
    );
    relay.kill().unwrap();
}
