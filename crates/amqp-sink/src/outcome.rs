//! What the caller learns, in order: [`SinkEvent`]s on the [`Outcomes`]
//! receiver.
//!
//! Every message accepted by [`crate::Publisher::publish`] gets exactly one
//! outcome, in sequence order: covered by a `Confirmed { up_to }` (the broker
//! took responsibility for it) or named by a `Failed { seq, reason }`.
//! Link events (lost, connected, blocked) are interleaved at the point
//! where they happened.
//!
//! Receiving an outcome is also what frees the message's room in the
//! in-flight window: the window bounds messages the caller has not yet
//! heard about, so memory stays bounded even if the caller falls behind.
//! The caller must therefore read outcomes concurrently with publishing
//! (another task, or the same `select!`).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::error::LinkError;
use crate::window::{Release, Window};

/// The sequence number of a published message: 1, 2, 3, ... in publish
/// order, never reused, across reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub(crate) u64);

impl Seq {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    pub(crate) fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl From<Seq> for u64 {
    fn from(seq: Seq) -> u64 {
        seq.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a message failed. In every case the caller must treat the message as
/// not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// The broker refused the message (basic.nack), e.g. a queue full with
    /// `x-overflow = reject-publish`.
    Nacked,
    /// The broker could not route the message to any queue and returned it
    /// (mandatory publishing). Typically dead-lettered by the caller.
    Returned {
        /// The AMQP reply code (312 NO_ROUTE).
        reply_code: u16,
        /// What the broker said.
        reply_text: String,
    },
    /// The link failed before the broker confirmed the message: it may or
    /// may not have been enqueued. Counts as not delivered.
    Unknown(LinkError),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Nacked => f.write_str("the broker nacked the message"),
            FailureReason::Returned {
                reply_code,
                reply_text,
            } => write!(
                f,
                "the broker returned the message as unroutable ({reply_code} {reply_text})"
            ),
            FailureReason::Unknown(e) => write!(f, "not known to be delivered: {e}"),
        }
    }
}

/// One thing the caller learns, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkEvent {
    /// The broker confirmed every message up to and including `up_to` that
    /// has not been reported otherwise (a `Failed` always comes first for
    /// the messages it names).
    Confirmed {
        /// The watermark.
        up_to: Seq,
    },
    /// The message `seq` was not delivered.
    Failed {
        /// The message.
        seq: Seq,
        /// Why.
        reason: FailureReason,
    },
    /// The link was lost; every unconfirmed message has been reported
    /// `Failed` (reason `Unknown`) just before this event. If any was, the
    /// publisher is halted until [`crate::Publisher::resume`].
    LinkLost {
        /// Why.
        error: LinkError,
        /// Whether messages were failed (and so publishing is halted).
        halted: bool,
    },
    /// Connected (again) to a broker; publishing goes on.
    Connected {
        /// The broker, redacted.
        broker: String,
    },
    /// The broker blocked publishing (memory or disk alarm); nothing is
    /// lost, publishing waits.
    Blocked {
        /// The broker's reason.
        reason: String,
    },
    /// The broker lifted the block.
    Unblocked,
}

/// An event and the window room it frees when the caller receives it.
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) event: SinkEvent,
    pub(crate) release: Release,
}

/// The ordered stream of outcomes and link events. Ends (`None`) after the
/// sink has closed and every outcome was received.
#[derive(Debug)]
pub struct Outcomes {
    rx: mpsc::UnboundedReceiver<Delivered>,
    window: Arc<Window>,
}

impl Outcomes {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Delivered>, window: Arc<Window>) -> Self {
        Outcomes { rx, window }
    }

    /// The next event. Cancel-safe.
    pub async fn recv(&mut self) -> Option<SinkEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<SinkEvent> {
        let delivered = self.rx.try_recv().ok()?;
        self.window.release(delivered.release);
        Some(delivered.event)
    }

    /// Polls for the next event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<SinkEvent>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(delivered)) => {
                self.window.release(delivered.release);
                Poll::Ready(Some(delivered.event))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_util::Stream for Outcomes {
    type Item = SinkEvent;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SinkEvent>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        // Outcomes nobody will read must not keep the window closed.
        self.rx.close();
        while let Ok(delivered) = self.rx.try_recv() {
            self.window.release(delivered.release);
        }
    }
}
