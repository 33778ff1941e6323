//! The integration tests of amqp-sink, against the real RabbitMQ of the
//! test kit (unique names per test, faults made with the kit's proxy).
//!
//! One binary with modules (tests/sink/), to keep link time down. The
//! memory-alarm test changes broker-wide state and is a binary of its own
//! (tests/memory_alarm.rs), so that it never runs beside these.

mod sink;
