//! Metrics and health: what an operator scrapes and what an orchestrator
//! probes.
//!
//! [`Metrics`] holds every series (prometheus-client does the exposition:
//! no hand-formatted text); [`Health`] holds the two readiness facts
//! (streaming from the slot, connected to the broker). [`serve`] exposes
//! `/metrics` (the Prometheus text format 0.0.4, or OpenMetrics when the
//! scraper asks for it: see `exposition.rs`; the process's own figures
//! come from `process.rs`), `/healthz`
//! (process alive) and `/readyz` (streaming and broker connected; 503
//! otherwise), both JSON, on `metrics_addr`.
//!
//! The endpoint must hold when clients misbehave, so [`serve`] drives
//! hyper's HTTP/1 server itself (axum routes; `axum::serve` exposes neither
//! of these) within [`Limits`]:
//!
//! - A connection has `header_read_timeout` (5 s) to send a complete
//!   request head, counted from when it opens and again from each response
//!   it was sent. hyper runs that clock while a kept-alive connection
//!   idles and has no idle timeout of its own, so this is also the
//!   keep-alive idle timeout: a scraper polling less often than that opens
//!   a connection per scrape. A client that sends nothing, or part of a
//!   request, is closed when its time runs out.
//! - At most `max_connections` (64) are open at once, which bounds the
//!   descriptors and memory clients can hold. When all are taken, a new
//!   connection is neither made to wait nor refused: the oldest open
//!   connection is closed for it. Either of those would let 64 stalled
//!   clients deny every scrape, for a header timeout (refused) or for
//!   several (waiting in the accept backlog); closing the oldest serves a
//!   scrape at once, and a client that sends its request promptly needs
//!   its connection only for milliseconds. The price: a flood can cut a
//!   connection that was mid-request.
//!
//! Shutdown is graceful: the endpoint stops accepting, lets each connection
//! finish the response it is writing, closes idle connections at once (one
//! with part of a request head at its header timeout), and the task ends
//! when every connection has closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Which side of the relay a reconnect was on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Side {
    /// The replication connection to PostgreSQL.
    Postgres,
    /// The broker connection.
    Rabbitmq,
}

/// Labels of `outbox_relay_reconnects`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconnectLabels {
    /// Which side: `postgres` or `rabbitmq`.
    pub side: &'static str,
    /// A short reason (`connection_lost`, `admin_shutdown`, `nack`, ...).
    pub reason: String,
}

/// Labels carrying a reason or a kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason or kind.
    pub reason: String,
}

/// Labels of `outbox_relay_table_events_confirmed`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// The outbox table (`schema.table`), or `pg_logical_emit_message`.
    pub table: String,
}

/// Labels of `outbox_relay_table_events_dead_lettered`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableReasonLabels {
    /// The outbox table, or `pg_logical_emit_message`.
    pub table: String,
    /// The dead-letter reason.
    pub reason: String,
}

/// The `table` label of events from pg_logical_emit_message envelopes.
pub const EMIT_MESSAGE_TABLE: &str = "pg_logical_emit_message";

/// Labels of `outbox_relay_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The relay's version.
    pub version: String,
    /// The commit it was built from.
    pub commit: String,
}

/// Every series the relay exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Events handed to the broker (including dead-letter copies).
    pub published: Counter,
    /// Events the broker confirmed.
    pub confirmed: Counter,
    /// Events sent to the dead-letter exchange, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Changes of the outbox that are not events (update, delete,
    /// truncate), by kind; and unroutable returns dropped by policy.
    pub ignored: Family<ReasonLabels, Counter>,
    /// Transactions read from the slot.
    pub transactions: Counter,
    /// Messages in flight to the broker.
    pub inflight_messages: Gauge,
    /// Bytes of message bodies in flight to the broker.
    pub inflight_bytes: Gauge,
    /// The LSN last acknowledged to PostgreSQL, as a number.
    pub confirmed_lsn: Gauge,
    /// The server's WAL end as last reported by the walsender.
    pub server_wal_end: Gauge,
    /// Bytes of WAL between the server's end and the acknowledged LSN.
    pub lag_bytes: Gauge,
    /// Seconds from an event's commit to the broker's confirm.
    pub commit_to_confirm: Histogram,
    /// Reconnects, by side and reason.
    pub reconnects: Family<ReconnectLabels, Counter>,
    /// The slot's wal_status: 1 for the current one, 0 for the others.
    pub slot_wal_status: Family<StatusLabels, Gauge>,
    /// Bytes of WAL that can still be written before the slot is in
    /// danger (`safe_wal_size`); -1 when unbounded.
    pub slot_safe_wal_size: Gauge,
    /// 1 when the slot is a failover slot (PostgreSQL 17+), else 0.
    pub slot_failover: Gauge,
    /// 1 while the broker blocks publishing (connection.blocked: a memory
    /// or disk alarm), else 0.
    pub broker_blocked: Gauge,
    /// Messages handed to the broker whose confirm will not come: returned
    /// (no queue took them), or still in flight when a rewind or a stop
    /// dropped them (the slot sends their rows again).
    pub not_confirmed: Family<OutcomeLabels, Counter>,
    /// 1 while this relay waits as a standby for the slot another relay
    /// holds, else 0.
    pub standby: Gauge,
    /// When the broker last confirmed a message (seconds since the UNIX
    /// epoch), 0 before the first.
    pub last_confirm: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Seconds the oldest event the relay holds unconfirmed has waited
    /// since its commit; 0 when nothing waits.
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Events the broker confirmed, by outbox table (dead-letter copies
    /// included).
    pub table_confirmed: Family<TableLabels, Counter>,
    /// Events sent to the dead-letter exchange, by outbox table and reason.
    pub table_dead_lettered: Family<TableReasonLabels, Counter>,
    /// The `table` label of each configured table, by its index; the last
    /// is [`EMIT_MESSAGE_TABLE`].
    table_names: Arc<Vec<String>>,
    /// Each label's confirmed counter, in the same order (no label lookup
    /// per event).
    table_confirmed_by_index: Arc<Vec<Counter>>,
}

/// Labels of `outbox_relay_events_not_confirmed`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `returned` or `rewound`.
    pub outcome: &'static str,
}

/// The values of `wal_status` in pg_replication_slots.
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Labels carrying a status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The status.
    pub status: &'static str,
}

impl Metrics {
    /// Sets the slot's series from its row in pg_replication_slots.
    pub fn observe_slot(&self, slot: &crate::catalog::SlotInfo) {
        for status in WAL_STATUSES {
            let current = slot.wal_status.as_deref() == Some(status);
            self.slot_wal_status
                .get_or_create(&StatusLabels { status })
                .set(i64::from(current));
        }
        self.slot_safe_wal_size
            .set(slot.safe_wal_size.unwrap_or(-1));
        self.slot_failover
            .set(i64::from(slot.failover.unwrap_or(false)));
    }

    /// The slot is gone: no status, no failover flag, nothing safe.
    pub fn forget_slot(&self) {
        for status in WAL_STATUSES {
            self.slot_wal_status
                .get_or_create(&StatusLabels { status })
                .set(0);
        }
        self.slot_safe_wal_size.set(-1);
        self.slot_failover.set(0);
    }

    /// Creates every series and registers it: the relay's own under
    /// `outbox_relay_`, the process's under the standard `process_` names.
    pub fn new() -> (Metrics, Registry) {
        let mut root = Registry::default();
        root.register_collector(Box::new(crate::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("outbox_relay");
        let metrics = Metrics {
            table_confirmed: Family::default(),
            table_dead_lettered: Family::default(),
            table_names: Arc::new(Vec::new()),
            table_confirmed_by_index: Arc::new(Vec::new()),
            not_confirmed: Family::default(),
            standby: Gauge::default(),
            last_confirm: Gauge::default(),
            lag_seconds: Gauge::default(),
            published: Counter::default(),
            confirmed: Counter::default(),
            dead_lettered: Family::default(),
            ignored: Family::default(),
            transactions: Counter::default(),
            inflight_messages: Gauge::default(),
            inflight_bytes: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            server_wal_end: Gauge::default(),
            lag_bytes: Gauge::default(),
            slot_wal_status: Family::default(),
            slot_safe_wal_size: Gauge::default(),
            slot_failover: Gauge::default(),
            broker_blocked: Gauge::default(),
            // 0.5 ms .. ~33 s
            commit_to_confirm: Histogram::new(exponential_buckets(0.0005, 2.0, 17)),
            reconnects: Family::default(),
        };
        registry.register(
            "events_published",
            "Events handed to the broker, dead-letter copies included",
            metrics.published.clone(),
        );
        registry.register(
            "events_confirmed",
            "Events the broker confirmed",
            metrics.confirmed.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events sent to the dead-letter exchange, by reason",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "events_ignored",
            "Outbox changes that are not events (update, delete, truncate) and returns dropped by policy",
            metrics.ignored.clone(),
        );
        registry.register(
            "transactions",
            "Transactions read from the slot",
            metrics.transactions.clone(),
        );
        registry.register(
            "inflight_messages",
            "Messages published and not yet confirmed",
            metrics.inflight_messages.clone(),
        );
        registry.register(
            "inflight_bytes",
            "Bytes of message bodies published and not yet confirmed",
            metrics.inflight_bytes.clone(),
        );
        registry.register(
            "confirmed_lsn",
            "The WAL position last acknowledged to PostgreSQL (as a number)",
            metrics.confirmed_lsn.clone(),
        );
        registry.register(
            "server_wal_end",
            "The server's WAL end as last reported by the walsender (as a number)",
            metrics.server_wal_end.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "Bytes of WAL between the server's end and the acknowledged position",
            metrics.lag_bytes.clone(),
        );
        registry.register(
            "slot_wal_status",
            "The slot's wal_status in pg_replication_slots: 1 for the current one (reserved, \
             extended, unreserved, lost), read every 10 s; lost means the slot was invalidated",
            metrics.slot_wal_status.clone(),
        );
        registry.register(
            "slot_safe_wal_size_bytes",
            "Bytes of WAL that can still be written before the slot is in danger of losing \
             what it needs (safe_wal_size); -1 when max_slot_wal_keep_size is unbounded",
            metrics.slot_safe_wal_size.clone(),
        );
        registry.register(
            "slot_failover",
            "1 when the slot is a failover slot synced to standbys (PostgreSQL 17+), else 0",
            metrics.slot_failover.clone(),
        );
        registry.register(
            "broker_blocked",
            "1 while the broker blocks publishing (connection.blocked: a memory or disk alarm); \
             nothing is published or acknowledged meanwhile",
            metrics.broker_blocked.clone(),
        );
        registry.register(
            "events_not_confirmed",
            "Messages handed to the broker whose confirm will not come, by outcome: returned (no \
             queue took it; its dead-letter copy is published instead) or rewound (in flight when \
             a rewind or a stop dropped it; the slot sends its row again). published = confirmed \
             + not_confirmed + inflight_messages",
            metrics.not_confirmed.clone(),
        );
        registry.register(
            "standby",
            "1 while this relay waits as a standby for the slot another relay holds, else 0",
            metrics.standby.clone(),
        );
        registry.register(
            "last_confirm_timestamp_seconds",
            "When the broker last confirmed a message, seconds since the UNIX epoch (0 before the \
             first)",
            metrics.last_confirm.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Seconds the oldest event the relay holds unconfirmed has waited since its commit; 0 \
             when nothing waits (a walsender still decoding a large transaction shows in \
             replication_lag_bytes only)",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "commit_to_confirm_seconds",
            "Seconds from an event's commit timestamp to the broker's confirm",
            metrics.commit_to_confirm.clone(),
        );
        registry.register(
            "reconnects",
            "Reconnects, by side (postgres, rabbitmq) and reason",
            metrics.reconnects.clone(),
        );
        registry.register(
            "table_events_confirmed",
            "Events the broker confirmed, by outbox table (dead-letter copies included; \
             pg_logical_emit_message for envelopes)",
            metrics.table_confirmed.clone(),
        );
        registry.register(
            "table_events_dead_lettered",
            "Events sent to the dead-letter exchange, by outbox table and reason",
            metrics.table_dead_lettered.clone(),
        );
        // Known label values start at 0, so that rate() and alerts see the
        // series before the first event of each kind.
        for reason in crate::mapping::DeadLetterReason::ALL {
            let _ = metrics.dead_lettered.get_or_create(&ReasonLabels {
                reason: reason.as_str().into(),
            });
        }
        for kind in ["update", "delete", "truncate", "no_route_dropped"] {
            let _ = metrics.ignored.get_or_create(&ReasonLabels {
                reason: kind.into(),
            });
        }
        for status in WAL_STATUSES {
            let _ = metrics
                .slot_wal_status
                .get_or_create(&StatusLabels { status });
        }
        metrics.slot_safe_wal_size.set(-1);
        for outcome in ["returned", "rewound"] {
            let _ = metrics
                .not_confirmed
                .get_or_create(&OutcomeLabels { outcome });
        }
        for side in ["postgres", "rabbitmq"] {
            let _ = metrics.reconnects.get_or_create(&ReconnectLabels {
                side,
                reason: "connection_lost".into(),
            });
        }
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: crate::cli::COMMIT.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The relay's version and the commit it was built from (always 1)",
            build,
        );
        (metrics, root)
    }

    /// Names the configured outbox tables (in the mapping's order) and
    /// starts their series at 0, with the emit-message envelopes' when
    /// `emit_messages`.
    pub fn set_tables(&mut self, tables: &[String], emit_messages: bool) {
        let mut shown = tables.to_vec();
        if emit_messages {
            shown.push(EMIT_MESSAGE_TABLE.to_string());
        }
        for table in &shown {
            let _ = self.table_confirmed.get_or_create(&TableLabels {
                table: table.clone(),
            });
            for reason in crate::mapping::DeadLetterReason::ALL {
                let _ = self.table_dead_lettered.get_or_create(&TableReasonLabels {
                    table: table.clone(),
                    reason: reason.as_str().into(),
                });
            }
        }
        self.table_confirmed_by_index = Arc::new(
            tables
                .iter()
                .map(|table| {
                    self.table_confirmed
                        .get_or_create(&TableLabels {
                            table: table.clone(),
                        })
                        .clone()
                })
                .collect(),
        );
        self.table_names = Arc::new(tables.to_vec());
    }

    /// The label of a table index (None or unknown: the envelopes').
    fn table_label(&self, table: Option<usize>) -> &str {
        table
            .and_then(|i| self.table_names.get(i))
            .map_or(EMIT_MESSAGE_TABLE, String::as_str)
    }

    /// Counts a confirmed event of a table (None: an envelope).
    pub fn confirmed_of(&self, table: Option<usize>) {
        match table.and_then(|i| self.table_confirmed_by_index.get(i)) {
            Some(counter) => {
                counter.inc();
            }
            None => {
                self.table_confirmed
                    .get_or_create(&TableLabels {
                        table: self.table_label(table).to_string(),
                    })
                    .inc();
            }
        }
    }

    /// Counts a dead-lettered event of a table (None: an envelope).
    pub fn dead_letter_of(&self, table: Option<usize>, reason: &str) {
        self.dead_letter(reason);
        self.table_dead_lettered
            .get_or_create(&TableReasonLabels {
                table: self.table_label(table).to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a reconnect.
    pub fn reconnect(&self, side: Side, reason: &str) {
        self.reconnects
            .get_or_create(&ReconnectLabels {
                side: match side {
                    Side::Postgres => "postgres",
                    Side::Rabbitmq => "rabbitmq",
                },
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts an ignored change.
    pub fn ignore(&self, kind: &str) {
        self.ignored
            .get_or_create(&ReasonLabels {
                reason: kind.to_string(),
            })
            .inc();
    }

    /// Counts a dead-lettered event.
    pub fn dead_letter(&self, reason: &str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// How long work may wait without a single confirm before `/healthz`
/// calls the relay stuck (unless the broker is down or blocks publishing:
/// then it waits for the broker, which a restart would not change).
pub const STUCK_AFTER: Duration = Duration::from_secs(120);

/// The health facts, set by the pipeline.
///
/// Ready (`/readyz`): streaming with the broker connected, or waiting as a
/// standby for the slot, which is a healthy member of a pair. Live
/// (`/healthz`): not stuck, where stuck means events have waited for a
/// confirm for [`STUCK_AFTER`] with the broker connected and not blocking.
#[derive(Debug, Default)]
pub struct Health {
    streaming: AtomicBool,
    broker: AtomicBool,
    standby: AtomicBool,
    blocked: AtomicBool,
    /// Seconds since the epoch of the last successful ack, 0 if none.
    last_ack: AtomicI64,
    /// Milliseconds since the epoch: since when events wait for a confirm
    /// (0: nothing waits), and the last confirm.
    waiting_since_ms: AtomicI64,
    last_confirm_ms: AtomicI64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Health {
    /// Streaming from the slot (or not).
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
    }

    /// Connected to the broker (or not). A new connection restarts the
    /// clock of [`live_at`](Self::live_at).
    pub fn set_broker(&self, on: bool) {
        if on && !self.broker.swap(true, Ordering::Relaxed) {
            self.confirmed_now();
        }
        self.broker.store(on, Ordering::Relaxed);
    }

    /// Waiting as a standby for the slot (or not).
    pub fn set_standby(&self, on: bool) {
        self.standby.store(on, Ordering::Relaxed);
    }

    /// The broker blocks publishing (or not). Lifting the block restarts
    /// the clock of [`live_at`](Self::live_at): what waited during the
    /// alarm gets its full time again.
    pub fn set_blocked(&self, on: bool) {
        if !on && self.blocked.swap(false, Ordering::Relaxed) {
            self.confirmed_now();
        }
        self.blocked.store(on, Ordering::Relaxed);
    }

    /// Whether events wait for a confirm (set after each step of the core).
    pub fn set_waiting(&self, waiting: bool) {
        if !waiting {
            self.waiting_since_ms.store(0, Ordering::Relaxed);
        } else if self.waiting_since_ms.load(Ordering::Relaxed) == 0 {
            self.waiting_since_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The broker confirmed (or returned) something: progress.
    pub fn confirmed_now(&self) {
        self.last_confirm_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// `active` (streaming, broker connected), `standby`, or `not_ready`.
    pub fn role(&self) -> &'static str {
        if self.streaming.load(Ordering::Relaxed) && self.broker.load(Ordering::Relaxed) {
            "active"
        } else if self.standby.load(Ordering::Relaxed) {
            "standby"
        } else {
            "not_ready"
        }
    }

    /// Whether the relay is ready: active, or a waiting standby.
    pub fn ready(&self) -> bool {
        self.role() != "not_ready"
    }

    /// Whether the relay is live at `now_ms` (see [`Health`]).
    pub fn live_at(&self, now_ms: i64) -> bool {
        let since = self.waiting_since_ms.load(Ordering::Relaxed);
        if since == 0
            || self.blocked.load(Ordering::Relaxed)
            || !self.broker.load(Ordering::Relaxed)
        {
            return true;
        }
        let progress = since.max(self.last_confirm_ms.load(Ordering::Relaxed));
        let limit = i64::try_from(STUCK_AFTER.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(progress) < limit
    }

    /// Records an acknowledgement sent to PostgreSQL.
    pub fn acked_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or(0);
        self.last_ack.store(now, Ordering::Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ready": self.ready(),
            "role": self.role(),
            "live": self.live_at(now_ms()),
            "streaming": self.streaming.load(Ordering::Relaxed),
            "broker_connected": self.broker.load(Ordering::Relaxed),
            "standby": self.standby.load(Ordering::Relaxed),
            "last_ack_unix": self.last_ack.load(Ordering::Relaxed),
        })
    }
}

/// Exports the health facts at each scrape: `outbox_relay_role{role}`
/// (1 for the current one of `active`, `standby`, `not_ready`) and
/// `outbox_relay_live` (0 when `/healthz` would call the relay stuck).
#[derive(Debug)]
pub struct HealthCollector(pub Arc<Health>);

impl prometheus_client::collector::Collector for HealthCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let current = self.0.role();
        let mut family = encoder.encode_descriptor(
            "outbox_relay_role",
            "1 for the relay's current role: active (streaming with the broker connected), \
             standby (waiting for the slot) or not_ready (starting, or waiting for PostgreSQL or \
             the broker)",
            None,
            MetricType::Gauge,
        )?;
        for role in ["active", "standby", "not_ready"] {
            let labels = [("role", role)];
            ConstGauge::new(i64::from(role == current)).encode(family.encode_family(&labels)?)?;
        }
        let live = ConstGauge::new(i64::from(self.0.live_at(now_ms())));
        live.encode(encoder.encode_descriptor(
            "outbox_relay_live",
            "0 when the relay is stuck (events waited 120 s without a confirm with the broker \
             connected and not blocking), else 1",
            None,
            live.metric_type(),
        )?)?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// What clients may hold of the endpoint (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection has to send a complete request head, from
    /// when it opens and from each response it was sent: also the
    /// keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// Connections open at once (at least 1); a new one past this closes
    /// the oldest.
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

/// How long a new connection waits for the slot of the connection closed
/// for it (which closes at once) before it is closed itself.
const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` within
/// `limits` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<Health>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let state = AppState {
        registry: Arc::new(registry),
        health,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let task = tokio::spawn(accept_loop(listener, app, limits, shutdown));
    Ok((bound, task))
}

/// Accepts connections until `shutdown`, each in a slot of its own, then
/// waits for every connection to close.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let http = Arc::new(http);
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(
        usize::try_from(max).unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let open = Arc::new(OpenConnections::default());
    let (stop, stopped) = watch::channel(false);
    let mut next_id: u64 = 0;
    let mut full = false;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                full = false;
                slot
            }
            Err(_) => {
                if !full {
                    tracing::warn!(
                        max_connections = max,
                        "the metrics endpoint is at its connection limit; \
                         closing the oldest connection for each new one"
                    );
                    full = true;
                }
                match free_oldest_slot(&slots, &open).await {
                    Some(slot) => slot,
                    // Dropping the stream closes it.
                    None => continue,
                }
            }
        };
        next_id += 1;
        let close = open.insert(next_id);
        tokio::spawn(serve_connection(
            stream,
            Connection {
                id: next_id,
                http: http.clone(),
                app: app.clone(),
                open: open.clone(),
                close,
                stopped: stopped.clone(),
                _slot: slot,
            },
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot: with all of them back, all are closed.
    let _ = slots.acquire_many(max).await;
}

/// Closes the oldest open connection and takes its slot, or None if there
/// is none to close or its slot does not come back within [`SLOT_WAIT`].
async fn free_oldest_slot(
    slots: &Arc<Semaphore>,
    open: &OpenConnections,
) -> Option<OwnedSemaphorePermit> {
    if !open.close_oldest() {
        return None;
    }
    tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// As `axum::serve` does: a failed handshake is the client's business; any
/// other error (out of descriptors) waits a moment before accepting again.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "the metrics endpoint could not accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The open connections by age, each with the signal that closes it.
#[derive(Debug, Default)]
struct OpenConnections(Mutex<BTreeMap<u64, Arc<Notify>>>);

impl OpenConnections {
    fn insert(&self, id: u64) -> Arc<Notify> {
        let close = Arc::new(Notify::new());
        self.lock().insert(id, close.clone());
        close
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Tells the oldest connection to close; false if none is open.
    fn close_oldest(&self) -> bool {
        // Taken out of the map, so that it is never chosen twice.
        let oldest = self.lock().pop_first();
        match oldest {
            Some((_, close)) => {
                close.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one connection's task holds.
#[derive(Debug)]
struct Connection {
    id: u64,
    http: Arc<http1::Builder>,
    app: Router,
    open: Arc<OpenConnections>,
    /// Notified when a new connection needs this one's slot.
    close: Arc<Notify>,
    stopped: watch::Receiver<bool>,
    /// Given back when the task ends.
    _slot: OwnedSemaphorePermit,
}

/// Serves one connection until the client or hyper (header timeout) ends
/// it, a new connection takes its slot (closed at once), or the endpoint
/// stops (closed once its response in progress is sent).
async fn serve_connection(stream: TcpStream, mut c: Connection) {
    let conn = c
        .http
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(c.app));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = c.close.notified() => Ok(()),
        () = async {
            // (the guard this returns must not live across the await below)
            let _ = c.stopped.wait_for(|stopped| *stopped).await;
        } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and resets are what a misbehaving client earns.
        tracing::trace!(error = %e, "metrics connection ended");
    }
    c.open.remove(c.id);
}

async fn metrics_handler(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::exposition::negotiate(accept);
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, format.content_type())],
            match format {
                crate::exposition::Format::OpenMetrics => body,
                crate::exposition::Format::Prometheus => {
                    crate::exposition::to_prometheus_text(&body)
                }
            },
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}"),
        ),
    }
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = state.health.json();
    if state.health.live_at(now_ms()) {
        body["status"] = "alive".into();
        (StatusCode::OK, Json(body))
    } else {
        body["status"] = format!(
            "stuck: events have waited over {} s for a confirm with the broker connected",
            STUCK_AFTER.as_secs()
        )
        .into();
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let code = if state.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(state.health.json()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    /// An endpoint within these limits; it stops when the sender is used
    /// or dropped.
    async fn endpoint(
        header_read_timeout: Duration,
        max_connections: u32,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (_, registry) = Metrics::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            Arc::new(Health::default()),
            Limits {
                header_read_timeout,
                max_connections,
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
        (addr, stop, task)
    }

    /// A connection that has sent `bytes`.
    async fn client(addr: SocketAddr, bytes: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes.as_bytes()).await.unwrap();
        stream
    }

    /// What the server sent until it closed the connection, and when it
    /// closed it; None if it is still open after `limit`.
    async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<(String, Instant)> {
        let mut received = Vec::new();
        let read = tokio::time::timeout(limit, async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()?;
        Some((String::from_utf8_lossy(&received).into_owned(), read))
    }

    const GET_HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n";

    #[tokio::test]
    async fn a_client_that_sends_no_complete_request_is_closed_after_the_header_timeout() {
        let timeout = Duration::from_millis(300);
        let (addr, _stop, _) = endpoint(timeout, 8).await;
        let start = Instant::now();
        let mut silent = client(addr, "").await;
        let mut partial = client(addr, "GET /metrics HTTP/1.1\r\nHost: re").await;
        // A kept-alive connection idles after its response: the same clock.
        let mut idle = client(addr, GET_HEALTHZ).await;
        for (stream, answer) in [
            (&mut silent, ""),
            (&mut partial, ""),
            (&mut idle, "HTTP/1.1 200 OK"),
        ] {
            let (received, at) = until_closed(stream, Duration::from_secs(3))
                .await
                .expect("closed by the server");
            assert!(at - start >= timeout, "closed after {:?}", at - start);
            assert!(received.starts_with(answer), "{received}");
            assert_eq!(received.is_empty(), answer.is_empty(), "{received}");
        }
    }

    #[tokio::test]
    async fn a_connection_past_the_limit_closes_the_oldest_and_is_served() {
        let (addr, _stop, _) = endpoint(Duration::from_secs(30), 2).await;
        let mut oldest = client(addr, "GET /metr").await;
        let mut newer = client(addr, "GET /metr").await;
        let mut scrape = client(addr, GET_HEALTHZ).await;
        let mut response = String::new();
        let mut buf = [0u8; 4096];
        while !response.contains("\"status\":\"alive\"") {
            let n = tokio::time::timeout(Duration::from_secs(3), scrape.read(&mut buf))
                .await
                .expect("the new connection is served")
                .unwrap();
            assert!(n > 0, "closed before answering: {response}");
            response.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(until_closed(&mut oldest, Duration::from_secs(1))
            .await
            .is_some());
        assert!(
            until_closed(&mut newer, Duration::from_millis(300))
                .await
                .is_none(),
            "only the oldest connection is closed"
        );
    }

    #[tokio::test]
    async fn stopping_closes_idle_connections_and_ends_the_endpoint() {
        let (addr, stop, task) = endpoint(Duration::from_secs(30), 8).await;
        let mut silent = client(addr, "").await;
        let mut kept_alive = client(addr, GET_HEALTHZ).await;
        let mut buf = [0u8; 4096];
        assert!(kept_alive.read(&mut buf).await.unwrap() > 0);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the endpoint ends once its connections are closed")
            .unwrap();
        for stream in [&mut silent, &mut kept_alive] {
            assert!(until_closed(stream, Duration::from_secs(1)).await.is_some());
        }
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[test]
    fn every_listed_series_is_exported() {
        let (m, registry) = Metrics::new();
        m.published.inc();
        m.dead_letter("oversize");
        m.ignore("delete");
        m.reconnect(Side::Rabbitmq, "connection_lost");
        m.commit_to_confirm.observe(0.004);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for series in [
            "outbox_relay_events_published_total 1",
            "outbox_relay_events_confirmed_total 0",
            "outbox_relay_events_dead_lettered_total{reason=\"oversize\"} 1",
            "outbox_relay_events_ignored_total{reason=\"delete\"} 1",
            "outbox_relay_transactions_total",
            "outbox_relay_inflight_messages",
            "outbox_relay_inflight_bytes",
            "outbox_relay_confirmed_lsn",
            "outbox_relay_server_wal_end",
            "outbox_relay_replication_lag_bytes",
            "outbox_relay_commit_to_confirm_seconds_bucket",
            "outbox_relay_reconnects_total{side=\"rabbitmq\",reason=\"connection_lost\"} 1",
            "outbox_relay_build_info{version=",
            "outbox_relay_events_not_confirmed_total{outcome=\"returned\"} 0",
            "outbox_relay_events_not_confirmed_total{outcome=\"rewound\"} 0",
            "outbox_relay_standby 0",
            "outbox_relay_last_confirm_timestamp_seconds 0",
            "outbox_relay_replication_lag_seconds 0",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn a_standby_is_ready_and_waiting_work_without_confirms_is_stuck_only_with_a_free_broker() {
        let h = Health::default();
        assert!(!h.ready());
        h.set_standby(true);
        assert!(h.ready());
        assert_eq!(h.role(), "standby");
        h.set_standby(false);
        h.set_streaming(true);
        h.set_broker(true);
        assert_eq!(h.role(), "active");
        let limit = i64::try_from(STUCK_AFTER.as_millis()).unwrap();
        // Nothing waits: live however long.
        assert!(h.live_at(now_ms() + 10 * limit));
        h.set_waiting(true);
        let since = h.waiting_since_ms.load(Ordering::Relaxed);
        assert!(h.live_at(since + limit - 1));
        assert!(!h.live_at(since + limit + 1));
        // A confirm is progress.
        h.last_confirm_ms.store(since + limit, Ordering::Relaxed);
        assert!(h.live_at(since + limit + 1));
        assert!(!h.live_at(since + 2 * limit + 1));
        // Waiting for a blocked or lost broker is not stuck.
        h.set_blocked(true);
        assert!(h.live_at(since + 10 * limit));
        h.set_blocked(false);
        h.set_broker(false);
        assert!(h.live_at(since + 10 * limit));
        h.set_broker(true);
        h.set_waiting(false);
        assert!(h.live_at(since + 10 * limit));
    }

    #[test]
    fn ready_needs_both_the_stream_and_the_broker() {
        let h = Health::default();
        assert!(!h.ready());
        h.set_streaming(true);
        assert!(!h.ready());
        h.set_broker(true);
        assert!(h.ready());
        assert_eq!(h.json()["ready"], true);
    }
}
