//! Test-only helpers shared by the test modules: an encoder that writes a
//! [`LogicalMessage`] back to the bytes pgoutput would send, and ways to
//! build tuples from columns through it.

use bytes::Bytes;
use pgoutput::{Column, Decoder, LogicalMessage, OldTuple, StreamStart, Tuple, Xid};

/// The bytes of `m` in the pgoutput format. Messages whose `xid` is `Some`
/// are written as inside a streamed block (the xid comes first).
pub fn encode(m: &LogicalMessage) -> Vec<u8> {
    let mut w = Vec::new();
    w.push(m.message_type().tag());
    match m {
        LogicalMessage::Begin(b) => {
            lsn(&mut w, b.final_lsn);
            w.extend_from_slice(&b.commit_ts.as_micros().to_be_bytes());
            w.extend_from_slice(&b.xid.0.to_be_bytes());
        }
        LogicalMessage::Message(x) => {
            stream_xid(&mut w, x.xid);
            w.push(u8::from(x.transactional));
            lsn(&mut w, x.lsn);
            string(&mut w, &x.prefix);
            let len = i32::try_from(x.content.len()).expect("content fits Int32");
            w.extend_from_slice(&len.to_be_bytes());
            w.extend_from_slice(&x.content);
        }
        LogicalMessage::Commit(c) => {
            w.push(0);
            lsn(&mut w, c.commit_lsn);
            lsn(&mut w, c.end_lsn);
            w.extend_from_slice(&c.ts.as_micros().to_be_bytes());
        }
        LogicalMessage::Origin(o) => {
            lsn(&mut w, o.commit_lsn);
            string(&mut w, &o.name);
        }
        LogicalMessage::Relation(r) => {
            stream_xid(&mut w, r.xid);
            w.extend_from_slice(&r.oid.0.to_be_bytes());
            string(&mut w, &r.namespace);
            string(&mut w, &r.name);
            w.push(r.replica_identity.as_byte());
            let n = u16::try_from(r.columns.len()).expect("at most 65535 columns");
            w.extend_from_slice(&n.to_be_bytes());
            for c in &r.columns {
                w.push(u8::from(c.key));
                string(&mut w, &c.name);
                w.extend_from_slice(&c.type_oid.0.to_be_bytes());
                w.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        LogicalMessage::Type(t) => {
            stream_xid(&mut w, t.xid);
            w.extend_from_slice(&t.oid.0.to_be_bytes());
            string(&mut w, &t.namespace);
            string(&mut w, &t.name);
        }
        LogicalMessage::Insert(i) => {
            stream_xid(&mut w, i.xid);
            w.extend_from_slice(&i.rel.0.to_be_bytes());
            w.push(b'N');
            tuple(&mut w, &i.tuple);
        }
        LogicalMessage::Update(u) => {
            stream_xid(&mut w, u.xid);
            w.extend_from_slice(&u.rel.0.to_be_bytes());
            if let Some(old) = &u.old {
                old_tuple(&mut w, old);
            }
            w.push(b'N');
            tuple(&mut w, &u.new);
        }
        LogicalMessage::Delete(d) => {
            stream_xid(&mut w, d.xid);
            w.extend_from_slice(&d.rel.0.to_be_bytes());
            old_tuple(&mut w, &d.old);
        }
        LogicalMessage::Truncate(t) => {
            stream_xid(&mut w, t.xid);
            let n = i32::try_from(t.rels.len()).expect("relation count fits Int32");
            w.extend_from_slice(&n.to_be_bytes());
            w.push(u8::from(t.cascade) | (u8::from(t.restart_identity) << 1));
            for rel in &t.rels {
                w.extend_from_slice(&rel.0.to_be_bytes());
            }
        }
        LogicalMessage::StreamStart(s) => {
            w.extend_from_slice(&s.xid.0.to_be_bytes());
            w.push(u8::from(s.first_segment));
        }
        LogicalMessage::StreamStop => {}
        LogicalMessage::StreamCommit(c) => {
            w.extend_from_slice(&c.xid.0.to_be_bytes());
            w.push(0);
            lsn(&mut w, c.commit_lsn);
            lsn(&mut w, c.end_lsn);
            w.extend_from_slice(&c.ts.as_micros().to_be_bytes());
        }
        LogicalMessage::StreamAbort(a) => {
            w.extend_from_slice(&a.xid.0.to_be_bytes());
            w.extend_from_slice(&a.subxid.0.to_be_bytes());
            if let Some(info) = a.abort {
                lsn(&mut w, info.lsn);
                w.extend_from_slice(&info.ts.as_micros().to_be_bytes());
            }
        }
        LogicalMessage::BeginPrepare(p) => {
            lsn(&mut w, p.prepare_lsn);
            lsn(&mut w, p.end_lsn);
            w.extend_from_slice(&p.ts.as_micros().to_be_bytes());
            w.extend_from_slice(&p.xid.0.to_be_bytes());
            string(&mut w, &p.gid);
        }
        LogicalMessage::Prepare(p) | LogicalMessage::StreamPrepare(p) => {
            w.push(0);
            lsn(&mut w, p.prepare_lsn);
            lsn(&mut w, p.end_lsn);
            w.extend_from_slice(&p.ts.as_micros().to_be_bytes());
            w.extend_from_slice(&p.xid.0.to_be_bytes());
            string(&mut w, &p.gid);
        }
        LogicalMessage::CommitPrepared(c) => {
            w.push(0);
            lsn(&mut w, c.commit_lsn);
            lsn(&mut w, c.end_lsn);
            w.extend_from_slice(&c.ts.as_micros().to_be_bytes());
            w.extend_from_slice(&c.xid.0.to_be_bytes());
            string(&mut w, &c.gid);
        }
        LogicalMessage::RollbackPrepared(r) => {
            w.push(0);
            lsn(&mut w, r.prepare_end_lsn);
            lsn(&mut w, r.rollback_end_lsn);
            w.extend_from_slice(&r.prepare_ts.as_micros().to_be_bytes());
            w.extend_from_slice(&r.rollback_ts.as_micros().to_be_bytes());
            w.extend_from_slice(&r.xid.0.to_be_bytes());
            string(&mut w, &r.gid);
        }
        other => panic!("the test encoder does not know {other:?}"),
    }
    w
}

fn lsn(w: &mut Vec<u8>, l: pgoutput::Lsn) {
    w.extend_from_slice(&l.as_u64().to_be_bytes());
}

fn string(w: &mut Vec<u8>, s: &str) {
    assert!(!s.contains('\0'), "pgoutput strings cannot hold NUL");
    w.extend_from_slice(s.as_bytes());
    w.push(0);
}

fn stream_xid(w: &mut Vec<u8>, xid: Option<Xid>) {
    if let Some(x) = xid {
        w.extend_from_slice(&x.0.to_be_bytes());
    }
}

fn old_tuple(w: &mut Vec<u8>, old: &OldTuple) {
    match old {
        OldTuple::Key(t) => {
            w.push(b'K');
            tuple(w, t);
        }
        OldTuple::Full(t) => {
            w.push(b'O');
            tuple(w, t);
        }
    }
}

/// TupleData: Int16 count, then each column.
pub fn tuple(w: &mut Vec<u8>, t: &Tuple) {
    let n = u16::try_from(t.len()).expect("at most 65535 columns");
    w.extend_from_slice(&n.to_be_bytes());
    for c in t.iter() {
        column(w, &c);
    }
}

fn column(w: &mut Vec<u8>, c: &Column) {
    w.push(c.kind_byte());
    if let Some(v) = c.value() {
        let len = i32::try_from(v.len()).expect("value fits Int32");
        w.extend_from_slice(&len.to_be_bytes());
        w.extend_from_slice(v);
    }
}

/// A tuple holding `columns`, made the only way a `Tuple` can be made: by
/// decoding the bytes of an Insert.
pub fn tuple_of(columns: &[Column]) -> Tuple {
    let mut w = vec![b'I', 0, 0, 0, 1, b'N'];
    let n = u16::try_from(columns.len()).expect("at most 65535 columns");
    w.extend_from_slice(&n.to_be_bytes());
    for c in columns {
        column(&mut w, c);
    }
    match pgoutput::decode(Bytes::from(w)).expect("a valid Insert") {
        LogicalMessage::Insert(i) => i.tuple,
        other => panic!("not an Insert: {other:?}"),
    }
}

/// Decodes `bytes` the way it was encoded: inside a streamed block when
/// `in_stream` (after a Stream Start for xid 1), else with [`pgoutput::decode`].
pub fn decode_as(bytes: Bytes, in_stream: bool) -> Result<LogicalMessage, pgoutput::DecodeError> {
    if in_stream {
        let mut d = Decoder::new();
        let start = encode(&LogicalMessage::StreamStart(StreamStart {
            xid: Xid(1),
            first_segment: true,
        }));
        d.decode(Bytes::from(start))
            .expect("a Stream Start decodes");
        d.decode(bytes)
    } else {
        pgoutput::decode(bytes)
    }
}

/// Whether `m` is one of the messages that carry a streamed xid, and has it.
pub fn is_streamed(m: &LogicalMessage) -> bool {
    match m {
        LogicalMessage::Message(x) => x.xid.is_some(),
        LogicalMessage::Relation(x) => x.xid.is_some(),
        LogicalMessage::Type(x) => x.xid.is_some(),
        LogicalMessage::Insert(x) => x.xid.is_some(),
        LogicalMessage::Update(x) => x.xid.is_some(),
        LogicalMessage::Delete(x) => x.xid.is_some(),
        LogicalMessage::Truncate(x) => x.xid.is_some(),
        _ => false,
    }
}
