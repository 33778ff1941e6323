//! walstream's integration tests, against real PostgreSQL clusters from the
//! test kit. One binary with modules keeps link time down on two cores.

mod suite;
