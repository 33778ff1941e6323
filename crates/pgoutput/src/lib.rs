//! pgoutput: the decoder for PostgreSQL's logical replication message format
//! (the `pgoutput` output plugin, protocol versions 1 to 4).
//!
//! It owns one job: turn the bytes of one message (the payload of an XLogData
//! frame) into a typed message, without I/O, async, logging or per-column
//! allocation. Column values are `bytes::Bytes` slices of the input.
//!
//! ```
//! use bytes::Bytes;
//! use pgoutput::{decode, LogicalMessage};
//!
//! // A Begin message: tag, final LSN, commit timestamp, xid.
//! let mut msg = vec![b'B'];
//! msg.extend_from_slice(&0x16_B374_D848_u64.to_be_bytes());
//! msg.extend_from_slice(&0_i64.to_be_bytes());
//! msg.extend_from_slice(&734_u32.to_be_bytes());
//! match decode(Bytes::from(msg)).unwrap() {
//!     LogicalMessage::Begin(b) => {
//!         assert_eq!(b.final_lsn.to_string(), "16/B374D848");
//!         assert_eq!(b.xid.0, 734);
//!     }
//!     other => panic!("not a Begin: {other:?}"),
//! }
//! ```
//!
//! - [`decode`] reads one message; [`Decoder`] reads a stream of them and
//!   follows streamed-transaction blocks (protocol version 2+).
//! - [`RelationCache`] keeps the latest [`Relation`] per table so that row
//!   messages ([`Insert`], [`Update`], [`Delete`]) can be read by column name.
//! - [`Tuple`] iterates its [`Column`]s without allocating.
//! - [`DecodeError`] says what was malformed and at which byte; the decoder
//!   never panics on any input and never allocates from a length it has not
//!   checked against the bytes it holds.

mod error;
mod message;
mod message_type;
mod reader;
mod relation;
mod tuple;
mod types;

#[cfg(test)]
mod tests;

pub use error::{DecodeError, DecodeErrorKind};
pub use message::{
    decode, AbortInfo, Begin, Commit, CommitPrepared, Decoder, Delete, Insert, LogicalMessage,
    Message, Origin, Prepare, RollbackPrepared, StreamAbort, StreamCommit, StreamStart, Truncate,
    Type, Update,
};
pub use message_type::MessageType;
pub use relation::{Relation, RelationCache, RelationColumn, ReplicaIdentity};
pub use tuple::{Column, Columns, OldTuple, Tuple};
pub use types::{Lsn, Oid, ParseLsnError, PgTimestamp, Xid};
