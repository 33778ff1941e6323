//! End-to-end tests of `outbox-relay run`: the real binary against a
//! private PostgreSQL cluster and the shared RabbitMQ, each test named after
//! the guarantee it proves.

mod broker_cluster;
mod broker_node;
mod enrich;
mod failover;
pub mod fixture;
mod guarantees;
mod hostile;
mod replay;
mod slot_loss;
mod streams;
mod tables;
mod versions;
