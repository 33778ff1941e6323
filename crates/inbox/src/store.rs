//! The inbox table: the SQL that claims a message id inside the handler's
//! transaction, the table's DDL (the same as sql/inbox.sql), and its
//! retention.
//!
//! A message id is claimed with an INSERT in the transaction that applies
//! the message's effects: the first delivery inserts the row, and the
//! effects commit with it; a duplicate (a redelivery after a crash between
//! commit and ack, or a second publish by the relay) finds the row, counts
//! itself in `duplicates` and applies nothing. Two copies handled at once
//! serialise on the primary key: the second waits for the first's commit,
//! then sees the row.

use std::time::Duration;

use tokio_postgres::GenericClient;

/// Why a table name is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inbox table {name:?}: {why}")]
pub struct TableNameError {
    name: String,
    why: &'static str,
}

/// A table name, quoted for SQL: `schema.table` or `table` (found through
/// the search_path), each part taken as written (case kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxTable {
    quoted: String,
    index: String,
}

impl InboxTable {
    /// Parses `schema.table` or `table`.
    pub fn parse(name: &str) -> Result<InboxTable, TableNameError> {
        let error = |why| TableNameError {
            name: name.to_string(),
            why,
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(error("give schema.table or table"));
        }
        for part in &parts {
            if part.is_empty() || part.len() > 63 {
                return Err(error("each part holds 1 to 63 bytes"));
            }
            if part.chars().any(|c| c.is_control()) {
                return Err(error("a part holds a control character"));
            }
        }
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let quoted = parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join(".");
        let last = parts.last().copied().unwrap_or("inbox");
        let stem: String = last.chars().take(40).collect();
        let index = quote(&format!("{stem}_received_at_idx"));
        Ok(InboxTable { quoted, index })
    }

    /// The name, quoted.
    pub fn quoted(&self) -> &str {
        &self.quoted
    }

    /// The DDL that creates the table and its index if missing (what
    /// sql/inbox.sql holds for `inbox`).
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    \
                 consumer          text        NOT NULL,\n    \
                 message_id        text        NOT NULL,\n    \
                 received_at       timestamptz NOT NULL DEFAULT now(),\n    \
                 duplicates        integer     NOT NULL DEFAULT 0,\n    \
                 last_duplicate_at timestamptz,\n    \
                 PRIMARY KEY (consumer, message_id)\n\
             );\n\
             CREATE INDEX IF NOT EXISTS {i} ON {t} (received_at);\n",
            t = self.quoted,
            i = self.index,
        )
    }

    /// The claim: true if this is the message id's first delivery to this
    /// consumer (its effects are to be applied), false for a duplicate.
    pub(crate) fn claim_sql(&self) -> String {
        format!(
            "INSERT INTO {} AS i (consumer, message_id) VALUES ($1, $2) \
             ON CONFLICT (consumer, message_id) DO UPDATE \
             SET duplicates = i.duplicates + 1, last_duplicate_at = now() \
             RETURNING (xmax = 0)",
            self.quoted
        )
    }
}

/// Claims `message_id` for `consumer` in the caller's transaction: true if
/// it is new.
pub(crate) async fn claim(
    tx: &impl GenericClient,
    table: &InboxTable,
    consumer: &str,
    message_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = tx
        .query_one(table.claim_sql().as_str(), &[&consumer, &message_id])
        .await?;
    row.try_get(0)
}

/// Whether the claim is still there, read in the caller's transaction (an
/// error if the transaction failed).
pub(crate) async fn claimed(
    tx: &impl GenericClient,
    table: &InboxTable,
    consumer: &str,
    message_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE consumer = $1 AND message_id = $2)",
        table.quoted
    );
    tx.query_one(sql.as_str(), &[&consumer, &message_id])
        .await?
        .try_get(0)
}

/// Creates the inbox table and its index if they are missing.
pub async fn migrate(
    client: &impl GenericClient,
    table: &InboxTable,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&table.create_sql()).await
}

/// Deletes the ids received before `older_than` ago, `batch` rows per
/// statement (short transactions, no long lock), until none is left;
/// returns how many went.
///
/// The trade-off: a copy of a message that arrives after its id was
/// pruned is applied again. Keep the window longer than any copy can
/// arrive late: the relay re-sends at most what was in flight when it or
/// the broker failed (seconds), `outbox-relay replay` re-sends on demand
/// (use a window longer than you would replay), and a message can wait in
/// a delay queue for the retry policy's longest delay.
pub async fn prune(
    client: &impl GenericClient,
    table: &InboxTable,
    older_than: Duration,
    batch: u32,
) -> Result<u64, tokio_postgres::Error> {
    let sql = format!(
        "DELETE FROM {t} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {t} \
         WHERE received_at < now() - $1::text::interval LIMIT $2))",
        t = table.quoted
    );
    let interval = format!("{} milliseconds", older_than.as_millis());
    let limit = i64::from(batch.max(1));
    let mut total = 0;
    loop {
        let deleted = client.execute(sql.as_str(), &[&interval, &limit]).await?;
        total += deleted;
        if deleted < u64::from(batch.max(1)) {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_migration_is_the_default_tables_ddl() {
        let shipped = include_str!("../../../sql/inbox.sql");
        let ddl = InboxTable::parse("inbox").unwrap().create_sql();
        assert!(
            shipped.contains(&ddl),
            "sql/inbox.sql drifted from InboxTable::create_sql:\n{ddl}"
        );
    }

    #[test]
    fn names_are_quoted_part_by_part_and_odd_ones_refused() {
        let t = InboxTable::parse("Orders.inbox").unwrap();
        assert_eq!(t.quoted(), "\"Orders\".\"inbox\"");
        let t = InboxTable::parse("we\"ird").unwrap();
        assert_eq!(t.quoted(), "\"we\"\"ird\"");
        for bad in ["", "a.b.c", "a.", "x\ny", &"n".repeat(64)] {
            assert!(InboxTable::parse(bad).is_err(), "{bad:?}");
        }
    }
}
