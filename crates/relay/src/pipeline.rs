//! The pipeline's driver: start-up, the connections, the timers, and one
//! `select!` that feeds the core (`crate::core`) and applies what it
//! decides.
//!
//! Start-up judges the prerequisites exactly as `check` does
//! (`crate::prereq`) and refuses to start on a failure, creates what is
//! missing (publication, slot), connects the sink, and waits as a standby
//! while another process holds the slot. Then each session streams from the
//! slot's acked position until the core asks for a restart (a publish
//! failure, a lost stream, a refused row) or a stop.
//!
//! The loop's branch order is the priority: shutdown, then the sink's
//! outcomes (confirms free window room and advance the ack), then the drain
//! deadline, then the next frame, read only when the core wants one (so the
//! window bounds memory). Answering the server's keepalives is walstream's
//! feedback task, which this loop cannot block. Metrics are set here, from
//! the core's notes and counts; the core never sees them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amqp_sink::{Backoff, Repeats, Report};
use pgoutput::Lsn;
use tokio::sync::watch;
use tokio::time::Instant;
use walstream::{Frame, ReplicationClient, ReplicationStream, StartOptions};

use crate::config::{Config, SinkKind};
use crate::core::{Command, Core, Event, Note, Restart, RestartCause, Stop};
use crate::error::RunError;
use crate::mapping::{shown, Mapper};
use crate::metrics::{Health, Metrics, OutcomeLabels, Side};
use crate::names::TableName;
use crate::prereq::{self, Verdict};
use crate::sink::amqp::{self, AmqpSink};
use crate::sink::{Handed, NullSink, Outcome, Sink};
use crate::{catalog, pg, probe};

/// Shared handles for the pipeline.
#[derive(Debug, Clone)]
pub struct Context {
    /// The series.
    pub metrics: Metrics,
    /// Readiness.
    pub health: Arc<Health>,
    /// Becomes true when the relay must stop (SIGTERM, SIGINT).
    pub shutdown: watch::Receiver<bool>,
}

/// How long a lost stream waits for what is in flight before reconnecting.
const STREAM_DRAIN: Duration = Duration::from_secs(10);

/// How long rows held for the rest of their transaction (see
/// [`Sink::flush`]) wait for it, from the first one held, before they are
/// sent on anyway: PostgreSQL sends a transaction's changes back to back
/// once it committed, so the rest is normally there within microseconds.
const HOLD_FOR: Duration = Duration::from_millis(1);

/// Runs the relay until shutdown or an error no retry fixes.
pub async fn run(config: Config, no_standby: bool, ctx: Context) -> Result<(), RunError> {
    let standby = config.standby && !no_standby;
    let mut shutdown = ctx.shutdown.clone();
    let limits = amqp::limits(config.max_payload_bytes, amqp_sink::DEFAULT_FRAME_MAX);
    // Start-up ends at once on a stop signal, wherever it is waiting.
    let started = tokio::select! {
        started = start(&config, standby, &ctx) => started?,
        () = stopped(&mut shutdown) => None,
    };
    let Some((start, control, sink)) = started else {
        return Ok(());
    };
    let mapper = Mapper::new(config.mapping.clone(), limits);
    match sink {
        Some(sink) => stream(&config, standby, &ctx, control, sink, mapper, start).await,
        None => {
            let sink = NullSink::new(limits);
            tracing::warn!(
                "sink = null: every event is confirmed and thrown away (benchmarks only)"
            );
            stream(&config, standby, &ctx, control, sink, mapper, start).await
        }
    }
}

/// Resolves once a stop is asked for.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Sleeps `delay` unless a stop comes first; false on a stop.
async fn sleep_or_stop(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = stopped(shutdown) => false,
        () = tokio::time::sleep(delay) => !*shutdown.borrow(),
    }
}

/// Start-up: the prerequisites judged, the publication and slot created,
/// the sink connected, the slot free. `None` means the null sink.
async fn start(
    config: &Config,
    standby: bool,
    ctx: &Context,
) -> Result<Option<(Lsn, tokio_postgres::Client, Option<AmqpSink>)>, RunError> {
    let pg = config.pg()?;
    let control = connect_control(config, ctx).await?;
    let facts = probe::postgres(&control, config)
        .await
        .map_err(|e| RunError::Postgres {
            problem: format!("reading the catalog: {}", e.server_message()),
            fix: "see the server's message".into(),
        })?;
    let mut lines = vec![prereq::judge_tls(config)];
    lines.extend(prereq::judge_postgres(config, &facts));
    refuse_on_failures(&lines)?;
    let tables: Vec<TableName> = config.mapping.table_names().cloned().collect();
    if facts.publication.is_none() {
        catalog::create_publication(&control, &config.publication, &tables)
            .await
            .map_err(|e| RunError::Postgres {
                problem: format!("creating the publication: {}", e.server_message()),
                fix: format!(
                    "have the {} owner run: {}",
                    if tables.len() == 1 {
                        "table's"
                    } else {
                        "tables'"
                    },
                    crate::sql::create_publication(&config.publication, &tables)
                ),
            })?;
        tracing::info!(publication = %config.publication, tables = %crate::names::list(&tables), "created the publication");
    }
    if facts.slot.is_none() {
        let mut client = ReplicationClient::connect(pg)
            .await
            .map_err(|e| postgres_error(config, &e))?;
        if facts.publication.is_some() {
            refuse_a_lost_slot(config, &mut client).await?;
        }
        let failover = config.failover_slot && facts.server.major() >= 17;
        let created = client
            .create_slot(
                &config.slot,
                &walstream::CreateSlotOptions::new().failover(failover),
            )
            .await
            .map_err(|e| postgres_error(config, &e))?;
        tracing::info!(slot = %config.slot, lsn = %created.consistent_point(), failover, "created the slot");
        client.close().await;
    }
    let sink = match config.sink {
        SinkKind::Null => None,
        SinkKind::Amqp => Some(connect_sink(config, ctx).await?),
    };
    let start = wait_for_slot(&control, config, standby, ctx).await?;
    // A table added to the settings joins the publication only now that
    // no other relay streams the slot: one still running with the old
    // settings would skip the new table's rows and acknowledge past them.
    // (Read again: a standby may have waited long.)
    let publication = catalog::publication_info(&control, &config.publication, &tables)
        .await
        .map_err(|e| RunError::Postgres {
            problem: format!("reading the publication: {}", e.server_message()),
            fix: "see the server's message".into(),
        })?;
    let missing: Vec<TableName> = match &publication {
        Some(p) => tables
            .iter()
            .zip(&p.covers)
            .filter(|(_, covered)| !**covered)
            .map(|(table, _)| table.clone())
            .collect(),
        None => Vec::new(),
    };
    if !missing.is_empty() {
        catalog::add_to_publication(&control, &config.publication, &missing)
            .await
            .map_err(|e| RunError::Postgres {
                problem: format!(
                    "adding {} to the publication: {}",
                    crate::names::list(&missing),
                    e.server_message()
                ),
                fix: format!(
                    "have the owner of the publication and the tables run: {}",
                    crate::sql::add_to_publication(&config.publication, &missing)
                ),
            })?;
        tracing::info!(publication = %config.publication, tables = %crate::names::list(&missing), "added tables to the publication: their rows are events from here on");
    }
    Ok(Some((start, control, sink)))
}

/// The slot is missing but the publication was already there: a first
/// start after an operator made the publication, or a slot that was lost.
/// On a server that was promoted (or restored) since it was initialized,
/// timeline above 1, the likely story is a failover on PostgreSQL 16 or
/// earlier (or one whose standby had no synced copy): a new slot would
/// start now and skip every event committed since the relay last
/// acknowledged, so `run` refuses and says how to recover; `setup`
/// creates the slot when the operator decides to.
async fn refuse_a_lost_slot(
    config: &Config,
    client: &mut ReplicationClient,
) -> Result<(), RunError> {
    let system = client
        .identify_system()
        .await
        .map_err(|e| postgres_error(config, &e))?;
    if system.timeline() <= 1 {
        return Ok(());
    }
    Err(RunError::Postgres {
        problem: format!(
            "slot {} does not exist, but publication {} does, on a server that has been \
             promoted or restored (timeline {}): the slot was most likely lost in a failover, \
             and a new one would start now, skipping every event committed since the relay \
             last acknowledged",
            config.slot,
            config.publication,
            system.timeline()
        ),
        fix: "follow the README's 'When the slot is lost' (re-publish what was missed from \
              the outbox table), then create the slot with `outbox-relay setup`; if this is a \
              first start, `outbox-relay setup` creates it"
            .into(),
    })
}

/// A non-retryable PostgreSQL error, with the cause and the fix.
fn postgres_error(config: &Config, e: &walstream::Error) -> RunError {
    let (problem, fix) = prereq::connection_failure(config, e);
    RunError::Postgres { problem, fix }
}

/// Logs every warning once; returns the failures as the error that stops
/// the run.
fn refuse_on_failures(lines: &[prereq::Line]) -> Result<(), RunError> {
    for line in lines {
        if let Verdict::Warn { found, advice } = &line.verdict {
            tracing::warn!(check = line.name, "{found}; {advice}");
        }
    }
    match prereq::failures(lines) {
        Some(failed) => Err(RunError::Prerequisites(failed)),
        None => Ok(()),
    }
}

/// The control connection, retried with backoff while PostgreSQL is
/// unreachable; an error that no retry fixes stops the run with its cause.
async fn connect_control(
    config: &Config,
    ctx: &Context,
) -> Result<tokio_postgres::Client, RunError> {
    let pg = config.pg()?;
    let mut backoff = Backoff::new(config.backoff.clone());
    let mut repeats = Repeats::new();
    loop {
        match pg::connect_control(pg, prereq::application_name(config)).await {
            Ok(client) => {
                if let Some(failed) = repeats.recovered() {
                    tracing::info!(failed_attempts = failed, "reached PostgreSQL");
                }
                return Ok(client);
            }
            Err(e) if e.is_retryable() => {
                ctx.metrics.reconnect(Side::Postgres, "connect_failed");
                let delay = backoff.next_delay();
                log_retry(
                    &mut repeats,
                    &e.to_string(),
                    delay,
                    "cannot reach PostgreSQL",
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(postgres_error(config, &e)),
        }
    }
}

/// The broker, judged as `check` judges it, then connected; retried while
/// it is unreachable.
async fn connect_sink(config: &Config, ctx: &Context) -> Result<AmqpSink, RunError> {
    let sink_config = amqp::sink_config(config).map_err(RunError::Broker)?;
    let mut backoff = Backoff::new(config.backoff.clone());
    let mut repeats = Repeats::new();
    let mut judged = false;
    loop {
        let mut failure = None;
        if !judged {
            let facts = probe::broker(config, &sink_config).await;
            match &facts.reached {
                Ok(_) => {
                    refuse_on_failures(&prereq::judge_broker(config, &facts))?;
                    judged = true;
                }
                Err(errors) => failure = Some(errors.join("; ")),
            }
        }
        if judged {
            match AmqpSink::connect(sink_config.clone(), config.max_payload_bytes).await {
                Ok(sink) => {
                    if let Some(failed) = repeats.recovered() {
                        tracing::info!(failed_attempts = failed, "reached the broker");
                    }
                    ctx.health.set_broker(true);
                    return Ok(sink);
                }
                Err(amqp_sink::SinkError::Connect(errors))
                    if errors.iter().any(|e| !e.is_permanent()) =>
                {
                    failure = Some(
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    );
                }
                Err(e) => return Err(RunError::Broker(e.to_string())),
            }
        }
        ctx.metrics.reconnect(Side::Rabbitmq, "connect_failed");
        let delay = backoff.next_delay();
        let failure = failure.unwrap_or_default();
        log_retry(&mut repeats, &failure, delay, "cannot reach the broker");
        tokio::time::sleep(delay).await;
    }
}

/// Waits while someone else holds the slot (a standby: one connection,
/// one log line), then returns its confirmed position.
async fn wait_for_slot(
    control: &tokio_postgres::Client,
    config: &Config,
    standby: bool,
    ctx: &Context,
) -> Result<Lsn, RunError> {
    let mut announced = false;
    loop {
        let slot = catalog::slot_info(control, &config.slot)
            .await
            .map_err(|e| RunError::Postgres {
                problem: format!("reading the slot: {}", e.server_message()),
                fix: "see the server's message".into(),
            })?
            .ok_or_else(|| {
                RunError::Stream(walstream::Error::SlotMissing {
                    slot: config.slot.clone(),
                })
            })?;
        match (slot.active, slot.active_pid) {
            (true, Some(pid)) => {
                if !standby {
                    return Err(RunError::SlotHeld {
                        slot: config.slot.clone(),
                        pid,
                    });
                }
                if !announced {
                    tracing::info!(slot = %config.slot, pid, holder = slot.holder.as_deref().unwrap_or("?"), "the slot is held by another process; waiting as a standby");
                    announced = true;
                }
                set_standby(ctx, true);
                tokio::time::sleep(config.standby_poll).await;
            }
            _ => {
                if announced {
                    tracing::info!(slot = %config.slot, "the slot is free; taking over");
                }
                set_standby(ctx, false);
                return Ok(slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO));
            }
        }
    }
}

/// Streams sessions until a stop or an error no retry fixes.
async fn stream<S: Sink>(
    config: &Config,
    standby: bool,
    ctx: &Context,
    control: tokio_postgres::Client,
    mut sink: S,
    mapper: Mapper,
    start: Lsn,
) -> Result<(), RunError> {
    drop(control);
    let _watcher = AbortOnDrop(tokio::spawn(watch_slot(
        config.clone(),
        ctx.metrics.clone(),
    )));
    let mut core = Core::new(mapper, config.core.clone(), start);
    // Said once, when the first session holds the slot (its walsender is
    // active), not when it is asked for: what reads the log (an operator,
    // a supervisor's readiness check) may then rely on the slot being
    // taken.
    let mut announced_streaming = false;
    let mut shutdown = ctx.shutdown.clone();
    let mut stream_backoff = Backoff::new(config.backoff.clone());
    // Rewinds back off on their own, and only progress (a confirm) resets
    // it: a queue that nacks everything must not turn into a replay every
    // half second.
    let mut rewind_backoff = Backoff::new(config.backoff.clone());
    // One log line per distinct failure of each loop (see `log_retry`).
    let mut stream_repeats = Repeats::new();
    let mut rewind_repeats = Repeats::new();
    let mut announced_standby = false;
    // The server of the last session: a failover shows as a new timeline.
    let mut last_system: Option<walstream::SystemIdentity> = None;
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        let started = start_stream(
            config,
            core.acked(),
            core.remembered_through(),
            last_system.as_ref(),
        )
        .await;
        let (mut stream, acks) = match started {
            Ok(Started {
                stream,
                acks,
                system,
                rebase,
            }) => {
                if let Some(at) = rebase {
                    core.rebase(at);
                }
                last_system = Some(system);
                if !announced_streaming {
                    tracing::info!(slot = %config.slot, lsn = %start, "streaming from the slot");
                    announced_streaming = true;
                }
                (stream, acks)
            }
            Err(walstream::Error::SlotActive { pid, .. }) if standby => {
                set_standby(ctx, true);
                if !announced_standby {
                    tracing::info!(slot = %config.slot, pid, "the slot is held by another process; waiting as a standby");
                    announced_standby = true;
                }
                if !sleep_or_stop(config.standby_poll, &mut shutdown).await {
                    break Ok(());
                }
                continue;
            }
            Err(e) if e.is_retryable() => {
                ctx.metrics.reconnect(Side::Postgres, "connect_failed");
                let delay = stream_backoff.next_delay();
                log_retry(
                    &mut stream_repeats,
                    &e.to_string(),
                    delay,
                    "cannot start streaming",
                );
                if !sleep_or_stop(delay, &mut shutdown).await {
                    break Ok(());
                }
                continue;
            }
            Err(walstream::Error::SlotMissing { slot }) => {
                break Err(RunError::Postgres {
                    problem: format!(
                        "slot {slot} no longer exists: it was dropped, or lost in a failover \
                         (PostgreSQL 16 and earlier, or a standby without a synced copy); the \
                         relay never creates a slot again by itself, as a new one would skip \
                         every event committed since the last acknowledged one"
                    ),
                    fix: "follow the README's 'When the slot is lost', then create the slot \
                          with `outbox-relay setup`"
                        .into(),
                })
            }
            Err(e) => break Err(RunError::Stream(e)),
        };
        announced_standby = false;
        set_standby(ctx, false);
        ctx.health.set_streaming(true);
        acks.ack(core.acked());
        core.handle(Event::StreamStarted);
        let mut progress = Progress::default();
        let exit = drive(
            config,
            ctx,
            &mut core,
            &mut stream,
            &acks,
            &mut sink,
            &mut progress,
        )
        .await;
        ctx.health.set_streaming(false);
        ctx.health.set_waiting(false);
        if progress.frames {
            stream_backoff.reset();
            stream_repeats.recovered();
        }
        if progress.confirms {
            rewind_backoff.reset();
            rewind_repeats.recovered();
        }
        let exit = match exit {
            Ok(exit) => exit,
            Err(e) => {
                let _ = stream.shutdown(Duration::from_secs(2)).await;
                break Err(e);
            }
        };
        match exit {
            Command::Restart(Restart { cause, reason }) => {
                let _ = stream.shutdown(Duration::from_secs(2)).await;
                let acked = core.acked();
                let delay = match cause {
                    RestartCause::Stream => {
                        let delay = stream_backoff.next_delay();
                        match stream_repeats.failed(&reason) {
                            Report::New => {
                                tracing::warn!(reason = %reason, acked = %acked, retry_in = ?delay, "replication stream lost; reconnecting")
                            }
                            Report::Again { attempts } => {
                                tracing::warn!(reason = %reason, acked = %acked, attempts, retry_in = ?delay, "replication stream lost; reconnecting")
                            }
                            Report::Quiet => {
                                tracing::debug!(reason = %reason, acked = %acked, retry_in = ?delay, "replication stream lost; reconnecting")
                            }
                        }
                        // A drain that timed out left messages in flight.
                        let recovered = tokio::select! {
                            r = sink.recover() => r,
                            () = stopped(&mut shutdown) => break Ok(()),
                        };
                        if let Err(e) = recovered {
                            break Err(RunError::Broker(e.to_string()));
                        }
                        delay
                    }
                    RestartCause::Sink | RestartCause::Row => {
                        let delay = rewind_backoff.next_delay();
                        match rewind_repeats.failed(&reason) {
                            Report::New => {
                                tracing::warn!(reason = %reason, acked = %acked, retry_in = ?delay, "publishing failed; streaming again from the last acknowledged transaction")
                            }
                            Report::Again { attempts } => {
                                tracing::warn!(reason = %reason, acked = %acked, attempts, retry_in = ?delay, "publishing failed; streaming again from the last acknowledged transaction")
                            }
                            Report::Quiet => {
                                tracing::debug!(reason = %reason, acked = %acked, retry_in = ?delay, "publishing failed; streaming again from the last acknowledged transaction")
                            }
                        }
                        ctx.metrics.reconnect(
                            Side::Rabbitmq,
                            if cause == RestartCause::Row {
                                "row_refused"
                            } else {
                                "publish_failed"
                            },
                        );
                        let recovered = tokio::select! {
                            r = sink.recover() => r,
                            () = stopped(&mut shutdown) => break Ok(()),
                        };
                        if let Err(e) = recovered {
                            break Err(RunError::Broker(e.to_string()));
                        }
                        ctx.health.set_broker(true);
                        delay
                    }
                };
                if !sleep_or_stop(delay, &mut shutdown).await {
                    break Ok(());
                }
            }
            Command::Stop(Stop::Shutdown { drained }) => {
                tracing::info!(acked = %core.acked(), drained, "shutting down");
                if let Err(e) = stream.shutdown(Duration::from_secs(5)).await {
                    tracing::warn!(error = %e, "the replication stream did not end cleanly");
                }
                break Ok(());
            }
            Command::Stop(Stop::Fatal(why)) => {
                let _ = stream.shutdown(Duration::from_secs(2)).await;
                break Err(RunError::Internal(why));
            }
            Command::Publish { .. } | Command::Ack(_) => {
                break Err(RunError::Internal(
                    "the session ended on a command that does not end it; this is a bug".into(),
                ))
            }
        }
    };
    ctx.health.set_streaming(false);
    if let Err(e) = sink.close().await {
        tracing::warn!(error = %e, "the broker connection did not close cleanly");
    }
    result
}

/// How often the slot's row is read for its series.
const SLOT_WATCH: Duration = Duration::from_secs(10);

/// Reads the slot's row every [`SLOT_WATCH`] for its series (wal_status,
/// safe_wal_size, the failover flag), reconnecting the control connection
/// (to whichever server is the primary now) when it breaks. Nothing here
/// decides anything: a lost slot ends the stream, and the next
/// START_REPLICATION says why. Its session is named `outbox-relay
/// slot-watch <slot>` in pg_stat_activity (`teardown` looks for it: a
/// relay between two sessions holds no slot, but it runs).
async fn watch_slot(config: Config, metrics: Metrics) {
    let mut control: Option<tokio_postgres::Client> = None;
    loop {
        if control.as_ref().is_none_or(|c| c.is_closed()) {
            control = match config.pg() {
                Ok(pg) => pg::connect_control(pg, &catalog::slot_watch_name(&config.slot))
                    .await
                    .ok(),
                Err(_) => None,
            };
        }
        if let Some(client) = &control {
            match catalog::slot_info(client, &config.slot).await {
                Ok(Some(slot)) => metrics.observe_slot(&slot),
                Ok(None) => metrics.forget_slot(),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the slot for its metrics failed");
                    control = None;
                }
            }
        }
        tokio::time::sleep(SLOT_WATCH).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a session achieved (backoffs reset only on progress).
#[derive(Debug, Default)]
struct Progress {
    frames: bool,
    confirms: bool,
}

/// A session's stream, and what it found about the server.
struct Started {
    stream: ReplicationStream,
    acks: walstream::AckHandle,
    /// The server's identity (a failover shows as a new timeline).
    system: walstream::SystemIdentity,
    /// Where the core resumes instead of its acknowledged position, when
    /// the server's history forked before it.
    rebase: Option<Lsn>,
}

/// Connects (to the primary of a multi-host pg_url), makes the slot a
/// failover slot if asked, and starts streaming after `acked`, or earlier
/// when the server's history forked before it.
async fn start_stream(
    config: &Config,
    acked: Lsn,
    remembered: Lsn,
    last: Option<&walstream::SystemIdentity>,
) -> Result<Started, walstream::Error> {
    let pg = config
        .pg
        .as_ref()
        .ok_or_else(|| walstream::Error::Config("pg_url is not set".into()))?;
    let mut pg = pg.clone();
    if pg.application_name().is_none() {
        pg.set_application_name("outbox-relay");
    }
    let mut client = ReplicationClient::connect(&pg).await?;
    let system = client.identify_system().await?;
    let rebase = match last {
        Some(last) => fork_point(&mut client, last, &system, acked, remembered).await?,
        None => None,
    };
    if config.failover_slot && client.server_major() >= 17 {
        make_failover_slot(&mut client, &config.slot).await?;
    }
    let start = rebase.unwrap_or(acked);
    let options = StartOptions::new([config.publication.clone()]).messages(true);
    let (stream, acks) = client
        .start_replication(&config.slot, start, options)
        .await?;
    Ok(Started {
        stream,
        acks,
        system,
        rebase,
    })
}

/// Whether the server's history is the one the last session read up to
/// `acked` (and the core remembers up to `remembered`). On the same
/// timeline, it is. After a promotion (a new timeline) it is up to the
/// point where the old timeline ended: with synchronized_standby_slots the
/// relay never read past it, and nothing changes; otherwise the relay
/// published (and perhaps acknowledged) WAL the promoted server never had,
/// and resuming after `acked` would skip what the new timeline holds there:
/// the core resumes from the fork instead (duplicates for what was the
/// same; what is gone is said loudly). Another cluster altogether resumes
/// from its slot's own position.
async fn fork_point(
    client: &mut ReplicationClient,
    last: &walstream::SystemIdentity,
    now: &walstream::SystemIdentity,
    acked: Lsn,
    remembered: Lsn,
) -> Result<Option<Lsn>, walstream::Error> {
    if last.system_id() != now.system_id() {
        tracing::warn!(
            before = last.system_id(),
            now = now.system_id(),
            "the server is another PostgreSQL cluster than before (its system id changed): \
             resuming from its slot's own position"
        );
        return Ok(Some(Lsn::ZERO));
    }
    if last.timeline() == now.timeline() {
        return Ok(None);
    }
    let history = client.timeline_history(now.timeline()).await?;
    let Some(fork) = walstream::switchpoint_of(&history, last.timeline()) else {
        tracing::warn!(
            before = last.timeline(),
            now = now.timeline(),
            "the server's timeline history does not hold the timeline streamed before: \
             resuming from the slot's own position"
        );
        return Ok(Some(Lsn::ZERO));
    };
    if acked > fork || remembered > fork {
        tracing::error!(
            acked = %acked,
            promotion = %fork,
            "the relay had published events from WAL past the point where the promoted \
             server's history begins: events committed there on the old primary were \
             published but are not on this server (set synchronized_standby_slots on the \
             primary to prevent this; see the README's High availability); resuming from \
             the promotion point so that nothing committed on the new timeline is skipped"
        );
        return Ok(Some(acked.min(fork)));
    }
    tracing::info!(
        before = last.timeline(),
        now = now.timeline(),
        promotion = %fork,
        acked = %acked,
        "the server was promoted (a new timeline); its history holds everything the relay read"
    );
    Ok(None)
}

/// Turns the slot into a failover slot if it is not one (a slot created
/// before PostgreSQL 17's upgrade, by `setup` with failover_slot off, or by
/// Debezium), while no one streams from it, before START_REPLICATION.
/// Failing to is logged and streaming goes on: the slot works, only a
/// failover would lose it (`check` says so).
async fn make_failover_slot(
    client: &mut ReplicationClient,
    slot: &str,
) -> Result<(), walstream::Error> {
    let Some(state) = client.slot_state(slot).await? else {
        // START_REPLICATION says what is wrong.
        return Ok(());
    };
    if state.failover() != Some(false) || state.is_synced_on_standby() {
        return Ok(());
    }
    match client.set_slot_failover(slot, true).await {
        Ok(()) => {
            tracing::info!(
                slot,
                "made the slot a failover slot: standbys with sync_replication_slots keep a copy"
            );
            Ok(())
        }
        Err(e @ walstream::Error::SlotActive { .. }) => Err(e),
        Err(e) => {
            tracing::warn!(slot, error = %e, "could not make the slot a failover slot; a failover would lose it");
            Ok(())
        }
    }
}

/// One session: feeds the core until it asks for a restart or a stop,
/// which is returned.
async fn drive<S: Sink>(
    config: &Config,
    ctx: &Context,
    core: &mut Core,
    stream: &mut ReplicationStream,
    acks: &walstream::AckHandle,
    sink: &mut S,
    progress: &mut Progress,
) -> Result<Command, RunError> {
    let mut shutdown = ctx.shutdown.clone();
    let mut stopping = false;
    let mut drain_deadline: Option<Instant> = None;
    // When the rows held for the rest of their transaction go anyway.
    let mut hold_deadline: Option<Instant> = None;
    let metrics = &ctx.metrics;
    loop {
        // walstream parses frames from its buffer without yielding: on the
        // one worker thread, a long run of frames the window never stops
        // (deletes, other tables, rows a rewind skips) must not keep the
        // feedback task, the sink's driver, lapin's heartbeat and the
        // health server waiting.
        tokio::task::consume_budget().await;
        while let Some(command) = core.next_command() {
            match command {
                Command::Publish {
                    seq,
                    message,
                    dead_letter,
                    lsn,
                    table,
                } => {
                    let handed = sink.publish(seq, &message);
                    match &handed {
                        Handed::Accepted => {
                            metrics.published.inc();
                            if let Some(reason) = dead_letter {
                                metrics.dead_letter_of(table, reason.as_str());
                            }
                        }
                        Handed::Invalid(why) => {
                            tracing::warn!(lsn = %lsn, reason = %shown(why, 300), "the broker client refused a message; dead-lettering it");
                        }
                        Handed::Full | Handed::LinkDown(_) => {}
                    }
                    core.handle(Event::Handed { seq, handed });
                }
                Command::Ack(lsn) => {
                    acks.ack(lsn);
                    ctx.health.acked_now();
                    metrics.confirmed_lsn.set(lsn_gauge(lsn));
                }
                end @ (Command::Restart(_) | Command::Stop(_)) => {
                    // The counters and gauges see the end of the session
                    // (the messages it dropped) before the backoff.
                    observe(core, ctx, progress);
                    return Ok(end);
                }
            }
        }
        observe(core, ctx, progress);
        if core.draining() && drain_deadline.is_none() {
            let wait = if stopping {
                config.shutdown_timeout
            } else {
                STREAM_DRAIN
            };
            drain_deadline = Some(Instant::now() + wait);
        }
        let deadline = drain_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        // A transaction's rows go to the broker client in one hand-off: the
        // sink may hold them while the rest of the transaction is on the
        // way, and gets them flushed before any other wait (or when the
        // rest is late).
        if !(core.in_transaction() && core.wants_frames()) {
            sink.flush();
        }
        let holding = sink.holding();
        let hold_until = if holding {
            *hold_deadline.get_or_insert_with(|| Instant::now() + HOLD_FOR)
        } else {
            hold_deadline = None;
            deadline
        };
        tokio::select! {
            biased;
            () = stopped(&mut shutdown), if !stopping => {
                stopping = true;
                drain_deadline = None;
                core.handle(Event::Shutdown);
            }
            outcome = sink.next_outcome() => {
                let Some(outcome) = outcome else {
                    return Err(RunError::Broker("the sink stopped".into()));
                };
                match &outcome {
                    Outcome::LinkLost(_) => {
                        ctx.health.set_broker(false);
                        ctx.health.set_blocked(false);
                        metrics.broker_blocked.set(0);
                        metrics.reconnect(Side::Rabbitmq, "connection_lost");
                    }
                    Outcome::LinkRestored { .. } => ctx.health.set_broker(true),
                    Outcome::Blocked(reason) => {
                        metrics.broker_blocked.set(1);
                        ctx.health.set_blocked(true);
                        tracing::warn!(reason = %reason, "the broker blocks publishing (a memory or disk alarm): nothing is published or acknowledged until it lifts");
                    }
                    Outcome::Unblocked => {
                        metrics.broker_blocked.set(0);
                        ctx.health.set_blocked(false);
                        tracing::info!("the broker lifted its block: publishing again");
                    }
                    _ => {}
                }
                core.handle(Event::Outcome(outcome));
            }
            () = tokio::time::sleep_until(deadline), if drain_deadline.is_some() => {
                core.handle(Event::DrainTimedOut);
            }
            frame = stream.next(), if core.wants_frames() => match frame {
                Ok(Frame::Keepalive(k)) => core.handle(Event::Keepalive { wal_end: k.wal_end }),
                Ok(Frame::XLogData(x)) => {
                    progress.frames = true;
                    let message = pgoutput::decode(x.data)?;
                    core.handle(Event::Message { lsn: x.wal_start, message });
                }
                Err(e) if e.is_retryable() => {
                    metrics.reconnect(Side::Postgres, stream_reason(&e));
                    core.handle(Event::StreamLost(e.to_string()));
                }
                Err(e) => return Err(RunError::Stream(e)),
            },
            () = tokio::time::sleep_until(hold_until), if holding => {
                sink.flush();
                hold_deadline = None;
            }
        }
        let end = acks.server_wal_end();
        if !end.is_zero() {
            metrics.server_wal_end.set(lsn_gauge(end));
            metrics
                .lag_bytes
                .set(lsn_gauge(Lsn::from_u64(end.bytes_since(core.acked()))));
        }
    }
}

/// Counts and logs what the core noted; sets the gauges.
fn observe(core: &mut Core, ctx: &Context, progress: &mut Progress) {
    let metrics = &ctx.metrics;
    let mut now = None;
    let mut confirmed_now = false;
    while let Some(note) = core.next_note() {
        match note {
            Note::Transaction => {
                metrics.transactions.inc();
            }
            Note::Ignored(kind) => metrics.ignore(kind),
            Note::Confirmed { commit_ts, table } => {
                progress.confirms = true;
                confirmed_now = true;
                metrics.confirmed.inc();
                metrics.confirmed_of(table);
                if let Some(ts) = commit_ts {
                    let now = *now.get_or_insert_with(SystemTime::now);
                    if let Ok(latency) = now.duration_since(ts.to_system_time()) {
                        metrics.commit_to_confirm.observe(latency.as_secs_f64());
                    }
                }
            }
            Note::DeadLettering {
                lsn,
                reason,
                detail,
            } => {
                tracing::warn!(lsn = %lsn, reason = reason.as_str(), detail = %detail, "dead-lettering a row that cannot be published as configured");
            }
            Note::RowRefused {
                lsn,
                attempts,
                detail,
            } => {
                tracing::warn!(lsn = %lsn, attempts, detail = %detail, "the broker refused a row");
            }
            Note::Unmapped(table) => {
                tracing::warn!(table = %table, "the publication sends a table the settings do not map: its rows are skipped, not published; add a [[table]] entry for it or remove it from the publication");
            }
            Note::Skipped(n) => {
                tracing::debug!(
                    rows = n,
                    "rows confirmed before the rewind were not published again"
                );
            }
            Note::Returned => {
                // The broker answered: progress, for the liveness check.
                ctx.health.confirmed_now();
                metrics
                    .not_confirmed
                    .get_or_create(&OutcomeLabels {
                        outcome: "returned",
                    })
                    .inc();
            }
            Note::Rewound(n) => {
                metrics
                    .not_confirmed
                    .get_or_create(&OutcomeLabels { outcome: "rewound" })
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            }
        }
    }
    if confirmed_now {
        ctx.health.confirmed_now();
        let now = *now.get_or_insert_with(SystemTime::now);
        if let Ok(since_epoch) = now.duration_since(std::time::UNIX_EPOCH) {
            metrics.last_confirm.set(since_epoch.as_secs_f64());
        }
    }
    let stats = core.stats();
    ctx.health
        .set_waiting(stats.inflight_messages > 0 || stats.pending > 0);
    let waited = stats
        .oldest_unconfirmed_commit
        .and_then(|ts| {
            now.get_or_insert_with(SystemTime::now)
                .duration_since(ts.to_system_time())
                .ok()
        })
        .unwrap_or_default();
    metrics.lag_seconds.set(waited.as_secs_f64());
    metrics
        .inflight_messages
        .set(i64::try_from(stats.inflight_messages).unwrap_or(i64::MAX));
    metrics
        .inflight_bytes
        .set(i64::try_from(stats.inflight_bytes).unwrap_or(i64::MAX));
}

/// One line for a failed attempt of a retry loop, if [`Repeats`] says it
/// is worth one: the error in full when it is new, a summary with the
/// attempt count when it repeats.
fn log_retry(repeats: &mut Repeats, error: &str, delay: Duration, what: &str) {
    match repeats.failed(error) {
        Report::New => tracing::warn!(error, retry_in = ?delay, "{what}; retrying"),
        Report::Again { attempts } => {
            tracing::warn!(error, attempts, retry_in = ?delay, "{what}; retrying");
        }
        Report::Quiet => tracing::debug!(error, retry_in = ?delay, "{what}; retrying"),
    }
}

/// Waiting as a standby (or not): for /readyz's JSON and the metric.
fn set_standby(ctx: &Context, on: bool) {
    ctx.health.set_standby(on);
    ctx.metrics.standby.set(i64::from(on));
}

fn stream_reason(e: &walstream::Error) -> &'static str {
    match e {
        walstream::Error::Server { .. } => "server_error",
        walstream::Error::StreamEnded { .. } => "server_shutdown",
        walstream::Error::ReceiveTimeout(_) => "receive_timeout",
        walstream::Error::Io { .. } => "connection_lost",
        _ => "other",
    }
}

fn lsn_gauge(lsn: Lsn) -> i64 {
    i64::try_from(lsn.as_u64()).unwrap_or(i64::MAX)
}
