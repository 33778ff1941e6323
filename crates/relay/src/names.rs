//! PostgreSQL names as the relay takes them from its settings: parsed and
//! checked once, quoted for SQL in one place.
//!
//! Pure code. A table name parses as PostgreSQL parses one (quoted
//! identifiers with `""` inside, dots inside quotes, unquoted parts folded
//! to lower case); every name is refused if it holds a control character or
//! is longer than PostgreSQL keeps (63 bytes), so that no command ever
//! works on a name other than the one the operator wrote. Literals are
//! quoted so that they read the same whatever standard_conforming_strings
//! says.

use std::fmt;

/// PostgreSQL keeps the first 63 bytes of a name (NAMEDATALEN - 1).
pub const MAX_NAME_BYTES: usize = 63;

/// Why a name is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("{what} is empty")]
    Empty {
        /// What kind of name.
        what: &'static str,
    },
    /// A control character (newline, tab, NUL, ...).
    #[error(
        "{what} {shown} holds a control character; PostgreSQL names used by the relay may not"
    )]
    Control {
        /// What kind of name.
        what: &'static str,
        /// The name, escaped.
        shown: String,
    },
    /// Over 63 bytes: PostgreSQL would silently cut it.
    #[error(
        "{what} {shown} is {len} bytes; PostgreSQL keeps only the first 63, so it would name \
         something else"
    )]
    TooLong {
        /// What kind of name.
        what: &'static str,
        /// The name, escaped.
        shown: String,
        /// Its length.
        len: usize,
    },
    /// Not a valid (optionally schema-qualified) table name.
    #[error(
        "table {shown}: {problem}; write schema.table (e.g. public.outbox), with double quotes \
         around a part that has upper case letters, dots or spaces"
    )]
    Table {
        /// The text, escaped.
        shown: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A slot name PostgreSQL refuses.
    #[error(
        "slot {shown}: replication slot names may contain only lower case letters, digits and \
         underscores"
    )]
    Slot {
        /// The name, escaped.
        shown: String,
    },
}

fn escaped(text: &str) -> String {
    format!("{:?}", text.chars().take(80).collect::<String>())
}

/// Checks a name the relay sends to PostgreSQL (publication, role,
/// column): not empty, no control character, at most 63 bytes.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control {
            what,
            shown: escaped(name),
        });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            what,
            shown: escaped(name),
            len: name.len(),
        });
    }
    Ok(())
}

/// Checks a replication slot name: what PostgreSQL accepts (lower case
/// letters, digits, underscores, at most 63 bytes).
pub fn check_slot(name: &str) -> Result<(), NameError> {
    check_name("slot", name)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(NameError::Slot {
            shown: escaped(name),
        });
    }
    Ok(())
}

/// A schema-qualified table name, as PostgreSQL resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema (`public` when none is written).
    pub schema: String,
    /// The table.
    pub name: String,
}

impl TableName {
    /// Parses `table` or `schema.table` as PostgreSQL does: a part in
    /// double quotes is taken as written (`""` stands for a quote, dots are
    /// part of the name); an unquoted part is folded to lower case and may
    /// not hold spaces, quotes or dots.
    pub fn parse(text: &str) -> Result<TableName, NameError> {
        let bad = |problem| NameError::Table {
            shown: escaped(text),
            problem,
        };
        if text.chars().any(char::is_control) {
            return Err(bad("it holds a control character"));
        }
        let mut parts: Vec<String> = Vec::new();
        let mut chars = text.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(bad("a double quote is not closed")),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' || c.is_whitespace() {
                        return Err(bad("an unquoted part holds a quote or a space"));
                    }
                    part.push(c.to_ascii_lowercase());
                    chars.next();
                }
            }
            if part.is_empty() {
                return Err(bad("a part of the name is empty"));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(bad("text follows a quoted part")),
            }
        }
        let (schema, name) = match parts.as_slice() {
            [name] => ("public".to_string(), name.clone()),
            [schema, name] => (schema.clone(), name.clone()),
            _ => return Err(bad("it has more than two parts")),
        };
        check_name("schema", &schema)?;
        check_name("table", &name)?;
        Ok(TableName { schema, name })
    }

    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Tables as a message shows them: `a.b, c.d`.
pub fn list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for TableName {
    /// `schema.table`, each part quoted only if it needs to be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| {
            let plain = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if plain {
                s.to_string()
            } else {
                quote_ident(s)
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

/// Quotes an SQL identifier (doubling embedded quotes).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal so that it reads the same whatever
/// standard_conforming_strings says: with a backslash in it, the escape
/// string syntax (`E'...'`, backslashes doubled), as PostgreSQL's own
/// quote_literal does.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(schema: &str, name: &str) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    #[test]
    fn table_names_parse_as_postgresql_parses_them() {
        assert_eq!(
            TableName::parse("outbox").unwrap(),
            table("public", "outbox")
        );
        assert_eq!(
            TableName::parse("Billing.OutBox").unwrap(),
            table("billing", "outbox")
        );
        assert_eq!(
            TableName::parse("\"Billing\".\"Out Box\"").unwrap(),
            table("Billing", "Out Box")
        );
        assert_eq!(
            TableName::parse("\"a.b\".\"we\"\"ird\"").unwrap(),
            table("a.b", "we\"ird")
        );
        assert_eq!(
            TableName::parse("\"a.b\".\"we\"\"ird\"").unwrap().quoted(),
            "\"a.b\".\"we\"\"ird\""
        );
        assert_eq!(
            TableName::parse("public.outbox").unwrap().to_string(),
            "public.outbox"
        );
        assert_eq!(
            TableName::parse("\"Billing\".outbox").unwrap().to_string(),
            "\"Billing\".outbox"
        );
        for bad in [
            "a.b.c", ".x", "x.", "\"open", "a b", "\"x\"y", "out\nbox", "", "\"\"",
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TableName::parse(&"t".repeat(64)).is_err());
    }

    #[test]
    fn names_with_control_characters_or_too_long_are_refused() {
        assert!(check_name("publication", "outbox_relay").is_ok());
        assert!(check_name("publication", "out\0box").is_err());
        assert!(check_name("role", "a\nDROP ROLE x").is_err());
        assert!(check_name("role", &"r".repeat(64)).is_err());
        assert!(check_slot("outbox_relay").is_ok());
        assert!(check_slot("Outbox-Relay").is_err());
        assert!(check_slot("").is_err());
    }

    #[test]
    fn literals_read_the_same_whatever_standard_conforming_strings_says() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    proptest! {
        #[test]
        fn any_table_name_quoted_parses_back_to_itself(
            schema in "[^\u{0}-\u{1f}\u{7f}]{1,20}",
            name in "[^\u{0}-\u{1f}\u{7f}]{1,20}",
        ) {
            prop_assume!(!schema.chars().any(char::is_control) && !name.chars().any(char::is_control));
            prop_assume!(schema.len() <= MAX_NAME_BYTES && name.len() <= MAX_NAME_BYTES);
            let t = table(&schema, &name);
            prop_assert_eq!(TableName::parse(&t.quoted()).unwrap(), t.clone());
            prop_assert_eq!(TableName::parse(&t.to_string()).unwrap(), t);
        }
    }
}
