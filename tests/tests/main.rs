//! The e2e test binary: the test kit's own tests and the end-to-end tests.
//!
//! One binary with modules (not one per file) to keep link time down on two
//! cores.

mod agree;
mod debezium_config;
mod deploy;
mod kit;
mod lifecycle;
mod logs;
mod operations;
mod ops;
mod quickstart;
mod relay;
mod saga;
mod secrets;
mod smoke;
