//! Two-phase transactions (protocol version 3, a slot created with
//! two_phase, the `two_phase` option): Begin Prepare, Prepare, Commit
//! Prepared, Rollback Prepared, and Stream Prepare for a prepared
//! transaction large enough to stream.

use std::time::SystemTime;

use pgoutput::{Column, LogicalMessage};

use super::{assert_between, kinds, Server};

#[tokio::test]
async fn prepared_transactions_decode_with_their_gid_and_outcome() {
    prepared_transactions_decode_with_their_gid_and_outcome_on(None).await;
}

/// The body of [`prepared_transactions_decode_with_their_gid_and_outcome`], on a chosen PostgreSQL major version.
pub(crate) async fn prepared_transactions_decode_with_their_gid_and_outcome_on(
    version: Option<u32>,
) {
    let s = Server::start_on(version).await;
    s.exec("CREATE TABLE t (n int)").await;
    let (slot, publication) = s.slot(true).await;

    let before = SystemTime::now();
    s.exec("BEGIN; INSERT INTO t VALUES (1)").await;
    let committed_xid = Server::xid_in(&s.client).await;
    s.exec("PREPARE TRANSACTION 'gid_commit'").await;
    s.exec("COMMIT PREPARED 'gid_commit'").await;

    s.exec("BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'gid_rollback'")
        .await;
    s.exec("ROLLBACK PREPARED 'gid_rollback'").await;
    let after = SystemTime::now();

    let changes = s.peek(&slot, &publication, 3, &[("two_phase", "on")]).await;
    assert_eq!(
        kinds(&changes),
        [
            "Begin Prepare",
            "Relation",
            "Insert",
            "Prepare",
            "Commit Prepared",
            "Begin Prepare",
            "Insert",
            "Prepare",
            "Rollback Prepared",
        ]
    );
    let LogicalMessage::BeginPrepare(begin) = &changes[0].msg else {
        unreachable!()
    };
    let LogicalMessage::Prepare(prepare) = &changes[3].msg else {
        unreachable!()
    };
    let LogicalMessage::CommitPrepared(commit) = &changes[4].msg else {
        unreachable!()
    };
    assert_eq!(begin, prepare, "Begin Prepare announces the Prepare");
    assert_eq!(prepare.gid, "gid_commit");
    assert_eq!(prepare.xid, committed_xid);
    assert!(prepare.end_lsn > prepare.prepare_lsn);
    assert_between(prepare.ts, before, after);
    assert_eq!(commit.gid, "gid_commit");
    assert_eq!(commit.xid, committed_xid);
    assert!(commit.commit_lsn >= prepare.end_lsn);
    assert!(commit.end_lsn > commit.commit_lsn);
    assert!(commit.ts >= prepare.ts);
    let LogicalMessage::Insert(i) = &changes[2].msg else {
        unreachable!()
    };
    assert_eq!(i.tuple.get(0), Some(Column::Text("1".into())));

    let LogicalMessage::Prepare(prepare) = &changes[7].msg else {
        unreachable!()
    };
    let LogicalMessage::RollbackPrepared(rollback) = &changes[8].msg else {
        unreachable!()
    };
    assert_eq!(prepare.gid, "gid_rollback");
    assert_eq!(rollback.gid, "gid_rollback");
    assert_eq!(rollback.xid, prepare.xid);
    assert_ne!(rollback.xid, committed_xid);
    assert_eq!(rollback.prepare_end_lsn, prepare.end_lsn);
    assert_eq!(rollback.prepare_ts, prepare.ts);
    assert!(rollback.rollback_end_lsn > rollback.prepare_end_lsn);
    assert!(rollback.rollback_ts >= rollback.prepare_ts);
}

#[tokio::test]
async fn a_large_prepared_transaction_streams_and_ends_with_stream_prepare() {
    a_large_prepared_transaction_streams_and_ends_with_stream_prepare_on(None).await;
}

/// The body of [`a_large_prepared_transaction_streams_and_ends_with_stream_prepare`], on a chosen PostgreSQL major version.
pub(crate) async fn a_large_prepared_transaction_streams_and_ends_with_stream_prepare_on(
    version: Option<u32>,
) {
    let s = Server::start_on(version).await;
    s.exec("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        .await;
    let (slot, publication) = s.slot(true).await;
    s.exec(
        "BEGIN; \
         INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, 5000) g; \
         PREPARE TRANSACTION 'big_one'",
    )
    .await;
    s.exec("COMMIT PREPARED 'big_one'").await;

    let changes = s
        .peek(
            &slot,
            &publication,
            3,
            &[("two_phase", "on"), ("streaming", "on")],
        )
        .await;
    let k = kinds(&changes);
    assert_eq!(k.first(), Some(&"Stream Start"));
    let at = k
        .iter()
        .position(|k| *k == "Stream Prepare")
        .unwrap_or_else(|| panic!("no Stream Prepare in {k:?}"));
    assert_eq!(k[at - 1], "Stream Stop");
    assert_eq!(k[at + 1..], ["Commit Prepared"]);
    let LogicalMessage::StreamStart(start) = changes[0].msg else {
        unreachable!()
    };
    let LogicalMessage::StreamPrepare(prepare) = &changes[at].msg else {
        unreachable!()
    };
    let LogicalMessage::CommitPrepared(commit) = &changes[at + 1].msg else {
        unreachable!()
    };
    assert_eq!(prepare.gid, "big_one");
    assert_eq!(prepare.xid, start.xid);
    assert_eq!(commit.gid, "big_one");
    assert_eq!(commit.xid, start.xid);
    let rows = changes
        .iter()
        .filter(|c| match &c.msg {
            LogicalMessage::Insert(i) => i.xid == Some(start.xid),
            _ => false,
        })
        .count();
    assert_eq!(rows, 5000);
}
