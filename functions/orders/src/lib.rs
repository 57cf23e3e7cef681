//! The orders service: an event-sourced order aggregate and the saga that drives it
//! (SPEC §3.6).
//!
//! - `saga`: the order as a fold of its events and the saga's decisions (pure).
//! - `store`: the event store, projection, idempotency keys, inbox and outbox in SQL.
//! - `service`: the HTTP API.
//!
//! Its components: `orders-http` (the API; Spin or the `shop` host runs it) and
//! `orders-events` (the saga's Kafka handler and step timeouts; the `shop` host runs it).

pub mod saga;
pub mod service;
pub mod store;
