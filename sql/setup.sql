-- outbox-relay: PostgreSQL setup for a least-privilege relay role.
-- Run as a superuser (psql -f sql/setup.sql), after sql/outbox.sql, and
-- with wal_level = logical (ALTER SYSTEM SET wal_level = logical; restart).
-- `outbox-relay setup --print-sql` prints the same for your settings.

-- A role that may stream changes (REPLICATION) and read the outbox, and
-- nothing else. No password here: set one out of band (psql: \password
-- outbox_relay), or use another authentication method. REPLICATION lets the
-- role read every change of the database through a slot (logical decoding
-- is not limited by table grants), so confine it in pg_hba.conf to the
-- relay's host and to TLS, e.g.
--   hostssl mydb outbox_relay 10.0.0.5/32 scram-sha-256
CREATE ROLE outbox_relay WITH LOGIN REPLICATION;
DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO outbox_relay', current_database()); END $$;
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

-- pg_logical_emit_message is executable by PUBLIC. The relay ignores
-- logical decoding messages unless message_prefix is set (the table-less
-- outbox); if you set it, keep other roles from emitting events:
--   REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC;
--   REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, bytea) FROM PUBLIC;
--   (PostgreSQL 17+: also the forms with a fourth, boolean argument)
--   GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO your_app;
