//! The pgoutput integration tests, as one binary (modules, not one binary
//! per file) to keep link time down on two cores.
//!
//! - `common`: a test-only encoder (the inverse of the decoder).
//! - `properties`: proptest round trips for every message kind, and
//!   arbitrary or damaged bytes never panicking.
//! - `allocations`: decoding rows allocates nothing; hostile lengths
//!   allocate nothing in proportion to what they claim.
//! - `server`: a real PostgreSQL 15 produces every message kind it can, and
//!   every one decodes to what the SQL wrote.

mod allocations;
mod common;
mod properties;
mod server;
