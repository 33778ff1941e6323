//! The integration test modules; each test starts its own cluster.

mod auth;
mod faults;
mod hosts;
mod slots;
mod streaming;
mod support;
mod tls;
mod versions;
