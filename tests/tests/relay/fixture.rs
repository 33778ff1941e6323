//! What every relay test starts from: a cluster with the outbox table, a
//! unique exchange with a queue bound to every routing key, unique
//! dead-letter names, and the environment that points a relay at them.

use std::time::Duration;

use e2e::amqp::{self, BrokerScope, Collector};
use e2e::{PgCluster, RelayProcess};

pub use e2e::OUTBOX_SQL;

pub struct Fixture {
    pub pg: PgCluster,
    pub scope: BrokerScope,
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub amqp_url: String,
}

impl Fixture {
    /// A cluster with sql/outbox.sql loaded and fresh broker names.
    pub async fn new() -> Fixture {
        Fixture::with_cluster(PgCluster::start().expect("start cluster")).await
    }

    /// The same on a cluster of this PostgreSQL major version.
    pub async fn on_version(major: u32) -> Fixture {
        let pg = PgCluster::builder()
            .version(major)
            .start()
            .unwrap_or_else(|e| panic!("start a PostgreSQL {major} cluster: {e}"));
        Fixture::with_cluster(pg).await
    }

    pub async fn with_cluster(pg: PgCluster) -> Fixture {
        pg.psql(OUTBOX_SQL).expect("load sql/outbox.sql");
        let scope = BrokerScope::connect().await.expect("broker reachable");
        let (exchange, queue) = scope.topic_with_queue("relay").await.unwrap();
        let dead_letter_exchange = e2e::unique_name("relay-dlx");
        let dead_letter_queue = e2e::unique_name("relay-dlq");
        scope.track_exchange(&dead_letter_exchange);
        scope.track_queue(&dead_letter_queue);
        Fixture {
            pg,
            scope,
            exchange,
            queue,
            dead_letter_exchange,
            dead_letter_queue,
            amqp_url: amqp::amqp_url(),
        }
    }

    /// The relay's environment for this fixture.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("RELAY_PG_URL".into(), self.pg.url()),
            ("RELAY_AMQP_URL".into(), self.amqp_url.clone()),
            ("RELAY_EXCHANGE".into(), self.exchange.clone()),
            (
                "RELAY_DEAD_LETTER_EXCHANGE".into(),
                self.dead_letter_exchange.clone(),
            ),
            (
                "RELAY_DEAD_LETTER_QUEUE".into(),
                self.dead_letter_queue.clone(),
            ),
            ("RELAY_METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("RELAY_BACKOFF_INITIAL_MS".into(), "100".into()),
            ("RELAY_BACKOFF_MAX_MS".into(), "1000".into()),
            ("RELAY_STANDBY_POLL_MS".into(), "500".into()),
            ("RELAY_HEARTBEAT_SECS".into(), "3".into()),
            ("RELAY_LOG".into(), "info,outbox_relay=debug".into()),
        ]
    }

    /// Starts `outbox-relay run` with the fixture's environment plus
    /// `extra` (which wins), and waits until it streams.
    pub fn start_relay(&self, extra: &[(&str, &str)]) -> RelayProcess {
        let relay = self.spawn_relay(&["run"], extra);
        relay
            .wait_for_line("streaming from the slot", Duration::from_secs(60))
            .expect("the relay starts streaming");
        relay
    }

    /// Runs a command of the relay (`check`, `setup`, a `run` that is
    /// expected to stop) to its end with the fixture's environment plus
    /// `extra`; whether it succeeded and its output.
    pub fn run_to_end(&self, args: &[&str], extra: &[(&str, &str)]) -> (bool, String) {
        let mut process = self.spawn_relay(args, extra);
        let status = process
            .wait(Duration::from_secs(60))
            .expect("outbox-relay exits within a minute");
        (status.success(), process.output())
    }

    /// Spawns the relay without waiting.
    pub fn spawn_relay(&self, args: &[&str], extra: &[(&str, &str)]) -> RelayProcess {
        let mut env = self.env();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        RelayProcess::spawn(args, &env).expect("start outbox-relay")
    }

    /// A topic exchange no queue is bound to (deleted at the end): a relay
    /// publishing to it gets every event back and dead-letters it
    /// (`no_route`).
    #[allow(dead_code)] // used by the metrics and dead-letter tests
    pub async fn exchange_without_queues(&self) -> String {
        let nowhere = e2e::unique_name("relay-nowhere");
        self.scope
            .declare_exchange(&nowhere, lapin::ExchangeKind::Topic)
            .await
            .unwrap();
        nowhere
    }

    pub async fn consumer(&self) -> Collector {
        self.scope.consume(&self.queue).await.unwrap()
    }

    /// Inserts `n` events for aggregate `agg` in one transaction; the event
    /// type carries a sequence number `seq-<first + i>`.
    pub fn insert_events(&self, agg: &str, first: usize, n: usize) {
        self.pg
            .psql(&format!(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                 SELECT 'order', '{agg}', 'created', jsonb_build_object('seq', g)
                 FROM generate_series({first}, {}) g",
                first + n - 1
            ))
            .expect("insert events");
    }

    /// The slot's confirmed_flush_lsn as a number of bytes.
    #[allow(dead_code)] // used by the fault tests
    pub fn confirmed_flush(&self, slot: &str) -> Option<u64> {
        let text = self
            .pg
            .psql(&format!(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots \
                 WHERE slot_name = '{slot}'"
            ))
            .ok()?;
        text.trim().parse::<u64>().ok()
    }
}

/// The `seq` field of a delivered body.
pub fn seq_of(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).expect("json body");
    v["seq"].as_u64().expect("seq")
}

/// A header's string value.
pub fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Concurrent writers committing outbox events (and rolling back one
/// transaction in ten), recording what they committed.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Written>>,
}

/// What one writer did: its aggregate, the seqs it committed in order, and
/// the seqs whose COMMIT outcome it could not learn (a connection lost
/// during COMMIT: they may or may not be committed).
#[derive(Debug, Default)]
pub struct Written {
    pub aggregate: String,
    pub committed: Vec<u64>,
    pub ambiguous: Vec<u64>,
}

impl Load {
    /// `writers` tasks, each committing transactions of `rows` events to
    /// its own aggregate, pausing `pause` between transactions, until
    /// stopped or `max_txns` transactions each.
    pub fn start(url: &str, writers: usize, rows: u64, pause: Duration, max_txns: u64) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..writers)
            .map(|w| {
                let url = url.to_string();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut out = Written {
                        aggregate: format!("w{w}"),
                        ..Written::default()
                    };
                    let mut seq = 0u64;
                    let mut client = None;
                    let mut txn = 0u64;
                    while txn < max_txns && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if client.is_none() {
                            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                                Ok((c, conn)) => {
                                    tokio::spawn(conn);
                                    client = Some(c);
                                }
                                Err(_) => {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                    continue;
                                }
                            }
                        }
                        let Some(c) = client.as_ref() else { continue };
                        let rollback = txn % 10 == 9;
                        let (kind, end) = if rollback { ("rolled_back", "ROLLBACK") } else { ("created", "COMMIT") };
                        let sql = format!(
                            "BEGIN; INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                             SELECT 'order', '{agg}', '{kind}', jsonb_build_object('seq', g)
                             FROM generate_series({seq}, {last}) g; {end};",
                            agg = out.aggregate,
                            last = seq + rows - 1,
                        );
                        let seqs: Vec<u64> = (seq..seq + rows).collect();
                        match c.batch_execute(&sql).await {
                            Ok(()) if !rollback => out.committed.extend(seqs),
                            Ok(()) => {}
                            Err(_) => {
                                // Did the COMMIT happen? Unknown.
                                if !rollback {
                                    out.ambiguous.extend(seqs);
                                }
                                client = None;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                        seq += rows;
                        txn += 1;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    out
                })
            })
            .collect();
        Load {
            stop,
            writers: handles,
        }
    }

    /// Stops the writers and returns what each wrote.
    pub async fn stop(self) -> Vec<Written> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut out = Vec::new();
        for w in self.writers {
            out.push(w.await.expect("writer task"));
        }
        out
    }

    /// Waits for the writers to finish their transactions.
    pub async fn finish(self) -> Vec<Written> {
        let mut out = Vec::new();
        for w in self.writers {
            out.push(w.await.expect("writer task"));
        }
        out
    }
}

/// What the consumer saw, checked against what was written.
#[derive(Debug)]
pub struct Verdict {
    pub delivered: usize,
    pub unique: usize,
    pub duplicates: usize,
}

/// Checks the guarantees over every delivery: each committed event arrived
/// at least once; nothing rolled back (or never written) arrived; and per
/// aggregate, as a consumer that deduplicates on message_id sees it, each
/// new event is the next committed one: duplicates anywhere, never a gap or
/// a swap. (Raw deliveries may interleave two publishers for a moment: the
/// tail of a relay that just died, still being taken in by the broker, and
/// its successor's replay from the slot.)
pub fn verify(deliveries: &[lapin::message::Delivery], written: &[Written]) -> Verdict {
    use std::collections::{HashMap, HashSet};
    let mut position: HashMap<(String, u64), usize> = HashMap::new();
    let mut ambiguous: HashSet<(String, u64)> = HashSet::new();
    for w in written {
        for (i, s) in w.committed.iter().enumerate() {
            position.insert((w.aggregate.clone(), *s), i);
        }
        for s in &w.ambiguous {
            ambiguous.insert((w.aggregate.clone(), *s));
        }
    }
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    // Per aggregate: how many distinct committed events were seen so far.
    let mut next: HashMap<String, usize> = HashMap::new();
    for d in deliveries {
        let agg = header(d, "aggregate_id").expect("aggregate_id header");
        let kind = header(d, "event_type").expect("event_type header");
        assert_ne!(kind, "rolled_back", "a rolled-back event was published");
        let seq = seq_of(&d.data);
        let key = (agg.clone(), seq);
        let first_time = seen.insert(key.clone());
        let Some(&pos) = position.get(&key) else {
            assert!(
                ambiguous.contains(&key),
                "delivered {key:?}, which was never committed"
            );
            continue;
        };
        if first_time {
            let expected = next.entry(agg.clone()).or_insert(0);
            assert_eq!(
                pos, *expected,
                "aggregate {agg}: the next new event is position {expected}, but position {pos} \
                 arrived first (a gap or a swap)"
            );
            *expected += 1;
        }
    }
    for key in position.keys() {
        assert!(
            seen.contains(key),
            "committed event {key:?} was never delivered"
        );
    }
    let unique = seen.len();
    Verdict {
        delivered: deliveries.len(),
        unique,
        duplicates: deliveries.len() - unique,
    }
}

/// Committed events in `written`.
pub fn committed_count(written: &[Written]) -> usize {
    written.iter().map(|w| w.committed.len()).sum()
}

/// Consumes until every committed event of `written` has arrived at least
/// once (or `timeout` passes), then a little longer for stragglers.
pub async fn collect_all(
    consumer: &mut Collector,
    written: &[Written],
    timeout: Duration,
) -> Vec<lapin::message::Delivery> {
    use std::collections::HashSet;
    let wanted: HashSet<(String, u64)> = written
        .iter()
        .flat_map(|w| w.committed.iter().map(|s| (w.aggregate.clone(), *s)))
        .collect();
    let mut seen = HashSet::new();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !wanted.is_subset(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(d) = consumer.next(left).await.expect("consume") {
            if let Some(agg) = header(&d, "aggregate_id") {
                seen.insert((agg, seq_of(&d.data)));
            }
            got.push(d);
        }
    }
    got.extend(
        consumer
            .drain(Duration::from_millis(700), Duration::from_secs(5))
            .await
            .expect("consume"),
    );
    got
}
