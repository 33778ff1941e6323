//! Tests of the test kit itself: each piece really does what tests rely on.

mod broker;
mod pg_cluster;
mod proxy;
mod relay_binary;
