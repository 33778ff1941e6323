//! Relations: the Relation message (a table's name, replica identity and
//! columns) and `RelationCache`, which keeps the latest one per table.
//!
//! pgoutput describes a table once, before the first row change of it that
//! a connection sends, and again whenever its definition may have changed
//! (after ALTER TABLE, and after a reconnect). Row messages carry only the
//! table's Oid and positional columns, so a consumer keeps the latest
//! Relation per Oid and asks it which position a column name has.

use std::collections::HashMap;

use crate::error::DecodeErrorKind;
use crate::reader::{Reader, Result};
use crate::tuple::{Column, Tuple};
use crate::types::{Oid, Xid};

/// A table's REPLICA IDENTITY (`relreplident` in `pg_class`): what the old
/// row of an Update or Delete contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key columns.
    Default,
    /// `'n'`: nothing (updates and deletes cannot be published).
    Nothing,
    /// `'f'`: all columns.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The byte on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    fn from_byte(b: u8) -> Option<ReplicaIdentity> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelationColumn {
    /// Part of the replica identity key (flag bit 1; with REPLICA IDENTITY
    /// FULL every column is).
    pub key: bool,
    /// The column's name.
    pub name: String,
    /// The Oid of the column's data type.
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`; -1 when none).
    pub type_modifier: i32,
}

/// The Relation message (`'R'`): a published table's description.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    /// The streamed transaction this message belongs to (only inside a
    /// Stream Start / Stream Stop block, protocol version 2 and up).
    pub xid: Option<Xid>,
    /// The table's Oid, which row messages refer to.
    pub oid: Oid,
    /// The schema name (the server sends an empty string for `pg_catalog`).
    pub namespace: String,
    /// The table name.
    pub name: String,
    /// The replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in the order tuples list them (dropped and
    /// generated columns, and columns outside a publication's column list,
    /// are left out).
    pub columns: Vec<RelationColumn>,
}

/// Fewest bytes one column takes in a Relation message: flags, an empty
/// name's NUL, type Oid, type modifier.
const MIN_COLUMN_SIZE: usize = 1 + 1 + 4 + 4;

impl Relation {
    pub(crate) fn read(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<Relation> {
        let oid = r.oid("relation oid")?;
        let namespace = r.string("namespace")?;
        let name = r.string("relation name")?;
        let at = r.position();
        let ident = r.u8("replica identity")?;
        let replica_identity = ReplicaIdentity::from_byte(ident).ok_or_else(|| {
            r.error(
                at,
                DecodeErrorKind::UnexpectedByte {
                    field: "replica identity",
                    found: ident,
                    expected: "one of 'd', 'n', 'f', 'i'",
                },
            )
        })?;
        let count_at = r.position();
        let count = r.u16("column count")?;
        let count = r.check_count(count_at, "column count", i64::from(count), MIN_COLUMN_SIZE)?;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = r.byte_in("column flags", &[0, 1], "0 or 1 (part of the key)")?;
            columns.push(RelationColumn {
                key: flags == 1,
                name: r.string("column name")?,
                type_oid: r.oid("column type oid")?,
                type_modifier: r.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            xid,
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// The position of the column named `name` (exact, case-sensitive, as
    /// PostgreSQL stores it), for [`Tuple::get`].
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&RelationColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The value of the column named `name` in a tuple of this relation.
    pub fn value(&self, tuple: &Tuple, name: &str) -> Option<Column> {
        tuple.get(self.column_index(name)?)
    }

    /// Whether this is the table `namespace.name`.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.namespace == namespace && self.name == name
    }
}

/// The latest [`Relation`] of each table, by Oid.
///
/// Feed it every Relation message ([`RelationCache::insert`]); a re-sent
/// Relation (after ALTER TABLE) replaces the one before, so later row
/// messages are read with the new column list.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<Oid, Relation>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> RelationCache {
        RelationCache::default()
    }

    /// Keeps `relation` as the description of its table, returning the one
    /// it replaces (compare them to see what an ALTER TABLE changed).
    pub fn insert(&mut self, relation: Relation) -> Option<Relation> {
        self.relations.insert(relation.oid, relation)
    }

    /// The latest description of table `oid`.
    pub fn get(&self, oid: Oid) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// The position of the column named `name` in table `oid`.
    pub fn column_index(&self, oid: Oid, name: &str) -> Option<usize> {
        self.get(oid)?.column_index(name)
    }

    /// The value of the column named `name` in a tuple of table `oid`.
    pub fn value(&self, oid: Oid, tuple: &Tuple, name: &str) -> Option<Column> {
        self.get(oid)?.value(tuple, name)
    }

    /// Forgets table `oid`.
    pub fn remove(&mut self, oid: Oid) -> Option<Relation> {
        self.relations.remove(&oid)
    }

    /// Forgets every table (e.g. on a new replication connection, which
    /// sends every Relation again).
    pub fn clear(&mut self) {
        self.relations.clear();
    }

    /// How many tables it knows.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether it knows no table.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// Every known table, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Relation> {
        self.relations.values()
    }
}
