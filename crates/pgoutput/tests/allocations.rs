//! Allocation proofs, counted per thread by `allocation-counter`:
//! - decoding Begin, Insert, Update, Delete and Commit and reading every
//!   column allocates nothing (values are slices of the input);
//! - a length or count of up to 2^31 in a hostile message allocates nothing
//!   in proportion to what it claims.

use bytes::Bytes;
use pgoutput::{decode, Column, LogicalMessage};

/// `parts` as one message whose buffer is already shared, as frames cut
/// from a read buffer are (`Bytes::from(Vec)` allocates its shared header
/// on first clone: once per buffer, not per column).
fn shared(parts: &[&[u8]]) -> Bytes {
    let b = Bytes::from(parts.concat());
    drop(b.clone());
    b
}

/// An outbox row: id, aggregate_type, aggregate_id, event_type, payload,
/// created_at, and a NULL extra column.
fn outbox_insert() -> Bytes {
    let cols: [&[u8]; 6] = [
        b"0b0d3a59-5b53-4c3c-9d8e-6a1f0d0b7e21",
        b"order",
        b"order-1234567",
        b"OrderCreated",
        br#"{"order_id": 1234567, "customer": "c-42", "total": "99.90", "lines": [{"sku": "A-1", "qty": 2}]}"#,
        b"2024-05-01 12:34:56.789012+00",
    ];
    let mut m = vec![b'I', 0, 0, 0x40, 0, b'N', 0, 7];
    for c in cols {
        m.push(b't');
        m.extend_from_slice(&i32::try_from(c.len()).unwrap().to_be_bytes());
        m.extend_from_slice(c);
    }
    m.push(b'n');
    shared(&[&m])
}

#[test]
fn decoding_rows_and_reading_their_columns_allocates_nothing() {
    let begin = shared(&[b"B", &[0, 0, 0, 0, 0, 0, 1, 0], &[0; 8], &[0, 0, 2, 0xDE]]);
    let insert = outbox_insert();
    let update = shared(&[
        b"U",
        &[0, 0, 0x40, 0],
        b"K",
        &[0, 2, b't', 0, 0, 0, 1, b'1', b'n'],
        b"N",
        &[0, 2, b't', 0, 0, 0, 1, b'2', b'u'],
    ]);
    let delete = shared(&[
        b"D",
        &[0, 0, 0x40, 0],
        b"O",
        &[0, 1, b'b', 0, 0, 0, 2, 1, 2],
    ]);
    let commit = shared(&[
        b"C",
        &[0],
        &[0, 0, 0, 0, 0, 0, 1, 0],
        &[0, 0, 0, 0, 0, 0, 1, 0x30],
        &[0; 8],
    ]);
    let mut bytes_seen = 0usize;
    let info = allocation_counter::measure(|| {
        for m in [&begin, &insert, &update, &delete, &commit] {
            let decoded = decode(m.clone()).expect("valid");
            let tuples = match &decoded {
                LogicalMessage::Insert(i) => [Some(&i.tuple), None],
                LogicalMessage::Update(u) => [u.old.as_ref().map(|o| o.tuple()), Some(&u.new)],
                LogicalMessage::Delete(d) => [Some(d.old.tuple()), None],
                _ => [None, None],
            };
            for t in tuples.into_iter().flatten() {
                for c in t.iter() {
                    bytes_seen += c.value().map_or(0, |v| v.len());
                }
                let _ = t.get(t.len() - 1);
            }
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
    // The row's 191 bytes of values, and 4 of the Update and Delete.
    assert_eq!(bytes_seen, 195);
}

#[test]
fn column_values_point_into_the_decoded_message() {
    let insert = outbox_insert();
    let LogicalMessage::Insert(i) = decode(insert.clone()).unwrap() else {
        panic!()
    };
    let range = insert.as_ptr_range();
    let mut values = 0;
    for c in i.tuple.iter() {
        if let Column::Text(v) = c {
            assert!(range.contains(&v.as_ptr()));
            values += 1;
        }
    }
    assert_eq!(values, 6);
}

#[test]
fn hostile_lengths_and_counts_allocate_nothing_in_proportion() {
    let cases: Vec<Bytes> = vec![
        // Truncate claiming 2^31 - 1 relations.
        shared(&[b"T", &[0x7F, 0xFF, 0xFF, 0xFF], &[0], &[0, 0, 0, 1]]),
        // A logical decoding message claiming 2 GiB of content.
        shared(&[b"M", &[1], &[0; 8], b"p\0", &[0x7F, 0xFF, 0xFF, 0xFF], b"x"]),
        // A text column claiming 2 GiB.
        shared(&[
            b"I",
            &[0, 0, 0, 1],
            b"N",
            &[0, 1],
            b"t",
            &[0x7F, 0xFF, 0xFF, 0xFF],
        ]),
        // A relation claiming 65535 columns in 12 bytes.
        shared(&[b"R", &[0, 0, 0, 1], b"\0t\0d", &[0xFF, 0xFF], &[0; 12]]),
        // A tuple claiming 65535 columns.
        shared(&[b"I", &[0, 0, 0, 1], b"N", &[0xFF, 0xFF], b"n"]),
    ];
    for case in cases {
        let info = allocation_counter::measure(|| {
            let e = decode(case.clone()).expect_err("hostile message decoded");
            // Formatting the error allocates only its (short) text.
            assert!(e.to_string().len() < 300);
        });
        assert!(info.bytes_max < 1024, "{case:?}: {info:?}");
    }
}
