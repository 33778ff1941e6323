//! The `outbox-relay` binary: parses the command line, resolves the
//! settings, sets up logging and hands off to the library. Errors reach the
//! user through anyhow, one line each, and a non-zero exit.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use outbox_relay::cli::{Cli, Command, DeadLetterCommand, LogFormatArg};
use outbox_relay::config::{self, Config, LogFormat, Resolved};
use outbox_relay::metrics::{self, Health, Metrics};
use outbox_relay::{check, ops, pipeline, prereq};
use tokio::sync::watch;
use tracing::Instrument;
use tracing_subscriber::filter::{Directive, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The log format once logging is set up (a fatal error is written in it).
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status_json = matches!(cli.command, Command::Status { json: true });
    let asked_format = cli.global.log_format;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let error = format!("{e:#}");
            if status_json {
                // A script reads stdout: it gets an object either way.
                println!("{}", serde_json::json!({ "error": error }));
            }
            fatal(&error, asked_format);
            ExitCode::FAILURE
        }
    }
}

/// The line that says why the command failed: a log record in JSON when
/// the logs are JSON (also when the settings that would say so failed to
/// load and only `--log-format json` or RELAY_LOG_FORMAT=json did), else
/// `error: ...` on stderr.
fn fatal(error: &str, asked: Option<LogFormatArg>) {
    let json = match LOG_FORMAT.get() {
        Some(format) => *format == LogFormat::Json,
        None => match asked {
            Some(LogFormatArg::Json) => true,
            Some(LogFormatArg::Text) => false,
            None => std::env::var("RELAY_LOG_FORMAT")
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("json")),
        },
    };
    if !json {
        eprintln!("error: {error}");
        return;
    }
    if LOG_FORMAT.get().is_none() {
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init();
    }
    tracing::error!(target: "outbox_relay", error, "the command failed");
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completions { shell } = cli.command {
        // Needs no settings: a package build runs it.
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "outbox-relay", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Config {
        from_debezium: Some(path),
    } = &cli.command
    {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let converted =
            outbox_relay::debezium::convert(&outbox_relay::debezium::parse_properties(&text));
        print!("{}", converted.render(&path.display().to_string()));
        return Ok(ExitCode::SUCCESS);
    }
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
    // One worker thread: the pipeline, amqp-sink's driver, the feedback
    // task and the HTTP server are tasks on it, so a hand-off between them
    // is a queue push on the same thread, never the wake-up of another
    // (with two workers each hand-off could wake the idle one; one run of
    // relay-bench each way: 1.84 against 1.74 CPU s per 100k events in the
    // drain, p99 106 against 62 ms at 10,000 events/s). lapin's heartbeat
    // and its socket's readiness run on it too; lapin's I/O thread is the
    // only other busy thread. The pipeline yields to them every 128 frames
    // whatever it reads, and its own work is well under a core at the
    // broker's pace.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Config { .. } => {
            for (key, value) in settings.redacted() {
                let source = resolved
                    .sources
                    .get(key)
                    .copied()
                    .unwrap_or(config::Source::Default);
                println!(
                    "{key:<27} {value:<40} ({source}, {})",
                    config::env_name(key)
                );
            }
            if let (Ok(config), config::Tables::Many(_)) = (&parsed, &settings.table) {
                // Each table's effective mapping (its entry over the top
                // level).
                for t in &config.mapping.tables {
                    println!(
                        "[[table]] {}: exchange {}, routing_key {}, id {}, payload {}, type {}, \
                         timestamp {}, content_type {}, headers {}",
                        t.table,
                        t.exchange,
                        t.routing_key,
                        t.id_column,
                        t.payload_column,
                        or_none(&t.type_column),
                        or_none(&t.timestamp_column),
                        t.content_type,
                        if t.header_columns.is_empty() {
                            "(every other column)".to_string()
                        } else {
                            t.header_columns.join(",")
                        },
                    );
                }
            }
            if let Err(e) = &parsed {
                // Shown, not fatal: `config` is where one looks for it.
                eprintln!("warning: these settings do not parse: {e}");
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
        Command::Completions { .. } => Ok(ExitCode::SUCCESS),
        Command::Teardown { yes } => {
            let config = parsed?;
            if !yes && !confirm_teardown(&config)? {
                eprintln!("nothing dropped");
                return Ok(ExitCode::FAILURE);
            }
            for line in runtime.block_on(ops::teardown(&config))? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            ids,
            since,
            until,
            aggregate,
            aggregate_column,
            table,
        } => {
            let config = parsed?;
            let selection = outbox_relay::replay::Selection {
                ids,
                since,
                until,
                aggregate,
                aggregate_column,
                table,
            };
            let summary = runtime
                .block_on(outbox_relay::replay::replay(&config, &selection))
                .map_err(anyhow::Error::msg)?;
            for (what, why) in &summary.failed {
                println!("failed   {what}: {why}");
            }
            println!(
                "replayed {} rows in {:.1} s: {} confirmed, {} failed",
                summary.rows,
                summary.elapsed.as_secs_f64(),
                summary.confirmed,
                summary.failed.len()
            );
            Ok(if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::DeadLetters(action) => {
            let config = parsed?;
            runtime.block_on(dead_letters(&config, action))
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

/// Asks on the terminal before `teardown` drops anything; refuses without
/// a terminal (then `--yes` says it).
fn confirm_teardown(config: &Config) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "teardown drops slot {} and publication {}: refusing without a terminal to ask on; \
             run it with --yes to mean it",
            config.slot,
            config.publication
        );
    }
    eprintln!("{}", ops::teardown_plan(config));
    eprint!("Type the slot's name ({}) to go on: ", config.slot);
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == config.slot)
}

/// `outbox-relay dead-letters ...`.
async fn dead_letters(config: &Config, action: DeadLetterCommand) -> anyhow::Result<ExitCode> {
    use outbox_relay::dead_letters::{self as dl, Reader, Selection};
    let sink_config = outbox_relay::sink::amqp::sink_config(config).map_err(anyhow::Error::msg)?;
    let mut last = None;
    let mut inspector = None;
    for broker in &sink_config.brokers {
        match amqp_sink::Inspector::connect(&sink_config, broker).await {
            Ok(i) => {
                inspector = Some(i);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(inspector) = inspector else {
        anyhow::bail!(
            "cannot reach the broker: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        );
    };
    let connection = inspector.connection();
    let queue = &config.dead_letter_queue;
    let reader = Reader::open(connection, queue)
        .await
        .map_err(anyhow::Error::msg)?;
    let limit = match &action {
        DeadLetterCommand::List { limit, .. }
        | DeadLetterCommand::Count { limit }
        | DeadLetterCommand::Republish { limit, .. } => *limit,
    };
    let letters = reader.read(limit).await.map_err(anyhow::Error::msg)?;
    let read_note = if letters.len() < usize::try_from(reader.total).unwrap_or(usize::MAX) {
        format!(
            " (read {} of {} in the queue: raise --limit for the rest)",
            letters.len(),
            reader.total
        )
    } else {
        String::new()
    };
    let code = match action {
        DeadLetterCommand::List { json: true, .. } => {
            let items: Vec<serde_json::Value> = letters
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "reason": l.reason,
                        "id": l.id,
                        "lsn": l.lsn,
                        "detail": l.detail,
                        "exchange": l.destination.as_ref().map(|d| &d.0),
                        "routing_key": l.destination.as_ref().map(|d| &d.1),
                        "body_bytes": l.body_len,
                        "delivery_count": l.delivery_count,
                        "republishable": l.restored.is_ok(),
                        "not_republishable_because": l.restored.as_ref().err(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "queue": queue,
                    "in_queue": reader.total,
                    "dead_letters": items,
                    "by_reason": dl::by_reason(&letters),
                }))?
            );
            ExitCode::SUCCESS
        }
        DeadLetterCommand::List { .. } => {
            for l in &letters {
                let to = l
                    .destination
                    .as_ref()
                    .map(|(e, r)| format!("{e} {r}"))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<18} {:<38} lsn {:<12} to {:<30} {}",
                    l.reason,
                    l.id.as_deref().unwrap_or("-"),
                    l.lsn,
                    to,
                    l.detail
                );
            }
            print_counts(&letters, queue, &read_note);
            ExitCode::SUCCESS
        }
        DeadLetterCommand::Count { .. } => {
            print_counts(&letters, queue, &read_note);
            ExitCode::SUCCESS
        }
        DeadLetterCommand::Republish {
            reasons, ids, all, ..
        } => {
            let selection = Selection { all, reasons, ids };
            if selection.is_empty() {
                reader.close().await;
                anyhow::bail!("say which dead letters to publish again: --reason, --id or --all");
            }
            let outcomes = dl::republish(connection, &reader, &letters, &selection)
                .await
                .map_err(anyhow::Error::msg)?;
            let mut failed = 0;
            for o in &outcomes {
                match &o.result {
                    Ok(to) => println!("republished {} to {to}", o.what),
                    Err(why) => {
                        failed += 1;
                        println!("kept        {}: {why}", o.what);
                    }
                }
            }
            println!(
                "{} republished, {failed} kept in {queue}{read_note}",
                outcomes.len() - failed
            );
            if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    };
    reader.close().await;
    inspector.close().await;
    Ok(code)
}

fn print_counts(letters: &[outbox_relay::dead_letters::DeadLetter], queue: &str, note: &str) {
    let worn = letters.iter().map(|l| l.delivery_count).max().unwrap_or(0);
    if worn >= 10 {
        println!(
            "warning: a dead letter in {queue} was handed out {worn} times: each reading counts \
             one on a quorum queue, and RabbitMQ 4 drops a message at the queue's delivery-limit \
             (20 by default); republish or move them, or raise the limit with a policy"
        );
    }
    for (reason, n) in outbox_relay::dead_letters::by_reason(letters) {
        println!("{n:>8}  {reason}");
    }
    println!("{:>8}  dead letters in {queue}{note}", letters.len());
}

/// A column setting as `config` shows it.
fn or_none(column: &str) -> &str {
    if column.is_empty() {
        "(none)"
    } else {
        column
    }
}

/// `outbox-relay run`: metrics endpoint, signal handling, the pipeline.
async fn run_relay(config: Config, no_standby: bool) -> anyhow::Result<()> {
    let (mut metrics, mut registry) = Metrics::new();
    let tables: Vec<String> = config
        .mapping
        .table_names()
        .map(ToString::to_string)
        .collect();
    metrics.set_tables(&tables, !config.mapping.message_prefix.is_empty());
    let health = Arc::new(Health::default());
    registry.register_collector(Box::new(metrics::HealthCollector(health.clone())));
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
        table = %tables.join(", "),
        exchange = %match &config.mapping.tables[..] {
            [one] => one.exchange.to_string(),
            _ => "(per table)".to_string(),
        }
    );
    tokio::spawn(notify_service_manager(health.clone(), shutdown.clone()));
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

/// Under systemd (`Type=notify`, NOTIFY_SOCKET set): READY=1 once the relay
/// streams or waits as a standby, STATUS= as its role changes, STOPPING=1
/// when it stops. Without NOTIFY_SOCKET it does nothing.
async fn notify_service_manager(health: Arc<Health>, mut shutdown: watch::Receiver<bool>) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut told: Option<&'static str> = None;
    let mut ready = false;
    loop {
        let role = health.role();
        if told != Some(role) {
            let status = match role {
                "active" => "streaming from the slot to the broker",
                "standby" => "waiting as a standby for the slot",
                _ => "starting, or waiting for PostgreSQL or the broker",
            };
            let mut states = vec![NotifyState::Status(status)];
            if role != "not_ready" && !ready {
                ready = true;
                states.push(NotifyState::Ready);
            }
            if let Err(e) = sd_notify::notify(false, &states) {
                tracing::debug!(error = %e, "could not notify the service manager");
            }
            told = Some(role);
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
    }
    let _ = sd_notify::notify(
        false,
        &[NotifyState::Stopping, NotifyState::Status("stopping")],
    );
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

/// The most lapin may log: at TRACE it logs every AMQP frame, the login
/// frame with its password included.
const LAPIN_MAX: LevelFilter = LevelFilter::DEBUG;

/// lapin's target that logs a message the broker returned, whole (headers
/// and body: personal data), at WARN. Always off: the relay reports returns
/// itself.
const LAPIN_RETURNED: &str = "lapin::returned_messages";

/// RELAY_LOG made safe: the directives EnvFilter gets, and the ones it does
/// not (they do not parse).
#[derive(Debug)]
struct LogFilter {
    directives: String,
    ignored: Vec<String>,
}

/// The log filter: RELAY_LOG's directives (default `info`), then lapin's
/// cap, whatever RELAY_LOG says. Every directive whose target starts with
/// `lapin` is clamped to [`LAPIN_MAX`] (a bare target means TRACE), any
/// for `lapin::returned_messages` dropped; then come `lapin=off` (unless the
/// user set a level for `lapin` itself: its connection errors are reported
/// by the relay's own) and `lapin::returned_messages=off`.
///
/// EnvFilter lets the most specific target win (the longest; among equal
/// ones, the last): a user's `lapin::channels=trace` outranks `lapin=debug`,
/// hence the clamp of each rather than one directive appended. A span
/// directive without a target (`[relay]=trace`) is not a target's and is
/// capped by [`lapin_cap`] instead.
fn log_filter(user: Option<&str>) -> LogFilter {
    let mut directives = Vec::new();
    let mut ignored = Vec::new();
    let mut lapin_level_set = false;
    let user = user.unwrap_or_default();
    for directive in user.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.parse::<Directive>().is_err() {
            ignored.push(directive.to_string());
            continue;
        }
        let parts = DirectiveParts::of(directive);
        match parts.target {
            Some(target) if target.starts_with(LAPIN_RETURNED) => {}
            Some(target) if target.starts_with("lapin") => {
                lapin_level_set |= target == "lapin" && !parts.in_span;
                directives.push(if parts.level > LAPIN_MAX {
                    format!("{}={LAPIN_MAX}", parts.head)
                } else {
                    directive.to_string()
                });
            }
            _ => directives.push(directive.to_string()),
        }
    }
    if directives.is_empty() {
        directives.push("info".to_string());
    }
    if !lapin_level_set {
        directives.push("lapin=off".to_string());
    }
    directives.push(format!("{LAPIN_RETURNED}=off"));
    LogFilter {
        directives: directives.join(","),
        ignored,
    }
}

/// A directive `target[span{field=value}]=level` taken apart as EnvFilter
/// reads it (tracing-subscriber's `filter/env/directive.rs`).
#[derive(Debug)]
struct DirectiveParts<'a> {
    /// Everything before `=level`.
    head: &'a str,
    target: Option<&'a str>,
    /// Whether it has a span or field filter.
    in_span: bool,
    /// A missing or empty level means TRACE.
    level: LevelFilter,
}

impl<'a> DirectiveParts<'a> {
    /// The parts of a directive that parses.
    fn of(directive: &'a str) -> DirectiveParts<'a> {
        if !directive.contains(['=', '[']) {
            // A bare level (`debug`, `4`) or a bare target (all its levels).
            return match directive.parse::<LevelFilter>() {
                Ok(level) => DirectiveParts {
                    head: "",
                    target: None,
                    in_span: false,
                    level,
                },
                Err(_) => DirectiveParts {
                    head: directive,
                    target: Some(directive),
                    in_span: false,
                    level: LevelFilter::TRACE,
                },
            };
        }
        // Field values may hold '=': the level follows the span's ']'.
        let split = match directive.rfind(']') {
            Some(close) => directive.split_at(close + 1),
            None => directive.split_at(directive.find('=').unwrap_or(directive.len())),
        };
        let (head, level) = (split.0, split.1.strip_prefix('=').unwrap_or(split.1));
        DirectiveParts {
            head,
            target: head.split('[').next().filter(|t| !t.is_empty()),
            in_span: head.contains('['),
            level: match level {
                "" => LevelFilter::TRACE,
                level => level.parse().unwrap_or(LevelFilter::TRACE),
            },
        }
    }
}

/// lapin's cap as a filter of its own, beside the EnvFilter: a span
/// directive (`[relay]=trace`) enables every target inside that span, and
/// lapin's connection task runs inside the span that connected it.
fn lapin_cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("lapin", LAPIN_MAX)
        .with_target(LAPIN_RETURNED, LevelFilter::OFF)
}

fn init_logging(cli: &Cli, resolved: &Resolved) {
    let format = match cli.global.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => resolved.settings.log_format,
    };
    let filter = log_filter(std::env::var("RELAY_LOG").ok().as_deref());
    // Colours only on a terminal: log files and shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = LOG_FORMAT.set(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(&filter.directives))
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(lapin_cap())
            .init(),
        LogFormat::Text => builder.finish().with(lapin_cap()).init(),
    }
    for directive in &filter.ignored {
        tracing::warn!(%directive, "ignoring a RELAY_LOG directive that does not parse");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{Level, Subscriber};
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::Layer;

    use super::*;

    /// Records `target LEVEL` of each event that passes the filters.
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let meta = event.metadata();
            if let Ok(mut seen) = self.0.lock() {
                seen.push(format!("{} {}", meta.target(), meta.level()));
            }
        }
    }

    /// Events from lapin's targets and the relay's, at the levels that
    /// matter, half of them inside a span named `relay`.
    fn emit() {
        let events = || {
            tracing::event!(target: "lapin::io_loop", Level::TRACE, "frame");
            tracing::event!(target: "lapin::io_loop", Level::DEBUG, "throttling");
            tracing::event!(target: "lapin::channels", Level::TRACE, "frame");
            tracing::event!(target: "lapin::channels", Level::DEBUG, "heartbeat");
            tracing::event!(target: "lapin::channels", Level::ERROR, "connection error");
            tracing::event!(target: "lapin::returned_messages", Level::WARN, "returned");
            tracing::event!(target: "outbox_relay::pipeline", Level::TRACE, "ack");
            tracing::event!(target: "outbox_relay::pipeline", Level::DEBUG, "batch");
            tracing::event!(target: "outbox_relay::pipeline", Level::INFO, "streaming");
            tracing::event!(target: "walstream", Level::DEBUG, "keepalive");
        };
        events();
        let _span = tracing::info_span!("relay").entered();
        events();
    }

    /// What reaches the output under RELAY_LOG=`relay_log`: through the
    /// EnvFilter of [`log_filter`] alone, or with [`lapin_cap`] too.
    fn logged(relay_log: &str, with_cap: bool) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let env = EnvFilter::new(log_filter(Some(relay_log)).directives);
        let cap = with_cap.then(lapin_cap);
        let subscriber = tracing_subscriber::registry()
            .with(env)
            .with(cap)
            .with(Recorder(seen.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        seen
    }

    fn assert_lapin_capped(relay_log: &str, seen: &[String]) {
        for line in seen {
            assert!(
                !(line.starts_with("lapin") && line.ends_with("TRACE")),
                "RELAY_LOG={relay_log:?} lets lapin trace: {seen:?}"
            );
            assert!(
                !line.starts_with(LAPIN_RETURNED),
                "RELAY_LOG={relay_log:?} lets returned messages through: {seen:?}"
            );
        }
    }

    #[test]
    fn no_relay_log_value_lets_lapin_trace_or_log_returned_messages() {
        for relay_log in [
            "lapin",
            "lapin=5",
            "lapin=TRACE",
            "trace",
            "5",
            "lapin=trace,info",
            "lapin::channels=trace",
            "lapin::channels,lapin",
            "lapin:=trace",
            "lapin=",
            "lapin::returned_messages=warn,lapin=warn",
            "lapin::returned_messages::x=trace",
            "lapin[relay]=trace",
            "lapin[relay]",
            "",
        ] {
            // The EnvFilter alone already holds the cap...
            assert_lapin_capped(relay_log, &logged(relay_log, false));
            // ...and so does the whole stack.
            assert_lapin_capped(relay_log, &logged(relay_log, true));
        }
    }

    #[test]
    fn a_span_directive_does_not_lift_the_cap() {
        for relay_log in ["[relay]=trace", "[relay]", "info,[{slot}]=trace"] {
            let seen = logged(relay_log, true);
            assert_lapin_capped(relay_log, &seen);
        }
        let seen = logged("[relay]=trace", true);
        assert!(
            seen.contains(&"outbox_relay::pipeline TRACE".to_string()),
            "{seen:?}"
        );
    }

    #[test]
    fn the_users_other_directives_still_apply() {
        let has = |seen: &[String], line: &str| seen.iter().any(|l| l == line);
        let seen = logged("trace", true);
        assert!(has(&seen, "outbox_relay::pipeline TRACE"), "{seen:?}");
        assert!(has(&seen, "walstream DEBUG"), "{seen:?}");
        // By default lapin is off: its errors are reported by the relay's.
        assert!(!has(&seen, "lapin::channels ERROR"), "{seen:?}");

        let seen = logged("lapin=trace,info", true);
        assert!(has(&seen, "lapin::io_loop DEBUG"), "{seen:?}");
        assert!(has(&seen, "lapin::channels ERROR"), "{seen:?}");
        assert!(has(&seen, "outbox_relay::pipeline INFO"), "{seen:?}");
        assert!(!has(&seen, "outbox_relay::pipeline DEBUG"), "{seen:?}");

        let seen = logged("info,lapin::channels=trace", true);
        assert!(has(&seen, "lapin::channels DEBUG"), "{seen:?}");
        assert!(!has(&seen, "lapin::io_loop DEBUG"), "{seen:?}");
        assert!(has(&seen, "outbox_relay::pipeline INFO"), "{seen:?}");

        let seen = logged("info,outbox_relay=debug", true);
        assert!(has(&seen, "outbox_relay::pipeline DEBUG"), "{seen:?}");
        assert!(!has(&seen, "outbox_relay::pipeline TRACE"), "{seen:?}");
        assert!(!has(&seen, "walstream DEBUG"), "{seen:?}");

        let seen = logged("", true);
        assert!(has(&seen, "outbox_relay::pipeline INFO"), "{seen:?}");
        assert!(!has(&seen, "outbox_relay::pipeline DEBUG"), "{seen:?}");
    }

    #[test]
    fn directives_that_do_not_parse_are_set_aside() {
        let filter = log_filter(Some("info, ???, outbox_relay=debug,lapin=verbose"));
        assert_eq!(filter.ignored, ["???", "lapin=verbose"]);
        assert_eq!(
            filter.directives,
            "info,outbox_relay=debug,lapin=off,lapin::returned_messages=off"
        );
        let filter = log_filter(Some("???"));
        assert_eq!(
            filter.directives,
            "info,lapin=off,lapin::returned_messages=off"
        );
    }

    #[test]
    fn lapin_directives_are_clamped_not_dropped() {
        assert_eq!(
            log_filter(Some(
                "lapin,lapin::channels=5,lapin[conn]=trace,lapin::io_loop=info"
            ))
            .directives,
            "lapin=debug,lapin::channels=debug,lapin[conn]=debug,lapin::io_loop=info,\
             lapin::returned_messages=off"
        );
    }
}
