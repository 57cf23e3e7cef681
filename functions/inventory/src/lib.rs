//! The inventory service: stock per SKU (set by an admin), and the saga's
//! reservations: reserve every line of an order or none, release, commit, and expire
//! reservations nobody committed. Stock never goes negative: each change is one
//! conditional UPDATE, and CHECK constraints hold the line in the database too.
//!
//! `stock` is the domain logic over the `Sql` trait (tested natively); `service` the
//! HTTP API. Its components: `inventory-http` (the admin API; Spin or the `shop`
//! host runs it) and `inventory-events` (saga commands and expiry; the `shop` host).

pub mod service;
pub mod stock;
