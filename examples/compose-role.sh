#!/bin/sh
# docker-compose.yml's demo: the relay's least-privilege role (REPLICATION,
# CONNECT, SELECT on the outbox only) and the publication, created by the
# superuser at the first start of the PostgreSQL container.
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$OUTBOX_RELAY_DB_PASSWORD" \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE outbox_relay WITH LOGIN REPLICATION PASSWORD :'pw';
GRANT CONNECT ON DATABASE postgres TO outbox_relay;
GRANT SELECT ON public.outbox TO outbox_relay;
CREATE PUBLICATION outbox_relay FOR TABLE public.outbox WITH (publish = 'insert');
SQL
