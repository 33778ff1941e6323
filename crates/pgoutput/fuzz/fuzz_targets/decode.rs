//! Fuzz target: the pgoutput decoder on arbitrary bytes.
//!
//! The input is decoded twice: whole, as one message outside a streamed
//! block (`pgoutput::decode`), and as a stream of messages (each prefixed by
//! a one-byte length) through a `Decoder`, so that the streamed-block paths
//! (xid-prefixed messages, Stream Start/Stop state) are reached too.
//!
//! Besides "never panics, never allocates without bound" (libFuzzer's
//! -rss_limit_mb and -malloc_limit_mb catch the second), it checks that an
//! error's offset lies inside the message, that every decoded tuple reads
//! back the same by iteration and by index, and that every accepted message
//! re-encodes (with the test encoder) to exactly the bytes it came from.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgoutput::{DecodeError, Decoder, LogicalMessage, OldTuple, Tuple};

#[allow(dead_code)]
#[path = "../../tests/common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    check(&input, pgoutput::decode(input.clone()));

    let mut decoder = Decoder::new();
    let mut rest = input;
    while let Some(&len) = rest.first() {
        let end = (1 + usize::from(len)).min(rest.len());
        let msg = rest.slice(1..end);
        rest = rest.slice(end..);
        check(&msg, decoder.decode(msg.clone()));
    }
});

fn check(msg: &Bytes, result: Result<LogicalMessage, DecodeError>) {
    match result {
        Ok(m) => {
            let tuples: Vec<&Tuple> = match &m {
                LogicalMessage::Insert(i) => vec![&i.tuple],
                LogicalMessage::Update(u) => u.old.iter().map(OldTuple::tuple).chain([&u.new]).collect(),
                LogicalMessage::Delete(d) => vec![d.old.tuple()],
                _ => vec![],
            };
            for t in tuples {
                assert_eq!(t.iter().count(), t.len());
                for (i, c) in t.iter().enumerate() {
                    assert_eq!(t.get(i).as_ref(), Some(&c));
                }
            }
            assert_eq!(common::encode(&m), msg.as_ref(), "{m:?} does not re-encode to its bytes");
        }
        Err(e) => {
            assert!(e.offset() <= msg.len(), "{e} past the end of {msg:?}");
            let _ = e.to_string();
        }
    }
}
