//! The outbox relay: on each cron tick, publishes the rows a service wrote to its
//! `outbox` table (in the same transaction as its state change) as CloudEvents, in
//! order, then deletes what the broker took. A crash in between republishes those
//! events: delivery is at-least-once and consumers dedupe by `ce_id`.
//!
//! One relay component per service database (`database` variable), run by the host's
//! cron trigger; Spin itself has neither cron nor wasi:messaging. The relaying itself
//! is `shop_domain::outbox::relay`, which services with a Kafka trigger also call
//! right after their own commits.

#[cfg(target_arch = "wasm32")]
mod adapter;
