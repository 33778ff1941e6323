//! Property tests: every message kind survives encode-then-decode; every
//! byte string the decoder accepts re-encodes to exactly the same bytes (no
//! field is skipped or normalised); arbitrary and damaged bytes never panic.

use bytes::Bytes;
use pgoutput::*;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::common::{decode_as, encode, is_streamed, tuple_of};

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn::from_u64)
}

fn ts() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp::from_micros)
}

fn xid() -> impl Strategy<Value = Xid> {
    any::<u32>().prop_map(Xid)
}

fn oid() -> impl Strategy<Value = Oid> {
    any::<u32>().prop_map(Oid)
}

/// A name: any UTF-8 without NUL, including multi-byte characters.
fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn column() -> impl Strategy<Value = Column> {
    prop_oneof![
        Just(Column::Null),
        Just(Column::Unchanged),
        payload().prop_map(Column::Text),
        payload().prop_map(Column::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    vec(column(), 0..12).prop_map(|cols| tuple_of(&cols))
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn relation_column() -> impl Strategy<Value = RelationColumn> {
    (any::<bool>(), name(), oid(), any::<i32>()).prop_map(|(key, name, type_oid, type_modifier)| {
        RelationColumn {
            key,
            name,
            type_oid,
            type_modifier,
        }
    })
}

fn prepare() -> impl Strategy<Value = Prepare> {
    (lsn(), lsn(), ts(), xid(), name()).prop_map(|(prepare_lsn, end_lsn, ts, xid, gid)| Prepare {
        prepare_lsn,
        end_lsn,
        ts,
        xid,
        gid,
    })
}

/// Messages that can carry a streamed xid; `sxid` is `None` outside a
/// block.
fn streamable(sxid: Option<Xid>) -> impl Strategy<Value = LogicalMessage> {
    prop_oneof![
        (any::<bool>(), lsn(), name(), payload()).prop_map(
            move |(transactional, lsn, prefix, content)| {
                LogicalMessage::Message(Message {
                    xid: sxid,
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
        ),
        (
            oid(),
            name(),
            name(),
            replica_identity(),
            vec(relation_column(), 0..8)
        )
            .prop_map(move |(oid, namespace, name, replica_identity, columns)| {
                LogicalMessage::Relation(Relation {
                    xid: sxid,
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (oid(), name(), name()).prop_map(move |(oid, namespace, name)| {
            LogicalMessage::Type(Type {
                xid: sxid,
                oid,
                namespace,
                name,
            })
        }),
        (oid(), tuple()).prop_map(move |(rel, tuple)| LogicalMessage::Insert(Insert {
            xid: sxid,
            rel,
            tuple
        })),
        (oid(), proptest::option::of(old_tuple()), tuple()).prop_map(move |(rel, old, new)| {
            LogicalMessage::Update(Update {
                xid: sxid,
                rel,
                old,
                new,
            })
        }),
        (oid(), old_tuple()).prop_map(move |(rel, old)| LogicalMessage::Delete(Delete {
            xid: sxid,
            rel,
            old
        })),
        (any::<bool>(), any::<bool>(), vec(oid(), 0..8)).prop_map(
            move |(cascade, restart_identity, rels)| {
                LogicalMessage::Truncate(Truncate {
                    xid: sxid,
                    cascade,
                    restart_identity,
                    rels,
                })
            }
        ),
    ]
}

/// Messages that only come outside a streamed block.
fn unstreamed() -> impl Strategy<Value = LogicalMessage> {
    prop_oneof![
        (lsn(), ts(), xid()).prop_map(|(final_lsn, commit_ts, xid)| LogicalMessage::Begin(Begin {
            final_lsn,
            commit_ts,
            xid
        })),
        (lsn(), lsn(), ts()).prop_map(|(commit_lsn, end_lsn, ts)| LogicalMessage::Commit(Commit {
            commit_lsn,
            end_lsn,
            ts
        })),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(Origin { commit_lsn, name })),
        (xid(), any::<bool>()).prop_map(|(xid, first_segment)| LogicalMessage::StreamStart(
            StreamStart { xid, first_segment }
        )),
        Just(LogicalMessage::StreamStop),
        (xid(), lsn(), lsn(), ts()).prop_map(|(xid, commit_lsn, end_lsn, ts)| {
            LogicalMessage::StreamCommit(StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                ts,
            })
        }),
        (xid(), xid(), proptest::option::of((lsn(), ts()))).prop_map(|(xid, subxid, abort)| {
            LogicalMessage::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort: abort.map(|(lsn, ts)| AbortInfo { lsn, ts }),
            })
        }),
        prepare().prop_map(LogicalMessage::BeginPrepare),
        prepare().prop_map(LogicalMessage::Prepare),
        prepare().prop_map(LogicalMessage::StreamPrepare),
        (lsn(), lsn(), ts(), xid(), name()).prop_map(|(commit_lsn, end_lsn, ts, xid, gid)| {
            LogicalMessage::CommitPrepared(CommitPrepared {
                commit_lsn,
                end_lsn,
                ts,
                xid,
                gid,
            })
        }),
        (lsn(), lsn(), ts(), ts(), xid(), name()).prop_map(
            |(prepare_end_lsn, rollback_end_lsn, prepare_ts, rollback_ts, xid, gid)| {
                LogicalMessage::RollbackPrepared(RollbackPrepared {
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_ts,
                    rollback_ts,
                    xid,
                    gid,
                })
            }
        ),
    ]
}

/// Any message of any kind, inside a streamed block or not.
fn any_message() -> impl Strategy<Value = LogicalMessage> {
    prop_oneof![
        unstreamed(),
        streamable(None),
        xid().prop_flat_map(|x| streamable(Some(x))),
    ]
}

/// Decodes (both ways) and walks every tuple: nothing may panic.
fn decode_everything(bytes: &[u8]) -> Option<LogicalMessage> {
    let b = Bytes::copy_from_slice(bytes);
    let _ = decode_as(b.clone(), true).map(|m| walk(&m));
    let decoded = pgoutput::decode(b).ok();
    if let Some(m) = &decoded {
        walk(m);
        let _ = format!("{m:?}");
    }
    decoded
}

fn walk(m: &LogicalMessage) {
    let tuples: Vec<&Tuple> = match m {
        LogicalMessage::Insert(i) => vec![&i.tuple],
        LogicalMessage::Update(u) => u.old.iter().map(OldTuple::tuple).chain([&u.new]).collect(),
        LogicalMessage::Delete(d) => vec![d.old.tuple()],
        _ => vec![],
    };
    for t in tuples {
        assert_eq!(t.iter().count(), t.len());
        for (i, c) in t.iter().enumerate() {
            assert_eq!(t.get(i), Some(c));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_kind_round_trips(m in any_message()) {
        let bytes = Bytes::from(encode(&m));
        let decoded = decode_as(bytes.clone(), is_streamed(&m))
            .map_err(|e| TestCaseError::fail(format!("{e} for {bytes:?}")))?;
        prop_assert_eq!(&decoded, &m);
        // Every tuple column reads back the same by index and by iteration.
        walk(&decoded);
    }

    #[test]
    fn accepted_bytes_re_encode_to_the_same_bytes(m in any_message(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
        // Damage a valid message; whatever still decodes must be exactly
        // what the bytes say: re-encoding gives the same bytes back.
        let mut bytes = encode(&m);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let in_stream = is_streamed(&m);
        if let Ok(decoded) = decode_as(Bytes::from(bytes.clone()), in_stream) {
            prop_assert_eq!(encode(&decoded), bytes);
        }
    }

    #[test]
    fn cut_short_messages_are_errors_never_panics(m in any_message(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&m);
        let len = cut.index(bytes.len());
        let short = Bytes::copy_from_slice(&bytes[..len]);
        let in_stream = is_streamed(&m);
        match decode_as(short, in_stream) {
            // The only valid prefix of a valid message is a Stream Abort of
            // protocol 1-3 cut from one of protocol 4.
            Ok(LogicalMessage::StreamAbort(a)) => prop_assert!(a.abort.is_none() && len == 9),
            Ok(other) => prop_assert!(false, "{len}-byte prefix decoded as {other:?}"),
            Err(e) => prop_assert!(e.offset() <= len, "{e}"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = decode_everything(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_known_tag_never_panic(
        tag in proptest::sample::select(b"BMCORYIUDTSEcAbPKrp".to_vec()),
        tail in vec(any::<u8>(), 0..128),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&tail);
        if let Some(m) = decode_everything(&bytes) {
            // A message accepted from random bytes still re-encodes exactly.
            prop_assert_eq!(encode(&m), bytes);
        }
    }
}
