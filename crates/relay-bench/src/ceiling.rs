//! The two ceilings the relay is measured against.
//!
//! - The broker: a bare lapin loop publishing the same messages the relay
//!   sends (persistent, ~300-byte JSON, the relay's properties and headers)
//!   with publisher confirms and a window of 1024, to a topic exchange
//!   bound to one durable queue, while the same consumer as in the drain
//!   reads the queue. The figure is timed like the drain: first publish to
//!   the consumer holding every message (the last confirm is recorded too).
//! - WAL read: `pg_recvlogical` with pgoutput draining the backlog from a
//!   slot of its own, to /dev/null: what Postgres can decode and send.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use lapin::types::ShortString;

use crate::consumer::{Consumer, Tally};
use crate::publish;
use crate::stats::rate;

/// The broker's ceiling.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerCeiling {
    /// Messages published.
    pub messages: u64,
    /// Confirm window.
    pub window: usize,
    /// First publish to last confirm, seconds.
    pub confirmed_secs: f64,
    /// First publish to the consumer holding every message, seconds.
    pub consumed_secs: f64,
    /// messages / confirmed_secs.
    pub confirmed_per_s: f64,
    /// messages / consumed_secs: the ceiling.
    pub events_per_s: f64,
}

/// Publishes `n` messages with a bare lapin loop to `exchange` (bound to
/// `queue`) and times them.
pub async fn broker(
    exchange: &str,
    queue: &str,
    n: u64,
    window: usize,
) -> anyhow::Result<BrokerCeiling> {
    broker_at(&e2e::amqp::amqp_url(), exchange, queue, n, window).await
}

/// [`broker`] on the broker at `url` (publisher and consumer both).
pub async fn broker_at(
    url: &str,
    exchange: &str,
    queue: &str,
    n: u64,
    window: usize,
) -> anyhow::Result<BrokerCeiling> {
    let origin = Instant::now();
    let tally = Tally::new(origin, 0, usize::try_from(n)?);
    let consumer = Consumer::start_at(url, queue, tally.clone()).await?;
    let (connection, channel) = publish::confirming_channel_at(url, "the broker ceiling").await?;
    let started = Instant::now();
    publish_all(&channel, exchange, n, window, "ceiling run").await?;
    let confirmed = started.elapsed();
    let complete = tally.wait_all(Duration::from_secs(30), || true).await;
    publish::close(&connection, "ceiling done").await;
    consumer.stop().await;
    if !complete {
        bail!(
            "the consumer got {} of {n} messages of the ceiling run",
            tally.unique()
        );
    }
    let last = tally.last_arrival().unwrap_or_default();
    let consumed = last.saturating_sub(started.saturating_duration_since(origin));
    Ok(BrokerCeiling {
        messages: n,
        window,
        confirmed_secs: confirmed.as_secs_f64(),
        consumed_secs: consumed.as_secs_f64(),
        confirmed_per_s: rate(n, confirmed),
        events_per_s: rate(n, consumed),
    })
}

/// The bare lapin loop: `n` of the ceiling's messages to `exchange` with
/// confirms, at most `window` unconfirmed.
///
/// Pipelined, as a publisher that knows lapin writes it: each publish is
/// started (lapin takes its delivery tag and queues its frames at the
/// first poll) the moment it is made, and nothing waits for lapin's I/O
/// thread to write a frame; the loop only waits when the window is full.
/// Awaiting each `basic_publish` instead costs a round trip to that thread
/// per message (about 3.4 context switches per message here), which would
/// make a floor anyone could beat.
async fn publish_all(
    channel: &lapin::Channel,
    exchange: &str,
    n: u64,
    window: usize,
    what: &str,
) -> anyhow::Result<()> {
    use futures_util::stream::{FuturesUnordered, StreamExt as _};
    use futures_util::FutureExt as _;

    let exchange: ShortString = exchange.into();
    let mut in_flight = FuturesUnordered::new();
    for seq in 0..n {
        let body = crate::workload::payload(seq);
        let properties = publish::synthetic(seq);
        let channel = channel.clone();
        let exchange = exchange.clone();
        in_flight.push(async move {
            let confirm = channel
                .basic_publish(
                    exchange,
                    "order.created".into(),
                    publish::OPTIONS,
                    &body,
                    properties,
                )
                .await?;
            publish::acked(confirm, what).await
        });
        // Start the new publish now and take in what was confirmed.
        while let Some(Some(result)) = in_flight.next().now_or_never() {
            result?;
        }
        while in_flight.len() >= window {
            if let Some(result) = in_flight.next().await {
                result?;
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    Ok(())
}

/// The WAL-read ceiling.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalCeiling {
    /// Rows in the backlog read.
    pub rows: u64,
    /// pg_recvlogical's run time, seconds.
    pub secs: f64,
    /// rows / secs.
    pub rows_per_s: f64,
    /// What pg_recvlogical itself cost (getrusage of the waited child).
    pub cost: crate::procfs::Cost,
}

/// Runs `pg_recvlogical` on `slot` until `end_lsn`, writing pgoutput's
/// binary messages to /dev/null.
pub fn wal_read(
    bindir: &Path,
    port: u16,
    slot: &str,
    publication: &str,
    end_lsn: &str,
    rows: u64,
) -> anyhow::Result<WalCeiling> {
    let program = bindir.join("pg_recvlogical");
    let before = crate::procfs::rusage(true)?;
    let started = Instant::now();
    let out = Command::new(&program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "--slot", slot, "--start", "--no-loop"])
        .args(["--endpos", end_lsn, "-f", "-"])
        .args(["-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={publication}")])
        .stdout(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "pg_recvlogical failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cost = crate::procfs::rusage(true)?.since(&before);
    Ok(WalCeiling {
        rows,
        secs: elapsed.as_secs_f64(),
        rows_per_s: rate(rows, elapsed),
        cost,
    })
}

/// The bare lapin loop's own cost: the ceiling's publisher (the same
/// messages, confirms, window 1024) run as a process of its own so that
/// its CPU and context switches are counted alone, while this process
/// consumes the queue. What a publisher of these messages cannot go below
/// with lapin.
pub async fn bare_cost(exchange: &str, queue: &str, n: u64) -> anyhow::Result<crate::procfs::Cost> {
    let origin = Instant::now();
    let tally = Tally::new(origin, 0, usize::try_from(n)?);
    let consumer = Consumer::start(queue, tally.clone()).await?;
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let out = tokio::process::Command::new(exe)
        .args(["--run-bare-publisher", &e2e::amqp::amqp_url()])
        .args(["--bare-exchange", exchange])
        .args(["--bare-count", &n.to_string()])
        .output()
        .await
        .context("running the bare publisher")?;
    let complete = tally.wait_all(Duration::from_secs(60), || true).await;
    consumer.stop().await;
    if !out.status.success() {
        bail!(
            "the bare publisher failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !complete {
        bail!("the consumer got {} of {n} bare messages", tally.unique());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("the bare publisher said {line:?}"))
}

/// The bare publisher process (`--run-bare-publisher`): publishes `n` of
/// the ceiling's messages with confirms (window 1024) on a runtime like
/// the relay's (one worker thread beside lapin's I/O thread), then prints
/// its own getrusage as JSON.
pub fn run_bare_child(url: &str, exchange: &str, n: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (connection, channel) =
            publish::confirming_channel_at(url, "the bare publisher").await?;
        publish_all(&channel, exchange, n, 1024, "bare publisher").await?;
        publish::close(&connection, "bare publisher done").await;
        anyhow::Ok(())
    })?;
    drop(runtime);
    println!("{}", serde_json::to_string(&crate::procfs::rusage(false)?)?);
    Ok(())
}

/// The broker's latency floor at a fixed rate: a bare lapin loop (confirms,
/// window 1024) publishing the ceiling's messages at `rate` messages/s for
/// `duration` while the consumer reads; the time from the publish call to
/// the consumer's receipt. What any publisher on this machine and broker
/// would see.
pub async fn broker_latency(
    exchange: &str,
    queue: &str,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Option<crate::stats::Percentiles>> {
    let txns_per_sec = rate.clamp(1, 1000);
    let per_tick = (rate / txns_per_sec).max(1);
    let ticks = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX) * txns_per_sec / 1000;
    let n = usize::try_from(ticks * per_tick)?;
    let origin = Instant::now();
    let tally = Tally::new(origin, 0, n);
    let sent = crate::workload::CommitTimes::new(origin, 0, n);
    let consumer = Consumer::start(queue, tally.clone()).await?;
    let (connection, channel) = publish::confirming_channel("the latency floor").await?;
    let exchange: ShortString = exchange.into();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / txns_per_sec));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = VecDeque::new();
    let mut seq = 0u64;
    for _ in 0..ticks {
        ticker.tick().await;
        for _ in 0..per_tick {
            let body = crate::workload::payload(seq);
            let properties = publish::synthetic(seq);
            sent.record(seq, Instant::now());
            let confirm = channel
                .basic_publish(
                    exchange.clone(),
                    "order.created".into(),
                    publish::OPTIONS,
                    &body,
                    properties,
                )
                .await?;
            pending.push_back(confirm);
            seq += 1;
        }
        // Window 1024: wait for the oldest confirms beyond it.
        while pending.len() > 1024 {
            if let Some(oldest) = pending.pop_front() {
                publish::acked(oldest, "latency floor").await?;
            }
        }
    }
    for confirm in pending {
        publish::acked(confirm, "latency floor").await?;
    }
    let _ = tally.wait_all(Duration::from_secs(30), || true).await;
    publish::close(&connection, "latency ceiling done").await;
    consumer.stop().await;
    let mut samples: Vec<Duration> = (0..seq)
        .filter_map(|s| Some(tally.arrival(s)?.saturating_sub(sent.get(s)?)))
        .collect();
    Ok(crate::stats::percentiles(&mut samples))
}
