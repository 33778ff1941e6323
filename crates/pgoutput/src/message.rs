//! The pgoutput messages and their decoding: [`LogicalMessage`], one struct
//! per message of the format, [`decode`] for a single message and
//! [`Decoder`] for a stream of them.
//!
//! The format is PostgreSQL's "Logical Replication Message Formats",
//! protocol versions 1 to 4. Fields are big-endian; strings are
//! NUL-terminated. The one thing a message does not say about itself is
//! whether it sits inside a streamed transaction block (between Stream
//! Start and Stream Stop), where Message, Relation, Type, Insert, Update,
//! Delete and Truncate carry the streamed transaction's xid first:
//! [`Decoder`] follows the blocks; [`decode`] reads every message as outside
//! one, which is what a consumer that does not turn streaming on receives.

use bytes::Bytes;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::message_type::MessageType;
use crate::reader::{Reader, Result};
use crate::relation::Relation;
use crate::tuple::{OldTuple, Tuple};
use crate::types::{Lsn, Oid, PgTimestamp, Xid};

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogicalMessage {
    /// A transaction starts.
    Begin(Begin),
    /// A logical decoding message (`pg_logical_emit_message`).
    Message(Message),
    /// A transaction committed.
    Commit(Commit),
    /// The transaction came from a replication origin.
    Origin(Origin),
    /// A table's description.
    Relation(Relation),
    /// A data type's name (sent for the non-built-in types of a relation).
    Type(Type),
    /// A row was inserted.
    Insert(Insert),
    /// A row was updated.
    Update(Update),
    /// A row was deleted.
    Delete(Delete),
    /// Tables were truncated.
    Truncate(Truncate),
    /// A block of a streamed (in-progress) transaction starts.
    StreamStart(StreamStart),
    /// The current streamed block ends.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit(StreamCommit),
    /// A streamed transaction, or one of its subtransactions, aborted.
    StreamAbort(StreamAbort),
    /// A prepared (two-phase) transaction starts.
    BeginPrepare(Prepare),
    /// The transaction was prepared (PREPARE TRANSACTION).
    Prepare(Prepare),
    /// A prepared transaction was committed (COMMIT PREPARED).
    CommitPrepared(CommitPrepared),
    /// A prepared transaction was rolled back (ROLLBACK PREPARED).
    RollbackPrepared(RollbackPrepared),
    /// A streamed transaction was prepared.
    StreamPrepare(Prepare),
}

impl LogicalMessage {
    /// The kind of message.
    pub fn message_type(&self) -> MessageType {
        match self {
            LogicalMessage::Begin(_) => MessageType::Begin,
            LogicalMessage::Message(_) => MessageType::Message,
            LogicalMessage::Commit(_) => MessageType::Commit,
            LogicalMessage::Origin(_) => MessageType::Origin,
            LogicalMessage::Relation(_) => MessageType::Relation,
            LogicalMessage::Type(_) => MessageType::Type,
            LogicalMessage::Insert(_) => MessageType::Insert,
            LogicalMessage::Update(_) => MessageType::Update,
            LogicalMessage::Delete(_) => MessageType::Delete,
            LogicalMessage::Truncate(_) => MessageType::Truncate,
            LogicalMessage::StreamStart(_) => MessageType::StreamStart,
            LogicalMessage::StreamStop => MessageType::StreamStop,
            LogicalMessage::StreamCommit(_) => MessageType::StreamCommit,
            LogicalMessage::StreamAbort(_) => MessageType::StreamAbort,
            LogicalMessage::BeginPrepare(_) => MessageType::BeginPrepare,
            LogicalMessage::Prepare(_) => MessageType::Prepare,
            LogicalMessage::CommitPrepared(_) => MessageType::CommitPrepared,
            LogicalMessage::RollbackPrepared(_) => MessageType::RollbackPrepared,
            LogicalMessage::StreamPrepare(_) => MessageType::StreamPrepare,
        }
    }
}

/// Begin (`'B'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Begin {
    /// The LSN of the transaction's commit record (the Commit's
    /// `commit_lsn`).
    pub final_lsn: Lsn,
    /// The commit timestamp.
    pub commit_ts: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
}

/// Commit (`'C'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commit {
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm as flushed
    /// once everything of this transaction is durable downstream.
    pub end_lsn: Lsn,
    /// The commit timestamp.
    pub ts: PgTimestamp,
}

/// Origin (`'O'`): sent after Begin when the transaction was replayed from
/// a replication origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// Message (`'M'`): a logical decoding message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// The streamed transaction (inside a stream block only).
    pub xid: Option<Xid>,
    /// Emitted as part of its transaction (flag 1) rather than immediately.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content, a slice of the decoded bytes.
    pub content: Bytes,
}

/// Type (`'Y'`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Type {
    /// The streamed transaction (inside a stream block only).
    pub xid: Option<Xid>,
    /// The type's Oid, as a [`RelationColumn`](crate::RelationColumn)'s
    /// `type_oid` names it.
    pub oid: Oid,
    /// The schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// The type name (of the base type, for a domain).
    pub name: String,
}

/// Insert (`'I'`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Insert {
    /// The streamed transaction (inside a stream block only).
    pub xid: Option<Xid>,
    /// The table's Oid (see [`RelationCache`](crate::RelationCache)).
    pub rel: Oid,
    /// The new row.
    pub tuple: Tuple,
}

/// Update (`'U'`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Update {
    /// The streamed transaction (inside a stream block only).
    pub xid: Option<Xid>,
    /// The table's Oid.
    pub rel: Oid,
    /// The old key (`'K'`, when the key changed) or the old row (`'O'`,
    /// REPLICA IDENTITY FULL); `None` otherwise.
    pub old: Option<OldTuple>,
    /// The new row; TOASTed values that did not change are
    /// [`Column::Unchanged`](crate::Column::Unchanged).
    pub new: Tuple,
}

/// Delete (`'D'`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delete {
    /// The streamed transaction (inside a stream block only).
    pub xid: Option<Xid>,
    /// The table's Oid.
    pub rel: Oid,
    /// The deleted row's key (`'K'`) or whole row (`'O'`).
    pub old: OldTuple,
}

/// Truncate (`'T'`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Truncate {
    /// The streamed transaction (inside a stream block only).
    pub xid: Option<Xid>,
    /// TRUNCATE ... CASCADE (option bit 1).
    pub cascade: bool,
    /// TRUNCATE ... RESTART IDENTITY (option bit 2).
    pub restart_identity: bool,
    /// The truncated tables.
    pub rels: Vec<Oid>,
}

/// Stream Start (`'S'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamStart {
    /// The streamed transaction.
    pub xid: Xid,
    /// Whether this is the transaction's first block.
    pub first_segment: bool,
}

/// Stream Commit (`'c'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamCommit {
    /// The streamed transaction.
    pub xid: Xid,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record.
    pub end_lsn: Lsn,
    /// The commit timestamp.
    pub ts: PgTimestamp,
}

/// Stream Abort (`'A'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamAbort {
    /// The streamed (top-level) transaction.
    pub xid: Xid,
    /// The aborted subtransaction; equal to `xid` when the whole
    /// transaction aborted.
    pub subxid: Xid,
    /// The abort's LSN and time: protocol version 4 with `streaming =
    /// parallel` only.
    pub abort: Option<AbortInfo>,
}

/// Where and when a streamed transaction aborted (Stream Abort, protocol
/// version 4, parallel streaming).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AbortInfo {
    /// The LSN of the abort.
    pub lsn: Lsn,
    /// The abort timestamp.
    pub ts: PgTimestamp,
}

/// Begin Prepare (`'b'`), Prepare (`'P'`) and Stream Prepare (`'p'`): the
/// three share their fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prepare {
    /// The LSN of the PREPARE TRANSACTION record.
    pub prepare_lsn: Lsn,
    /// The end of that record.
    pub end_lsn: Lsn,
    /// The prepare timestamp.
    pub ts: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
    /// The user's GID of the prepared transaction.
    pub gid: String,
}

/// Commit Prepared (`'K'`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommitPrepared {
    /// The LSN of the COMMIT PREPARED record.
    pub commit_lsn: Lsn,
    /// The end of that record.
    pub end_lsn: Lsn,
    /// The commit timestamp.
    pub ts: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
    /// The GID.
    pub gid: String,
}

/// Rollback Prepared (`'r'`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollbackPrepared {
    /// The end LSN of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// The end LSN of the ROLLBACK PREPARED record.
    pub rollback_end_lsn: Lsn,
    /// The prepare timestamp.
    pub prepare_ts: PgTimestamp,
    /// The rollback timestamp.
    pub rollback_ts: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
    /// The GID.
    pub gid: String,
}

/// Decodes one pgoutput message read outside a streamed transaction block
/// (all a consumer gets that does not turn the `streaming` option on).
///
/// The bytes are those of one message: the payload of one XLogData frame,
/// or one row of `pg_logical_slot_peek_binary_changes`. Values in the
/// result are slices of `msg`.
pub fn decode(msg: Bytes) -> std::result::Result<LogicalMessage, DecodeError> {
    decode_message(&msg, false)
}

/// Decodes a stream of pgoutput messages, following Stream Start / Stream
/// Stop blocks so that the messages inside them are read with their xid.
///
/// It also checks the block structure: a Stream Start inside a block, a
/// Stream Stop outside one, or a transaction boundary (Begin, Commit,
/// Stream Commit, ...) inside one is an [`DecodeErrorKind::OutOfPlace`]
/// error. Use one `Decoder` per replication connection.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    in_stream: Option<Xid>,
}

impl Decoder {
    /// A decoder outside any streamed block.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// The streamed transaction whose block is open, if any.
    pub fn in_stream(&self) -> Option<Xid> {
        self.in_stream
    }

    /// Decodes the next message. On error the decoder's state is unchanged.
    pub fn decode(&mut self, msg: Bytes) -> std::result::Result<LogicalMessage, DecodeError> {
        let inside = self.in_stream.is_some();
        let tag = msg.first().copied().and_then(MessageType::from_tag);
        if let Some(t) = tag {
            let allowed = match t {
                MessageType::StreamStop => inside,
                t if t.takes_stream_xid() => true,
                _ => !inside,
            };
            if !allowed {
                let detail = match t {
                    MessageType::StreamStop => {
                        "Stream Stop outside a streamed block (no Stream Start before it)"
                    }
                    MessageType::StreamStart => {
                        "Stream Start inside a streamed block (no Stream Stop before it)"
                    }
                    _ => {
                        "this message cannot come inside a streamed block (before its Stream Stop)"
                    }
                };
                return Err(DecodeError::new(
                    Some(t),
                    0,
                    DecodeErrorKind::OutOfPlace { detail },
                ));
            }
        }
        let m = decode_message(&msg, inside)?;
        match &m {
            LogicalMessage::StreamStart(s) => self.in_stream = Some(s.xid),
            LogicalMessage::StreamStop => self.in_stream = None,
            _ => {}
        }
        Ok(m)
    }
}

fn decode_message(msg: &Bytes, in_stream: bool) -> Result<LogicalMessage> {
    let Some(&tag) = msg.first() else {
        return Err(DecodeError::new(None, 0, DecodeErrorKind::Empty));
    };
    let Some(t) = MessageType::from_tag(tag) else {
        return Err(DecodeError::new(None, 0, DecodeErrorKind::UnknownTag(tag)));
    };
    let mut r = Reader::after_tag(msg, t);
    let xid = if in_stream && t.takes_stream_xid() {
        Some(r.xid("streamed transaction xid")?)
    } else {
        None
    };
    let m = match t {
        MessageType::Begin => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.timestamp("commit timestamp")?,
            xid: r.xid("xid")?,
        }),
        MessageType::Message => {
            let flags = r.byte_in("flags", &[0, 1], "0 or 1 (transactional)")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.length("content length")?;
            LogicalMessage::Message(Message {
                xid,
                transactional: flags == 1,
                lsn,
                prefix,
                content: r.slice(len, "content")?,
            })
        }
        MessageType::Commit => {
            r.zero_flags("flags")?;
            LogicalMessage::Commit(Commit {
                commit_lsn: r.lsn("commit LSN")?,
                end_lsn: r.lsn("end LSN")?,
                ts: r.timestamp("commit timestamp")?,
            })
        }
        MessageType::Origin => LogicalMessage::Origin(Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        MessageType::Relation => LogicalMessage::Relation(Relation::read(&mut r, xid)?),
        MessageType::Type => LogicalMessage::Type(Type {
            xid,
            oid: r.oid("type oid")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        MessageType::Insert => {
            let rel = r.oid("relation oid")?;
            r.byte_in("new tuple marker", b"N", "'N'")?;
            LogicalMessage::Insert(Insert {
                xid,
                rel,
                tuple: Tuple::read(&mut r)?,
            })
        }
        MessageType::Update => {
            let rel = r.oid("relation oid")?;
            let marker = r.byte_in("tuple marker", b"KON", "'K', 'O' or 'N'")?;
            let old = if marker == b'N' {
                None
            } else {
                let old = OldTuple::read(&mut r, marker)?;
                r.byte_in("new tuple marker", b"N", "'N'")?;
                Some(old)
            };
            LogicalMessage::Update(Update {
                xid,
                rel,
                old,
                new: Tuple::read(&mut r)?,
            })
        }
        MessageType::Delete => {
            let rel = r.oid("relation oid")?;
            let marker = r.byte_in("old tuple marker", b"KO", "'K' or 'O'")?;
            LogicalMessage::Delete(Delete {
                xid,
                rel,
                old: OldTuple::read(&mut r, marker)?,
            })
        }
        MessageType::Truncate => {
            let count_at = r.position();
            let count = r.i32("relation count")?;
            let options = r.byte_in(
                "options",
                &[0, 1, 2, 3],
                "a combination of 1 (cascade) and 2 (restart identity)",
            )?;
            let count = r.check_count(count_at, "relation count", i64::from(count), 4)?;
            let mut rels = Vec::with_capacity(count);
            for _ in 0..count {
                rels.push(r.oid("relation oid")?);
            }
            LogicalMessage::Truncate(Truncate {
                xid,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                rels,
            })
        }
        MessageType::StreamStart => {
            let xid = r.xid("xid")?;
            let first = r.byte_in("first segment flag", &[0, 1], "0 or 1")?;
            LogicalMessage::StreamStart(StreamStart {
                xid,
                first_segment: first == 1,
            })
        }
        MessageType::StreamStop => LogicalMessage::StreamStop,
        MessageType::StreamCommit => {
            let xid = r.xid("xid")?;
            r.zero_flags("flags")?;
            LogicalMessage::StreamCommit(StreamCommit {
                xid,
                commit_lsn: r.lsn("commit LSN")?,
                end_lsn: r.lsn("end LSN")?,
                ts: r.timestamp("commit timestamp")?,
            })
        }
        MessageType::StreamAbort => {
            let xid = r.xid("xid")?;
            let subxid = r.xid("subtransaction xid")?;
            // Protocol version 4 with parallel streaming appends the abort
            // LSN and timestamp; the message itself is the only sign.
            let abort = if r.remaining() == 0 {
                None
            } else {
                Some(AbortInfo {
                    lsn: r.lsn("abort LSN")?,
                    ts: r.timestamp("abort timestamp")?,
                })
            };
            LogicalMessage::StreamAbort(StreamAbort { xid, subxid, abort })
        }
        MessageType::BeginPrepare => LogicalMessage::BeginPrepare(Prepare {
            prepare_lsn: r.lsn("prepare LSN")?,
            end_lsn: r.lsn("end LSN")?,
            ts: r.timestamp("prepare timestamp")?,
            xid: r.xid("xid")?,
            gid: r.string("GID")?,
        }),
        MessageType::Prepare => LogicalMessage::Prepare(read_prepare(&mut r)?),
        MessageType::StreamPrepare => LogicalMessage::StreamPrepare(read_prepare(&mut r)?),
        MessageType::CommitPrepared => {
            r.zero_flags("flags")?;
            LogicalMessage::CommitPrepared(CommitPrepared {
                commit_lsn: r.lsn("commit LSN")?,
                end_lsn: r.lsn("end LSN")?,
                ts: r.timestamp("commit timestamp")?,
                xid: r.xid("xid")?,
                gid: r.string("GID")?,
            })
        }
        MessageType::RollbackPrepared => {
            r.zero_flags("flags")?;
            LogicalMessage::RollbackPrepared(RollbackPrepared {
                prepare_end_lsn: r.lsn("prepare end LSN")?,
                rollback_end_lsn: r.lsn("rollback end LSN")?,
                prepare_ts: r.timestamp("prepare timestamp")?,
                rollback_ts: r.timestamp("rollback timestamp")?,
                xid: r.xid("xid")?,
                gid: r.string("GID")?,
            })
        }
    };
    r.finish()?;
    Ok(m)
}

/// Prepare and Stream Prepare: flags, then the fields of Begin Prepare.
fn read_prepare(r: &mut Reader<'_>) -> Result<Prepare> {
    r.zero_flags("flags")?;
    Ok(Prepare {
        prepare_lsn: r.lsn("prepare LSN")?,
        end_lsn: r.lsn("end LSN")?,
        ts: r.timestamp("prepare timestamp")?,
        xid: r.xid("xid")?,
        gid: r.string("GID")?,
    })
}
