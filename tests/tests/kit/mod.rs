//! Tests of the test kit itself: each piece really does what tests rely on.

mod broker;
mod pg_cluster;
mod proxy;
mod rabbit_node;
mod relay_binary;
