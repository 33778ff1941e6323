//! [`MessageType`]: the kinds of pgoutput message, by their tag byte.
//!
//! Its own module because both the decoder (`message`, `reader`) and the
//! error type (`error`) name message types: with it here, every import
//! points one way, from them to this module.

use std::fmt;

/// The kinds of message, by their tag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `'B'`
    Begin,
    /// `'M'`
    Message,
    /// `'C'`
    Commit,
    /// `'O'`
    Origin,
    /// `'R'`
    Relation,
    /// `'Y'`
    Type,
    /// `'I'`
    Insert,
    /// `'U'`
    Update,
    /// `'D'`
    Delete,
    /// `'T'`
    Truncate,
    /// `'S'` (protocol version 2+)
    StreamStart,
    /// `'E'` (protocol version 2+)
    StreamStop,
    /// `'c'` (protocol version 2+)
    StreamCommit,
    /// `'A'` (protocol version 2+)
    StreamAbort,
    /// `'b'` (protocol version 3+)
    BeginPrepare,
    /// `'P'` (protocol version 3+)
    Prepare,
    /// `'K'` (protocol version 3+)
    CommitPrepared,
    /// `'r'` (protocol version 3+)
    RollbackPrepared,
    /// `'p'` (protocol version 3+)
    StreamPrepare,
}

impl MessageType {
    /// The tag byte that starts the message.
    pub fn tag(self) -> u8 {
        match self {
            MessageType::Begin => b'B',
            MessageType::Message => b'M',
            MessageType::Commit => b'C',
            MessageType::Origin => b'O',
            MessageType::Relation => b'R',
            MessageType::Type => b'Y',
            MessageType::Insert => b'I',
            MessageType::Update => b'U',
            MessageType::Delete => b'D',
            MessageType::Truncate => b'T',
            MessageType::StreamStart => b'S',
            MessageType::StreamStop => b'E',
            MessageType::StreamCommit => b'c',
            MessageType::StreamAbort => b'A',
            MessageType::BeginPrepare => b'b',
            MessageType::Prepare => b'P',
            MessageType::CommitPrepared => b'K',
            MessageType::RollbackPrepared => b'r',
            MessageType::StreamPrepare => b'p',
        }
    }

    /// The message type of a tag byte.
    pub fn from_tag(tag: u8) -> Option<MessageType> {
        Some(match tag {
            b'B' => MessageType::Begin,
            b'M' => MessageType::Message,
            b'C' => MessageType::Commit,
            b'O' => MessageType::Origin,
            b'R' => MessageType::Relation,
            b'Y' => MessageType::Type,
            b'I' => MessageType::Insert,
            b'U' => MessageType::Update,
            b'D' => MessageType::Delete,
            b'T' => MessageType::Truncate,
            b'S' => MessageType::StreamStart,
            b'E' => MessageType::StreamStop,
            b'c' => MessageType::StreamCommit,
            b'A' => MessageType::StreamAbort,
            b'b' => MessageType::BeginPrepare,
            b'P' => MessageType::Prepare,
            b'K' => MessageType::CommitPrepared,
            b'r' => MessageType::RollbackPrepared,
            b'p' => MessageType::StreamPrepare,
            _ => return None,
        })
    }

    /// The documentation's name, e.g. "Stream Commit".
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Begin => "Begin",
            MessageType::Message => "Message",
            MessageType::Commit => "Commit",
            MessageType::Origin => "Origin",
            MessageType::Relation => "Relation",
            MessageType::Type => "Type",
            MessageType::Insert => "Insert",
            MessageType::Update => "Update",
            MessageType::Delete => "Delete",
            MessageType::Truncate => "Truncate",
            MessageType::StreamStart => "Stream Start",
            MessageType::StreamStop => "Stream Stop",
            MessageType::StreamCommit => "Stream Commit",
            MessageType::StreamAbort => "Stream Abort",
            MessageType::BeginPrepare => "Begin Prepare",
            MessageType::Prepare => "Prepare",
            MessageType::CommitPrepared => "Commit Prepared",
            MessageType::RollbackPrepared => "Rollback Prepared",
            MessageType::StreamPrepare => "Stream Prepare",
        }
    }

    /// Whether this message carries a streamed transaction's xid when it
    /// comes inside a Stream Start / Stream Stop block.
    pub fn takes_stream_xid(self) -> bool {
        matches!(
            self,
            MessageType::Message
                | MessageType::Relation
                | MessageType::Type
                | MessageType::Insert
                | MessageType::Update
                | MessageType::Delete
                | MessageType::Truncate
        )
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
