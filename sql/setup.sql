-- outbox-relay: PostgreSQL setup for a least-privilege relay role.
-- Run as a superuser (psql -f sql/setup.sql), after sql/outbox.sql, and
-- with wal_level = logical (ALTER SYSTEM SET wal_level = logical; restart).
-- `outbox-relay setup --print-sql` prints the same for your settings.

-- A role that may stream changes (REPLICATION) and read the outbox, and
-- nothing else. Change the password, or use another authentication method.
CREATE ROLE outbox_relay WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO outbox_relay;
GRANT SELECT ON public.outbox TO outbox_relay;

-- The publication the slot streams: INSERTs of the outbox table only
-- (updates and deletes of the outbox are never events).
CREATE PUBLICATION outbox_relay FOR TABLE public.outbox WITH (publish = 'insert');

-- The slot. WAL is kept from its creation until the relay acknowledges it:
-- create it when the relay is about to run, and drop it
-- (SELECT pg_drop_replication_slot('outbox_relay')) if you retire the relay,
-- or it will keep WAL forever.
SELECT pg_create_logical_replication_slot('outbox_relay', 'pgoutput');
