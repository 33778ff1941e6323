//! Placing orders at a rate, waiting for them to end, checking the saga's
//! invariants, and measuring commit -> terminal state.

use std::time::Duration;

use serde_json::json;
use tokio_postgres::Client;

/// How many orders fail, and where.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRates {
    /// Payments declined (compensation: cancel the order).
    pub decline: f64,
    /// Stock shortages (compensation: void the payment, cancel).
    pub shortage: f64,
    /// Captures that fail after the reservation (compensation: release the
    /// stock, cancel).
    pub capture_failure: f64,
}

/// Places `count` orders at `rate` per second, each in its own
/// transaction (the order row and its `order.placed` outbox event); the
/// failure paths are drawn from `seed`. Returns the ids placed.
pub async fn place(
    client: &mut Client,
    rate: f64,
    count: u64,
    failures: FailureRates,
    seed: u64,
) -> Result<std::ops::RangeInclusive<i64>, tokio_postgres::Error> {
    let first: i64 = client
        .query_one("SELECT coalesce(max(id), 0) + 1 FROM orders.orders", &[])
        .await?
        .get(0);
    let mut rng = fastrand::Rng::with_seed(seed);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let insert_order = client
        .prepare("INSERT INTO orders.orders (id, card, sku, amount_cents) VALUES ($1, $2, $3, $4)")
        .await?;
    let insert_event = client
        .prepare(
            "INSERT INTO orders.outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('order', $1, 'placed', $2::text::jsonb)",
        )
        .await?;
    let last = first + i64::try_from(count).unwrap_or(i64::MAX) - 1;
    for id in first..=last {
        ticks.tick().await;
        let draw = rng.f64();
        let (card, sku) = if draw < failures.decline {
            ("declined", "widget")
        } else if draw < failures.decline + failures.shortage {
            ("ok", "unobtainium")
        } else if draw < failures.decline + failures.shortage + failures.capture_failure {
            ("expiring", "widget")
        } else {
            ("ok", "widget")
        };
        let amount = i64::from(rng.u32(100..100_000));
        let payload = json!({"order_id": id, "card": card, "sku": sku, "amount_cents": amount});
        let tx = client.transaction().await?;
        tx.execute(&insert_order, &[&id, &card, &sku, &amount])
            .await?;
        tx.execute(&insert_event, &[&id.to_string(), &payload.to_string()])
            .await?;
        tx.commit().await?;
    }
    Ok(first..=last)
}

/// Waits until no order of `ids` is pending, or `timeout`; returns how
/// many still are.
pub async fn wait(
    client: &Client,
    ids: &std::ops::RangeInclusive<i64>,
    timeout: Duration,
) -> Result<i64, tokio_postgres::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pending: i64 = client
            .query_one(
                "SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2 \
                 AND status = 'pending'",
                &[ids.start(), ids.end()],
            )
            .await?
            .get(0);
        if pending == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(pending);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The saga's end state, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Orders looked at.
    pub orders: i64,
    /// Confirmed.
    pub confirmed: i64,
    /// Cancelled.
    pub cancelled: i64,
    /// Neither (not finished).
    pub pending: i64,
    /// Cancelled because the payment was declined.
    pub declined: i64,
    /// Cancelled for want of stock (payment voided).
    pub out_of_stock: i64,
    /// Cancelled after a failed capture (stock released).
    pub capture_failed: i64,
    /// Duplicates the three inboxes received and skipped.
    pub duplicates_skipped: i64,
    /// Every broken invariant, one line each.
    pub violations: Vec<String>,
}

impl Report {
    /// The report in a few lines.
    pub fn render(&self) -> String {
        let mut out = format!(
            "orders {}: confirmed {}, cancelled {} (declined {}, out of stock {}, capture \
             failed {}), pending {}\nduplicates received and skipped by the inboxes: {}\n",
            self.orders,
            self.confirmed,
            self.cancelled,
            self.declined,
            self.out_of_stock,
            self.capture_failed,
            self.pending,
            self.duplicates_skipped
        );
        if self.violations.is_empty() {
            out.push_str("every invariant holds\n");
        }
        for v in &self.violations {
            out.push_str(&format!("VIOLATION {v}\n"));
        }
        out
    }
}

/// Checks every order of `ids`: terminal; a confirmed one has exactly one
/// captured payment, one charge and one live reservation; a cancelled one
/// has no charge and no live reservation (compensated); nobody is charged
/// twice.
pub async fn verify(
    client: &Client,
    ids: &std::ops::RangeInclusive<i64>,
) -> Result<Report, tokio_postgres::Error> {
    let range: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [ids.start(), ids.end()];
    let count = |sql: &'static str| async move {
        client
            .query_one(sql, &range)
            .await
            .map(|r| r.get::<_, i64>(0))
    };
    let mut r = Report {
        orders: count("SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2").await?,
        confirmed: count(
            "SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2 AND status = 'confirmed'",
        )
        .await?,
        cancelled: count(
            "SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2 AND status = 'cancelled'",
        )
        .await?,
        pending: count(
            "SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2 AND status = 'pending'",
        )
        .await?,
        declined: count(
            "SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2 \
             AND reason = 'payment declined'",
        )
        .await?,
        out_of_stock: count(
            "SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2 \
             AND reason LIKE 'out of stock%'",
        )
        .await?,
        capture_failed: count(
            "SELECT count(*) FROM orders.orders WHERE id BETWEEN $1 AND $2 \
             AND reason LIKE 'capture failed%'",
        )
        .await?,
        ..Report::default()
    };
    r.duplicates_skipped = client
        .query_one(
            "SELECT (SELECT coalesce(sum(duplicates), 0) FROM orders.inbox) \
                  + (SELECT coalesce(sum(duplicates), 0) FROM payments.inbox) \
                  + (SELECT coalesce(sum(duplicates), 0) FROM stock.inbox)",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    let checks: [(&str, &str); 6] = [
        (
            "confirmed without exactly one captured payment, one charge and one live reservation \
             (order ids)",
            "SELECT o.id FROM orders.orders o
             LEFT JOIN payments.payments p ON p.order_id = o.id
             LEFT JOIN stock.reservations r ON r.order_id = o.id
             WHERE o.id BETWEEN $1 AND $2 AND o.status = 'confirmed'
               AND (p.status IS DISTINCT FROM 'captured' OR r.status IS DISTINCT FROM 'reserved'
                    OR (SELECT count(*) FROM payments.ledger l
                        WHERE l.order_id = o.id AND l.kind = 'charge') <> 1)
             LIMIT 5",
        ),
        (
            "cancelled with money taken or stock still held (order ids)",
            "SELECT o.id FROM orders.orders o
             LEFT JOIN payments.payments p ON p.order_id = o.id
             LEFT JOIN stock.reservations r ON r.order_id = o.id
             WHERE o.id BETWEEN $1 AND $2 AND o.status = 'cancelled'
               AND (p.status IN ('captured', 'authorised') OR r.status = 'reserved'
                    OR EXISTS (SELECT 1 FROM payments.ledger l WHERE l.order_id = o.id))
             LIMIT 5",
        ),
        (
            "charged twice (order ids)",
            "SELECT order_id FROM payments.ledger WHERE order_id BETWEEN $1 AND $2
             AND kind = 'charge' GROUP BY order_id HAVING count(*) > 1 LIMIT 5",
        ),
        (
            "not finished (order ids)",
            "SELECT id FROM orders.orders WHERE id BETWEEN $1 AND $2 AND status = 'pending'
             LIMIT 5",
        ),
        (
            "stock taken that no live reservation accounts for (a double release or a lost \
             decrement)",
            "SELECT count(*) FROM stock.items i
             WHERE (i.initial - i.available <> (SELECT coalesce(sum(r.qty), 0)
                                                FROM stock.reservations r
                                                WHERE r.sku = i.sku AND r.status = 'reserved')
                    OR i.available < 0)
               AND $1::bigint <= $2::bigint
             HAVING count(*) > 0",
        ),
        (
            "an order emitted the same event twice (a step applied twice)",
            "SELECT count(*) FROM (
                 SELECT aggregate_id, event_type FROM orders.outbox GROUP BY 1, 2 HAVING count(*) > 1
                 UNION ALL
                 SELECT aggregate_id, event_type FROM payments.outbox GROUP BY 1, 2 HAVING count(*) > 1
                 UNION ALL
                 SELECT aggregate_id, event_type FROM stock.outbox GROUP BY 1, 2 HAVING count(*) > 1
             ) d WHERE $1::bigint <= $2::bigint HAVING count(*) > 0",
        ),
    ];
    for (what, sql) in checks {
        let rows = client.query(sql, &range).await?;
        if !rows.is_empty() {
            let ids: Vec<String> = rows
                .iter()
                .map(|row| row.get::<_, i64>(0).to_string())
                .collect();
            r.violations.push(format!("{what}: {}", ids.join(", ")));
        }
    }
    Ok(r)
}

/// Each order's time from its commit to its terminal state, in ascending
/// order.
pub async fn latencies(
    client: &Client,
    ids: &std::ops::RangeInclusive<i64>,
) -> Result<Vec<Duration>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT extract(epoch FROM finished_at - placed_at)::float8 FROM orders.orders \
             WHERE id BETWEEN $1 AND $2 AND finished_at IS NOT NULL ORDER BY 1",
            &[ids.start(), ids.end()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Duration::from_secs_f64(r.get::<_, f64>(0).max(0.0)))
        .collect())
}

/// The value at quantile `q` (0..=1) of sorted durations (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let count = |n: usize| f64::from(u32::try_from(n).unwrap_or(u32::MAX));
    let target = q.clamp(0.0, 1.0) * count(sorted.len());
    sorted
        .iter()
        .enumerate()
        .find(|(i, _)| count(i + 1) >= target)
        .map(|(_, d)| *d)
        .or_else(|| sorted.last().copied())
        .unwrap_or(Duration::ZERO)
}
