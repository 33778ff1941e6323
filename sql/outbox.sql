-- The outbox table outbox-relay streams (the default message contract of
-- the README). Applications INSERT one row per event in the same
-- transaction as the state change it describes; outbox-relay reads the
-- INSERTs from the WAL, so the table needs no `published` flag and no index
-- beyond its key. Rows may be deleted right after they are inserted (even in
-- the same transaction) or by a periodic cleanup: deletes are ignored.
--
-- Extra columns are welcome: each one becomes a message header.

CREATE TABLE IF NOT EXISTS public.outbox (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE public.outbox IS
    'Transactional outbox streamed to RabbitMQ by outbox-relay (logical replication, pgoutput).';
