//! Tests against a real PostgreSQL (the test kit's private cluster): SQL
//! produces each message kind, `pg_logical_slot_peek_binary_changes` hands
//! back pgoutput's raw messages, and every one must decode to what the SQL
//! wrote.
//!
//! Every test runs on the default server (Debian's PostgreSQL 15: protocol
//! versions 1 to 3), and `versions` runs them all again on 14, 16, 17 and
//! 18; version 4's only change to the format (Stream Abort's abort LSN and
//! time, `streaming = parallel`) is produced there by 16 and later.

mod changes;
mod columns;
mod messages;
mod relations;
mod streaming;
mod two_phase;
mod versions;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use e2e::PgCluster;
use pgoutput::{Column, Decoder, LogicalMessage, Lsn, PgTimestamp, Tuple};
use tokio_postgres::Client;

use crate::common::encode;

/// One message as the slot returned it, decoded (and checked to re-encode
/// to exactly the bytes the server sent).
#[derive(Debug, Clone)]
pub struct Change {
    /// The `lsn` column of the slot function's row.
    pub lsn: Lsn,
    /// What they decode to.
    pub msg: LogicalMessage,
}

/// A private cluster and a superuser connection to it.
pub struct Server {
    /// Held for the test's duration: dropping it stops the server.
    pub pg: PgCluster,
    pub client: Client,
}

impl Server {
    /// A cluster that can also prepare transactions and stream large ones
    /// early (logical_decoding_work_mem at its 64kB minimum).
    /// (`version`: a PostgreSQL major version; `None`: the default one.)
    pub async fn start_on(version: Option<u32>) -> Server {
        let pg = PgCluster::builder()
            .maybe_version(version)
            .setting("max_prepared_transactions", "10")
            .setting("logical_decoding_work_mem", "'64kB'")
            .start()
            .expect("start a PostgreSQL cluster");
        let client = pg.client().await.expect("connect");
        // Text output of timestamps depends on the session time zone; the
        // SQL slot functions decode in this session.
        client
            .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'")
            .await
            .expect("session settings");
        Server { pg, client }
    }

    /// The newest pgoutput protocol version the server speaks: 2 on 14, 3
    /// on 15, 4 from 16.
    pub fn max_proto(&self) -> u32 {
        match self.pg.major() {
            14 => 2,
            15 => 3,
            _ => 4,
        }
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// A publication of all tables, and a pgoutput slot created after it
    /// (changes before the slot are not decoded). Returns (slot, publication).
    pub async fn slot(&self, two_phase: bool) -> (String, String) {
        let publication = e2e::unique_ident("pub");
        let slot = e2e::unique_ident("slot");
        self.exec(&format!("CREATE PUBLICATION {publication} FOR ALL TABLES"))
            .await;
        self.client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, $2)",
                &[&slot, &two_phase],
            )
            .await
            .expect("create slot");
        (slot, publication)
    }

    /// Every message in the slot so far (without consuming them), decoded
    /// with a stream-aware [`Decoder`]. `options` are extra pgoutput option
    /// pairs after proto_version and publication_names.
    pub async fn peek(
        &self,
        slot: &str,
        publication: &str,
        proto_version: u32,
        options: &[(&str, &str)],
    ) -> Vec<Change> {
        let version = proto_version.to_string();
        let mut opts: Vec<&str> = vec!["proto_version", &version, "publication_names", publication];
        for (k, v) in options {
            opts.push(k);
            opts.push(v);
        }
        let rows = self
            .client
            .query(
                "SELECT lsn::text, data FROM \
                 pg_logical_slot_peek_binary_changes($1, NULL, NULL, VARIADIC $2::text[])",
                &[&slot, &opts],
            )
            .await
            .unwrap_or_else(|e| panic!("peek {slot} with {opts:?}: {e:?}"));
        let mut decoder = Decoder::new();
        rows.iter()
            .map(|row| {
                let lsn: Lsn = row.get::<_, String>(0).parse().expect("an LSN");
                let raw = Bytes::from(row.get::<_, Vec<u8>>(1));
                let msg = decoder
                    .decode(raw.clone())
                    .unwrap_or_else(|e| panic!("{e}\nbytes: {raw:?}"));
                // Nothing the server sent was skipped or normalised.
                assert_eq!(encode(&msg), raw, "{msg:?} re-encodes differently");
                Change { lsn, msg }
            })
            .collect()
    }

    /// The Oid of a table.
    pub async fn oid(&self, table: &str) -> pgoutput::Oid {
        let row = self
            .client
            .query_one("SELECT $1::text::regclass::oid", &[&table])
            .await
            .expect("table oid");
        pgoutput::Oid(row.get::<_, u32>(0))
    }

    /// The current transaction's xid (call inside the transaction).
    pub async fn xid_in(tx: &impl tokio_postgres::GenericClient) -> pgoutput::Xid {
        let row = tx
            .query_one("SELECT txid_current()::text", &[])
            .await
            .expect("txid_current");
        let full: u64 = row.get::<_, String>(0).parse().expect("a txid");
        // txid_current carries the epoch in the high bits.
        pgoutput::Xid(u32::try_from(full & 0xFFFF_FFFF).expect("32 bits"))
    }
}

/// The message types of `changes`, for readable assertions.
pub fn kinds(changes: &[Change]) -> Vec<&'static str> {
    changes
        .iter()
        .map(|c| c.msg.message_type().name())
        .collect()
}

/// The text value of a column (panics on any other kind).
pub fn text(c: &Column) -> &str {
    match c {
        Column::Text(b) => std::str::from_utf8(b).expect("UTF-8 text"),
        other => panic!("not a text column: {other:?}"),
    }
}

/// Every column of a tuple as `Some(text)` or `None` for NULL (panics on
/// unchanged or binary).
pub fn texts(t: &Tuple) -> Vec<Option<String>> {
    t.iter()
        .map(|c| match c {
            Column::Null => None,
            c => Some(text(&c).to_owned()),
        })
        .collect()
}

/// The message types of `changes` with runs collapsed ("Insert x500"), for
/// failure messages about long streams.
pub fn summary(changes: &[Change]) -> String {
    let mut out: Vec<(&str, usize)> = Vec::new();
    for k in kinds(changes) {
        match out.last_mut() {
            Some((last, n)) if *last == k => *n += 1,
            _ => out.push((k, 1)),
        }
    }
    out.iter()
        .map(|(k, n)| {
            if *n == 1 {
                k.to_string()
            } else {
                format!("{k} x{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asserts a commit timestamp lies in the wall-clock window around the
/// transaction (the server runs on this machine; 1 s of slack).
pub fn assert_between(ts: PgTimestamp, before: SystemTime, after: SystemTime) {
    let t = ts.to_system_time();
    let slack = Duration::from_secs(1);
    assert!(
        t + slack >= before && t <= after + slack,
        "{t:?} is not between {before:?} and {after:?}"
    );
}
