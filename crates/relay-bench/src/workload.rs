//! The workload: ~300-byte JSON order events, committed as a backlog (many
//! small transactions while nobody reads) or at a fixed rate (the latency
//! phases), and the sequence number every payload carries so that the
//! consumer can tell which event arrived.
//!
//! Payloads are built by Postgres (`jsonb_build_object`), so committing a
//! million rows costs the bench little CPU; the bare-lapin ceiling uses
//! [`payload`], the same document built in Rust.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::Client;

/// The payload of event `g` (a bigint column or parameter named `g`), as
/// SQL: ~300 bytes of jsonb text with `seq` first.
const PAYLOAD_SQL: &str = "jsonb_build_object('seq', g, 'order_id', 'ord-' || g, \
    'customer_id', 'cust-' || (g % 977), 'currency', 'EUR', 'total_cents', (g * 7919) % 100000, \
    'status', 'created', 'placed_at', '2026-01-01T12:00:00Z', 'lines', jsonb_build_array(\
    jsonb_build_object('sku', 'SKU-' || (g % 313), 'qty', 1 + g % 5, 'price_cents', 1999), \
    jsonb_build_object('sku', 'SKU-' || (g % 71), 'qty', 1, 'price_cents', 499)), \
    'note', repeat('x', 12))";

/// The same document as [`PAYLOAD_SQL`], built in Rust (jsonb's key order:
/// shorter keys first).
pub fn payload(g: u64) -> Vec<u8> {
    format!(
        "{{\"seq\": {g}, \"note\": \"xxxxxxxxxxxx\", \"lines\": [{{\"qty\": {qty}, \"sku\": \
         \"SKU-{a}\", \"price_cents\": 1999}}, {{\"qty\": 1, \"sku\": \"SKU-{b}\", \
         \"price_cents\": 499}}], \"status\": \"created\", \"currency\": \"EUR\", \"order_id\": \
         \"ord-{g}\", \"placed_at\": \"2026-01-01T12:00:00Z\", \"customer_id\": \"cust-{c}\", \
         \"total_cents\": {t}}}",
        qty = 1 + g % 5,
        a = g % 313,
        b = g % 71,
        c = g % 977,
        t = (g * 7919) % 100_000,
    )
    .into_bytes()
}

/// The `seq` of a payload (the first key of every document the workload
/// writes): `{"seq": 123, ...`.
pub fn seq_of(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\": ";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = body.get(start..)?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// The table the polling publisher drains: the outbox's columns plus a
/// sequence to poll in commit order. Its own table, so that sql/outbox.sql
/// stays what CDC needs (no `published` flag, no polling index).
pub const POLLED_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS public.outbox_polled (
    seq            bigserial   PRIMARY KEY,
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
)";

/// `INSERT` of events `$1..=$2` into `table` (one statement, one
/// transaction).
pub fn insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (aggregate_type, aggregate_id, event_type, payload) \
         SELECT 'order', 'ord-' || g, 'created', {PAYLOAD_SQL} \
         FROM generate_series($1::bigint, $2::bigint) g"
    )
}

/// Connects a client and spawns its connection task.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to the bench cluster ({url})"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Commits events `first..first + rows` into `table` in transactions of
/// `per_txn` rows, over `connections` connections at once. Returns how
/// long it took.
pub async fn commit_backlog(
    url: &str,
    table: &str,
    first: u64,
    rows: u64,
    per_txn: u64,
    connections: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(first));
    let end = first + rows;
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let client = connect(url).await?;
        let next = next.clone();
        let sql = insert_sql(table);
        tasks.push(tokio::spawn(async move {
            let statement = client.prepare(&sql).await?;
            loop {
                let a = next.fetch_add(per_txn, Ordering::Relaxed);
                if a >= end {
                    return Ok::<(), tokio_postgres::Error>(());
                }
                let b = (a + per_txn).min(end) - 1;
                let (a, b) = (
                    i64::try_from(a).unwrap_or(i64::MAX),
                    i64::try_from(b).unwrap_or(i64::MAX),
                );
                client.execute(&statement, &[&a, &b]).await?;
            }
        }));
    }
    for task in tasks {
        task.await
            .context("a loader task")?
            .context("committing the backlog")?;
    }
    Ok(started.elapsed())
}

/// The WAL insert position (everything committed so far is before it).
pub async fn wal_insert_lsn(client: &Client) -> anyhow::Result<String> {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?;
    Ok(row.get(0))
}

/// Average payload size of `table`'s rows, in bytes.
pub async fn payload_bytes(client: &Client, table: &str) -> anyhow::Result<f64> {
    let row = client
        .query_one(
            &format!("SELECT coalesce(avg(octet_length(payload::text)), 0)::float8 FROM (SELECT payload FROM {table} LIMIT 1000) s"),
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// When each event of a latency phase was committed (client side, after
/// the statement's COMMIT returned), as nanoseconds since the phase's
/// origin, + 1 (0 = not committed).
#[derive(Debug)]
pub struct CommitTimes {
    origin: Instant,
    first: u64,
    at: Vec<AtomicU64>,
}

impl CommitTimes {
    /// Room for events `first..first + n`, times relative to `origin`.
    pub fn new(origin: Instant, first: u64, n: usize) -> CommitTimes {
        CommitTimes {
            origin,
            first,
            at: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records that event `seq` was committed (or sent) at `when`.
    pub fn record(&self, seq: u64, when: Instant) {
        let nanos = when.saturating_duration_since(self.origin).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        if let Some(slot) = seq
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.at.get(i))
        {
            slot.store(nanos, Ordering::Relaxed);
        }
    }

    /// The commit time of event `seq`, relative to the origin.
    pub fn get(&self, seq: u64) -> Option<Duration> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        match self.at.get(i)?.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    /// Events committed.
    pub fn committed(&self) -> usize {
        self.at
            .iter()
            .filter(|a| a.load(Ordering::Relaxed) != 0)
            .count()
    }
}

/// What a paced producer did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Produced {
    /// Events committed.
    pub events: u64,
    /// Rows per transaction.
    pub rows_per_txn: u64,
    /// Events per second actually committed.
    pub achieved_rate: f64,
    /// Transactions that could not start on time because every connection
    /// was busy (the producer fell behind its rate).
    pub late_txns: u64,
    /// The INSERT's round trip (client -> Postgres commit -> client): how
    /// long the machine takes to serve a commit at this rate, the floor
    /// under any commit-to-consumer latency (on a busy shared machine it
    /// shows the scheduling delays every process suffers).
    pub commit_round_trip: Option<crate::stats::Percentiles>,
}

/// Commits events `first..` into `outbox` at `rate` events/s for
/// `duration`: transactions of `max(1, rate / 1000)` rows at evenly spaced
/// instants, spread over a few connections so that a slow commit does not
/// delay the next one. Records each event's commit time in `times`.
pub async fn produce_at_rate(
    url: &str,
    first: u64,
    rate: u64,
    duration: Duration,
    times: Arc<CommitTimes>,
) -> anyhow::Result<Produced> {
    const CONNECTIONS: usize = 4;
    let per_txn = (rate / 1000).max(1);
    let txns_per_sec = (rate / per_txn).max(1);
    let interval = Duration::from_nanos(1_000_000_000 / txns_per_sec);
    let total_txns = u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(txns_per_sec)
        / 1000;
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = connect(url).await?;
        let statement = client.prepare(&insert_sql("outbox")).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, u64)>(4);
        senders.push(tx);
        let times = times.clone();
        workers.push(tokio::spawn(async move {
            let mut round_trips = Vec::new();
            while let Some((a, b)) = rx.recv().await {
                let (ia, ib) = (
                    i64::try_from(a).unwrap_or(i64::MAX),
                    i64::try_from(b).unwrap_or(i64::MAX),
                );
                let sent = Instant::now();
                client.execute(&statement, &[&ia, &ib]).await?;
                let now = Instant::now();
                round_trips.push(now - sent);
                for seq in a..=b {
                    times.record(seq, now);
                }
            }
            Ok::<_, tokio_postgres::Error>(round_trips)
        }));
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut late = 0u64;
    let mut next_worker = 0usize;
    let mut seq = first;
    for _ in 0..total_txns {
        ticker.tick().await;
        let job = (seq, seq + per_txn - 1);
        seq += per_txn;
        // The next free connection; if all are busy, wait for the next in
        // turn (and count the transaction as late).
        let mut sent = false;
        for k in 0..CONNECTIONS {
            let i = (next_worker + k) % CONNECTIONS;
            if senders[i].try_send(job).is_ok() {
                next_worker = (i + 1) % CONNECTIONS;
                sent = true;
                break;
            }
        }
        if !sent {
            late += 1;
            senders[next_worker]
                .send(job)
                .await
                .context("a producer connection stopped")?;
            next_worker = (next_worker + 1) % CONNECTIONS;
        }
    }
    drop(senders);
    let mut round_trips = Vec::new();
    for w in workers {
        round_trips.extend(
            w.await
                .context("a producer task")?
                .context("committing an event")?,
        );
    }
    let elapsed = started.elapsed();
    let events = seq - first;
    Ok(Produced {
        events,
        rows_per_txn: per_txn,
        achieved_rate: crate::stats::rate(events, elapsed),
        late_txns: late,
        commit_round_trip: crate::stats::percentiles(&mut round_trips),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_read_from_the_payload() {
        assert_eq!(seq_of(&payload(12_345)), Some(12_345));
        assert_eq!(seq_of(b"{\"seq\": 7}"), Some(7));
        assert_eq!(seq_of(b"{\"other\": 7}"), None);
    }

    #[test]
    fn the_rust_payload_is_about_300_bytes() {
        let n = payload(500_000).len();
        assert!((280..=320).contains(&n), "{n}");
    }

    #[test]
    fn commit_times_are_kept_per_seq() {
        let origin = Instant::now();
        let t = CommitTimes::new(origin, 100, 3);
        t.record(101, origin + Duration::from_millis(5));
        t.record(99, origin); // outside: ignored
        assert_eq!(t.get(101), Some(Duration::from_millis(5)));
        assert_eq!(t.get(100), None);
        assert_eq!(t.committed(), 1);
    }
}
