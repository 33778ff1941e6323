//! The classic alternative to CDC, written well: a polling publisher.
//!
//! One worker (one worker keeps commit order; several with SKIP LOCKED
//! would reorder) loops: BEGIN; SELECT the oldest 500 unpublished rows
//! FOR UPDATE SKIP LOCKED; publish them all with publisher confirms
//! (pipelined: the batch is the window); wait for every confirm; DELETE
//! them; COMMIT. A crash between the confirms and the COMMIT re-publishes
//! the batch: at-least-once and in order, the same guarantee as the relay.
//! It reads `outbox_polled` (see [`crate::workload::POLLED_TABLE_SQL`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// Rows per poll.
pub const BATCH: i64 = 500;

const SELECT: &str = "SELECT seq, id::text, aggregate_type, aggregate_id, event_type, \
    payload::text, extract(epoch FROM created_at)::bigint \
    FROM outbox_polled ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED";

const DELETE: &str = "DELETE FROM outbox_polled WHERE seq = ANY($1)";

/// What one run of the poller did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PollerRun {
    /// Events published and deleted.
    pub events: u64,
    /// Polls that returned rows.
    pub batches: u64,
}

/// Publishes every row of `outbox_polled` to `exchange`, then returns
/// (when a poll finds nothing).
pub async fn drain(pg_url: &str, exchange: &str) -> anyhow::Result<PollerRun> {
    let mut client = crate::workload::connect(pg_url).await?;
    let select = client.prepare(SELECT).await?;
    let delete = client.prepare(DELETE).await?;
    let connection = e2e::amqp::connect().await.context("poller connection")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange: ShortString = exchange.into();
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut run = PollerRun::default();
    loop {
        let tx = client.transaction().await?;
        let rows = tx.query(&select, &[&BATCH]).await?;
        if rows.is_empty() {
            tx.commit().await?;
            break;
        }
        let mut confirms = Vec::with_capacity(rows.len());
        let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.get(0);
            let id: String = row.get(1);
            let aggregate_type: String = row.get(2);
            let aggregate_id: String = row.get(3);
            let event_type: String = row.get(4);
            let payload: String = row.get(5);
            let created: i64 = row.get(6);
            let mut headers = FieldTable::default();
            headers.insert(
                "aggregate_type".into(),
                AMQPValue::LongString(aggregate_type.as_str().into()),
            );
            headers.insert(
                "aggregate_id".into(),
                AMQPValue::LongString(aggregate_id.as_str().into()),
            );
            headers.insert(
                "event_type".into(),
                AMQPValue::LongString(event_type.as_str().into()),
            );
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.into())
                .with_type(event_type.as_str().into())
                .with_content_type("application/json".into())
                .with_app_id("bench-poller".into())
                .with_timestamp(u64::try_from(created).unwrap_or(0))
                .with_headers(headers);
            let routing_key = format!("{aggregate_type}.{event_type}");
            let confirm = channel
                .basic_publish(
                    exchange.clone(),
                    routing_key.as_str().into(),
                    options,
                    payload.as_bytes(),
                    properties,
                )
                .await?;
            confirms.push(confirm);
            seqs.push(seq);
        }
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                // The transaction rolls back on drop: the rows stay, to be
                // published again.
                bail!("the broker did not ack a polled event");
            }
        }
        tx.execute(&delete, &[&seqs]).await?;
        tx.commit().await?;
        run.events += u64::try_from(seqs.len()).unwrap_or(0);
        run.batches += 1;
    }
    let _ = connection.close(200, "poller done".into()).await;
    Ok(run)
}

/// Runs [`drain`] in a runtime of its own on a thread of its own, so that
/// its CPU time (client side: the SQL's cost is Postgres's, as the
/// walsender's is for the relay) can be read apart from the bench's.
/// Returns the run, its wall time and its CPU seconds.
pub fn drain_on_thread(
    pg_url: String,
    exchange: String,
) -> std::thread::JoinHandle<anyhow::Result<(PollerRun, Duration, f64)>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tid = nix::unistd::gettid().as_raw();
        let cpu_before = crate::procfs::thread_cpu_secs(tid)?;
        let started = Instant::now();
        let run = runtime.block_on(drain(&pg_url, &exchange))?;
        let elapsed = started.elapsed();
        let cpu = crate::procfs::thread_cpu_secs(tid)? - cpu_before;
        Ok((run, elapsed, cpu))
    })
}
