-- One business transaction: the order and its event commit together, or
-- neither does. outbox-relay publishes the event only once it committed.
BEGIN;
WITH o AS (
    INSERT INTO orders (customer, total_cents)
    VALUES ('ada@example.com', (random() * 10000)::bigint)
    RETURNING id, customer, total_cents
)
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
SELECT 'order', o.id::text, 'created',
       jsonb_build_object('order_id', o.id, 'customer', o.customer, 'total_cents', o.total_cents)
FROM o;
COMMIT;
