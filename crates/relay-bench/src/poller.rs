//! The classic alternative to CDC, written well: a polling publisher.
//!
//! One worker (one worker keeps commit order; several with SKIP LOCKED
//! would reorder) loops: BEGIN; SELECT the oldest 500 unpublished rows
//! FOR UPDATE SKIP LOCKED; publish them all with publisher confirms
//! (pipelined: the batch is the window); wait for every confirm; DELETE
//! them; COMMIT. A crash between the confirms and the COMMIT re-publishes
//! the batch: at-least-once and in order, the same guarantee as the relay.
//! It reads `outbox_polled` (see [`crate::workload::POLLED_TABLE_SQL`]).

use std::time::Duration;

use crate::publish;
use anyhow::{bail, Context as _};
use lapin::types::ShortString;

/// Rows per poll.
pub const BATCH: i64 = 500;

const SELECT: &str = "SELECT seq, id::text, aggregate_type, aggregate_id, event_type, \
    payload::text, extract(epoch FROM created_at)::bigint \
    FROM outbox_polled ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED";

const DELETE: &str = "DELETE FROM outbox_polled WHERE seq = ANY($1)";

/// What one run of the poller did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
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
    let (connection, channel) = publish::confirming_channel("the polling publisher").await?;
    let exchange: ShortString = exchange.into();
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
            let properties = publish::Event {
                id,
                aggregate_type: &aggregate_type,
                aggregate_id: &aggregate_id,
                event_type: &event_type,
                timestamp: u64::try_from(created).unwrap_or(0),
                app_id: "bench-poller",
            }
            .properties();
            let routing_key = format!("{aggregate_type}.{event_type}");
            let confirm = channel
                .basic_publish(
                    exchange.clone(),
                    routing_key.as_str().into(),
                    publish::OPTIONS,
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
    crate::publish::close(&connection, "poller done").await;
    Ok(run)
}

/// The poller as a process of its own (`relay-bench --run-poller`), so that
/// its CPU time and peak RSS are read from /proc like the relay's, with
/// its lapin I/O thread and all (the SQL's cost is Postgres's, as the
/// walsender's is for the relay). It prints its [`PollerRun`] as JSON
/// when done, then waits for its stdin to close: the bench reads its usage
/// in between.
#[derive(Debug)]
pub struct PollerProcess {
    child: std::process::Child,
    result: std::sync::mpsc::Receiver<anyhow::Result<PollerRun>>,
    done: Option<anyhow::Result<PollerRun>>,
}

impl PollerProcess {
    /// Starts the poller on `pg_url`, publishing to `exchange`.
    pub fn spawn(pg_url: &str, exchange: &str) -> anyhow::Result<PollerProcess> {
        use std::io::BufRead;
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .args(["--run-poller", pg_url, "--poller-exchange", exchange])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the poller process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = std::io::BufReader::new(stdout).read_line(&mut line);
            let run = match read {
                Ok(n) if n > 0 => serde_json::from_str::<PollerRun>(&line)
                    .with_context(|| format!("the poller printed {line:?}")),
                _ => Err(anyhow::anyhow!("the poller exited without a result")),
            };
            let _ = tx.send(run);
        });
        Ok(PollerProcess {
            child,
            result,
            done: None,
        })
    }

    /// Whether it has finished (printed its result or died).
    pub fn finished(&mut self) -> bool {
        if self.done.is_none() {
            if let Ok(r) = self.result.try_recv() {
                self.done = Some(r);
            }
        }
        self.done.is_some()
    }

    /// Waits for its result.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<PollerRun> {
        if let Some(r) = self.done.take() {
            return r;
        }
        self.result
            .recv_timeout(timeout)
            .context("waiting for the poller's result")?
    }

    /// Its CPU and peak RSS (call after its result, before [`Self::stop`]).
    pub fn usage(&self) -> anyhow::Result<crate::procfs::Usage> {
        crate::procfs::usage(self.child.id())
    }

    /// Lets it exit.
    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The body of `relay-bench --run-poller`: drains, prints the result as
/// one JSON line, waits for stdin to close.
pub fn run_child(pg_url: &str, exchange: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run = runtime.block_on(drain(pg_url, exchange))?;
    println!("{}", serde_json::to_string(&run)?);
    use std::io::Read;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    Ok(())
}
