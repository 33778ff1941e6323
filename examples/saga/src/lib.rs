//! A choreographed order saga built on outbox-relay and the inbox crate:
//! three services (orders, payments, stock), each with its own schema,
//! outbox table and inbox table; one outbox-relay with a `[[table]]` entry
//! per outbox; inbox consumers that apply each event exactly once and
//! compensate on every failure path (void the payment, release the stock,
//! cancel the order). See `services` for the flow, `runner` for placing
//! orders and checking the outcome, `poller` for the polling publisher it
//! is compared with.

pub mod poller;
pub mod runner;
pub mod schema;
pub mod services;
