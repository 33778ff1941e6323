//! Rows of every common column type, NULLs included, in the text and the
//! binary tuple formats and under protocol versions 1, 2 and 3: Begin,
//! Relation, Insert and Commit decode to what the SQL wrote.

use std::time::SystemTime;

use pgoutput::{Column, LogicalMessage, Relation, ReplicaIdentity};

use super::{assert_between, kinds, Server};

/// (column, type, SQL literal, PostgreSQL's text output of it).
const COLUMNS: &[(&str, &str, &str, &str)] = &[
    ("c_int2", "int2", "-32768", "-32768"),
    (
        "c_int8",
        "int8",
        "-9223372036854775808",
        "-9223372036854775808",
    ),
    ("c_numeric", "numeric(12,3)", "12345.678", "12345.678"),
    ("c_float4", "float4", "1.5", "1.5"),
    ("c_float8", "float8", "-2.25e100", "-2.25e+100"),
    ("c_bool", "bool", "true", "t"),
    (
        "c_text",
        "text",
        "E'h\\u00e9llo \"quoted\"\\n\\ttab'",
        "héllo \"quoted\"\n\ttab",
    ),
    ("c_varchar", "varchar(20)", "'abc'", "abc"),
    ("c_char", "char(3)", "'x'", "x  "),
    ("c_bytea", "bytea", "'\\x00ff10'::bytea", "\\x00ff10"),
    (
        "c_uuid",
        "uuid",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    ("c_json", "json", "'{\"a\": [1, 2]}'", "{\"a\": [1, 2]}"),
    (
        "c_jsonb",
        "jsonb",
        "'{\"b\":1,\"a\":[1,2]}'",
        "{\"a\": [1, 2], \"b\": 1}",
    ),
    (
        "c_ts",
        "timestamp",
        "'2024-02-29 12:34:56.789'",
        "2024-02-29 12:34:56.789",
    ),
    (
        "c_tstz",
        "timestamptz",
        "'2024-02-29 12:34:56.789+02'",
        "2024-02-29 10:34:56.789+00",
    ),
    ("c_date", "date", "'2024-02-29'", "2024-02-29"),
    ("c_time", "time", "'23:59:59.999999'", "23:59:59.999999"),
    (
        "c_interval",
        "interval",
        "'1 day 02:03:04'",
        "1 day 02:03:04",
    ),
    ("c_inet", "inet", "'192.168.0.1/24'", "192.168.0.1/24"),
    ("c_int_array", "int4[]", "'{1,NULL,3}'", "{1,NULL,3}"),
    ("c_text_array", "text[]", "ARRAY['a b', 'c']", "{\"a b\",c}"),
];

async fn create_table(s: &Server) {
    let defs: Vec<String> = COLUMNS
        .iter()
        .map(|(name, ty, _, _)| format!("{name} {ty}"))
        .collect();
    s.exec(&format!(
        "CREATE TABLE every_type (id int4 PRIMARY KEY, {})",
        defs.join(", ")
    ))
    .await;
}

async fn insert_rows(s: &mut Server) -> (pgoutput::Xid, SystemTime, SystemTime) {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
    let values: Vec<&str> = COLUMNS.iter().map(|c| c.2).collect();
    let before = SystemTime::now();
    let tx = s.client.transaction().await.expect("begin");
    tx.batch_execute(&format!(
        "INSERT INTO every_type (id, {}) VALUES (1, {}); INSERT INTO every_type (id) VALUES (2)",
        names.join(", "),
        values.join(", ")
    ))
    .await
    .expect("insert");
    let xid = Server::xid_in(&tx).await;
    tx.commit().await.expect("commit");
    (xid, before, SystemTime::now())
}

/// The binary form the server's own send function gives each column of row
/// 1, in column order (id first).
async fn send_forms(s: &Server) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for name in std::iter::once("id").chain(COLUMNS.iter().map(|c| c.0)) {
        let row = s
            .client
            .query_one(
                "SELECT t.typsend::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = 'every_type'::regclass AND a.attname = $1",
                &[&name],
            )
            .await
            .expect("typsend");
        let send: String = row.get(0);
        let row = s
            .client
            .query_one(
                &format!("SELECT {send}({name}) FROM every_type WHERE id = 1"),
                &[],
            )
            .await
            .expect("send function");
        out.push(row.get::<_, Vec<u8>>(0));
    }
    out
}

fn check_relation(r: &Relation, expected_types: &[(String, u32, i32)]) {
    assert!(r.is("public", "every_type"));
    assert_eq!(r.xid, None);
    assert_eq!(r.replica_identity, ReplicaIdentity::Default);
    assert_eq!(r.columns.len(), COLUMNS.len() + 1);
    for (c, (name, type_oid, typmod)) in r.columns.iter().zip(expected_types) {
        assert_eq!(&c.name, name);
        assert_eq!(c.type_oid.0, *type_oid, "{name}");
        assert_eq!(c.type_modifier, *typmod, "{name}");
        assert_eq!(c.key, name == "id", "{name}");
    }
}

#[tokio::test]
async fn every_common_column_type_decodes_in_text_and_binary_for_protocols_1_to_3() {
    every_common_column_type_decodes_in_text_and_binary_for_protocols_1_to_3_on(None).await;
}

/// The body of [`every_common_column_type_decodes_in_text_and_binary_for_protocols_1_to_3`], on a chosen PostgreSQL major version.
pub(crate) async fn every_common_column_type_decodes_in_text_and_binary_for_protocols_1_to_3_on(
    version: Option<u32>,
) {
    let mut s = Server::start_on(version).await;
    create_table(&s).await;
    let table = s.oid("every_type").await;
    let (slot, publication) = s.slot(false).await;
    let (xid, before, after) = insert_rows(&mut s).await;

    let expected_types: Vec<(String, u32, i32)> = s
        .client
        .query(
            "SELECT attname::text, atttypid, atttypmod FROM pg_attribute \
             WHERE attrelid = 'every_type'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .expect("attributes")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let send = send_forms(&s).await;
    let mut begin_seen = None;

    for proto in 1..=s.max_proto() {
        for binary in [false, true] {
            let opts: &[(&str, &str)] = if binary { &[("binary", "true")] } else { &[] };
            let changes = s.peek(&slot, &publication, proto, opts).await;
            assert_eq!(
                kinds(&changes),
                ["Begin", "Relation", "Insert", "Insert", "Commit"],
                "proto {proto} binary {binary}"
            );
            let LogicalMessage::Begin(begin) = &changes[0].msg else {
                unreachable!()
            };
            let LogicalMessage::Commit(commit) = &changes[4].msg else {
                unreachable!()
            };
            assert_eq!(begin.xid, xid);
            assert_eq!(begin.final_lsn, commit.commit_lsn);
            assert!(commit.end_lsn > commit.commit_lsn);
            assert_eq!(begin.commit_ts, commit.ts);
            // The slot function reports a commit at its end LSN.
            assert_eq!(changes[4].lsn, commit.end_lsn);
            assert_between(commit.ts, before, after);
            // Same transaction, same values, whatever the options.
            assert_eq!(*begin_seen.get_or_insert(*begin), *begin);

            let LogicalMessage::Relation(rel) = &changes[1].msg else {
                unreachable!()
            };
            assert_eq!(rel.oid, table);
            check_relation(rel, &expected_types);

            let LogicalMessage::Insert(full) = &changes[2].msg else {
                unreachable!()
            };
            let LogicalMessage::Insert(nulls) = &changes[3].msg else {
                unreachable!()
            };
            assert_eq!(full.rel, table);
            assert_eq!(full.xid, None);
            assert_eq!(full.tuple.len(), COLUMNS.len() + 1);
            if binary {
                assert_eq!(
                    full.tuple.get(0),
                    Some(Column::Binary(vec![0, 0, 0, 1].into()))
                );
                for (i, c) in full.tuple.iter().enumerate() {
                    assert_eq!(c, Column::Binary(send[i].clone().into()), "column {i}");
                }
                // A few checked by hand against the types' send formats.
                let at = |name: &str| full.tuple.get(rel.column_index(name).unwrap()).unwrap();
                assert_eq!(at("c_bool").value().unwrap().as_ref(), [1]);
                assert_eq!(
                    at("c_int8").value().unwrap().as_ref(),
                    i64::MIN.to_be_bytes()
                );
                assert_eq!(
                    at("c_uuid").value().unwrap().as_ref(),
                    [
                        0xA0, 0xEE, 0xBC, 0x99, 0x9C, 0x0B, 0x4E, 0xF8, 0xBB, 0x6D, 0x6B, 0xB9,
                        0xBD, 0x38, 0x0A, 0x11
                    ]
                );
                // jsonb's binary form: version 1, then the text.
                assert_eq!(
                    at("c_jsonb").value().unwrap().as_ref(),
                    b"\x01{\"a\": [1, 2], \"b\": 1}"
                );
                assert_eq!(
                    at("c_text").value().unwrap().as_ref(),
                    "héllo \"quoted\"\n\ttab".as_bytes()
                );
            } else {
                assert_eq!(full.tuple.get(0), Some(Column::Text("1".into())));
                for (i, (name, _, _, expected)) in COLUMNS.iter().enumerate() {
                    let c = full.tuple.get(i + 1).unwrap();
                    assert_eq!(super::text(&c), *expected, "{name}");
                    // And by name, through the relation.
                    assert_eq!(rel.value(&full.tuple, name), Some(c));
                }
            }
            let id = if binary {
                Column::Binary(vec![0, 0, 0, 2].into())
            } else {
                Column::Text("2".into())
            };
            let mut expected_nulls = vec![id];
            expected_nulls.extend(std::iter::repeat_n(Column::Null, COLUMNS.len()));
            assert_eq!(nulls.tuple.iter().collect::<Vec<_>>(), expected_nulls);
        }
    }
}
