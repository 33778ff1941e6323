//! The consumer every phase times against: it reads a queue (no acks,
//! a deep prefetch: as cheap for the broker as consuming gets), reads each
//! body's `seq`, and records when each event of the expected range first
//! arrived. "Done" is the instant the last missing event arrived.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

/// Arrivals of events `first..first + n`.
#[derive(Debug)]
pub struct Tally {
    origin: Instant,
    first: u64,
    /// Nanoseconds since `origin` + 1 of each event's first arrival; 0 =
    /// not yet.
    arrived: Vec<AtomicU64>,
    unique: AtomicUsize,
    deliveries: AtomicUsize,
    outside: AtomicUsize,
    /// Nanoseconds since `origin` + 1 of the last first arrival.
    last_new: AtomicU64,
}

impl Tally {
    /// Expects events `first..first + n`; times are relative to `origin`.
    pub fn new(origin: Instant, first: u64, n: usize) -> Arc<Tally> {
        Arc::new(Tally {
            origin,
            first,
            arrived: (0..n).map(|_| AtomicU64::new(0)).collect(),
            unique: AtomicUsize::new(0),
            deliveries: AtomicUsize::new(0),
            outside: AtomicUsize::new(0),
            last_new: AtomicU64::new(0),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        let n = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(n).unwrap_or(u64::MAX - 1) + 1
    }

    /// Records a delivery of `seq` at `at`.
    pub fn record(&self, seq: Option<u64>, at: Instant) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let slot = seq
            .and_then(|s| s.checked_sub(self.first))
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.arrived.get(i));
        let Some(slot) = slot else {
            self.outside.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let nanos = self.nanos(at);
        if slot
            .compare_exchange(0, nanos, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.unique.fetch_add(1, Ordering::Relaxed);
            self.last_new.fetch_max(nanos, Ordering::Relaxed);
        }
    }

    /// Events of the range that arrived (each counted once).
    pub fn unique(&self) -> usize {
        self.unique.load(Ordering::Relaxed)
    }

    /// Every delivery, duplicates and strays included.
    pub fn deliveries(&self) -> usize {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Deliveries of events outside the range (or without a seq).
    pub fn outside(&self) -> usize {
        self.outside.load(Ordering::Relaxed)
    }

    /// Events expected.
    pub fn expected(&self) -> usize {
        self.arrived.len()
    }

    /// When event `seq` first arrived, relative to the origin.
    pub fn arrival(&self, seq: u64) -> Option<Duration> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        match self.arrived.get(i)?.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    /// When the last new event arrived, relative to the origin.
    pub fn last_arrival(&self) -> Option<Duration> {
        match self.last_new.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    /// The earliest first arrival, relative to the origin.
    pub fn first_arrival(&self) -> Option<Duration> {
        self.arrived
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&n| n != 0)
            .min()
            .map(|n| Duration::from_nanos(n - 1))
    }

    /// Waits until every expected event arrived (true), or `timeout`
    /// passes without progress (false). `alive` is polled: when it says
    /// the producer died, waiting stops early.
    pub async fn wait_all(&self, stall_timeout: Duration, mut alive: impl FnMut() -> bool) -> bool {
        let mut last = self.unique();
        let mut last_progress = Instant::now();
        loop {
            let now = self.unique();
            if now >= self.expected() {
                return true;
            }
            if now != last {
                last = now;
                last_progress = Instant::now();
            }
            if last_progress.elapsed() > stall_timeout || !alive() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A running consumer; stops on drop.
#[derive(Debug)]
pub struct Consumer {
    task: tokio::task::JoinHandle<()>,
    connection: lapin::Connection,
}

impl Consumer {
    /// Consumes `queue`, recording into `tally`.
    pub async fn start(queue: &str, tally: Arc<Tally>) -> anyhow::Result<Consumer> {
        Consumer::start_at(&e2e::amqp::amqp_url(), queue, tally).await
    }

    /// [`start`](Self::start) on the broker at `url`.
    pub async fn start_at(url: &str, queue: &str, tally: Arc<Tally>) -> anyhow::Result<Consumer> {
        let connection = e2e::amqp::connect_to(url)
            .await
            .context("consumer connection")?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(4000, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                e2e::unique_name("bench-consumer").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let task = tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = deliveries.next().await {
                tally.record(crate::workload::seq_of(&delivery.data), Instant::now());
            }
        });
        Ok(Consumer { task, connection })
    }

    /// Stops consuming.
    pub async fn stop(self) {
        self.task.abort();
        crate::publish::close(&self.connection, "bench phase done").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_event_once_and_keeps_the_last_new_arrival() {
        let origin = Instant::now();
        let t = Tally::new(origin, 10, 3);
        t.record(Some(10), origin + Duration::from_millis(1));
        t.record(Some(10), origin + Duration::from_millis(9)); // duplicate
        t.record(Some(12), origin + Duration::from_millis(3));
        t.record(Some(99), origin); // outside
        t.record(None, origin);
        assert_eq!(t.unique(), 2);
        assert_eq!(t.deliveries(), 5);
        assert_eq!(t.outside(), 2);
        assert_eq!(t.arrival(10), Some(Duration::from_millis(1)));
        assert_eq!(t.last_arrival(), Some(Duration::from_millis(3)));
        assert_eq!(t.first_arrival(), Some(Duration::from_millis(1)));
        assert_eq!(t.arrival(11), None);
    }
}
