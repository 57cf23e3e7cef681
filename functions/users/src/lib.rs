//! The users and auth service (SPEC §3.2), a private component behind the gateway.
//!
//! Plain Rust, tested natively: [`accounts`] (input checks, Argon2id), [`keys`] (the
//! RS256 signing key and its JWKS), [`tokens`] (access and refresh tokens), [`store`]
//! (SQL, with `user.registered` written to the outbox in the same transaction),
//! [`otp`] (one-time codes), [`clients`] (service clients and their secrets),
//! [`secrets`] (constant-time comparison) and [`service`] (HTTP semantics). The
//! adapter supplies SQLite, variables, clock and ids.
//!
//! Not built yet: logout from every device at once.

pub mod accounts;
pub mod clients;
pub mod keys;
pub mod otp;
pub mod secrets;
pub mod service;
pub mod store;
pub mod throttle;
pub mod tokens;

#[cfg(target_arch = "wasm32")]
mod adapter;
