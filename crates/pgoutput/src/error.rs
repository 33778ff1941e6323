//! `DecodeError`: what was malformed in a pgoutput message, and where.
//!
//! Every way a message can be wrong (cut short, an unknown tag, a length or
//! count that does not fit the bytes that follow, a string without its NUL,
//! a name that is not UTF-8, a byte outside the documented values, bytes
//! left over, a message out of place in a streamed block) is a value of
//! [`DecodeErrorKind`], with the byte offset in the message where the bad
//! field starts. The decoder never panics and never trusts a length before
//! checking it against the bytes it has.

use std::fmt;

use crate::message_type::MessageType;

/// A pgoutput message that could not be decoded.
///
/// The Display form names the message, the offset and the cause, e.g.
/// "malformed pgoutput Insert message at byte 7: the tuple column kind is
/// 0x78, expected one of n, u, t, b". A decode error means the server sent
/// something this decoder does not understand (or the bytes were damaged on
/// the way): it is not retryable by reading the same bytes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    message: Option<MessageType>,
    offset: usize,
    kind: DecodeErrorKind,
}

/// What was wrong with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The message has no bytes at all (not even a tag).
    Empty,
    /// The first byte is not a pgoutput message tag.
    UnknownTag(u8),
    /// The message ends inside a fixed-size field.
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A length or count is negative or larger than the bytes that follow
    /// could hold. Nothing is allocated for it.
    InvalidLength {
        /// The length or count field.
        field: &'static str,
        /// Its value as sent.
        value: i64,
        /// Bytes left after the field.
        available: usize,
    },
    /// A string has no terminating NUL before the end of the message.
    UnterminatedString {
        /// The string field.
        field: &'static str,
    },
    /// A string (a name, a prefix, a GID) is not valid UTF-8.
    InvalidUtf8 {
        /// The string field.
        field: &'static str,
    },
    /// A byte that the format allows only a few values for has another one.
    UnexpectedByte {
        /// The field.
        field: &'static str,
        /// The byte found.
        found: u8,
        /// The values the format allows, for the message.
        expected: &'static str,
    },
    /// The message goes on after its last field.
    TrailingBytes {
        /// How many bytes are left over.
        count: usize,
    },
    /// A message that cannot come where it came in a stream of messages
    /// (see [`Decoder`](crate::Decoder)), e.g. a Stream Stop with no Stream
    /// Start before it.
    OutOfPlace {
        /// What was out of place.
        detail: &'static str,
    },
}

impl DecodeError {
    pub(crate) fn new(message: Option<MessageType>, offset: usize, kind: DecodeErrorKind) -> Self {
        DecodeError {
            message,
            offset,
            kind,
        }
    }

    /// The type of the message, when its tag was known.
    pub fn message_type(&self) -> Option<MessageType> {
        self.message
    }

    /// The byte offset in the message where the malformed field starts
    /// (0 is the tag).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// What was wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message {
            Some(m) => write!(
                f,
                "malformed pgoutput {m} message at byte {}: ",
                self.offset
            )?,
            None => write!(f, "malformed pgoutput message at byte {}: ", self.offset)?,
        }
        match &self.kind {
            DecodeErrorKind::Empty => f.write_str("the message is empty (no tag byte)"),
            DecodeErrorKind::UnknownTag(tag) => write!(
                f,
                "unknown message tag {}; this decoder knows the tags of protocol versions 1 to 4",
                show_byte(*tag)
            ),
            DecodeErrorKind::Truncated {
                field,
                needed,
                available,
            } => write!(
                f,
                "the message ends inside the {field}: it needs {needed} bytes, {available} left"
            ),
            DecodeErrorKind::InvalidLength {
                field,
                value,
                available,
            } => write!(
                f,
                "the {field} is {value}, which does not fit the {available} bytes that follow"
            ),
            DecodeErrorKind::UnterminatedString { field } => {
                write!(f, "the {field} has no terminating NUL byte")
            }
            DecodeErrorKind::InvalidUtf8 { field } => write!(f, "the {field} is not valid UTF-8"),
            DecodeErrorKind::UnexpectedByte {
                field,
                found,
                expected,
            } => write!(
                f,
                "the {field} is {}, expected {expected}",
                show_byte(*found)
            ),
            DecodeErrorKind::TrailingBytes { count } => {
                write!(f, "{count} bytes follow the last field of the message")
            }
            DecodeErrorKind::OutOfPlace { detail } => f.write_str(detail),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A byte as `'x' (0x78)` when printable, else `0x07`.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}' (0x{b:02x})", char::from(b))
    } else {
        format!("0x{b:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_message_offset_and_cause() {
        let e = DecodeError::new(
            Some(MessageType::Insert),
            7,
            DecodeErrorKind::UnexpectedByte {
                field: "tuple column kind",
                found: b'x',
                expected: "one of 'n', 'u', 't', 'b'",
            },
        );
        assert_eq!(
            e.to_string(),
            "malformed pgoutput Insert message at byte 7: the tuple column kind is 'x' (0x78), \
             expected one of 'n', 'u', 't', 'b'"
        );
        let e = DecodeError::new(None, 0, DecodeErrorKind::UnknownTag(0));
        assert_eq!(
            e.to_string(),
            "malformed pgoutput message at byte 0: unknown message tag 0x00; this decoder knows \
             the tags of protocol versions 1 to 4"
        );
    }
}
