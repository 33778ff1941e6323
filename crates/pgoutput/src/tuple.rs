//! `Tuple` and `Column`: the row data of Insert, Update and Delete messages
//! (the TupleData part of the format).
//!
//! A `Tuple` is a `Bytes` slice of the message plus its column count; the
//! decoder checks every column's kind and length once, and iterating the
//! columns afterwards allocates nothing: each value is a `Bytes` slice of
//! the original message (a reference-count increment, not a copy).

use std::fmt;

use bytes::Bytes;

use crate::error::DecodeErrorKind;
use crate::reader::{Reader, Result};

/// One column of a tuple, in the form the server sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Column {
    /// SQL NULL (`'n'`).
    Null,
    /// An unchanged TOASTed value (`'u'`): the server did not send it; the
    /// value is whatever it was before this UPDATE.
    Unchanged,
    /// The value in PostgreSQL's text output format (`'t'`).
    Text(Bytes),
    /// The value in the type's binary send format (`'b'`, with the
    /// `binary` option).
    Binary(Bytes),
}

impl Column {
    /// The bytes of a text or binary value; `None` for NULL and unchanged.
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            Column::Text(b) | Column::Binary(b) => Some(b),
            Column::Null | Column::Unchanged => None,
        }
    }

    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Column::Null)
    }

    /// The kind byte of the format: `n`, `u`, `t` or `b`.
    pub fn kind_byte(&self) -> u8 {
        match self {
            Column::Null => b'n',
            Column::Unchanged => b'u',
            Column::Text(_) => b't',
            Column::Binary(_) => b'b',
        }
    }
}

/// The columns of one row, as sent: one entry per column of the relation
/// (in the relation's order, dropped and generated columns left out).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// The column entries (after the Int16 count), already checked.
    data: Bytes,
    len: u16,
}

impl Tuple {
    /// Reads TupleData (Int16 count, then the columns), checking every
    /// column's kind and length.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Tuple> {
        let count_at = r.position();
        let len = r.u16("tuple column count")?;
        // Each column takes at least its kind byte.
        r.check_count(count_at, "tuple column count", i64::from(len), 1)?;
        let start = r.position();
        for _ in 0..len {
            let kind = r.byte_in("tuple column kind", b"nutb", "one of 'n', 'u', 't', 'b'")?;
            if kind == b't' || kind == b'b' {
                let n = r.length("column value length")?;
                r.skip(n, "column value")?;
            }
        }
        Ok(Tuple {
            data: r.slice_from(start),
            len,
        })
    }

    /// A tuple of text values (`None`: NULL), as the server would send a
    /// row: for code that reads rows by SQL (`col::text`) and maps them as
    /// if they had been streamed. `None` if there are more than 65,535
    /// columns or a value is over 2 GiB (what the format can hold).
    pub fn from_text<'v, I>(values: I) -> Option<Tuple>
    where
        I: IntoIterator<Item = Option<&'v [u8]>>,
    {
        let mut data = Vec::new();
        let mut len: u16 = 0;
        for value in values {
            len = len.checked_add(1)?;
            match value {
                None => data.push(b'n'),
                Some(v) => {
                    data.push(b't');
                    data.extend_from_slice(&i32::try_from(v.len()).ok()?.to_be_bytes());
                    data.extend_from_slice(v);
                }
            }
        }
        Some(Tuple {
            data: Bytes::from(data),
            len,
        })
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The column at `index` (0-based, in the relation's column order).
    /// Walks the columns before it: cheap for the handful of columns of a
    /// row; use [`Tuple::iter`] to visit them all.
    pub fn get(&self, index: usize) -> Option<Column> {
        self.iter().nth(index)
    }

    /// The columns in order. Allocates nothing.
    pub fn iter(&self) -> Columns<'_> {
        Columns {
            data: &self.data,
            pos: 0,
            left: self.len,
        }
    }

    /// The bytes of the column entries as sent (after the column count).
    pub fn raw(&self) -> &Bytes {
        &self.data
    }
}

impl fmt::Debug for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Tuple {
    type Item = Column;
    type IntoIter = Columns<'a>;

    fn into_iter(self) -> Columns<'a> {
        self.iter()
    }
}

/// The columns of a [`Tuple`], in order.
#[derive(Debug, Clone)]
pub struct Columns<'a> {
    data: &'a Bytes,
    pos: usize,
    left: u16,
}

impl Columns<'_> {
    fn step(&mut self) -> Option<Column> {
        let kind = *self.data.get(self.pos)?;
        let after_kind = self.pos.checked_add(1)?;
        match kind {
            b'n' => {
                self.pos = after_kind;
                Some(Column::Null)
            }
            b'u' => {
                self.pos = after_kind;
                Some(Column::Unchanged)
            }
            b't' | b'b' => {
                let start = after_kind.checked_add(4)?;
                let len_bytes = <[u8; 4]>::try_from(self.data.get(after_kind..start)?).ok()?;
                let len = usize::try_from(i32::from_be_bytes(len_bytes)).ok()?;
                let end = start.checked_add(len).filter(|&e| e <= self.data.len())?;
                self.pos = end;
                let value = self.data.slice(start..end);
                Some(if kind == b't' {
                    Column::Text(value)
                } else {
                    Column::Binary(value)
                })
            }
            _ => None,
        }
    }
}

impl Iterator for Columns<'_> {
    type Item = Column;

    fn next(&mut self) -> Option<Column> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let column = self.step();
        if column.is_none() {
            // Unreachable for a tuple the decoder checked; end rather than
            // yield garbage.
            self.left = 0;
        }
        column
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.left);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Columns<'_> {}

impl std::iter::FusedIterator for Columns<'_> {}

/// Which old row an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OldTuple {
    /// `'K'`: the replica identity key columns (other columns are NULL);
    /// sent with REPLICA IDENTITY DEFAULT or USING INDEX.
    Key(Tuple),
    /// `'O'`: the whole old row; sent with REPLICA IDENTITY FULL.
    Full(Tuple),
}

impl OldTuple {
    /// The tuple, whichever kind.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>, marker: u8) -> Result<OldTuple> {
        let t = Tuple::read(r)?;
        match marker {
            b'K' => Ok(OldTuple::Key(t)),
            b'O' => Ok(OldTuple::Full(t)),
            other => Err(r.error(
                r.position(),
                DecodeErrorKind::UnexpectedByte {
                    field: "old tuple marker",
                    found: other,
                    expected: "'K' or 'O'",
                },
            )),
        }
    }
}

#[cfg(test)]
mod from_text_tests {
    use super::*;

    #[test]
    fn a_tuple_built_from_text_values_reads_back_as_the_server_would_send_it() {
        let t = Tuple::from_text([Some(&b"42"[..]), None, Some(&b""[..])]).unwrap();
        assert_eq!(t.len(), 3);
        let columns: Vec<Column> = t.iter().collect();
        assert_eq!(
            columns,
            [
                Column::Text(Bytes::from_static(b"42")),
                Column::Null,
                Column::Text(Bytes::new())
            ]
        );
    }
}
