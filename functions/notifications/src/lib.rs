//! The notifications service (SPEC §3.8): consumes user and order events, renders
//! messages (welcome, OTP code, order confirmed or cancelled), sends them through a
//! channel (mail or SMS over HTTP APIs when configured, the log otherwise) and records
//! each one, so `GET /notifications` shows a customer theirs.
//!
//! - `messages`: rendering (pure).
//! - `records`: contacts and sent notifications in SQL, dedupe by event id.
//! - `adapter`: Spin wiring and the channel adapters.

pub mod messages;
pub mod records;

#[cfg(target_arch = "wasm32")]
mod adapter;
