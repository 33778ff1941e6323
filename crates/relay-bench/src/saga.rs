//! The saga benchmark (`relay-bench --saga`): how long an order takes from
//! its commit to its terminal state (confirmed or cancelled) across the
//! three services of examples/saga, at given rates, with no faults; first
//! with outbox-relay carrying the events, then with the saga's polling
//! publisher in its place, each on a fresh cluster.
//!
//! A confirmed order crosses four events (order.placed ->
//! payment.authorised -> stock.reserved -> payment.captured), each written
//! to an outbox, carried to RabbitMQ, consumed by an inbox consumer that
//! applies it in its own transaction and writes the next. The figure
//! compares with the 1.8 s p95 that a published article on this
//! architecture reports for its event-driven design.

use std::time::Duration;

use anyhow::Context as _;
use e2e::amqp::{self, BrokerScope};
use e2e::{PgCluster, RelayProcess};
use saga::runner::{self, FailureRates};
use saga::schema;
use saga::services::Service;

/// The p95 the article reports, seconds.
pub const ARTICLE_P95_S: f64 = 1.8;

/// Which publisher carries the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// outbox-relay, one process for the three outboxes.
    Relay,
    /// The polling publisher, sleeping this long between empty polls.
    Poller(Duration),
}

impl Carrier {
    /// As the table names it.
    pub fn name(self) -> String {
        match self {
            Carrier::Relay => "outbox-relay".into(),
            Carrier::Poller(every) => format!("polling publisher ({} ms)", every.as_millis()),
        }
    }
}

/// One rate's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct RateFigures {
    /// Orders per second placed.
    pub rate: f64,
    /// Orders placed.
    pub orders: u64,
    /// Milliseconds: p50, p95, p99, max.
    pub p50_ms: f64,
    /// p95.
    pub p95_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
    /// Orders that did not end within the wait.
    pub unfinished: i64,
    /// Broken invariants (expected none).
    pub violations: usize,
}

/// Runs the saga with `carrier` at each rate for `secs` seconds of
/// placing.
pub async fn measure(
    carrier: Carrier,
    rates: &[f64],
    secs: f64,
) -> anyhow::Result<Vec<RateFigures>> {
    let say = |what: String| eprintln!("[relay-bench] saga, {}: {what}", carrier.name());
    say("starting a Postgres cluster and the services".into());
    let pg = tokio::task::block_in_place(PgCluster::start).context("starting Postgres")?;
    let scope = BrokerScope::connect()
        .await
        .context("connecting to RabbitMQ")?;
    let prefix = e2e::unique_name("bench-saga");
    for service in schema::SERVICES {
        scope.track_exchange(&schema::exchange(&prefix, service));
        let config = Service::parse(service)
            .context("a service")?
            .inbox_config("", &prefix, 1);
        for queue in config.topology().queues() {
            scope.track_queue(&queue);
        }
    }
    let bin = tokio::task::block_in_place(|| e2e::workspace_binary("saga", "saga"))
        .context("building the saga")?;
    let env = [
        ("SAGA_PG_URL", pg.url()),
        ("SAGA_AMQP_URL", amqp::amqp_url()),
        ("SAGA_PREFIX", prefix.clone()),
        ("SAGA_LOG", "warn,inbox=info,saga=info".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut setup = RelayProcess::spawn_program(&bin, ["setup"], &env)?;
    anyhow::ensure!(
        setup.wait(Duration::from_secs(60))?.success(),
        "saga setup failed: {}",
        setup.output()
    );
    let dir = tempfile::tempdir()?;
    let mut processes = Vec::new();
    match carrier {
        Carrier::Relay => {
            let config = dir.path().join("relay.toml");
            std::fs::write(&config, schema::relay_toml(&prefix))?;
            let dlx = e2e::unique_name("bench-saga-dlx");
            scope.track_exchange(&dlx);
            scope.track_queue(&dlx);
            let url = pg.url();
            let amqp_url = amqp::amqp_url();
            let relay_env = [
                ("RELAY_CONFIG", config.to_str().unwrap_or_default()),
                ("RELAY_PG_URL", url.as_str()),
                ("RELAY_AMQP_URL", amqp_url.as_str()),
                ("RELAY_DEAD_LETTER_EXCHANGE", dlx.as_str()),
                ("RELAY_DEAD_LETTER_QUEUE", dlx.as_str()),
                ("RELAY_METRICS_ADDR", ""),
                ("RELAY_LOG", "warn,outbox_relay=info"),
            ];
            let relay = RelayProcess::spawn(["run"], &relay_env)?;
            relay
                .wait_for_line("streaming from the slot", Duration::from_secs(60))
                .with_context(|| format!("the relay: {}", relay.output()))?;
            processes.push(relay);
        }
        Carrier::Poller(every) => {
            let interval = every.as_millis().to_string();
            let poller =
                RelayProcess::spawn_program(&bin, ["poll", "--interval-ms", &interval], &env)?;
            poller
                .wait_for_line("polling publisher ready", Duration::from_secs(60))
                .with_context(|| format!("the poller: {}", poller.output()))?;
            processes.push(poller);
        }
    }
    for service in schema::SERVICES {
        let p = RelayProcess::spawn_program(&bin, ["service", service], &env)?;
        p.wait_for_line("consuming", Duration::from_secs(60))
            .with_context(|| format!("{service}: {}", p.output()))?;
        processes.push(p);
    }
    let mut client = pg.client().await?;
    let failures = FailureRates {
        decline: 0.10,
        shortage: 0.05,
        capture_failure: 0.0,
    };
    // A short warm-up: connections, plans, the broker's queues.
    let warm = runner::place(&mut client, 20.0, 20, failures, 1).await?;
    runner::wait(&client, &warm, Duration::from_secs(60)).await?;
    let mut figures = Vec::new();
    for (n, &rate) in (2u64..).zip(rates) {
        let orders = (rate * secs).round().max(1.0);
        let count = format!("{orders}").parse::<u64>().unwrap_or(1);
        say(format!("{count} orders at {rate} orders/s"));
        let ids = runner::place(&mut client, rate, count, failures, n).await?;
        let unfinished = runner::wait(&client, &ids, Duration::from_secs(120)).await?;
        let report = runner::verify(&client, &ids).await?;
        let latencies = runner::latencies(&client, &ids).await?;
        let ms = |q| runner::quantile(&latencies, q).as_secs_f64() * 1000.0;
        figures.push(RateFigures {
            rate,
            orders: count,
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: ms(1.0),
            unfinished,
            violations: report.violations.len(),
        });
    }
    for mut p in processes {
        let _ = p.kill();
    }
    Ok(figures)
}

/// The table: each rate with both carriers beside the article's p95.
pub fn table(relay: &[RateFigures], poller: &[RateFigures], poller_name: &str) -> String {
    let mut out = format!(
        "| orders/s | outbox-relay p50 / p95 / p99 (ms) | {poller_name} p50 / p95 / p99 (ms) | \
         article p95 |\n|---|---|---|---|\n"
    );
    for (r, p) in relay.iter().zip(poller) {
        let cell = |f: &RateFigures| {
            let mut c = format!("{:.0} / {:.0} / {:.0}", f.p50_ms, f.p95_ms, f.p99_ms);
            if f.unfinished > 0 || f.violations > 0 {
                c.push_str(&format!(
                    " ({} unfinished, {} violations)",
                    f.unfinished, f.violations
                ));
            }
            c
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} |\n",
            r.rate,
            cell(r),
            cell(p),
            ARTICLE_P95_S * 1000.0
        ));
    }
    out
}
