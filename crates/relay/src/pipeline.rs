//! The pipeline: slot -> decode -> map -> publish -> confirm -> ack.
//!
//! It owns the seven invariants of DESIGN.md at run time. One task runs one
//! `select!` whose branch order is the priority: shutdown, then the broker's
//! outcomes (confirms free window room and advance the ack), then
//! publishing what was read, then reading the next frame. Frames are read
//! only when nothing waits to be published, so the in-flight window bounds
//! memory whatever the size of a transaction (invariant 5); answering the
//! server's keepalives is walstream's feedback task, which this loop cannot
//! block.
//!
//! On any publish failure other than a return (a nack, a lost channel or
//! connection), nothing is re-published out of order: the pipeline drops
//! what is in flight, waits for the broker, and streams again from the
//! slot, which re-sends everything after the last acknowledged transaction
//! (invariant 4). A broken replication stream drains what is in flight and
//! reconnects with backoff. Errors that no retry can fix end the run with
//! the reason.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amqp_sink::{
    FailureReason, OutgoingMessage, PublishError, Publisher, Seq, SinkConfig, SinkEvent,
};
use pgoutput::{LogicalMessage, Lsn, PgTimestamp};
use tokio::sync::watch;
use walstream::{Frame, ReplicationClient, ReplicationConfig, ReplicationStream, StartOptions};

use crate::catalog::{self, TableName};
use crate::config::{Settings, UnroutablePolicy};
use crate::mapping::{DeadLetterReason, EventMessage, HeaderValue, Mapped, Mapper};
use crate::metrics::{Health, Metrics, Side};
use crate::tracker::{AckTracker, TxnId};

/// Why the relay stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// PostgreSQL refused in a way no retry fixes (auth, wal_level, slot).
    #[error(transparent)]
    Postgres(#[from] walstream::Error),
    /// A catalog check failed or found a missing prerequisite.
    #[error("{0}")]
    Prerequisite(String),
    /// The broker refused in a way no retry fixes.
    #[error("rabbitmq: {0}")]
    Broker(String),
    /// Another process holds the slot and --no-standby was given.
    #[error(
        "slot {slot} is active for PID {pid}: another outbox-relay or Debezium is using it \
         (--no-standby: not waiting for it)"
    )]
    SlotHeld {
        /// The slot.
        slot: String,
        /// Who holds it.
        pid: i32,
    },
    /// The stream carried something the relay cannot read.
    #[error("decoding the replication stream: {0}; this is a bug, please report it")]
    Decode(#[from] pgoutput::DecodeError),
    /// The ack tracker was misused: a bug.
    #[error("internal: {0}")]
    Internal(String),
}

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

/// Backoff between reconnect attempts.
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
    multiplier: f64,
}

impl Backoff {
    fn new(settings: &Settings) -> Backoff {
        let initial = Duration::from_millis(settings.backoff_initial_ms);
        Backoff {
            next: initial,
            initial,
            max: Duration::from_millis(settings.backoff_max_ms),
            multiplier: settings.backoff_multiplier,
        }
    }

    /// The delay before the next attempt (with up to 20% jitter), then grows.
    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.mul_f64(self.multiplier).min(self.max);
        base.mul_f64(0.8 + fastrand::f64() * 0.2)
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Sleeps `delay` unless shutdown comes first; returns false on shutdown.
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = shutdown.changed() => false,
        () = tokio::time::sleep(delay) => !*shutdown.borrow(),
    }
}

/// One event waiting to be published, and what it belongs to. Its broker
/// message is built from `event` once, when its publish starts.
#[derive(Debug, Clone)]
struct Pending {
    event: EventMessage,
    txn: TxnId,
    lsn: Lsn,
    commit_ts: Option<PgTimestamp>,
    /// Already a dead-letter copy (a second failure is not dead-lettered
    /// again).
    dead_letter: Option<DeadLetterReason>,
}

/// A published event waiting for its outcome.
#[derive(Debug)]
struct InFlight {
    seq: Seq,
    pending: Pending,
    bytes: usize,
}

/// Why the streaming loop ended.
#[derive(Debug)]
enum LoopEnd {
    /// Shutdown was asked for.
    Shutdown,
    /// The replication stream broke (retryable or not).
    Stream(walstream::Error),
    /// A publish failed in a way that needs a rewind to the slot.
    Sink(String),
}

/// The state of one streaming session.
struct Session<'a> {
    settings: &'a Settings,
    ctx: &'a Context,
    mapper: &'a mut Mapper,
    tracker: &'a mut AckTracker,
    acks: walstream::AckHandle,
    pending: VecDeque<Pending>,
    inflight: VecDeque<InFlight>,
    txn: Option<(TxnId, PgTimestamp)>,
    inflight_bytes: usize,
    /// Whether the broker confirmed anything in this session (a rewind's
    /// backoff resets only on progress).
    confirmed_any: bool,
}

/// Runs the relay until shutdown or a permanent error.
pub async fn run(settings: Settings, no_standby: bool, mut ctx: Context) -> Result<(), RunError> {
    settings.validate()?;
    let mut mapper = Mapper::new(&settings)?;
    let mut pg_config: ReplicationConfig =
        settings.pg_url.as_deref().unwrap_or_default().parse()?;
    if pg_config.application_name().is_none() {
        pg_config.set_application_name("outbox-relay");
    }
    let table =
        TableName::parse(&settings.table).map_err(|e| RunError::Prerequisite(e.to_string()))?;

    // Start-up: the catalog, the publication, the slot.
    let control = walstream::connect_control(&pg_config).await?;
    prepare(&control, &settings, &table, &pg_config).await?;

    // The broker.
    let (mut publisher, mut outcomes) = match connect_broker(&settings, &mut ctx).await? {
        Some(p) => p,
        None => return Ok(()),
    };
    ctx.health.set_broker(true);

    // Standby: wait while someone else holds the slot.
    let start = match wait_for_slot(&control, &settings, no_standby, &mut ctx).await? {
        Some(lsn) => lsn,
        None => {
            let _ = publisher.close().await;
            return Ok(());
        }
    };
    drop(control);
    let mut tracker = AckTracker::new(start);
    tracing::info!(slot = %settings.slot, lsn = %start, "streaming from the slot");

    let mut backoff = Backoff::new(&settings);
    // Rewinds after publish failures back off on their own, and only
    // progress (a confirm after the rewind) resets it: a queue that nacks
    // everything must not turn into a replay every half second.
    let mut rewinds = Backoff::new(&settings);
    let mut shutdown = ctx.shutdown.clone();
    let result = loop {
        // Connect and start streaming from the last acknowledged position.
        let started = start_stream(&pg_config, &settings, tracker.acked()).await;
        let (stream, acks) = match started {
            Ok(s) => s,
            Err(walstream::Error::SlotActive { pid, .. }) if !no_standby => {
                ctx.health.set_standby(true);
                tracing::info!(slot = %settings.slot, pid, "slot is held by another process; waiting as a standby");
                if !sleep_or_shutdown(
                    Duration::from_millis(settings.standby_poll_ms),
                    &mut shutdown,
                )
                .await
                {
                    break Ok(());
                }
                continue;
            }
            Err(e) if e.is_retryable() => {
                ctx.metrics.reconnect(Side::Postgres, "connect_failed");
                let delay = backoff.delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot start streaming; retrying");
                if !sleep_or_shutdown(delay, &mut shutdown).await {
                    break Ok(());
                }
                continue;
            }
            Err(e) => break Err(RunError::Postgres(e)),
        };
        ctx.health.set_standby(false);
        ctx.health.set_streaming(true);
        acks.ack(tracker.acked());
        let mut session = Session {
            settings: &settings,
            ctx: &ctx,
            mapper: &mut mapper,
            tracker: &mut tracker,
            acks,
            pending: VecDeque::new(),
            inflight: VecDeque::new(),
            txn: None,
            inflight_bytes: 0,
            confirmed_any: false,
        };
        let mut stream = stream;
        let end = session
            .stream_loop(
                &mut stream,
                &mut publisher,
                &mut outcomes,
                &mut shutdown,
                &mut backoff,
            )
            .await;
        ctx.health.set_streaming(false);
        let end = match end {
            Ok(end) => end,
            Err(fatal) => {
                let _ = stream.shutdown(Duration::from_secs(2)).await;
                break Err(fatal);
            }
        };
        match end {
            LoopEnd::Shutdown => {
                // Drain what is in flight, bounded; then the final ack.
                let timeout = Duration::from_millis(settings.shutdown_timeout_ms);
                let drained = session.drain(&mut outcomes, timeout).await;
                let acked = session.tracker.acked();
                session.acks.ack(acked);
                tracing::info!(acked = %acked, drained, "shutting down");
                if let Err(e) = stream.shutdown(Duration::from_secs(5)).await {
                    tracing::warn!(error = %e, "the replication stream did not end cleanly");
                }
                break Ok(());
            }
            LoopEnd::Stream(e) if e.is_retryable() => {
                ctx.metrics.reconnect(Side::Postgres, stream_reason(&e));
                // Let what is in flight finish, so that the slot resends as
                // little as possible.
                session.drain(&mut outcomes, Duration::from_secs(10)).await;
                session.acks.ack(session.tracker.acked());
                session.tracker.reset();
                if publisher.is_halted()
                    && !wait_for_broker(
                        &mut publisher,
                        &mut outcomes,
                        &ctx,
                        &mut shutdown,
                        Duration::ZERO,
                    )
                    .await
                {
                    break Ok(());
                }
                let delay = backoff.delay();
                tracing::warn!(error = %e, retry_in = ?delay, acked = %session.tracker.acked(), "replication stream lost; reconnecting");
                if !sleep_or_shutdown(delay, &mut shutdown).await {
                    break Ok(());
                }
            }
            LoopEnd::Stream(e) => break Err(RunError::Postgres(e)),
            LoopEnd::Sink(why) => {
                // Rewind: drop everything in flight, stream again from the
                // last acknowledged transaction once the broker is back.
                if session.confirmed_any {
                    rewinds.reset();
                }
                session.tracker.reset();
                let acked = session.tracker.acked();
                session.acks.ack(acked);
                ctx.metrics.inflight_messages.set(0);
                ctx.metrics.inflight_bytes.set(0);
                let _ = stream.shutdown(Duration::from_secs(2)).await;
                tracing::warn!(reason = %why, acked = %acked, "publishing failed; rewinding to the last acknowledged transaction");
                if !wait_for_broker(
                    &mut publisher,
                    &mut outcomes,
                    &ctx,
                    &mut shutdown,
                    rewinds.delay(),
                )
                .await
                {
                    break Ok(());
                }
            }
        }
    };
    ctx.health.set_streaming(false);
    if let Err(e) = publisher.close().await {
        tracing::warn!(error = %e, "the broker connection did not close cleanly");
    }
    result
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

async fn start_stream(
    config: &ReplicationConfig,
    settings: &Settings,
    start: Lsn,
) -> Result<(ReplicationStream, walstream::AckHandle), walstream::Error> {
    let client = ReplicationClient::connect(config).await?;
    let options = StartOptions::new([settings.publication.clone()]).messages(true);
    client
        .start_replication(&settings.slot, start, options)
        .await
}

/// Checks the catalog and creates what is missing: wal_level, the table,
/// the publication, the slot.
async fn prepare(
    control: &tokio_postgres::Client,
    settings: &Settings,
    table: &TableName,
    pg_config: &ReplicationConfig,
) -> Result<(), RunError> {
    let prereq = |e: catalog::CatalogError| RunError::Prerequisite(e.to_string());
    let server = catalog::server_settings(control).await.map_err(prereq)?;
    if server.wal_level != "logical" {
        return Err(RunError::Postgres(walstream::Error::WalLevel {
            current: server.wal_level,
        }));
    }
    match catalog::table_info(control, table).await.map_err(prereq)? {
        None => {
            return Err(RunError::Prerequisite(format!(
            "table {table} does not exist: create it (sql/outbox.sql) or set table (RELAY_TABLE)"
        )))
        }
        Some(info) if !info.can_select => {
            return Err(RunError::Prerequisite(format!(
                "the role may not SELECT from {table}: GRANT SELECT ON {} TO the relay's role",
                table.quoted()
            )))
        }
        Some(_) => {}
    }
    match catalog::publication_info(control, &settings.publication, table)
        .await
        .map_err(prereq)?
    {
        Some(p) if p.covers_table => {}
        Some(_) => {
            return Err(RunError::Prerequisite(format!(
                "publication {} does not cover {table}: ALTER PUBLICATION {} ADD TABLE {}",
                settings.publication,
                catalog::quote_ident(&settings.publication),
                table.quoted()
            )))
        }
        None => {
            catalog::create_publication(control, &settings.publication, table)
                .await
                .map_err(|e| {
                    RunError::Prerequisite(format!(
                        "{e}; create it as the table's owner: {}",
                        catalog::create_publication_sql(&settings.publication, table)
                    ))
                })?;
            tracing::info!(publication = %settings.publication, table = %table, "created the publication");
        }
    }
    if catalog::slot_info(control, &settings.slot)
        .await
        .map_err(prereq)?
        .is_none()
    {
        let mut client = ReplicationClient::connect(pg_config).await?;
        let created = client
            .create_slot(&settings.slot, &walstream::CreateSlotOptions::new())
            .await?;
        tracing::info!(slot = %settings.slot, lsn = %created.consistent_point(), "created the slot");
        client.close().await;
    }
    Ok(())
}

/// Waits until nobody else holds the slot (standby), then returns its
/// confirmed_flush_lsn; `None` on shutdown.
async fn wait_for_slot(
    control: &tokio_postgres::Client,
    settings: &Settings,
    no_standby: bool,
    ctx: &mut Context,
) -> Result<Option<Lsn>, RunError> {
    let mut announced = false;
    loop {
        let slot = catalog::slot_info(control, &settings.slot)
            .await
            .map_err(|e| RunError::Prerequisite(e.to_string()))?
            .ok_or_else(|| {
                RunError::Postgres(walstream::Error::SlotMissing {
                    slot: settings.slot.clone(),
                })
            })?;
        if slot.plugin.as_deref() != Some("pgoutput") {
            return Err(RunError::Postgres(walstream::Error::SlotUnusable {
                slot: settings.slot.clone(),
                reason: format!(
                    "its plugin is {}, not pgoutput; use another slot name",
                    slot.plugin.as_deref().unwrap_or("(none: a physical slot)")
                ),
            }));
        }
        match (slot.active, slot.active_pid) {
            (true, Some(pid)) => {
                if no_standby {
                    return Err(RunError::SlotHeld {
                        slot: settings.slot.clone(),
                        pid,
                    });
                }
                if !announced {
                    tracing::info!(slot = %settings.slot, pid, "slot is held by another process; waiting as a standby");
                    announced = true;
                }
                ctx.health.set_standby(true);
                let poll = Duration::from_millis(settings.standby_poll_ms);
                if !sleep_or_shutdown(poll, &mut ctx.shutdown).await {
                    return Ok(None);
                }
            }
            _ => {
                if announced {
                    tracing::info!(slot = %settings.slot, "the slot is free; taking over");
                }
                return Ok(Some(slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO)));
            }
        }
    }
}

fn sink_config(settings: &Settings) -> Result<SinkConfig, RunError> {
    let urls = settings.amqp_urls();
    let mut config = SinkConfig::for_urls(&urls).map_err(|e| RunError::Broker(e.to_string()))?;
    let exchange = settings.exchange_template()?;
    config.exchange.name = if exchange.is_constant() {
        settings.exchange.replace("{{", "{").replace("}}", "}")
    } else {
        String::new()
    };
    config.dead_letter = Some(amqp_sink::DeadLetterConfig {
        exchange: settings.dead_letter_exchange.clone(),
        queue: settings.dead_letter_queue.clone(),
    });
    config.passive = !settings.declare_exchange;
    config.window_messages = usize::try_from(settings.window_messages).unwrap_or(usize::MAX);
    config.window_bytes = usize::try_from(settings.window_bytes).unwrap_or(usize::MAX);
    config.heartbeat_timeout = Duration::from_secs(settings.heartbeat_secs.max(3));
    config.backoff.initial = Duration::from_millis(settings.backoff_initial_ms);
    config.backoff.max = Duration::from_millis(settings.backoff_max_ms);
    config.backoff.multiplier = settings.backoff_multiplier;
    config.close_timeout = Duration::from_millis(settings.shutdown_timeout_ms);
    config
        .validate()
        .map_err(|e| RunError::Broker(e.to_string()))?;
    Ok(config)
}

/// Connects the publisher, retrying with backoff while the broker is
/// unreachable; `None` on shutdown.
async fn connect_broker(
    settings: &Settings,
    ctx: &mut Context,
) -> Result<Option<(Publisher, amqp_sink::Outcomes)>, RunError> {
    let config = sink_config(settings)?;
    let mut backoff = Backoff::new(settings);
    loop {
        match Publisher::connect(config.clone()).await {
            Ok(p) => return Ok(Some(p)),
            Err(amqp_sink::SinkError::Connect(errors))
                if errors.iter().all(|e| !e.is_permanent()) =>
            {
                ctx.metrics.reconnect(Side::Rabbitmq, "connect_failed");
                let delay = backoff.delay();
                let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::warn!(error = %reasons.join("; "), retry_in = ?delay, "cannot reach the broker; retrying");
                if !sleep_or_shutdown(delay, &mut ctx.shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(RunError::Broker(e.to_string())),
        }
    }
}

/// After a rewind: consumes the outcomes of what was in flight, resumes
/// the publisher and waits until it is connected; false on shutdown.
async fn wait_for_broker(
    publisher: &mut Publisher,
    outcomes: &mut amqp_sink::Outcomes,
    ctx: &Context,
    shutdown: &mut watch::Receiver<bool>,
    delay: Duration,
) -> bool {
    // Outcomes of the dropped messages may still be queued: read them (they
    // release window room) without acting on them.
    while let Some(event) = outcomes.try_recv() {
        if let SinkEvent::Connected { .. } = event {
            ctx.health.set_broker(true);
        }
    }
    publisher.resume();
    let mut state = publisher.link_state();
    loop {
        let connected = matches!(
            *state.borrow_and_update(),
            amqp_sink::LinkState::Connected { .. } | amqp_sink::LinkState::Blocked { .. }
        );
        if connected {
            ctx.health.set_broker(true);
            // The rewind's backoff: a failure that repeats (a queue that
            // nacks everything) is retried ever more slowly.
            tracing::info!(retry_in = ?delay, "streaming again from the slot");
            return sleep_or_shutdown(delay, shutdown).await;
        }
        ctx.health.set_broker(false);
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return false },
            changed = state.changed() => if changed.is_err() { return false },
            event = outcomes.recv() => match event {
                None => return false,
                Some(SinkEvent::Connected { .. }) => ctx.health.set_broker(true),
                Some(_) => {}
            },
        }
    }
}

impl Session<'_> {
    async fn stream_loop(
        &mut self,
        stream: &mut ReplicationStream,
        publisher: &mut Publisher,
        outcomes: &mut amqp_sink::Outcomes,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<LoopEnd, RunError> {
        // The publish in progress and the event it publishes. It lives
        // across iterations, so that an outcome or a frame arriving while it
        // waits for window room does not cancel it (and its message is built
        // once); the publisher is lent to it and comes back with its result.
        let mut idle: Option<&mut Publisher> = Some(publisher);
        let mut publishing: Option<(Pending, Publishing<'_>)> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(LoopEnd::Shutdown);
            }
            if publishing.is_none() {
                if let Some(publisher) = idle.take() {
                    match self.pending.pop_front() {
                        Some(next) => {
                            let message = outgoing(&next.event);
                            let publish: Publishing<'_> = Box::pin(async move {
                                let result = publisher.publish(message).await;
                                (publisher, result)
                            });
                            publishing = Some((next, publish));
                        }
                        None => idle = Some(publisher),
                    }
                }
            }
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Ok(LoopEnd::Shutdown);
                    }
                }
                event = outcomes.recv() => {
                    let Some(event) = event else {
                        return Err(RunError::Broker("the publisher stopped".into()));
                    };
                    if let Some(end) = self.on_outcome(event)? {
                        return Ok(end);
                    }
                }
                done = in_progress(&mut publishing), if publishing.is_some() => {
                    let (publisher, published) = done;
                    idle = Some(publisher);
                    let Some((pending, _)) = publishing.take() else {
                        continue;
                    };
                    match published {
                        Ok(seq) => self.published(pending, seq),
                        Err(PublishError::Invalid(e)) => self.invalid(pending, &e.to_string())?,
                        Err(e @ (PublishError::Halted { .. } | PublishError::Unavailable { .. })) => {
                            return Ok(LoopEnd::Sink(e.to_string()));
                        }
                        Err(e) => {
                            return Err(RunError::Broker(format!("the publisher stopped: {e}")));
                        }
                    }
                }
                frame = stream.next(), if publishing.is_none() && self.pending.is_empty() => {
                    match frame {
                        Ok(frame) => {
                            backoff.reset();
                            self.on_frame(frame)?;
                        }
                        Err(e) => return Ok(LoopEnd::Stream(e)),
                    }
                }
            }
            self.ack();
        }
    }

    fn ack(&mut self) {
        let acked = self.tracker.acked();
        if acked > self.acks.acked() {
            self.acks.ack(acked);
            self.ctx.health.acked_now();
        }
        let metrics = &self.ctx.metrics;
        metrics.confirmed_lsn.set(lsn_gauge(acked));
        let end = self.acks.server_wal_end();
        if !end.is_zero() {
            metrics.server_wal_end.set(lsn_gauge(end));
            metrics
                .lag_bytes
                .set(lsn_gauge(Lsn::from_u64(end.bytes_since(acked))));
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), RunError> {
        let data = match frame {
            Frame::Keepalive(k) => {
                // In stream order: every frame before it has been read. With
                // no transaction open, its position is safe to ack if nothing
                // is in flight (the tracker checks).
                if self.txn.is_none() {
                    self.tracker.keepalive(k.wal_end);
                }
                return Ok(());
            }
            Frame::XLogData(x) => x,
        };
        let lsn = data.wal_start;
        match pgoutput::decode(data.data)? {
            LogicalMessage::Begin(b) => {
                let id = self.tracker.begin();
                self.txn = Some((id, b.commit_ts));
                self.ctx.metrics.transactions.inc();
            }
            LogicalMessage::Commit(c) => {
                let Some((id, _)) = self.txn.take() else {
                    return Err(RunError::Internal(format!(
                        "Commit at {} without Begin",
                        c.end_lsn
                    )));
                };
                self.tracker
                    .commit(id, c.end_lsn)
                    .map_err(|e| RunError::Internal(e.to_string()))?;
            }
            LogicalMessage::Relation(r) => {
                self.mapper.relation(&r);
            }
            LogicalMessage::Insert(i) => {
                if let Some(mapped) = self.mapper.insert(&i, lsn) {
                    let (id, ts) = self.txn.ok_or_else(|| {
                        RunError::Internal(format!("Insert at {lsn} outside a transaction"))
                    })?;
                    self.enqueue(mapped, id, lsn, Some(ts))?;
                }
            }
            LogicalMessage::Message(m) => {
                if let Some(mapped) = self.mapper.logical_message(&m) {
                    match (m.transactional, self.txn) {
                        (true, Some((id, ts))) => self.enqueue(mapped, id, m.lsn, Some(ts))?,
                        _ => {
                            let id = self.tracker.standalone(m.lsn);
                            self.enqueue_counted(mapped, id, m.lsn, None);
                        }
                    }
                }
            }
            LogicalMessage::Update(u) if self.mapper.is_outbox(u.rel) => {
                self.ctx.metrics.ignore("update");
            }
            LogicalMessage::Delete(d) if self.mapper.is_outbox(d.rel) => {
                self.ctx.metrics.ignore("delete");
            }
            LogicalMessage::Truncate(t) if t.rels.iter().any(|r| self.mapper.is_outbox(*r)) => {
                self.ctx.metrics.ignore("truncate");
            }
            _ => {}
        }
        Ok(())
    }

    /// Queues a mapped event of transaction `id` and counts it there.
    fn enqueue(
        &mut self,
        mapped: Mapped,
        id: TxnId,
        lsn: Lsn,
        commit_ts: Option<PgTimestamp>,
    ) -> Result<(), RunError> {
        self.tracker
            .add_message(id)
            .map_err(|e| RunError::Internal(e.to_string()))?;
        self.enqueue_counted(mapped, id, lsn, commit_ts);
        Ok(())
    }

    /// Queues an event already counted in the tracker.
    fn enqueue_counted(
        &mut self,
        mapped: Mapped,
        id: TxnId,
        lsn: Lsn,
        commit_ts: Option<PgTimestamp>,
    ) {
        let (event, dead_letter) = match mapped {
            Mapped::Publish(event) => (event, None),
            Mapped::DeadLetter(event, reason) => {
                tracing::warn!(lsn = %lsn, reason = reason.as_str(), "dead-lettering a row that cannot be published as configured");
                (event, Some(reason))
            }
        };
        self.pending.push_back(Pending {
            event,
            txn: id,
            lsn,
            commit_ts,
            dead_letter,
        });
    }

    fn published(&mut self, pending: Pending, seq: Seq) {
        let bytes = pending.event.body.len();
        self.inflight_bytes += bytes;
        if let Some(reason) = pending.dead_letter {
            self.ctx.metrics.dead_letter(reason.as_str());
        }
        self.ctx.metrics.published.inc();
        self.inflight.push_back(InFlight {
            seq,
            pending,
            bytes,
        });
        self.inflight_gauges();
    }

    /// The sink refused the message itself (a name over 255 bytes, a body
    /// over the broker's limit): dead-letter it instead.
    fn invalid(&mut self, front: Pending, why: &str) -> Result<(), RunError> {
        if front.dead_letter.is_some() {
            return Err(RunError::Broker(format!(
                "the dead-letter copy of the event at {} cannot be published either: {why}",
                front.lsn
            )));
        }
        let copy = self.mapper.unpublishable(&front.event, front.lsn, why);
        self.pending.push_front(Pending {
            event: copy,
            dead_letter: Some(DeadLetterReason::Invalid),
            ..front
        });
        Ok(())
    }

    fn inflight_gauges(&self) {
        let m = &self.ctx.metrics;
        m.inflight_messages
            .set(i64::try_from(self.inflight.len()).unwrap_or(i64::MAX));
        m.inflight_bytes
            .set(i64::try_from(self.inflight_bytes).unwrap_or(i64::MAX));
    }

    fn remove_inflight(&mut self, seq: Seq) -> Option<InFlight> {
        let index = self.inflight.iter().position(|f| f.seq == seq)?;
        let entry = self.inflight.remove(index)?;
        self.inflight_bytes -= entry.bytes;
        Some(entry)
    }

    fn on_outcome(&mut self, event: SinkEvent) -> Result<Option<LoopEnd>, RunError> {
        match event {
            SinkEvent::Confirmed { up_to } => {
                let now = SystemTime::now();
                while self.inflight.front().is_some_and(|f| f.seq <= up_to) {
                    let Some(done) = self.inflight.pop_front() else {
                        break;
                    };
                    self.confirmed_any = true;
                    self.inflight_bytes -= done.bytes;
                    self.tracker
                        .confirm(done.pending.txn)
                        .map_err(|e| RunError::Internal(e.to_string()))?;
                    self.ctx.metrics.confirmed.inc();
                    if let (Some(ts), None) = (done.pending.commit_ts, done.pending.dead_letter) {
                        if let Ok(latency) = now.duration_since(ts.to_system_time()) {
                            self.ctx
                                .metrics
                                .commit_to_confirm
                                .observe(latency.as_secs_f64());
                        }
                    }
                }
                self.inflight_gauges();
            }
            SinkEvent::Failed { seq, reason } => {
                let Some(entry) = self.remove_inflight(seq) else {
                    // Not ours any more (dropped by a rewind).
                    return Ok(None);
                };
                self.inflight_gauges();
                match reason {
                    FailureReason::Returned {
                        reply_code,
                        reply_text,
                    } if entry.pending.dead_letter.is_none() => {
                        let pending = entry.pending;
                        match self.settings.on_unroutable {
                            UnroutablePolicy::DeadLetter => {
                                tracing::warn!(lsn = %pending.lsn, exchange = %pending.event.exchange, routing_key = %pending.event.routing_key, "no queue is bound for an event; dead-lettering it");
                                let copy = self.mapper.returned(
                                    &pending.event,
                                    pending.lsn,
                                    &format!("{reply_code} {reply_text}"),
                                );
                                // The transaction still counts this event: the
                                // copy's confirm completes it.
                                self.pending.push_front(Pending {
                                    event: copy,
                                    dead_letter: Some(DeadLetterReason::Returned),
                                    ..pending
                                });
                            }
                            UnroutablePolicy::Drop => {
                                self.ctx.metrics.ignore("unroutable_dropped");
                                self.tracker
                                    .confirm(pending.txn)
                                    .map_err(|e| RunError::Internal(e.to_string()))?;
                            }
                        }
                    }
                    other => {
                        return Ok(Some(LoopEnd::Sink(format!(
                            "event at {} not delivered: {other}",
                            entry.pending.lsn
                        ))));
                    }
                }
            }
            SinkEvent::LinkLost { error, halted } => {
                self.ctx.health.set_broker(false);
                self.ctx
                    .metrics
                    .reconnect(Side::Rabbitmq, "connection_lost");
                if halted {
                    return Ok(Some(LoopEnd::Sink(format!("broker link lost: {error}"))));
                }
                // Nothing unconfirmed was failed: what is queued goes out, in
                // order, once the sink has reconnected.
                tracing::warn!(error = %error, "broker link lost with nothing unconfirmed; reconnecting");
            }
            SinkEvent::Connected { broker } => {
                self.ctx.health.set_broker(true);
                tracing::info!(broker = %broker, "connected to the broker");
            }
            SinkEvent::Blocked { reason } => {
                tracing::warn!(reason = %reason, "the broker blocked publishing (resource alarm); waiting");
            }
            SinkEvent::Unblocked => tracing::info!("the broker unblocked publishing"),
            _ => {}
        }
        Ok(None)
    }

    /// Reads outcomes until nothing is in flight or `timeout` passes;
    /// returns whether everything was confirmed.
    async fn drain(&mut self, outcomes: &mut amqp_sink::Outcomes, timeout: Duration) -> bool {
        self.pending.clear();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.inflight.is_empty() {
            let event = tokio::select! {
                e = outcomes.recv() => e,
                () = tokio::time::sleep_until(deadline) => return false,
            };
            let Some(event) = event else { return false };
            match self.on_outcome(event) {
                Ok(None) => {}
                _ => return false,
            }
            // Dead-letter copies queued while draining are not published:
            // the slot re-sends their events next time.
            self.pending.clear();
        }
        true
    }
}

/// A publish in progress, holding the publisher it borrowed. Dropped before
/// it completes (the loop ends), nothing is published: Publisher::publish
/// is cancel-safe.
type Publishing<'p> =
    Pin<Box<dyn Future<Output = (&'p mut Publisher, Result<Seq, PublishError>)> + Send + 'p>>;

/// Polls the publish in progress; pends forever if there is none (a
/// disabled branch of the loop's `select!`).
async fn in_progress<'p>(
    publishing: &mut Option<(Pending, Publishing<'p>)>,
) -> (&'p mut Publisher, Result<Seq, PublishError>) {
    match publishing {
        Some((_, publish)) => publish.await,
        None => std::future::pending().await,
    }
}

fn lsn_gauge(lsn: Lsn) -> i64 {
    i64::try_from(lsn.as_u64()).unwrap_or(i64::MAX)
}

/// The sink's message for a mapped event.
fn outgoing(event: &EventMessage) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(
        event.exchange.clone(),
        event.routing_key.clone(),
        event.body.clone(),
    );
    let p = &mut message.properties;
    p.message_id.clone_from(&event.message_id);
    p.message_type.clone_from(&event.kind);
    p.content_type = Some(event.content_type.clone());
    p.timestamp = event.timestamp;
    p.app_id = Some("outbox-relay".into());
    p.headers = event
        .headers
        .iter()
        .map(|(name, value)| {
            let v = match value {
                HeaderValue::Text(s) => amqp_sink::HeaderValue::String(s.clone()),
                HeaderValue::Int(i) => amqp_sink::HeaderValue::Int(*i),
                HeaderValue::Bytes(b) => {
                    amqp_sink::HeaderValue::Bytes(bytes::Bytes::from(b.clone()))
                }
            };
            (name.clone(), v)
        })
        .collect();
    message
}
