//! The catalog service (SPEC §3.3), a private component behind the gateway.
//!
//! Plain Rust, tested natively: [`input`] (validation of what clients send),
//! [`catalog`] (the SQL, over the small `Sql` trait, with product events written
//! to an outbox table in the same transaction), [`cache`] (the hot product cache) and
//! [`service`] (HTTP semantics). The spin-sdk adapter only supplies SQLite, key-value,
//! the clock and ids.

pub mod cache;
pub mod catalog;
/// API errors live in `shop_domain::api`, shared by every service.
pub mod error {
    pub use shop_domain::api::ApiError;
}
pub mod input;
pub mod service;

/// SQL behind a small trait (shared by the services).
pub use shop_domain::sql;

#[cfg(target_arch = "wasm32")]
mod adapter;
