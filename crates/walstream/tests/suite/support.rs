//! Helpers shared by the integration tests: a table and publication to
//! stream, settings that ignore the environment, and just enough pgoutput
//! decoding (Begin, Insert of a bigint id, Commit) to tell transactions
//! apart. Decoding pgoutput properly is the `pgoutput` crate's job; this is
//! only the test's eyes.

use std::time::Duration;

use e2e::{PgCluster, PgClusterBuilder};
use walstream::{
    AckHandle, CreateSlotOptions, Frame, Lsn, ReplicationClient, ReplicationConfig,
    ReplicationStream, StartOptions,
};

/// How long a test waits for something the server does promptly.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Settings from a URL, with no PG* environment variable mixed in.
pub fn config(url: &str) -> ReplicationConfig {
    ReplicationConfig::parse_with_env(url, |_| None).expect("valid test settings")
}

/// Creates `outbox (id bigint primary key, body text)` and a publication
/// `outbox_pub` for it.
pub fn create_outbox(pg: &PgCluster) {
    pg.psql(
        "CREATE TABLE outbox (id bigint PRIMARY KEY, body text NOT NULL); \
         CREATE PUBLICATION outbox_pub FOR TABLE outbox;",
    )
    .expect("create outbox table and publication");
}

/// Inserts each id in its own transaction.
pub fn insert_each(pg: &PgCluster, ids: impl IntoIterator<Item = i64>) {
    let sql: String = ids
        .into_iter()
        .map(|id| format!("BEGIN; INSERT INTO outbox VALUES ({id}, 'row {id}'); COMMIT; "))
        .collect();
    pg.psql(&sql).expect("insert rows");
}

/// Inserts ids `from..=to` in one transaction.
pub fn insert_range(pg: &PgCluster, from: i64, to: i64) {
    pg.psql(&format!(
        "INSERT INTO outbox SELECT g, repeat('x', 200) FROM generate_series({from}, {to}) g"
    ))
    .expect("insert rows");
}

/// A started cluster with the outbox table and its publication, settings
/// for its superuser, and a pgoutput slot made before any row.
pub async fn outbox_with_slot(
    cluster: PgClusterBuilder,
    slot_prefix: &str,
) -> (PgCluster, ReplicationConfig, String) {
    let pg = cluster.start().expect("start cluster");
    create_outbox(&pg);
    let config = config(&pg.url());
    let slot = e2e::unique_ident(slot_prefix);
    client_with_slot(&config, &slot).await.close().await;
    (pg, config, slot)
}

/// Connects, creates a pgoutput slot, and returns the client.
pub async fn client_with_slot(config: &ReplicationConfig, slot: &str) -> ReplicationClient {
    let mut client = ReplicationClient::connect(config).await.expect("connect");
    client
        .create_slot(slot, &CreateSlotOptions::new())
        .await
        .expect("create slot");
    client
}

/// The default start options of the tests: the outbox publication.
pub fn options() -> StartOptions {
    StartOptions::new(["outbox_pub"])
}

/// Connects and starts streaming `slot` from where it stands.
pub async fn start(config: &ReplicationConfig, slot: &str) -> (ReplicationStream, AckHandle) {
    let client = ReplicationClient::connect(config).await.expect("connect");
    client
        .start_replication(slot, Lsn::ZERO, options())
        .await
        .expect("start replication")
}

/// The pgoutput messages the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Begin,
    Insert(i64),
    Commit { end_lsn: Lsn },
    Other(u8),
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Decodes just enough of a pgoutput message.
pub fn decode(data: &[u8]) -> Msg {
    match data[0] {
        b'B' => Msg::Begin,
        // 'C', flags, commit LSN, end LSN, timestamp.
        b'C' => Msg::Commit {
            end_lsn: Lsn::from_u64(be_u64(data, 10)),
        },
        // 'I', relation oid, 'N', column count, then 't', length, text.
        b'I' => {
            assert_eq!(data[5], b'N');
            assert_eq!(data[8], b't', "first column is the id, not null");
            let len = usize::try_from(u32::from_be_bytes([data[9], data[10], data[11], data[12]]))
                .unwrap();
            let text = std::str::from_utf8(&data[13..13 + len]).unwrap();
            Msg::Insert(text.parse().unwrap())
        }
        other => Msg::Other(other),
    }
}

/// One committed transaction as the stream delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub ids: Vec<i64>,
    pub end_lsn: Lsn,
}

/// Reads frames until `count` transactions have committed; keepalives are
/// skipped. Fails the test after [`PATIENCE`].
pub async fn read_txns(stream: &mut ReplicationStream, count: usize) -> Vec<Txn> {
    let mut txns = Vec::new();
    let mut ids = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while txns.len() < count {
            match stream.next().await.expect("next frame") {
                Frame::XLogData(x) => match decode(&x.data) {
                    Msg::Begin => ids.clear(),
                    Msg::Insert(id) => ids.push(id),
                    Msg::Commit { end_lsn } => {
                        assert_eq!(x.wal_start, end_lsn, "a Commit frame starts at its end LSN");
                        txns.push(Txn {
                            ids: std::mem::take(&mut ids),
                            end_lsn,
                        });
                    }
                    Msg::Other(_) => {}
                },
                Frame::Keepalive(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} transactions did not arrive within {PATIENCE:?}"));
    txns
}

/// What a slot says in pg_replication_slots: (confirmed_flush_lsn,
/// active_pid).
pub async fn slot_row(pg: &PgCluster, slot: &str) -> (Option<Lsn>, Option<i32>) {
    let client = pg.client().await.expect("control client");
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot row");
    let lsn: Option<String> = row.get(0);
    (lsn.map(|l| l.parse().unwrap()), row.get(1))
}

/// Waits until the slot's confirmed_flush_lsn reaches `lsn`.
pub async fn wait_confirmed(pg: &PgCluster, slot: &str, lsn: Lsn) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (confirmed, _) = slot_row(pg, slot).await;
        if confirmed >= Some(lsn) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed_flush_lsn of {slot} stayed at {confirmed:?}, below {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no walsender holds the slot.
pub async fn wait_inactive(pg: &PgCluster, slot: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while slot_row(pg, slot).await.1.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot {slot} stayed active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reconnects until the slot streams again (a server restarting, a proxy
/// restored, an old walsender letting go), failing the test after
/// [`PATIENCE`] or on a non-retryable error.
pub async fn restart_stream(
    config: &ReplicationConfig,
    slot: &str,
) -> (ReplicationStream, AckHandle) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let attempt = async {
            let client = ReplicationClient::connect(config).await?;
            client.start_replication(slot, Lsn::ZERO, options()).await
        };
        match attempt.await {
            Ok(started) => return started,
            Err(e) => {
                assert!(e.is_retryable(), "reconnect failed for good: {e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "could not reconnect within {PATIENCE:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Reads until the stream fails; returns the error.
pub async fn until_error(stream: &mut ReplicationStream) -> walstream::Error {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Err(e) = stream.next().await {
                return e;
            }
        }
    })
    .await
    .expect("the stream ends with an error")
}
