//! The stream and its feedback against a real server: frames, acks that
//! become confirmed_flush_lsn, resuming exactly after the last ack, a slow
//! consumer that survives wal_sender_timeout, and a clean shutdown.

use std::time::Duration;

use e2e::PgCluster;
use walstream::{Frame, Lsn, ReplicationClient, StartOptions};

use super::support::*;

#[tokio::test]
async fn committed_transactions_arrive_as_xlogdata_and_idle_time_as_keepalives() {
    committed_transactions_arrive_as_xlogdata_and_idle_time_as_keepalives_on(None).await;
}

/// The body of [`committed_transactions_arrive_as_xlogdata_and_idle_time_as_keepalives`], on a chosen PostgreSQL major version.
pub(crate) async fn committed_transactions_arrive_as_xlogdata_and_idle_time_as_keepalives_on(
    version: Option<u32>,
) {
    let (pg, config, slot) =
        outbox_with_slot(PgCluster::builder().maybe_version(version), "frames").await;
    insert_each(&pg, [1, 2, 3]);
    pg.psql("BEGIN; INSERT INTO outbox VALUES (99, 'never'); ROLLBACK;")
        .unwrap();

    let (mut stream, _acks) = start(&config, &slot).await;
    let txns = read_txns(&mut stream, 3).await;
    assert_eq!(
        txns.iter().map(|t| t.ids.clone()).collect::<Vec<_>>(),
        [vec![1], vec![2], vec![3]],
        "each committed transaction once, in commit order, nothing rolled back"
    );
    assert!(txns.windows(2).all(|w| w[0].end_lsn < w[1].end_lsn));

    // Nothing more to send: the feedback timer asks for replies, so
    // keepalives come about every second.
    let started = std::time::Instant::now();
    let keepalive = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Frame::Keepalive(k) = stream.next().await.unwrap() {
                return k;
            }
        }
    })
    .await
    .expect("a keepalive on an idle stream");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(keepalive.wal_end >= txns[2].end_lsn);
    stream.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn acked_lsn_becomes_the_slots_confirmed_flush_lsn_and_never_goes_back() {
    acked_lsn_becomes_the_slots_confirmed_flush_lsn_and_never_goes_back_on(None).await;
}

/// The body of [`acked_lsn_becomes_the_slots_confirmed_flush_lsn_and_never_goes_back`], on a chosen PostgreSQL major version.
pub(crate) async fn acked_lsn_becomes_the_slots_confirmed_flush_lsn_and_never_goes_back_on(
    version: Option<u32>,
) {
    let (pg, config, slot) =
        outbox_with_slot(PgCluster::builder().maybe_version(version), "ack").await;
    insert_each(&pg, [1, 2]);

    let (mut stream, acks) = start(&config, &slot).await;
    let txns = read_txns(&mut stream, 2).await;
    acks.ack(txns[1].end_lsn);
    wait_confirmed(&pg, &slot, txns[1].end_lsn).await;
    assert_eq!(acks.flushed(), txns[1].end_lsn);

    // A late, lower ack changes nothing.
    acks.ack(txns[0].end_lsn);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(acks.acked(), txns[1].end_lsn);
    assert_eq!(slot_row(&pg, &slot).await.0, Some(txns[1].end_lsn));
    drop(stream);
}

#[tokio::test]
async fn resume_after_reconnect_starts_exactly_after_the_last_acked_transaction() {
    resume_after_reconnect_starts_exactly_after_the_last_acked_transaction_on(None).await;
}

/// The body of [`resume_after_reconnect_starts_exactly_after_the_last_acked_transaction`], on a chosen PostgreSQL major version.
pub(crate) async fn resume_after_reconnect_starts_exactly_after_the_last_acked_transaction_on(
    version: Option<u32>,
) {
    let (pg, config, slot) =
        outbox_with_slot(PgCluster::builder().maybe_version(version), "resume").await;
    insert_each(&pg, [1, 2, 3, 4]);

    let (mut stream, acks) = start(&config, &slot).await;
    let first = read_txns(&mut stream, 4).await;
    // Transactions 1 and 2 are durable downstream; 3 and 4 were read but
    // not confirmed when the relay lost its connection.
    acks.ack(first[1].end_lsn);
    wait_confirmed(&pg, &slot, first[1].end_lsn).await;
    drop(stream);
    wait_inactive(&pg, &slot).await;
    insert_each(&pg, [5]);

    // From the slot's position (0/0: the server uses confirmed_flush_lsn).
    let (mut stream, _acks) = start(&config, &slot).await;
    let again = read_txns(&mut stream, 3).await;
    assert_eq!(
        again.iter().map(|t| t.ids.clone()).collect::<Vec<_>>(),
        [vec![3], vec![4], vec![5]],
        "no gap, and nothing at or before the acked transaction re-sent"
    );
    assert_eq!(again[0].end_lsn, first[2].end_lsn);
    drop(stream);
    wait_inactive(&pg, &slot).await;

    // From the slot's confirmed_flush_lsn given explicitly (no +1): the same.
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    let confirmed = client
        .slot_state(&slot)
        .await
        .unwrap()
        .unwrap()
        .confirmed_flush_lsn()
        .unwrap();
    assert_eq!(confirmed, first[1].end_lsn);
    let (mut stream, _acks) = client
        .start_replication(&slot, confirmed, options())
        .await
        .unwrap();
    let third = read_txns(&mut stream, 1).await;
    assert_eq!(third[0].ids, [3]);
    stream.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn a_consumer_asleep_for_10s_keeps_its_stream_with_wal_sender_timeout_2s() {
    let (pg, config, slot) = outbox_with_slot(
        PgCluster::builder().setting("wal_sender_timeout", "2s"),
        "slow",
    )
    .await;

    let (mut stream, acks) = start(&config, &slot).await;
    let pid = slot_row(&pg, &slot).await.1.expect("slot active");
    // More than the socket buffers hold, so the walsender blocks on its
    // writes while the consumer sleeps.
    insert_range(&pg, 1, 100_000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let waiting = pg
        .psql(&format!(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"
        ))
        .unwrap();
    assert_eq!(
        waiting, "WalSenderWriteData",
        "the walsender is blocked on the unread stream"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let txns = read_txns(&mut stream, 1).await;
    assert_eq!(txns[0].ids.len(), 100_000);
    acks.ack(txns[0].end_lsn);
    wait_confirmed(&pg, &slot, txns[0].end_lsn).await;
    assert_eq!(
        slot_row(&pg, &slot).await.1,
        Some(pid),
        "the same walsender serves the stream: it was never dropped"
    );
    assert!(
        !pg.log().contains("replication timeout"),
        "the server timed the walsender out:\n{}",
        pg.log()
    );
    stream.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn without_timely_feedback_the_server_drops_a_sleeping_consumer() {
    // The control experiment for the test above: the same sleep with the
    // feedback timer slowed to a minute is fatal, so that test proves the
    // feedback task, not a lenient server.
    let (pg, config, slot) = outbox_with_slot(
        PgCluster::builder().setting("wal_sender_timeout", "2s"),
        "nofeedback",
    )
    .await;

    let client = ReplicationClient::connect(&config).await.unwrap();
    let (mut stream, _acks) = client
        .start_replication(
            &slot,
            Lsn::ZERO,
            options().status_interval(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let error = until_error(&mut stream).await;
    assert!(error.is_retryable(), "{error}");
    assert!(pg.log().contains("replication timeout"), "{}", pg.log());
}

#[tokio::test]
async fn an_idle_consumer_acking_keepalives_releases_wal_it_does_not_stream() {
    an_idle_consumer_acking_keepalives_releases_wal_it_does_not_stream_on(None).await;
}

/// The body of [`an_idle_consumer_acking_keepalives_releases_wal_it_does_not_stream`], on a chosen PostgreSQL major version.
pub(crate) async fn an_idle_consumer_acking_keepalives_releases_wal_it_does_not_stream_on(
    version: Option<u32>,
) {
    let (pg, config, slot) =
        outbox_with_slot(PgCluster::builder().maybe_version(version), "idle").await;
    let (mut stream, acks) = start(&config, &slot).await;

    // WAL the slot does not publish.
    pg.psql("CREATE TABLE other (n int); INSERT INTO other SELECT generate_series(1, 1000)")
        .unwrap();
    let written: Lsn = pg
        .psql("SELECT pg_current_wal_insert_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match stream.next().await.unwrap() {
            // Nothing in flight: the keepalive's position is safe to ack.
            Frame::Keepalive(k) => acks.ack(k.wal_end),
            // PostgreSQL 14 sends Begin and Commit of transactions that
            // changed no published table (15 and later skip them): done
            // with once committed.
            Frame::XLogData(x) => match decode(&x.data) {
                Msg::Begin if pg.major() == 14 => {}
                Msg::Commit { end_lsn } if pg.major() == 14 => acks.ack(end_lsn),
                other => panic!("unexpected data {other:?}"),
            },
        }
        if acks.acked() >= written {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keepalives never passed {written}"
        );
    }
    // (On 14 the ack may have passed on an empty transaction's Commit,
    // before any keepalive told where the server's WAL ends.)
    assert!(acks.server_wal_end() >= written || pg.major() == 14);
    wait_confirmed(&pg, &slot, written).await;
    stream.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn shutdown_sends_the_last_ack_and_frees_the_slot() {
    shutdown_sends_the_last_ack_and_frees_the_slot_on(None).await;
}

/// The body of [`shutdown_sends_the_last_ack_and_frees_the_slot`], on a chosen PostgreSQL major version.
pub(crate) async fn shutdown_sends_the_last_ack_and_frees_the_slot_on(version: Option<u32>) {
    let (pg, config, slot) =
        outbox_with_slot(PgCluster::builder().maybe_version(version), "shutdown").await;
    insert_each(&pg, [1]);

    let client = ReplicationClient::connect(&config).await.unwrap();
    let (mut stream, acks) = client
        .start_replication(
            &slot,
            Lsn::ZERO,
            // Neither the ack nor the timer sends for a minute: only the
            // final update can carry the ack.
            StartOptions::new(["outbox_pub"])
                .ack_coalesce(Duration::from_secs(60))
                .status_interval(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let txns = read_txns(&mut stream, 1).await;
    // The feedback task's first update (the start position) goes out at
    // once; the ack must come after it to be held back.
    while acks.flushed() == Lsn::ZERO {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acks.ack(txns[0].end_lsn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(slot_row(&pg, &slot).await.0 < Some(txns[0].end_lsn));
    stream.shutdown(PATIENCE).await.unwrap();
    let (confirmed, active) = slot_row(&pg, &slot).await;
    assert_eq!(confirmed, Some(txns[0].end_lsn));
    assert_eq!(active, None, "the walsender ended with the session");
}
