//! ALTER TABLE between inserts: the server re-sends the Relation, and a
//! `RelationCache` fed every Relation reads each row by column name with
//! the definition the row was written under.

use pgoutput::{LogicalMessage, RelationCache};

use super::{kinds, text, Server};

#[tokio::test]
async fn the_relation_cache_follows_alter_table_between_inserts() {
    the_relation_cache_follows_alter_table_between_inserts_on(None).await;
}

/// The body of [`the_relation_cache_follows_alter_table_between_inserts`], on a chosen PostgreSQL major version.
pub(crate) async fn the_relation_cache_follows_alter_table_between_inserts_on(
    version: Option<u32>,
) {
    let s = Server::start_on(version).await;
    s.exec("CREATE TABLE evolving (id int PRIMARY KEY, a text)")
        .await;
    let table = s.oid("evolving").await;
    let (slot, publication) = s.slot(false).await;
    s.exec("INSERT INTO evolving VALUES (1, 'one')").await;
    s.exec("ALTER TABLE evolving ADD COLUMN b int").await;
    s.exec("INSERT INTO evolving VALUES (2, 'two', 22)").await;
    s.exec("ALTER TABLE evolving DROP COLUMN a").await;
    s.exec("INSERT INTO evolving VALUES (3, 33)").await;
    s.exec("ALTER TABLE evolving RENAME COLUMN b TO c").await;
    s.exec("INSERT INTO evolving VALUES (4, 44)").await;
    // No schema change: no new Relation.
    s.exec("INSERT INTO evolving VALUES (5, 55)").await;

    let changes = s.peek(&slot, &publication, 1, &[]).await;
    let relations = kinds(&changes)
        .into_iter()
        .filter(|k| *k == "Relation")
        .count();
    assert_eq!(relations, 4, "{:?}", kinds(&changes));

    let mut cache = RelationCache::new();
    let mut seen = Vec::new();
    let mut replaced = Vec::new();
    for change in &changes {
        match &change.msg {
            LogicalMessage::Relation(r) => {
                if let Some(old) = cache.insert(r.clone()) {
                    replaced.push(old.columns.len());
                }
            }
            LogicalMessage::Insert(i) => {
                assert_eq!(i.rel, table);
                let rel = cache.get(i.rel).expect("a Relation precedes its rows");
                assert_eq!(i.tuple.len(), rel.columns.len());
                let get = |name: &str| {
                    cache
                        .value(i.rel, &i.tuple, name)
                        .map(|c| text(&c).to_owned())
                };
                seen.push((get("id"), get("a"), get("b"), get("c")));
            }
            _ => {}
        }
    }
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        seen,
        [
            (s("1"), s("one"), None, None),
            (s("2"), s("two"), s("22"), None),
            (s("3"), None, s("33"), None),
            (s("4"), None, None, s("44")),
            (s("5"), None, None, s("55")),
        ]
    );
    assert_eq!(
        replaced,
        [2, 3, 2],
        "each re-sent Relation replaced the one before"
    );
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.column_index(table, "c"), Some(1));
    assert_eq!(cache.column_index(table, "a"), None);
}
