//! The cart service (SPEC §3.5), a private component behind the gateway: one cart per
//! user in key-value, priced with the catalog's current prices whenever it is read.
//!
//! [`cart`] is the plain-Rust core (stored state, changes, pricing), tested natively;
//! the adapter loads and saves the state and fetches products from the catalog.

pub mod cart;

#[cfg(target_arch = "wasm32")]
mod adapter;
