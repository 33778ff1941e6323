//! The driver task: the one place that owns the broker link, publishes in
//! order, tracks confirms, and reconnects.
//!
//! One `select!`, its branch order stating the priority: close request >
//! close deadline > link events (lost, blocked) > confirms > new messages >
//! connection attempts > retry timer. Publishing stops (the command queue is
//! not read) while there is no link or the broker has blocked the
//! connection; the window then fills and `publish` waits.
//!
//! A link failure fails every unconfirmed message as unknown, in order,
//! then reports `LinkLost`. If that failed any message, the driver *halts*:
//! messages the caller sent before it noticed are failed too, until the
//! caller calls `resume` (so nothing overtakes the re-publication of the
//! failed ones). Reconnecting starts at once on the next broker, then
//! backs off (see `backoff.rs`).
//!
//! A nack retires the channel that carried it: the driver takes no new
//! message until everything in flight on that channel has its answer, then
//! opens a fresh channel on the same connection (see
//! [`Link::fresh_channel`] for the broker behaviour this guards against).
//! A nack also halts, as a link failure does: a message the caller sent
//! after the refused one would otherwise go out on the fresh channel ahead
//! of the refused one's re-publication.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::{Confirmation, Event};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff::{jittered, Retry};
use crate::config::SinkConfig;
use crate::error::{LinkError, SinkError};
use crate::inflight::{barrier, InFlight};
use crate::link::{self, Link};
use crate::message::fingerprint;
use crate::outcome::{Delivered, FailureReason, Seq, SinkEvent};
use crate::repeats::{Repeats, Report};
use crate::shared::{Command, LinkState, Shared};
use crate::tracker::Tracker;
use crate::window::{Release, Window};

type Connecting = Pin<Box<dyn Future<Output = Result<Link, LinkError>> + Send>>;
type Probing = Pin<Box<dyn Future<Output = usize> + Send>>;
type Renewing = Pin<Box<dyn Future<Output = Result<lapin::Channel, LinkError>> + Send>>;

/// How often a broker that refused connections is probed (a TCP connect,
/// nothing more) while the driver waits out its backoff.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Commands handled per wake-up before looking at confirms and events again.
const COMMAND_BATCH: usize = 256;

pub(crate) struct Driver {
    config: Arc<SinkConfig>,
    retry: Retry,
    link: Option<Link>,
    connecting: Option<Connecting>,
    retry_at: Option<Instant>,
    /// While waiting to retry after brokers refused connections: which
    /// broker's port opens first (see [`probe`]).
    probing: Option<Probing>,
    blocked: bool,
    /// Failed connection attempts, for one log line per distinct failure.
    repeats: Repeats,
    /// A nack was seen on the current channel: it is replaced once nothing
    /// is in flight on it.
    renew: bool,
    renewing: Option<Renewing>,
    inflight: InFlight,
    tracker: Tracker,
    /// Resolutions seen but not yet settled by a barrier.
    unsettled: bool,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    close: oneshot::Receiver<()>,
    closing: Option<Instant>,
    aborted: usize,
    out: mpsc::UnboundedSender<Delivered>,
    window: Arc<Window>,
    shared: Arc<Shared>,
    state: watch::Sender<LinkState>,
    loss_generation: u64,
    resumed: u64,
    last_loss: LinkError,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Arc<SinkConfig>,
        retry: Retry,
        link: Link,
        commands: mpsc::UnboundedReceiver<Command>,
        close: oneshot::Receiver<()>,
        out: mpsc::UnboundedSender<Delivered>,
        window: Arc<Window>,
        shared: Arc<Shared>,
        state: watch::Sender<LinkState>,
    ) -> Driver {
        let blocked = link.blocked();
        shared.frame_max.store(link.frame_max, Ordering::Release);
        Driver {
            config,
            retry,
            link: Some(link),
            connecting: None,
            retry_at: None,
            probing: None,
            blocked,
            repeats: Repeats::new(),
            renew: false,
            renewing: None,
            inflight: InFlight::new(),
            tracker: Tracker::default(),
            unsettled: false,
            commands,
            commands_open: true,
            close,
            closing: None,
            aborted: 0,
            out,
            window,
            shared,
            state,
            loss_generation: 0,
            resumed: 0,
            last_loss: LinkError::Closed,
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), SinkError> {
        if self.blocked {
            self.on_event(Some(Event::ConnectionBlocked(
                "blocked when connecting".into(),
            )));
        }
        loop {
            if self.closing.is_some() && !self.commands_open && self.tracker.is_empty() {
                break;
            }
            self.maybe_renew();
            let closing = self.closing.is_some();
            let renewing = self.renewing.is_some();
            let deadline = self.closing.unwrap_or_else(far_future);
            let link_up = self.link.is_some();
            let confirms = !self.inflight.is_empty() || self.unsettled;
            let accepting = self.accepting();
            let connecting = self.connecting.is_some();
            let retry_at = self.retry_at;
            let probing = self.probing.is_some() && retry_at.is_some();
            let ready = self.inflight.ready();
            tokio::select! {
                biased;
                _ = &mut self.close, if !closing => self.begin_close(),
                _ = tokio::time::sleep_until(deadline), if closing => self.abort_close(),
                event = next_event(&mut self.link), if link_up => self.on_event(event),
                _ = ready.woken(), if confirms => self.round(),
                renewed = next_renewal(&mut self.renewing), if renewing => {
                    self.renewing = None;
                    self.on_renewed(renewed);
                }
                command = self.commands.recv(), if accepting => self.on_commands(command),
                result = next_attempt(&mut self.connecting), if connecting => {
                    self.connecting = None;
                    self.on_attempt(result);
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(far_future)),
                    if retry_at.is_some() => {
                    self.retry_at = None;
                    self.probing = None;
                    self.start_connecting();
                }
                broker = next_probe(&mut self.probing), if probing => {
                    // A broker that was down answers again: connect now
                    // rather than at the end of a grown backoff.
                    self.probing = None;
                    self.retry_at = None;
                    self.retry.try_next(broker);
                    self.start_connecting();
                }
            }
        }
        self.finish().await
    }

    /// Whether to read the command queue now.
    fn accepting(&self) -> bool {
        if !self.commands_open {
            return false;
        }
        // Halted, or closing without a link: read them to fail them.
        if self.halted() || (self.closing.is_some() && self.link.is_none()) {
            return true;
        }
        self.link.is_some() && !self.blocked && !self.renew
    }

    /// After a nack, once every message on the channel has its answer:
    /// starts opening the channel that replaces it.
    fn maybe_renew(&mut self) {
        // A blocked connection may not be read by the broker: wait.
        if !self.renew || self.renewing.is_some() || !self.tracker.is_empty() || self.blocked {
            return;
        }
        if let Some(link) = &self.link {
            self.renewing = Some(Box::pin(link.fresh_channel(&self.config)));
        }
    }

    fn on_renewed(&mut self, result: Result<lapin::Channel, LinkError>) {
        self.renew = false;
        match result {
            Ok(channel) => {
                if let Some(link) = &mut self.link {
                    link.replace_channel(channel);
                    tracing::info!(broker = %link.broker, "publishing on a fresh channel after a nack");
                }
            }
            Err(error) => self.lost(error),
        }
    }

    fn halted(&self) -> bool {
        self.loss_generation > self.resumed
    }

    fn on_commands(&mut self, first: Option<Command>) {
        let mut next = first;
        let mut handled = 0;
        loop {
            let Some(command) = next.take() else {
                self.commands_open = false;
                if self.closing.is_none() {
                    self.begin_close();
                }
                return;
            };
            self.on_command(command);
            handled += 1;
            // Take the next one only if it will be handled now.
            if handled == COMMAND_BATCH || !self.accepting() {
                return;
            }
            next = match self.commands.try_recv() {
                Ok(command) => Some(command),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Resume { generation } => {
                self.resumed = self.resumed.max(generation);
                tracing::info!("publishing resumed by the caller");
            }
            Command::Publish {
                seq,
                message,
                release,
            } => {
                if self.halted() {
                    // Reported in order: after a nack, messages before it
                    // may still be in flight on the channel.
                    self.tracker.push_lost(seq, release, self.last_loss.clone());
                    self.report();
                    return;
                }
                let channel = match &self.link {
                    Some(link) => Arc::clone(&link.channel),
                    None => {
                        // Closing with no link: nothing more goes out.
                        self.fail_unsent(seq, release, LinkError::Closed);
                        return;
                    }
                };
                self.tracker.push(seq, message.fingerprint, release);
                if let Some(result) = self.inflight.publish(&channel, seq, message) {
                    // Known at once: the channel was already closed.
                    if let Some(error) = self.apply(seq, result) {
                        self.lost(error);
                    } else {
                        self.unsettled = true;
                        self.inflight.wake_again();
                    }
                }
            }
        }
    }

    /// Fails a message that was never handed to lapin; halts if this is the
    /// first failure since the last resume.
    fn fail_unsent(&mut self, seq: Seq, release: Release, error: LinkError) {
        if !self.halted() {
            self.halt(&error);
        }
        let reason = FailureReason::Unknown(error);
        self.emit(SinkEvent::Failed { seq, reason }, release);
    }

    /// Halts publishing until the caller resumes (a new loss while halted
    /// only updates the cause).
    fn halt(&mut self, error: &LinkError) {
        if !self.halted() {
            self.loss_generation += 1;
        }
        self.last_loss = error.clone();
        *self
            .shared
            .last_loss
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
        self.shared
            .loss_generation
            .store(self.loss_generation, Ordering::Release);
    }

    /// One confirm round: barrier, settle what was seen before it, take in
    /// what lapin resolved since, report.
    fn round(&mut self) {
        let Some(link) = &self.link else {
            self.unsettled = false;
            return;
        };
        let returned = barrier(&link.channel);
        self.tracker.settle();
        let done = self.inflight.poll_woken();
        self.unsettled = !done.is_empty();
        if self.unsettled {
            // Settle these once lapin is surely past their frames.
            self.inflight.wake_again();
        }
        let mut failure = None;
        for message in returned {
            if let Err(error) = self.match_return(&message) {
                failure.get_or_insert(error);
            }
        }
        for (seq, result) in done {
            if let Some(error) = self.apply(seq, result) {
                failure.get_or_insert(error);
            }
        }
        match failure {
            Some(error) => self.lost(error),
            None => self.report(),
        }
    }

    /// Records one message's answer; returns a link failure if it was one.
    fn apply(&mut self, seq: Seq, result: lapin::Result<Confirmation>) -> Option<LinkError> {
        match result {
            Ok(Confirmation::Ack(returned)) => {
                let failure = returned.and_then(|m| self.match_return(&m).err());
                self.tracker.resolve(seq, true);
                failure
            }
            Ok(Confirmation::Nack(returned)) => {
                let failure = returned.and_then(|m| self.match_return(&m).err());
                self.tracker.resolve(seq, false);
                self.renew = true;
                // As after a link loss: what the caller sent after the
                // refused message must not reach the broker before the
                // caller rewinds and sends it again (on the fresh channel,
                // a later message would overtake it). Halted before the
                // nack is reported, so a caller that sees it and resumes
                // finds the halt in place.
                self.halt(&LinkError::Nacked { seq: seq.get() });
                failure
            }
            Ok(Confirmation::NotRequested) => Some(LinkError::Other {
                broker: self.broker(),
                cause: "the publishing channel is not in confirm mode".into(),
            }),
            Err(error) => Some(LinkError::from_lapin(
                &self.broker(),
                &error,
                self.config.heartbeat_timeout,
            )),
        }
    }

    fn match_return(&mut self, message: &BasicReturnMessage) -> Result<(), LinkError> {
        let delivery = &message.delivery;
        let fingerprint = fingerprint(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
            &delivery.data,
        );
        let reply_text = message.reply_text.as_str();
        if self
            .tracker
            .returned(fingerprint, message.reply_code, reply_text)
        {
            tracing::debug!(
                exchange = %delivery.exchange,
                routing_key = %delivery.routing_key,
                reply_code = message.reply_code,
                reply_text,
                "the broker returned an unroutable message"
            );
            Ok(())
        } else {
            Err(LinkError::UnmatchedReturn {
                exchange: delivery.exchange.to_string(),
                routing_key: delivery.routing_key.to_string(),
            })
        }
    }

    fn report(&mut self) {
        for (event, release) in self.tracker.drain() {
            self.emit(event, release);
        }
    }

    fn emit(&self, event: SinkEvent, release: Release) {
        if let Err(refused) = self.out.send(Delivered { event, release }) {
            // Nobody reads outcomes any more: free the room here.
            self.window.release(refused.0.release);
        }
    }

    fn broker(&self) -> String {
        self.link
            .as_ref()
            .map(|l| l.broker.clone())
            .unwrap_or_default()
    }

    /// Takes in the last answers of a dead link, then fails the rest (not
    /// reported yet); returns how many failed.
    fn fail_in_flight(&mut self, link: &mut Link, error: LinkError) -> (usize, LinkError) {
        // The broker's own reason for closing the channel, if one was seen:
        // a publish that raced the close reports only "invalid channel
        // state", which would hide a message's fault behind a link's.
        let mut error = error;
        let mut reason = None;
        // Take in every answer lapin has handled (and every return it
        // attached): barrier rounds until one brings nothing new. On a dead
        // channel that is the second; on a live one (close timeout) answers
        // seen after the last barrier are not settled and fail below.
        for _ in 0..8 {
            let returned = barrier(&link.channel);
            self.tracker.settle();
            for message in returned {
                let _ = self.match_return(&message);
            }
            let done = self.inflight.poll_woken();
            if done.is_empty() {
                break;
            }
            for (seq, result) in done {
                // A link error leaves the message unresolved: it fails below.
                if let Some(e) = self.apply(seq, result) {
                    if e.caused_by_message() {
                        reason.get_or_insert(e);
                    }
                }
            }
        }
        if !error.caused_by_message() && link.connection_up() {
            // The connection lives: only the channel closed. Its reason may
            // wait among the connection's events.
            while let Some(Some(event)) = link.events.next().now_or_never() {
                if let Event::Error(e) = event {
                    let e = LinkError::from_lapin(&link.broker, &e, self.config.heartbeat_timeout);
                    if e.caused_by_message() {
                        reason.get_or_insert(e);
                    }
                }
            }
        }
        if !error.caused_by_message() {
            if let Some(reason) = reason {
                error = reason;
            }
        }
        let failed = self.tracker.fail_unsettled(&error);
        self.inflight.clear();
        self.unsettled = false;
        (failed, error)
    }

    /// The link failed: fail what it had in flight, report, reconnect.
    fn lost(&mut self, error: LinkError) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        let (failed, error) = self.fail_in_flight(&mut link, error);
        // The next link brings its own channel (a late nack taken in just
        // above must not renew it).
        self.renew = false;
        self.renewing = None;
        let halted = failed > 0;
        if halted {
            // Before the failures are reported: a caller that sees them and
            // resumes must find the halt in place.
            self.halt(&error);
        }
        self.report();
        if error.is_permanent() {
            tracing::error!(broker = %link.broker, %error, failed, "publishing link lost");
        } else {
            tracing::warn!(broker = %link.broker, %error, failed, "publishing link lost");
        }
        self.emit(
            SinkEvent::LinkLost {
                error: error.clone(),
                halted,
            },
            Release::default(),
        );
        self.blocked = false;
        let connection_up = link.connection_up();
        tokio::spawn(link.close());
        if self.closing.is_some() {
            return;
        }
        if !connection_up {
            // Only a channel failure keeps the same broker.
            self.retry.lost();
        }
        self.state.send_replace(LinkState::Reconnecting {
            attempts: 0,
            last_error: error,
        });
        self.start_connecting();
    }

    fn on_event(&mut self, event: Option<Event>) {
        match event {
            None => {
                let error = LinkError::ConnectionLost {
                    broker: self.broker(),
                    cause: "the connection's event stream ended".into(),
                };
                self.lost(error);
            }
            Some(Event::Error(error)) => {
                let Some(link) = &self.link else {
                    return;
                };
                if !link.connection_up() || !link.channel_up() {
                    let error =
                        LinkError::from_lapin(&link.broker, &error, self.config.heartbeat_timeout);
                    self.lost(error);
                }
            }
            Some(Event::ConnectionBlocked(reason)) => {
                let broker = self.broker();
                tracing::warn!(%broker, %reason, "the broker blocked publishing; waiting");
                self.blocked = true;
                self.emit(
                    SinkEvent::Blocked {
                        reason: reason.clone(),
                    },
                    Release::default(),
                );
                self.state
                    .send_replace(LinkState::Blocked { broker, reason });
            }
            Some(Event::ConnectionUnblocked) => {
                let broker = self.broker();
                tracing::info!(%broker, "the broker unblocked publishing");
                self.blocked = false;
                self.emit(SinkEvent::Unblocked, Release::default());
                self.state.send_replace(LinkState::Connected { broker });
            }
            Some(_) => {}
        }
    }

    fn start_connecting(&mut self) {
        let Some(broker) = self.config.brokers.get(self.retry.broker()).cloned() else {
            return;
        };
        let attempt = self.retry.failures() + 1;
        if attempt == 1 {
            tracing::info!(broker = %broker, "connecting to the broker");
        } else {
            tracing::debug!(broker = %broker, attempt, "connecting to the broker");
        }
        let config = Arc::clone(&self.config);
        self.connecting = Some(Box::pin(
            async move { link::connect(&config, &broker).await },
        ));
    }

    fn on_attempt(&mut self, result: Result<Link, LinkError>) {
        match result {
            Ok(link) => {
                if self.closing.is_some() {
                    // Too late: closing gave up on the link.
                    tokio::spawn(link.close());
                    return;
                }
                self.retry.connected();
                self.shared.breaker_open.store(false, Ordering::Release);
                self.blocked = link.blocked();
                self.shared
                    .frame_max
                    .store(link.frame_max, Ordering::Release);
                let broker = link.broker.clone();
                match self.repeats.recovered() {
                    Some(failed) => {
                        tracing::info!(%broker, failed_attempts = failed, "connected to the broker")
                    }
                    None => tracing::info!(%broker, "connected to the broker"),
                }
                self.link = Some(link);
                self.emit(
                    SinkEvent::Connected {
                        broker: broker.clone(),
                    },
                    Release::default(),
                );
                self.state.send_replace(LinkState::Connected { broker });
            }
            Err(error) => {
                let refused = matches!(
                    error,
                    LinkError::Unreachable { .. } | LinkError::ConnectTimeout { .. }
                );
                let delay = jittered(self.retry.failed(), fastrand::f64());
                let attempts = self.retry.failures();
                match (
                    self.repeats.failed(&error.to_string()),
                    error.is_permanent(),
                ) {
                    (Report::New, true) => {
                        tracing::error!(%error, retry_in = ?delay, "cannot connect to the broker");
                    }
                    (Report::New, false) => {
                        tracing::warn!(%error, retry_in = ?delay, "cannot connect to the broker");
                    }
                    (Report::Again { attempts }, true) => {
                        tracing::error!(%error, attempts, retry_in = ?delay, "still cannot connect to the broker");
                    }
                    (Report::Again { attempts }, false) => {
                        tracing::warn!(%error, attempts, retry_in = ?delay, "still cannot connect to the broker");
                    }
                    (Report::Quiet, _) => {
                        tracing::debug!(%error, attempts, retry_in = ?delay, "cannot connect to the broker");
                    }
                }
                if self.retry.breaker_open() {
                    *self
                        .shared
                        .breaker_cause
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
                    if !self.shared.breaker_open.swap(true, Ordering::AcqRel) {
                        tracing::error!(
                            attempts,
                            "the broker stays unreachable: publishing fails fast until it is back"
                        );
                    }
                    self.state.send_replace(LinkState::Unavailable {
                        attempts,
                        last_error: error,
                    });
                } else {
                    self.state.send_replace(LinkState::Reconnecting {
                        attempts,
                        last_error: error,
                    });
                }
                if self.closing.is_none() {
                    // Refused at the TCP level (a node down or booting):
                    // watch the ports, so that the link is back within a
                    // probe of the broker answering, whatever the backoff.
                    // A broker that answers and then fails the handshake
                    // waits out the backoff.
                    self.probing = refused.then(|| probe(&self.config));
                    self.retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    fn begin_close(&mut self) {
        self.closing = Some(Instant::now() + self.config.close_timeout);
        self.shared.closed.store(true, Ordering::Release);
        if self.link.is_none() {
            // Do not reconnect just to close.
            self.connecting = None;
            self.retry_at = None;
        }
    }

    /// The close timeout passed: fail whatever is left.
    fn abort_close(&mut self) {
        let before = self.tracker.len();
        if let Some(mut link) = self.link.take() {
            let _ = self.fail_in_flight(&mut link, LinkError::Closed);
            self.report();
            self.link = Some(link);
        }
        self.commands.close();
        let mut unsent = 0;
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Publish { seq, release, .. } = command {
                unsent += 1;
                let reason = FailureReason::Unknown(LinkError::Closed);
                self.emit(SinkEvent::Failed { seq, reason }, release);
            }
        }
        self.commands_open = false;
        self.aborted = before + unsent;
        self.connecting = None;
        self.retry_at = None;
    }

    async fn finish(mut self) -> Result<(), SinkError> {
        self.shared.closed.store(true, Ordering::Release);
        self.window.close();
        if let Some(link) = self.link.take() {
            link.close().await;
        }
        self.state.send_replace(LinkState::Closed);
        tracing::info!("sink closed");
        if self.aborted > 0 {
            return Err(SinkError::Close(format!(
                "the broker did not confirm everything within {:?}; the rest was reported as \
                 not delivered",
                self.config.close_timeout
            )));
        }
        Ok(())
    }
}

async fn next_event(link: &mut Option<Link>) -> Option<Event> {
    match link {
        Some(link) => link.events.next().await,
        None => std::future::pending().await,
    }
}

async fn next_renewal(renewing: &mut Option<Renewing>) -> Result<lapin::Channel, LinkError> {
    match renewing {
        Some(renewal) => renewal.await,
        None => std::future::pending().await,
    }
}

async fn next_attempt(connecting: &mut Option<Connecting>) -> Result<Link, LinkError> {
    match connecting {
        Some(attempt) => attempt.await,
        None => std::future::pending().await,
    }
}

/// Resolves with the index of the first broker whose TCP port was closed
/// and then accepts a connection, looking at them all every
/// [`PROBE_EVERY`]. A port that accepts from the start (a broker that
/// answers TCP but fails the handshake, or hangs) never resolves it, so
/// the probe cannot turn a failing broker into a retry loop. The probe
/// opens and closes a socket: no AMQP handshake, no load on a broker that
/// is booting.
fn probe(config: &SinkConfig) -> Probing {
    let targets: Vec<(String, u16)> = config
        .brokers
        .iter()
        .map(|b| (b.host().to_string(), b.port()))
        .collect();
    Box::pin(async move {
        let mut was_closed = vec![false; targets.len()];
        loop {
            for (index, (host, port)) in targets.iter().enumerate() {
                let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                let open = matches!(tokio::time::timeout(PROBE_EVERY, connect).await, Ok(Ok(_)));
                match was_closed.get_mut(index) {
                    Some(closed) if open && *closed => return index,
                    Some(closed) if !open => *closed = true,
                    _ => {}
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    })
}

async fn next_probe(probing: &mut Option<Probing>) -> usize {
    match probing {
        Some(probe) => probe.await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
