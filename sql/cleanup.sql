-- outbox-relay: keeping the outbox table small.
--
-- The relay reads INSERTs from the WAL, not from the table, so rows can go
-- as soon as they are committed. Deletes are ignored by the relay (and the
-- relay's publication does not even publish them). Pick one strategy.
--
-- Strategy 1: delete in the same transaction, right after the INSERT.
--   The table stays empty; no job to run; no index bloat. The event is in
--   the WAL all the same. Trade-off: nothing to look at in the table when
--   debugging (use the broker or the dead-letter queue), and no way to
--   replay from the table.
--
--   BEGIN;
--   UPDATE orders SET status = 'paid' WHERE id = 42;
--   WITH e AS (
--     INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
--     VALUES ('order', '42', 'paid', '{"order_id": 42}')
--     RETURNING id
--   )
--   DELETE FROM outbox WHERE id IN (SELECT id FROM e);
--   COMMIT;
--
-- Strategy 2: a periodic delete of rows older than a retention period.
--   Rows stay for inspection and for manual replay (INSERT ... SELECT of
--   old rows re-emits them). Trade-off: a job to schedule (pg_cron, cron,
--   Kubernetes CronJob), and vacuum work proportional to the event rate.
--   Run it as often as you like; batches keep locks and WAL bursts short.

DO $$
DECLARE
    deleted bigint;
BEGIN
    LOOP
        DELETE FROM public.outbox
        WHERE id IN (
            SELECT id FROM public.outbox
            WHERE created_at < now() - interval '7 days'
            LIMIT 10000
        );
        GET DIAGNOSTICS deleted = ROW_COUNT;
        EXIT WHEN deleted = 0;
        -- One transaction per batch (run this outside BEGIN ... COMMIT).
        COMMIT;
    END LOOP;
END $$;

-- With strategy 2, an index on created_at keeps the job cheap:
-- CREATE INDEX IF NOT EXISTS outbox_created_at ON public.outbox (created_at);
