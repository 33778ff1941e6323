//! Logical decoding messages (transactional and not), Origin and Type as a
//! real server sends them.

use pgoutput::LogicalMessage;

use super::{kinds, Server};

#[tokio::test]
async fn logical_decoding_messages_keep_their_flag_lsn_prefix_and_content() {
    logical_decoding_messages_keep_their_flag_lsn_prefix_and_content_on(None).await;
}

/// The body of [`logical_decoding_messages_keep_their_flag_lsn_prefix_and_content`], on a chosen PostgreSQL major version.
pub(crate) async fn logical_decoding_messages_keep_their_flag_lsn_prefix_and_content_on(
    version: Option<u32>,
) {
    let mut s = Server::start_on(version).await;
    s.exec("CREATE TABLE t (n int)").await;
    let (slot, publication) = s.slot(false).await;
    let lsn = |row: tokio_postgres::Row| -> pgoutput::Lsn {
        row.get::<_, String>(0).parse().expect("an LSN")
    };
    let outside = lsn(s
        .client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'relay', 'not in a transaction')::text",
            &[],
        )
        .await
        .unwrap());
    let tx = s.client.transaction().await.unwrap();
    let inside = lsn(tx
        .query_one(
            "SELECT pg_logical_emit_message(true, 'relay/bin', '\\x00ff0a'::bytea)::text",
            &[],
        )
        .await
        .unwrap());
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();

    // Without the messages option, pgoutput leaves them out.
    let plain = s.peek(&slot, &publication, 1, &[]).await;
    assert_eq!(kinds(&plain), ["Begin", "Relation", "Insert", "Commit"]);

    let changes = s
        .peek(&slot, &publication, 1, &[("messages", "true")])
        .await;
    assert_eq!(
        kinds(&changes),
        ["Message", "Begin", "Message", "Relation", "Insert", "Commit"]
    );
    let LogicalMessage::Message(m) = &changes[0].msg else {
        unreachable!()
    };
    assert!(!m.transactional);
    assert_eq!(m.lsn, outside);
    assert_eq!(changes[0].lsn, outside);
    assert_eq!(m.prefix, "relay");
    assert_eq!(m.content.as_ref(), b"not in a transaction");
    assert_eq!(m.xid, None);
    let LogicalMessage::Message(m) = &changes[2].msg else {
        unreachable!()
    };
    assert!(m.transactional);
    assert_eq!(m.lsn, inside);
    assert_eq!(m.prefix, "relay/bin");
    assert_eq!(m.content.as_ref(), [0x00, 0xFF, 0x0A]);
}

#[tokio::test]
async fn a_transaction_replayed_from_an_origin_carries_an_origin_message() {
    a_transaction_replayed_from_an_origin_carries_an_origin_message_on(None).await;
}

/// The body of [`a_transaction_replayed_from_an_origin_carries_an_origin_message`], on a chosen PostgreSQL major version.
pub(crate) async fn a_transaction_replayed_from_an_origin_carries_an_origin_message_on(
    version: Option<u32>,
) {
    let s = Server::start_on(version).await;
    s.exec("CREATE TABLE t (n int)").await;
    let (slot, publication) = s.slot(false).await;
    s.exec(
        "SELECT pg_replication_origin_create('upstream_node'); \
         SELECT pg_replication_origin_session_setup('upstream_node'); \
         BEGIN; \
         SELECT pg_replication_origin_xact_setup('2A/DEADBEEF', now()); \
         INSERT INTO t VALUES (1); \
         COMMIT; \
         SELECT pg_replication_origin_session_reset()",
    )
    .await;
    let changes = s.peek(&slot, &publication, 1, &[]).await;
    if s.pg.major() < 15 {
        // PostgreSQL 14's pgoutput does not send the origin.
        assert_eq!(kinds(&changes), ["Begin", "Relation", "Insert", "Commit"]);
        return;
    }
    assert_eq!(
        kinds(&changes),
        ["Begin", "Origin", "Relation", "Insert", "Commit"]
    );
    let LogicalMessage::Origin(o) = &changes[1].msg else {
        unreachable!()
    };
    assert_eq!(o.name, "upstream_node");
    assert_eq!(o.commit_lsn.to_string(), "2A/DEADBEEF");
}

#[tokio::test]
async fn columns_of_non_built_in_types_are_described_by_type_messages() {
    columns_of_non_built_in_types_are_described_by_type_messages_on(None).await;
}

/// The body of [`columns_of_non_built_in_types_are_described_by_type_messages`], on a chosen PostgreSQL major version.
pub(crate) async fn columns_of_non_built_in_types_are_described_by_type_messages_on(
    version: Option<u32>,
) {
    let s = Server::start_on(version).await;
    s.exec(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
         CREATE DOMAIN positive AS int4 CHECK (VALUE > 0); \
         CREATE TABLE feelings (id int PRIMARY KEY, m mood, p positive)",
    )
    .await;
    let oid_of = |name: &'static str| {
        let client = &s.client;
        async move {
            let row = client
                .query_one("SELECT $1::text::regtype::oid", &[&name])
                .await
                .unwrap();
            pgoutput::Oid(row.get::<_, u32>(0))
        }
    };
    let mood = oid_of("mood").await;
    let positive = oid_of("positive").await;
    let (slot, publication) = s.slot(false).await;
    s.exec("INSERT INTO feelings VALUES (1, 'happy', 7)").await;
    let changes = s.peek(&slot, &publication, 1, &[]).await;
    assert_eq!(
        kinds(&changes),
        ["Begin", "Type", "Type", "Relation", "Insert", "Commit"]
    );
    let LogicalMessage::Type(t) = &changes[1].msg else {
        unreachable!()
    };
    assert_eq!(
        (t.oid, t.namespace.as_str(), t.name.as_str()),
        (mood, "public", "mood")
    );
    // A domain is described by its base type; pg_catalog is sent as "".
    let LogicalMessage::Type(t) = &changes[2].msg else {
        unreachable!()
    };
    assert_eq!(
        (t.oid, t.namespace.as_str(), t.name.as_str()),
        (positive, "", "int4")
    );
    let LogicalMessage::Relation(r) = &changes[3].msg else {
        unreachable!()
    };
    assert_eq!(r.column("m").unwrap().type_oid, mood);
    assert_eq!(r.column("p").unwrap().type_oid, positive);
    let LogicalMessage::Insert(i) = &changes[4].msg else {
        unreachable!()
    };
    assert_eq!(
        super::texts(&i.tuple),
        ["1", "happy", "7"].map(|v| Some(v.to_string()))
    );
}
