//! `saga`: set up, run and check the order saga (see the crate's
//! documentation and the README's "Building on outbox-relay").

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use saga::runner::{self, FailureRates};
use saga::schema;
use saga::services::{Service, ServiceHandler};

#[derive(Debug, Parser)]
#[command(
    name = "saga",
    about = "An order saga on outbox-relay and the inbox crate"
)]
struct Cli {
    /// PostgreSQL URL (the saga's database).
    #[arg(long, env = "SAGA_PG_URL", global = true, default_value = "")]
    pg: String,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "SAGA_AMQP_URL",
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp: String,
    /// Prefix of the exchanges and queues (keeps runs apart on a shared
    /// broker).
    #[arg(long, env = "SAGA_PREFIX", global = true, default_value = "saga")]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates the three schemas (outbox, inbox, state) and the exchanges.
    Setup,
    /// Prints the outbox-relay settings for the saga (three [[table]]
    /// entries, one slot).
    RelayConfig,
    /// Runs one service's inbox consumer until SIGTERM or Ctrl-C.
    Service {
        /// orders, payments or stock.
        name: String,
        /// Workers (each with a database connection).
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Places orders at a rate, waits for them to end, checks the saga
    /// and prints the latencies.
    Place {
        /// Orders per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// How many.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Share of payments declined.
        #[arg(long, default_value_t = 0.10)]
        decline_rate: f64,
        /// Share of stock shortages.
        #[arg(long, default_value_t = 0.05)]
        shortage_rate: f64,
        /// Share of failed captures.
        #[arg(long, default_value_t = 0.0)]
        capture_failure_rate: f64,
        /// Seed of the failure draws.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long to wait for every order to end, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// The polling publisher, in place of outbox-relay (for comparison).
    Poll {
        /// Sleep between empty polls, in milliseconds.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    anyhow::ensure!(!url.is_empty(), "give --pg (or SAGA_PG_URL)");
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SAGA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => {
            let client = connect(&cli.pg).await?;
            client
                .batch_execute(&schema::ddl())
                .await
                .context("creating the schemas")?;
            saga::poller::declare_exchanges(&cli.amqp, &cli.prefix).await?;
            println!("the saga's schemas and exchanges are ready");
        }
        Command::RelayConfig => print!("{}", schema::relay_toml(&cli.prefix)),
        Command::Service { name, concurrency } => {
            let service = Service::parse(&name)
                .with_context(|| format!("{name}: give orders, payments or stock"))?;
            saga::poller::declare_exchanges(&cli.amqp, &cli.prefix).await?;
            let config = service.inbox_config(&cli.amqp, &cli.prefix, concurrency);
            let pg: tokio_postgres::Config = cli.pg.parse().context("--pg")?;
            let consumer =
                inbox::Inbox::new(config, pg, tokio_postgres::NoTls, ServiceHandler(service))?;
            consumer.migrate().await?;
            consumer.declare().await?;
            tracing::info!(service = service.name(), "service ready");
            consumer.run(stopped()).await?;
        }
        Command::Place {
            rate,
            count,
            decline_rate,
            shortage_rate,
            capture_failure_rate,
            seed,
            wait,
        } => {
            let mut client = connect(&cli.pg).await?;
            let failures = FailureRates {
                decline: decline_rate,
                shortage: shortage_rate,
                capture_failure: capture_failure_rate,
            };
            let ids = runner::place(&mut client, rate, count, failures, seed).await?;
            runner::wait(&client, &ids, Duration::from_secs(wait)).await?;
            let report = runner::verify(&client, &ids).await?;
            print!("{}", report.render());
            let latencies = runner::latencies(&client, &ids).await?;
            let q = |p| runner::quantile(&latencies, p).as_secs_f64() * 1000.0;
            println!(
                "commit -> terminal state at {rate} orders/s: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                q(0.5),
                q(0.95),
                q(0.99),
                q(1.0)
            );
            if !report.violations.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Poll { interval_ms } => {
            let mut client = connect(&cli.pg).await?;
            saga::poller::declare_exchanges(&cli.amqp, &cli.prefix).await?;
            tracing::info!("polling publisher ready");
            tokio::select! {
                r = saga::poller::run(&mut client, &cli.amqp, &cli.prefix, Duration::from_millis(interval_ms)) => r?,
                () = stopped() => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
