//! What every relay test starts from: a cluster with the outbox table, a
//! unique exchange with a queue bound to every routing key, unique
//! dead-letter names, and the environment that points a relay at them.

use std::time::Duration;

use e2e::amqp::{self, BrokerScope, Collector};
use e2e::{PgCluster, RelayProcess};

pub const OUTBOX_SQL: &str = include_str!("../../../sql/outbox.sql");

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
