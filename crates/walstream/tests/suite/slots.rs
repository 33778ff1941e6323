//! Slot commands and checks: creation with an exported or used snapshot,
//! state, reuse, drop, and the refusals (missing, foreign plugin, in use,
//! wal_level not logical) with the right retry verdict.

use std::time::Duration;

use e2e::{unique_ident, PgCluster};
use walstream::{CreateSlotOptions, Error, Lsn, ReplicationClient, SnapshotAction};

use super::support::*;

#[tokio::test]
async fn an_exported_snapshot_and_the_stream_meet_without_gap_or_overlap() {
    an_exported_snapshot_and_the_stream_meet_without_gap_or_overlap_on(None).await;
}

/// The body of [`an_exported_snapshot_and_the_stream_meet_without_gap_or_overlap`], on a chosen PostgreSQL major version.
pub(crate) async fn an_exported_snapshot_and_the_stream_meet_without_gap_or_overlap_on(
    version: Option<u32>,
) {
    let pg = PgCluster::builder().maybe_version(version).start().unwrap();
    create_outbox(&pg);
    insert_each(&pg, [1, 2, 3]);
    let config = config(&pg.url());
    let slot = unique_ident("export");
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    let created = client
        .create_slot(
            &slot,
            &CreateSlotOptions::new().snapshot(SnapshotAction::Export),
        )
        .await
        .unwrap();
    assert_eq!(created.name(), slot);
    assert_eq!(created.output_plugin(), Some("pgoutput"));
    assert!(created.consistent_point() > Lsn::ZERO);
    let snapshot = created.snapshot_name().expect("an exported snapshot");
    insert_each(&pg, [4]);

    // The snapshot (valid while the creating connection stays idle) holds
    // exactly the rows committed before the slot's consistent point...
    let reader = pg.client().await.unwrap();
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .unwrap();
    let in_snapshot: i64 = reader
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(in_snapshot, 3);
    client.close().await;

    // ...and the stream starts with the first one after it.
    let (mut stream, _acks) = start(&config, &slot).await;
    assert_eq!(read_txns(&mut stream, 1).await[0].ids, [4]);
}

#[tokio::test]
async fn a_used_snapshot_reads_in_the_creating_transaction() {
    let pg = PgCluster::start().unwrap();
    create_outbox(&pg);
    insert_each(&pg, [1, 2]);
    let config = config(&pg.url());
    let slot = unique_ident("use");
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    client
        .simple_query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let created = client
        .create_slot(
            &slot,
            &CreateSlotOptions::new().snapshot(SnapshotAction::Use),
        )
        .await
        .unwrap();
    assert_eq!(created.snapshot_name(), None);
    insert_each(&pg, [3]);
    let rows = client
        .simple_query("SELECT count(*) FROM outbox")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![Some("2".to_string())]]);
    client.simple_query("COMMIT").await.unwrap();
    client.close().await;

    let (mut stream, _acks) = start(&config, &slot).await;
    assert_eq!(read_txns(&mut stream, 1).await[0].ids, [3]);
}

#[tokio::test]
async fn slot_state_shows_the_slot_and_a_slot_is_reused_then_dropped() {
    let pg = PgCluster::builder()
        .setting("statement_timeout", "'5s'")
        .setting("lock_timeout", "'5s'")
        .setting("idle_in_transaction_session_timeout", "'5s'")
        .start()
        .unwrap();
    create_outbox(&pg);
    let config = config(&pg.url());
    let slot = unique_ident("state");
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    // A stream lives for days: the server's session timeouts are off for it.
    for setting in [
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
    ] {
        let shown = client
            .simple_query(&format!("SHOW {setting}"))
            .await
            .unwrap();
        assert_eq!(shown, vec![vec![Some("0".to_string())]], "{setting}");
    }
    let system = client.identify_system().await.unwrap();
    assert_eq!(system.timeline(), 1);
    assert_eq!(system.dbname(), Some("postgres"));
    let created = client
        .create_slot(&slot, &CreateSlotOptions::new())
        .await
        .unwrap();
    assert!(created.consistent_point() >= system.xlogpos());

    let state = client
        .slot_state(&slot)
        .await
        .unwrap()
        .expect("slot exists");
    assert_eq!(state.name(), slot);
    assert_eq!(state.plugin(), Some("pgoutput"));
    assert_eq!(state.slot_type(), "logical");
    assert_eq!(state.database(), Some("postgres"));
    assert_eq!(state.active_pid(), None);
    assert_eq!(
        state.confirmed_flush_lsn(),
        Some(created.consistent_point())
    );
    assert_eq!(state.wal_status(), Some("reserved"));

    let dup = client
        .create_slot(&slot, &CreateSlotOptions::new())
        .await
        .unwrap_err();
    assert_eq!(dup.sqlstate(), Some("42710"), "{dup}");
    assert!(!dup.is_retryable());
    client.close().await;

    // Reused by a second connection, and by a third after that one ends.
    for round in 1..=2 {
        insert_each(&pg, [round]);
        let (mut stream, acks) = start(&config, &slot).await;
        let txn = read_txns(&mut stream, 1).await.remove(0);
        assert_eq!(txn.ids, [round]);
        acks.ack(txn.end_lsn);
        stream.shutdown(PATIENCE).await.unwrap();
    }

    let mut client = ReplicationClient::connect(&config).await.unwrap();
    client.drop_slot(&slot, false).await.unwrap();
    assert_eq!(client.slot_state(&slot).await.unwrap(), None);
    let err = client.drop_slot(&slot, false).await.unwrap_err();
    assert!(matches!(err, Error::SlotMissing { .. }), "{err}");

    // A temporary slot goes with its connection.
    let temp = unique_ident("temp");
    client
        .create_slot(&temp, &CreateSlotOptions::new().temporary(true))
        .await
        .unwrap();
    client.close().await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while pg
        .psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{temp}'"
        ))
        .unwrap()
        != "0"
    {
        assert!(std::time::Instant::now() < deadline, "temporary slot kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn start_refuses_missing_foreign_and_busy_slots() {
    start_refuses_missing_foreign_and_busy_slots_on(None).await;
}

/// The body of [`start_refuses_missing_foreign_and_busy_slots`], on a chosen PostgreSQL major version.
pub(crate) async fn start_refuses_missing_foreign_and_busy_slots_on(version: Option<u32>) {
    let pg = PgCluster::builder().maybe_version(version).start().unwrap();
    create_outbox(&pg);
    let config = config(&pg.url());
    let start_err = |slot: String, check: bool| {
        let config = config.clone();
        async move {
            let client = ReplicationClient::connect(&config).await.unwrap();
            client
                .start_replication(&slot, Lsn::ZERO, options().check_slot(check))
                .await
                .map(|_| ())
                .unwrap_err()
        }
    };

    let missing = unique_ident("missing");
    for check in [true, false] {
        let err = start_err(missing.clone(), check).await;
        assert!(matches!(err, Error::SlotMissing { .. }), "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    let foreign = unique_ident("foreign");
    pg.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{foreign}', 'test_decoding')"
    ))
    .unwrap();
    let err = start_err(foreign, true).await;
    assert!(matches!(err, Error::SlotUnusable { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("test_decoding"), "{err}");

    let busy = unique_ident("busy");
    client_with_slot(&config, &busy).await.close().await;
    let (_stream, _acks) = start(&config, &busy).await;
    let holder = slot_row(&pg, &busy).await.1.expect("active");
    for check in [true, false] {
        let err = start_err(busy.clone(), check).await;
        match &err {
            Error::SlotActive { pid, .. } => assert_eq!(*pid, holder),
            other => panic!("expected SlotActive, got {other}"),
        }
        assert!(err.is_retryable(), "the other consumer may stop: retry");
        assert!(
            err.to_string().contains(&format!(
                "is active for PID {holder}: another outbox-relay or Debezium is using it"
            )),
            "{err}"
        );
    }
}

#[tokio::test]
async fn wal_level_replica_is_refused_for_good() {
    let pg = PgCluster::builder()
        .setting("wal_level", "replica")
        .start()
        .unwrap();
    let config = config(&pg.url());
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    let err = client
        .create_slot(&unique_ident("nolevel"), &CreateSlotOptions::new())
        .await
        .unwrap_err();
    match &err {
        Error::WalLevel { current } => assert_eq!(current, "replica"),
        other => panic!("expected WalLevel, got {other}"),
    }
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("set wal_level = logical"), "{err}");
}
