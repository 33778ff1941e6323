//! Broken streams end with errors that say "retry", and a reconnect
//! resumes from the slot: an administrator terminating the walsender, a
//! server restart, a cut link, a stalled link.

use std::time::{Duration, Instant};

use e2e::{unique_ident, FaultProxy, PgCluster};
use walstream::{Error, Frame, Lsn, ReplicationClient};

use super::support::*;

#[tokio::test]
async fn terminating_the_walsender_is_a_retryable_error() {
    let (pg, config, slot) = outbox_with_slot(PgCluster::builder(), "terminate").await;
    let (mut stream, _acks) = start(&config, &slot).await;
    let pid = slot_row(&pg, &slot).await.1.expect("active");

    pg.psql(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let error = until_error(&mut stream).await;
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.sqlstate(), Some("57P01"), "{error}");
    assert!(stream.next().await.is_err(), "an ended stream stays ended");

    insert_each(&pg, [1]);
    let (mut stream, _acks) = restart_stream(&config, &slot).await;
    assert_eq!(read_txns(&mut stream, 1).await[0].ids, [1]);
}

#[tokio::test]
async fn a_server_restart_mid_stream_is_retryable_and_the_stream_resumes() {
    let (pg, config, slot) = outbox_with_slot(PgCluster::builder(), "restart").await;
    insert_each(&pg, [1, 2]);
    let (mut stream, acks) = start(&config, &slot).await;
    let txns = read_txns(&mut stream, 2).await;
    acks.ack(txns[1].end_lsn);

    // A clean shutdown waits for the walsender, which waits for the client
    // to flush what it was sent: keep reading and acking like an idle relay.
    let restart = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.restart().map(|()| pg)
    });
    let error = tokio::time::timeout(PATIENCE * 3, async {
        loop {
            match stream.next().await {
                Ok(Frame::Keepalive(k)) => acks.ack(k.wal_end),
                Ok(Frame::XLogData(x)) => panic!("unexpected data {:?}", decode(&x.data)),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the stream ends when the server stops");
    assert!(error.is_retryable(), "{error}");
    let pg = restart.await.unwrap().expect("restart");

    insert_each(&pg, [3]);
    let (mut stream, _acks) = restart_stream(&config, &slot).await;
    // No gap, in order. PostgreSQL before 17 keeps an advanced
    // confirmed_flush_lsn in memory only until something else dirties the
    // slot, so a restart may replay acked transactions (at-least-once
    // allows it); PostgreSQL 17 writes it at the shutdown checkpoint and
    // resumes with [3].
    let mut ids = Vec::new();
    while ids.last() != Some(&3) {
        ids.extend(read_txns(&mut stream, 1).await.remove(0).ids);
    }
    assert!(
        [&[3][..], &[2, 3], &[1, 2, 3]].contains(&ids.as_slice()),
        "resumed with {ids:?}: a gap or a reordering"
    );
}

#[tokio::test]
async fn a_cut_link_is_retryable_and_a_reconnect_resumes_from_the_slot() {
    let pg = PgCluster::start().unwrap();
    create_outbox(&pg);
    let direct = config(&pg.url());
    let slot = unique_ident("cut");
    client_with_slot(&direct, &slot).await.close().await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    let via_proxy = config(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        proxy.port()
    ));
    insert_each(&pg, [1, 2]);

    let (mut stream, acks) = start(&via_proxy, &slot).await;
    let txns = read_txns(&mut stream, 2).await;
    acks.ack(txns[0].end_lsn);
    wait_confirmed(&pg, &slot, txns[0].end_lsn).await;

    proxy.cut();
    let started = Instant::now();
    let error = until_error(&mut stream).await;
    assert!(error.is_retryable(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let refused = ReplicationClient::connect(&via_proxy).await.unwrap_err();
    assert!(matches!(refused, Error::Connect { .. }), "{refused}");
    assert!(refused.is_retryable());

    proxy.restore();
    let (mut stream, _acks) = restart_stream(&via_proxy, &slot).await;
    assert_eq!(
        read_txns(&mut stream, 1).await[0].ids,
        [2],
        "the unacked transaction comes again, the acked one does not"
    );
    stream.shutdown(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn a_stalled_link_ends_with_a_retryable_receive_timeout() {
    let pg = PgCluster::start().unwrap();
    create_outbox(&pg);
    let slot = unique_ident("stall");
    client_with_slot(&config(&pg.url()), &slot)
        .await
        .close()
        .await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    let via_proxy = config(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        proxy.port()
    ));

    let client = ReplicationClient::connect(&via_proxy).await.unwrap();
    let (mut stream, _acks) = client
        .start_replication(
            &slot,
            Lsn::ZERO,
            options().receive_timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    // Alive first: keepalives come every second.
    assert!(matches!(stream.next().await.unwrap(), Frame::Keepalive(_)));

    proxy.stall();
    let started = Instant::now();
    let error = until_error(&mut stream).await;
    assert!(matches!(error, Error::ReceiveTimeout(_)), "{error}");
    assert!(error.is_retryable());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(6),
        "{waited:?}"
    );

    // Connecting through the stalled link gives up at connect_timeout.
    let mut impatient = via_proxy.clone();
    impatient.set_connect_timeout(Some(Duration::from_secs(2)));
    let started = Instant::now();
    let err = ReplicationClient::connect(&impatient).await.unwrap_err();
    assert!(matches!(err, Error::ConnectTimeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(4));
    proxy.restore();
}
