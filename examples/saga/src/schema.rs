//! The three services' schemas in one database: each has its own outbox
//! table (read by outbox-relay through one slot, one `[[table]]` entry
//! each), its own inbox table and its own state. Nothing is shared but the
//! database server, as if each service had its own.

/// The services, by schema name.
pub const SERVICES: [&str; 3] = ["orders", "payments", "stock"];

/// The exchange each service's events go to: `<prefix>.<service>` (the
/// prefix keeps runs apart on a shared broker; `saga` by default).
pub fn exchange(prefix: &str, service: &str) -> String {
    format!("{prefix}.{service}")
}

/// A service's work queue (its delay and parking queues are named after
/// it).
pub fn queue(prefix: &str, service: &str) -> String {
    format!("{prefix}.{service}")
}

/// The DDL of every schema (idempotent), with the stock the saga sells.
pub fn ddl() -> String {
    let mut sql = String::new();
    for service in SERVICES {
        sql.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {service};
             CREATE TABLE IF NOT EXISTS {service}.outbox (
                 id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
                 seq            bigserial   NOT NULL,
                 aggregate_type text        NOT NULL,
                 aggregate_id   text        NOT NULL,
                 event_type     text        NOT NULL,
                 payload        jsonb       NOT NULL,
                 created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
             );\n"
        ));
        let inbox = inbox::InboxTable::parse(&format!("{service}.inbox"))
            .map(|t| t.create_sql())
            .unwrap_or_default();
        sql.push_str(&inbox);
    }
    sql.push_str(
        "CREATE TABLE IF NOT EXISTS orders.orders (
             id           bigint      PRIMARY KEY,
             card         text        NOT NULL,
             sku          text        NOT NULL,
             amount_cents bigint      NOT NULL,
             status       text        NOT NULL DEFAULT 'pending',
             reason       text,
             placed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
             finished_at  timestamptz
         );
         CREATE TABLE IF NOT EXISTS payments.payments (
             order_id     bigint      PRIMARY KEY,
             card         text        NOT NULL,
             amount_cents bigint      NOT NULL,
             status       text        NOT NULL,
             updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
         );
         -- Money actually taken and given back: a ledger with no unique
         -- key, so a double charge would show.
         CREATE TABLE IF NOT EXISTS payments.ledger (
             id           bigserial   PRIMARY KEY,
             order_id     bigint      NOT NULL,
             kind         text        NOT NULL,
             amount_cents bigint      NOT NULL,
             at           timestamptz NOT NULL DEFAULT clock_timestamp()
         );
         CREATE TABLE IF NOT EXISTS stock.items (
             sku       text   PRIMARY KEY,
             initial   bigint NOT NULL,
             available bigint NOT NULL
         );
         CREATE TABLE IF NOT EXISTS stock.reservations (
             order_id bigint PRIMARY KEY,
             sku      text   NOT NULL,
             qty      int    NOT NULL,
             status   text   NOT NULL
         );
         INSERT INTO stock.items VALUES ('widget', 1000000000, 1000000000),
                                        ('unobtainium', 0, 0)
             ON CONFLICT (sku) DO NOTHING;
",
    );
    sql
}

/// The relay's settings for the saga: one slot and publication, one
/// `[[table]]` entry per service's outbox, each to its exchange. pg_url
/// and amqp_url come from the environment (RELAY_PG_URL, RELAY_AMQP_URL).
pub fn relay_toml(prefix: &str) -> String {
    let mut toml = String::from(
        "# outbox-relay for the saga: three outbox tables, one slot.\n\
         slot = \"saga\"\n\
         publication = \"saga\"\n\
         header_columns = [\"aggregate_type\", \"aggregate_id\", \"event_type\"]\n",
    );
    for service in SERVICES {
        toml.push_str(&format!(
            "\n[[table]]\nname = \"{service}.outbox\"\nexchange = \"{}\"\n",
            exchange(prefix, service)
        ));
    }
    toml
}
