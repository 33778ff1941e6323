//! [`Publisher`]: the caller's handle. It checks and numbers messages, takes
//! their room in the window, and hands them, in order, to the driver task
//! that owns the broker link (see `driver.rs`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use amqp_sink::{OutgoingMessage, Publisher, SinkConfig, SinkEvent};
//! let config = SinkConfig::for_urls(&["amqp://guest:guest@127.0.0.1:5672/%2f"])?;
//! let (mut publisher, mut outcomes) = Publisher::connect(config).await?;
//! tokio::spawn(async move {
//!     while let Some(event) = outcomes.recv().await {
//!         match event {
//!             SinkEvent::Confirmed { up_to } => { /* ack the source up to `up_to` */ }
//!             SinkEvent::Failed { seq, reason } => { /* rewind, dead-letter... */ }
//!             _ => {}
//!         }
//!     }
//! });
//! let seq = publisher
//!     .publish(OutgoingMessage::new("outbox", "order.created", "{}"))
//!     .await?;
//! publisher.close().await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::backoff::Retry;
use crate::config::SinkConfig;
use crate::driver::Driver;
use crate::error::{PublishError, SinkError};
use crate::link;
use crate::message::{OutgoingMessage, Prepared};
use crate::outcome::{Outcomes, Seq};
use crate::shared::{Command, LinkState, Shared};
use crate::window::{Release, Window};

/// The most messages [`Publisher::hold`] keeps before it flushes them.
pub const HOLD_MAX: usize = 256;

/// Publishes messages in order through one confirm-mode channel; see the
/// crate documentation.
#[derive(Debug)]
pub struct Publisher {
    commands: mpsc::UnboundedSender<Command>,
    close: Option<oneshot::Sender<()>>,
    driver: JoinHandle<Result<(), SinkError>>,
    window: Arc<Window>,
    shared: Arc<Shared>,
    state: watch::Receiver<LinkState>,
    next_seq: Seq,
    /// Messages [`hold`](Self::hold) numbered and checked but has not
    /// handed to the driver yet, in order.
    held: Vec<Command>,
    resumed: u64,
    max_message_bytes: usize,
    frame_max: u32,
}

impl Publisher {
    /// Validates `config`, connects to the first broker that answers (each
    /// is tried once, in order), declares the topology, and starts the
    /// driver task. From then on the sink reconnects by itself.
    ///
    /// Needs a Tokio runtime.
    pub async fn connect(config: SinkConfig) -> Result<(Publisher, Outcomes), SinkError> {
        config.validate()?;
        let config = Arc::new(config);
        let mut retry = Retry::new(
            config.backoff.clone(),
            config.brokers.len(),
            config.breaker_after_attempts,
        );
        let mut errors = Vec::new();
        let link = loop {
            let Some(broker) = config.brokers.get(retry.broker()) else {
                return Err(SinkError::Connect(errors));
            };
            match link::connect(&config, broker).await {
                Ok(link) => break link,
                Err(error) => {
                    // The caller has every broker's error and decides what
                    // to log.
                    tracing::debug!(broker = %broker, %error, "cannot connect to the broker");
                    errors.push(error);
                    retry.failed();
                    if errors.len() >= config.brokers.len() {
                        return Err(SinkError::Connect(errors));
                    }
                }
            }
        };
        retry.connected();
        if !errors.is_empty() {
            let failed: Vec<String> = errors.iter().map(ToString::to_string).collect();
            tracing::warn!(failed = %failed.join("; "), "connected to another broker: the ones before it failed");
        }
        tracing::info!(broker = %link.broker, exchange = %config.exchange.name, "connected to the broker");

        let window_bytes = u32::try_from(config.window_bytes).unwrap_or(u32::MAX);
        let window = Arc::new(Window::new(config.window_messages, window_bytes));
        let shared = Arc::new(Shared::default());
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (close_tx, close_rx) = oneshot::channel();
        let (state_tx, state_rx) = watch::channel(LinkState::Connected {
            broker: link.broker.clone(),
        });
        let span = tracing::info_span!("amqp_sink", exchange = %config.exchange.name);
        let driver = Driver::new(
            Arc::clone(&config),
            retry,
            link,
            commands_rx,
            close_rx,
            out_tx,
            Arc::clone(&window),
            Arc::clone(&shared),
            state_tx,
        );
        let driver = tokio::spawn(driver.run().instrument(span));
        let publisher = Publisher {
            commands: commands_tx,
            close: Some(close_tx),
            driver,
            window: Arc::clone(&window),
            shared,
            state: state_rx,
            next_seq: Seq(1),
            held: Vec::new(),
            resumed: 0,
            max_message_bytes: config.max_message_bytes,
            frame_max: config.frame_max,
        };
        Ok((publisher, Outcomes::new(out_rx, window)))
    }

    /// Publishes `message` after those published before it; returns its
    /// sequence number at once, or after waiting for room if the window is
    /// full. Its outcome comes later on [`Outcomes`].
    ///
    /// Errors use no sequence number: [`PublishError::Invalid`] (dead-letter
    /// the message), [`PublishError::Halted`] (a link failure failed
    /// messages: rewind, then [`resume`](Self::resume)),
    /// [`PublishError::Unavailable`] (the broker stays down),
    /// [`PublishError::Closed`].
    ///
    /// Cancel-safe: dropped while waiting for room, nothing is published.
    pub async fn publish(&mut self, message: OutgoingMessage) -> Result<Seq, PublishError> {
        let message = self.prepare(message)?;
        // Held messages first: room they hold comes back only once they
        // are sent and answered.
        self.flush();
        let release = self
            .window
            .acquire(message.bytes)
            .await
            .map_err(|_| PublishError::Closed)?;
        self.send(message, release, false)
    }

    /// Like [`publish`](Self::publish), but never waits: with the window
    /// full it returns [`PublishError::Full`] at once (nothing published,
    /// no sequence number used). Room comes back as outcomes are received.
    pub fn try_publish(&mut self, message: OutgoingMessage) -> Result<Seq, PublishError> {
        // Held messages first, as in `publish`: sent even when this one
        // finds no room, since only their outcomes can make some.
        self.flush();
        let (message, release) = self.prepare_with_room(message)?;
        self.send(message, release, false)
    }

    /// Like [`try_publish`](Self::try_publish), but the message stays in
    /// this handle, numbered and counted in the window, until
    /// [`flush`](Self::flush) (or until [`HOLD_MAX`] are held, or the next
    /// `publish`, `try_publish`, `resume` or `close`). Messages that belong
    /// together (the rows of one transaction) then reach the broker client
    /// in one hand-off: one wake-up of the driver and of lapin's I/O thread
    /// for the lot instead of one per message. A caller that holds must
    /// flush before it waits for anything, outcomes included.
    pub fn hold(&mut self, message: OutgoingMessage) -> Result<Seq, PublishError> {
        let (message, release) = self.prepare_with_room(message)?;
        let seq = self.send(message, release, true)?;
        if self.held.len() >= HOLD_MAX {
            self.flush();
        }
        Ok(seq)
    }

    /// Hands every held message to the driver, in order.
    pub fn flush(&mut self) {
        for command in self.held.drain(..) {
            if let Err(refused) = self.commands.send(command) {
                // The driver is gone: the outcome stream ends, which tells
                // the caller; give the room back.
                if let Command::Publish { release, .. } = refused.0 {
                    self.window.release(release);
                }
            }
        }
    }

    /// How many messages are held (see [`hold`](Self::hold)).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// [`prepare`](Self::prepare), then takes the message's room in the
    /// window without waiting ([`PublishError::Full`] if there is none).
    fn prepare_with_room(
        &self,
        message: OutgoingMessage,
    ) -> Result<(Prepared, Release), PublishError> {
        let message = self.prepare(message)?;
        let release = self
            .window
            .try_acquire(message.bytes)
            .ok_or(PublishError::Full)?;
        Ok((message, release))
    }

    /// Checks and converts a message against the limits of the current
    /// link, and checks that publishing is possible at all.
    fn prepare(&self, message: OutgoingMessage) -> Result<Prepared, PublishError> {
        let negotiated = self.shared.frame_max.load(Ordering::Acquire);
        let frame_max = match negotiated {
            0 => self.frame_max,
            n => n.min(self.frame_max),
        };
        let message = Prepared::new(message, self.max_message_bytes, frame_max)?;
        self.check()?;
        Ok(message)
    }

    /// Numbers a prepared message and hands it, with its window room, to
    /// the driver, or keeps it with the held ones.
    fn send(
        &mut self,
        message: Prepared,
        release: Release,
        hold: bool,
    ) -> Result<Seq, PublishError> {
        if let Err(error) = self.check() {
            self.window.release(release);
            return Err(error);
        }
        let seq = self.next_seq;
        let command = Command::Publish {
            seq,
            message,
            release,
        };
        if hold {
            self.held.push(command);
        } else if let Err(refused) = self.commands.send(command) {
            if let Command::Publish { release, .. } = refused.0 {
                self.window.release(release);
            }
            return Err(PublishError::Closed);
        }
        self.next_seq = seq.next();
        Ok(seq)
    }

    fn check(&self) -> Result<(), PublishError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        if self.shared.loss_generation.load(Ordering::Acquire) > self.resumed {
            return Err(PublishError::Halted {
                cause: self.shared.last_loss(),
            });
        }
        if self.shared.breaker_open.load(Ordering::Acquire) {
            return Err(PublishError::Unavailable {
                cause: self.shared.breaker_cause(),
            });
        }
        Ok(())
    }

    /// After a link failure failed messages, or the broker nacked one,
    /// publishing is halted so that nothing published after them can
    /// overtake their re-publication. Call this once the caller has seen
    /// their `Failed` outcomes and rewound: publishing goes on (after a
    /// reconnect, if need be).
    pub fn resume(&mut self) {
        let generation = self.shared.loss_generation.load(Ordering::Acquire);
        if generation > self.resumed {
            self.flush();
            self.resumed = generation;
            let _ = self.commands.send(Command::Resume { generation });
        }
    }

    /// Whether publishing is halted (see [`resume`](Self::resume)).
    pub fn is_halted(&self) -> bool {
        self.shared.loss_generation.load(Ordering::Acquire) > self.resumed
    }

    /// The sequence number the next message will get.
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// The link state, updated as it changes.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Closes cleanly: publishes what was accepted, waits (up to the close
    /// timeout) for the broker's confirms, fails the rest as unknown, closes
    /// the channel and the connection. Every accepted message has an
    /// outcome on [`Outcomes`], which then ends.
    pub async fn close(mut self) -> Result<(), SinkError> {
        self.flush();
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        let Publisher {
            commands, driver, ..
        } = self;
        drop(commands);
        match driver.await {
            Ok(result) => result,
            Err(join) => Err(SinkError::Close(format!("the sink task failed: {join}"))),
        }
    }
}
