//! The environment works as a whole: a private cluster with the project's
//! outbox table, a publication and a pgoutput slot hands back a committed
//! INSERT (and nothing of a rolled-back one). Uses no project code: it proves
//! the ground the other tests stand on.

use e2e::PgCluster;

use e2e::OUTBOX_SQL;

#[tokio::test]
async fn a_committed_outbox_insert_reaches_a_pgoutput_slot() {
    let pg = PgCluster::start().expect("start cluster");
    let client = pg.client().await.unwrap();
    client
        .batch_execute(OUTBOX_SQL)
        .await
        .expect("sql/outbox.sql loads");
    client
        .batch_execute("CREATE PUBLICATION smoke_pub FOR TABLE public.outbox")
        .await
        .unwrap();
    // Alone: a slot cannot be created in a transaction that wrote.
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('smoke_slot', 'pgoutput')")
        .await
        .unwrap();
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('order', '42', 'created', '{\"total\": 1999}');
             COMMIT;
             BEGIN;
             INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('order', '43', 'rolled_back', '{}');
             ROLLBACK;",
        )
        .await
        .unwrap();

    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('smoke_slot', NULL, NULL,
                 'proto_version', '1', 'publication_names', 'smoke_pub')",
            &[],
        )
        .await
        .unwrap();
    let messages: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    let tags: String = messages
        .iter()
        .map(|m| char::from(*m.first().expect("empty pgoutput message")))
        .collect();
    // Begin, Relation, Insert, Commit: one committed transaction only.
    assert_eq!(tags, "BRIC", "pgoutput messages: {tags}");
    let insert = String::from_utf8_lossy(&messages[2]);
    assert!(
        insert.contains("order") && insert.contains("42"),
        "{insert}"
    );
    assert!(insert.contains(r#"{"total": 1999}"#), "{insert}");
    assert!(!messages
        .iter()
        .any(|m| String::from_utf8_lossy(m).contains("rolled_back")));
}
