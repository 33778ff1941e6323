//! The three services' handlers. Each applies an event to its own schema
//! and writes the events that follow into its own outbox, in the inbox
//! transaction: the state change, the outgoing events and the claim of the
//! incoming message commit together or not at all.
//!
//! The saga, choreographed (no coordinator; each service reacts):
//!
//! ```text
//! order.placed        -> payments: authorise -> payment.authorised | payment.declined
//! payment.declined    -> orders:   cancel (compensation: nothing taken)
//! payment.authorised  -> stock:    reserve   -> stock.reserved | stock.shortage
//! stock.shortage      -> payments: void the authorisation -> payment.refunded
//! payment.refunded    -> orders:   cancel
//! stock.reserved      -> payments: capture   -> payment.captured | payment.capture_failed
//! payment.capture_failed -> stock: release the reservation -> stock.released
//! stock.released      -> orders:   cancel
//! payment.captured    -> orders:   confirm
//! ```
//!
//! Each step is also idempotent in its own state (a status it moves from),
//! so even a message whose inbox claim was pruned could not apply twice.

use std::time::Duration;

use inbox::{Binding, HandlerError, InboxConfig, Message, RetryPolicy};
use serde_json::{json, Value};
use tokio_postgres::Transaction;

use crate::schema::exchange;

/// Writes an event into a service's outbox.
async fn emit(
    tx: &Transaction<'_>,
    service: &str,
    aggregate_type: &str,
    aggregate_id: i64,
    event_type: &str,
    payload: Value,
) -> Result<(), HandlerError> {
    tx.execute(
        format!(
            "INSERT INTO {service}.outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ($1, $2, $3, $4::text::jsonb)"
        )
        .as_str(),
        &[
            &aggregate_type,
            &aggregate_id.to_string(),
            &event_type,
            &payload.to_string(),
        ],
    )
    .await?;
    Ok(())
}

/// The message's JSON body and its order id; a body that is not one is
/// poison.
fn body(m: &Message) -> Result<(Value, i64), HandlerError> {
    let v: Value = serde_json::from_slice(&m.body)
        .map_err(|e| HandlerError::Poison(format!("body is not JSON: {e}")))?;
    let id = v["order_id"]
        .as_i64()
        .ok_or_else(|| HandlerError::Poison("no order_id".into()))?;
    Ok((v, id))
}

/// Which service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Places orders, confirms or cancels them.
    Orders,
    /// Authorises, captures and voids payments.
    Payments,
    /// Reserves and releases stock.
    Stock,
}

impl Service {
    /// By name.
    pub fn parse(name: &str) -> Option<Service> {
        match name {
            "orders" => Some(Service::Orders),
            "payments" => Some(Service::Payments),
            "stock" => Some(Service::Stock),
            _ => None,
        }
    }

    /// Its schema and consumer name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Orders => "orders",
            Service::Payments => "payments",
            Service::Stock => "stock",
        }
    }

    /// What its queue is bound to.
    pub fn bindings(self, prefix: &str) -> Vec<Binding> {
        let (orders, payments, stock) = (
            exchange(prefix, "orders"),
            exchange(prefix, "payments"),
            exchange(prefix, "stock"),
        );
        match self {
            Service::Orders => vec![
                Binding::new(&payments, "payment.declined"),
                Binding::new(&payments, "payment.refunded"),
                Binding::new(&payments, "payment.captured"),
                Binding::new(&stock, "stock.released"),
            ],
            Service::Payments => vec![
                Binding::new(&orders, "order.placed"),
                Binding::new(&stock, "stock.reserved"),
                Binding::new(&stock, "stock.shortage"),
            ],
            Service::Stock => vec![
                Binding::new(&payments, "payment.authorised"),
                Binding::new(&payments, "payment.capture_failed"),
            ],
        }
    }
}

impl Service {
    /// Its consumer's settings: the work queue bound to the events it
    /// reacts to, its inbox table, retries (5 attempts, from 200 ms).
    pub fn inbox_config(self, amqp_url: &str, prefix: &str, concurrency: usize) -> InboxConfig {
        let mut config = InboxConfig::new(
            amqp_url,
            self.name(),
            crate::schema::queue(prefix, self.name()),
        );
        config.bindings = self.bindings(prefix);
        config.concurrency = concurrency;
        config.inbox_table = format!("{}.inbox", self.name());
        config.retry = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
        };
        config
    }
}

/// A service's handler.
#[derive(Debug, Clone, Copy)]
pub struct ServiceHandler(pub Service);

impl inbox::Handler for ServiceHandler {
    async fn handle(&self, tx: &Transaction<'_>, m: &Message) -> Result<(), HandlerError> {
        match self.0 {
            Service::Orders => orders(tx, m).await,
            Service::Payments => payments(tx, m).await,
            Service::Stock => stock(tx, m).await,
        }
    }
}

async fn orders(tx: &Transaction<'_>, m: &Message) -> Result<(), HandlerError> {
    let (_, id) = body(m)?;
    let (status, reason) = match m.routing_key.as_str() {
        "payment.captured" => ("confirmed", None),
        "payment.declined" => ("cancelled", Some("payment declined")),
        "payment.refunded" => ("cancelled", Some("out of stock; payment voided")),
        "stock.released" => ("cancelled", Some("capture failed; stock released")),
        _ => return Ok(()),
    };
    tx.execute(
        "UPDATE orders.orders SET status = $2, reason = $3, finished_at = clock_timestamp() \
         WHERE id = $1 AND status = 'pending'",
        &[&id, &status, &reason],
    )
    .await?;
    Ok(())
}

async fn payments(tx: &Transaction<'_>, m: &Message) -> Result<(), HandlerError> {
    let (v, id) = body(m)?;
    match m.routing_key.as_str() {
        "order.placed" => {
            let card = v["card"].as_str().unwrap_or("ok").to_string();
            let amount = v["amount_cents"].as_i64().unwrap_or(0);
            let status = if card == "declined" {
                "declined"
            } else {
                "authorised"
            };
            let inserted = tx
                .execute(
                    "INSERT INTO payments.payments (order_id, card, amount_cents, status) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
                    &[&id, &card, &amount, &status],
                )
                .await?;
            if inserted == 1 {
                let event = if status == "declined" {
                    "declined"
                } else {
                    "authorised"
                };
                let sku = v["sku"].clone();
                emit(
                    tx,
                    "payments",
                    "payment",
                    id,
                    event,
                    json!({"order_id": id, "sku": sku, "qty": 1}),
                )
                .await?;
            }
        }
        "stock.reserved" => {
            let row = tx
                .query_opt(
                    "SELECT card, amount_cents FROM payments.payments \
                     WHERE order_id = $1 AND status = 'authorised' FOR UPDATE",
                    &[&id],
                )
                .await?;
            let Some(row) = row else { return Ok(()) };
            let card: String = row.get(0);
            let amount: i64 = row.get(1);
            if card == "expiring" {
                tx.execute(
                    "UPDATE payments.payments SET status = 'capture_failed', \
                     updated_at = clock_timestamp() WHERE order_id = $1",
                    &[&id],
                )
                .await?;
                emit(
                    tx,
                    "payments",
                    "payment",
                    id,
                    "capture_failed",
                    json!({"order_id": id}),
                )
                .await?;
            } else {
                tx.execute(
                    "UPDATE payments.payments SET status = 'captured', \
                     updated_at = clock_timestamp() WHERE order_id = $1",
                    &[&id],
                )
                .await?;
                tx.execute(
                    "INSERT INTO payments.ledger (order_id, kind, amount_cents) \
                     VALUES ($1, 'charge', $2)",
                    &[&id, &amount],
                )
                .await?;
                emit(
                    tx,
                    "payments",
                    "payment",
                    id,
                    "captured",
                    json!({"order_id": id}),
                )
                .await?;
            }
        }
        "stock.shortage" => {
            let voided = tx
                .execute(
                    "UPDATE payments.payments SET status = 'voided', \
                     updated_at = clock_timestamp() WHERE order_id = $1 AND status = 'authorised'",
                    &[&id],
                )
                .await?;
            if voided == 1 {
                emit(
                    tx,
                    "payments",
                    "payment",
                    id,
                    "refunded",
                    json!({"order_id": id}),
                )
                .await?;
            }
        }
        _ => {}
    }
    Ok(())
}

async fn stock(tx: &Transaction<'_>, m: &Message) -> Result<(), HandlerError> {
    let (v, id) = body(m)?;
    match m.routing_key.as_str() {
        "payment.authorised" => {
            let sku = v["sku"].as_str().unwrap_or("widget").to_string();
            let qty = i32::try_from(v["qty"].as_i64().unwrap_or(1)).unwrap_or(1);
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM stock.reservations WHERE order_id = $1",
                    &[&id],
                )
                .await?;
            if exists.is_some() {
                return Ok(());
            }
            let taken = tx
                .execute(
                    "UPDATE stock.items SET available = available - $2 \
                     WHERE sku = $1 AND available >= $2",
                    &[&sku, &i64::from(qty)],
                )
                .await?;
            if taken == 1 {
                tx.execute(
                    "INSERT INTO stock.reservations (order_id, sku, qty, status) \
                     VALUES ($1, $2, $3, 'reserved')",
                    &[&id, &sku, &qty],
                )
                .await?;
                emit(
                    tx,
                    "stock",
                    "stock",
                    id,
                    "reserved",
                    json!({"order_id": id}),
                )
                .await?;
            } else {
                // Recorded too, so that the same event applied again (its
                // inbox claim pruned) finds the order decided.
                tx.execute(
                    "INSERT INTO stock.reservations (order_id, sku, qty, status) \
                     VALUES ($1, $2, $3, 'shortage')",
                    &[&id, &sku, &qty],
                )
                .await?;
                emit(
                    tx,
                    "stock",
                    "stock",
                    id,
                    "shortage",
                    json!({"order_id": id, "sku": sku}),
                )
                .await?;
            }
        }
        "payment.capture_failed" => {
            let released = tx
                .query_opt(
                    "UPDATE stock.reservations SET status = 'released' \
                     WHERE order_id = $1 AND status = 'reserved' RETURNING sku, qty",
                    &[&id],
                )
                .await?;
            if let Some(row) = released {
                let sku: String = row.get(0);
                let qty: i32 = row.get(1);
                tx.execute(
                    "UPDATE stock.items SET available = available + $2 WHERE sku = $1",
                    &[&sku, &i64::from(qty)],
                )
                .await?;
                emit(
                    tx,
                    "stock",
                    "stock",
                    id,
                    "released",
                    json!({"order_id": id}),
                )
                .await?;
            }
        }
        _ => {}
    }
    Ok(())
}
