//! The queues a consumer declares: its work queue (bound to the exchanges
//! it reads), one delay queue per retry, and the parking queue.
//!
//! A delay queue has no consumer. A retried message is published to it
//! (through the default exchange) with its delay as the per-message TTL;
//! when the TTL runs out the broker dead-letters it to the default exchange
//! with the work queue's name as routing key, which puts it back in the
//! work queue. One queue per retry keeps every message's wait within its
//! attempt's range (see `crate::retry`). The parking queue holds messages
//! whose attempts ran out, with the last error, for an operator.

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use crate::error::InboxError;

/// The kind of work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// A classic queue, on one node.
    #[default]
    Classic,
    /// A quorum queue, replicated across a cluster.
    Quorum,
}

/// A binding of the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The exchange (it must exist: outbox-relay declares its own).
    pub exchange: String,
    /// The binding key, e.g. `order.*` on a topic exchange.
    pub key: String,
}

impl Binding {
    /// A binding of `exchange` with `key`.
    pub fn new(exchange: impl Into<String>, key: impl Into<String>) -> Binding {
        Binding {
            exchange: exchange.into(),
            key: key.into(),
        }
    }
}

/// The names and shape of a consumer's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The work queue.
    pub queue: String,
    /// Its bindings.
    pub bindings: Vec<Binding>,
    /// Its kind.
    pub kind: QueueKind,
    /// One consumer at a time reads the queue (`x-single-active-consumer`):
    /// with concurrency 1, messages are handled in the queue's order.
    pub single_active_consumer: bool,
    /// How many delay queues (the retry policy's retries).
    pub retries: u32,
}

impl Topology {
    /// The delay queue of retry `n` (1-based).
    pub fn retry_queue(&self, n: u32) -> String {
        format!("{}.retry.{n}", self.queue)
    }

    /// The parking queue.
    pub fn parked_queue(&self) -> String {
        format!("{}.parked", self.queue)
    }

    /// Every queue name it declares.
    pub fn queues(&self) -> Vec<String> {
        let mut names = vec![self.queue.clone(), self.parked_queue()];
        names.extend((1..=self.retries).map(|n| self.retry_queue(n)));
        names
    }

    /// Checks the names: AMQP short strings, no control characters, not
    /// amq.-prefixed.
    pub fn validate(&self) -> Result<(), InboxError> {
        for name in self.queues() {
            if name.is_empty()
                || name.len() > 255
                || name.chars().any(char::is_control)
                || name.starts_with("amq.")
            {
                return Err(InboxError::Config(format!(
                    "queue name {name:?}: 1 to 255 bytes, no control characters, not amq.*"
                )));
            }
        }
        Ok(())
    }

    /// Declares every queue and binding (idempotent: an existing queue
    /// declared alike is left as it is; one declared differently is an
    /// error that names it).
    pub async fn declare(&self, channel: &Channel) -> Result<(), InboxError> {
        let mut work = FieldTable::default();
        if self.kind == QueueKind::Quorum {
            work.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        if self.single_active_consumer {
            work.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        declare(channel, &self.queue, work).await?;
        for binding in &self.bindings {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    InboxError::Broker(format!(
                        "binding queue {} to exchange {} with {}: {e} (the exchange must exist: \
                         start outbox-relay once, or declare it)",
                        self.queue, binding.exchange, binding.key
                    ))
                })?;
        }
        for n in 1..=self.retries {
            let mut args = self.replicated();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.queue.as_str().into()),
            );
            if self.kind == QueueKind::Quorum {
                // The expiry's move back to the work queue is confirmed
                // (RabbitMQ's at-least-once dead-lettering, which needs
                // reject-publish overflow); classic queues move it at
                // most once.
                args.insert(
                    "x-dead-letter-strategy".into(),
                    AMQPValue::LongString("at-least-once".into()),
                );
                args.insert(
                    "x-overflow".into(),
                    AMQPValue::LongString("reject-publish".into()),
                );
            }
            declare(channel, &self.retry_queue(n), args).await?;
        }
        declare(channel, &self.parked_queue(), self.replicated()).await
    }

    /// The arguments that make a queue of this kind (quorum: replicated).
    fn replicated(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.kind == QueueKind::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }
}

async fn declare(channel: &Channel, name: &str, args: FieldTable) -> Result<(), InboxError> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map(drop)
        .map_err(|e| {
            InboxError::Broker(format!(
                "declaring queue {name}: {e} (a queue of that name declared with other \
                 arguments must be deleted first)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_has_its_delay_queues_and_a_parking_queue() {
        let t = Topology {
            queue: "payments.orders".into(),
            bindings: vec![Binding::new("orders", "order.placed")],
            kind: QueueKind::Classic,
            single_active_consumer: false,
            retries: 2,
        };
        assert_eq!(
            t.queues(),
            [
                "payments.orders",
                "payments.orders.parked",
                "payments.orders.retry.1",
                "payments.orders.retry.2"
            ]
        );
        assert!(t.validate().is_ok());
        let bad = Topology {
            queue: "amq.x".into(),
            ..t
        };
        assert!(bad.validate().is_err());
    }
}
