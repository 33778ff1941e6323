-- The example application's own table: an order, changed in the same
-- transaction as the event that announces it (see produce.sql).
CREATE TABLE IF NOT EXISTS public.orders (
    id         bigserial   PRIMARY KEY,
    customer   text        NOT NULL,
    total_cents bigint     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
