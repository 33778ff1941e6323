//! Test helpers shared by the relay's unit tests: pgoutput messages encoded
//! by hand, as the protocol documents them.

use bytes::Bytes;

/// Encodes a Relation message by hand (the documented format).
pub(crate) fn relation_bytes(oid: u32, schema: &str, table: &str, cols: &[(&str, u32)]) -> Bytes {
    let mut b = vec![b'R'];
    b.extend_from_slice(&oid.to_be_bytes());
    for s in [schema, table] {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }
    b.push(b'd');
    b.extend_from_slice(&u16::try_from(cols.len()).unwrap().to_be_bytes());
    for (name, type_oid) in cols {
        b.push(0);
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&type_oid.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
    }
    Bytes::from(b)
}

/// Encodes an Insert with text values (None = NULL).
pub(crate) fn insert_bytes(oid: u32, values: &[Option<&[u8]>]) -> Bytes {
    let mut b = vec![b'I'];
    b.extend_from_slice(&oid.to_be_bytes());
    b.push(b'N');
    b.extend_from_slice(&u16::try_from(values.len()).unwrap().to_be_bytes());
    for v in values {
        match v {
            None => b.push(b'n'),
            Some(v) => {
                b.push(b't');
                b.extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    Bytes::from(b)
}
