//! walstream: one streaming replication connection to PostgreSQL.
//!
//! It owns the replication protocol from the startup packet to standby status
//! updates: connect and authenticate, IDENTIFY_SYSTEM, slot checks,
//! START_REPLICATION, XLogData and keepalive handling, and the feedback that
//! tells the server which LSN is durable downstream. It yields WAL frames and
//! takes flush-LSN acknowledgements; it knows nothing of RabbitMQ.
//!
//! The connection lands with its own issue; this crate is the place it lives.
