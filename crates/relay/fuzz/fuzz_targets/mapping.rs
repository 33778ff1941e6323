//! Fuzzes the mapping: a relation of any shape and a row of any content
//! (sizes up to 16 MiB and beyond, any bytes, NULLs, control characters),
//! and envelopes of any content, mapped as the relay maps them. Nothing
//! panics, and every message, every dead-letter copy of it and every
//! smallest copy fits what the broker accepts.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use outbox_relay::config::Settings;
use outbox_relay::mapping::{DeadLetterReason, Mapped, Mapper};
use pgoutput::{decode, LogicalMessage, Lsn, Message};

const NAMES: &[&str] = &[
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "created_at",
    "tenant",
    "trace",
];
const TYPES: &[u32] = &[25, 3802, 17, 1184, 2950, 23, 1043];

/// Reads the fuzz input as a little program: each call takes what it
/// needs, zeros when the input runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// A value: a few bytes of the input, repeated to a size that may be
    /// huge.
    fn value(&mut self) -> Option<Vec<u8>> {
        let kind = self.byte();
        if kind % 7 == 0 {
            return None;
        }
        let len = usize::from(self.byte() % 16);
        let seed: Vec<u8> = (0..len).map(|_| self.byte()).collect();
        // Huge values now and then (each costs an allocation of up to
        // 17 MiB); mostly what the input spells.
        let size = match kind % 24 {
            0 => 200_000,
            1 => 9 << 20,
            2 => 17 << 20,
            3 => 131_000,
            4 => 60_000,
            _ => seed.len(),
        };
        if seed.is_empty() {
            return Some(vec![b'x'; size.min(1 << 20)]);
        }
        Some(seed.iter().copied().cycle().take(size).collect())
    }
}

fn relation(cols: &[(String, u32)]) -> LogicalMessage {
    let mut b = vec![b'R'];
    b.extend_from_slice(&16384u32.to_be_bytes());
    for s in ["public", "outbox"] {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }
    b.push(b'd');
    b.extend_from_slice(&u16::try_from(cols.len()).unwrap_or(0).to_be_bytes());
    for (name, type_oid) in cols {
        b.push(0);
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(&type_oid.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
    }
    decode(Bytes::from(b)).expect("a relation the fuzzer built")
}

fn insert(values: &[Option<Vec<u8>>]) -> LogicalMessage {
    let mut b = vec![b'I'];
    b.extend_from_slice(&16384u32.to_be_bytes());
    b.push(b'N');
    b.extend_from_slice(&u16::try_from(values.len()).unwrap_or(0).to_be_bytes());
    for v in values {
        match v {
            None => b.push(b'n'),
            Some(v) => {
                b.push(b't');
                b.extend_from_slice(&u32::try_from(v.len()).unwrap_or(0).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    decode(Bytes::from(b)).expect("an insert the fuzzer built")
}

fn check(mapper: &Mapper, mapped: Option<Mapped>) {
    let limits = mapper.limits();
    let lsn = Lsn::from_u64(0x16B_3748);
    match mapped {
        Some(Mapped::Publish(message)) => {
            limits.check(&message).expect("the message fits");
            for reason in DeadLetterReason::ALL {
                let copy = mapper.copy_of(&message, lsn, reason, "fuzz");
                limits.check(&copy).expect("its dead-letter copy fits");
            }
        }
        Some(Mapped::DeadLetter(copy, reason)) => {
            limits.check(&copy).expect("the dead-letter copy fits");
            let minimal = mapper.minimal_copy_of(&copy, lsn, reason, "fuzz");
            limits.check(&minimal).expect("the smallest copy fits");
        }
        None => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let settings = Settings {
        message_prefix: "outbox".into(),
        exchange: if input.byte() % 2 == 0 {
            "outbox".into()
        } else {
            "{tenant}".into()
        },
        ..Settings::default()
    };
    let config = settings.parse().expect("valid settings");
    let limits = outbox_relay::sink::amqp::limits(config.max_payload_bytes, 131_072);
    let mut mapper = Mapper::new(config.mapping, limits);

    let count = usize::from(input.byte() % 10) + 1;
    let cols: Vec<(String, u32)> = (0..count)
        .map(|i| {
            let name = NAMES[usize::from(input.byte()) % NAMES.len()];
            let type_oid = TYPES[usize::from(input.byte()) % TYPES.len()];
            (format!("{name}{}", if i >= NAMES.len() { "_x" } else { "" }), type_oid)
        })
        .collect();
    let LogicalMessage::Relation(relation) = relation(&cols) else {
        return;
    };
    mapper.relation(&relation);
    let values: Vec<Option<Vec<u8>>> = (0..count).map(|_| input.value()).collect();
    if let LogicalMessage::Insert(row) = insert(&values) {
        check(&mapper, mapper.insert(&row, Lsn::from_u64(42)));
    }

    // An envelope: the rest of the input, or a huge one.
    let content = match input.byte() % 3 {
        0 => Bytes::from(vec![b'{'; 17 << 20]),
        _ => Bytes::copy_from_slice(input.0),
    };
    let message = Message {
        xid: None,
        transactional: true,
        lsn: Lsn::from_u64(43),
        prefix: "outbox".into(),
        content,
    };
    check(&mapper, mapper.logical_message(&message));
});
