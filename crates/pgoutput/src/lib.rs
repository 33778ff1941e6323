//! pgoutput: the decoder for PostgreSQL's logical replication message format
//! (the `pgoutput` output plugin, protocol versions 1 to 4).
//!
//! It owns one job: turn the bytes of one message (the payload of an XLogData
//! frame) into a typed message, without I/O, async, logging or per-column
//! allocation. Column values are `bytes::Bytes` slices of the input.
//!
//! The decoder itself lands with its own issue; this crate is the place it
//! lives so that the rest of the workspace can be laid out around it.

mod types;

pub use types::{Lsn, Oid, ParseLsnError, PgTimestamp, Xid};
