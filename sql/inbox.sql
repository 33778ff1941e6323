-- The inbox table of outbox-relay's inbox crate (crates/inbox): one row per
-- message a consumer applied, claimed in the same transaction as the
-- message's effects, so a redelivered or re-sent message is recognised and
-- skipped (its duplicates counted). `consumer` names the consuming service
-- or handler: several consumers of one event may share the table.
-- `inbox::migrate` runs the same statements for a table of another name.
--
-- Retention: delete old ids in batches (`inbox::prune`, or the statement at
-- the end, from a scheduler). A copy of a message that arrives after its id
-- was deleted is applied again: keep the window longer than the longest
-- retry delay and than any replay you might run.

CREATE TABLE IF NOT EXISTS "inbox" (
    consumer          text        NOT NULL,
    message_id        text        NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    duplicates        integer     NOT NULL DEFAULT 0,
    last_duplicate_at timestamptz,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS "inbox_received_at_idx" ON "inbox" (received_at);

-- Retention, one batch (repeat while it deletes 10000 rows):
-- DELETE FROM inbox WHERE ctid = ANY (ARRAY(
--     SELECT ctid FROM inbox WHERE received_at < now() - interval '7 days' LIMIT 10000));
