//! The `outbox-relay` binary: parses the command line, resolves the
//! settings, sets up logging and hands off to the library. Errors reach the
//! user through anyhow, one line each, and a non-zero exit.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use outbox_relay::cli::{Cli, Command, LogFormatArg};
use outbox_relay::config::{self, Config, LogFormat, Resolved};
use outbox_relay::metrics::{self, Health, Metrics};
use outbox_relay::{check, ops, pipeline, prereq};
use tokio::sync::watch;
use tracing::Instrument;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let resolved = load_settings(&cli)?;
    init_logging(&cli, &resolved);
    for (var, suggestion) in &resolved.unknown_env {
        match suggestion {
            Some(meant) => {
                tracing::warn!(variable = %var, did_you_mean = %meant, "ignoring an environment variable that names no setting (see `outbox-relay config`)")
            }
            None => {
                tracing::warn!(variable = %var, "ignoring an environment variable that names no setting (see `outbox-relay config`)")
            }
        }
    }
    let settings = resolved.settings.clone();
    let parsed = settings.parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Config => {
            for (key, value) in settings.redacted() {
                let source = resolved
                    .sources
                    .get(key)
                    .copied()
                    .unwrap_or(config::Source::Default);
                println!(
                    "{key:<22} {value:<40} ({source}, {})",
                    config::env_name(key)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let lines = match &parsed {
                Ok(config) => runtime.block_on(check::preflight(config)),
                Err(e) => vec![prereq::Line::fail(
                    "settings",
                    e.to_string(),
                    "fix the setting (`outbox-relay config` shows them all)",
                )],
            };
            print!("{}", prereq::render(&lines));
            Ok(if lines.iter().any(|l| l.failed()) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Setup {
            print_sql: true,
            role,
        } => {
            print!("{}", ops::setup_sql(&parsed?, role.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Setup { .. } => {
            let config = parsed?;
            for line in runtime.block_on(ops::setup(&config))? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = parsed?;
            let status = runtime.block_on(ops::status(&config))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { no_standby } => {
            let config = parsed?;
            // The pipeline runs as a task, not on the main thread: the
            // broker driver and the replication stream wake it many times
            // a second, and a wake-up between tasks of one worker is far
            // cheaper than unparking another thread.
            runtime.block_on(async move {
                tokio::spawn(run_relay(config, no_standby))
                    .await
                    .context("the relay task panicked")?
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `outbox-relay run`: metrics endpoint, signal handling, the pipeline.
async fn run_relay(config: Config, no_standby: bool) -> anyhow::Result<()> {
    let (metrics, registry) = Metrics::new();
    let health = Arc::new(Health::default());
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "stop requested; finishing in-flight work (send the signal again to exit at once)"
        );
        let _ = stop.send(true);
        wait_for_signal().await;
        tracing::warn!("second stop signal: exiting without waiting");
        std::process::exit(130);
    });
    if let Some(addr) = config.metrics_addr {
        let mut stopped = shutdown.clone();
        let limits = metrics::Limits::default();
        let (bound, _server) = metrics::serve(addr, registry, health.clone(), limits, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
        .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(addr = %bound, "metrics on /metrics, health on /healthz and /readyz");
    }
    let span = tracing::info_span!(
        "relay",
        slot = %config.slot,
        table = %config.mapping.table,
        exchange = %config.mapping.exchange
    );
    let ctx = pipeline::Context {
        metrics,
        health,
        shutdown,
    };
    pipeline::run(config, no_standby, ctx)
        .instrument(span)
        .await
        .map_err(anyhow::Error::from)?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves at SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn load_settings(cli: &Cli) -> anyhow::Result<Resolved> {
    let file = match &cli.global.config {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?,
        )),
        None => None,
    };
    Ok(config::resolve(
        file.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        std::env::vars(),
    )?)
}

/// The log filter: RELAY_LOG (default `info`), with lapin never above
/// debug: at trace it logs every AMQP frame, the login frame with its
/// password included.
fn log_filter(user: Option<&str>) -> String {
    let user = user
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let mut mentions_lapin = false;
    let directives: Vec<String> = user
        .split(',')
        .map(|d| {
            let d = d.trim();
            if d.starts_with("lapin") {
                mentions_lapin = true;
                if d.to_ascii_lowercase().ends_with("=trace") {
                    return amqp_sink::LOG_DIRECTIVES.to_string();
                }
            }
            d.to_string()
        })
        .collect();
    let mut filter = directives.join(",");
    if !mentions_lapin {
        filter.push_str(",lapin=warn");
    }
    filter
}

fn init_logging(cli: &Cli, resolved: &Resolved) {
    let format = match cli.global.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => resolved.settings.log_format,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(
        std::env::var("RELAY_LOG").ok().as_deref(),
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn"));
    // Colours only on a terminal: log files and shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
