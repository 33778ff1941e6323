//! The SQL the relay runs or prints: the publication, the slot, and the
//! script `setup --print-sql` gives a DBA.
//!
//! Pure code. Every name goes through `crate::names` (checked, quoted), so
//! a script prints only the statements it means to whatever the names
//! hold.

use crate::names::{quote_ident, quote_literal, TableName};

/// The statement that creates the relay's publication: INSERTs of the
/// outbox table only (updates and deletes of the outbox are never events,
/// and not publishing them spares the walsender the work).
pub fn create_publication(publication: &str, tables: &[TableName]) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert')",
        quote_ident(publication),
        quoted_list(tables)
    )
}

/// The statement that adds outbox tables to an existing publication.
pub fn add_to_publication(publication: &str, tables: &[TableName]) -> String {
    format!(
        "ALTER PUBLICATION {} ADD TABLE {}",
        quote_ident(publication),
        quoted_list(tables)
    )
}

/// `a.b, c.d`, each quoted as SQL needs.
fn quoted_list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statement that creates the relay's slot.
pub fn create_slot(slot: &str) -> String {
    format!(
        "SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
        quote_literal(slot)
    )
}

/// The statement that takes pg_logical_emit_message away from PUBLIC, in
/// every form the server has (PostgreSQL 17 added one with a flush
/// argument): one line, so that it can be printed commented out.
pub fn revoke_emit_message() -> String {
    "DO $$ DECLARE f regprocedure; BEGIN FOR f IN SELECT oid::regprocedure FROM pg_proc \
     WHERE proname = 'pg_logical_emit_message' LOOP EXECUTE format('REVOKE EXECUTE ON \
     FUNCTION %s FROM PUBLIC', f); END LOOP; END $$"
        .to_string()
}

/// What `setup --print-sql` needs to know.
#[derive(Debug, Clone)]
pub struct Script<'a> {
    /// The role to create.
    pub role: &'a str,
    /// The database it connects to.
    pub database: &'a str,
    /// The outbox tables.
    pub tables: &'a [TableName],
    /// The publication.
    pub publication: &'a str,
    /// The slot.
    pub slot: &'a str,
}

/// The script a DBA runs to prepare PostgreSQL for the relay with a
/// least-privilege role: REPLICATION, CONNECT on its database, SELECT on the
/// outbox tables only; the publication; the slot; and, commented out, the REVOKE
/// that keeps other roles from emitting events.
pub fn setup_script(s: &Script<'_>) -> String {
    let role = quote_ident(s.role);
    let revoke = format!("-- {};", revoke_emit_message());
    let mut schemas: Vec<&str> = s.tables.iter().map(|t| t.schema.as_str()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    let grants: String = schemas
        .iter()
        .map(|schema| format!("GRANT USAGE ON SCHEMA {} TO {role};\n", quote_ident(schema)))
        .chain(
            s.tables
                .iter()
                .map(|t| format!("GRANT SELECT ON {} TO {role};\n", t.quoted())),
        )
        .collect();
    format!(
        "-- outbox-relay: PostgreSQL setup for {what} {table}, publication {publication}, slot {slot}.
-- Run as a superuser. wal_level must be logical (ALTER SYSTEM SET wal_level = logical; then restart).

-- A role that may stream changes (REPLICATION) and read the outbox, and
-- nothing else. REPLICATION lets it read every change of the database
-- through a slot (logical decoding is not limited by table grants): confine
-- it in pg_hba.conf to the relay's host, e.g.
--   hostssl {database_hba} {role_hba} 10.0.0.5/32 scram-sha-256
-- and give it a password out of band (psql: \\password {role_hba}).
CREATE ROLE {role} WITH LOGIN REPLICATION;
GRANT CONNECT ON DATABASE {database} TO {role};
{grants}
-- The publication the slot streams: INSERTs of the outbox {what} only.
{publication_sql};

-- The slot: WAL is kept from here until the relay acknowledges it. On
-- PostgreSQL 17 and later the relay makes it a failover slot when it starts
-- (failover_slot = true), so that standbys with sync_replication_slots keep
-- a copy; see the README's High availability section.
{slot_sql};

-- pg_logical_emit_message is executable by PUBLIC: any role that can
-- connect can write a logical decoding message into the WAL. The relay
-- ignores them unless message_prefix is set (the table-less outbox); if you
-- set it, run this (then GRANT EXECUTE ON FUNCTION pg_logical_emit_message(...)
-- to the roles that may emit events):
{revoke}
",
        what = if s.tables.len() == 1 { "table" } else { "tables" },
        table = crate::names::list(s.tables),
        publication = s.publication,
        slot = s.slot,
        database_hba = hba_word(s.database),
        role_hba = hba_word(s.role),
        database = quote_ident(s.database),
        publication_sql = create_publication(s.publication, s.tables),
        slot_sql = create_slot(s.slot),
    )
}

/// A name as a pg_hba.conf line takes it (quoted if it needs to be), for
/// the comment.
fn hba_word(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script<'a>(role: &'a str, database: &'a str, table: &'a TableName) -> String {
        setup_script(&Script {
            role,
            database,
            tables: std::slice::from_ref(table),
            publication: "outbox_relay",
            slot: "outbox_relay",
        })
    }

    #[test]
    fn printed_sql_grants_replication_connect_and_select_on_the_outbox_only() {
        let table = TableName::parse("public.outbox").unwrap();
        let sql = script("outbox_relay", "shop", &table);
        assert!(sql.contains("CREATE ROLE \"outbox_relay\" WITH LOGIN REPLICATION;"));
        assert!(sql.contains("GRANT CONNECT ON DATABASE \"shop\" TO \"outbox_relay\""));
        assert!(sql.contains("GRANT SELECT ON \"public\".\"outbox\" TO \"outbox_relay\""));
        assert!(sql.contains("pg_create_logical_replication_slot('outbox_relay', 'pgoutput')"));
        assert_eq!(sql.matches("GRANT SELECT").count(), 1);
        assert!(!sql.contains("PASSWORD"), "no fixed password: {sql}");
        assert_eq!(
            sql.matches("REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC")
                .count(),
            1
        );
    }

    #[test]
    fn printed_sql_covers_every_outbox_table_once() {
        let tables = [
            TableName::parse("orders.outbox").unwrap(),
            TableName::parse("billing.outbox").unwrap(),
            TableName::parse("orders.saga_outbox").unwrap(),
        ];
        let sql = setup_script(&Script {
            role: "relay",
            database: "shop",
            tables: &tables,
            publication: "outbox_relay",
            slot: "outbox_relay",
        });
        assert_eq!(sql.matches("GRANT SELECT ON").count(), 3);
        assert_eq!(sql.matches("GRANT USAGE ON SCHEMA").count(), 2);
        assert!(sql.contains(
            "CREATE PUBLICATION \"outbox_relay\" FOR TABLE \"orders\".\"outbox\", \
             \"billing\".\"outbox\", \"orders\".\"saga_outbox\" WITH (publish = 'insert')"
        ));
        assert_eq!(
            add_to_publication("p", &tables[1..2]),
            "ALTER PUBLICATION \"p\" ADD TABLE \"billing\".\"outbox\""
        );
    }

    #[test]
    fn hostile_names_print_no_other_statement() {
        let table = TableName::parse("\"x\"\"; DROP TABLE t; --\".\"a\nb\"").ok();
        // A newline in a name is refused before any SQL is printed.
        assert!(table.is_none());
        let table = TableName::parse("\"s'; DROP TABLE t; --\".\"$$;\"\"x\"").unwrap();
        let sql = script("r\"; DROP ROLE x; --", "d'b$$", &table);
        let statements: Vec<&str> = sql
            .lines()
            .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
            .collect();
        assert_eq!(statements.len(), 6, "{sql}");
        for line in statements {
            assert!(line.trim_end().ends_with(';'), "{line}");
        }
    }
}
