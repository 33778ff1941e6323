//! `Reader`: the checked cursor every message parser reads through.
//!
//! It owns the bounds checks: each read names the field it reads, so that a
//! short or inconsistent message becomes a [`DecodeError`] with the field and
//! its byte offset, never a panic or an index out of range. Byte slices it
//! hands out are `Bytes` slices of the message (no copy).

use bytes::Bytes;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::message_type::MessageType;
use crate::types::{Lsn, Oid, PgTimestamp, Xid};

pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    message: MessageType,
}

pub(crate) type Result<T> = std::result::Result<T, DecodeError>;

impl<'a> Reader<'a> {
    /// A reader positioned after the tag byte of `buf`.
    pub(crate) fn after_tag(buf: &'a Bytes, message: MessageType) -> Reader<'a> {
        Reader {
            buf,
            pos: 1,
            message,
        }
    }

    pub(crate) fn error(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(Some(self.message), offset, kind)
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `N` bytes as an array, advancing past them.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let bytes = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .and_then(|s| <[u8; N]>::try_from(s).ok());
        match bytes {
            Some(a) => {
                self.pos += N;
                Ok(a)
            }
            None => Err(self.error(
                self.pos,
                DecodeErrorKind::Truncated {
                    field,
                    needed: N,
                    available: self.remaining(),
                },
            )),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8> {
        self.array::<1>(field).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64> {
        self.array(field).map(i64::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64> {
        self.array(field).map(u64::from_be_bytes)
    }

    pub(crate) fn lsn(&mut self, field: &'static str) -> Result<Lsn> {
        self.u64(field).map(Lsn::from_u64)
    }

    pub(crate) fn xid(&mut self, field: &'static str) -> Result<Xid> {
        self.u32(field).map(Xid)
    }

    pub(crate) fn oid(&mut self, field: &'static str) -> Result<Oid> {
        self.u32(field).map(Oid)
    }

    pub(crate) fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp> {
        self.i64(field).map(PgTimestamp::from_micros)
    }

    /// A byte that must be one of a few values; `allowed` lists them for
    /// the error message.
    pub(crate) fn byte_in(
        &mut self,
        field: &'static str,
        allowed: &[u8],
        expected: &'static str,
    ) -> Result<u8> {
        let at = self.pos;
        let b = self.u8(field)?;
        if allowed.contains(&b) {
            Ok(b)
        } else {
            Err(self.error(
                at,
                DecodeErrorKind::UnexpectedByte {
                    field,
                    found: b,
                    expected,
                },
            ))
        }
    }

    /// A flags byte that must be zero (PostgreSQL's own reader rejects
    /// anything else in these "currently unused" fields).
    pub(crate) fn zero_flags(&mut self, field: &'static str) -> Result<()> {
        self.byte_in(field, &[0], "0 (no flags are defined)")
            .map(|_| ())
    }

    /// A NUL-terminated UTF-8 string, owned (names are few and short; the
    /// allocation is bounded by the message's own length).
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String> {
        let at = self.pos;
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(at, DecodeErrorKind::UnterminatedString { field }));
        };
        let text = rest.get(..nul).unwrap_or_default();
        let s = std::str::from_utf8(text)
            .map_err(|_| self.error(at, DecodeErrorKind::InvalidUtf8 { field }))?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    /// A length field (Int32, signed on the wire) that must be non-negative
    /// and fit the bytes that follow.
    pub(crate) fn length(&mut self, field: &'static str) -> Result<usize> {
        let at = self.pos;
        let value = self.i32(field)?;
        match usize::try_from(value) {
            Ok(len) if len <= self.remaining() => Ok(len),
            _ => Err(self.error(
                at,
                DecodeErrorKind::InvalidLength {
                    field,
                    value: i64::from(value),
                    available: self.remaining(),
                },
            )),
        }
    }

    /// Checks a count read at `at` against the bytes left, given the fewest
    /// bytes each counted item takes: a count that cannot fit is an error
    /// before anything is allocated for it.
    pub(crate) fn check_count(
        &self,
        at: usize,
        field: &'static str,
        count: i64,
        min_item_size: usize,
    ) -> Result<usize> {
        let fits = usize::try_from(count).ok().filter(|&n| {
            n.checked_mul(min_item_size)
                .is_some_and(|b| b <= self.remaining())
        });
        fits.ok_or_else(|| {
            self.error(
                at,
                DecodeErrorKind::InvalidLength {
                    field,
                    value: count,
                    available: self.remaining(),
                },
            )
        })
    }

    /// The next `len` bytes as a slice of the message (no copy). `len` was
    /// checked by [`Reader::length`]; a wrong one is still an error here.
    pub(crate) fn slice(&mut self, len: usize, field: &'static str) -> Result<Bytes> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let b = self.buf.slice(self.pos..end);
                self.pos = end;
                Ok(b)
            }
            None => Err(self.error(
                self.pos,
                DecodeErrorKind::Truncated {
                    field,
                    needed: len,
                    available: self.remaining(),
                },
            )),
        }
    }

    /// Skips `len` bytes already checked to be there.
    pub(crate) fn skip(&mut self, len: usize, field: &'static str) -> Result<()> {
        match self.pos.checked_add(len).filter(|&e| e <= self.buf.len()) {
            Some(end) => {
                self.pos = end;
                Ok(())
            }
            None => Err(self.error(
                self.pos,
                DecodeErrorKind::Truncated {
                    field,
                    needed: len,
                    available: self.remaining(),
                },
            )),
        }
    }

    /// A slice of the message from `start` to the current position.
    pub(crate) fn slice_from(&self, start: usize) -> Bytes {
        if start <= self.pos && self.pos <= self.buf.len() {
            self.buf.slice(start..self.pos)
        } else {
            Bytes::new()
        }
    }

    /// The message must end here.
    pub(crate) fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.error(self.pos, DecodeErrorKind::TrailingBytes { count })),
        }
    }
}
