//! A slot PostgreSQL invalidated is loud and never papered over: `run`
//! exits non-zero with the cause and the recovery steps, `check` fails the
//! slot line, and the slot is still there, untouched (the relay never drops
//! or recreates one by itself). Invalidated for real: WAL removed past
//! max_slot_wal_keep_size (15, 17), and PostgreSQL 18's
//! idle_replication_slot_timeout.

use std::time::Duration;

use e2e::PgCluster;
use nix::sys::signal::Signal;

use super::fixture::Fixture;

/// Lets the relay create its slot and acknowledge, then stops it cleanly.
async fn slot_made_by_a_relay(f: &Fixture) {
    let relay = f.start_relay(&[]);
    f.insert_events("a", 0, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.signal(Signal::SIGTERM).unwrap();
    let mut relay = relay;
    assert!(relay.wait(Duration::from_secs(20)).unwrap().success());
}

/// Writes WAL past a 1 MB max_slot_wal_keep_size, in new segments, and
/// checkpoints: the server removes what a lagging slot needs.
fn write_past_the_slots_limit(pg: &PgCluster) {
    for _ in 0..3 {
        pg.psql(
            "CREATE TABLE IF NOT EXISTS filler (b text); \
             INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000); \
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .unwrap();
    }
}

/// Runs the relay on the invalidated slot and `check`: both say why and
/// what to do; the slot is left as it is.
fn refused_loudly(f: &Fixture, says: &str) {
    let (ok, out) = f.run_to_end(&["run"], &[]);
    assert!(!ok, "run must exit non-zero on a lost slot:\n{out}");
    assert!(out.contains(says), "the cause ({says}) is named:\n{out}");
    assert!(out.contains("When the slot is lost"), "{out}");
    let (ok, out) = f.run_to_end(&["check"], &[]);
    assert!(!ok, "{out}");
    let slot_line = out
        .lines()
        .find(|l| l.starts_with("FAIL  slot "))
        .unwrap_or_else(|| panic!("no failed slot line:\n{out}"));
    assert!(slot_line.contains(says), "{slot_line}");
    assert_eq!(
        f.pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "1",
        "the slot is left for the operator"
    );
}

/// WAL past max_slot_wal_keep_size, removed at a checkpoint, while the
/// relay is down.
async fn wal_removed(major: u32) {
    let pg = PgCluster::builder()
        .version(major)
        .setting("max_slot_wal_keep_size", "'1MB'")
        .start()
        .unwrap();
    let f = Fixture::with_cluster(pg).await;
    slot_made_by_a_relay(&f).await;
    write_past_the_slots_limit(&f.pg);
    assert_eq!(
        f.pg.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "lost"
    );
    refused_loudly(&f, "max_slot_wal_keep_size");
}

#[tokio::test]
async fn postgres_15_a_slot_that_lost_its_wal_stops_the_relay_with_the_cause() {
    wal_removed(15).await;
}

#[tokio::test]
async fn postgres_17_a_slot_that_lost_its_wal_stops_the_relay_with_the_cause() {
    wal_removed(17).await;
}

#[tokio::test]
async fn postgres_18_an_idle_timed_out_slot_stops_the_relay_with_the_cause() {
    let pg = PgCluster::builder()
        .version(18)
        .setting("idle_replication_slot_timeout", "'1s'")
        .start()
        .unwrap();
    let f = Fixture::with_cluster(pg).await;
    slot_made_by_a_relay(&f).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.pg.psql("CHECKPOINT").unwrap();
    assert_eq!(
        f.pg.psql(
            "SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = 'outbox_relay'"
        )
        .unwrap(),
        "idle_timeout"
    );
    refused_loudly(&f, "idle_replication_slot_timeout");
}

/// The relay falls behind while streaming (stopped with SIGSTOP, its
/// walsender still holding the slot) until PostgreSQL removes WAL the slot
/// needs, terminates the walsender and invalidates the slot; resumed, the
/// relay finds the slot lost and exits non-zero with the cause.
#[tokio::test]
async fn a_slot_invalidated_while_streaming_stops_the_relay_with_the_cause() {
    let pg = PgCluster::builder()
        .setting("max_slot_wal_keep_size", "'1MB'")
        .start()
        .unwrap();
    let f = Fixture::with_cluster(pg).await;
    let mut relay = f.start_relay(&[]);
    relay.signal(Signal::SIGSTOP).unwrap();
    write_past_the_slots_limit(&f.pg);
    relay.signal(Signal::SIGCONT).unwrap();
    let status = relay.wait(Duration::from_secs(60)).unwrap();
    let out = relay.output();
    assert!(!status.success(), "{out}");
    assert!(out.contains("max_slot_wal_keep_size"), "{out}");
    assert!(out.contains("When the slot is lost"), "{out}");
    assert_eq!(
        f.pg.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "lost"
    );
}
