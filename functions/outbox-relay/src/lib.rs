//! The outbox relay: on each cron tick, publishes the rows a service wrote to its
//! `outbox` table (in the same transaction as its state change) as CloudEvents, in
//! order, and remembers how far it got. A crash between a publish and the bookmark
//! republishes that event: delivery is at-least-once and consumers dedupe by `ce_id`.
//!
//! One relay component per service database (`database` variable), run by the host's
//! cron trigger; Spin itself has neither cron nor wasi:messaging.

pub mod relay;

#[cfg(target_arch = "wasm32")]
mod adapter;
