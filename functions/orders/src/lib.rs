//! The orders service: an event-sourced order aggregate and the saga that drives it
//! (SPEC §3.6).
//!
//! - `saga`: the order as a fold of its events and the saga's decisions (pure).
//! - `store`: the event store, projection, idempotency keys, inbox and outbox in SQL.
//! - `service`: the HTTP API.
//! - `adapter`: Spin wiring: HTTP, the Kafka handler for inventory and payment results,
//!   and the cron handler that times out stuck steps and publishes the outbox.

pub mod saga;
pub mod service;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod adapter;
