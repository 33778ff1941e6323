//! `outbox-relay dead-letters`: look into the dead-letter queue, count it by
//! reason, and publish selected dead letters again to where they were going
//! once their cause is fixed.
//!
//! Reading is non-destructive: messages are taken with `basic.get` and
//! manual acks, and whatever is not acked goes back to the queue when the
//! channel closes (a requeue: on a quorum queue it counts as a delivery).
//! `republish` publishes each selected dead letter to its original exchange
//! and routing key with publisher confirms, and acks it off the dead-letter
//! queue only once the broker confirmed the new copy, so a crash in between
//! leaves a duplicate, never a loss.
//!
//! What a dead letter becomes again ([`restore`]) and which are selected
//! ([`Selection`]) is pure; the I/O is [`read`] and [`republish`].

use std::collections::BTreeMap;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

/// The header that marks a message published again from the dead-letter
/// queue (its value: the reason it was dead-lettered for).
pub const REPUBLISHED_HEADER: &str = "x-relay-republished";

/// One dead letter as read from the queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The delivery tag on the reading channel.
    pub tag: u64,
    /// `x-relay-reason`.
    pub reason: String,
    /// `x-relay-detail`.
    pub detail: String,
    /// `x-relay-lsn`.
    pub lsn: String,
    /// The event id (`x-relay-id`, else message_id).
    pub id: Option<String>,
    /// Where it was going, if the relay knew.
    pub destination: Option<(String, String)>,
    /// Body bytes.
    pub body_len: usize,
    /// Times a quorum queue handed it out before (each `list` counts one;
    /// RabbitMQ 4 drops a message at its queue's delivery-limit, 20 by
    /// default).
    pub delivery_count: u64,
    /// What it would be published as again, or why it cannot be.
    pub restored: Result<Restored, String>,
}

/// A dead letter made an event again.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The original exchange.
    pub exchange: String,
    /// The original routing key.
    pub routing_key: String,
    /// The event's properties, its headers without the relay's
    /// dead-letter ones, and [`REPUBLISHED_HEADER`].
    pub properties: BasicProperties,
    /// The body.
    pub body: Vec<u8>,
}

fn text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Headers that belong to the dead letter, not to the event: the relay's
/// own, and those the broker adds on redelivery and dead-lettering
/// (`x-delivery-count` on quorum queues, `x-death`, `x-first-death-*`,
/// `x-last-death-*`), which would make the new copy look redelivered.
fn is_dead_letter_header(name: &str) -> bool {
    name.starts_with("x-relay-")
        || name == "x-delivery-count"
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// How many times the broker has handed this message out before
/// (`x-delivery-count`, set by quorum queues), 0 if it does not say.
fn delivery_count(headers: &FieldTable) -> u64 {
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// Reads one dead letter: its headers, and whether (and as what) it can be
/// published again. It cannot when the relay never knew where it was
/// going (an unroutable or undecodable row), when its body was left out
/// (`oversize`), or when its headers were (`x-relay-dropped-headers`).
pub fn restore(tag: u64, properties: &BasicProperties, body: &[u8]) -> DeadLetter {
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    let reason = text(headers, "x-relay-reason").unwrap_or_else(|| "-".into());
    let id = text(headers, "x-relay-id").or_else(|| {
        properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
    });
    let destination = match (
        text(headers, "x-relay-original-exchange"),
        text(headers, "x-relay-original-routing-key"),
    ) {
        (Some(e), Some(r)) => Some((e, r)),
        _ => None,
    };
    let restored = match &destination {
        None => Err(format!(
            "it never had a destination ({reason}): fix the row and insert it again"
        )),
        Some(_) if headers.inner().contains_key("x-relay-payload-size") => {
            Err("its body was left out (oversize): insert the event again".into())
        }
        Some(_) if headers.inner().contains_key("x-relay-dropped-headers") => {
            Err("its headers were left out (they did not fit a frame)".into())
        }
        Some((exchange, routing_key)) => {
            let mut kept = FieldTable::default();
            for (name, value) in headers.inner() {
                if !is_dead_letter_header(name.as_str()) {
                    kept.insert(name.clone(), value.clone());
                }
            }
            kept.insert(
                REPUBLISHED_HEADER.into(),
                AMQPValue::LongString(reason.as_str().into()),
            );
            let mut out = BasicProperties::default()
                .with_delivery_mode(2)
                .with_app_id("outbox-relay".into())
                .with_headers(kept);
            if let Some(id) = &id {
                out = out.with_message_id(id.as_str().into());
            }
            if let Some(kind) = properties.kind() {
                out = out.with_type(kind.clone());
            }
            if let Some(ct) = properties.content_type() {
                out = out.with_content_type(ct.clone());
            }
            if let Some(ts) = properties.timestamp() {
                out = out.with_timestamp(*ts);
            }
            Ok(Restored {
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                properties: out,
                body: body.to_vec(),
            })
        }
    };
    DeadLetter {
        tag,
        detail: text(headers, "x-relay-detail").unwrap_or_default(),
        lsn: text(headers, "x-relay-lsn").unwrap_or_default(),
        reason,
        id,
        destination,
        delivery_count: delivery_count(headers),
        body_len: body.len(),
        restored,
    }
}

/// Which dead letters `republish` takes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Every one.
    pub all: bool,
    /// Those with one of these reasons.
    pub reasons: Vec<String>,
    /// Those with one of these event ids.
    pub ids: Vec<String>,
}

impl Selection {
    /// Whether the selection names anything at all.
    pub fn is_empty(&self) -> bool {
        !self.all && self.reasons.is_empty() && self.ids.is_empty()
    }

    /// Whether `letter` is selected.
    pub fn takes(&self, letter: &DeadLetter) -> bool {
        self.all
            || self.reasons.contains(&letter.reason)
            || letter
                .id
                .as_ref()
                .is_some_and(|id| self.ids.iter().any(|i| i == id))
    }
}

/// Counts by reason, in name order.
pub fn by_reason(letters: &[DeadLetter]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in letters {
        *out.entry(l.reason.clone()).or_insert(0) += 1;
    }
    out
}

/// The dead-letter queue, open for reading.
#[derive(Debug)]
pub struct Reader {
    channel: Channel,
    queue: String,
    /// Messages in the queue when it was opened.
    pub total: u32,
}

impl Reader {
    /// Opens `queue` on `connection` (passively: a missing queue is an
    /// error, not created).
    pub async fn open(connection: &Connection, queue: &str) -> Result<Reader, String> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                format!(
                    "dead-letter queue {queue}: {e}; it is declared by `outbox-relay run` \
                     (setting dead_letter_queue)"
                )
            })?;
        Ok(Reader {
            channel,
            queue: queue.to_string(),
            total: declared.message_count(),
        })
    }

    /// Takes up to `limit` dead letters (not acked: they return to the
    /// queue when the reader closes, unless acked by [`republish`]).
    pub async fn read(&self, limit: usize) -> Result<Vec<DeadLetter>, String> {
        let mut out = Vec::new();
        while out.len() < limit {
            let got = self
                .channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| format!("reading {}: {e}", self.queue))?;
            let Some(message) = got else {
                break;
            };
            let d = &message.delivery;
            out.push(restore(d.delivery_tag, &d.properties, &d.data));
        }
        Ok(out)
    }

    /// Acks one dead letter off the queue.
    async fn ack(&self, tag: u64) -> Result<(), String> {
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|e| format!("acking dead letter {tag}: {e}"))
    }

    /// Closes the channel: every dead letter not acked goes back.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.channel.close(200, "done".into()),
        )
        .await;
    }
}

/// What became of one selected dead letter.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The dead letter's id, or its LSN.
    pub what: String,
    /// `Ok(destination)` once published again (confirmed) and acked off
    /// the queue; `Err(why)` if it stays in the dead-letter queue.
    pub result: Result<String, String>,
}

/// Publishes each selected dead letter again, with confirms, and acks it
/// off the dead-letter queue once confirmed. A refused one stays.
pub async fn republish(
    connection: &Connection,
    reader: &Reader,
    letters: &[DeadLetter],
    selection: &Selection,
) -> Result<Vec<Outcome>, String> {
    let mut channel: Option<Channel> = None;
    let mut out = Vec::new();
    for letter in letters.iter().filter(|l| selection.takes(l)) {
        let what = letter
            .id
            .clone()
            .unwrap_or_else(|| format!("the row at {}", letter.lsn));
        let restored = match &letter.restored {
            Ok(r) => r,
            Err(why) => {
                out.push(Outcome {
                    what,
                    result: Err(why.clone()),
                });
                continue;
            }
        };
        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
            let c = connection
                .create_channel()
                .await
                .map_err(|e| format!("opening a publishing channel: {e}"))?;
            c.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("confirm mode: {e}"))?;
            channel = Some(c);
        }
        let Some(c) = &channel else { continue };
        let result = publish(c, restored).await;
        if result.is_ok() {
            reader.ack(letter.tag).await?;
        }
        out.push(Outcome {
            what,
            result: result.map(|()| format!("{} {}", restored.exchange, restored.routing_key)),
        });
    }
    if let Some(c) = channel {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.close(200, "done".into()),
        )
        .await;
    }
    Ok(out)
}

/// One confirmed, routed publish.
async fn publish(channel: &Channel, r: &Restored) -> Result<(), String> {
    let exchange: ShortString = r.exchange.as_str().into();
    let confirm = channel
        .basic_publish(
            exchange,
            r.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &r.body,
            r.properties.clone(),
        )
        .await
        .map_err(|e| format!("publishing: {e}"))?;
    match confirm.await.map_err(|e| format!("publishing: {e}"))? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(format!(
            "returned by the broker ({} {}): bind a queue for routing key {} on exchange {}",
            returned.reply_code, returned.reply_text, r.routing_key, r.exchange
        )),
        Confirmation::Nack(_) => Err("the broker nacked it (a queue refused it)".into()),
        Confirmation::NotRequested => Err("the channel is not in confirm mode".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        t
    }

    #[test]
    fn a_returned_event_is_restored_to_its_destination_without_the_relays_headers() {
        let props = BasicProperties::default()
            .with_message_id("e-1".into())
            .with_type("created".into())
            .with_content_type("application/json".into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers(&[
                ("aggregate_type", "order"),
                ("aggregate_id", "42"),
                ("x-relay-reason", "no_route"),
                ("x-relay-detail", "returned by the broker: 312 NO_ROUTE"),
                ("x-relay-lsn", "0/1A2B3C"),
                ("x-relay-id", "e-1"),
                ("x-relay-original-exchange", "outbox"),
                ("x-relay-original-routing-key", "order.created"),
                ("x-first-death-reason", "rejected"),
            ]));
        let letter = restore(7, &props, b"{\"total\": 1}");
        assert_eq!(letter.reason, "no_route");
        assert_eq!(letter.id.as_deref(), Some("e-1"));
        assert_eq!(letter.lsn, "0/1A2B3C");
        let r = letter.restored.unwrap();
        assert_eq!(
            (r.exchange.as_str(), r.routing_key.as_str()),
            ("outbox", "order.created")
        );
        assert_eq!(r.body, b"{\"total\": 1}");
        assert_eq!(r.properties.message_id().as_ref().unwrap().as_str(), "e-1");
        assert_eq!(r.properties.kind().as_ref().unwrap().as_str(), "created");
        assert_eq!(*r.properties.delivery_mode(), Some(2));
        assert_eq!(*r.properties.timestamp(), Some(1_700_000_000));
        let h = r.properties.headers().as_ref().unwrap().inner();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["aggregate_id", "aggregate_type", REPUBLISHED_HEADER]
        );
    }

    #[test]
    fn letters_without_destination_body_or_headers_are_not_republishable() {
        let unroutable = headers(&[("x-relay-reason", "unroutable_row"), ("x-relay-lsn", "0/1")]);
        let props = BasicProperties::default().with_headers(unroutable);
        assert!(restore(1, &props, b"{}").restored.is_err());
        let oversize = headers(&[
            ("x-relay-reason", "oversize"),
            ("x-relay-original-exchange", "outbox"),
            ("x-relay-original-routing-key", "k"),
            ("x-relay-payload-size", "99999999"),
        ]);
        let props = BasicProperties::default().with_headers(oversize);
        assert!(restore(1, &props, b"")
            .restored
            .unwrap_err()
            .contains("body"));
        let dropped = headers(&[
            ("x-relay-reason", "no_route"),
            ("x-relay-original-exchange", "outbox"),
            ("x-relay-original-routing-key", "k"),
            ("x-relay-dropped-headers", "big"),
        ]);
        let props = BasicProperties::default().with_headers(dropped);
        assert!(restore(1, &props, b"{}")
            .restored
            .unwrap_err()
            .contains("headers"));
    }

    #[test]
    fn a_selection_takes_by_reason_id_or_all_and_counts_group_by_reason() {
        let letter = |reason: &str, id: &str| {
            let props = BasicProperties::default()
                .with_headers(headers(&[("x-relay-reason", reason), ("x-relay-id", id)]));
            restore(1, &props, b"")
        };
        let letters = vec![
            letter("no_route", "a"),
            letter("no_route", "b"),
            letter("oversize", "c"),
        ];
        let by_reason_sel = Selection {
            reasons: vec!["oversize".into()],
            ..Selection::default()
        };
        assert_eq!(letters.iter().filter(|l| by_reason_sel.takes(l)).count(), 1);
        let by_id = Selection {
            ids: vec!["a".into(), "c".into()],
            ..Selection::default()
        };
        assert_eq!(letters.iter().filter(|l| by_id.takes(l)).count(), 2);
        assert!(Selection::default().is_empty());
        let counts = by_reason(&letters);
        assert_eq!(counts.get("no_route"), Some(&2));
        assert_eq!(counts.get("oversize"), Some(&1));
    }
}
