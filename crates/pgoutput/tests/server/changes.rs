//! Update, Delete and Truncate as the server sends them: unchanged TOASTed
//! values, old keys and old rows under each replica identity, and the
//! truncate options.

use std::collections::BTreeSet;

use pgoutput::{Column, LogicalMessage, OldTuple, ReplicaIdentity};

use super::{kinds, texts, Server};

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

#[tokio::test]
async fn an_update_that_leaves_a_toasted_value_alone_reports_it_unchanged() {
    an_update_that_leaves_a_toasted_value_alone_reports_it_unchanged_on(None).await;
}

/// The body of [`an_update_that_leaves_a_toasted_value_alone_reports_it_unchanged`], on a chosen PostgreSQL major version.
pub(crate) async fn an_update_that_leaves_a_toasted_value_alone_reports_it_unchanged_on(
    version: Option<u32>,
) {
    let s = Server::start_on(version).await;
    // EXTERNAL storage: the big value goes out of line uncompressed.
    s.exec(
        "CREATE TABLE toasty (id int PRIMARY KEY, big text, small int); \
         ALTER TABLE toasty ALTER COLUMN big SET STORAGE EXTERNAL",
    )
    .await;
    let (slot, publication) = s.slot(false).await;
    s.exec("INSERT INTO toasty VALUES (1, repeat('x', 100000), 1)")
        .await;
    s.exec("UPDATE toasty SET small = 2 WHERE id = 1").await;
    let toasted: bool = s
        .client
        .query_one(
            "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class \
             WHERE oid = 'toasty'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(toasted, "the value must live in the TOAST table");

    for (proto, binary) in [(1, "false"), (2, "true")] {
        let changes = s
            .peek(&slot, &publication, proto, &[("binary", binary)])
            .await;
        assert_eq!(
            kinds(&changes),
            ["Begin", "Relation", "Insert", "Commit", "Begin", "Update", "Commit"]
        );
        let LogicalMessage::Insert(insert) = &changes[2].msg else {
            unreachable!()
        };
        // The insert carries the whole value.
        let big = insert.tuple.get(1).unwrap();
        assert_eq!(big.value().unwrap().len(), 100_000);
        assert!(big.value().unwrap().iter().all(|&b| b == b'x'));
        let LogicalMessage::Update(update) = &changes[5].msg else {
            unreachable!()
        };
        assert_eq!(update.old, None, "the key did not change");
        let cols: Vec<Column> = update.new.iter().collect();
        assert_eq!(cols[1], Column::Unchanged);
        if binary == "true" {
            assert_eq!(cols[0], Column::Binary(vec![0, 0, 0, 1].into()));
            assert_eq!(cols[2], Column::Binary(vec![0, 0, 0, 2].into()));
        } else {
            assert_eq!(cols[0], Column::Text("1".into()));
            assert_eq!(cols[2], Column::Text("2".into()));
        }
    }
}

#[tokio::test]
async fn replica_identity_full_sends_the_whole_old_row() {
    replica_identity_full_sends_the_whole_old_row_on(None).await;
}

/// The body of [`replica_identity_full_sends_the_whole_old_row`], on a chosen PostgreSQL major version.
pub(crate) async fn replica_identity_full_sends_the_whole_old_row_on(version: Option<u32>) {
    let s = Server::start_on(version).await;
    s.exec(
        "CREATE TABLE full_rows (id int, note text); ALTER TABLE full_rows REPLICA IDENTITY FULL",
    )
    .await;
    let (slot, publication) = s.slot(false).await;
    s.exec("INSERT INTO full_rows VALUES (1, 'a')").await;
    s.exec("UPDATE full_rows SET note = 'b'").await;
    s.exec("DELETE FROM full_rows").await;
    let changes = s.peek(&slot, &publication, 1, &[]).await;
    assert_eq!(
        kinds(&changes),
        [
            "Begin", "Relation", "Insert", "Commit", "Begin", "Update", "Commit", "Begin",
            "Delete", "Commit"
        ]
    );
    let LogicalMessage::Relation(rel) = &changes[1].msg else {
        unreachable!()
    };
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert!(
        rel.columns.iter().all(|c| c.key),
        "FULL marks every column as key"
    );
    let LogicalMessage::Update(update) = &changes[5].msg else {
        unreachable!()
    };
    let Some(OldTuple::Full(old)) = &update.old else {
        panic!("{:?}", update.old)
    };
    assert_eq!(texts(old), some(&["1", "a"]));
    assert_eq!(texts(&update.new), some(&["1", "b"]));
    let LogicalMessage::Delete(delete) = &changes[8].msg else {
        unreachable!()
    };
    assert!(matches!(delete.old, OldTuple::Full(_)));
    assert_eq!(texts(delete.old.tuple()), some(&["1", "b"]));
}

#[tokio::test]
async fn changing_a_key_sends_the_old_key_under_default_and_index_identity() {
    changing_a_key_sends_the_old_key_under_default_and_index_identity_on(None).await;
}

/// The body of [`changing_a_key_sends_the_old_key_under_default_and_index_identity`], on a chosen PostgreSQL major version.
pub(crate) async fn changing_a_key_sends_the_old_key_under_default_and_index_identity_on(
    version: Option<u32>,
) {
    let s = Server::start_on(version).await;
    s.exec(
        "CREATE TABLE keyed (id int PRIMARY KEY, note text); \
         CREATE TABLE by_index (a int NOT NULL, b int NOT NULL, note text); \
         CREATE UNIQUE INDEX by_index_b ON by_index (b); \
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_b",
    )
    .await;
    let (slot, publication) = s.slot(false).await;
    s.exec("INSERT INTO keyed VALUES (1, 'a')").await;
    s.exec("UPDATE keyed SET note = 'b' WHERE id = 1").await;
    s.exec("UPDATE keyed SET id = 2 WHERE id = 1").await;
    s.exec("DELETE FROM keyed").await;
    s.exec("INSERT INTO by_index VALUES (1, 10, 'x')").await;
    s.exec("UPDATE by_index SET b = 11").await;
    s.exec("DELETE FROM by_index").await;
    let changes = s.peek(&slot, &publication, 1, &[]).await;
    let rows: Vec<&LogicalMessage> = changes
        .iter()
        .map(|c| &c.msg)
        .filter(|m| !matches!(m, LogicalMessage::Begin(_) | LogicalMessage::Commit(_)))
        .collect();
    assert_eq!(rows.len(), 9, "{:?}", kinds(&changes));

    let LogicalMessage::Relation(keyed) = rows[0] else {
        panic!("{:?}", rows[0])
    };
    assert_eq!(keyed.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        keyed.columns.iter().map(|c| c.key).collect::<Vec<_>>(),
        [true, false]
    );
    // Key unchanged: no old tuple.
    let LogicalMessage::Update(u) = rows[2] else {
        panic!()
    };
    assert_eq!(u.old, None);
    assert_eq!(texts(&u.new), some(&["1", "b"]));
    // Key changed: the old key, other columns NULL.
    let LogicalMessage::Update(u) = rows[3] else {
        panic!()
    };
    let Some(OldTuple::Key(old)) = &u.old else {
        panic!("{:?}", u.old)
    };
    assert_eq!(texts(old), vec![Some("1".to_string()), None]);
    assert_eq!(texts(&u.new), some(&["2", "b"]));
    let LogicalMessage::Delete(d) = rows[4] else {
        panic!()
    };
    assert!(matches!(d.old, OldTuple::Key(_)));
    assert_eq!(texts(d.old.tuple()), vec![Some("2".to_string()), None]);

    let LogicalMessage::Relation(by_index) = rows[5] else {
        panic!("{:?}", rows[5])
    };
    assert_eq!(by_index.replica_identity, ReplicaIdentity::Index);
    assert_eq!(
        by_index.columns.iter().map(|c| c.key).collect::<Vec<_>>(),
        [false, true, false]
    );
    let LogicalMessage::Update(u) = rows[7] else {
        panic!()
    };
    let Some(OldTuple::Key(old)) = &u.old else {
        panic!("{:?}", u.old)
    };
    assert_eq!(texts(old), vec![None, Some("10".to_string()), None]);
    let LogicalMessage::Delete(d) = rows[8] else {
        panic!()
    };
    assert_eq!(
        texts(d.old.tuple()),
        vec![None, Some("11".to_string()), None]
    );
}

#[tokio::test]
async fn truncate_names_its_tables_and_options() {
    truncate_names_its_tables_and_options_on(None).await;
}

/// The body of [`truncate_names_its_tables_and_options`], on a chosen PostgreSQL major version.
pub(crate) async fn truncate_names_its_tables_and_options_on(version: Option<u32>) {
    let s = Server::start_on(version).await;
    s.exec(
        "CREATE TABLE parent (id serial PRIMARY KEY); \
         CREATE TABLE child (parent_id int REFERENCES parent); \
         CREATE TABLE lone (n int)",
    )
    .await;
    let parent = s.oid("parent").await;
    let child = s.oid("child").await;
    let lone = s.oid("lone").await;
    let (slot, publication) = s.slot(false).await;
    s.exec("TRUNCATE lone").await;
    s.exec("TRUNCATE parent CASCADE").await;
    s.exec("TRUNCATE parent, child RESTART IDENTITY").await;
    s.exec("TRUNCATE parent RESTART IDENTITY CASCADE").await;
    let changes = s.peek(&slot, &publication, 1, &[]).await;
    let truncates: Vec<_> = changes
        .iter()
        .filter_map(|c| match &c.msg {
            LogicalMessage::Truncate(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(truncates.len(), 4, "{:?}", kinds(&changes));
    let set = |rels: &[pgoutput::Oid]| rels.iter().copied().collect::<BTreeSet<_>>();
    let both = BTreeSet::from([parent, child]);
    assert_eq!(truncates[0].rels, [lone]);
    assert!(!truncates[0].cascade && !truncates[0].restart_identity);
    assert_eq!(set(&truncates[1].rels), both);
    assert!(truncates[1].cascade && !truncates[1].restart_identity);
    assert_eq!(set(&truncates[2].rels), both);
    assert!(!truncates[2].cascade && truncates[2].restart_identity);
    assert_eq!(set(&truncates[3].rels), both);
    assert!(truncates[3].cascade && truncates[3].restart_identity);
    assert!(truncates.iter().all(|t| t.xid.is_none()));
}
