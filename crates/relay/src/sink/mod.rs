//! The sink seam: where the relay's core hands messages to a broker and
//! learns what became of them.
//!
//! The durability contract: an implementation reports
//! [`Outcome::Confirmed`] for a message only once the destination has taken
//! responsibility for it (for RabbitMQ, a publisher confirm of a persistent
//! message). Only a confirmed message can move the slot's acknowledged
//! position (invariant 3 of docs/ARCHITECTURE.md); everything else
//! (accepted, sent, written to a socket) is merely in flight.
//!
//! Every message [`Sink::publish`] accepts gets exactly one outcome, in
//! sequence order: covered by a `Confirmed { up_to }` or named by a
//! `Failed { seq, .. }` (which always comes before a `Confirmed` that would
//! cover it). Link events come in between, where they happened.
//!
//! Three sinks: [`amqp::AmqpSink`] (RabbitMQ, through amqp-sink),
//! [`MemorySink`] (scripted outcomes, for the core's tests) and [`NullSink`]
//! (confirms at once, for the benchmark's measure of the relay alone). A
//! second broker would be a fourth module here and a setting; the core does
//! not change.

pub mod amqp;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;

use crate::mapping::{EventMessage, Limits};

/// The number the core gives a message it publishes: 1, 2, 3, ... in
/// publish order, never reused, across reconnects and rewinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What [`Sink::publish`] did with a message, at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// Accepted: an outcome will follow.
    Accepted,
    /// No room in the sink's own in-flight window: nothing was published;
    /// publish it again after the next outcome.
    Full,
    /// The message itself cannot be published (a limit the mapping did not
    /// foresee): nothing was published; dead-letter it.
    Invalid(String),
    /// The link is down (or halted after a failure): nothing was published;
    /// rewind.
    LinkDown(String),
}

/// A fault of the broker link, as the core needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFault {
    /// What happened, for logs and dead-letter details (no secrets).
    pub text: String,
    /// Whether a message caused it, and which if the sink can tell.
    pub cause: FaultCause,
}

/// Who is at fault when the link failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultCause {
    /// The link or a server (down, cut, stalled, closed by an operator):
    /// wait and rewind.
    Link,
    /// A message sent to this exchange, which does not exist (the first
    /// one in flight to it is the one at fault).
    NoExchange(String),
    /// A message the broker refused; which one is not known.
    Message,
    /// The broker user may not publish to a message's exchange
    /// (ACCESS_REFUSED); which message is not known.
    AccessRefused,
}

/// Why a message failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The broker could not route it (no queue bound) and returned it.
    Returned(String),
    /// The broker refused to take it (basic.nack).
    Nacked,
    /// The link failed before the broker confirmed it: maybe delivered,
    /// maybe not; counts as not delivered.
    Lost(LinkFault),
}

/// What a sink reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every message up to and including `up_to` not reported otherwise is
    /// durable at the destination.
    Confirmed {
        /// The watermark.
        up_to: Seq,
    },
    /// The message `seq` was not delivered.
    Failed {
        /// The message.
        seq: Seq,
        /// Why.
        failure: Failure,
    },
    /// The link was lost (every unconfirmed message was reported `Failed`
    /// just before).
    LinkLost(LinkFault),
    /// Connected (again).
    LinkRestored {
        /// Where, redacted.
        broker: String,
    },
    /// The broker blocked publishing (a resource alarm); nothing is lost.
    Blocked(String),
    /// The broker lifted the block.
    Unblocked,
}

/// The sink was closed or its task ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sink is closed: {0}")]
pub struct SinkClosed(pub String);

/// A destination for the relay's messages; see the module documentation.
pub trait Sink: Send {
    /// What every message must fit (the mapping checks it before publishing).
    fn limits(&self) -> Limits;

    /// Hands `message` to the broker after every earlier one, under `seq`.
    /// Never waits: a full window is [`Handed::Full`]. A sink may keep an
    /// accepted message back until [`flush`](Self::flush), so that the rows
    /// of one transaction go to the broker in one hand-off.
    fn publish(&mut self, seq: Seq, message: &EventMessage) -> Handed;

    /// Sends on what [`publish`](Self::publish) kept back. The driver calls
    /// it before it waits for anything but the rest of a transaction.
    fn flush(&mut self) {}

    /// Whether accepted messages are kept back, waiting for a flush.
    fn holding(&self) -> bool {
        false
    }

    /// The next outcome or link event; `None` once the sink has closed.
    /// Cancel-safe.
    fn next_outcome(&mut self) -> impl Future<Output = Option<Outcome>> + Send;

    /// After the core dropped what was in flight (a rewind): forgets it
    /// (outcomes still to come for it are consumed here), lets publishing
    /// go on, and resolves once the link is up.
    fn recover(&mut self) -> impl Future<Output = Result<(), SinkClosed>> + Send;

    /// Closes: waits (bounded) for outstanding confirms, then closes the
    /// link.
    fn close(self) -> impl Future<Output = Result<(), SinkClosed>> + Send;
}

/// A sink that confirms every message at once and keeps nothing: the
/// relay's own ceiling (slot, decode, map, track, ack) in the benchmark.
/// Never use it for real events: it throws them away.
#[derive(Debug)]
pub struct NullSink {
    limits: Limits,
    confirmed: Option<Seq>,
    closed: bool,
}

impl NullSink {
    /// A null sink keeping to the same limits as `limits` (the AMQP
    /// sink's, so that the mapping does the same work).
    pub fn new(limits: Limits) -> NullSink {
        NullSink {
            limits,
            confirmed: None,
            closed: false,
        }
    }
}

impl Sink for NullSink {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn publish(&mut self, seq: Seq, _message: &EventMessage) -> Handed {
        self.confirmed = Some(seq);
        Handed::Accepted
    }

    async fn next_outcome(&mut self) -> Option<Outcome> {
        match self.confirmed.take() {
            Some(up_to) => Some(Outcome::Confirmed { up_to }),
            None if self.closed => None,
            None => std::future::pending().await,
        }
    }

    async fn recover(&mut self) -> Result<(), SinkClosed> {
        self.confirmed = None;
        Ok(())
    }

    async fn close(mut self) -> Result<(), SinkClosed> {
        self.closed = true;
        Ok(())
    }
}

/// A sink in memory whose outcomes a test scripts: it records what was
/// published and reports whatever the test queues, in order.
#[derive(Debug)]
pub struct MemorySink {
    limits: Limits,
    /// Every message accepted, in order.
    pub published: Vec<(Seq, EventMessage)>,
    /// Outcomes to report, in order.
    pub script: VecDeque<Outcome>,
    /// What the next publish answers (then back to Accepted).
    pub next_answer: Option<Handed>,
    /// Most messages accepted and not yet given an outcome by the script.
    pub window: usize,
    unanswered: usize,
}

impl MemorySink {
    /// An empty sink with these limits and a window of `window` messages.
    pub fn new(limits: Limits, window: usize) -> MemorySink {
        MemorySink {
            limits,
            published: Vec::new(),
            script: VecDeque::new(),
            next_answer: None,
            window,
            unanswered: 0,
        }
    }

    /// Queues the confirm of everything published so far.
    pub fn confirm_all(&mut self) {
        if let Some((seq, _)) = self.published.last() {
            self.script.push_back(Outcome::Confirmed { up_to: *seq });
        }
    }

    /// Takes the next scripted outcome, if any.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        let outcome = self.script.pop_front()?;
        self.unanswered = 0;
        Some(outcome)
    }
}

impl Sink for MemorySink {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn publish(&mut self, seq: Seq, message: &EventMessage) -> Handed {
        if let Some(answer) = self.next_answer.take() {
            if answer != Handed::Accepted {
                return answer;
            }
        }
        if self.unanswered >= self.window {
            return Handed::Full;
        }
        self.unanswered += 1;
        self.published.push((seq, message.clone()));
        Handed::Accepted
    }

    async fn next_outcome(&mut self) -> Option<Outcome> {
        match self.take_outcome() {
            Some(outcome) => Some(outcome),
            None => std::future::pending().await,
        }
    }

    async fn recover(&mut self) -> Result<(), SinkClosed> {
        self.script.clear();
        self.unanswered = 0;
        Ok(())
    }

    async fn close(self) -> Result<(), SinkClosed> {
        Ok(())
    }
}
