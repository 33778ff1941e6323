//! Metrics and health: what an operator scrapes and what an orchestrator
//! probes.
//!
//! [`Metrics`] holds every series (prometheus-client does the exposition:
//! no hand-formatted text); [`Health`] holds the two readiness facts
//! (streaming from the slot, connected to the broker). [`serve`] exposes
//! `/metrics` (OpenMetrics text, which Prometheus reads), `/healthz`
//! (process alive) and `/readyz` (streaming and broker connected; 503
//! otherwise), both JSON, on `metrics_addr`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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

/// Labels of `outbox_relay_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The relay's version.
    pub version: String,
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
}

impl Metrics {
    /// Creates every series and registers it.
    pub fn new() -> (Metrics, Registry) {
        let mut registry = Registry::with_prefix("outbox_relay");
        let metrics = Metrics {
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
            "commit_to_confirm_seconds",
            "Seconds from an event's commit timestamp to the broker's confirm",
            metrics.commit_to_confirm.clone(),
        );
        registry.register(
            "reconnects",
            "Reconnects, by side (postgres, rabbitmq) and reason",
            metrics.reconnects.clone(),
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
            })
            .set(1);
        registry.register("build_info", "The relay's version (always 1)", build);
        (metrics, registry)
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

/// The readiness facts, set by the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    streaming: AtomicBool,
    broker: AtomicBool,
    standby: AtomicBool,
    /// Seconds since the epoch of the last successful ack, 0 if none.
    last_ack: AtomicI64,
}

impl Health {
    /// Streaming from the slot (or not).
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
    }

    /// Connected to the broker (or not).
    pub fn set_broker(&self, on: bool) {
        self.broker.store(on, Ordering::Relaxed);
    }

    /// Waiting as a standby for the slot (or not).
    pub fn set_standby(&self, on: bool) {
        self.standby.store(on, Ordering::Relaxed);
    }

    /// Whether the relay is streaming with the broker connected.
    pub fn ready(&self) -> bool {
        self.streaming.load(Ordering::Relaxed) && self.broker.load(Ordering::Relaxed)
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
            "streaming": self.streaming.load(Ordering::Relaxed),
            "broker_connected": self.broker.load(Ordering::Relaxed),
            "standby": self.standby.load(Ordering::Relaxed),
            "last_ack_unix": self.last_ack.load(Ordering::Relaxed),
        })
    }
}

#[derive(Debug, Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until
/// `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
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
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
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
    body["status"] = "alive".into();
    Json(body)
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
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
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
