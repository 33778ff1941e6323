//! Decoding throughput on a realistic outbox stream: one Relation, then
//! transactions of Begin, four Inserts of ~300-byte outbox rows (uuid id,
//! aggregate type and id, event type, a ~190-byte JSON payload, created_at),
//! Commit. Messages are slices of one buffer, as frames cut from a socket
//! read buffer are. Every Insert's columns are read, as the relay does.
//!
//! Run: `cargo bench -p pgoutput` (release). Criterion prints messages/s
//! (`stream/messages`, `insert/*`) and bytes/s (`stream/bytes`).

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgoutput::{decode, Decoder, LogicalMessage};

const TRANSACTIONS: u32 = 2_500;
const ROWS_PER_TRANSACTION: u32 = 4;

fn text_column(m: &mut BytesMut, value: &[u8]) {
    m.put_u8(b't');
    m.put_i32(i32::try_from(value.len()).expect("small"));
    m.put_slice(value);
}

fn relation(m: &mut BytesMut) {
    m.put_u8(b'R');
    m.put_u32(16_384);
    m.put_slice(b"public\0outbox\0d");
    let columns: [(&[u8], u32); 6] = [
        (b"id", 2950),
        (b"aggregate_type", 25),
        (b"aggregate_id", 25),
        (b"event_type", 25),
        (b"payload", 3802),
        (b"created_at", 1184),
    ];
    m.put_u16(6);
    for (i, (name, type_oid)) in columns.iter().enumerate() {
        m.put_u8(u8::from(i == 0));
        m.put_slice(name);
        m.put_u8(0);
        m.put_u32(*type_oid);
        m.put_i32(-1);
    }
}

fn insert(m: &mut BytesMut, n: u32) {
    m.put_u8(b'I');
    m.put_u32(16_384);
    m.put_u8(b'N');
    m.put_u16(6);
    text_column(m, format!("0b0d3a59-5b53-4c3c-9d8e-{n:012x}").as_bytes());
    text_column(m, b"order");
    text_column(m, format!("order-{:07}", n % 10_000_000).as_bytes());
    text_column(m, b"OrderCreated");
    text_column(
        m,
        format!(
            r#"{{"order_id": {n}, "customer": "c-{}", "currency": "EUR", "total": "99.90", "lines": [{{"sku": "A-100{}", "qty": 2, "price": "24.95"}}, {{"sku": "B-7", "qty": 2, "price": "25.00"}}]}}"#,
            n % 977,
            n % 10
        )
        .as_bytes(),
    );
    text_column(m, b"2024-05-01 12:34:56.789012+00");
}

/// The stream as separate messages, all slices of one buffer, and the
/// Inserts alone.
fn stream() -> (Vec<Bytes>, Vec<Bytes>, usize) {
    let mut buf = BytesMut::new();
    let mut bounds = Vec::new();
    let mark = |buf: &BytesMut, bounds: &mut Vec<(usize, bool)>, is_insert| {
        bounds.push((buf.len(), is_insert));
    };
    relation(&mut buf);
    mark(&buf, &mut bounds, false);
    let mut lsn = 0x1_0000_0000_u64;
    for t in 0..TRANSACTIONS {
        buf.put_u8(b'B');
        buf.put_u64(lsn + 4096);
        buf.put_i64(770_000_000_000_000 + i64::from(t));
        buf.put_u32(1000 + t);
        mark(&buf, &mut bounds, false);
        for r in 0..ROWS_PER_TRANSACTION {
            insert(&mut buf, t * ROWS_PER_TRANSACTION + r);
            mark(&buf, &mut bounds, true);
        }
        buf.put_u8(b'C');
        buf.put_u8(0);
        buf.put_u64(lsn + 4096);
        buf.put_u64(lsn + 4200);
        buf.put_i64(770_000_000_000_000 + i64::from(t));
        mark(&buf, &mut bounds, false);
        lsn += 8192;
    }
    let all = buf.freeze();
    let mut messages = Vec::new();
    let mut inserts = Vec::new();
    let mut start = 0;
    for (end, is_insert) in bounds {
        let m = all.slice(start..end);
        if is_insert {
            inserts.push(m.clone());
        }
        messages.push(m);
        start = end;
    }
    (messages, inserts, all.len())
}

/// Decodes one message and reads every column of a row, as the relay does;
/// returns a value so the work cannot be optimised away.
fn consume(m: &LogicalMessage) -> usize {
    match m {
        LogicalMessage::Insert(i) => i
            .tuple
            .iter()
            .map(|c| c.value().map_or(1, |v| v.len()))
            .sum(),
        LogicalMessage::Begin(b) => usize::try_from(b.xid.0).unwrap_or(0),
        LogicalMessage::Commit(c) => usize::try_from(c.end_lsn.as_u64() & 0xFF).unwrap_or(0),
        _ => 0,
    }
}

fn benches(c: &mut Criterion) {
    let (messages, inserts, total_bytes) = stream();
    let insert_bytes: usize = inserts.iter().map(Bytes::len).sum();
    println!(
        "stream: {} messages ({} Inserts of {} bytes on average), {} bytes",
        messages.len(),
        inserts.len(),
        insert_bytes / inserts.len(),
        total_bytes
    );
    let allocations = allocation_counter::measure(|| {
        let mut d = Decoder::new();
        for m in &messages[1..] {
            black_box(consume(&d.decode(m.clone()).expect("valid")));
        }
    });
    println!(
        "allocations decoding the stream after its Relation: {}",
        allocations.count_total
    );

    let run_stream = |messages: &[Bytes]| {
        let mut d = Decoder::new();
        let mut sum = 0usize;
        for m in messages {
            sum += consume(&d.decode(m.clone()).expect("valid"));
        }
        sum
    };

    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(u64::try_from(messages.len()).unwrap()));
    g.bench_function("messages", |b| {
        b.iter(|| black_box(run_stream(black_box(&messages))))
    });
    g.throughput(Throughput::Bytes(u64::try_from(total_bytes).unwrap()));
    g.bench_function("bytes", |b| {
        b.iter(|| black_box(run_stream(black_box(&messages))))
    });
    g.finish();

    let mut g = c.benchmark_group("insert");
    g.throughput(Throughput::Elements(u64::try_from(inserts.len()).unwrap()));
    g.bench_function("decode_and_read_columns", |b| {
        b.iter(|| {
            let mut sum = 0usize;
            for m in black_box(&inserts) {
                sum += consume(&decode(m.clone()).expect("valid"));
            }
            sum
        })
    });
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in black_box(&inserts) {
                if let Ok(LogicalMessage::Insert(i)) = decode(m.clone()) {
                    n += i.tuple.len();
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(decode_benches, benches);
criterion_main!(decode_benches);
