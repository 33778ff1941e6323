//! Large transactions with `streaming` on (protocol version 2+,
//! logical_decoding_work_mem at 64kB): Stream Start / Stop blocks whose
//! messages carry the xid, then Stream Commit, or Stream Abort for a
//! rolled-back subtransaction or transaction.

use pgoutput::{Column, LogicalMessage, Xid};

use super::{Change, Server};

pub(crate) const ROWS: i32 = 5000;

pub(crate) async fn big_table(s: &Server) {
    s.exec("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        .await;
}

/// Checks the block structure of a streamed transaction `xid` and returns
/// its inserted rows in order: (the xid the row carries, which is a
/// subtransaction's for rows written in one; the id, binary int4).
fn streamed_rows(changes: &[Change], xid: Xid) -> Vec<(Xid, i32)> {
    let mut rows = Vec::new();
    let mut open = false;
    let mut blocks = 0;
    for c in changes {
        match &c.msg {
            LogicalMessage::StreamStart(st) => {
                assert!(!open);
                open = true;
                assert_eq!(st.xid, xid);
                assert_eq!(st.first_segment, blocks == 0);
                blocks += 1;
            }
            LogicalMessage::StreamStop => {
                assert!(open);
                open = false;
            }
            LogicalMessage::Relation(r) => {
                assert!(open);
                assert!(r.xid.is_some());
                assert!(r.is("public", "big"));
            }
            LogicalMessage::Insert(i) => {
                assert!(open, "a streamed row outside a block");
                let Some(Column::Binary(id)) = i.tuple.get(0) else {
                    panic!("{:?}", i.tuple)
                };
                let id = i32::from_be_bytes(id.as_ref().try_into().expect("int4"));
                rows.push((i.xid.expect("a streamed row carries its xid"), id));
            }
            _ => {}
        }
    }
    assert!(!open);
    assert!(
        blocks >= 2,
        "a {ROWS}-row transaction streams in several blocks"
    );
    rows
}

#[tokio::test]
async fn a_large_transaction_streams_in_blocks_and_ends_with_stream_commit() {
    a_large_transaction_streams_in_blocks_and_ends_with_stream_commit_on(None).await;
}

/// The body of [`a_large_transaction_streams_in_blocks_and_ends_with_stream_commit`], on a chosen PostgreSQL major version.
pub(crate) async fn a_large_transaction_streams_in_blocks_and_ends_with_stream_commit_on(
    version: Option<u32>,
) {
    let mut s = Server::start_on(version).await;
    big_table(&s).await;
    let (slot, publication) = s.slot(false).await;
    let tx = s.client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, $1) g",
        &[&ROWS],
    )
    .await
    .unwrap();
    tx.execute(
        "SELECT pg_logical_emit_message(true, 'in_stream', 'streamed with its xid')",
        &[],
    )
    .await
    .unwrap();
    let xid = Server::xid_in(&tx).await;
    tx.commit().await.unwrap();

    for proto in 2..=s.max_proto().min(3) {
        let changes = s
            .peek(
                &slot,
                &publication,
                proto,
                &[
                    ("streaming", "on"),
                    ("binary", "true"),
                    ("messages", "true"),
                ],
            )
            .await;
        assert!(matches!(changes[0].msg, LogicalMessage::StreamStart(_)));
        // The transactional message rides in a block with the xid.
        let messages: Vec<&pgoutput::Message> = changes
            .iter()
            .filter_map(|c| match &c.msg {
                LogicalMessage::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].xid, Some(xid));
        assert!(messages[0].transactional);
        assert_eq!(messages[0].content.as_ref(), b"streamed with its xid");
        let rows = streamed_rows(&changes, xid);
        assert_eq!(rows, (1..=ROWS).map(|id| (xid, id)).collect::<Vec<_>>());
        let LogicalMessage::StreamCommit(c) = &changes.last().unwrap().msg else {
            panic!("{:?}", changes.last())
        };
        assert_eq!(c.xid, xid);
        assert!(c.end_lsn > c.commit_lsn);
        // No Begin or Commit around a streamed transaction.
        assert!(changes
            .iter()
            .all(|c| !matches!(c.msg, LogicalMessage::Begin(_) | LogicalMessage::Commit(_))));
    }
    // Without streaming the same transaction comes whole, between Begin and
    // Commit, with no xid on its rows.
    let whole = s.peek(&slot, &publication, 2, &[]).await;
    assert!(matches!(whole[0].msg, LogicalMessage::Begin(b) if b.xid == xid));
    assert!(whole.iter().all(|c| match &c.msg {
        LogicalMessage::Insert(i) => i.xid.is_none(),
        _ => true,
    }));
    assert_eq!(whole.len(), usize::try_from(ROWS).unwrap() + 3);
}

#[tokio::test]
async fn rolled_back_streamed_work_ends_with_stream_abort() {
    rolled_back_streamed_work_ends_with_stream_abort_on(None).await;
}

/// The body of [`rolled_back_streamed_work_ends_with_stream_abort`], on a chosen PostgreSQL major version.
pub(crate) async fn rolled_back_streamed_work_ends_with_stream_abort_on(version: Option<u32>) {
    let s = Server::start_on(version).await;
    big_table(&s).await;
    let (slot, publication) = s.slot(false).await;
    // A subtransaction that streams and is rolled back, in a transaction
    // that commits.
    s.exec(&format!(
        "BEGIN; \
         INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, {ROWS}) g; \
         SAVEPOINT s; \
         INSERT INTO big SELECT g, repeat('q', 100) FROM generate_series({ROWS} + 1, 2 * {ROWS}) g; \
         ROLLBACK TO SAVEPOINT s; \
         INSERT INTO big VALUES (0, 'after'); \
         COMMIT"
    ))
    .await;
    // A transaction that streams and is rolled back. An abort record is not
    // flushed by itself and the slot functions read only flushed WAL: the
    // DDL transaction after it (pgoutput sends nothing for it) flushes it.
    s.exec(&format!(
        "BEGIN; \
         INSERT INTO big SELECT g, repeat('r', 100) FROM generate_series(3 * {ROWS}, 4 * {ROWS}) g; \
         ROLLBACK; \
         CREATE TABLE flushes_the_abort ()"
    ))
    .await;

    let changes = s
        .peek(
            &slot,
            &publication,
            2,
            &[("streaming", "on"), ("binary", "true")],
        )
        .await;
    let aborts: Vec<(usize, pgoutput::StreamAbort)> = changes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c.msg {
            LogicalMessage::StreamAbort(a) => Some((i, a)),
            _ => None,
        })
        .collect();
    // PostgreSQL 18 looks up whether a transaction has aborted before it
    // streams it (ReorderBufferCheckAndTruncateAbortedTXN): read after the
    // fact, the whole-transaction rollback is then not streamed at all.
    let whole_rollback_streams = s.pg.major() < 18;
    let expected = if whole_rollback_streams { 2 } else { 1 };
    assert_eq!(aborts.len(), expected, "{}", super::summary(&changes));
    let commit_at = changes
        .iter()
        .position(|c| matches!(c.msg, LogicalMessage::StreamCommit(_)))
        .expect("the first transaction commits");
    let LogicalMessage::StreamCommit(commit) = changes[commit_at].msg else {
        unreachable!()
    };

    // The subtransaction's abort comes before its transaction's commit and
    // names both.
    let (sub_at, sub) = aborts[0];
    assert!(sub_at < commit_at);
    assert_eq!(sub.xid, commit.xid);
    assert_ne!(sub.subxid, sub.xid);
    assert_eq!(sub.abort, None, "protocol 2 sends no abort LSN");
    let first = streamed_rows(&changes[..=commit_at], commit.xid);
    // The transaction's own rows come whole and in order; the rolled-back
    // subtransaction's rows (as far as they were streamed before its abort)
    // carry its xid; the row after the rollback carries the next
    // subtransaction's.
    let own: Vec<i32> = first
        .iter()
        .filter(|r| r.0 == commit.xid)
        .map(|r| r.1)
        .collect();
    assert_eq!(own, (1..=ROWS).collect::<Vec<_>>());
    let rolled_back: Vec<i32> = first
        .iter()
        .filter(|r| r.0 == sub.subxid)
        .map(|r| r.1)
        .collect();
    assert!(
        !rolled_back.is_empty(),
        "the subtransaction streamed before it aborted"
    );
    assert!(rolled_back
        .iter()
        .all(|id| (ROWS + 1..=2 * ROWS).contains(id)));
    let after: Vec<&(Xid, i32)> = first.iter().filter(|r| r.1 == 0).collect();
    assert_eq!(after.len(), 1);
    assert!(after[0].0 != commit.xid && after[0].0 != sub.subxid);

    if !whole_rollback_streams {
        assert!(
            changes[commit_at + 1..]
                .iter()
                .all(|c| !matches!(c.msg, LogicalMessage::Insert(_))),
            "{}",
            super::summary(&changes)
        );
        return;
    }
    // The whole second transaction aborts: subxid is its own xid.
    let (top_at, top) = aborts[1];
    assert!(top_at > commit_at);
    assert_eq!(top.subxid, top.xid);
    assert_ne!(top.xid, commit.xid);
    let second = streamed_rows(&changes[commit_at + 1..], top.xid);
    assert!(second.iter().all(|r| r.0 == top.xid && r.1 >= 3 * ROWS));
}
